#!/usr/bin/env python3
"""Helper of the Kafka example: creates the topics and produces events, or reads a topic.

usage: events.py produce N        create `events`, `user-counts` and `events-dlq` (4 partitions) if missing,
                                  produce N events, about 2 % of them bad
       events.py read TOPIC       print every value of TOPIC, then how many
Broker: $KAFKA or 127.0.0.1:9092. Needs confluent-kafka (the venv .ci/services makes:
/opt/keel-kafka/bin/python).
"""
import json
import os
import random
import sys

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BROKERS = os.environ.get("KAFKA", "127.0.0.1:9092")


def produce(n):
    admin = AdminClient({"bootstrap.servers": BROKERS})
    existing = admin.list_topics(timeout=10).topics
    new = [NewTopic(t, 4, 1) for t in ("events", "user-counts", "events-dlq") if t not in existing]
    for f in admin.create_topics(new).values() if new else []:
        f.result()
    p = Producer({"bootstrap.servers": BROKERS, "linger.ms": 20})
    rng = random.Random(7)
    for i in range(n):
        user = f"u{rng.randrange(100)}"
        if rng.random() < 0.02:
            value = rng.choice(['{"user": ', '{"action": "click"}', '{"user": 7, "action": "view"}'])
        else:
            value = json.dumps({"user": user, "action": rng.choice(["view", "click", "buy"]), "seq": i})
        while True:
            try:
                p.produce("events", key=user, value=value)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)
    print(f"produced {n} events to `events` on {BROKERS}")


def read(topic):
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": "example-reader", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    parts = AdminClient({"bootstrap.servers": BROKERS}).list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    n, ended = 0, set()
    while len(ended) < len(parts):
        m = c.poll(5.0)
        if m is None:
            break
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                ended.add(m.partition())
                continue
            sys.exit(str(m.error()))
        print(m.value().decode())
        n += 1
    print(f"{n} records in `{topic}`", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "produce":
        produce(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "read":
        read(sys.argv[2])
    else:
        sys.exit(__doc__)
