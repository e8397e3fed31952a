//! Dead letters to a Kafka topic: the original record with its envelope in headers, a local
//! fallback directory for what the topic cannot take, drained into the topic later.

use super::*;
use keel::Failure;
use keel::dead_letter::Replay;
use keel_connectors::file::dead_letters::DeadLetterDir;
use keel_connectors::kafka::DeadLetterTopic;

/// Every raw message of `topic` partition 0..n: key, value, headers in order.
type Raw = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn read_raw(topic: &str, n: i32) -> Vec<Raw> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "keel-test-raw")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut out = Vec::new();
    for p in 0..n {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                    m.headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                )),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => panic!("reading {topic}:{p}: {e}"),
                None if std::time::Instant::now() > deadline => panic!("reading {topic}:{p}: no end for 20 s"),
                None => {}
            }
        }
    }
    out
}

/// Runs `input` → (fails on `bad*`) → `output`, dead letters to `dlq` on `dlq_brokers`
/// with `fallback`.
fn run_with_dlq(
    input: &str,
    output: &str,
    (dlq_brokers, dlq): (&str, &str),
    state: &std::path::Path,
    fallback: &std::path::Path,
) -> keel::RunSummary {
    let staging = state.join("staging");
    let mut dead =
        KafkaSinkConfig::dead_letters(dlq_brokers, dlq, state.join("dlq-staging"), Some(fallback.to_owned()));
    dead.fallback_after = Duration::from_secs(3);
    Pipeline::builder("orders")
        .source(KafkaSource::new(bounded(input)).unwrap())
        .flow(Flow::<Record>::new().try_map(|r: Record| {
            if r.value.starts_with(b"bad") {
                Err(Failure::permanent("bad_order", "a bad order").with_stage("check"))
            } else {
                Ok(r.value.to_vec())
            }
        }))
        .sink_with(
            "out",
            KafkaSink::new("out", KafkaSinkConfig::new(brokers(), output, staging)).unwrap(),
            RawEncoder,
        )
        .dead_letters(KafkaSink::new("dead_letters", dead).unwrap())
        .checkpoints(FileCheckpointStore::new(state))
        .checkpoint_interval(Some(Duration::from_millis(50)))
        .build()
        .unwrap()
        .run()
        .unwrap()
}

/// `n` records on 2 partitions, every 5th bad.
fn orders(input: &str, n: usize) -> Vec<String> {
    let v: Vec<String> = (0..n)
        .map(|i| {
            if i % 5 == 0 {
                format!("bad{i:04}")
            } else {
                format!("ok{i:04}")
            }
        })
        .collect();
    produce(input, &v, |i| (i % 2) as i32);
    v
}

fn dlq_topic(name: &str) -> DeadLetterTopic {
    DeadLetterTopic {
        brokers: brokers(),
        topic: name.to_owned(),
        options: Default::default(),
        marks: std::env::temp_dir().join(format!("keel-marks-{name}.jsonl")),
        timeout: Duration::from_secs(30),
    }
}

/// A dead letter on the topic is the original record (key, value, headers first, byte for
/// byte) with the envelope in `keel.error.*` headers; `DeadLetterTopic` reads it back into
/// the envelope `keel dlq` shows, and records replays by identity.
#[test]
fn dead_letters_go_to_the_topic_as_the_original_record_with_the_envelope_in_headers() {
    let (input, output, dlq) = (topic("dlq-in", 2), topic("dlq-out", 1), topic("dlq-dead", 2));
    let sent = orders(&input, 100);
    let state = tempfile::tempdir().unwrap();
    let fallback = state.path().join("dead");
    let s = run_with_dlq(&input, &output, (&brokers(), &dlq), state.path(), &fallback);
    assert_eq!((s.records_out, s.dead_letters), (80, 20));
    let raw = read_raw(&dlq, 2);
    assert_eq!(raw.len(), 20, "each bad record once");
    let mut values: Vec<String> = raw.iter().map(|r| String::from_utf8(r.1.clone()).unwrap()).collect();
    values.sort();
    let mut want: Vec<String> = sent.iter().filter(|v| v.starts_with("bad")).cloned().collect();
    want.sort();
    assert_eq!(values, want);
    for (key, value, headers) in &raw {
        let i: usize = String::from_utf8_lossy(&value[3..]).parse().unwrap();
        assert_eq!(
            key.as_deref(),
            Some(format!("k{}", i % 7).as_bytes()),
            "the original key"
        );
        assert_eq!(
            headers[0],
            ("origin".into(), b"test".to_vec()),
            "the original header first"
        );
        let h = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        assert_eq!(h("keel.error.reason"), "bad_order");
        assert_eq!(h("keel.error.class"), "permanent");
        assert_eq!(h("keel.error.stage"), "check");
        assert_eq!(h("keel.error.topic"), input);
        assert_eq!(h("keel.error.partition"), (i % 2).to_string());
        assert_eq!(
            h("keel.error.offset"),
            (i / 2).to_string(),
            "offset within its partition"
        );
        assert_eq!(h("keel.error.pipeline"), "orders");
        assert_eq!(h("keel.error.attempts"), "1");
        assert_eq!(h("keel.writer"), "orders/dead_letters");
    }
    assert!(
        DeadLetterDir::new(&fallback).read().unwrap().is_empty(),
        "nothing parked"
    );

    let reader = dlq_topic(&dlq);
    let entries = reader.read().unwrap();
    assert_eq!(entries.len(), 20);
    let envs: Vec<_> = entries.iter().map(|e| e.envelope.as_ref().unwrap()).collect();
    assert!(
        envs.iter()
            .all(|e| e.reason == "bad_order" && e.partition.starts_with(&input))
    );
    assert!(
        envs.iter()
            .all(|e| e.headers.len() == 1 && e.headers[0].name == "origin")
    );
    let replay = Replay {
        at_ms: 1,
        id: "r1".into(),
        to: "pipeline".into(),
    };
    assert_eq!(reader.mark_replayed(envs.iter().take(3).copied(), &replay).unwrap(), 3);
    assert_eq!(
        reader.mark_replayed(envs.iter().take(3).copied(), &replay).unwrap(),
        0,
        "marked once"
    );
    let replayed = reader
        .read()
        .unwrap()
        .iter()
        .filter(|e| !e.envelope.as_ref().unwrap().replays.is_empty())
        .count();
    assert_eq!(replayed, 3);
    let _ = std::fs::remove_file(&reader.marks);
}

