#!/usr/bin/env python3
"""Benchmark of batch ingestion ([ingest]): what idempotency costs per file, and how fast a
rerun skips a directory that was fully ingested.

- per-file overhead: F files of R records, ingested (one ledger unit and one transaction per
  output per file) against the same pipeline without [ingest] (one run, files as partitions,
  no ledger); overhead per file = (ingest wall - plain wall) / F. Rounds are interleaved.
- skip speed: S one-record files ingested once (files/s at that scale), then rerun: every file
  is completed and unchanged, so the rerun lists, stats and skips them (files/s); and rerun
  with `rehash = true`, which reads and hashes every file (BLAKE3) before skipping it.

usage: ingest.py [--files 2000] [--records 100] [--skip-files 100000] [--rounds 3]
                 [--ledger sqlite|postgres]

Wall time covers the whole process. The pipelines are bench/ingest/steps.toml (parse,
validate, select, one file sink, dead letters) with and without an [ingest] table.

keel's own counts are not trusted: the committed output of the last round of each pipeline,
of the first ingestion and after the reruns is read back, and the run fails unless every good
record is there exactly once and every bad one is dead-lettered exactly once.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = "/var/tmp/keel-bench-ingest"
PG = "postgres://postgres@127.0.0.1:5432/test"


def pipelines(ledger):
    steps = open(os.path.join(HERE, "ingest", "steps.toml")).read()
    os.makedirs(WORK, exist_ok=True)
    plain = os.path.join(WORK, "plain.toml")
    ingest = os.path.join(WORK, "ingest.toml")
    with open(plain, "w") as f:
        f.write('name = "bench-plain"\n' + steps)
    with open(ingest, "w") as f:
        f.write('name = "bench-ingest"\n' + steps + "\n[ingest]\nledger = \"${LEDGER}\"\nschema = \"${SCHEMA}\"\n"
                "rehash = ${REHASH}\n")
    return plain, ingest


def make_files(d, files, records):
    marker = os.path.join(d, ".done")
    if os.path.exists(marker):
        return d
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    n = 0
    for i in range(files):
        lines = []
        for _ in range(records):
            n += 1
            amount = -1 if n % 50 == 0 else n % 997
            lines.append(f'{{"id":{n},"customer":"c{n % 1000}","amount":{amount}}}\n')
        with open(os.path.join(d, f"part-{i:06}.jsonl"), "w") as f:
            f.writelines(lines)
    open(marker, "w").close()
    return d


def verify(out, files, records, what):
    """Reads the committed output (files not starting with '.' or '_') and fails the benchmark
    unless every good record (id not a multiple of 50) is in orders/ exactly once and every bad
    one in dead/ exactly once: keel's own counts are not evidence."""
    seen = {"orders": Counter(), "dead": Counter()}
    for sink in seen:
        for root, dirs, names in os.walk(os.path.join(out, sink)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
            for name in names:
                if name.startswith((".", "_")):
                    continue
                for line in open(os.path.join(root, name)):
                    rec = json.loads(line)
                    seen[sink][rec["id"] if sink == "orders" else json.loads(rec["raw"])["id"]] += 1
    n = files * records
    want = {"orders": {i for i in range(1, n + 1) if i % 50}, "dead": set(range(50, n + 1, 50))}
    for sink, ids in seen.items():
        dup = [i for i, c in ids.items() if c > 1]
        missing, extra = want[sink] - ids.keys(), ids.keys() - want[sink]
        if dup or missing or extra:
            sys.exit(f"{what}: {sink}/ is wrong: {len(dup)} ids twice (e.g. {dup[:3]}), {len(missing)} missing "
                     f"(e.g. {sorted(missing)[:3]}), {len(extra)} unexpected (e.g. {sorted(extra)[:3]})")


def run(binary, pipeline, inp, tag, ledger, fresh=True, rehash=False, schema="keel_bench"):
    out, state = os.path.join(WORK, "out-" + tag), os.path.join(WORK, "state-" + tag)
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        if ledger == "postgres":
            subprocess.run(["psql", "-q", PG, "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"], check=True,
                           capture_output=True)
    led = PG if ledger == "postgres" else f"sqlite:{state}/ledger.db"
    env = dict(os.environ, IN=inp, OUT=out, STATE=state, LEDGER=led, SCHEMA=schema,
               REHASH="true" if rehash else "false", RUST_LOG="warn", KEEL_WORKER="bench")
    t0 = time.time()
    p = subprocess.run([binary, "run", pipeline, "--quiet", "--json"], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode not in (0, 1):
        sys.exit(f"{pipeline} failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall, json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--skip-files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ledger", choices=["sqlite", "postgres"], default="sqlite")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-cli"], cwd=ROOT, check=True)
    keel = os.path.join(ROOT, "target", "release", "keel")
    plain, ingest = pipelines(a.ledger)

    inp = make_files(os.path.join(WORK, f"in-{a.files}x{a.records}"), a.files, a.records)
    walls = {"plain": [], "ingest": []}
    for r in range(a.rounds):
        walls["plain"].append(run(keel, plain, inp, "plain", a.ledger)[0])
        w, rep = run(keel, ingest, inp, "ingest", a.ledger)
        assert rep["completed"] == a.files, rep
        walls["ingest"].append(w)
        if r == a.rounds - 1:
            verify(os.path.join(WORK, "out-plain"), a.files, a.records, "without [ingest]")
            verify(os.path.join(WORK, "out-ingest"), a.files, a.records, "with [ingest]")
        print(f"[ingest] round {r + 1}: plain {walls['plain'][-1]:.2f}s ingest {w:.2f}s", file=sys.stderr)
    mp, mi = statistics.median(walls["plain"]), statistics.median(walls["ingest"])
    n = a.files * a.records
    print(f"\n### Per-file overhead: {a.files:,} files x {a.records} records, {a.ledger} ledger, "
          f"{a.rounds} interleaved rounds\n")
    print("| run | median wall | best wall | files/s | records/s |")
    print("|---|---|---|---|---|")
    for k, m in (("plain", mp), ("ingest", mi)):
        print(f"| {'without [ingest]' if k == 'plain' else 'with [ingest]'} | {m:.2f} s | {min(walls[k]):.2f} s | "
              f"{a.files / m:,.0f} | {n / m:,.0f} |")
    print(f"\n- overhead per file: **{(mi - mp) / a.files * 1000:.2f} ms** (median; "
          f"{(min(walls['ingest']) - min(walls['plain'])) / a.files * 1000:.2f} ms best)")

    if a.skip_files:
        sinp = make_files(os.path.join(WORK, f"in-{a.skip_files}x1"), a.skip_files, 1)
        w0, rep = run(keel, ingest, sinp, "skip", a.ledger)
        assert rep["completed"] == a.skip_files, rep
        verify(os.path.join(WORK, "out-skip"), a.skip_files, 1, "first ingestion")
        print(f"[ingest] first ingestion of {a.skip_files:,} files: {w0:.1f}s", file=sys.stderr)
        reruns, rehash = [], []
        for _ in range(a.rounds):
            w, rep = run(keel, ingest, sinp, "skip", a.ledger, fresh=False)
            assert rep["skipped"] == a.skip_files and rep["completed"] == 0, rep
            reruns.append(w)
            w, rep = run(keel, ingest, sinp, "skip", a.ledger, fresh=False, rehash=True)
            assert rep["skipped"] == a.skip_files, rep
            rehash.append(w)
        verify(os.path.join(WORK, "out-skip"), a.skip_files, 1, "after the reruns")
        print(f"\n### Skip speed: {a.skip_files:,} completed one-record files, {a.ledger} ledger\n")
        print("| run | median wall | best wall | files/s (median) |")
        print("|---|---|---|---|")
        print(f"| first ingestion | {w0:.1f} s | | {a.skip_files / w0:,.0f} |")
        print(f"| rerun (stat, skip) | {statistics.median(reruns):.2f} s | {min(reruns):.2f} s | "
              f"{a.skip_files / statistics.median(reruns):,.0f} |")
        print(f"| rerun with `rehash = true` | {statistics.median(rehash):.2f} s | {min(rehash):.2f} s | "
              f"{a.skip_files / statistics.median(rehash):,.0f} |")


if __name__ == "__main__":
    main()
