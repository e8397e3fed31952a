//! The built-in steps behind [`super::Flow`]'s methods.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::{Call, CallValue, Step};
use crate::context::Context;
use crate::failure::{Failure, reason};
use crate::record::Record;

/// Passes items through unchanged (the start of a flow).
pub struct Identity;

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity
    }
}

impl<In: 'static> Step<In> for Identity {
    type Out = In;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<In>) -> Result<(), Failure> {
        out.push(item);
        Ok(())
    }
}

/// Gives a step a name: failures of the inner step report it as their stage.
#[derive(Clone)]
pub struct Named<S> {
    pub(crate) inner: S,
    pub(crate) name: Arc<str>,
}

impl<In, S: Step<In>> Step<In> for Named<S> {
    type Out = S::Out;
    async fn process(&mut self, item: In, cx: &mut Context<'_>, out: &mut Vec<S::Out>) -> Result<(), Failure> {
        self.inner
            .process(item, cx, out)
            .await
            .map_err(|f| f.with_stage(&*self.name))
    }
    async fn finish(&mut self, cx: &mut Context<'_>, out: &mut Vec<S::Out>) -> Result<(), Failure> {
        self.inner.finish(cx, out).await.map_err(|f| f.with_stage(&*self.name))
    }
    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }
    async fn begin(&mut self, item: In, cx: &mut Context<'_>, calls: &mut Vec<Call>) -> Result<(), Failure> {
        let first = calls.len();
        self.inner
            .begin(item, cx, calls)
            .await
            .map_err(|f| f.with_stage(&*self.name))?;
        // the calls fail under this name too
        for call in &mut calls[first..] {
            let inner = std::mem::replace(call, Box::pin(async { Ok(Box::new(()) as CallValue) }));
            let name = self.name.clone();
            *call = Box::pin(async move { inner.await.map_err(|f| f.with_stage(&*name)) });
        }
        Ok(())
    }
    async fn resume(&mut self, value: CallValue, cx: &mut Context<'_>, out: &mut Vec<S::Out>) -> Result<(), Failure> {
        self.inner
            .resume(value, cx, out)
            .await
            .map_err(|f| f.with_stage(&*self.name))
    }
}

macro_rules! stage {
    ($r:expr, $name:expr) => {
        $r.map_err(|mut f: Failure| {
            f.stage_or($name);
            f
        })
    };
}

/// `map`: one output per input.
#[derive(Clone)]
pub struct Map<F>(pub(crate) F);

impl<In, Out, F> Step<In> for Map<F>
where
    F: FnMut(In) -> Out + Clone + 'static,
{
    type Out = Out;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<Out>) -> Result<(), Failure> {
        out.push((self.0)(item));
        Ok(())
    }
}

/// `try_map`: one output per input, or a failure.
#[derive(Clone)]
pub struct TryMap<F>(pub(crate) F);

impl<In, Out, F> Step<In> for TryMap<F>
where
    F: FnMut(In) -> Result<Out, Failure> + Clone + 'static,
{
    type Out = Out;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<Out>) -> Result<(), Failure> {
        out.push(stage!((self.0)(item), "map")?);
        Ok(())
    }
}

/// `filter`: keeps the items for which the predicate is true.
#[derive(Clone)]
pub struct Filter<F>(pub(crate) F);

impl<In, F> Step<In> for Filter<F>
where
    In: 'static,
    F: FnMut(&In) -> bool + Clone + 'static,
{
    type Out = In;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<In>) -> Result<(), Failure> {
        if (self.0)(&item) {
            out.push(item);
        }
        Ok(())
    }
}

/// `flat_map`: zero or more outputs per input.
#[derive(Clone)]
pub struct FlatMap<F>(pub(crate) F);

impl<In, I, F> Step<In> for FlatMap<F>
where
    I: IntoIterator,
    F: FnMut(In) -> I + Clone + 'static,
{
    type Out = I::Item;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<I::Item>) -> Result<(), Failure> {
        out.extend((self.0)(item));
        Ok(())
    }
}

/// `map_async`: one output per input from an async function (a lookup, an API call), for
/// up to `concurrency` records of a partition at once (see [`super::Flow::concurrency`]).
#[derive(Clone)]
pub struct MapAsync<F> {
    pub(crate) f: F,
    pub(crate) concurrency: usize,
}

impl<In, Out, Fut, F> Step<In> for MapAsync<F>
where
    F: FnMut(In) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<Out, Failure>> + 'static,
    Out: 'static,
{
    type Out = Out;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<Out>) -> Result<(), Failure> {
        out.push(stage!((self.f)(item).await, "map_async")?);
        Ok(())
    }
    fn concurrency(&self) -> usize {
        self.concurrency
    }
    async fn begin(&mut self, item: In, _cx: &mut Context<'_>, calls: &mut Vec<Call>) -> Result<(), Failure> {
        let call = (self.f)(item);
        calls.push(Box::pin(async move {
            let value = stage!(call.await, "map_async")?;
            Ok(Box::new(value) as CallValue)
        }));
        Ok(())
    }
    async fn resume(&mut self, value: CallValue, _cx: &mut Context<'_>, out: &mut Vec<Out>) -> Result<(), Failure> {
        match value.downcast::<Out>() {
            Ok(v) => {
                out.push(*v);
                Ok(())
            }
            Err(_) => Err(
                Failure::fatal("internal", "a concurrent call returned a value of another type")
                    .with_stage("map_async"),
            ),
        }
    }
}

