#!/usr/bin/env python3
"""CSV throughput of the reference job: keel on the JSON-lines input, keel on the same data
as CSV (to_csv.py, job.toml here), and a bare `csv`-crate read loop (loop/) on the CSV,
interleaved round by round in one run. Prints a Markdown table for BENCHMARKS.md.

usage: bench.py [-n 1000000] [--rounds 3]   (release build of keel expected in target/)
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")
KEEL = os.path.join(ROOT, "target", "release", "keel")
LOOP_DIR = "/tmp/keel-bench-csv-loop"
LOOP = os.path.join(LOOP_DIR, "release", "csv-loop")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def timed(cmd, env=None):
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "@@%M", *cmd], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    m = re.search(r"@@(\d+)", p.stderr)
    if p.returncode not in (0, 1):
        sys.exit(f"{cmd} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return wall, int(m.group(1)) / 1024 if m else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    sh(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(HERE, "loop", "Cargo.toml"),
        "--target-dir", LOOP_DIR])
    jsonl = f"/tmp/bench-data/csv{a.n}/jsonl"
    csvd = f"/tmp/bench-data/csv{a.n}/csv"
    if not os.path.exists(os.path.join(jsonl, "_MANIFEST.json")):
        sh([sys.executable, os.path.join(SHARED, "gen.py"), "-n", str(a.n), "-o", jsonl, "--force"],
           stdout=subprocess.DEVNULL)
    if not os.path.isdir(csvd):
        sh([sys.executable, os.path.join(HERE, "to_csv.py"), jsonl, csvd])
    size = lambda d: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if not f.startswith("_"))
    runs = {
        "keel, JSON lines (bench/keel/job.toml)": (os.path.join(ROOT, "bench", "keel", "job.toml"), jsonl),
        "keel, CSV (bench/csv/job.toml)": (os.path.join(HERE, "job.toml"), csvd),
    }
    res = {k: [] for k in [*runs, "bare csv-crate loop (bench/csv/loop)"]}
    rss = {k: 0.0 for k in res}
    for _ in range(a.rounds):
        for name, (job, inp) in runs.items():
            out, state = "/tmp/bench-out/csv-bench", "/tmp/bench-state/csv-bench"
            sh(["rm", "-rf", out, state])
            env = dict(os.environ, IN=inp, OUT=out, STATE=state, KEEL_CHECKPOINT_INTERVAL="1s", RUST_LOG="warn")
            w, r = timed([KEEL, "run", job, "--quiet"], env=env)
            res[name].append(w)
            rss[name] = max(rss[name], r)
        w, r = timed([LOOP, csvd])
        res["bare csv-crate loop (bench/csv/loop)"].append(w)
        rss["bare csv-crate loop (bench/csv/loop)"] = max(rss["bare csv-crate loop (bench/csv/loop)"], r)
    print(f"{a.n:,} records; JSON lines {size(jsonl) / 1e6:.0f} MB, CSV {size(csvd) / 1e6:.0f} MB; {a.rounds} rounds\n")
    print("| run | median wall | best wall | records/s (median) | peak RSS |")
    print("|---|---|---|---|---|")
    for k, v in res.items():
        med = statistics.median(v)
        print(f"| {k} | {med:.2f} s | {min(v):.2f} s | {a.n / med / 1e6:.2f}M | {rss[k]:.0f} MiB |")


if __name__ == "__main__":
    main()
