//! Classified failures of single records.
//!
//! Every error that concerns a record is turned into a [`Failure`] once, where it is created:
//! it carries a [`Class`] (what can be done about it), a stable snake_case [`reason`]
//! (what went wrong, for counting and filtering dead letters), the stage that failed and the
//! error chain. Policies decide from the class and reason; they never parse messages.
//!
//! [`reason`]: Failure::reason

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What can be done about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Might succeed if tried again (network error, timeout, 5xx, 408).
    Transient,
    /// The other side asks us to slow down (429, broker backpressure).
    Throttled,
    /// Will fail again with the same input (malformed input, 4xx, a step's own error).
    Permanent,
    /// Nothing can proceed (disk full, corrupt state, authentication failure).
    Fatal,
}

impl Class {
    /// The snake_case name used in configuration, envelopes and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Throttled => "throttled",
            Class::Permanent => "permanent",
            Class::Fatal => "fatal",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable reasons used by keel itself. Users may use any other snake_case reason.
pub mod reason {
    /// The input is not well-formed (not JSON, not an object, bad CSV row).
    pub const MALFORMED: &str = "malformed";
    /// The input is not valid UTF-8 where text was expected.
    pub const INVALID_UTF8: &str = "invalid_utf8";
    /// A required field is absent or null.
    pub const MISSING_FIELD: &str = "missing_field";
    /// A field has the wrong type.
    pub const BAD_TYPE: &str = "bad_type";
    /// A JSON Schema rejected the record.
    pub const SCHEMA_VIOLATION: &str = "schema_violation";
    /// A CSV row has more or fewer fields than its header (or configured columns).
    pub const COLUMN_COUNT: &str = "column_count";
    /// A record is larger than the configured maximum.
    pub const OVERSIZED: &str = "oversized";
    /// A user step returned an error.
    pub const STEP_ERROR: &str = "step_error";
    /// A sink refused the record.
    pub const SINK_REJECTED: &str = "sink_rejected";
    /// Code of a step, a sink or a source panicked (fatal: the run stops).
    pub const PANIC: &str = "panic";
    /// A sink's staged data is in an unknown state after a failed write (fatal).
    pub const SINK_BROKEN: &str = "sink_broken";
    /// Retries did not succeed within the policy's limits.
    pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
    /// The record's event time is behind the watermark.
    pub const LATE: &str = "late";
    /// The record's event time is further ahead of the wall clock than the allowed skew.
    pub const FUTURE_EVENT_TIME: &str = "future_event_time";
    /// A key was seen before within the dedupe window.
    pub const DUPLICATE: &str = "duplicate";
    /// A jq program failed at run time.
    pub const TRANSFORM_ERROR: &str = "transform_error";
    /// An I/O error.
    pub const IO: &str = "io";
    /// A timeout.
    pub const TIMEOUT: &str = "timeout";
}

/// A classified failure of one record (or of one call on its behalf).
///
/// The details live behind one allocation, so that `Result<_, Failure>` stays as small as a
/// pointer on the hot path where nothing fails. Fields are reached through `Deref`
/// (`failure.reason`, `failure.class`).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure(Box<FailureDetails>);

/// The details of a [`Failure`].
#[derive(Clone, Debug, PartialEq)]
pub struct FailureDetails {
    /// What can be done about it.
    pub class: Class,
    /// Stable snake_case reason, such as `malformed` or `negative_amount`.
    pub reason: Cow<'static, str>,
    /// The field concerned, when there is one (`missing_field` of `amount`).
    pub field: Option<String>,
    /// Human-readable message.
    pub message: String,
    /// The stage that failed (`decode`, a step name, a sink name); set by the runtime when empty.
    pub stage: String,
    /// The error chain, outermost first, as text.
    pub chain: Vec<String>,
    /// When the server said so: wait at least this long before trying again.
    pub retry_after: Option<Duration>,
    /// A correlation id of the record (for example its `id` field), when known.
    pub record_id: Option<serde_json::Value>,
    /// HTTP-style status code, when the failure came from such a call.
    pub status: Option<u16>,
}

impl std::ops::Deref for Failure {
    type Target = FailureDetails;
    fn deref(&self) -> &FailureDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Failure {
    fn deref_mut(&mut self) -> &mut FailureDetails {
        &mut self.0
    }
}

impl Failure {
    /// A failure of the given class and reason.
    pub fn new(class: Class, reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Failure(Box::new(FailureDetails {
            class,
            reason: reason.into(),
            field: None,
            message: message.into(),
            stage: String::new(),
            chain: Vec::new(),
            retry_after: None,
            record_id: None,
            status: None,
        }))
    }

    /// A permanent failure: the same input will fail again.
    pub fn permanent(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(Class::Permanent, reason, message)
    }

    /// A transient failure: trying again may succeed.
    pub fn transient(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(Class::Transient, reason, message)
    }

    /// A throttled failure (reason like `rate_limited`), optionally with the delay the other
    /// side asked for.
    pub fn throttled(
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut f = Self::new(Class::Throttled, reason, message);
        f.retry_after = retry_after;
        f
    }

    /// A fatal failure: the pipeline cannot proceed.
    pub fn fatal(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(Class::Fatal, reason, message)
    }

