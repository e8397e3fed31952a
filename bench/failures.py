#!/usr/bin/env python3
"""Benchmark of the failure-handling layer on the reference job (bench/keel/job.toml):

- the cost of the policy layer on clean input: this checkout against a revision without it
  (--base, built in a temporary worktree), on input without bad records;
- throughput with 5 % bad records against clean input (dead letters are written with their
  provenance and checksum);
- dead-letter write throughput: input where every record is bad.

usage: failures.py [--base REV] [-n RECORDS] [--rounds 7]

Runs are interleaved round by round so that machine noise hits every variant alike; the
report gives medians and bests. Wall time covers the whole process. The last round's output
of every variant goes through check.py (exactly-once, every bad line dead-lettered once) and
keel's dead-letter count is compared with the generator's; any mismatch fails the run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def data(n, bad):
    d = f"/tmp/bench-data/n{n}-bad{bad}/input"
    if not os.path.exists(os.path.join(d, "_MANIFEST.json")):
        sh([sys.executable, os.path.join(SHARED, "gen.py"), "-n", str(n), "--bad-frac", str(bad), "-o", d, "--force"],
           stdout=subprocess.DEVNULL)
    return d


def check(inp, out, summary, what):
    """check.py on an output, and keel's own counts against the generator's: a benchmark of
    wrong output fails instead of printing figures."""
    c = subprocess.run([sys.executable, os.path.join(SHARED, "check.py"), "-q", inp, out], capture_output=True,
                       text=True)
    counts = json.load(open(os.path.join(inp, "_MANIFEST.json")))["counts"]
    problems = [l.strip() for l in c.stdout.splitlines() if l.startswith("  - ")]
    if counts["good"] == 0:  # all bad: there are no final totals, which check.py reports
        problems = [p for p in problems if p != "- final: no final totals found"]
    if "VERDICT: exactly-once" not in c.stdout or problems or (c.returncode != 0 and counts["good"] > 0):
        sys.exit(f"{what}: check.py did not confirm exactly-once:\n{c.stdout[-3000:]}")
    bad = sum(v for k, v in counts.items() if k != "good")
    if summary["dead_letters"] != bad:
        sys.exit(f"{what}: keel reports {summary['dead_letters']} dead letters, the input holds {bad} bad lines")


def run(binary, inp, tag):
    out, state = f"/tmp/bench-out/fail-{tag}", f"/tmp/bench-state/fail-{tag}"
    sh(["rm", "-rf", out, state])
    os.makedirs(out)
    os.makedirs(state)
    env = dict(os.environ, IN=inp, OUT=out, STATE=state, KEEL_CHECKPOINT_INTERVAL="1s", RUST_LOG="warn")
    t0 = time.time()
    p = subprocess.run([binary, "run", os.path.join(HERE, "keel", "job.toml"), "--quiet", "--json"], env=env,
                       capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode not in (0, 1):
        sys.exit(f"{binary} failed: {p.stderr[-2000:]}")
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    return wall, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="a revision without the policy layer, to measure its cost")
    ap.add_argument("-n", "--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    sh(["cargo", "build", "--release", "-q", "-p", "keel-cli"], cwd=ROOT)
    head = os.path.join(ROOT, "target", "release", "keel")
    base = None
    if a.base:
        wt = "/tmp/keel-base"
        if not os.path.exists(os.path.join(wt, ".git")):
            sh(["git", "worktree", "add", "-f", wt, a.base], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            sh(["git", "checkout", "-q", a.base], cwd=wt)
        sh(["cargo", "build", "--release", "-q", "-p", "keel-cli"], cwd=wt)
        base = os.path.join(wt, "target", "release", "keel")
    clean, bad5, bad100 = data(a.records, 0.0), data(a.records, 0.05), data(a.records, 1.0)
    runs = {"clean": [], "bad5": [], "bad100": [], "base": []}
    last = {}
    for r in range(a.rounds):
        for name, binary, inp in [("base", base, clean), ("clean", head, clean), ("bad5", head, bad5),
                                  ("bad100", head, bad100)]:
            if binary is None:
                continue
            w, s = run(binary, inp, name)
            runs[name].append(w)
            last[name] = s
        print(f"[failures] round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items() if v),
              file=sys.stderr)
    for name, inp in [("base", clean), ("clean", clean), ("bad5", bad5), ("bad100", bad100)]:
        if name in last:  # the last round's output of each variant
            check(inp, f"/tmp/bench-out/fail-{name}", last[name], name)
    n = a.records
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    best = {k: min(v) for k, v in runs.items() if v}
    print(f"\n### Failure handling, {n:,} records, {a.rounds} interleaved rounds\n")
    print("| input | build | median wall | best wall | records/s (median) | dead letters |")
    print("|---|---|---|---|---|---|")
    rows = [("clean", "base", f"base ({a.base})"), ("clean", "clean", "this build"), ("5 % bad", "bad5", "this build"),
            ("100 % bad", "bad100", "this build")]
    for label, k, build in rows:
        if k in med:
            print(f"| {label} | {build} | {med[k]:.2f} s | {best[k]:.2f} s | {n / med[k] / 1e6:.2f}M | "
                  f"{last[k]['dead_letters']:,} |")
    print()
    if "base" in med:
        print(f"- policy layer cost on clean input: {(med['clean'] / med['base'] - 1) * 100:+.1f} % (median), "
              f"{(best['clean'] / best['base'] - 1) * 100:+.1f} % (best)")
    print(f"- 5 % bad records vs clean: {med['clean'] / med['bad5'] * 100:.0f} % of the clean throughput (median), "
          f"{best['clean'] / best['bad5'] * 100:.0f} % (best)")
    print(f"- dead-letter writes: {last['bad100']['dead_letters'] / med['bad100'] / 1e3:.0f}k dead letters/s (median), "
          f"{last['bad100']['dead_letters'] / best['bad100'] / 1e3:.0f}k/s (best), whole process included")


if __name__ == "__main__":
    main()
