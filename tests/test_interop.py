"""The real pop3d binary against real peers on loopback: Python poplib, curl and openssl s_client, the admin commands
(`user`, `check-config`, `deliver`), SIGHUP and SIGTERM, a 1 GiB message, and (as root) the privilege drop and the
per-account mail workers. The security cases of docs/security-cases.md are in test_server_abuse.py.

Read-only checks share one `pop3d dev` per module (`shared_pop3d`: the demo account with its 3 sample messages,
left as found); the poplib, curl and openssl checks run once per storage backend (`backend_pop3d`: Maildir, and
PostgreSQL with the same messages migrated in); checks that change the maildrop, the accounts or the process get
their own (`pop3d`).
"""
import os
import poplib
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from pop3support import (EX_NOUSER, EX_TEMPFAIL, crlf, free_port, make_cert, peer_fingerprint, s_client,
                         shared_tmpdir, stop_process, stream_retr, vm_kib, wait_port)


def retr_bytes(client, n):
    resp, lines, octets = client.retr(n)
    assert resp.startswith(b"+OK"), resp
    return b"".join(line + b"\r\n" for line in lines)


def netrc(folder, dev, user="demo", password=None):
    path = os.path.join(folder, "netrc")
    with open(path, "w") as f:
        f.write(f"machine localhost login {user} password {password or dev.password}\n")
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------- poplib

def test_poplib_pop3s_list_retr_compare_bytes(backend_pop3d):
    dev = backend_pop3d
    c = dev.poplib_pop3s()
    count, size = c.stat()
    assert count == 3, count
    stored = sorted(crlf(v) for v in dev.maildir_files().values())
    fetched = sorted(retr_bytes(c, i) for i in range(1, count + 1))
    assert fetched == stored, "RETR bytes differ from the Maildir files"
    assert size == sum(len(m) for m in stored), (size, [len(m) for m in stored])
    _, listing, _ = c.list()
    assert [int(l.split()[1]) for l in listing] == [len(retr_bytes(c, i)) for i in range(1, 4)]
    caps = c.capa()
    for cap in ("TOP", "UIDL", "USER", "SASL", "PIPELINING", "RESP-CODES", "IMPLEMENTATION"):
        assert cap in caps, caps
    assert "STLS" not in caps
    c.quit()


def test_poplib_stls(backend_pop3d):
    dev = backend_pop3d
    c = poplib.POP3("127.0.0.1", dev.plain_port, timeout=30)
    before = c.capa()
    assert "STLS" in before and "USER" not in before, before
    c.stls(context=ssl.create_default_context(cafile=dev.ca))
    after = c.capa()
    assert "STLS" not in after and "USER" in after, after
    c.user("demo")
    c.pass_(dev.password)
    assert c.stat()[0] == 3
    c.quit()


def test_poplib_refuses_cleartext_login(backend_pop3d):
    c = poplib.POP3("127.0.0.1", backend_pop3d.plain_port, timeout=30)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        c.user("demo")  # USER accepted before TLS would not raise
    c.quit()


def test_poplib_top_uidl_rset(backend_pop3d):
    c = backend_pop3d.poplib_pop3s()
    resp, lines, _ = c.top(2, 0)
    assert b"" in lines and all(not l.startswith(b"A line") for l in lines), lines
    _, uidls, _ = c.uidl()
    assert len(uidls) == 3 and all(len(u.split()[1]) == 16 for u in uidls), uidls
    c.dele(1)
    assert c.stat()[0] == 2
    c.rset()
    assert c.stat()[0] == 3
    c.quit()


def test_in_use(backend_pop3d):
    dev = backend_pop3d
    a = dev.poplib_pop3s()
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        dev.poplib_pop3s().quit()  # the second session must not be let in
    a.quit()
    dev.poplib_pop3s().quit()


# ---------------------------------------------------------------- curl

