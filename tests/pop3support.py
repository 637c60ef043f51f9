"""Shared helpers for the process-level tests in tests/: ports, the `pop3d dev` launcher, a raw POP3 client,
certificates, messages, /proc samplers and a Dovecot launcher. Fixtures live in conftest.py and only wire these up.

Everything here touches only loopback and only processes it started (signalled by PID). Every socket and
subprocess call carries a timeout: the suite has no global one.
"""
import base64
import datetime
import hashlib
import hmac
import ipaddress
import os
import poplib
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

LOCALHOST = "127.0.0.1"
EX_NOUSER = 67
EX_TEMPFAIL = 75
EX_NOPERM = 77


# ---------------------------------------------------------------- ports and processes

_handed_out = set()


def free_port(host=LOCALHOST):
    """A TCP port that was free a moment ago, and never handed out before in this run: a server that got a port
    but binds it only later (after set-up commands, or between a stop and a restart) must not find another test's
    server on it."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh TCP port after 1000 tries")


def tail(path, n=8):
    """The last n lines of a text file joined with ' | ' ('' if it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.rstrip() for line in f.readlines()[-n:])
    except OSError:
        return ""


def wait_port(port, proc=None, seconds=60, host=LOCALHOST, log_path=None):
    """Waits until host:port accepts a connection. Raises RuntimeError if `proc` exits first (with the tail of
    `log_path`, if given) or after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening on {port}"
                               + (f": {tail(log_path)}" if log_path else ""))
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} not listening after {seconds} s"
                                   + (f": {tail(log_path)}" if log_path else ""))
            time.sleep(0.05)


def stop_process(proc, grace=10):
    """SIGTERM, then SIGKILL after `grace` seconds, a process we started (by its PID). Returns its exit status,
    or the string "SIGKILL after N s"."""
    if proc is None:
        return None
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return f"SIGKILL after {grace} s"


def start_logs(root, prefix, starts):
    """The text of ROOT/PREFIX-1.log … PREFIX-STARTS.log (one per start of a server), those that exist."""
    out = []
    for n in range(1, starts + 1):
        try:
            with open(os.path.join(root, f"{prefix}-{n}.log"), errors="replace") as f:
                out.append(f.read())
        except OSError:
            pass
    return "".join(out)


def shared_tmpdir(prefix):
    """A fresh temporary folder with mode 0755, for servers that run as another user (pytest's tmp_path is 0700
    all the way up, so `nobody` could not reach it)."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


