//! `dedupe`: drops (or dead-letters) a record whose key was seen within a window.
//!
//! Keyed state remembers, per key, the time it was last let through: its event time when
//! the record has one, otherwise processing time. A record is a duplicate when its key was
//! let through less than `window` before. Keys older than the window (behind the watermark,
//! or the wall clock) are evicted at most once per second, so state stays bounded.

use std::time::{Duration, Instant};

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
    last_evict: Option<Instant>,
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
            last_evict: None,
            dropped: 0,
        }
    }

    fn evict(&mut self, cx: &mut Context<'_>, now: i64) -> Result<(), Failure> {
        if self.last_evict.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        self.last_evict = Some(Instant::now());
        let horizon = now.saturating_sub(self.window_ms);
        cx.state_retain(&self.state, |_, seen| *seen >= horizon)?;
        Ok(())
    }
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
