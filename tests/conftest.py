"""Fixtures for the process-level suite. Generic code lives in pop3support.py (importable from every test module:
pytest puts this folder, the rootdir conftest's, on sys.path); fixtures only wire it up.

Binaries: POP3_BIN_DIR (holding pop3d and pop3), else `swift build --show-bin-path` in the repository root (that
prints the path; it does not build).
"""
import os
import shutil
import subprocess

import pytest

import pop3support

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root (uid 0); CI runs as root")
    if item.get_closest_marker("dovecot") and pop3support.dovecot_binary() is None:
        pytest.skip("Dovecot is not installed (apt-get install dovecot-pop3d, as .ci/run does)")
    if item.get_closest_marker("haproxy") and pop3support.haproxy_binary() is None:
        pytest.skip("HAProxy is not installed (apt-get install haproxy, as scripts/test-deps does)")
    if item.get_closest_marker("postgres") and pop3support.postgres_binary() is None:
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql-15, as scripts/test-deps does)")


@pytest.fixture(scope="session")
def bin_dir():
    path = os.environ.get("POP3_BIN_DIR")
    if not path:
        try:
            r = subprocess.run(["swift", "build", "--show-bin-path"], cwd=REPO, capture_output=True, text=True,
                               timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.fail(f"POP3_BIN_DIR is not set and `swift build --show-bin-path` failed: {e}", pytrace=False)
        if r.returncode != 0:
            pytest.fail(f"POP3_BIN_DIR is not set and `swift build --show-bin-path` exited {r.returncode}: "
                        f"{r.stderr.strip()[-300:]}", pytrace=False)
        path = r.stdout.strip().splitlines()[-1]
    return os.path.abspath(path)


def _binary(bin_dir, name):
    path = os.path.join(bin_dir, name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found at {path}: build first (swift build) or set POP3_BIN_DIR", pytrace=False)
    return path


@pytest.fixture(scope="session")
def pop3d_bin(bin_dir):
    return _binary(bin_dir, "pop3d")


@pytest.fixture(scope="session")
def pop3_bin(bin_dir):
    return _binary(bin_dir, "pop3")


def _dev(pop3d_bin, root):
    dev = pop3support.Pop3dDev(pop3d_bin, root)
    dev.start()
    return dev


@pytest.fixture
def pop3d(pop3d_bin, tmp_path):
    """A started `pop3d dev` of its own in tmp_path (demo account, 3 messages), stopped after the test."""
    dev = _dev(pop3d_bin, tmp_path)
    yield dev
    dev.stop()


@pytest.fixture(scope="module")
def shared_pop3d(pop3d_bin, tmp_path_factory):
    """One `pop3d dev` for a whole module, for read-mostly tests (each test must leave the demo maildrop as it
    found it, or say what it changes)."""
    dev = _dev(pop3d_bin, tmp_path_factory.mktemp("shared-pop3d"))
    yield dev
    dev.stop()


@pytest.fixture(scope="session")
def postgres():
    """One private PostgreSQL 15 cluster for the session (initdb + pg_ctl in a temporary folder, a free port),
    stopped and removed at the end (its write-ahead log alone can be a gigabyte after the slow tests). Each test
    creates a database of its own (`postgres.create(name)`)."""
    if pop3support.postgres_binary() is None:
        pytest.skip("PostgreSQL 15 is not installed (apt-get install postgresql-15, as scripts/test-deps does)")
    cluster = pop3support.Postgres(pop3support.shared_tmpdir("pop3-pg-"))
    cluster.start()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


BACKENDS = [pytest.param(b, marks=pytest.mark.postgres) if b == "postgres" else b for b in pop3support.BACKENDS]


def _backend_dev(request, pop3d_bin, root, **kw):
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    try:
        return pop3support.start_backend_dev(pop3d_bin, root, request.param, postgres, **kw)
    except RuntimeError as e:
        pytest.fail(f"pop3d dev on {request.param}: {e}", pytrace=False)


@pytest.fixture(scope="module", params=BACKENDS)
def backend_pop3d(request, pop3d_bin, tmp_path_factory):
    """As `shared_pop3d` (one read-mostly `pop3d dev` per module), once per storage backend: the protocol checks
    that use it run against Maildir and against PostgreSQL (pop3support.start_backend_dev: the demo account and its
    3 messages migrated into a database of its own, accounts there too). Each test must leave the maildrop and the
    accounts as it found them, and fail logins only from loopback addresses of its own (the auth penalty)."""
    dev = _backend_dev(request, pop3d_bin, tmp_path_factory.mktemp(f"pop3d-{request.param}"))
    yield dev
    dev.stop()


@pytest.fixture(params=BACKENDS)
def backend_pop3d_each(request, pop3d_bin, tmp_path):
    """As `pop3d` (a `pop3d dev` of the test's own, stopped after it), once per storage backend: for protocol
    checks that change the maildrop or the accounts, or leave an auth penalty behind."""
    dev = _backend_dev(request, pop3d_bin, tmp_path)
    yield dev
    dev.stop()


@pytest.fixture(params=BACKENDS)
def backend_pop3d_factory(request, pop3d_bin, tmp_path):
    """As `backend_pop3d_each` when the dev needs options: a function `start(extra_config="", run_as=None)` (as for
    Pop3dDev) that returns the started `pop3d dev` of the test's own, on each storage backend in turn."""
    started = []

    def start(**kw):
        assert not started, "one backend_pop3d_factory dev per test"
        started.append(_backend_dev(request, pop3d_bin, tmp_path, **kw))
        return started[0]
    yield start
    for dev in started:
        dev.stop()
