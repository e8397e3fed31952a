//! Run-level events for people: a run failed or was aborted, its input paused and resumed,
//! it finished with dead letters, files of a batch ingestion failed.
//!
//! Listeners ([`RunListener`], or any `Fn(&RunEvent)`) are called on the pipeline's thread
//! and must return at once: a listener that talks to the network hands the event to a
//! thread of its own (as `keel_connectors::webhook` does). A panicking listener is logged and
//! ignored: notifications never fail or block a run. Metrics ([`crate::metrics`]) are for
//! dashboards and alerts; these events are for a webhook or a chat channel when there is
//! no Prometheus.

use std::sync::Arc;

use serde::Serialize;

/// A run-level event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The input paused (`cause`: a circuit breaker opened, the error budget is exceeded, a
    /// throttled dependency asked to wait).
    Paused {
        /// The pipeline.
        pipeline: String,
        /// Why.
        cause: String,
    },
    /// The input goes on after a pause.
    Resumed {
        /// The pipeline.
        pipeline: String,
    },
    /// The run failed; the last checkpoint is intact and a rerun resumes from it.
    Failed {
        /// The pipeline.
        pipeline: String,
        /// The error.
        error: String,
    },
    /// The run was aborted by a policy (an `abort` action, an error budget), after a final
    /// checkpoint.
    Aborted {
        /// The pipeline.
        pipeline: String,
        /// Why.
        reason: String,
    },
    /// The run finished, and records were dead-lettered.
    FinishedWithDeadLetters {
        /// The pipeline.
        pipeline: String,
        /// Records read.
        records_in: u64,
        /// Records dead-lettered.
        dead_letters: u64,
    },
    /// Files of a batch ingestion failed (each rolled back; the next run retries them).
    IngestFilesFailed {
        /// The pipeline.
        pipeline: String,
        /// How many.
        failed: u64,
        /// The first few of them.
        files: Vec<String>,
    },
}

impl RunEvent {
    /// The event's name (`paused`, `failed`...), as in its JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            RunEvent::Paused { .. } => "paused",
            RunEvent::Resumed { .. } => "resumed",
            RunEvent::Failed { .. } => "failed",
            RunEvent::Aborted { .. } => "aborted",
            RunEvent::FinishedWithDeadLetters { .. } => "finished_with_dead_letters",
            RunEvent::IngestFilesFailed { .. } => "ingest_files_failed",
        }
    }

    /// The pipeline it is about.
    pub fn pipeline(&self) -> &str {
        match self {
            RunEvent::Paused { pipeline, .. }
            | RunEvent::Resumed { pipeline }
            | RunEvent::Failed { pipeline, .. }
            | RunEvent::Aborted { pipeline, .. }
            | RunEvent::FinishedWithDeadLetters { pipeline, .. }
            | RunEvent::IngestFilesFailed { pipeline, .. } => pipeline,
        }
    }

    /// One line for a person (a chat message).
    pub fn text(&self) -> String {
        match self {
            RunEvent::Paused { pipeline, cause } => format!("keel pipeline `{pipeline}`: input paused ({cause})"),
            RunEvent::Resumed { pipeline } => format!("keel pipeline `{pipeline}`: input resumed"),
            RunEvent::Failed { pipeline, error } => {
                format!(
                    "keel pipeline `{pipeline}` failed: {error} (the last checkpoint is intact; run it again to resume)"
                )
            }
            RunEvent::Aborted { pipeline, reason } => format!("keel pipeline `{pipeline}` aborted: {reason}"),
            RunEvent::FinishedWithDeadLetters {
                pipeline,
                records_in,
                dead_letters,
            } => format!(
                "keel pipeline `{pipeline}` finished: {dead_letters} of {records_in} records dead-lettered (`keel dlq stats`)"
            ),
            RunEvent::IngestFilesFailed {
                pipeline,
                failed,
                files,
            } => format!(
                "keel ingestion `{pipeline}`: {failed} files failed and were rolled back ({})",
                files.join(", ")
            ),
        }
    }
}

/// Receives run events; see the module docs for the contract.
pub trait RunListener: Send + Sync + 'static {
    /// Called once per event, on the pipeline's thread: must return at once.
    fn on_event(&self, event: &RunEvent);
}

impl<F: Fn(&RunEvent) + Send + Sync + 'static> RunListener for F {
    fn on_event(&self, event: &RunEvent) {
        self(event)
    }
}

/// The listeners of a run.
#[derive(Clone, Default)]
pub struct Listeners(Vec<Arc<dyn RunListener>>);

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listeners({})", self.0.len())
    }
}

impl Listeners {
    /// Adds one.
    pub fn push(&mut self, listener: impl RunListener) {
        self.0.push(Arc::new(listener));
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands `event` to every listener; a panicking one is logged and skipped.
    pub fn emit(&self, event: &RunEvent) {
        for l in &self.0 {
            let call = std::panic::AssertUnwindSafe(|| l.on_event(event));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!(event = event.kind(), "a run listener panicked; the run goes on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn events_serialise_with_their_name_and_a_panicking_listener_is_skipped() {
        let e = RunEvent::Paused {
            pipeline: "orders".into(),
            cause: "circuit breaker open".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "paused");
        assert_eq!(v["pipeline"], "orders");
        assert_eq!(v["cause"], "circuit breaker open");
        assert!(e.text().contains("input paused (circuit breaker open)"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut l = Listeners::default();
        l.push(|_: &RunEvent| panic!("a bad listener"));
        let s = seen.clone();
        l.push(move |e: &RunEvent| s.lock().unwrap().push(e.kind()));
        l.emit(&e);
        assert_eq!(*seen.lock().unwrap(), vec!["paused"]);
    }
}