def test_curl_pop3s_list_and_retr(backend_pop3d, tmp_path):
    dev = backend_pop3d
    base = ["curl", "-sS", "--cacert", dev.ca, "--netrc-file", netrc(tmp_path, dev), "--max-time", "30"]
    listing = subprocess.run(base + [f"pop3s://localhost:{dev.tls_port}/"], capture_output=True, check=True,
                             timeout=60).stdout
    assert len(listing.splitlines()) == 3, listing
    c = dev.poplib_pop3s()
    expected = retr_bytes(c, 1)
    c.quit()
    body = subprocess.run(base + [f"pop3s://localhost:{dev.tls_port}/1"], capture_output=True, check=True,
                          timeout=60).stdout
    assert body == expected, (body, expected)


def test_curl_stls(backend_pop3d, tmp_path):
    dev = backend_pop3d
    out = subprocess.run(["curl", "-sS", "--ssl-reqd", "--cacert", dev.ca, "--netrc-file", netrc(tmp_path, dev),
                          "--max-time", "30", f"pop3://localhost:{dev.plain_port}/"],
                         capture_output=True, check=True, timeout=60).stdout
    assert len(out.splitlines()) == 3, out


def test_curl_rejects_wrong_ca(backend_pop3d, tmp_path):
    dev = backend_pop3d
    r = subprocess.run(["curl", "-sS", "--netrc-file", netrc(tmp_path, dev), "--max-time", "30",
                        f"pop3s://localhost:{dev.tls_port}/"], capture_output=True, timeout=60)
    assert r.returncode != 0, "curl accepted a self-signed certificate without --cacert"


# ---------------------------------------------------------------- openssl s_client

def test_openssl_s_client_implicit_tls_with_alpn(backend_pop3d):
    dev = backend_pop3d
    code, out = s_client(dev.tls_port, dev.ca, ["-servername", "localhost", "-alpn", "pop3"],
                         f"USER demo\r\nPASS {dev.password}\r\nSTAT\r\nQUIT\r\n", quiet=True)
    lines = out.splitlines()
    assert lines[0].startswith("+OK"), out
    assert "+OK Logged in." in lines and any(l.startswith("+OK 3 ") for l in lines), out


def test_openssl_s_client_starttls(backend_pop3d):
    dev = backend_pop3d
    code, out = s_client(dev.plain_port, dev.ca, [], f"USER demo\r\nPASS {dev.password}\r\nSTAT\r\nQUIT\r\n",
                         starttls=True, quiet=True)
    assert "+OK Logged in." in out and "+OK 3 " in out, out


# (s_client flags, accepted?, what is refused) on the TLS port; QUIT is sent after the greeting.
TLS_POLICY = [
    pytest.param(["-tls1"], False, "-tls1 accepted", id="tls1.0-refused"),
    pytest.param(["-tls1_1"], False, "-tls1_1 accepted", id="tls1.1-refused"),
    pytest.param(["-tls1_2", "-cipher", "AES128-SHA"], False, "static-RSA CBC suite accepted",
                 id="tls1.2-static-rsa-cbc-refused"),
    pytest.param(["-tls1_2"], True, None, id="tls1.2-accepted"),
    pytest.param(["-alpn", "http/1.1"], False, "ALPN http/1.1 accepted", id="alpn-http1.1-refused"),
]


@pytest.mark.parametrize("flags, accepted, why", TLS_POLICY)
def test_openssl_tls_policy(backend_pop3d, flags, accepted, why):
    code, out = s_client(backend_pop3d.tls_port, backend_pop3d.ca, flags, "QUIT\r\n", quiet=True)
    if accepted:
        assert out.startswith("+OK"), out
    else:
        assert "+OK" not in out, why


# ---------------------------------------------------------------- maildrop changes and admin commands

def test_dele_quit_relogin(pop3d):
    dev = pop3d
    c = dev.poplib_pop3s()
    _, uidls, _ = c.uidl()
    keep = [u.split()[1] for u in uidls[1:]]
    c.dele(1)
    c.quit()
    c = dev.poplib_pop3s()  # immediately: no [IN-USE]
    _, uidls, _ = c.uidl()
    assert [u.split()[1] for u in uidls] == keep, (uidls, keep)
    c.quit()
    assert len(dev.maildir_files()) == 2


