//! Settings of the NATS source and sink.

use std::path::PathBuf;
use std::time::Duration;

/// Where a partition keel has no position for starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NatsStart {
    /// The first message still in the stream (nothing is skipped).
    #[default]
    Earliest,
    /// Only messages stored after the partition is opened.
    Latest,
    /// This stream sequence.
    Sequence(u64),
}

/// The NATS JetStream source.
#[derive(Clone, Debug)]
pub struct NatsSourceConfig {
    /// `nats://[user:pass@]host:port[,...]`.
    pub url: String,
    /// The stream.
    pub stream: String,
    /// Subject filters, each a partition (`stream:filter`); empty: the whole stream is one
    /// partition named after it.
    pub subjects: Vec<String>,
    /// Where partitions without a position start.
    pub start: NatsStart,
    /// Stop at the stream's last sequence as it was when the partition was opened.
    pub bounded: bool,
    /// A durable consumer name: the reader consumes through it and acknowledges what each
    /// checkpoint covers (for monitoring: `nats consumer info` shows the lag). keel resumes
    /// from its own checkpoints and recreates the consumer at that sequence on start.
    pub durable: Option<String>,
}

impl NatsSourceConfig {
    /// Reads all of `stream` from its first message, unbounded.
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        NatsSourceConfig {
            url: url.into(),
            stream: stream.into(),
            subjects: Vec::new(),
            start: NatsStart::Earliest,
            bounded: false,
            durable: None,
        }
    }
}

/// The NATS JetStream sink.
#[derive(Clone, Debug)]
pub struct NatsSinkConfig {
    /// `nats://[user:pass@]host:port[,...]`.
    pub url: String,
    /// The subject; a stream must capture it (keel does not create streams).
    pub subject: String,
    /// Where epochs are staged until their commit.
    pub staging: PathBuf,
    /// How long a commit keeps retrying through an outage before the run fails (it then
    /// resumes from its checkpoint on restart).
    pub publish_timeout: Duration,
    /// Messages published and not yet acknowledged by the stream, at most.
    pub max_in_flight: usize,
    /// Headers added to every message.
    pub headers: Vec<(String, String)>,
    /// The sink publishes dead letters (records are envelopes).
    pub dead_letters: bool,
}

impl NatsSinkConfig {
    /// Publishes to `subject`, staging in `staging`.
    pub fn new(url: impl Into<String>, subject: impl Into<String>, staging: impl Into<PathBuf>) -> Self {
        NatsSinkConfig {
            url: url.into(),
            subject: subject.into(),
            staging: staging.into(),
            publish_timeout: Duration::from_secs(300),
            max_in_flight: 4096,
            headers: Vec::new(),
            dead_letters: false,
        }
    }
}
