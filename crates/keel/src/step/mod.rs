//! Steps: what a pipeline does to each record.
//!
//! A [`Step`] turns one input item into zero or more outputs, or a [`Failure`]. Steps are
//! composed into a [`Flow`] with closures (`map`, `filter`, `flat_map`, `map_async`,
//! `validate`, `key_by`, `stateful`, ...) or with your own [`Step`] implementations.
//!
//! Contracts:
//! - A flow is cloned once per partition; each clone sees the records of one partition in
//!   order. Keep state that must survive a restart in keyed state ([`Context::state`]),
//!   not in the step: fields of a step are per partition and are not checkpointed.
//! - A failure stops the record: its outputs (main and side) are discarded and the failure
//!   goes to the policy (dead letter by default for permanent failures). State changes made
//!   by earlier steps for that record stay, exactly as they would on a replay.
//! - `finish` runs once when a bounded input is exhausted, on a fresh clone of the flow,
//!   before the final checkpoint.
//! - A flow with a concurrent `map_async` ([`Flow::concurrency`]) is run in two halves per
//!   record: the steps up to the call run as soon as a record enters the partition's window
//!   (so they may run ahead of earlier records' later steps, and must not touch keyed state,
//!   event time or side outputs: the context refuses with a `fatal` failure), the calls of
//!   up to N records run at once, and the steps after the call run record by record in
//!   source order. See [`Step::begin`].

mod flow;
mod ops;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

pub use flow::Flow;
pub use ops::{
    EventTime, Filter, FlatMap, Identity, KeyBy, Map, MapAsync, Named, OnFinish, ParseJson, Stateful, TryMap, Validate,
};

use crate::context::Context;
use crate::failure::Failure;

/// One step of a pipeline.
pub trait Step<In>: Clone + 'static {
    /// What the step produces.
    type Out;

    /// Handles one item, pushing any outputs into `out`.
    fn process(
        &mut self,
        item: In,
        cx: &mut Context<'_>,
        out: &mut Vec<Self::Out>,
    ) -> impl Future<Output = Result<(), Failure>>;

    /// Called once when a bounded input is exhausted; may push final outputs.
    fn finish(&mut self, cx: &mut Context<'_>, out: &mut Vec<Self::Out>) -> impl Future<Output = Result<(), Failure>> {
        let _ = (cx, out);
        async { Ok(()) }
    }

    /// How many records of a partition may be inside this step's async call at once. 1 (the
    /// default) for every step but a `map_async` given a [`Flow::concurrency`], and for
    /// chains holding none.
    fn concurrency(&self) -> usize {
        1
    }

    /// The first half of a record's run through a step whose [`concurrency`](Self::concurrency)
    /// is above 1: runs the steps before the concurrent call and pushes one [`Call`] per item
    /// that reaches it (none when an earlier step dropped the item). The runtime starts the
    /// calls, and hands each call's value to [`resume`](Self::resume), in order.
    ///
    /// Only the runtime calls this, and only when `concurrency() > 1`; a step that is not
    /// concurrent has nothing to override.
    #[doc(hidden)]
    fn begin(
        &mut self,
        item: In,
        cx: &mut Context<'_>,
        calls: &mut Vec<Call>,
    ) -> impl Future<Output = Result<(), Failure>> {
        let _ = (item, cx, calls);
        async { Err(not_concurrent()) }
    }

    /// The second half: runs the steps after the concurrent call on the value one of
    /// [`begin`](Self::begin)'s calls returned.
    #[doc(hidden)]
    fn resume(
        &mut self,
        value: CallValue,
        cx: &mut Context<'_>,
        out: &mut Vec<Self::Out>,
    ) -> impl Future<Output = Result<(), Failure>> {
        let _ = (value, cx, out);
        async { Err(not_concurrent()) }
    }
}

/// The value of a concurrent call, on its way from [`Step::begin`] to [`Step::resume`].
#[doc(hidden)]
pub type CallValue = Box<dyn Any>;

