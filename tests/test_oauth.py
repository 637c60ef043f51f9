"""OAuth 2.0 (issue 12): pop3d as a resource server for OAUTHBEARER (RFC 7628) and XOAUTH2, validating JWT access
tokens locally against a JWKS file; `pop3 fetch --auth oauthbearer|xoauth2` with a token command. Peers: an
independent client (pop3support.oauth_login), curl (`--oauth2-bearer`, from a config file so the token is on no
command line), mpop 1.4 (GNU SASL). Tokens are made by pop3support.OAuthIssuer with the cryptography package.

Every refused token gets the RFC 7628 JSON error, then `-ERR [AUTH] Authentication failed.`, counts toward the
penalty (failing cases use their own source addresses) and never appears in a log.
"""
import os
import shutil
import signal
import subprocess
import time

import pytest

from pop3support import OAuthIssuer, POP3Session, Pop3dDev, oauth_login, write_secret

AUTH_FAILED = b"-ERR [AUTH] Authentication failed."
USER = "carol@example.com"


@pytest.fixture(scope="module")
def oauth(pop3d_bin, tmp_path_factory):
    """pop3d dev with auth.oauth2 and a user who has no password (carol@example.com, as the email claim says)."""
    root = tmp_path_factory.mktemp("oauth")
    issuer = OAuthIssuer(os.path.join(str(root), "jwks.json"))
    dev = Pop3dDev(pop3d_bin, root, extra_config=(
        f"auth:\n  oauth2:\n    jwks: {issuer.path}\n    issuer: \"{issuer.ISSUER}\"\n    audience: {issuer.AUDIENCE}\n"))
    with open(os.path.join(dev.data, "users"), "a") as f:
        f.write(f"{USER}:\nlocked@example.com:!\n")
    dev.start()
    dev.issuer = issuer
    yield dev
    dev.stop()


def capa(session):
    session.ok("CAPA")
    return [line.decode() for line in session.lines()]


def test_capa_adds_the_oauth_mechanisms(oauth):
    s = POP3Session(oauth)
    assert "SASL PLAIN SCRAM-SHA-256-PLUS SCRAM-SHA-256 OAUTHBEARER XOAUTH2" in capa(s)
    s.ok("QUIT")


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_valid_tokens_log_in(oauth, alg, mechanism):
    """A user without a password logs in with a JWT of each allowed algorithm, by either mechanism."""
    s = POP3Session(oauth)
    reply, error = oauth_login(s, oauth.issuer.token(USER, alg=alg), user=USER, mechanism=mechanism)
    assert reply == b"+OK Logged in." and error is None, (reply, error)
    assert s.stat()[0] == 0
    s.ok("QUIT")


BAD_TOKENS = [
    ("expired", dict(lifetime=-3600)),
    ("not-yet-valid", dict(claims={"nbf": int(time.time()) + 3600})),
    ("wrong-issuer", dict(claims={"iss": "https://evil.example/"})),
    ("wrong-audience", dict(claims={"aud": "imap"})),
    ("no-exp", dict(drop=("exp",))),
    ("no-email-claim", dict(drop=("email",))),
    ("alg-none", dict(alg="none")),
    ("hs256-with-the-rsa-public-key", dict(alg="HS256")),
    ("unknown-kid", dict(kid="nobody-knows")),
    ("no-kid", dict(header={"kid": None})),
    ("user-not-in-passwd-file", dict(user="mallory@example.com")),
    ("account-locked", dict(user="locked@example.com")),
    ("id-token", dict(claims={"typ": "ID"})),
    ("email-not-verified", dict(claims={"email_verified": False})),
]


@pytest.mark.parametrize("case,kwargs", BAD_TOKENS, ids=[c for c, _ in BAD_TOKENS])
def test_bad_tokens_are_refused_like_a_wrong_password(oauth, case, kwargs):
    kwargs = dict(kwargs)
    user = kwargs.pop("user", USER)
    token = oauth.issuer.token(user, **kwargs)
    source = f"127.0.1.{BAD_TOKENS.index(next(b for b in BAD_TOKENS if b[0] == case)) + 10}"
    s = POP3Session(oauth, source=source)
    reply, error = oauth_login(s, token, user=user)
    assert reply == AUTH_FAILED, (case, reply)
    assert error == {"status": "invalid_token", "schemes": "bearer"}, error
    s.ok("QUIT")
    log = oauth.log_text()
    signature = token.split(".")[2]
    assert token not in log and (not signature or signature not in log)
    assert "OAUTHBEARER:" in log


