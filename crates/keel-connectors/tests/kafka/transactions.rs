//! `transactional = true` (KIP-98) against the test broker: what it supports here is tested
//! here (each epoch committed in a transaction with its progress record, a killed producer
//! fenced, recovery deciding by the progress record); that aborted records stay hidden from
//! read_committed consumers needs a broker that hides them (`KEEL_KAFKA_TXN_BROKERS`).

use super::*;

fn txn_config(brokers: &str, topic: &str, staging: &std::path::Path) -> KafkaSinkConfig {
    let mut c = KafkaSinkConfig::new(brokers, topic, staging);
    c.transactional = true;
    // the tests run side by side: one transactional id each (a pipeline's is
    // `keel-<pipeline>-<sink>`, and two producers with one id fence each other)
    c.transactional_id = Some(format!("keel-test-{topic}"));
    c.publish_timeout = Duration::from_secs(10);
    c
}

/// The epoch the marker group says committed last (the offset on `<topic>:0`; below 1 when
/// none did).
fn committed_marker(brokers: &str, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    match got.find_partition(topic, 0).unwrap().offset() {
        Offset::Offset(o) => o,
        _ => -1,
    }
}

fn recs(prefix: &str, n: usize) -> Vec<(Option<&'static str>, String)> {
    (0..n).map(|i| (None, format!("{prefix}-{i:03}"))).collect()
}

/// Each epoch is one transaction whose last act is the progress record (the marker group's
/// offset = the epoch): after two epochs the topic holds both, once, and the marker says 2.
#[test]
fn each_epoch_commits_in_a_transaction_with_its_progress_record() {
    let t = topic("txn-commit", 2);
    let staging = tempfile::tempdir().unwrap();
    let mut sink = KafkaSink::new("out", txn_config(&brokers(), &t, staging.path())).unwrap();
    block_on(sink.recover(&recovery(None, None))).unwrap();
    for (epoch, prefix) in [(1, "a"), (2, "b")] {
        block_on(sink.write(epoch, &batch(&recs(prefix, 25)))).unwrap();
        let mut sealed = block_on(sink.seal(epoch)).unwrap();
        sealed.prepare().unwrap();
        sealed.commit().unwrap();
        assert_eq!(committed_marker(&brokers(), "keel-txn-pipe-out", &t), epoch as i64);
    }
    let mut got: Vec<String> = read_all(&t, 2).into_iter().map(|r| r.value).collect();
    got.sort();
    let mut want: Vec<String> = recs("a", 25).into_iter().chain(recs("b", 25)).map(|(_, v)| v).collect();
    want.sort();
    assert_eq!(got, want);
}

/// A restart decides by the progress record: an epoch whose transaction committed (the
/// crash came between the commit and the staging file's removal) is not published again;
/// one whose transaction never committed is published whole, in a new transaction.
#[test]
fn recovery_decides_by_the_progress_record() {
    let t = topic("txn-recover", 1);
    let staging = tempfile::tempdir().unwrap();
    let mut sink = KafkaSink::new("out", txn_config(&brokers(), &t, staging.path())).unwrap();
    block_on(sink.recover(&recovery(None, None))).unwrap();
    // epoch 1 is decided (prepared, in the manifest) but the run dies before its commit
    let pre1 = staged(&mut sink, 1, &recs("one", 10));
    let staged_file = std::fs::read_dir(staging.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let kept = std::fs::read(&staged_file).unwrap();
    drop(sink);
    let mut again = KafkaSink::new("out", txn_config(&brokers(), &t, staging.path())).unwrap();
    let r = block_on(again.recover(&recovery(Some(1), Some(pre1.clone())))).unwrap();
    assert_eq!(r.committed, 1, "epoch 1 never committed: published now");
    assert_eq!(committed_marker(&brokers(), "keel-txn-pipe-out", &t), 1);
    // now its transaction committed, and a crash before the staging file's removal leaves
    // the file: the next start must not publish it again
    std::fs::write(&staged_file, &kept).unwrap();
    let r = block_on(again.recover(&recovery(Some(1), Some(pre1)))).unwrap();
    assert_eq!(r.committed, 1, "the file was there");
    let got: Vec<String> = read_all(&t, 1).into_iter().map(|r| r.value).collect();
    assert_eq!(got.len(), 10, "epoch 1 once, not again: {got:?}");
}

/// A second producer with the same transactional id (the restarted pipeline) fences the
/// first (a run that was killed, or is stuck): the old one can no longer commit.
#[test]
fn a_restarted_sink_fences_the_old_producer() {
    let t = topic("txn-fence", 1);
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut old = KafkaSink::new("out", txn_config(&brokers(), &t, s1.path())).unwrap();
    block_on(old.recover(&recovery(None, None))).unwrap();
    block_on(old.write(1, &batch(&recs("zombie", 5)))).unwrap();
    let mut sealed = block_on(old.seal(1)).unwrap();
    sealed.prepare().unwrap();
    let mut new = KafkaSink::new("out", txn_config(&brokers(), &t, s2.path())).unwrap();
    block_on(new.recover(&recovery(None, None))).unwrap();
    let refused = sealed.commit();
    assert!(refused.is_err(), "the fenced producer committed");
    assert!(
        committed_marker(&brokers(), "keel-txn-pipe-out", &t) < 1,
        "no progress record"
    );
    // the new producer commits the epoch the old one could not
    block_on(new.write(1, &batch(&recs("live", 5)))).unwrap();
    let mut sealed = block_on(new.seal(1)).unwrap();
    sealed.prepare().unwrap();
    sealed.commit().unwrap();
    assert_eq!(committed_marker(&brokers(), "keel-txn-pipe-out", &t), 1);
}

/// With a broker that hides aborted records (Apache Kafka, Redpanda: name it in
/// `KEEL_KAFKA_TXN_BROKERS`), a read_committed consumer never sees an epoch whose
/// transaction a crash interrupted, and sees it once after recovery. The test broker here
/// shows aborted records, so without the variable this test has nothing to run against and
/// says so.
#[test]
fn aborted_epochs_stay_hidden_from_read_committed_consumers() {
    let Ok(b) = std::env::var("KEEL_KAFKA_TXN_BROKERS") else {
        eprintln!("skipped: KEEL_KAFKA_TXN_BROKERS names no broker that hides aborted records");
        return;
    };
    let t = format!("keel-txn-hidden-{}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    block_on(admin.create_topics(
        &[NewTopic::new(&t, 1, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut old = KafkaSink::new("out", txn_config(&b, &t, s1.path())).unwrap();
    block_on(old.recover(&recovery(None, None))).unwrap();
    let pre = staged(&mut old, 1, &recs("e1", 20));
    // the epoch's records go out in a transaction that a fencing restart then aborts
    let mut sealed = block_on(old.seal(1)).unwrap();
    sealed.prepare().unwrap();
    std::fs::copy(
        std::fs::read_dir(s1.path()).unwrap().next().unwrap().unwrap().path(),
        s2.path().join("epoch-00000000000000000001.stage"),
    )
    .unwrap();
    let mut new = KafkaSink::new("out", txn_config(&b, &t, s2.path())).unwrap();
    let r = block_on(new.recover(&recovery(Some(1), Some(pre)))).unwrap();
    assert_eq!(r.committed, 1);
    assert!(sealed.commit().is_err(), "fenced");
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", "keel-txn-hidden")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&t, 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    loop {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            other => panic!("{other:?}"),
        }
    }
    got.sort();
    let want: Vec<String> = recs("e1", 20).into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, want, "epoch 1 once; its aborted attempt hidden");
}