/// A concurrent call started by [`Step::begin`]; the runtime runs it as its own task.
#[doc(hidden)]
pub type Call = Pin<Box<dyn Future<Output = Result<CallValue, Failure>>>>;

fn not_concurrent() -> Failure {
    Failure::fatal("internal", "begin/resume called on a step with no concurrent call")
}

/// Two steps, the output of the first feeding the second.
pub struct Chain<A, B, Mid> {
    first: A,
    second: B,
    buf: Vec<Mid>,
}

impl<A, B, Mid> Chain<A, B, Mid> {
    /// `first`, then `second`.
    pub fn new(first: A, second: B) -> Self {
        Chain {
            first,
            second,
            buf: Vec::new(),
        }
    }
}

impl<A, B, Mid> Chain<A, B, Mid> {
    /// The same chain with its second step named (see [`Flow::named`]).
    pub(crate) fn name_second(self, name: &str) -> Chain<A, ops::Named<B>, Mid> {
        Chain::new(
            self.first,
            ops::Named {
                inner: self.second,
                name: name.into(),
            },
        )
    }
}

impl<A: Clone, B: Clone, Mid> Clone for Chain<A, B, Mid> {
    fn clone(&self) -> Self {
        Chain::new(self.first.clone(), self.second.clone())
    }
}

impl<In, A, B> Step<In> for Chain<A, B, A::Out>
where
    A: Step<In>,
    A::Out: 'static,
    B: Step<A::Out>,
{
    type Out = B::Out;

    async fn process(&mut self, item: In, cx: &mut Context<'_>, out: &mut Vec<B::Out>) -> Result<(), Failure> {
        self.buf.clear();
        self.first.process(item, cx, &mut self.buf).await?;
        // A one-output step is the common case: avoid the drain iterator.
        if self.buf.len() == 1 {
            if let Some(x) = self.buf.pop() {
                return self.second.process(x, cx, out).await;
            }
        }
        let mut items = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        for x in items.drain(..) {
            result = self.second.process(x, cx, out).await;
            if result.is_err() {
                break;
            }
        }
        items.clear();
        self.buf = items;
        result
    }

    async fn finish(&mut self, cx: &mut Context<'_>, out: &mut Vec<B::Out>) -> Result<(), Failure> {
        self.buf.clear();
        self.first.finish(cx, &mut self.buf).await?;
        let items = std::mem::take(&mut self.buf);
        for x in items {
            self.second.process(x, cx, out).await?;
        }
        self.second.finish(cx, out).await
    }

    /// That of the call that runs ahead: the first concurrent one.
    fn concurrency(&self) -> usize {
        match self.first.concurrency() {
            1 => self.second.concurrency(),
            n => n,
        }
    }

    // The concurrent call is in `first` when it has one (a second one in `second` then runs
    // one record at a time, inside `resume`), else in `second`.
    async fn begin(&mut self, item: In, cx: &mut Context<'_>, calls: &mut Vec<Call>) -> Result<(), Failure> {
        if self.first.concurrency() > 1 {
            return self.first.begin(item, cx, calls).await;
        }
        self.buf.clear();
        self.first.process(item, cx, &mut self.buf).await?;
        let mut items = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        for x in items.drain(..) {
            result = self.second.begin(x, cx, calls).await;
            if result.is_err() {
                break;
            }
        }
        items.clear();
        self.buf = items;
        result
    }

    async fn resume(&mut self, value: CallValue, cx: &mut Context<'_>, out: &mut Vec<B::Out>) -> Result<(), Failure> {
        if self.first.concurrency() <= 1 {
            return self.second.resume(value, cx, out).await;
        }
        self.buf.clear();
        self.first.resume(value, cx, &mut self.buf).await?;
        let mut items = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        for x in items.drain(..) {
            result = self.second.process(x, cx, out).await;
            if result.is_err() {
                break;
            }
        }
        items.clear();
        self.buf = items;
        result
    }
}
