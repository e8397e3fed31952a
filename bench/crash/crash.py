#!/usr/bin/env python3
"""The long crash test of the reference job (CI runs a short version in Rust).

Runs bench/keel/job.toml on N records (default 2M, made by ../shared/bench/gen.py), kills it
with SIGKILL at K random instants (default 25) and at every deterministic crash point
(KEEL_CRASH_AT: after prepare, after the state write, after the manifest, between commits,
between the renames of one commit), restarting each time. After every kill it checks that
the visible output holds only epochs covered by a durable checkpoint (a manifest whose
length and CRC-32C verify) and has no duplicate id or dead letter; at the end it runs
check.py, which must say exactly-once and OK. Fails loudly when a crash point is never
reached (each runs on a fresh segment), when a run exits with anything but 0/1 or the
signal it was sent, or when fewer than 20 crashes hit a running job.

usage: crash.py [-n RECORDS] [-k KILLS] [--seed S] [--work DIR] [--interval 50ms] [--bad-frac 0.05]
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")
POINTS = ["after_prepare", "after_state", "after_manifest", "mid_commit", "mid_rename", "after_commit"]


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), as keel's `crc32c` crate computes it (not in Python's stdlib)."""
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def newest_checkpoint(state):
    """Id of the newest manifest whose header, length and CRC-32C verify (as keel reads them).

    A manifest that fails its checks is one keel would skip: it does not count as durable."""
    d = os.path.join(state, "checkpoints")
    best = 0
    if not os.path.isdir(d):
        return 0
    for fn in os.listdir(d):
        m = re.fullmatch(r"ckpt-(\d+)\.json", fn)
        if not m:
            continue
        data = open(os.path.join(d, fn), "rb").read()
        head, _, body = data.partition(b"\n")
        hm = re.fullmatch(rb"keel-checkpoint v1 len=(\d+) crc32c=([0-9a-f]{8})", head)
        if hm and int(hm.group(1)) == len(body) and int(hm.group(2), 16) == crc32c(body):
            json.loads(body)  # a body that passes its CRC but does not decode is a keel bug: fail loudly
            best = max(best, int(m.group(1)))
    return best


def visible(dir_):
    if not os.path.isdir(dir_):
        return []
    return sorted(f for f in os.listdir(dir_) if not f.startswith((".", "_")))


