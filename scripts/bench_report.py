#!/usr/bin/env python3
"""bench_report.py - medians of the results collected by scripts/bench, one table.

Input lines (results.txt), one per run: "server=dovecot step=sessions.C32 rc=0 mode=sessions C=32 rate=... ..."
(popbench's RESULT fields), and for the client rows "server=pop3 step=fetch.u64 rc=0 wall_s=... cpu_s=...
files=2000", and for the LMTP rows "server=pop3d step=lmtp.s8 rc=0 n=10000 files=10000 wall_s=... rate=...
us_per_msg=..."; "server" names the program (dovecot, pop3d, pop3, mpop, fetchmail, getmail). rc other than 0
marks a failed run (rc=short: the client exited 0 but delivered fewer messages; rc=skipped: not run).
Usage: bench_report.py RESULTS [--md BENCHMARKS.md --machine FILE --command CMD --elapsed S --notes FILE
                                --steps sessions,retr,...] [--only-run] [--fragment FILE]
  --only-run: leave out the rows of steps that did not run; --fragment FILE: write the table, machine and notes
  as a Markdown fragment (for a hand-made section of BENCHMARKS.md) instead of the whole file
"""
import argparse, statistics

KB_TO_MB = 1024 / 1e6  # popbench and /usr/bin/time report kB (1024 octets); MB and GB here are 10^6 / 10^9 octets


def row(label, step, key, unit, better, target="-", test=None, anchor=("Dovecot", "dovecot"), ours="pop3d",
        anchor_step=None, scale=1.0, strict=False, kind="ratio"):
    """test(ratio) for kind "ratio" (ours / anchor), test(value) for kind "value" (no anchor); strict: a failed
    run of ours makes the row not met."""
    return dict(label=label, step=step, key=key, unit=unit, better=better, target=target, test=test, anchor=anchor,
                ours=ours, anchor_step=anchor_step or step, scale=scale, strict=strict, kind=kind)


