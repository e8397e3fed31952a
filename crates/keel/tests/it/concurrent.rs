//! `map_async(..).concurrency(n)`: up to `n` calls per partition at once, outputs in source
//! order, failures and checkpoints as with one record at a time (issue 10.5). Paused time:
//! sleeps take no real time, so the overlap is measured exactly.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use keel::policy::{Action, Backoff, Jitter, Policies, RetryPolicy};
use keel::testing::{MemorySink, VecSource};
use keel::{Class, Failure, FileCheckpointStore, Flow, Pipeline, PipelineError, RawEncoder, Record, StateSpec};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn paused<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn retry_then_dead_letter(attempts: u32) -> Policies {
    let mut p = Policies {
        budget: None,
        ..Policies::default()
    };
    let policy = RetryPolicy::new(Backoff::Constant { delay: ms(1000) }, Jitter::None, attempts, None).unwrap();
    p.default.set(
        Class::Transient,
        Action::Retry {
            policy,
            then: Box::new(Action::DeadLetter),
        },
    );
    p
}

/// Calls in flight now and at most, and calls made per record.
#[derive(Clone, Default)]
struct Meter {
    now: Rc<Cell<usize>>,
    max: Rc<Cell<usize>>,
    calls: Rc<RefCell<HashMap<String, u32>>>,
}

impl Meter {
    /// A call that takes `delay(value)` and fails as `fail(value, attempt)` says.
    async fn call(self, value: String, delay: Duration, fail: Option<Failure>) -> Result<String, Failure> {
        *self.calls.borrow_mut().entry(value.clone()).or_default() += 1;
        self.now.set(self.now.get() + 1);
        self.max.set(self.max.get().max(self.now.get()));
        tokio::time::sleep(delay).await;
        self.now.set(self.now.get() - 1);
        match fail {
            Some(f) => Err(f),
            None => Ok(value),
        }
    }
}

fn records(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i:02}")).collect()
}

/// Record `i` takes a different time from its neighbours, so calls finish out of order.
fn delay_of(v: &str) -> Duration {
    let i: u64 = v[1..].parse().unwrap();
    ms(10 + (i * 37) % 90)
}

#[test]
fn a_concurrent_map_async_overlaps_n_calls_and_keeps_source_order() {
    let meter = Meter::default();
    let out = MemorySink::new();
    let input = records(40);
    let sequential: Duration = input.iter().map(|v| delay_of(v)).sum();
    let (summary, took) = paused({
        let (meter, out, input) = (meter.clone(), out.clone(), input.clone());
        async move {
            let flow = Flow::<Record>::new()
                .map(|r: Record| String::from_utf8(r.value.to_vec()).unwrap())
                .map_async(move |v: String| {
                    let d = delay_of(&v);
                    meter.clone().call(v, d, None)
                })
                .concurrency(8)
                .map(|v: String| v.into_bytes());
            let start = Instant::now();
            let s = Pipeline::builder("concurrent")
                .source(VecSource::new(vec![input]))
                .flow(flow)
                .sink_with("main", out, RawEncoder)
                .build()
                .unwrap()
                .run_local()
                .await;
            (s, start.elapsed())
        }
    });
    let summary = summary.unwrap();
    assert_eq!(summary.records_out, 40);
    assert_eq!(out.committed_lines(), input, "outputs in source order");
    assert_eq!(meter.max.get(), 8, "eight calls in flight at the most");
    assert!(meter.calls.borrow().values().all(|&n| n == 1), "one call per record");
    assert!(
        took * 4 < sequential,
        "concurrent {took:?} against {sequential:?} one at a time"
    );
}

/// Steps after the call run in source order with the key set before it, so keyed state
/// ends exactly as with one record at a time.
#[test]
fn steps_after_the_call_keep_keyed_state_in_source_order() {
    let counts: StateSpec<u64> = StateSpec::new("counts");
    let input: Vec<String> = (0..60).map(|i| format!("k{}:{i:02}", i % 3)).collect();
    let out = MemorySink::new();
    let summary = paused({
        let (out, input) = (out.clone(), input.clone());
        async move {
            let flow = Flow::<Record>::new()
                .map(|r: Record| String::from_utf8(r.value.to_vec()).unwrap())
                .key_by(|v: &String| v[..2].to_owned())
                .map_async(|v: String| async move {
                    // later records finish first
                    let i: u64 = v[3..].parse().unwrap();
                    tokio::time::sleep(ms(100 - i)).await;
                    Ok::<_, Failure>(v)
                })
                .concurrency(5)
                .stateful(move |v: String, cx| {
                    let n = cx.state(&counts).update(|c| {
                        let n = c.unwrap_or(0) + 1;
                        *c = Some(n);
                        n
                    })?;
                    Ok(format!("{v}#{n}").into_bytes())
                });
            Pipeline::builder("keyed")
                .source(VecSource::new(vec![input]))
                .flow(flow)
                .sink_with("main", out, RawEncoder)
                .build()
                .unwrap()
                .run_local()
                .await
        }
    });
    assert_eq!(summary.unwrap().records_out, 60);
    let expected: Vec<String> = input
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{v}#{}", i / 3 + 1))
        .collect();
    assert_eq!(out.committed_lines(), expected);
}

