"""SASL beyond PLAIN (issue 12): SCRAM-SHA-256(-PLUS) and SCRAM-SHA-1 on pop3d and in pop3, against peers that are
not ours: an independent SCRAM client (pop3support.scram_login, hashlib/hmac), mpop 1.4 (GNU SASL) and Dovecot 2.3
with hashes made by `doveadm pw`; plus the hash schemes admins bring from Dovecot.

Every failed SCRAM exchange must look like a wrong password: the same reply, the server-first message for unknown
users too (with a salt that does not change between attempts), and the auth penalty. Failing tests use their own
loopback source address, as the penalty is per client address.

The checks of pop3d run once per storage backend (`backend_pop3d`, `backend_pop3d_each`, `backend_pop3d_factory`:
Maildir with the passwd-file, and PostgreSQL with the accounts and the demo maildrop migrated in, so SCRAM keys,
unknown users' dummy keys and the penalty come from the database); the ones about the passwd-file's format and the
configuration stay on Maildir.
"""
import base64
import concurrent.futures
import os
import shutil
import subprocess

import pytest

from pop3support import (Dovecot, POP3Session, Pop3dDev, doveadm_pw, make_message, scram_login, shared_tmpdir,
                         write_secret)

AUTH_FAILED = b"-ERR [AUTH] Authentication failed."
MECHANISMS = "SASL PLAIN SCRAM-SHA-256-PLUS SCRAM-SHA-256"


def capa(session):
    session.ok("CAPA")
    return [line.decode() for line in session.lines()]


def users_file(dev):
    return os.path.join(dev.data, "users")


def append_user(dev, line):
    with open(users_file(dev), "a") as f:
        f.write(line + "\n")


def test_capa_announces_the_mechanisms_in_order(backend_pop3d):
    """TLS: PLAIN, SCRAM-SHA-256-PLUS, SCRAM-SHA-256 (the default auth.mechanisms); the plaintext port before STLS
    announces no SASL at all; after STLS the -PLUS one is there too (it binds to the STLS session)."""
    tls = POP3Session(backend_pop3d)
    assert MECHANISMS in capa(tls)
    tls.ok("QUIT")
    plain = POP3Session(backend_pop3d, mode="plain")
    assert not [line for line in capa(plain) if line.startswith("SASL")]
    plain.ok("QUIT")
    stls = POP3Session(backend_pop3d, mode="stls")
    assert MECHANISMS in capa(stls)
    stls.ok("QUIT")


@pytest.mark.parametrize("mechanism,mode,initial", [
    ("SCRAM-SHA-256", "tls", True),
    ("SCRAM-SHA-256", "tls", False),
    ("SCRAM-SHA-256-PLUS", "tls", True),
    ("SCRAM-SHA-256-PLUS", "stls", False),
    ("SCRAM-SHA-256", "stls", True),
])
def test_scram_login_with_an_independent_client(backend_pop3d, mechanism, mode, initial):
    """The demo account (stored as {SCRAM-SHA-256}) logs in with a SCRAM client that is not ours, with and without
    an initial response, over implicit TLS and after STLS; the server proves itself with its signature."""
    s = POP3Session(backend_pop3d, mode=mode)
    reply, attrs = scram_login(s, "demo", backend_pop3d.password, mechanism, initial=initial)
    assert reply == b"+OK Logged in.", reply
    assert int(attrs["i"]) >= 4096
    assert s.stat()[0] == 3
    s.ok("QUIT")


@pytest.mark.parametrize("case,source,mechanism,kwargs", [
    ("plus-binding-of-another-certificate", "127.0.0.21", "SCRAM-SHA-256-PLUS", {"cb_data": b"\0" * 32}),
    ("plus-tls-exporter-not-offered", "127.0.0.22", "SCRAM-SHA-256-PLUS", {"gs2": "p=tls-exporter,,", "cb_data": b"x" * 32}),
    ("y-flag-while-plus-is-offered", "127.0.0.23", "SCRAM-SHA-256", {"gs2": "y,,"}),
    ("p-flag-on-the-plain-mechanism", "127.0.0.24", "SCRAM-SHA-256", {"gs2": "p=tls-server-end-point,,"}),
    ("authzid-of-someone-else", "127.0.0.25", "SCRAM-SHA-256", {"gs2": "n,a=root,"}),
])
def test_scram_binding_and_downgrade_failures_look_like_a_wrong_password(backend_pop3d, case, source, mechanism,
                                                                         kwargs):
    """A -PLUS binding to another channel (a TLS-terminating man in the middle), a binding type the server does not
    offer, the "y" flag while -PLUS is offered (someone removed it from CAPA), a p= flag on the plain mechanism,
    an authorisation identity of someone else: all answered as a wrong password, with the right password."""
    s = POP3Session(backend_pop3d, source=source)
    reply, _ = scram_login(s, "demo", backend_pop3d.password, mechanism, **kwargs)
    assert reply == AUTH_FAILED, (case, reply)
    s.ok("QUIT")


