//! The Kafka source and sink against a real Kafka-protocol broker (`KEEL_KAFKA_BROKERS`,
//! default 127.0.0.1:9092: the tansu broker `.ci/services` starts). Every test makes its own
//! topics, so the tests share the broker without seeing each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{Framing, OutBatch, Sink};
use keel::testing::MemorySink;
use keel::{FileCheckpointStore, Flow, Pipeline, RawEncoder, Record};
use keel_connectors::kafka::{
    KafkaPreCommit, KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig, PROGRESS_HEADER, Partitioner,
    WRITER_HEADER, sink::choose_partition,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

mod dead_letters;
mod routes;
mod transactions;

fn brokers() -> String {
    std::env::var("KEEL_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic of its own for each call: `keel-<test>-<pid>-<n>`.
fn topic(test: &str, partitions: i32) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "keel-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    create_topic(&name, partitions);
    name
}

fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let created = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create topic (is the Kafka test broker up? .ci/services starts it)");
    for r in created {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

/// Produces `values` to partition `p(i)` with key `k<i % 7>`, a header and a timestamp.
fn produce(topic: &str, values: &[String], p: impl Fn(usize) -> i32) {
    let prod = producer();
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{}", i % 7);
        let headers = OwnedHeaders::new().insert(Header {
            key: "origin",
            value: Some("test"),
        });
        prod.send(
            BaseRecord::to(topic)
                .partition(p(i))
                .key(&key)
                .payload(v)
                .headers(headers)
                .timestamp(1_700_000_000_000 + i as i64),
        )
        .unwrap();
    }
    prod.flush(Duration::from_secs(30)).unwrap();
}

/// A message read back: partition, key, value, headers.
#[derive(Clone, Debug)]
struct Read {
    partition: i32,
    key: Option<Vec<u8>>,
    value: String,
    headers: BTreeMap<String, String>,
}

/// Every message of `topic` (partitions 0..n), with a real Kafka client, up to the
/// end-of-partition event (the test broker's high watermarks are not exact).
fn read_all(topic: &str, n: i32) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "keel-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut out = Vec::new();
    for p in 0..n {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap();
        if high <= low {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(low)).unwrap();
        c.assign(&tpl).unwrap();
        loop {
            match c.poll(Duration::from_secs(10)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Read {
                        partition: p,
                        key: m.key().map(<[u8]>::to_vec),
                        value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                        headers,
                    });
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("reading {topic}:{p}: {e}"),
                None => panic!("reading {topic}:{p}: nothing for 10 s"),
            }
        }
    }
    out
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

fn bounded(topic: &str) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig::new(brokers(), vec![topic.to_owned()]);
    c.bounded = true;
    c
}

/// Runs topic(s) → identity → memory sink, checkpointing into `state`.
fn run_to_memory(config: KafkaSourceConfig, state: &std::path::Path, out: &MemorySink) -> keel::RunSummary {
    Pipeline::builder("kafka-in")
        .source(KafkaSource::new(config).unwrap())
        .flow(Flow::<Record>::new().map(|r: Record| {
            // key|value|header|event time, to check that all four came through
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let header = r
                .headers
                .iter()
                .find(|(k, _)| k == "origin")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            format!(
                "{key}|{}|{header}|{}",
                String::from_utf8_lossy(&r.value),
                r.event_time.unwrap_or(-1)
            )
            .into_bytes()
        }))
        .sink_with("main", out.clone(), RawEncoder)
        .checkpoints(FileCheckpointStore::new(state))
        .build()
        .unwrap()
        .run()
        .unwrap()
}

