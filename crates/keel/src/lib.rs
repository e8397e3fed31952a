//! keel: fault-tolerant data pipelines with exactly-once checkpoints.
//!
//! A pipeline reads [`Record`]s from a [`Source`], runs them through a [`Flow`] of steps and
//! writes them to a [`Sink`]. Every second (by default) keel takes a consistent checkpoint of
//! source positions, keyed state, watermarks and sink pre-commits; output becomes visible
//! only when its checkpoint is durable, so a crash at any instant loses nothing and
//! duplicates nothing after a restart. Failed records are classified ([`Failure`]) and sent
//! to a dead-letter output with their provenance.
//!
//! Where to look:
//! - [`checkpoint`]: the protocol, the manifest format, recovery decisions.
//! - [`state`]: keyed state and its snapshot format.
//! - [`step`]: steps and the [`Flow`] builder.
//! - [`failure`]: failure classes and reasons.
//! - [`runtime`]: building and running a [`Pipeline`].
//! - [`ledger`]: which units of work (files) are done, for idempotent batch ingestion.
//! - [`txn`]: staged transactions (stage, validate, commit or roll back).
//! - [`queue`]: a durable job queue (priorities, delays, leases, retries, a dead set) and its
//!   worker.
//! - [`ingest`]: idempotent batch ingestion: each file a unit in the ledger, its output one
//!   transaction.
//!
//! # Example
//!
//! A running total per customer, with bad records dead-lettered, using an in-memory source
//! and sinks from [`testing`] (the file connectors live in `keel-connectors`):
//!
//! ```
//! use keel::{Flow, Failure, Pipeline, Record, StateSpec};
//! use keel::testing::{MemorySink, VecSource};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { customer: String, amount: i64 }
//!
//! let totals = StateSpec::<i64>::new("totals");
//! let flow = Flow::<Record>::new()
//!     .parse_json::<Order>()
//!     .validate(|o| if o.amount < 0 { Err(Failure::permanent("negative_amount", "amount < 0")) } else { Ok(()) })
//!     .key_by(|o| o.customer.clone())
//!     .stateful(move |o, cx| {
//!         let total = cx.state(&totals).update(|t| { *t.get_or_insert(0) += o.amount; t.unwrap_or(0) })?;
//!         Ok(serde_json::json!({ "customer": o.customer, "running_total": total }))
//!     });
//!
//! let out = MemorySink::new();
//! let dead = MemorySink::new();
//! let source = VecSource::new(vec![vec![
//!     r#"{"customer":"a","amount":5}"#, r#"{"customer":"a","amount":-1}"#, r#"{"customer":"a","amount":2}"#,
//! ]]);
//! let summary = Pipeline::builder("orders")
//!     .source(source)
//!     .flow(flow)
//!     .sink(out.clone())
//!     .dead_letters(dead.clone())
//!     .build()?
//!     .run()?;
//! assert_eq!(summary.records_in, 3);
//! assert_eq!(out.committed_lines(), vec![
//!     r#"{"customer":"a","running_total":5}"#, r#"{"customer":"a","running_total":7}"#,
//! ]);
//! assert_eq!(dead.committed_lines().len(), 1);
//! # Ok::<(), keel::PipelineError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod context;
pub mod crash;
pub mod dead_letter;
pub mod durable;
pub mod failure;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod queue;
pub mod record;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
pub mod step;
pub mod testing;
pub mod time;
pub mod txn;
pub mod util;

/// What most pipelines need, in one import: `use keel::prelude::*;`.
pub mod prelude {
    pub use crate::checkpoint::{CheckpointStore, FileCheckpointStore};
    pub use crate::context::Context;
    pub use crate::failure::{Class, Failure, classify_status, reason};
    pub use crate::policy::call::{Breaker, Retry, RetryError};
    pub use crate::policy::{
        Action, Backoff, BreakerConfig, BudgetAction, ClassActions, Classifier, ClassifyRule, ErrorBudget, Jitter,
        Policies, RetryBudget, RetryPolicy,
    };
    pub use crate::record::{Record, SourceBatch};
    pub use crate::runtime::{Options, Outcome, Pipeline, PipelineError, RunSummary, ShutdownHandle};
    pub use crate::sink::{Guarantee, JsonEncoder, RawEncoder, Sink, SinkError};
    pub use crate::source::{PartitionReader, ReadStatus, Source, SourceError};
    pub use crate::state::StateSpec;
    pub use crate::step::{Flow, Step};
    pub use crate::testing::{MemorySink, VecSource};
    pub use crate::time::{LatePolicy, WatermarkConfig};
}

pub use checkpoint::{CheckpointStore, FileCheckpointStore, Manifest};
pub use context::{Context, KeyedState};
pub use failure::classify_status;
pub use failure::{Class, Failure, FailureError};
pub use policy::{Action, Backoff, ClassActions, Jitter, Policies, RetryPolicy};
pub use record::{Record, SourceBatch};
pub use runtime::{
    FailureCount, Options, Outcome, Pipeline, PipelineBuilder, PipelineError, Progress, ProgressSnapshot, RunSummary,
    ShutdownHandle,
};
pub use sink::{Encoder, Framing, Guarantee, JsonEncoder, OutBatch, RawEncoder, SealedEpoch, Sink, SinkError};
pub use source::{PartitionReader, ReadStatus, Source, SourceError};
pub use state::StateSpec;
pub use step::{Flow, Step};
pub use time::{LatePolicy, WatermarkConfig};
