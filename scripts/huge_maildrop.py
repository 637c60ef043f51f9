#!/usr/bin/env python3
"""huge_maildrop.py - security.md case 69: one maildrop with a million messages, served by pop3d.

Fills a Maildir with N small messages (sizes in the names, as Dovecot and `pop3d deliver` write them), starts
`pop3d dev` on it, and measures over POP3S with poplib:
  - the first (cold) login + STAT, then a full UIDL and a full LIST (each must list N lines, unique UIDLs),
  - a second login (dovecot-uidlist now written),
  - pop3d's RSS before and its peak (VmHWM) after,
  - logins of a second, small account while the huge one is being indexed: "other users are unaffected",
  - with limits.maildrop_messages set below N: STAT shows the limit, UIDL lists the oldest messages.
Prints the numbers; exits non-zero if an assertion fails. Not part of scripts/test (filling a million files takes
minutes); the last result is in the README's security section.

Usage: huge_maildrop.py --pop3d PATH [--messages 1000000] [--dir /tmp/pop3-huge] [--keep]
"""
import argparse, os, poplib, shutil, ssl, subprocess, threading, time

from interop import free_port, wait_port  # this script's folder is on sys.path


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def fill(maildir, count):
    new = os.path.join(maildir, "new")
    for sub in ("new", "cur", "tmp"):
        os.makedirs(os.path.join(maildir, sub), 0o700, exist_ok=True)
    pid = os.getpid()
    for index in range(count):
        body = f"Subject: message {index}\nFrom: filler@example.org\n\nbody of message {index}\n".encode()
        vsize = len(body) + body.count(b"\n")
        name = f"{1700000000 + index // 1000}.M{index % 1000000:06d}P{pid}Q{index}.huge,S={len(body)},W={vsize}"
        fd = os.open(os.path.join(new, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, body)
        os.close(fd)


class Server:
    def __init__(self, pop3d, data, extra_config=""):
        self.port, self.plain = free_port(), free_port()
        if extra_config:
            with open(os.path.join(data, "pop3d.yaml"), "a") as f:
                f.write(extra_config)
        self.log = open(os.path.join(data, "pop3d.log"), "ab")
        self.proc = subprocess.Popen([pop3d, "dev", "--data", data, "--pop3s-port", str(self.port),
                                      "--pop3-port", str(self.plain)], stdout=self.log, stderr=self.log)
        wait_port(self.port)
        self.ctx = ssl.create_default_context(cafile=os.path.join(data, "tls", "cert.pem"))

    def login(self, user, password, timeout=600):
        c = poplib.POP3_SSL("localhost", self.port, context=self.ctx, timeout=timeout)
        c.user(user)
        c.pass_(password)
        return c

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pop3d", required=True)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/pop3-huge")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    count = args.messages
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    # First start creates the dev environment (config, certificate, the demo account with 3 samples).
    server = Server(args.pop3d, args.dir)
    server.stop()
    password = open(os.path.join(args.dir, "demo-password")).read().strip()
    config = os.path.join(args.dir, "pop3d.yaml")
    r = subprocess.run([args.pop3d, "user", "add", "small", "--config", config, "--scheme", "PLAIN"],
                       input=b"small-pw\n", capture_output=True)
    assert r.returncode == 0, r.stderr
    maildir = os.path.join(args.dir, "mail", "demo")
    shutil.rmtree(maildir)
    started = time.time()
    fill(maildir, count)
    print(f"filled {count:,} messages in {time.time() - started:.1f} s", flush=True)

    server = Server(args.pop3d, args.dir)
    try:
        rss_before = status_kib(server.proc.pid, "VmRSS")
        small_logins = []
        stop = threading.Event()

        def small_account():
            while not stop.is_set():
                t = time.time()
                c = server.login("small", "small-pw", timeout=30)
                c.stat()
                c.quit()
                small_logins.append(time.time() - t)
                time.sleep(0.2)

        side = threading.Thread(target=small_account)
        side.start()
        t = time.time()
        c = server.login("demo", password)
        n, size = c.stat()
        cold = time.time() - t
        stop.set()
        side.join()
        assert n == count, (n, count)
        t = time.time()
        uidls = c.uidl()[1]
        uidl_time = time.time() - t
        assert len(uidls) == count and len({line.split()[1] for line in uidls}) == count, "UIDLs missing or repeated"
        t = time.time()
        listing = c.list()[1]
        list_time = time.time() - t
        assert len(listing) == count
        c.quit()
        t = time.time()
        c = server.login("demo", password)
        assert c.stat()[0] == count
        warm = time.time() - t
        c.quit()
        peak = status_kib(server.proc.pid, "VmHWM")
        print(f"messages {count:,}, {size:,} octets")
        print(f"cold login + STAT {cold:.2f} s; UIDL {uidl_time:.2f} s; LIST {list_time:.2f} s; second login + STAT {warm:.2f} s")
        print(f"pop3d RSS before {rss_before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
        print(f"small account during the cold login: {len(small_logins)} logins, max {max(small_logins) * 1000:.0f} ms"
              if small_logins else "small account: no login completed during the cold login")
        assert small_logins and max(small_logins) < 2.0, "another account waited on the huge maildrop"
    finally:
        server.stop()

    # The limit: the oldest `limit` messages only.
    limit = max(1, count // 10)
    server = Server(args.pop3d, args.dir, f"limits:\n  maildrop_messages: {limit}\n")
    try:
        c = server.login("demo", password)
        n, _ = c.stat()
        first = c.uidl(1).split()[2]
        c.quit()
        assert n == limit, (n, limit)
        print(f"limits.maildrop_messages {limit:,}: STAT {n:,}, UIDL 1 {first.decode()}")
    finally:
        server.stop()
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    print("huge_maildrop: passed")


if __name__ == "__main__":
    main()
