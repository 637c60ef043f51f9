#!/usr/bin/env python3
"""Interop tests: the real pop3d binary against real peers (Python poplib, curl, openssl s_client)
and the admin commands, all on loopback, then research/security.md server cases (functions named caseN_…):
close_notify on QUIT (25), SASL limits (32), format-string payloads (33), the bad-command counter (41), a client
that never reads during RETR (52) and a pipelined flood (68). Prints one line per check and a closing
'N passed, N failed' line; exits non-zero on any failure.

Usage: scripts/interop.py --pop3d PATH
"""
import argparse
import base64
import hashlib
import os
import poplib
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ARGS = None
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening")


class Dev:
    """`pop3d dev` in a temporary folder on free ports."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pop3d-interop-")
        self.data = os.path.join(self.dir, "data")
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.log = open(os.path.join(self.dir, "pop3d.log"), "w")
        self.proc = subprocess.Popen(
            [ARGS.pop3d, "dev", "--data", self.data, "--pop3s-port", str(self.tls_port), "--pop3-port", str(self.plain_port)],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.tls_port)
        wait_port(self.plain_port)
        self.ca = os.path.join(self.data, "tls", "cert.pem")
        self.config = os.path.join(self.data, "pop3d.yaml")
        with open(os.path.join(self.data, "demo-password")) as f:
            self.password = f.read().strip()
        self.ctx = ssl.create_default_context(cafile=self.ca)

    def pop3s(self, user="demo", password=None):
        c = poplib.POP3_SSL("localhost", self.tls_port, context=self.ctx, timeout=30)
        c.user(user)
        c.pass_(password if password is not None else self.password)
        return c

    def pop3d(self, *args, stdin=None):
        return subprocess.run([ARGS.pop3d, *args], input=stdin, capture_output=True, timeout=120)

    def maildir_files(self, user="demo"):
        out = {}
        for sub in ("new", "cur"):
            d = os.path.join(self.data, "mail", user, sub)
            for name in os.listdir(d) if os.path.isdir(d) else []:
                with open(os.path.join(d, name), "rb") as f:
                    out[name] = f.read()
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def crlf(data):
    """What POP3 sends for stored bytes: bare LF becomes CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def retr_bytes(client, n):
    resp, lines, octets = client.retr(n)
    assert resp.startswith(b"+OK"), resp
    return b"".join(line + b"\r\n" for line in lines)


@test
def poplib_pop3s_list_retr_compare_bytes(dev):
    c = dev.pop3s()
    count, size = c.stat()
    assert count == 3, count
    stored = sorted(crlf(v) for v in dev.maildir_files().values())
    fetched = sorted(retr_bytes(c, i) for i in range(1, count + 1))
    assert fetched == stored, "RETR bytes differ from the Maildir files"
    assert size == sum(len(m) for m in stored), (size, [len(m) for m in stored])
    _, listing, _ = c.list()
    assert [int(l.split()[1]) for l in listing] == [len(retr_bytes(c, i)) for i in range(1, 4)]
    caps = c.capa()
    for cap in ("TOP", "UIDL", "USER", "SASL", "PIPELINING", "RESP-CODES", "IMPLEMENTATION"):
        assert cap in caps, caps
    assert "STLS" not in caps
    c.quit()


@test
def poplib_stls(dev):
    c = poplib.POP3("127.0.0.1", dev.plain_port, timeout=30)
    before = c.capa()
    assert "STLS" in before and "USER" not in before, before
    c.stls(context=ssl.create_default_context(cafile=dev.ca), )
    after = c.capa()
    assert "STLS" not in after and "USER" in after, after
    c.user("demo")
    c.pass_(dev.password)
    assert c.stat()[0] == 3
    c.quit()


@test
def poplib_refuses_cleartext_login(dev):
    c = poplib.POP3("127.0.0.1", dev.plain_port, timeout=30)
    try:
        c.user("demo")
        raise AssertionError("USER accepted before TLS")
    except poplib.error_proto as e:
        assert b"[AUTH]" in e.args[0], e
    c.quit()


@test
def poplib_top_uidl_rset(dev):
    c = dev.pop3s()
    resp, lines, _ = c.top(2, 0)
    assert b"" in lines and all(not l.startswith(b"A line") for l in lines), lines
    _, uidls, _ = c.uidl()
    assert len(uidls) == 3 and all(len(u.split()[1]) == 16 for u in uidls), uidls
    c.dele(1)
    assert c.stat()[0] == 2
    c.rset()
    assert c.stat()[0] == 3
    c.quit()


def netrc(dev, user="demo", password=None):
    path = os.path.join(dev.dir, "netrc")
    with open(path, "w") as f:
        f.write(f"machine localhost login {user} password {password or dev.password}\n")
    os.chmod(path, 0o600)
    return path


@test
def curl_pop3s_list_and_retr(dev):
    base = ["curl", "-sS", "--cacert", dev.ca, "--netrc-file", netrc(dev), "--max-time", "30"]
    listing = subprocess.run(base + [f"pop3s://localhost:{dev.tls_port}/"], capture_output=True, check=True).stdout
    assert len(listing.splitlines()) == 3, listing
    c = dev.pop3s()
    expected = retr_bytes(c, 1)
    c.quit()
    body = subprocess.run(base + [f"pop3s://localhost:{dev.tls_port}/1"], capture_output=True, check=True).stdout
    assert body == expected, (body, expected)


@test
def curl_stls(dev):
    out = subprocess.run(["curl", "-sS", "--ssl-reqd", "--cacert", dev.ca, "--netrc-file", netrc(dev), "--max-time", "30",
                          f"pop3://localhost:{dev.plain_port}/"], capture_output=True, check=True).stdout
    assert len(out.splitlines()) == 3, out


