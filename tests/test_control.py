"""The control socket (issue 14): `pop3d who`, `pop3d kick`, `pop3d penalty list|clear`, against a running
`pop3d dev` with live sessions.

- who lists each session (id, user after login, client, listener, since, state, octets sent), as a table or JSON.
- kick closes a user's sessions (or one by id): the client sees the connection close, its DELEs are not applied,
  and the user logs in again at once (no [IN-USE]); the session's summary says end=kicked.
- penalty list shows an address after a failed login; clear forgets it, so the next login is not delayed.
- The socket is mode 0600: root and the server's user only; a stopped server is exit 69.
"""
import json
import os
import pwd
import stat
import subprocess
import time

import pytest

from pop3support import ConnectionClosed, POP3Error


def control(dev, *args, user=None):
    kwargs = {}
    if user is not None:
        p = pwd.getpwnam(user)
        kwargs = {"user": p.pw_uid, "group": p.pw_gid, "extra_groups": []}
    return subprocess.run([dev.bin, *args, "--config", dev.config], capture_output=True, text=True, timeout=60, **kwargs)


def test_who_lists_live_sessions(pop3d):
    dev = pop3d
    logged_in = dev.session()
    logged_in.login("demo", dev.password)
    logged_in.retr(1)
    anonymous = dev.session(mode="stls")
    r = control(dev, "who", "--json")
    assert r.returncode == 0, r.stderr
    sessions = json.loads(r.stdout)
    mine = [s for s in sessions if s.get("user") == "demo"]
    assert len(mine) == 1, sessions
    s = mine[0]
    assert s["listener"] == "pop3s" and s["state"] == "transaction" and s["octetsSent"] > 200, s
    assert s["client"].startswith("127.0.0.1:") and abs(s["since"] - time.time()) < 120, s
    others = [s for s in sessions if s.get("user") is None]
    assert any(o["listener"] == "pop3" and o["state"] == "authorization" for o in others), sessions
    table = control(dev, "who")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split("\t")[:3] == ["ID", "USER", "CLIENT"], table.stdout
    assert any(line.split("\t")[1] == "demo" for line in table.stdout.splitlines()[1:]), table.stdout
    logged_in.quit()
    anonymous.quit()


def test_kick_closes_without_applying_deletes_and_frees_the_lock(pop3d):
    dev = pop3d
    victim = dev.session()
    victim.login("demo", dev.password)
    before = victim.stat()
    victim.ok("DELE 1")
    r = control(dev, "kick", "demo")
    assert r.returncode == 0 and "closed 1 session" in r.stdout, (r.returncode, r.stdout, r.stderr)
    with pytest.raises((ConnectionClosed, POP3Error, OSError)):
        victim.ok("NOOP")
    started = time.monotonic()
    again = dev.session()
    again.login("demo", dev.password)  # no [IN-USE]: the lock went with the kicked session
    assert time.monotonic() - started < 5
    assert again.stat() == before, "the kicked session's DELE was applied"
    sessions = json.loads(control(dev, "who", "--json").stdout)
    (mine,) = [s for s in sessions if s.get("user") == "demo"]
    r = control(dev, "kick", "--session", str(mine["id"]))
    assert r.returncode == 0 and "closed 1 session" in r.stdout, r.stderr
    with pytest.raises((ConnectionClosed, POP3Error, OSError)):
        again.ok("NOOP")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(dev.log_lines("end=kicked")) < 2:
        time.sleep(0.1)
    assert len(dev.log_lines("end=kicked")) == 2, dev.log_tail()
    # Nothing to kick: exit 1. Both a user and a session: a usage error (64).
    r = control(dev, "kick", "nobody-logged-in")
    assert r.returncode == 1 and "no such session" in r.stderr, (r.returncode, r.stderr)
    r = control(dev, "kick", "demo", "--session", "1")
    assert r.returncode == 64, (r.returncode, r.stderr)


def test_penalty_list_and_clear(pop3d):
    dev = pop3d
    s = dev.session(source="127.0.0.7")
    s.send(b"USER demo\r\n")
    s.line()
    s.send(b"PASS wrong\r\n")
    assert s.line().startswith(b"-ERR")
    s.quit()
    r = control(dev, "penalty", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {p["address"]: p for p in json.loads(r.stdout)}
    assert listed.get("127.0.0.7", {}).get("failures") == 1, listed
    # While listed, the next attempt from that address waits (2 s) before its password is checked.
    started = time.monotonic()
    s = dev.session(source="127.0.0.7")
    s.login("demo", dev.password)
    assert time.monotonic() - started >= 1.5
    s.quit()
    r = control(dev, "penalty", "clear", "127.0.0.7")
    assert r.returncode == 0 and "cleared 127.0.0.7" in r.stdout, r.stdout
    assert "127.0.0.7" not in control(dev, "penalty", "list").stdout
    started = time.monotonic()
    s = dev.session(source="127.0.0.7")
    s.login("demo", dev.password)
    assert time.monotonic() - started < 1.5, "a cleared address still waited"
    s.quit()
    r = control(dev, "penalty", "clear", "127.0.0.7")
    assert r.returncode == 0 and "had no failures" in r.stdout


def test_socket_is_root_and_server_user_only_and_a_stopped_server_is_69(pop3d):
    dev = pop3d
    path = os.path.join(dev.data, "run", "pop3d.sock")
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    if os.geteuid() == 0:
        r = control(dev, "who", user="nobody")
        assert r.returncode in (69, 78), (r.returncode, r.stderr)  # 78 when nobody cannot read the configuration
    dev.stop()
    r = control(dev, "who")
    assert r.returncode == 69 and "cannot reach pop3d's control socket" in r.stderr, (r.returncode, r.stderr)
    assert not os.path.exists(path), "the socket file outlived the server"
    r = dev.pop3d("check-config", "--config", dev.config)
    assert f'socket: "{path}"' in r.stdout.decode(), r.stdout.decode()[-300:]


def test_sighup_applies_what_it_can_and_names_what_needs_a_restart(pop3d):
    """SIGHUP re-reads pop3d.yaml: limits, policies and the log level apply to new connections at once; a key that
    needs a restart is named in the log; a broken file changes nothing."""
    import signal
    dev = pop3d
    first = dev.session()  # open before the reload: it stays
    with open(dev.config, "a") as f:
        f.write("limits:\n  connections_per_address: 2\npolicy:\n  login_delay: 1\nstate_dir: elsewhere\n")
    dev.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not dev.log_lines("SIGHUP: configuration checked"):
        time.sleep(0.1)
    (applied,) = dev.log_lines("SIGHUP: configuration checked")
    assert "limits.connections_per_address" in applied and "policy.login_delay" in applied, applied
    (restart,) = dev.log_lines("take effect only after a restart")
    assert "state_dir" in restart and "limits.connections_per_address" not in restart, restart
    second = dev.session()
    with pytest.raises((ConnectionClosed, POP3Error, OSError)):
        dev.session()  # the third from 127.0.0.1: over the new limit
    first.quit()
    second.quit()
    # A file that no longer parses: logged, the running configuration stays.
    with open(dev.config, "a") as f:
        f.write("limits:\n  idle_timout: 5\n")
    dev.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not dev.log_lines("configuration not reloaded"):
        time.sleep(0.1)
    assert dev.log_lines("configuration not reloaded"), dev.log_tail()
    s = dev.session()
    s.login("demo", dev.password)
    s.quit()
