//! The window of a partition whose flow has a concurrent `map_async`
//! ([`crate::Flow::concurrency`]): the records of the current batch whose calls run ahead of
//! the record being handled.
//!
//! ```text
//!  batch:   r0  r1  r2  r3  r4  r5 ...
//!               ^   '--- window ---'
//!               |   head ran, call running (a task of its own)
//!               handled now: its calls are awaited, then the rest of the flow runs on it
//! ```
//!
//! Invariants:
//! - Entries are records of the current batch after the one being handled, in order, at
//!   most `limit` in flight with it. Only the steps before the call (pure: the context
//!   refuses keyed state, event time and side outputs there) and the call itself have run
//!   for them, so nothing of theirs is in an outbox or in keyed state: the published
//!   position may stay before them, and a checkpoint or a restart forgets them safely.
//! - Dropping an entry (stop, new batch) aborts its calls.

use std::collections::VecDeque;

use tokio::task::JoinHandle;

use crate::failure::{Failure, reason};
use crate::step::CallValue;

/// A started call; aborted when dropped before it finished.
pub(crate) struct Started(JoinHandle<Result<CallValue, Failure>>);

impl Started {
    /// Starts `call` as a task of its own on the current `LocalSet`.
    pub(crate) fn spawn(call: crate::step::Call) -> Self {
        Started(tokio::task::spawn_local(call))
    }

    /// The call's value, or its failure (a panic inside the call is a `fatal` `panic`).
    pub(crate) async fn value(mut self) -> Result<CallValue, Failure> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                Err(Failure::fatal(reason::PANIC, super::panic_message(&*e.into_panic())).with_stage("map_async"))
            }
            Err(e) => {
                Err(Failure::fatal(reason::PANIC, format!("a concurrent call ended: {e}")).with_stage("map_async"))
            }
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One record that entered the window.
pub(crate) struct Ahead {
    /// Its index in the batch.
    pub(crate) index: usize,
    /// The key the steps before the call set (`key_by`), restored for the steps after it.
    pub(crate) key: Option<Vec<u8>>,
    /// Its started calls, or how the steps before the call failed.
    pub(crate) begun: Result<Vec<Started>, Failure>,
}

/// The records of the current batch that run ahead.
pub(crate) struct Window {
    /// Records in flight at most, the one being handled included.
    pub(crate) limit: usize,
    /// The next index of the batch to admit.
    next: usize,
    entries: VecDeque<Ahead>,
}

impl Window {
    pub(crate) fn new(limit: usize) -> Self {
        Window {
            limit,
            next: 0,
            entries: VecDeque::with_capacity(limit),
        }
    }

    /// Forgets every entry (a new batch begins); their calls are aborted.
    pub(crate) fn reset(&mut self) {
        self.entries.clear();
        self.next = 0;
    }

    /// Before handling record `i`: drops entries before it and returns the range of indexes
    /// to admit now (the caller pushes one entry per index, or skips an index).
    pub(crate) fn admit_after(&mut self, i: usize, batch_len: usize) -> std::ops::Range<usize> {
        while self.entries.front().is_some_and(|e| e.index < i) {
            self.entries.pop_front();
        }
        // record `i` itself is in flight whether or not it has an entry
        let own = usize::from(self.entries.front().is_none_or(|e| e.index != i));
        let room = self.limit.saturating_sub(self.entries.len() + own);
        let start = self.next.max(i + own);
        let end = (start + room).min(batch_len);
        self.next = self.next.max(end);
        start..end
    }

    pub(crate) fn push(&mut self, ahead: Ahead) {
        self.entries.push_back(ahead);
    }

    /// The entry of record `i`, if it entered the window (not after a retry, which runs the
    /// record again from the start).
    pub(crate) fn take(&mut self, i: usize) -> Option<Ahead> {
        if self.entries.front().is_some_and(|e| e.index == i) {
            self.entries.pop_front()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize) -> Ahead {
        Ahead {
            index,
            key: None,
            begun: Ok(Vec::new()),
        }
    }

    #[test]
    fn admits_up_to_the_limit_counting_the_record_handled() {
        let mut w = Window::new(3);
        // record 0 has no entry yet: it is admitted with two behind it
        assert_eq!(w.admit_after(0, 10), 1..3);
        // (the caller begins record 0 itself: `own` counted it)
        w.push(entry(1));
        w.push(entry(2));
        assert!(w.take(0).is_none());
        // record 1: entries 1 and 2 in flight, room for one more
        assert_eq!(w.admit_after(1, 10), 3..4);
        w.push(entry(3));
        assert_eq!(w.take(1).map(|e| e.index), Some(1));
        // a retry of record 1: no entry, entries 2 and 3 fill the window with it
        assert_eq!(w.admit_after(1, 10), 4..4);
        assert!(w.take(1).is_none());
        // the end of the batch bounds the window
        assert_eq!(w.admit_after(2, 5), 4..5);
        w.push(entry(4));
        assert_eq!(w.take(2).map(|e| e.index), Some(2));
        // a record skipped by the caller (no entry) is dropped from the front later
        assert_eq!(w.admit_after(4, 5), 5..5);
        assert_eq!(w.take(4).map(|e| e.index), Some(4));
    }

    #[test]
    fn a_limit_of_one_admits_nothing_ahead() {
        let mut w = Window::new(1);
        assert_eq!(w.admit_after(0, 10), 1..1);
        assert_eq!(w.admit_after(1, 10), 2..2);
    }
}