def test_scram_plus_without_tls_fails_like_a_wrong_password(backend_pop3d_factory):
    """With cleartext auth allowed, a -PLUS exchange on the plaintext port (no channel to bind to) is answered like
    a wrong password; the plain SCRAM mechanism works there, and -PLUS is not announced."""
    dev = backend_pop3d_factory(extra_config="auth:\n  allow_cleartext: true\n")
    s = POP3Session(dev, mode="plain", source="127.0.0.26")
    assert "SASL PLAIN SCRAM-SHA-256" in capa(s)
    reply, _ = scram_login(s, "demo", dev.password, "SCRAM-SHA-256-PLUS", gs2="p=tls-server-end-point,,",
                           cb_data=b"\0" * 32)
    assert reply == AUTH_FAILED, reply
    s.ok("QUIT")
    ok = POP3Session(dev, mode="plain", source="127.0.0.27")
    assert scram_login(ok, "demo", dev.password, "SCRAM-SHA-256")[0] == b"+OK Logged in."
    ok.ok("QUIT")


def test_unknown_users_and_non_scram_hashes_fail_like_a_wrong_password(backend_pop3d_each):
    """demo with a wrong password, an unknown user, and bob whose hash (SHA512-CRYPT) cannot do SCRAM: each gets a
    server-first message (an unknown user's salt is the same on every attempt, like a real one's), then the same
    reply after the proof. bob still logs in with PLAIN and USER/PASS."""
    dev = backend_pop3d_each
    dev.add_user("bob", "bob-secret", scheme="SHA512-CRYPT")

    def attempt(index, user, password):
        s = POP3Session(dev, source=f"127.0.0.{30 + index}")  # each from its own address: no penalty wait
        reply, attrs = scram_login(s, user, password)
        assert reply == AUTH_FAILED, (user, reply)
        assert attrs is not None and int(attrs["i"]) == 4096, (user, attrs)
        s.ok("QUIT")
        return user, attrs["s"]
    attempts = [("demo", "wrong"), ("ghost", "x"), ("ghost", "y"), ("bob", "bob-secret")]
    with concurrent.futures.ThreadPoolExecutor(len(attempts)) as pool:  # each failure waits auth.failure_delay
        results = list(pool.map(attempt, range(len(attempts)), *zip(*attempts)))
    salts = {}
    for user, salt in results:
        salts.setdefault(user, set()).add(salt)
    assert len(salts["ghost"]) == 1, salts
    assert dev.poplib_pop3s("bob").stat()[0] == 0
    assert "login failed" in dev.log_text() and "bob-secret" not in dev.log_text()


# Maildir only: the passwd-file's lines and doveadm hashes pasted into it (database accounts with every scheme:
# test_postgres.py, test_accounts_in_the_database_log_in_with_every_scheme).
def test_scram_hashes_from_user_add_and_doveadm(pop3d_bin, tmp_path):
    """`pop3d user add --scheme SCRAM-SHA-256` writes Dovecot's format with auth.scram_iterations; `doveadm pw`
    hashes pasted into the passwd-file work as they are: SCRAM-SHA-256 for SCRAM and USER/PASS, and the schemes
    SCRAM cannot use (ARGON2ID, PBKDF2, SSHA512) for USER/PASS. User names may be e-mail addresses."""
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config="auth:\n  scram_iterations: 8192\n").start()
    try:
        r = dev.pop3d("user", "add", "carol@example.com", "--scheme", "SCRAM-SHA-256", "--config", dev.config,
                      stdin="carol-pw\n")
        assert r.returncode == 0, r.stderr
        with open(users_file(dev)) as f:
            line = next(l for l in f if l.startswith("carol@example.com:"))
        assert line.startswith("carol@example.com:{SCRAM-SHA-256}8192,"), line
        s = POP3Session(dev)
        reply, attrs = scram_login(s, "carol@example.com", "carol-pw", "SCRAM-SHA-256-PLUS")
        assert reply == b"+OK Logged in." and attrs["i"] == "8192", (reply, attrs)
        s.ok("QUIT")

        passwords = {"dave": "dave pw", "erin": "erin-pw", "frank": "frank-pw", "gina": "gina-pw"}
        append_user(dev, f"dave:{doveadm_pw('SCRAM-SHA-256', passwords['dave'])}")
        append_user(dev, f"erin:{doveadm_pw('ARGON2ID', passwords['erin'])}")
        append_user(dev, f"frank:{doveadm_pw('PBKDF2', passwords['frank'])}")
        append_user(dev, f"gina:{doveadm_pw('SSHA512', passwords['gina'])}")
        dev.passwords.update(passwords)
        s = POP3Session(dev)
        assert scram_login(s, "dave", passwords["dave"])[0] == b"+OK Logged in."
        s.ok("QUIT")
        for user in passwords:
            assert dev.poplib_pop3s(user).stat()[0] == 0, user
        check = dev.pop3d("check-config", "--config", dev.config).stdout.decode()
        assert "scram_iterations: 8192" in check and 'mechanisms: ["PLAIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]' in check
    finally:
        dev.stop()


