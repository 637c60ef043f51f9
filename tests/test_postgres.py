"""The PostgreSQL backend (issue 13, first part): `pop3d db migrate`, accounts in the database, `pop3d deliver`
into it, POP3 sessions on two stateless nodes sharing one database, the maildrop lock across nodes, a node killed
mid-session, PostgreSQL restarted mid-session, and the start-up refusals (old schema, synchronous_commit off).

Each test gets a database of its own in the session's private cluster (conftest `postgres`)."""
import hashlib
import itertools
import json
import os
import poplib
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

import pop3support
from pop3support import Pop3dNode, crlf, make_message, shared_tmpdir

pytestmark = pytest.mark.postgres

_names = itertools.count(1)


@pytest.fixture
def cluster_db(postgres):
    """(url, folder): a fresh database owned by role pop3d, and a folder (0755) for nodes to share."""
    url = postgres.create(f"pop3_{next(_names)}")
    return url, shared_tmpdir("pop3-pgnode-")


def node(pop3d_bin, cluster_db, tag="node1", extra=""):
    url, folder = cluster_db
    return Pop3dNode(pop3d_bin, folder, url, extra_config=extra, tag=tag)


def expect_err(fn, needle):
    with pytest.raises(poplib.error_proto) as info:
        fn()
    assert needle in str(info.value), info.value
    return str(info.value)


def test_serve_refuses_a_database_without_schema_until_migrated(pop3d_bin, cluster_db):
    n = node(pop3d_bin, cluster_db)
    status, output = n.run_serve()
    assert status == 78, output
    assert "pop3d db migrate" in output
    assert "schema migrated from version 0 to 4" in n.migrate()
    assert "schema is current (version 4)" in n.migrate(), "migrate runs again harmlessly"
    n.start()
    n.stop()


def test_accounts_in_the_database_log_in_with_every_scheme(pop3d_bin, cluster_db):
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    n.add_user("scram@example.com", "pw-scram")
    n.add_user("crypt", "pw-crypt", scheme="SHA512-CRYPT")
    n.add_user("plain", "pw-plain", scheme="PLAIN")
    r = n.pop3d("user", "add", "crypt", stdin="again\n")
    assert r.returncode != 0 and b"already exists" in r.stderr
    assert n.pop3d("user", "list").stdout.decode().split() == ["crypt", "plain", "scram@example.com"]
    n.start()
    try:
        for user in ("scram@example.com", "crypt", "plain"):
            c = n.poplib_pop3s(user)
            assert c.stat() == (0, 0)
            c.quit()
        expect_err(lambda: n.poplib_pop3s("crypt", "wrong"), "[AUTH]")
        expect_err(lambda: n.poplib_pop3s("nobody-here", "wrong"), "[AUTH]")
        r = n.pop3d("user", "passwd", "crypt", stdin="new-pw\n")
        assert r.returncode == 0, r.stderr
        n.passwords["crypt"] = "new-pw"
        n.poplib_pop3s("crypt").quit()
        assert n.pop3d("user", "del", "plain").returncode == 0
        expect_err(lambda: n.poplib_pop3s("plain"), "[AUTH]")
        r = n.pop3d("user", "del", "plain")
        assert r.returncode != 0 and b"no user plain" in r.stderr
    finally:
        n.stop()


def test_deliver_store_retrieve_and_delete_across_two_nodes(pop3d_bin, cluster_db):
    first = node(pop3d_bin, cluster_db, "node1")
    second = node(pop3d_bin, cluster_db, "node2")
    first.migrate()
    first.add_user("alice", "pw-alice")
    second.passwords["alice"] = "pw-alice"
    # One message larger than a stored chunk (256 KiB), LF and CRLF endings, a line starting with a dot.
    messages = [make_message("pg", 1)[1], make_message("pg", 2, body_bytes=700_000)[1],
                b"Subject: dots\r\n\r\n.leading dot\r\nlast\r\n"]
    for data in messages:
        status, err = first.deliver("alice", data)
        assert status == 0, err
    assert first.deliver("bob", b"Subject: x\n\nx\n")[0] == 67, "unknown user: EX_NOUSER"
    status, err = first.deliver("alice", make_message("pg", 9, body_bytes=5000)[1], "--max-size", "1000")
    assert status == 73, err
    first.start()
    second.start()
    try:
        a = first.poplib_pop3s("alice")
        listing = a.list()[1]
        assert len(listing) == 3
        uids = a.uidl()[1]
        for number, data in enumerate(messages, start=1):
            body = b"\r\n".join(a.retr(number)[1]) + b"\r\n"
            assert body == crlf(data), f"message {number} differs"
            assert int(listing[number - 1].split()[1]) == len(crlf(data)), "LIST counts CRLF"
        # The same user on the other node while this session holds the maildrop.
        expect_err(lambda: second.poplib_pop3s("alice"), "[IN-USE]")
        a.dele(1)
        assert a.quit().startswith(b"+OK")
        b = second.poplib_pop3s("alice")
        assert b.stat()[0] == 2
        assert b.uidl()[1] == [f"{i} {line.split()[1].decode()}".encode() for i, line in enumerate(uids[1:], start=1)], \
            "UIDLs stay the same across nodes and sessions"
        b.quit()
    finally:
        first.stop()
        second.stop()



def test_read_ahead_returns_every_message_whole_in_any_order(pop3d_bin, cluster_db):
    """RETR reads the chunks that follow ahead, several messages' in one query (PostgresMaildrop's read-ahead).
    Whatever the order the client asks in (in order and pipelined, backwards, skipping, TOP between, the same one
    twice, a message deleted meanwhile by DELE), each reply is the whole message it names."""
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    n.add_user("alice", "pw-alice")
    sizes = [0, 40_000, 600_000, 0, 70_000, 300_000, 10_000, 0, 520_000, 5_000, 0, 90_000]
    messages = [crlf(make_message("ahead", i, body_bytes=size)[1]) for i, size in enumerate(sizes)]
    for data in messages:
        assert n.deliver("alice", data)[0] == 0
    n.start()
    try:
        def whole(session, number):
            return b"\r\n".join(session.retr(number)[1]) + b"\r\n"

        a = n.poplib_pop3s("alice")
        order = list(range(1, len(messages) + 1))
        for number in order + order[::-1] + [3, 3, 9, 1, 12, 6, 2]:
            assert whole(a, number) == messages[number - 1], f"message {number} differs"
            if number == 5:
                top = a.top(6, 0)[1]
                assert top[0].startswith(b"From:"), top[:2]
        a.dele(4)
        for number in (2, 3, 5, 6):
            assert whole(a, number) == messages[number - 1], f"message {number} differs after a DELE"
        assert a.quit().startswith(b"+OK")
        del messages[3]
        # Pipelined: every RETR sent at once, the replies read after.
        s = pop3support.POP3Session(n)
        s.login("alice", "pw-alice")
        s.pipeline(*[f"RETR {i}" for i in range(1, len(messages) + 1)])
        for number in range(1, len(messages) + 1):
            status = s.line()
            assert status.startswith(b"+OK"), status
            assert s.multiline() == messages[number - 1], f"pipelined message {number} differs"
        s.ok("QUIT")
    finally:
        n.stop()

