"""pop3d's LMTP server (RFC 2033) behind a real MTA: Debian's Postfix 3.7 (package postfix, installed by
scripts/test-deps) delivering into `pop3d dev` over `lmtp:unix:` and `lmtp:inet:`, and Postfix's smtp-source
load generator speaking LMTP straight at pop3d.

Each Postfix test runs a private Postfix instance of its own in a 0755 temporary folder (its own config_directory,
queue_directory and data_directory; smtpd on a free 127.0.0.1 port; `mydestination` empty, everything for
example.test goes to `virtual_transport`, anything else to the error transport), started with `postfix -c DIR
start-fg` as a subprocess we own whose stdout is ROOT/maillog, with `maillog_file = /dev/stdout` and the postlog
service (MAILLOG_README, "logging to stdout"): that file also gets what `postfix start` says before postlogd is up,
which a plain maillog_file would lose. Stopped with `postfix -c DIR stop`. Postfix needs root (its master, the
queue ownership, set-gid postdrop), so those tests are marked root. pop3d runs as `nobody` (`pop3d dev` as root
would write mail as root) in another 0755 folder ROOT, with its LMTP socket at ROOT/lmtp.sock (the dev data folder
ROOT/data is 0700, so pop3d.yaml lists unix:../lmtp.sock) and `lmtp.socket_mode: "0666"`, so that Postfix's lmtp
client (user postfix) can connect.

The smtp-source load test needs neither root nor a Postfix instance, only the smtp-source binary.

Failures show the tails of Postfix's log and of pop3d's.
"""
import json
import os
import re
import secrets
import shutil
import smtplib
import stat
import subprocess
import time

import pytest

from pop3support import Pop3dDev, crlf, free_port, pop3_size, shared_tmpdir, stop_process, tail, wait_port

POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
POSTQUEUE = "/usr/sbin/postqueue"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = "sender@sender.test"  # not example.test: its bounces go to the error transport and are dropped there


def needs(*paths):
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"Postfix is not installed ({', '.join(missing)} missing; Debian: apt-get install postfix, as "
                    f"scripts/test-deps does)")


# ---------------------------------------------------------------- a private Postfix instance