def test_deliver_is_seen_without_restart(pop3d, tmp_path):
    dev = pop3d
    before = len(dev.maildir_files())
    message = b"From: mta@localhost\nSubject: delivered\n\nvia pop3d deliver\n"
    r = dev.pop3d("deliver", "demo", "--config", dev.config, stdin=message)
    assert r.returncode == 0, r.stderr
    c = dev.poplib_pop3s()
    count, _ = c.stat()
    assert count == before + 1, (count, before)
    assert retr_bytes(c, count) == crlf(message)
    c.quit()
    r = dev.pop3d("deliver", "nobody", "--config", dev.config, stdin=message)
    assert r.returncode == EX_NOUSER, (r.returncode, r.stderr)
    r = dev.pop3d("deliver", "demo", "--config", str(tmp_path / "missing.yaml"), stdin=message)
    assert r.returncode == EX_TEMPFAIL, (r.returncode, r.stderr)


def test_user_admin_commands(pop3d):
    dev = pop3d
    r = dev.pop3d("user", "add", "alice", "--config", dev.config, stdin=b"first pass\n")
    assert r.returncode == 0, r.stderr
    assert b"first pass" not in r.stdout + r.stderr
    r = dev.pop3d("user", "add", "alice", "--config", dev.config, stdin=b"x\n")
    assert r.returncode != 0, "adding an existing user must fail"
    dev.poplib_pop3s("alice", "first pass").quit()  # seen without restart; empty maildrop
    r = dev.pop3d("user", "passwd", "alice", "--config", dev.config, stdin=b"second\r\n")
    assert r.returncode == 0, r.stderr
    dev.poplib_pop3s("alice", "second").quit()
    listing = dev.pop3d("user", "list", "--config", dev.config).stdout.decode().split()
    assert listing == ["demo", "alice"] or sorted(listing) == ["alice", "demo"], listing
    assert dev.pop3d("user", "del", "alice", "--config", dev.config).returncode == 0
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        dev.poplib_pop3s("alice", "second")  # a deleted user must not log in


def test_check_config(shared_pop3d, tmp_path):
    dev = shared_pop3d
    r = dev.pop3d("check-config", "--config", dev.config)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "pop3s:" in out and "passwd_file:" in out and dev.password not in out, out
    bad = str(tmp_path / "bad.yaml")
    with open(bad, "w") as f:
        f.write('listen:\n  pop3s: "127.0.0.1:notaport"\ntls:\n  certificate: x\n  key: y\npasswd_file: users\n'
                'maildir: "m/%u"\n')
    r = dev.pop3d("check-config", "--config", bad)
    assert r.returncode != 0 and b"listen.pop3s" in r.stderr, r.stderr
    with open(bad, "w") as f:
        f.write('listen:\n  pop3s: "127.0.0.1:995"\ntls:\n  certificate: x\n  key: y\nmaildir: "m/%u"\n')
    r = dev.pop3d("check-config", "--config", bad)
    assert r.returncode != 0 and b"passwd_file" in r.stderr, r.stderr