def test_quota_in_the_database_refuses_with_nothing_stored(pop3d_bin, cluster_db, postgres):
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    n.add_user("q", "pw")
    db = cluster_db[0].rsplit("/", 1)[1]
    postgres.psql("UPDATE accounts SET quota_messages = 1", db=db)
    assert n.deliver("q", b"Subject: 1\n\none\n")[0] == 0
    status, err = n.deliver("q", b"Subject: 2\n\ntwo\n")
    assert status == 77 and "quota" in err, err
    assert postgres.psql("SELECT count(*) FROM messages", db=db).strip() == "1"


def test_killed_node_frees_its_maildrops_and_applies_no_deletions(pop3d_bin, cluster_db):
    first = node(pop3d_bin, cluster_db, "node1")
    second = node(pop3d_bin, cluster_db, "node2")
    first.migrate()
    first.add_user("alice", "pw-alice")
    second.passwords["alice"] = "pw-alice"
    for i in range(5):
        assert first.deliver("alice", make_message("kill", i)[1])[0] == 0
    first.start()
    second.start()
    try:
        a = first.poplib_pop3s("alice")
        for i in range(1, 4):
            a.dele(i)
        first.kill9()
        started = time.monotonic()
        while True:
            try:
                b = second.poplib_pop3s("alice")
                break
            except poplib.error_proto as e:
                assert "[IN-USE]" in str(e), e
                assert time.monotonic() - started < 5, "the killed node's lock outlived it by 5 s"
                time.sleep(0.2)
        assert b.stat()[0] == 5, "DELEs of a session that never reached QUIT are not applied"
        b.quit()
        first.start()  # rejoins with no step
        first.poplib_pop3s("alice").quit()
    finally:
        first.stop()
        second.stop()


def test_postgres_restart_mid_session_ends_it_with_sys_temp_and_loses_nothing(pop3d_bin, cluster_db, postgres):
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    n.add_user("alice", "pw-alice")
    for i in range(3):
        assert n.deliver("alice", make_message("restart", i)[1])[0] == 0
    n.start()
    try:
        a = n.poplib_pop3s("alice")
        a.dele(1)
        postgres.restart()
        reply = expect_err(a.quit, "[SYS/TEMP]")
        assert "not removed" in reply
        started = time.monotonic()
        while True:
            try:
                b = n.poplib_pop3s("alice")
                break
            except (poplib.error_proto, OSError):
                assert time.monotonic() - started < 30, "no new session within 30 s of PostgreSQL's return"
                time.sleep(0.5)
        assert b.stat()[0] == 3
        b.dele(1)
        assert b.quit().startswith(b"+OK")
        assert n.stat("alice")[0] == 2
        assert "maildrop lock lost before the commit" in n.log_text()
    finally:
        n.stop()


def test_synchronous_commit_off_is_refused_unless_allowed(pop3d_bin, cluster_db, postgres):
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    postgres.psql(f"ALTER DATABASE {db} SET synchronous_commit = off")
    try:
        status, output = n.run_serve()
        assert status == 78, output
        assert "synchronous_commit is off" in output and "allow_async_commit" in output
        allowed = Pop3dNode(pop3d_bin, folder, url, tag="allowed", extra_config="    allow_async_commit: true\n")
        allowed.start()
        allowed.stop()
        assert "allowed by storage.postgres.allow_async_commit" in allowed.log_text()
    finally:
        postgres.psql(f"ALTER DATABASE {db} RESET synchronous_commit")


@pytest.mark.parametrize("url, needle", [
    ("postgresql://pop3d:secret@127.0.0.1/pop3", "password in the URL is refused"),
    ("mysql://pop3d@127.0.0.1/pop3", "expected postgresql://"),
    ("postgresql://pop3d@127.0.0.1:99999/pop3", "bad port"),
    ("postgresql://pop3d@127.0.0.1/pop3?sslmode=require", "unknown URL parameter"),
], ids=["password-in-url", "other-scheme", "bad-port", "unknown-parameter"])
def test_check_config_refuses_bad_database_urls(pop3d_bin, url, needle):
    folder = shared_tmpdir("pop3-pgconf-")
    n = Pop3dNode(pop3d_bin, folder, url)
    r = n.pop3d("check-config")
    assert r.returncode == 78
    assert needle in r.stderr.decode(), r.stderr
    assert b"secret" not in r.stdout + r.stderr, "the password is not echoed"


def test_database_password_from_a_private_file(pop3d_bin, postgres):
    url = postgres.create(f"pop3_{next(_names)}", owner="secure", password="db-secret")
    folder = shared_tmpdir("pop3-pgnode-")
    password_file = pop3support.write_secret(os.path.join(folder, "pgpass"), "db-secret")
    n = Pop3dNode(pop3d_bin, folder, url, extra_config=f"    password_file: {password_file}\n")
    n.migrate()
    n.add_user("alice", "pw")
    assert n.deliver("alice", b"Subject: s\n\nsecure\n")[0] == 0
    os.chmod(password_file, 0o644)
    r = n.pop3d("check-config")
    assert r.returncode == 78 and b"chmod 600" in r.stderr
    os.chmod(password_file, 0o600)
    with open(password_file, "w") as f:
        f.write("wrong\n")
    status, output = n.run_serve()
    assert status == 78 and "cannot reach PostgreSQL" in output, output
    assert "wrong" not in output and "db-secret" not in output


