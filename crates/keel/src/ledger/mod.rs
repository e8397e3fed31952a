//! The ingestion ledger: which units of work (files, models, operations) a pipeline has
//! processed, with their checksums, so that reruns skip what is done and never load a unit
//! twice.
//!
//! A unit is identified by its pipeline, scope (`file`, `model`, ...) and key (a file name).
//! Before processing a unit a worker *claims* it: the ledger atomically decides whether to
//! skip it (completed, checksum unchanged), take it (new, changed, failed, pending, or left
//! in progress by a crashed worker whose lease expired), or leave it to the worker that
//! holds it ([`decide`], a pure function every backend applies inside one transaction).
//! After the unit's output is committed the worker marks it completed; a unit that fails is
//! marked failed with its error and taken again by the next run. Completing or failing is
//! fenced by the owner: a worker whose lease was taken over cannot mark the unit.
//!
//! Backends: SQLite (embedded default) and PostgreSQL (several workers), both in
//! `keel-connectors`, both tested by one suite.

pub mod checksum;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use checksum::{Algorithm, Fingerprint};

/// Where a unit stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Known, not started (or sent back by `retry`).
    Pending,
    /// Claimed by a worker.
    InProgress,
    /// Processed and its output committed.
    Completed,
    /// Processing failed; the next run takes it again.
    Failed,
}

impl Status {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "in_progress" => Status::InProgress,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Identifies a unit of work.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitRef {
    /// The pipeline.
    pub pipeline: String,
    /// The kind of unit: `file`, `model`, `operation`, ...
    pub scope: String,
    /// The unit within the scope (a file name).
    pub key: String,
}

impl UnitRef {
    /// A unit.
    pub fn new(pipeline: impl Into<String>, scope: impl Into<String>, key: impl Into<String>) -> Self {
        UnitRef {
            pipeline: pipeline.into(),
            scope: scope.into(),
            key: key.into(),
        }
    }
}

/// A unit as the ledger records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Which unit.
    #[serde(flatten)]
    pub unit: UnitRef,
    /// Its fingerprint when last claimed.
    pub fingerprint: Fingerprint,
    /// Where it stands.
    pub status: Status,
    /// Claims so far.
    pub attempts: u32,
    /// The last error, for failed units.
    pub last_error: Option<String>,
    /// Free metadata (records written, dead letters, ...).
    pub metadata: serde_json::Value,
    /// The worker holding it (in progress only).
    pub owner: Option<String>,
    /// Until when the owner's claim holds (ms since the Unix epoch).
    pub lease_until_ms: Option<u64>,
    /// Last claim (ms).
    pub started_ms: Option<u64>,
    /// Last completion or failure (ms).
    pub finished_ms: Option<u64>,
    /// Last change (ms).
    pub updated_ms: u64,
}

/// What a claim decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Process the unit; `attempt` counts claims, `why` says what made it necessary.
    Process {
        /// Claims so far, this one included.
        attempt: u32,
        /// Why.
        why: Why,
    },
    /// Completed with the same checksum: nothing to do.
    Skip,
    /// Another worker holds it.
    Busy {
        /// The worker.
        owner: String,
        /// Until when (ms).
        until_ms: u64,
    },
}

/// Why a unit is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Never seen.
    New,
    /// Completed before, but its content changed: its old output is replaced.
    Changed,
    /// It failed before.
    Failed,
    /// Pending (new, or sent back by `retry`).
    Pending,
    /// Left in progress by this worker (a restart after a crash).
    ResumeOwn,
    /// Left in progress by a worker whose lease expired.
    TakeOver,
}

/// The decision of a claim, from the current row. Pure: every backend runs it inside the
/// transaction that holds the row lock.
pub fn decide(existing: Option<&Unit>, fp: &Fingerprint, worker: &str, now_ms: u64) -> Claim {
    let Some(u) = existing else {
        return Claim::Process {
            attempt: 1,
            why: Why::New,
        };
    };
    let next = u.attempts.saturating_add(1);
    match u.status {
        Status::Completed if u.fingerprint.same_content(fp) => Claim::Skip,
        Status::Completed => Claim::Process {
            attempt: next,
            why: Why::Changed,
        },
        Status::Failed => Claim::Process {
            attempt: next,
            why: Why::Failed,
        },
        Status::Pending => Claim::Process {
            attempt: next,
            why: Why::Pending,
        },
        Status::InProgress => match (&u.owner, u.lease_until_ms) {
            (Some(o), _) if o == worker => Claim::Process {
                attempt: next,
                why: Why::ResumeOwn,
            },
            (Some(o), Some(until)) if until > now_ms => Claim::Busy {
                owner: o.clone(),
                until_ms: until,
            },
            _ => Claim::Process {
                attempt: next,
                why: Why::TakeOver,
            },
        },
    }
}

/// Which units an operation concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this pipeline.
    pub pipeline: Option<String>,
    /// Only this scope.
    pub scope: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only units last changed before this time (ms).
    pub updated_before_ms: Option<u64>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// Counts by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Pending units.
    pub pending: u64,
    /// Units in progress.
    pub in_progress: u64,
    /// Completed units.
    pub completed: u64,
    /// Failed units.
    pub failed: u64,
    /// Claims over all units.
    pub attempts: u64,
}

impl Stats {
    /// All units.
    pub fn total(&self) -> u64 {
        self.pending + self.in_progress + self.completed + self.failed
    }

    /// Failed units among finished ones.
    pub fn failure_rate(&self) -> f64 {
        let done = self.completed + self.failed;
        if done == 0 {
            0.0
        } else {
            self.failed as f64 / done as f64
        }
    }
}