MASTER_CF = """\
# written by tests/test_lmtp_postfix.py: chroot n everywhere
{smtp}      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# `QUEUEID: to=<rcpt>, [orig_to=<...>, ]relay=..., delay=..., delays=..., dsn=X.Y.Z, status=WORD (text)`
STATUS_LINE = re.compile(r"\b([0-9A-F]{6,}): to=<([^>]*)>, (?:orig_to=<[^>]*>, )?relay=(\S+), .*?"
                         r"dsn=(\d\.\d+\.\d+), status=(\w+) \((.*)\)$")


class Postfix:
    """Postfix with its own configuration, queue and log in `root` (a 0755 folder), delivering example.test to
    `transport` (e.g. "lmtp:unix:/path" or "lmtp:inet:127.0.0.1:PORT"), smtpd on 127.0.0.1:smtp_port."""

    def __init__(self, root, transport):
        self.root = root
        self.etc = os.path.join(root, "etc")
        self.queue = os.path.join(root, "queue")
        self.log_path = os.path.join(root, "maillog")
        self.smtp_port = free_port()
        self.transport = transport
        self.proc = None

    def write_config(self):
        os.makedirs(self.etc, exist_ok=True)
        os.makedirs(self.queue, mode=0o755, exist_ok=True)  # root-owned; `postfix start` creates what is inside
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(f"""# written by tests/test_lmtp_postfix.py
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.root}/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-pop3test
maillog_file = /dev/stdout
myhostname = mx.example.test
mydomain = example.test
myorigin = example.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
biff = no
local_transport = error:5.1.1 local delivery is off in this test instance
default_transport = error:5.1.2 this test instance delivers only to example.test
relay_transport = $default_transport
virtual_mailbox_domains = example.test
virtual_transport = {self.transport}
# Unknown recipients must reach pop3d (and be refused there), not smtpd's table check.
smtpd_reject_unlisted_recipient = no
smtputf8_enable = yes
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
""")
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(smtp=f"127.0.0.1:{self.smtp_port}"))

    def start(self, seconds=60):
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([POSTFIX, "-c", self.etc, "start-fg"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        # master opens every service socket before it forks anything: smtpd's port means the instance is up.
        wait_port(self.smtp_port, self.proc, seconds, log_path=self.log_path)
        return self

    def stop(self):
        """`postfix stop` (SIGTERM to our master), then waits for the start-fg script; SIGKILL to the master (its
        PID from our pid file) if it does not go."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        subprocess.run([POSTFIX, "-c", self.etc, "stop"], capture_output=True, timeout=60)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            try:
                with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                    os.kill(int(f.read().split()[0]), 9)
            except (OSError, ValueError, IndexError):
                pass
            return stop_process(self.proc, grace=10)

    # -- submission

    def sendmail(self, recipients, data, sender=SENDER):
        """Postfix's sendmail(1) with -C (our instance), -i (a lone "." is content) and -f."""
        r = subprocess.run([SENDMAIL, "-C", self.etc, "-i", "-f", sender, "--", *recipients], input=data,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, (f"sendmail exited {r.returncode}: {r.stderr.decode(errors='replace')}; "
                                   f"postfix: {self.log_tail()}")

    def smtp(self, recipients, data, sender=SENDER, mail_options=()):
        """One SMTP transaction to our smtpd, `data` sent with CRLF line endings (smtplib sends bytes as given, and
        would add a CRLF after a final bare LF); returns the queue ID from `250 2.0.0 Ok: queued as ID`."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as s:
            s.ehlo("client.example.test")
            code, reply = s.mail(sender, list(mail_options))
            assert code == 250, (code, reply)
            for rcpt in recipients:
                code, reply = s.rcpt(rcpt)
                assert code == 250, (rcpt, code, reply)
            code, reply = s.data(crlf(data))
            assert code == 250, (code, reply)
        m = re.search(rb"queued as ([0-9A-F]+)", reply)
        assert m, reply
        return m.group(1).decode()

    def flush(self):
        r = subprocess.run([POSTQUEUE, "-c", self.etc, "-f"], capture_output=True, timeout=60)
        assert r.returncode == 0, f"postqueue -f: {r.returncode} {r.stderr.decode(errors='replace')}"

    def queue_entries(self):
        """`postqueue -j`: one dict per queued message."""
        r = subprocess.run([POSTQUEUE, "-c", self.etc, "-j"], capture_output=True, timeout=60)
        assert r.returncode == 0, f"postqueue -j: {r.returncode} {r.stderr.decode(errors='replace')}"
        return [json.loads(line) for line in r.stdout.decode().splitlines() if line.strip()]

    # -- the log

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=15):
        return tail(self.log_path, n)

    def statuses(self, recipient=None, queue_id=None):
        """Delivery status lines: [(queue id, recipient, relay, dsn, status, text)], in log order."""
        out = []
        for line in self.log_text().splitlines():
            m = STATUS_LINE.search(line)
            if m and (recipient is None or m.group(2) == recipient) and (queue_id is None or m.group(1) == queue_id):
                out.append(m.groups())
        return out


def wait_for(what, check, seconds, postfix=None, pop3d=None):
    """Polls check() until it returns something true; on timeout fails naming `what`, with both logs' tails."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s\n{logs(postfix, pop3d)}")
        time.sleep(0.1)


def logs(postfix=None, pop3d=None, n=15):
    out = []
    if postfix is not None:
        out.append("postfix log: " + postfix.log_tail(n))
    if pop3d is not None:
        out.append("pop3d log: " + pop3d.log_tail(n))
    return "\n".join(out)


def status_of(postfix, recipient, queue_id=None, wanted=None, seconds=30, pop3d=None):
    """Waits for a status line for recipient (and queue id) with status `wanted` (any if None); returns it."""
    def found():
        for entry in postfix.statuses(recipient, queue_id):
            if wanted is None or entry[4] == wanted:
                return entry
        return None
    return wait_for(f"Postfix logged no {wanted or 'delivery status'} for <{recipient}> (queue id {queue_id})",
                    found, seconds, postfix, pop3d)


# ---------------------------------------------------------------- pop3d for an MTA

def set_unix_listener(dev, path):
    """Adds `unix:PATH` to listen.lmtp in the generated pop3d.yaml (its `listen:` block already has the dev TCP
    listener; a top-level key may appear only once, so configure() cannot add it)."""
    with open(dev.config) as f:
        text = f.read()
    text, n = re.subn(r"^(  lmtp: \[)", lambda m: f'{m.group(1)}"unix:{path}", ', text, count=1, flags=re.M)
    assert n == 1, f"no `  lmtp: [` line under listen: in {dev.config}:\n{text}"
    with open(dev.config, "w") as f:
        f.write(text)


def set_quota(dev, user, rule):
    """Appends `userdb_quota_rule=RULE` as the extra field of user's passwd-file line (name:pw:uid:gid:gecos:home:
    shell:extra)."""
    path = os.path.join(dev.data, "users")
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        parts = line.split(":")
        if parts[0] == user:
            assert len(parts) <= 7, f"{user} already has extra fields: {line}"
            lines[i] = ":".join(parts + [""] * (7 - len(parts)) + [f"userdb_quota_rule={rule}"])
            break
    else:
        raise AssertionError(f"{user} not in {path}")
    st = os.stat(path)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chown(path, st.st_uid, st.st_gid)


@pytest.fixture
def lmtp_pop3d(pop3d_bin):
    """A factory: a stopped-then-configured `pop3d dev` as nobody in a fresh 0755 folder, LMTP on TCP (dev's
    --lmtp-port) and, with unix=True, on ROOT/lmtp.sock (mode 0666). Started; stopped and removed afterwards."""
    made = []

    def make(unix=False, lmtp_yaml=""):
        dev = Pop3dDev(pop3d_bin, shared_tmpdir("pop3d-lmtp-postfix-"), run_as="nobody")
        made.append(dev)
        dev.configure('lmtp:\n  socket_mode: "0666"\n' + lmtp_yaml)
        dev.socket = os.path.join(dev.root, "lmtp.sock") if unix else None
        if unix:
            set_unix_listener(dev, "../lmtp.sock")  # relative to pop3d.yaml's folder, ROOT/data
        dev.start()
        if unix:
            st = os.stat(dev.socket)
            assert stat.S_ISSOCK(st.st_mode), f"{dev.socket} is not a socket; pop3d log: {dev.log_tail()}"
            assert stat.S_IMODE(st.st_mode) == 0o666, f"{dev.socket} has mode {oct(stat.S_IMODE(st.st_mode))}"
        return dev

    yield make
    for dev in made:
        status = dev.stop()
        print(f"pop3d stopped: {status}; log: {dev.log_tail()}")
        shutil.rmtree(dev.root, ignore_errors=True)


@pytest.fixture
def postfix_instance():
    """A factory: a started private Postfix delivering example.test to the transport given; stopped and removed
    afterwards (its log tail printed)."""
    needs(POSTFIX, SENDMAIL, POSTQUEUE)
    made = []

    def make(transport):
        pf = Postfix(shared_tmpdir("postfix-lmtp-"), transport)
        made.append(pf)
        return pf.start()

    yield make
    for pf in made:
        status = pf.stop()
        print(f"postfix stopped: {status}; log: {pf.log_tail()}")
        shutil.rmtree(pf.root, ignore_errors=True)


# ---------------------------------------------------------------- messages and mailboxes

def message(tag, subject=None, extra_body=b""):
    """An LF-ended message with a unique Message-ID, an 8-bit UTF-8 body and lines that start with a dot
    (including a lone "." and ".."), a tab and trailing spaces; (Message-ID, bytes)."""
    msgid = f"<{tag}.{secrets.token_hex(6)}@client.example.test>"
    head = (f"From: Sender <{SENDER}>\n"
            f"To: Demo <demo@example.test>\n"
            f"Subject: {subject or tag}\n"
            f"Date: Mon, 07 Dec 2026 00:00:00 +0000\n"
            f"Message-ID: {msgid}\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n\n").encode()
    body = ("Grüße aus Köln – 日本語のテキスト ✓ ½ €\n"
            ".a line with a leading dot\n"
            "..two leading dots\n"
            ".\n"
            "..\n"
            "\ttab-indented, trailing spaces   \n"
            "From the start of a line (no mbox escaping in a Maildir)\n"
            "\n"
            "last line\n").encode() + extra_body
    return msgid, head + body


def files_with(dev, msgid, user="demo"):
    """The Maildir files of user holding the Message-ID header."""
    needle = f"\nMessage-ID: {msgid}\n".encode()
    return {name: data for name, data in dev.maildir_files(user).items() if needle in data}


def retr_lf(client, n):
    """RETR n through poplib (dot-unstuffed), as LF-ended bytes."""
    resp, lines, _ = client.retr(n)
    assert resp.startswith(b"+OK"), resp
    return b"".join(line + b"\n" for line in lines)


def fetch_by_msgid(dev, user="demo"):
    """{Message-ID: [LF-ended bytes, ...]} of every message in the maildrop, via POP3 over TLS."""
    c = dev.poplib_pop3s(user)
    try:
        count, _ = c.stat()
        out = {}
        for n in range(1, count + 1):
            data = retr_lf(c, n)
            m = re.search(rb"^Message-ID: (\S+)$", data, re.M | re.I)
            out.setdefault(m.group(1).decode() if m else None, []).append(data)
        return out
    finally:
        c.quit()


TRACE_PREFIX = re.compile(
    rb"\AReturn-Path: <(?P<sender>[^>]*)>\n"
    rb"Delivered-To: <(?P<rcpt>[^>]*)>\n"
    rb"Received: from (?P<from>[^\n]*)\n"
    rb"\tby (?P<by>\S+) \(swift-pop3\) with (?P<with>\w+) id \S+\n"
    rb"\tfor <(?P<for>[^>]*)>; [^\n]+\n")


def check_copy(data, original, recipient, sender=SENDER, what=""):
    """A stored copy is pop3d's three trace fields, then Postfix's Received: fields, then `original` unchanged.
    Returns pop3d's trace match."""
    assert b"\r" not in data, f"{what}: a CR in the stored copy (CRLF should be stored as LF)"
    assert data.endswith(original), (f"{what}: the submitted headers and body do not come back unchanged at the end "
                                     f"of the copy:\n{data.decode(errors='replace')}")
    added = data[:len(data) - len(original)]
    m = TRACE_PREFIX.match(added)
    assert m, f"{what}: pop3d's Return-Path/Delivered-To/Received are not first:\n{added.decode(errors='replace')}"
    assert m["sender"].decode() == sender and m["rcpt"].decode() == recipient and m["for"].decode() == recipient, (
        what, m.groupdict())
    rest = added[m.end():]
    # What Postfix added in between: only Received: fields (with folded continuation lines).
    assert rest.startswith(b"Received: "), f"{what}: no Postfix Received: after pop3d's:\n{rest!r}"
    assert all(line.startswith((b"Received: ", b"\t", b" ")) for line in rest.splitlines()), (
        f"{what}: unexpected fields between the trace and the original headers:\n{rest.decode(errors='replace')}")
    return m


# ---------------------------------------------------------------- 1. lmtp:unix:

@pytest.mark.root
def test_postfix_lmtp_unix_socket_sendmail_and_smtp_arrive_byte_identical(lmtp_pop3d, postfix_instance):
    """virtual_transport = lmtp:unix:…: one message through sendmail(1), one through smtpd (BODY=8BITMIME) and one
    through smtpd with SMTPUTF8 and a UTF-8 Subject arrive in demo's Maildir once each; POP3 RETR gives back the
    submitted headers and body byte for byte after pop3d's Return-Path/Delivered-To/Received and Postfix's
    Received:, and the Maildir file is those bytes with LF endings."""
    dev = lmtp_pop3d(unix=True)
    pf = postfix_instance(f"lmtp:unix:{dev.socket}")
    before = set(dev.maildir_files())

    id_sendmail, msg_sendmail = message("via-sendmail")
    id_smtp, msg_smtp = message("via-smtp")
    id_utf8, msg_utf8 = message("via-smtputf8", subject="Grüße ✓ – SMTPUTF8")
    pf.sendmail(["demo@example.test"], msg_sendmail)
    q_smtp = pf.smtp(["demo@example.test"], msg_smtp, mail_options=["BODY=8BITMIME"])
    q_utf8 = pf.smtp(["demo@example.test"], msg_utf8, mail_options=["BODY=8BITMIME", "SMTPUTF8"])

    for msgid in (id_sendmail, id_smtp, id_utf8):
        wait_for(f"{msgid} in demo's Maildir", lambda m=msgid: files_with(dev, m), 30, pf, dev)
    for q in (q_smtp, q_utf8):
        entry = status_of(pf, "demo@example.test", q, seconds=30, pop3d=dev)
        assert entry[4] == "sent" and entry[3] == "2.0.0", f"{entry}\n{logs(pf, dev)}"
        assert entry[2] == f"mx.example.test[{dev.socket}]", entry  # Postfix names a unix: relay myhostname[path]
    sent = pf.statuses("demo@example.test")
    assert len(sent) == 3 and all(e[4] == "sent" for e in sent), f"{sent}\n{logs(pf, dev)}"

    fetched = fetch_by_msgid(dev)
    new = set(dev.maildir_files()) - before
    assert len(new) == 3, f"{len(new)} new Maildir files, not 3: {sorted(new)}\n{logs(pf, dev)}"
    for msgid, original, how in ((id_sendmail, msg_sendmail, "sendmail"), (id_smtp, msg_smtp, "smtp"),
                                 (id_utf8, msg_utf8, "smtputf8")):
        copies = fetched.get(msgid, [])
        assert len(copies) == 1, f"{how}: {len(copies)} copies of {msgid} over POP3\n{logs(pf, dev)}"
        trace = check_copy(copies[0], original, "demo@example.test", what=how)
        stored = list(files_with(dev, msgid).values())
        assert stored == [copies[0]], f"{how}: the Maildir file differs from what RETR gave (modulo CRLF)"
        if how == "smtputf8":
            assert trace["with"] == b"UTF8LMTP", f"SMTPUTF8 transaction recorded as {trace['with']!r}"
        else:
            assert trace["with"] == b"LMTP", f"{how}: recorded as {trace['with']!r}"


# ---------------------------------------------------------------- 2. lmtp:inet:, known and unknown recipients

@pytest.mark.root
def test_postfix_lmtp_tcp_known_detail_and_unknown_recipient_in_one_transaction(lmtp_pop3d, postfix_instance):
    """virtual_transport = lmtp:inet:127.0.0.1:PORT; one SMTP transaction to demo, demo+lists (the +detail goes
    to demo) and ghost: Postfix logs status=sent for the first two and status=bounced with 550 5.1.1 (in reply
    to RCPT TO) for ghost; demo gets two copies, each with its own Delivered-To."""
    dev = lmtp_pop3d()
    pf = postfix_instance(f"lmtp:inet:127.0.0.1:{dev.lmtp_port}")
    msgid, data = message("two-known-one-unknown")
    q = pf.smtp(["demo@example.test", "demo+lists@example.test", "ghost@example.test"], data)

    bounced = status_of(pf, "ghost@example.test", q, seconds=30, pop3d=dev)
    assert bounced[4] == "bounced", f"ghost@example.test: {bounced}\n{logs(pf, dev)}"
    assert bounced[3] == "5.1.1" and "550 5.1.1" in bounced[5] and "RCPT TO" in bounced[5], bounced
    relay = f"127.0.0.1[127.0.0.1]:{dev.lmtp_port}"
    for rcpt in ("demo@example.test", "demo+lists@example.test"):
        entry = status_of(pf, rcpt, q, seconds=30, pop3d=dev)
        assert entry[4] == "sent" and entry[3] == "2.0.0" and entry[2] == relay, f"{rcpt}: {entry}\n{logs(pf, dev)}"

    wait_for("two copies in demo's Maildir", lambda: len(files_with(dev, msgid)) >= 2, 30, pf, dev)
    time.sleep(1)  # nothing more may follow
    copies = files_with(dev, msgid)
    assert len(copies) == 2, f"{len(copies)} copies\n{logs(pf, dev)}"
    recipients = sorted(check_copy(c, data, re.search(rb"^Delivered-To: <([^>]*)>", c, re.M)[1].decode(),
                                   what="tcp")["rcpt"] for c in copies.values())
    assert recipients == [b"demo+lists@example.test", b"demo@example.test"], recipients
    assert dev.log_lines("unknown recipient"), f"pop3d did not log the unknown recipient: {dev.log_tail()}"
    assert not os.path.exists(dev.maildir("ghost")), "a Maildir was made for the unknown recipient"


# ---------------------------------------------------------------- 3. quota

@pytest.mark.root
def test_postfix_over_quota_bounces_552_then_defers_452_with_quota_full_tempfail(lmtp_pop3d, postfix_instance):
    """A 20k storage quota: a 5 KB message is delivered, a 30 KB one bounces with 552 5.2.2; after a restart with
    lmtp.quota_full_tempfail: true the next 30 KB one is deferred with 452 4.2.2 and stays queued."""
    dev = lmtp_pop3d(lmtp_yaml="  quota_full_tempfail: false\n")
    dev.add_user("quota", "quota-pw")
    set_quota(dev, "quota", "*:storage=20k")
    pf = postfix_instance(f"lmtp:inet:127.0.0.1:{dev.lmtp_port}")
    rcpt = "quota@example.test"

    small_id, small = message("quota-small", extra_body=(b"y" * 99 + b"\n") * 50)
    q_small = pf.smtp([rcpt], small)
    entry = status_of(pf, rcpt, q_small, seconds=30, pop3d=dev)
    assert entry[4] == "sent", f"a 5 KB message into a 20k quota: {entry}\n{logs(pf, dev)}"
    assert len(files_with(dev, small_id, "quota")) == 1

    big_id, big = message("quota-big", extra_body=(b"z" * 99 + b"\n") * 300)
    q_big = pf.smtp([rcpt], big)
    entry = status_of(pf, rcpt, q_big, seconds=30, pop3d=dev)
    assert entry[4] == "bounced" and entry[3] == "5.2.2" and "552 5.2.2" in entry[5], (
        f"over quota without quota_full_tempfail: {entry}\n{logs(pf, dev)}")
    assert not files_with(dev, big_id, "quota"), "the over-quota message was stored"

    with open(dev.config) as f:
        text = f.read()
    assert "  quota_full_tempfail: false\n" in text
    with open(dev.config, "w") as f:
        f.write(text.replace("  quota_full_tempfail: false\n", "  quota_full_tempfail: true\n"))
    dev.restart()
    big2_id, big2 = message("quota-big-tempfail", extra_body=(b"z" * 99 + b"\n") * 300)
    q_big2 = pf.smtp([rcpt], big2)
    entry = status_of(pf, rcpt, q_big2, seconds=30, pop3d=dev)
    assert entry[4] == "deferred" and entry[3] == "4.2.2" and "452 4.2.2" in entry[5], (
        f"over quota with quota_full_tempfail: {entry}\n{logs(pf, dev)}")
    queued = [e for e in pf.queue_entries() if e.get("queue_id") == q_big2]
    assert queued, f"{q_big2} is not in the queue after a 4xx: {pf.queue_entries()}"
    assert not files_with(dev, big2_id, "quota"), "the over-quota message was stored"
    assert dev.log_lines("quota exceeded"), f"pop3d log: {dev.log_tail()}"


# ---------------------------------------------------------------- 4. pop3d down, then back

@pytest.mark.root
@pytest.mark.parametrize("transport", ["unix", "inet"])
def test_postfix_defers_while_pop3d_is_down_and_delivers_once_after_restart(lmtp_pop3d, postfix_instance,
                                                                             transport):
    """pop3d stopped: Postfix defers (4.4.x, status=deferred) and keeps the message; pop3d started again on the
    same socket/port and `postqueue -f`: delivered, exactly once."""
    dev = lmtp_pop3d(unix=(transport == "unix"))
    pf = postfix_instance(f"lmtp:unix:{dev.socket}" if transport == "unix"
                          else f"lmtp:inet:127.0.0.1:{dev.lmtp_port}")
    # The path works first (and Postfix may keep that connection cached).
    first_id, first = message("before-outage")
    q_first = pf.smtp(["demo@example.test"], first)
    entry = status_of(pf, "demo@example.test", q_first, seconds=30, pop3d=dev)
    assert entry[4] == "sent", f"{entry}\n{logs(pf, dev)}"

    status = dev.stop()
    assert status == 0, f"pop3d stop: {status}; {dev.log_tail()}"
    msgid, data = message("during-outage")
    q = pf.smtp(["demo@example.test"], data)
    entry = status_of(pf, "demo@example.test", q, seconds=30, pop3d=dev)
    assert entry[4] == "deferred" and entry[3].startswith("4."), f"pop3d down: {entry}\n{logs(pf, dev)}"
    assert any(e.get("queue_id") == q for e in pf.queue_entries()), "the deferred message is not queued"
    assert not files_with(dev, msgid)

    dev.start()
    if dev.socket:
        assert stat.S_ISSOCK(os.stat(dev.socket).st_mode), f"no socket after the restart: {dev.log_tail()}"
    pf.flush()
    entry = status_of(pf, "demo@example.test", q, wanted="sent", seconds=30, pop3d=dev)
    assert entry[3] == "2.0.0", entry
    wait_for("the queue to empty", lambda: not pf.queue_entries(), 15, pf, dev)
    time.sleep(2.5)  # past queue_run_delay and maximal_backoff_time: a second attempt would have happened
    copies = files_with(dev, msgid)
    assert len(copies) == 1, f"{len(copies)} copies after the restart\n{logs(pf, dev)}"
    check_copy(next(iter(copies.values())), data, "demo@example.test", what="after restart")
    sent = [e for e in pf.statuses("demo@example.test", q) if e[4] == "sent"]
    assert len(sent) == 1, sent
    assert len(files_with(dev, first_id)) == 1


# ---------------------------------------------------------------- 5. smtp-source -L

def test_smtp_source_lmtp_load_200_messages(pop3d_bin):
    """Postfix's smtp-source speaking LMTP (-L) straight at pop3d's port: 200 messages of 5,000 octets over 4
    parallel sessions all arrive in demo's Maildir, and POP3 STAT counts them with their served sizes."""
    needs(SMTP_SOURCE)
    dev = Pop3dDev(pop3d_bin, shared_tmpdir("pop3d-smtp-source-"), run_as="nobody")
    try:
        dev.start()
        before = dev.maildir_files()
        t0 = time.monotonic()
        r = subprocess.run([SMTP_SOURCE, "-L", "-s", "4", "-m", "200", "-l", "5000", "-M", "client.example.test",
                            "-f", SENDER, "-t", "demo@example.test", "-S", "load", f"127.0.0.1:{dev.lmtp_port}"],
                           capture_output=True, timeout=120)
        elapsed = time.monotonic() - t0
        assert r.returncode == 0, (f"smtp-source exited {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}; "
                                   f"pop3d log: {dev.log_tail()}")
        files = dev.maildir_files()
        new = {k: v for k, v in files.items() if k not in before}
        assert len(new) == 200, f"{len(new)} new Maildir files, not 200 ({elapsed:.1f} s); pop3d: {dev.log_tail()}"
        ids, bodies = set(), set()
        for name, data in new.items():
            assert data.startswith(f"Return-Path: <{SENDER}>\nDelivered-To: <demo@example.test>\n".encode()), name
            head, sep, body = data.partition(b"\n\n")
            assert sep and b"\nSubject: load\n" in head + b"\n", (name, head)
            assert b"\r" not in data, f"{name}: CR stored"
            # -l 5000: 5,000 octets of CRLF lines (a digit and Xs) on the wire, plus the CRLF that ends the last
            # line (measured against a stub server: 5,002 octets before the final dot); stored with LF.
            assert pop3_size(body) == 5002 and re.fullmatch(rb"(\d?X+\n)+", body), (name, len(body), body[-100:])
            bodies.add(body)
            ids.update(re.findall(rb"^Message-Id: (\S+)$", head, re.M | re.I))
        assert len(ids) == 200, f"{len(ids)} distinct Message-Ids in 200 new files"
        assert len(bodies) == 1, f"smtp-source sends one payload; {len(bodies)} different bodies were stored"
        count, octets = dev.stat("demo")
        assert count == len(files), (count, len(files))
        assert octets == sum(pop3_size(v) for v in files.values()), (octets, sum(pop3_size(v) for v in files.values()))
        print(f"smtp-source: 200 x 5000 octets over 4 LMTP sessions in {elapsed:.1f} s")
    finally:
        dev.stop()
        shutil.rmtree(dev.root, ignore_errors=True)


# ---------------------------------------------------------------- 6. disk full

@pytest.mark.root
def test_postfix_defers_on_a_full_disk_and_delivers_once_there_is_room(lmtp_pop3d, postfix_instance):
    """The recipient's Maildir on a 1 MiB tmpfs: a 2 MB message gets 451 4.3.0 (Postfix defers, nothing partial
    is stored); once the file system is gone (room again), the queued message is delivered exactly once."""
    dev = lmtp_pop3d()
    dev.add_user("full", "full-pw")
    maildir = dev.maildir("full")
    os.makedirs(maildir, exist_ok=True)
    uid, gid = dev.ids.get("user", os.getuid()), dev.ids.get("group", os.getgid())
    os.chown(maildir, uid, gid)  # what is left when the tmpfs goes
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0700,uid={uid},gid={gid}", "tmpfs", maildir],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr.strip()} — the check did not run"
    mounted = True
    try:
        pf = postfix_instance(f"lmtp:inet:127.0.0.1:{dev.lmtp_port}")
        rcpt = "full@example.test"
        big_id, big = message("disk-full", extra_body=(b"f" * 99 + b"\n") * 20_000)
        queue_id = pf.smtp([rcpt], big)
        entry = status_of(pf, rcpt, queue_id, seconds=30, pop3d=dev)
        assert entry[4] == "deferred" and entry[3] == "4.3.0" and "451 4.3.0" in entry[5], (
            f"a full disk must be a temporary failure: {entry}\n{logs(pf, dev)}")
        for sub in ("new", "tmp"):
            folder = os.path.join(maildir, sub)
            assert not os.path.isdir(folder) or os.listdir(folder) == [], f"{sub}/ holds {os.listdir(folder)}"
        subprocess.run(["umount", maildir], capture_output=True, timeout=30, check=True)
        mounted = False
        pf.flush()
        entry = status_of(pf, rcpt, queue_id, seconds=60, pop3d=dev, wanted="sent")
        assert entry[4] == "sent", f"after room returned: {entry}\n{logs(pf, dev)}"
        assert len(files_with(dev, big_id, "full")) == 1
    finally:
        if mounted:
            subprocess.run(["umount", "-l", maildir], capture_output=True, timeout=30)
