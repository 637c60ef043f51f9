"""`pop3 setup ADDRESS` (issue 16) against pop3d's own autoconfig service and a DNS server of the test's own (SRV
answers, UDP on loopback), as Thunderbird looks a server up: it finds the server, checks the login with STAT only
(nothing downloaded or deleted), writes an account that `pop3 fetch` then uses, and keeps what it was told."""
import os
import subprocess

import pytest

from pop3support import DNSServer, Pop3dDev, free_port, wait_port, write_secret


@pytest.fixture
def served(pop3d_bin, tmp_path):
    (tmp_path / "server").mkdir()
    dev = Pop3dDev(pop3d_bin, tmp_path / "server")
    dev.autoconfig_port = free_port()
    dev.configure(f'autoconfig:\n  listen: "127.0.0.1:{dev.autoconfig_port}"\n')
    dev.start()
    wait_port(dev.autoconfig_port, dev.proc, 60)
    yield dev
    dev.stop()


def setup(pop3_bin, tmp_path, *args):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(tmp_path))
    return subprocess.run([pop3_bin, "setup", *args], capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


def test_setup_through_autoconfig_then_fetch_keeps_mail(served, pop3_bin, tmp_path):
    dev = served
    pw = str(tmp_path / "demo.pass")
    write_secret(pw, dev.password + "\n")
    accounts = str(tmp_path / "accounts.yaml")
    r = setup(pop3_bin, tmp_path, "demo@localhost.test", "--autoconfig-url", f"https://localhost:{dev.autoconfig_port}",
              "--ca-file", dev.ca, "--password-file", pw, "--config", accounts, "--maildir", str(tmp_path / "Mail"),
              "--dns-server", "127.0.0.1:9")  # the SRV lookup fails fast; autoconfig already answered
    assert r.returncode == 0, r.stderr
    assert f"found: localhost:{dev.tls_port}, user demo" in r.stderr, r.stderr  # %EMAILLOCALPART% for plain names
    assert "keeping messages on the server for 14 days" in r.stderr  # the default offered, said
    assert "login works: 3 messages" in r.stderr
    text = open(accounts).read()
    assert f'url: "pop3s://demo@localhost:{dev.tls_port}"' in text and "keep_days: 14" in text, text
    # STAT only: nothing was downloaded or deleted.
    s = dev.session()
    s.login("demo", dev.password)
    assert s.stat()[0] == 3
    s.quit()
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    r = subprocess.run([pop3_bin, "fetch", "--config", accounts], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(tmp_path / "Mail" / "new")) + len(os.listdir(tmp_path / "Mail" / "cur")) == 3
    s = dev.session()
    s.login("demo", dev.password)
    assert s.stat()[0] == 3, "keep_days 14: the messages stay on the server"
    s.quit()
    # The same account again: refused, the file unchanged.
    r = setup(pop3_bin, tmp_path, "demo@localhost.test", "--autoconfig-url", f"https://localhost:{dev.autoconfig_port}",
              "--ca-file", dev.ca, "--password-file", pw, "--config", accounts, "--delete", "--dns-server", "127.0.0.1:9")
    assert r.returncode != 0 and "already has an account" in r.stderr, r.stderr
    assert open(accounts).read() == text


def test_setup_through_srv_when_autoconfig_fails(served, pop3_bin, tmp_path):
    """No autoconfig answers (a closed port): the SRV record leads to the server; the account is set up and works.
    An address the server does not know gets there too, fails the login check, and nothing is written."""
    dev = served
    dev.add_user("carol@example.test", "carol-password")
    dns = DNSServer(srv={"_pop3s._tcp.example.test": ("localhost", dev.tls_port)})
    closed = free_port()
    try:
        pw = str(tmp_path / "carol.pass")
        write_secret(pw, "carol-password\n")
        accounts = str(tmp_path / "accounts.yaml")
        common = ["--autoconfig-url", f"https://127.0.0.1:{closed}", "--dns-server", f"127.0.0.1:{dns.port}",
                  "--ca-file", dev.ca, "--password-file", pw, "--config", accounts, "--maildir", str(tmp_path / "Mail")]
        r = setup(pop3_bin, tmp_path, "carol@example.test", *common, "--delete", "--name", "work")
        assert "_pop3s._tcp.example.test" in dns.asked
        assert f"DNS SRV _pop3s._tcp.example.test: localhost:{dev.tls_port}" in r.stderr, r.stderr
        assert r.returncode == 0 and "login works: 0 messages" in r.stderr, r.stderr
        text = open(accounts).read()
        assert "  work:" in text and f'url: "pop3s://carol%40example.test@localhost:{dev.tls_port}"' in text, text
        assert "keep" not in text  # --delete: POP3's default, nothing to write
        r = setup(pop3_bin, tmp_path, "nobody@example.test", *common, "--delete", "--name", "other")
        assert r.returncode == 1 and "nothing was written" in r.stderr, r.stderr
        assert open(accounts).read() == text
    finally:
        dns.close()
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    r = subprocess.run([pop3_bin, "fetch", "--config", accounts, "work"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr


def test_setup_refuses_bad_input(pop3_bin, tmp_path):
    for args, needle in ((["not-an-address"], "not an e-mail address"),
                         (["a@b.test", "--keep", "--delete"], "one of --delete, --keep, --keep-days")):
        r = setup(pop3_bin, tmp_path, *args)
        assert r.returncode == 64 and needle in r.stderr, (args, r.stderr)
