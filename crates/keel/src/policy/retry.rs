//! Retries: backoff schedules, jitter, limits, and a retry budget shared by the pipeline.
//!
//! Why a budget: during an outage every record fails, and a per-record retry policy alone
//! multiplies the load on the failing dependency by the number of attempts: a retry storm
//! that keeps it down. The budget lets retries be at most a fraction of recent first attempts
//! (plus a small floor per second), so an outage turns into fast fallbacks (a circuit breaker
//! or a pause) instead of a storm.
//!
//! Everything random or time-dependent is injectable ([`RandomSource`], explicit `now`
//! arguments), so schedules are tested deterministically.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How the delay grows between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `initial * multiplier^(attempt-1)`, capped at `max_delay`.
    Exponential {
        /// Delay before the first retry.
        initial: Duration,
        /// Growth factor (at least 1).
        multiplier: f64,
        /// Largest delay.
        max_delay: Duration,
    },
    /// The same delay every time.
    Constant {
        /// The delay.
        delay: Duration,
    },
}

/// How delays are randomised, so that many retrying clients do not fire in step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// The computed delay exactly.
    None,
    /// Uniform in `[0, delay]`.
    #[default]
    Full,
    /// `delay / 2` plus uniform in `[0, delay / 2]`.
    Equal,
    /// Uniform in `[initial, 3 * previous delay]`, capped (AWS "decorrelated jitter").
    Decorrelated,
}

/// A retry policy: backoff, jitter and limits. Valid by construction ([`RetryPolicy::new`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    jitter: Jitter,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
}

/// A retry policy that cannot work.
#[derive(Debug, Error, PartialEq)]
pub enum RetryConfigError {
    /// A delay is zero where it must be positive.
    #[error("the initial delay must be positive")]
    ZeroDelay,
    /// The multiplier is below 1 or not finite.
    #[error("the multiplier must be a finite number of at least 1 (got {0})")]
    Multiplier(f64),
    /// The cap is below the initial delay.
    #[error("max_delay ({max:?}) is below the initial delay ({initial:?})")]
    Cap {
        /// Initial delay.
        initial: Duration,
        /// Cap.
        max: Duration,
    },
    /// No attempt at all.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
}

impl Default for RetryPolicy {
    /// Exponential from 100 ms, doubling, capped at 10 s, full jitter, 5 attempts, 60 s.
    fn default() -> Self {
        RetryPolicy {
            backoff: Backoff::Exponential {
                initial: Duration::from_millis(100),
                multiplier: 2.0,
                max_delay: Duration::from_secs(10),
            },
            jitter: Jitter::Full,
            max_attempts: 5,
            max_elapsed: Some(Duration::from_secs(60)),
        }
    }
}

impl RetryPolicy {
    /// A policy; `max_attempts` counts the first attempt too.
    pub fn new(
        backoff: Backoff,
        jitter: Jitter,
        max_attempts: u32,
        max_elapsed: Option<Duration>,
    ) -> Result<Self, RetryConfigError> {
        match backoff {
            Backoff::Exponential {
                initial,
                multiplier,
                max_delay,
            } => {
                if initial.is_zero() {
                    return Err(RetryConfigError::ZeroDelay);
                }
                if !multiplier.is_finite() || multiplier < 1.0 {
                    return Err(RetryConfigError::Multiplier(multiplier));
                }
                if max_delay < initial {
                    return Err(RetryConfigError::Cap {
                        initial,
                        max: max_delay,
                    });
                }
            }
            Backoff::Constant { delay } => {
                if delay.is_zero() {
                    return Err(RetryConfigError::ZeroDelay);
                }
            }
        }
        if max_attempts == 0 {
            return Err(RetryConfigError::NoAttempts);
        }
        Ok(RetryPolicy {
            backoff,
            jitter,
            max_attempts,
            max_elapsed,
        })
    }

