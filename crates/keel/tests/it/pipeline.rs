//! Pipelines end to end on in-memory sources and sinks with a file checkpoint store.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keel::testing::{MemorySink, VecSource};
use keel::{
    Class, Context, Failure, FileCheckpointStore, Flow, LatePolicy, Outcome, PartitionReader, Pipeline, PipelineError,
    ReadStatus, Record, Source, SourceBatch, SourceError, StateSpec, WatermarkConfig,
};
use serde::{Deserialize, Serialize};

/// A source that reads a `VecSource` one record per batch and waits between batches, so
/// tests can stop a pipeline in the middle.
#[derive(Clone)]
struct Slow(VecSource, Duration);

/// Like [`Slow`], but each partition holds back (reads `Idle`) after this many records: a run
/// stopped while it holds is stopped in the middle of its input however slow the machine.
#[derive(Clone)]
struct Holding(Slow, u64);

struct SlowReader(<VecSource as Source>::Reader, Duration, u64);

/// Stops `p` from another thread once its checkpoint directory holds `n` checkpoints: a
/// readiness signal instead of a sleep.
fn stop_after_checkpoints(stop: keel::ShutdownHandle, dir: &std::path::Path, n: usize) {
    let store = FileCheckpointStore::new(dir);
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while keel::CheckpointStore::list(&store).map_or(0, |l| l.len()) < n {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no {n} checkpoints in a minute"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.trigger();
    });
}

impl Source for Holding {
    type Position = u64;
    type Reader = SlowReader;
    fn describe(&self) -> String {
        "holding".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        self.0.discover().await
    }
    async fn open(&mut self, p: &str, from: Option<u64>) -> Result<SlowReader, SourceError> {
        let inner = self.0.open(p, from).await?;
        Ok(SlowReader(inner.0, inner.1, self.1))
    }
}

impl Source for Slow {
    type Position = u64;
    type Reader = SlowReader;
    fn describe(&self) -> String {
        "slow".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        self.0.discover().await
    }
    async fn open(&mut self, p: &str, from: Option<u64>) -> Result<SlowReader, SourceError> {
        Ok(SlowReader(self.0.open(p, from).await?, self.1, u64::MAX))
    }
}

impl PartitionReader for SlowReader {
    type Position = u64;
    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, _max: usize) -> Result<ReadStatus, SourceError> {
        tokio::time::sleep(self.1).await;
        if self.2 == 0 {
            return Ok(ReadStatus::Idle);
        }
        self.2 -= 1;
        self.0.next_batch(batch, 1).await
    }
}

