//! Failure policies end to end: retries under paused time, partitions that keep flowing,
//! pauses, skip, fail, abort, the retry and error budgets, the hook, classification, sink
//! outages behind a circuit breaker, and dead-letter fallbacks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::policy::{
    Action, Backoff, BreakerConfig, BudgetAction, ErrorBudget, Jitter, Policies, RetryBudget, RetryPolicy,
};
use keel::sink::{Guarantee, OutBatch, RecoveryReport, SealedEpoch, Sink, SinkError};
use keel::testing::{MemorySink, VecSource};
use keel::{Class, Failure, FileCheckpointStore, Flow, Pipeline, PipelineError, RawEncoder, Record, StateSpec};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn constant(delay: Duration, attempts: u32) -> RetryPolicy {
    RetryPolicy::new(Backoff::Constant { delay }, Jitter::None, attempts, None).unwrap()
}

fn policies(transient: Action) -> Policies {
    let mut p = Policies {
        budget: None,
        ..Policies::default()
    };
    p.default.set(Class::Transient, transient);
    p
}

/// Runs `pipeline` on a paused-time runtime: sleeps take no real time, timestamps are exact.
fn run_paused<Src, S, E>(p: Pipeline<Src, S, E>) -> Result<keel::RunSummary, PipelineError>
where
    Src: keel::Source,
    S: keel::Step<Record>,
    E: keel::Encoder<S::Out>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, p.run_local())
}

/// Failures per record value: `fail[v] = n` fails the first `n` attempts of record `v`.
type Plan = Rc<RefCell<HashMap<String, u32>>>;

/// A flow that fails records as planned and logs every attempt with its (virtual) time.
fn flaky_flow(
    plan: Plan,
    log: Rc<RefCell<Vec<(String, Duration)>>>,
    start: Instant,
    class: Class,
) -> impl keel::Step<Record, Out = Vec<u8>> {
    Flow::<Record>::new()
        .map_async(move |r: Record| {
            let plan = plan.clone();
            let log = log.clone();
            async move {
                let v = String::from_utf8(r.value.to_vec()).unwrap();
                log.borrow_mut().push((v.clone(), start.elapsed()));
                let mut p = plan.borrow_mut();
                match p.get_mut(&v) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        Err(match class {
                            Class::Throttled => {
                                Failure::throttled("rate_limited", "429 too many requests", Some(ms(5000)))
                                    .with_status(429)
                            }
                            c => Failure::new(c, "io", "connection reset"),
                        })
                    }
                    _ => Ok(r.value.to_vec()),
                }
            }
        })
        .into_step()
}

#[test]
fn retries_follow_the_backoff_schedule_exactly() {
    let plan: Plan = Rc::new(RefCell::new(HashMap::from([("x".to_string(), 3)])));
    let log = Rc::new(RefCell::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let out = MemorySink::new();
    let summary = tokio::task::LocalSet::new().block_on(&rt, async {
        let start = Instant::now();
        let policy = RetryPolicy::new(
            Backoff::Exponential {
                initial: ms(100),
                multiplier: 3.0,
                max_delay: ms(1000),
            },
            Jitter::None,
            5,
            None,
        )
        .unwrap();
        Pipeline::builder("retry")
            .source(VecSource::new(vec![vec!["x"]]))
            .step(flaky_flow(plan.clone(), log.clone(), start, Class::Transient))
            .sink_with("main", out.clone(), RawEncoder)
            .dead_letters(MemorySink::new())
            .policies(policies(Action::Retry {
                policy,
                then: Box::new(Action::DeadLetter),
            }))
            .build()
            .unwrap()
            .run_local()
            .await
    });
    let summary = summary.unwrap();
    let times: Vec<Duration> = log.borrow().iter().map(|(_, t)| *t).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        vec![ms(100), ms(300), ms(900)],
        "exponential 100 ms x3, no jitter"
    );
    assert_eq!(out.committed_lines(), vec!["x"]);
    assert_eq!((summary.retries, summary.dead_letters), (3, 0));
}

