#!/usr/bin/env python3
"""bench_fill.py - write the benchmark Maildirs (same bytes for Dovecot and pop3d).

Reuses the deterministic message generator of ../shared/bench/fill-maildirs.py (the anchor's
fixture), with two layouts:

  reduced (default): u0..u63 200 x 20 KiB, u64 2,000 x 50 KiB, u65 20,000 x 2 KiB, u66 one 20 MiB message
  full (--full):     u0..u63 200 x 20 KiB, u64 2,000 x 50 KiB, u65 100,000 x 2 KiB, u66 one 20 MiB message
  u67..u(N-1): empty Maildirs (idle connections: pop3d locks the maildrop, so one user per connection)
  --big USER --big-size BYTES: USER's Maildir gets one message of BYTES (default 1 GiB), written in
               chunks (never held in memory), CRLF lines from the same generator, ,S=,W= in the name;
               used only by the `pop3 fetch` peak-memory row and deleted after it

u0..u63 all hold mail in both layouts: 32 concurrent sessions over fewer users would collide on pop3d's
maildrop lock ([IN-USE]) and measure the lock, not the server.

Usage: bench_fill.py --gen PATH/fill-maildirs.py --root DIR [--root DIR2 ...] [--full] [--users N]
                     [--only u65] [--owner vmail]
       bench_fill.py --gen PATH/fill-maildirs.py --root DIR --big u67 [--big-size 1073741824] [--owner vmail]
"""
import argparse, importlib.util, os, pwd, sys, time


def write_big(fm, root, user, size, uid, gid):
    """One message of exactly `size` octets in root/user/new, streamed: header, then the generator's pool of
    CRLF lines (dot lines included) repeated, then a filler line."""
    d = os.path.join(root, user)
    for sub in ("", "cur", "new", "tmp"):
        os.makedirs(os.path.join(d, sub), 0o700, exist_ok=True)
    hdr = fm.header(user, 1, size)
    name = f"{fm.BASE_T}.M000000P1.big,S={size},W={size}"
    path = os.path.join(d, "new", name)
    blob = fm.POOL_BLOB * max(1, (4 << 20) // len(fm.POOL_BLOB))  # ~4 MiB of whole lines
    with open(path + ".part", "wb") as f:
        f.write(hdr)
        left = size - len(hdr)
        while left - len(blob) >= 3:
            f.write(blob)
            left -= len(blob)
        cut = blob.rfind(b"\n", 0, left - 3 + 1)  # whole lines, then a filler line of >= 3 octets
        if cut >= 0:
            f.write(blob[:cut + 1])
            left -= cut + 1
        f.write(b"z" * (left - 2) + b"\r\n")
    if os.path.getsize(path + ".part") != size:
        sys.exit(f"big message: wrote {os.path.getsize(path + '.part')} octets, wanted {size}")
    os.rename(path + ".part", path)
    if uid is not None:
        os.chown(path, uid, gid)
        for sub in ("", "cur", "new", "tmp"):
            os.chown(os.path.join(d, sub), uid, gid)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", required=True, help="path of fill-maildirs.py (message generator)")
    ap.add_argument("--root", action="append", required=True, help="mail root (repeatable)")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--users", type=int, default=1100)
    ap.add_argument("--only", default="")
    ap.add_argument("--owner", default="")
    ap.add_argument("--big", default="", help="write one big message for this user (nothing else)")
    ap.add_argument("--big-size", type=int, default=1 << 30)
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
    if a.big:
        t0 = time.time()
        for root in a.root:
            print(write_big(fm, root, a.big, a.big_size, uid, gid))
        print(f"wrote {a.big_size} octets x {len(a.root)} roots in {time.time() - t0:.1f}s", file=sys.stderr)
        return
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
