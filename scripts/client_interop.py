#!/usr/bin/env python3
"""The retriever (`pop3 fetch`) against real servers on loopback: Dovecot and `pop3d dev`.

1. Against Dovecot (Debian's dovecot-pop3d, started here as root with a temporary configuration on free ports) and
   against `pop3d dev`: ~20 messages of assorted shapes (LF, CRLF, dot lines, `From ` lines, 8-bit, a 300 KB one)
   fetched into a Maildir (pop3s://), an mbox (--starttls pop3://) and an MDA command; --keep and re-runs,
   delete-after-download, --keep-days with a moved clock (POP3_NOW), --max-size, --json. Every message must arrive
   exactly once with bytes identical to the source (after LF normalisation; mboxrd quoting undone for mbox).
2. kill -9 crash safety against `pop3d dev`: a ~300-message mailbox fetched (delete mode) by runs that are killed
   with SIGKILL after a random delay and re-run until one exits 0 with the server empty; then every message is in
   the Maildir exactly once. The same with an mbox destination.
3. A 1 GiB message through pop3d into a Maildir with the client's peak RSS (VmHWM, polled) under 64 MiB.

Needs: root (Dovecot runs as root with mail_uid = an unprivileged user), dovecot-pop3d installed (a check fails if
it is not), python3 with `cryptography`, openssl, ~2.5 GB free in $TMPDIR. Only loopback; only processes this
script started are signalled, by PID.

Prints one PASS/FAIL line per check and 'client-interop: N passed, N failed'; exits non-zero on any failure.

Usage: scripts/client_interop.py --pop3 PATH --pop3d PATH [--keep-temp] [--seed N] [--only pop3d,dovecot,kill,big]
(CLIENT_INTEROP_DEBUG=1 prints every run of the kill loops.)
"""
import argparse
import concurrent.futures
import datetime
import hashlib
import json
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
import subprocess
import sys
import tempfile
import time
import traceback

ARGS = None
WORK = None
PASSED = 0
FAILED = 0


def report(ok, name, detail=""):
    global PASSED, FAILED
    if ok:
        PASSED += 1
    else:
        FAILED += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f"  [{detail}]" if detail else ""), flush=True)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening after {deadline} s")