FETCH = "pop3 fetch: 2,000 × 50 KB from Dovecot into a Maildir, keep on server, every message fsynced"
ROWS = [
    row("TLS sessions/s, 32 concurrent (connect, handshake, USER/PASS, STAT, QUIT)", "sessions.C32", "rate", "/s",
        "higher", "≥ 3.5×", lambda r: r >= 3.5),
    row("server CPU per session, 32 concurrent (info)", "sessions.C32", "server_us_per_session", "µs", "lower"),
    row("SHA512-CRYPT alone: one hash of the users' strings, one core, same run (info)", "hash", "us_per_hash", "µs",
        "lower", anchor=None, ours="crypt", kind="value"),
    row("pop3d CPU per session beyond the hash (CPU per session, 32 concurrent, minus SHA512-CRYPT alone)",
        "sessions.C32", "server_us_per_session", "µs", "lower", "≤ 400 µs", lambda v: v <= 400.0, anchor=None,
        kind="overhead"),
    row("same with TLS 1.3 resumption, 32 concurrent (each client offers its newest ticket)", "sessions.resume.C32",
        "rate", "/s", "higher", "≥ 4×", lambda r: r >= 4.0, strict=True),
    row("same, 1 client: latency p50", "sessions.C1", "p50_ms", "ms", "lower", "≤ 0.4×", lambda r: r <= 0.4),
    row("same, 1 client: sessions/s (info)", "sessions.C1", "rate", "/s", "higher"),
    row("RETR throughput, 2,000 × 50 KB, pipelined 16", "retr.u64.p16", "MBps", "MB/s", "higher", "≥ 2.5×",
        lambda r: r >= 2.5),
    row("RETR throughput, one 20 MB message", "retr.u66", "MBps", "MB/s", "higher", "≥ 2.5×", lambda r: r >= 2.5),
    row("memory per idle authenticated TLS connection, 1,000 conns (PSS)", "idle", "pss_kb_per_conn", "kB",
        "lower", "≤ 0.1×", lambda r: r <= 0.1),
    row("same, RSS sum per connection (info)", "idle", "rss_kb_per_conn", "kB", "lower"),
    row("login + UIDL + LIST, big mailbox, first access after restart (cold)", "uidl.cold", "total_s", "s", "lower",
        "≤ 0.25×", lambda r: r <= 0.25),
    row("same, warm", "uidl.warm", "total_s", "s", "lower", "≤ 0.5×", lambda r: r <= 0.5),
    row("pop3d: {open} idle authenticated TLS connections, pop3d's total RSS while holding them", "idle10k",
        "rss_total_kb", "MB", "lower", "held, < 1 GB", None, anchor=None, scale=KB_TO_MB, strict=True, kind="idle10k"),
    row("same, projected to 100,000 (total + the rest × RSS per connection)", "idle10k", "rss_total_kb", "MB",
        "lower", "≤ 2 GB", lambda v: v <= 2000.0, anchor=None, scale=KB_TO_MB, kind="idle100k"),
    row("same, one client's sessions meanwhile: latency p99", "idle10k.login", "p99_ms", "ms", "lower", "≤ 50 ms",
        lambda v: v <= 50.0, anchor=None, strict=True, kind="value"),
    row(FETCH + ": wall time vs mpop", "fetch.u64", "wall_s", "s", "lower", "≤ 0.6×", lambda r: r <= 0.6,
        anchor=("mpop", "mpop"), ours="pop3", strict=True),
    row("same vs fetchmail (MDA safecat)", "fetch.u64", "wall_s", "s", "lower", "≤ 0.5×", lambda r: r <= 0.5,
        anchor=("fetchmail + safecat", "fetchmail"), ours="pop3", strict=True),
    row("same vs getmail6", "fetch.u64", "wall_s", "s", "lower", "≤ 0.5×", lambda r: r <= 0.5,
        anchor=("getmail6", "getmail"), ours="pop3", strict=True),
    row("same, client CPU user+sys vs mpop", "fetch.u64", "cpu_s", "s", "lower", "≤ 0.7×", lambda r: r <= 0.7,
        anchor=("mpop", "mpop"), ours="pop3"),
    row("same, client CPU user+sys vs fetchmail + safecat (info)", "fetch.u64", "cpu_s", "s", "lower",
        anchor=("fetchmail + safecat", "fetchmail"), ours="pop3"),
    row("same, client CPU user+sys vs getmail6 (info)", "fetch.u64", "cpu_s", "s", "lower",
        anchor=("getmail6", "getmail"), ours="pop3"),
    row("pop3 fetch: peak memory (max RSS) fetching one 1 GiB message", "fetch.big", "maxrss_kb", "MB", "lower",
        "≤ 32 MB", lambda v: v <= 32.0, anchor=None, ours="pop3", scale=KB_TO_MB, strict=True, kind="value"),
    row("same, wall time vs curl's RETR of it to /dev/null (throughput ≥ 0.8× curl's)", "fetch.big", "wall_s", "s",
        "lower", "≤ 1.25×", lambda r: r <= 1.25, anchor=("curl", "curl"), ours="pop3", strict=True),
    # {n}: the message count of the run (scripts/bench --lmtp-n)
    row("LMTP {n} × 50 KB, 1 session", "lmtp.s1", "rate", "msg/s", "higher", "≥ 1.5×", lambda r: r >= 1.5,
        strict=True),
    row("same, 8 sessions", "lmtp.s8", "rate", "msg/s", "higher", "≥ 2×", lambda r: r >= 2.0, strict=True),
    row("pop3d CPU per delivered message, 1 session (info)", "lmtp.s1", "us_per_msg", "µs", "lower"),
    row("same, 8 sessions (info)", "lmtp.s8", "us_per_msg", "µs", "lower"),
]


def parse(path):
    data = {}  # (server, step) -> list of dicts
    for line in open(path):
        kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
        if "server" not in kv or "step" not in kv:
            continue
        data.setdefault((kv["server"], kv["step"]), []).append(kv)
    return data


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(runs, key, scale=1.0):
    """(median, text, failed runs)"""
    if runs and all(r.get("rc") == "skipped" for r in runs):
        return None, "skipped (see notes)", 0
    vals = [float(r[key]) * scale for r in runs if key in r and r.get("rc") != "skipped"]
    errs = sum(int(r.get("errors", r.get("failed", "0")) or 0) for r in runs)
    bad = sum(1 for r in runs if r.get("rc", "0") != "0")
    if not vals:
        return None, "n/a" + (f" (failed runs {bad})" if bad else ""), bad
    m = statistics.median(vals)
    s = f"{fmt(m)} [{fmt(min(vals))}..{fmt(max(vals))}] n={len(vals)}"
    if errs or bad:
        s += f" (errors {errs}, failed runs {bad})"
    return m, s, bad


