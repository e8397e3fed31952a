//! The object storage sink against the S3-compatible test server (s3s-fs on
//! 127.0.0.1:9000, bucket `keel-test`; `.ci/services` starts it). Every test writes under
//! a prefix of its own.

use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::TryStreamExt;
use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{Framing, OutBatch, Sink, SinkError};
use keel_connectors::s3::{S3Sink, S3SinkConfig};
use keel_connectors::txn::S3Location;
use object_store::ObjectStoreExt;

fn location(test: &str) -> S3Location {
    static N: AtomicU32 = AtomicU32::new(0);
    S3Location {
        bucket: "keel-test".into(),
        prefix: format!(
            "sink-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ),
        endpoint: Some(std::env::var("KEEL_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into())),
        region: None,
        access_key: Some("K".into()),
        secret_key: Some("S".into()),
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every object under the location's prefix: name and content, sorted by name.
fn objects(loc: &S3Location) -> Vec<(String, String)> {
    let store = loc.store().unwrap();
    let prefix = object_store::path::Path::from(loc.prefix.as_str());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let metas: Vec<_> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .expect("s3 (is s3s-fs up? .ci/services starts it)");
            let mut out = Vec::new();
            for m in metas {
                let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                out.push((
                    m.location.filename().unwrap().to_owned(),
                    String::from_utf8(bytes.to_vec()).unwrap(),
                ));
            }
            out.sort();
            out
        })
}

fn recovery(epoch: Option<u64>, precommit: Option<serde_json::Value>, from_scratch: bool) -> SinkRecovery {
    SinkRecovery {
        last_checkpoint: epoch,
        precommit,
        pipeline: "pipe".into(),
        from_scratch,
        checkpoint_interval: None,
    }
}

fn staged(sink: &mut S3Sink, epoch: u64, n: usize) -> (Box<dyn keel::sink::SealedEpoch>, serde_json::Value) {
    let mut b = OutBatch::new(Framing::Messages);
    for i in 0..n {
        b.push(None, format!("{{\"epoch\":{epoch},\"i\":{i}}}").as_bytes());
    }
    block_on(sink.write(epoch, &b)).unwrap();
    let mut sealed = block_on(sink.seal(epoch)).unwrap();
    let pre = sealed.prepare().unwrap();
    (sealed, pre)
}

/// Nothing is listed before the commit; after it the epoch's objects, whole. A commit
/// repeated after a crash writes the same objects again, never more.
#[test]
fn objects_appear_at_the_commit_and_a_repeated_commit_writes_the_same_ones() {
    let loc = location("commit");
    let staging = tempfile::tempdir().unwrap();
    let config = S3SinkConfig::new(loc.clone(), staging.path());
    let mut sink = S3Sink::with_config("out", config.clone());
    block_on(sink.recover(&recovery(None, None, false))).unwrap();
    let (mut sealed, pre) = staged(&mut sink, 1, 30);
    assert!(objects(&loc).is_empty(), "nothing is visible before the commit");
    let file = staging.path().join(format!("epoch-{:020}.stage", 1));
    let copy = std::fs::read(&file).unwrap();
    sealed.commit().unwrap();
    let after = objects(&loc);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].0, "part-00000000000000000001-0000.jsonl");
    assert_eq!(after[0].1.lines().count(), 30);

    std::fs::write(&file, copy).unwrap();
    let mut again = S3Sink::with_config("out", config);
    let report = block_on(again.recover(&recovery(Some(1), Some(pre), false))).unwrap();
    assert_eq!(report.committed, 1);
    assert_eq!(objects(&loc), after);
}

/// Size rotation: a new object after `max_file_bytes`, each starting with the header.
#[test]
fn large_epochs_rotate_into_objects_that_each_start_with_the_header() {
    let loc = location("rotate");
    let staging = tempfile::tempdir().unwrap();
    let mut config = S3SinkConfig::new(loc.clone(), staging.path());
    config.max_file_bytes = 200;
    config.extension = "csv".into();
    config.header = Some("epoch,i".into());
    let mut sink = S3Sink::with_config("out", config);
    block_on(sink.recover(&recovery(None, None, false))).unwrap();
    let (mut sealed, _) = staged(&mut sink, 4, 40);
    sealed.commit().unwrap();
    let all = objects(&loc);
    assert!(all.len() > 2, "{} objects", all.len());
    let mut rows = 0;
    for (name, body) in &all {
        assert!(
            name.starts_with("part-00000000000000000004-") && name.ends_with(".csv"),
            "{name}"
        );
        assert_eq!(body.lines().next(), Some("epoch,i"));
        rows += body.lines().count() - 1;
    }
    assert_eq!(rows, 40);
}

/// Objects of epochs after the restored checkpoint (its successor's manifest was lost)
/// are deleted at start; objects no checkpoint accounts for are refused, and deleted only
/// for a run from scratch.
#[test]
fn output_no_checkpoint_accounts_for_is_rolled_back_or_refused() {
    let loc = location("rollback");
    let staging = tempfile::tempdir().unwrap();
    let config = S3SinkConfig::new(loc.clone(), staging.path());
    let mut sink = S3Sink::with_config("out", config.clone());
    block_on(sink.recover(&recovery(None, None, false))).unwrap();
    for e in 1..=3 {
        let (mut sealed, _) = staged(&mut sink, e, 5);
        sealed.commit().unwrap();
    }
    assert_eq!(objects(&loc).len(), 3);

    let mut restored_2 = S3Sink::with_config("out", config.clone());
    let report = block_on(restored_2.recover(&recovery(Some(2), None, false))).unwrap();
    assert_eq!(report.rolled_back, 1);
    assert_eq!(objects(&loc).len(), 2);

    let mut no_checkpoint = S3Sink::with_config("out", config.clone());
    match block_on(no_checkpoint.recover(&recovery(None, None, false))) {
        Err(SinkError::Rejected(f)) => assert_eq!(f.reason, "unaccounted_output"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(objects(&loc).len(), 2, "refused output is kept");

    let mut scratch = S3Sink::with_config("out", config);
    let report = block_on(scratch.recover(&recovery(None, None, true))).unwrap();
    assert_eq!(report.rolled_back, 2);
    assert!(objects(&loc).is_empty());
}
