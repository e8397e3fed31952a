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

mod flow;
mod ops;

use std::future::Future;

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
}
