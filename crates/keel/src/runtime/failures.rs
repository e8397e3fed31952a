//! Failure accounting of a run: counts by reason, stage and action (for the final report),
//! the error budget (dead letters per window) and the dead-letter rate limit.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::failure::Failure;
use crate::metrics::RunMetrics;
use crate::policy::ErrorBudget;

/// How many failures of one kind a run saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailureCount {
    /// The reason.
    pub reason: String,
    /// The stage.
    pub stage: String,
    /// The action finally taken (`dead_letter`, `skip`, `retry`, ...).
    pub action: String,
    /// How many times.
    pub count: u64,
}

#[derive(Default)]
struct Window {
    /// (second, records, dead letters) per second.
    slots: Vec<(u64, u64, u64)>,
}

impl Window {
    fn slot(&mut self, sec: u64) -> &mut (u64, u64, u64) {
        let n = self.slots.len() as u64;
        let i = (sec % n) as usize;
        if self.slots[i].0 != sec {
            self.slots[i] = (sec, 0, 0);
        }
        &mut self.slots[i]
    }

    fn totals(&self, sec: u64) -> (u64, u64) {
        let oldest = sec.saturating_sub(self.slots.len() as u64 - 1);
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 >= oldest && s.0 <= sec)
            .fold((0, 0), |(r, d), s| (r + s.1, d + s.2))
    }
}

struct Bucket {
    rate: f64,
    tokens: f64,
    at: Duration,
}

/// Failure accounting, on the worker thread.
pub(crate) struct FailureLog {
    counts: RefCell<BTreeMap<(String, String, &'static str), u64>>,
    budget: Option<ErrorBudget>,
    window: RefCell<Window>,
    bucket: RefCell<Option<Bucket>>,
    metrics: RunMetrics,
}

impl FailureLog {
    pub(crate) fn new(budget: Option<ErrorBudget>, dead_letter_rate: Option<f64>, metrics: RunMetrics) -> Self {
        let secs = budget.map_or(1, |b| b.window.as_secs().max(1)) as usize;
        FailureLog {
            counts: RefCell::new(BTreeMap::new()),
            budget,
            window: RefCell::new(Window {
                slots: vec![(u64::MAX, 0, 0); secs],
            }),
            bucket: RefCell::new(dead_letter_rate.filter(|r| *r > 0.0).map(|rate| Bucket {
                rate,
                tokens: rate.max(1.0),
                at: Duration::ZERO,
            })),
            metrics,
        }
    }

    /// Counts a failure and the action taken for it.
    pub(crate) fn record(&self, f: &Failure, action: &'static str) {
        self.metrics.failure(f, action);
        *self
            .counts
            .borrow_mut()
            .entry((f.reason.to_string(), f.stage.clone(), action))
            .or_default() += 1;
    }

    /// Counts records handled at `now` (for the error budget's ratio).
    pub(crate) fn handled(&self, n: u64, now: Duration) {
        if self.budget.is_some() && n > 0 {
            self.window.borrow_mut().slot(now.as_secs()).1 += n;
        }
    }

    /// Counts a dead letter at `now`; returns a description when the error budget is now
    /// exceeded.
    pub(crate) fn dead_letter(&self, now: Duration) -> Option<String> {
        let b = self.budget?;
        let sec = now.as_secs();
        let mut w = self.window.borrow_mut();
        w.slot(sec).2 += 1;
        let (records, dead) = w.totals(sec);
        let window = b.window.as_secs().max(1);
        let by_count = b.max_count.map_or(0.0, |max| dead as f64 / max.max(1) as f64);
        let by_ratio = match b.max_ratio {
            Some(r) if records >= b.min_records && records > 0 && r > 0.0 => dead as f64 / records as f64 / r,
            _ => 0.0,
        };
        self.metrics.error_budget(by_count.max(by_ratio));
        if let Some(max) = b.max_count
            && dead > max
        {
            return Some(format!("{dead} dead letters in the last {window}s (budget: {max})"));
        }
        if let Some(ratio) = b.max_ratio
            && records >= b.min_records
            && records > 0
            && dead as f64 > ratio * records as f64
        {
            return Some(format!(
                "{:.1} % dead letters in the last {window}s ({dead} of {records} records; budget: {:.1} %)",
                dead as f64 * 100.0 / records as f64,
                ratio * 100.0
            ));
        }
        None
    }