#[test]
fn exhausted_retries_dead_letter_with_the_attempts_and_original_reason() {
    let plan: Plan = Rc::new(RefCell::new(HashMap::from([("x".to_string(), 99)])));
    let log = Rc::new(RefCell::new(Vec::new()));
    let dead = MemorySink::new();
    let s = run_paused(
        Pipeline::builder("retry")
            .source(VecSource::new(vec![vec!["x", "y"]]))
            .step(flaky_flow(plan, log, Instant::now(), Class::Transient))
            .sink_with("main", MemorySink::new(), RawEncoder)
            .dead_letters(dead.clone())
            .policies(policies(Action::Retry {
                policy: constant(ms(10), 4),
                then: Box::new(Action::DeadLetter),
            }))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!((s.records_out, s.dead_letters, s.retries), (1, 1, 3));
    let env: serde_json::Value = serde_json::from_str(&dead.committed_lines()[0]).unwrap();
    assert_eq!(env["reason"], "retries_exhausted");
    assert_eq!(env["attempts"], 4);
    assert!(
        env["chain"][0].as_str().unwrap().starts_with("io: connection reset"),
        "{env}"
    );
}

#[test]
fn a_retrying_partition_does_not_hold_back_the_others_and_keeps_its_order() {
    let plan: Plan = Rc::new(RefCell::new(HashMap::from([("a1".to_string(), 2)])));
    let log = Rc::new(RefCell::new(Vec::new()));
    let out = MemorySink::new();
    let a: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    let b: Vec<String> = (0..200).map(|i| format!("b{i}")).collect();
    run_paused(
        Pipeline::builder("order")
            .source(VecSource::new(vec![a, b]))
            .step(flaky_flow(plan, log.clone(), Instant::now(), Class::Transient))
            .sink_with("main", out.clone(), RawEncoder)
            .dead_letters(MemorySink::new())
            .policies(policies(Action::Retry {
                policy: constant(Duration::from_secs(10), 5),
                then: Box::new(Action::DeadLetter),
            }))
            .configure(|o| o.batch_size = 8)
            .build()
            .unwrap(),
    )
    .unwrap();
    let log = log.borrow();
    let b_done = log
        .iter()
        .filter(|(v, _)| v.starts_with('b'))
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    let a1: Vec<Duration> = log.iter().filter(|(v, _)| v == "a1").map(|(_, t)| *t).collect();
    assert!(
        b_done < a1[0] + Duration::from_secs(1),
        "partition b finished while a1 waited: {b_done:?}"
    );
    assert_eq!(
        a1[2] - a1[0],
        Duration::from_secs(20),
        "a1 succeeded after two 10 s backoffs"
    );
    // a2.. ran only after a1 succeeded: partition order holds
    let a_order: Vec<&str> = log
        .iter()
        .filter(|(v, _)| v.starts_with('a'))
        .map(|(v, _)| v.as_str())
        .collect();
    assert_eq!(a_order, vec!["a0", "a1", "a1", "a1", "a2", "a3", "a4"]);
    let lines = out.committed_lines();
    let a_out: Vec<&String> = lines.iter().filter(|l| l.starts_with('a')).collect();
    assert_eq!(a_out, vec!["a0", "a1", "a2", "a3", "a4"]);
    assert_eq!(lines.len(), 205);
}

#[test]
fn throttled_failures_pause_the_whole_pipeline_for_their_retry_after() {
    let plan: Plan = Rc::new(RefCell::new(HashMap::from([("a2".to_string(), 1)])));
    let log = Rc::new(RefCell::new(Vec::new()));
    let out = MemorySink::new();
    let a: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
    let b: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let s = run_paused(
        Pipeline::builder("pause")
            .source(keel_slow(VecSource::new(vec![a, b])))
            .step(flaky_flow(plan, log.clone(), Instant::now(), Class::Throttled))
            .sink_with("main", out.clone(), RawEncoder)
            .dead_letters(MemorySink::new())
            .checkpoints(FileCheckpointStore::new(dir.path()))
            .configure(|o| {
                o.batch_size = 1;
                o.checkpoint_interval = Some(Duration::from_secs(3600));
                o.policies.budget = None;
            })
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!((s.pauses, s.records_out, s.dead_letters), (1, 10, 0));
    let log = log.borrow();
    let throttled_at = log.iter().find(|(v, _)| v == "a2").unwrap().1;
    let retried_at = log.iter().filter(|(v, _)| v == "a2").nth(1).unwrap().1;
    assert_eq!(
        retried_at - throttled_at,
        ms(5000),
        "the retry-after of the 429 is honoured"
    );
    // nothing else was processed during the pause
    assert!(
        log.iter().all(|(_, t)| *t <= throttled_at + ms(50) || *t >= retried_at),
        "records ran during the pause: {log:?}"
    );
    assert!(
        s.checkpoints >= 2,
        "a checkpoint was taken when the pause started, and a final one"
    );
}

/// A source whose reads take 10 ms each, so that partitions interleave in time.
fn keel_slow(v: VecSource) -> Slow {
    Slow(v)
}

#[derive(Clone)]
struct Slow(VecSource);
struct SlowReader(<VecSource as keel::Source>::Reader);

impl keel::Source for Slow {
    type Position = u64;
    type Reader = SlowReader;
    fn describe(&self) -> String {
        "slow".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    async fn discover(&mut self) -> Result<Vec<String>, keel::SourceError> {
        self.0.discover().await
    }
    async fn open(&mut self, p: &str, from: Option<u64>) -> Result<SlowReader, keel::SourceError> {
        Ok(SlowReader(self.0.open(p, from).await?))
    }
}

impl keel::PartitionReader for SlowReader {
    type Position = u64;
    async fn next_batch(
        &mut self,
        b: &mut keel::SourceBatch<u64>,
        max: usize,
    ) -> Result<keel::ReadStatus, keel::SourceError> {
        tokio::time::sleep(ms(10)).await;
        self.0.next_batch(b, max).await
    }
}

#[test]
fn records_that_changed_state_are_not_retried() {
    let calls = Rc::new(RefCell::new(0));
    let c2 = calls.clone();
    let counts = StateSpec::<u64>::new("counts");
    let flow = Flow::<Record>::new()
        .key_by(|r: &Record| r.value.to_vec())
        .stateful(move |r: Record, cx| {
            cx.state(&counts).update(|n| *n.get_or_insert(0) += 1)?;
            Ok(r)
        })
        .try_map(move |_: Record| {
            *c2.borrow_mut() += 1;
            Err::<Vec<u8>, _>(Failure::transient("io", "down"))
        });
    let dead = MemorySink::new();
    run_paused(
        Pipeline::builder("dirty")
            .source(VecSource::new(vec![vec!["k"]]))
            .flow(flow)
            .sink_with("main", MemorySink::new(), RawEncoder)
            .dead_letters(dead.clone())
            .policies(policies(Action::Retry {
                policy: constant(ms(10), 5),
                then: Box::new(Action::DeadLetter),
            }))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(*calls.borrow(), 1, "a replay would count the key twice");
    assert!(
        dead.committed_lines()[0].contains("changed keyed state"),
        "{}",
        dead.committed_lines()[0]
    );
}

#[test]
fn skip_drops_and_counts_and_the_hook_sees_every_failure() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut p = Policies::default();
    p.default.set(Class::Permanent, Action::Skip);
    p.hook = Some(Arc::new(move |e| {
        s2.lock().unwrap().push((e.failure.reason.to_string(), e.action))
    }));
    let flow = Flow::<Record>::new().try_map(|r: Record| {
        if r.value.starts_with(b"bad") {
            Err(Failure::permanent("bad_input", "no"))
        } else {
            Ok(r.value.to_vec())
        }
    });
    let out = MemorySink::new();
    let s = Pipeline::builder("skip")
        .source(VecSource::new(vec![vec!["ok1", "bad1", "ok2", "bad2"]]))
        .flow(flow)
        .sink_with("main", out.clone(), RawEncoder)
        .dead_letters(MemorySink::new())
        .policies(p)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((s.skipped, s.dead_letters, s.records_out), (2, 0, 2));
    assert_eq!(out.committed_lines(), vec!["ok1", "ok2"]);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("bad_input".to_string(), "skip"), ("bad_input".to_string(), "skip")]
    );
    assert_eq!(s.failures[0].count, 2);
    assert_eq!(
        (s.failures[0].reason.as_str(), s.failures[0].action.as_str()),
        ("bad_input", "skip")
    );
}

#[test]
fn classification_rules_and_the_rust_classifier_decide_the_class() {
    let p = Policies {
        classifier: keel::policy::Classifier::new(vec![keel::policy::ClassifyRule {
            status: Some(vec![409]),
            class: Class::Permanent,
            rename: Some("conflict".into()),
            ..Default::default()
        }])
        .with(|f| {
            if f.message.contains("poison") {
                f.class = Class::Fatal;
            }
        }),
        ..Policies::default()
    };
    let flow = Flow::<Record>::new().try_map(|r: Record| match r.value.as_ref() {
        b"c" => Err(Failure::transient("http", "conflict").with_status(409)),
        b"p" => Err(Failure::permanent("step_error", "poison pill")),
        _ => Ok(r.value.to_vec()),
    });
    let dead = MemorySink::new();
    let err = Pipeline::builder("classify")
        .source(VecSource::new(vec![vec!["a", "c", "p"]]))
        .flow(flow)
        .sink_with("main", MemorySink::new(), RawEncoder)
        .dead_letters(dead.clone())
        .policies(p)
        .build()
        .unwrap()
        .run()
        .unwrap_err();
    assert!(
        matches!(&err, PipelineError::Record { failure, .. } if failure.class == Class::Fatal),
        "{err}"
    );
    assert!(
        dead.committed_lines()[0].contains("\"reason\":\"conflict\""),
        "409 became a permanent `conflict`"
    );
}

#[test]
fn the_retry_budget_stops_a_retry_storm() {
    let n = 200;
    let plan: Plan = Rc::new(RefCell::new((0..n).map(|i| (format!("r{i}"), 1000)).collect()));
    let log = Rc::new(RefCell::new(Vec::new()));
    let dead = MemorySink::new();
    let mut p = policies(Action::Retry {
        policy: constant(ms(10), 10),
        then: Box::new(Action::DeadLetter),
    });
    p.budget = Some(RetryBudget::new(0.1, 0.0, Duration::from_secs(60)));
    let s = run_paused(
        Pipeline::builder("storm")
            .source(VecSource::new(vec![
                (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>(),
            ]))
            .step(flaky_flow(plan, log.clone(), Instant::now(), Class::Transient))
            .sink_with("main", MemorySink::new(), RawEncoder)
            .dead_letters(dead.clone())
            .policies(p)
            .build()
            .unwrap(),
    )
    .unwrap();
    let attempts = log.borrow().len() as u64;
    assert_eq!(s.dead_letters, n);
    // without a budget: 200 x 10 attempts; with it, retries stay near 10 % of first attempts
    assert!(attempts <= n + n / 10 + 10, "{attempts} attempts");
    assert!(dead.committed_lines().iter().any(|l| l.contains("retry budget")));
}

#[test]
fn an_exceeded_error_budget_aborts_after_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = MemorySink::new();
    let dead = MemorySink::new();
    let p = Policies {
        error_budget: Some(ErrorBudget {
            max_ratio: Some(0.05),
            max_count: None,
            window: Duration::from_secs(60),
            min_records: 20,
            action: BudgetAction::Abort,
        }),
        ..Policies::default()
    };
    let lines: Vec<String> = (0..100)
        .map(|i| {
            if i >= 50 && i % 2 == 0 {
                "bad".into()
            } else {
                format!("ok{i}")
            }
        })
        .collect();
    let flow = Flow::<Record>::new().try_map(|r: Record| {
        if r.value.as_ref() == b"bad" {
            Err(Failure::permanent("bad", "bad"))
        } else {
            Ok(r.value.to_vec())
        }
    });
    let err = Pipeline::builder("budget")
        .source(VecSource::new(vec![lines]))
        .flow(flow)
        .sink_with("main", out.clone(), RawEncoder)
        .dead_letters(dead.clone())
        .checkpoints(FileCheckpointStore::new(dir.path()))
        .policies(p)
        .build()
        .unwrap()
        .run()
        .unwrap_err();
    let PipelineError::Aborted { reason, summary } = &err else {
        panic!("{err}")
    };
    assert!(reason.contains("error budget"), "{err}");
    let dead_n = dead.committed_lines().len();
    let out_n = out.committed_lines().len();
    // the abort keeps the run's counts, and the final checkpoint's counts are what it committed
    let summary = summary.as_ref().expect("an abort carries the run's summary");
    assert_eq!(summary.outcome, keel::Outcome::Aborted);
    assert_eq!(
        (summary.records_out, summary.dead_letters),
        (out_n as u64, dead_n as u64)
    );
    let store = FileCheckpointStore::new(dir.path());
    let newest = keel::CheckpointStore::list(&store).unwrap().into_iter().max().unwrap();
    assert_eq!(summary.last_checkpoint, Some(newest));
    let keel::checkpoint::ManifestRead::Valid(m) = keel::CheckpointStore::read(&store, newest).unwrap() else {
        panic!("checkpoint {newest} unreadable")
    };
    assert_eq!(
        (m.stats.records_out, m.stats.dead_letters),
        (out_n as u64, dead_n as u64),
        "the manifest counts what was committed"
    );
    assert!(
        (3..10).contains(&dead_n),
        "stopped soon after the budget: {dead_n} dead"
    );
    assert!(
        out_n >= 50,
        "records before are committed by the final checkpoint: {out_n}"
    );
}

/// A sink that is down until `down_until`, counting its calls.
#[derive(Clone)]
struct Outage {
    inner: MemorySink,
    down_until: Arc<Mutex<Option<Instant>>>,
    calls: Arc<AtomicU64>,
    /// Calls made while down (the test double's own count, not keel's).
    failed: Arc<AtomicU64>,
}

impl Sink for Outage {
    fn describe(&self) -> String {
        "outage".into()
    }
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }
    async fn recover(&mut self, r: &SinkRecovery) -> Result<RecoveryReport, SinkError> {
        self.inner.recover(r).await
    }
    async fn write(&mut self, epoch: CheckpointId, batch: &OutBatch) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let down = self.down_until.lock().unwrap().is_some_and(|u| Instant::now() < u);
        if down {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::io(
                "writing",
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down"),
            ));
        }
        self.inner.write(epoch, batch).await
    }
    async fn seal(&mut self, epoch: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
        self.inner.seal(epoch).await
    }
}