@test
def curl_rejects_wrong_ca(dev):
    r = subprocess.run(["curl", "-sS", "--netrc-file", netrc(dev), "--max-time", "30", f"pop3s://localhost:{dev.tls_port}/"],
                       capture_output=True)
    assert r.returncode != 0, "curl accepted a self-signed certificate without --cacert"


def s_client(dev, args, commands):
    r = subprocess.run(["openssl", "s_client", "-quiet", "-CAfile", dev.ca, "-verify_return_error", *args],
                       input=commands.encode(), capture_output=True, timeout=60)
    return r.returncode, r.stdout.decode(errors="replace")


@test
def openssl_s_client_implicit_tls_with_alpn(dev):
    code, out = s_client(dev, ["-connect", f"127.0.0.1:{dev.tls_port}", "-servername", "localhost", "-alpn", "pop3"],
                         f"USER demo\r\nPASS {dev.password}\r\nSTAT\r\nQUIT\r\n")
    lines = out.splitlines()
    assert lines[0].startswith("+OK"), out
    assert "+OK Logged in." in lines and any(l.startswith("+OK 3 ") for l in lines), out


@test
def openssl_s_client_starttls(dev):
    code, out = s_client(dev, ["-connect", f"127.0.0.1:{dev.plain_port}", "-starttls", "pop3"],
                         f"USER demo\r\nPASS {dev.password}\r\nSTAT\r\nQUIT\r\n")
    assert "+OK Logged in." in out and "+OK 3 " in out, out


@test
def openssl_tls_policy(dev):
    for flag in ("-tls1", "-tls1_1"):
        code, out = s_client(dev, ["-connect", f"127.0.0.1:{dev.tls_port}", flag], "QUIT\r\n")
        assert "+OK" not in out, f"{flag} accepted"
    code, out = s_client(dev, ["-connect", f"127.0.0.1:{dev.tls_port}", "-tls1_2", "-cipher", "AES128-SHA"], "QUIT\r\n")
    assert "+OK" not in out, "static-RSA CBC suite accepted"
    code, out = s_client(dev, ["-connect", f"127.0.0.1:{dev.tls_port}", "-tls1_2"], "QUIT\r\n")
    assert out.startswith("+OK"), out
    code, out = s_client(dev, ["-connect", f"127.0.0.1:{dev.tls_port}", "-alpn", "http/1.1"], "QUIT\r\n")
    assert "+OK" not in out, "ALPN http/1.1 accepted"


@test
def dele_quit_relogin(dev):
    c = dev.pop3s()
    _, uidls, _ = c.uidl()
    keep = [u.split()[1] for u in uidls[1:]]
    c.dele(1)
    c.quit()
    c = dev.pop3s()  # immediately: no [IN-USE]
    _, uidls, _ = c.uidl()
    assert [u.split()[1] for u in uidls] == keep, (uidls, keep)
    c.quit()
    assert len(dev.maildir_files()) == 2


@test
def in_use(dev):
    a = dev.pop3s()
    try:
        dev.pop3s()
        raise AssertionError("second session was let in")
    except poplib.error_proto as e:
        assert b"[IN-USE]" in e.args[0], e
    a.quit()
    dev.pop3s().quit()


@test
def deliver_is_seen_without_restart(dev):
    before = len(dev.maildir_files())
    message = b"From: mta@localhost\nSubject: delivered\n\nvia pop3d deliver\n"
    r = dev.pop3d("deliver", "demo", "--config", dev.config, stdin=message)
    assert r.returncode == 0, r.stderr
    c = dev.pop3s()
    count, _ = c.stat()
    assert count == before + 1, (count, before)
    assert retr_bytes(c, count) == crlf(message)
    c.quit()
    r = dev.pop3d("deliver", "nobody", "--config", dev.config, stdin=message)
    assert r.returncode == 67, (r.returncode, r.stderr)
    r = dev.pop3d("deliver", "demo", "--config", os.path.join(dev.dir, "missing.yaml"), stdin=message)
    assert r.returncode == 75, (r.returncode, r.stderr)


@test
def user_admin_commands(dev):
    r = dev.pop3d("user", "add", "alice", "--config", dev.config, stdin=b"first pass\n")
    assert r.returncode == 0, r.stderr
    assert b"first pass" not in r.stdout + r.stderr
    r = dev.pop3d("user", "add", "alice", "--config", dev.config, stdin=b"x\n")
    assert r.returncode != 0, "adding an existing user must fail"
    dev.pop3s("alice", "first pass").quit()  # seen without restart; empty maildrop
    r = dev.pop3d("user", "passwd", "alice", "--config", dev.config, stdin=b"second\r\n")
    assert r.returncode == 0, r.stderr
    dev.pop3s("alice", "second").quit()
    listing = dev.pop3d("user", "list", "--config", dev.config).stdout.decode().split()
    assert listing == ["demo", "alice"] or sorted(listing) == ["alice", "demo"], listing
    assert dev.pop3d("user", "del", "alice", "--config", dev.config).returncode == 0
    try:
        dev.pop3s("alice", "second")
        raise AssertionError("deleted user could log in")
    except poplib.error_proto as e:
        assert b"[AUTH]" in e.args[0]


@test
def check_config(dev):
    r = dev.pop3d("check-config", "--config", dev.config)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "pop3s:" in out and "passwd_file:" in out and dev.password not in out, out
    bad = os.path.join(dev.dir, "bad.yaml")
    with open(bad, "w") as f:
        f.write('listen:\n  pop3s: "127.0.0.1:notaport"\ntls:\n  certificate: x\n  key: y\npasswd_file: users\nmaildir: "m/%u"\n')
    r = dev.pop3d("check-config", "--config", bad)
    assert r.returncode != 0 and b"listen.pop3s" in r.stderr, r.stderr
    with open(bad, "w") as f:
        f.write('listen:\n  pop3s: "127.0.0.1:995"\ntls:\n  certificate: x\n  key: y\nmaildir: "m/%u"\n')
    r = dev.pop3d("check-config", "--config", bad)
    assert r.returncode != 0 and b"passwd_file" in r.stderr, r.stderr