def write_secret(path, text):
    """Writes text + newline to path with mode 0600; returns path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------- /proc samplers

def proc_status(pid, field):
    """The first number of a /proc/PID/status field (VmRSS, VmHWM, Threads, Uid, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def vm_kib(pid, field):
    """A Vm* field of /proc/PID/status in KiB (VmRSS, VmHWM, VmPeak, ...)."""
    return proc_status(pid, field)


def rss_kib(pid):
    return vm_kib(pid, "VmRSS")


def fd_count(pid, except_peer_port=None):
    """The process's open descriptors; with except_peer_port, less its TCP connections to that port on loopback
    (a database connection pool opens them as it needs)."""
    fds = os.listdir(f"/proc/{pid}/fd")
    if except_peer_port is None:
        return len(fds)
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                rows = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... uid timeout inode
            if int(fields[2].rsplit(":", 1)[1], 16) == except_peer_port:
                inodes.add(fields[9])
    count = 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if not (target.startswith("socket:[") and target[8:-1] in inodes):
            count += 1
    return count


def settled_fd_count(pid, seconds=2.0):
    """The lowest descriptor count seen over a short window (NIO closes asynchronously)."""
    low = fd_count(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        low = min(low, fd_count(pid))
    return low


class RSSSampler(threading.Thread):
    """Samples the VmRSS of `pid` every `interval` seconds while a block runs:

        with RSSSampler(pid) as rss:
            ...
        rss.peak, rss.samples  # KiB; [(monotonic time, KiB)]

    The first sample is taken on entry, the last on exit."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples = []
        self.peak = 0
        self._stop_event = threading.Event()

    def sample(self):
        try:
            value = rss_kib(self.pid)
        except (OSError, KeyError):
            return
        self.samples.append((time.monotonic(), value))
        self.peak = max(self.peak, value)

    def run(self):
        while not self._stop_event.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self.start()
        return self

    def __exit__(self, *exc):
        self._stop_event.set()
        self.join(10)
        self.sample()
        return False


# ---------------------------------------------------------------- messages

def crlf(data):
    """What POP3 sends for stored bytes: bare LF becomes CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def normalize(data):
    """CRLF to LF."""
    return data.replace(b"\r\n", b"\n")


def pop3_size(data):
    """Octets as served: every line ending CRLF."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def make_message(tag, index, body_bytes=0):
    """(Message-ID, bytes): an LF-ended message with a unique Message-ID; the body holds about body_bytes of base64
    lines (some starting with a dot), or two short lines (one starting with a dot) when body_bytes is 0."""
    msgid = f"<{tag}-{index}@pop3.test>"
    head = (f"From: tests@example.test\nTo: user@example.test\nSubject: {tag} {index}\n"
            f"Message-ID: {msgid}\n\n").encode()
    if body_bytes <= 0:
        body = f"message {index} of {tag}\n.leading dot line\n".encode()
    else:
        rng = random.Random(f"{tag}-{index}")
        raw = rng.randbytes(body_bytes * 3 // 4)
        b64 = base64.encodebytes(raw)  # 76-char lines ending in LF
        body = b64.replace(b"\nA", b"\n.A")  # some lines start with a dot (byte-stuffing on the wire)
    return msgid, head + body


# ---------------------------------------------------------------- passwords and certificates

def sha512_crypt(password):
    """A `{SHA512-CRYPT}$6$…` passwd-file hash (via `openssl passwd -6`)."""
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=(password + "\n").encode(), capture_output=True,
                       timeout=30)
    if r.returncode != 0 or not r.stdout.startswith(b"$6$"):
        raise RuntimeError(f"openssl passwd -6 failed: {r.stderr.decode(errors='replace').strip()}")
    return "{SHA512-CRYPT}" + r.stdout.decode().strip()


def make_cert(folder, dns=("localhost",), ips=("127.0.0.1", "::1"), days=30, issued_days_ago=0):
    """A self-signed end-entity certificate (CA:FALSE, SKI/AKI, serverAuth, SAN DNS + IP), the profile `pop3d dev`
    writes; EC P-256. Writes folder/cert.pem and folder/key.pem (0600); returns (cert path, key path).
    No keyUsage: BoringSSL (the client's TLS) checks a self-signed certificate's own keyUsage as its issuer's, and
    digitalSignature alone lacks keyCertSign."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1, days=issued_days_ago)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(key, hashes.SHA256()))
    os.makedirs(folder, exist_ok=True)
    cert_path = os.path.join(folder, "cert.pem")
    key_path = os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def peer_fingerprint(port, host=LOCALHOST, server_hostname="localhost"):
    """SHA-256 of the certificate a TLS server on host:port presents (not verified)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=server_hostname) as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


# ---------------------------------------------------------------- raw TLS helpers

def client_hello(max_version=None):
    """The first flight of a real client (Python's OpenSSL), offering at most max_version."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, "could not build a ClientHello"
    return hello


def stls_preamble(sock):
    """Reads the greeting, sends STLS and reads its +OK, byte by byte so nothing after the +OK line is consumed."""
    for send in (None, b"STLS\r\n"):
        if send:
            sock.sendall(send)
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = sock.recv(1)
            assert chunk, f"closed during STLS preamble after {line!r}"
            line += chunk
        assert line.startswith(b"+OK"), f"STLS preamble: {line!r}"


def abort_connection(sock, rst=True):
    """Closes with a TCP RST (SO_LINGER {1, 0}) or a plain FIN."""
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------- a raw POP3 client

class POP3Error(Exception):
    """An -ERR where +OK was needed, or a protocol violation."""


class ConnectionClosed(POP3Error, EOFError):
    """The server closed (or reset) the connection."""


def _command_bytes(command):
    return command if isinstance(command, bytes) else command.encode()


def stream_retr(server, user, password, number, timeout=300, pause_after=None, pause=0.0, while_paused=None):
    """RETR over implicit TLS with bounded memory: each line read, dot-unstuffed, counted, hashed and thrown away.
    With pause_after, reading stops for `pause` s once that many octets are in (the server must then wait, not
    buffer), and while_paused() is called at the end of the pause. Returns (octets, SHA-256 hex digest, what
    while_paused returned)."""
    sha = hashlib.sha256()
    octets, paused = 0, None
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=timeout) as raw:
        with server.ctx.wrap_socket(raw, server_hostname="localhost") as s:
            f = s.makefile("rb", buffering=1 << 20)
            assert f.readline().startswith(b"+OK")
            for command in (f"USER {user}", f"PASS {password}", f"RETR {number}"):
                s.sendall(command.encode() + b"\r\n")
                reply = f.readline()
                assert reply.startswith(b"+OK"), (command.split()[0], reply)
            while True:
                line = f.readline(1 << 16)
                assert line.endswith(b"\r\n"), f"connection closed, or a line without CRLF, after {octets} octets"
                if line == b".\r\n":
                    break
                if line.startswith(b"."):
                    line = line[1:]
                octets += len(line)
                sha.update(line)
                if pause_after is not None and octets >= pause_after:
                    pause_after = None
                    time.sleep(pause)
                    paused = while_paused() if while_paused else None
            s.sendall(b"QUIT\r\n")
            assert f.readline().startswith(b"+OK")
    return octets, sha.hexdigest(), paused


class POP3Session:
    """A line-level POP3 client on a raw socket: mode "tls" (implicit TLS), "stls" (plaintext port, then STLS) or
    "plain" (plaintext port, no TLS). `source` picks the loopback source address (127.0.0.N: the auth penalty is
    per client address), `rcvbuf` sets SO_RCVBUF before connect (the TCP window stays small).

    `server` is anything with tls_port, plain_port and ctx (a Pop3dDev or Dovecot); `port`/`ctx` override them.
    TLS sockets do not suppress ragged EOFs: a close without close_notify raises ssl.SSLEOFError from a raw
    `sock.recv`; line() turns that (and resets) into ConnectionClosed. Commands may be str or bytes."""

    def __init__(self, server, mode="tls", source=None, timeout=15, rcvbuf=None, port=None, ctx=None,
                 host=LOCALHOST, server_hostname="localhost"):
        assert mode in ("tls", "stls", "plain"), mode
        self.mode = mode
        self.ctx = ctx or getattr(server, "ctx", None)
        self.server_hostname = server_hostname
        raw = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            if rcvbuf:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
            raw.settimeout(timeout)
            if source:
                raw.bind((source, 0))
            raw.connect((host, port or (server.tls_port if mode == "tls" else server.plain_port)))
        except BaseException:
            raw.close()
            raise
        self.raw = raw
        self.sock = self.wrap(raw) if mode == "tls" else raw
        self.buf = b""
        self.greeting = self.line()
        if not self.greeting.startswith(b"+OK"):
            raise POP3Error(f"greeting {self.greeting!r}")
        if mode == "stls":
            self.ok("STLS")
            if self.buf:
                raise POP3Error(f"bytes after the STLS reply: {self.buf[:100]!r}")
            self.sock = self.wrap(raw)

    def wrap(self, raw):
        return self.ctx.wrap_socket(raw, server_hostname=self.server_hostname, suppress_ragged_eofs=False)

    # -- lines

    def send(self, data):
        """Sends raw bytes (no CRLF added)."""
        self.sock.sendall(data)

    def recv(self, size=65536):
        try:
            return self.sock.recv(size)
        except (ConnectionResetError, ssl.SSLEOFError) as e:
            raise ConnectionClosed(f"connection closed ({type(e).__name__}); unterminated: {self.buf[:100]!r}")

    def line(self):
        """One reply line without its CRLF."""
        while b"\r\n" not in self.buf:
            data = self.recv()
            if not data:
                raise ConnectionClosed(f"connection closed; unterminated: {self.buf[:100]!r}")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, command):
        """Sends one command (CRLF added) and returns the first reply line."""
        self.send(_command_bytes(command) + b"\r\n")
        return self.line()

    def pipeline(self, *commands):
        """Sends several commands in one write; read the replies with line()."""
        self.send(b"".join(_command_bytes(c) + b"\r\n" for c in commands))

    def ok(self, command):
        """command(), raising POP3Error unless the reply is +OK."""
        reply = self.command(command)
        if not reply.startswith(b"+OK"):
            raise POP3Error(f"{_command_bytes(command).split(b' ')[0].decode(errors='replace')}: {reply!r}")
        return reply

    def lines(self):
        """The rest of a multi-line reply up to the terminating ".": raw lines, still dot-stuffed."""
        out = []
        while (line := self.line()) != b".":
            out.append(line)
        return out

    def multiline(self):
        """The rest of a multi-line reply as bytes: dot-unstuffed, every line ending CRLF."""
        return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in self.lines())

    # -- commands

    def login(self, user, password):
        self.ok(f"USER {user}")
        reply = self.command(f"PASS {password}")
        if not reply.startswith(b"+OK"):
            raise POP3Error(f"PASS for {user}: {reply!r}")
        return self

    def stat(self):
        parts = self.ok("STAT").split()
        return int(parts[1]), int(parts[2])

    def _listing(self, command, convert):
        self.ok(command)
        out = {}
        for line in self.lines():
            n, value = line.split()
            out[int(n)] = convert(value)
        return out

    def uidl(self):
        """{message number: UIDL}."""
        return self._listing("UIDL", bytes.decode)

    def list(self):
        """{message number: octets}."""
        return self._listing("LIST", int)

    def retr(self, n):
        self.ok(f"RETR {n}")
        return self.multiline()

    def _pipelined(self, numbers, command):
        """Sends `command.format(n)` for every number, 200 at a time, and yields (n, status line) once each +OK is
        read; POP3Error on the first -ERR."""
        numbers = list(numbers)
        for start in range(0, len(numbers), 200):
            batch = numbers[start:start + 200]
            self.pipeline(*[command.format(n) for n in batch])
            for n in batch:
                resp = self.line()
                if not resp.startswith(b"+OK"):
                    raise POP3Error(f"{command.format(n)}: {resp!r}")
                yield n, resp

    def message_ids(self, numbers):
        """{n: Message-ID or None} via pipelined TOP n 0 (200 at a time)."""
        out = {}
        for n, _ in self._pipelined(numbers, "TOP {} 0"):
            head = self.multiline()
            ids = [h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n")
                   if h.lower().startswith(b"message-id:")]
            out[n] = ids[0] if ids else None
        return out

    def dele_many(self, numbers):
        """Pipelined DELE of every number (200 at a time); POP3Error on the first -ERR."""
        for _ in self._pipelined(numbers, "DELE {}"):
            pass

    def quit(self):
        """QUIT; returns its reply and closes."""
        try:
            return self.command("QUIT")
        finally:
            self.close()

    # -- endings

    def closed_within(self, seconds):
        """True if the server ends the connection within `seconds` (no further reply line)."""
        self.sock.settimeout(seconds)
        try:
            data = self.buf or self.sock.recv(65536)
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
            try:
                same.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if writer:
            writer.join(10)
        self.close()


# ---------------------------------------------------------------- servers

class _Accounts:
    """What the pop3d and Dovecot launchers share: URLs, remembered passwords, password files, a STAT probe."""

    name = "server"
    ctx = None

    def url(self, user, starttls=False):
        return (f"pop3://{user}@localhost:{self.plain_port}" if starttls
                else f"pop3s://{user}@localhost:{self.tls_port}")

    def password_file(self, user):
        """A 0600 file holding the user's password (as `pop3 fetch --password-file` wants)."""
        return write_secret(os.path.join(self.root, f"pw-{self.name}-{user}"), self.passwords[user])

    def poplib_pop3s(self, user="demo", password=None, timeout=30):
        """A logged-in poplib.POP3_SSL over implicit TLS (raises poplib.error_proto on -ERR)."""
        c = poplib.POP3_SSL("localhost", self.tls_port, context=self.ctx, timeout=timeout)
        try:
            c.user(user)
            c.pass_(password if password is not None else self.passwords[user])
        except BaseException:
            c.close()
            raise
        return c

    def stat(self, user, attempts=20):
        """(count, octets) on the server via poplib; retried (e.g. [IN-USE] right after a killed session)."""
        last = None
        for _ in range(attempts):
            try:
                c = self.poplib_pop3s(user)
            except poplib.error_proto as e:
                last = e
                time.sleep(0.25)
                continue
            try:
                return c.stat()
            finally:
                try:
                    c.quit()
                except Exception:  # noqa: BLE001
                    c.close()
        raise RuntimeError(f"STAT for {user} failed: {last}")


class Pop3dDev(_Accounts):
    """`pop3d dev --data ROOT/data` on free loopback ports; restartable on the same folder and ports.

    run_as: a user name (e.g. "nobody") to run pop3d and its admin commands as when we are root, so that neither
    `dev` nor `deliver` has privileges to drop; ROOT is chowned to it and must be reachable by it (see
    shared_tmpdir). extra_config: YAML appended to pop3d.yaml before the first start (see configure)."""

    name = "pop3d"
    backend = "maildir"  # "postgres" when made by start_backend_dev(..., "postgres")
    database_port = None  # then the PostgreSQL cluster's

    def __init__(self, pop3d_bin, root, run_as=None, extra_config=""):
        self.bin = pop3d_bin
        self.root = str(root)
        self.data = os.path.join(self.root, "data")
        self.config = os.path.join(self.data, "pop3d.yaml")
        self.ca = os.path.join(self.data, "tls", "cert.pem")
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.lmtp_port = free_port()
        self.metrics_port = free_port()
        self.proc = None
        self.starts = 0
        self.log_path = None
        self.password = None
        self.passwords = {}
        self.ctx = None
        self.ids = {}
        if run_as and os.geteuid() == 0:
            p = pwd.getpwnam(run_as)
            os.chown(self.root, p.pw_uid, p.pw_gid)
            self.ids = {"user": p.pw_uid, "group": p.pw_gid, "extra_groups": []}
        if extra_config:
            self.configure(extra_config)

    # -- configuration

    def configure(self, text):
        """Appends YAML to pop3d.yaml (e.g. "limits:\\n  maildrop_messages: 10\\n"); takes effect at the next
        start. Before the first start the dev environment is created by one start and stop, as `pop3d dev` only
        writes pop3d.yaml when it is missing. A top-level key may appear only once in the file."""
        if not os.path.exists(self.config):
            self.start()
            self.stop()
        with open(self.config, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def limits(self):
        """The effective limits, as `pop3d check-config` prints them: {name: int}."""
        out = self.pop3d("check-config", "--config", self.config).stdout.decode()
        return {key: int(value) for key, value in re.findall(r"^\s+(\w+): (\d+)$", out, re.M)}

    # -- process

    def start(self, seconds=60, env=None):
        """Starts `pop3d dev` and waits for every port; `env` adds environment variables (e.g. NOTIFY_SOCKET)."""
        self.starts += 1
        self.log_path = os.path.join(self.root, f"pop3d-{self.starts}.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [self.bin, "dev", "--data", self.data, "--pop3s-port", str(self.tls_port),
                 "--pop3-port", str(self.plain_port), "--lmtp-port", str(self.lmtp_port),
                 "--metrics-port", str(self.metrics_port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None, **self.ids)
        wait_port(self.tls_port, self.proc, seconds, log_path=self.log_path)
        wait_port(self.plain_port, self.proc, seconds, log_path=self.log_path)
        wait_port(self.lmtp_port, self.proc, seconds, log_path=self.log_path)
        wait_port(self.metrics_port, self.proc, seconds, log_path=self.log_path)
        if self.ctx is None:
            with open(os.path.join(self.data, "demo-password")) as f:
                self.password = f.read().strip()
            self.passwords["demo"] = self.password
            self.use_ca(self.ca)
        return self

    def use_ca(self, path):
        """Trust `path` from now on (e.g. after replacing the certificate)."""
        self.ca = path
        self.ctx = ssl.create_default_context(cafile=path)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum):
        if self.alive():
            os.kill(self.proc.pid, signum)

    def kill9(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self):
        """SIGTERM; SIGKILL after 40 s. Returns the exit status (or "SIGKILL after 40 s")."""
        return stop_process(self.proc, grace=40)

    def restart(self, kill=False):
        if kill:
            self.kill9()
        else:
            self.stop()
        return self.start()

    def log_tail(self, n=8):
        return tail(self.log_path, n) if self.log_path else ""

    def log_text(self):
        """All logs of all starts."""
        return start_logs(self.root, "pop3d", self.starts)

    def log_lines(self, *needles):
        """Lines of the logs of all starts that contain any of the needles."""
        return [line for line in self.log_text().splitlines() if any(k in line for k in needles)]

    # -- admin commands and files

    def pop3d(self, *args, stdin=None, timeout=120):
        """Runs `pop3d ARGS…` (as run_as, if set); stdin is bytes or str. Returns a CompletedProcess (bytes)."""
        if isinstance(stdin, str):
            stdin = stdin.encode()
        return subprocess.run([self.bin, *args], input=stdin, capture_output=True, timeout=timeout, **self.ids)

    def add_user(self, name, password, scheme=None):
        """`pop3d user add` (its default scheme, SCRAM-SHA-256, unless `scheme` names another)."""
        extra = ["--scheme", scheme] if scheme else []
        r = self.pop3d("user", "add", name, "--config", self.config, *extra, stdin=password + "\n", timeout=60)
        assert r.returncode == 0, f"user add {name}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}"
        self.passwords[name] = password

    def deliver(self, user, data, config=None, timeout=120):
        """`pop3d deliver USER` with data on stdin: (exit status, stderr text)."""
        r = self.pop3d("deliver", user, "--config", config or self.config, stdin=data, timeout=timeout)
        return r.returncode, r.stderr.decode(errors="replace").strip()

    def seed(self, user, messages):
        """Delivers every message (an iterable of bytes, or a dict of them); raises on a failed delivery."""
        for data in (messages.values() if isinstance(messages, dict) else messages):
            rc, err = self.deliver(user, data)
            if rc != 0:
                raise RuntimeError(f"pop3d deliver {user}: exit {rc}: {err}")

    def maildir(self, user="demo"):
        return os.path.join(self.data, "mail", user)

    def maildir_files(self, user="demo"):
        """{file name: bytes} of the user's new/ and cur/."""
        out = {}
        for sub in ("new", "cur"):
            d = os.path.join(self.maildir(user), sub)
            for name in os.listdir(d) if os.path.isdir(d) else []:
                with open(os.path.join(d, name), "rb") as f:
                    out[name] = f.read()
        return out

    # -- samplers

    def rss_kib(self):
        return rss_kib(self.pid)

    def fd_count(self):
        """pop3d's open descriptors, less its connections to PostgreSQL (opened by its pool as needed)."""
        return fd_count(self.pid, self.database_port)

    def session(self, **kw):
        """A POP3Session to this server (see POP3Session for the keywords)."""
        return POP3Session(self, **kw)


def mail_owner():
    """The unprivileged owner of Dovecot's mail (Dovecot refuses root): vmail if present, else nobody."""
    for user in ("vmail", "nobody"):
        try:
            p = pwd.getpwnam(user)
            return p.pw_uid, p.pw_gid
        except KeyError:
            pass
    raise RuntimeError("neither a 'vmail' nor a 'nobody' user exists")


def doveadm_pw(scheme, password):
    """`doveadm pw -s SCHEME` with the password on stdin (never on a command line): "{SCHEME}…"."""
    r = subprocess.run(["doveadm", "pw", "-s", scheme], input=f"{password}\n{password}\n".encode(),
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"doveadm pw -s {scheme}: exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    return r.stdout.decode().strip()


def scram_login(session, user, password, mechanism="SCRAM-SHA-256", gs2=None, cb_data=None, initial=True):
    """Runs SCRAM (RFC 5802) on a POP3Session with an implementation of its own (hashlib/hmac), to test pop3d
    against a client that is not ours. gs2: the GS2 header ("n,," / "y,," / "p=tls-server-end-point,,");
    cb_data: the channel binding bytes for -PLUS (by default tls-server-end-point: SHA-256 of the server's
    certificate, right for the SHA-256-signed test certificates). Returns (final reply line, server-first
    attributes or None); raises if the server's signature does not verify."""
    hashname = "sha1" if mechanism.startswith("SCRAM-SHA-1") else "sha256"
    plus = mechanism.endswith("-PLUS")
    if gs2 is None:
        gs2 = "p=tls-server-end-point,," if plus else "n,,"
    if cb_data is None:
        cb_data = hashlib.sha256(session.sock.getpeercert(binary_form=True)).digest() if gs2.startswith("p=") else b""
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
    first = base64.b64encode((gs2 + bare).encode()).decode()
    if initial:
        reply = session.command(f"AUTH {mechanism} {first}")
    else:
        reply = session.command(f"AUTH {mechanism}")
        if reply != b"+ ":
            return reply, None
        reply = session.command(first)
    if not reply.startswith(b"+ "):
        return reply, None
    server_first = base64.b64decode(reply[2:]).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(hashname, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashname).digest()
    stored_key = hashlib.new(hashname, client_key).digest()
    without_proof = f"c={base64.b64encode(gs2.encode() + cb_data).decode()},r={attrs['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hashname).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    reply = session.command(base64.b64encode(f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
    if not reply.startswith(b"+ "):
        return reply, attrs
    server_key = hmac.new(salted, b"Server Key", hashname).digest()
    expected = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, hashname).digest())
    if base64.b64decode(reply[2:]) != expected:
        raise POP3Error(f"server signature does not verify: {reply!r}")
    return session.command(""), attrs


def dovecot_binary():
    """The dovecot binary, or None."""
    return shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)


