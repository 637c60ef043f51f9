"""Machinery of tests/test_client_security.py: a scripted malicious POP3 server on loopback and the client run
against it.

A scenario runs a fake POP3 server (in a thread) that misbehaves in one way, runs `pop3 fetch` (or `pop3 probe`)
against it, and checks what the client did: it must fail (or cope), never send a credential where TLS is required
but missing, never DELE a message it did not store, and never store a partial message; some scenarios also bound the
client's wall time and peak RSS (measured with wait4 in a small helper process). The case numbers in the scenario
names are those of docs/security-cases.md.
"""
import datetime
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PASSWORD = "s3cret-password"

# ---------------------------------------------------------------- certificates


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


class Certs:
    """A CA and leaves for localhost (good), other.example (wrong host), an expired one, a self-signed one, and two
    whose name embeds a NUL (docs/security-cases.md case 85), written to `folder`. `ctx(label)` is a fresh server
    SSLContext for one of them."""

    def __init__(self, folder):
        self.folder = folder
        now = datetime.datetime.now(datetime.timezone.utc)

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False, decipher_only=False),
                             critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        self.ca = _write(os.path.join(folder, "ca.pem"), ca.public_bytes(serialization.Encoding.PEM))

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
            cert_path = _write(os.path.join(folder, f"{label}.pem"), cert.public_bytes(serialization.Encoding.PEM))
            key_path = _write(os.path.join(folder, f"{label}.key"), key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            return cert_path, key_path

        valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
        # Case 85: the name embeds a NUL ("localhost\0.evil.test", as raw bytes in the DER, which `cryptography`
        # writes as given). A C-string comparison would read it as "localhost".
        nul = "localhost\x00.evil.test"
        self.pairs = {
            "good": leaf("good", "localhost", *valid, ca, ca_key),
            "nul_san": leaf("nul-san", nul, *valid, ca, ca_key),
            "nul_cn": leaf("nul-cn", nul, *valid, ca, ca_key, san=False),
            "wrong_host": leaf("wrong", "other.example", *valid, ca, ca_key),
            "expired": leaf("expired", "localhost", now - datetime.timedelta(days=30),
                            now - datetime.timedelta(days=1), ca, ca_key),
            "self_signed": leaf("self", "localhost", *valid),
        }

    def __getitem__(self, label):
        """(certificate path, key path) of a leaf."""
        return self.pairs[label]

    def ctx(self, label, max_tls10=False, max_tls12=False, ciphers=None, alpn=None):
        """A fresh server context for leaf `label`; TLS 1.0 only, at most TLS 1.2, a cipher list, ALPN protocols."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.pairs[label])
        if max_tls10:
            with warnings.catch_warnings():  # deprecated on purpose: the scenario is a server stuck on TLS 1.0
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        if max_tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            ctx.set_ciphers(ciphers)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


# ---------------------------------------------------------------- fake server

MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\n..dot line\r\nsecond\r\n"]


class Conn:
    """One accepted connection of the fake server; every line the client sends is appended to `log`."""

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


def greet(c):
    c.send(b"+OK fake ready\r\n")


def commands(c):
    """The client's lines with their upper-cased command word, until it closes."""
    while (line := c.line()) is not None:
        yield line, line.split(b" ")[0].upper()


def login(c, sasl_reply=b"+OK logged in\r\n"):
    """Answers CAPA and one login (AUTH PLAIN or USER/PASS)."""
    for line, cmd in commands(c):
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
    return False


def scram_login(c, sasl=b"SCRAM-SHA-256", mutate=None):
    """Answers CAPA (offering `sasl`) and runs the server side of one SCRAM-SHA-256 exchange for PASSWORD, with
    one deliberate fault: mutate(step, value) may replace the server-first attributes (step "first", a dict) or
    the server-final message (step "final", bytes), or return "ok-now" at "final" to accept the login without
    proving anything. Returns True when the client went on to log in."""
    import base64
    import hashlib
    import hmac
    for line, cmd in commands(c):
        if cmd == b"CAPA":
            c.send(b"+OK\r\nUIDL\r\nPIPELINING\r\nSASL " + sasl + b"\r\n.\r\n")
            continue
        if cmd != b"AUTH" or not line.upper().startswith(b"AUTH SCRAM-SHA-256"):
            c.send(b"-ERR not offered\r\n")
            continue
        parts = line.split(b" ")
        first = base64.b64decode(parts[2]) if len(parts) > 2 else None
        if first is None:
            c.send(b"+ \r\n")
            first = base64.b64decode(c.line())
        gs2, _, bare = first.decode().partition(",,")
        client_nonce = dict(kv.split("=", 1) for kv in bare.split(","))["r"]
        attrs = {"r": client_nonce + "srvNONCE", "s": base64.b64encode(b"salty-salt").decode(), "i": "4096"}
        if mutate:
            attrs = mutate("first", attrs) or attrs
        server_first = ",".join(f"{k}={v}" for k, v in attrs.items())
        c.send(b"+ " + base64.b64encode(server_first.encode()) + b"\r\n")
        final = c.line()
        if final is None or final == b"*":
            c.send(b"-ERR cancelled\r\n")
            return False
        final = base64.b64decode(final).decode()
        without_proof = final.rsplit(",p=", 1)[0]
        salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), b"salty-salt", 4096)
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        server_final = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, "sha256").digest())
        if mutate:
            changed = mutate("final", server_final)
            if changed == "ok-now":
                c.send(b"+OK logged in\r\n")
                return True
            server_final = changed or server_final
        c.send(b"+ " + base64.b64encode(server_final) + b"\r\n")
        ack = c.line()
        if ack != b"":
            c.send(b"-ERR cancelled\r\n")
            return False
        c.send(b"+OK logged in\r\n")
        return True
    return False


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