def test_a_blocked_database_ends_logins_with_sys_temp_after_statement_timeout(pop3d_bin, cluster_db, postgres):
    """A table locked by someone else: account lookups wait for it, PostgreSQL cancels them after
    storage.postgres.statement_timeout, and the client gets [SYS/TEMP] instead of waiting forever. With the one
    pooled connection held by such a login, another login waits pool_timeout for a connection, then [SYS/TEMP].
    Once the table is free, logins work again: a statement whose preparation the timeout cancelled does not stay
    failed on its connection (postgres-nio keeps such an error; pop3d closes the connection)."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    n = node(pop3d_bin, cluster_db, extra="    statement_timeout: 4\n    pool_size: 1\n    pool_timeout: 1\n")
    n.migrate()
    n.add_user("alice", "pw-alice")
    n.start()
    try:
        holder = subprocess.Popen(
            ["/usr/bin/psql", "-h", postgres.root, "-p", str(postgres.port), "-U", "postgres", "-d", db, "-q"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **postgres.ids)
        try:
            holder.stdin.write(b"BEGIN;\nLOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;\n")
            holder.stdin.flush()
            deadline = time.monotonic() + 10
            while postgres.psql("SELECT count(*) FROM pg_locks WHERE relation = 'accounts'::regclass AND mode = "
                                "'AccessExclusiveLock' AND granted", db=db).strip() != "1":
                assert time.monotonic() < deadline, "the lock holder did not get its lock"
                time.sleep(0.1)
            outcome = {}

            def blocked_login():
                started = time.monotonic()
                try:
                    n.poplib_pop3s("alice")
                    outcome["blocked"] = ("logged in", time.monotonic() - started)
                except poplib.error_proto as e:
                    outcome["blocked"] = (str(e), time.monotonic() - started)

            first = threading.Thread(target=blocked_login)
            first.start()
            time.sleep(0.5)  # the first login holds the only pooled connection, waiting for the table
            started = time.monotonic()
            reply = expect_err(lambda: n.poplib_pop3s("alice"), "[SYS/TEMP]")
            waited = time.monotonic() - started
            assert waited < 3.5, f"the pool-exhausted login waited {waited:.1f} s, not pool_timeout (1 s): {reply}"
            first.join(30)
            assert "[SYS/TEMP]" in outcome["blocked"][0] and outcome["blocked"][1] < 20, outcome
        finally:
            holder.stdin.close()
            holder.kill()
            holder.wait(timeout=10)
        n.poplib_pop3s("alice").quit()
        assert "canceling statement due to statement timeout" in n.log_text()
    finally:
        n.stop()


@pytest.mark.haproxy
def test_two_nodes_behind_haproxy_serve_any_user_and_survive_a_dead_node(pop3d_bin, cluster_db):
    """HAProxy (TCP, send-proxy-v2, health checks) in front of two nodes that trust only it: sessions from another
    loopback address reach both nodes with their real address, [IN-USE] holds across them, health checks cost no
    penalty, and when the node holding a session dies the next session is served by the other with nothing lost."""
    url, folder = cluster_db
    trust = '\nproxy:\n  trusted_networks: ["127.0.0.1/32"]\n'
    first = Pop3dNode(pop3d_bin, folder, url, tag="node1", extra_config=trust)
    second = Pop3dNode(pop3d_bin, folder, url, tag="node2", extra_config=trust)
    first.migrate()
    first.add_user("alice", "pw-alice")
    for i in range(4):
        assert first.deliver("alice", make_message("ha", i)[1])[0] == 0
    first.start()
    second.start()
    proxy = pop3support.HAProxy(folder, [first.tls_port, second.tls_port]).start()

    def session(source="127.0.0.2"):
        return pop3support.POP3Session(first, source=source, port=proxy.port, timeout=30).login("alice", "pw-alice")

    try:
        time.sleep(1.5)  # a few health checks
        for _ in range(4):
            c = session()
            assert c.stat()[0] == 4
            c.quit()
        for n in (first, second):
            log = n.log_text()
            assert "client=[IPv4]127.0.0.2" in log or "127.0.0.2" in log, f"{n.tag} saw no session with the real address"
            assert "auth penalty" not in log and "login failed" not in log, "health checks must cost no penalty"
        held = session()
        with pytest.raises(pop3support.POP3Error) as info:
            session("127.0.0.3")
        assert "[IN-USE]" in str(info.value)
        held.ok("DELE 1")
        # Kill whichever node serves the held session (the one whose log has the latest login).
        holder = max((first, second), key=lambda n: n.log_text().count("logged in"))
        holder.kill9()
        started = time.monotonic()
        while True:
            try:
                c = session()
                break
            except (pop3support.POP3Error, OSError) as e:
                assert time.monotonic() - started < 10, f"no node served alice 10 s after one died: {e}"
                time.sleep(0.2)
        assert c.stat()[0] == 4, "the dead node's uncommitted DELE is not applied"
        c.quit()
    finally:
        proxy.stop()
        first.stop()
        second.stop()


def test_lmtp_delivers_into_postgres_and_defers_while_it_is_away(pop3d_bin, cluster_db, postgres):
    """LMTP into the database: one reply per recipient after the dot, 250 only once the copy committed, 550 for
    an unknown recipient, the quota refusal for a full account, and 451 (never 550) while PostgreSQL is down."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    n = Pop3dNode(pop3d_bin, folder, url, tag="lmtp", lmtp=True)
    n.migrate()
    n.add_user("alice", "pw-a")
    n.add_user("bob", "pw-b")
    postgres.psql("UPDATE accounts SET quota_messages = 0 WHERE name = 'bob'", db=db)
    n.start()
    try:
        message = crlf(make_message("lmtp", 1, body_bytes=400_000)[1])
        c = pop3support.LMTPClient(("127.0.0.1", n.lmtp_port))
        replies = pop3support.lmtp_start_transaction(c, "alice", "bob", "nobody-here")
        assert [r[0] for r in replies] == [250, 250, 550], replies
        assert c.command("DATA")[0] == 354
        c.send(pop3support.lmtp_stuffed(message))
        got = [c.reply()[0] for _ in range(2)]
        assert got[0] == 250 and got[1] in (452, 552), got
        assert c.command("QUIT")[0] == 221
        c.close()
        a = n.poplib_pop3s("alice")
        body = b"\r\n".join(a.retr(1)[1]) + b"\r\n"
        a.quit()
        assert body.endswith(message) and b"Delivered-To: <alice>" in body, "trace headers, then the message"
        assert postgres.psql("SELECT count(*) FROM messages", db=db).strip() == "1"
        postgres.stop()
        try:
            c = pop3support.LMTPClient(("127.0.0.1", n.lmtp_port))
            replies = pop3support.lmtp_start_transaction(c, "alice")
            assert replies[0][0] == 451, f"an account store that does not answer defers: {replies}"
            c.close()
        finally:
            postgres.start()
    finally:
        n.stop()