    /// Most attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn base(&self) -> Duration {
        match self.backoff {
            Backoff::Exponential { initial, .. } => initial,
            Backoff::Constant { delay } => delay,
        }
    }

    fn cap(&self) -> Duration {
        match self.backoff {
            Backoff::Exponential { max_delay, .. } => max_delay,
            Backoff::Constant { delay } => delay,
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), before jitter.
    pub fn raw_delay(&self, retry: u32) -> Duration {
        match self.backoff {
            Backoff::Constant { delay } => delay,
            Backoff::Exponential {
                initial,
                multiplier,
                max_delay,
            } => {
                let factor = multiplier.powi(retry.saturating_sub(1).min(1024) as i32);
                let secs = (initial.as_secs_f64() * factor).min(max_delay.as_secs_f64());
                Duration::from_secs_f64(secs)
            }
        }
    }

    /// Starts the schedule of one operation whose first attempt began at `started` (any
    /// monotonic clock, as a duration since its origin).
    pub fn start(&self, started: Duration) -> RetryState {
        RetryState {
            policy: *self,
            attempts: 1,
            started,
            previous: Duration::ZERO,
        }
    }
}

/// Randomness for jitter: uniform in `[0, 1)`.
pub trait RandomSource {
    /// The next number.
    fn next_f64(&mut self) -> f64;
}

/// A small, fast generator (SplitMix64); deterministic for a given seed.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// A generator seeded from the clock and the process id.
    pub fn from_entropy() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix(t ^ (u64::from(std::process::id()) << 32))
    }
}

impl RandomSource for SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where one operation stands in its retry schedule.
#[derive(Clone, Copy, Debug)]
pub struct RetryState {
    policy: RetryPolicy,
    attempts: u32,
    started: Duration,
    previous: Duration,
}

/// Why no further attempt is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// `max_attempts` attempts were made.
    Attempts(u32),
    /// The next attempt would start after `max_elapsed`.
    Elapsed(Duration),
}

impl RetryState {
    /// Attempts made so far (the first included).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// After a failed attempt at `now`: the delay before the next attempt, or why there is
    /// none. `retry_after` (from a throttled failure) is honoured as a lower bound.
    pub fn next_delay(
        &mut self,
        now: Duration,
        retry_after: Option<Duration>,
        rng: &mut dyn RandomSource,
    ) -> Result<Duration, GiveUp> {
        if self.attempts >= self.policy.max_attempts {
            return Err(GiveUp::Attempts(self.attempts));
        }
        let raw = self.policy.raw_delay(self.attempts);
        let cap = self.policy.cap();
        let mut delay = match self.policy.jitter {
            Jitter::None => raw,
            Jitter::Full => raw.mul_f64(rng.next_f64()),
            Jitter::Equal => raw / 2 + (raw / 2).mul_f64(rng.next_f64()),
            Jitter::Decorrelated => {
                let base = self.policy.base();
                let high = (self.previous.max(base) * 3).min(cap);
                base + (high.saturating_sub(base)).mul_f64(rng.next_f64())
            }
        };
        if let Some(ra) = retry_after {
            delay = delay.max(ra);
        }
        let elapsed = now.saturating_sub(self.started);
        if let Some(max) = self.policy.max_elapsed
            && elapsed + delay > max
        {
            return Err(GiveUp::Elapsed(elapsed));
        }
        self.attempts += 1;
        self.previous = delay;
        Ok(delay)
    }
}

/// A retry budget shared by every retrying operation of a pipeline: retries may be at most
/// `ratio` of the first attempts of the last `window`, plus `min_per_sec` per second.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    inner: Arc<Mutex<BudgetInner>>,
}

#[derive(Debug)]
struct BudgetInner {
    ratio: f64,
    min_per_sec: f64,
    window: Duration,
    /// (second, first attempts, retries) for the seconds of the window.
    slots: Vec<(u64, u64, u64)>,
    denied: u64,
    granted: u64,
}