class Dovecot(_Accounts):
    """Debian's Dovecot 2.3 (dovecot-pop3d) with its own configuration in ROOT on free loopback ports: POP3 only,
    SHA512-CRYPT passwd-file, Maildir under ROOT/mail owned by an unprivileged user. Needs root. ROOT must be
    reachable by the mail user (shared_tmpdir). Call start(users), then seed/deliver, stop()."""

    name = "dovecot"

    def __init__(self, root):
        self.root = str(root)
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.passwords = {}
        self.proc = None
        self.ca = None
        self.ctx = None
        self.counter = 0
        self.log_path = os.path.join(self.root, "dovecot.log")
        self.out_path = os.path.join(self.root, "dovecot.stdout")

    def start(self, users, seconds=30, uidl_format="%08Xu%08Xv", scheme="SHA512-CRYPT", mechanisms="plain",
              perf=False, oauth_keys=None):
        """users: names (random passwords) or {name: password}; uidl_format: Dovecot's pop3_uidl_format; scheme:
        how the passwd-file stores passwords (SHA512-CRYPT via openssl, anything else via `doveadm pw`);
        mechanisms: Dovecot's auth_mechanisms; perf: the high-performance login mode and limits of
        ../shared/bench/anchor-dovecot.sh (for benchmarks); oauth_keys: {(alg, kid): public key PEM} for an oauth2
        passdb with local JWT validation (`sub` names the user; OAUTHBEARER and XOAUTH2 are added; Dovecot 2.3.19
        wants `typ: JWT` in the header and checks neither `iss` nor `aud`)."""
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError("dovecot is not installed (Debian: apt-get install dovecot-pop3d)")
        if os.geteuid() != 0:
            raise RuntimeError("Dovecot is started as root with mail_uid set; run the tests as root")
        os.chmod(self.root, 0o755)
        self.uid, self.gid = mail_owner()
        for sub in ("run", "state", "ssl"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.mail = os.path.join(self.root, "mail")
        os.makedirs(self.mail, mode=0o755, exist_ok=True)
        os.chown(self.mail, self.uid, self.gid)
        self.ca, key = make_cert(os.path.join(self.root, "ssl"))
        self.ctx = ssl.create_default_context(cafile=self.ca)
        if not isinstance(users, dict):
            users = {user: secrets.token_urlsafe(12) for user in users}
        lines = []
        for user, password in users.items():
            self.passwords[user] = password
            field = sha512_crypt(password) if scheme == "SHA512-CRYPT" else doveadm_pw(scheme, password)
            lines.append(f"{user}:{field}:{self.uid}:{self.gid}::{self.mail}/{user}::\n")
        passwd = os.path.join(self.root, "users")
        with open(passwd, "w") as f:
            f.writelines(lines)
        os.chmod(passwd, 0o644)
        conf = os.path.join(self.root, "dovecot.conf")
        r = self.root
        oauth_passdb = ""
        if oauth_keys:
            for (alg, kid), pem in oauth_keys.items():
                folder = os.path.join(r, "keys", "default", alg)
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, kid), "w") as f:
                    f.write(pem)
            subprocess.run(["chmod", "-R", "a+rX", os.path.join(r, "keys")], check=True)
            with open(os.path.join(r, "oauth2.conf.ext"), "w") as f:
                f.write(f"introspection_mode = local\nlocal_validation_key_dict = fs:posix:prefix={r}/keys/\n"
                        "username_attribute = sub\n")
            mechanisms += " oauthbearer xoauth2"
            oauth_passdb = f"passdb {{\n  driver = oauth2\n  mechanisms = oauthbearer xoauth2\n  args = {r}/oauth2.conf.ext\n}}\n"
        login_tuning = (f"  service_count = 0\n  process_min_avail = {os.cpu_count()}\n  process_limit = 16\n"
                        "  client_limit = 4000\n  vsz_limit = 1G\n") if perf else ""
        limits = ("default_client_limit = 4000\ndefault_process_limit = 4000\n"
                  "protocol pop3 {\n  mail_max_userip_connections = 10000\n}\nservice pop3 {\n  process_limit = 4000\n}\n"
                  "service anvil {\n  client_limit = 12000\n}\nservice auth {\n  client_limit = 12000\n}\n"
                  "service stats {\n  client_limit = 12000\n}\n") if perf else ""
        with open(conf, "w") as f:
            f.write(f"""# written by tests/pop3support.py
instance_name = pop3-tests-{os.getpid()}-{self.tls_port}
base_dir = {r}/run
state_dir = {r}/state
log_path = {self.log_path}
protocols = pop3
listen = 127.0.0.1
shutdown_clients = yes
ssl = required
ssl_cert = <{self.ca}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = {mechanisms}
{oauth_passdb}passdb {{
  driver = passwd-file
  args = scheme={scheme} {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
first_valid_uid = {self.uid}
last_valid_uid = 0
first_valid_gid = 0
mail_uid = {self.uid}
mail_gid = {self.gid}
mail_location = maildir:{self.mail}/%u
pop3_uidl_format = {uidl_format}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.plain_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
{login_tuning}}}
{limits}""")
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen([binary, "-c", conf, "-F"], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        try:
            wait_port(self.tls_port, self.proc, seconds)
            wait_port(self.plain_port, self.proc, seconds)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; {tail(self.out_path)} {tail(self.log_path)}")
        return self

    def maildir(self, user):
        return os.path.join(self.mail, user)

    def deliver(self, user, data):
        """Straight into the user's Maildir (tmp/ then rename into new/), owned by the mail user."""
        base = self.maildir(user)
        for sub in ("", "tmp", "new", "cur"):
            d = os.path.join(base, sub)
            if not os.path.isdir(d):
                os.makedirs(d, mode=0o700, exist_ok=True)
                os.chown(d, self.uid, self.gid)
        self.counter += 1
        name = f"{int(time.time())}.M{self.counter}P{os.getpid()}.tests"
        tmp = os.path.join(base, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, os.path.join(base, "new", name))

    def seed(self, user, messages):
        for data in (messages.values() if isinstance(messages, dict) else messages):
            self.deliver(user, data)

    def log_tail(self, n=8):
        return f"{tail(self.out_path, n)} {tail(self.log_path, n)}".strip()

    def stop(self):
        """SIGTERM to the master we started (-F: the Popen PID is the master); it stops its children."""
        return stop_process(self.proc, grace=15)


# ---------------------------------------------------------------- openssl s_client

def s_client(port, ca, args=(), stdin=None, starttls=False, quiet=False, timeout=60, host=LOCALHOST):
    """`openssl s_client -connect host:port -CAfile ca -verify_return_error ARGS` (+ `-starttls pop3`).
    stdin: bytes/str sent to it (None: /dev/null). Returns (exit status, text): with quiet (`-quiet`) only stdout,
    else stdout + stderr, where the handshake details are."""
    cmd = ["openssl", "s_client", *(["-quiet"] if quiet else []), "-connect", f"{host}:{port}", "-CAfile", ca,
           "-verify_return_error", *args]
    if starttls:
        cmd += ["-starttls", "pop3"]
    if isinstance(stdin, str):
        stdin = stdin.encode()
    io = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, **io)
    out = r.stdout if quiet else r.stdout + r.stderr
    return r.returncode, out.decode("utf-8", "replace")