#[test]
fn a_30_second_sink_outage_pauses_input_and_loses_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let sink = Outage {
        inner: MemorySink::new(),
        down_until: Arc::new(Mutex::new(None)),
        calls: Arc::new(AtomicU64::new(0)),
        failed: Arc::new(AtomicU64::new(0)),
    };
    let dead = MemorySink::new();
    let lines: Vec<Vec<String>> = (0..2)
        .map(|p| (0..3000).map(|i| format!("{p}-{i}")).collect())
        .collect();
    let s2 = sink.clone();
    let summary = tokio::task::LocalSet::new().block_on(&rt, async {
        // the sink goes down 2 s into the run, for 30 s
        let down = s2.down_until.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            *down.lock().unwrap() = Some(Instant::now() + Duration::from_secs(30));
        });
        let p = Policies {
            sink_breaker: Some(BreakerConfig {
                failures: 3,
                open_for: Duration::from_secs(5),
                ..Default::default()
            }),
            ..Policies::default()
        };
        Pipeline::builder("outage")
            .source(Slow(VecSource::new(lines)))
            .flow(Flow::<Record>::new().map(|r: Record| r.value.to_vec()))
            .sink_with("main", s2.clone(), RawEncoder)
            .dead_letters(dead.clone())
            .configure(|o| {
                o.batch_size = 10;
                o.flush_bytes = 1;
                o.checkpoint_interval = Some(Duration::from_secs(1));
                o.policies = p;
            })
            .build()
            .unwrap()
            .run_local()
            .await
    });
    let s = summary.unwrap();
    assert_eq!(s.dead_letters, 0, "no healthy record is dead-lettered");
    assert_eq!(dead.committed_lines().len(), 0);
    // nothing lost, nothing doubled: the committed records are exactly the input
    let mut committed = sink.inner.committed_lines();
    committed.sort();
    let mut want: Vec<String> = (0..2)
        .flat_map(|p| (0..3000).map(move |i| format!("{p}-{i}")))
        .collect();
    want.sort();
    assert_eq!(committed, want, "nothing lost");
    let (_, breaker) = s.breakers.iter().find(|(n, _)| n == "main").unwrap();
    assert_eq!(
        (breaker.opened, breaker.closed),
        (1, 1),
        "opened once, closed once: {breaker:?}"
    );
    assert!(
        breaker.reopened >= 4,
        "probes every 5 s failed during the outage: {breaker:?}"
    );
    assert!(s.pauses >= 1);
    // the test double's own count: the 3 failures that open the breaker, then one failed
    // probe per open period (each reopens it), and nothing else reaches the sink while down
    let failed_calls = sink.failed.load(Ordering::SeqCst);
    assert_eq!(failed_calls, 3 + breaker.reopened, "{breaker:?}");
    assert_eq!(failed_calls, s.sink_failures.0, "keel counts what the sink saw");
    assert!(
        failed_calls <= 3 + 7,
        "{failed_calls} failed writes during a 30 s outage"
    );
}

