//! The Redis Streams source and sink against the machine's Redis (`KEEL_REDIS_URL`, default
//! redis://127.0.0.1:6379; `.ci/services` starts it). Every test uses keys of its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use keel::checkpoint::recovery::SinkRecovery;
use keel::dead_letter::{Envelope, Provenance};
use keel::sink::{Framing, OutBatch, Sink, SinkError};
use keel::{Failure, PartitionReader, ReadStatus, Record, Source, SourceBatch};
use keel_connectors::redis_stream::{
    RedisStreamSink, RedisStreamSinkConfig, RedisStreamSource, RedisStreamSourceConfig,
};
use redis::Commands;

fn url() -> String {
    std::env::var("KEEL_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn con() -> redis::Connection {
    redis::Client::open(url())
        .unwrap()
        .get_connection()
        .expect("redis (is it up? .ci/services starts it)")
}

fn key(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "keel-test:{test}:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
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

fn values(epoch: u64, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"epoch\":{epoch},\"i\":{i}}}")).collect()
}

fn staged(
    sink: &mut RedisStreamSink,
    epoch: u64,
    records: &[String],
) -> (Box<dyn keel::sink::SealedEpoch>, serde_json::Value) {
    let mut b = OutBatch::new(Framing::Messages);
    for (i, v) in records.iter().enumerate() {
        b.push((i % 2 == 0).then_some(b"k".as_slice()), v.as_bytes());
    }
    block_on(sink.write(epoch, &b)).unwrap();
    let mut sealed = block_on(sink.seal(epoch)).unwrap();
    let pre = sealed.prepare().unwrap();
    (sealed, pre)
}

/// The `value` field of every entry of `stream`.
fn stream_values(stream: &str) -> Vec<String> {
    let entries: redis::streams::StreamRangeReply = con().xrange_all(stream).unwrap();
    entries
        .ids
        .iter()
        .map(|e| match e.map.get("value") {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("no value field: {other:?}"),
        })
        .collect()
}

fn config(stream: &str, staging: &std::path::Path) -> RedisStreamSinkConfig {
    let mut c = RedisStreamSinkConfig::new(url(), stream, staging);
    c.chunk = Some(10);
    c
}

/// An epoch is invisible until its commit, then there once; a commit repeated after a crash
/// (the staging file still there) adds nothing: the progress key says it is done.
#[test]
fn an_epoch_is_visible_only_after_its_commit_and_once_after_a_repeated_commit() {
    let s = key("commit");
    let staging = tempfile::tempdir().unwrap();
    let mut sink = RedisStreamSink::with_config("out", config(&s, staging.path()));
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let (mut sealed, _) = staged(&mut sink, 1, &values(1, 35));
    assert!(stream_values(&s).is_empty());
    sealed.commit().unwrap();
    assert_eq!(stream_values(&s), values(1, 35));

    let (mut sealed, pre) = staged(&mut sink, 2, &values(2, 35));
    let file = staging.path().join(format!("epoch-{:020}.stage", 2));
    let copy = std::fs::read(&file).unwrap();
    sealed.commit().unwrap();
    std::fs::write(&file, copy).unwrap();
    let mut again = RedisStreamSink::with_config("out", config(&s, staging.path()));
    let report = block_on(again.recover(&recovery(Some(2), Some(pre)))).unwrap();
    assert_eq!(report.committed, 1);
    assert_eq!(stream_values(&s).len(), 70, "the repeated commit appended again");
}

/// A commit interrupted after its first chunk (10 of 35 entries and the progress key,
/// written together): recovery appends the other 25 once.
#[test]
fn recovery_appends_only_the_chunks_an_interrupted_commit_did_not() {
    let s = key("resume");
    let staging = tempfile::tempdir().unwrap();
    let mut sink = RedisStreamSink::with_config("out", config(&s, staging.path()));
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let records = values(5, 35);
    let (_sealed, pre) = staged(&mut sink, 5, &records);
    let token = pre["mark"]["token"].as_str().unwrap().to_owned();
    let mut c = con();
    for v in &records[..10] {
        let _: String = c.xadd(&s, "*", &[("value", v.as_str())]).unwrap();
    }
    let _: () = c
        .set(format!("keel:progress:{{{s}}}:pipe/out"), format!("{token}:10"))
        .unwrap();
    drop(sink);
    let mut again = RedisStreamSink::with_config("out", config(&s, staging.path()));
    block_on(again.recover(&recovery(Some(5), Some(pre)))).unwrap();
    assert_eq!(stream_values(&s), records);
}

/// A later incarnation of the same epoch number (a pipeline started again from scratch)
/// has a token of its own: the progress key left by the first does not hide its records.
#[test]
fn a_new_incarnation_of_an_epoch_number_is_appended() {
    let s = key("again");
    let staging = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let mut sink = RedisStreamSink::with_config("out", config(&s, staging.path()));
        block_on(sink.recover(&recovery(None, None))).unwrap();
        let (mut sealed, _) = staged(&mut sink, 1, &values(1, 12));
        sealed.commit().unwrap();
        assert_eq!(stream_values(&s).len(), 12 * (round + 1));
    }
}

