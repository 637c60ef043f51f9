"""Server security cases against the real pop3d, each named after its case in docs/security-cases.md: close_notify
on QUIT (25), SASL limits (32), format-string payloads (33), the bad-command counter (41), a client that never
reads during RETR (52), quota in `pop3d deliver` (62) and a pipelined flood (68).

Logins come from their own loopback source address (127.0.0.N), so the auth penalty of one test (per client
address) never slows another.

The protocol cases run once per storage backend (`backend_pop3d`, `backend_pop3d_each`: Maildir with the
passwd-file, and PostgreSQL with the accounts and the demo maildrop migrated in); the few that stay on Maildir say
why.
"""
import base64
import concurrent.futures
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from pop3support import EX_NOPERM, EX_TEMPFAIL, POP3Session, RSSSampler, fd_count, vm_kib


def released(dev, user, password, source, count, seconds=10):
    """The session of a vanished client is cleaned up: its maildrop lock is released (a new login is not
    [IN-USE]) and nothing was deleted."""
    end = time.monotonic() + seconds
    while True:
        s = POP3Session(dev, source=source)
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


def others_still_served(dev, source):
    """Seconds for a whole demo session (login, STAT, RETR 1, QUIT) from `source`."""
    start = time.monotonic()
    s = POP3Session(dev, source=source).login("demo", dev.password)
    assert s.command(b"STAT").startswith(b"+OK")
    assert s.command(b"RETR 1").startswith(b"+OK") and s.lines()
    assert s.command(b"QUIT").startswith(b"+OK")
    s.close()
    return time.monotonic() - start


def sample_rss(pid, seconds, during):
    """Peak VmRSS (KiB) over `seconds`, sampled every 50 ms; `during()` runs once in the middle. Returns
    (peak, what during() returned)."""
    start = time.monotonic()
    with RSSSampler(pid, interval=0.05) as rss:
        time.sleep(seconds / 2)
        result = during()
        time.sleep(max(0.0, seconds - (time.monotonic() - start)))
    return rss.peak, result


# ---------------------------------------------------------------- case 25

@pytest.mark.parametrize("mode, logged_in", [("tls", False), ("tls", True), ("stls", False), ("stls", True)],
                         ids=["implicit-tls-anon", "implicit-tls-user", "stls-anon", "stls-user"])
def test_case25_close_notify_before_fin_on_quit(backend_pop3d, mode, logged_in):
    """QUIT's +OK is followed by a TLS close_notify, then the TCP FIN (RFC 8314 §3.4), on both ports, before and
    after login."""
    dev = backend_pop3d
    s = POP3Session(dev, mode, source="127.0.0.25")
    if logged_in:
        s.login("demo", dev.password)
    reply = s.command(b"QUIT")
    assert reply.startswith(b"+OK"), reply
    try:
        tail = s.sock.recv(65536)  # b"" only for a close_notify; a bare FIN raises SSLEOFError here
    except ssl.SSLEOFError as e:
        pytest.fail(f"{mode}, logged in {logged_in}: TCP closed without close_notify ({e})")
    assert tail == b"", f"bytes after QUIT's reply: {tail[:100]!r}"
    raw = s.sock.unwrap()  # our close_notify; the server's has arrived, so this returns at once
    raw.settimeout(5)
    start = time.monotonic()
    assert raw.recv(1) == b"", "data after close_notify"
    print(f"{mode}/{'user' if logged_in else 'anon'} FIN {1000 * (time.monotonic() - start):.0f} ms")
    raw.close()


# Maildir only: no login, so the storage backend is never reached, and the wait for the unanswered close_notify
# takes 5 s.
def test_case25_fin_follows_an_unanswered_close_notify(shared_pop3d):
    """A client that never answers the close_notify still gets the FIN."""
    s = POP3Session(shared_pop3d, "tls", source="127.0.0.25")
    assert s.command(b"QUIT").startswith(b"+OK")
    assert s.sock.recv(65536) == b"", "no close_notify"
    # Do not answer the close_notify: read the TCP stream underneath (a duplicate descriptor) until FIN.
    underneath = socket.socket(fileno=os.dup(s.sock.fileno()))
    underneath.settimeout(15)
    start = time.monotonic()
    try:
        assert underneath.recv(1) == b"", "data after close_notify"
    finally:
        underneath.close()
        s.close()
    print(f"unanswered close_notify: FIN after {time.monotonic() - start:.1f} s")


# ---------------------------------------------------------------- case 32