# API complete


# ---------------------------------------------------------------- OAuth 2.0 test issuer

def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OAuthIssuer:
    """A stand-in authorization server's signing side: ES256, RS256 and EdDSA keys (with kids), their JWKS written
    to `path`, and signed JWT access tokens (cryptography, not our code). `rotate()` replaces the keys."""

    ISSUER = "https://idp.example.test/realms/mail"
    AUDIENCE = "pop3"

    def __init__(self, path):
        self.path = path
        self.generation = 0
        self.rotate()

    def rotate(self):
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
        self.generation += 1
        g = self.generation
        self.keys = {f"es-{g}": ("ES256", ec.generate_private_key(ec.SECP256R1())),
                     f"rs-{g}": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                     f"ed-{g}": ("EdDSA", ed25519.Ed25519PrivateKey.generate())}
        self.write_jwks([self.jwk(kid) for kid in self.keys])

    def jwk(self, kid):
        alg, key = self.keys[kid]
        public = key.public_key()
        if alg == "ES256":
            numbers = public.public_numbers()
            return {"kty": "EC", "crv": "P-256", "kid": kid, "alg": alg, "use": "sig",
                    "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big"))}
        if alg == "RS256":
            numbers = public.public_numbers()
            return {"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
                    "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": b64url(numbers.e.to_bytes(3, "big"))}
        from cryptography.hazmat.primitives import serialization
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": alg, "use": "sig", "x": b64url(raw)}

    def write_jwks(self, keys):
        import json
        with open(self.path, "w") as f:
            json.dump({"keys": keys}, f)

    def public_pem(self, kid):
        from cryptography.hazmat.primitives import serialization
        return self.keys[kid][1].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def kid(self, alg):
        return next(kid for kid, (a, _) in self.keys.items() if a == alg)

    def token(self, user, alg="ES256", kid=None, lifetime=600, claims=None, header=None, drop=()):
        """A signed JWT for `user` (the email claim); `claims`/`header` override or add fields, `drop` removes
        claims. alg "none" gives an unsigned token; "HS256" signs with the RSA public key's PEM as the HMAC secret
        (the algorithm-confusion attack)."""
        import json
        import time as _time
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        now = int(_time.time())
        body = {"iss": self.ISSUER, "aud": [self.AUDIENCE, "account"], "sub": "id-" + user, "email": user,
                "iat": now, "nbf": now - 5, "exp": now + lifetime, "scope": "pop3"}
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        sign_alg = alg
        kid = kid or (self.kid("RS256") if alg in ("HS256", "none") else self.kid(alg))
        head = {"alg": alg, "typ": "at+jwt", "kid": kid}
        head.update(header or {})
        signing_input = f"{b64url(json.dumps(head))}.{b64url(json.dumps(body))}".encode()
        if sign_alg == "none":
            return signing_input.decode() + "."
        if sign_alg == "HS256":
            secret = self.keys[self.kid("RS256")][1].public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            return signing_input.decode() + "." + b64url(hmac.new(secret, signing_input, "sha256").digest())
        _, key = self.keys[self.kid(sign_alg)]
        if sign_alg == "ES256":
            r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        elif sign_alg == "RS256":
            signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            signature = key.sign(signing_input)
        return signing_input.decode() + "." + b64url(signature)


