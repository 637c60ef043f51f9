"""`pop3d import`: moving a user in from another POP3 server without re-downloads (issue 11). Against pop3d
itself (with kill -9 in the middle and a resume) and against Dovecot 2.3 with a UIDL format unlike ours."""
import os
import signal
import subprocess
import time

import pytest

from pop3support import Dovecot, Pop3dDev, make_message, shared_tmpdir, write_secret


def import_cmd(target, source_url, local_user, password_file, ca, *extra):
    return [target.bin, "import", source_url, "--user", local_user, "--password-file", password_file,
            "--config", target.config, "--ca-file", ca, *extra]


def listing(server, user, password):
    c = server.session().login(user, password)
    uidl, sizes = c.uidl(), c.list()
    c.quit()
    return [(uidl[n], sizes[n]) for n in sorted(uidl)]


@pytest.fixture
def two_servers(pop3d_bin, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source, target = Pop3dDev(pop3d_bin, tmp_path / "a"), Pop3dDev(pop3d_bin, tmp_path / "b")
    source.start()
    target.start()
    target.add_user("newbie", "newbie-pw")
    yield source, target
    source.stop()
    target.stop()


def test_import_keeps_every_uidl_and_resumes_after_kill9_without_copies(two_servers, tmp_path):
    source, target = two_servers
    source.seed("demo", [make_message("import", i, 20_000)[1] for i in range(300)])
    before = listing(source, "demo", source.password)
    assert len(before) == 303
    password_file = str(tmp_path / "pw")
    write_secret(password_file, source.password)
    cmd = import_cmd(target, f"pop3s://demo@localhost:{source.tls_port}", "newbie", password_file, source.ca)
    # kill -9 once some messages are stored.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    new = os.path.join(target.maildir("newbie"), "new")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(new) and len(os.listdir(new)) >= 40:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    stored_at_kill = len(os.listdir(new))
    assert proc.returncode == -signal.SIGKILL, f"the import finished before it could be killed ({stored_at_kill} stored)"
    r = subprocess.run(cmd + ["--verify"], capture_output=True, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, (r.returncode, out, r.stderr.decode()[-500:])
    assert "verify: the listings match" in out, out
    after = listing(target, "newbie", "newbie-pw")
    assert after == before, "pop3d does not serve the same UIDLs and sizes, in the same order, as the old server"
    assert len(target.maildir_files("newbie")) == 303, "a message was copied twice"
    assert listing(source, "demo", source.password) == before, "the remote was changed"
    # Running it again copies nothing; a later delivery keeps the imported UIDLs and is seen by --verify.
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    assert r.returncode == 0 and b"imported 0 messages" in r.stdout, r.stdout
    rc, err = target.deliver("newbie", b"Subject: later\n\nnew mail\n")
    assert rc == 0, err
    assert listing(target, "newbie", "newbie-pw")[:303] == before
    r = subprocess.run(cmd + ["--verify"], capture_output=True, timeout=120)
    assert r.returncode == 1 and b"verify: only here:" in r.stdout and b"1 differences" in r.stdout, r.stdout
    print(f"killed after {stored_at_kill} stored; resumed and verified 303 messages")


def test_import_refuses_a_wrong_password_and_an_unknown_local_user(two_servers, tmp_path):
    source, target = two_servers
    password_file = str(tmp_path / "pw")
    write_secret(password_file, "wrong")
    cmd = import_cmd(target, f"pop3s://demo@localhost:{source.tls_port}", "newbie", password_file, source.ca)
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    assert r.returncode == 75 and b"login failed" in r.stderr, (r.returncode, r.stderr)
    r = subprocess.run(import_cmd(target, f"pop3s://demo@localhost:{source.tls_port}", "ghost", password_file,
                                  source.ca), capture_output=True, timeout=60)
    assert r.returncode == 67 and b"unknown user" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.root
@pytest.mark.dovecot
@pytest.mark.parametrize("uidl_format", ["%g", "%f"])
def test_import_from_dovecot_with_a_foreign_uidl_format(pop3d_bin, tmp_path, uidl_format):
    """Dovecot 2.3 as the old server, with pop3_uidl_format %g (the message GUID) or %f (the file name): after
    the import pop3d serves exactly Dovecot's UIDLs and sizes, and --verify reports no difference."""
    dove = Dovecot(shared_tmpdir("pop3-import-dovecot-"))
    dove.start({"olduser": "old-password"}, uidl_format=uidl_format)
    try:
        dove.seed("olduser", [make_message("dove", i, 3_000)[1] for i in range(25)])
        c = dove.poplib_pop3s("olduser", "old-password")
        old = [tuple(line.split()[1:]) for line in c.uidl()[1]]
        sizes = [int(line.split()[1]) for line in c.list()[1]]
        c.quit()
        assert len(old) == 25
        target = Pop3dDev(pop3d_bin, tmp_path)
        target.start()
        try:
            target.add_user("moved", "moved-pw")
            password_file = str(tmp_path / "pw")
            write_secret(password_file, "old-password")
            r = subprocess.run(import_cmd(target, f"pop3s://olduser@localhost:{dove.tls_port}", "moved", password_file,
                                          dove.ca, "--verify"), capture_output=True, timeout=300)
            assert r.returncode == 0 and b"the listings match" in r.stdout, (r.returncode, r.stdout, r.stderr)
            served = listing(target, "moved", "moved-pw")
            assert served == [(uid[0].decode(), size) for uid, size in zip(old, sizes)], (served[:3], old[:3])
        finally:
            target.stop()
    finally:
        dove.stop()