#[derive(Deserialize)]
struct Order {
    id: i64,
    customer: String,
    amount: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Total {
    id: i64,
    customer: String,
    running_total: i64,
}

fn orders(partitions: usize, per_partition: usize) -> Vec<Vec<String>> {
    (0..partitions)
        .map(|p| {
            (0..per_partition)
                .map(|i| {
                    let id = p * per_partition + i;
                    if id % 17 == 5 {
                        format!(r#"{{"id": {id}, "customer": "c{}", "amou"#, id % 7)
                    } else {
                        format!(
                            r#"{{"id": {id}, "customer": "c{}", "amount": {}}}"#,
                            id % 7,
                            id % 100 + 1
                        )
                    }
                })
                .collect()
        })
        .collect()
}

fn totals_flow() -> impl keel::Step<Record, Out = Total> {
    let totals = StateSpec::<i64>::new("totals");
    Flow::<Record>::new()
        .parse_json::<Order>()
        .key_by(|o| o.customer.clone())
        .stateful(move |o, cx| {
            let running_total = cx.state(&totals).update(|t| {
                let t = t.get_or_insert(0);
                *t += o.amount;
                *t
            })?;
            Ok(Total {
                id: o.id,
                customer: o.customer,
                running_total,
            })
        })
        .into_step()
}

fn parse(lines: Vec<String>) -> Vec<Total> {
    lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every valid id once, and per customer the running totals follow one serial order.
fn assert_exactly_once(input: &[Vec<String>], out: &[Total]) {
    let mut ids: Vec<i64> = out.iter().map(|t| t.id).collect();
    ids.sort();
    let expected: Vec<i64> = input
        .iter()
        .flatten()
        .enumerate()
        .filter(|(i, _)| i % 17 != 5)
        .map(|(i, _)| i as i64)
        .collect();
    assert_eq!(ids, expected, "every valid id exactly once");
    let mut per: std::collections::HashMap<&str, Vec<(i64, i64)>> = Default::default();
    for t in out {
        per.entry(&t.customer)
            .or_default()
            .push((t.running_total, t.id % 100 + 1));
    }
    for (c, mut v) in per {
        v.sort();
        let mut prev = 0;
        for (rt, amount) in v {
            assert_eq!(rt - prev, amount, "customer {c}: totals are not one serial order");
            prev = rt;
        }
    }
}

#[test]
fn stop_then_resume_is_exactly_once_with_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = orders(3, 60);
    let out = MemorySink::new();
    let dead = MemorySink::new();
    let build = |src: Holding| {
        Pipeline::builder("t")
            .source(src)
            .flow(Flow::<Record>::new().then(totals_flow()))
            .sink(out.clone())
            .dead_letters(dead.clone())
            .checkpoints(FileCheckpointStore::new(dir.path()))
            .checkpoint_interval(Some(Duration::from_millis(20)))
            .build()
            .unwrap()
    };
    // each partition holds after 25 of its 60 records; the stop comes after two checkpoints
    let p = build(Holding(
        Slow(VecSource::new(input.clone()), Duration::from_millis(2)),
        25,
    ));
    stop_after_checkpoints(p.shutdown_handle(), dir.path(), 2);
    let first = p.run().unwrap();
    assert_eq!(first.outcome, Outcome::Stopped);
    assert!(
        first.records_in > 0 && first.records_in <= 75,
        "stopped in the middle: {}",
        first.records_in
    );
    let seen = out.committed_lines().len() as u64;
    assert_eq!(
        seen + dead.committed_lines().len() as u64,
        first.records_in,
        "everything handled is committed"
    );

    let second = build(Holding(
        Slow(VecSource::new(input.clone()), Duration::from_micros(10)),
        u64::MAX,
    ))
    .run()
    .unwrap();
    assert_eq!(second.outcome, Outcome::Finished);
    assert_eq!(second.restored_from, first.last_checkpoint);
    assert_eq!(first.records_in + second.records_in, 180);
    assert_exactly_once(&input, &parse(out.committed_lines()));
    assert_eq!(dead.committed_lines().len(), (0..180).filter(|i| i % 17 == 5).count());
    assert_eq!(second.totals.records_in, 180);

    let third = build(Holding(Slow(VecSource::new(input), Duration::ZERO), u64::MAX))
        .run()
        .unwrap();
    assert_eq!(third.outcome, Outcome::AlreadyFinished);
}

#[test]
fn dead_letters_carry_provenance() {
    let out = MemorySink::new();
    let dead = MemorySink::new();
    let s = Pipeline::builder("prov")
        .source(VecSource::new(vec![vec![
            "{\"id\": 1, \"customer\": \"a\", \"amount\": 5}",
            "not json",
        ]]))
        .flow(Flow::<Record>::new().then(totals_flow()))
        .sink(out.clone())
        .dead_letters(dead.clone())
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((s.records_in, s.records_out, s.dead_letters), (2, 1, 1));
    let env: keel::dead_letter::Envelope = serde_json::from_str(&dead.committed_lines()[0]).unwrap();
    assert_eq!(env.reason, "malformed");
    assert_eq!(env.class, Class::Permanent);
    assert_eq!(env.stage, "parse_json");
    assert_eq!(env.pipeline, "prov");
    assert_eq!(env.partition, "p0");
    assert_eq!(env.position, serde_json::json!(2));
    assert_eq!(env.raw.as_deref(), Some("not json"));
}

#[test]
fn without_a_dead_letter_output_a_bad_record_stops_the_pipeline() {
    let err = Pipeline::builder("strict")
        .source(VecSource::new(vec![vec!["oops"]]))
        .flow(Flow::<Record>::new().then(totals_flow()))
        .sink(MemorySink::new())
        .build()
        .unwrap()
        .run()
        .unwrap_err();
    assert!(matches!(err, PipelineError::Record { .. }), "{err}");
}

#[test]
fn a_fail_policy_stops_after_a_final_checkpoint_and_a_rerun_resumes_at_the_failed_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = MemorySink::new();
    let run = |fail: bool| {
        let flow = Flow::<Record>::new().try_map(move |r: Record| {
            if fail && r.value.as_ref() == b"boom" {
                Err(Failure::transient("io", "connection reset"))
            } else {
                Ok(r.value.to_vec())
            }
        });
        let mut policies = keel::policy::Policies::default();
        policies.default.set(Class::Transient, keel::policy::Action::Fail);
        Pipeline::builder("t")
            .source(VecSource::new(vec![vec!["a", "b", "boom", "c"]]))
            .flow(flow)
            .sink_with("main", out.clone(), keel::RawEncoder)
            .dead_letters(MemorySink::new())
            .checkpoints(FileCheckpointStore::new(dir.path()))
            .policies(policies)
            .build()
            .unwrap()
            .run()
    };
    match run(true).unwrap_err() {
        PipelineError::Record { failure, .. } => {
            assert_eq!((failure.class, failure.reason.as_ref()), (Class::Transient, "io"))
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        out.committed_lines(),
        vec!["a", "b"],
        "the final checkpoint covers the records before the failure"
    );
    let second = run(false).unwrap();
    assert_eq!(second.records_in, 2, "resumed at the failed record");
    assert_eq!(out.committed_lines(), vec!["a", "b", "boom", "c"]);
}

#[test]
fn steps_compose_and_keep_partition_order() {
    let out = MemorySink::new();
    let input: Vec<Vec<String>> = (0..4).map(|p| (0..50).map(|i| format!("{p}:{i}")).collect()).collect();
    let flow = Flow::<Record>::new()
        .map(|r: Record| String::from_utf8(r.value.to_vec()).unwrap())
        .filter(|s: &String| !s.ends_with(":7"))
        .flat_map(|s: String| vec![s.clone(), format!("{s}!")])
        .map_async(|s: String| async move {
            tokio::task::yield_now().await;
            Ok::<_, Failure>(s)
        });
    let s = Pipeline::builder("order")
        .source(VecSource::new(input))
        .flow(flow)
        .sink_with("main", out.clone(), keel::RawEncoder)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(s.records_in, 200);
    let lines = out.committed_lines();
    assert_eq!(lines.len(), 4 * 49 * 2);
    for p in 0..4 {
        let mine: Vec<&String> = lines.iter().filter(|l| l.starts_with(&format!("{p}:"))).collect();
        let expected: Vec<String> = (0..50)
            .filter(|i| *i != 7)
            .flat_map(|i| vec![format!("{p}:{i}"), format!("{p}:{i}!")])
            .collect();
        assert_eq!(
            mine.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            expected,
            "partition {p} in order"
        );
    }
}

#[test]
fn late_records_go_to_the_late_policy() {
    #[derive(Deserialize)]
    struct Ev {
        ts: i64,
    }
    let run = |late: LatePolicy| {
        let out = MemorySink::new();
        let dead = MemorySink::new();
        let mut lines: Vec<String> = (0..300)
            .map(|i| format!(r#"{{"ts": {}}}"#, 1_000_000 + i * 10))
            .collect();
        lines.push(r#"{"ts": 1}"#.into());
        let s = Pipeline::builder("late")
            .source(Slow(VecSource::new(vec![lines]), Duration::from_millis(1)))
            .flow(
                Flow::<Record>::new()
                    .parse_json::<Ev>()
                    .event_time(|e| e.ts)
                    .map(|e| e.ts),
            )
            .sink(out.clone())
            .dead_letters(dead.clone())
            .configure(|o| {
                o.watermarks = WatermarkConfig {
                    lateness: Duration::from_millis(100),
                    late,
                    ..Default::default()
                }
            })
            .build()
            .unwrap()
            .run()
            .unwrap();
        (s, out.committed_lines().len(), dead.committed_lines())
    };
    let (s, out, dead) = run(LatePolicy::DeadLetter);
    assert_eq!((out, dead.len()), (300, 1));
    assert!(dead[0].contains("\"reason\":\"late\""), "{}", dead[0]);
    assert_eq!(s.dead_letters, 1);
    let (s, out, dead) = run(LatePolicy::Drop);
    assert_eq!((out, dead.len(), s.late_dropped), (300, 0, 1));
    let (_, out, _) = run(LatePolicy::Keep);
    assert_eq!(out, 301);
}

#[test]
fn end_of_input_results_are_emitted_once_to_side_sinks() {
    let totals = StateSpec::<i64>::new("totals");
    let t2 = totals.clone();
    let flow = Flow::<Record>::new()
        .parse_json::<Order>()
        .key_by(|o| o.customer.clone())
        .stateful(move |o, cx: &mut Context<'_>| {
            cx.state(&totals).update(|t| *t.get_or_insert(0) += o.amount)?;
            Ok(o.id)
        })
        .on_finish(move |cx, _| {
            let mut all = cx.state_entries(&t2)?;
            all.sort();
            for (k, v) in all {
                cx.emit_json(
                    "final",
                    &serde_json::json!({"customer": String::from_utf8_lossy(&k), "total": v}),
                )?;
            }
            Ok(())
        });
    let finals = MemorySink::new();
    let s = Pipeline::builder("f")
        .source(VecSource::new(orders(2, 30)))
        .flow(flow)
        .sink(MemorySink::new())
        .side_sink("final", finals.clone())
        .dead_letters(MemorySink::new())
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    let lines = finals.committed_lines();
    assert_eq!(lines.len(), 7);
    let sum: i64 = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["total"]
                .as_i64()
                .unwrap()
        })
        .sum();
    let expected: i64 = (0..60).filter(|i| i % 17 != 5).map(|i| i % 100 + 1).sum();
    assert_eq!(sum, expected);
}

#[test]
fn a_corrupt_state_file_falls_back_to_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let input = orders(2, 80);
    let out = MemorySink::new();
    let build = |src: Holding| {
        Pipeline::builder("t")
            .source(src)
            .flow(Flow::<Record>::new().then(totals_flow()))
            .sink(out.clone())
            .dead_letters(MemorySink::new())
            .checkpoints(FileCheckpointStore::new(dir.path()))
            .checkpoint_interval(Some(Duration::from_millis(15)))
            .build()
            .unwrap()
    };
    let p = build(Holding(
        Slow(VecSource::new(input.clone()), Duration::from_millis(2)),
        30,
    ));
    stop_after_checkpoints(p.shutdown_handle(), dir.path(), 3);
    let first = p.run().unwrap();
    assert_eq!(first.outcome, Outcome::Stopped);
    // corrupt the newest state file of the newest checkpoint: that checkpoint becomes unusable
    let store = FileCheckpointStore::new(dir.path());
    let id = keel::CheckpointStore::list(&store).unwrap().into_iter().max().unwrap();
    let keel::checkpoint::ManifestRead::Valid(m) = keel::CheckpointStore::read(&store, id).unwrap() else {
        panic!("checkpoint {id} unreadable")
    };
    let newest = dir.path().join("state").join(m.state.files.last().unwrap());
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    // the output of the lost checkpoint's epoch is rolled back and produced again
    let second = build(Holding(Slow(VecSource::new(input.clone()), Duration::ZERO), u64::MAX))
        .run()
        .unwrap();
    assert_eq!(second.outcome, Outcome::Finished);
    assert!(
        second.restored_from < first.last_checkpoint,
        "fell back: {:?} vs {:?}",
        second.restored_from,
        first.last_checkpoint
    );
    assert_exactly_once(&input, &parse(out.committed_lines()));
}

/// Long delta chains are folded into a full snapshot by the checkpoint thread, in the
/// background (issue 9.12): manifests keep short chains, and a run resumed from one restores
/// exactly the state it had. The stop comes from the flow itself after 150 records.
#[test]
fn background_compaction_keeps_chains_short_and_state_exact() {
    use keel::CheckpointStore;
    let dir = tempfile::tempdir().unwrap();
    let input = orders(3, 60);
    let out = MemorySink::new();
    let dead = MemorySink::new();
    let build = |src: Slow, stop_after: Option<u64>| {
        let handle: Arc<OnceLock<keel::ShutdownHandle>> = Arc::default();
        let seen = Arc::new(AtomicU64::new(0));
        let h2 = handle.clone();
        let flow = Flow::<Record>::new().then(totals_flow()).map(move |t: Total| {
            if stop_after.is_some_and(|n| seen.fetch_add(1, Ordering::SeqCst) + 1 == n)
                && let Some(h) = h2.get()
            {
                h.trigger();
            }
            t
        });
        let p = Pipeline::builder("t")
            .source(src)
            .flow(flow)
            .sink(out.clone())
            .dead_letters(dead.clone())
            .checkpoints(FileCheckpointStore::new(dir.path()))
            .configure(|o| {
                o.checkpoint_interval = Some(Duration::from_millis(1));
                o.snapshots = keel::state::SnapshotPolicy { max_deltas: 2 };
                o.batch_size = 1;
            })
            .build()
            .unwrap();
        let _ = handle.set(p.shutdown_handle());
        p
    };
    let first = build(Slow(VecSource::new(input.clone()), Duration::from_millis(3)), Some(150))
        .run()
        .unwrap();
    assert_eq!(first.outcome, Outcome::Stopped);
    // every checkpoint of this run wrote a delta: without compaction the chain would be as
    // long as the number of checkpoints
    assert!(first.checkpoints >= 10, "{} checkpoints", first.checkpoints);
    let store = FileCheckpointStore::new(dir.path());
    let newest = store.list().unwrap().into_iter().max().unwrap();
    let keel::checkpoint::ManifestRead::Valid(m) = store.read(newest).unwrap() else {
        panic!("newest manifest unreadable")
    };
    assert!(
        m.state.files.len() < first.checkpoints as usize - 2,
        "chain not compacted: {:?}",
        m.state.files
    );
    assert!(m.state.files[0].ends_with(".full"));
    assert_ne!(
        m.state.files[0],
        format!("{:020}.full", 1),
        "the first snapshot was replaced"
    );

    let second = build(Slow(VecSource::new(input.clone()), Duration::ZERO), None)
        .run()
        .unwrap();
    assert_eq!(second.outcome, Outcome::Finished);
    assert_eq!(second.restored_from, first.last_checkpoint);
    assert_exactly_once(&input, &parse(out.committed_lines()));
}

/// One record far ahead of the wall clock is dead-lettered as `future_event_time` and does
/// not raise the watermark: the records after it are not late.
#[test]
fn a_far_future_event_time_is_dead_lettered_and_does_not_move_the_watermark() {
    #[derive(Deserialize)]
    struct Ev {
        ts: i64,
    }
    let now = keel::util::now_ms() as i64;
    let far = now + 10 * 24 * 3_600_000;
    let mut lines = vec![format!(r#"{{"ts": {far}}}"#)];
    lines.extend((0..300).map(|i| format!(r#"{{"ts": {}}}"#, now - 60_000 + i * 10)));
    let out = MemorySink::new();
    let dead = MemorySink::new();
    let s = Pipeline::builder("future")
        .source(Slow(VecSource::new(vec![lines]), Duration::from_millis(1)))
        .flow(
            Flow::<Record>::new()
                .parse_json::<Ev>()
                .event_time(|e| e.ts)
                .map(|e| e.ts),
        )
        .sink(out.clone())
        .dead_letters(dead.clone())
        .configure(|o| {
            o.watermarks = WatermarkConfig {
                lateness: Duration::from_millis(100),
                ..Default::default()
            }
        })
        .build()
        .unwrap()
        .run()
        .unwrap();
    let dead = dead.committed_lines();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("\"reason\":\"future_event_time\""), "{}", dead[0]);
    assert_eq!(out.committed_lines().len(), 300, "no record after it is late");
    assert_eq!(s.dead_letters, 1);
    assert_eq!(s.late_dropped, 0);
}

/// A sink that panics on a write holding `poison` while armed.
#[derive(Clone)]
struct PanickySink(MemorySink, Arc<std::sync::atomic::AtomicBool>);

impl keel::Sink for PanickySink {
    fn describe(&self) -> String {
        "panicky".into()
    }
    fn guarantee(&self) -> keel::Guarantee {
        keel::Guarantee::ExactlyOnce
    }
    async fn recover(
        &mut self,
        r: &keel::checkpoint::recovery::SinkRecovery,
    ) -> Result<keel::sink::RecoveryReport, keel::SinkError> {
        self.0.recover(r).await
    }
    async fn write(&mut self, epoch: u64, batch: &keel::OutBatch) -> Result<(), keel::SinkError> {
        if self.1.load(Ordering::SeqCst) && String::from_utf8_lossy(batch.data()).contains("1-50\n") {
            panic!("sink exploded");
        }
        self.0.write(epoch, batch).await
    }
    async fn seal(&mut self, epoch: u64) -> Result<Box<dyn keel::SealedEpoch>, keel::SinkError> {
        self.0.seal(epoch).await
    }
}

/// A source whose partition p1 panics at its 50th record while armed.
#[derive(Clone)]
struct PanickySource(VecSource, Arc<std::sync::atomic::AtomicBool>);
struct PanickyReader(<VecSource as Source>::Reader, bool, u64);

impl Source for PanickySource {
    type Position = u64;
    type Reader = PanickyReader;
    fn describe(&self) -> String {
        "panicky".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        self.0.discover().await
    }
    async fn open(&mut self, p: &str, from: Option<u64>) -> Result<PanickyReader, SourceError> {
        let armed = self.1.load(Ordering::SeqCst) && p == "p1";
        Ok(PanickyReader(self.0.open(p, from).await?, armed, from.unwrap_or(0)))
    }
}

impl PartitionReader for PanickyReader {
    type Position = u64;
    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, _max: usize) -> Result<ReadStatus, SourceError> {
        if self.1 && self.2 >= 50 {
            panic!("source exploded");
        }
        self.2 += 1;
        self.0.next_batch(batch, 1).await
    }
}

/// A flag that is set when `on` and `armed` are.
fn only(on: bool, armed: &std::sync::atomic::AtomicBool) -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(on && armed.load(Ordering::SeqCst)))
}

/// A panic in a sync step, an async step (a `RefCell` borrowed across an `.await`), a sink or
/// a source ends the run with `PipelineError::Panic` naming where (issue 10.1: the run hung);
/// once the code is fixed, a rerun resumes from the last durable checkpoint, exactly once.
#[test]
fn a_panic_anywhere_ends_the_run_and_a_rerun_resumes_exactly_once() {
    for place in ["sync step", "async step", "sink", "source"] {
        let dir = tempfile::tempdir().unwrap();
        let out = MemorySink::new();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let input: Vec<Vec<String>> = (0..3).map(|p| (0..100).map(|i| format!("{p}-{i}")).collect()).collect();
        let run = || {
            let (dir, out, armed, input) = (dir.path().to_path_buf(), out.clone(), armed.clone(), input.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let cell = Rc::new(std::cell::RefCell::new(()));
                let (a1, a2) = (armed.clone(), armed.clone());
                let flow = Flow::<Record>::new()
                    .map(move |r: Record| {
                        if place == "sync step" && a1.load(Ordering::SeqCst) && &r.value[..] == b"1-50" {
                            panic!("step exploded");
                        }
                        r
                    })
                    .map_async(move |r: Record| {
                        let (cell, armed) = (cell.clone(), a2.clone());
                        #[allow(clippy::await_holding_refcell_ref)] // the user's bug this test is about
                        async move {
                            if place == "async step" && armed.load(Ordering::SeqCst) {
                                let _held = cell.borrow_mut(); // another partition's borrow panics
                                tokio::task::yield_now().await;
                            }
                            Ok::<_, Failure>(r.value.to_vec())
                        }
                    });
                let result = Pipeline::builder("panics")
                    .source(PanickySource(VecSource::new(input), only(place == "source", &armed)))
                    .flow(flow)
                    .sink_with(
                        "main",
                        PanickySink(out, only(place == "sink", &armed)),
                        keel::RawEncoder,
                    )
                    .checkpoints(FileCheckpointStore::new(&dir))
                    .configure(|o| {
                        o.batch_size = 1;
                        o.checkpoint_interval = Some(Duration::from_millis(2));
                        o.flush_bytes = 1;
                    })
                    .build()
                    .unwrap()
                    .run();
                let _ = tx.send(result.map_err(|e| e.to_string()));
            });
            // a hang shows up as this bound, not as a test that never ends
            rx.recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("{place}: the run did not end after a panic"))
        };
        let err = run().expect_err(place);
        let stage = match place {
            "sync step" | "async step" => "flow",
            "sink" => "main",
            _ => "source",
        };
        assert!(err.starts_with(&format!("panic in {stage}")), "{place}: {err}");
        armed.store(false, Ordering::SeqCst);
        let summary = run().unwrap_or_else(|e| panic!("{place}: rerun: {e}"));
        let mut got = out.committed_lines();
        got.sort();
        let mut want: Vec<String> = input.iter().flatten().cloned().collect();
        want.sort();
        assert_eq!(got, want, "{place}: exactly once after the rerun ({summary:?})");
    }
}