def test_tampered_signature_and_foreign_user(oauth):
    """A token whose payload was changed after signing, and an authzid naming another user than the token."""
    token = oauth.issuer.token(USER)
    head, body, sig = token.split(".")
    forged = oauth.issuer.token("demo").split(".")[1]
    s = POP3Session(oauth, source="127.0.1.40")
    assert oauth_login(s, f"{head}.{forged}.{sig}", user="demo")[0] == AUTH_FAILED
    s.ok("QUIT")
    s = POP3Session(oauth, source="127.0.1.41")
    assert oauth_login(s, token, user="demo", mechanism="XOAUTH2")[0] == AUTH_FAILED
    s.ok("QUIT")


@pytest.mark.parametrize("jwk_change,needle", [
    ({"kty": "oct", "k": "c2VjcmV0"}, "key type"),
    ({"alg": "none"}, "algorithm"),
    ({"alg": "HS256"}, "algorithm"),
    ({"d": "AAAA"}, "private"),
])
def test_dangerous_jwks_is_refused_at_start(pop3d_bin, tmp_path, jwk_change, needle):
    """A JWKS with an HMAC key, `none` or HS256 for an RSA kid, or private key material: check-config and serve
    refuse it, naming auth.oauth2.jwks."""
    issuer = OAuthIssuer(os.path.join(str(tmp_path), "jwks.json"))
    keys = [issuer.jwk(kid) for kid in issuer.keys]
    keys[1].update(jwk_change)
    issuer.write_jwks(keys)
    dev = Pop3dDev(pop3d_bin, tmp_path, extra_config=(
        f"auth:\n  oauth2:\n    jwks: {issuer.path}\n    issuer: x\n    audience: pop3\n"))
    r = dev.pop3d("check-config", "--config", dev.config)
    err = (r.stdout + r.stderr).decode()
    assert r.returncode != 0 and "auth.oauth2.jwks" in err and needle in err, err


def test_jwks_is_reloaded_on_sighup(oauth):
    """Rotated keys take effect at SIGHUP: the old key's tokens fail, the new key's work."""
    old = oauth.issuer.token(USER)
    oauth.issuer.rotate()
    new = oauth.issuer.token(USER)
    oauth.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "OAuth 2.0 JWKS reloaded" not in oauth.log_text():
        time.sleep(0.1)
    s = POP3Session(oauth)
    assert oauth_login(s, new, user=USER)[0] == b"+OK Logged in."
    s.ok("QUIT")
    s = POP3Session(oauth, source="127.0.1.42")
    assert oauth_login(s, old, user=USER)[0] == AUTH_FAILED
    s.ok("QUIT")


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_curl_oauth2_bearer(oauth, tmp_path, mechanism):
    """curl --oauth2-bearer (from a -K config file) lists the maildrop with each mechanism."""
    config = write_secret(os.path.join(str(tmp_path), "curlrc"),
                          f'oauth2-bearer = "{oauth.issuer.token(USER)}"\nuser = "{USER}:"\n')
    r = subprocess.run(["curl", "-sS", "--cacert", oauth.ca, "-K", config, "--login-options", f"AUTH={mechanism}",
                        f"pop3s://localhost:{oauth.tls_port}/"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("auth", ["oauthbearer", "xoauth2"])
def test_mpop_oauth(oauth, tmp_path, auth):
    """mpop 1.4 with `auth oauthbearer` / `auth xoauth2`, the token from passwordeval."""
    if shutil.which("mpop") is None:
        pytest.skip("mpop is not installed (apt-get install mpop, as scripts/test-deps does)")
    folder = str(tmp_path)
    token = write_secret(os.path.join(folder, "token"), oauth.issuer.token(USER))
    maildir = os.path.join(folder, "Maildir")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub))
    rc = write_secret(os.path.join(folder, "mpoprc"), f"""account test
host 127.0.0.1
port {oauth.tls_port}
tls on
tls_starttls off
tls_trust_file {oauth.ca}
tls_host_override localhost
user {USER}
auth {auth}
passwordeval cat {token}
keep on
uidls_file {folder}/uidls
delivery maildir {maildir}
""")
    r = subprocess.run(["mpop", "-C", rc, "-d", "test"], capture_output=True, timeout=120)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, out[-2000:]
    assert f"AUTH {auth.upper()}" in out