def stop_process(proc, grace=10):
    """SIGTERM, then SIGKILL, a process this script started (by its PID)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def write_secret(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def tail(path, n=8):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- messages

def norm(data):
    return data.replace(b"\r\n", b"\n")


MID_RE = re.compile(rb"^message-id:[ \t]*(<[^>\n]+>)", re.I | re.M)


def message_id(data):
    head = norm(data).split(b"\n\n", 1)[0]
    m = MID_RE.search(head)
    return m.group(1).decode("latin-1") if m else None


def header(tag, i, subject, eol="\n", extra=""):
    return (f"From: Sender {i} <sender{i}@example.org>{eol}To: user@localhost{eol}Subject: {subject}{eol}"
            f"Date: Mon, 02 Mar 2026 10:{i % 60:02d}:00 +0000{eol}Message-ID: <{tag}.{i}@interop.test>{eol}"
            f"{extra}").encode()


def big_body(size, rng):
    """~size bytes of LF text with dot lines and From lines sprinkled in."""
    out = []
    n = 0
    k = 0
    while n < size:
        k += 1
        if k % 97 == 0:
            line = b"." * (1 + k % 3) + b" dotted line %d\n" % k
        elif k % 89 == 0:
            line = b"From the middle of a big message, line %d\n" % k
        elif k % 83 == 0:
            line = b".\n"
        else:
            line = rng.randbytes(54).hex().encode()[:72] + b"\n"
        out.append(line)
        n += len(line)
    return b"".join(out)


def corpus(tag, rng):
    """20 messages of assorted shapes, each with a unique Message-ID; returns {message-id: bytes}. Index 8 is the
    300 KB one (the only one over 100,000 octets)."""
    m = []
    m.append(header(tag, 0, "plain LF") + b"\nHello,\nthis is a plain message.\n")
    m.append(header(tag, 1, "CRLF", "\r\n") + b"\r\nLine one\r\nLine two\r\n\r\nafter a blank line\r\n")
    m.append(header(tag, 2, "dots LF") + b"\n.\n..\n...\n.leading dot\n..two dots\n. dot space\nend\n")
    m.append(header(tag, 3, "dots CRLF", "\r\n") + b"\r\n.\r\n..\r\n.x\r\nmiddle\r\n.\r\n")
    m.append(header(tag, 4, "From lines") +
             b"\nFrom here on\nFrom the start\n>From quoted\n>>From double\n From space\nFrom\nFromage\n")
    m.append(header(tag, 5, "From first") + b"\nFrom the very first body line\nbody\n>From last\n")
    m.append(header(tag, 6, "=?UTF-8?Q?8-bit_UTF-8?=", extra="MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                    "Content-Transfer-Encoding: 8bit\n") + "\nGrüße, 日本語, émoji 😀\nÆØÅ æøå\n".encode())
    m.append(header(tag, 7, "8-bit latin-1", extra="Content-Type: text/plain; charset=iso-8859-1\n") +
             b"\ncaf\xe9 na\xefve \xff\xfe\x80\x81 \xa0nbsp\n")
    m.append(header(tag, 8, "300 KB") + b"\n" + big_body(300_000, rng))
    m.append(header(tag, 9, "998-char line") + b"\n" + b"x" * 998 + b"\n")
    m.append(header(tag, 10, "10,000-char line") + b"\n" + (b"abcdefghij" * 1000) + b"\n")
    m.append(header(tag, 11, "headers and blank line only") + b"\n")
    m.append(header(tag, 12, "headers only, no blank line"))
    m.append(header(tag, 13, "trailing blank lines") + b"\ntext\n\n\n\n")
    m.append(header(tag, 14, "mixed line ends") + b"\r\na\r\nb\nc\r\n.d\n.\r\nend\n")
    m.append(header(tag, 15, "whitespace") + b"\n \n\t\n   trailing spaces   \n\t tab\tin\tline\n")
    b64 = __import__("base64").encodebytes(rng.randbytes(15000))
    m.append(header(tag, 16, "multipart", extra="MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n") +
             b"\nPreamble\n--b1\nContent-Type: text/plain\n\nText part\n.\n--b1\nContent-Type: application/octet-stream\n"
             b"Content-Transfer-Encoding: base64\n\n" + b64 + b"--b1--\n")
    m.append(header(tag, 17, "lone dot last line CRLF", "\r\n") + b"\r\nabove\r\n.\r\n")
    m.append(header(tag, 18, "control characters") + b"\nform\x0cfeed\x0b vtab \x1b[0m escape \x7f del\n")
    m.append(header(tag, 19, "60 KB") + b"\n" + big_body(60_000, rng))
    out = {}
    for data in m:
        out[message_id(data)] = data
    assert len(out) == 20
    return out


def crash_corpus(tag, count, rng):
    """count messages, every 8th ~200 KB, others 0.5-6 KB with dots and From lines; every 4th with CRLF."""
    out = {}
    for i in range(count):
        if i % 8 == 7:
            body = big_body(200_000, rng)
        else:
            body = big_body(rng.randint(500, 6000), rng)
            if i % 3 == 0:
                body = b"From the top\n.\n" + body
        eol = "\r\n" if i % 4 == 1 else "\n"
        data = header(tag, i, f"crash test {i}", eol) + eol.encode() + (body.replace(b"\n", b"\r\n") if eol == "\r\n" else body)
        out[message_id(data)] = data
    return out


# ---------------------------------------------------------------- destinations

def maildir_messages(path):
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                with open(os.path.join(d, name), "rb") as f:
                    out.append(f.read())
    return out


def tmp_files(path):
    d = os.path.join(path, "tmp")
    return os.listdir(d) if os.path.isdir(d) else []


def directory_messages(path):
    out = []
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            with open(os.path.join(path, name), "rb") as f:
                out.append(f.read())
    return out


MBOX_FROM_RE = re.compile(rb"(?:\A|(?<=\n))From ")
MBOXRD_UNQUOTE_RE = re.compile(rb"^>(>*From )", re.M)


def mbox_messages(path):
    """Splits an mboxrd file (LF) into messages, undoing the `>From ` quoting. Malformed records become problems."""
    if not os.path.exists(path):
        return [], []
    with open(path, "rb") as f:
        data = f.read()
    problems = []
    starts = [m.start() for m in MBOX_FROM_RE.finditer(data)]
    if data and (not starts or starts[0] != 0):
        problems.append("mbox does not start with a From_ line")
    out = []
    for k, start in enumerate(starts):
        record = data[start:starts[k + 1] if k + 1 < len(starts) else len(data)]
        first_nl = record.find(b"\n")
        if first_nl < 0:
            problems.append(f"record {k}: no From_ line end")
            continue
        if not re.match(rb"From \S+ \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$", record[:first_nl]):
            problems.append(f"record {k}: odd From_ line {record[:first_nl][:80]!r}")
        body = record[first_nl + 1:]
        if not body.endswith(b"\n\n"):
            problems.append(f"record {k}: not followed by a blank line")
        else:
            body = body[:-1]
        out.append(MBOXRD_UNQUOTE_RE.sub(rb"\1", body))
    return out, problems


TRACE_RE = re.compile(rb"\A(?:(?:Received:|X-[\w-]+:|Return-Path:|Delivered-To:)[^\n]*\n(?:[ \t][^\n]*\n)*)+\Z", re.I)


def compare(fetched, expected):
    """Every expected message exactly once, stored with LF line ends, identical to its source after LF normalisation
    (a prefix of trace header lines such as Received: is allowed). Returns a list of problems (empty when all is well)."""
    problems = []
    seen = {}
    crlf = sum(1 for data in fetched if b"\r\n" in data)
    if crlf:
        problems.append(f"{crlf} stored with CRLF line ends (want LF)")
    for data in fetched:
        mid = message_id(data)
        if mid is None or mid not in expected:
            problems.append(f"unexpected message {mid or norm(data)[:60]!r}")
            continue
        seen[mid] = seen.get(mid, 0) + 1
        got, want = norm(data), norm(expected[mid])
        if got != want:
            if not (got.endswith(want) and TRACE_RE.match(got[:len(got) - len(want)])):
                at = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
                problems.append(f"{mid} differs at byte {at} (got {len(got)} bytes, want {len(want)}; "
                                f"got {got[max(0, at - 10):at + 20]!r} want {want[max(0, at - 10):at + 20]!r})")
    for mid, n in seen.items():
        if n > 1:
            problems.append(f"{mid} stored {n} times")
    missing = [mid for mid in expected if mid not in seen]
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    return problems


def summary(problems, limit=3):
    return "; ".join(problems[:limit]) + (f"; … {len(problems) - limit} more" if len(problems) > limit else "")


# ---------------------------------------------------------------- servers

class Server:
    name = "?"

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix=f"{self.name}-", dir=WORK)
        os.chmod(self.root, 0o755)
        self.state = os.path.join(self.root, "client-state")
        self.passwords = {}
        self.pwfiles = {}
        self.proc = None
        self.tls_port = free_port()
        self.plain_port = free_port()
        self.ca = None

    def url(self, user, starttls=False):
        return f"pop3://{user}@localhost:{self.plain_port}" if starttls else f"pop3s://{user}@localhost:{self.tls_port}"

    def _set_password(self, user, password):
        self.passwords[user] = password
        self.pwfiles[user] = write_secret(os.path.join(WORK, f"pw-{self.name}-{user}"), password)

    def stat(self, user):
        """(count, octets) on the server, via Python's poplib over implicit TLS."""
        ctx = ssl.create_default_context(cafile=self.ca)
        last = None
        for _ in range(20):
            try:
                c = poplib.POP3_SSL("localhost", self.tls_port, context=ctx, timeout=30)
                try:
                    c.user(user)
                    c.pass_(self.passwords[user])
                    return c.stat()
                finally:
                    try:
                        c.quit()
                    except Exception:
                        pass
            except poplib.error_proto as e:  # e.g. [IN-USE] right after a killed session
                last = e
                time.sleep(0.25)
        raise RuntimeError(f"STAT for {user} failed: {last}")

    def fetch(self, user, dest, *extra, starttls=False, env=None, timeout=300):
        cmd = [ARGS.pop3, "fetch", "--ca-file", self.ca, "--password-file", self.pwfiles[user], *extra, *dest]
        if starttls:
            cmd.append("--starttls")
        cmd.append(self.url(user, starttls))
        e = dict(os.environ, XDG_STATE_HOME=self.state)
        e.pop("POP3_NOW", None)
        e.update(env or {})
        return subprocess.run(cmd, capture_output=True, timeout=timeout, env=e)

    def fetch_cmd(self, user, dest, *extra):
        return [ARGS.pop3, "fetch", "--ca-file", self.ca, "--password-file", self.pwfiles[user], *extra, *dest,
                self.url(user)]

    def client_env(self):
        e = dict(os.environ, XDG_STATE_HOME=self.state)
        e.pop("POP3_NOW", None)
        return e

    def seed(self, user, messages):
        workers = 3 if len(messages) > 10 else 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda data: self.deliver(user, data), messages.values()))

    def stop(self):
        stop_process(self.proc)