def normal(c):
    """A well-behaved server: greeting, login, two messages."""
    greet(c)
    if login(c):
        transaction(c)


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
    --insecure-plaintext. `check(r, log, maildir)` returns a list of further problems."""

    def __init__(self, name, behave, tls=None, starttls=False, expect_exit=1, credentials_allowed=False,
                 dele_allowed=False, stored=0, extra_args=(), check=None, timeout=None, command="fetch", connections=1,
                 insecure=False, max_seconds=None, max_rss_mib=None, max_rss_growth_mib=None):
        self.name, self.behave, self.tls, self.starttls = name, behave, tls, starttls
        self.expect_exit, self.credentials_allowed, self.dele_allowed = expect_exit, credentials_allowed, dele_allowed
        self.stored, self.extra_args, self.check, self.timeout = stored, extra_args, check, timeout
        self.command, self.connections, self.insecure = command, connections, insecure
        # Bounds on the client's wall time and peak RSS; the growth is over the peak RSS of a fetch of two small
        # messages from a well-behaved server (measured once per session).
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
    f.write(f"{status} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""


def run_client(args, env, folder, limit=120):
    """Runs the client like subprocess.run(capture_output=True), and also records its wall time (`r.seconds`), CPU
    time (`r.cpu_seconds`) and peak resident set size (`r.peak_rss_mib`). Killed (its own process group: the
    helper and the client) after `limit` seconds."""
    paths = [os.path.join(folder, name) for name in ("client.out", "client.err", "client.rusage")]
    with open(paths[0], "wb") as out, open(paths[1], "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", RSS_HELPER, paths[2]] + list(args), stdout=out,
                                stderr=err, env=env, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the group this call created (start_new_session), nothing else
            proc.wait()
            raise RuntimeError(f"the client was still running after {limit} s (killed)")
        seconds = time.monotonic() - start
    with open(paths[0], "rb") as out, open(paths[1], "rb") as err, open(paths[2]) as rusage:
        status, maxrss_kib, cpu = rusage.read().split()
        r = subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(int(status)), out.read(), err.read())
    r.seconds, r.peak_rss_mib = seconds, int(maxrss_kib) / 1024  # Linux: ru_maxrss is in KiB
    r.cpu_seconds = float(cpu)  # user + system, for the record (the bounds are on wall time)
    return r


def run_scenario(s, certs, pop3, folder, baseline_rss_mib=None):
    """Runs scenario `s` with the client binary `pop3`, in `folder` (a fresh directory). Returns (problems, r):
    the list of what went wrong (empty when the client behaved) and the client's CompletedProcess (with `seconds`
    and `peak_rss_mib`). `baseline_rss_mib()` gives the peak RSS of a small well-behaved fetch, for
    `max_rss_growth_mib`."""
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
    maildir = os.path.join(folder, "Maildir")
    pw = os.path.join(folder, "pw")
    with open(pw, "w") as f:
        f.write(PASSWORD + "\n")
    os.chmod(pw, 0o600)
    scheme = "pop3" if s.starttls or s.insecure else "pop3s"
    ca = ["--ca-file", certs.ca]
    if s.command == "probe":
        args = [pop3, "probe"] + ca
    else:
        args = [pop3, "fetch", "--password-file", pw, "--maildir", maildir] + ca
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
    if not s.credentials_allowed and (b"s3cret" in sent or any(
            line.upper().startswith((b"USER", b"PASS", b"AUTH", b"APOP")) for line in log)):
        problems.append("credentials were sent")
    if not s.dele_allowed and any(line.upper().startswith(b"DELE") for line in log):
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
        baseline = baseline_rss_mib()
        if r.peak_rss_mib - baseline > s.max_rss_growth_mib:
            problems.append(f"the client's peak RSS was {r.peak_rss_mib:.0f} MiB, "
                            f"{r.peak_rss_mib - baseline:.0f} MiB over the {baseline:.0f} MiB of a small fetch "
                            f"(at most {s.max_rss_growth_mib} MiB allowed)")
    if s.check:
        problems += s.check(r, log, maildir)
    return problems, r