def vm_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


# ---------------------------------------------------------------- research/security.md server cases
# Each test below is named after its case in ../shared/research/security.md. Logins come from their own loopback
# source address (127.0.0.N), so the auth penalty of one test (per client address) never slows another.


class Session:
    """A line-level POP3 client from a chosen loopback source address: implicit TLS, STLS, or plaintext.
    TLS sockets do not suppress ragged EOFs, so a close without close_notify raises SSLEOFError."""

    def __init__(self, dev, source="127.0.0.1", mode="tls", timeout=15, rcvbuf=None):
        self.dev = dev
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
        raw.settimeout(timeout)
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", dev.tls_port if mode == "tls" else dev.plain_port))
        self.raw = raw
        self.sock = self.wrap(raw) if mode == "tls" else raw
        self.buf = b""
        self.greeting = self.line()
        assert self.greeting.startswith(b"+OK"), self.greeting
        if mode == "stls":
            assert self.command(b"STLS").startswith(b"+OK")
            assert not self.buf, "bytes after the STLS reply"
            self.sock = self.wrap(raw)

    def wrap(self, raw):
        return self.dev.ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed; unterminated: {self.buf[:100]!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, data):
        self.send(data + b"\r\n")
        return self.line()

    def lines(self):
        """The rest of a multi-line reply, up to the terminating "."."""
        out = []
        while (line := self.line()) != b".":
            out.append(line)
        return out

    def login(self, user, password):
        assert self.command(b"USER " + user.encode()).startswith(b"+OK")
        reply = self.command(b"PASS " + password.encode())
        assert reply.startswith(b"+OK"), reply
        return self

    def closed_within(self, seconds):
        """True if the server ends the connection within `seconds` (no further reply line)."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            return True
        except (socket.timeout, TimeoutError):
            return False
        assert not data, f"unexpected bytes after the last reply: {data[:100]!r}"
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self, writer=None):
        """Goes away without reading or QUIT: shutdown (which also wakes a `writer` thread blocked in send), then
        a close with SO_LINGER 0, i.e. a TCP RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with socket.socket(fileno=os.dup(self.sock.fileno())) as same:
            same.shutdown(socket.SHUT_RDWR)
        if writer:
            writer.join(10)
        self.close()


def limits(dev):
    """The effective limits of the dev server, as `pop3d check-config` prints them."""
    out = dev.pop3d("check-config", "--config", dev.config).stdout.decode()
    return {key: int(value) for key, value in re.findall(r"^\s+(\w+): (\d+)$", out, re.M)}


@test
def case62_deliver_enforces_quota(dev):
    """Dovecot-style quota rules in the passwd-file's extra fields: over the message count or the storage left,
    `pop3d deliver` exits 77 (EX_NOPERM, as dovecot-lda -e) and stores nothing; an unreadable rule is exit 75."""
    with open(os.path.join(dev.data, "users"), "a") as f:
        f.write("quota1:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=1K userdb_quota_rule2=*:messages=3\n"
                "quota2:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=1K\n"
                "quota3:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=lots\n")

    def deliver(user, size):
        body = b"Subject: q\n\n" + b"x" * (size - 13) + b"\n"
        assert len(body) == size
        return dev.pop3d("deliver", user, "--config", dev.config, stdin=body)

    def stored(user):
        return len(dev.maildir_files(user))

    for _ in range(3):
        r = deliver("quota1", 200)
        assert r.returncode == 0, r.stderr
    r = deliver("quota1", 20)
    assert r.returncode == 77 and b"quota exceeded" in r.stderr and b"limit 3" in r.stderr, (r.returncode, r.stderr)
    assert stored("quota1") == 3
    r = deliver("quota2", 700)
    assert r.returncode == 0, r.stderr
    r = deliver("quota2", 500)  # 324 bytes left
    assert r.returncode == 77 and b"nothing was stored" in r.stderr, (r.returncode, r.stderr)
    assert stored("quota2") == 1 and not os.listdir(os.path.join(dev.data, "mail", "quota2", "tmp"))
    r = deliver("quota2", 324)  # exactly the room left
    assert r.returncode == 0, r.stderr
    r = deliver("quota2", 30)  # full: refused before reading
    assert r.returncode == 77 and b"uses 1024 of 1024 bytes" in r.stderr, (r.returncode, r.stderr)
    r = deliver("quota3", 30)
    assert r.returncode == 75 and b"quota rule" in r.stderr, (r.returncode, r.stderr)
    assert not os.path.exists(os.path.join(dev.data, "mail", "quota3", "new")) or stored("quota3") == 0
    c = dev.pop3s("quota2", "q-pw")
    assert c.stat() == (2, 1024 + 6), c.stat()  # sizes as sent over POP3: each LF counted as CRLF
    c.quit()


