//! `keel queue health`: a verdict on a queue's sizes, with its reasons.
//!
//! - **stalled**: a ready job has waited longer than `--max-oldest-age`, or a job is held by
//!   a lease that ran out (its worker died or stalled, and no worker is taking jobs to put it
//!   back);
//! - **degraded**: more than `--max-dead` jobs are in the dead set;
//! - **ok** otherwise.
//!
//! Every condition that holds is a reason; the worst one sets the status.

use std::time::Duration;

use keel::queue::QueueStats;

/// The thresholds of a verdict.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// More dead jobs than this is degraded.
    pub max_dead: u64,
    /// A ready job waiting longer than this is stalled.
    pub max_oldest_age: Duration,
}

/// A verdict, worst last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing wrong.
    Ok,
    /// Dead jobs beyond the threshold.
    Degraded,
    /// Jobs are not moving.
    Stalled,
}

impl Status {
    /// The name shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Stalled => "stalled",
        }
    }
}

/// The verdict and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The worst status of the reasons (ok without any).
    pub status: Status,
    /// One sentence per condition that holds.
    pub reasons: Vec<String>,
    /// How long the oldest ready job has waited (ms), if any is ready.
    pub oldest_wait_ms: Option<u64>,
}

/// The verdict on `stats` at `now_ms` (on the clock of the stats' times).
pub fn assess(stats: &QueueStats, t: &Thresholds, now_ms: u64) -> Health {
    let mut status = Status::Ok;
    let mut reasons = Vec::new();
    let oldest_wait_ms = stats.oldest_ready_since_ms.map(|since| now_ms.saturating_sub(since));
    if let Some(wait) = oldest_wait_ms.filter(|w| *w > keel::ledger::ms(t.max_oldest_age)) {
        status = status.max(Status::Stalled);
        reasons.push(format!(
            "the oldest ready job has waited {:.1}s, more than --max-oldest-age {:?}: are workers running?",
            wait as f64 / 1000.0,
            t.max_oldest_age
        ));
    }
    if stats.expired_leases > 0 {
        status = status.max(Status::Stalled);
        reasons.push(format!(
            "{} job(s) held by a worker whose lease ran out (the worker died or stalled); the next \
             worker to take jobs runs them again",
            stats.expired_leases
        ));
    }
    if stats.dead > t.max_dead {
        status = status.max(Status::Degraded);
        reasons.push(format!(
            "{} dead job(s), more than --max-dead {}: see `keel queue dead`",
            stats.dead, t.max_dead
        ));
    }
    Health {
        status,
        reasons,
        oldest_wait_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        max_dead: 2,
        max_oldest_age: Duration::from_secs(60),
    };

    #[test]
    fn each_threshold_is_a_reason_and_the_worst_sets_the_status() {
        let mut s = QueueStats::default();
        assert_eq!(assess(&s, &T, 1_000_000).status, Status::Ok);
        s.dead = 2;
        assert_eq!(assess(&s, &T, 1_000_000).status, Status::Ok, "at the threshold");
        s.dead = 3;
        let h = assess(&s, &T, 1_000_000);
        assert_eq!((h.status, h.reasons.len()), (Status::Degraded, 1));
        assert!(h.reasons[0].contains("3 dead"), "{h:?}");
        s.oldest_ready_since_ms = Some(1_000_000 - 60_000);
        assert_eq!(assess(&s, &T, 1_000_000).status, Status::Degraded, "exactly the age");
        s.oldest_ready_since_ms = Some(1_000_000 - 60_001);
        let h = assess(&s, &T, 1_000_000);
        assert_eq!(
            (h.status, h.reasons.len(), h.oldest_wait_ms),
            (Status::Stalled, 2, Some(60_001))
        );
        let s = QueueStats {
            expired_leases: 1,
            active: 1,
            ..QueueStats::default()
        };
        let h = assess(&s, &T, 1_000_000);
        assert_eq!(h.status, Status::Stalled);
        assert!(h.reasons[0].contains("lease ran out"), "{h:?}");
    }
}