def test_the_auth_penalty_is_shared_by_the_nodes(pop3d_bin, cluster_db, postgres):
    """Failures from one address on one node slow that address down on every node (one address does not get N
    times the attempts behind N nodes); retrying the same wrong password does not count again; another address is
    not slowed; the rows expire by themselves."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    first = node(pop3d_bin, cluster_db, "node1", extra="auth:\n  failure_delay: 0\n")
    second = node(pop3d_bin, cluster_db, "node2", extra="auth:\n  failure_delay: 0\n")
    first.migrate()
    first.add_user("alice", "pw-alice")
    first.start()
    second.start()

    def attempt(n, password, source):
        started = time.monotonic()
        s = pop3support.POP3Session(n, source=source, timeout=60)
        try:
            s.login("alice", password)
            ok = True
        except pop3support.POP3Error:
            ok = False
        s.close()
        return ok, time.monotonic() - started

    try:
        assert attempt(first, "wrong-1", "127.0.0.5")[0] is False
        assert attempt(first, "wrong-2", "127.0.0.5")[0] is False
        assert postgres.psql("SELECT failures FROM auth_penalty", db=db).strip() == "2"
        ok, took = attempt(second, "pw-alice", "127.0.0.5")
        assert ok and took >= 3.5, f"node2 must wait the 4 s of two failures seen on node1 (took {took:.1f} s)"
        assert "auth penalty" in second.log_text()
        attempt(second, "wrong-2", "127.0.0.5")
        assert postgres.psql("SELECT failures FROM auth_penalty", db=db).strip() == "2", "the same wrong password again"
        ok, took = attempt(second, "pw-alice", "127.0.0.6")
        assert ok and took < 2, "another address is not slowed"
        # The admin view is the database's: node2 lists what node1 counted, and clearing there clears for all.
        r = second.pop3d("penalty", "list", "--json")
        assert r.returncode == 0, r.stderr
        listed = {p["address"]: p["failures"] for p in json.loads(r.stdout)}
        assert listed.get("127.0.0.5") == 2, listed
        r = second.pop3d("penalty", "clear", "127.0.0.5")
        assert r.returncode == 0 and b"cleared" in r.stdout, r.stdout
        assert postgres.psql("SELECT count(*) FROM auth_penalty", db=db).strip() == "0"
        ok, took = attempt(first, "pw-alice", "127.0.0.5")
        assert ok and took < 2, "a cleared address is not slowed on the other node either"
        attempt(first, "wrong-3", "127.0.0.5")
        postgres.psql("UPDATE auth_penalty SET last_failure = now() - interval '2 hours'", db=db)
        ok, took = attempt(first, "pw-alice", "127.0.0.5")
        assert ok and took < 2, "failures an hour old are forgotten"
    finally:
        first.stop()
        second.stop()


def test_migrate_maildir_and_export_back_keep_passwords_and_uidls_and_resume(pop3d_bin, cluster_db, postgres, tmp_path):
    """`pop3d migrate maildir --from OLD --config NEW`: every passwd-file user and Maildir into the database; the
    same passwords log in, the same UIDLs and sizes are served (no client downloads anything again), a second run
    copies nothing, `pop3d export maildir` moves it all back (resumable, verified), and --verify finds a difference
    made afterwards (exit 1)."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    dev = pop3support.Pop3dDev(pop3d_bin, tmp_path)
    dev.start()
    try:
        dev.add_user("carol", "pw-carol", scheme="SHA512-CRYPT")
        dev.seed("carol", [make_message("mig", i, body_bytes=300_000 if i == 0 else 0)[1] for i in range(3)])
        before = {}
        for user in ("demo", "carol"):
            s = pop3support.POP3Session(dev).login(user, dev.passwords[user])
            before[user] = (s.uidl(), s.list())
            s.quit()
    finally:
        dev.stop()
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    r = n.pop3d("migrate", "maildir", "--from", dev.config, "--verify")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode() + out
    assert "carol: 3 copied, 0 already there, verified" in out, out
    r = n.pop3d("migrate", "maildir", "--from", dev.config, "--verify")
    assert r.returncode == 0 and "carol: 0 copied, 3 already there, verified" in r.stdout.decode(), r.stdout
    n.start()
    try:
        for user in ("demo", "carol"):
            s = pop3support.POP3Session(n).login(user, dev.passwords[user])
            assert (s.uidl(), s.list()) == before[user], f"{user}: the listing changed in the move"
            s.quit()
    finally:
        n.stop()
    # And back: `pop3d export maildir` into a new Maildir set-up, resumable, verified both ways.
    back = tmp_path / "back"
    back.mkdir()
    exported = back / "pop3d.yaml"
    exported.write_text(f'listen:\n  pop3s: "127.0.0.1:1"\ntls:\n  certificate: {n.ca}\n  key: {folder}/key.pem\n'
                        "passwd_file: users\nmaildir: mail/%u\n")
    r = n.pop3d("export", "maildir", "--to", str(exported), "--verify")
    assert r.returncode == 0 and "carol: 3 copied, 0 already there, verified" in r.stdout.decode(), r.stdout + r.stderr
    assert "carol:{SHA512-CRYPT}" in (back / "users").read_text(), "the stored password field moves as it is"
    r = n.pop3d("export", "maildir", "--to", str(exported), "--verify")
    assert r.returncode == 0 and "carol: 0 copied, 3 already there, verified" in r.stdout.decode(), r.stdout
    r = n.pop3d("migrate", "maildir", "--from", str(exported), "--verify-only")
    assert r.returncode == 0, r.stdout + r.stderr

    postgres.psql("DELETE FROM messages WHERE id = (SELECT min(id) FROM messages)", db=db)
    r = n.pop3d("migrate", "maildir", "--from", dev.config, "--verify-only")
    assert r.returncode == 1 and "only in the Maildir" in r.stdout.decode(), r.stdout


def test_kill9_during_quit_commits_all_deletions_or_none(pop3d_bin, cluster_db, postgres):
    """10 rounds: DELE a batch, send QUIT, kill -9 the node a few milliseconds later. Each round deletes the whole
    batch or nothing (one transaction), and a +OK to QUIT that reached the client means the batch is gone."""
    import random

    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    n.add_user("alice", "pw-alice")
    postgres.psql(
        "INSERT INTO messages (account_id, size, octets, chunks) "
        "SELECT a.id, 0, 0, 1 FROM accounts a, generate_series(1, 600) WHERE a.name = 'alice';"
        "INSERT INTO message_chunks (message_id, seq, data) SELECT id, 0, "
        "convert_to('Subject: m ' || id || E'\\r\\n\\r\\nbody ' || id || E'\\r\\n', 'UTF8') FROM messages;"
        "UPDATE messages m SET octets = length(c.data), size = length(c.data) FROM message_chunks c "
        "WHERE c.message_id = m.id;", db=db)
    rng = random.Random(13)
    count = 600
    outcomes = []
    try:
        for round_ in range(10):
            n.start()
            s = pop3support.POP3Session(n, timeout=30).login("alice", "pw-alice")
            assert s.stat()[0] == count
            batch = rng.randint(20, 50)
            s.dele_many(range(1, batch + 1))
            s.send(b"QUIT\r\n")
            time.sleep(rng.uniform(0, 0.02))
            n.kill9()
            try:
                reply = s.line()
            except (pop3support.POP3Error, OSError):
                reply = b""
            s.close()
            left = int(postgres.psql("SELECT count(*) FROM messages", db=db).strip())
            assert count - left in (0, batch), f"round {round_}: {count - left} of a batch of {batch} deleted"
            if reply.startswith(b"+OK"):
                assert count - left == batch, f"round {round_}: +OK to QUIT but the batch is still there"
            outcomes.append((reply[:3], count - left == batch))
            count = left
    finally:
        n.kill9()
    print("rounds (reply, batch deleted):", outcomes)