def add_user(dev, name, password):
    r = dev.pop3d("user", "add", name, "--config", dev.config, stdin=password.encode() + b"\n")
    assert r.returncode == 0, r.stderr


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@test
def case25_close_notify_before_fin_on_quit(dev):
    """QUIT's +OK is followed by a TLS close_notify, then the TCP FIN (RFC 8314 §3.4), on both ports, before and
    after login; the FIN follows even when the client never answers the close_notify."""
    facts = []
    for mode in ("tls", "stls"):
        for logged_in in (False, True):
            s = Session(dev, "127.0.0.25", mode)
            if logged_in:
                s.login("demo", dev.password)
            reply = s.command(b"QUIT")
            assert reply.startswith(b"+OK"), reply
            try:
                tail = s.sock.recv(65536)  # b"" only for a close_notify; a bare FIN raises SSLEOFError here
            except ssl.SSLEOFError as e:
                raise AssertionError(f"{mode}, logged in {logged_in}: TCP closed without close_notify ({e})")
            assert tail == b"", f"bytes after QUIT's reply: {tail[:100]!r}"
            raw = s.sock.unwrap()  # our close_notify; the server's has arrived, so this returns at once
            raw.settimeout(5)
            start = time.monotonic()
            assert raw.recv(1) == b"", "data after close_notify"
            facts.append(f"{mode}/{'user' if logged_in else 'anon'} FIN {1000 * (time.monotonic() - start):.0f} ms")
            raw.close()
    s = Session(dev, "127.0.0.25", "tls")
    assert s.command(b"QUIT").startswith(b"+OK")
    assert s.sock.recv(65536) == b"", "no close_notify"
    # Do not answer the close_notify: read the TCP stream underneath (a duplicate descriptor) until FIN.
    underneath = socket.socket(fileno=os.dup(s.sock.fileno()))
    underneath.settimeout(15)
    start = time.monotonic()
    assert underneath.recv(1) == b"", "data after close_notify"
    facts.append(f"unanswered close_notify: FIN after {time.monotonic() - start:.1f} s")
    underneath.close()
    s.close()
    print("    " + "; ".join(facts))


@test
def case32_sasl_limits_unknown_mechanism_auth_after_login(dev):
    """AUTH PLAIN continuation over limits.sasl_line_length, an initial response over the command line limit, unknown
    mechanisms and AUTH after login: each a clear -ERR without echo, and the same connection still serves."""
    limit = limits(dev)["sasl_line_length"]
    creds = base64.b64encode(b"\0demo\0" + dev.password.encode())
    s = Session(dev, "127.0.0.32")
    assert s.command(b"AUTH PLAIN") == b"+ "
    reply = s.command(b"Q" * (limit - 1))  # limit + 1 octets with CRLF
    assert reply == b"-ERR [AUTH] Authentication failed: response too long.", reply
    assert s.command(b"CAPA").startswith(b"+OK") and "SASL PLAIN" in [l.decode() for l in s.lines()]
    assert s.command(b"AUTH PLAIN") == b"+ "
    reply = s.command(b"A" * (limit - 2))  # exactly the limit with CRLF: read as a line (then bad base64), not "too long"
    assert reply.startswith(b"-ERR [AUTH]") and b"too long" not in reply, reply
    reply = s.command(b"AUTH PLAIN " + creds)  # two bad commands so far: below the limit of 3, still served
    assert reply.startswith(b"+OK"), reply
    for command in (b"AUTH PLAIN " + creds, b"AUTH PLAIN", b"AUTH CRAM-MD5", b"AUTH"):
        reply = s.command(command)
        assert reply == b"-ERR Command not valid in this state.", (command, reply)
    assert s.command(b"STAT").startswith(b"+OK 3 "), "not serving after AUTH in TRANSACTION"
    assert s.command(b"QUIT").startswith(b"+OK")
    s.close()

    s = Session(dev, "127.0.0.32")
    for mechanism in (b"CRAM-MD5", b"XOAUTH2 dXNlcj1hQGIK"):  # a 3rd bad command would close it (case 41)
        reply = s.command(b"AUTH " + mechanism)
        assert reply == b"-ERR Unsupported authentication mechanism.", (mechanism, reply)
    s.login("demo", dev.password)
    assert s.command(b"QUIT").startswith(b"+OK")
    s.close()

    s = Session(dev, "127.0.0.32")
    assert s.command(b"AUTH PLAIN") == b"+ "
    reply = s.command(b"B" * (100 * 1024))  # 100 KiB continuation
    assert reply == b"-ERR [AUTH] Authentication failed: response too long.", reply
    reply = s.command(b"AUTH PLAIN " + b"C" * (1 << 20))  # 1 MiB initial response: over the command line limit
    assert reply == b"-ERR Line too long.", reply
    s.login("demo", dev.password)
    assert s.command(b"QUIT").startswith(b"+OK")
    s.close()
    print(f"    sasl_line_length {limit}: {limit + 1} octets refused, {limit} accepted as a line; 100 KiB and 1 MiB "
          "refused; CRAM-MD5 and XOAUTH2 refused; AUTH after login refused; a login works after each")


@test
def case33_format_and_expansion_payloads_in_user_and_pass(dev):
    """printf, shell, template and SQL-quote payloads in USER, PASS and AUTH PLAIN: the same replies as any wrong
    login (nothing of the payload reflected, nothing expanded), and pop3d keeps serving."""
    payloads = ["%s%s%s%n%x", "%n", "%u", "%d%%%n@%s", "%{user}", "%{password}", "${jndi:ldap://127.0.0.1:1/a}",
                "$(id)", "`id`", "'", '"', "\\", ";", "' OR '1'='1", '"; DROP TABLE users; --', "%08x." * 12]
    # What any wrong login gets.
    s = Session(dev, "127.0.0.33")
    expected = (s.command(b"USER nobody-at-all"), s.command(b"PASS wrong-password"))
    s.close()
    assert expected[0].startswith(b"+OK") and expected[1].startswith(b"-ERR [AUTH]"), expected
    for i, payload in enumerate(payloads):
        p = payload.encode()
        s = Session(dev, f"127.0.33.{i + 1}")  # one address per attempt: no auth penalty wait
        got = (s.command(b"USER " + p), s.command(b"PASS " + p))
        assert got == expected, f"USER/PASS {payload!r}: {got} instead of {expected}"
        s.close()
        s = Session(dev, f"127.0.34.{i + 1}")
        reply = s.command(b"AUTH PLAIN " + base64.b64encode(b"\0" + p + b"\0" + p))
        assert reply == expected[1], f"AUTH PLAIN {payload!r}: {reply}"
        assert s.command(b"CAPA").startswith(b"+OK"), "not serving after the failed login"
        s.lines()
        s.close()
    assert dev.proc.poll() is None, "pop3d died"
    Session(dev, "127.0.0.33").login("demo", dev.password).command(b"QUIT")
    print(f"    {len(payloads)} payloads x (USER+PASS, AUTH PLAIN): replies identical to a wrong login")


