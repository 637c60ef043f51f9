"""The Debian package (issue 16): scripts/package builds it from the binaries under test; it installs with
`apt-get install ./pop3d_….deb`, creates the pop3d user and folders, starts nothing without a certificate,
`pop3d check-config` passes on the shipped file once a certificate is in place, and `apt-get purge` removes the
configuration but keeps the mail. Root only (it installs into this machine's /usr, /etc and /var/lib); everything it
installs is purged again."""
import json
import os
import pwd
import shutil
import subprocess

import pytest

from pop3support import free_port, make_cert, stop_process, wait_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=600, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.root
def test_package_installs_checks_and_purges_keeping_mail(bin_dir, tmp_path):
    if run("dpkg-query", "-W", "-f=${Status}", "pop3d").stdout.startswith("install ok"):
        pytest.fail("a pop3d package is already installed here; this test would replace it")
    r = run(os.path.join(REPO, "scripts", "package"), "--bin-dir", bin_dir, "--out", str(tmp_path), "--fast")
    assert r.returncode == 0, r.stderr
    deb = r.stdout.strip().splitlines()[-1]
    assert deb.endswith(".deb") and os.path.exists(deb), r.stdout
    contents = run("dpkg-deb", "--contents", deb).stdout
    for path in ("./usr/bin/pop3d", "./usr/bin/pop3", "./lib/systemd/system/pop3d.service", "./etc/pop3d/pop3d.yaml",
                 "./usr/share/man/man8/pop3d.8.gz", "./usr/share/man/man5/pop3d.yaml.5.gz"):
        assert path in contents, path
    assert run("dpkg-deb", "--info", deb, "conffiles").stdout.strip() == "/etc/pop3d/pop3d.yaml"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    mail_file = None
    try:
        r = run("apt-get", "install", "-y", "--no-install-recommends", deb, env=env)
        assert r.returncode == 0, r.stdout[-800:] + r.stderr[-800:]
        assert "not started: put a certificate" in r.stdout + r.stderr, r.stdout[-400:]
        user = pwd.getpwnam("pop3d")
        assert os.stat("/var/lib/pop3d/mail").st_uid == user.pw_uid
        # Without a certificate the shipped configuration is refused, naming the key.
        r = run("/usr/bin/pop3d", "check-config", "--config", "/etc/pop3d/pop3d.yaml")
        assert r.returncode == 78 and "tls.certificate" in r.stderr, r.stderr
        cert, key = make_cert(str(tmp_path), dns=("localhost",))
        shutil.copy(cert, "/etc/pop3d/tls/cert.pem")
        shutil.copy(key, "/etc/pop3d/tls/key.pem")
        r = run("/usr/bin/pop3d", "check-config", "--config", "/etc/pop3d/pop3d.yaml")
        assert r.returncode == 0, r.stderr
        r = run("/usr/bin/pop3d", "user", "add", "pkguser", "--config", "/etc/pop3d/pop3d.yaml", input="pkg-password\n")
        assert r.returncode == 0, r.stderr
        r = run("/usr/bin/pop3d", "deliver", "pkguser", "--config", "/etc/pop3d/pop3d.yaml",
                input="Subject: kept\n\nthis survives apt-get purge\n")
        assert r.returncode == 0, r.stderr
        new = "/var/lib/pop3d/mail/pkguser/new"
        (name,) = os.listdir(new)
        mail_file = os.path.join(new, name)
        # The installed server, as the unit runs it (root, then the pop3d user), on a loopback port instead of 995
        # (only loopback traffic here): pop3d doctor passes every loopback check; the rest WARN, each explained.
        port = free_port()
        serve_env = dict(os.environ, POP3D_LISTEN_POP3S=f"127.0.0.1:{port}")
        log = open(tmp_path / "serve.log", "w")
        server = subprocess.Popen(["/usr/bin/pop3d", "serve", "--config", "/etc/pop3d/pop3d.yaml"], stdout=log,
                                  stderr=subprocess.STDOUT, env=serve_env)
        try:
            wait_port(port, server, 60, log_path=str(tmp_path / "serve.log"))
            r = run("/usr/bin/pop3d", "doctor", "--config", "/etc/pop3d/pop3d.yaml", "--host", "localhost", "--json",
                    env=serve_env)
            findings = json.loads(r.stdout)
            failed = [f for f in findings if f["status"] == "FAIL"]
            assert r.returncode == 0 and not failed, failed
            for step in ("cleartext login", "certificate", "certificate name", "reachability", "privileges", "mail folder",
                         "passwd-file", "delivery"):
                assert {f["status"] for f in findings if f["step"] == step} == {"PASS"}, (step, findings)
            assert all(f["message"] for f in findings if f["status"] == "WARN"), findings
            r = run("/usr/bin/pop3d", "who", "--config", "/etc/pop3d/pop3d.yaml", env=serve_env)
            assert r.returncode == 0, r.stderr
        finally:
            stop_process(server, grace=40)
            log.close()
    finally:
        r = run("apt-get", "purge", "-y", "pop3d", env=env)
    assert r.returncode == 0, r.stderr[-600:]
    assert not os.path.exists("/usr/bin/pop3d") and not os.path.exists("/etc/pop3d/pop3d.yaml")
    assert mail_file and open(mail_file).read().endswith("this survives apt-get purge\n"), "purge lost mail"
    shutil.rmtree("/var/lib/pop3d", ignore_errors=True)
    shutil.rmtree("/etc/pop3d", ignore_errors=True)
    shutil.rmtree("/run/pop3d", ignore_errors=True)
