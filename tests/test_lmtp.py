"""LMTP delivery (RFC 2033) into pop3d, driven by a raw socket and Python's smtplib.LMTP (issue 11;
docs/security-cases.md 55, 58, 61, 62). Postfix end to end: test_lmtp_postfix.py."""
import os
import smtplib
import socket
import stat
import subprocess
import time

import pytest

from pop3support import LOCALHOST, LMTPClient, Pop3dDev, lmtp_start_transaction as start_transaction, lmtp_stuffed as stuffed, normalize, wait_port

CAPABILITIES = ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE 52428800", "CHUNKING", "SMTPUTF8"]


def lmtp(dev):
    return LMTPClient((LOCALHOST, dev.lmtp_port))


def count(dev, user="demo"):
    return len(dev.maildir_files(user))


def without_trace(stored):
    """A stored copy without the three lines pop3d prepends (Return-Path, Delivered-To, Received + 2 folded)."""
    lines = stored.split(b"\n")
    assert lines[0].startswith(b"Return-Path: <") and lines[1].startswith(b"Delivered-To: <"), stored[:200]
    assert lines[2].startswith(b"Received: from ") and lines[3].startswith(b"\tby ") and lines[4].startswith(b"\tfor <")
    return b"\n".join(lines[5:])


def new_files(dev, before, user="demo"):
    now = dev.maildir_files(user)
    return {name: data for name, data in now.items() if name not in before}


def test_lhlo_announces_the_extensions(pop3d):
    c = lmtp(pop3d)
    assert c.greeting[0] == 220 and "LMTP" in c.greeting[1][0]
    code, lines = c.command("LHLO client.test")
    assert code == 250 and lines[1:] == CAPABILITIES, lines
    assert c.command("EHLO client.test")[0] == 500, "EHLO on an LMTP port must be refused"
    assert c.command("QUIT")[0] == 221
    assert c.closed()


def test_smtplib_delivers_and_pop3_serves_it_byte_identical(pop3d):
    """Python's LMTP client; the message (dot lines, a 5,000-octet line, UTF-8 body) comes back over POP3 as sent,
    after the trace lines; the Delivered-To names this copy's recipient."""
    dev = pop3d
    before = dev.maildir_files()
    body = ("Subject: LMTP test\r\nFrom: a@example.test\r\n\r\n.starts with a dot\r\n..two dots\r\n"
            + "x" * 5000 + "\r\nGrüße\r\n.\r\nend\r\n").encode()
    s = smtplib.LMTP(LOCALHOST, dev.lmtp_port)
    refused = s.sendmail("a@example.test", ["demo@example.test", "nobody@example.test"], body)
    s.quit()
    assert set(refused) == {"nobody@example.test"} and refused["nobody@example.test"][0] == 550, refused
    stored = new_files(dev, before)
    assert len(stored) == 1, f"expected one new message, got {list(stored)}"
    data = next(iter(stored.values()))
    assert data.startswith(b"Return-Path: <a@example.test>\nDelivered-To: <demo@example.test>\n"), data[:120]
    assert without_trace(data) == body.replace(b"\r\n", b"\n"), "stored copy differs from what was sent"
    c = dev.session().login("demo", dev.password)  # poplib refuses lines over 2,048 octets
    n, _ = c.stat()
    served = c.retr(n)
    c.quit()
    assert body in served and served.endswith(body), "RETR does not end with the message as sent"


def test_one_reply_per_recipient_in_order_after_the_dot(pop3d):
    """Case 55: RCPT ×3 with one unknown and one duplicate, then DATA: exactly one reply per accepted RCPT, in
    order; the duplicate gets the same reply and no second copy. DATA with no accepted RCPT is 503."""
    dev = pop3d
    c = lmtp(dev)
    replies = start_transaction(c, "demo", "ghost", "demo+tag", "DEMO")
    assert [r[0] for r in replies] == [250, 550, 250, 550], replies
    assert replies[1][1][0].startswith("5.1.1")
    assert "ghost" not in replies[1][1][0], "a reply echoes the address"
    before = dev.maildir_files()
    assert c.command("DATA")[0] == 354
    c.send(stuffed(b"Subject: per-recipient\r\n\r\nhello\r\n"))
    got = [c.reply() for _ in range(2)]
    assert [g[0] for g in got] == [250, 250] and all(g[1][0].startswith("2.0.0") for g in got), got
    stored = new_files(dev, before)
    assert sorted(d.split(b"\n")[1] for d in stored.values()) == [b"Delivered-To: <demo+tag>", b"Delivered-To: <demo>"]
    # No accepted recipient: DATA is 503 and nothing is read as content.
    assert c.command("MAIL FROM:<>")[0] == 250
    assert c.command("RCPT TO:<ghost@x.test>")[0] == 550
    assert c.command("DATA")[0] == 503
    assert c.command("NOOP")[0] == 250
    c.close()