#[test]
fn a_rejecting_dead_letter_output_falls_back() {
    let primary = Outage {
        inner: MemorySink::new(),
        down_until: Arc::new(Mutex::new(None)),
        calls: Arc::new(AtomicU64::new(0)),
        failed: Arc::new(AtomicU64::new(0)),
    };
    *primary.down_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(3600));
    let fallback = MemorySink::new();
    let p = Policies {
        sink_breaker: None,
        sink_retry: constant(ms(1), 2),
        ..Policies::default()
    };
    let flow = Flow::<Record>::new().try_map(|r: Record| -> Result<Vec<u8>, Failure> {
        if r.value.as_ref() == b"bad" {
            Err(Failure::permanent("bad", "bad"))
        } else {
            Ok(r.value.to_vec())
        }
    });
    let s = Pipeline::builder("fallback")
        .source(VecSource::new(vec![vec!["a", "bad", "b"]]))
        .flow(flow)
        .sink_with("main", MemorySink::new(), RawEncoder)
        .dead_letters(primary)
        .dead_letter_fallback(fallback.clone())
        .policies(p)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(s.dead_letters, 1);
    assert_eq!(fallback.committed_lines().len(), 1);
}

#[test]
fn oversized_records_are_dead_lettered() {
    let dead = MemorySink::new();
    let p = Policies {
        max_record_bytes: Some(8),
        ..Policies::default()
    };
    let s = Pipeline::builder("big")
        .source(VecSource::new(vec![vec!["small", "far too large a record"]]))
        .flow(Flow::<Record>::new().map(|r: Record| r.value.to_vec()))
        .sink_with("main", MemorySink::new(), RawEncoder)
        .dead_letters(dead.clone())
        .policies(p)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((s.records_out, s.dead_letters), (1, 1));
    assert!(dead.committed_lines()[0].contains("\"reason\":\"oversized\""));
}

