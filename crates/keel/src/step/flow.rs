//! The typed flow builder.

use std::future::Future;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;

use super::ops::*;
use super::{Chain, Step};
use crate::context::Context;
use crate::failure::Failure;
use crate::record::Record;

/// A chain of steps from `In` to `S::Out`, built with closures or [`Step`] impls.
///
/// ```
/// use keel::{Flow, Record, Failure};
/// #[derive(serde::Deserialize)]
/// struct Order { id: i64, amount: i64 }
/// let flow = Flow::<Record>::new()
///     .parse_json::<Order>()
///     .validate(|o| if o.amount < 0 { Err(Failure::permanent("negative_amount", "amount < 0")) } else { Ok(()) })
///     .map(|o| o.id);
/// # let _ = flow;
/// ```
pub struct Flow<In, S = Identity> {
    step: S,
    _in: PhantomData<fn(In)>,
}

impl<In, S: Clone> Clone for Flow<In, S> {
    fn clone(&self) -> Self {
        Flow {
            step: self.step.clone(),
            _in: PhantomData,
        }
    }
}

impl<In: 'static> Flow<In, Identity> {
    /// An empty flow: items pass through unchanged.
    pub fn new() -> Self {
        Flow {
            step: Identity,
            _in: PhantomData,
        }
    }
}

impl<In: 'static, A, B, M> Flow<In, Chain<A, B, M>> {
    /// Names the step added last (`.map_async(fetch).named("fetch")`): its failures report
    /// `name` as their stage, so that the per-stage policies of `name` apply to them.
    pub fn named(self, name: &str) -> Flow<In, Chain<A, Named<B>, M>> {
        Flow {
            step: self.step.name_second(name),
            _in: PhantomData,
        }
    }
}

impl<In: 'static, A, F, M> Flow<In, Chain<A, MapAsync<F>, M>> {
    /// Lets the `map_async` added last run for up to `n` records of a partition at once
    /// (`.map_async(fetch).concurrency(8)`); outputs stay in source order.
    ///
    /// How it runs: a partition keeps a window of up to `n` records of its current batch. A
    /// record entering the window runs the steps before the call right away and starts its
    /// call; the steps after the call run record by record, in order, when the record's turn
    /// comes. So the steps **before** the call run ahead of earlier records: they must be
    /// plain functions of the record (parse, map, filter, validate, key_by). Keyed state,
    /// event time and side outputs there are refused with a `fatal` failure; put them after
    /// the call. Only the first concurrent `map_async` of a flow runs ahead.
    ///
    /// Failures and positions are those of one-at-a-time processing: a failed call goes to
    /// its stage's policy when its record's turn comes (a retry runs that record alone while
    /// the calls behind it go on), and a checkpoint taken meanwhile holds the position before
    /// the oldest record not finished; calls of records behind it are started again after a
    /// restart (calls are at-least-once, like retries). `n` of 0 counts as 1.
    pub fn concurrency(self, n: usize) -> Self {
        let Chain { first, second, .. } = self.step;
        Flow {
            step: Chain::new(
                first,
                MapAsync {
                    f: second.f,
                    concurrency: n.max(1),
                },
            ),
            _in: PhantomData,
        }
    }
}

