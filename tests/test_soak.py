"""Soak and slowloris for pop3d (issue 4, "Load and faults"), formerly scripts/soak.py. Long: marked `slow` (not
in scripts/test); run it with scripts/soak, or directly:

    POP3_BIN_DIR=/path/to/bin POP3_SOAK_SECONDS=300 .venv/bin/python -m pytest tests/test_soak.py -m slow -s

One module-scoped run starts `pop3d dev` (a private copy of the binary) on free loopback ports in a temporary
folder, then for POP3_SOAK_SECONDS (default 300, at least 20):
  - holds POP3_SOAK_IDLE (default 2,000) idle authenticated TLS connections, one user each (the maildrop lock is
    exclusive), bound to source addresses 127.0.0.2-127.0.0.9 to stay under the per-address limit of 1,024;
  - runs a stream of full sessions (login, STAT, UIDL, RETR, QUIT) from POP3_SOAK_SESSION_THREADS (3) threads,
    checking every reply and every message byte;
  - from 15 % to 85 % of the run, keeps POP3_SOAK_SLOWLORIS (default 1,000) connections stalled: silent after
    connect, half a ClientHello, or TLS done then a command line dripped one byte every 10 s (reopened as the server
    closes them, like a real attacker); a legitimate login is timed every 1.5 s;
  - samples pop3d's VmRSS, open descriptors and threads every second.
Then it closes everything, waits up to 30 s for the descriptors to return to baseline (and at least 10 s before
measuring memory: swift-nio-ssl holds a connection closed after QUIT until its 5 s close_notify timeout). A second,
shorter cycle (POP3_SOAK_REPEAT_SECONDS, default 20, same load; POP3_SOAK_REPEATS of them, default 1) follows.
The tests below are the checks on that run:
  zero protocol errors in the full sessions and idle connections, max legitimate login time during slowloris
  < 1.5 s (docs/security-cases.md case 23; 1 s in scripts/soak.py, see SLOWLORIS_LOGIN_BOUND), fds back to
  baseline ± 10 (each cycle). RSS: glibc keeps freed memory in its arenas for reuse, so VmRSS after closing stays
  near the peak even without a leak. After each cycle (and at baseline) malloc_trim(0) is called in pop3d through
  gdb, at rest, and the trimmed RSS must be within the trimmed baseline + max(24 MiB, 10 % of the peak growth).
  Without gdb (or POP3_SOAK_MALLOC_TRIM=0) the repeat must end within max(4 MiB, 10 % of the growth) of the first.
With -s it prints progress, each check's numbers and a summary table (RSS, fds, threads). samples.csv is written to
the run's folder (printed). Other knobs: POP3_SOAK_SESSION_PAUSE (0.05 s), POP3_SOAK_RAMP_THREADS (16).
Needs `ulimit -n` above 2 x (idle + slowloris) + 500 (raised to the hard limit if possible).
"""
import collections
import concurrent.futures
import os
import random
import resource
import selectors
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time

import pytest

from pop3support import (POP3Error, POP3Session, Pop3dDev, RSSSampler, client_hello, fd_count, make_message,
                         normalize, proc_status, rss_kib, sha256, stop_process)

pytestmark = pytest.mark.slow


def _env(name, default, kind=int):
    value = os.environ.get(name)
    return kind(value) if value not in (None, "") else default


SECONDS = max(_env("POP3_SOAK_SECONDS", 300), 20)
IDLE = _env("POP3_SOAK_IDLE", 2000)
SLOWLORIS = _env("POP3_SOAK_SLOWLORIS", 1000)
SESSION_THREADS = _env("POP3_SOAK_SESSION_THREADS", 3)
SESSION_PAUSE = _env("POP3_SOAK_SESSION_PAUSE", 0.05, float)
RAMP_THREADS = _env("POP3_SOAK_RAMP_THREADS", 16)
REPEAT_SECONDS = _env("POP3_SOAK_REPEAT_SECONDS", 20)
REPEATS = _env("POP3_SOAK_REPEATS", 1)
MALLOC_TRIM = _env("POP3_SOAK_MALLOC_TRIM", 1) != 0 and shutil.which("gdb") is not None

