//! The pipeline's retries and circuit breaker around any call of your own, sync or async.
//!
//! Inside a pipeline, keel retries a failed step by its policies. Code that calls a
//! dependency elsewhere (a crawler's login, a service's startup checks, a step that calls
//! two APIs and wants to retry only the first) wants the same behaviour on its own terms:
//!
//! ```
//! use std::time::Duration;
//! use keel::policy::call::Retry;
//! use keel::{Backoff, Failure, Jitter, RetryPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = RetryPolicy::new(
//!     Backoff::Exponential { initial: Duration::from_millis(1), multiplier: 2.0, max_delay: Duration::from_millis(10) },
//!     Jitter::Full,
//!     4,
//!     None,
//! ).unwrap();
//! let retry = Retry::new(policy);
//! let got = retry
//!     .call(|attempt| async move {
//!         if attempt < 3 { Err(Failure::transient("timeout", "no answer")) } else { Ok(attempt) }
//!     })
//!     .await;
//! assert_eq!(got.unwrap(), 3);
//! # }
//! ```
//!
//! What is retried follows the failure's class, after the optional [`Classifier`] (the same
//! rules a pipeline's `[[errors.classify]]` uses): `transient` and `throttled` failures are
//! retried (a throttled one waits at least its `retry_after`), `permanent` and `fatal` ones
//! are returned at once. A shared [`RetryBudget`] caps retries across every call that uses it.
//! [`Breaker`] wraps a [`CircuitBreaker`]: while it is open, calls fail fast with a
//! `throttled` failure (reason `breaker_open`) whose `retry_after` is the time left, so a
//! `Retry` around a `Breaker` waits for the probe instead of hammering the dependency.
//!
//! Time: the async calls sleep on tokio's clock (so tests may pause it); the sync ones on
//! the thread. Both measure elapsed time on the clock they sleep on.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::Classifier;
use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit};
use super::retry::{GiveUp, RandomSource, RetryBudget, RetryPolicy, SplitMix};
use crate::failure::{Class, Failure, FailureError};

/// Why a call gave up; the last failure is kept. `?` turns it into that failure (through
/// [`Failure`]'s `From`, which finds it as this error's source), so a step hands it to the
/// pipeline's policies unchanged.
#[derive(Debug, Error)]
#[error("{last} ({why}; {attempts} attempt(s))")]
pub struct RetryError {
    #[source]
    last: FailureError,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Why no further attempt was made.
    pub why: Stop,
}

impl RetryError {
    /// The last failure, classified.
    pub fn failure(&self) -> &Failure {
        &self.last.0
    }

    /// The last failure, classified.
    pub fn into_failure(self) -> Failure {
        self.last.0
    }
}

/// Why no further attempt was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The failure's class is not retried (`permanent`, `fatal`).
    NotRetried(Class),
    /// The policy's limit of attempts or elapsed time.
    GaveUp(GiveUp),
    /// The shared retry budget refused the retry.
    Budget,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::NotRetried(c) => write!(f, "{} failures are not retried", c.as_str()),
            Stop::GaveUp(GiveUp::Attempts(n)) => write!(f, "gave up after {n} attempts"),
            Stop::GaveUp(GiveUp::Elapsed(d)) => write!(f, "gave up after {d:?}"),
            Stop::Budget => f.write_str("the retry budget is spent"),
        }
    }
}

/// Retries calls by a [`RetryPolicy`]. Cheap to clone; clones share the budget and the
/// jitter's random source.
#[derive(Clone)]
pub struct Retry {
    policy: RetryPolicy,
    classifier: Option<Arc<Classifier>>,
    budget: Option<RetryBudget>,
    rng: Arc<Mutex<SplitMix>>,
}

impl Retry {
    /// Retries by `policy`, classes as the failures say, no budget.
    pub fn new(policy: RetryPolicy) -> Self {
        Retry {
            policy,
            classifier: None,
            budget: None,
            rng: Arc::new(Mutex::new(SplitMix::from_entropy())),
        }
    }

    /// Classifies each failure first (reclassify by reason, status or message).
    pub fn classify_with(mut self, classifier: Classifier) -> Self {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// Draws retries from a budget shared with other calls.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Jitter from this generator (deterministic tests).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.rng = Arc::new(Mutex::new(SplitMix::new(seed)));
        self
    }