def test_a_passwd_file_authenticates_while_mail_is_in_postgres(pop3d_bin, cluster_db, postgres):
    """storage.backend postgres with passwd_file: the passwd-file wins for authentication, its users get a database
    account (password `!`, unusable) on first use, and a name only the database knows is unknown."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    passwd = os.path.join(folder, "users")
    with open(passwd, "w") as f:
        f.write(f"dora:{pop3support.sha512_crypt('pw-dora')}\n")
    os.chmod(passwd, 0o644)
    n = node(pop3d_bin, cluster_db, extra=f"passwd_file: {passwd}\n")
    n.migrate()
    postgres.psql("INSERT INTO accounts (name, password) VALUES ('eve', '{PLAIN}pw-eve')", db=db)
    assert n.deliver("dora", b"Subject: d\n\nfor dora\n")[0] == 0
    assert n.deliver("eve", b"Subject: e\n\nfor eve\n")[0] == 67, "eve is not in the passwd-file, which decides"
    assert postgres.psql("SELECT password FROM accounts WHERE name = 'dora'", db=db).strip() == "!"
    r = n.pop3d("user", "add", "fred", stdin="pw-fred\n")
    assert r.returncode == 0, r.stderr
    assert "fred:" in open(passwd).read(), "`pop3d user` edits the passwd-file, which is what authenticates"
    n.start()
    try:
        c = n.poplib_pop3s("dora", "pw-dora")
        assert c.stat()[0] == 1
        c.quit()
        expect_err(lambda: n.poplib_pop3s("eve", "pw-eve"), "[AUTH]")
    finally:
        n.stop()


def test_import_from_another_pop3_server_into_postgres(pop3d_bin, cluster_db, tmp_path):
    """`pop3d import` into an account in PostgreSQL: every remote message with its UIDL (one transaction each),
    verified, a second run copies nothing, the listing served equals the old server's, an unknown local user is 67."""
    dev = pop3support.Pop3dDev(pop3d_bin, tmp_path)
    dev.start()
    n = node(pop3d_bin, cluster_db)
    try:
        dev.seed("demo", [make_message("imp", i, body_bytes=300_000 if i == 1 else 0)[1] for i in range(4)])
        s = pop3support.POP3Session(dev).login("demo", dev.password)
        old = (s.uidl(), s.list())
        s.quit()
        n.migrate()
        n.add_user("alice", "pw-alice")
        remote = f"pop3s://demo@localhost:{dev.tls_port}"
        args = ("import", remote, "--user", "alice", "--password-file", dev.password_file("demo"), "--ca-file", dev.ca,
                "--verify")
        r = n.pop3d(*args)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        assert f"imported {len(old[0])} messages" in r.stdout.decode() and "listings match" in r.stdout.decode()
        r = n.pop3d(*args)
        assert r.returncode == 0 and "imported 0 messages" in r.stdout.decode(), r.stdout
        r = n.pop3d("import", remote, "--user", "nobody-here", "--password-file", dev.password_file("demo"),
                    "--ca-file", dev.ca)
        assert r.returncode == 67, r.stderr
        n.start()
        s = pop3support.POP3Session(n).login("alice", "pw-alice")
        assert (s.uidl(), s.list()) == old, "the old server's UIDLs and sizes, served from the database"
        s.quit()
    finally:
        n.stop()
        dev.stop()