class Pop3dDev(Server):
    """`pop3d dev` on free ports. As root, pop3d and its admin commands run as `nobody` (so that neither `dev` nor
    `deliver` has privileges to drop), the way a user would run a development server."""
    name = "pop3d"

    def __init__(self):
        super().__init__()
        self.ids = {}
        if os.geteuid() == 0:
            p = pwd.getpwnam("nobody")
            os.chown(self.root, p.pw_uid, p.pw_gid)
            self.ids = {"user": p.pw_uid, "group": p.pw_gid, "extra_groups": []}

    def start(self):
        self.data = os.path.join(self.root, "data")
        self.log_path = os.path.join(self.root, "pop3d.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [ARGS.pop3d, "dev", "--data", self.data, "--pop3s-port", str(self.tls_port),
             "--pop3-port", str(self.plain_port)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self.ids)
        wait_port(self.tls_port, self.proc)
        wait_port(self.plain_port, self.proc)
        self.ca = os.path.join(self.data, "tls", "cert.pem")
        self.config = os.path.join(self.data, "pop3d.yaml")

    def add_user(self, user):
        password = secrets.token_urlsafe(12)
        r = subprocess.run([ARGS.pop3d, "user", "add", user, "--config", self.config], input=(password + "\n").encode(),
                           capture_output=True, timeout=60, **self.ids)
        if r.returncode != 0:
            raise RuntimeError(f"pop3d user add {user}: {r.stderr.decode(errors='replace').strip()}")
        self._set_password(user, password)

    def deliver(self, user, data):
        r = subprocess.run([ARGS.pop3d, "deliver", user, "--config", self.config], input=data, capture_output=True,
                           timeout=120, **self.ids)
        if r.returncode != 0:
            raise RuntimeError(f"pop3d deliver {user}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")