def test_case32_sasl_limits_unknown_mechanism_auth_after_login(backend_pop3d):
    """AUTH PLAIN continuation over limits.sasl_line_length, an initial response over the command line limit, unknown
    mechanisms and AUTH after login: each a clear -ERR without echo, and the same connection still serves."""
    dev = backend_pop3d
    limit = dev.limits()["sasl_line_length"]
    creds = base64.b64encode(b"\0demo\0" + dev.password.encode())
    s = POP3Session(dev, source="127.0.0.32")
    assert s.command(b"AUTH PLAIN") == b"+ "
    reply = s.command(b"Q" * (limit - 1))  # limit + 1 octets with CRLF
    assert reply == b"-ERR [AUTH] Authentication failed: response too long.", reply
    assert s.command(b"CAPA").startswith(b"+OK") and any(l.startswith(b"SASL PLAIN") for l in s.lines())
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

    s = POP3Session(dev, source="127.0.0.32")
    for mechanism in (b"CRAM-MD5", b"XOAUTH2 dXNlcj1hQGIK"):  # a 3rd bad command would close it (case 41)
        reply = s.command(b"AUTH " + mechanism)
        assert reply == b"-ERR Unsupported authentication mechanism.", (mechanism, reply)
    s.login("demo", dev.password)
    assert s.command(b"QUIT").startswith(b"+OK")
    s.close()

    s = POP3Session(dev, source="127.0.0.32")
    assert s.command(b"AUTH PLAIN") == b"+ "
    reply = s.command(b"B" * (100 * 1024))  # 100 KiB continuation
    assert reply == b"-ERR [AUTH] Authentication failed: response too long.", reply
    reply = s.command(b"AUTH PLAIN " + b"C" * (1 << 20))  # 1 MiB initial response: over the command line limit
    assert reply == b"-ERR Line too long.", reply
    s.login("demo", dev.password)
    assert s.command(b"QUIT").startswith(b"+OK")
    s.close()
    print(f"sasl_line_length {limit}: {limit + 1} octets refused, {limit} accepted as a line; 100 KiB and 1 MiB "
          "refused; CRAM-MD5 and XOAUTH2 refused; AUTH after login refused; a login works after each")


# ---------------------------------------------------------------- case 33

PAYLOADS = [
    ("%s%s%s%n%x", "printf-chain"), ("%n", "printf-n"), ("%u", "percent-u"), ("%d%%%n@%s", "printf-mixed"),
    ("%{user}", "template-user"), ("%{password}", "template-password"),
    ("${jndi:ldap://127.0.0.1:1/a}", "jndi"), ("$(id)", "shell-subst"), ("`id`", "backquotes"),
    ("'", "single-quote"), ('"', "double-quote"), ("\\", "backslash"), (";", "semicolon"),
    ("' OR '1'='1", "sql-or"), ('"; DROP TABLE users; --', "sql-drop"), ("%08x." * 12, "printf-stack-walk"),
]


@pytest.fixture(scope="module")
def wrong_login_replies(backend_pop3d):
    """What any wrong login gets: (reply to USER, reply to PASS), from 127.0.0.33."""
    s = POP3Session(backend_pop3d, source="127.0.0.33")
    expected = (s.command(b"USER nobody-at-all"), s.command(b"PASS wrong-password"))
    s.close()
    assert expected[0].startswith(b"+OK") and expected[1].startswith(b"-ERR [AUTH]"), expected
    return expected


@pytest.mark.parametrize("index, payload", [pytest.param(i, p, id=name) for i, (p, name) in enumerate(PAYLOADS)])
def test_case33_format_and_expansion_payload_in_user_and_pass(backend_pop3d, wrong_login_replies, index, payload):
    """printf, shell, template and SQL-quote payloads in USER, PASS and AUTH PLAIN: the same replies as any wrong
    login (nothing of the payload reflected, nothing expanded), and pop3d keeps serving."""
    dev = backend_pop3d
    expected = wrong_login_replies
    p = payload.encode()

    def user_pass():
        s = POP3Session(dev, source=f"127.0.33.{index + 1}")  # one address per attempt: no auth penalty wait
        got = (s.command(b"USER " + p), s.command(b"PASS " + p))
        s.close()
        return got

    def auth_plain():
        s = POP3Session(dev, source=f"127.0.34.{index + 1}")
        reply = s.command(b"AUTH PLAIN " + base64.b64encode(b"\0" + p + b"\0" + p))
        serving = s.command(b"CAPA")
        if serving.startswith(b"+OK"):
            s.lines()
        s.close()
        return reply, serving
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both wait out auth.failure_delay at once
        got, (reply, serving) = [f.result() for f in [pool.submit(user_pass), pool.submit(auth_plain)]]
    assert got == expected, f"USER/PASS {payload!r}: {got} instead of {expected}"
    assert reply == expected[1], f"AUTH PLAIN {payload!r}: {reply}"
    assert serving.startswith(b"+OK"), f"not serving after the failed login: CAPA got {serving}"
    assert dev.alive(), "pop3d died"
    # Still serving a good login (from an address of its own: no penalty from the failures above).
    POP3Session(dev, source=f"127.0.35.{index + 1}").login("demo", dev.password).quit()