# Maildir only: configuration checks, and an account pasted into the passwd-file.
def test_mechanisms_are_configurable(pop3d_bin, tmp_path):
    """auth.mechanisms: SCRAM-SHA-1 only when listed (in the order given); an unknown name, and the OAuth ones
    (auth.oauth2 is not implemented yet), are configuration errors that name the key."""
    dev = Pop3dDev(pop3d_bin, tmp_path)
    default = dev.start()
    s = POP3Session(default)
    assert s.command("AUTH SCRAM-SHA-1") == b"-ERR Unsupported authentication mechanism."
    s.ok("QUIT")
    dev.stop()
    dev.configure("auth:\n  mechanisms: [SCRAM-SHA-256, SCRAM-SHA-1]\n")
    dev.start()
    try:
        append_user(dev, f"hank:{doveadm_pw('SCRAM-SHA-1', 'hank-pw')}")
        s = POP3Session(dev)
        assert "SASL SCRAM-SHA-256 SCRAM-SHA-1" in capa(s)
        assert scram_login(s, "hank", "hank-pw", "SCRAM-SHA-1")[0] == b"+OK Logged in."
        s.ok("QUIT")
    finally:
        dev.stop()
    for value, needle in [("[PLAIN, SCRAM-SHA-512]", "unknown mechanism"), ("[OAUTHBEARER]", "auth.oauth2")]:
        config = os.path.join(str(tmp_path), "bad.yaml")
        with open(dev.config) as f:
            text = f.read().replace("auth:\n  mechanisms: [SCRAM-SHA-256, SCRAM-SHA-1]\n", "")
        with open(config, "w") as f:
            f.write(text + f"auth:\n  mechanisms: {value}\n")
        r = dev.pop3d("check-config", "--config", config)
        err = r.stderr.decode() + r.stdout.decode()
        assert r.returncode != 0 and "auth.mechanisms" in err and needle in err, err


def mpop_rc(folder, server, user, password_file, maildir, auth):
    rc = os.path.join(folder, f"mpoprc-{auth}")
    with open(rc, "w") as f:
        f.write(f"""account test
host 127.0.0.1
port {server.tls_port}
tls on
tls_starttls off
tls_trust_file {server.ca}
tls_host_override localhost
user {user}
auth {auth}
passwordeval cat {password_file}
keep on
uidls_file {folder}/uidls-{auth}
delivery maildir {maildir}
""")
    os.chmod(rc, 0o600)
    return rc


@pytest.mark.parametrize("auth", ["scram-sha-256", "plain"])
def test_mpop_logs_in_with_scram(backend_pop3d_each, tmp_path, auth):
    """mpop 1.4 (GNU SASL) with `auth scram-sha-256` retrieves the demo maildrop; with a wrong password it fails
    and pop3d logs the failure (never the password)."""
    if shutil.which("mpop") is None:
        pytest.skip("mpop is not installed (apt-get install mpop, as scripts/test-deps does)")
    pop3d = backend_pop3d_each  # of its own: the wrong password leaves a penalty on 127.0.0.1
    folder = str(tmp_path)
    maildir = os.path.join(folder, "Maildir")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub))
    good = write_secret(os.path.join(folder, "pw"), pop3d.password)
    r = subprocess.run(["mpop", "-C", mpop_rc(folder, pop3d, "demo", good, maildir, auth), "-d", "test"],
                       capture_output=True, timeout=120)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert r.returncode == 0, out[-2000:]
    assert f"AUTH {auth.upper()}" in out, out[-2000:]
    assert len(os.listdir(os.path.join(maildir, "new"))) == 3
    bad = write_secret(os.path.join(folder, "bad"), "not-the-password")
    r = subprocess.run(["mpop", "-C", mpop_rc(folder, pop3d, "demo", bad, maildir, auth), "test"],
                       capture_output=True, timeout=120)
    assert r.returncode != 0
    assert "not-the-password" not in pop3d.log_text()


