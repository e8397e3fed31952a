//! Pipelines declared in TOML: the file format of `keel run`.
//!
//! A pipeline file names a source, a list of steps, sinks, a dead-letter output and
//! checkpoint settings ([`config`] documents every key). [`load`] reads and parses it
//! ([`de`] reports every mistake at once, each at the line and path of its own key),
//! [`build()`] checks what needs a well-formed file (reporting the line of each problem) and
//! builds a [`keel::Pipeline`] on the same engine as the Rust API: the steps become one
//! [`DocChain`] step over [`Doc`]s, cheap JSON objects that keep untouched values as text.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod build;
pub mod config;
pub mod de;
pub mod dead_letters;
mod delta;
pub mod doc;
pub mod encode;
pub mod error;
pub mod ingest;
pub mod interpolate;
mod kafka;
mod nats;
pub mod notify;
mod postgres;
mod redis_stream;
pub mod replay;
mod s3;
pub mod source;
pub mod steps;

pub use build::{DeclaredPipeline, Loaded, Variant, build, build_variant, load};
pub use doc::Doc;
pub use error::{ConfigError, ConfigErrors};
pub use steps::DocChain;
