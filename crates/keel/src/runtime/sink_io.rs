//! Writing to sinks through retries and a circuit breaker.
//!
//! A transient or throttled write failure is retried with the sink retry schedule. Each
//! failure is also reported to the sink's breaker; once it opens, the pipeline stops reading
//! input (the pause gate) and the write waits for the breaker's probe instead of retrying,
//! so an outage costs a handful of calls, not a storm, and no healthy record is
//! dead-lettered. A permanent failure, or retries that run out without a breaker to wait
//! on, reject the batch: its records then go to the action of the sink's stage.

use tokio::time::Instant;

use super::PipelineError;
use super::shared::RuntimeShared;
use crate::failure::{Class, Failure, reason};
use crate::policy::{BreakerState, Permit};
use crate::sink::{OutBatch, SinkError};

/// How a write ended.
pub(crate) enum Written {
    /// The sink took the batch.
    Done,
    /// The sink refused the batch; its records need the stage's action.
    Rejected(Failure),
}

fn classify_sink_error(e: &SinkError) -> Failure {
    match e {
        SinkError::Rejected(f) => f.clone(),
        SinkError::Io { source, .. } => {
            let mut f = crate::failure::classify_io(source);
            f.message = e.to_string();
            f
        }
        SinkError::PreCommit(m) => Failure::fatal("corrupt_precommit", m.clone()),
        SinkError::Fatal(m) => Failure::fatal(reason::SINK_BROKEN, m.clone()),
        SinkError::Other(m) => Failure::transient(reason::SINK_REJECTED, m.clone()),
    }
}

/// Writes `batch` of epoch `epoch` to sink number `index`, with retries and the breaker.
pub(crate) async fn write(
    rt: &RuntimeShared,
    index: usize,
    epoch: u64,
    batch: &OutBatch,
) -> Result<Written, PipelineError> {
    let handle = &rt.sinks[index];
    let mut schedule = None;
    loop {
        if let Some(b) = &handle.breaker {
            let permit = {
                let mut b = b.borrow_mut();
                let before = b.state();
                let permit = b.allow(rt.now());
                if b.state() != before {
                    rt.metrics.breaker(b.name(), b.state(), false, false);
                }
                permit
            };
            if let Permit::Wait(d) = permit {
                rt.pause_until(Instant::now() + d, "circuit breaker open");
                let _held = rt.held.enter();
                tokio::time::sleep(d).await;
                continue;
            }
        }
        let started = Instant::now();
        let result = if crate::crash::fail_at("sink_write") {
            Err(SinkError::io(
                format!("writing to sink `{}` (KEEL_FAIL_AT)", handle.name),
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            ))
        } else {
            let mut sink = handle.sink.lock().await;
            super::catch_panic(|| handle.name.clone(), sink.write(epoch, batch)).await?
        };
        let now = rt.now();
        let e = match result {
            Ok(()) => {
                if let Some(b) = &handle.breaker {
                    let mut b = b.borrow_mut();
                    let before = b.state();
                    b.on_success(now, started.elapsed());
                    if b.state() != before {
                        rt.metrics.breaker(b.name(), b.state(), false, false);
                    }
                }
                handle.written.increment(batch.len() as u64);
                return Ok(Written::Done);
            }
            Err(e) => e,
        };
        let mut f = classify_sink_error(&e).with_stage(handle.name.clone());
        rt.policies.classifier.apply(&mut f);
        rt.counters.sink_failures.set(rt.counters.sink_failures.get() + 1);
        rt.metrics.sink_failure(&handle.name, f.class.as_str());
        match f.class {
            Class::Fatal => {
                return Err(PipelineError::Sink {
                    sink: handle.name.clone(),
                    source: e,
                });
            }
            Class::Permanent => {
                if f.reason == reason::IO {
                    f.reason = reason::SINK_REJECTED.into();
                }
                return Ok(Written::Rejected(f));
            }
            Class::Transient | Class::Throttled => {
                tracing::debug!(sink = %handle.name, error = %e, "sink write failed");
                if let Some(b) = &handle.breaker {
                    let mut b = b.borrow_mut();
                    let before = b.state();
                    b.on_failure(now);
                    let opened = before != BreakerState::Open && b.state() == BreakerState::Open;
                    rt.metrics.breaker(b.name(), b.state(), opened, true);
                    if b.state() == BreakerState::Open {
                        // the breaker paces the calls from now on
                        schedule = None;
                        continue;
                    }
                }
                let st = schedule.get_or_insert_with(|| rt.policies.sink_retry.start(now));
                let next = st.next_delay(now, f.retry_after, &mut *rt.rng.borrow_mut());
                match next {
                    Ok(d) => {
                        rt.counters.sink_retries.set(rt.counters.sink_retries.get() + 1);
                        rt.metrics.sink_retry(&handle.name);
                        let _held = rt.held.enter();
                        tokio::time::sleep(d).await;
                    }
                    Err(_) => {
                        let attempts = st.attempts();
                        let was = format!("{}: {}", f.reason, f.message);
                        f.chain.insert(0, was);
                        f.reason = reason::RETRIES_EXHAUSTED.into();
                        f.message = format!("sink `{}` failed {attempts} times: {e}", handle.name);
                        return Ok(Written::Rejected(f));
                    }
                }
            }
        }
    }
}