def idle10k_cell(runs, spec):
    """held = every requested connection opened, none failed, all alive at the end; total RSS (and PSS) in MB."""
    m, s, bad = cell(runs, spec["key"], spec["scale"])
    if m is None:
        return None, s, False
    held = all(r.get("rc") == "0" and r.get("failed") == "0" and "open" in r
               and r.get("open") == r.get("requested", r.get("open")) and r.get("alive_at_end") == r.get("open")
               for r in runs)
    pss = [float(r["pss_total_kb"]) * KB_TO_MB for r in runs if "pss_total_kb" in r]
    last = runs[-1]
    s = (f"{'held' if held else '**not held**'}: open {last.get('open', '?')}/{last.get('requested', '?')}, "
         f"failed {last.get('failed', '?')}, alive at end {last.get('alive_at_end', '?')} "
         f"(opened in {last.get('open_s', '?')} s); RSS {s}"
         + (f"; PSS {fmt(statistics.median(pss))}" if pss else ""))
    return m, s, held


def idle100k_cell(runs):
    """pop3d's total RSS holding the connections plus, for each connection short of 100,000, the RSS per
    connection of the same run (MB): medians over the runs."""
    projected = [(float(r["rss_total_kb"]) + (100000 - int(r["open"])) * float(r["rss_kb_per_conn"])) * KB_TO_MB
                 for r in runs if r.get("rc") == "0" and "rss_total_kb" in r and r.get("open", "").isdigit()]
    if not projected:
        return None, "n/a"
    m = statistics.median(projected)
    per = statistics.median(float(r["rss_kb_per_conn"]) for r in runs if "rss_kb_per_conn" in r)
    return m, f"{fmt(m)} [{fmt(min(projected))}..{fmt(max(projected))}] n={len(projected)} ({fmt(per)} kB per connection)"


def overhead_cell(session_runs, hash_runs, key):
    """pop3d's CPU per session minus one SHA512-CRYPT: medians of the same run, and the range over the session
    runs (each minus the hash median)."""
    sessions = [float(r[key]) for r in session_runs if key in r and r.get("rc") == "0"]
    hashes = [float(r["us_per_hash"]) for r in hash_runs if "us_per_hash" in r]
    if not sessions or not hashes:
        return None, "n/a"
    h = statistics.median(hashes)
    m = statistics.median(sessions) - h
    return m, f"{fmt(m)} [{fmt(min(sessions) - h)}..{fmt(max(sessions) - h)}] n={len(sessions)} (hash {fmt(h)})"


BENCH_STEP = {"sessions.C32": "sessions", "sessions.C1": "sessions", "hash": "sessions",
              "sessions.resume.C32": "resume", "retr.u64.p16": "retr", "retr.u66": "retr",
              "uidl.cold": "uidl", "uidl.warm": "uidl", "idle": "idle", "idle10k": "idle10k", "idle10k.login": "idle10k", "fetch.u64": "clients",
              "fetch.big": "bigmsg", "lmtp.s1": "lmtp", "lmtp.s8": "lmtp"}


def label(spec, data):
    """The row's label; "{n}" becomes the message count of its runs (10,000 unless scripts/bench --lmtp-n), "{open}"
    the idle connections requested (scripts/bench --idle10k-n)."""
    if "{open}" in spec["label"]:
        opened = sorted({int(r["requested"]) for r in data.get((spec["ours"], spec["step"]), [])
                         if r.get("requested", "").isdigit()})
        return spec["label"].replace("{open}", "/".join(f"{n:,}" for n in opened) or "10,000")
    if "{n}" not in spec["label"]:
        return spec["label"]
    runs = data.get((spec["ours"], spec["step"]), []) + data.get((spec["anchor"][1], spec["anchor_step"]), [])
    ns = sorted({int(r["n"]) for r in runs if r.get("n", "").isdigit()})
    return spec["label"].replace("{n}", "/".join(f"{n:,}" for n in ns) or "10,000")


