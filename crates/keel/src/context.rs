//! What a step sees besides its input: the current key and its state, event time and
//! watermark, the record being processed, and side outputs.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::failure::{Failure, reason};
use crate::record::Record;
use crate::sink::{Framing, OutBatch};
use crate::state::{StateSpec, StateStore};
use crate::time::{LatePolicy, WatermarkConfig};

/// Pipeline-wide data that steps reach through their context. Lives on the worker thread.
#[derive(Debug)]
pub(crate) struct StepShared {
    pub(crate) pipeline: Rc<str>,
    pub(crate) state: RefCell<StateStore>,
    pub(crate) watermark: Cell<Option<i64>>,
    pub(crate) time: WatermarkConfig,
    pub(crate) side_sinks: Vec<SideSink>,
}

/// A named sink that steps can emit to besides the main output.
#[derive(Clone, Debug)]
pub(crate) struct SideSink {
    pub(crate) name: String,
    pub(crate) framing: Framing,
    /// What its records must satisfy ([`crate::Sink::max_record_bytes`],
    /// [`crate::Sink::record_check`]).
    pub(crate) limits: crate::sink::RecordLimits,
}

impl StepShared {
    pub(crate) fn new(pipeline: &str, state: StateStore, time: WatermarkConfig, side_sinks: Vec<SideSink>) -> Self {
        StepShared {
            pipeline: pipeline.into(),
            state: RefCell::new(state),
            watermark: Cell::new(None),
            time,
            side_sinks,
        }
    }
}

/// Per-task data that a context borrows; reused from record to record.
#[derive(Debug)]
pub(crate) struct TaskLocal {
    pub(crate) partition: Rc<str>,
    pub(crate) key: Vec<u8>,
    pub(crate) has_key: bool,
    pub(crate) event_time: Option<i64>,
    pub(crate) max_event_time: Option<i64>,
    pub(crate) side: Vec<OutBatch>,
    pub(crate) late_dropped: u64,
    /// Set when the current record changed keyed state (it cannot be retried then).
    pub(crate) state_changed: Cell<bool>,
    /// Set while the steps before a concurrent call run ahead of earlier records: keyed
    /// state, event time and side outputs are refused then.
    pub(crate) ahead: bool,
}

impl TaskLocal {
    pub(crate) fn new(partition: &str, shared: &StepShared) -> Self {
        TaskLocal {
            partition: partition.into(),
            key: Vec::with_capacity(64),
            has_key: false,
            event_time: None,
            max_event_time: None,
            side: shared.side_sinks.iter().map(|s| OutBatch::new(s.framing)).collect(),
            late_dropped: 0,
            state_changed: Cell::new(false),
            ahead: false,
        }
    }

    /// Resets what belongs to one record.
    pub(crate) fn begin_record(&mut self, record: Option<&Record>) {
        self.has_key = false;
        self.event_time = record.and_then(|r| r.event_time);
        self.state_changed.set(false);
    }

    /// Side-output lengths, to roll back the outputs of a record that fails.
    pub(crate) fn side_marks(&self, marks: &mut Vec<usize>) {
        marks.clear();
        marks.extend(self.side.iter().map(OutBatch::len));
    }

    pub(crate) fn rollback_side(&mut self, marks: &[usize]) {
        for (b, &n) in self.side.iter_mut().zip(marks) {
            b.truncate(n);
        }
    }
}

/// The context of one step invocation.
pub struct Context<'a> {
    pub(crate) shared: &'a StepShared,
    pub(crate) local: &'a mut TaskLocal,
    pub(crate) origin: Option<&'a Record>,
}

/// What a step before a concurrent `map_async` tried to use.
fn refused_ahead(what: &str) -> Failure {
    Failure::fatal(
        "not_allowed_before_concurrent_call",
        format!(
            "{what} is used by a step before a concurrent map_async; those steps run ahead of \
             earlier records, so move this step after the map_async (or drop `.concurrency`)"
        ),
    )
}

