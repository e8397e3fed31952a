//! The PostgreSQL sink against the machine's server (`KEEL_PG_URL`, default
//! postgres://postgres@127.0.0.1:5432/test; `.ci/services` starts it). Every test uses
//! tables of its own.

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use keel::checkpoint::recovery::SinkRecovery;
use keel::dead_letter::{Envelope, Provenance};
use keel::sink::{Framing, OutBatch, OutRecord, Sink, SinkError};
use keel::{Failure, Record};
use keel_connectors::postgres::{PostgresSink, PostgresSinkConfig, WriteMode};

fn url() -> String {
    std::env::var("KEEL_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs SQL statements with a client of the test's own.
fn sql(statements: &str) -> Vec<tokio_postgres::Row> {
    let statements = statements.to_owned();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
                .await
                .expect("postgres (is it up? .ci/services starts it)");
            tokio::spawn(conn);
            let mut rows = Vec::new();
            for s in statements.split(';').filter(|s| !s.trim().is_empty()) {
                rows = client.query(s, &[]).await.unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            rows
        })
}

fn table(test: &str, columns: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "keel_t_{test}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    sql(&format!("DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})"));
    name
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

fn staged(
    sink: &mut PostgresSink,
    epoch: u64,
    records: &[String],
) -> (Box<dyn keel::sink::SealedEpoch>, serde_json::Value) {
    let mut b = OutBatch::new(Framing::Messages);
    for v in records {
        b.push(None, v.as_bytes());
    }
    block_on(sink.write(epoch, &b)).unwrap();
    let mut sealed = block_on(sink.seal(epoch)).unwrap();
    let pre = sealed.prepare().unwrap();
    (sealed, pre)
}

fn orders(epoch: u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"id":{},"customer":"c{}","total":{}.5,"extra":true}}"#,
                epoch * 1000 + i as u64,
                i % 7,
                i
            )
        })
        .collect()
}

fn count(t: &str) -> i64 {
    sql(&format!("SELECT count(*) FROM {t}"))[0].get(0)
}

/// Rows of an epoch appear all at once at the commit, typed by the table (the `extra`
/// field no column takes is left out); a commit repeated after a crash (the staging file
/// still there) finds its token in the progress row and writes nothing.
#[test]
fn an_epoch_commits_in_one_transaction_and_a_repeated_commit_is_a_no_op() {
    let t = table(
        "commit",
        "id BIGINT NOT NULL, customer TEXT, total NUMERIC(10,2), added TIMESTAMPTZ DEFAULT now()",
    );
    let staging = tempfile::tempdir().unwrap();
    let config = PostgresSinkConfig::new(url(), &t, staging.path());
    let mut sink = PostgresSink::with_config("out", config.clone());
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let (mut sealed, _) = staged(&mut sink, 1, &orders(1, 50));
    assert_eq!(count(&t), 0, "nothing is visible before the commit");
    sealed.commit().unwrap();
    assert_eq!(count(&t), 50);
    let row = &sql(&format!(
        "SELECT customer, total::text, added IS NOT NULL FROM {t} WHERE id = 1003"
    ))[0];
    assert_eq!(row.get::<_, String>(0), "c3");
    assert_eq!(row.get::<_, String>(1), "3.50");
    assert!(row.get::<_, bool>(2), "a column no field takes keeps its default");

    let (mut sealed, pre) = staged(&mut sink, 2, &orders(2, 50));
    let file = staging.path().join(format!("epoch-{:020}.stage", 2));
    let copy = std::fs::read(&file).unwrap();
    sealed.commit().unwrap();
    std::fs::write(&file, copy).unwrap();
    let mut again = PostgresSink::with_config("out", config);
    let report = block_on(again.recover(&recovery(Some(2), Some(pre)))).unwrap();
    assert_eq!(report.committed, 1);
    assert_eq!(count(&t), 100, "the repeated commit wrote again");
}