@pytest.mark.parametrize("auth", ["oauthbearer", "xoauth2"])
def test_pop3_fetch_with_a_token_command(oauth, pop3_bin, tmp_path, auth):
    """pop3 fetch --auth oauthbearer|xoauth2 --oauth2-token-command: logs in; a refused token fails the account with
    the server's reason; the token is never in --verbose output; --auth auto never picks OAuth."""
    folder = str(tmp_path)
    good = write_secret(os.path.join(folder, "token"), oauth.issuer.token(USER))
    bad = write_secret(os.path.join(folder, "expired"), oauth.issuer.token(USER, lifetime=-3600))
    env = dict(os.environ, XDG_STATE_HOME=os.path.join(folder, "state"))

    def fetch(token_file, source=None):
        cmd = [pop3_bin, "fetch", "--ca-file", oauth.ca, "--auth", auth, "--oauth2-token-command", f"cat {token_file}",
               "--maildir", os.path.join(folder, "md"), "--verbose", oauth.url(USER.replace("@", "%40"))]
        e = dict(env, POP3_BIND_ADDRESS=source) if source else env
        return subprocess.run(cmd, capture_output=True, timeout=120, env=e)

    r = fetch(good)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-1500:]
    assert f"AUTH {auth.upper()}" in err and open(good).read().strip() not in err
    r = fetch(bad, source="127.0.1.50" if auth == "oauthbearer" else "127.0.1.51")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1 and "login failed" in err and ("invalid_token" in err or "401" in err), err[-1500:]
    assert open(bad).read().strip() not in err


# ---------------------------------------------------------------- the client's own flows (pop3 oauth2 login)

def accounts_file(folder, oauth, server, flow):
    endpoints = (f"    oauth2_device_endpoint: {server.url}/device\n" if flow == "device"
                 else f"    oauth2_authorization_endpoint: {server.url}/authorize\n")
    path = os.path.join(folder, "accounts.yaml")
    with open(path, "w") as f:
        f.write(f"""accounts:
  corp:
    url: pop3s://{USER.replace('@', '%40')}@localhost:{oauth.tls_port}
    provider: custom
    oauth2_client_id: pop3-tests
    oauth2_token_endpoint: {server.url}/token
{endpoints}    oauth2_scope: "openid pop3"
    ca_file: {oauth.ca}
    maildir: {folder}/Maildir
    keep: true
""")
    return path


def run_pop3(pop3_bin, folder, *args, timeout=120):
    env = dict(os.environ, XDG_STATE_HOME=os.path.join(folder, "state"))
    return subprocess.run([pop3_bin, *args], capture_output=True, timeout=timeout, env=env)


def token_file(folder):
    base = os.path.join(folder, "state", "pop3", "oauth2")
    names = os.listdir(base)
    assert len(names) == 1, names
    return os.path.join(base, names[0])


def no_token_printed(server, *results):
    out = b"".join(r.stdout + r.stderr for r in results).decode(errors="replace")
    leaked = [t for t in server.issued if t in out]
    assert not leaked, "a token was printed"


def test_device_flow_login_then_fetch_refreshes_and_reports_revocation(oauth, pop3_bin, tmp_path):
    """pop3 oauth2 login (device flow: it prints the URL and code, waits through authorization_pending and
    slow_down) keeps the tokens 0600; pop3 fetch uses the access token, refreshes it once it has expired (the
    rotated refresh token is kept), and after revocation fails the account telling the user to log in again."""
    from pop3support import AuthorizationServer
    server = AuthorizationServer(oauth.issuer, USER)
    try:
        folder = str(tmp_path)
        config = accounts_file(folder, oauth, server, "device")
        r = run_pop3(pop3_bin, folder, "oauth2", "login", "corp", "--config", config)
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 0, err
        assert f"Open {server.url}/activate and enter the code ABCD-EFGH" in err
        assert server.polls == 3 and len(server.grants("urn:ietf:params:oauth:grant-type:device_code")) == 3
        path = token_file(folder)
        assert os.stat(path).st_mode & 0o777 == 0o600

        fetched = run_pop3(pop3_bin, folder, "fetch", "--config", config, "--verbose")
        assert fetched.returncode == 0, fetched.stderr.decode(errors="replace")[-1500:]
        assert not server.grants("refresh_token"), "refreshed although the access token was fresh"

        import json
        with open(path) as f:
            stored = json.load(f)
        stored["expires_at"] = 1000
        with open(path, "w") as f:
            json.dump(stored, f)
        refreshed = run_pop3(pop3_bin, folder, "fetch", "--config", config)
        assert refreshed.returncode == 0, refreshed.stderr.decode(errors="replace")
        assert len(server.grants("refresh_token")) == 1
        with open(path) as f:
            rotated = json.load(f)
        assert rotated["refresh_token"] != stored["refresh_token"] and rotated["expires_at"] > 1000

        server.revoke_all()
        rotated["expires_at"] = 1000
        with open(path, "w") as f:
            json.dump(rotated, f)
        revoked = run_pop3(pop3_bin, folder, "fetch", "--config", config)
        err = revoked.stderr.decode(errors="replace")
        assert revoked.returncode == 1 and "pop3 oauth2 login corp" in err and "revoked" in err, err
        no_token_printed(server, r, fetched, refreshed, revoked)
    finally:
        server.stop()