def test_bdat_chunks_and_pipelining_in_one_write(pop3d):
    """RFC 3030 and 2920: the whole transaction in one write; a BDAT chunk is exactly its size, and what follows
    it is a command again."""
    dev = pop3d
    before = dev.maildir_files()
    c = lmtp(dev)
    part1 = b"Subject: chunked\r\n\r\nBDAT 3 LAST\r\nQUIT\r\n"  # looks like commands; is content
    part2 = b"tail\r\n"
    c.send(b"LHLO c\r\nMAIL FROM:<s@x.test> BODY=8BITMIME\r\nRCPT TO:<demo>\r\n"
           + f"BDAT {len(part1)}\r\n".encode() + part1 + f"BDAT {len(part2)} LAST\r\n".encode() + part2
           + b"RSET\r\n")
    codes = [c.reply()[0] for _ in range(6)]
    assert codes == [250, 250, 250, 250, 250, 250], codes
    stored = new_files(dev, before)
    assert len(stored) == 1
    assert without_trace(next(iter(stored.values()))) == (part1 + part2).replace(b"\r\n", b"\n")
    # BDAT with no transaction: its bytes are read and dropped, then 503.
    c.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert c.reply()[0] == 503 and c.reply()[0] == 250
    c.close()


def test_only_crlf_dot_crlf_ends_data(pop3d):
    """Case 61 (SMTP smuggling): bare-LF and bare-CR dots inside DATA are content; one message is stored."""
    dev = pop3d
    before = dev.maildir_files()
    c = lmtp(dev)
    start_transaction(c, "demo")
    assert c.command("DATA")[0] == 354
    c.send(b"Subject: smuggle\r\n\r\na\n.\nMAIL FROM:<evil@x>\nRCPT TO:<demo>\nDATA\nb\r.\rc\n.\r\nd\r\n.\r\n")
    assert c.reply()[0] == 250
    assert c.command("NOOP")[0] == 250
    stored = new_files(dev, before)
    assert len(stored) == 1, f"{len(stored)} messages stored"
    assert b"MAIL FROM:<evil@x>" in next(iter(stored.values()))
    c.close()


