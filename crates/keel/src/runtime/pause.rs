//! The pause gate: stops every partition task at a record boundary until a time.
//!
//! A `pause` action (a throttled dependency), an open circuit breaker or an exceeded error
//! budget closes the gate until a given instant; the coordinator takes a checkpoint when a
//! pause starts; tasks waiting at the gate still take part in checkpoints.

use std::cell::Cell;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Pipeline-wide pause, on the worker thread.
#[derive(Default)]
pub(crate) struct PauseGate {
    until: Cell<Option<Instant>>,
    reason: Cell<&'static str>,
    started: Notify,
    pauses: Cell<u64>,
}

impl PauseGate {
    /// Closes the gate until `until` (extends a pause that ends earlier). True when a pause
    /// starts (none was active).
    pub(crate) fn pause_until(&self, until: Instant, reason: &'static str) -> bool {
        let now = Instant::now();
        let was_active = self.until.get().is_some_and(|u| u > now);
        if self.until.get().is_none_or(|u| u < until) {
            self.until.set(Some(until));
            self.reason.set(reason);
        }
        if !was_active {
            self.pauses.set(self.pauses.get() + 1);
            tracing::warn!(reason, resume_in_ms = (until - now).as_millis() as u64, "input paused");
            self.started.notify_one();
        }
        !was_active
    }

    /// The end of the current pause, if one is active.
    #[inline]
    pub(crate) fn active_until(&self) -> Option<Instant> {
        self.until.get().filter(|u| *u > Instant::now())
    }

    /// Resolves when a pause starts (for the coordinator's checkpoint).
    pub(crate) async fn started(&self) {
        self.started.notified().await
    }

    /// Pauses so far.
    pub(crate) fn count(&self) -> u64 {
        self.pauses.get()
    }
}