@pytest.mark.parametrize("extra, env, key, meant", [
    ("limits:\n  idle_timout: 5\n", {}, b"limits.idle_timout", b"limits.idle_timeout"),
    ("auth:\n  allow_cleartxt: true\n", {}, b"auth.allow_cleartxt", b"auth.allow_cleartext"),
    ("", {"POP3D_LIMITS_IDLE_TIMOUT": "900"}, b"POP3D_LIMITS_IDLE_TIMOUT", b"POP3D_LIMITS_IDLE_TIMEOUT"),
], ids=["yaml-limits", "yaml-auth", "environment"])
def test_check_config_and_serve_refuse_a_misspelt_key(shared_pop3d, tmp_path, extra, env, key, meant):
    """A misspelt key never runs on the defaults: check-config and serve exit 78 (EX_CONFIG), naming the key and the
    one it probably meant; the same file without it passes."""
    dev = shared_pop3d
    with open(dev.config) as f:
        good = f.read()
    config = str(tmp_path / "pop3d.yaml")
    for name in os.listdir(dev.data):  # the relative paths of the dev configuration resolve beside it
        if not os.path.exists(tmp_path / name):
            os.symlink(os.path.join(dev.data, name), tmp_path / name)
    with open(config, "w") as f:
        f.write(good + "\n" + extra)
    for command in ("check-config", "serve"):
        r = subprocess.run([dev.bin, command, "--config", config], capture_output=True, timeout=60,
                           env=dict(os.environ, **env), stdin=subprocess.DEVNULL)
        assert r.returncode == 78, (command, r.returncode, r.stderr)
        assert key in r.stderr and b"did you mean " + meant in r.stderr, (command, r.stderr)
    with open(config, "w") as f:
        f.write(good)
    assert dev.pop3d("check-config", "--config", config).returncode == 0


# ---------------------------------------------------------------- signals

def test_sighup_reloads_certificate_without_dropping_sessions(pop3d):
    dev = pop3d
    before = peer_fingerprint(dev.tls_port)
    session = dev.poplib_pop3s()
    tls_dir = os.path.join(dev.data, "tls")
    make_cert(tls_dir)  # a new certificate and key in place of the dev ones
    dev.signal(signal.SIGHUP)
    after = before
    for _ in range(50):
        time.sleep(0.1)
        after = peer_fingerprint(dev.tls_port)
        if after != before:
            break
    assert after != before, "certificate not reloaded on SIGHUP"
    assert session.stat()[0] >= 1  # the old session is still alive
    session.quit()
    dev.use_ca(os.path.join(tls_dir, "cert.pem"))
    dev.poplib_pop3s().quit()


def test_sigterm_is_graceful(pop3d):
    """SIGTERM: no new connections, a session in progress finishes (its QUIT commits), then exit 0."""
    dev = pop3d
    before = len(dev.maildir_files())
    c = dev.poplib_pop3s()
    c.dele(1)
    dev.signal(signal.SIGTERM)
    refused = False
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", dev.tls_port), timeout=1):
                pass
            time.sleep(0.05)
        except OSError:
            refused = True
            break
    assert refused, "still accepting connections after SIGTERM"
    assert c.stat()[0] == before - 1  # the old session still works
    c.quit()
    assert dev.proc.wait(timeout=30) == 0, f"exit {dev.proc.returncode}"
    assert len(dev.maildir_files()) == before - 1, "QUIT during shutdown did not commit"


# ---------------------------------------------------------------- 1 GiB



