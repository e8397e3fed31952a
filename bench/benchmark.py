#!/usr/bin/env python3
"""Benchmark of the reference job (../shared/bench/JOB.md): keel with 1 s checkpoints and
with checkpoints off, the hand-written loop of ../shared/bench/limit (no checkpoints, no
fault tolerance: the yardstick), and optionally the peers (Bytewax, Flink) through
../shared/bench/bench.sh, all in one run; then the recovery time after kill -9 with 1M keys
in state. Prints a Markdown report for BENCHMARKS.md.

usage: benchmark.py [--size large] [--repeat 5] [--peers bytewax,flink-udf] [--no-recovery]

Runs are interleaved (limit, keel 1s, keel off, ...) so that machine noise hits all of
them alike; the report gives the median and the best of the repeats. Wall time covers the
whole process: start-up, reading, processing, the final checkpoint and commit.

A benchmark of wrong output is no benchmark: every keel output measured (the last round of
each variant, and the recovered output after the kill) goes through check.py, and the run
fails unless it says exactly-once and OK; a run that exits with an error, a kill that does
not land mid-run, or a recovery that never logs its first commit fails it too.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")
KEEL = os.path.join(ROOT, "target", "release", "keel")
LIMIT_DIR = "/tmp/keel-bench-limit"
LIMIT = os.path.join(LIMIT_DIR, "release", "limit")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def timed(cmd, env=None):
    """Runs cmd under GNU time; returns (wall seconds, max RSS MiB, returncode, stderr)."""
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "@@%M", *cmd], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    m = re.search(r"@@(\d+)", p.stderr)
    return wall, (int(m.group(1)) / 1024 if m else float("nan")), p.returncode, p.stderr


def data(size):
    d = f"/tmp/bench-data/{size}/input"
    if not os.path.exists(os.path.join(d, "_MANIFEST.json")):
        sh([sys.executable, os.path.join(SHARED, "gen.py"), "--size", size, "--force"], stdout=subprocess.DEVNULL)
    n = json.load(open(os.path.join(d, "_MANIFEST.json")))["records"]
    return d, n


def keel_env(inp, out, state, interval):
    return dict(os.environ, IN=inp, OUT=out, STATE=state, KEEL_CHECKPOINT_INTERVAL=interval, RUST_LOG="info")


def run_keel(inp, interval, tag):
    out, state = f"/tmp/bench-out/keel-{tag}", f"/tmp/bench-state/keel-{tag}"
    sh(["rm", "-rf", out, state])
    os.makedirs(out)
    os.makedirs(state)
    wall, rss, rc, err = timed([KEEL, "run", os.path.join(HERE, "keel", "job.toml"), "--quiet"],
                               env=keel_env(inp, out, state, interval))
    if rc not in (0, 1):
        sys.exit(f"keel failed ({rc}):\n{err[-2000:]}")
    return wall, rss, out


def check(inp, out, what):
    """Runs check.py on an output; exits (failing the benchmark) unless it says exactly-once and OK."""
    c = subprocess.run([sys.executable, os.path.join(SHARED, "check.py"), "-q", inp, out], capture_output=True,
                       text=True)
    verdict = " ".join(l for l in c.stdout.splitlines() if l.startswith("VERDICT") or l in ("OK", "FAIL"))
    if c.returncode != 0 or "VERDICT: exactly-once" not in c.stdout:
        sys.exit(f"{what}: check.py did not confirm exactly-once ({verdict}):\n{c.stdout[-3000:]}")
    return verdict


def fmt_rate(n, s):
    return f"{n / s / 1e6:.2f}M"


def recovery(keys=1_000_000, records=4_000_000):
    """Kill -9 with `keys` keys in state, restart, and time the recovery."""
    d = f"/tmp/bench-data/keys{keys}/input"
    if not os.path.exists(os.path.join(d, "_MANIFEST.json")):
        sh([sys.executable, os.path.join(SHARED, "gen.py"), "-n", str(records), "-k", str(keys), "-o", d, "--force"],
           stdout=subprocess.DEVNULL)
    out, state = "/tmp/bench-out/keel-recovery", "/tmp/bench-state/keel-recovery"
    sh(["rm", "-rf", out, state])
    env = keel_env(d, out, state, "1s")
    p = subprocess.Popen([KEEL, "run", os.path.join(HERE, "keel", "job.toml"), "--quiet"], env=env,
                         stderr=subprocess.DEVNULL)
    # wait for the second checkpoint, so that state holds (nearly) every key
    seen = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        n = len(os.listdir(os.path.join(state, "checkpoints"))) if os.path.isdir(os.path.join(state, "checkpoints")) else 0
        if n >= 3:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    if p.wait() != -signal.SIGKILL:
        sys.exit(f"recovery: the first run ended by itself (exit code {p.returncode}) before the kill")
    newest = max(int(f[5:25]) for f in os.listdir(os.path.join(state, "checkpoints")) if f.startswith("ckpt-"))
    manifest = open(os.path.join(state, "checkpoints", f"ckpt-{newest:020}.json")).read().split("\n", 1)[1]
    m = json.loads(manifest)
    keys_in_state = m["state"]["keys"]
    state_mb = m["state"]["bytes"] / 1e6
    t0 = time.time()
    p = subprocess.Popen(["/usr/bin/time", "-f", "@@%M", KEEL, "run", os.path.join(HERE, "keel", "job.toml"), "--quiet",
                          "--log-format", "json"], env=env, stderr=subprocess.PIPE, text=True)
    startup = first = None
    rss = float("nan")
    for line in p.stderr:
        if line.startswith("@@"):
            rss = int(line[2:]) / 1024
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("message") == "pipeline started":
            startup = ev.get("startup_ms")
        if ev.get("message") == "first checkpoint of this run committed" and first is None:
            first = ev.get("since_start_ms")
            first_wall = time.time() - t0
    if p.wait() not in (0, 1):
        sys.exit(f"recovery: the recovering run failed with exit code {p.returncode}")
    if startup is None or first is None:
        sys.exit("recovery: the recovering run did not log its start-up and first commit")
    verdict = check(d, out, "recovery")
    return dict(verdict=verdict, keys=keys_in_state, state_mb=state_mb, restore_ms=startup, first_commit_ms=first,
                first_commit_wall_ms=round(first_wall * 1000), rss=rss, checkpoint=newest)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="large")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peers", default="", help="comma-separated peers of ../shared/bench to run once (slow)")
    ap.add_argument("--no-recovery", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="skip check.py on keel's output (the recovery is always checked)")
    a = ap.parse_args()

    sh(["cargo", "build", "--release", "-q", "-p", "keel-cli"], cwd=ROOT)
    sh(["cargo", "build", "--release", "-q", "--manifest-path", os.path.join(SHARED, "limit", "Cargo.toml"),
        "--target-dir", LIMIT_DIR])
    os.makedirs("/tmp/bench-out", exist_ok=True)
    inp, n = data(a.size)
    sh(["cat", *[os.path.join(inp, f) for f in os.listdir(inp)]], stdout=subprocess.DEVNULL)  # warm the page cache

    res = {"limit": [], "keel-1s": [], "keel-off": []}
    rss = {"limit": 0, "keel-1s": 0, "keel-off": 0}
    out1s = None
    for r in range(a.repeat):
        w, m, rc, err = timed([LIMIT, "full", inp, "/tmp/bench-out/limit.jsonl"])
        if rc != 0:
            sys.exit(f"limit failed: {err}")
        res["limit"].append(w)
        rss["limit"] = max(rss["limit"], m)
        w, m, out1s = run_keel(inp, "1s", "1s")
        res["keel-1s"].append(w)
        rss["keel-1s"] = max(rss["keel-1s"], m)
        w, m, out_off = run_keel(inp, "off", "off")
        res["keel-off"].append(w)
        rss["keel-off"] = max(rss["keel-off"], m)
        print(f"[bench] round {r + 1}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()), file=sys.stderr)

    verdict = "not checked"
    if not a.no_check:
        # the last round's outputs of both keel runs; a wrong output fails the benchmark
        verdict = check(inp, out1s, "keel, 1 s checkpoints")
        check(inp, out_off, "keel, checkpoints off")

    peers = []
    for peer in [p for p in a.peers.split(",") if p]:
        p = subprocess.run([os.path.join(SHARED, "bench.sh"), peer, a.size], capture_output=True, text=True)
        line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-300:]
        m = re.search(r"wall=([\d.]+)s.*tree_rss=(\d+)MiB.*check=(\S+)\s+(.*)$", line)
        if m:
            peers.append((peer, float(m.group(1)), int(m.group(2)), f"{m.group(3)} {m.group(4)}"))
        else:
            peers.append((peer, float("nan"), 0, line.strip()))
        print(f"[bench] {peer}: {line}", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in res.items()}
    best = {k: min(v) for k, v in res.items()}
    print(f"\n### Reference job, {n:,} records ({a.size}), {a.repeat} interleaved rounds\n")
    print("| run | median wall | best wall | records/s (median) | records/s (best) | peak RSS |")
    print("|---|---|---|---|---|---|")
    for k, label in [("limit", "hand-written loop (no checkpoints, no fault tolerance)"),
                     ("keel-1s", "keel, 1 s checkpoints"), ("keel-off", "keel, checkpoints off (final only)")]:
        print(f"| {label} | {med[k]:.2f} s | {best[k]:.2f} s | {fmt_rate(n, med[k])} | {fmt_rate(n, best[k])} | "
              f"{rss[k]:.0f} MiB |")
    for peer, w, m, chk in peers:
        print(f"| {peer} (../shared/bench/bench.sh, p=1) | {w:.1f} s | | {n / w / 1e3:.0f}k | | {m} MiB tree |")
    print()
    print(f"- keel (1 s checkpoints) vs the hand-written loop: {med['limit'] / med['keel-1s'] * 100:.0f} % "
          f"(median), {best['limit'] / best['keel-1s'] * 100:.0f} % (best)")
    print(f"- checkpoint overhead (1 s vs off): {(med['keel-1s'] / med['keel-off'] - 1) * 100:+.1f} % (median), "
          f"{(best['keel-1s'] / best['keel-off'] - 1) * 100:+.1f} % (best)")
    for peer, w, _, _ in peers:
        print(f"- keel (1 s) vs {peer}: {w / med['keel-1s']:.0f}x faster")
    print(f"- check.py on keel's output (1 s checkpoints): {verdict}")
    if not a.no_recovery:
        rec = recovery()
        print(f"\n### Recovery after kill -9 with {rec['keys']:,} keys in state\n")
        print(f"- state at the restored checkpoint {rec['checkpoint']}: {rec['keys']:,} keys, {rec['state_mb']:.1f} MB of "
              f"state files")
        print(f"- restore (start of the process to processing): {rec['restore_ms']} ms")
        print(f"- start of the process to the first new commit: {rec['first_commit_ms']} ms "
              f"({rec['first_commit_wall_ms']} ms measured from outside, process start-up included)")
        print(f"- peak RSS of the recovering run: {rec['rss']:.0f} MiB")
        print(f"- check.py on the recovered output (killed run + recovering run): {rec['verdict']}")


if __name__ == "__main__":
    main()
