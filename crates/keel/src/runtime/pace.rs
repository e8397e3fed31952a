//! The input pace: an optional ceiling on records read per second, across every partition.
//!
//! Each read is charged to a schedule that advances `1 / rate` seconds per record; a task
//! whose next read is due later waits at a record boundary (still serving checkpoints and
//! pauses). Reads are capped at a fiftieth of a second's worth, so the pace is smooth rather
//! than one full batch at a time. Used to backfill without flooding a sink, or to keep a test
//! run going long enough to be interrupted.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

/// Pipeline-wide read schedule, on the worker thread.
pub(crate) struct Pace {
    per_record: Duration,
    next: Cell<Option<Instant>>,
}

impl Pace {
    /// A pace of `records_per_second` (at least 1).
    pub(crate) fn new(records_per_second: u32) -> Self {
        Pace {
            per_record: Duration::from_secs(1) / records_per_second.max(1),
            next: Cell::new(None),
        }
    }

    /// Records per read at this pace: at most `batch_size`, at most 20 ms' worth, at least 1.
    pub(crate) fn batch_size(&self, batch_size: usize) -> usize {
        let per_read = Duration::from_millis(20).as_nanos() / self.per_record.as_nanos().max(1);
        batch_size.min(per_read as usize).max(1)
    }

    /// How long to wait before the next read (zero when it is due).
    pub(crate) fn delay(&self) -> Duration {
        self.next
            .get()
            .map_or(Duration::ZERO, |n| n.saturating_duration_since(Instant::now()))
    }

    /// Charges `records` just read: the next read is due `records / rate` after the later of
    /// now and the previous due time (an idle spell earns no burst).
    pub(crate) fn charge(&self, records: usize) {
        let now = Instant::now();
        let from = self.next.get().map_or(now, |n| n.max(now));
        self.next.set(Some(from + self.per_record * records as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reads_are_spaced_by_their_size() {
        let pace = Pace::new(10_000);
        assert_eq!(pace.batch_size(1024), 200);
        assert_eq!(Pace::new(10).batch_size(1024), 1);
        assert_eq!(pace.delay(), Duration::ZERO);
        pace.charge(200);
        assert_eq!(pace.delay(), Duration::from_millis(20));
        pace.charge(100);
        assert_eq!(pace.delay(), Duration::from_millis(30));
        tokio::time::advance(Duration::from_millis(100)).await;
        // idle time earns no burst
        assert_eq!(pace.delay(), Duration::ZERO);
        pace.charge(50);
        assert_eq!(pace.delay(), Duration::from_millis(5));
    }
}
