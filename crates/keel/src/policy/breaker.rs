//! Circuit breakers: stop calling a dependency that keeps failing, and try again later.
//!
//! ```text
//!            failures >= threshold, or failure rate >= rate (with min calls), in window
//!   Closed ──────────────────────────────────────────────────────────────────► Open
//!     ▲                                                                          │ open_for
//!     │ `probes` successes in a row                                              ▼
//!     └──────────────────────────────── HalfOpen ◄───────────────────────────────┘
//!                                          │ a probe fails
//!                                          └──────────────────────────────► Open (again)
//! ```
//!
//! A call slower than `slow_call` counts as a failure. While the breaker is open the runtime
//! stops reading input instead of sending records that would fail to the dead-letter queue.
//! Every transition is logged and counted. Time is passed in (`now`, a monotonic duration),
//! so the state machine is tested without sleeping.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Open after this many failures within `window`.
    pub failures: u32,
    /// Or open when this fraction of calls within `window` failed (needs `min_calls`).
    pub failure_rate: Option<f64>,
    /// Calls needed within `window` before `failure_rate` applies.
    pub min_calls: u32,
    /// The window over which failures are counted.
    pub window: Duration,
    /// A successful call slower than this counts as a failure.
    pub slow_call: Option<Duration>,
    /// How long to stay open before probing.
    pub open_for: Duration,
    /// Successful probes needed to close again.
    pub probes: u32,
}

impl Default for BreakerConfig {
    /// 5 failures in 10 s open it for 5 s; one successful probe closes it.
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            failure_rate: None,
            min_calls: 10,
            window: Duration::from_secs(10),
            slow_call: None,
            open_for: Duration::from_secs(5),
            probes: 1,
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A limited number of probe calls go through.
    HalfOpen,
}

/// Whether a call may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Go ahead.
    Allowed,
    /// Go ahead as a probe of a half-open breaker.
    Probe,
    /// Wait this long, then ask again.
    Wait(Duration),
}

/// Counted transitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BreakerStats {
    /// Closed to open.
    pub opened: u64,
    /// Half-open back to open (a probe failed).
    pub reopened: u64,
    /// Open to half-open.
    pub half_opened: u64,
    /// Half-open to closed.
    pub closed: u64,
    /// Calls refused or delayed while open.
    pub rejected: u64,
}

/// A circuit breaker for one dependency.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    state: BreakerState,
    opened_at: Duration,
    probe_in_flight: bool,
    probe_successes: u32,
    /// (second, calls, failures) per second of the window.
    slots: Vec<(u64, u32, u32)>,
    stats: BreakerStats,
}