impl<'a> Context<'a> {
    fn check_ahead(&self, what: &str) -> Result<(), Failure> {
        if self.local.ahead {
            Err(refused_ahead(what))
        } else {
            Ok(())
        }
    }

    pub(crate) fn new(shared: &'a StepShared, local: &'a mut TaskLocal, origin: Option<&'a Record>) -> Self {
        Context { shared, local, origin }
    }

    /// The pipeline name.
    pub fn pipeline(&self) -> &str {
        &self.shared.pipeline
    }

    /// The partition the current record came from.
    pub fn partition(&self) -> &str {
        &self.local.partition
    }

    /// The source record being processed (`None` in end-of-input processing).
    pub fn record(&self) -> Option<&Record> {
        self.origin
    }

    /// The current key, if a `key_by` step set one.
    pub fn key(&self) -> Option<&[u8]> {
        self.local.has_key.then_some(&self.local.key[..])
    }

    /// Sets the key for the following stateful steps.
    pub fn set_key(&mut self, key: &[u8]) {
        self.local.key.clear();
        self.local.key.extend_from_slice(key);
        self.local.has_key = true;
    }

    /// Sets the key by writing it into the buffer given to `write`.
    pub fn set_key_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.local.key.clear();
        write(&mut self.local.key);
        self.local.has_key = true;
    }

    /// The keyed state of table `spec` for the current key. Without a key (no `key_by`
    /// before), the state is pipeline-wide (the empty key).
    pub fn state<'c, T>(&'c mut self, spec: &'c StateSpec<T>) -> KeyedState<'c, T>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let key: &[u8] = if self.local.has_key { &self.local.key } else { &[] };
        KeyedState {
            store: &self.shared.state,
            key,
            spec,
            changed: &self.local.state_changed,
            ahead: self.local.ahead,
        }
    }

    /// Every key and value of table `spec` (for end-of-input output). Costs a copy.
    pub fn state_entries<T>(&mut self, spec: &StateSpec<T>) -> Result<crate::state::Entries<T>, Failure>
    where
        T: Serialize + DeserializeOwned + Clone + 'static,
    {
        self.check_ahead("keyed state")?;
        self.shared.state.borrow_mut().entries(spec).map_err(state_failure)
    }

    /// Deletes the keys of table `spec` for which `keep` returns false; returns how many.
    pub fn state_retain<T>(
        &mut self,
        spec: &StateSpec<T>,
        keep: impl FnMut(&[u8], &T) -> bool,
    ) -> Result<usize, Failure>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        self.check_ahead("keyed state")?;
        let n = self
            .shared
            .state
            .borrow_mut()
            .retain(spec, keep)
            .map_err(state_failure)?;
        if n > 0 {
            self.local.state_changed.set(true);
        }
        Ok(n)
    }

    /// The event time of the current record, if known.
    pub fn event_time(&self) -> Option<i64> {
        self.local.event_time
    }

    /// The pipeline watermark: no record with an earlier event time is expected any more.
    pub fn watermark(&self) -> Option<i64> {
        self.shared.watermark.get()
    }

    /// Records the event time of the current record and checks it against the watermark.
    ///
    /// Returns `Ok(true)` to keep the record, `Ok(false)` when it is late and the late policy
    /// drops it, or a `late` failure when the policy dead-letters it. An event time more than
    /// `max_future_skew` ahead of the wall clock is a `future_event_time` failure and is not
    /// recorded: it moves neither the partition's highest event time nor the watermark.
    pub fn observe_event_time(&mut self, ts: i64) -> Result<bool, Failure> {
        self.check_ahead("event time")?;
        let now = i64::try_from(crate::util::now_ms()).unwrap_or(i64::MAX);
        if let Some(ahead) = self.shared.time.too_far_ahead(ts, now) {
            return Err(Failure::permanent(
                reason::FUTURE_EVENT_TIME,
                format!("event time {ts} is {ahead} ms beyond the allowed skew ahead of the clock ({now})"),
            ));
        }
        self.local.event_time = Some(ts);
        if let Some(wm) = self.shared.watermark.get()
            && ts < wm
        {
            return match self.shared.time.late {
                LatePolicy::Drop => {
                    self.local.late_dropped += 1;
                    Ok(false)
                }
                LatePolicy::DeadLetter => Err(Failure::permanent(
                    reason::LATE,
                    format!("event time {ts} is behind the watermark {wm} by {} ms", wm - ts),
                )),
                LatePolicy::Keep => Ok(true),
            };
        }
        if self.local.max_event_time.is_none_or(|m| ts > m) {
            self.local.max_event_time = Some(ts);
        }
        Ok(true)
    }

    fn side_index(&self, sink: &str) -> Result<usize, Failure> {
        self.check_ahead("a side output")?;
        self.shared
            .side_sinks
            .iter()
            .position(|s| s.name == sink)
            .ok_or_else(|| Failure::fatal("unknown_sink", format!("no sink named `{sink}` in this pipeline")))
    }

    /// A record just pushed to side output `i` over its sink's size limit is taken back
    /// out and fails as `oversized` at that sink's stage.
    fn within_limit(&mut self, i: usize) -> Result<(), Failure> {
        let side = &self.shared.side_sinks[i];
        crate::runtime::within_limit(&mut self.local.side[i], &side.limits).map_err(|f| f.with_stage(side.name.clone()))
    }

    /// Sends `value`, encoded as JSON, to the sink named `sink`.
    pub fn emit_json<T: Serialize>(&mut self, sink: &str, value: &T) -> Result<(), Failure> {
        let i = self.side_index(sink)?;
        self.local.side[i]
            .push_with(None, |buf| serde_json::to_writer(buf, value))
            .map_err(|e| Failure::permanent("encode", e.to_string()))?;
        self.within_limit(i)
    }

    /// Sends an already encoded record to the sink named `sink`.
    pub fn emit_bytes(&mut self, sink: &str, key: Option<&[u8]>, value: &[u8]) -> Result<(), Failure> {
        let i = self.side_index(sink)?;
        self.local.side[i].push(key, value);
        self.within_limit(i)
    }

    /// Sends a record that `encode` writes to the sink named `sink`.
    pub fn emit_with(
        &mut self,
        sink: &str,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let i = self.side_index(sink)?;
        self.local.side[i].push_with(None, encode)?;
        self.within_limit(i)
    }
}

