"""Announced policies, enforced (issue 11): LOGIN-DELAY (RFC 2449 §6.5) on every listener, UTF8 and LANG
(RFC 6856) with a UTF-8 user name typed in another normalisation form."""
import os
import time
import unicodedata

from pop3support import POP3Session, Pop3dDev


def capa(session):
    session.ok("CAPA")
    return [line.decode() for line in session.lines()]


def test_login_delay_is_announced_and_enforced_on_every_listener(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config="policy:\n  login_delay: 4\n")
    dev.start()
    try:
        c = dev.session()
        assert "LOGIN-DELAY 4" in capa(c)
        c.login("demo", dev.password)
        c.quit()
        started = time.monotonic()
        # Too soon, over implicit TLS and over STLS alike; the reply comes before any password check, so a wrong
        # password gets the same [LOGIN-DELAY] answer.
        for mode in ("tls", "stls"):
            s = dev.session(mode=mode)
            s.ok("USER demo")
            reply = s.command("PASS wrong-password")
            assert reply.startswith(b"-ERR [LOGIN-DELAY]"), reply
            s.close()
        assert time.monotonic() - started < 4, "the refusals took longer than the delay; the check is not meaningful"
        time.sleep(max(0, 4.2 - (time.monotonic() - started)))
        c = dev.session().login("demo", dev.password)
        c.quit()
    finally:
        dev.stop()
    # check-config shows it.
    out = dev.pop3d("check-config", "--config", dev.config).stdout.decode()
    assert "login_delay: 4" in out, out


def test_utf8_lang_and_a_utf8_user_name(pop3d):
    dev = pop3d
    name = "jörg"  # written to the passwd-file in NFC
    dev.add_user(name, "pässwört")
    c = dev.session()
    caps = capa(c)
    assert "UTF8 USER" in caps and "LANG" in caps, caps
    assert c.command("UTF8").startswith(b"+OK")
    c.ok("LANG")
    assert [l.decode() for l in c.lines()] == ["en English"]
    assert c.command("LANG en").startswith(b"+OK")
    assert c.command("LANG tlh").startswith(b"-ERR")
    # The user name typed decomposed (o + U+0308), the password composed: both match after normalisation.
    decomposed = unicodedata.normalize("NFD", name)
    assert decomposed != name
    c.login(decomposed, "pässwört")
    assert c.command("UTF8").startswith(b"-ERR"), "UTF8 is valid only before login"
    c.quit()


def login_after_drop(dev, user, password):
    """Logs in right after a dropped session: the server notices the drop, records and unlocks asynchronously, so
    [IN-USE] is retried for a few seconds."""
    for _ in range(50):
        c = dev.session()
        c.ok(f"USER {user}")
        reply = c.command(f"PASS {password}")
        if reply.startswith(b"+OK"):
            return c
        c.close()
        assert b"[IN-USE]" in reply, reply
        time.sleep(0.1)
    raise AssertionError("the dropped session's maildrop lock was not released")


def retrieval_log_path(dev, user):
    import hashlib
    return os.path.join(dev.data, "state", "retrieved", hashlib.sha256(user.encode()).hexdigest())


def test_expire_zero_removes_what_was_retrieved_at_quit_or_at_the_next_login(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config="policy:\n  expire_days: 0\n")
    dev.start()
    try:
        c = dev.session()
        assert "EXPIRE 0" in capa(c)
        c.login("demo", dev.password)
        assert c.stat()[0] == 3
        c.retr(1)
        c.ok("TOP 2 0")
        c.lines()
        c.quit()
        c = dev.session().login("demo", dev.password)
        assert c.stat()[0] == 2, "EXPIRE 0: the retrieved message must be gone after QUIT (TOP is no retrieval)"
        c.retr(1)
        c.close()  # dropped: no UPDATE, so nothing is deleted now ...
        c = login_after_drop(dev, "demo", dev.password)
        assert c.stat()[0] == 1, "... but the retrieval was recorded and it expires at the next login"
        c.quit()
    finally:
        dev.stop()
    assert any("expired messages removed" in line for line in dev.log_lines("expired"))


def test_expire_days_from_the_first_retrieval_and_per_account(pop3d_bin, tmp_path):
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config="policy:\n  expire_days: 2\n")
    with open(os.path.join(dev.data, "users"), "a") as f:
        f.write("keeper:{PLAIN}keeper-pw::::::expire_days=never\n")
    dev.start()
    try:
        c = dev.session()
        assert "EXPIRE 2 USER" in capa(c), "accounts differ, so CAPA says USER before login"
        c.login("demo", dev.password)
        assert "EXPIRE 2" in capa(c)
        for n in (1, 2):
            c.retr(n)
        c.quit()
        log_path = retrieval_log_path(dev, "demo")
        with open(log_path) as f:
            entries = dict(line.split() for line in f.read().splitlines())
        assert len(entries) == 2 and all(abs(int(t) - time.time()) < 600 for t in entries.values()), entries
        # Retrieved today: nothing expires yet.
        c = dev.session().login("demo", dev.password)
        assert c.stat()[0] == 3
        c.quit()
        # The first retrieval of one of them moved 3 days back (the log's format is documented): it expires.
        first = sorted(entries)[0]
        entries[first] = str(int(entries[first]) - 3 * 86400)
        with open(log_path, "w") as f:
            f.write("".join(f"{k} {v}\n" for k, v in entries.items()))
        c = dev.session().login("demo", dev.password)
        assert c.stat()[0] == 2
        assert first not in c.uidl().values()
        c.quit()
        c = dev.session().login("keeper", "keeper-pw")
        assert "EXPIRE NEVER" in capa(c)
        c.quit()
    finally:
        dev.stop()
    out = dev.pop3d("check-config", "--config", dev.config).stdout.decode()
    assert "expire_days: 2" in out, out
