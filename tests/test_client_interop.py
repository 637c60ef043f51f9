"""The retriever (`pop3 fetch`) against real servers on loopback: Dovecot 2.3 and `pop3d dev`.

1. Functional (the same nine checks against `pop3d dev` on Maildir, `pop3d dev` on PostgreSQL, and Dovecot, which
   needs root and Debian's dovecot-pop3d): 20 messages of assorted shapes (LF, CRLF, dot lines, `From ` lines,
   8-bit, a 300 KB one) fetched into a Maildir (pop3s://), an mbox (--starttls pop3://) and an MDA command; --keep
   and re-runs, delete-after-download, --keep-days with a moved clock (POP3_NOW), --max-size, --json. Every message
   must arrive exactly once with bytes identical to the source (after LF normalisation; mboxrd quoting undone for
   mbox). The checks of one chain (keep, mda, size) build on each other and run in file order; one run alone skips,
   saying which check must run before it.
2. kill -9 crash safety against `pop3d dev` on each storage backend (docs/security-cases.md cases 98, 101): a
   ~300-message mailbox fetched (delete mode) by runs that are killed with SIGKILL after a random delay and re-run
   until one exits 0 with the server empty; then every message is in the Maildir exactly once. The same with an
   mbox destination.
3. A 1 GiB message through pop3d (Maildir) into a Maildir with the client's peak RSS (VmHWM, polled) under 64 MiB
   (docs/security-cases.md case 108).

As root, pop3d and its admin commands run as `nobody` (neither `dev` nor `deliver` has privileges to drop), the way
a user would run a development server. Needs ~2.5 GB free in $TMPDIR. Only loopback; only processes these tests
started are signalled, by PID. The random seed is printed (captured output); CLIENT_INTEROP_SEED=N repeats a run,
CLIENT_INTEROP_DEBUG=1 prints every run of the kill loops.
"""
import base64
import concurrent.futures
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time

import pytest

from pop3support import Dovecot, Pop3dDev, normalize, shared_tmpdir, start_backend_dev, tail, vm_kib

FUNCTIONAL_USERS = ("keeper", "stls", "mda", "sizer")
N = 20  # messages in one corpus


@pytest.fixture(scope="module")
def rng():
    seed = int(os.environ.get("CLIENT_INTEROP_SEED") or random.randrange(1 << 30))
    print(f"client-interop: random seed {seed} (CLIENT_INTEROP_SEED={seed} repeats it)")
    return random.Random(seed)


# ---------------------------------------------------------------- messages

MID_RE = re.compile(rb"^message-id:[ \t]*(<[^>\n]+>)", re.I | re.M)


