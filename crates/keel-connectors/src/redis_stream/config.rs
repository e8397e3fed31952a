//! Settings of the Redis Streams source and sink.

use std::path::PathBuf;
use std::time::Duration;

/// Where a stream keel has no position for starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisStreamStart {
    /// The first entry still in the stream.
    #[default]
    Earliest,
    /// Only entries added after the stream is opened.
    Latest,
}

/// The Redis Streams source.
#[derive(Clone, Debug)]
pub struct RedisStreamSourceConfig {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// The stream keys, each a partition.
    pub streams: Vec<String>,
    /// Where streams without a position start.
    pub start: RedisStreamStart,
    /// Stop at the last entry as it was when the stream was opened.
    pub bounded: bool,
    /// A consumer group whose last delivered id follows the checkpoints (monitoring only).
    pub group: Option<String>,
}

impl RedisStreamSourceConfig {
    /// Reads `streams` from their first entries, unbounded.
    pub fn new(url: impl Into<String>, streams: Vec<String>) -> Self {
        RedisStreamSourceConfig {
            url: url.into(),
            streams,
            start: RedisStreamStart::Earliest,
            bounded: false,
            group: None,
        }
    }
}

/// The Redis Streams sink.
#[derive(Clone, Debug)]
pub struct RedisStreamSinkConfig {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// The stream key.
    pub stream: String,
    /// Where epochs are staged until their commit.
    pub staging: PathBuf,
    /// `MAXLEN ~ n` on every `XADD`, if set.
    pub maxlen: Option<u64>,
    /// Entries per atomic append. `None` (the default): each epoch is one atomic append, so
    /// readers see whole epochs only. With `Some(n)`, a larger epoch is appended in chunks of
    /// `n` (each atomic with the progress key): a crash mid-commit then leaves a prefix of
    /// the epoch visible, which the restart completes (never rolls back).
    pub chunk: Option<usize>,
    /// How long a commit keeps retrying through an outage before the run fails.
    pub publish_timeout: Duration,
    /// The sink writes dead letters (records are envelopes).
    pub dead_letters: bool,
}

impl RedisStreamSinkConfig {
    /// Appends to `stream`, staging in `staging`.
    pub fn new(url: impl Into<String>, stream: impl Into<String>, staging: impl Into<PathBuf>) -> Self {
        RedisStreamSinkConfig {
            url: url.into(),
            stream: stream.into(),
            staging: staging.into(),
            maxlen: None,
            chunk: None,
            publish_timeout: Duration::from_secs(300),
            dead_letters: false,
        }
    }
}
