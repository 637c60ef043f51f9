#!/usr/bin/env python3
"""bench_fill.py - write the benchmark Maildirs (same bytes for Dovecot and pop3d).

Reuses the deterministic message generator of ../shared/bench/fill-maildirs.py (the anchor's
fixture), with two layouts:

  reduced (default): u0..u63 200 x 20 KiB, u64 2,000 x 50 KiB, u65 20,000 x 2 KiB, u66 one 20 MiB message
  full (--full):     u0..u63 200 x 20 KiB, u64 2,000 x 50 KiB, u65 100,000 x 2 KiB, u66 one 20 MiB message
  u67..u(N-1): empty Maildirs (idle connections: pop3d locks the maildrop, so one user per connection)

u0..u63 all hold mail in both layouts: 32 concurrent sessions over fewer users would collide on pop3d's
maildrop lock ([IN-USE]) and measure the lock, not the server.

Usage: bench_fill.py --gen PATH/fill-maildirs.py --root DIR [--root DIR2 ...] [--full] [--users N]
                     [--only u65] [--owner vmail]
"""
import argparse, importlib.util, os, pwd, sys, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", required=True, help="path of fill-maildirs.py (message generator)")
    ap.add_argument("--root", action="append", required=True, help="mail root (repeatable)")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--users", type=int, default=1100)
    ap.add_argument("--only", default="")
    ap.add_argument("--owner", default="")
    a = ap.parse_args()

    spec = importlib.util.spec_from_file_location("fillmd", a.gen)
    fm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fm)

    layout = {}
    for i in range(64):
        layout[f"u{i}"] = (200, 20 * 1024)
    layout["u64"] = (2000, 50 * 1024)
    layout["u65"] = (100000 if a.full else 20000, 2 * 1024)
    layout["u66"] = (1, 20 * 1024 * 1024)
    for i in range(67, a.users):
        layout[f"u{i}"] = (0, 0)

    uid = gid = None
    if a.owner:
        pw = pwd.getpwnam(a.owner)
        uid, gid = pw.pw_uid, pw.pw_gid
    users = [u for u in a.only.split(",") if u] if a.only else list(layout)
    t0 = time.time()
    for root in a.root:
        os.makedirs(root, exist_ok=True)
        if uid is not None:
            os.chown(root, uid, gid)
        for u in users:
            if u not in layout:
                sys.exit(f"unknown user {u}")
            n, sz = layout[u]
            fm.fill_user(root, u, n, sz, uid, gid)
    print(f"filled {len(users)} users x {len(a.root)} roots in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
