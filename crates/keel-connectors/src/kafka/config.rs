//! Settings of the Kafka source and sink, and the librdkafka client configurations they
//! make.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;

/// Where a partition keel has no position for starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest record still in the partition (the default: nothing is skipped).
    #[default]
    Earliest,
    /// Only records produced after the partition is opened.
    Latest,
    /// The first record with a timestamp at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

/// The Kafka source.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic names; an entry with `*` or `?` is a pattern matched against the broker's
    /// topics (at start and at each discovery).
    pub topics: Vec<String>,
    /// A consumer group to commit offsets to after each checkpoint, for lag tools only;
    /// keel resumes from its own checkpoints, never from the group's offsets.
    pub group: Option<String>,
    /// Where partitions keel has no position for start, at the first discovery of a run;
    /// partitions that appear later in the run start at their beginning.
    pub start: StartPosition,
    /// Stop at the end offsets seen when each partition is opened (tests, backfills).
    pub bounded: bool,
    /// How often to look for new partitions and topics (unbounded only).
    pub discovery_interval: Duration,
    /// librdkafka settings passed through (TLS, SASL, fetch sizes...).
    pub options: BTreeMap<String, String>,
}

impl KafkaSourceConfig {
    /// A source reading `topics` from `brokers`, from the earliest offsets, unbounded.
    pub fn new(brokers: impl Into<String>, topics: Vec<String>) -> Self {
        KafkaSourceConfig {
            brokers: brokers.into(),
            topics,
            group: None,
            start: StartPosition::Earliest,
            bounded: false,
            discovery_interval: Duration::from_secs(30),
            options: BTreeMap::new(),
        }
    }

    pub(crate) fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            // keel's checkpoints hold the positions; the group only mirrors them
            .set("group.id", self.group.as_deref().unwrap_or("keel-unused"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", if self.bounded { "true" } else { "false" })
            .set("isolation.level", "read_committed")
            // partition ends for the readers' lag
            .set("statistics.interval.ms", "5000");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// How the sink picks the partition of a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Partitioner {
    /// murmur2 of the key, as Kafka's Java clients and Kafka Streams do, so keel's output
    /// is co-partitioned with theirs; records without a key go round-robin.
    #[default]
    Murmur2,
    /// Round-robin by sequence, ignoring keys.
    RoundRobin,
}

/// The Kafka sink.
#[derive(Clone, Debug)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// The output topic. It must exist (keel does not create topics).
    pub topic: String,
    /// A top-level field of the output records naming each record's topic (one sink
    /// feeding several topics, as a CDC pipeline writes one per table). A record without it,
    /// or whose value is not a valid topic name, goes to `topic`.
    pub topic_field: Option<String>,
    /// Partition choice; fixed per epoch with the partition count seen when it is prepared.
    pub partitioner: Partitioner,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd` (librdkafka's `compression.type`).
    pub compression: Option<String>,
    /// Headers added to every record.
    pub headers: Vec<(String, String)>,
    /// Directory where each epoch's records are staged durably until its commit.
    pub staging: PathBuf,
    /// librdkafka settings passed through.
    pub options: BTreeMap<String, String>,
    /// How long a commit may wait for the broker before the checkpoint fails (and the next
    /// start finishes it).
    pub publish_timeout: Duration,
    /// Publish each epoch in one Kafka transaction with its progress record (KIP-98; see
    /// [`super::transactional`]): read_committed consumers then see whole epochs only. Needs
    /// a broker whose read_committed fetches hide aborted records.
    pub transactional: bool,
    /// The transactional id (default `keel-<pipeline>-<sink>`): one live producer per id;
    /// a new one fences the old.
    pub transactional_id: Option<String>,
    /// Publish dead letters: each record written is a dead-letter envelope, published as the
    /// original record with the envelope in `keel.error.*` headers
    /// ([`super::dead_letters`]).
    pub dead_letters: bool,
    /// Dead letters only: a local dead-letter directory that takes an epoch the topic does
    /// not take within `fallback_after` (topic missing, refused, broker down). Its dead
    /// letters are published into the topic later, at a commit once the topic answers (at
    /// most every 30 s) and at start, then removed from the directory.
    pub fallback: Option<PathBuf>,
    /// How long a dead-letter epoch may wait for the topic before it goes to `fallback`.
    pub fallback_after: Duration,
}

impl KafkaSinkConfig {
    /// A sink writing to `topic`, staging in `staging`.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>, staging: impl Into<PathBuf>) -> Self {
        KafkaSinkConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            partitioner: Partitioner::Murmur2,
            compression: None,
            headers: Vec::new(),
            staging: staging.into(),
            options: BTreeMap::new(),
            publish_timeout: Duration::from_secs(120),
            topic_field: None,
            transactional: false,
            transactional_id: None,
            dead_letters: false,
            fallback: None,
            fallback_after: Duration::from_secs(30),
        }
    }

    /// A dead-letter sink writing to `topic`, with a local directory as its fallback.
    pub fn dead_letters(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        staging: impl Into<PathBuf>,
        fallback: Option<PathBuf>,
    ) -> Self {
        KafkaSinkConfig {
            dead_letters: true,
            fallback,
            ..KafkaSinkConfig::new(brokers, topic, staging)
        }
    }

    /// How long a commit waits for the broker: `fallback_after` when a fallback takes over
    /// after it, else `publish_timeout`.
    pub(crate) fn patience(&self) -> Duration {
        match &self.fallback {
            Some(_) if self.dead_letters => self.fallback_after,
            _ => self.publish_timeout,
        }
    }

    pub(crate) fn producer(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("linger.ms", "5");
        if let Some(codec) = &self.compression {
            c.set("compression.type", codec);
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        // after the user's options: no duplicates from librdkafka's own retries, and a
        // record counts as published only once it is replicated
        c.set("enable.idempotence", "true").set("acks", "all");
        c
    }

    /// The largest value keel publishes: librdkafka refuses a message over
    /// `message.max.bytes` (1,000,000 by default), and the headers and the record's framing
    /// take a few hundred bytes of it.
    pub(crate) fn max_message_bytes(&self, writer_len: usize) -> usize {
        let max = self
            .options
            .get("message.max.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1_000_000);
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        max.saturating_sub(512 + writer_len + headers)
    }

    pub(crate) fn reader(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", "keel-readback")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true");
        for (k, v) in &self.options {
            // the producer's settings that a consumer does not know only warn
            if !k.starts_with("compression") && !k.starts_with("linger") && !k.starts_with("acks") {
                c.set(k, v);
            }
        }
        c
    }
}
