#!/usr/bin/env python3
"""Kafka -> reference job -> Kafka, keel against a bare rdkafka consume -> produce loop.

Produces N lines of ../shared/bench/gen.py (0.1 % bad) to an input topic of P partitions
once, then runs in turn, R rounds: the bare loop (crates/keel-connectors/examples/
kafka_bare_loop.rs: consume every partition to its end, produce each value, no parsing, no
checkpoints: the ceiling of this broker) and `keel run bench/crash/kafka_job.toml` (parse,
validate, running totals per customer, exactly-once sinks, 1 s checkpoints). Each run writes
fresh topics. Prints records/s of each and keel's ratio to the loop, per round.

With --bytewax, each round also runs bytewax_flow.py (Bytewax 0.21.1 with its Kafka
connectors, one worker, 1 s snapshots; venv /tmp/bench-venvs/bytewax as
../shared/bench/bytewax/run.sh makes it, plus confluent-kafka).

usage: bench.py [-n RECORDS] [-p PARTITIONS] [-r ROUNDS] [--brokers B] [--bytewax]
Run with the venv .ci/services makes: /opt/keel-kafka/bin/python bench/kafka/bench.py
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crash"))
from kafka_crash import create, produce  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--records", type=int, default=1_000_000)
    ap.add_argument("-p", "--partitions", type=int, default=4)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--brokers", default=os.environ.get("KEEL_KAFKA_BROKERS", "127.0.0.1:9092"))
    ap.add_argument("--bytewax", action="store_true")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-cli"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-connectors", "--features", "kafka",
                    "--example", "kafka_bare_loop"], cwd=ROOT, check=True)
    keel = os.path.join(ROOT, "target", "release", "keel")
    bare = os.path.join(ROOT, "target", "release", "examples", "kafka_bare_loop")
    work = tempfile.mkdtemp(prefix="keel-kafka-bench-")
    inp = os.path.join(work, "input")
    subprocess.run([sys.executable, os.path.join(SHARED, "gen.py"), "-n", str(a.records), "--bad-frac", "0.001",
                    "-o", inp, "--force"], check=True, stdout=subprocess.DEVNULL)
    tag = f"{int(time.time())}-{os.getpid()}"
    t_in = f"keel-bench-in-{tag}"
    create(a.brokers, [t_in], a.partitions)
    n = produce(a.brokers, t_in, a.partitions, inp)
    print(f"{n} records in {t_in} ({a.partitions} partitions); {a.rounds} rounds, bare loop then keel")
    for r in range(a.rounds):
        t_bare, t_rec, t_fin, t_dead = (f"keel-bench-{x}-{tag}-{r}" for x in ("bare", "records", "final", "dead"))
        create(a.brokers, [t_bare, t_rec, t_fin, t_dead], a.partitions)
        t0 = time.time()
        subprocess.run([bare, a.brokers, t_in, t_bare, str(a.partitions)], check=True, stdout=subprocess.DEVNULL)
        bare_s = time.time() - t0
        env = dict(os.environ, BROKERS=a.brokers, IN_TOPIC=t_in, RECORDS_TOPIC=t_rec, FINAL_TOPIC=t_fin,
                   DEAD_TOPIC=t_dead, OUT=os.path.join(work, f"out-{r}"), STATE=os.path.join(work, f"state-{r}"),
                   KEEL_CHECKPOINT_INTERVAL="1s", RUST_LOG="error")
        t0 = time.time()
        rc = subprocess.run([keel, "run", os.path.join(ROOT, "bench", "crash", "kafka_job.toml"), "--quiet"],
                            env=env).returncode
        keel_s = time.time() - t0
        if rc not in (0, 1):
            sys.exit(f"keel failed with exit code {rc}")
        line = (f"round {r}: bare loop {n / bare_s:,.0f} records/s ({bare_s:.2f} s), "
                f"keel {n / keel_s:,.0f} records/s ({keel_s:.2f} s): keel/bare = {bare_s / keel_s:.2f}")
        if a.bytewax:
            bw_s = bytewax(a.brokers, t_in, f"keel-bench-bw-{tag}-{r}", a.partitions, work, r)
            line += f"; bytewax {n / bw_s:,.0f} records/s ({bw_s:.2f} s): keel/bytewax = {bw_s / keel_s:.1f}"
        print(line, flush=True)


def bytewax(brokers, t_in, prefix, partitions, work, r):
    """One Bytewax run into fresh topics; its wall time."""
    py = "/tmp/bench-venvs/bytewax/bin/python"
    t_rec, t_fin = f"{prefix}-records", f"{prefix}-final"
    create(brokers, [t_rec, t_fin], partitions)
    state = os.path.join(work, f"bytewax-state-{r}")
    os.makedirs(state, exist_ok=True)
    subprocess.run([py, "-m", "bytewax.recovery", state, "1"], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, KAFKA_BROKERS=brokers, KAFKA_IN=t_in, KAFKA_RECORDS=t_rec, KAFKA_FINAL=t_fin,
               BENCH_OUT=os.path.join(work, f"bytewax-out-{r}"), PYTHONPATH=HERE, PYTHONDONTWRITEBYTECODE="1")
    t0 = time.time()
    subprocess.run([py, "-m", "bytewax.run", "bytewax_flow:flow", "-r", state, "-s", "1", "-b", "0"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return time.time() - t0


if __name__ == "__main__":
    main()