/// A dead-letter topic that cannot be written (its cluster is down here; a missing topic or
/// a refused authorization go the same way) does not stop the pipeline: each epoch's dead
/// letters are parked in the fallback directory (where `keel dlq` reads them), and once the
/// topic answers the next run publishes them into it, each once, and empties the directory.
#[test]
fn dead_letters_the_topic_cannot_take_wait_in_the_fallback_and_reach_the_topic_once_later() {
    let (input, output, dlq) = (topic("park-in", 2), topic("park-out", 1), topic("park-dead", 2));
    orders(&input, 100);
    let state = tempfile::tempdir().unwrap();
    let fallback = state.path().join("dead");
    // nothing listens on port 1: connection refused, the dead letters' commits give up after
    // `fallback_after`
    let s = run_with_dlq(&input, &output, ("127.0.0.1:1", &dlq), state.path(), &fallback);
    assert_eq!(
        (s.records_out, s.dead_letters),
        (80, 20),
        "the run went on without its topic"
    );
    assert_eq!(read_all(&output, 1).len(), 80);
    let parked = DeadLetterDir::new(&fallback).read().unwrap();
    assert_eq!(parked.len(), 20, "every dead letter parked");
    assert!(
        parked
            .iter()
            .all(|e| e.envelope.as_ref().is_ok_and(|e| e.reason == "bad_order"))
    );

    // a purge in between: that dead letter is not published
    let purged = DeadLetterDir::new(&fallback)
        .purge(&keel_connectors::file::dead_letters::Filter {
            partition: Some(format!("{input}:0")),
            since_ms: Some(0),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(purged, 10);

    // the next run drains the fallback at start (its input has nothing new)
    let s = run_with_dlq(&input, &output, (&brokers(), &dlq), state.path(), &fallback);
    assert_eq!((s.records_in, s.dead_letters), (0, 0));
    let raw = read_raw(&dlq, 2);
    assert_eq!(raw.len(), 10, "the parked ones, each once, the purged ones not");
    assert!(raw.iter().all(|r| r.1.starts_with(b"bad")));
    assert!(
        DeadLetterDir::new(&fallback).read().unwrap().is_empty(),
        "the fallback is empty"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&fallback)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kafka") || n.starts_with("dead"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // and again: nothing more
    run_with_dlq(&input, &output, (&brokers(), &dlq), state.path(), &fallback);
    assert_eq!(read_raw(&dlq, 2).len(), 10);
}

/// An epoch whose publish got part of its dead letters out before the topic failed is
/// parked whole; the drain reads back from the offsets noted at prepare and publishes only
/// those the topic does not hold (by identity), so each dead letter is there once.
#[test]
fn a_drain_after_a_partial_publish_publishes_only_the_rest() {
    let (input, output, dlq) = (
        topic("partial-in", 2),
        topic("partial-out", 1),
        topic("partial-dead", 2),
    );
    orders(&input, 100);
    let state = tempfile::tempdir().unwrap();
    let fallback = state.path().join("dead");
    run_with_dlq(&input, &output, ("127.0.0.1:1", &dlq), state.path(), &fallback);
    let parked = DeadLetterDir::new(&fallback).select(&Default::default()).unwrap();
    assert_eq!(parked.len(), 20);
    // as if the failed publish had got 7 of them out, and noted the topic's start at prepare
    let prod = producer();
    for (_, env) in parked.iter().take(7) {
        let m = keel_connectors::kafka::dead_letters::message_of(env);
        let mut h = OwnedHeaders::new();
        for (k, v) in &m.headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        h = h
            .insert(Header {
                key: WRITER_HEADER,
                value: Some("orders/dead_letters"),
            })
            .insert(Header {
                key: PROGRESS_HEADER,
                value: Some(&format!("{}/0", env.epoch)),
            });
        let mut r = BaseRecord::to(&dlq).partition(0).headers(h);
        if let Some(v) = &m.value {
            r = r.payload(v.as_slice());
        }
        if let Some(k) = &m.key {
            r = r.key(k.as_slice());
        }
        prod.send(r).unwrap();
    }
    prod.flush(Duration::from_secs(30)).unwrap();
    for e in std::fs::read_dir(&fallback).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".kafka-") && name.ends_with(".json") {
            let mut pre: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            pre["partitions"] = 2.into();
            pre["from"] = serde_json::json!([0, 0]);
            std::fs::write(&path, pre.to_string()).unwrap();
        }
    }
    run_with_dlq(&input, &output, (&brokers(), &dlq), state.path(), &fallback);
    let mut values: Vec<Vec<u8>> = read_raw(&dlq, 2).into_iter().map(|r| r.1).collect();
    assert_eq!(values.len(), 20, "7 already there + 13 drained, none twice");
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 20);
    assert!(DeadLetterDir::new(&fallback).read().unwrap().is_empty());
}