impl RetryBudget {
    /// A budget: retries at most `ratio` of first attempts (0.1 = 10 %) over `window`, and
    /// at least `min_per_sec` per second whatever the traffic.
    pub fn new(ratio: f64, min_per_sec: f64, window: Duration) -> Self {
        let secs = window.as_secs().max(1) as usize;
        RetryBudget {
            inner: Arc::new(Mutex::new(BudgetInner {
                ratio: ratio.max(0.0),
                min_per_sec: min_per_sec.max(0.0),
                window: Duration::from_secs(secs as u64),
                slots: vec![(u64::MAX, 0, 0); secs],
                denied: 0,
                granted: 0,
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BudgetInner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Records a first attempt at `now` (a monotonic time).
    pub fn deposit(&self, now: Duration) {
        self.with(|b| b.slot(now).1 += 1);
    }

    /// Asks for one retry at `now`; true when granted (and counted).
    pub fn withdraw(&self, now: Duration) -> bool {
        self.with(|b| {
            let (firsts, retries) = b.totals(now);
            let allowed = b.ratio * firsts as f64 + b.min_per_sec * b.window.as_secs_f64();
            if (retries + 1) as f64 <= allowed {
                b.slot(now).2 += 1;
                b.granted += 1;
                true
            } else {
                b.denied += 1;
                false
            }
        })
    }

    /// Retries granted and denied since the start.
    pub fn counts(&self) -> (u64, u64) {
        self.with(|b| (b.granted, b.denied))
    }
}

impl BudgetInner {
    fn slot(&mut self, now: Duration) -> &mut (u64, u64, u64) {
        let sec = now.as_secs();
        let i = (sec % self.slots.len() as u64) as usize;
        if self.slots[i].0 != sec {
            self.slots[i] = (sec, 0, 0);
        }
        &mut self.slots[i]
    }

    fn totals(&self, now: Duration) -> (u64, u64) {
        let sec = now.as_secs();
        let oldest = sec.saturating_sub(self.slots.len() as u64 - 1);
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 >= oldest && s.0 <= sec)
            .fold((0, 0), |(f, r), s| (f + s.1, r + s.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl RandomSource for Fixed {
        fn next_f64(&mut self) -> f64 {
            self.0
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn exp(jitter: Jitter, attempts: u32) -> RetryPolicy {
        RetryPolicy::new(
            Backoff::Exponential {
                initial: ms(100),
                multiplier: 2.0,
                max_delay: ms(1000),
            },
            jitter,
            attempts,
            None,
        )
        .unwrap()
    }

    fn schedule(p: RetryPolicy, rng: &mut dyn RandomSource) -> Vec<Duration> {
        let mut s = p.start(Duration::ZERO);
        let mut out = Vec::new();
        let mut now = Duration::ZERO;
        while let Ok(d) = s.next_delay(now, None, rng) {
            now += d;
            out.push(d);
        }
        out
    }

    #[test]
    fn exponential_without_jitter_doubles_up_to_the_cap() {
        let got = schedule(exp(Jitter::None, 7), &mut Fixed(0.5));
        assert_eq!(got, vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
    }

    #[test]
    fn jitter_variants() {
        assert_eq!(schedule(exp(Jitter::Full, 3), &mut Fixed(0.5)), vec![ms(50), ms(100)]);
        assert_eq!(schedule(exp(Jitter::Full, 3), &mut Fixed(0.0)), vec![ms(0), ms(0)]);
        assert_eq!(schedule(exp(Jitter::Equal, 3), &mut Fixed(0.0)), vec![ms(50), ms(100)]);
        assert_eq!(schedule(exp(Jitter::Equal, 3), &mut Fixed(0.5)), vec![ms(75), ms(150)]);
        // decorrelated: uniform in [base, 3 * previous], capped
        let d = schedule(exp(Jitter::Decorrelated, 5), &mut Fixed(1.0));
        assert_eq!(d, vec![ms(300), ms(900), ms(1000), ms(1000)]);
        let d = schedule(exp(Jitter::Decorrelated, 3), &mut Fixed(0.0));
        assert_eq!(d, vec![ms(100), ms(100)]);
    }

    #[test]
    fn seeded_rng_is_deterministic_and_in_range() {
        let a = schedule(exp(Jitter::Full, 10), &mut SplitMix::new(7));
        let b = schedule(exp(Jitter::Full, 10), &mut SplitMix::new(7));
        assert_eq!(a, b);
        assert!(
            a.iter()
                .enumerate()
                .all(|(i, d)| *d <= exp(Jitter::None, 10).raw_delay(i as u32 + 1))
        );
    }

    #[test]
    fn constant_backoff_and_retry_after() {
        let p = RetryPolicy::new(Backoff::Constant { delay: ms(250) }, Jitter::None, 3, None).unwrap();
        let mut s = p.start(Duration::ZERO);
        let mut r = Fixed(0.0);
        assert_eq!(s.next_delay(Duration::ZERO, Some(ms(2000)), &mut r), Ok(ms(2000)));
        assert_eq!(s.next_delay(Duration::ZERO, Some(ms(10)), &mut r), Ok(ms(250)));
        assert_eq!(s.next_delay(Duration::ZERO, None, &mut r), Err(GiveUp::Attempts(3)));
    }

    #[test]
    fn max_elapsed_stops_the_schedule() {
        let p = RetryPolicy::new(Backoff::Constant { delay: ms(400) }, Jitter::None, 100, Some(ms(1000))).unwrap();
        let mut s = p.start(ms(0));
        let mut r = Fixed(0.0);
        assert_eq!(s.next_delay(ms(10), None, &mut r), Ok(ms(400)));
        assert_eq!(s.next_delay(ms(420), None, &mut r), Ok(ms(400)));
        assert_eq!(s.next_delay(ms(830), None, &mut r), Err(GiveUp::Elapsed(ms(830))));
    }

    #[test]
    fn invalid_policies_are_refused() {
        let e = |b| RetryPolicy::new(b, Jitter::None, 3, None).unwrap_err();
        assert_eq!(
            e(Backoff::Constant { delay: Duration::ZERO }),
            RetryConfigError::ZeroDelay
        );
        assert!(matches!(
            e(Backoff::Exponential {
                initial: ms(10),
                multiplier: 0.5,
                max_delay: ms(100)
            }),
            RetryConfigError::Multiplier(_)
        ));
        assert!(matches!(
            e(Backoff::Exponential {
                initial: ms(10),
                multiplier: 2.0,
                max_delay: ms(1)
            }),
            RetryConfigError::Cap { .. }
        ));
        assert_eq!(
            RetryPolicy::new(Backoff::Constant { delay: ms(1) }, Jitter::None, 0, None).unwrap_err(),
            RetryConfigError::NoAttempts
        );
    }

    #[test]
    fn budget_limits_retries_to_a_ratio_of_first_attempts() {
        let b = RetryBudget::new(0.1, 0.0, Duration::from_secs(10));
        let now = Duration::from_secs(100);
        for _ in 0..100 {
            b.deposit(now);
        }
        let granted = (0..50).filter(|_| b.withdraw(now)).count();
        assert_eq!(granted, 10);
        assert_eq!(b.counts(), (10, 40));
        // the window slides: 11 s later the old attempts no longer count
        assert!(!b.withdraw(now + Duration::from_secs(11)));
        b.deposit(now + Duration::from_secs(11));
        assert!(
            !b.withdraw(now + Duration::from_secs(11)),
            "0.1 of one attempt is less than one retry"
        );
        for _ in 0..9 {
            b.deposit(now + Duration::from_secs(11));
        }
        assert!(b.withdraw(now + Duration::from_secs(11)), "ten attempts earn one retry");
    }

    #[test]
    fn budget_floor_allows_a_few_retries_without_traffic() {
        let b = RetryBudget::new(0.0, 1.0, Duration::from_secs(5));
        let now = Duration::from_secs(7);
        assert_eq!((0..20).filter(|_| b.withdraw(now)).count(), 5);
    }
}