# ---------------------------------------------------------------- case 41

@pytest.mark.parametrize("after_login", [False, True], ids=["before-login", "after-login"])
def test_case41_bad_command_counter_never_resets(backend_pop3d, after_login):
    """Valid commands between bad ones do not reset the counter: bad, good, bad, good, bad closes at the limit
    before login (ALPACA), and likewise after login."""
    dev = backend_pop3d
    lim = dev.limits()
    if not after_login:
        before = lim["bad_commands_before_login"]
        s = POP3Session(dev, source="127.0.0.41")
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
    else:
        after = lim["bad_commands_after_login"]
        s = POP3Session(dev, source="127.0.0.41").login("demo", dev.password)
        for i in range(after):
            reply = s.command(b"XYZZY")
            if i < after - 1:
                assert reply == b"-ERR Unknown command.", (i, reply)
                assert s.command(b"NOOP").startswith(b"+OK"), "NOOP refused"
        assert reply == b"-ERR Too many invalid commands.", f"bad command {after} after login got {reply}"
        assert s.closed_within(5), "not closed at the limit after login"
        s.close()
    released(dev, "demo", dev.password, "127.0.0.41", None)  # before the next test logs in as demo


# ---------------------------------------------------------------- case 52

def test_case52_client_never_reads_during_retr(backend_pop3d_each):
    """RETR of a 96 MiB message to a client that never reads (4 KiB receive buffer): pop3d stops reading the file
    (RSS stays bounded), others are served meanwhile; when the client goes away its session is cleaned up."""
    dev = backend_pop3d_each
    dev.add_user("stall", "stall-pw")
    line = b"0123456789" * 7 + b"\n"
    block = line * ((1 << 20) // len(line))
    rc, err = dev.deliver("stall", b"Subject: stall\n\n" + block * 96)
    assert rc == 0, err
    fds = dev.fd_count()  # on PostgreSQL less the connections its pool opens as it needs
    s = POP3Session(dev, source="127.0.0.52", rcvbuf=4096).login("stall", "stall-pw")
    before = vm_kib(dev.pid, "VmRSS")
    s.send(b"RETR 1\r\n")
    peak, other = sample_rss(dev.pid, 3.0, lambda: others_still_served(dev, "127.0.0.53"))
    growth = (peak - before) / 1024
    s.abort()  # the client goes away
    released(dev, "stall", "stall-pw", "127.0.0.52", 1)
    end = time.monotonic() + 10
    while dev.fd_count() > fds and time.monotonic() < end:
        time.sleep(0.1)
    print(f"96 MiB RETR unread for 3 s: pop3d RSS {before // 1024} MiB, peak {peak // 1024} MiB ({growth:+.1f}); "
          f"another session meanwhile {other * 1000:.0f} ms; fds {fds} -> {dev.fd_count()} after the client left")
    assert growth < 24, f"RSS grew {growth:.0f} MiB while the client did not read: RETR does not wait for the client"
    assert other < 2, f"another client took {other:.1f} s"
    assert dev.fd_count() <= fds, f"descriptors {fds} -> {dev.fd_count()}: the session was not closed"


# ---------------------------------------------------------------- case 62

# Maildir only: quota rules in the passwd-file's extra fields, files on disk (quotas in the database:
# test_postgres.py, test_quota_in_the_database_refuses_with_nothing_stored).
def test_case62_deliver_enforces_quota(pop3d):
    """Dovecot-style quota rules in the passwd-file's extra fields: over the message count or the storage left,
    `pop3d deliver` exits 77 (EX_NOPERM, as dovecot-lda -e) and stores nothing; an unreadable rule is exit 75."""
    dev = pop3d
    with open(os.path.join(dev.data, "users"), "a") as f:
        f.write("quota1:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=1K userdb_quota_rule2=*:messages=3\n"
                "quota2:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=1K\n"
                "quota3:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=lots\n")

    def deliver(user, size):
        body = b"Subject: q\n\n" + b"x" * (size - 13) + b"\n"
        assert len(body) == size
        return dev.deliver(user, body)

    def stored(user):
        return len(dev.maildir_files(user))

    for _ in range(3):
        rc, err = deliver("quota1", 200)
        assert rc == 0, err
    rc, err = deliver("quota1", 20)
    assert rc == EX_NOPERM and "quota exceeded" in err and "limit 3" in err, (rc, err)
    assert stored("quota1") == 3
    rc, err = deliver("quota2", 700)
    assert rc == 0, err
    rc, err = deliver("quota2", 500)  # 324 bytes left
    assert rc == EX_NOPERM and "nothing was stored" in err, (rc, err)
    assert stored("quota2") == 1 and not os.listdir(os.path.join(dev.maildir("quota2"), "tmp"))
    rc, err = deliver("quota2", 324)  # exactly the room left
    assert rc == 0, err
    rc, err = deliver("quota2", 30)  # full: refused before reading
    assert rc == EX_NOPERM and "uses 1024 of 1024 bytes" in err, (rc, err)
    rc, err = deliver("quota3", 30)
    assert rc == EX_TEMPFAIL and "quota rule" in err, (rc, err)
    assert not os.path.exists(os.path.join(dev.maildir("quota3"), "new")) or stored("quota3") == 0
    c = dev.poplib_pop3s("quota2", "q-pw")
    assert c.stat() == (2, 1024 + 6), c.stat()  # sizes as sent over POP3: each LF counted as CRLF
    c.quit()


# ---------------------------------------------------------------- case 68

# How long another session may take while the flood starts. pop3d runs one NIO event loop per core; on a 2-core machine
# the probe session can land on the flood's loop and wait out pop3d's first burst of LIST replies (about 3 s of CPU
# measured on a loaded 2-core machine, the session then took 3-7 s; scripts/interop.py failed there the same way).
# Starvation for the whole flood would still fail (and the probe's socket timeout is 15 s).
FLOOD_OTHER_SESSION_LIMIT = 2.0 if (os.cpu_count() or 1) > 2 else 10.0


# Maildir only: 2,000 messages written straight into a Maildir; into PostgreSQL they take ~9 s to migrate, for a
# flood held back in the network layer, the same on both backends (the session cleanup on PostgreSQL: case 52).
def test_case68_pipelined_command_flood_without_reading(pop3d):
    """2,000,000 pipelined LIST of 2,000 messages (40 GB of replies) from a client that never reads: pop3d stops
    reading input while its output is backed up (the client cannot write it all; RSS bounded), serves others, and
    cleans up after the client."""
    dev = pop3d
    dev.add_user("flood", "flood-pw")
    maildir = dev.maildir("flood")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    for i in range(2000):
        with open(os.path.join(maildir, "new", f"1700000000.M{i}P1.flood"), "wb") as f:
            f.write(b"Subject: %d\n\nx\n" % i)
    fds = fd_count(dev.pid)
    s = POP3Session(dev, source="127.0.0.68", rcvbuf=4096).login("flood", "flood-pw")
    assert s.command(b"STAT").startswith(b"+OK 2000 ")
    before = vm_kib(dev.pid, "VmRSS")
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
    peak, other = sample_rss(dev.pid, 3.0, lambda: others_still_served(dev, "127.0.0.69"))
    growth = (peak - before) / 1024
    s.abort(writer)  # the client goes away
    released(dev, "flood", "flood-pw", "127.0.0.68", 2000)
    end = time.monotonic() + 10
    while fd_count(dev.pid) > fds and time.monotonic() < end:
        time.sleep(0.1)
    print(f"flood of {len(flood) // 1024} KiB LIST (client wrote {min(sent[0], len(flood)) // 1024} KiB before "
          f"blocking): pop3d RSS {before // 1024} MiB, peak {peak // 1024} MiB ({growth:+.1f}); another session "
          f"meanwhile {other * 1000:.0f} ms; fds {fds} -> {fd_count(dev.pid)} after the client left")
    assert sent[0] < len(flood), "the client wrote the whole flood: pop3d kept reading input while output was backed up"
    assert growth < 24, f"RSS grew {growth:.0f} MiB: input is read while output is backed up"
    assert other < FLOOD_OTHER_SESSION_LIMIT, f"another client took {other:.1f} s"
    assert fd_count(dev.pid) <= fds, f"descriptors {fds} -> {fd_count(dev.pid)}: the session was not closed"