/// A stop requested while a sink is down does not wait for the sink (issue 9.11): the run
/// ends at its last durable checkpoint, and nothing written after it is visible. Both orders
/// are covered: the stop arriving while an interval checkpoint waits for the held task, and
/// the stop arriving first (its final checkpoint would wait for the held task).
#[test]
fn a_stop_while_a_sink_is_down_ends_at_the_last_checkpoint() {
    for interval in [Duration::from_secs(1), Duration::from_secs(3600)] {
        let stop_at = Duration::from_secs(20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let sink = Outage {
            inner: MemorySink::new(),
            down_until: Arc::new(Mutex::new(None)),
            calls: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
        };
        let lines: Vec<Vec<String>> = (0..2)
            .map(|p| (0..3000).map(|i| format!("{p}-{i}")).collect())
            .collect();
        let s2 = sink.clone();
        let result = tokio::task::LocalSet::new().block_on(&rt, async {
            let pipeline = Pipeline::builder("stuck")
                .source(Slow(VecSource::new(lines)))
                .flow(Flow::<Record>::new().map(|r: Record| r.value.to_vec()))
                .sink_with("main", s2.clone(), RawEncoder)
                .configure(|o| {
                    o.batch_size = 10;
                    o.flush_bytes = 1;
                    o.checkpoint_interval = Some(interval);
                    o.policies = Policies {
                        sink_breaker: Some(BreakerConfig {
                            failures: 3,
                            open_for: Duration::from_secs(5),
                            ..Default::default()
                        }),
                        ..Policies::default()
                    };
                })
                .build()
                .unwrap();
            let stop = pipeline.shutdown_handle();
            let down = s2.down_until.clone();
            tokio::task::spawn_local(async move {
                // down for good 2 s into the run; the stop comes while it is down
                tokio::time::sleep(Duration::from_secs(2)).await;
                *down.lock().unwrap() = Some(Instant::now() + Duration::from_secs(1 << 30));
                tokio::time::sleep(stop_at).await;
                stop.trigger();
            });
            // virtual time: a hang shows up as this timeout, not as a test that never ends
            tokio::time::timeout(Duration::from_secs(3600), pipeline.run_local()).await
        });
        let summary = result
            .unwrap_or_else(|_| panic!("interval {interval:?}: the run did not end after the stop"))
            .expect("a stop is not a failure");
        assert_eq!(summary.outcome, keel::Outcome::Stopped);
        let committed = sink.inner.committed_lines().len();
        assert!(committed < 6000, "interval {interval:?}: {committed}");
        if interval.as_secs() == 1 {
            assert!(committed > 0, "checkpoints before the outage were committed");
            assert!(summary.last_checkpoint.is_some());
        }
    }
}

/// A checkpoint taken while a record in the middle of a batch waits for its retry counts
/// exactly the records its position covers (issue 9.15: the records handled before it in the
/// batch were missing from the checkpoint's counters, which skewed ingestion's checks).
#[test]
fn checkpoint_counts_match_positions_while_a_record_retries_mid_batch() {
    let plan: Plan = Rc::new(RefCell::new(HashMap::from([("r5".to_string(), 3)])));
    let log = Rc::new(RefCell::new(Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let records: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let summary = tokio::task::LocalSet::new().block_on(&rt, async {
        Pipeline::builder("mid-batch")
            .source(VecSource::new(vec![records]))
            .step(flaky_flow(plan.clone(), log.clone(), Instant::now(), Class::Transient))
            .sink_with("main", MemorySink::new(), RawEncoder)
            .dead_letters(MemorySink::new())
            .checkpoints(FileCheckpointStore::new(dir.path()))
            .policies(policies(Action::Retry {
                policy: constant(ms(1000), 5),
                then: Box::new(Action::DeadLetter),
            }))
            .configure(|o| {
                o.batch_size = 10;
                o.retain = 100;
                o.checkpoint_interval = Some(ms(300));
            })
            .build()
            .unwrap()
            .run_local()
            .await
    });
    assert_eq!(summary.unwrap().records_in, 10);
    let store = FileCheckpointStore::new(dir.path());
    let mut mid_batch = 0;
    for id in keel::CheckpointStore::list(&store).unwrap() {
        let keel::checkpoint::ManifestRead::Valid(m) = keel::CheckpointStore::read(&store, id).unwrap() else {
            panic!("checkpoint {id}")
        };
        let position = m.partitions["p0"].position.as_u64().unwrap();
        assert_eq!(
            m.stats.records_in, position,
            "checkpoint {id}: counts and position disagree"
        );
        if position == 5 {
            mid_batch += 1;
        }
    }
    assert!(mid_batch >= 2, "checkpoints during the 3 s of retries: {mid_batch}");
}

/// Any built-in step can be named for per-stage policies (issue 10.5): the failures of
/// `.map_async(..).named("fetch")` report stage `fetch`, and the `fetch` actions apply to
/// them while other stages keep the defaults. Written with the prelude only.
#[test]
fn named_built_in_steps_get_their_own_policies() {
    use keel::prelude::*;
    let mut p = Policies::default();
    p.stages.insert("fetch".into(), {
        let mut a = ClassActions::default();
        a.set(Class::Throttled, Action::Skip);
        a
    });
    let flow = Flow::<Record>::new()
        .map_async(|r: Record| async move {
            if r.value.starts_with(b"slow") {
                Err(Failure::throttled("rate_limited", "429", None))
            } else {
                Ok(r)
            }
        })
        .named("fetch")
        .try_map(|r: Record| {
            if r.value.starts_with(b"bad") {
                Err(Failure::permanent("bad_input", "no"))
            } else {
                Ok(r.value.to_vec())
            }
        });
    let (out, dead) = (MemorySink::new(), MemorySink::new());
    let s = Pipeline::builder("named")
        .source(VecSource::new(vec![vec!["ok", "slow1", "bad1", "slow2"]]))
        .flow(flow)
        .sink_with("main", out.clone(), RawEncoder)
        .dead_letters(dead.clone())
        .policies(p)
        .build()
        .unwrap()
        .run()
        .unwrap();
    assert_eq!((s.skipped, s.dead_letters), (2, 1));
    assert_eq!(out.committed_lines(), vec!["ok"]);
    let stages: Vec<(String, String)> = s.failures.iter().map(|f| (f.stage.clone(), f.reason.clone())).collect();
    assert!(stages.contains(&("fetch".into(), "rate_limited".into())), "{stages:?}");
    assert!(
        stages.contains(&("try_map".into(), "bad_input".into()))
            || stages.iter().any(|(st, r)| r == "bad_input" && st != "fetch"),
        "{stages:?}"
    );
}

/// The record path's metrics through the `metrics` facade (a debugging recorder here, as a
/// service embedding keel installs its own): retries by outcome with their delays, dead
/// letters by reason and stage, records read and written.
#[test]
fn retries_and_dead_letters_are_counted_in_the_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // y fails twice then succeeds; x always fails: 3 retries, then it is dead-lettered
    let plan: Plan = Rc::new(RefCell::new(HashMap::from([
        ("x".to_string(), 99),
        ("y".to_string(), 2),
    ])));
    let log = Rc::new(RefCell::new(Vec::new()));
    let s = metrics::with_local_recorder(&recorder, || {
        run_paused(
            Pipeline::builder("metered")
                .source(VecSource::new(vec![vec!["x", "y", "z"]]))
                .step(flaky_flow(plan, log, Instant::now(), Class::Transient))
                .sink_with("main", MemorySink::new(), RawEncoder)
                .dead_letters(MemorySink::new())
                .policies(policies(Action::Retry {
                    policy: constant(ms(10), 4),
                    then: Box::new(Action::DeadLetter),
                }))
                .build()
                .unwrap(),
        )
        .unwrap()
    });
    assert_eq!((s.records_out, s.dead_letters, s.retries), (2, 1, 5));
    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut delays = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        let mut labels: Vec<String> = k.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let name = format!("{}{{{}}}", k.name(), labels.join(","));
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(v) if k.name() == "keel_retry_delay_seconds" => {
                delays.extend(v.into_iter().map(|f| f.into_inner()))
            }
            _ => {}
        }
    }
    let c = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert_eq!(
        c("keel_retries_total{outcome=attempted,pipeline=metered,stage=map_async}"),
        5,
        "{counters:?}"
    );
    assert_eq!(
        c("keel_retries_total{outcome=succeeded,pipeline=metered,stage=map_async}"),
        1
    );
    assert_eq!(
        c("keel_retries_total{outcome=exhausted,pipeline=metered,stage=map_async}"),
        1
    );
    assert_eq!(
        c("keel_dead_letters_total{pipeline=metered,reason=retries_exhausted,stage=map_async}"),
        1
    );
    assert_eq!(c("keel_records_read_total{partition=p0,pipeline=metered}"), 3);
    assert_eq!(c("keel_records_written_total{pipeline=metered,sink=main}"), 2);
    assert_eq!(delays, vec![0.01; 5], "each retry waited the constant 10 ms");
}
