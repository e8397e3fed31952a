//! `dedupe`: drops (or dead-letters) a record whose key was seen within a window.
//!
//! Keyed state remembers, per key, the time it was last let through: its event time when
//! the record has one, otherwise processing time. A record is a duplicate when its key was
//! let through less than `window` before.
//!
//! Keys older than the window (behind the watermark, or the wall clock) are evicted so that
//! state stays bounded. Eviction is shared by every partition of the pipeline and works in
//! time order: a min-heap of (time let through, key) is popped while its head is older than
//! the horizon, so each record costs O(log n) and nothing ever scans the whole table (the
//! heap is seeded once per run from the restored state). A popped key whose state holds a
//! newer time was let through again and stays.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::Duration;

use keel::failure::reason;
use keel::util::now_ms;
use keel::{Context, Failure, StateSpec};

use super::{DocStep, Next};
use crate::config::DuplicatePolicy;
use crate::doc::{Doc, FieldPath};

/// The dedupe step.
#[derive(Clone)]
pub struct Dedupe {
    key: FieldPath,
    window_ms: i64,
    policy: DuplicatePolicy,
    state: StateSpec<i64>,
    key_buf: Vec<u8>,
    evictor: Rc<RefCell<Evictor>>,
    /// Duplicates dropped by this clone.
    pub dropped: u64,
}

impl Dedupe {
    /// Dedupe on `key` within `window`, state in table `table`.
    pub fn new(table: &str, key: FieldPath, window: Duration, policy: DuplicatePolicy) -> Self {
        Dedupe {
            key,
            window_ms: window.as_millis().min(i64::MAX as u128) as i64,
            policy,
            state: StateSpec::new(table),
            key_buf: Vec::new(),
            evictor: Rc::default(),
            dropped: 0,
        }
    }

    /// Evicts the keys let through before `now - window`, oldest first.
    fn evict(&mut self, cx: &mut Context<'_>, now: i64) -> Result<(), Failure> {
        let horizon = now.saturating_sub(self.window_ms);
        let mut ev = self.evictor.borrow_mut();
        if !ev.seeded {
            ev.seeded = true;
            for (key, seen) in cx.state_entries(&self.state)? {
                ev.queue.push(Reverse((seen, key)));
            }
        }
        while ev.queue.peek().is_some_and(|Reverse((t, _))| *t < horizon) {
            let Some(Reverse((t, key))) = ev.queue.pop() else { break };
            cx.set_key(&key);
            let state = cx.state(&self.state);
            if state.get()? == Some(t) {
                state.delete()?;
                ev.evicted += 1;
            }
        }
        Ok(())
    }
}

/// The pipeline-wide eviction queue of a dedupe step (its clones share it).
#[derive(Default)]
struct Evictor {
    queue: BinaryHeap<Reverse<(i64, Box<[u8]>)>>,
    seeded: bool,
    evicted: u64,
}

impl DocStep for Dedupe {
    fn apply(&mut self, doc: &mut Doc, cx: &mut Context<'_>, _more: &mut Vec<Doc>) -> Result<Next, Failure> {
        let key = doc.get_path(&self.key).ok_or_else(|| {
            Failure::permanent(reason::MISSING_FIELD, format!("dedupe key `{}` is missing", self.key))
                .with_field(self.key.as_str())
        })?;
        self.key_buf.clear();
        doc.write_value(key.value(), &mut self.key_buf);
        let (t, horizon_now) = match cx.event_time() {
            Some(ts) => (ts, cx.watermark().unwrap_or(i64::MIN)),
            None => {
                let n = now_ms() as i64;
                (n, n)
            }
        };
        if horizon_now != i64::MIN {
            self.evict(cx, horizon_now)?;
        }
        cx.set_key(&self.key_buf);
        let window = self.window_ms;
        let duplicate = cx.state(&self.state).update(|seen| match *seen {
            Some(prev) if t.saturating_sub(prev) < window && t >= prev.saturating_sub(window) => true,
            _ => {
                *seen = Some(t);
                false
            }
        })?;
        if !duplicate {
            self.evictor
                .borrow_mut()
                .queue
                .push(Reverse((t, self.key_buf.as_slice().into())));
            return Ok(Next::Keep);
        }
        match self.policy {
            DuplicatePolicy::Drop => {
                self.dropped += 1;
                Ok(Next::Drop)
            }
            DuplicatePolicy::DeadLetter => Err(Failure::permanent(
                reason::DUPLICATE,
                format!(
                    "key {} was seen within the last {} ms",
                    String::from_utf8_lossy(&self.key_buf),
                    window
                ),
            )),
        }
    }

    fn clone_box(&self) -> Box<dyn DocStep> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::testing::StepHarness;

    /// Runs a dedupe on `(id, event time)` pairs.
    #[derive(Clone)]
    struct At(Dedupe);

    impl keel::Step<(u32, i64)> for At {
        type Out = Next;
        async fn process(
            &mut self,
            (id, t): (u32, i64),
            cx: &mut Context<'_>,
            out: &mut Vec<Next>,
        ) -> Result<(), Failure> {
            cx.observe_event_time(t)?;
            let mut doc = Doc::parse_json(format!("{{\"id\": {id}}}").into())
                .map_err(|e| Failure::permanent("malformed", format!("{e:?}")))?;
            out.push(self.0.apply(&mut doc, cx, &mut Vec::new())?);
            Ok(())
        }
    }

    /// Eviction is shared by the partitions' clones and pops keys in time order: each
    /// record's work is bounded by what it evicts (issue 9.12: every clone scanned the whole
    /// table once per second).
    #[test]
    fn eviction_is_shared_by_clones_and_in_time_order() {
        let mut h = StepHarness::new(&[]);
        let d = Dedupe::new(
            "seen",
            FieldPath::parse("id").unwrap(),
            Duration::from_millis(100),
            DuplicatePolicy::Drop,
        );
        let ev = d.evictor.clone();
        let (mut a, mut b) = (At(d.clone()), At(d));
        let rec = keel::Record::from_value("x");
        let mut run = |step: &mut At, id: u32, t: i64, watermark: i64| {
            h.set_watermark(Some(watermark));
            h.run(step, (id, t), &rec).unwrap()
        };
        // 1000 keys through two clones, a millisecond apart, the watermark held at 0
        for i in 0..1000u32 {
            let step = if i % 2 == 0 { &mut a } else { &mut b };
            assert_eq!(run(step, i, i as i64, 0), vec![Next::Keep]);
        }
        // both clones share one queue holding every key once
        assert_eq!(ev.borrow().queue.len(), 1000);
        assert_eq!(ev.borrow().evicted, 0);
        // at t = 1099 every key let through before 999 is evicted, oldest first
        assert_eq!(run(&mut a, 5000, 1099, 1099), vec![Next::Keep]);
        assert_eq!(ev.borrow().evicted, 999);
        assert_eq!(ev.borrow().queue.len(), 2);
        // an evicted key passes again; a key still within the window is a duplicate
        assert_eq!(run(&mut b, 3, 1099, 1099), vec![Next::Keep]);
        assert_eq!(run(&mut b, 999, 1098, 1098), vec![Next::Drop]);
    }
}