def check_after_kill(out, state, what):
    newest = newest_checkpoint(state)
    for sink in ("records", "final", "dead"):
        for f in visible(os.path.join(out, sink)):
            epoch = int(f.split("-")[1])
            if epoch > newest:
                sys.exit(f"{what}: {sink}/{f} is visible but the newest durable checkpoint is {newest}")
    ids, raws = set(), set()
    for f in visible(os.path.join(out, "records")):
        for line in open(os.path.join(out, "records", f)):
            i = json.loads(line)["id"]
            if i in ids:
                sys.exit(f"{what}: id {i} is visible twice")
            ids.add(i)
    for f in visible(os.path.join(out, "dead")):
        for line in open(os.path.join(out, "dead", f)):
            r = json.loads(line)["raw"]
            if r in raws:
                sys.exit(f"{what}: dead letter {r[:60]!r} is visible twice")
            raws.add(r)
    return newest, len(ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--records", type=int, default=2_000_000)
    ap.add_argument("-k", "--kills", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="/tmp/keel-crash")
    ap.add_argument("--interval", default="50ms", help="checkpoint interval")
    ap.add_argument("--bad-frac", type=float, default=0.05, help="fraction of bad input lines")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-cli"], cwd=ROOT, check=True)
    keel = os.path.join(ROOT, "target", "release", "keel")
    inp = os.path.join(a.work, f"input-{a.records}-{a.bad_frac}")
    out, state = os.path.join(a.work, "out"), os.path.join(a.work, "state")
    subprocess.run(["rm", "-rf", out, state], check=True)
    if not os.path.exists(os.path.join(inp, "_MANIFEST.json")):
        subprocess.run([sys.executable, os.path.join(SHARED, "gen.py"), "-n", str(a.records), "--bad-frac", str(a.bad_frac),
                        "-o", inp, "--force"],
                       check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, IN=inp, OUT=out, STATE=state, KEEL_CHECKPOINT_INTERVAL=a.interval, RUST_LOG="error")

    def start(crash_at=None):
        e = dict(env)
        if crash_at:
            e["KEEL_CRASH_AT"] = crash_at
        return subprocess.Popen([keel, "run", os.path.join(ROOT, "bench", "keel", "job.toml"), "--quiet"], env=e,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # a clean run measures how long the job takes, so kills land inside it
    t0 = time.time()
    rc = start().wait()
    if rc not in (0, 1):
        sys.exit(f"the clean run failed with exit code {rc}")
    full = time.time() - t0
    subprocess.run(["rm", "-rf", out, state], check=True)
    print(f"[crash] {a.records} records; a full run takes {full:.2f}s; {a.kills} random kills + {len(POINTS)} crash points")

    plan = [("point", f"{pt}:{rng.randint(1, 4)}") for pt in POINTS]
    # kills spread so that the runs together cover about twice a full run
    span = max(0.06, 2 * full / (a.kills + len(POINTS)))
    plan += [("kill", rng.uniform(0.03, span)) for _ in range(a.kills)]
    rng.shuffle(plan)
    hits = 0
    segments = 0

    def final_check(label):
        r = subprocess.run([sys.executable, os.path.join(SHARED, "check.py"), inp, out], capture_output=True, text=True)
        print(f"[crash] {label}: " + " | ".join(r.stdout.strip().splitlines()))
        if "VERDICT: exactly-once" not in r.stdout or r.returncode != 0:
            sys.exit("check.py did not confirm exactly-once")

    for n, (kind, arg) in enumerate(plan):
        if kind == "point":
            # a crash point runs on a fresh segment, so it is reached within its first checkpoints
            if newest_checkpoint(state) or visible(os.path.join(out, "records")):
                rc = start().wait()
                if rc not in (0, 1):
                    sys.exit(f"#{n}: finishing the segment before crash point {arg} failed with exit code {rc}")
                final_check(f"segment {segments} complete")
                segments += 1
                subprocess.run(["rm", "-rf", out, state], check=True)
            p = start(arg)
            rc = p.wait()
            if rc != -signal.SIGABRT:
                sys.exit(f"#{n}: crash point {arg} was never reached (exit code {rc}, expected SIGABRT)")
            crashed = True
            what = f"#{n} crash point {arg}"
        else:
            p = start()
            try:
                rc = p.wait(timeout=arg)
                if rc not in (0, 1):
                    sys.exit(f"#{n}: the run ended by itself with exit code {rc} before the kill at {arg:.3f}s")
                crashed = False
                what = f"#{n} finished before the kill at {arg:.3f}s"
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                rc = p.wait()
                if rc == -signal.SIGKILL:
                    crashed = True
                    what = f"#{n} kill -9 after {arg:.3f}s"
                elif rc in (0, 1):  # it ended on its own between the timeout and the signal
                    crashed = False
                    what = f"#{n} finished just before the kill at {arg:.3f}s"
                else:
                    sys.exit(f"#{n}: the run ended with exit code {rc} around the kill at {arg:.3f}s")
        newest, nrec = check_after_kill(out, state, what)
        print(f"[crash] {what}: ok (newest checkpoint {newest}, {nrec} records visible)")
        hits += crashed
        if not crashed:
            # the job completed: judge it, then start a new segment from scratch
            final_check(f"segment {segments} complete")
            segments += 1
            subprocess.run(["rm", "-rf", out, state], check=True)
    print(f"[crash] {hits} of {len(plan)} crashes hit a running job; final run")
    rc = start().wait()
    if rc not in (0, 1):
        sys.exit(f"final run failed with exit code {rc}")
    final_check("final")
    if hits < 20:
        sys.exit(f"only {hits} crashes hit a running job (wanted at least 20)")
    print("[crash] PASS")


if __name__ == "__main__":
    main()