def test_device_flow_denied(oauth, pop3_bin, tmp_path):
    from pop3support import AuthorizationServer
    server = AuthorizationServer(oauth.issuer, USER)
    server.deny = True
    try:
        folder = str(tmp_path)
        r = run_pop3(pop3_bin, folder, "oauth2", "login", "corp", "--config", accounts_file(folder, oauth, server, "device"))
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 1 and "authorization denied" in err and "the user said no" in err, err
        assert not os.path.isdir(os.path.join(folder, "state", "pop3", "oauth2")) or not os.listdir(
            os.path.join(folder, "state", "pop3", "oauth2"))
        fetch = run_pop3(pop3_bin, folder, "fetch", "--config", os.path.join(folder, "accounts.yaml"))
        assert fetch.returncode == 1 and "pop3 oauth2 login corp" in fetch.stderr.decode()
    finally:
        server.stop()


def test_authorization_code_flow_with_pkce(oauth, pop3_bin, tmp_path):
    """The authorization-code flow (Google's): pop3 prints the URL and listens on 127.0.0.1; the "browser" (urllib)
    follows the server's redirect to it; the code is exchanged with the PKCE verifier (S256, checked by the server);
    then pop3 fetch logs in."""
    import urllib.request
    from pop3support import AuthorizationServer
    server = AuthorizationServer(oauth.issuer, USER)
    try:
        folder = str(tmp_path)
        config = accounts_file(folder, oauth, server, "authorization-code")
        env = dict(os.environ, XDG_STATE_HOME=os.path.join(folder, "state"))
        proc = subprocess.Popen([pop3_bin, "oauth2", "login", "corp", "--config", config], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline().decode()
            if line.startswith(server.url + "/authorize?"):
                url = line.strip()
        assert url, "no authorization URL printed"
        assert "code_challenge_method=S256" in url and ("redirect_uri=http://127.0.0.1:" in url or "redirect_uri=http%3A%2F%2F127.0.0.1%3A" in url)
        with urllib.request.urlopen(url, timeout=30) as page:
            assert b"Authorized" in page.read()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode(errors="replace")
        assert len(server.grants("authorization_code")) == 1
        fetched = run_pop3(pop3_bin, folder, "fetch", "--config", config)
        assert fetched.returncode == 0, fetched.stderr.decode(errors="replace")
    finally:
        server.stop()


# ---------------------------------------------------------------- JWKS from a URL, introspection of opaque tokens

def test_jwks_url_and_introspection(pop3d_bin, tmp_path):
    """auth.oauth2.jwks as a URL (fetched at start and on SIGHUP) and introspection_url with client credentials
    from a 0600 file: JWTs are checked against the fetched keys, opaque tokens by asking the authorization server
    (active, exp, iss, aud and the user claim of its answer are checked as for a JWT)."""
    from pop3support import AuthorizationServer
    issuer = OAuthIssuer(os.path.join(str(tmp_path), "jwks.json"))
    server = AuthorizationServer(issuer, USER)
    try:
        credentials = write_secret(os.path.join(str(tmp_path), "rs-credentials"), "pop3d:rs-secret\n")
        dev = Pop3dDev(pop3d_bin, tmp_path, extra_config=(
            f"auth:\n  oauth2:\n    jwks: {server.url}/jwks\n    issuer: \"{issuer.ISSUER}\"\n    audience: pop3\n"
            f"    introspection_url: {server.url}/introspect\n    client_credentials_file: {credentials}\n"))
        with open(os.path.join(dev.data, "users"), "a") as f:
            f.write(f"{USER}:\n")
        dev.start()
        try:
            deadline = time.monotonic() + 20
            while "OAuth 2.0 JWKS fetched" not in dev.log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            s = POP3Session(dev)
            assert oauth_login(s, issuer.token(USER), user=USER)[0] == b"+OK Logged in."
            s.ok("QUIT")
            # Rotated keys: fetched again on SIGHUP.
            issuer.rotate()
            dev.signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "SIGHUP: OAuth 2.0 JWKS reloaded" not in dev.log_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            s = POP3Session(dev)
            assert oauth_login(s, issuer.token(USER, alg="RS256"), user=USER)[0] == b"+OK Logged in."
            s.ok("QUIT")
            # Opaque tokens.
            now = int(time.time())
            good = {"active": True, "iss": issuer.ISSUER, "aud": "pop3", "email": USER, "exp": now + 600}
            server.opaque = {"opaque-good": good, "opaque-inactive": dict(good, active=False),
                             "opaque-expired": dict(good, exp=now - 3600), "opaque-other-aud": dict(good, aud="imap")}
            s = POP3Session(dev)
            assert oauth_login(s, "opaque-good", user=USER, mechanism="XOAUTH2")[0] == b"+OK Logged in."
            s.ok("QUIT")
            for n, token in enumerate(["opaque-inactive", "opaque-expired", "opaque-other-aud", "opaque-unknown"]):
                s = POP3Session(dev, source=f"127.0.1.{60 + n}")
                assert oauth_login(s, token, user=USER)[0] == AUTH_FAILED, token
                s.ok("QUIT")
            assert len([p for p, _ in server.requests if p == "/introspect"]) == 5
            # Wrong client credentials: the server refuses to answer, so does pop3d.
            server.introspection_client = ("pop3d", "changed")
            s = POP3Session(dev, source="127.0.1.70")
            assert oauth_login(s, "opaque-good", user=USER)[0] == AUTH_FAILED
            s.ok("QUIT")
            assert "rs-secret" not in dev.log_text() and "opaque-good" not in dev.log_text()
        finally:
            dev.stop()
        os.chmod(credentials, 0o644)
        r = dev.pop3d("check-config", "--config", dev.config)
        err = (r.stdout + r.stderr).decode()
        assert r.returncode != 0 and "client_credentials_file" in err and "chmod 600" in err, err
    finally:
        server.stop()


def test_setup_with_a_provider_runs_the_flow_checks_the_login_and_writes_the_account(oauth, pop3_bin, tmp_path):
    """pop3 setup ADDRESS --provider custom …: the server is found by its SRV record, the device flow runs (the URL
    and code printed), the token logs in (STAT only), then the account with its provider keys is written, the tokens
    kept 0600, and pop3 fetch uses them."""
    from pop3support import AuthorizationServer, DNSServer
    server = AuthorizationServer(oauth.issuer, USER)
    dns = DNSServer(srv={"_pop3s._tcp.example.com": ("localhost", oauth.tls_port)})
    try:
        folder = str(tmp_path)
        config = os.path.join(folder, "accounts.yaml")
        r = run_pop3(pop3_bin, folder, "setup", USER, "--autoconfig-url", "https://127.0.0.1:9",
                     "--dns-server", f"127.0.0.1:{dns.port}", "--ca-file", oauth.ca, "--config", config, "--keep",
                     "--maildir", os.path.join(folder, "Maildir"), "--name", "corp",
                     "--provider", "custom", "--oauth2-client-id", "pop3-tests",
                     "--oauth2-token-endpoint", f"{server.url}/token", "--oauth2-device-endpoint", f"{server.url}/device",
                     "--oauth2-scope", "openid pop3")
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 0, err
        assert f"Open {server.url}/activate and enter the code ABCD-EFGH" in err
        assert "login works: " in err and "added account corp" in err, err
        text = open(config).read()
        assert "provider: custom" in text and "auth: oauthbearer" in text and "keep: true" in text, text
        assert oct(os.stat(token_file(folder)).st_mode & 0o777) == "0o600"
        r2 = run_pop3(pop3_bin, folder, "fetch", "--config", config, "corp")
        assert r2.returncode == 0, r2.stderr.decode(errors="replace")
        no_token_printed(server, r, r2)
    finally:
        dns.close()
        server.stop()