@test
def case41_bad_command_counter_never_resets(dev):
    """Valid commands between bad ones do not reset the counter: bad, good, bad, good, bad closes at the limit
    before login (ALPACA), and likewise after login."""
    lim = limits(dev)
    before, after = lim["bad_commands_before_login"], lim["bad_commands_after_login"]
    s = Session(dev, "127.0.0.41")
    for i in range(before):
        reply = s.command(b"XYZZY")
        if i < before - 1:
            assert reply == b"-ERR Unknown command.", (i, reply)
            assert s.command(b"CAPA").startswith(b"+OK"), "CAPA refused"
            s.lines()
            assert s.command(b"USER demo").startswith(b"+OK")  # valid too
    assert reply == b"-ERR Too many invalid commands.", f"bad command {before} got {reply}: the counter was reset"
    assert s.closed_within(5), "not closed at the limit"
    s.close()
    s = Session(dev, "127.0.0.41").login("demo", dev.password)
    for i in range(after):
        reply = s.command(b"XYZZY")
        if i < after - 1:
            assert reply == b"-ERR Unknown command.", (i, reply)
            assert s.command(b"NOOP").startswith(b"+OK"), "NOOP refused"
    assert reply == b"-ERR Too many invalid commands.", f"bad command {after} after login got {reply}"
    assert s.closed_within(5), "not closed at the limit after login"
    s.close()
    released(dev, "demo", dev.password, "127.0.0.41", None)  # before the next test logs in as demo
    print(f"    closed at bad command {before} (before login) and {after} (after login) with good ones between")


def sample_rss(pid, seconds, during=None):
    """Max VmRSS (KiB) over `seconds`, sampled every 50 ms; `during()` runs once in the middle and its result is
    returned with it."""
    peak, result, end = 0, None, time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, vm_kib(pid, "VmRSS"))
        if during and result is None and time.monotonic() > end - seconds / 2:
            result = during()
        time.sleep(0.05)
    return peak, result


def others_still_served(dev, source):
    start = time.monotonic()
    s = Session(dev, source).login("demo", dev.password)
    assert s.command(b"STAT").startswith(b"+OK")
    assert s.command(b"RETR 1").startswith(b"+OK") and s.lines()
    assert s.command(b"QUIT").startswith(b"+OK")
    s.close()
    return time.monotonic() - start


def released(dev, user, password, source, count, seconds=10):
    """The session of a vanished client is cleaned up: its maildrop lock is released (a new login is not
    [IN-USE]) and nothing was deleted."""
    end = time.monotonic() + seconds
    while True:
        s = Session(dev, source)
        assert s.command(b"USER " + user.encode()).startswith(b"+OK")
        reply = s.command(b"PASS " + password.encode())
        if reply.startswith(b"+OK"):
            stat = s.command(b"STAT")
            assert count is None or stat.startswith(b"+OK %d " % count), f"STAT after the vanished session: {stat}"
            s.command(b"QUIT")
            s.close()
            return
        s.close()
        assert b"[IN-USE]" in reply, reply
        assert time.monotonic() < end, f"maildrop still locked {seconds} s after the client went away"
        time.sleep(0.2)