def make_cert(folder):
    """A self-signed end-entity certificate for localhost (CA:FALSE, SKI/AKI, SAN DNS:localhost, IP:127.0.0.1, ::1),
    the profile `pop3d dev` writes. No keyUsage: BoringSSL (the client's TLS) checks a self-signed certificate's own
    keyUsage as its issuer's, and digitalSignature alone lacks keyCertSign."""
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(folder, "cert.pem")
    key_path = os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def sha512_crypt(password):
    r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=(password + "\n").encode(), capture_output=True,
                       timeout=30)
    if r.returncode != 0 or not r.stdout.startswith(b"$6$"):
        raise RuntimeError(f"openssl passwd -6 failed: {r.stderr.decode(errors='replace').strip()}")
    return "{SHA512-CRYPT}" + r.stdout.decode().strip()


def mail_owner():
    """The unprivileged owner of Dovecot's mail (Dovecot refuses root): vmail if present, else nobody."""
    for user in ("vmail", "nobody"):
        try:
            p = pwd.getpwnam(user)
            return p.pw_uid, p.pw_gid
        except KeyError:
            pass
    raise RuntimeError("neither a 'vmail' nor a 'nobody' user exists")


class Dovecot(Server):
    name = "dovecot"
    USERS = ("keeper", "stls", "mda", "sizer")

    def start(self):
        binary = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
        if binary is None:
            raise RuntimeError("dovecot is not installed (Debian: apt-get install dovecot-pop3d)")
        if os.geteuid() != 0:
            raise RuntimeError("Dovecot is started as root with mail_uid set; run this script as root")
        self.uid, self.gid = mail_owner()
        for sub in ("run", "state", "ssl"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.mail = os.path.join(self.root, "mail")
        os.makedirs(self.mail, mode=0o755, exist_ok=True)
        os.chown(self.mail, self.uid, self.gid)
        self.ca, key = make_cert(os.path.join(self.root, "ssl"))
        lines = []
        for user in self.USERS:
            self._set_password(user, secrets.token_urlsafe(12))
            lines.append(f"{user}:{sha512_crypt(self.passwords[user])}:{self.uid}:{self.gid}::{self.mail}/{user}::\n")
        users = os.path.join(self.root, "users")
        with open(users, "w") as f:
            f.writelines(lines)
        os.chmod(users, 0o644)
        self.log_path = os.path.join(self.root, "dovecot.log")
        conf = os.path.join(self.root, "dovecot.conf")
        r = self.root
        with open(conf, "w") as f:
            f.write(f"""# written by scripts/client_interop.py
instance_name = client-interop-{os.getpid()}
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
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
}}
first_valid_uid = {self.uid}
last_valid_uid = 0
first_valid_gid = 0
mail_uid = {self.uid}
mail_gid = {self.gid}
mail_location = maildir:{self.mail}/%u
pop3_uidl_format = %08Xu%08Xv
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
}}
""")
        self.out_path = os.path.join(self.root, "dovecot.stdout")
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen([binary, "-c", conf, "-F"], stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            wait_port(self.tls_port, self.proc)
            wait_port(self.plain_port, self.proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; {tail(self.out_path)} {tail(self.log_path)}")
        self.counter = 0

    def deliver(self, user, data):
        """Straight into the user's Maildir (tmp/ then rename into new/), owned by the mail user."""
        base = os.path.join(self.mail, user)
        for sub in ("", "tmp", "new", "cur"):
            d = os.path.join(base, sub)
            if not os.path.isdir(d):
                os.makedirs(d, mode=0o700, exist_ok=True)
                os.chown(d, self.uid, self.gid)
        self.counter += 1
        name = f"{int(time.time())}.M{self.counter}P{os.getpid()}.interop"
        tmp = os.path.join(base, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, os.path.join(base, "new", name))

    def seed(self, user, messages):
        for data in messages.values():
            self.deliver(user, data)

    def stop(self):
        # SIGTERM to the master we started (-F: the Popen PID is the master); it stops its children.
        stop_process(self.proc, grace=15)


# ---------------------------------------------------------------- 1. functional checks

def parse_json(r):
    try:
        doc = json.loads(r.stdout.decode())
        acc = doc["accounts"][0]
        return acc, None
    except Exception as e:
        return None, f"--json output does not parse ({e}): {r.stdout[:200]!r}"


def rc_problem(r, want=0):
    if r.returncode != want:
        return f"exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[:300]}"
    return None


def functional(server, rng):
    s = server.name
    n = 20

    # A. Maildir over pop3s:// with --keep and --json; a re-run fetches nothing; default mode then deletes.
    msgs = corpus(f"{s}-keep", rng)
    server.seed("keeper", msgs)
    maildir = os.path.join(server.root, "maildir-keep")
    t = time.time()
    r = server.fetch("keeper", ["--maildir", maildir], "--keep", "--json")
    acc, jp = parse_json(r)
    p = [x for x in (rc_problem(r), jp) if x]
    if acc is not None and acc.get("fetched") != n:
        p.append(f"json says fetched={acc.get('fetched')}, want {n}")
    p += compare(maildir_messages(maildir), msgs)
    if tmp_files(maildir):
        p.append(f"tmp/ not empty: {tmp_files(maildir)[:3]}")
    count = server.stat("keeper")[0]
    if count != n:
        p.append(f"server holds {count} messages, want {n} (--keep)")
    report(not p, f"{s}: pop3s --maildir --keep --json: {n} messages, each once, bytes identical, left on server",
           summary(p) or f"{time.time() - t:.1f} s, json {acc}")

    r = server.fetch("keeper", ["--maildir", maildir], "--keep", "--json")
    acc, jp = parse_json(r)
    p = [x for x in (rc_problem(r), jp) if x]
    if acc is not None and acc.get("fetched") != 0:
        p.append(f"json says fetched={acc.get('fetched')}, want 0")
    p += compare(maildir_messages(maildir), msgs)
    count = server.stat("keeper")[0]
    if count != n:
        p.append(f"server holds {count}, want {n}")
    report(not p, f"{s}: --keep re-run fetches nothing new", summary(p))

    r = server.fetch("keeper", ["--maildir", maildir], "--json")
    acc, jp = parse_json(r)
    p = [x for x in (rc_problem(r), jp) if x]
    if acc is not None and (acc.get("fetched") != 0 or acc.get("deleted") != n):
        p.append(f"json says fetched={acc.get('fetched')} deleted={acc.get('deleted')}, want 0 and {n}")
    p += compare(maildir_messages(maildir), msgs)
    count = server.stat("keeper")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    report(not p, f"{s}: default mode deletes the already-fetched messages, downloads none again", summary(p))

    # B. STLS on pop3:// into an mbox, delete mode.
    msgs = corpus(f"{s}-mbox", rng)
    server.seed("stls", msgs)
    mbox = os.path.join(server.root, "mbox-stls")
    t = time.time()
    r = server.fetch("stls", ["--mbox", mbox], starttls=True)
    got, p = mbox_messages(mbox)
    p = [x for x in [rc_problem(r)] if x] + p + compare(got, msgs)
    count = server.stat("stls")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    if os.path.exists(mbox + ".lock"):
        p.append("dotlock left behind")
    report(not p, f"{s}: --starttls pop3:// --mbox: {n} messages, each once, identical after un-quoting, deleted on "
                  f"server", summary(p) or f"{time.time() - t:.1f} s")

    # C. MDA with --keep-days 3, the clock moved by POP3_NOW.
    msgs = corpus(f"{s}-mda", rng)
    server.seed("mda", msgs)
    out = os.path.join(server.root, "mda-out")
    os.makedirs(out)
    mda = f"cat > {out}/$(date +%s%N).eml"
    now = int(time.time())
    r = server.fetch("mda", ["--mda", mda], "--keep-days", "3")
    p = [x for x in [rc_problem(r)] if x] + compare(directory_messages(out), msgs)
    count = server.stat("mda")[0]
    if count != n:
        p.append(f"server holds {count}, want {n} (--keep-days 3)")
    report(not p, f"{s}: --mda --keep-days 3: {n} messages, each once, identical, kept on server", summary(p))

    r = server.fetch("mda", ["--mda", mda], "--keep-days", "3", "--json", env={"POP3_NOW": str(now + 2 * 86400)})
    acc, jp = parse_json(r)
    p = [x for x in (rc_problem(r), jp) if x]
    if acc is not None and (acc.get("fetched") != 0 or acc.get("deleted") != 0):
        p.append(f"json says fetched={acc.get('fetched')} deleted={acc.get('deleted')}, want 0 and 0")
    count = server.stat("mda")[0]
    if count != n:
        p.append(f"server holds {count}, want {n}")
    p += compare(directory_messages(out), msgs)
    report(not p, f"{s}: --keep-days 3 at +2 days: nothing deleted, nothing fetched again", summary(p))

    r = server.fetch("mda", ["--mda", mda], "--keep-days", "3", "--json", env={"POP3_NOW": str(now + 4 * 86400)})
    acc, jp = parse_json(r)
    p = [x for x in (rc_problem(r), jp) if x]
    if acc is not None and (acc.get("fetched") != 0 or acc.get("deleted") != n):
        p.append(f"json says fetched={acc.get('fetched')} deleted={acc.get('deleted')}, want 0 and {n}")
    count = server.stat("mda")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    p += compare(directory_messages(out), msgs)
    report(not p, f"{s}: --keep-days 3 at +4 days (POP3_NOW): all {n} deleted, none delivered again", summary(p))

    # D. --max-size skips the 300 KB message (exit 0, a warning), leaves it on the server; a later run gets it.
    msgs = corpus(f"{s}-size", rng)
    big_id = f"<{s}-size.8@interop.test>"
    small = {k: v for k, v in msgs.items() if k != big_id}
    server.seed("sizer", msgs)
    maildir = os.path.join(server.root, "maildir-size")
    r = server.fetch("sizer", ["--maildir", maildir], "--max-size", "100000", "--json")
    acc, jp = parse_json(r)
    p = [x for x in (rc_problem(r), jp) if x]
    err = r.stderr.decode(errors="replace").strip()
    if not re.search(r"skip|max-size", err, re.I):
        p.append(f"no warning about the skipped message on stderr ({err[:100]!r})")
    if acc is not None and (acc.get("fetched") != n - 1 or acc.get("skipped") != 1):
        p.append(f"json says fetched={acc.get('fetched')} skipped={acc.get('skipped')}, want {n - 1} and 1")
    p += compare(maildir_messages(maildir), small)
    stat = server.stat("sizer")
    if stat[0] != 1 or stat[1] < 300_000:
        p.append(f"server holds {stat}, want the big message alone")
    report(not p, f"{s}: --max-size 100000 skips the 300 KB message: exit 0, warning, left on server",
           summary(p) or f"stderr: {err.splitlines()[0][:100] if err else ''}")

    r = server.fetch("sizer", ["--maildir", maildir])
    p = [x for x in [rc_problem(r)] if x] + compare(maildir_messages(maildir), msgs)
    count = server.stat("sizer")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    report(not p, f"{s}: without --max-size the big message follows; all {n} once, server empty", summary(p))


def run_functional(cls, rng):
    server = cls()
    try:
        try:
            server.start()
            if isinstance(server, Pop3dDev):
                for user in ("keeper", "stls", "mda", "sizer"):
                    server.add_user(user)
        except Exception as e:
            report(False, f"{server.name}: start a server on loopback", str(e)[:400])
            return
        try:
            functional(server, rng)
        except Exception as e:
            traceback.print_exc()
            report(False, f"{server.name}: functional checks", f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        server.stop()
        if server.proc is not None and server.proc.returncode not in (0, -signal.SIGTERM) and server.name == "dovecot":
            print(f"    note: dovecot exited with {server.proc.returncode}; log: {tail(server.log_path)}")


# ---------------------------------------------------------------- 2. kill -9

def kill_loop(server, user, dest, min_kills, rng, max_runs, budget, expected, label, reseed):
    """Runs `pop3 fetch DEST` (delete mode) and SIGKILLs it after a random delay until at least min_kills kills
    happened and then a run exits 0 with the server empty. Returns (kills, runs, failed_runs, seconds, done)."""
    kills = runs = failed = attempts = 0
    waves = 0
    start = time.time()
    err_path = os.path.join(server.root, f"{label}.stderr")
    last_err = ""
    errors = {}
    while runs < max_runs and time.time() - start < budget:
        runs += 1
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(server.fetch_cmd(user, dest), stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, env=server.client_env())
        want_kill = kills < min_kills
        if want_kill:
            attempts += 1
            delay = rng.uniform(0.3, 1.0) if attempts % 8 == 0 else rng.uniform(0.0, 0.3)
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)  # our child, by PID
                kills += 1
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            failed += 1
            continue
        if os.environ.get("CLIENT_INTEROP_DEBUG"):
            print(f"    {label} run {runs}: exit {proc.returncode}, kills {kills}, {time.time() - start:.1f} s")
        if proc.returncode == -signal.SIGKILL:
            continue
        if proc.returncode != 0:
            failed += 1
            last_err = tail(err_path, 2)
            key = re.sub(r"\d+", "N", last_err)[:90]
            errors[key] = errors.get(key, 0) + 1
            time.sleep(0.1)
            continue
        if server.stat(user)[0] == 0:
            if kills >= min_kills:
                return kills, runs, failed, time.time() - start, True, last_err, errors
            # Everything was fetched before enough kills: another wave of messages (bounded by max_runs and budget).
            waves += 1
            more = reseed(waves)
            expected.update(more)
            server.seed(user, more)
    return kills, runs, failed, time.time() - start, False, last_err, errors


def crash_tests(rng):
    server = Pop3dDev()
    try:
        try:
            server.start()
            server.add_user("crash")
            server.add_user("crashmbox")
        except Exception as e:
            report(False, "kill -9: start pop3d dev", str(e)[:400])
            return

        # Maildir, ~300 messages, >= 25 kills.
        try:
            t = time.time()
            msgs = crash_corpus("crash", 300, rng)
            server.seed("crash", msgs)
            seed_s = time.time() - t
            maildir = os.path.join(server.root, "maildir-crash")
            reseed = lambda wave: crash_corpus(f"crash-w{wave}", 100, rng)
            kills, runs, failed, secs, done, last_err, errors = kill_loop(
                server, "crash", ["--maildir", maildir], 25, rng, 400, 150, msgs, "crash-maildir", reseed)
            p = []
            if not done:
                p.append(f"no clean run with an empty server after {runs} runs / {secs:.0f} s (last error: {last_err})")
            if kills < 25:
                p.append(f"only {kills} kills")
            p += compare(maildir_messages(maildir), msgs)
            if tmp_files(maildir):
                p.append(f"{len(tmp_files(maildir))} files left in tmp/")
            if server.stat("crash")[0] != 0:
                p.append("server not empty")
            report(not p, f"kill -9 (Maildir): {len(msgs)} messages each exactly once and identical after "
                          f"{kills} SIGKILLs", summary(p) or
                   f"{runs} runs, {failed} failed runs{' ' + str(errors) if errors else ''}, {secs:.1f} s (+{seed_s:.1f} s seeding)")
        except Exception as e:
            traceback.print_exc()
            report(False, "kill -9 (Maildir)", f"{type(e).__name__}: {str(e)[:300]}")

        # mbox, ~150 messages, >= 10 kills.
        try:
            msgs = crash_corpus("crashmbox", 150, rng)
            server.seed("crashmbox", msgs)
            mbox = os.path.join(server.root, "mbox-crash")
            reseed = lambda wave: crash_corpus(f"crashmbox-w{wave}", 40, rng)
            kills, runs, failed, secs, done, last_err, errors = kill_loop(
                server, "crashmbox", ["--mbox", mbox], 10, rng, 200, 90, msgs, "crash-mbox", reseed)
            got, p = mbox_messages(mbox)
            if not done:
                p.insert(0, f"no clean run with an empty server after {runs} runs / {secs:.0f} s (last error: {last_err})")
            if kills < 10:
                p.append(f"only {kills} kills")
            p += compare(got, msgs)
            if os.path.exists(mbox + ".lock"):
                p.append("dotlock left behind")
            report(not p, f"kill -9 (mbox): {len(msgs)} messages each exactly once and identical after {kills} "
                          f"SIGKILLs", summary(p) or f"{runs} runs, {failed} failed runs{' ' + str(errors) if errors else ''}, {secs:.1f} s")
        except Exception as e:
            traceback.print_exc()
            report(False, "kill -9 (mbox)", f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        server.stop()


# ---------------------------------------------------------------- 3. 1 GiB

def big_message(rss_limit_kb=64 * 1024):
    size = 1 << 30
    server = Pop3dDev()
    try:
        try:
            server.start()
            server.add_user("big")
        except Exception as e:
            report(False, "1 GiB: start pop3d dev", str(e)[:400])
            return
        t = time.time()
        # Stream 1 GiB (LF, ending in LF) into `pop3d deliver`, hashing as it goes.
        head = header("big", 0, "one gibibyte") + b"\n"
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abc\n"
        block = (line * 1000 + b".a dot line\n" + b"From a line\n" + b".\n") * 14
        digest = hashlib.sha256()
        proc = subprocess.Popen([ARGS.pop3d, "deliver", "big", "--config", server.config], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **server.ids)
        written = 0

        def put(b):
            nonlocal written
            proc.stdin.write(b)
            digest.update(b)
            written += len(b)

        try:
            put(head)
            while written + len(block) <= size - 1:
                put(block)
            rest = size - 1 - written
            put((line * (rest // len(line) + 1))[:rest])
            put(b"\n")
            proc.stdin.close()
            err = proc.stderr.read()
            proc.wait(120)
        except BrokenPipeError:
            proc.wait(120)
            err = proc.stderr.read()
        if proc.returncode != 0 or written != size:
            report(False, "1 GiB: deliver into pop3d", f"exit {proc.returncode}: {err.decode(errors='replace')[:300]}")
            return
        deliver_s = time.time() - t

        maildir = os.path.join(server.root, "maildir-big")
        t = time.time()
        err_path = os.path.join(server.root, "big.stderr")
        with open(err_path, "wb") as errf:
            proc = subprocess.Popen(server.fetch_cmd("big", ["--maildir", maildir]), stdout=subprocess.DEVNULL,
                                    stderr=errf, stdin=subprocess.DEVNULL, env=server.client_env())
        peak = 0
        status_path = f"/proc/{proc.pid}/status"
        while proc.poll() is None and time.time() - t < 600:
            try:
                with open(status_path) as f:
                    for l in f:
                        if l.startswith("VmHWM:"):
                            peak = max(peak, int(l.split()[1]))
                            break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        fetch_s = time.time() - t
        p = []
        if proc.returncode != 0:
            p.append(f"exit {proc.returncode}: {tail(err_path, 3)}")
        if peak == 0:
            p.append("could not read VmHWM")
        elif peak >= rss_limit_kb:
            p.append(f"peak RSS {peak / 1024:.1f} MiB >= {rss_limit_kb / 1024:.0f} MiB")
        files = [os.path.join(maildir, "new", f) for f in os.listdir(os.path.join(maildir, "new"))] \
            if os.path.isdir(os.path.join(maildir, "new")) else []
        if len(files) != 1:
            p.append(f"{len(files)} files in new/, want 1")
        else:
            got = os.path.getsize(files[0])
            if got != size:
                p.append(f"stored {got} bytes, source {size}")
            else:
                h = hashlib.sha256()
                with open(files[0], "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                if h.digest() != digest.digest():
                    p.append("same size but different bytes (SHA-256)")
        if server.stat("big")[0] != 0:
            p.append("not deleted on the server")
        report(not p, f"1 GiB message: fetched into a Maildir, identical, peak RSS < {rss_limit_kb // 1024} MiB",
               summary(p) or f"peak RSS (VmHWM) {peak / 1024:.1f} MiB, fetch {fetch_s:.1f} s "
                              f"({size / fetch_s / 1e6:.1f} MB/s), deliver {deliver_s:.1f} s")
        print(f"    1 GiB fetch: peak RSS {peak} kB ({peak / 1024:.1f} MiB)", flush=True)
    finally:
        server.stop()


# ---------------------------------------------------------------- main

def main():
    global ARGS, WORK
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pop3", required=True)
    parser.add_argument("--pop3d", required=True)
    parser.add_argument("--keep-temp", action="store_true", help="leave the temporary folder for inspection")
    parser.add_argument("--skip-big", action="store_true", help="skip the 1 GiB check (reported as a failure)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated subset of: pop3d,dovecot,kill,big (development)")
    ARGS = parser.parse_args()
    ARGS.pop3 = os.path.abspath(ARGS.pop3)
    ARGS.pop3d = os.path.abspath(ARGS.pop3d)
    seed = ARGS.seed if ARGS.seed is not None else random.randrange(1 << 30)
    print(f"client-interop: random seed {seed}", flush=True)
    rng = random.Random(seed)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so that the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    WORK = tempfile.mkdtemp(prefix="client-interop-")
    os.chmod(WORK, 0o755)
    started = time.time()
    try:
        for name, fn in (("pop3d", lambda: run_functional(Pop3dDev, rng)),
                         ("dovecot", lambda: run_functional(Dovecot, rng)),
                         ("kill -9", lambda: crash_tests(rng)),
                         ("1 GiB", lambda: report(False, "1 GiB message", "skipped (--skip-big)") if ARGS.skip_big
                          else big_message())):
            if ARGS.only and name.split()[0].replace("1", "big") not in ARGS.only.split(","):
                continue
            t = time.time()
            try:
                fn()
            except Exception as e:
                traceback.print_exc()
                report(False, name, f"{type(e).__name__}: {str(e)[:300]}")
            print(f"    ({name}: {time.time() - t:.1f} s)", flush=True)
    finally:
        if ARGS.keep_temp:
            print(f"    temporary folder kept: {WORK}")
        else:
            shutil.rmtree(WORK, ignore_errors=True)
    print(f"    total {time.time() - started:.1f} s")
    print(f"client-interop: {PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
