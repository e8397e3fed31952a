#!/usr/bin/env python3
"""The crash test of the reference job on Kafka: Kafka -> job -> Kafka.

The input (N records made by ../shared/bench/gen.py, 5 % bad) is produced to a topic of P
partitions; bench/crash/kafka_job.toml reads it (bounded), runs the reference job and writes
`records` and `final` to two topics, dead letters to a third (with a local fallback
directory, which must be empty at the end). The job is killed at the
deterministic crash points around the Kafka publish (after the manifest, in the middle of a
publish, between sink commits, after prepare) and with SIGKILL at K random instants, and
restarted each time. After every kill a real Kafka client (confluent-kafka) reads the
output and dead-letter topics: no record and no dead letter may be there twice. At the end
the topics are read out into files (a dead letter as `raw` = its value and `reason` = its
`keel.error.reason` header) and ../shared/bench/check.py must say exactly-once and OK.

Needs a Kafka-protocol broker (default 127.0.0.1:9092; .ci/services starts one) and the
Python client: run it with the venv .ci/services makes (/opt/keel-kafka/bin/python).

usage: kafka_crash.py [-n RECORDS] [-k KILLS] [-p PARTITIONS] [--brokers B] [--work DIR]
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")
POINTS = ["after_manifest", "mid_publish", "mid_commit", "after_prepare"]


def create(brokers, topics, partitions):
    admin = AdminClient({"bootstrap.servers": brokers})
    for t, f in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).items():
        f.result()


def produce(brokers, topic, partitions, path):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    n = 0
    for name in sorted(os.listdir(path)):
        if not name.endswith(".jsonl"):
            continue
        for line in open(os.path.join(path, name), "rb"):
            line = line.rstrip(b"\n")
            while True:
                try:
                    p.produce(topic, value=line, partition=n % partitions)
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if n % 10000 == 0:
                p.poll(0)
    p.flush(60)
    return n


def read_topic(brokers, topic, partitions, messages=False):
    """Every value (or message) of `topic`, per partition up to its end (the end-of-partition
    event)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "keel-crash-checker", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, eof, idle = [], set(), 0
    while len(eof) < partitions:
        msgs = c.consume(10000, timeout=1.0)
        if not msgs:
            idle += 1
            if idle > 30:
                sys.exit(f"reading {topic}: no end of partition after 30 s")
            continue
        idle = 0
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                sys.exit(f"reading {topic}: {m.error()}")
            out.append(m if messages else m.value())
    c.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--records", type=int, default=200_000)
    ap.add_argument("-k", "--kills", type=int, default=20)
    ap.add_argument("-p", "--partitions", type=int, default=4)
    ap.add_argument("--brokers", default=os.environ.get("KEEL_KAFKA_BROKERS", "127.0.0.1:9092"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="/tmp/keel-kafka-crash")
    ap.add_argument("--interval", default="200ms", help="checkpoint interval")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "keel-cli"], cwd=ROOT, check=True)
    keel = os.path.join(ROOT, "target", "release", "keel")
    inp = os.path.join(a.work, f"input-{a.records}")
    out, state = os.path.join(a.work, "out"), os.path.join(a.work, "state")
    subprocess.run(["rm", "-rf", out, state], check=True)
    if not os.path.exists(os.path.join(inp, "_MANIFEST.json")):
        subprocess.run([sys.executable, os.path.join(SHARED, "gen.py"), "-n", str(a.records), "--bad-frac", "0.05",
                        "-o", inp, "--force"], check=True, stdout=subprocess.DEVNULL)
    run_id = f"{int(time.time())}-{os.getpid()}"
    t_in, t_rec, t_fin, t_dead = (f"keel-crash-{x}-{run_id}" for x in ("in", "records", "final", "dead"))
    create(a.brokers, [t_in, t_rec, t_fin, t_dead], a.partitions)
    n = produce(a.brokers, t_in, a.partitions, inp)
    print(f"[kafka-crash] {n} lines produced to {t_in} ({a.partitions} partitions)")
    env = dict(os.environ, BROKERS=a.brokers, IN_TOPIC=t_in, RECORDS_TOPIC=t_rec, FINAL_TOPIC=t_fin, DEAD_TOPIC=t_dead, OUT=out,
               STATE=state, KEEL_CHECKPOINT_INTERVAL=a.interval, RUST_LOG="error")
    job = os.path.join(HERE, "kafka_job.toml")

    def start(crash_at=None):
        e = dict(env)
        if crash_at:
            e["KEEL_CRASH_AT"] = crash_at
        return subprocess.Popen([keel, "run", job, "--quiet"], env=e, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def check_topic(what):
        ids = set()

        for v in read_topic(a.brokers, t_rec, a.partitions):
            i = json.loads(v)["id"]
            if i in ids:
                sys.exit(f"{what}: id {i} is in {t_rec} twice")
            ids.add(i)
        dead = set()
        for v in read_topic(a.brokers, t_dead, a.partitions):
            if v in dead:
                sys.exit(f"{what}: dead letter {v[:60]!r} is in {t_dead} twice")
            dead.add(v)
        return len(ids)

    hits, finished = 0, False
    for pt in POINTS:
        arg = f"{pt}:{rng.randint(2, 4)}"
        rc = start(arg).wait()
        if rc in (0, 1):
            sys.exit(f"the job finished before crash point {arg}: use more records (-n)")
        if rc != -signal.SIGABRT:
            sys.exit(f"crash point {arg}: exit code {rc}, expected SIGABRT")
        hits += 1
        print(f"[kafka-crash] crash point {arg}: ok ({check_topic(arg)} records visible, each once)")
    def manifests():
        """The newest manifest's name (fixed width: names sort as ids do)."""
        d = os.path.join(state, "checkpoints")
        names = [f for f in os.listdir(d) if f.startswith("ckpt-")] if os.path.isdir(d) else []
        return max(names, default="")

    for k in range(a.kills):
        before = manifests()
        p = start()
        # once the run has committed a checkpoint of its own (past its startup), a random instant
        deadline = time.time() + 120
        while manifests() <= before and p.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        after = rng.uniform(0.0, 0.4)
        try:
            rc = p.wait(timeout=after)
            if rc not in (0, 1):
                sys.exit(f"kill #{k}: the run ended by itself with exit code {rc}")
            finished = True
            print(f"[kafka-crash] kill #{k}: the job finished first ({check_topic('finished')} records)")
            break
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            rc = p.wait()
            if rc in (0, 1):
                finished = True
                break
            if rc != -signal.SIGKILL:
                sys.exit(f"kill #{k}: exit code {rc}")
            hits += 1
            print(f"[kafka-crash] kill -9 #{k} {after:.2f}s after a checkpoint: ok ({check_topic(f'kill #{k}')} records visible, each once)")
    if not finished:
        rc = start().wait()
        if rc not in (0, 1):
            sys.exit(f"the final run failed with exit code {rc}")
    # the topics, read with a real client, as the output directories check.py reads
    for sub, topic in (("records", t_rec), ("final", t_fin)):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        with open(os.path.join(out, sub, "from-kafka.jsonl"), "wb") as f:
            for v in read_topic(a.brokers, topic, a.partitions):
                f.write(v + b"\n")
    dead_dir = os.path.join(out, "dead")
    parked = [f for f in os.listdir(dead_dir) if not f.startswith("_")] if os.path.isdir(dead_dir) else []
    if parked:
        sys.exit(f"dead letters left in the fallback directory: {parked}")
    os.makedirs(dead_dir, exist_ok=True)
    with open(os.path.join(dead_dir, "dead-0-from-kafka.jsonl"), "w") as f:
        for m in read_topic(a.brokers, t_dead, a.partitions, messages=True):
            headers = dict((k, v.decode()) for k, v in (m.headers() or []))
            f.write(json.dumps({"raw": m.value().decode(), "reason": headers["keel.error.reason"]}) + "\n")
    r = subprocess.run([sys.executable, os.path.join(SHARED, "check.py"), inp, out], capture_output=True, text=True)
    print("[kafka-crash] check.py: " + " | ".join(r.stdout.strip().splitlines()))
    if "VERDICT: exactly-once" not in r.stdout or r.returncode != 0:
        sys.exit("check.py did not confirm exactly-once")
    print(f"[kafka-crash] PASS: {hits} crashes of a running job, output and dead-letter topics exactly-once")


if __name__ == "__main__":
    main()