    /// After a failed attempt: the delay before the next one, or why there is none.
    fn next(&self, state: &mut super::retry::RetryState, f: &mut Failure, now: Duration) -> Result<Duration, Stop> {
        if let Some(c) = &self.classifier {
            c.apply(f);
        }
        if !matches!(f.class, Class::Transient | Class::Throttled) {
            return Err(Stop::NotRetried(f.class));
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let delay = state
            .next_delay(now, f.retry_after, &mut *rng as &mut dyn RandomSource)
            .map_err(Stop::GaveUp)?;
        if let Some(b) = &self.budget
            && !b.withdraw(now)
        {
            return Err(Stop::Budget);
        }
        Ok(delay)
    }

    /// Calls `f(attempt)` (1 for the first) until it succeeds or the policy gives up.
    pub async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, RetryError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let origin = tokio::time::Instant::now();
        let now = || origin.elapsed();
        if let Some(b) = &self.budget {
            b.deposit(now());
        }
        let mut state = self.policy.start(now());
        loop {
            let attempt = state.attempts();
            match f(attempt).await {
                Ok(v) => return Ok(v),
                Err(mut failure) => match self.next(&mut state, &mut failure, now()) {
                    Ok(delay) => tokio::time::sleep(delay).await,
                    Err(why) => {
                        return Err(RetryError {
                            last: FailureError(failure),
                            attempts: attempt,
                            why,
                        });
                    }
                },
            }
        }
    }

    /// [`Retry::call`] for blocking code: sleeps on the calling thread.
    pub fn call_sync<T, F>(&self, mut f: F) -> Result<T, RetryError>
    where
        F: FnMut(u32) -> Result<T, Failure>,
    {
        let origin = std::time::Instant::now();
        let now = || origin.elapsed();
        if let Some(b) = &self.budget {
            b.deposit(now());
        }
        let mut state = self.policy.start(now());
        loop {
            let attempt = state.attempts();
            match f(attempt) {
                Ok(v) => return Ok(v),
                Err(mut failure) => match self.next(&mut state, &mut failure, now()) {
                    Ok(delay) => std::thread::sleep(delay),
                    Err(why) => {
                        return Err(RetryError {
                            last: FailureError(failure),
                            attempts: attempt,
                            why,
                        });
                    }
                },
            }
        }
    }
}

/// A circuit breaker around calls to one dependency. Cheap to clone; clones share it.
///
/// `transient`, `throttled` and `fatal` failures count against the dependency; `permanent`
/// ones (bad input) do not. While open, a call fails at once with a `throttled` failure,
/// reason `breaker_open`, `retry_after` = the time until the next probe.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Mutex<CircuitBreaker>>,
    /// tokio's clock: std's outside a runtime, the paused one in tests that pause it.
    origin: tokio::time::Instant,
}

impl Breaker {
    /// A closed breaker called `name`.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        Breaker {
            inner: Arc::new(Mutex::new(CircuitBreaker::new(name, config))),
            origin: tokio::time::Instant::now(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut CircuitBreaker) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Where it stands.
    pub fn state(&self) -> BreakerState {
        self.with(|b| b.state())
    }

    /// Counted transitions and rejections.
    pub fn stats(&self) -> super::breaker::BreakerStats {
        self.with(|b| b.stats())
    }

    fn admit(&self, now: Duration) -> Result<(), Failure> {
        match self.with(|b| b.allow(now)) {
            Permit::Allowed | Permit::Probe => Ok(()),
            Permit::Wait(d) => Err(Failure::throttled(
                "breaker_open",
                format!("circuit breaker `{}` is open", self.with(|b| b.name().to_owned())),
                Some(d),
            )),
        }
    }

    fn record<T>(&self, result: &Result<T, Failure>, start: Duration, now: Duration) {
        self.with(|b| match result {
            Ok(_) => b.on_success(now, now.saturating_sub(start)),
            Err(f) if f.class == Class::Permanent => b.on_success(now, Duration::ZERO),
            Err(_) => b.on_failure(now),
        });
    }