SOURCES = [f"127.0.0.{n}" for n in range(2, 10)]
IP_BIND_ADDRESS_NO_PORT = 24
PASSWORD = "soak-password-1"
# A legitimate login during slowloris must complete within this many seconds. scripts/soak.py had 1 s; loosened to
# 1.5 s for shared machines: on 2 busy cores (load average 5-8) the max was 0.74-1.16 s over ~37 logins while logins
# with no slowloris at all (during the idle ramp) took up to 2.0 s. A quiet machine measures about 43 ms (README).
SLOWLORIS_LOGIN_BOUND = 1.5
SESSION_SIZES = [200, 2_000, 20_000, 150_000, 1_000, 600_000, 5_000, 50_000]


def log(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def mib(kib):
    return kib / 1024


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# ---------------------------------------------------------------- pop3d extras: threads, malloc_trim

def threads(server):
    return proc_status(server.pid, "Threads")


def malloc_trim(server):
    """Asks glibc to give free arena memory back (gdb: call malloc_trim(0)); True when it ran. Only when idle:
    the process is stopped for about a second."""
    if not MALLOC_TRIM:
        return False
    r = subprocess.run(["gdb", "-p", str(server.pid), "-batch", "-nx", "-iex", "set auto-load off",
                        "-ex", "call (int)malloc_trim(0)"], capture_output=True, text=True, timeout=120)
    if "$1 = " in r.stdout:
        return True
    log(f"malloc_trim through gdb failed (exit {r.returncode}): {(r.stdout + r.stderr).strip()[-300:]}")
    return False


class LoadSampler(RSSSampler):
    """RSSSampler's thread, sampling once a second a row (t, RSS KiB, fds, threads, phase) into `rows`."""

    def __init__(self, server):
        super().__init__(server.pid, interval=1.0)
        self.server = server
        self.rows = []
        self.phase = "baseline"

    def sample(self):
        try:
            row = (time.monotonic(), rss_kib(self.pid), fd_count(self.pid), threads(self.server), self.phase)
        except (OSError, KeyError):
            return None
        self.rows.append(row)
        self.samples.append(row[:2])
        self.peak = max(self.peak, row[1])
        return row


# ---------------------------------------------------------------- setup

def setup_accounts(server):
    """First start creates the data folder; then the users are written (one SHA512-CRYPT hash made by
    `pop3d user add`, shared by every account) and the session users get their messages. Returns the idle users
    and, per session user, {UIDL: sha256 of the message as stored (LF endings)}."""
    server.start()
    server.stop()
    server.add_user("soakhash", PASSWORD, scheme="SHA512-CRYPT")
    users_path = os.path.join(server.data, "users")
    with open(users_path) as f:
        lines = f.read().splitlines()
    hashed = [line for line in lines if line.startswith("soakhash:")][0].split(":", 1)[1]
    idle_users = [f"idle{n:05d}" for n in range(IDLE)]
    session_users = [f"sess{n}" for n in range(SESSION_THREADS)]
    with open(users_path, "a") as f:
        for name in idle_users + session_users + ["probe"]:
            f.write(f"{name}:{hashed}\n")
    for user in session_users:
        server.seed(user, [make_message(user, index, size)[1] for index, size in enumerate(SESSION_SIZES)])
    server.start()
    expected = {}
    for user in session_users:
        s = POP3Session(server, timeout=30)
        s.login(user, PASSWORD)
        uidl = s.uidl()
        contents = {uid: sha256(normalize(s.retr(n))) for n, uid in uidl.items()}
        s.ok("QUIT")
        s.close()
        originals = {sha256(make_message(user, i, size)[1]) for i, size in enumerate(SESSION_SIZES)}
        if set(contents.values()) != originals:
            raise RuntimeError(f"{user}: served messages differ from the delivered ones")
        expected[user] = contents
    probe = POP3Session(server, timeout=30)
    probe.login("probe", PASSWORD)
    probe.ok("QUIT")
    probe.close()
    return idle_users, expected


# ---------------------------------------------------------------- load: full sessions

class SessionStream(threading.Thread):
    def __init__(self, server, user, expected, stop_event):
        super().__init__(daemon=True)
        self.server, self.user, self.expected, self.stop_event = server, user, expected, stop_event
        self.count = 0
        self.errors = []
        self.latencies = []
        self.octets = 0
        self.rng = random.Random(user)

    def one(self):
        started = time.monotonic()
        s = POP3Session(self.server, timeout=30)
        try:
            s.login(self.user, PASSWORD)
            count, _ = s.stat()
            if count != len(self.expected):
                raise POP3Error(f"STAT {count}, expected {len(self.expected)}")
            uidl = s.uidl()
            if set(uidl.values()) != set(self.expected):
                raise POP3Error(f"UIDL set changed: {sorted(uidl.values())[:3]}")
            for n in self.rng.sample(sorted(uidl), 2):
                body = s.retr(n)
                self.octets += len(body)
                if sha256(normalize(body)) != self.expected[uidl[n]]:
                    raise POP3Error(f"RETR {n}: content differs")
            s.ok("QUIT")
        finally:
            s.close()
        self.latencies.append(time.monotonic() - started)

    def run(self):
        while not self.stop_event.is_set():
            try:
                self.one()
                self.count += 1
            except Exception as e:  # noqa: BLE001 - every failure is a protocol error to report
                self.errors.append(f"{time.strftime('%H:%M:%S')} {self.user}: {type(e).__name__}: {e}")
                time.sleep(0.5)
            self.stop_event.wait(SESSION_PAUSE)


# ---------------------------------------------------------------- load: idle authenticated connections

def open_idle(server, users):
    conns, errors = [], []
    lock = threading.Lock()

    def one(index):
        user = users[index]
        try:
            s = POP3Session(server, source=SOURCES[index % len(SOURCES)], timeout=30)
            try:
                s.login(user, PASSWORD)
            except BaseException:
                s.close()
                raise
            with lock:
                conns.append((user, s))
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"{user}: {type(e).__name__}: {e}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=RAMP_THREADS) as pool:
        list(pool.map(one, range(len(users))))
    return conns, errors


def noop_all(conns):
    """NOOP on every idle connection, pipelined in batches; returns errors."""
    errors = []
    for start in range(0, len(conns), 200):
        batch = conns[start:start + 200]
        for user, s in batch:
            try:
                s.send(b"NOOP\r\n")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{user}: NOOP send: {type(e).__name__}: {e}")
        for user, s in batch:
            try:
                reply = s.line()
                if not reply.startswith(b"+OK"):
                    raise POP3Error(f"NOOP: {reply[:100]!r}")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{user}: NOOP: {type(e).__name__}: {e}")
    return errors


# ---------------------------------------------------------------- slowloris

def tcp(source=None, timeout=30):
    """A TCP socket, bound to `source` without reserving a port until connect (IP_BIND_ADDRESS_NO_PORT)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
    return s


class Slowloris(threading.Thread):
    """Keeps `target` connections stalled, of three kinds, reopening those the server closes."""

    KINDS = ("silent", "half-hello", "drip")

    def __init__(self, server, target):
        super().__init__(daemon=True)
        self.server = server
        self.target = {"silent": target * 2 // 5, "half-hello": target // 5}
        self.target["drip"] = target - self.target["silent"] - self.target["half-hello"]
        self.stop_event = threading.Event()
        hello = client_hello()
        self.hello = hello[: len(hello) // 2]
        self.selector = selectors.DefaultSelector()
        self.conns = {}  # fd -> (kind, sock, opened)
        self.open_count = collections.Counter()
        self.lifetimes = collections.defaultdict(list)  # kind -> seconds until the server closed it
        self.open_errors = collections.Counter()
        self.max_live = 0
        self.sequence = 0

    def live(self, kind):
        return sum(1 for k, _, _ in self.conns.values() if k == kind)

    def open_one(self, kind):
        self.sequence += 1
        source = SOURCES[self.sequence % len(SOURCES)]
        raw = None
        try:
            raw = tcp(source, timeout=10)
            raw.connect(("127.0.0.1", self.server.tls_port))
            if kind == "half-hello":
                raw.sendall(self.hello)
                sock = raw
            elif kind == "drip":
                sock = self.server.ctx.wrap_socket(raw, server_hostname="localhost")
                greeting = sock.recv(512)
                if not greeting.startswith(b"+OK"):
                    raise POP3Error(f"greeting {greeting[:40]!r}")
                sock.sendall(b"USER slow")
            else:
                sock = raw
            sock.setblocking(False)
        except Exception as e:  # noqa: BLE001
            self.open_errors[f"{kind}: {type(e).__name__}"] += 1
            try:
                if raw is not None:
                    raw.close()
            except Exception:  # noqa: BLE001
                pass
            return
        self.conns[sock.fileno()] = (kind, sock, time.monotonic())
        self.selector.register(sock, selectors.EVENT_READ)
        self.open_count[kind] += 1

    def drop(self, fd, closed_by_server):
        kind, sock, opened = self.conns.pop(fd)
        self.selector.unregister(sock)
        if closed_by_server:
            self.lifetimes[kind].append(time.monotonic() - opened)
        try:
            sock.close()
        except OSError:
            pass

    def poll(self):
        for key, _ in self.selector.select(timeout=0.2):
            fd = key.fd
            if fd not in self.conns:
                continue
            sock = self.conns[fd][1]
            try:
                while True:
                    data = sock.recv(4096)
                    if not data:
                        self.drop(fd, True)
                        break
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except (OSError, ssl.SSLError):
                self.drop(fd, True)

    def run(self):
        last_drip = time.monotonic()
        while not self.stop_event.is_set():
            for kind in self.KINDS:
                missing = self.target[kind] - self.live(kind)
                for _ in range(min(missing, 100 if kind != "drip" else 25)):
                    self.open_one(kind)
            self.max_live = max(self.max_live, len(self.conns))
            self.poll()
            if time.monotonic() - last_drip > 10:
                last_drip = time.monotonic()
                for fd, (kind, sock, _) in list(self.conns.items()):
                    if kind == "drip":
                        try:
                            sock.send(b"x")
                        except (ssl.SSLWantWriteError, BlockingIOError):
                            pass
                        except (OSError, ssl.SSLError):
                            self.drop(fd, True)
        for fd in list(self.conns):
            self.drop(fd, False)
        self.selector.close()


# ---------------------------------------------------------------- legitimate logins

class Prober(threading.Thread):
    def __init__(self, server, slowloris_active):
        super().__init__(daemon=True)
        self.server, self.slowloris_active = server, slowloris_active
        self.stop_event = threading.Event()
        self.times = {"quiet": [], "slowloris": []}
        self.errors = []

    def run(self):
        while not self.stop_event.wait(1.5):
            phase = "slowloris" if self.slowloris_active.is_set() else "quiet"
            started = time.monotonic()
            try:
                s = POP3Session(self.server, timeout=15)
                try:
                    s.login("probe", PASSWORD)
                    elapsed = time.monotonic() - started
                    s.ok("STAT")
                    s.ok("QUIT")
                finally:
                    s.close()
                if self.slowloris_active.is_set() or phase == "quiet":
                    self.times[phase].append(elapsed)
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"{phase}: {type(e).__name__}: {e}")
                self.times[phase].append(time.monotonic() - started)


# ---------------------------------------------------------------- one load cycle

class Cycle:
    """Full sessions + idle connections (+ slowloris in [slow_from, slow_to] of the hold), then close everything
    and wait up to 30 s for pop3d's descriptors to come back to the baseline."""

    def __init__(self, label, server, sampler, idle_users, expected, hold, slow_from, slow_to, base_fds):
        self.label, self.server, self.sampler = label, server, sampler
        self.idle_users, self.expected, self.hold = idle_users, expected, hold
        self.slow_from, self.slow_to, self.base_fds = slow_from, slow_to, base_fds
        self.stop_sessions = threading.Event()
        self.streams, self.idle, self.slowloris, self.prober = [], [], None, None
        self.idle_problems, self.keepalives, self.ramp = [], 0, 0.0
        self.held = 0

    def run(self):
        server, sampler = self.server, self.sampler
        sampler.phase = self.label
        for n in range(SESSION_THREADS):
            stream = SessionStream(server, f"sess{n}", self.expected[f"sess{n}"], self.stop_sessions)
            stream.start()
            self.streams.append(stream)
        slowloris_active = threading.Event()
        self.prober = Prober(server, slowloris_active)
        self.prober.start()

        ramp_started = time.monotonic()
        self.idle, open_errors = open_idle(server, self.idle_users)
        self.idle_problems += open_errors
        self.ramp = time.monotonic() - ramp_started
        log(f"{self.label}: {len(self.idle)} idle connections authenticated in {self.ramp:.1f} s "
            f"({len(open_errors)} failed); pop3d: {server.fd_count()} fds, RSS {mib(server.rss_kib()):.1f} MiB")

        hold_started = time.monotonic()
        hold_end = hold_started + self.hold
        slow_start, slow_end = hold_started + self.slow_from, hold_started + self.slow_to
        next_keepalive = hold_started + 240
        while time.monotonic() < hold_end:
            now = time.monotonic()
            if self.slowloris is None and SLOWLORIS > 0 and slow_start <= now < slow_end:
                self.slowloris = Slowloris(server, SLOWLORIS)
                self.slowloris.start()
                slowloris_active.set()
                t = self.slowloris.target
                log(f"{self.label}: slowloris, {SLOWLORIS} stalled connections "
                    f"({t['silent']} silent, {t['half-hello']} half-hello, {t['drip']} drip)")
            if self.slowloris is not None and self.slowloris.is_alive() and now >= slow_end:
                self.stop_slowloris(slowloris_active)
            if now >= next_keepalive:  # the post-auth idle timer is 600 s: a NOOP now and then for long runs
                self.idle_problems += noop_all(self.idle)
                self.keepalives += 1
                next_keepalive = now + 240
            time.sleep(min(1.0, max(0.05, hold_end - time.monotonic())))
        self.stop_slowloris(slowloris_active)
        self.stop_sessions.set()
        self.prober.stop_event.set()
        for stream in self.streams:
            stream.join(timeout=60)
        self.prober.join(timeout=30)
        mine = [s for s in sampler.rows if s[4] == self.label] or [sampler.sample()]
        self.peak_rss = max(s[1] for s in mine)
        self.peak_fds = max(s[2] for s in mine)
        self.peak_threads = max(s[3] for s in mine)

        # Every idle connection must still answer; then half QUIT, half are dropped without QUIT.
        self.idle_problems += noop_all(self.idle)
        self.held = len(self.idle)
        for i, (user, s) in enumerate(self.idle):
            if i % 2 == 0:
                try:
                    s.ok("QUIT")
                except Exception as e:  # noqa: BLE001
                    self.idle_problems.append(f"{user}: QUIT: {type(e).__name__}: {e}")
            s.close()
        self.idle = []
        sampler.phase = f"{self.label} closed"
        closed = time.monotonic()
        fds = server.fd_count()
        while time.monotonic() - closed < 30 and fds > self.base_fds + 10:
            time.sleep(0.5)
            fds = server.fd_count()
        self.settle = time.monotonic() - closed
        # swift-nio-ssl keeps a connection it sent close_notify on (after QUIT) until its 5 s shutdown timeout, and
        # pop3d's heap trimmer looks at the open connections every 10 s: measure memory once both have had their
        # turn (the "after" figure is pop3d's own, before the malloc_trim(0) this test then calls).
        time.sleep(max(0.0, 25 - (time.monotonic() - closed)))
        self.after_fds, self.after_rss, self.after_threads = server.fd_count(), server.rss_kib(), threads(server)
        self.after_parts = rss_parts(server.pid)
        self.trimmed_rss = server.rss_kib() if malloc_trim(server) else None
        log(f"{self.label}: closed; peak RSS {mib(self.peak_rss):.1f} MiB / {self.peak_fds} fds, after "
            f"{mib(self.after_rss):.1f} MiB / {self.after_fds} fds"
            + (f", after malloc_trim {mib(self.trimmed_rss):.1f} MiB" if self.trimmed_rss else ""))

    def stop_slowloris(self, active):
        if self.slowloris is not None and self.slowloris.is_alive():
            active.clear()
            self.slowloris.stop_event.set()
            self.slowloris.join(timeout=60)
            log(f"{self.label}: slowloris stopped (max {self.slowloris.max_live} live); pop3d "
                f"{self.server.fd_count()} fds")

    def abort(self):
        self.stop_sessions.set()
        if self.slowloris is not None:
            self.slowloris.stop_event.set()
        if self.prober is not None:
            self.prober.stop_event.set()
        for _, s in self.idle:
            s.close()

    # -- results
    def sessions(self):
        return sum(s.count for s in self.streams)

    def session_errors(self):
        return [e for s in self.streams for e in s.errors]


# ---------------------------------------------------------------- the run (once per module)

class SoakRun:
    """What the checks read: the server, the cycles (main first, then the repeats) and the baseline."""
    server = None
    cycles = ()
    main = None
    repeat = None
    base_rss = base_fds = base_threads = 0
    base_trimmed = None
    base_parts = (0, 0)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * (IDLE + SLOWLORIS) + 500
    if soft < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        pytest.fail(f"ulimit -n is {soft}, need {needed} (run it through scripts/soak, which raises it)",
                    pytrace=False)


def rss_parts(pid):
    """(RssAnon, RssFile) of /proc/PID/status in KiB: the heap and stacks, and the mapped files' pages (code and
    libraries, faulted in on first use), which VmRSS adds up (with RssShmem)."""
    try:
        return proc_status(pid, "RssAnon"), proc_status(pid, "RssFile")
    except (OSError, KeyError):
        return 0, 0


def print_summary(run, sessions, session_errors, slow_times):
    rows = [("baseline", run.base_rss, run.base_parts, run.base_fds, run.base_threads)]
    if run.base_trimmed:
        rows.append(("  + malloc_trim(0)", run.base_trimmed, None, run.base_fds, run.base_threads))
    for x in run.cycles:
        rows.append((f"{x.label} peak", x.peak_rss, None, x.peak_fds, x.peak_threads))
        rows.append((f"{x.label} after close", x.after_rss, x.after_parts, x.after_fds, x.after_threads))
        if x.trimmed_rss:
            rows.append(("  + malloc_trim(0)", x.trimmed_rss, None, x.after_fds, x.after_threads))
    print("\nsummary")
    print(f"  {'':<24}{'RSS MiB':>10}{'anon':>8}{'file':>8}{'fds':>8}{'threads':>9}")
    for label, rss, parts, fds, nthreads in rows:
        anon, file = (f"{mib(parts[0]):.1f}", f"{mib(parts[1]):.1f}") if parts else ("", "")
        print(f"  {label:<24}{mib(rss):>10.1f}{anon:>8}{file:>8}{fds:>8}{nthreads:>9}")
    print(f"  load: {IDLE} idle + {SLOWLORIS} slowloris + {SESSION_THREADS} session threads; "
          f"hold {SECONDS} s (+ repeat {REPEAT_SECONDS} s); sessions {sessions}, protocol errors "
          f"{len(session_errors)}; login during slowloris max {max(slow_times or [0]) * 1000:.0f} ms "
          f"over {len(slow_times)}", flush=True)


@pytest.fixture(scope="module")
def soak(pop3d_bin, tmp_path_factory):
    raise_fd_limit()
    root = tmp_path_factory.mktemp("soak")
    # A private copy: other builds in the same checkout may replace the binary while this runs (restarts, `deliver`
    # and gdb must all see the same executable).
    private = str(root / "pop3d")
    shutil.copy2(pop3d_bin, private)
    server = Pop3dDev(private, root)
    run = SoakRun()
    run.server = server
    cycles = []
    started = time.monotonic()
    try:
        log(f"setup in {root}: {IDLE} idle users, {SESSION_THREADS} session users; hold {SECONDS} s, "
            f"repeat {REPEATS} × {REPEAT_SECONDS} s; malloc_trim through gdb: {'yes' if MALLOC_TRIM else 'no'}")
        idle_users, expected = setup_accounts(server)
        sampler = LoadSampler(server)
        time.sleep(1)
        base = sampler.sample()
        assert base is not None, "cannot read pop3d's /proc entries"
        run.base_rss, run.base_fds, run.base_threads = base[1], base[2], base[3]
        run.base_parts = rss_parts(server.pid)
        run.base_trimmed = server.rss_kib() if malloc_trim(server) else None
        log(f"baseline: RSS {mib(run.base_rss):.1f} MiB, {run.base_fds} fds, {run.base_threads} threads"
            + (f"; after malloc_trim {mib(run.base_trimmed):.1f} MiB" if run.base_trimmed else ""))
        with sampler:
            run.main = Cycle("soak", server, sampler, idle_users, expected, SECONDS,
                             0.15 * SECONDS, 0.85 * SECONDS, run.base_fds)
            cycles.append(run.main)
            run.main.run()
            for n in range(REPEATS if REPEAT_SECONDS > 0 else 0):
                run.repeat = Cycle(f"repeat{n + 1}" if REPEATS > 1 else "repeat", server, sampler, idle_users,
                                   expected, REPEAT_SECONDS, 0, REPEAT_SECONDS, run.base_fds)
                cycles.append(run.repeat)
                run.repeat.run()
        run.cycles = tuple(cycles)
        sessions = sum(x.sessions() for x in cycles)
        session_errors = [e for x in cycles for e in x.session_errors()]
        slow_times = [t for x in cycles for t in x.prober.times["slowloris"]]
        print_summary(run, sessions, session_errors, slow_times)
        with open(os.path.join(root, "samples.csv"), "w") as f:
            f.write("t,rss_kib,fds,threads,phase\n")
            for t, r, d, th, phase in sampler.rows:
                f.write(f"{t - started:.1f},{r},{d},{th},{phase}\n")
        print(f"soak: load done in {time.monotonic() - started:.0f} s; logs and samples.csv in {root}", flush=True)
        yield run
    finally:
        for x in cycles:
            x.abort()
        stop_process(server.proc, grace=45)


def report(text):
    print(f"\n  {text}", flush=True)


# ---------------------------------------------------------------- the checks

def test_full_sessions_have_zero_protocol_errors(soak):
    cycles, c = soak.cycles, soak.main
    sessions = sum(x.sessions() for x in cycles)
    session_errors = [e for x in cycles for e in x.session_errors()]
    lat = [t for x in cycles for s in x.streams for t in s.latencies]
    octets = sum(s.octets for x in cycles for s in x.streams)
    detail = (f"full sessions ({SECONDS} s + repeat): {sessions} sessions ({c.sessions() / (SECONDS + c.ramp):.1f}/s), "
              f"{octets / 1048576:.0f} MiB retrieved and compared, latency p50 {pct(lat, 50) * 1000:.0f} ms "
              f"p99 {pct(lat, 99) * 1000:.0f} ms max {max(lat or [0]) * 1000:.0f} ms"
              + (f"; {len(session_errors)} errors: {session_errors[:3]}" if session_errors else ""))
    report(detail)
    assert not session_errors and sessions > 0, detail


def test_idle_connections_held_and_answer_noop(soak):
    cycles, c = soak.cycles, soak.main
    idle_problems = [e for x in cycles for e in x.idle_problems]
    detail = (f"{IDLE} idle authenticated TLS connections: {'/'.join(str(x.held) for x in cycles)} held; ramp "
              f"{'/'.join(f'{x.ramp:.1f}' for x in cycles)} s over {len(SOURCES)} source addresses; "
              f"{c.keepalives} keep-alive rounds"
              + (f"; {len(idle_problems)} errors: {idle_problems[:3]}" if idle_problems else ""))
    report(detail)
    assert all(x.held == IDLE for x in cycles) and not idle_problems, detail


def test_login_completes_quickly_during_slowloris(soak):
    """docs/security-cases.md case 23 (incomplete-handshake exhaustion), at soak scale."""
    if SLOWLORIS == 0:
        pytest.skip("POP3_SOAK_SLOWLORIS=0: this run had no slowloris phase")
    cycles = soak.cycles
    slow_times = [t for x in cycles for t in x.prober.times["slowloris"]]
    quiet_times = [t for x in cycles for t in x.prober.times["quiet"]]
    probe_errors = [e for x in cycles for e in x.prober.errors]
    sl = soak.main.slowloris
    detail = (f"slowloris ({SLOWLORIS} stalled): a legitimate login within {SLOWLORIS_LOGIN_BOUND} s: "
              f"{len(slow_times)} logins during slowloris: max "
              f"{max(slow_times or [0]) * 1000:.0f} ms, p50 {pct(slow_times, 50) * 1000:.0f} ms (without: "
              f"{len(quiet_times)}, max {max(quiet_times or [0]) * 1000:.0f} ms, p50 {pct(quiet_times, 50) * 1000:.0f} "
              f"ms); stalled live max {sl.max_live if sl else 0}, opened {dict(sl.open_count) if sl else {}}"
              + (f", open failures {dict(sl.open_errors)}" if sl and sl.open_errors else "")
              + "; the server closed them after: " + ", ".join(
                  f"{kind} median {statistics.median(v):.1f} s (n={len(v)})"
                  for kind, v in (sl.lifetimes.items() if sl else []) if v)
              + (f"; probe errors: {probe_errors[:3]}" if probe_errors else ""))
    report(detail)
    assert len(slow_times) >= 5 and max(slow_times) < SLOWLORIS_LOGIN_BOUND and not probe_errors, detail


def test_descriptors_back_to_baseline(soak):
    cycles, base_fds = soak.cycles, soak.base_fds
    detail = (f"open descriptors back to baseline (± 10) within 30 s of closing everything: baseline {base_fds}; "
              + "; ".join(f"{x.label}: peak {x.peak_fds}, after {x.after_fds} (settled in {x.settle:.1f} s)"
                          for x in cycles))
    report(detail)
    assert all(abs(x.after_fds - base_fds) <= 10 for x in cycles), detail


def test_rss_back_to_baseline_or_reused(soak):
    cycles, c, repeat = soak.cycles, soak.main, soak.repeat
    base_rss, base_trimmed = soak.base_rss, soak.base_trimmed
    growth = max(c.peak_rss - base_rss, 0)
    # VmRSS = RssAnon (heap, stacks) + RssFile (pages of the binary and libraries, faulted in as code runs for the
    # first time) + RssShmem: shown apart, so that code first run by the load is not mistaken for heap growth.
    (base_anon, base_file) = soak.base_parts
    report("RSS parts, baseline → after close: " + "; ".join(
        f"{x.label}: anon {mib(base_anon):.1f} → {mib(x.after_parts[0]):.1f} MiB"
        f" ({(x.after_parts[0] - base_anon) * 100 / max(base_anon, 1):+.0f} %),"
        f" file {mib(base_file):.1f} → {mib(x.after_parts[1]):.1f} MiB" for x in cycles))
    if base_trimmed and all(x.trimmed_rss for x in cycles):
        # glibc keeps freed memory in its arenas for reuse, so VmRSS after closing stays near the peak without
        # any leak. malloc_trim(0) (through gdb, at rest) hands the free memory back: what remains is live data
        # plus fragmentation. Bound: the trimmed baseline + max(24 MiB, 10 % of the peak growth) — a leak of
        # 2 KiB per connection or session over this load would exceed it.
        allowance = max(24 * 1024, growth // 10)
        bound = base_trimmed + allowance
        detail = (f"RSS back to baseline after malloc_trim(0), within baseline + max(24 MiB, 10 % of the growth): "
                  f"baseline {mib(base_rss):.1f} MiB ({mib(base_trimmed):.1f} trimmed), peak {mib(c.peak_rss):.1f}; "
                  + "; ".join(f"{x.label} after close {mib(x.after_rss):.1f} → trimmed {mib(x.trimmed_rss):.1f}"
                              for x in cycles) + f" (bound {mib(bound):.1f} MiB)")
        report(detail)
        assert all(x.trimmed_rss <= bound for x in cycles), detail
    elif repeat is not None:
        # Without gdb: memory must at least be reused — the repeat (same idle connections, slowloris, sessions,
        # shorter) must end within max(4 MiB, 10 % of the first growth) of where the first cycle ended.
        allowance = max(4 * 1024, growth // 10)
        detail = (f"RSS: no growth across a repeated cycle (memory is reused, not leaked; no gdb for malloc_trim): "
                  f"baseline {mib(base_rss):.1f} MiB; soak peak {mib(c.peak_rss):.1f}, after {mib(c.after_rss):.1f}; "
                  f"{repeat.label} peak {mib(repeat.peak_rss):.1f}, after {mib(repeat.after_rss):.1f} "
                  f"(allowed ≤ {mib(c.after_rss + allowance):.1f})")
        report(detail)
        assert repeat.after_rss <= c.after_rss + allowance, detail
    else:
        pytest.fail("RSS check: needs gdb (malloc_trim) or POP3_SOAK_REPEAT_SECONDS > 0", pytrace=False)


def test_no_critical_log_lines_and_pop3d_running(soak):
    crit = []
    counts = collections.Counter()
    for line in soak.server.log_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] in ("warning", "error", "critical"):
            msg = line.split("] ", 1)[-1].strip() if "] " in line else line.strip()
            counts[f"{parts[1]}: {msg[:60]}"] += 1
        if (len(parts) > 2 and parts[1] == "critical") or "Fatal error" in line:
            crit.append(line.strip())
    detail = (f"warnings/errors logged: {dict(counts.most_common(6)) or 'none'}"
              + (f"; critical: {crit[:2]}" if crit else ""))
    report(detail)
    assert not crit and soak.server.alive(), detail + ("" if soak.server.alive() else "; pop3d is not running")


def test_pop3d_stops_cleanly_on_sigterm(soak):
    """Kept last: the run ends with SIGTERM; pop3d must exit 0."""
    status = stop_process(soak.server.proc, grace=45)
    report(f"pop3d exit status on SIGTERM: {status}")
    assert status == 0, f"exit status {status}: {soak.server.log_tail()}"
