"""Announced policies, enforced (issue 11): LOGIN-DELAY (RFC 2449 §6.5) on every listener, UTF8 and LANG
(RFC 6856) with a UTF-8 user name typed in another normalisation form."""
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