def table(data, steps=None, only_run=False):
    """steps: the scripts/bench steps that ran (None: all); rows of the others say 'not run' (only_run: left out)."""
    out = ["| measure | anchor | anchor's figure | ours (pop3d or pop3 fetch) | ratio ours/anchor | target | met |",
           "|---|---|---|---|---|---|---|"]
    for spec in ROWS:
        step, key, test = spec["step"], spec["key"], spec["test"]
        if steps is not None and BENCH_STEP.get(step) not in steps:
            if only_run:
                continue
            out.append(f"| {label(spec, data)} ({spec['unit']}, {spec['better']} is better) | "
                       f"{spec['anchor'][0] if spec['anchor'] else '—'} | not run | not run | n/a | {spec['target']} | - |")
            continue
        ours_runs = data.get((spec["ours"], step), [])
        ratio = None
        aname, ds = "—", "—"
        if spec["kind"] == "idle10k":
            pm, ps, held = idle10k_cell(ours_runs, spec)
            met = "-" if pm is None else ("yes" if held and pm < 1000.0 else "**no**")
        elif spec["kind"] == "idle100k":
            pm, ps = idle100k_cell(ours_runs)
            met = "-" if pm is None else ("yes" if test(pm) else "**no**")
        elif spec["kind"] == "overhead":
            pm, ps = overhead_cell(ours_runs, data.get(("crypt", "hash"), []), key)
            met = "-" if pm is None else ("yes" if test(pm) else "**no**")
        else:
            pm, ps, bad = cell(ours_runs, key, spec["scale"])
            if spec["anchor"]:
                aname = spec["anchor"][0]
                dm, ds, _ = cell(data.get((spec["anchor"][1], spec["anchor_step"]), []), key, spec["scale"])
                ratio = pm / dm if dm and pm is not None and dm != 0 else None
            if spec["kind"] == "value":
                met = "-" if test is None or pm is None else ("yes" if test(pm) else "**no**")
            else:
                met = "-" if test is None or ratio is None else ("yes" if test(ratio) else "**no**")
            if spec["strict"] and bad and test is not None and met in ("yes", "-"):
                met = "**no** (failed runs)"
        out.append(f"| {label(spec, data)} ({spec['unit']}, {spec['better']} is better) | {aname} | {ds} | {ps} | "
                   f"{'n/a' if ratio is None else f'{ratio:.2f}×'} | {spec['target']} | {met} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--md")
    ap.add_argument("--machine")
    ap.add_argument("--command", default="scripts/bench")
    ap.add_argument("--elapsed", default="")
    ap.add_argument("--notes")
    ap.add_argument("--date", default="")
    ap.add_argument("--steps", help="comma list of the scripts/bench steps that ran")
    ap.add_argument("--only-run", action="store_true", help="leave out the rows of steps that did not run")
    ap.add_argument("--fragment", help="write table + machine + notes here as a Markdown fragment")
    a = ap.parse_args()
    t = table(parse(a.results), set(x for x in a.steps.split(",") if x) if a.steps else None, a.only_run)
    print(t)
    machine = open(a.machine).read().strip() if a.machine else ""
    notes = open(a.notes).read().strip() if a.notes else ""
    if a.fragment:
        with open(a.fragment, "w") as f:
            f.write(f"""Measured by `scripts/bench` on {a.date}. Command:

```sh
{a.command}
```

Run time: {a.elapsed}.

{machine}

{t}

{notes}
""")
    if not a.md:
        return
    md = f"""# Benchmarks: pop3d vs Dovecot, pop3 fetch vs mpop, fetchmail and getmail6 (POP3S, loopback, same run)

Generated by `scripts/bench` on {a.date}. Command:

```sh
{a.command}
```

Run time: {a.elapsed}.

## Machine

{machine}

## Results

Medians of the runs (n per cell) with [min..max]. Load generator: `../shared/bench/popbench.c` (C + OpenSSL),
the same workloads, users, `{{SHA512-CRYPT}}` hashes (5000 rounds, one salt per user, the same strings in
both passwd files), the same ECDSA P-256 certificate and byte-identical Maildirs (one copy per server,
so neither sees the other's index). Dovecot in high-performance login mode
(`service pop3-login {{ service_count = 0 }}`). Ratio = ours / anchor: pop3d / Dovecot for the server rows,
`pop3 fetch` / the other client for the client rows (all clients fetch from the same Dovecot in the same run);
rows without an anchor are checked against an absolute target. LMTP rows: Postfix's `smtp-source -L` into
pop3d's `listen.lmtp` and Dovecot's lmtp service (see the notes).

{t}

## Notes

{notes}
"""
    with open(a.md, "w") as f:
        f.write(md)


if __name__ == "__main__":
    main()