def test_connection_dropped_before_the_dot_stores_nothing(pop3d):
    dev = pop3d
    before = dev.maildir_files()
    c = lmtp(dev)
    start_transaction(c, "demo")
    assert c.command("DATA")[0] == 354
    c.send(b"Subject: cut\r\n\r\n" + b"y" * 200_000 + b"\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.closed(), "the server did not close"
    c.close()
    time.sleep(0.5)
    assert new_files(dev, before) == {}
    assert os.listdir(os.path.join(dev.maildir(), "tmp")) == []


def test_limits_size_recipients_line_length_bad_commands(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config="limits:\n  message_size: 2048\n")
    dev.start()
    try:
        c = lmtp(dev)
        code, lines = c.command("LHLO c")
        assert "SIZE 2048" in lines
        assert c.command("MAIL FROM:<a@x> SIZE=4096") == (552, ["5.3.4 Message too big"])
        before = dev.maildir_files()
        start_transaction(c, "demo", "demo+b")
        assert c.command("DATA")[0] == 354
        c.send(stuffed(b"Subject: big\r\n\r\n" + b"z" * 4000 + b"\r\n"))
        assert [c.reply() for _ in range(2)] == [(552, ["5.3.4 Message too big"])] * 2
        assert new_files(dev, before) == {}
        # 100 recipients, then 452 4.5.3.
        assert c.command("MAIL FROM:<a@x>")[0] == 250
        codes = [c.command("RCPT TO:<demo>")[0] for _ in range(101)]
        assert codes[:100] == [250] * 100 and codes[100] == 452, codes[95:]
        assert c.command("RSET")[0] == 250
        # A 1,001-octet command line: 500 5.5.2, and the session goes on.
        assert c.command("NOOP " + "n" * 995) == (500, ["5.5.2 Line too long"])
        assert c.command("NOOP")[0] == 250
        c.close()
        # 20 bad commands are tolerated; the 21st closes with 421.
        c = lmtp(dev)
        codes = [c.command("XBAD")[0] for _ in range(21)]
        assert codes[:20] == [500] * 20 and codes[20] == 421, codes
        assert c.closed()
        c.close()
    finally:
        dev.stop()


def test_quota_552_or_452_with_tempfail(pop3d_bin, tmp_path):
    """Case 62: over quota, 552 5.2.2 and nothing stored; lmtp.quota_full_tempfail makes it 452 4.2.2."""
    for tempfail, expected in ((False, (552, "5.2.2")), (True, (452, "4.2.2"))):
        root = tmp_path / f"tempfail-{tempfail}"
        root.mkdir()
        dev = Pop3dDev(pop3d_bin, root, extra_config=f"lmtp:\n  quota_full_tempfail: {str(tempfail).lower()}\n")
        with open(os.path.join(dev.data, "users"), "a") as f:
            f.write("small:{PLAIN}q-pw::::::userdb_quota_rule=*:storage=1K\n")
        dev.start()
        try:
            c = lmtp(dev)
            start_transaction(c, "small", "demo")
            assert c.command("DATA")[0] == 354
            c.send(stuffed(b"Subject: q\r\n\r\n" + b"q" * 2000 + b"\r\n"))
            first, second = c.reply(), c.reply()
            assert (first[0], first[1][0][:5]) == expected, first
            assert second[0] == 250, "the other recipient must still get the message"
            assert len(dev.maildir_files("small")) == 0
            c.close()
        finally:
            dev.stop()


def test_domains_and_detail_delimiter(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config='lmtp:\n  domains: ["example.test"]\n')
    dev.start()
    try:
        c = lmtp(dev)
        replies = start_transaction(c, "demo@example.test", "demo+news@EXAMPLE.test", "demo@other.test", "ghost@example.test")
        assert [r[0] for r in replies] == [250, 250, 550, 550], replies
        assert replies[2] == replies[3], "a foreign domain and an unknown user must get the same reply"
        c.close()
    finally:
        dev.stop()


def add_unix_listener(dev, path="lmtp.sock", mode=None):
    """Puts `unix:PATH` under listen: in the dev's pop3d.yaml (the flags give the TCP listener)."""
    if not os.path.exists(dev.config):
        dev.start()
        dev.stop()
    with open(dev.config) as f:
        text = f.read()
    text = text.replace("listen:\n", f'listen:\n  lmtp: ["unix:{path}"]\n', 1)
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("lmtp: [\"127.")) + "\n"
    if mode:
        text += f'lmtp:\n  socket_mode: "{mode}"\n'
    with open(dev.config, "w") as f:
        f.write(text)
    return os.path.join(dev.data, path)


def test_unix_socket_listener_mode_and_stale_socket(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path)
    path = add_unix_listener(dev, mode="0600")
    dev.start()
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        before = dev.maildir_files()
        s = smtplib.LMTP(path)
        assert s.sendmail("a@x.test", ["demo"], b"Subject: unix\r\n\r\nvia the socket\r\n") == {}
        s.quit()
        assert len(new_files(dev, before)) == 1
        # kill -9 leaves the socket file; the next start replaces it.
        dev.restart(kill=True)
        s = smtplib.LMTP(path)
        assert s.noop()[0] == 250
        s.quit()
    finally:
        dev.stop()
    # A regular file where the socket should be is never removed: the start fails and says why.
    os.unlink(path) if os.path.exists(path) else None
    with open(path, "w") as f:
        f.write("not a socket\n")
    r = subprocess.run([pop3d_bin, "dev", "--data", dev.data, "--pop3s-port", str(dev.tls_port), "--pop3-port",
                        str(dev.plain_port), "--lmtp-port", str(dev.lmtp_port), "--metrics-port", str(dev.metrics_port)],
                       capture_output=True, timeout=60)
    assert r.returncode != 0 and b"not a socket" in r.stderr, (r.returncode, r.stderr[-300:])
    assert open(path).read() == "not a socket\n"