/// Keyed state, event time or side outputs before the call would run ahead of earlier
/// records: refused as a fatal failure naming the fix, before anything is committed.
#[test]
fn keyed_state_before_a_concurrent_call_is_refused() {
    let seen: StateSpec<u64> = StateSpec::new("seen");
    let out = MemorySink::new();
    let result = paused({
        let out = out.clone();
        async move {
            let flow = Flow::<Record>::new()
                .stateful(move |r: Record, cx| {
                    cx.state(&seen).put(1)?;
                    Ok(r)
                })
                .map_async(|r: Record| async move { Ok::<_, Failure>(r.value.to_vec()) })
                .concurrency(4);
            Pipeline::builder("refused")
                .source(VecSource::new(vec![records(10)]))
                .flow(flow)
                .sink_with("main", out, RawEncoder)
                .dead_letters(MemorySink::new())
                .build()
                .unwrap()
                .run_local()
                .await
        }
    });
    let err = result.expect_err("the run must fail");
    let text = err.to_string();
    assert!(text.contains("not_allowed_before_concurrent_call"), "{text}");
    assert!(text.contains("move this step after the map_async"), "{text}");
    assert!(out.committed_lines().is_empty());
}

/// A failed call goes to its stage's policy when its record's turn comes: a retry runs that
/// record again alone, while the calls of the records behind it are made once; a permanent
/// failure is dead-lettered; order holds.
#[test]
fn a_failed_call_retries_alone_and_the_calls_behind_it_are_made_once() {
    let meter = Meter::default();
    let failures_left = Rc::new(RefCell::new(HashMap::from([("r03".to_string(), 2u32)])));
    let (out, dead) = (MemorySink::new(), MemorySink::new());
    let summary = paused({
        let (meter, out, dead) = (meter.clone(), out.clone(), dead.clone());
        async move {
            let flow = Flow::<Record>::new()
                .map(|r: Record| String::from_utf8(r.value.to_vec()).unwrap())
                .map_async(move |v: String| {
                    let fail = match failures_left.borrow_mut().get_mut(&v) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            Some(Failure::transient("io", "connection reset"))
                        }
                        _ if v == "r07" => Some(Failure::permanent("bad_input", "404")),
                        _ => None,
                    };
                    let d = delay_of(&v);
                    meter.clone().call(v, d, fail)
                })
                .concurrency(4)
                .named("fetch")
                .map(|v: String| v.into_bytes());
            Pipeline::builder("retry-window")
                .source(VecSource::new(vec![records(12)]))
                .flow(flow)
                .sink_with("main", out, RawEncoder)
                .dead_letters(dead)
                .policies(retry_then_dead_letter(5))
                .build()
                .unwrap()
                .run_local()
                .await
        }
    });
    let s = summary.unwrap();
    assert_eq!((s.retries, s.dead_letters, s.records_out), (2, 1, 11));
    let expected: Vec<String> = records(12).into_iter().filter(|v| v != "r07").collect();
    assert_eq!(out.committed_lines(), expected);
    let calls = meter.calls.borrow();
    assert_eq!(calls["r03"], 3, "two failures, then success");
    assert!(
        calls.iter().all(|(v, &n)| v == "r03" || n == 1),
        "every other record called once: {calls:?}"
    );
    let stages: Vec<&str> = s.failures.iter().map(|f| f.stage.as_str()).collect();
    assert!(stages.iter().all(|st| *st == "fetch"), "{stages:?}");
}