    /// Takes one token of the dead-letter rate limit at `now`; returns how long to wait
    /// first when there is none.
    pub(crate) fn dead_letter_delay(&self, now: Duration) -> Option<Duration> {
        let mut guard = self.bucket.borrow_mut();
        let b = guard.as_mut()?;
        let burst = b.rate.max(1.0);
        b.tokens = (b.tokens + (now.saturating_sub(b.at)).as_secs_f64() * b.rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            let wait = Duration::from_secs_f64((1.0 - b.tokens) / b.rate);
            b.tokens -= 1.0;
            Some(wait)
        }
    }

    /// Every count, most frequent first.
    pub(crate) fn summary(&self) -> Vec<FailureCount> {
        let mut v: Vec<FailureCount> = self
            .counts
            .borrow()
            .iter()
            .map(|((reason, stage, action), n)| FailureCount {
                reason: reason.clone(),
                stage: stage.clone(),
                action: (*action).to_owned(),
                count: *n,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BudgetAction;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ratio_budget_needs_enough_records() {
        let log = FailureLog::new(
            Some(ErrorBudget {
                max_ratio: Some(0.05),
                max_count: None,
                window: s(10),
                min_records: 100,
                action: BudgetAction::Abort,
            }),
            None,
            RunMetrics::new("test"),
        );
        log.handled(50, s(1));
        assert!(log.dead_letter(s(1)).is_none(), "not enough records yet");
        for _ in 0..3 {
            assert!(log.dead_letter(s(1)).is_none());
        }
        log.handled(50, s(2));
        assert!(
            log.dead_letter(s(2)).is_none(),
            "5 of 100 is exactly the budget, not above it"
        );
        assert!(log.dead_letter(s(2)).unwrap().contains("6.0 % dead letters"));
    }

    #[test]
    fn count_budget_and_window() {
        let log = FailureLog::new(
            Some(ErrorBudget {
                max_ratio: None,
                max_count: Some(2),
                window: s(5),
                min_records: 0,
                action: BudgetAction::Pause,
            }),
            None,
            RunMetrics::new("test"),
        );
        assert!(log.dead_letter(s(0)).is_none());
        assert!(log.dead_letter(s(1)).is_none());
        assert!(log.dead_letter(s(2)).unwrap().contains("3 dead letters"));
        assert!(log.dead_letter(s(10)).is_none(), "the window moved on");
    }

    #[test]
    fn rate_limit_spaces_dead_letters() {
        let log = FailureLog::new(None, Some(2.0), RunMetrics::new("test"));
        assert_eq!(log.dead_letter_delay(s(0)), None);
        assert_eq!(log.dead_letter_delay(s(0)), None);
        let wait = log.dead_letter_delay(s(0)).unwrap();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(log.dead_letter_delay(s(5)), None);
    }

    #[test]
    fn summary_counts_by_reason_stage_and_action() {
        let log = FailureLog::new(None, None, RunMetrics::new("test"));
        let f = Failure::permanent("malformed", "x").with_stage("parse");
        log.record(&f, "dead_letter");
        log.record(&f, "dead_letter");
        log.record(&Failure::transient("io", "y").with_stage("enrich"), "retry");
        let s = log.summary();
        assert_eq!(
            s[0],
            FailureCount {
                reason: "malformed".into(),
                stage: "parse".into(),
                action: "dead_letter".into(),
                count: 2
            }
        );
        assert_eq!(s.len(), 2);
    }
}