def test_idle_timeout_and_connection_limit(pop3d_bin, tmp_path):
    # 10 s, not less: the limit is checked while the first two are still open, so a pause of the idle
    # timeout between their connects and the third's would free a place and fail the test for nothing.
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config="lmtp:\n  idle_timeout: 10\n  max_connections: 2\n")
    dev.start()
    try:
        a, b = lmtp(dev), lmtp(dev)
        third = LMTPClient((LOCALHOST, dev.lmtp_port))
        assert third.greeting[0] == 421 and third.greeting[1][0].startswith("4.3.2"), third.greeting
        assert third.closed()
        started = time.monotonic()
        assert a.reply()[0] == 421, "no 421 at the idle timeout"
        waited = time.monotonic() - started
        assert 6 <= waited <= 40, f"idle close after {waited:.1f} s (lmtp.idle_timeout: 10)"
        assert a.closed()
        for c in (a, b, third):
            c.close()
    finally:
        dev.stop()


def test_check_config_shows_lmtp_and_refuses_a_misspelt_key(pop3d):
    dev = pop3d
    r = dev.pop3d("check-config", "--config", dev.config)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    for needle in ("lmtp: [", "message_size: 52428800", 'socket_mode: "0660"', "max_recipients: 100",
                   'recipient_delimiter: "+"', "quota_full_tempfail: false"):
        assert needle in out, f"{needle!r} not in check-config output"
    with open(dev.config, "a") as f:
        f.write("lmtp:\n  max_recipents: 5\n")
    r = dev.pop3d("check-config", "--config", dev.config)
    assert r.returncode == 78 and b"did you mean lmtp.max_recipients" in r.stderr, r.stderr


@pytest.mark.root
def test_disk_full_gives_451_and_leaves_nothing(pop3d):
    """A recipient's Maildir on a 1 MiB tmpfs: the copy that does not fit gets 451 4.3.0 (the MTA retries),
    nothing partial is left in new/ or tmp/, and the next recipient still gets its copy."""
    from test_faults import mount_tmpfs, unmount
    dev = pop3d
    dev.add_user("tiny", "tiny-password")
    maildir = dev.maildir("tiny")
    mount_tmpfs(maildir, "1m")
    try:
        c = lmtp(dev)
        start_transaction(c, "tiny", "demo")
        assert c.command("DATA")[0] == 354
        c.send(stuffed(b"Subject: full\r\n\r\n" + (b"f" * 998 + b"\r\n") * 1500))
        first, second = c.reply(), c.reply()
        assert first[0] == 451 and first[1][0].startswith("4.3.0"), first
        assert second[0] == 250, second
        for sub in ("new", "tmp"):
            folder = os.path.join(maildir, sub)
            assert not os.path.isdir(folder) or os.listdir(folder) == [], f"{sub}/ holds {os.listdir(folder)}"
        c.close()
    finally:
        unmount(maildir)


def test_shutdown_says_421_to_idle_connections_at_once(pop3d_bin, tmp_path):
    """SIGTERM: an MTA's idle cached connection gets 421 4.3.2 at once (not after limits.shutdown_grace), pop3d
    exits promptly, and the Unix socket file goes with it."""
    dev = Pop3dDev(pop3d_bin, tmp_path)
    path = add_unix_listener(dev)
    dev.start()
    c = lmtp(dev)
    assert c.command("LHLO c")[0] == 250
    started = time.monotonic()
    status = dev.stop()
    took = time.monotonic() - started
    assert status == 0 and took < 15, f"stop took {took:.1f} s (exit {status}); the idle LMTP connection held it up"
    code, lines = c.reply()
    assert code == 421 and lines[0].startswith("4.3.2"), (code, lines)
    assert not os.path.exists(path), "the Unix socket file was left behind"
    c.close()