def oauth_login(session, token, user=None, mechanism="OAUTHBEARER"):
    """AUTH OAUTHBEARER/XOAUTH2 with `token` on a POP3Session, the way RFC 7628 clients do it (continuation, since a
    JWT does not fit a 255-octet command line). Returns (final reply, the decoded error JSON or None)."""
    import json
    if mechanism == "OAUTHBEARER":
        message = f"n,{'a=' + user if user else ''},\x01host=localhost\x01port=995\x01auth=Bearer {token}\x01\x01"
    else:
        message = f"user={user}\x01auth=Bearer {token}\x01\x01"
    if session.command(f"AUTH {mechanism}") != b"+ ":
        raise POP3Error("no empty challenge")
    reply = session.command(base64.b64encode(message.encode()))
    if not reply.startswith(b"+ "):
        return reply, None
    error = json.loads(base64.b64decode(reply[2:]))
    return session.command(base64.b64encode(b"\x01").decode() if mechanism == "OAUTHBEARER" else ""), error


class AuthorizationServer:
    """A local OAuth 2.0 authorization server on 127.0.0.1 (http, which pop3 allows on loopback only) for the
    client's flows: device authorization (RFC 8628: the first poll gets authorization_pending, the second slow_down,
    then tokens, or access_denied when `deny` is set), authorization code with PKCE (RFC 7636: /authorize redirects
    at once to the redirect_uri; the token request must carry the matching S256 verifier), and refresh (rotating the
    refresh token; `revoke_all()` makes every refresh token invalid_grant). Access tokens are JWTs of `issuer`.
    `requests` records (path, form) of every request."""

    def __init__(self, issuer, user, lifetime=600):
        import http.server
        import json
        import urllib.parse
        self.issuer, self.user, self.lifetime = issuer, user, lifetime
        self.requests, self.polls, self.deny = [], 0, False
        self.refresh_tokens, self.codes = set(), {}
        # RFC 7662: opaque token -> introspection answer; the resource server's Basic credentials.
        self.opaque, self.introspection_client = {}, ("pop3d", "rs-secret")
        self.issued = []  # every access and refresh token handed out (to check none is printed)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body, headers=()):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                server.requests.append((url.path, query))
                if url.path == "/jwks":
                    with open(server.issuer.path) as f:
                        return self.reply(200, json.load(f))
                if url.path != "/authorize":
                    return self.reply(404, {"error": "not_found"})
                code = secrets.token_urlsafe(16)
                server.codes[code] = query
                target = f"{query['redirect_uri']}?code={code}&state={urllib.parse.quote(query['state'])}"
                self.reply(302, None, [("Location", target)])

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                server.requests.append((self.path, form))
                if self.path == "/device":
                    return self.reply(200, {"device_code": "dev-code-1", "user_code": "ABCD-EFGH",
                                            "verification_uri": f"{server.url}/activate", "interval": 1,
                                            "expires_in": 120})
                if self.path == "/introspect":
                    expected = "Basic " + base64.b64encode(":".join(server.introspection_client).encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        return self.reply(401, {"error": "invalid_client"})
                    return self.reply(200, server.opaque.get(form.get("token"), {"active": False}))
                if self.path != "/token":
                    return self.reply(404, {"error": "not_found"})
                grant = form.get("grant_type")
                if grant == "urn:ietf:params:oauth:grant-type:device_code":
                    server.polls += 1
                    if server.deny:
                        return self.reply(400, {"error": "access_denied", "error_description": "the user said no"})
                    if server.polls == 1:
                        return self.reply(400, {"error": "authorization_pending"})
                    if server.polls == 2:
                        return self.reply(400, {"error": "slow_down"})
                    return self.reply(200, server.tokens())
                if grant == "authorization_code":
                    request = server.codes.pop(form.get("code"), None)
                    verifier = form.get("code_verifier", "")
                    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
                    if (request is None or request.get("code_challenge_method") != "S256"
                            or request.get("code_challenge") != challenge
                            or request.get("redirect_uri") != form.get("redirect_uri")):
                        return self.reply(400, {"error": "invalid_grant", "error_description": "PKCE or code mismatch"})
                    return self.reply(200, server.tokens())
                if grant == "refresh_token":
                    if form.get("refresh_token") not in server.refresh_tokens:
                        return self.reply(400, {"error": "invalid_grant", "error_description": "token revoked"})
                    server.refresh_tokens.discard(form["refresh_token"])
                    return self.reply(200, server.tokens())
                return self.reply(400, {"error": "unsupported_grant_type"})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def tokens(self):
        access = self.issuer.token(self.user, lifetime=self.lifetime)
        refresh = "rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens.add(refresh)
        self.issued += [access, refresh]
        return {"access_token": access, "token_type": "Bearer", "expires_in": self.lifetime, "refresh_token": refresh,
                "scope": "pop3"}

    def revoke_all(self):
        self.refresh_tokens.clear()

    def grants(self, grant):
        return [form for path, form in self.requests if path == "/token" and form.get("grant_type") == grant]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- PostgreSQL and pop3d nodes on it

POSTGRES_BIN = "/usr/lib/postgresql/15/bin"


def postgres_binary():
    """Debian's PostgreSQL 15 server binaries (postgresql-15), or None."""
    return POSTGRES_BIN if os.path.exists(os.path.join(POSTGRES_BIN, "initdb")) else None


class Postgres:
    """A private PostgreSQL 15 cluster (initdb + pg_ctl) in ROOT: a free loopback port, its socket in ROOT, trust
    authentication on loopback except for the role `secure` (SCRAM password). As root it runs as the `postgres`
    user (initdb refuses root). start(), then create(db, owner), psql(sql), restart(), stop()."""

    def __init__(self, root):
        self.root = str(root)
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.log_path = os.path.join(self.root, "postgres.log")
        self.ids = {}
        if os.geteuid() == 0:
            p = pwd.getpwnam("postgres")
            os.chown(self.root, p.pw_uid, p.pw_gid)
            self.ids = {"user": p.pw_uid, "group": p.pw_gid, "extra_groups": []}

    def _run(self, *args, check=True, stdin=None, timeout=120):
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=self.root, input=stdin,
                           **self.ids)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])}: exit {r.returncode}: {r.stderr.strip()[-400:]}")
        return r

    def _options(self):
        return f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"

    def start(self):
        if not os.path.exists(self.data):
            self._run(f"{POSTGRES_BIN}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")
            with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
                f.write("local all all trust\n"
                        "host all secure 127.0.0.1/32 scram-sha-256\n"
                        "host all all 127.0.0.1/32 trust\n")
        self._run(f"{POSTGRES_BIN}/pg_ctl", "-D", self.data, "-o", self._options(), "-l", self.log_path, "-w",
                  "-t", "60", "start")
        return self

    def stop(self):
        self._run(f"{POSTGRES_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def restart(self):
        """A fast restart: every session (and every advisory lock) ends."""
        self._run(f"{POSTGRES_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-o", self._options(), "-l",
                  self.log_path, "-w", "-t", "60", "restart")

    def psql(self, sql, db="postgres"):
        """Runs SQL as the superuser; returns stdout (tuples only, unaligned)."""
        return self._run("/usr/bin/psql", "-h", self.root,
                         "-p", str(self.port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-tA", "-c",
                         sql).stdout

    def create(self, db, owner="pop3d", password=None):
        """A role `owner` (with `password`, if given) and a database `db` it owns."""
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{owner}'").strip()
        if not exists:
            self.psql(f"CREATE ROLE {owner} LOGIN" + (f" PASSWORD '{password}'" if password else ""))
        self.psql(f"CREATE DATABASE {db} OWNER {owner}")
        return f"postgresql://{owner}@127.0.0.1:{self.port}/{db}"


BACKENDS = ("maildir", "postgres")
_dev_databases = iter(range(1, 1_000_000))


def start_backend_dev(pop3d_bin, root, backend="maildir", postgres=None, run_as=None, extra_config=""):
    """A started `pop3d dev` in ROOT (run_as and extra_config as for Pop3dDev) with its mail, and on postgres its
    accounts too, in `backend`: "maildir", or "postgres" (a database of its own in the Postgres cluster
    `postgres`). On postgres the dev set-up is made as usual (passwd-file, demo account, its sample messages in a
    Maildir), then `pop3d migrate maildir` copies accounts (password fields as they are, SCRAM keys too) and
    messages (UIDLs kept) into the database, and `passwd_file` is taken out of pop3d.yaml: logins, SCRAM lookups,
    the auth penalty, maildrop locks, deliveries (`dev.deliver`, `dev.add_user`) all go to PostgreSQL, and every
    test sees the same demo maildrop on either backend. `dev.backend` says which; on postgres
    `dev.maildir_config` is the Maildir set-up it was migrated from (its Maildirs stay on disk, no longer served)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    dev = Pop3dDev(pop3d_bin, root, run_as=run_as, extra_config=extra_config)
    if backend == "maildir":
        return dev.start()
    if not os.path.exists(dev.config):
        dev.start()  # creates the dev set-up (pop3d.yaml, certificate, passwd-file, demo Maildir)
        dev.stop()
    dev.backend = backend
    dev.database_port = postgres.port
    dev.maildir_config = os.path.join(dev.data, "maildir.yaml")
    shutil.copy(dev.config, dev.maildir_config)
    with open(dev.config) as f:
        text = f.read()
    if "\npasswd_file: users\n" not in text:
        raise RuntimeError(f"{dev.config}: no `passwd_file: users` line to take out:\n{text}")
    with open(dev.config, "w") as f:
        f.write(text.replace("\npasswd_file: users\n", "\n"))
    url = postgres.create(f"dev_{next(_dev_databases)}")
    dev.configure(f'storage:\n  backend: postgres\n  postgres:\n    url: "{url}"\n    tls: disable\n')
    for args in (("db", "migrate"), ("migrate", "maildir", "--from", dev.maildir_config)):
        r = dev.pop3d(*args, "--config", dev.config)
        if r.returncode != 0:
            raise RuntimeError(f"pop3d {' '.join(args)}: exit {r.returncode}: {r.stderr.decode(errors='replace')}")
    return dev.start()


class Pop3dNode(_Accounts):
    """`pop3d serve` with `storage.backend: postgres` on a free loopback port (POP3S only), a certificate of its
    own (make_cert), as `nobody` when we are root. Several nodes may share one database and one folder."""

    name = "node"

    def __init__(self, pop3d_bin, root, url, extra_config="", tag="node", lmtp=False):
        self.bin = pop3d_bin
        self.lmtp_port = free_port() if lmtp else None
        self.root = str(root)
        self.tag = tag
        self.tls_port = free_port()
        self.plain_port = None
        self.proc = None
        self.starts = 0
        self.log_path = None
        self.passwords = {}
        cert, key = (os.path.join(self.root, "cert.pem"), os.path.join(self.root, "key.pem"))
        if not os.path.exists(cert):
            make_cert(self.root)
        self.ca = cert
        self.ctx = ssl.create_default_context(cafile=cert)
        self.config = os.path.join(self.root, f"{tag}.yaml")
        run_as = "user: nobody\ngroup: nogroup\n" if os.geteuid() == 0 else ""
        with open(self.config, "w") as f:
            f.write(f'listen:\n  pop3s: "127.0.0.1:{self.tls_port}"\n'
                    + (f'  lmtp: "127.0.0.1:{self.lmtp_port}"\n' if lmtp else "")
                    + f"tls:\n  certificate: {cert}\n  key: {key}\n"
                    f"state_dir: state-{tag}\ncontrol:\n  socket: run/{tag}.sock\n{run_as}"
                    f'storage:\n  backend: postgres\n  postgres:\n    url: "{url}"\n    tls: disable\n'
                    + extra_config)

    def pop3d(self, *args, stdin=None, timeout=120, config=None):
        """`pop3d ARGS… --config CONFIG` (this node's by default); stdin bytes or str. A CompletedProcess (bytes)."""
        if isinstance(stdin, str):
            stdin = stdin.encode()
        return subprocess.run([self.bin, *args, "--config", config or self.config], input=stdin, capture_output=True,
                              timeout=timeout)

    def migrate(self):
        r = self.pop3d("db", "migrate")
        assert r.returncode == 0, f"db migrate: exit {r.returncode}: {r.stderr.decode(errors='replace')}"
        return r.stdout.decode()

    def add_user(self, name, password, scheme=None):
        extra = ["--scheme", scheme] if scheme else []
        r = self.pop3d("user", "add", name, *extra, stdin=password + "\n", timeout=60)
        assert r.returncode == 0, f"user add {name}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}"
        self.passwords[name] = password

    def deliver(self, user, data, *extra):
        r = self.pop3d("deliver", user, *extra, stdin=data)
        return r.returncode, r.stderr.decode(errors="replace").strip()

    def start(self, seconds=60):
        self.starts += 1
        self.log_path = os.path.join(self.root, f"{self.tag}-{self.starts}.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([self.bin, "serve", "--config", self.config], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.tls_port, self.proc, seconds, log_path=self.log_path)
        if self.lmtp_port:
            wait_port(self.lmtp_port, self.proc, seconds, log_path=self.log_path)
        return self

    def run_serve(self, timeout=60):
        """`pop3d serve` expected to stop at start: (exit status, output)."""
        r = subprocess.run([self.bin, "serve", "--config", self.config], capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self):
        return stop_process(self.proc, grace=40) if self.proc is not None else None

    def log_text(self):
        """All logs of all starts."""
        return start_logs(self.root, self.tag, self.starts)


def haproxy_binary():
    return shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy") or None


class HAProxy:
    """Debian's HAProxy 2.6 in TCP mode in front of pop3d nodes: `send-proxy-v2` to each, health checks with a
    PROXY v2 header of their own (`check-send-proxy`: a LOCAL command, no login), round robin, a dead node
    redispatched. ROOT holds its configuration and log; start(), stop()."""

    def __init__(self, root, backends, check_interval_ms=300):
        self.root = str(root)
        self.port = free_port()
        self.config = os.path.join(self.root, "haproxy.cfg")
        self.log_path = os.path.join(self.root, "haproxy.log")
        self.proc = None
        servers = "".join(f"  server n{i} 127.0.0.1:{port} send-proxy-v2 check check-send-proxy inter "
                          f"{check_interval_ms} fall 2 rise 1\n" for i, port in enumerate(backends, start=1))
        with open(self.config, "w") as f:
            f.write("global\n  maxconn 2000\n"
                    "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n"
                    "  retries 3\n  option redispatch\n"
                    f"frontend pop3s\n  bind 127.0.0.1:{self.port}\n  default_backend nodes\n"
                    f"backend nodes\n  balance roundrobin\n{servers}")

    def start(self):
        check = subprocess.run([haproxy_binary(), "-c", "-f", self.config], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stdout[-400:]} {check.stderr[-400:]}")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([haproxy_binary(), "-db", "-f", self.config], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc, 30, log_path=self.log_path)
        return self

    def stop(self):
        return stop_process(self.proc, grace=10)


# ---------------------------------------------------------------- LMTP

class DNSServer(threading.Thread):
    """A DNS server on a loopback UDP port answering SRV (`srv`: {name: (target, port)}) and MX (`mx`: {name:
    exchange}) questions; NXDOMAIN for anything else. `asked` lists the names asked."""

    def __init__(self, srv=None, mx=None):
        super().__init__(daemon=True)
        self.srv = srv or {}
        self.mx = mx or {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked = []
        self.start()

    @staticmethod
    def encode(name):
        return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"

    def run(self):
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if not query:
                return  # shut down by close()
            try:
                i, labels = 12, []
                while query[i]:
                    labels.append(query[i + 1:i + 1 + query[i]].decode())
                    i += 1 + query[i]
                name = ".".join(labels)
                qtype = struct.unpack("!H", query[i + 1:i + 3])[0]
            except (IndexError, UnicodeDecodeError, struct.error):
                continue  # not a DNS question (a stray datagram on this loopback port): no answer
            question = query[12:i + 5]
            self.asked.append(name)
            rdata = None
            if qtype == 33 and name in self.srv:
                target, port = self.srv[name]
                rdata = struct.pack("!HHH", 0, 1, port) + self.encode(target)
            elif qtype == 15 and name in self.mx:
                rdata = struct.pack("!H", 10) + self.encode(self.mx[name])
            if rdata is not None:
                answer = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
                reply = query[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0) + question + answer
            else:
                reply = query[:2] + b"\x81\x83" + struct.pack("!HHHH", 1, 0, 0, 0) + question
            self.sock.sendto(reply, peer)

    def close(self):
        """Stops the thread (shutdown wakes its recvfrom; a bare close would leave it blocked, the port bound) and
        closes the socket."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # ENOTCONN on an unconnected socket, which still wakes the reader
        self.join(5)
        self.sock.close()


class LMTPClient:
    """A raw LMTP connection: send bytes, read whole replies (multi-line ones as one list)."""

    def __init__(self, address, timeout=15):
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def reply(self):
        """(code, [text lines]) of one reply."""
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    def command(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def closed(self, seconds=10):
        """True once the server has closed the connection (EOF), reading away anything before it."""
        self.sock.settimeout(seconds)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except OSError:
            return False

    def close(self):
        self.sock.close()


def lmtp_start_transaction(c, *recipients, sender="sender@example.test", mail_params=""):
    assert c.command("LHLO client.test")[0] == 250
    assert c.command(f"MAIL FROM:<{sender}>{mail_params}")[0] == 250
    return [c.command(f"RCPT TO:<{r}>") for r in recipients]


def lmtp_stuffed(data):
    """DATA content for `data` (bytes with CRLF line ends): dots doubled, final dot added."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"