def test_one_gigabyte_message_with_bounded_memory(pop3d):
    """deliver streams 1 GiB from stdin; RETR streams it back with backpressure; pop3d's peak RSS stays small."""
    dev = pop3d
    dev.add_user("big", "big-pw")
    line = b"0123456789" * 7 + b"\n"
    block = line * ((1 << 20) // len(line))
    p = subprocess.Popen([dev.bin, "deliver", "big", "--config", dev.config], stdin=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        header = b"Subject: big\n\n"
        p.stdin.write(header)
        written, newlines = len(header), 2
        while written < (1 << 30):
            p.stdin.write(block)
            written += len(block)
            newlines += block.count(b"\n")
        p.stdin.close()
        assert p.wait(timeout=600) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
    c = dev.poplib_pop3s("big", "big-pw")
    count, total = c.stat()
    assert (count, total) == (1, written + newlines), (count, total, written + newlines)
    c.quit()
    baseline = vm_kib(dev.pid, "VmRSS")
    body = stream_retr(dev, "big", "big-pw", 1, timeout=120)[0]
    peak = vm_kib(dev.pid, "VmHWM")
    print(f"1 GiB RETR: {body} octets streamed; pop3d RSS {baseline // 1024} MiB before, peak {peak // 1024} MiB")
    assert body == total, (body, total)
    assert peak < 256 * 1024, f"peak RSS {peak // 1024} MiB: RETR is not streaming"


# ---------------------------------------------------------------- as root: privilege drop and separation

@pytest.fixture
def root_base(request):
    """For the root-only checks: the unprivileged system user `pop3test` (created if missing) and a fresh folder,
    readable by it, holding a localhost certificate (cert.pem, key.pem). Yields (passwd entry, folder)."""
    try:
        entry = pwd.getpwnam("pop3test")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pop3test"],
                       check=True, timeout=60)
        entry = pwd.getpwnam("pop3test")
    base = shared_tmpdir(f"pop3d-{request.node.name[:20]}-")
    make_cert(base)
    yield entry, base
    shutil.rmtree(base, ignore_errors=True)


def root_test_config(base):
    """A serve configuration in `base` (from root_base) that runs as pop3test: (port, path)."""
    port = free_port()
    config = f"{base}/pop3d.yaml"
    with open(config, "w") as f:
        f.write(f'listen:\n  pop3s: "127.0.0.1:{port}"\ntls:\n  certificate: cert.pem\n  key: key.pem\n'
                f'passwd_file: users\nmaildir: "mail/%u"\nuser: pop3test\n')
    return port, config


@pytest.mark.root
def test_privilege_drop(pop3d_bin, root_base):
    """pop3d serve started as root drops to the configured user after binding; deliver as root writes as that user;
    without `user:` (and no shared uid in the passwd-file) serve refuses to run as root."""
    entry, base = root_base
    with open(f"{base}/users", "w") as f:
        f.write("alice:{PLAIN}alice-pw\n")
    os.makedirs(f"{base}/mail")
    for path in (f"{base}/users", f"{base}/key.pem", f"{base}/cert.pem", f"{base}/mail"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    port, config = root_test_config(base)
    r = subprocess.run([pop3d_bin, "deliver", "alice", "--config", config], input=b"Subject: root\n\nhi\n",
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    new = f"{base}/mail/alice/new"
    owners = {os.stat(os.path.join(new, n)).st_uid for n in os.listdir(new)}
    assert owners == {entry.pw_uid}, f"delivered files owned by {owners}, not pop3test"
    proc = subprocess.Popen([pop3d_bin, "serve", "--config", config], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        # The port is bound (and connectable) a moment before the drop: poll.
        for _ in range(100):
            with open(f"/proc/{proc.pid}/status") as f:
                ids = [l for l in f if l.startswith(("Uid:", "Gid:"))]
            if ids and ids[0].split()[1] != "0":
                break
            time.sleep(0.05)
        assert all(set(l.split()[1:]) == {str(entry.pw_uid if l.startswith("Uid") else entry.pw_gid)} for l in ids), ids
        c = poplib.POP3_SSL("localhost", port, context=ssl.create_default_context(cafile=f"{base}/cert.pem"),
                            timeout=30)
        c.user("alice")
        c.pass_("alice-pw")
        assert c.stat()[0] == 1
        assert b"hi" in b"".join(c.retr(1)[1])
        c.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    # Without user: and without a shared uid in the passwd-file, serve refuses to run as root.
    with open(config, "w") as f:
        f.write(f'listen:\n  pop3s: "127.0.0.1:{free_port()}"\ntls:\n  certificate: cert.pem\n  key: key.pem\n'
                f'passwd_file: users\nmaildir: "mail/%u"\n')
    r = subprocess.run([pop3d_bin, "serve", "--config", config], capture_output=True, timeout=60)
    assert r.returncode != 0 and b"user:" in r.stderr, (r.returncode, r.stderr[-400:])


def process_table():
    """pid -> (ppid, uid, gid, argv) of every running process whose argv[0] is a pop3d."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{name}/status") as f:
                status = dict(l.split(":", 1) for l in f if ":" in l)
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"pop3d"):
            continue
        found[int(name)] = (int(status["PPid"]), int(status["Uid"].split()[1]), int(status["Gid"].split()[1]),
                            [a.decode(errors="replace") for a in argv if a])
    return found


@pytest.mark.root
def test_privilege_separation(pop3d_bin, root_base):
    """Mail files accessed with each account's uid/gid: pop3d (as `user:`) asks its root helper for a mail worker
    running as the account; a uid below first_valid_uid is refused; a killed worker costs one session, no mail.

    Only processes of this server are looked at (its helper and the helper's children), so pop3d instances of other
    tests running at the same time do not count."""
    entry, base = root_base
    with open(f"{base}/users", "w") as f:
        f.write("alice:{PLAIN}alice-pw:2001:2001\nbob:{PLAIN}bob-pw:2002:2002\nsys:{PLAIN}sys-pw:100:100\n"
                "vm:{PLAIN}vm-pw\n")
    os.makedirs(f"{base}/mail", mode=0o755)
    owners = {"alice": (2001, 2001), "bob": (2002, 2002), "sys": (100, 100), "vm": (entry.pw_uid, entry.pw_gid)}
    for user, (uid, gid) in owners.items():
        os.makedirs(f"{base}/mail/{user}", mode=0o700)
        os.chown(f"{base}/mail/{user}", uid, gid)
    # The passwd-file stays root's (the helper refuses one pop3d could change); pop3d only reads it.
    os.chmod(f"{base}/users", 0o644)
    for path in (f"{base}/key.pem", f"{base}/cert.pem"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    port, config = root_test_config(base)
    for user, body in (("alice", b"first"), ("alice", b"second"), ("bob", b"bob's"), ("vm", b"vm's")):
        r = subprocess.run([pop3d_bin, "deliver", user, "--config", config], input=b"Subject: t\n\n" + body + b"\n",
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
    # The server's own user cannot even list alice's Maildir: only a process running as alice can serve it.
    r = subprocess.run(["ls", f"{base}/mail/alice/new"], user=entry.pw_uid, group=entry.pw_gid, capture_output=True,
                       timeout=30)
    assert r.returncode != 0, "the test Maildir must be private to its account"
    ctx = ssl.create_default_context(cafile=f"{base}/cert.pem")
    seen = set()  # every helper and worker PID of this server

    def login(user, password):
        c = poplib.POP3_SSL("localhost", port, context=ctx, timeout=30)
        c.user(user)
        c.pass_(password)
        return c

    def workers():
        running = {pid: info for pid, info in process_table().items()
                   if info[0] == helper and "mail-worker" in info[3]}
        seen.update(running)
        return running

    def until_no_workers():
        for _ in range(100):
            if not workers():
                return
            time.sleep(0.05)

    def refused(user, password, code, why):
        """PASS must fail with `code`, and no worker may be left running."""
        c = poplib.POP3_SSL("localhost", port, context=ctx, timeout=30)
        c.user(user)
        with pytest.raises(poplib.error_proto) as e:
            c.pass_(password)
            pytest.fail(why)
        assert code in e.value.args[0], e.value
        assert not workers()

    log_path = f"{base}/pop3d.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([pop3d_bin, "serve", "--config", config], stdout=log, stderr=log)
    helper = None
    try:
        wait_port(port, proc)
        for _ in range(100):
            tree = process_table()
            if tree.get(proc.pid, (0, 0))[1] == entry.pw_uid:
                break
            time.sleep(0.05)
        helpers = [pid for pid, info in tree.items() if info[0] == proc.pid and "privsep" in info[3]]
        seen.update(helpers)
        assert tree[proc.pid][1:3] == (entry.pw_uid, entry.pw_gid), tree
        assert len(helpers) == 1 and tree[helpers[0]][1] == 0, tree
        helper = helpers[0]

        c = login("alice", "alice-pw")
        assert c.stat()[0] == 2
        running = workers()
        assert [info[:3] for info in running.values()] == [(helper, 2001, 2001)], running
        assert b"first" in b"".join(c.retr(1)[1])
        c.dele(1)
        c.quit()
        assert len(os.listdir(f"{base}/mail/alice/new")) + len(os.listdir(f"{base}/mail/alice/cur")) == 1
        assert os.stat(f"{base}/mail/alice/dovecot-uidlist").st_uid == 2001
        until_no_workers()
        assert not workers(), "the worker outlived its session"

        # Below first_valid_uid (500): refused for good, and no worker started.
        refused("sys", "sys-pw", b"[SYS/PERM]", "sys (uid 100) logged in")

        # An account without a uid in the passwd-file is served by pop3d itself, as `user:`.
        c = login("vm", "vm-pw")
        assert c.stat()[0] == 1 and not workers()
        c.quit()

        # A worker killed mid-session: the session gets -ERR, nothing is lost, the next session works.
        c = login("bob", "bob-pw")
        c.dele(1)
        (victim,) = workers()
        os.kill(victim, signal.SIGKILL)
        try:
            c.retr(1)
        except poplib.error_proto:
            pass
        with pytest.raises(poplib.error_proto) as e:
            c.quit()
            pytest.fail("QUIT answered +OK though its commit could not run")
        assert e.value.args[0].startswith(b"-ERR [SYS/TEMP]"), e.value  # "some or none" removed (RFC 1939 §6)
        c = login("bob", "bob-pw")
        assert b"bob's" in b"".join(c.retr(1)[1])
        # A connection dropped without QUIT deletes nothing and frees the maildrop.
        c.dele(1)
        c.file.close()
        c.sock.close()
        until_no_workers()
        c = login("bob", "bob-pw")
        assert c.stat()[0] == 1
        c.quit()

        # A passwd-file that pop3d's own user could change is not trusted to name identities: no worker.
        os.chown(f"{base}/users", entry.pw_uid, entry.pw_gid)
        try:
            refused("bob", "bob-pw", b"[SYS/TEMP]", "a worker was started from a passwd-file pop3d can write")
        finally:
            os.chown(f"{base}/users", 0, 0)
        with open(log_path, "rb") as f:
            assert b"must belong to root" in f.read(), "the refusal is not explained in the log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=30)
    assert code == 0, f"exit {code}"
    if helper is not None:
        seen.update(pid for pid, info in process_table().items() if info[0] == helper)
    left = []
    for _ in range(100):
        table = process_table()
        left = [pid for pid in seen if pid in table and table[pid][3][1:2] in (["privsep"], ["mail-worker"])]
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"helper or workers outlived pop3d: {left}"


@pytest.mark.root
def test_lmtp_writes_each_copy_as_its_account(pop3d_bin, root_base):
    """LMTP under privilege separation: pop3d serve (root → pop3test) owns its Unix socket; a copy for an account
    with its own uid is written by a mail worker as that uid, one without as pop3test, never as root; an account
    below first_valid_uid gets 451 and nothing is stored."""
    from pop3support import LMTPClient, lmtp_stuffed as stuffed
    entry, base = root_base
    with open(f"{base}/users", "w") as f:
        f.write("alice:{PLAIN}alice-pw:2001:2001\nsys:{PLAIN}sys-pw:100:100\nvm:{PLAIN}vm-pw\n")
    os.chmod(f"{base}/users", 0o644)
    os.makedirs(f"{base}/mail", mode=0o755)
    os.chown(f"{base}/mail", entry.pw_uid, entry.pw_gid)
    for user, (uid, gid) in {"alice": (2001, 2001), "sys": (100, 100)}.items():
        os.makedirs(f"{base}/mail/{user}", mode=0o700)
        os.chown(f"{base}/mail/{user}", uid, gid)
    for path in (f"{base}/key.pem", f"{base}/cert.pem"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    port, config = root_test_config(base)
    lmtp_port = free_port()
    with open(config) as f:
        text = f.read()
    text = text.replace("listen:\n", f'listen:\n  lmtp: ["unix:lmtp.sock", "127.0.0.1:{lmtp_port}"]\n', 1)
    with open(config, "w") as f:
        f.write(text + 'lmtp:\n  socket_mode: "0660"\n')
    log_path = f"{base}/pop3d.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([pop3d_bin, "serve", "--config", config], stdout=log, stderr=log)
    try:
        wait_port(lmtp_port, proc, log_path=log_path)
        sock = f"{base}/lmtp.sock"
        # The ports are bound (and connectable) a moment before the socket is given away and root dropped: poll.
        for _ in range(100):
            st = os.stat(sock)
            if st.st_uid == entry.pw_uid:
                break
            time.sleep(0.05)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (entry.pw_uid, entry.pw_gid, 0o660), st
        for address in (sock, ("127.0.0.1", lmtp_port)):
            c = LMTPClient(address)
            assert c.command("LHLO t")[0] == 250
            assert c.command("MAIL FROM:<s@x.test>")[0] == 250
            assert [c.command(f"RCPT TO:<{u}@x.test>")[0] for u in ("alice", "vm", "sys")] == [250, 250, 250]
            assert c.command("DATA")[0] == 354
            c.send(stuffed(b"Subject: privsep\r\n\r\nhello\r\n"))
            replies = [c.reply() for _ in range(3)]
            assert [r[0] for r in replies] == [250, 250, 451], (replies, open(log_path, errors="replace").read()[-1500:])
            c.close()
        owners = {}
        for user in ("alice", "vm", "sys"):
            new = f"{base}/mail/{user}/new"
            owners[user] = sorted(os.stat(os.path.join(new, n)).st_uid for n in os.listdir(new)) if os.path.isdir(new) else []
        assert owners == {"alice": [2001, 2001], "vm": [entry.pw_uid] * 2, "sys": []}, owners
    finally:
        stop_process(proc, grace=30)


@pytest.mark.root
def test_expire_state_belongs_to_the_run_as_user(pop3d_bin, root_base):
    """EXPIRE under `pop3d serve` as root: the first-retrieval log's folder is created before the drop and given to
    the run-as user, so a session can record retrievals and EXPIRE 0 works."""
    entry, base = root_base
    with open(f"{base}/users", "w") as f:
        f.write("vm:{PLAIN}vm-pw\n")
    os.makedirs(f"{base}/mail", mode=0o755)
    os.chown(f"{base}/mail", entry.pw_uid, entry.pw_gid)
    for path in (f"{base}/key.pem", f"{base}/cert.pem", f"{base}/users"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    port, config = root_test_config(base)
    with open(config, "a") as f:
        f.write("policy:\n  expire_days: 0\n")
    for body in (b"one", b"two"):
        r = subprocess.run([pop3d_bin, "deliver", "vm", "--config", config], input=b"Subject: e\n\n" + body + b"\n",
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
    log_path = f"{base}/pop3d.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([pop3d_bin, "serve", "--config", config], stdout=log, stderr=log)
    try:
        wait_port(port, proc, log_path=log_path)
        ctx = ssl.create_default_context(cafile=f"{base}/cert.pem")
        for expected in (2, 1):
            for _ in range(100):  # the port answers a moment before the drop
                if os.path.isdir(f"{base}/state/retrieved"):
                    break
                time.sleep(0.05)
            for _ in range(50):  # the dropped session before unlocks asynchronously: [IN-USE] is retried
                c = poplib.POP3_SSL("localhost", port, context=ctx, timeout=30)
                c.user("vm")
                try:
                    c.pass_("vm-pw")
                    break
                except poplib.error_proto as e:
                    assert b"[IN-USE]" in e.args[0], e
                    c.close()
                    time.sleep(0.1)
            assert c.stat()[0] == expected
            c.retr(1)
            c.close()  # dropped without QUIT: recorded, removed at the next login
        st = os.stat(f"{base}/state/retrieved")
        assert (st.st_uid, st.st_mode & 0o777) == (entry.pw_uid, 0o700), st
        # The last (dropped) session writes its record as it notices the drop: wait for the atomic replace.
        for _ in range(100):
            files = os.listdir(f"{base}/state/retrieved")
            if len(files) == 1:
                break
            time.sleep(0.05)
        assert len(files) == 1 and not files[0].endswith(".tmp"), files
    finally:
        stop_process(proc, grace=30)