/// Inserts go in by COPY (CSV), and a table with a column of another type (an array)
/// through `jsonb_populate_recordset`: both store the same values, quotes, commas, line
/// breaks, empty strings, NULLs, JSON documents, numbers given as text, times and booleans
/// among them.
#[test]
fn copy_and_statement_inserts_store_the_same_values() {
    let columns =
        "id BIGINT NOT NULL, name TEXT, doc JSONB, amount NUMERIC(12,3), at TIMESTAMPTZ, ok BOOLEAN, n INTEGER";
    let by_copy = table("copy", columns);
    let by_statement = table("statement", &format!("{columns}, tags TEXT[]"));
    let records: Vec<String> = [
        r#"{"id":1,"name":"say \"hi\", then\nbye","doc":{"a":[1,"x,\"y\""],"b":null},"amount":12.5,"at":"2026-11-30T10:00:00Z","ok":true,"n":"42"}"#,
        r#"{"id":2,"name":"","doc":"just text","amount":"7.25","ok":"f","n":-3}"#,
        r#"{"id":3,"name":null,"doc":[],"amount":0,"at":"2026-12-01 01:02:03+00","ok":false}"#,
        r#"{"id":4,"name":"tab\tand \\ backslash and ünïcödé","doc":{"deep":{"er":1.5e3}},"n":2147483647}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for t in [&by_copy, &by_statement] {
        let staging = tempfile::tempdir().unwrap();
        let mut config = PostgresSinkConfig::new(url(), t, staging.path());
        config.columns = ["id", "name", "doc", "amount", "at", "ok", "n"]
            .iter()
            .map(|c| (c.to_string(), c.to_string()))
            .collect();
        let mut sink = PostgresSink::with_config("out", config);
        block_on(sink.recover(&recovery(None, None))).unwrap();
        let (mut sealed, _) = staged(&mut sink, 1, &records);
        sealed.commit().unwrap();
    }
    let read = |t: &str| -> Vec<String> {
        sql(&format!(
            "SELECT concat_ws('|', id, coalesce(name, '<null>'), doc::text, amount::text, at AT TIME ZONE 'UTC', ok, n) FROM {t} ORDER BY id"
        ))
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let copied = read(&by_copy);
    assert_eq!(copied.len(), 4);
    assert_eq!(copied, read(&by_statement));
    assert_eq!(
        copied[0],
        "1|say \"hi\", then\nbye|{\"a\": [1, \"x,\\\"y\\\"\"], \"b\": null}|12.500|2026-11-30 10:00:00|t|42"
    );
    assert_eq!(copied[1], "2||\"just text\"|7.250|f|-3", "an empty string is not NULL");
    assert!(
        copied[2].starts_with("3|<null>|[]|0.000|2026-12-01 01:02:03|f"),
        "{}",
        copied[2]
    );
    assert_eq!(
        copied[3],
        "4|tab\tand \\ backslash and ünïcödé|{\"deep\": {\"er\": 1500.0}}|2147483647"
    );
}

/// Upserts: the last row of a key wins, within an epoch and across epochs.
#[test]
fn upserts_keep_the_last_row_of_each_key() {
    let t = table("upsert", "customer TEXT PRIMARY KEY, total NUMERIC, n INTEGER");
    let staging = tempfile::tempdir().unwrap();
    let mut config = PostgresSinkConfig::new(url(), &t, staging.path());
    config.mode = WriteMode::Upsert {
        key: vec!["customer".into()],
    };
    config.columns = vec![
        ("customer".into(), "customer".into()),
        ("total".into(), "total".into()),
        ("n".into(), "id".into()),
    ];
    let mut sink = PostgresSink::with_config("out", config);
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let (mut sealed, _) = staged(&mut sink, 1, &orders(1, 20));
    sealed.commit().unwrap();
    let (mut sealed, _) = staged(&mut sink, 2, &orders(2, 10));
    sealed.commit().unwrap();
    assert_eq!(count(&t), 7);
    let rows = sql(&format!("SELECT n FROM {t} ORDER BY customer"));
    let n: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    // c0..c2: last seen in epoch 2 (ids 2007..2009); c3..c6 in epoch 2 too (2003..2006)
    assert_eq!(n, vec![2007, 2008, 2009, 2003, 2004, 2005, 2006]);
}

fn start_error(t: &str, f: impl FnOnce(&mut PostgresSinkConfig)) -> Failure {
    let staging = tempfile::tempdir().unwrap();
    let mut config = PostgresSinkConfig::new(url(), t, staging.path());
    f(&mut config);
    let mut sink = PostgresSink::with_config("out", config);
    match block_on(sink.recover(&recovery(None, None))) {
        Err(SinkError::Rejected(f)) => f,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// What cannot work is refused at start, before any record: a missing table, a column
/// that does not exist, a NOT NULL column no field fills, an upsert key without a unique
/// index.
#[test]
fn a_mapping_the_table_cannot_take_is_refused_at_start() {
    let missing = start_error(&format!("keel_t_missing_{}", std::process::id()), |_| {});
    assert_eq!(missing.reason, "unknown_table");
    let t = table("refuse", "id BIGINT NOT NULL, customer TEXT");
    let e = start_error(&t, |c| c.columns = vec![("nope".into(), "id".into())]);
    assert!(e.message.contains("no column `nope`"), "{}", e.message);
    let e = start_error(&t, |c| c.columns = vec![("customer".into(), "customer".into())]);
    assert!(e.message.contains("`id` is NOT NULL"), "{}", e.message);
    let e = start_error(&t, |c| c.mode = WriteMode::Upsert { key: vec!["id".into()] });
    assert!(e.message.contains("unique index"), "{}", e.message);
}

/// Each record is checked against the column types before it joins an epoch: a value a
/// column cannot take fails that record alone, naming the field.
#[test]
fn records_the_columns_cannot_take_fail_alone_before_the_epoch() {
    let t = table(
        "check",
        "id BIGINT NOT NULL, customer TEXT, total NUMERIC, at TIMESTAMPTZ",
    );
    let staging = tempfile::tempdir().unwrap();
    let mut sink = PostgresSink::with_config("out", PostgresSinkConfig::new(url(), &t, staging.path()));
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let check = sink.record_check().expect("a record check");
    let rec = |v: &str| {
        check(OutRecord {
            key: None,
            value: v.as_bytes(),
        })
    };
    assert!(rec(r#"{"id":1,"customer":"a","total":2.5,"at":"2026-11-30T10:00:00Z"}"#).is_ok());
    let e = rec(r#"{"id":"x","customer":"a"}"#).unwrap_err();
    assert_eq!((e.reason.as_ref(), e.field.as_deref()), ("bad_type", Some("id")));
    let e = rec(r#"{"customer":"a"}"#).unwrap_err();
    assert_eq!(e.reason, "missing_field");
    let e = rec(r#"{"id":1,"total":"lots"}"#).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("total"));
    assert_eq!(rec("not json").unwrap_err().reason, "malformed");
}

/// Dead letters go to a table created for them, one row per dead letter keyed by its
/// identity, with the original text and the whole envelope.
#[test]
fn dead_letters_are_rows_of_a_table_of_their_own() {
    let t = format!("keel_t_dead_{}", std::process::id());
    sql(&format!("DROP TABLE IF EXISTS {t}"));
    let staging = tempfile::tempdir().unwrap();
    let mut sink = PostgresSink::dead_letters(PostgresSinkConfig::new(url(), &t, staging.path()));
    block_on(sink.recover(&recovery(None, None))).unwrap();
    let record = Record::from_value(Bytes::from_static(b"{\"id\":9,\"amount\":-1}"));
    let position = serde_json::json!(77);
    let env = Envelope::new(
        &record,
        &Failure::permanent("negative_amount", "amount below 0").with_field("amount"),
        Provenance {
            pipeline: "pipe",
            partition: "in.jsonl",
            position: &position,
            epoch: 3,
            attempts: 1,
            first_failed_ms: 5,
            last_failed_ms: 6,
        },
    );
    let mut line = Vec::new();
    env.encode(&mut line);
    let (mut sealed, _) = staged(&mut sink, 3, &[String::from_utf8(line).unwrap()]);
    sealed.commit().unwrap();
    let rows = sql(&format!(
        "SELECT identity, reason, field, raw, envelope->>'stage' FROM {t}"
    ));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), env.identity());
    assert_eq!(rows[0].get::<_, String>(1), "negative_amount");
    assert_eq!(rows[0].get::<_, Option<String>>(2).as_deref(), Some("amount"));
    assert_eq!(
        rows[0].get::<_, Option<String>>(3).as_deref(),
        Some("{\"id\":9,\"amount\":-1}")
    );
    assert_eq!(rows[0].get::<_, String>(4), env.stage);
}