@test
def case52_client_never_reads_during_retr(dev):
    """RETR of a 96 MiB message to a client that never reads (4 KiB receive buffer): pop3d stops reading the file
    (RSS stays bounded), others are served meanwhile; when the client goes away its session is cleaned up."""
    add_user(dev, "stall", "stall-pw")
    line = b"0123456789" * 7 + b"\n"
    block = line * ((1 << 20) // len(line))
    r = subprocess.run([ARGS.pop3d, "deliver", "stall", "--config", dev.config], input=b"Subject: stall\n\n" + block * 96,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fds = open_fds(dev.proc.pid)
    s = Session(dev, "127.0.0.52", rcvbuf=4096).login("stall", "stall-pw")
    before = vm_kib(dev.proc.pid, "VmRSS")
    s.send(b"RETR 1\r\n")
    peak, other = sample_rss(dev.proc.pid, 3.0, lambda: others_still_served(dev, "127.0.0.53"))
    growth = (peak - before) / 1024
    s.abort()  # the client goes away
    released(dev, "stall", "stall-pw", "127.0.0.52", 1)
    end = time.monotonic() + 10
    while open_fds(dev.proc.pid) > fds and time.monotonic() < end:
        time.sleep(0.1)
    print(f"    96 MiB RETR unread for 3 s: pop3d RSS {before // 1024} MiB, peak {peak // 1024} MiB ({growth:+.1f}); "
          f"another session meanwhile {other * 1000:.0f} ms; fds {fds} -> {open_fds(dev.proc.pid)} after the client left")
    assert growth < 24, f"RSS grew {growth:.0f} MiB while the client did not read: RETR does not wait for the client"
    assert other < 2, f"another client took {other:.1f} s"
    assert open_fds(dev.proc.pid) <= fds, f"descriptors {fds} -> {open_fds(dev.proc.pid)}: the session was not closed"


@test
def case68_pipelined_command_flood_without_reading(dev):
    """2,000,000 pipelined LIST of 2,000 messages (40 GB of replies) from a client that never reads: pop3d stops
    reading input while its output is backed up (the client cannot write it all; RSS bounded), serves others, and
    cleans up after the client."""
    add_user(dev, "flood", "flood-pw")
    maildir = os.path.join(dev.data, "mail", "flood")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    for i in range(2000):
        with open(os.path.join(maildir, "new", f"1700000000.M{i}P1.flood"), "wb") as f:
            f.write(b"Subject: %d\n\nx\n" % i)
    fds = open_fds(dev.proc.pid)
    s = Session(dev, "127.0.0.68", rcvbuf=4096).login("flood", "flood-pw")
    assert s.command(b"STAT").startswith(b"+OK 2000 ")
    before = vm_kib(dev.proc.pid, "VmRSS")
    flood = b"LIST\r\n" * 2_000_000  # 12 MB: far more than the kernel buffers hold for a reader that stopped (~3 MB)
    sent = [0]

    def write():
        s.sock.settimeout(4)
        try:
            for i in range(0, len(flood), 16384):
                s.sock.sendall(flood[i:i + 16384])
                sent[0] += 16384
        except (OSError, ssl.SSLError):
            pass
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    peak, other = sample_rss(dev.proc.pid, 3.0, lambda: others_still_served(dev, "127.0.0.69"))
    growth = (peak - before) / 1024
    s.abort(writer)  # the client goes away
    released(dev, "flood", "flood-pw", "127.0.0.68", 2000)
    end = time.monotonic() + 10
    while open_fds(dev.proc.pid) > fds and time.monotonic() < end:
        time.sleep(0.1)
    print(f"    flood of {len(flood) // 1024} KiB LIST (client wrote {min(sent[0], len(flood)) // 1024} KiB before "
          f"blocking): pop3d RSS {before // 1024} MiB, peak {peak // 1024} MiB ({growth:+.1f}); another session "
          f"meanwhile {other * 1000:.0f} ms; fds {fds} -> {open_fds(dev.proc.pid)} after the client left")
    assert sent[0] < len(flood), "the client wrote the whole flood: pop3d kept reading input while output was backed up"
    assert growth < 24, f"RSS grew {growth:.0f} MiB: input is read while output is backed up"
    assert other < 2, f"another client took {other:.1f} s"
    assert open_fds(dev.proc.pid) <= fds, f"descriptors {fds} -> {open_fds(dev.proc.pid)}: the session was not closed"


@test
def one_gigabyte_message_with_bounded_memory(dev):
    """deliver streams 1 GiB from stdin; RETR streams it back with backpressure; pop3d's peak RSS stays small."""
    r = dev.pop3d("user", "add", "big", "--config", dev.config, stdin=b"big-pw\n")
    assert r.returncode == 0, r.stderr
    line = b"0123456789" * 7 + b"\n"
    block = line * ((1 << 20) // len(line))
    p = subprocess.Popen([ARGS.pop3d, "deliver", "big", "--config", dev.config], stdin=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    header = b"Subject: big\n\n"
    p.stdin.write(header)
    written, newlines = len(header), 2
    while written < (1 << 30):
        p.stdin.write(block)
        written += len(block)
        newlines += block.count(b"\n")
    p.stdin.close()
    assert p.wait(timeout=600) == 0, p.stderr.read()
    c = dev.pop3s("big", "big-pw")
    count, total = c.stat()
    assert (count, total) == (1, written + newlines), (count, total, written + newlines)
    c.quit()
    baseline = vm_kib(dev.proc.pid, "VmRSS")
    body = stream_retr_size(dev, "big", "big-pw", 1)
    peak = vm_kib(dev.proc.pid, "VmHWM")
    print(f"    1 GiB RETR: {body} octets streamed; pop3d RSS {baseline // 1024} MiB before, peak {peak // 1024} MiB")
    assert body == total, (body, total)
    assert peak < 256 * 1024, f"peak RSS {peak // 1024} MiB: RETR is not streaming"


def stream_retr_size(dev, user, password, n):
    """RETR over TLS, reading the body in chunks (bounded memory); returns its size without stuffing and terminator."""
    ctx = ssl.create_default_context(cafile=dev.ca)
    with socket.create_connection(("127.0.0.1", dev.tls_port), timeout=120) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            f = s.makefile("rb", buffering=1 << 20)
            assert f.readline().startswith(b"+OK")
            for command in (f"USER {user}", f"PASS {password}", f"RETR {n}"):
                s.sendall(command.encode() + b"\r\n")
                reply = f.readline()
                assert reply.startswith(b"+OK"), reply
            size = 0
            while True:
                line = f.readline(1 << 16)
                assert line, "connection closed before the terminator"
                if line == b".\r\n":
                    break
                if line.startswith(b"."):
                    line = line[1:]
                size += len(line)
            s.sendall(b"QUIT\r\n")
            return size


def peer_fingerprint(dev):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", dev.tls_port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


@test
def sighup_reloads_certificate_without_dropping_sessions(dev):
    before = peer_fingerprint(dev)
    session = dev.pop3s()
    tls_dir = os.path.join(dev.data, "tls")
    shutil.copy(os.path.join(tls_dir, "cert.pem"), os.path.join(dev.dir, "old-cert.pem"))
    # Make a new certificate with openssl and swap it in.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(tls_dir, "key.pem"), "-out", os.path.join(tls_dir, "cert.pem"),
                    "-days", "30", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    dev.proc.send_signal(signal.SIGHUP)
    after = before
    for _ in range(50):
        time.sleep(0.1)
        after = peer_fingerprint(dev)
        if after != before:
            break
    assert after != before, "certificate not reloaded on SIGHUP"
    assert session.stat()[0] >= 1  # the old session is still alive
    session.quit()
    dev.ctx = ssl.create_default_context(cafile=os.path.join(tls_dir, "cert.pem"))
    dev.ca = os.path.join(tls_dir, "cert.pem")


def root_test_base(prefix):
    """For the root-only checks: the unprivileged system user `pop3test` (created if missing) and a fresh folder,
    readable by it, holding a localhost certificate (cert.pem, key.pem)."""
    import pwd
    try:
        entry = pwd.getpwnam("pop3test")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pop3test"], check=True)
        entry = pwd.getpwnam("pop3test")
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{base}/key.pem", "-out", f"{base}/cert.pem", "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    return entry, base


def root_test_config(base):
    """A serve configuration in `base` (from root_test_base) that runs as pop3test: (port, path)."""
    port = free_port()
    config = f"{base}/pop3d.yaml"
    with open(config, "w") as f:
        f.write(f'listen:\n  pop3s: "127.0.0.1:{port}"\ntls:\n  certificate: cert.pem\n  key: key.pem\n'
                f'passwd_file: users\nmaildir: "mail/%u"\nuser: pop3test\n')
    return port, config


def run_as_root_checks():
    """pop3d serve started as root drops to the configured user after binding; deliver as root writes as that user."""
    if os.geteuid() != 0:
        print("SKIP privilege_drop (needs root; CI runs it)")
        return
    entry, base = root_test_base("pop3d-root-")
    with open(f"{base}/users", "w") as f:
        f.write("alice:{PLAIN}alice-pw\n")
    os.makedirs(f"{base}/mail")
    for path in (f"{base}/users", f"{base}/key.pem", f"{base}/cert.pem", f"{base}/mail"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    port, config = root_test_config(base)
    r = subprocess.run([ARGS.pop3d, "deliver", "alice", "--config", config], input=b"Subject: root\n\nhi\n", capture_output=True)
    assert r.returncode == 0, r.stderr
    new = f"{base}/mail/alice/new"
    owners = {os.stat(os.path.join(new, n)).st_uid for n in os.listdir(new)}
    assert owners == {entry.pw_uid}, f"delivered files owned by {owners}, not pop3test"
    proc = subprocess.Popen([ARGS.pop3d, "serve", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        # The port is bound (and connectable) a moment before the drop: poll.
        for _ in range(100):
            with open(f"/proc/{proc.pid}/status") as f:
                ids = [l for l in f if l.startswith(("Uid:", "Gid:"))]
            if ids and ids[0].split()[1] != "0":
                break
            time.sleep(0.05)
        assert all(set(l.split()[1:]) == {str(entry.pw_uid if l.startswith("Uid") else entry.pw_gid)} for l in ids), ids
        c = poplib.POP3_SSL("localhost", port, context=ssl.create_default_context(cafile=f"{base}/cert.pem"), timeout=30)
        c.user("alice")
        c.pass_("alice-pw")
        assert c.stat()[0] == 1
        assert b"hi" in b"".join(c.retr(1)[1])
        c.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # Without user: and without a shared uid in the passwd-file, serve refuses to run as root.
    with open(config, "w") as f:
        f.write(f'listen:\n  pop3s: "127.0.0.1:{free_port()}"\ntls:\n  certificate: cert.pem\n  key: key.pem\n'
                f'passwd_file: users\nmaildir: "mail/%u"\n')
    r = subprocess.run([ARGS.pop3d, "serve", "--config", config], capture_output=True, timeout=60)
    assert r.returncode != 0 and b"user:" in r.stderr, (r.returncode, r.stderr[-400:])
    shutil.rmtree(base, ignore_errors=True)
    print("PASS privilege_drop")


def pop3d_processes():
    """pid -> (ppid, uid, gid, argv) of every running pop3d process."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{name}/status") as f:
                status = dict(l.split(":", 1) for l in f if ":" in l)
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"pop3d"):
            continue
        found[int(name)] = (int(status["PPid"]), int(status["Uid"].split()[1]), int(status["Gid"].split()[1]),
                            [a.decode(errors="replace") for a in argv if a])
    return found


def run_privilege_separation_checks():
    """Mail files accessed with each account's uid/gid: pop3d (as `user:`) asks its root helper for a mail worker
    running as the account; a uid below first_valid_uid is refused; a killed worker costs one session, no mail."""
    if os.geteuid() != 0:
        print("SKIP privilege_separation (needs root; CI runs it)")
        return False
    entry, base = root_test_base("pop3d-privsep-")
    with open(f"{base}/users", "w") as f:
        f.write("alice:{PLAIN}alice-pw:2001:2001\nbob:{PLAIN}bob-pw:2002:2002\nsys:{PLAIN}sys-pw:100:100\n"
                "vm:{PLAIN}vm-pw\n")
    os.makedirs(f"{base}/mail", mode=0o755)
    owners = {"alice": (2001, 2001), "bob": (2002, 2002), "sys": (100, 100), "vm": (entry.pw_uid, entry.pw_gid)}
    for user, (uid, gid) in owners.items():
        os.makedirs(f"{base}/mail/{user}", mode=0o700)
        os.chown(f"{base}/mail/{user}", uid, gid)
    # The passwd-file stays root's (the helper refuses one pop3d could change); pop3d only reads it.
    os.chmod(f"{base}/users", 0o644)
    for path in (f"{base}/key.pem", f"{base}/cert.pem"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    port, config = root_test_config(base)
    for user, body in (("alice", b"first"), ("alice", b"second"), ("bob", b"bob's"), ("vm", b"vm's")):
        r = subprocess.run([ARGS.pop3d, "deliver", user, "--config", config], input=b"Subject: t\n\n" + body + b"\n",
                           capture_output=True)
        assert r.returncode == 0, r.stderr
    # The server's own user cannot even list alice's Maildir: only a process running as alice can serve it.
    r = subprocess.run(["ls", f"{base}/mail/alice/new"], user=entry.pw_uid, group=entry.pw_gid, capture_output=True)
    assert r.returncode != 0, "the test Maildir must be private to its account"
    ctx = ssl.create_default_context(cafile=f"{base}/cert.pem")

    def login(user, password):
        c = poplib.POP3_SSL("localhost", port, context=ctx, timeout=30)
        c.user(user)
        c.pass_(password)
        return c

    def workers():
        return {pid: info for pid, info in pop3d_processes().items() if "mail-worker" in info[3]}

    def until_no_workers():
        for _ in range(100):
            if not workers():
                return
            time.sleep(0.05)

    def refused(user, password, code, why):
        """PASS must fail with `code`, and no worker may be left running."""
        c = poplib.POP3_SSL("localhost", port, context=ctx, timeout=30)
        c.user(user)
        try:
            c.pass_(password)
            raise AssertionError(why)
        except poplib.error_proto as e:
            assert code in e.args[0], e
        assert not workers()

    log = open(f"{base}/pop3d.log", "wb")
    proc = subprocess.Popen([ARGS.pop3d, "serve", "--config", config], stdout=log, stderr=log)
    try:
        wait_port(port)
        for _ in range(100):
            tree = pop3d_processes()
            if tree.get(proc.pid, (0, 0))[1] == entry.pw_uid:
                break
            time.sleep(0.05)
        helpers = [pid for pid, info in tree.items() if info[0] == proc.pid and "privsep" in info[3]]
        assert tree[proc.pid][1:3] == (entry.pw_uid, entry.pw_gid), tree
        assert len(helpers) == 1 and tree[helpers[0]][1] == 0, tree
        helper = helpers[0]

        c = login("alice", "alice-pw")
        assert c.stat()[0] == 2
        running = workers()
        assert [info[:3] for info in running.values()] == [(helper, 2001, 2001)], running
        assert b"first" in b"".join(c.retr(1)[1])
        c.dele(1)
        c.quit()
        assert len(os.listdir(f"{base}/mail/alice/new")) + len(os.listdir(f"{base}/mail/alice/cur")) == 1
        assert os.stat(f"{base}/mail/alice/dovecot-uidlist").st_uid == 2001
        until_no_workers()
        assert not workers(), "the worker outlived its session"

        # Below first_valid_uid (500): refused for good, and no worker started.
        refused("sys", "sys-pw", b"[SYS/PERM]", "sys (uid 100) logged in")

        # An account without a uid in the passwd-file is served by pop3d itself, as `user:`.
        c = login("vm", "vm-pw")
        assert c.stat()[0] == 1 and not workers()
        c.quit()

        # A worker killed mid-session: the session gets -ERR, nothing is lost, the next session works.
        c = login("bob", "bob-pw")
        c.dele(1)
        (victim,) = workers()
        os.kill(victim, signal.SIGKILL)
        try:
            c.retr(1)
        except poplib.error_proto:
            pass
        try:
            c.quit()
            raise AssertionError("QUIT answered +OK though its commit could not run")
        except poplib.error_proto as e:
            assert e.args[0].startswith(b"-ERR [SYS/TEMP]"), e  # "some or none" removed (RFC 1939 §6)
        c = login("bob", "bob-pw")
        assert b"bob's" in b"".join(c.retr(1)[1])
        # A connection dropped without QUIT deletes nothing and frees the maildrop.
        c.dele(1)
        c.file.close()
        c.sock.close()
        until_no_workers()
        c = login("bob", "bob-pw")
        assert c.stat()[0] == 1
        c.quit()

        # A passwd-file that pop3d's own user could change is not trusted to name identities: no worker.
        os.chown(f"{base}/users", entry.pw_uid, entry.pw_gid)
        try:
            refused("bob", "bob-pw", b"[SYS/TEMP]", "a worker was started from a passwd-file pop3d can write")
        finally:
            os.chown(f"{base}/users", 0, 0)
        with open(f"{base}/pop3d.log", "rb") as f:
            assert b"must belong to root" in f.read(), "the refusal is not explained in the log"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0, f"exit {code}"
    for _ in range(100):
        left = [pid for pid, info in pop3d_processes().items() if info[3][1:2] in (["privsep"], ["mail-worker"])]
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"helper or workers outlived pop3d: {left}"
    shutil.rmtree(base, ignore_errors=True)
    return True


def sigterm_is_graceful(dev):
    """SIGTERM: no new connections, a session in progress finishes (its QUIT commits), then exit 0."""
    before = len(dev.maildir_files())
    c = dev.pop3s()
    c.dele(1)
    dev.proc.send_signal(signal.SIGTERM)
    refused = False
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", dev.tls_port), timeout=1):
                pass
            time.sleep(0.05)
        except OSError:
            refused = True
            break
    assert refused, "still accepting connections after SIGTERM"
    assert c.stat()[0] == before - 1  # the old session still works
    c.quit()
    assert dev.proc.wait(timeout=30) == 0, f"exit {dev.proc.returncode}"
    assert len(dev.maildir_files()) == before - 1, "QUIT during shutdown did not commit"


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--pop3d", required=True)
    ARGS = parser.parse_args()
    dev = Dev()
    passed = failed = 0
    try:
        for fn in TESTS:
            try:
                fn(dev)
                passed += 1
                print(f"PASS {fn.__name__}", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {fn.__name__}", flush=True)
                traceback.print_exc()
        try:
            sigterm_is_graceful(dev)
            passed += 1
            print("PASS sigterm_is_graceful", flush=True)
        except Exception:
            failed += 1
            print("FAIL sigterm_is_graceful", flush=True)
            traceback.print_exc()
    finally:
        dev.stop()
    try:
        run_as_root_checks()
        if os.geteuid() == 0:
            passed += 1
    except Exception:
        failed += 1
        print("FAIL privilege_drop", flush=True)
        traceback.print_exc()
    try:
        if run_privilege_separation_checks():
            passed += 1
            print("PASS privilege_separation", flush=True)
    except Exception:
        failed += 1
        print("FAIL privilege_separation", flush=True)
        traceback.print_exc()
    if failed:
        with open(os.path.join(dev.dir, "pop3d.log")) as f:
            sys.stdout.write(f.read()[-4000:])
    if failed == 0:
        shutil.rmtree(dev.dir, ignore_errors=True)
    else:
        print(f"kept {dev.dir} for inspection")
    print(f"interop: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