/// A key that holds something else than a stream fails the start, fatally.
#[test]
fn a_key_of_another_type_fails_at_start() {
    let s = key("wrong");
    let _: () = con().set(&s, "a string").unwrap();
    let staging = tempfile::tempdir().unwrap();
    let mut sink = RedisStreamSink::with_config("out", config(&s, staging.path()));
    match block_on(sink.recover(&recovery(None, None))) {
        Err(SinkError::Rejected(f)) => {
            assert_eq!(f.reason, "wrong_type");
            assert_eq!(f.class, keel::Class::Fatal);
        }
        other => panic!("expected a fatal failure, got {other:?}"),
    }
}

/// A dead letter is an entry of the original bytes (`value`) and its envelope's fields.
#[test]
fn dead_letters_are_entries_of_the_original_bytes_and_the_envelope() {
    let s = key("dead");
    let staging = tempfile::tempdir().unwrap();
    let mut sink = RedisStreamSink::dead_letters(config(&s, staging.path()));
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let record = Record::from_value(Bytes::from_static(b"not json"));
    let position = serde_json::json!("1-0");
    let env = Envelope::new(
        &record,
        &Failure::permanent("bad_json", "expected value at line 1"),
        Provenance {
            pipeline: "pipe",
            partition: "orders",
            position: &position,
            epoch: 3,
            attempts: 1,
            first_failed_ms: 1,
            last_failed_ms: 1,
        },
    );
    let mut line = Vec::new();
    env.encode(&mut line);
    let mut b = OutBatch::new(Framing::Messages);
    b.push(None, &line);
    block_on(sink.write(3, &b)).unwrap();
    let mut sealed = block_on(sink.seal(3)).unwrap();
    sealed.prepare().unwrap();
    sealed.commit().unwrap();
    let entries: redis::streams::StreamRangeReply = con().xrange_all(&s).unwrap();
    assert_eq!(entries.ids.len(), 1);
    let get = |f: &str| match entries.ids[0].map.get(f) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("{f}: {other:?}"),
    };
    assert_eq!(get("value"), "not json");
    assert_eq!(get("keel.error.reason"), "bad_json");
    assert_eq!(get("keel.error.source.partition"), "orders");
    assert_eq!(get("keel.error.identity"), env.identity());
}

fn read(config: RedisStreamSourceConfig, stream: &str, from: Option<String>) -> Vec<(String, Option<String>, String)> {
    block_on(async {
        let mut src = RedisStreamSource::new(config).unwrap();
        src.discover().await.unwrap();
        let mut reader = src.open(stream, from).await.unwrap();
        let mut out = Vec::new();
        loop {
            let mut b = SourceBatch::default();
            match reader.next_batch(&mut b, 64).await.unwrap() {
                ReadStatus::End => break,
                ReadStatus::Idle => {}
                ReadStatus::Records => out.extend(b.records.iter().zip(&b.positions).map(|(r, p)| {
                    (
                        String::from_utf8_lossy(&r.value).into_owned(),
                        r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                        p.clone(),
                    )
                })),
            }
        }
        out
    })
}

/// The source reads entries in order with their ids as positions, resumes after an id,
/// reads an entry without a `value` field as a JSON object of its fields, and moves a
/// consumer group's last delivered id to each acknowledged position.
#[test]
fn the_source_reads_by_entry_id_resumes_after_a_position_and_follows_with_a_group() {
    let s = key("source");
    let mut c = con();
    let mut ids = Vec::new();
    for i in 0..150 {
        let id: String = c
            .xadd(&s, "*", &[("value", format!("v{i}")), ("key", format!("k{}", i % 3))])
            .unwrap();
        ids.push(id);
    }
    let id: String = c.xadd(&s, "*", &[("customer", "c1"), ("amount", "5")]).unwrap();
    ids.push(id);
    let mut config = RedisStreamSourceConfig::new(url(), vec![s.clone()]);
    config.bounded = true;
    let all = read(config.clone(), &s, None);
    assert_eq!(all.len(), 151);
    assert_eq!(all[0], ("v0".into(), Some("k0".into()), ids[0].clone()));
    assert_eq!(all[150].0, r#"{"amount":"5","customer":"c1"}"#);
    assert_eq!(all.iter().map(|r| r.2.clone()).collect::<Vec<_>>(), ids);

    let rest = read(config.clone(), &s, Some(ids[99].clone()));
    assert_eq!(rest.len(), 51);
    assert_eq!(rest[0].0, "v100");

    config.group = Some("keel-monitor".into());
    block_on(async {
        let mut src = RedisStreamSource::new(config).unwrap();
        src.discover().await.unwrap();
        src.acknowledge(1, &[(s.clone(), ids[119].clone())]).await.unwrap();
    });
    let info: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg(&s).query(&mut c).unwrap();
    let text = format!("{info:?}");
    assert!(text.contains(&ids[119]), "group not at {}: {text}", ids[119]);
    let _ = Duration::ZERO;
}