/// Topics by pattern: `<base>-*` matches `<base>-a` now and `<base>-b` later.
#[test]
fn the_source_reads_every_partition_with_key_headers_and_time_then_resumes_at_its_offsets() {
    let base = topic("source", 1);
    let t = format!("{base}-a");
    create_topic(&t, 3);
    let pattern = format!("{base}-*");
    let first = values("a", 90);
    produce(&t, &first, |i| (i % 3) as i32);
    let state = tempfile::tempdir().unwrap();
    let out = MemorySink::new();
    let s = run_to_memory(bounded(&pattern), state.path(), &out);
    assert_eq!(s.records_in, 90);
    let lines = out.committed_lines();
    assert_eq!(lines.len(), 90);
    let by_value: HashMap<&str, &str> = lines
        .iter()
        .map(|l| (l.split('|').nth(1).unwrap(), l.as_str()))
        .collect();
    for (i, v) in first.iter().enumerate() {
        let want = format!("k{}|{v}|test|{}", i % 7, 1_700_000_000_000 + i as i64);
        assert_eq!(by_value.get(v.as_str()).copied(), Some(want.as_str()));
    }
    // per partition, in offset order
    for p in 0..3 {
        let got: Vec<&str> = lines
            .iter()
            .map(|l| l.split('|').nth(1).unwrap())
            .filter(|v| v[1..].parse::<usize>().unwrap() % 3 == p)
            .collect();
        let want: Vec<&str> = first
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == p)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(got, want, "partition {p} in order");
    }
    // more records, and a new topic matching the pattern (new partitions: the test broker
    // cannot add partitions to a topic): the next run reads only those
    let second = values("b", 40);
    produce(&t, &second[..20], |i| (i % 3) as i32);
    let t2 = format!("{base}-b");
    create_topic(&t2, 2);
    produce(&t2, &second[20..], |i| (i % 2) as i32);
    let s2 = run_to_memory(bounded(&pattern), state.path(), &out);
    assert_eq!(s2.records_in, 40, "only the new records");
    let all: Vec<String> = out
        .committed_lines()
        .iter()
        .map(|l| l.split('|').nth(1).unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = first.iter().chain(&second).cloned().collect();
    let mut got = all.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every record exactly once across both runs");
}

#[test]
fn an_unknown_topic_is_a_fatal_error_that_names_it() {
    let config = bounded("keel-no-such-topic-here");
    let err = Pipeline::builder("kafka-missing")
        .source(KafkaSource::new(config).unwrap())
        .flow(Flow::<Record>::new().map(|r: Record| r.value.to_vec()))
        .sink_with("main", MemorySink::new(), RawEncoder)
        .build()
        .unwrap()
        .run()
        .expect_err("a missing topic fails the run");
    let text = err.to_string();
    assert!(
        text.contains("keel-no-such-topic-here") && text.contains("does not exist"),
        "{text}"
    );
}