    /// Classifies any error with the default classifier (see [`classify_error`]).
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> Self {
        classify_error(err)
    }

    /// Sets the field concerned.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Sets the stage, replacing any stage already set.
    pub fn with_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = stage.into();
        self
    }

    /// Sets the record's correlation id.
    pub fn with_record_id(mut self, id: serde_json::Value) -> Self {
        self.record_id = Some(id);
        self
    }

    /// Sets an HTTP-style status code.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the stage if no stage is set yet.
    pub(crate) fn stage_or(&mut self, stage: &str) {
        if self.stage.is_empty() {
            self.stage = stage.to_owned();
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.reason, self.class)?;
        if !self.stage.is_empty() {
            write!(f, ", stage {}", self.stage)?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        write!(f, "): {}", self.message)
    }
}

/// Classifies an HTTP-style status code: 408 and 5xx transient, 429 throttled, other 4xx
/// permanent. Returns `None` for codes that are not errors.
pub fn classify_status(status: u16) -> Option<Class> {
    match status {
        408 => Some(Class::Transient),
        429 => Some(Class::Throttled),
        400..=499 => Some(Class::Permanent),
        500..=599 => Some(Class::Transient),
        _ => None,
    }
}

/// The default classifier for errors that are not already [`Failure`]s.
///
/// Walks the error chain: I/O errors are classified by kind (connection and timeout errors
/// are transient, a full disk or a permission error is fatal, invalid data is permanent),
/// `serde_json` errors are `malformed` unless they are I/O errors, and anything else is a
/// permanent `step_error`.
pub fn classify_error(err: &(dyn std::error::Error + 'static)) -> Failure {
    let chain = error_chain(err);
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut failure = None;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            failure = Some(classify_io(io));
            break;
        }
        if let Some(js) = e.downcast_ref::<serde_json::Error>() {
            failure = Some(if js.is_io() {
                Failure::transient(reason::IO, js.to_string())
            } else {
                Failure::permanent(reason::MALFORMED, js.to_string())
            });
            break;
        }
        if let Some(f) = e.downcast_ref::<FailureError>() {
            failure = Some(f.0.clone());
            break;
        }
        cur = e.source();
    }
    let mut failure = failure.unwrap_or_else(|| Failure::permanent(reason::STEP_ERROR, err.to_string()));
    failure.message = err.to_string();
    failure.chain = chain;
    failure
}

/// `context`, prefixed with `disk full: ` when `err` says the disk (or a quota) is full, so
/// that an operator reads the cause first.
pub fn name_io_cause(context: String, err: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match err.kind() {
        K::StorageFull | K::QuotaExceeded => format!("disk full: {context}"),
        _ => context,
    }
}

/// Classifies an I/O error by its kind.
pub fn classify_io(err: &std::io::Error) -> Failure {
    use std::io::ErrorKind as K;
    let msg = err.to_string();
    match err.kind() {
        K::TimedOut => Failure::transient(reason::TIMEOUT, msg),
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::Interrupted
        | K::WouldBlock
        | K::AddrNotAvailable
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown
        | K::ResourceBusy => Failure::transient(reason::IO, msg),
        K::StorageFull | K::QuotaExceeded | K::PermissionDenied | K::ReadOnlyFilesystem => {
            Failure::fatal(reason::IO, msg)
        }
        K::InvalidData | K::InvalidInput | K::UnexpectedEof => Failure::permanent(reason::MALFORMED, msg),
        _ => Failure::transient(reason::IO, msg),
    }
}

/// The messages of an error and all its sources, outermost first.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push(e.to_string());
        cur = e.source();
    }
    out
}

/// A [`Failure`] wrapped as a `std::error::Error`, for code that must return one.
#[derive(Debug)]
pub struct FailureError(pub Failure);

impl fmt::Display for FailureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for FailureError {}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(err: E) -> Self {
        classify_error(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_classified() {
        assert_eq!(classify_status(408), Some(Class::Transient));
        assert_eq!(classify_status(429), Some(Class::Throttled));
        assert_eq!(classify_status(404), Some(Class::Permanent));
        assert_eq!(classify_status(400), Some(Class::Permanent));
        assert_eq!(classify_status(503), Some(Class::Transient));
        assert_eq!(classify_status(200), None);
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        let f: Failure = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        assert_eq!((f.class, f.reason.as_ref()), (Class::Transient, "timeout"));
        let f: Failure = std::io::Error::new(std::io::ErrorKind::StorageFull, "full").into();
        assert_eq!(f.class, Class::Fatal);
        let f: Failure = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no").into();
        assert_eq!(f.class, Class::Transient);
    }

    #[test]
    fn json_errors_are_malformed_and_keep_their_chain() {
        let err = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let f: Failure = err.into();
        assert_eq!((f.class, f.reason.as_ref()), (Class::Permanent, "malformed"));
        assert_eq!(f.chain.len(), 1);
    }

    #[test]
    fn unknown_errors_are_permanent_step_errors() {
        #[derive(Debug)]
        struct Mine;
        impl fmt::Display for Mine {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("mine")
            }
        }
        impl std::error::Error for Mine {}
        let f: Failure = Mine.into();
        assert_eq!(
            (f.class, f.reason.as_ref(), f.message.as_str()),
            (Class::Permanent, "step_error", "mine")
        );
    }
}
