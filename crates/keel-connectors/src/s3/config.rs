//! Settings of the object storage sink.

use std::path::PathBuf;
use std::time::Duration;

use crate::txn::S3Location;

/// The object storage sink.
#[derive(Clone, Debug)]
pub struct S3SinkConfig {
    /// The bucket, the prefix the sink owns, the endpoint and credentials.
    pub location: S3Location,
    /// Where epochs are staged until their commit.
    pub staging: PathBuf,
    /// The object name extension (`jsonl`, `csv`).
    pub extension: String,
    /// A first line of every object (a CSV header), without its line break.
    pub header: Option<String>,
    /// Start a new object of the epoch after this many bytes.
    pub max_file_bytes: u64,
    /// How long a commit keeps retrying through an outage before the run fails.
    pub publish_timeout: Duration,
    /// The sink writes dead letters (records are envelopes, written as JSON lines).
    pub dead_letters: bool,
}

impl S3SinkConfig {
    /// JSON lines under `location`, staging in `staging`.
    pub fn new(location: S3Location, staging: impl Into<PathBuf>) -> Self {
        S3SinkConfig {
            location,
            staging: staging.into(),
            extension: "jsonl".into(),
            header: None,
            max_file_bytes: 128 << 20,
            publish_timeout: Duration::from_secs(300),
            dead_letters: false,
        }
    }
}
