"""The reference job (../shared/bench/JOB.md) as a Bytewax 0.21 dataflow between Kafka
topics, for bench.py --bytewax: input from KAFKA_IN, running totals to KAFKA_RECORDS, final
totals to KAFKA_FINAL, dead letters to a file in BENCH_OUT, as keel's kafka_job.toml does.
Bytewax snapshots its Kafka offsets and state every second (-s 1); its Kafka sink is
at-least-once (no transactions).
"""
import json
import os
import re
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.files import FileSink
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow

BROKERS = [os.environ["KAFKA_BROKERS"]]
OUT = Path(os.environ["BENCH_OUT"])
OUT.mkdir(parents=True, exist_ok=True)
ID = re.compile(r'"id"\s*:\s*(-?\d+)')
FIELDS = (("id", int), ("ts", int), ("customer", str), ("amount", int))


def check(line):
    """(reason or None, line, record), by JOB.md's rules."""
    try:
        rec = json.loads(line)
    except ValueError:
        return ("malformed", line, None)
    if not isinstance(rec, dict):
        return ("malformed", line, None)
    for name, kind in FIELDS:
        v = rec.get(name)
        if v is None:
            return ("missing_field:" + name, line, rec)
        if not isinstance(v, kind) or isinstance(v, bool):
            return ("bad_type:" + name, line, rec)
    return ("negative_amount", line, rec) if rec["amount"] < 0 else (None, line, rec)


def dead(x):
    reason, line, rec = x
    rid = rec.get("id") if isinstance(rec, dict) else None
    if rid is None:
        m = ID.search(line)
        rid = int(m.group(1)) if m else None
    return ("dead", json.dumps({"id": rid, "reason": reason, "raw": line}))


def add(total, v):
    rid, amount = v
    total = (total or 0) + amount
    return total, (rid, total)


flow = Dataflow("kafka_running_totals")
msgs = op.input("in", flow, KafkaSource(BROKERS, [os.environ["KAFKA_IN"]], tail=False))
checked = op.map("check", msgs, lambda m: check(m.value.decode()))
split = op.branch("valid", checked, lambda x: x[0] is None)
valid = op.map("key", split.trues, lambda x: (x[2]["customer"], (x[2]["id"], x[2]["amount"])))
totals = op.stateful_map("running_total", valid, add)
records = op.map(
    "record",
    totals,
    lambda kv: KafkaSinkMessage(
        kv[0].encode(), json.dumps({"id": kv[1][0], "customer": kv[0], "running_total": kv[1][1]}).encode()
    ),
)
op.output("records", records, KafkaSink(BROKERS, os.environ["KAFKA_RECORDS"]))
final = op.fold_final("final_total", valid, lambda: 0, lambda acc, v: acc + v[1])
finals = op.map("final", final, lambda kv: KafkaSinkMessage(kv[0].encode(), json.dumps({"customer": kv[0], "total": kv[1]}).encode()))
op.output("finals", finals, KafkaSink(BROKERS, os.environ["KAFKA_FINAL"]))
op.output("dead_letters", op.map("dead", split.falses, dead), FileSink(OUT / "dead.jsonl"))
