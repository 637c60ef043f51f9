#!/usr/bin/env python3
"""Interop tests: the real pop3d binary against real peers (Python poplib, curl, openssl s_client)
and the admin commands, all on loopback. Prints one line per check and a closing
'N passed, N failed' line; exits non-zero on any failure.

Usage: scripts/interop.py --pop3d PATH
"""
import argparse
import hashlib
import os
import poplib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
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


def run_as_root_checks():
    """pop3d serve started as root drops to the configured user after binding; deliver as root writes as that user."""
    if os.geteuid() != 0:
        print("SKIP privilege_drop (needs root; CI runs it)")
        return
    import pwd
    try:
        entry = pwd.getpwnam("pop3test")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pop3test"], check=True)
        entry = pwd.getpwnam("pop3test")
    base = tempfile.mkdtemp(prefix="pop3d-root-")
    os.chmod(base, 0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{base}/key.pem", "-out", f"{base}/cert.pem", "-days", "30", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    with open(f"{base}/users", "w") as f:
        f.write("alice:{PLAIN}alice-pw\n")
    os.makedirs(f"{base}/mail")
    for path in (f"{base}/users", f"{base}/key.pem", f"{base}/cert.pem", f"{base}/mail"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    port = free_port()
    config = f"{base}/pop3d.yaml"
    with open(config, "w") as f:
        f.write(f'listen:\n  pop3s: "127.0.0.1:{port}"\ntls:\n  certificate: cert.pem\n  key: key.pem\n'
                f'passwd_file: users\nmaildir: "mail/%u"\nuser: pop3test\n')
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
