//! The Delta Lake sink on a local path and on the S3-compatible test server (s3s-fs,
//! `.ci/services`), read back by an independent reader: the `deltalake` Python package
//! (`KEEL_PYTHON`, default the tools venv `.ci/services` makes, /opt/keel-kafka/bin/python).

use std::collections::HashMap;
use std::process::Command;

use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::{Framing, OutBatch, OutRecord, Sink};
use keel_connectors::delta::{ColumnType, DeltaSink, DeltaSinkConfig};

fn python() -> String {
    std::env::var("KEEL_PYTHON").unwrap_or_else(|_| "/opt/keel-kafka/bin/python".into())
}

/// What the `deltalake` Python package reads: the version, the rows (sorted by id) and the
/// app's transaction version.
fn read(table: &str, options: &HashMap<String, String>, app_id: &str) -> serde_json::Value {
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
uri, options, app = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
dt = DeltaTable(uri, storage_options=options or None)
rows = sorted(dt.to_pyarrow_table().to_pylist(), key=lambda r: r.get("id") or 0)
sys.stdout.write(json.dumps({"version": dt.version(), "rows": rows, "txn": dt.transaction_version(app)}))
sys.stdout.flush()
# skip the interpreter's teardown, where pyarrow 26 with deltalake 1.6 aborts about one exit
# in three ("terminate called without an active exception") after the reading is done
os._exit(0)
"#;
    let out = Command::new(python())
        .args(["-c", script, table, &serde_json::to_string(options).unwrap(), app_id])
        .output()
        .expect("python with deltalake (.ci/services installs it)");
    assert!(out.status.success(), "reader: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
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

fn staged(sink: &mut DeltaSink, epoch: u64, n: usize) -> (Box<dyn keel::sink::SealedEpoch>, serde_json::Value) {
    let mut b = OutBatch::new(Framing::Messages);
    for i in 0..n {
        let id = epoch * 1000 + i as u64;
        b.push(
            None,
            format!(r#"{{"id":{id},"customer":"c{}","amount":{}.25,"extra":[1]}}"#, i % 5, i).as_bytes(),
        );
    }
    block_on(sink.write(epoch, &b)).unwrap();
    let mut sealed = block_on(sink.seal(epoch)).unwrap();
    let pre = sealed.prepare().unwrap();
    (sealed, pre)
}

/// The table is created from the first epoch's records; each epoch is one Delta commit
/// with its `txn` version; a commit repeated after a crash is recognised and skipped; the
/// next start numbers epochs above the table's version.
fn epochs_commit_once(table: &str, options: HashMap<String, String>) {
    let staging = tempfile::tempdir().unwrap();
    let mut config = DeltaSinkConfig::new(table, "keel/pipe/out", staging.path());
    config.storage_options = options.clone();
    let mut sink = DeltaSink::with_config("out", config.clone());
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let (mut sealed, _) = staged(&mut sink, 1, 20);
    sealed.commit().unwrap();
    let first = read(table, &options, "keel/pipe/out");
    assert_eq!(first["rows"].as_array().unwrap().len(), 20);
    assert_eq!(first["txn"], 1);
    assert_eq!(first["rows"][3]["customer"], "c3");
    assert_eq!(first["rows"][3]["amount"], 3.25);
    assert!(first["rows"][3].get("extra").is_none(), "a nested field is no column");

    let (mut sealed, pre) = staged(&mut sink, 2, 30);
    let file = staging.path().join(format!("epoch-{:020}.stage", 2));
    let copy = std::fs::read(&file).unwrap();
    sealed.commit().unwrap();
    std::fs::write(&file, copy).unwrap();
    let mut again = DeltaSink::with_config("out", config);
    assert_eq!(block_on(again.highest_epoch()).unwrap(), Some(2));
    let report = block_on(again.recover(&recovery(Some(2), Some(pre)))).unwrap();
    assert_eq!(report.committed, 1);
    let after = read(table, &options, "keel/pipe/out");
    assert_eq!(
        after["rows"].as_array().unwrap().len(),
        50,
        "the repeated commit wrote again"
    );
    assert_eq!(after["txn"], 2);
    assert_eq!(
        after["version"],
        first["version"].as_i64().unwrap() + 1,
        "one commit per epoch"
    );
}

#[test]
fn epochs_commit_once_on_a_local_path() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("orders");
    epochs_commit_once(table.to_str().unwrap(), HashMap::new());
}

#[test]
fn epochs_commit_once_on_s3() {
    let options: HashMap<String, String> = [
        ("aws_endpoint_url", "http://127.0.0.1:9000"),
        ("aws_access_key_id", "K"),
        ("aws_secret_access_key", "S"),
        ("aws_region", "us-east-1"),
        ("aws_allow_http", "true"),
        ("aws_conditional_put", "etag"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let table = format!("s3://keel-test/delta-{}", std::process::id());
    epochs_commit_once(&table, options);
}

/// With configured columns the table is created at start, and each record is checked
/// against them: a value of another type fails alone, naming its field.
#[test]
fn records_of_another_type_fail_alone_before_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let staging = tempfile::tempdir().unwrap();
    let mut config = DeltaSinkConfig::new(dir.path().join("t").to_str().unwrap(), "keel/pipe/out", staging.path());
    config.columns = vec![("id".into(), ColumnType::Long), ("customer".into(), ColumnType::String)];
    let mut sink = DeltaSink::with_config("out", config);
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let check = sink.record_check().expect("a record check");
    assert!(
        check(OutRecord {
            key: None,
            value: br#"{"id":1,"customer":"a"}"#
        })
        .is_ok()
    );
    let e = check(OutRecord {
        key: None,
        value: br#"{"id":"one"}"#,
    })
    .unwrap_err();
    assert_eq!((e.reason.as_ref(), e.field.as_deref()), ("bad_type", Some("id")));
}