/// Checkpoints taken while a record retries hold the position before it; the calls of the
/// records behind it are not in any checkpoint. A stop during the retries, then a second
/// run: every record out exactly once, in order.
#[test]
fn checkpoints_during_a_retry_hold_the_oldest_unfinished_record_and_a_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = MemorySink::new();
    let input = records(30);
    let run = |stop_after: Option<Duration>, fail: bool| {
        let (out, input) = (out.clone(), input.clone());
        let dir = dir.path().to_owned();
        paused(async move {
            let failing = Rc::new(Cell::new(fail));
            let flow = Flow::<Record>::new()
                .map(|r: Record| String::from_utf8(r.value.to_vec()).unwrap())
                .map_async(move |v: String| {
                    let fail = (failing.get() && v == "r12").then(|| Failure::transient("io", "reset"));
                    async move {
                        tokio::time::sleep(delay_of(&v)).await;
                        fail.map_or(Ok(v), Err)
                    }
                })
                .concurrency(6)
                .map(|v: String| v.into_bytes());
            let pipeline = Pipeline::builder("resume-window")
                .source(VecSource::new(vec![input]))
                .flow(flow)
                .sink_with("main", out, RawEncoder)
                .dead_letters(MemorySink::new())
                .checkpoints(FileCheckpointStore::new(&dir))
                .policies(retry_then_dead_letter(1000))
                .configure(|o| {
                    o.batch_size = 30;
                    o.retain = 100;
                    o.checkpoint_interval = Some(ms(300));
                })
                .build()
                .unwrap();
            if let Some(after) = stop_after {
                let stop = pipeline.shutdown_handle();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(after).await;
                    stop.trigger();
                });
            }
            // no virtual-time timeout here: time jumps ahead while the coordinator waits for
            // the checkpoint thread (a real thread), which would fire it
            pipeline.run_local().await
        })
    };
    let first = run(Some(Duration::from_secs(5)), true).unwrap();
    assert_eq!(first.outcome, keel::Outcome::Stopped);
    let before: Vec<String> = input[..12].to_vec();
    assert_eq!(
        out.committed_lines(),
        before,
        "everything before the retrying record, nothing after"
    );
    let store = FileCheckpointStore::new(dir.path());
    let ids = keel::CheckpointStore::list(&store).unwrap();
    assert!(ids.len() >= 3, "checkpoints during the retries: {ids:?}");
    for id in ids {
        let keel::checkpoint::ManifestRead::Valid(m) = keel::CheckpointStore::read(&store, id).unwrap() else {
            panic!("checkpoint {id}")
        };
        let position = m.partitions["p0"].position.as_u64().unwrap();
        assert!(
            position <= 12,
            "checkpoint {id} is past the retrying record: {position}"
        );
        assert_eq!(m.stats.records_in, position, "checkpoint {id}");
    }
    let second = run(None, false).unwrap();
    assert_eq!(second.outcome, keel::Outcome::Finished);
    assert_eq!(
        out.committed_lines(),
        input,
        "exactly once, in order, across the restart"
    );
}

/// A panic inside a concurrent call ends the run with a panic error, never a hang.
#[test]
fn a_panic_in_a_concurrent_call_ends_the_run() {
    let result = paused(async {
        let flow = Flow::<Record>::new()
            .map_async(|r: Record| async move {
                tokio::time::sleep(ms(10)).await;
                if &r.value[..] == b"r05" {
                    panic!("the call exploded");
                }
                Ok::<_, Failure>(r.value.to_vec())
            })
            .concurrency(4);
        let p = Pipeline::builder("panicky")
            .source(VecSource::new(vec![records(20)]))
            .flow(flow)
            .sink_with("main", MemorySink::new(), RawEncoder)
            .build()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(3600), p.run_local()).await
    });
    match result.expect("no hang") {
        Err(PipelineError::Panic { message, .. }) => assert!(message.contains("the call exploded"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// The window is sized by the call that runs ahead (the first concurrent one); a later
/// concurrent call runs one record at a time.
#[test]
fn the_first_concurrent_call_sizes_the_window() {
    let (first, second) = (Meter::default(), Meter::default());
    let out = MemorySink::new();
    let summary = paused({
        let (first, second, out) = (first.clone(), second.clone(), out.clone());
        async move {
            let flow = Flow::<Record>::new()
                .map(|r: Record| String::from_utf8(r.value.to_vec()).unwrap())
                .map_async(move |v: String| {
                    let d = delay_of(&v);
                    first.clone().call(v, d, None)
                })
                .concurrency(2)
                .map_async(move |v: String| second.clone().call(v, ms(5), None))
                .concurrency(16)
                .map(|v: String| v.into_bytes());
            Pipeline::builder("two-calls")
                .source(VecSource::new(vec![records(20)]))
                .flow(flow)
                .sink_with("main", out, RawEncoder)
                .build()
                .unwrap()
                .run_local()
                .await
        }
    });
    assert_eq!(summary.unwrap().records_out, 20);
    assert_eq!(out.committed_lines(), records(20));
    assert_eq!((first.max.get(), second.max.get()), (2, 1));
}