/// `validate`: passes the item on, or fails it.
#[derive(Clone)]
pub struct Validate<F>(pub(crate) F);

impl<In, F> Step<In> for Validate<F>
where
    In: 'static,
    F: FnMut(&In) -> Result<(), Failure> + Clone + 'static,
{
    type Out = In;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<In>) -> Result<(), Failure> {
        stage!((self.0)(&item), "validate")?;
        out.push(item);
        Ok(())
    }
}

/// `key_by`: sets the key of the following stateful steps.
#[derive(Clone)]
pub struct KeyBy<F>(pub(crate) F);

impl<In, K, F> Step<In> for KeyBy<F>
where
    In: 'static,
    K: AsRef<[u8]>,
    F: FnMut(&In) -> K + Clone + 'static,
{
    type Out = In;
    async fn process(&mut self, item: In, cx: &mut Context<'_>, out: &mut Vec<In>) -> Result<(), Failure> {
        let key = (self.0)(&item);
        cx.set_key(key.as_ref());
        out.push(item);
        Ok(())
    }
}

/// `event_time`: takes the event time from the item, advances the watermark and applies the
/// late policy.
#[derive(Clone)]
pub struct EventTime<F>(pub(crate) F);

impl<In, F> Step<In> for EventTime<F>
where
    In: 'static,
    F: FnMut(&In) -> i64 + Clone + 'static,
{
    type Out = In;
    async fn process(&mut self, item: In, cx: &mut Context<'_>, out: &mut Vec<In>) -> Result<(), Failure> {
        let ts = (self.0)(&item);
        if stage!(cx.observe_event_time(ts), "event_time")? {
            out.push(item);
        }
        Ok(())
    }
}

/// `stateful`: a function of the item and the context (keyed state, side outputs).
#[derive(Clone)]
pub struct Stateful<F>(pub(crate) F);

impl<In, Out, F> Step<In> for Stateful<F>
where
    F: FnMut(In, &mut Context<'_>) -> Result<Out, Failure> + Clone + 'static,
{
    type Out = Out;
    async fn process(&mut self, item: In, cx: &mut Context<'_>, out: &mut Vec<Out>) -> Result<(), Failure> {
        out.push(stage!((self.0)(item, cx), "stateful")?);
        Ok(())
    }
}

/// `on_finish`: passes items through and runs a function once at the end of a bounded input.
#[derive(Clone)]
pub struct OnFinish<F>(pub(crate) F);

impl<In, F> Step<In> for OnFinish<F>
where
    In: 'static,
    F: FnMut(&mut Context<'_>, &mut Vec<In>) -> Result<(), Failure> + Clone + 'static,
{
    type Out = In;
    async fn process(&mut self, item: In, _cx: &mut Context<'_>, out: &mut Vec<In>) -> Result<(), Failure> {
        out.push(item);
        Ok(())
    }
    async fn finish(&mut self, cx: &mut Context<'_>, out: &mut Vec<In>) -> Result<(), Failure> {
        stage!((self.0)(cx, out), "on_finish")
    }
}

/// `parse_json`: decodes a record's value into `T` with serde.
///
/// Failures are classified: a syntax error is `malformed`, a missing field `missing_field`
/// (with the field), a wrong type `bad_type`.
pub struct ParseJson<T>(PhantomData<fn() -> T>);

impl<T> ParseJson<T> {
    pub(crate) fn new() -> Self {
        ParseJson(PhantomData)
    }
}

impl<T> Clone for ParseJson<T> {
    fn clone(&self) -> Self {
        ParseJson(PhantomData)
    }
}

impl<T: DeserializeOwned + 'static> Step<Record> for ParseJson<T> {
    type Out = T;
    async fn process(&mut self, item: Record, _cx: &mut Context<'_>, out: &mut Vec<T>) -> Result<(), Failure> {
        match serde_json::from_slice::<T>(&item.value) {
            Ok(v) => {
                out.push(v);
                Ok(())
            }
            Err(e) => Err(json_failure(&e).with_stage("parse_json")),
        }
    }
}

/// Classifies a `serde_json` decoding error.
pub fn json_failure(e: &serde_json::Error) -> Failure {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Io => Failure::transient(reason::IO, msg),
        Category::Syntax | Category::Eof => Failure::permanent(reason::MALFORMED, msg),
        Category::Data => {
            if let Some(rest) = msg.strip_prefix("missing field `") {
                let field = rest.split('`').next().unwrap_or_default().to_owned();
                Failure::permanent(reason::MISSING_FIELD, msg).with_field(field)
            } else if msg.starts_with("invalid type") {
                Failure::permanent(reason::BAD_TYPE, msg)
            } else {
                Failure::permanent(reason::MALFORMED, msg)
            }
        }
    }
}