impl<In: 'static> Default for Flow<In, Identity> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: 'static, S: Step<In>> Flow<In, S>
where
    S::Out: 'static,
{
    /// The composed step.
    pub fn into_step(self) -> S {
        self.step
    }

    /// Appends any step.
    pub fn then<T: Step<S::Out>>(self, step: T) -> Flow<In, Chain<S, T, S::Out>> {
        Flow {
            step: Chain::new(self.step, step),
            _in: PhantomData,
        }
    }

    /// Appends a step whose failures report `name` as their stage.
    pub fn then_named<T: Step<S::Out>>(self, name: &str, step: T) -> Flow<In, Chain<S, Named<T>, S::Out>> {
        self.then(Named {
            inner: step,
            name: name.into(),
        })
    }

    /// One output per item.
    pub fn map<U, F>(self, f: F) -> Flow<In, Chain<S, Map<F>, S::Out>>
    where
        F: FnMut(S::Out) -> U + Clone + 'static,
    {
        self.then(Map(f))
    }

    /// One output per item, or a failure.
    pub fn try_map<U, F>(self, f: F) -> Flow<In, Chain<S, TryMap<F>, S::Out>>
    where
        F: FnMut(S::Out) -> Result<U, Failure> + Clone + 'static,
    {
        self.then(TryMap(f))
    }

    /// Keeps the items for which `f` is true.
    pub fn filter<F>(self, f: F) -> Flow<In, Chain<S, Filter<F>, S::Out>>
    where
        F: FnMut(&S::Out) -> bool + Clone + 'static,
    {
        self.then(Filter(f))
    }

    /// Zero or more outputs per item.
    pub fn flat_map<I, F>(self, f: F) -> Flow<In, Chain<S, FlatMap<F>, S::Out>>
    where
        I: IntoIterator,
        F: FnMut(S::Out) -> I + Clone + 'static,
    {
        self.then(FlatMap(f))
    }

    /// One output per item from an async function. Records of a partition are handled one
    /// at a time, in order, unless [`concurrency`](Flow::concurrency) follows; other
    /// partitions keep flowing while one waits.
    pub fn map_async<U, Fut, F>(self, f: F) -> Flow<In, Chain<S, MapAsync<F>, S::Out>>
    where
        F: FnMut(S::Out) -> Fut + Clone + 'static,
        Fut: Future<Output = Result<U, Failure>> + 'static,
        U: 'static,
    {
        self.then(MapAsync { f, concurrency: 1 })
    }

    /// Passes items on, or fails them.
    pub fn validate<F>(self, f: F) -> Flow<In, Chain<S, Validate<F>, S::Out>>
    where
        F: FnMut(&S::Out) -> Result<(), Failure> + Clone + 'static,
    {
        self.then(Validate(f))
    }

    /// Sets the key of the following stateful steps.
    pub fn key_by<K, F>(self, f: F) -> Flow<In, Chain<S, KeyBy<F>, S::Out>>
    where
        K: AsRef<[u8]>,
        F: FnMut(&S::Out) -> K + Clone + 'static,
    {
        self.then(KeyBy(f))
    }

    /// Takes event time (ms since the Unix epoch) from items; late items go to the late
    /// policy of the pipeline's watermark settings.
    pub fn event_time<F>(self, f: F) -> Flow<In, Chain<S, EventTime<F>, S::Out>>
    where
        F: FnMut(&S::Out) -> i64 + Clone + 'static,
    {
        self.then(EventTime(f))
    }

    /// A function of the item and the context: keyed state, side outputs, event time.
    pub fn stateful<U, F>(self, f: F) -> Flow<In, Chain<S, Stateful<F>, S::Out>>
    where
        F: FnMut(S::Out, &mut Context<'_>) -> Result<U, Failure> + Clone + 'static,
    {
        self.then(Stateful(f))
    }

    /// Runs `f` once when a bounded input is exhausted (to emit final results).
    pub fn on_finish<F>(self, f: F) -> Flow<In, Chain<S, OnFinish<F>, S::Out>>
    where
        F: FnMut(&mut Context<'_>, &mut Vec<S::Out>) -> Result<(), Failure> + Clone + 'static,
    {
        self.then(OnFinish(f))
    }
}

impl<S: Step<Record, Out = Record>> Flow<Record, S> {
    /// Decodes each record's value as JSON into `T`.
    pub fn parse_json<T: DeserializeOwned + 'static>(self) -> Flow<Record, Chain<S, ParseJson<T>, Record>> {
        self.then(ParseJson::new())
    }
}
