#!/usr/bin/env python3
"""The scripted malicious server (research/security.md §2) against the real `pop3 fetch` binary.

Each scenario runs a fake POP3 server on loopback that misbehaves in one way, runs `pop3 fetch` (or `pop3 probe`)
against it, and checks what the client did: it must fail (or cope), never send a credential where TLS is required
but missing, never DELE a message it did not store, and never store a partial message; some scenarios also bound the
client's wall time and peak RSS (measured with wait4 in a small helper process). Scenario names start with
their case number in research/security.md. Two scenarios put a small relay in front of a real TLS server:
openssl s_server for a server-initiated renegotiation (89), and a rewrite of the ALPN choice in a TLS 1.2
ServerHello (87). Prints 'N passed, N failed' at the end.

Usage: scripts/client_security.py --pop3 PATH [--only TEXT]   (CS_VERBOSE=1 prints each client's output)
"""
import argparse
import datetime
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ARGS = None
WORK = None


# ---------------------------------------------------------------- certificates

def write_pem(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_certs(folder):
    """A CA, leaves for localhost (good), other.example (wrong host), an expired one, and a self-signed one."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    write_pem(os.path.join(folder, "ca.pem"), ca.public_bytes(serialization.Encoding.PEM))

    def leaf(label, dns, start, end, issuer=None, issuer_key=None, san=True):
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_name = issuer.subject if issuer else name(dns)
        builder = (x509.CertificateBuilder().subject_name(name(dns)).issuer_name(issuer_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        if issuer:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        cert_path = write_pem(os.path.join(folder, f"{label}.pem"), cert.public_bytes(serialization.Encoding.PEM))
        key_path = write_pem(os.path.join(folder, f"{label}.key"), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path

    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    # Case 85: the name embeds a NUL ("localhost\0.evil.test", as raw bytes in the DER, which `cryptography` writes
    # as given). A C-string comparison would read it as "localhost".
    nul = "localhost\x00.evil.test"
    return {
        "good": leaf("good", "localhost", *valid, ca, ca_key),
        "nul_san": leaf("nul-san", nul, *valid, ca, ca_key),
        "nul_cn": leaf("nul-cn", nul, *valid, ca, ca_key, san=False),
        "wrong_host": leaf("wrong", "other.example", now - datetime.timedelta(days=1), now + datetime.timedelta(days=30), ca, ca_key),
        "expired": leaf("expired", "localhost", now - datetime.timedelta(days=30), now - datetime.timedelta(days=1), ca, ca_key),
        "self_signed": leaf("self", "localhost", now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)),
    }


# ---------------------------------------------------------------- fake server

MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\n..dot line\r\nsecond\r\n"]


class Conn:
    def __init__(self, sock, log):
        self.sock = sock
        self.buf = b""
        self.log = log

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.rstrip(b"\r")
        self.log.append(line)
        return line

    def tls(self, ctx):
        self.sock = ctx.wrap_socket(self.sock, server_side=True)


def server_ctx(cert, key, **kw):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if kw.get("max_tls10"):
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


def transaction(c, uidl=None, retr=None, quit_reply=b"+OK bye\r\n", dele_ok=True, messages=MESSAGES, replies=None):
    """A normal TRANSACTION state with `messages`, with optional overrides; `replies` maps a command to a function
    that answers it instead (returning "close" ends the connection)."""
    uidl = uidl or [b"1 uid-one", b"2 uid-two"]
    while True:
        line = c.line()
        if line is None:
            return
        cmd = line.split(b" ")[0].upper()
        if replies and cmd in replies:
            if replies[cmd](c) == "close":
                c.sock.close()
                return
        elif cmd == b"CAPA":
            c.send(b"+OK\r\nUIDL\r\nPIPELINING\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
        elif cmd == b"STAT":
            c.send(b"+OK %d %d\r\n" % (len(messages), sum(map(len, messages))))
        elif cmd == b"LIST":
            c.send(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i + 1, len(m)) for i, m in enumerate(messages)) + b".\r\n")
        elif cmd == b"UIDL":
            c.send(b"+OK\r\n" + b"".join(u + b"\r\n" for u in uidl) + b".\r\n")
        elif cmd == b"RETR":
            n = int(line.split()[1])
            if retr:
                if retr(c, n) == "close":
                    c.sock.close()
                    return
            else:
                body = messages[n - 1].replace(b"\r\n.", b"\r\n..")
                c.send(b"+OK\r\n" + body + b".\r\n")
        elif cmd == b"DELE":
            c.send(b"+OK\r\n" if dele_ok else b"-ERR no\r\n")
        elif cmd == b"QUIT":
            c.send(quit_reply)
            return
        elif cmd == b"NOOP":
            c.send(b"+OK\r\n")
        else:
            c.send(b"-ERR unknown\r\n")


def login(c, sasl_reply=b"+OK logged in\r\n"):
    """Answers CAPA and one login (AUTH PLAIN or USER/PASS)."""
    while True:
        line = c.line()
        if line is None:
            return False
        cmd = line.split(b" ")[0].upper()
        if cmd == b"CAPA":
            c.send(b"+OK\r\nUIDL\r\nPIPELINING\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
        elif cmd == b"AUTH":
            c.send(sasl_reply)
            return sasl_reply.startswith(b"+OK")
        elif cmd == b"USER":
            c.send(b"+OK\r\n")
        elif cmd == b"PASS":
            c.send(b"+OK\r\n")
            return True
        else:
            c.send(b"-ERR\r\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relay(client, upstream, rewrite=None):
    """Copies bytes both ways between two sockets until either side ends; `rewrite(data)` may change what the
    upstream server sends to the client. Returns the two threads."""
    def pump(src, dst, change):
        try:
            while data := src.recv(65536):
                dst.sendall(change(data) if change else data)
        except OSError:
            pass
        finally:
            for sock in (dst, src):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    threads = [threading.Thread(target=pump, args=(client, upstream, None), daemon=True),
               threading.Thread(target=pump, args=(upstream, client, rewrite), daemon=True)]
    for t in threads:
        t.start()
    return threads


class Scenario:
    """One fake server; `behave(conn)` scripts it. Runs in a thread, for up to `connections` connections in turn.

    `command` is "fetch" (`pop3 fetch` into a Maildir) or "probe" (`pop3 probe`, which connects twice when TLS is
    used: once for the session, once to show the certificate chain). `insecure` runs a pop3:// URL with
    --insecure-plaintext."""

    def __init__(self, name, behave, tls=None, starttls=False, expect_exit=1, credentials_allowed=False,
                 dele_allowed=False, stored=0, extra_args=(), check=None, timeout=None, command="fetch", connections=1,
                 insecure=False, max_seconds=None, max_rss_mib=None, max_rss_growth_mib=None):
        self.name, self.behave, self.tls, self.starttls = name, behave, tls, starttls
        self.expect_exit, self.credentials_allowed, self.dele_allowed = expect_exit, credentials_allowed, dele_allowed
        self.stored, self.extra_args, self.check, self.timeout = stored, extra_args, check, timeout
        self.command, self.connections, self.insecure = command, connections, insecure
        # Bounds on the client's wall time and peak RSS; the growth is over the peak RSS of a fetch of two small
        # messages from a well-behaved server (measured once per run).
        self.max_seconds, self.max_rss_mib, self.max_rss_growth_mib = max_seconds, max_rss_mib, max_rss_growth_mib


def stored_files(maildir):
    """Paths of the messages in the Maildir's new/ and cur/."""
    return [os.path.join(maildir, sub, name) for sub in ("new", "cur")
            if os.path.isdir(os.path.join(maildir, sub)) for name in os.listdir(os.path.join(maildir, sub))]


# Runs the client in a child of its own and records that child's exit status and peak RSS (wait4's ru_maxrss). A
# helper is needed because Linux counts, in ru_maxrss, the peak RSS of the process image an exec replaced: a client
# started straight from this (large) Python process would report this process's peak. The helper is a small Python
# (~13 MiB), below the client's own baseline.
RSS_HELPER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{status} {usage.ru_maxrss}")
"""


def run_client(args, env, folder, limit=120):
    """Runs the client like subprocess.run(capture_output=True), and also records its wall time (`r.seconds`) and
    peak resident set size (`r.peak_rss_mib`). Killed (with its helper) after `limit` seconds."""
    paths = [os.path.join(folder, name) for name in ("client.out", "client.err", "client.rusage")]
    with open(paths[0], "wb") as out, open(paths[1], "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", RSS_HELPER, paths[2]] + list(args), stdout=out,
                                stderr=err, env=env, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise RuntimeError(f"the client was still running after {limit} s (killed)")
        seconds = time.monotonic() - start
    with open(paths[0], "rb") as out, open(paths[1], "rb") as err, open(paths[2]) as rusage:
        status, maxrss_kib = map(int, rusage.read().split())
        r = subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), out.read(), err.read())
    r.seconds, r.peak_rss_mib = seconds, maxrss_kib / 1024  # Linux: ru_maxrss is in KiB
    return r


BASELINE_RSS_MIB = []


def rss_baseline(certs):
    """The client's peak RSS (MiB) for a fetch of MESSAGES from a well-behaved server."""
    if not BASELINE_RSS_MIB:
        def normal(c):
            c.send(b"+OK fake ready\r\n")
            if login(c):
                transaction(c)
        control = Scenario("baseline", normal, tls=server_ctx(*certs["good"]), expect_exit=0, credentials_allowed=True,
                           dele_allowed=True, stored=2)
        problems, r = run_scenario(control, certs)
        if problems:
            raise RuntimeError(f"the baseline fetch failed: {problems}")
        BASELINE_RSS_MIB.append(r.peak_rss_mib)
    return BASELINE_RSS_MIB[0]


def run_scenario(s, certs):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    log = []
    errors = []
    client_done = threading.Event()

    def serve():
        listener.settimeout(0.2)
        served, deadline = 0, time.monotonic() + 60
        while served < s.connections and not client_done.is_set() and time.monotonic() < deadline:
            try:
                sock, _ = listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            served += 1
            c = None
            try:
                sock.settimeout(60)
                c = Conn(sock, log)
                if s.tls:
                    c.tls(s.tls)
                s.behave(c)
            except (OSError, ssl.SSLError):
                pass
            except Exception as e:  # a bug in the fake server itself
                errors.append(e)
            finally:
                (c.sock if c else sock).close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    folder = tempfile.mkdtemp(dir=WORK)
    maildir = os.path.join(folder, "Maildir")
    pw = os.path.join(folder, "pw")
    with open(pw, "w") as f:
        f.write("s3cret-password\n")
    os.chmod(pw, 0o600)
    scheme = "pop3" if s.starttls or s.insecure else "pop3s"
    ca = ["--ca-file", os.path.join(WORK, "certs", "ca.pem")]
    if s.command == "probe":
        args = [ARGS.pop3, "probe"] + ca
    else:
        args = [ARGS.pop3, "fetch", "--password-file", pw, "--maildir", maildir] + ca
    if s.starttls:
        args.append("--starttls")
    if s.insecure:
        args.append("--insecure-plaintext")
    if s.timeout:
        args += ["--timeout", str(s.timeout)]
    args += list(s.extra_args) + [f"{scheme}://alice@localhost:{port}"]
    env = dict(os.environ, XDG_STATE_HOME=os.path.join(folder, "state"))
    try:
        r = run_client(args, env, folder)
    finally:
        client_done.set()
    t.join(10)
    listener.close()
    problems = []
    if errors:
        problems.append(f"fake server error: {errors[0]!r}")
    if r.returncode != s.expect_exit:
        problems.append(f"exit {r.returncode}, expected {s.expect_exit}")
    sent = b"\n".join(log)
    if not s.credentials_allowed and (b"s3cret" in sent or any(l.upper().startswith((b"USER", b"PASS", b"AUTH", b"APOP")) for l in log)):
        problems.append("credentials were sent")
    if not s.dele_allowed and any(l.upper().startswith(b"DELE") for l in log):
        problems.append("DELE was sent")
    files = stored_files(maildir)
    low, high = s.stored if isinstance(s.stored, tuple) else (s.stored, s.stored)
    if not low <= len(files) <= high:
        problems.append(f"{len(files)} messages stored, expected {s.stored}")
    if b"\x1b" in r.stderr or b"\x1b" in r.stdout:
        problems.append("unsanitised escape sequence printed")
    if s.max_seconds is not None and r.seconds > s.max_seconds:
        problems.append(f"the client took {r.seconds:.1f} s, more than {s.max_seconds} s")
    if s.max_rss_mib is not None and r.peak_rss_mib > s.max_rss_mib:
        problems.append(f"the client's peak RSS was {r.peak_rss_mib:.0f} MiB, more than {s.max_rss_mib} MiB")
    if s.max_rss_growth_mib is not None:
        baseline = rss_baseline(certs)
        if r.peak_rss_mib - baseline > s.max_rss_growth_mib:
            problems.append(f"the client's peak RSS was {r.peak_rss_mib:.0f} MiB, {r.peak_rss_mib - baseline:.0f} MiB "
                            f"over the {baseline:.0f} MiB of a small fetch (at most {s.max_rss_growth_mib} MiB allowed)")
    if s.check:
        problems += s.check(r, log, maildir)
    return problems, r


def scenarios(certs):
    good = server_ctx(*certs["good"])

    def greet(c):
        c.send(b"+OK fake ready\r\n")

    def stls_missing(c):
        greet(c)
        while (line := c.line()) is not None:
            if line.upper() == b"CAPA":
                c.send(b"+OK\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n")
            elif line.upper() == b"STLS":
                c.send(b"-ERR not supported\r\n")
            else:
                c.send(b"-ERR\r\n")

    def stls_injection(c):
        greet(c)
        if c.line() is not None:
            c.send(b"+OK Begin fake TLS negotiation now.\r\n+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")
            c.tls(good)
            login(c)
            transaction(c)

    def stls_garbage(c):
        greet(c)
        if c.line() is not None:
            c.send(b"+OK go\r\n")
            c.send(b"this is not TLS at all\r\n" * 4)

    def stls_then_silence(c):
        greet(c)
        if c.line() is not None:
            c.send(b"+OK go\r\n")
            c.sock.recv(65536)
            threading.Event().wait(8)

    def bad_greeting(c):
        c.send(b"+Do you even care?\r\n")
        while c.line() is not None:
            c.send(b"+Okay, do your thing.\r\n")

    def unsolicited(c):
        c.send(b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n")
        login(c)
        transaction(c)

    def long_greeting(c):
        c.send(b"+OK " + b"x" * (512 * 1024) + b"\r\n")
        c.line()

    def silent(c):
        threading.Event().wait(8)

    def normal(c):
        greet(c)
        if login(c):
            transaction(c)

    def sasl_err(c):
        greet(c)
        login(c, sasl_reply=b"-ERR [AUTH] no such mechanism \x1b[31mred\r\n")
        transaction(c)

    def uidl_too_long(c):
        greet(c)
        if login(c):
            transaction(c, uidl=[b"1 " + b"u" * 71, b"2 uid-two"])

    def uidl_duplicate(c):
        greet(c)
        if login(c):
            transaction(c, uidl=[b"1 same", b"2 same"])

    def uidl_space(c):
        greet(c)
        if login(c):
            transaction(c, uidl=[b"1 has space", b"2 ok"])

    def truncated(c):
        greet(c)
        if login(c):
            def retr(conn, n):
                conn.send(b"+OK\r\nSubject: cut\r\n\r\nhalf a mess")
                return "close"
            transaction(c, retr=retr)

    def bare_lf_terminator(c):
        greet(c)
        if login(c):
            def retr(conn, n):
                conn.send(b"+OK\r\nSubject: lf\r\n\r\nbody\n.\nnot the end\r\n")
                return "close"
            transaction(c, retr=retr)

    def slow_drip(c):
        greet(c)
        if login(c):
            def retr(conn, n):
                conn.send(b"+OK\r\n")
                for byte in b"Subject: drip\r\n\r\n" + b"x" * 200:
                    conn.send(bytes([byte]))
                    threading.Event().wait(0.2)
                return "close"
            transaction(c, retr=retr)

    def endless(c):
        greet(c)
        if login(c):
            def retr(conn, n):
                conn.send(b"+OK\r\nSubject: endless\r\n\r\n")
                for _ in range(20000):  # ~20 MB at most, for a message LIST said was tiny
                    conn.send(b"y" * 1023 + b"\n")
                return "close"
            transaction(c, retr=retr)

    # ---- 92: a multi-line reply that never ends. After the login, UIDL (or LIST) answers +OK and then valid
    # listing lines, fast and without the terminating ".", until the client goes away (or 100 s pass). The client
    # must stop at POP3Defaults.maximumListingLines (1,000,000) with an error naming the limit: in bounded time and
    # memory, fetching, storing and deleting nothing.
    endless_sent = {}

    def endless_listing(command, line_of):
        def answer(conn):
            conn.send(b"+OK\r\n")
            n, end = 1, time.monotonic() + 100
            while time.monotonic() < end:
                conn.send(b"".join(line_of(i) for i in range(n, n + 10_000)))
                n += 10_000
                endless_sent[command] = n - 1
            return "close"

        def behave(c):
            greet(c)
            if login(c):
                transaction(c, replies={command: answer})
        return behave

    def stopped_at_listing_limit(command):
        def check(r, log, maildir):
            problems = []
            if b"longer than 1000000 lines" not in r.stderr:
                problems.append("the error does not name the 1,000,000-line listing limit")
            if endless_sent.get(command, 0) < 1_000_000:
                problems.append(f"the server sent only {endless_sent.get(command, 0)} {command.decode()} lines "
                                "before the client stopped (the limit is 1,000,000)")
            if any(l.upper().startswith(b"RETR") for l in log):
                problems.append("RETR was sent after an unfinished listing")
            return problems
        return check

    # ---- 92: a 10 MiB header line (no line break for 10 MiB, every octet but CR and LF) and a normal body. It is
    # legal message data: the client must stream it to the Maildir byte for byte (CRLF -> LF, as every Maildir
    # message here), once, with bounded memory. (The 512-octet limit is for status and listing lines only.)
    octets = bytes(b for b in range(256) if b not in (10, 13))
    long_header = (b"Subject: long header\r\nX-Long: " + (octets * (10 * 2**20 // len(octets) + 1))[:10 * 2**20]
                   + b"\r\n\r\nbody line\r\n.leading dot\r\n\r\nlast line\r\n")

    def long_header_server(c):
        greet(c)
        if login(c):
            transaction(c, uidl=[b"1 uid-long-header"], messages=[long_header])

    def stored_long_header_once(r, log, maildir):
        problems = []
        files = stored_files(maildir)
        if len(files) == 1:
            with open(files[0], "rb") as f:
                data = f.read()
            want = long_header.replace(b"\r\n", b"\n")
            if data != want:
                at = next((i for i, (a, b) in enumerate(zip(data, want)) if a != b), min(len(data), len(want)))
                problems.append(f"stored {len(data)} octets, expected {len(want)}; first difference at octet {at}")
        retrs = sum(1 for l in log if l.upper().startswith(b"RETR"))
        if retrs != 1:
            problems.append(f"{retrs} RETRs, expected 1")
        return problems

    # ---- 92: hostile bytes in server text: ESC/CSI/OSC sequences, a C1 CSI (valid UTF-8 U+009B), a BEL, invalid
    # UTF-8 and a CR in the middle of the line, in the greeting, a CAPA line and an -ERR. The client must report the
    # error with that text made printable: its stdout and stderr are valid UTF-8, with no C0 control but LF, no DEL
    # and no C1 (so no terminal control and no line the server wrote itself), with --verbose logging on.
    hostile = b"\x1b[2J\x1b]0;owned\x07 \xff\xfe\xc3\x28 \xc2\x9b31m bad\x7f\rforged: ok"

    def hostile_greeting(c):
        c.send(b"-ERR " + hostile + b"\r\n")
        c.line()

    def hostile_login(c):
        c.send(b"+OK " + hostile + b"\r\n")
        while (line := c.line()) is not None:
            cmd = line.split(b" ")[0].upper()
            if cmd == b"CAPA":
                c.send(b"+OK\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nX-" + hostile + b"\r\n.\r\n")
            elif cmd in (b"AUTH", b"USER", b"PASS"):
                c.send(b"-ERR [AUTH] " + hostile + b"\r\n")
            elif cmd == b"QUIT":
                c.send(b"+OK\r\n")
                return
            else:
                c.send(b"-ERR\r\n")

    def hostile_probe(c):
        c.send(b"+OK " + hostile + b"\r\n")
        while (line := c.line()) is not None:
            if line.upper() == b"CAPA":
                c.send(b"+OK\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nX-" + hostile + b"\r\n.\r\n")
            elif line.upper() == b"QUIT":
                c.send(b"+OK bye\r\n")
                return
            else:
                c.send(b"-ERR " + hostile + b"\r\n")

    def printable_output(*reports):
        """The hostile text came out printable, and the lines naming `reports` carry it (so the client reported it,
        and the server's CR did not start a line of its own)."""
        def check(r, log, maildir):
            problems = []
            for stream, data in (("stdout", r.stdout), ("stderr", r.stderr)):
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    problems.append(f"{stream} is not valid UTF-8 ({e.reason} at octet {e.start}: {data[e.start:e.start + 4]!r})")
                    text = data.decode("utf-8", errors="replace")
                bad = sorted({f"U+{ord(ch):04X}" for ch in text
                              if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F})
                if bad:
                    problems.append(f"{stream} carries control characters {', '.join(bad)}")
            lines = (r.stdout + r.stderr).decode("utf-8", errors="replace").splitlines()
            for report in reports:
                if not any(report in line and "forged: ok" in line for line in lines):
                    problems.append(f"no output line has '{report}' with the server's text on it")
            if any(line.startswith("forged") for line in lines):
                problems.append("the server's CR started a line of its own")
            return problems
        return check

    def quit_err(c):
        greet(c)
        if login(c):
            transaction(c, quit_reply=b"-ERR [SYS/TEMP] could not delete\r\n")

    def journal_intact(r, log, maildir):
        return [] if b"QUIT" in b"\n".join(log) else ["QUIT not sent"]

    # ---- 79: what `pop3 probe` reports must be what was negotiated, as the server saw it (first connection only).
    def probe_server(seen, stls_ctx=None):
        def behave(c):
            greet(c)
            if stls_ctx:
                if c.line() is None:
                    return
                c.send(b"+OK Begin TLS negotiation now.\r\n")
                time.sleep(0.3)  # a slow server: the handshake ends well after the client read the +OK
                c.tls(stls_ctx)
            if isinstance(c.sock, ssl.SSLSocket) and not seen:
                seen.update(version=c.sock.version(), cipher=c.sock.cipher()[0], alpn=c.sock.selected_alpn_protocol())
            while (line := c.line()) is not None:
                if line.upper() == b"CAPA":
                    c.send(b"+OK\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
                elif line.upper() == b"QUIT":
                    c.send(b"+OK bye\r\n")
                    return
                else:
                    c.send(b"-ERR\r\n")
        return behave

    def probe_reports(seen, mode):
        def check(r, log, maildir):
            out = r.stdout.decode(errors="replace").splitlines()
            problems = []
            if not out or not out[0].startswith("server: ") or not out[0].endswith(f"({mode})"):
                problems.append(f"mode line {out[:1]}, expected '({mode})'")
            tls_lines = [line for line in out if line.startswith("tls:")]
            if not seen:
                problems.append("the fake server saw no TLS session")
            else:
                version = seen["version"].lower().replace(".", "")  # TLSv1.3 -> tlsv13, as NIOSSL names it
                expected = f"tls: {version}, cipher {seen['cipher']}, ALPN {seen['alpn'] or 'none'}"
                if tls_lines != [expected]:
                    problems.append(f"probe reports {tls_lines}, the server negotiated '{expected}'")
            if "certificate: verified" not in out:
                problems.append("'certificate: verified' missing")
            return problems
        return check

    def probe_says_plaintext(r, log, maildir):
        out = r.stdout.decode(errors="replace")
        lines = out.splitlines()
        problems = []
        if not lines or not lines[0].endswith("(plaintext)"):
            problems.append(f"mode line {lines[:1]}, expected '(plaintext)'")
        claims = [l for l in lines if l.startswith(("tls:", "certificate")) or "encrypt" in l.lower() or "verified" in l]
        if claims:
            problems.append(f"claims security on a plaintext connection: {claims}")
        return problems

    def probe_claims_nothing(r, log, maildir):
        claims = [l for l in r.stdout.decode(errors="replace").splitlines()
                  if l.startswith("tls:") or l == "certificate: verified"]
        return [f"unverified server reported as secure: {claims}"] if claims else []

    def alpn_ctx(cert_key, protocols, max_tls12=False, ciphers=None):
        ctx = server_ctx(*cert_key)
        if max_tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.set_ciphers(ciphers)
        if protocols:
            ctx.set_alpn_protocols(protocols)
        return ctx

    seen13, seen12, seen_stls = {}, {}, {}
    tls13_alpn = alpn_ctx(certs["good"], ["pop3"])
    tls12_aes256 = alpn_ctx(certs["good"], None, max_tls12=True, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")

    # ---- 87: the client offers ALPN ["pop3"] only and SNI = the configured host.
    offered = {}
    alpn_choice = alpn_ctx(certs["good"], ["imap", "http/1.1", "pop3"])  # OpenSSL picks the first the client offers

    def remember_sni(sock, server_name, ctx):
        offered["sni"] = server_name
    alpn_choice.sni_callback = remember_sni

    def alpn_offer(c):
        offered["alpn"] = c.sock.selected_alpn_protocol()
        normal(c)

    def offered_only_pop3(r, log, maildir):
        problems = []
        if offered.get("alpn") != "pop3":
            problems.append(f"server selected ALPN {offered.get('alpn')!r} from the client's list (imap and http/1.1 "
                            "came first in its preference): the client offered something else than pop3, or nothing")
        if offered.get("sni") != "localhost":
            problems.append(f"SNI {offered.get('sni')!r}, expected 'localhost'")
        return problems

    # ---- 87: a server that selects a protocol the client did not offer. A standard TLS server cannot, so a relay
    # rewrites "pop3" to "imap" in the ALPN extension of a TLS 1.2 ServerHello (plaintext in 1.2, encrypted in 1.3).
    tls12_pop3 = alpn_ctx(certs["good"], ["pop3"], max_tls12=True)
    rewritten = []

    def alpn_rewrite(data):
        alpn_pop3 = b"\x00\x10\x00\x07\x00\x05\x04pop3"
        if not rewritten and alpn_pop3 in data:
            rewritten.append(True)
            return data.replace(alpn_pop3, b"\x00\x10\x00\x07\x00\x05\x04imap", 1)
        return data

    def alpn_imap(c):
        inner, outer = socket.socketpair()

        def real_server():
            try:
                conn = Conn(tls12_pop3.wrap_socket(inner, server_side=True), c.log)
                greet(conn)
                if login(conn):
                    transaction(conn)
            except (OSError, ssl.SSLError):
                pass
            finally:
                inner.close()
        server = threading.Thread(target=real_server, daemon=True)
        server.start()
        for t in relay(c.sock, outer, alpn_rewrite):
            t.join(30)
        server.join(5)

    def refused_for_alpn(r, log, maildir):
        problems = [] if rewritten else ["the relay found no ALPN 'pop3' in the ServerHello to rewrite"]
        if b"ALPN" not in r.stderr.upper():
            problems.append("the error does not name ALPN")
        return problems

    # ---- 89: openssl s_server (TLS 1.2) behind a relay asks for a renegotiation (its `r` command sends a
    # HelloRequest) after CAPA arrives and before answering it; the CAPA reply follows the HelloRequest.
    sserver_out = []

    def renegotiate(c):
        cert, key = certs["good"]
        port = free_port()
        proc = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", cert, "-key", key,
                                 "-tls1_2", "-crlf"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        out = []

        def read_stdout():
            for line in proc.stdout:
                out.append(line)
                c.log.append(line.rstrip(b"\r\n"))  # what the client sent inside TLS, among s_server's notes
        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()

        def wait_for(predicate, seconds=10):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if any(predicate(line) for line in list(out)):
                    return True
                time.sleep(0.05)
            return False

        def type_in(text):
            proc.stdin.write(text)
            proc.stdin.flush()
        try:
            upstream = None
            for _ in range(100):
                try:
                    upstream = socket.create_connection(("127.0.0.1", port), timeout=30)
                    break
                except OSError:
                    time.sleep(0.05)
            assert upstream, "openssl s_server is not listening"
            threads = relay(c.sock, upstream)
            if wait_for(lambda l: l.startswith(b"Secure Renegotiation")):
                type_in(b"+OK fake ready\n")
                if wait_for(lambda l: l.strip().upper() == b"CAPA"):
                    time.sleep(0.1)
                    type_in(b"r\n")  # alone in one read: s_server's "renegotiate" command
                    time.sleep(0.3)
                    type_in(b"+OK\nUIDL\nUSER\nSASL PLAIN\n.\n")
                    type_in(b"+OK logged in\n")  # would answer AUTH or USER if the client went on
            for t in threads:
                t.join(15)
        finally:
            proc.kill()
            proc.wait()
            reader.join(5)
            sserver_out[:] = out

    def refused_renegotiation(r, log, maildir):
        problems = []
        if not any(l.startswith(b"SSL_do_handshake -> 1") for l in sserver_out):
            problems.append("s_server did not send a HelloRequest: " + repr(b"".join(sserver_out)[-300:]))
        if b"NO_RENEGOTIATION" not in r.stderr:
            problems.append("the error does not say the renegotiation was refused")
        return problems

    # ---- 84 over STLS: the same certificate checks once the connection switched to TLS.
    def stls_then(ctx):
        def behave(c):
            greet(c)
            if c.line() is None:
                return
            c.send(b"+OK Begin TLS negotiation now.\r\n")
            c.tls(ctx)
            if login(c):
                transaction(c)
        return behave

    # ---- 102: --checkpoint N: QUIT after every N messages, so deletions become final even if the link drops later.
    # 20 messages; the first session fetches 10, DELEs them and QUITs; the second drops at its 6th RETR.
    checkpoint_state = {"mailbox": [f"uid-{i}" for i in range(1, 21)], "sessions": 0, "committed": []}

    def checkpoint_body(uid):
        return f"Subject: {uid}\r\n\r\nbody of {uid}\r\n".encode()

    def checkpoint_server(c):
        checkpoint_state["sessions"] += 1
        greet(c)
        if not login(c):
            return
        box, deleted, retrs = list(checkpoint_state["mailbox"]), set(), 0
        while (line := c.line()) is not None:
            cmd = line.upper().split()
            if not cmd:
                c.send(b"-ERR\r\n")
            elif cmd[0] == b"UIDL":
                c.send(b"+OK\r\n" + b"".join(f"{i} {u}\r\n".encode() for i, u in enumerate(box, 1)) + b".\r\n")
            elif cmd[0] == b"LIST":
                c.send(b"+OK\r\n" + b"".join(f"{i} {len(checkpoint_body(u))}\r\n".encode()
                                               for i, u in enumerate(box, 1)) + b".\r\n")
            elif cmd[0] == b"RETR":
                retrs += 1
                if checkpoint_state["sessions"] == 2 and retrs == 6:
                    return  # the link drops
                c.send(b"+OK\r\n" + checkpoint_body(box[int(cmd[1]) - 1]) + b".\r\n")
            elif cmd[0] == b"DELE":
                deleted.add(int(cmd[1]))
                c.send(b"+OK\r\n")
            elif cmd[0] == b"QUIT":
                checkpoint_state["committed"] += [box[i - 1] for i in sorted(deleted)]
                checkpoint_state["mailbox"] = [u for i, u in enumerate(box, 1) if i not in deleted]
                c.send(b"+OK bye\r\n")
                return
            else:
                c.send(b"-ERR\r\n")

    def checkpoint_committed(r, log, maildir):
        problems = []
        if checkpoint_state["committed"] != [f"uid-{i}" for i in range(1, 11)]:
            problems.append(f"server committed deletions of {checkpoint_state['committed']}, expected uid-1..uid-10")
        if checkpoint_state["mailbox"] != [f"uid-{i}" for i in range(11, 21)]:
            problems.append(f"server kept {checkpoint_state['mailbox']}, expected uid-11..uid-20")
        if sum(1 for l in log if l.upper().startswith(b"DELE")) != 10:
            problems.append("expected exactly 10 DELEs (none in the session that dropped)")
        subjects = []
        for path in stored_files(maildir):
            with open(path, "rb") as f:
                subjects.append(f.readline())
        if len(subjects) != len(set(subjects)) or b"Subject: uid-1\n" not in subjects:
            problems.append(f"stored messages are not uid-1.. each once: {sorted(subjects)}")
        return problems

    # A server that lists ten new messages in every session cannot keep a --checkpoint client reconnecting forever:
    # it stops after the sessions the first listing needs, plus one (10 / 5 + 1 = 3 more after the first).
    endless_sessions = {"count": 0}

    def endless_new_mail(c):
        endless_sessions["count"] += 1
        greet(c)
        if not login(c):
            return
        box = [f"s{endless_sessions['count']}-{i}" for i in range(1, 11)]
        transaction(c, uidl=[f"{i} {u}".encode() for i, u in enumerate(box, 1)],
                    messages=[checkpoint_body(u) for u in box])

    def stopped_after_four_sessions(r, log, maildir):
        n = endless_sessions["count"]
        problems = [] if n == 4 else [f"{n} sessions, expected 4"]
        if b"stopping after 4 --checkpoint sessions" not in r.stderr:
            problems.append(f"no warning that the session bound stopped the run: {r.stderr[-300:]!r}")
        return problems

    # ---- 97: [IN-USE] at login.
    def in_use(c):
        greet(c)
        while (line := c.line()) is not None:
            cmd = line.split(b" ")[0].upper()
            if cmd == b"CAPA":
                c.send(b"+OK\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
            elif cmd == b"USER":
                c.send(b"+OK\r\n")
            elif cmd in (b"AUTH", b"PASS"):
                c.send(b"-ERR [IN-USE] try again later\r\n")  # the text does not say "in use": the client must
            elif cmd == b"QUIT":
                c.send(b"+OK\r\n")
                return
            else:
                c.send(b"-ERR\r\n")

    def names_in_use_once(r, log, maildir):
        problems = []
        if b"IN-USE" not in r.stderr.upper() and b"IN USE" not in r.stderr.upper():
            problems.append("the error does not name the in-use condition")
        attempts = [l for l in log if l.upper().startswith((b"AUTH", b"PASS"))]
        if len(attempts) != 1:
            problems.append(f"{len(attempts)} login attempts, expected exactly 1")
        after = [l for l in log if l.upper().split(b" ")[0] in (b"STAT", b"LIST", b"UIDL", b"RETR", b"TOP")]
        if after:
            problems.append(f"commands after the refused login: {after}")
        return problems

    def says(text):
        def check(r, log, maildir):
            return [] if text.encode() in r.stderr else [f"stderr does not say '{text}'"]
        return check

    expired = server_ctx(*certs["expired"])
    wrong = server_ctx(*certs["wrong_host"])
    selfsigned = server_ctx(*certs["self_signed"])
    tls10 = server_ctx(*certs["good"], max_tls10=True)

    return [
        Scenario("71 STLS missing and refused → abort, no credentials", stls_missing, starttls=True),
        Scenario("74 malformed greeting → abort before login", bad_greeting, tls=good),
        Scenario("74 malformed greeting on STLS path", bad_greeting, starttls=True),
        Scenario("80 injected reply after STLS +OK → abort", stls_injection, starttls=True),
        Scenario("81 garbage instead of TLS after STLS → abort", stls_garbage, starttls=True),
        Scenario("106 silent after STLS +OK → deadline", stls_then_silence, starttls=True, timeout=3),
        Scenario("83 unsolicited multi-line data → abort", unsolicited, tls=good),
        Scenario("84 self-signed certificate → abort", normal, tls=selfsigned),
        Scenario("84 wrong host name → abort", normal, tls=wrong),
        Scenario("84 expired certificate → abort", normal, tls=expired),
        *[Scenario(f"84 over STLS: {what} → abort after the +OK, no credentials", stls_then(ctx), starttls=True)
          for what, ctx in (("self-signed certificate", selfsigned), ("wrong host name", wrong), ("expired certificate", expired))],
        Scenario("88 TLS 1.0 only → refuse", normal, tls=tls10),
        Scenario("92 512 KiB greeting → abort", long_greeting, tls=good),
        Scenario("106 silent server → deadline", silent, tls=good, timeout=3),
        Scenario("92 UIDL that never ends (valid lines, fast) → abort at 1,000,000 lines, bounded time and memory, "
                 "nothing stored, no DELE", endless_listing(b"UIDL", lambda i: b"%d uid-%d\r\n" % (i, i)), tls=good,
                 credentials_allowed=True, check=stopped_at_listing_limit(b"UIDL"), max_seconds=60, max_rss_mib=300),
        Scenario("92 LIST that never ends (valid lines, fast) → abort at 1,000,000 lines, bounded time and memory, "
                 "nothing stored, no DELE", endless_listing(b"LIST", lambda i: b"%d 120\r\n" % i), tls=good,
                 credentials_allowed=True, check=stopped_at_listing_limit(b"LIST"), max_seconds=60, max_rss_mib=300),
        Scenario("92 10 MiB header line → stored byte for byte (CRLF → LF) once, bounded memory", long_header_server,
                 tls=good, expect_exit=0, credentials_allowed=True, dele_allowed=True, stored=1,
                 check=stored_long_header_once, max_rss_growth_mib=8),
        Scenario("92 -ERR greeting with ESC, C1, BEL, DEL, CR, invalid UTF-8 (--verbose) → error reported printable",
                 hostile_greeting, tls=good, extra_args=("--verbose",), check=printable_output("greeting is not +OK")),
        Scenario("92 same bytes in the +OK greeting, a CAPA line and AUTH -ERR (--verbose) → login error reported "
                 "printable", hostile_login, tls=good, extra_args=("--verbose",), credentials_allowed=True,
                 check=printable_output("login failed [AUTH]")),
        Scenario("92 probe: same bytes in the greeting and a CAPA line → printed printable", hostile_probe, tls=good,
                 command="probe", connections=2, expect_exit=0, check=printable_output("greeting: ", "X-")),
        Scenario("94 SASL -ERR → abort, escapes sanitised", sasl_err, tls=good, credentials_allowed=True),
        Scenario("91 UIDL of 71 octets → abort, no DELE", uidl_too_long, tls=good, credentials_allowed=True),
        Scenario("91 duplicate UIDL → abort, no DELE", uidl_duplicate, tls=good, credentials_allowed=True),
        Scenario("91 UIDL with a space → abort, no DELE", uidl_space, tls=good, credentials_allowed=True),
        Scenario("90 connection ends mid-RETR → nothing stored, no DELE", truncated, tls=good, credentials_allowed=True),
        Scenario("96 bare-LF dot is not a terminator", bare_lf_terminator, tls=good, credentials_allowed=True),
        Scenario("107 slow-drip body → per-message deadline, nothing stored", slow_drip, tls=good, credentials_allowed=True,
                 timeout=3),
        Scenario("93/107 endless body for a tiny LIST size → abort, nothing stored", endless, tls=good,
                 credentials_allowed=True),
        Scenario("97 QUIT -ERR → error, messages stored, DELE only after storing", quit_err, tls=good,
                 credentials_allowed=True, dele_allowed=True, stored=2, check=journal_intact),
        # What the second session stored before the drop depends on how much the client read before the reset.
        Scenario("102 --checkpoint 10, link drops in the 2nd session: 1-10 deleted for good, 11-20 left on the server",
                 checkpoint_server, tls=good, connections=2, extra_args=("--checkpoint", "10"), expect_exit=1,
                 credentials_allowed=True, dele_allowed=True, stored=(10, 15), check=checkpoint_committed),
        Scenario("102 --checkpoint 5 against a server with new mail in every session: stops after 4 sessions",
                 endless_new_mail, tls=good, connections=6, extra_args=("--checkpoint", "5"), expect_exit=0,
                 credentials_allowed=True, dele_allowed=True, stored=20, check=stopped_after_four_sessions),
        Scenario("97 PASS/AUTH -ERR [IN-USE] → exit 1 naming IN-USE, one attempt, nothing stored or deleted", in_use,
                 tls=good, credentials_allowed=True, check=names_in_use_once),
        Scenario("85 NUL in the subjectAltName (localhost\\0.evil.test) → refused for the host name", normal,
                 tls=server_ctx(*certs["nul_san"]), check=says("not valid for this host name")),
        Scenario("85 NUL in the CN, no subjectAltName (localhost\\0.evil.test) → refused for the host name", normal,
                 tls=server_ctx(*certs["nul_cn"]), check=says("not valid for this host name")),
        Scenario("89 server-initiated renegotiation (s_server, TLS 1.2) before the CAPA reply → refused, no credentials",
                 renegotiate, check=refused_renegotiation, timeout=10),
        Scenario("87 client offers ALPN pop3 only and SNI localhost (server prefers imap, http/1.1)", alpn_offer,
                 tls=alpn_choice, expect_exit=0, credentials_allowed=True, dele_allowed=True, stored=2,
                 check=offered_only_pop3),
        Scenario("87 server selects ALPN imap (rewritten TLS 1.2 ServerHello) → abort, no credentials", alpn_imap,
                 check=refused_for_alpn),
        Scenario("79 probe, implicit TLS 1.3 + ALPN: reports the negotiated version, cipher, ALPN; verified",
                 probe_server(seen13), tls=tls13_alpn, command="probe", connections=2, expect_exit=0,
                 check=probe_reports(seen13, "implicit TLS")),
        Scenario("79 probe, implicit TLS 1.2 ECDHE-ECDSA-AES256-GCM-SHA384, no ALPN: reported as negotiated",
                 probe_server(seen12), tls=tls12_aes256, command="probe", connections=2, expect_exit=0,
                 check=probe_reports(seen12, "implicit TLS")),
        Scenario("79 probe, STLS (TLS 1.3 + ALPN, slow handshake): reports the negotiated version, cipher, ALPN",
                 probe_server(seen_stls, tls13_alpn), starttls=True, command="probe", connections=2, expect_exit=0,
                 check=probe_reports(seen_stls, "STLS")),
        Scenario("79 probe --insecure-plaintext: reported as plaintext, no TLS or certificate claim",
                 probe_server({}), insecure=True, command="probe", expect_exit=0, check=probe_says_plaintext),
        Scenario("79 probe of a self-signed server: exit 1, never reported as TLS or verified",
                 probe_server({}), tls=selfsigned, command="probe", connections=2, check=probe_claims_nothing),
        Scenario("control: a well-behaved server is fetched", normal, tls=good, expect_exit=0,
                 credentials_allowed=True, dele_allowed=True, stored=2),
        Scenario("control: STLS server is fetched", lambda c: (greet(c), c.line(), c.send(b"+OK\r\n"), c.tls(good),
                                                             login(c) and transaction(c)),
                 starttls=True, expect_exit=0, credentials_allowed=True, dele_allowed=True, stored=2),
    ]


def main():
    global ARGS, WORK
    parser = argparse.ArgumentParser()
    parser.add_argument("--pop3", required=True)
    parser.add_argument("--only", help="run only the scenarios whose name contains this text")
    ARGS = parser.parse_args()
    WORK = tempfile.mkdtemp(prefix="pop3-client-security-")
    os.makedirs(os.path.join(WORK, "certs"))
    certs = make_certs(os.path.join(WORK, "certs"))
    passed = failed = 0
    for s in scenarios(certs):
        if ARGS.only and ARGS.only not in s.name:
            continue
        try:
            problems, r = run_scenario(s, certs)
        except Exception:
            problems, r = [traceback.format_exc()], None
        if problems:
            failed += 1
            print(f"FAIL {s.name}: {'; '.join(problems)}")
            if r is not None:
                print("    stderr: " + r.stderr.decode(errors="replace").strip()[:500])
        else:
            passed += 1
            why = r.stderr.decode(errors="replace").strip().splitlines()
            print(f"PASS {s.name}" + (f"  [{why[-1][:110]}]" if why and s.expect_exit else ""))
            if os.environ.get("CS_VERBOSE"):
                print(f"    client: {r.seconds:.1f} s, peak RSS {r.peak_rss_mib:.0f} MiB")
                print("    stdout: " + r.stdout.decode(errors="replace").strip()[:600] + "\n    stderr: " + r.stderr.decode(errors="replace").strip()[:600])
    if failed == 0:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"client-security: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