    /// Runs `f` if the breaker lets it, and counts its outcome.
    pub async fn call<T, Fut>(&self, f: impl FnOnce() -> Fut) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        let start = self.origin.elapsed();
        self.admit(start)?;
        let result = f().await;
        self.record(&result, start, self.origin.elapsed());
        result
    }

    /// [`Breaker::call`] for blocking code.
    pub fn call_sync<T>(&self, f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
        let start = self.origin.elapsed();
        self.admit(start)?;
        let result = f();
        self.record(&result, start, self.origin.elapsed());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::policy::{Backoff, Jitter};

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy::new(
            Backoff::Exponential {
                initial: Duration::from_millis(100),
                multiplier: 2.0,
                max_delay: Duration::from_secs(1),
            },
            Jitter::None,
            attempts,
            None,
        )
        .unwrap()
    }

    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn transient_failures_are_retried_on_the_backoff_schedule_until_success() {
        paused().block_on(async {
            let start = tokio::time::Instant::now();
            let times = std::cell::RefCell::new(Vec::new());
            let got = Retry::new(policy(5))
                .call(|attempt| {
                    times.borrow_mut().push(start.elapsed().as_millis());
                    async move {
                        if attempt < 4 {
                            Err(Failure::transient("timeout", "slow"))
                        } else {
                            Ok("done")
                        }
                    }
                })
                .await;
            assert_eq!(got.unwrap(), "done");
            assert_eq!(*times.borrow(), vec![0, 100, 300, 700], "100, 200, 400 ms apart");
        });
    }

    #[test]
    fn permanent_failures_are_not_retried_and_exhaustion_keeps_the_last_failure() {
        paused().block_on(async {
            let calls = Cell::new(0);
            let err = Retry::new(policy(5))
                .call(|_| {
                    calls.set(calls.get() + 1);
                    async { Err::<(), _>(Failure::permanent("bad_input", "no")) }
                })
                .await
                .unwrap_err();
            assert_eq!((calls.get(), err.why), (1, Stop::NotRetried(Class::Permanent)));

            let err = Retry::new(policy(3))
                .call(|a| async move { Err::<(), _>(Failure::transient("timeout", format!("try {a}"))) })
                .await
                .unwrap_err();
            assert_eq!(err.why, Stop::GaveUp(GiveUp::Attempts(3)));
            assert_eq!(err.attempts, 3);
            assert_eq!(err.failure().message, "try 3");
            let f: Failure = err.into();
            assert_eq!(
                (f.reason.as_ref(), f.class),
                ("timeout", Class::Transient),
                "`?` keeps the failure"
            );
        });
    }

    #[test]
    fn a_classifier_decides_and_retry_after_is_honoured() {
        use crate::policy::ClassifyRule;
        paused().block_on(async {
            let rule = ClassifyRule {
                status: Some(vec![409]),
                class: Class::Transient,
                ..Default::default()
            };
            let start = tokio::time::Instant::now();
            let got = Retry::new(policy(3))
                .classify_with(Classifier::new(vec![rule]))
                .call(|attempt| async move {
                    match attempt {
                        1 => Err(Failure::permanent("conflict", "409").with_status(409)),
                        2 => Err(Failure::throttled("rate_limited", "429", Some(Duration::from_secs(3)))),
                        _ => Ok(attempt),
                    }
                })
                .await
                .unwrap();
            assert_eq!(got, 3, "a 409 reclassified as transient is retried");
            assert_eq!(start.elapsed(), Duration::from_millis(100) + Duration::from_secs(3));
        });
    }

    #[test]
    fn a_shared_budget_refuses_retries_beyond_its_share() {
        let budget = RetryBudget::new(0.0, 1.0, Duration::from_secs(1));
        let retry = Retry::new(policy(10)).budget(budget.clone());
        let calls = Cell::new(0);
        let err = retry
            .call_sync(|_| {
                calls.set(calls.get() + 1);
                Err::<(), _>(Failure::transient("down", "down"))
            })
            .unwrap_err();
        assert_eq!(err.why, Stop::Budget);
        assert_eq!(calls.get(), 2, "one retry per second of window, then refused");
        assert_eq!(budget.counts(), (1, 1));
    }

    #[test]
    fn an_open_breaker_fails_fast_and_a_retry_around_it_waits_for_the_probe() {
        paused().block_on(async {
            let config = BreakerConfig {
                failures: 2,
                open_for: Duration::from_millis(500),
                ..Default::default()
            };
            let breaker = Breaker::new("api", config);
            let calls = Cell::new(0);
            let down = Cell::new(true);
            let call = || {
                calls.set(calls.get() + 1);
                let down = down.get();
                async move {
                    if down {
                        Err(Failure::transient("unavailable", "503"))
                    } else {
                        Ok(())
                    }
                }
            };
            for _ in 0..2 {
                assert!(breaker.call(call).await.is_err());
            }
            assert_eq!(breaker.state(), BreakerState::Open);
            let fast = breaker.call(call).await.unwrap_err();
            assert_eq!(
                (fast.reason.as_ref(), calls.get()),
                ("breaker_open", 2),
                "not called while open"
            );
            down.set(false);
            // the retry honours the breaker's retry_after (500 ms, more than its own 100 ms)
            // and its next attempt is the probe, which closes the breaker
            let start = tokio::time::Instant::now();
            Retry::new(policy(5)).call(|_| breaker.call(call)).await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_millis(500));
            assert_eq!(calls.get(), 3, "the probe is the only call after the outage");
            assert_eq!(breaker.state(), BreakerState::Closed);
            assert_eq!(breaker.stats().opened, 1);
        });
    }
}
