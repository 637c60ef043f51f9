"""The client's operations (issue 14) against a running `pop3d dev`: `pop3 probe --json`, and `pop3 fetch --daemon`:
polling on its interval, SIGUSR1 polling at
once, a failing account backing off without delaying the other, SIGTERM storing what is in flight and exiting 0.
Time bounds are generous (the machines are shared); the back-off arithmetic itself is unit-tested with an injected
clock (FetchDaemonTests)."""
import os
import re
import signal
import subprocess
import threading
import time

from pop3support import LMTPClient, LOCALHOST, free_port, lmtp_start_transaction, lmtp_stuffed, write_secret


class Daemon:
    """`pop3 fetch --daemon` in the background, its stderr collected line by line."""

    def __init__(self, pop3_bin, accounts, state, *args):
        env = dict(os.environ, XDG_STATE_HOME=state)
        self.proc = subprocess.Popen([pop3_bin, "fetch", "--config", accounts, *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern, seconds=60, after=0):
        """The first line from index `after` on that matches; fails after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in {seconds} s; stderr: {self.lines[-10:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def deliver(dev, subject, body_lines=1):
    """One message over LMTP; its body has `body_lines` lines of 990 octets."""
    c = LMTPClient((LOCALHOST, dev.lmtp_port))
    lmtp_start_transaction(c, "demo@localhost")
    assert c.command("DATA")[0] == 354
    c.send(lmtp_stuffed(f"Subject: {subject}\r\n\r\n".encode() + (b"x" * 988 + b"\r\n") * body_lines))
    assert c.reply()[0] == 250
    c.command("QUIT")
    c.close()


def maildir_count(path):
    return sum(len(os.listdir(os.path.join(path, sub))) for sub in ("new", "cur") if os.path.isdir(os.path.join(path, sub)))


def accounts_file(tmp_path, dev, extra_accounts=""):
    pw = str(tmp_path / "demo.pass")
    write_secret(pw, dev.password + "\n")
    path = tmp_path / "accounts.yaml"
    path.write_text(
        "accounts:\n"
        "  good:\n"
        f"    url: pop3s://demo@localhost:{dev.tls_port}\n"
        f"    password_file: {pw}\n"
        f"    ca_file: {dev.ca}\n"
        f"    maildir: {tmp_path / 'Mail'}\n"
        "    interval: 3600\n"
        + extra_accounts)
    return str(path), pw


def test_polls_on_sigusr1_backs_off_a_failing_account_and_stops_cleanly(pop3d, pop3_bin, tmp_path):
    dev = pop3d
    closed_port = free_port()  # nothing listens there: connection refused
    broken = (
        "  broken:\n"
        f"    url: pop3s://demo@127.0.0.1:{closed_port}\n"
        "    password_file: {pw}\n"
        f"    ca_file: {dev.ca}\n"
        f"    maildir: {tmp_path / 'Broken'}\n"
        "    interval: 10\n")
    path, pw = accounts_file(tmp_path, dev)
    with open(path, "a") as f:
        f.write(broken.replace("{pw}", pw))
    state = str(tmp_path / "state")
    d = Daemon(pop3_bin, path, state, "--daemon", "3600")
    try:
        d.wait_line(r"polling 2 accounts \(good every 3600 s, broken every 10 s\)")
        # The first poll of each account happens at once: the 3 sample messages are fetched (and deleted).
        d.wait_line(r"^pop3: good: 3 fetched, 3 deleted")
        assert maildir_count(tmp_path / "Mail") == 3
        # The broken account fails and backs off: 20 s after the first failure, then 40 s (interval 10, doubled).
        first = d.wait_line(r"^pop3: broken: .*next try in 20 s")
        second = d.wait_line(r"^pop3: broken: .*next try in 40 s", seconds=90)
        assert "Connection refused" in first or "connect" in first.lower(), first
        # Meanwhile new mail waits for the good account's hour, until SIGUSR1.
        deliver(dev, "after the first poll")
        time.sleep(1)
        assert maildir_count(tmp_path / "Mail") == 3
        mark = len(d.lines)
        d.proc.send_signal(signal.SIGUSR1)
        d.wait_line(r"^pop3: good: 1 fetched, 1 deleted", after=mark)
        assert maildir_count(tmp_path / "Mail") == 4
        # A poll that finds nothing says nothing.
        mark = len(d.lines)
        d.proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        assert not [line for line in d.lines[mark:] if line.startswith("pop3: good:")], d.lines[mark:]
        # The account lock is free between polls: a one-off fetch of the same account runs meanwhile.
        r = subprocess.run([pop3_bin, "fetch", "--config", path, "good"], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, XDG_STATE_HOME=state))
        assert r.returncode == 0, r.stderr
        started = time.monotonic()
        assert d.stop() == 0, d.lines[-5:]
        assert time.monotonic() - started < 30
        assert d.lines[-1] == "pop3: stopped", d.lines[-3:]
    finally:
        if d.proc.poll() is None:
            d.proc.kill()


def test_sigterm_during_a_fetch_stores_the_message_in_flight_and_loses_nothing(pop3d, pop3_bin, tmp_path):
    dev = pop3d
    # 40 messages of ~1 MB: a fetch that is still running when SIGTERM comes.
    for i in range(40):
        deliver(dev, f"big {i}", body_lines=1000)
    path, _ = accounts_file(tmp_path, dev)
    state = str(tmp_path / "state")
    d = Daemon(pop3_bin, path, state, "--daemon", "3600")
    try:
        d.wait_line(r"polling 1 account")
        deadline = time.monotonic() + 60
        while maildir_count(tmp_path / "Mail") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.stop() == 0, d.lines[-5:]
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    stored = maildir_count(tmp_path / "Mail")
    assert 0 < stored < 43, stored
    assert any(re.match(rf"pop3: good: stopped: {stored} fetched and stored", line) for line in d.lines), d.lines[-5:]
    assert not os.listdir(tmp_path / "Mail" / "tmp"), "a partial message was left in tmp/"
    s = dev.session()
    s.login("demo", dev.password)
    assert s.stat()[0] == 43, "the stopped run deleted something"
    s.quit()
    # Whatever was stopped, one more run fetches the rest: every message exactly once, none deleted unstored.
    r = subprocess.run([pop3_bin, "fetch", "--config", path, "good"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, XDG_STATE_HOME=state))
    assert r.returncode == 0, r.stderr
    assert maildir_count(tmp_path / "Mail") == 43
    s = dev.session()
    s.login("demo", dev.password)
    assert s.stat()[0] == 0
    s.quit()


def test_daemon_settings_are_checked(pop3_bin, tmp_path, pop3d):
    path, _ = accounts_file(tmp_path, pop3d)
    for args, needle in ((["--daemon", "5"], "--daemon SECONDS"), (["--daemon", "60", "--json"], "exclude each other")):
        r = subprocess.run([pop3_bin, "fetch", "--config", path, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 64 and needle in r.stderr, (args, r.returncode, r.stderr)
    with open(path, "a") as f:
        f.write("daemon:\n  interval: 2\n")
    r = subprocess.run([pop3_bin, "fetch", "--config", path, "--daemon", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "daemon.interval" in r.stderr, r.stderr
    with open(path, "w") as f:
        f.write("accounts:\n  a:\n    url: pop3s://u@h\n    maildir: /tmp/x\n    intervall: 60\n")
    r = subprocess.run([pop3_bin, "fetch", "--config", path, "--daemon", "60"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "intervall" in r.stderr, r.stderr


def test_probe_json_is_one_object_with_everything_it_prints(pop3d, pop3_bin):
    import json
    dev = pop3d
    r = subprocess.run([pop3_bin, "probe", f"pop3s://localhost:{dev.tls_port}", "--ca-file", dev.ca, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)
    assert o["server"] == f"localhost:{dev.tls_port}" and o["security"] == "implicit TLS", o
    report = o["report"]
    assert report["greeting"].startswith("POP3") or report["greeting"], report
    assert report["tls"]["version"].lower().startswith("tlsv1") and report["tls"]["alpn"] == "pop3", report["tls"]
    assert report["tls"]["cipher"].startswith("TLS_"), report["tls"]
    assert "SASL PLAIN SCRAM-SHA-256-PLUS SCRAM-SHA-256" in report["capabilities"], report["capabilities"]
    assert report["automaticMethod"] == "scram-sha-256-plus", report
    (leaf,) = report["certificateChain"]
    assert len(leaf["sha256"]) == 64 and "localhost" in leaf["subject"], leaf
    # A server that is not there: exit 1 and the error in the object.
    port = free_port()
    r = subprocess.run([pop3_bin, "probe", f"pop3s://127.0.0.1:{port}", "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and json.loads(r.stdout)["report"]["error"], r.stdout


def fetch(pop3_bin, dev, state, *args):
    pw = os.path.join(state, "demo.pass")
    if not os.path.exists(pw):
        os.makedirs(state, exist_ok=True)
        write_secret(pw, dev.password + "\n")
    return subprocess.run([pop3_bin, "fetch", "--password-file", pw, "--ca-file", dev.ca,
                           f"pop3s://demo@localhost:{dev.tls_port}", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, XDG_STATE_HOME=state))


def test_lmtp_destination_deletes_only_what_the_mta_accepted(pop3d_bin, pop3_bin, tmp_path):
    """pop3 fetch --lmtp into a second pop3d's LMTP listener (a real LMTP server): every message arrives once and is
    deleted at the source only after the 250; a recipient the MTA refuses leaves everything on the server."""
    from pop3support import Pop3dDev
    (tmp_path / "source").mkdir()
    (tmp_path / "mta").mkdir()
    source = Pop3dDev(pop3d_bin, tmp_path / "source").start()
    mta = Pop3dDev(pop3d_bin, tmp_path / "mta").start()
    try:
        deliver(source, ".leading dot and more", body_lines=3)
        state = str(tmp_path / "state")
        r = fetch(pop3_bin, source, state, "--lmtp", f"127.0.0.1:{mta.lmtp_port}", "--recipient", "nobody-here")
        assert r.returncode == 1 and "RCPT" in r.stderr and "550" in r.stderr, r.stderr
        s = source.session()
        s.login("demo", source.password)
        assert s.stat()[0] == 4, "a message the MTA refused was deleted"
        sent = {n: s.retr(n) for n in range(1, 5)}
        s.quit()
        before = len(mta.maildir_files("demo"))
        r = fetch(pop3_bin, source, state, "--lmtp", f"127.0.0.1:{mta.lmtp_port}", "--recipient", "demo@localhost")
        assert r.returncode == 0, r.stderr
        arrived = [v for k, v in sorted(mta.maildir_files("demo").items())]
        assert len(arrived) == before + 4
        s = source.session()
        s.login("demo", source.password)
        assert s.stat()[0] == 0
        s.quit()
        # The bodies arrived whole (the MTA adds its trace headers in front).
        for body in sent.values():
            tail = body.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
            assert any(a.endswith(tail) or a.endswith(tail + b"\n") for a in arrived), tail[:80]
    finally:
        source.stop()
        mta.stop()


def test_smtp_destination_into_a_python_smtpd(pop3d, pop3_bin, tmp_path):
    """pop3 fetch --smtp into Python's smtpd (an independent SMTP server): each message goes over in one
    transaction to the configured recipient; non-loopback targets are refused."""
    import sys
    dev = pop3d
    port = free_port()
    out = open(tmp_path / "smtpd.out", "w")
    # smtpd.SMTPServer (Python 3.11's standard library): one JSON line per message with its envelope.
    code = (
        "import asyncore, json, smtpd, sys\n"
        "class S(smtpd.SMTPServer):\n"
        "    def process_message(self, peer, mailfrom, rcpttos, data, **kw):\n"
        "        print(json.dumps({'from': mailfrom, 'to': rcpttos, 'size': len(data), 'dots': data.count(b'\\n.')}), flush=True)\n"
        f"S(('127.0.0.1', {port}), None)\n"
        "asyncore.loop()\n")
    server = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], stdout=out, stderr=subprocess.STDOUT)
    try:
        from pop3support import wait_port
        wait_port(port, server, 30)
        state = str(tmp_path / "state")
        r = fetch(pop3_bin, dev, state, "--smtp", f"127.0.0.1:{port}", "--recipient", "alice@example.test")
        assert r.returncode == 0, r.stderr
        time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
        out.close()
    import json
    got = [json.loads(line) for line in (tmp_path / "smtpd.out").read_text().splitlines() if line.startswith("{")]
    assert len(got) == 3 and all(m["to"] == ["alice@example.test"] and m["from"] in ("", "<>") for m in got), got
    r = subprocess.run([pop3_bin, "fetch", "--password-file", "/dev/null", "--smtp", "192.0.2.1:25",
                        f"pop3s://demo@localhost:{dev.tls_port}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 64 and "not a loopback address" in r.stderr, r.stderr


def test_first_run_says_once_that_messages_are_deleted(pop3d, pop3_bin, tmp_path):
    path, pw = accounts_file(tmp_path, pop3d)
    with open(path, "a") as f:
        f.write("  kept:\n"
                f"    url: pop3s://demo@localhost:{pop3d.tls_port}\n"
                f"    password_file: {pw}\n"
                f"    ca_file: {pop3d.ca}\n"
                f"    maildir: {tmp_path / 'Kept'}\n"
                "    keep: true\n")
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    runs = [subprocess.run([pop3_bin, "fetch", "--config", path, name], capture_output=True, text=True, timeout=120,
                           env=env) for name in ("kept", "good", "good")]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert "DELETED" not in runs[0].stderr  # keep: true says nothing
    assert "pop3: good: messages are DELETED from the server once they are stored here" in runs[1].stderr
    assert "keep: true" in runs[1].stderr and "keep_days: 14" in runs[1].stderr
    assert "DELETED" not in runs[2].stderr, "the notice is shown once"