def test_expire_uses_first_retrieval_times_shared_by_the_nodes(pop3d_bin, cluster_db, postgres):
    """policy.expire_days with PostgreSQL: a RETR records the message's first retrieval in its row; once that is
    older than the policy, the next login on any node removes it before listing; unretrieved mail stays."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    policy = "policy:\n  expire_days: 3\n"
    first = node(pop3d_bin, cluster_db, "node1", extra=policy)
    second = node(pop3d_bin, cluster_db, "node2", extra=policy)
    first.migrate()
    first.add_user("alice", "pw-alice")
    second.passwords["alice"] = "pw-alice"
    for i in range(3):
        assert first.deliver("alice", make_message("exp", i)[1])[0] == 0
    first.start()
    second.start()
    try:
        c = first.poplib_pop3s("alice")
        assert c.capa().get("EXPIRE") == ["3"], c.capa()
        c.retr(1)
        c.quit()
        recorded = postgres.psql("SELECT count(*) FROM messages WHERE first_retrieved_at IS NOT NULL", db=db).strip()
        assert recorded == "1", "the RETR is recorded in the message's row"
        c = second.poplib_pop3s("alice")
        assert c.stat()[0] == 3, "retrieved a moment ago: not expired yet"
        c.quit()
        postgres.psql("UPDATE messages SET first_retrieved_at = now() - interval '4 days' "
                      "WHERE first_retrieved_at IS NOT NULL", db=db)
        c = second.poplib_pop3s("alice")
        assert c.stat()[0] == 2, "the other node expires it at login"
        c.quit()
        assert "expired messages removed" in second.log_text()
    finally:
        first.stop()
        second.stop()


def test_login_delay_holds_across_the_nodes(pop3d_bin, cluster_db):
    """policy.login_delay with PostgreSQL: a login on one node makes the other answer [LOGIN-DELAY] within the
    delay (the last login is the account's row)."""
    policy = "policy:\n  login_delay: 60\n"
    first = node(pop3d_bin, cluster_db, "node1", extra=policy)
    second = node(pop3d_bin, cluster_db, "node2", extra=policy)
    first.migrate()
    first.add_user("alice", "pw-alice")
    second.passwords["alice"] = "pw-alice"
    first.start()
    second.start()
    try:
        first.poplib_pop3s("alice").quit()
        expect_err(lambda: second.poplib_pop3s("alice"), "[LOGIN-DELAY]")
    finally:
        first.stop()
        second.stop()


def test_scram_with_accounts_in_the_database(pop3d_bin, cluster_db, pop3_bin):
    """Accounts in PostgreSQL (no passwd-file) do SCRAM-SHA-256(-PLUS) with an independent client and with `pop3
    fetch` (auto: SCRAM-SHA-256-PLUS); an unknown user's SCRAM exchange fails like a wrong password."""
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    n.add_user("alice", "pw-alice")
    assert n.deliver("alice", make_message("scram", 1)[1])[0] == 0
    n.start()
    try:
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"):
            s = pop3support.POP3Session(n)
            reply, attrs = pop3support.scram_login(s, "alice", "pw-alice", mechanism)
            assert reply == b"+OK Logged in.", reply
            assert s.stat()[0] == 1
            s.ok("QUIT")
        s = pop3support.POP3Session(n, source="127.0.0.31")
        try:
            reply, _ = pop3support.scram_login(s, "nobody-here", "x")
            assert reply.startswith(b"-ERR [AUTH]"), reply
        except pop3support.POP3Error as e:
            assert "[AUTH]" in str(e), e
        s.close()
        maildir = os.path.join(cluster_db[1], "fetched")
        r = subprocess.run([pop3_bin, "fetch", f"pop3s://alice@localhost:{n.tls_port}", "--password-file",
                            n.password_file("alice"), "--ca-file", n.ca, "--maildir", maildir, "--keep", "--json"],
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert len(os.listdir(os.path.join(maildir, "new"))) == 1
    finally:
        n.stop()


def test_concurrent_first_logins_leave_no_lock_behind(pop3d_bin, cluster_db):
    """Regression: the first logins of a fresh node arrive together; they must share one lock connection (each
    making its own left locks on connections nobody released them on, and those accounts stayed [IN-USE])."""
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    users = [f"c{i}" for i in range(16)]
    for user in users:
        n.add_user(user, "pw", scheme="PLAIN")
    n.start()
    try:
        for round_ in range(2):
            failures = []

            def login(user):
                try:
                    s = pop3support.POP3Session(n, timeout=30).login(user, "pw")
                    s.quit()
                except Exception as e:  # noqa: BLE001
                    failures.append((user, str(e)))

            threads = [threading.Thread(target=login, args=(u,)) for u in users]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not failures, f"round {round_}: {failures}"
    finally:
        n.stop()


def test_a_stopped_lock_backend_ends_lock_queries_after_the_deadline(pop3d_bin, cluster_db, postgres):
    """postgres-nio's queries cannot be cancelled, so a lock query whose database stops answering is ended by closing
    the node's lock connection after its 5 s deadline (MaildropLocks.queryDeadline). The lock connection's backend is
    stopped (SIGSTOP, as a hung server): a login waits for the lock at most the deadline and gets [SYS/TEMP] (it
    used to wait for as long as the backend was stopped); the next login reconnects and works; the session that held
    a lock on the closed connection deletes all or nothing."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    n = node(pop3d_bin, cluster_db)
    n.migrate()
    for user in ("alice", "bob"):
        n.add_user(user, f"pw-{user}")
        assert n.deliver(user, make_message(user, 1)[1])[0] == 0
    n.start()
    try:
        a = n.poplib_pop3s("alice")
        a.dele(1)
        backend = int(postgres.psql("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted", db=db).split()[0])
        os.kill(backend, signal.SIGSTOP)
        try:
            started = time.monotonic()
            reply = expect_err(lambda: n.poplib_pop3s("bob"), "[SYS/TEMP]")
            waited = time.monotonic() - started
        finally:
            os.kill(backend, signal.SIGCONT)
        assert 4 <= waited < 15, f"a lock query on a stopped backend ended after {waited:.1f} s: {reply}"
        assert "maildrop lock connection failed" in n.log_text()
        deadline = time.monotonic() + 10
        while True:  # the old backend sees its connection closed and exits, freeing alice's lock
            try:
                b = n.poplib_pop3s("bob")
                break
            except poplib.error_proto as e:
                assert time.monotonic() < deadline, f"no login after the lock connection was replaced: {e}"
                time.sleep(0.2)
        assert b.stat()[0] == 1
        b.quit()
        try:
            a.quit()
            deleted = True
        except poplib.error_proto as e:
            assert "[SYS/TEMP]" in str(e), e
            deleted = False
        c = n.poplib_pop3s("alice")
        assert c.stat()[0] == (0 if deleted else 1), "QUIT's answer and the maildrop agree"
        c.quit()
    finally:
        n.stop()



# ---------------------------------------------------------------- a node cut off from the database

CUT_ADDRESS = "127.0.0.3"


class _TwoAddressPostgres(pop3support.Postgres):
    """A private cluster that listens on 127.0.0.1 and on CUT_ADDRESS: a node given CUT_ADDRESS in its URL is the
    only one whose database traffic goes there, so a firewall rule on that address cuts it, and only it, off.
    (Connections to 127.0.0.3 leave from 127.0.0.1, which pg_hba.conf trusts.)"""

    def _options(self):
        return f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1,{CUT_ADDRESS}"


class _Partition:
    """A network partition between ADDRESS:PORT and its clients: an nftables table of our own (inet
    pop3test_cutoff_<pid>) whose input chain silently drops every TCP packet to and from ADDRESS:PORT (on loopback
    both directions pass the input hook). No RST, no ICMP: both ends only stop hearing each other. heal() removes
    the table; it is idempotent and belongs in a finally."""

    def __init__(self, address, port):
        self.table = f"pop3test_cutoff_{os.getpid()}"
        self.address, self.port = address, port
        self.active = False

    def cut(self):
        self.active = True  # first: a table half made is removed too
        script = (f"table inet {self.table} {{\n"
                  "  chain input {\n"
                  "    type filter hook input priority -10; policy accept;\n"
                  f"    ip daddr {self.address} tcp dport {self.port} counter drop\n"
                  f"    ip saddr {self.address} tcp sport {self.port} counter drop\n"
                  "  }\n"
                  "}\n")
        r = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"nft -f: {r.stderr.strip()}"

    def counters(self):
        """The two rules' dropped packet counts (to the server, from it)."""
        r = subprocess.run(["nft", "list", "table", "inet", self.table], capture_output=True, text=True, timeout=30)
        return [int(n) for n in re.findall(r"counter packets (\d+)", r.stdout)]

    def heal(self):
        if not self.active:
            return
        r = subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, text=True, timeout=30)
        listed = subprocess.run(["nft", "list", "table", "inet", self.table], capture_output=True, timeout=30)
        assert listed.returncode != 0, f"nft table {self.table} still there: {r.stderr.strip()}"
        self.active = False


def _ss(*filter_):
    """`ss -Htnpo FILTER` lines (TCP, no header, processes, timers)."""
    r = subprocess.run(["ss", "-Htnpo", *filter_], capture_output=True, text=True, timeout=30)
    return [" ".join(line.split()) for line in r.stdout.splitlines() if line.strip()]


class _LockTimeline(threading.Thread):
    """Every 0.5 s: pop3d's sessions in pg_stat_activity with the advisory locks each holds (pg_locks), and the
    TCP sockets to and from ADDRESS:PORT with their timers (ss -o: keepalive probes, retransmissions)."""

    def __init__(self, cluster, db, address):
        super().__init__(daemon=True)
        self.cluster, self.db, self.address = cluster, db, address
        self.samples = []  # (time.time(), [pg rows], [ss lines])
        self._stop_event = threading.Event()

    def sample(self):
        try:
            rows = self.cluster.psql(
                "SELECT a.pid, a.client_port, a.state, coalesce(a.wait_event, '-'), coalesce((SELECT string_agg("
                "l.objid::text, ',') FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted), "
                f"'-') FROM pg_stat_activity a WHERE a.datname = '{self.db}' AND a.application_name = 'pop3d' "
                "ORDER BY a.pid").split("\n")
        except Exception as e:  # noqa: BLE001 - a sample that failed is recorded as such
            rows = [f"psql failed: {e}"]
        port = self.cluster.port
        sockets = _ss("(", "dst", f"{self.address}:{port}", "or", "src", f"{self.address}:{port}", ")")
        self.samples.append((time.time(), [r for r in rows if r], sockets))

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(0.5)

    def stop(self):
        self._stop_event.set()
        if self.is_alive():
            self.join(30)

    def render(self, origin, full_until=15):
        """Every sample up to `full_until` s after `origin`, then only those whose database sessions changed."""
        out, last = [], None
        for when, rows, sockets in self.samples:
            t = when - origin
            if t > full_until and rows == last:
                continue
            last = rows
            out.append(f"t={t:+7.2f}s pg (pid|client_port|state|wait_event|advisory lock objids): {'; '.join(rows)}")
            out.extend(f"            ss: {line}" for line in sockets)
        return "\n".join(out)


def _postgres_log_since(cluster, offset):
    with open(cluster.log_path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def _wait_for_line(session, seconds):
    """The session's next reply line, or a description of why there was none within `seconds`."""
    session.sock.settimeout(max(1.0, seconds))
    try:
        return session.line().decode(errors="replace")
    except (pop3support.POP3Error, OSError) as e:
        return f"(no reply: {type(e).__name__}: {e})"


@pytest.mark.root
def test_a_node_cut_off_from_the_database_frees_its_maildrops_and_applies_no_deletions(pop3d_bin):
    """Issue 13: a node cut off from PostgreSQL (not killed: a silent network partition, nftables dropping its
    packets both ways) loses its maildrop locks within seconds, because its lock connection asked PostgreSQL for
    2 s + 2 × 1 s TCP keepalives; the other node then serves the user (bound: 15 s from the cut). The cut-off
    session's DELEs are never applied: its QUIT does not answer +OK, and nothing is deleted, not even once the
    partition heals. The node does not hang on the dead database either: its QUIT answers -ERR within its own
    deadlines (pool_timeout + statement_timeout + 10 s, then 5 s for the lock's release: 25 s here, bound 45 s),
    and once the partition heals the node serves the user again (bound 30 s).

    Node 1 reaches the cluster at 127.0.0.3 and node 2 at 127.0.0.1 (a private cluster listening on both), so
    the rule cuts node 1 alone."""
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed (apt-get install nftables, as scripts/test-deps does)")
    if shutil.which("ss") is None:
        pytest.skip("ss is not installed (apt-get install iproute2)")
    cluster = _TwoAddressPostgres(shared_tmpdir("pop3-pgcut-"))
    folder = shared_tmpdir("pop3-pgnode-")
    cluster.start()
    partition = _Partition(CUT_ADDRESS, cluster.port)
    first = second = held = timeline = None
    facts = {}
    try:
        db = "pop3_cut"
        url = cluster.create(db)
        assert "@127.0.0.1:" in url, url
        # statement_timeout 5 on node 1: its deadlines on the unreachable database are shorter (the lock's fate
        # does not depend on them: that is PostgreSQL's keepalive).
        first = Pop3dNode(pop3d_bin, folder, url.replace("@127.0.0.1:", f"@{CUT_ADDRESS}:"), tag="node1",
                          extra_config="    statement_timeout: 5\n")
        second = Pop3dNode(pop3d_bin, folder, url, tag="node2")
        first.migrate()
        first.add_user("alice", "pw-alice")
        second.passwords["alice"] = "pw-alice"
        messages = [make_message("cut", i)[1] for i in range(5)]
        for data in messages:
            assert first.deliver("alice", data)[0] == 0
        first.start()
        second.start()

        held = pop3support.POP3Session(first, timeout=30).login("alice", "pw-alice")
        assert held.stat()[0] == 5
        uidls = held.uidl()
        held.dele_many([1, 2, 3])
        expect_err(lambda: second.poplib_pop3s("alice"), "[IN-USE]")
        # Node 1's database connections, and only node 1's, go to CUT_ADDRESS.
        to_cut = _ss("dst", f"{CUT_ADDRESS}:{cluster.port}")
        assert to_cut, "node 1 has no connection to the cluster at 127.0.0.3"
        assert all(f"pid={first.proc.pid}," in line for line in to_cut), to_cut
        facts["node 1 connections before the cut"] = to_cut
        locks = cluster.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted", db=db).strip()
        assert locks == "1", f"{locks} advisory locks before the cut"

        log_offset = os.path.getsize(cluster.log_path)
        timeline = _LockTimeline(cluster, db, CUT_ADDRESS)
        timeline.sample()
        partition.cut()
        cut_at, cut_wall = time.monotonic(), time.time()
        timeline.start()
        held.send(b"QUIT\r\n")  # sent into the partition: node 1 tries to commit the DELEs

        attempts, b = 0, None
        while time.monotonic() - cut_at < 60:
            attempts += 1
            try:
                b = second.poplib_pop3s("alice")
                break
            except poplib.error_proto as e:
                assert "[IN-USE]" in str(e), f"node 2 answered {e} {time.monotonic() - cut_at:.1f} s after the cut"
            time.sleep(0.2)
        freed = facts["node 2 logged alice in (s after the cut)"] = round(time.monotonic() - cut_at, 2)
        facts["node 2 login attempts"] = attempts
        if b is None:
            timeline.stop()
            pytest.fail(f"alice still [IN-USE] on node 2 60 s after node 1 was cut off ({attempts} attempts)\n"
                        f"{timeline.render(cut_wall, full_until=60)}\n--- postgres log since the cut:\n"
                        f"{_postgres_log_since(cluster, log_offset)}\n--- node 1 log:\n{first.log_text()[-6000:]}")

        count, _ = b.stat()
        listing = {int(n): u for n, u in (line.decode().split() for line in b.uidl()[1])}
        bodies = [b"\r\n".join(b.retr(i)[1]) + b"\r\n" for i in range(1, count + 1)]
        assert b.quit().startswith(b"+OK")

        quit_reply = _wait_for_line(held, 45 - (time.monotonic() - cut_at))
        facts["node 1 QUIT reply during the partition"] = quit_reply
        facts["node 1 QUIT waited (s after the cut)"] = round(time.monotonic() - cut_at, 1)
        left_cut = facts["messages during the partition"] = int(
            cluster.psql("SELECT count(*) FROM messages", db=db).strip())
        facts["packets dropped (to the server, from it)"] = partition.counters()

        partition.heal()
        healed_at = time.monotonic()
        facts["healed (s after the cut)"] = round(healed_at - cut_at, 1)
        if quit_reply.startswith("(no reply"):
            # Still waiting: whatever node 1 had in flight now reaches PostgreSQL (TCP retransmits back off to 120 s).
            late = facts["node 1 QUIT reply after the heal"] = _wait_for_line(held, 180)
            facts["node 1 QUIT answered after the heal (s)"] = round(time.monotonic() - healed_at, 1)
        else:
            late = ""
            time.sleep(5)  # anything node 1 still had in flight reaches PostgreSQL now
        left_healed = int(cluster.psql("SELECT count(*) FROM messages", db=db).strip())
        facts["messages after the heal"] = left_healed
        started = time.monotonic()
        again = None
        while time.monotonic() - started < 30:
            try:
                again = first.poplib_pop3s("alice")
                break
            except (poplib.error_proto, OSError) as e:
                facts["node 1 last refusal after the heal"] = str(e)
                time.sleep(0.5)
        facts["node 1 serves alice again (s after the heal wait)"] = (
            round(time.monotonic() - started, 1) if again else "not within 30 s")
        if again is not None:
            assert again.stat()[0] == 5
            assert again.quit().startswith(b"+OK")
        timeline.stop()

        report = "\n".join(f"  {k}: {v}" for k, v in facts.items())
        print(f"\ncut-off node:\n{report}")
        print(timeline.render(cut_wall))
        print("--- postgres log since the cut:\n" + _postgres_log_since(cluster, log_offset))
        print("--- node 1 log:\n" + first.log_text()[-6000:])
        # The lock, and nothing lost or deleted.
        assert freed <= 15, f"the cut-off node's lock outlived the cut by {freed} s\n{report}"
        assert count == 5 and listing == uidls, "the cut-off session's DELEs are not applied"
        assert bodies == [crlf(m) for m in messages], "nothing is lost"
        assert not quit_reply.startswith("+OK") and not late.startswith("+OK"), f"+OK to a cut-off QUIT\n{report}"
        assert left_cut == 5 and left_healed == 5, report
        # The node's own deadlines.
        assert quit_reply.startswith("-ERR"), f"the cut-off node's QUIT hangs past its deadlines\n{report}"
        assert again is not None, f"node 1 does not serve alice again within 30 s of the heal\n{report}"
    finally:
        partition.heal()
        if timeline is not None:
            timeline.stop()
        if held is not None:
            held.close()
        for n in (first, second):
            if n is not None:
                n.stop()
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- a 1 GiB message through the database

GIB = 1 << 30


def _gigabyte_message(sha):
    """Yields a message of 1 GiB plus its header, in 1 MiB blocks of 128-octet CRLF lines, each block's first line
    starting with a dot (dot-stuffed on the wire); updates `sha` with every block. Nothing is kept."""
    header = (b"From: tests@example.test\r\nTo: big@example.test\r\nSubject: one gigabyte\r\n"
              b"Message-ID: <gigabyte@pop3.test>\r\n\r\n")
    sha.update(header)
    yield header
    line = bytes(range(0x21, 0x7f)) * 3  # printable ASCII; one line in 94 starts with a dot as well
    rest = b"".join(line[i % 94:i % 94 + 126] + b"\r\n" for i in range(1, 8192))
    for n in range(GIB // (1 << 20)):
        block = (b".block %08d " % n).ljust(126, b"-") + b"\r\n" + rest
        sha.update(block)
        yield block



@pytest.mark.slow
def test_a_gigabyte_message_streams_through_postgres_with_bounded_memory(pop3d_bin, cluster_db, postgres):
    """A message of 1 GiB (plus header) piped into `pop3d deliver` and read back by RETR: both stream it chunk by
    chunk (storage chunks of 256 KiB), so neither process grows with the message: peak RSS under 200 MiB for the
    delivering process (ru_maxrss) and for the serving node (VmHWM after the RETR, which pauses a while midway);
    the octets read equal LIST's size and the bytes are the ones delivered (SHA-256). The database is dropped
    afterwards (it holds the gigabyte)."""
    url, folder = cluster_db
    db = url.rsplit("/", 1)[1]
    free = shutil.disk_usage(postgres.data).free
    if free < 6 * GIB:
        pytest.skip(f"{free / GIB:.1f} GiB free under {postgres.data}: a 1 GiB message in PostgreSQL (table, TOAST "
                    "and WAL) wants 6 GiB")
    limit_kib = 200 * 1024
    n = node(pop3d_bin, cluster_db)
    try:
        n.migrate()
        n.add_user("big", "pw-big")
        sent = hashlib.sha256()
        size = 0
        started = time.monotonic()
        with open(os.path.join(folder, "deliver.err"), "wb+") as err:
            p = subprocess.Popen([n.bin, "deliver", "big", "--config", n.config], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=err)
            try:
                for block in _gigabyte_message(sent):
                    p.stdin.write(block)
                    size += len(block)
                p.stdin.close()
            except BrokenPipeError:
                pass
            finally:
                try:
                    p.stdin.close()
                except OSError:
                    pass
                deadline = time.monotonic() + 900
                while (waited := os.wait4(p.pid, os.WNOHANG))[0] == 0:
                    if time.monotonic() > deadline:
                        p.kill()
                    time.sleep(0.1)
                _, status, usage = waited
                p.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        deliver_s = time.monotonic() - started
        deliver_peak = usage.ru_maxrss  # KiB on Linux
        assert p.returncode == 0, f"pop3d deliver: exit {p.returncode}: {message[-500:]}"
        assert size > GIB

        n.start()
        s = pop3support.POP3Session(n, timeout=300).login("big", "pw-big")
        listed = s.list()
        assert s.quit().startswith(b"+OK")
        assert listed == {1: size}, f"LIST {listed}, delivered {size} octets (CRLF lines: the POP3 size is the size)"
        before = pop3support.vm_kib(n.proc.pid, "VmRSS")
        started = time.monotonic()
        octets, digest, paused = pop3support.stream_retr(
            n, "big", "pw-big", 1, pause_after=64 << 20, pause=3.0,
            while_paused=lambda: pop3support.vm_kib(n.proc.pid, "VmRSS"))
        retr_s = time.monotonic() - started
        serve_peak = pop3support.vm_kib(n.proc.pid, "VmHWM")
        print(f"\n1 GiB through PostgreSQL: {size} octets; deliver {deliver_s:.1f} s, peak RSS {deliver_peak} KiB "
              f"({deliver_peak / 1024:.1f} MiB); RETR {retr_s:.1f} s, {octets} octets; pop3d serve RSS "
              f"{before / 1024:.1f} MiB before, {paused / 1024:.1f} MiB while the reader paused, peak (VmHWM) "
              f"{serve_peak / 1024:.1f} MiB")
        assert octets == size, f"RETR gave {octets} octets, LIST said {size}"
        assert digest == sent.hexdigest(), "RETR's bytes differ from the delivered ones"
        assert deliver_peak < limit_kib, f"pop3d deliver peaked at {deliver_peak / 1024:.0f} MiB: not streaming"
        assert serve_peak < limit_kib, f"pop3d serve peaked at {serve_peak / 1024:.0f} MiB: RETR is not streaming"
    finally:
        n.stop()
        postgres.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        postgres.psql("CHECKPOINT")
