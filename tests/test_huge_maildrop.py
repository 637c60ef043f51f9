"""docs/security-cases.md case 69: one maildrop with a million messages, served by pop3d (formerly
scripts/huge_maildrop.py). Long (filling a million files takes minutes): marked `slow`, not in scripts/test; the
last result is in the README's security section. Run it with -s to see the numbers:

    POP3_BIN_DIR=/path/to/release/bin .venv/bin/python -m pytest tests/test_huge_maildrop.py -m slow -s

Environment: POP3_HUGE_MESSAGES (default 1,000,000), POP3_HUGE_DIR (default: a new folder under $TMPDIR; a folder
given here is emptied first), POP3_HUGE_KEEP=1 keeps the folder afterwards.

Fills the demo Maildir with N small messages (sizes in the names, as Dovecot and `pop3d deliver` write them),
starts `pop3d dev` on it, and measures over POP3S with poplib:
  - the first (cold) login + STAT, then a full UIDL and a full LIST (each must list N lines, unique UIDLs),
  - a second login (dovecot-uidlist now written),
  - pop3d's RSS before and its peak (VmHWM) after,
  - logins of a second, small account while the huge one is being indexed: "other users are unaffected" (< 2 s),
  - with limits.maildrop_messages set below N: STAT shows the limit, UIDL lists the oldest messages.
"""
import os
import shutil
import tempfile
import threading
import time

import pytest

from pop3support import Pop3dDev, stop_process, vm_kib

pytestmark = pytest.mark.slow

MESSAGES = int(os.environ.get("POP3_HUGE_MESSAGES") or 1_000_000)


def fill(maildir, count):
    new = os.path.join(maildir, "new")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), 0o700, exist_ok=True)
    pid = os.getpid()
    for index in range(count):
        body = f"Subject: message {index}\nFrom: filler@example.org\n\nbody of message {index}\n".encode()
        vsize = len(body) + body.count(b"\n")
        name = f"{1700000000 + index // 1000}.M{index % 1000000:06d}P{pid}Q{index}.huge,S={len(body)},W={vsize}"
        fd = os.open(os.path.join(new, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, body)
        os.close(fd)


@pytest.fixture(scope="module")
def huge(pop3d_bin):
    """A `pop3d dev` folder (not started) whose demo maildrop holds MESSAGES messages, with a small PLAIN account."""
    folder = os.environ.get("POP3_HUGE_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
    else:
        folder = tempfile.mkdtemp(prefix="pop3-huge-")
    # First start creates the dev environment (config, certificate, the demo account with 3 samples).
    server = Pop3dDev(pop3d_bin, folder)
    try:
        server.start()
        server.stop()
        r = server.pop3d("user", "add", "small", "--config", server.config, "--scheme", "PLAIN", stdin="small-pw\n")
        assert r.returncode == 0, r.stderr
        server.passwords["small"] = "small-pw"
        maildir = server.maildir("demo")
        shutil.rmtree(maildir)
        started = time.time()
        fill(maildir, MESSAGES)
        print(f"\nfilled {MESSAGES:,} messages in {time.time() - started:.1f} s (in {folder})", flush=True)
        yield server
    finally:
        stop_process(server.proc, grace=60)
        if os.environ.get("POP3_HUGE_KEEP") not in (None, "", "0"):
            print(f"huge maildrop kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def test_huge_maildrop_listed_whole_and_other_accounts_unaffected(huge):
    server, count = huge, MESSAGES
    server.start()
    try:
        rss_before = vm_kib(server.pid, "VmRSS")
        small_logins = []
        stop = threading.Event()
        side_errors = []

        def small_account():
            try:
                while not stop.is_set():
                    t = time.time()
                    c = server.poplib_pop3s("small", timeout=30)
                    c.stat()
                    c.quit()
                    small_logins.append(time.time() - t)
                    time.sleep(0.2)
            except Exception as e:  # noqa: BLE001 - reported below, as the script's thread would have crashed
                side_errors.append(f"{type(e).__name__}: {e}")

        side = threading.Thread(target=small_account, daemon=True)
        side.start()
        try:
            t = time.time()
            c = server.poplib_pop3s("demo", timeout=600)
            n, size = c.stat()
            cold = time.time() - t
        finally:
            stop.set()
            side.join(60)
        assert n == count, (n, count)
        t = time.time()
        uidls = c.uidl()[1]
        uidl_time = time.time() - t
        assert len(uidls) == count and len({line.split()[1] for line in uidls}) == count, "UIDLs missing or repeated"
        t = time.time()
        listing = c.list()[1]
        list_time = time.time() - t
        assert len(listing) == count
        c.quit()
        t = time.time()
        c = server.poplib_pop3s("demo", timeout=600)
        assert c.stat()[0] == count
        warm = time.time() - t
        c.quit()
        peak = vm_kib(server.pid, "VmHWM")
        print(f"\nmessages {count:,}, {size:,} octets")
        print(f"cold login + STAT {cold:.2f} s; UIDL {uidl_time:.2f} s; LIST {list_time:.2f} s; "
              f"second login + STAT {warm:.2f} s")
        print(f"pop3d RSS before {rss_before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
        print(f"small account during the cold login: {len(small_logins)} logins, max {max(small_logins) * 1000:.0f} ms"
              if small_logins else "small account: no login completed during the cold login")
        assert not side_errors, f"the small account's logins failed during the cold login: {side_errors}"
        assert small_logins and max(small_logins) < 2.0, "another account waited on the huge maildrop"
    finally:
        server.stop()


def test_maildrop_messages_limit_lists_the_oldest(huge):
    """limits.maildrop_messages below N: STAT shows the limit, UIDL 1 is the oldest message."""
    server, count = huge, MESSAGES
    server.stop()
    limit = max(1, count // 10)
    server.configure(f"limits:\n  maildrop_messages: {limit}\n")
    server.start()
    try:
        c = server.poplib_pop3s("demo", timeout=600)
        n, _ = c.stat()
        first = c.uidl(1).split()[2]
        c.quit()
        assert n == limit, (n, limit)
        print(f"\nlimits.maildrop_messages {limit:,}: STAT {n:,}, UIDL 1 {first.decode()}")
    finally:
        server.stop()