/// The value of one state table for the current key.
pub struct KeyedState<'c, T> {
    store: &'c RefCell<StateStore>,
    key: &'c [u8],
    spec: &'c StateSpec<T>,
    changed: &'c Cell<bool>,
    ahead: bool,
}

fn state_failure(e: crate::state::StateError) -> Failure {
    Failure::fatal("state", e.to_string())
}

impl<T: Serialize + DeserializeOwned + 'static> KeyedState<'_, T> {
    fn usable(&self) -> Result<(), Failure> {
        if self.ahead {
            Err(refused_ahead("keyed state"))
        } else {
            Ok(())
        }
    }

    /// The current value.
    pub fn get(&self) -> Result<Option<T>, Failure>
    where
        T: Clone,
    {
        self.usable()?;
        self.store.borrow_mut().get(self.spec, self.key).map_err(state_failure)
    }

    /// Runs `f` on the value (`None` if absent); leaving `None` deletes the key.
    pub fn update<R>(&self, f: impl FnOnce(&mut Option<T>) -> R) -> Result<R, Failure> {
        self.usable()?;
        self.changed.set(true);
        self.store
            .borrow_mut()
            .update(self.spec, self.key, f)
            .map_err(state_failure)
    }

    /// Sets the value.
    pub fn put(&self, value: T) -> Result<(), Failure> {
        self.usable()?;
        self.changed.set(true);
        self.store
            .borrow_mut()
            .put(self.spec, self.key, value)
            .map_err(state_failure)
    }

    /// Deletes the value; returns the old one.
    pub fn delete(&self) -> Result<Option<T>, Failure> {
        self.usable()?;
        self.changed.set(true);
        self.store
            .borrow_mut()
            .delete(self.spec, self.key)
            .map_err(state_failure)
    }
}