fn batch(records: &[(Option<&str>, String)]) -> OutBatch {
    let mut b = OutBatch::new(Framing::Messages);
    for (k, v) in records {
        b.push(k.map(str::as_bytes), v.as_bytes());
    }
    b
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Stages epoch `epoch` of `records` and prepares it, as a checkpoint would, without
/// committing: returns the pre-commit the manifest would hold.
fn staged(sink: &mut KafkaSink, epoch: u64, records: &[(Option<&str>, String)]) -> serde_json::Value {
    block_on(sink.write(epoch, &batch(records))).unwrap();
    let mut sealed = block_on(sink.seal(epoch)).unwrap();
    sealed.prepare().unwrap()
}

fn recovery(epoch: Option<u64>, precommit: Option<serde_json::Value>) -> SinkRecovery {
    SinkRecovery {
        last_checkpoint: epoch,
        precommit,
        pipeline: "pipe".into(),
        from_scratch: false,
        checkpoint_interval: None,
    }
}

/// Writes a record as the sink would (writer `pipe/out`, progress `epoch/seq`).
fn send_as_sink(prod: &BaseProducer, t: &str, p: i32, key: Option<&str>, value: &str, progress: &str) {
    let h = OwnedHeaders::new()
        .insert(Header {
            key: WRITER_HEADER,
            value: Some("pipe/out"),
        })
        .insert(Header {
            key: PROGRESS_HEADER,
            value: Some(progress),
        });
    let mut r = BaseRecord::to(t).partition(p).payload(value).headers(h);
    if let Some(k) = key {
        r = r.key(k);
    }
    prod.send(r).unwrap();
}

/// A commit interrupted after some records reached some partitions, with gaps (librdkafka
/// can leave them when messages time out): recovery reads each partition back from the
/// offset noted at prepare and publishes only what is missing. Records of an older
/// incarnation of the same writer and epoch (a pipeline started again from scratch), before
/// that offset, do not count. Every record ends up once, with the writer and progress
/// headers, keyed records in their murmur2 partition.
#[test]
fn recovery_publishes_only_what_an_interrupted_publish_did_not() {
    let t = topic("sink-resume", 3);
    let staging = tempfile::tempdir().unwrap();
    let config = || KafkaSinkConfig::new(brokers(), &t, staging.path());
    // epoch 1 committed normally
    let mut sink = KafkaSink::new("out", config()).unwrap();
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let e1: Vec<(Option<&str>, String)> = (0..30).map(|i| (None, format!("e1-{i:03}"))).collect();
    block_on(sink.write(1, &batch(&e1))).unwrap();
    let mut sealed = block_on(sink.seal(1)).unwrap();
    sealed.prepare().unwrap();
    sealed.commit().unwrap();
    // an older incarnation's epoch 2, already in the topic
    let prod = producer();
    for seq in 0..6 {
        send_as_sink(&prod, &t, seq % 3, None, &format!("old-{seq}"), &format!("2/{seq}"));
    }
    prod.flush(Duration::from_secs(30)).unwrap();
    // epoch 2 staged and prepared; its publish "dies" with a different part of each
    // partition out: nothing, a prefix, every other record, everything
    let keys = ["alpha", "beta", "gamma", "delta", "eps"];
    let e2: Vec<(Option<&str>, String)> = (0..60)
        .map(|i| (Some(keys[i % keys.len()]), format!("e2-{i:03}")))
        .collect();
    let pre = staged(&mut sink, 2, &e2);
    let parsed: KafkaPreCommit = serde_json::from_value(pre.clone()).unwrap();
    assert_eq!((parsed.epoch, parsed.records, parsed.partitions), (2, 60, 3));
    drop(sink);
    let mut per_partition = [0usize; 3];
    for (seq, (k, v)) in e2.iter().enumerate() {
        let p = choose_partition(Partitioner::Murmur2, k.map(str::as_bytes), seq as u64, 3) as usize;
        let nth = per_partition[p];
        per_partition[p] += 1;
        let out = match p {
            0 => false,
            1 => nth < 7 || nth % 2 == 0,
            _ => true,
        };
        if out {
            send_as_sink(&prod, &t, p as i32, *k, v, &format!("2/{seq}"));
        }
    }
    prod.flush(Duration::from_secs(30)).unwrap();
    // a restart restores checkpoint 2: recovery finishes its commit
    let mut again = KafkaSink::new("out", config()).unwrap();
    let report = block_on(again.recover(&recovery(Some(2), Some(pre.clone())))).unwrap();
    assert_eq!(report.committed, 1);
    // recovering once more (a crash right after) publishes nothing: the file is gone
    let report = block_on(again.recover(&recovery(Some(2), Some(pre)))).unwrap();
    assert_eq!(report.committed, 0);

    let got = read_all(&t, 3);
    let mut values: Vec<&str> = got.iter().map(|r| r.value.as_str()).collect();
    values.sort_unstable();
    let mut want: Vec<String> = e1.iter().chain(&e2).map(|(_, v)| v.clone()).collect();
    want.extend((0..6).map(|seq| format!("old-{seq}")));
    want.sort();
    assert_eq!(values, want, "every record once");
    let mut seqs: Vec<u64> = got
        .iter()
        .filter(|r| r.value.starts_with("e2-"))
        .map(|r| r.headers[PROGRESS_HEADER][2..].parse().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..60).collect::<Vec<u64>>(), "epoch 2's sequences, each once");
    for r in &got {
        assert_eq!(r.headers[WRITER_HEADER], "pipe/out");
        if let Some(k) = &r.key {
            let p = choose_partition(Partitioner::Murmur2, Some(k), 0, 3);
            assert_eq!(p, r.partition, "keyed records by murmur2");
        }
    }
}

/// Staged epochs after the restored checkpoint were never decided: recovery drops them and
/// nothing of theirs reaches the topic.
#[test]
fn undecided_epochs_are_discarded_and_never_published() {
    let t = topic("sink-undecided", 2);
    let staging = tempfile::tempdir().unwrap();
    let mut sink = KafkaSink::new("out", KafkaSinkConfig::new(brokers(), &t, staging.path())).unwrap();
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let recs: Vec<(Option<&str>, String)> = (0..10).map(|i| (None, format!("x{i}"))).collect();
    staged(&mut sink, 5, &recs);
    assert_eq!(block_on(sink.highest_epoch()).unwrap(), Some(5));
    drop(sink);
    let mut again = KafkaSink::new("out", KafkaSinkConfig::new(brokers(), &t, staging.path())).unwrap();
    let report = block_on(again.recover(&recovery(Some(4), None))).unwrap();
    assert_eq!((report.committed, report.aborted), (0, 1));
    assert!(read_all(&t, 2).is_empty());
    assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
}

