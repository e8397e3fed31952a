//! What a batch did.

use std::time::Duration;

use serde::Serialize;

use crate::ledger::Why;

/// A unit that failed, with its reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedUnit {
    /// The unit key (file name).
    pub key: String,
    /// Which claim of the unit this was.
    pub attempt: u32,
    /// Why it failed.
    pub reason: String,
}

/// The summary of a batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IngestReport {
    /// Input files found.
    pub inputs: usize,
    /// Completed before and unchanged: not processed.
    pub skipped: usize,
    /// Held by another worker.
    pub busy: usize,
    /// Vanished or unreadable between the listing and the claim (not recorded).
    pub unreadable: usize,
    /// Processed and committed in this run.
    pub completed: usize,
    /// Processed in this run because they were new.
    pub new: usize,
    /// ... because their content changed since they completed (old output replaced).
    pub changed: usize,
    /// ... because they failed before (or were sent back by `keel ledger retry`).
    pub retried: usize,
    /// ... because this worker left them in progress (a restart after a crash).
    pub resumed: usize,
    /// ... because their worker's lease expired.
    pub taken_over: usize,
    /// Failed in this run (rolled back; retried by the next run).
    pub failed: Vec<FailedUnit>,
    /// Lost to another worker while processing (their lease expired).
    pub lost: usize,
    /// Records read by the units completed in this run.
    pub records_in: u64,
    /// Records written to the main output.
    pub records_out: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// The batch was stopped (signal) before it went through every unit.
    pub interrupted: bool,
    /// Wall-clock time.
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl IngestReport {
    pub(crate) fn count(&mut self, why: Why) {
        match why {
            Why::New => self.new += 1,
            Why::Changed => self.changed += 1,
            Why::Failed | Why::Pending => self.retried += 1,
            Why::ResumeOwn => self.resumed += 1,
            Why::TakeOver => self.taken_over += 1,
        }
    }

    /// Adds what happened to one unit.
    pub(crate) fn add(&mut self, done: super::Done) {
        use super::{Done, Outcome};
        match done {
            Done::Skipped => self.skipped += 1,
            Done::Busy => self.busy += 1,
            Done::Unreadable => self.unreadable += 1,
            Done::Processed {
                key,
                attempt,
                why,
                outcome,
            } => {
                self.count(why);
                match outcome {
                    Outcome::Done(run) => {
                        self.completed += 1;
                        self.records_in += run.records_in;
                        self.records_out += run.records_out;
                        self.dead_letters += run.dead_letters;
                    }
                    Outcome::Failed(reason) => self.failed.push(FailedUnit { key, attempt, reason }),
                    Outcome::Stopped => self.interrupted = true,
                    Outcome::LostLease => self.lost += 1,
                }
            }
        }
    }

    /// True when every unit this worker could take is completed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && !self.interrupted
    }
}