def message_id(data):
    head = normalize(data).split(b"\n\n", 1)[0]
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
    m.append(header(tag, 6, "=?UTF-8?Q?8-bit_UTF-8?=",
                    extra="MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
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
    b64 = base64.encodebytes(rng.randbytes(15000))
    m.append(header(tag, 16, "multipart", extra="MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n")
             + b"\nPreamble\n--b1\nContent-Type: text/plain\n\nText part\n.\n--b1\nContent-Type: "
               b"application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + b64 + b"--b1--\n")
    m.append(header(tag, 17, "lone dot last line CRLF", "\r\n") + b"\r\nabove\r\n.\r\n")
    m.append(header(tag, 18, "control characters") + b"\nform\x0cfeed\x0b vtab \x1b[0m escape \x7f del\n")
    m.append(header(tag, 19, "60 KB") + b"\n" + big_body(60_000, rng))
    out = {}
    for data in m:
        out[message_id(data)] = data
    assert len(out) == N
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
        data = (header(tag, i, f"crash test {i}", eol) + eol.encode()
                + (body.replace(b"\n", b"\r\n") if eol == "\r\n" else body))
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


TRACE_RE = re.compile(rb"\A(?:(?:Received:|X-[\w-]+:|Return-Path:|Delivered-To:)[^\n]*\n(?:[ \t][^\n]*\n)*)+\Z",
                      re.I)


def compare(fetched, expected):
    """Every expected message exactly once, stored with LF line ends, identical to its source after LF
    normalisation (a prefix of trace header lines such as Received: is allowed). Returns a list of problems (empty
    when all is well)."""
    problems = []
    seen = {}
    crlf = sum(1 for data in fetched if b"\r\n" in data)
    if crlf:
        problems.append(f"{crlf} stored with CRLF line ends (want LF)")
    for data in fetched:
        mid = message_id(data)
        if mid is None or mid not in expected:
            problems.append(f"unexpected message {mid or normalize(data)[:60]!r}")
            continue
        seen[mid] = seen.get(mid, 0) + 1
        got, want = normalize(data), normalize(expected[mid])
        if got != want:
            if not (got.endswith(want) and TRACE_RE.match(got[:len(got) - len(want)])):
                at = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                          min(len(got), len(want)))
                problems.append(f"{mid} differs at byte {at} (got {len(got)} bytes, want {len(want)}; "
                                f"got {got[max(0, at - 10):at + 20]!r} want {want[max(0, at - 10):at + 20]!r})")
    for mid, n in seen.items():
        if n > 1:
            problems.append(f"{mid} stored {n} times")
    missing = [mid for mid in expected if mid not in seen]
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    return problems


def summary(problems, limit=5):
    return "; ".join(problems[:limit]) + (f"; … {len(problems) - limit} more" if len(problems) > limit else "")


def parse_json(r):
    try:
        doc = json.loads(r.stdout.decode())
        return doc["accounts"][0], None
    except Exception as e:  # noqa: BLE001 - any malformed document is the finding
        return None, f"--json output does not parse ({e}): {r.stdout[:200]!r}"


def rc_problem(r, want=0):
    if r.returncode != want:
        return f"exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[:300]}"
    return None


def run_problems(r, **want):
    """The problems of one `pop3 fetch --json` run: its exit status, its JSON, and each count in `want` (fetched=,
    deleted=) that the JSON reports otherwise. Returns (account summary or None, problems)."""
    acc, jp = parse_json(r)
    p = [x for x in (rc_problem(r), jp) if x]
    if acc is not None and any(acc.get(key) != value for key, value in want.items()):
        got = " ".join(f"{key}={acc.get(key)}" for key in want)
        p.append(f"json says {got}, want " + " ".join(f"{key}={value}" for key, value in want.items()))
    return acc, p


# ---------------------------------------------------------------- servers and the client

class Target:
    """`pop3 fetch` pointed at one server (a started pop3support.Pop3dDev or Dovecot), with its own client state
    folder (XDG_STATE_HOME) and password files. `chain` holds what a check leaves for the next one of its chain."""

    def __init__(self, pop3, server):
        self.pop3, self.server, self.name, self.root = pop3, server, server.name, server.root
        self.state = os.path.join(self.root, "client-state")
        self.pwfiles = {}
        self.chain = {}

    def pwfile(self, user):
        if user not in self.pwfiles:
            self.pwfiles[user] = self.server.password_file(user)
        return self.pwfiles[user]

    def env(self, extra=None):
        e = dict(os.environ, XDG_STATE_HOME=self.state)
        e.pop("POP3_NOW", None)
        e.update(extra or {})
        return e

    def fetch_cmd(self, user, dest, *extra, starttls=False):
        cmd = [self.pop3, "fetch", "--ca-file", self.server.ca, "--password-file", self.pwfile(user), *extra, *dest]
        if starttls:
            cmd.append("--starttls")
        return cmd + [self.server.url(user, starttls)]

    def fetch(self, user, dest, *extra, starttls=False, env=None, timeout=300):
        return subprocess.run(self.fetch_cmd(user, dest, *extra, starttls=starttls), capture_output=True,
                              timeout=timeout, env=self.env(env))

    def stat(self, user):
        return self.server.stat(user)

    def seed(self, user, messages):
        """Into the server's maildrop: `pop3d deliver` (three at a time for more than ten messages) or straight
        into Dovecot's Maildir."""
        if not isinstance(self.server, Pop3dDev):
            self.server.seed(user, messages)
            return

        def deliver(data):
            rc, err = self.server.deliver(user, data)
            if rc != 0:
                raise RuntimeError(f"pop3d deliver {user}: exit {rc}: {err}")
        with concurrent.futures.ThreadPoolExecutor(3 if len(messages) > 10 else 1) as pool:
            list(pool.map(deliver, messages.values()))


def start_pop3d(pop3d_bin, prefix, users, backend="maildir", postgres=None):
    """`pop3d dev` as nobody (when root) in a fresh 0755 folder, with `users` (random passwords), its mail on
    `backend` (pop3support.start_backend_dev)."""
    root = shared_tmpdir(prefix)
    server = None
    try:
        server = start_backend_dev(pop3d_bin, root, backend, postgres, run_as="nobody")
        if backend != "maildir":
            server.name = f"pop3d-{backend}"
        for user in users:
            server.add_user(user, secrets.token_urlsafe(12))
    except BaseException:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def finish(server):
    status = server.stop()
    print(f"{server.name} stopped: {status}; log: {server.log_tail()}")
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="module", params=[
    pytest.param("pop3d", id="pop3d"),
    pytest.param("pop3d-postgres", id="pop3d-postgres", marks=pytest.mark.postgres),
    pytest.param("dovecot", id="dovecot", marks=[pytest.mark.dovecot, pytest.mark.root]),
])
def target(request, pop3d_bin, pop3_bin):
    """One server for the nine functional checks, with the users keeper, stls, mda and sizer."""
    if request.param == "pop3d":
        server = start_pop3d(pop3d_bin, "client-interop-pop3d-", FUNCTIONAL_USERS)
    elif request.param == "pop3d-postgres":
        server = start_pop3d(pop3d_bin, "client-interop-pg-", FUNCTIONAL_USERS, "postgres",
                             request.getfixturevalue("postgres"))
    else:
        server = Dovecot(shared_tmpdir("client-interop-dovecot-"))
        try:
            server.start(FUNCTIONAL_USERS)
        except BaseException:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
            raise
    yield Target(pop3_bin, server)
    finish(server)


def after(target, step, test):
    """What check `step` left for this one; skips (naming `test`) if it has not run in this session."""
    if step not in target.chain:
        pytest.skip(f"builds on {test} for {target.name}, which has not run before it in this session")
    return target.chain[step]


# ---------------------------------------------------------------- 1. functional: A. Maildir, --keep, --json

def test_maildir_keep_json(target, rng):
    """pop3s --maildir --keep --json: 20 messages, each once, bytes identical, left on the server."""
    msgs = corpus(f"{target.name}-keep", rng)
    target.seed("keeper", msgs)
    maildir = os.path.join(target.root, "maildir-keep")
    target.chain["keep"] = (msgs, maildir)
    r = target.fetch("keeper", ["--maildir", maildir], "--keep", "--json")
    acc, p = run_problems(r, fetched=N)
    # --json also says how: TLS version and cipher, the login mechanism, the account's wall time.
    if acc is not None:
        if not str(acc.get("tls", "")).lower().startswith("tlsv1") or not acc.get("cipher"):
            p.append(f"json lacks tls/cipher: {acc}")
        if acc.get("mechanism") not in ("scram-sha-256-plus", "scram-sha-256", "plain", "user"):
            p.append(f"json mechanism {acc.get('mechanism')!r}")
        if not isinstance(acc.get("seconds"), (int, float)) or not 0 <= acc["seconds"] < 300:
            p.append(f"json seconds {acc.get('seconds')!r}")
    p += compare(maildir_messages(maildir), msgs)
    if tmp_files(maildir):
        p.append(f"tmp/ not empty: {tmp_files(maildir)[:3]}")
    count = target.stat("keeper")[0]
    if count != N:
        p.append(f"server holds {count} messages, want {N} (--keep)")
    assert not p, summary(p)


def test_keep_rerun_fetches_nothing_new(target):
    """--keep re-run fetches nothing new."""
    msgs, maildir = after(target, "keep", "test_maildir_keep_json")
    r = target.fetch("keeper", ["--maildir", maildir], "--keep", "--json")
    _, p = run_problems(r, fetched=0)
    p += compare(maildir_messages(maildir), msgs)
    count = target.stat("keeper")[0]
    if count != N:
        p.append(f"server holds {count}, want {N}")
    assert not p, summary(p)


def test_default_mode_deletes_fetched(target):
    """Default mode deletes the already-fetched messages and downloads none again."""
    msgs, maildir = after(target, "keep", "test_maildir_keep_json")
    r = target.fetch("keeper", ["--maildir", maildir], "--json")
    _, p = run_problems(r, fetched=0, deleted=N)
    p += compare(maildir_messages(maildir), msgs)
    count = target.stat("keeper")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    assert not p, summary(p)


# ---------------------------------------------------------------- B. STLS into an mbox

def test_starttls_mbox(target, rng):
    """--starttls pop3:// --mbox: 20 messages, each once, identical after un-quoting, deleted on the server."""
    msgs = corpus(f"{target.name}-mbox", rng)
    target.seed("stls", msgs)
    mbox = os.path.join(target.root, "mbox-stls")
    r = target.fetch("stls", ["--mbox", mbox], starttls=True)
    got, p = mbox_messages(mbox)
    p = [x for x in [rc_problem(r)] if x] + p + compare(got, msgs)
    count = target.stat("stls")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    if os.path.exists(mbox + ".lock"):
        p.append("dotlock left behind")
    assert not p, summary(p)


# ---------------------------------------------------------------- C. MDA, --keep-days, POP3_NOW

def test_mda_keep_days(target, rng):
    """--mda --keep-days 3: 20 messages, each once, identical, kept on the server."""
    msgs = corpus(f"{target.name}-mda", rng)
    target.seed("mda", msgs)
    out = os.path.join(target.root, "mda-out")
    os.makedirs(out)
    mda = f"cat > {out}/$(date +%s%N).eml"
    target.chain["mda"] = (msgs, out, mda, int(time.time()))
    r = target.fetch("mda", ["--mda", mda], "--keep-days", "3")
    p = [x for x in [rc_problem(r)] if x] + compare(directory_messages(out), msgs)
    count = target.stat("mda")[0]
    if count != N:
        p.append(f"server holds {count}, want {N} (--keep-days 3)")
    assert not p, summary(p)


def test_keep_days_at_plus_2_days(target):
    """--keep-days 3 at +2 days (POP3_NOW): nothing deleted, nothing fetched again."""
    msgs, out, mda, now = after(target, "mda", "test_mda_keep_days")
    r = target.fetch("mda", ["--mda", mda], "--keep-days", "3", "--json", env={"POP3_NOW": str(now + 2 * 86400)})
    _, p = run_problems(r, fetched=0, deleted=0)
    count = target.stat("mda")[0]
    if count != N:
        p.append(f"server holds {count}, want {N}")
    p += compare(directory_messages(out), msgs)
    assert not p, summary(p)


def test_keep_days_at_plus_4_days(target):
    """--keep-days 3 at +4 days (POP3_NOW): all 20 deleted, none delivered again."""
    msgs, out, mda, now = after(target, "mda", "test_mda_keep_days")
    r = target.fetch("mda", ["--mda", mda], "--keep-days", "3", "--json", env={"POP3_NOW": str(now + 4 * 86400)})
    _, p = run_problems(r, fetched=0, deleted=N)
    count = target.stat("mda")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    p += compare(directory_messages(out), msgs)
    assert not p, summary(p)


# ---------------------------------------------------------------- D. --max-size

def test_max_size_skips_big_message(target, rng):
    """--max-size 100000 skips the 300 KB message: exit 0, a warning, left on the server."""
    msgs = corpus(f"{target.name}-size", rng)
    big_id = f"<{target.name}-size.8@interop.test>"
    small = {k: v for k, v in msgs.items() if k != big_id}
    target.seed("sizer", msgs)
    maildir = os.path.join(target.root, "maildir-size")
    target.chain["size"] = (msgs, maildir)
    r = target.fetch("sizer", ["--maildir", maildir], "--max-size", "100000", "--json")
    _, p = run_problems(r, fetched=N - 1, skipped=1)
    err = r.stderr.decode(errors="replace").strip()
    if not re.search(r"skip|max-size", err, re.I):
        p.append(f"no warning about the skipped message on stderr ({err[:100]!r})")
    p += compare(maildir_messages(maildir), small)
    stat = target.stat("sizer")
    if stat[0] != 1 or stat[1] < 300_000:
        p.append(f"server holds {stat}, want the big message alone")
    assert not p, summary(p)


def test_without_max_size_big_message_follows(target):
    """Without --max-size the big message follows; all 20 once, the server empty."""
    msgs, maildir = after(target, "size", "test_max_size_skips_big_message")
    r = target.fetch("sizer", ["--maildir", maildir])
    p = [x for x in [rc_problem(r)] if x] + compare(maildir_messages(maildir), msgs)
    count = target.stat("sizer")[0]
    if count != 0:
        p.append(f"server still holds {count}")
    assert not p, summary(p)


# ---------------------------------------------------------------- 2. kill -9

@pytest.fixture(scope="module", params=["maildir", pytest.param("postgres", marks=pytest.mark.postgres)])
def crash_target(request, pop3d_bin, pop3_bin):
    """pop3d on each storage backend: a killed client's session must end without applying its DELEs, and free the
    maildrop for the next run at once."""
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    server = start_pop3d(pop3d_bin, "client-interop-crash-", ("crash", "crashmbox"), request.param, postgres)
    yield Target(pop3_bin, server)
    finish(server)


def kill_loop(target, user, dest, min_kills, rng, max_runs, budget, expected, label, reseed):
    """Runs `pop3 fetch DEST` (delete mode) and SIGKILLs it after a random delay until at least min_kills kills
    happened and then a run exits 0 with the server empty. Bounded by max_runs runs and `budget` seconds.
    Returns (kills, runs, failed_runs, seconds, done, last_error, {error: count})."""
    kills = runs = failed = attempts = 0
    waves = 0
    start = time.time()
    err_path = os.path.join(target.root, f"{label}.stderr")
    last_err = ""
    errors = {}
    while runs < max_runs and time.time() - start < budget:
        runs += 1
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(target.fetch_cmd(user, dest), stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, env=target.env())
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
        if target.stat(user)[0] == 0:
            if kills >= min_kills:
                return kills, runs, failed, time.time() - start, True, last_err, errors
            # Everything was fetched before enough kills: another wave of messages (bounded by max_runs and budget).
            waves += 1
            more = reseed(waves)
            expected.update(more)
            target.seed(user, more)
    return kills, runs, failed, time.time() - start, False, last_err, errors


def test_kill9_maildir_each_message_once(crash_target, rng):
    """kill -9 (Maildir): ~300 messages each exactly once and identical after at least 25 SIGKILLs."""
    t = time.time()
    msgs = crash_corpus("crash", 300, rng)
    crash_target.seed("crash", msgs)
    seed_s = time.time() - t
    maildir = os.path.join(crash_target.root, "maildir-crash")
    kills, runs, failed, secs, done, last_err, errors = kill_loop(
        crash_target, "crash", ["--maildir", maildir], 25, rng, 400, 150, msgs, "crash-maildir",
        lambda wave: crash_corpus(f"crash-w{wave}", 100, rng))
    print(f"kill -9 (Maildir): {len(msgs)} messages, {kills} SIGKILLs, {runs} runs, {failed} failed runs"
          f"{' ' + str(errors) if errors else ''}, {secs:.1f} s (+{seed_s:.1f} s seeding)")
    p = []
    if not done:
        p.append(f"no clean run with an empty server after {runs} runs / {secs:.0f} s (last error: {last_err})")
    if kills < 25:
        p.append(f"only {kills} kills")
    p += compare(maildir_messages(maildir), msgs)
    if tmp_files(maildir):
        p.append(f"{len(tmp_files(maildir))} files left in tmp/")
    if crash_target.stat("crash")[0] != 0:
        p.append("server not empty")
    assert not p, summary(p)


def test_kill9_mbox_each_message_once(crash_target, rng):
    """kill -9 (mbox): ~150 messages each exactly once and identical after at least 10 SIGKILLs."""
    msgs = crash_corpus("crashmbox", 150, rng)
    crash_target.seed("crashmbox", msgs)
    mbox = os.path.join(crash_target.root, "mbox-crash")
    kills, runs, failed, secs, done, last_err, errors = kill_loop(
        crash_target, "crashmbox", ["--mbox", mbox], 10, rng, 200, 90, msgs, "crash-mbox",
        lambda wave: crash_corpus(f"crashmbox-w{wave}", 40, rng))
    print(f"kill -9 (mbox): {len(msgs)} messages, {kills} SIGKILLs, {runs} runs, {failed} failed runs"
          f"{' ' + str(errors) if errors else ''}, {secs:.1f} s")
    got, p = mbox_messages(mbox)
    if not done:
        p.insert(0, f"no clean run with an empty server after {runs} runs / {secs:.0f} s (last error: {last_err})")
    if kills < 10:
        p.append(f"only {kills} kills")
    p += compare(got, msgs)
    if os.path.exists(mbox + ".lock"):
        p.append("dotlock left behind")
    assert not p, summary(p)


# ---------------------------------------------------------------- 3. 1 GiB

RSS_LIMIT_KIB = 64 * 1024


# Maildir only: it checks the client's memory, which the server's backend does not change, and runs ~3 min.
def test_one_gib_message_bounded_memory(pop3d_bin, pop3_bin):
    """A 1 GiB message fetched into a Maildir: identical (SHA-256), deleted on the server, the client's peak RSS
    (VmHWM, polled every 20 ms) under 64 MiB."""
    size = 1 << 30
    server = start_pop3d(pop3d_bin, "client-interop-big-", ("big",))
    started = []  # the deliver and fetch processes, killed (by PID) if still running at the end
    try:
        target = Target(pop3_bin, server)
        t = time.time()
        # Stream 1 GiB (LF, ending in LF) into `pop3d deliver`, hashing as it goes.
        head = header("big", 0, "one gibibyte") + b"\n"
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abc\n"
        block = (line * 1000 + b".a dot line\n" + b"From a line\n" + b".\n") * 14
        digest = hashlib.sha256()
        proc = subprocess.Popen([pop3d_bin, "deliver", "big", "--config", server.config], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **server.ids)
        started.append(proc)
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
        assert proc.returncode == 0 and written == size, \
            f"1 GiB: deliver into pop3d: exit {proc.returncode}: {err.decode(errors='replace')[:300]}"
        deliver_s = time.time() - t

        maildir = os.path.join(server.root, "maildir-big")
        t = time.time()
        err_path = os.path.join(server.root, "big.stderr")
        with open(err_path, "wb") as errf:
            proc = subprocess.Popen(target.fetch_cmd("big", ["--maildir", maildir]), stdout=subprocess.DEVNULL,
                                    stderr=errf, stdin=subprocess.DEVNULL, env=target.env())
        started.append(proc)
        peak = 0
        while proc.poll() is None and time.time() - t < 600:
            try:
                peak = max(peak, vm_kib(proc.pid, "VmHWM"))
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # our child, by PID, after 600 s
            proc.wait()
        fetch_s = time.time() - t
        print(f"1 GiB fetch: peak RSS (VmHWM) {peak} KiB ({peak / 1024:.1f} MiB), fetch {fetch_s:.1f} s "
              f"({size / fetch_s / 1e6:.1f} MB/s), deliver {deliver_s:.1f} s")
        p = []
        if proc.returncode != 0:
            p.append(f"exit {proc.returncode}: {tail(err_path, 3)}")
        if peak == 0:
            p.append("could not read VmHWM")
        elif peak >= RSS_LIMIT_KIB:
            p.append(f"peak RSS {peak / 1024:.1f} MiB >= {RSS_LIMIT_KIB / 1024:.0f} MiB")
        new = os.path.join(maildir, "new")
        files = [os.path.join(new, f) for f in os.listdir(new)] if os.path.isdir(new) else []
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
        if target.stat("big")[0] != 0:
            p.append("not deleted on the server")
        assert not p, summary(p)
    finally:
        for child in started:
            if child.poll() is None:
                child.kill()
                child.wait(30)
        finish(server)