impl CircuitBreaker {
    /// A closed breaker called `name` (used in logs and metrics).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let secs = config.window.as_secs().max(1) as usize;
        CircuitBreaker {
            name: name.into(),
            config,
            state: BreakerState::Closed,
            opened_at: Duration::ZERO,
            probe_in_flight: false,
            probe_successes: 0,
            slots: vec![(u64::MAX, 0, 0); secs],
            stats: BreakerStats::default(),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Transition counts.
    pub fn stats(&self) -> BreakerStats {
        self.stats
    }

    fn transition(&mut self, to: BreakerState, now: Duration) {
        let from = self.state;
        self.state = to;
        match (from, to) {
            (BreakerState::Closed, BreakerState::Open) => self.stats.opened += 1,
            (BreakerState::HalfOpen, BreakerState::Open) => self.stats.reopened += 1,
            (BreakerState::Open, BreakerState::HalfOpen) => self.stats.half_opened += 1,
            (BreakerState::HalfOpen, BreakerState::Closed) => self.stats.closed += 1,
            _ => {}
        }
        if to == BreakerState::Open {
            self.opened_at = now;
        }
        self.probe_in_flight = false;
        self.probe_successes = 0;
        let level_warn = to == BreakerState::Open;
        if level_warn {
            tracing::warn!(breaker = %self.name, from = ?from, to = ?to, open_for_ms = self.config.open_for.as_millis() as u64, "circuit breaker opened: input paused");
        } else {
            tracing::info!(breaker = %self.name, from = ?from, to = ?to, "circuit breaker changed state");
        }
    }

    /// Asks whether a call may go ahead at `now`.
    pub fn allow(&mut self, now: Duration) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Allowed,
            BreakerState::Open => {
                let until = self.opened_at + self.config.open_for;
                if now >= until {
                    self.transition(BreakerState::HalfOpen, now);
                    self.probe_in_flight = true;
                    Permit::Probe
                } else {
                    self.stats.rejected += 1;
                    Permit::Wait(until - now)
                }
            }
            BreakerState::HalfOpen => {
                if self.probe_in_flight {
                    self.stats.rejected += 1;
                    Permit::Wait(self.config.open_for.min(Duration::from_millis(100)))
                } else {
                    self.probe_in_flight = true;
                    Permit::Probe
                }
            }
        }
    }

    /// Reports a call that succeeded after `took`.
    pub fn on_success(&mut self, now: Duration, took: Duration) {
        if self.config.slow_call.is_some_and(|s| took > s) {
            self.on_failure(now);
            return;
        }
        match self.state {
            BreakerState::HalfOpen => {
                self.probe_in_flight = false;
                self.probe_successes += 1;
                if self.probe_successes >= self.config.probes.max(1) {
                    self.clear_window();
                    self.transition(BreakerState::Closed, now);
                }
            }
            _ => self.slot(now).1 += 1,
        }
    }

    /// Reports a failed call.
    pub fn on_failure(&mut self, now: Duration) {
        match self.state {
            BreakerState::HalfOpen => self.transition(BreakerState::Open, now),
            BreakerState::Open => {}
            BreakerState::Closed => {
                let s = self.slot(now);
                s.1 += 1;
                s.2 += 1;
                let (calls, failures) = self.totals(now);
                let by_count = failures >= self.config.failures.max(1);
                let by_rate = self
                    .config
                    .failure_rate
                    .is_some_and(|r| calls >= self.config.min_calls && f64::from(failures) >= r * f64::from(calls));
                if by_count || by_rate {
                    self.transition(BreakerState::Open, now);
                }
            }
        }
    }

    fn clear_window(&mut self) {
        for s in &mut self.slots {
            *s = (u64::MAX, 0, 0);
        }
    }

    fn slot(&mut self, now: Duration) -> &mut (u64, u32, u32) {
        let sec = now.as_secs();
        let i = (sec % self.slots.len() as u64) as usize;
        if self.slots[i].0 != sec {
            self.slots[i] = (sec, 0, 0);
        }
        &mut self.slots[i]
    }

    fn totals(&self, now: Duration) -> (u32, u32) {
        let sec = now.as_secs();
        let oldest = sec.saturating_sub(self.slots.len() as u64 - 1);
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 >= oldest && s.0 <= sec)
            .fold((0, 0), |(c, f), s| (c + s.1, f + s.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn opens_after_failures_probes_and_closes() {
        let mut b = CircuitBreaker::new(
            "sink",
            BreakerConfig {
                failures: 3,
                open_for: s(5),
                ..Default::default()
            },
        );
        assert_eq!(b.allow(s(0)), Permit::Allowed);
        b.on_failure(s(0));
        b.on_failure(s(1));
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(s(2));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(s(3)), Permit::Wait(s(4)));
        assert_eq!(b.allow(s(7)), Permit::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // only one probe at a time
        assert!(matches!(b.allow(s(7)), Permit::Wait(_)));
        b.on_failure(s(7));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(s(12)), Permit::Probe);
        b.on_success(s(12), Duration::from_millis(5));
        assert_eq!(b.state(), BreakerState::Closed);
        let st = b.stats();
        assert_eq!((st.opened, st.reopened, st.half_opened, st.closed), (1, 1, 2, 1));
        assert_eq!(st.rejected, 2);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut b = CircuitBreaker::new(
            "x",
            BreakerConfig {
                failures: 3,
                window: s(10),
                ..Default::default()
            },
        );
        b.on_failure(s(0));
        b.on_failure(s(1));
        b.on_failure(s(20));
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(s(21));
        b.on_failure(s(22));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn failure_rate_needs_enough_calls() {
        let cfg = BreakerConfig {
            failures: 1000,
            failure_rate: Some(0.5),
            min_calls: 10,
            ..Default::default()
        };
        let mut b = CircuitBreaker::new("x", cfg);
        for _ in 0..4 {
            b.on_success(s(1), Duration::ZERO);
            b.on_failure(s(1));
        }
        assert_eq!(b.state(), BreakerState::Closed, "8 calls: not enough");
        b.on_success(s(1), Duration::ZERO);
        b.on_failure(s(1));
        assert_eq!(b.state(), BreakerState::Open, "5 of 10 failed");
    }

    #[test]
    fn slow_calls_count_as_failures() {
        let cfg = BreakerConfig {
            failures: 2,
            slow_call: Some(Duration::from_millis(100)),
            ..Default::default()
        };
        let mut b = CircuitBreaker::new("x", cfg);
        b.on_success(s(1), Duration::from_millis(500));
        b.on_success(s(1), Duration::from_millis(50));
        b.on_success(s(1), Duration::from_millis(500));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn several_probes_needed_to_close() {
        let cfg = BreakerConfig {
            failures: 1,
            probes: 2,
            open_for: s(1),
            ..Default::default()
        };
        let mut b = CircuitBreaker::new("x", cfg);
        b.on_failure(s(0));
        assert_eq!(b.allow(s(1)), Permit::Probe);
        b.on_success(s(1), Duration::ZERO);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.allow(s(1)), Permit::Probe);
        b.on_success(s(1), Duration::ZERO);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