def fetch(pop3_bin, server, user, password_file, maildir, state, *extra):
    cmd = [pop3_bin, "fetch", "--ca-file", server.ca, "--password-file", password_file, "--maildir", maildir,
           "--keep", "--verbose", *extra, server.url(user)]
    return subprocess.run(cmd, capture_output=True, timeout=120, env=dict(os.environ, XDG_STATE_HOME=state))


def test_pop3_scram_plus_against_pop3d(backend_pop3d, pop3_bin, tmp_path):
    """pop3 fetch --auth scram-sha-256-plus (and auto, which picks it) against pop3d; the verbose log shows the
    mechanism but neither the password nor the SCRAM messages."""
    pop3d = backend_pop3d  # --keep: the maildrop is left as it was
    folder = str(tmp_path)
    pw = write_secret(os.path.join(folder, "pw"), pop3d.password)
    for auth, state in [("scram-sha-256-plus", "s1"), ("auto", "s2"), ("scram-sha-256", "s3")]:
        r = fetch(pop3_bin, pop3d, "demo", pw, os.path.join(folder, f"md-{state}"), os.path.join(folder, state),
                  "--auth", auth)
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 0, err[-1500:]
        expected = "SCRAM-SHA-256" if auth == "scram-sha-256" else "SCRAM-SHA-256-PLUS"
        assert f"AUTH {expected} <client-first>" in err, err[-1500:]
        assert pop3d.password not in err and "n=demo" not in err
        assert len(os.listdir(os.path.join(folder, f"md-{state}", "new"))) == 3
    probe = subprocess.run([pop3_bin, "probe", "--ca-file", pop3d.ca, f"pop3s://localhost:{pop3d.tls_port}"],
                           capture_output=True, timeout=60)
    out = probe.stdout.decode()
    assert "SASL PLAIN SCRAM-SHA-256-PLUS SCRAM-SHA-256" in out and "auth auto: scram-sha-256-plus" in out, out


@pytest.mark.root
@pytest.mark.dovecot
def test_pop3_scram_against_dovecot(pop3_bin):
    """pop3 against Dovecot 2.3 whose passwd-file holds `doveadm pw -s SCRAM-SHA-256` hashes and which offers
    SCRAM-SHA-256 (2.3 has no -PLUS): --auth scram-sha-256 and auto use SCRAM; --auth scram-sha-256-plus is
    refused without trying anything weaker; a wrong password is a login failure."""
    dovecot = Dovecot(shared_tmpdir("sasl-dovecot"))
    dovecot.start({"alice": "alice pw"}, scheme="SCRAM-SHA-256", mechanisms="plain scram-sha-256")
    try:
        for i in range(2):
            dovecot.deliver("alice", make_message("scram", i)[1])
        folder = dovecot.root
        pw = write_secret(os.path.join(folder, "pw-alice"), "alice pw")
        r = fetch(pop3_bin, dovecot, "alice", pw, os.path.join(folder, "md1"), os.path.join(folder, "s1"),
                  "--auth", "scram-sha-256")
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 0, err[-1500:] + dovecot.log_tail()
        assert "AUTH SCRAM-SHA-256 <client-first>" in err
        assert len(os.listdir(os.path.join(folder, "md1", "new"))) == 2
        r = fetch(pop3_bin, dovecot, "alice", pw, os.path.join(folder, "md2"), os.path.join(folder, "s2"))
        assert r.returncode == 0 and "mechanism=scram-sha-256 " in r.stderr.decode(errors="replace")
        r = fetch(pop3_bin, dovecot, "alice", pw, os.path.join(folder, "md3"), os.path.join(folder, "s3"),
                  "--auth", "scram-sha-256-plus")
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 1 and "does not offer SCRAM-SHA-256-PLUS" in err, err[-1500:]
        assert "C: AUTH" not in err
        bad = write_secret(os.path.join(folder, "pw-bad"), "wrong")
        r = fetch(pop3_bin, dovecot, "alice", bad, os.path.join(folder, "md4"), os.path.join(folder, "s4"),
                  "--auth", "scram-sha-256")
        assert r.returncode == 1 and "login failed" in r.stderr.decode(errors="replace")
    finally:
        dovecot.stop()