/// Kafka → pipeline → Kafka, with checkpoints: the output topic holds every record once.
#[test]
fn kafka_to_kafka_writes_every_record_once() {
    let input = topic("e2e-in", 2);
    let output = topic("e2e-out", 2);
    produce(&input, &values("r", 200), |i| (i % 2) as i32);
    let state = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let s = Pipeline::builder("kafka-e2e")
        .source(KafkaSource::new(bounded(&input)).unwrap())
        .flow(Flow::<Record>::new().map(|r: Record| r.value.to_ascii_uppercase()))
        .sink_with(
            "out",
            KafkaSink::new("out", KafkaSinkConfig::new(brokers(), &output, staging.path())).unwrap(),
            RawEncoder,
        )
        .checkpoints(FileCheckpointStore::new(state.path()))
        .checkpoint_interval(Some(Duration::from_millis(50)))
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(s.records_out, 200);
    let mut got: Vec<String> = read_all(&output, 2).into_iter().map(|r| r.value).collect();
    got.sort();
    let want: Vec<String> = values("R", 200);
    assert_eq!(got, want);
}

/// A record over the broker's message size is `oversized` at the sink's stage when it is
/// encoded: dead-lettered alone, before its epoch is decided; the others are published.
#[test]
fn an_oversized_output_record_is_dead_lettered_alone() {
    let input = topic("big-in", 1);
    let output = topic("big-out", 1);
    let mut lines: Vec<String> = values("ok", 5);
    lines.insert(2, "x".repeat(20_000));
    produce(&input, &lines, |_| 0);
    let state = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let dead = MemorySink::new();
    let mut config = KafkaSinkConfig::new(brokers(), &output, staging.path());
    config.options.insert("message.max.bytes".into(), "10000".into());
    let s = Pipeline::builder("kafka-big")
        .source(KafkaSource::new(bounded(&input)).unwrap())
        .flow(Flow::<Record>::new().map(|r: Record| r.value.to_vec()))
        .sink_with("out", KafkaSink::new("out", config).unwrap(), RawEncoder)
        .dead_letters(dead.clone())
        .checkpoints(FileCheckpointStore::new(state.path()))
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((s.records_out, s.dead_letters), (5, 1));
    let got: Vec<String> = read_all(&output, 1).into_iter().map(|r| r.value).collect();
    assert_eq!(got, values("ok", 5));
    let envelope: serde_json::Value = serde_json::from_str(&dead.committed_lines()[0]).unwrap();
    assert_eq!(envelope["reason"], "oversized", "{envelope}");
    assert_eq!(envelope["stage"], "out", "{envelope}");
}

/// The same for a record a step sends to a Kafka side output: `oversized` at that sink's
/// stage when it is emitted; the whole record fails (its main output too).
#[test]
fn an_oversized_side_output_record_is_dead_lettered_alone() {
    let input = topic("bigside-in", 1);
    let (main_out, side_out) = (topic("bigside-main", 1), topic("bigside-side", 1));
    let mut lines: Vec<String> = values("ok", 4);
    lines.insert(1, "y".repeat(20_000));
    produce(&input, &lines, |_| 0);
    let state = tempfile::tempdir().unwrap();
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dead = MemorySink::new();
    let mut side = KafkaSinkConfig::new(brokers(), &side_out, s2.path());
    side.options.insert("message.max.bytes".into(), "10000".into());
    let s = Pipeline::builder("kafka-bigside")
        .source(KafkaSource::new(bounded(&input)).unwrap())
        .flow(Flow::<Record>::new().stateful(|r: Record, cx| {
            cx.emit_bytes("side", None, &r.value)?;
            Ok(r.value.to_vec())
        }))
        .sink_with(
            "main",
            KafkaSink::new("main", KafkaSinkConfig::new(brokers(), &main_out, s1.path())).unwrap(),
            RawEncoder,
        )
        .side_sink("side", KafkaSink::new("side", side).unwrap())
        .dead_letters(dead.clone())
        .checkpoints(FileCheckpointStore::new(state.path()))
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((s.records_out, s.dead_letters), (4, 1));
    let main_got: Vec<String> = read_all(&main_out, 1).into_iter().map(|r| r.value).collect();
    let side_got: Vec<String> = read_all(&side_out, 1).into_iter().map(|r| r.value).collect();
    assert_eq!(main_got, values("ok", 4));
    assert_eq!(side_got, values("ok", 4));
    let envelope: serde_json::Value = serde_json::from_str(&dead.committed_lines()[0]).unwrap();
    assert_eq!(
        (envelope["reason"].as_str(), envelope["stage"].as_str()),
        (Some("oversized"), Some("side"))
    );
}