/// A ledger error.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// The backend failed (connection, I/O, SQL).
    #[error("ledger backend: {0}")]
    Backend(String),
    /// The ledger is misconfigured (a bad URL, a missing database).
    #[error("ledger configuration: {0}")]
    Config(String),
    /// The worker no longer owns the unit (its lease was taken over).
    #[error("unit {0}: this worker no longer holds it (its lease was taken over)")]
    LostLease(String),
    /// The schema is newer than this build understands.
    #[error("the ledger schema is version {found}; this build knows up to {known}")]
    Schema {
        /// Version in the database.
        found: i64,
        /// Latest version this build knows.
        known: i64,
    },
}

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request to claim one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The unit.
    pub unit: UnitRef,
    /// Its content now.
    pub fingerprint: Fingerprint,
}

/// A ledger backend. Every method is atomic: a batch is one transaction.
///
/// Contract shared by every backend (and checked by one test suite in `keel-connectors`):
/// - `claim` applies [`decide`] to each unit while holding its row lock, so two workers never
///   both get [`Claim::Process`] for a unit while a lease is valid. A taken unit becomes
///   `in_progress`, owned by the worker, with a lease of `lease` and one more attempt; its
///   fingerprint is recorded. A skipped unit keeps its status; a newer modification time with
///   the same checksum is recorded so that the next plan can skip it without hashing.
/// - `renew`, `complete` and `fail` only touch units that `worker` holds (in progress and
///   owned by it); others are reported back, never changed.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// A short description for logs (`sqlite:state/ledger.db`).
    fn describe(&self) -> String;

    /// Claims each unit of `requests` for `worker` (see [`decide`]); one claim per request,
    /// in order.
    fn claim<'a>(
        &'a self,
        requests: &'a [ClaimRequest],
        worker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, LedgerError>>;

    /// Extends the leases of `worker` on `units`; returns the units it no longer holds.
    fn renew<'a>(
        &'a self,
        units: &'a [UnitRef],
        worker: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>>;

    /// Marks units held by `worker` completed with their metadata; returns the units it no
    /// longer holds (left unchanged).
    fn complete<'a>(
        &'a self,
        units: &'a [(UnitRef, serde_json::Value)],
        worker: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>>;

    /// Marks a unit held by `worker` failed with its error; [`LedgerError::LostLease`] when
    /// the worker no longer holds it.
    fn fail<'a>(
        &'a self,
        unit: &'a UnitRef,
        worker: &'a str,
        error: &'a str,
        metadata: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;

    /// Units matching `filter`, ordered by pipeline, scope and key.
    fn list<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Vec<Unit>, LedgerError>>;

    /// Sends units matching `filter` back to pending (failed ones unless the filter names a
    /// status); returns how many.
    fn retry<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>>;

    /// Deletes the units matching `filter`; returns how many.
    fn clear<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>>;

    /// Counts by status of the units matching `filter`.
    fn stats<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Stats, LedgerError>>;
}

/// Milliseconds of a duration, saturated.
pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(status: Status, checksum: &str, owner: Option<&str>, lease: Option<u64>) -> Unit {
        Unit {
            unit: UnitRef::new("p", "file", "a.jsonl"),
            fingerprint: Fingerprint {
                checksum: Some(format!("blake3:{checksum}")),
                size: 10,
                mtime_ns: 1,
            },
            status,
            attempts: 2,
            last_error: None,
            metadata: serde_json::Value::Null,
            owner: owner.map(Into::into),
            lease_until_ms: lease,
            started_ms: None,
            finished_ms: None,
            updated_ms: 0,
        }
    }

    fn fp(checksum: &str) -> Fingerprint {
        Fingerprint {
            checksum: Some(format!("blake3:{checksum}")),
            size: 10,
            mtime_ns: 1,
        }
    }

    #[test]
    fn every_case_of_a_claim() {
        let now = 1000;
        assert_eq!(
            decide(None, &fp("a"), "w1", now),
            Claim::Process {
                attempt: 1,
                why: Why::New
            }
        );
        let done = unit(Status::Completed, "a", None, None);
        assert_eq!(decide(Some(&done), &fp("a"), "w1", now), Claim::Skip);
        assert_eq!(
            decide(Some(&done), &fp("b"), "w1", now),
            Claim::Process {
                attempt: 3,
                why: Why::Changed
            }
        );
        let failed = unit(Status::Failed, "a", None, None);
        assert_eq!(
            decide(Some(&failed), &fp("a"), "w1", now),
            Claim::Process {
                attempt: 3,
                why: Why::Failed
            }
        );
        let pending = unit(Status::Pending, "a", None, None);
        assert_eq!(
            decide(Some(&pending), &fp("a"), "w1", now),
            Claim::Process {
                attempt: 3,
                why: Why::Pending
            }
        );
        let mine = unit(Status::InProgress, "a", Some("w1"), Some(now + 10));
        assert_eq!(
            decide(Some(&mine), &fp("a"), "w1", now),
            Claim::Process {
                attempt: 3,
                why: Why::ResumeOwn
            }
        );
        let theirs = unit(Status::InProgress, "a", Some("w2"), Some(now + 10));
        assert_eq!(
            decide(Some(&theirs), &fp("a"), "w1", now),
            Claim::Busy {
                owner: "w2".into(),
                until_ms: now + 10
            }
        );
        let expired = unit(Status::InProgress, "a", Some("w2"), Some(now - 1));
        assert_eq!(
            decide(Some(&expired), &fp("a"), "w1", now),
            Claim::Process {
                attempt: 3,
                why: Why::TakeOver
            }
        );
    }

    #[test]
    fn stats_rates() {
        let s = Stats {
            completed: 3,
            failed: 1,
            ..Default::default()
        };
        assert_eq!((s.total(), s.failure_rate()), (4, 0.25));
        assert_eq!(Stats::default().failure_rate(), 0.0);
    }
}
