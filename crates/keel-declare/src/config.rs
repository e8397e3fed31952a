//! The pipeline file: every table and key `keel run` accepts.
//!
//! Every struct refuses unknown keys, so a typo is an error that names the key and its line,
//! not a silently ignored setting. Durations are strings such as `"500ms"`, `"1s"`, `"5m"`.
//!
//! These structs are read with [`crate::de::from_tree`] (through [`crate::load`]), which
//! reports every mistake with its line and key path. The enums of tables (sources, steps,
//! sinks) are plain serde enums there: a table's `type` key names the variant.

use indexmap::IndexMap;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use keel::LatePolicy;
use keel_connectors::file::FileFormat;

pub use crate::steps::EmptyFields;
use serde::{Deserialize, Deserializer};

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pipeline name: used in checkpoints, dead letters and logs.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Where records come from.
    pub source: SourceConfig,
    /// What happens to each record, in order.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Where records go: the first sink receives the output of the last step; others are
    /// reached by name (for example the final results of an `aggregate` step).
    pub sinks: Vec<SinkConfig>,
    /// Where failed records go, with their reason and provenance.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Checkpoint settings.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Runtime tuning.
    #[serde(default)]
    pub run: RunConfig,
    /// How failures are classified and handled.
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// Batch ingestion: each input file a unit in a ledger, its output one transaction.
    #[serde(default)]
    pub ingest: Option<IngestConfig>,
    /// `[metrics]`: where `keel run` serves `/metrics`, `/health` and `/ready`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[[notify]]`: webhooks that hear of run-level events.
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
}

/// The source.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceConfig {
    /// A directory of files, each a partition.
    Files(FilesSourceConfig),
    /// Synthetic order records.
    Generator(GeneratorSourceConfig),
    /// Kafka topics (the `kafka` feature).
    Kafka(KafkaSourceToml),
    /// A NATS JetStream stream (the `nats` feature).
    Nats(NatsSourceToml),
    /// Redis streams (the `redis` feature).
    RedisStream(RedisStreamSourceToml),
}

/// `type = "nats"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceToml {
    /// `nats://[user:pass@]host:port[,...]`.
    pub url: String,
    /// The stream (it must exist: keel does not create streams).
    pub stream: String,
    /// Subject filters, each a partition; none: the whole stream is one partition.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Where partitions without a position start: `earliest` (default), `latest`, or a
    /// stream sequence.
    #[serde(default, deserialize_with = "nats_start")]
    pub start: Option<NatsStartToml>,
    /// Stop at the stream's last message as of the start (tests, backfills).
    #[serde(default)]
    pub bounded: bool,
    /// A durable consumer acknowledged after each checkpoint, for monitoring.
    #[serde(default)]
    pub durable: Option<String>,
}

/// Where a NATS partition starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsStartToml {
    /// The first message.
    Earliest,
    /// Messages stored from now on.
    Latest,
    /// This stream sequence.
    Sequence(u64),
}

fn nats_start<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NatsStartToml>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<NatsStartToml>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("`earliest`, `latest` or a stream sequence")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v {
                "earliest" => Ok(Some(NatsStartToml::Earliest)),
                "latest" => Ok(Some(NatsStartToml::Latest)),
                other => Err(E::custom(format!(
                    "`{other}` is not a start: use `earliest`, `latest` or a stream sequence"
                ))),
            }
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(|v| Some(NatsStartToml::Sequence(v)))
                .map_err(|_| E::custom("a stream sequence is not negative"))
        }
    }
    d.deserialize_any(V)
}

/// `type = "redis_stream"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamSourceToml {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// Stream keys, each a partition.
    pub streams: Vec<String>,
    /// Where streams without a position start: `earliest` (default) or `latest`.
    #[serde(default)]
    pub start: Option<RedisStreamStartToml>,
    /// Stop at each stream's last entry as of the start.
    #[serde(default)]
    pub bounded: bool,
    /// A consumer group whose last delivered id follows the checkpoints (monitoring).
    #[serde(default)]
    pub group: Option<String>,
}

/// Where a Redis stream starts.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedisStreamStartToml {
    /// The first entry.
    Earliest,
    /// Entries added from now on.
    Latest,
}

/// `type = "kafka"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceToml {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic names; `*` and `?` make a name a pattern (`orders-*`), matched at start and at
    /// each discovery.
    pub topics: Vec<String>,
    /// A consumer group that gets the offsets of each checkpoint, for lag tools (keel
    /// resumes from its own checkpoints).
    #[serde(default)]
    pub group: Option<String>,
    /// Where partitions start when keel has no position for them at the first discovery of
    /// a run: `earliest` (default), `latest`, or a time in ms since the Unix epoch.
    #[serde(default, deserialize_with = "kafka_start")]
    pub start: Option<KafkaStart>,
    /// Stop at the end of each partition (tests, backfills); a later run reads on.
    #[serde(default)]
    pub bounded: bool,
    /// How often to look for new topics and partitions (default 30s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub discovery_interval: Option<Duration>,
    /// librdkafka settings passed through (`security.protocol`, `sasl.*`, `ssl.*`...).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Where a Kafka partition starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaStart {
    /// The oldest record.
    Earliest,
    /// Records produced from now on.
    Latest,
    /// The first record at or after this time, ms since the Unix epoch.
    Time(i64),
}

fn kafka_start<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KafkaStart>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<KafkaStart>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("`earliest`, `latest` or a time in milliseconds since 1970")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v {
                "earliest" => Ok(Some(KafkaStart::Earliest)),
                "latest" => Ok(Some(KafkaStart::Latest)),
                other => Err(E::custom(format!(
                    "`{other}` is not a start: use `earliest`, `latest` or a time in milliseconds since 1970"
                ))),
            }
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(KafkaStart::Time(v)))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(KafkaStart::Time(i64::try_from(v).unwrap_or(i64::MAX))))
        }
    }
    d.deserialize_any(V)
}

/// `type = "files"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSourceConfig {
    /// Directory to read (relative to the pipeline file).
    pub path: String,
    /// `json_lines` (default), `csv` or `lines`. CSV files are split into records as RFC
    /// 4180 says (a quoted field may hold line breaks), with the delimiter, quote, escape
    /// and header of the `parse` step; a UTF-8 BOM at the start of a file is skipped.
    #[serde(default)]
    pub format: FileFormat,
    /// File name pattern; default `*.jsonl`, `*.csv` or `*.txt` by format.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Keep watching for new files and lines.
    #[serde(default)]
    pub follow: bool,
    /// How often to look for new data in follow mode.
    #[serde(default, deserialize_with = "opt_duration")]
    pub poll_interval: Option<Duration>,
}

/// `type = "generator"` source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSourceConfig {
    /// Partitions.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Total records; absent: unbounded.
    #[serde(default)]
    pub records: Option<u64>,
    /// Records per second; absent: as fast as possible.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Distinct customers.
    #[serde(default = "default_customers")]
    pub customers: u64,
    /// Fraction of bad records.
    #[serde(default = "default_bad_fraction")]
    pub bad_fraction: f64,
}

fn default_partitions() -> u32 {
    4
}
fn default_seed() -> u64 {
    42
}
fn default_customers() -> u64 {
    10_000
}
fn default_bad_fraction() -> f64 {
    0.001
}

/// One step.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepConfig {
    /// Decode the record text (JSON or CSV) into fields.
    Parse(ParseConfig),
    /// Check required fields, types, rules and a JSON Schema.
    Validate(ValidateConfig),
    /// Reshape records with a jq program (zero or more outputs per record).
    Transform(JqConfig),
    /// Keep records for which a jq program is true.
    Filter(JqConfig),
    /// Keep only the listed fields, in that order.
    Select(FieldsConfig),
    /// Remove the listed fields.
    Drop(FieldsConfig),
    /// Rename fields.
    Rename(RenameConfig),
    /// Take event time from a field; track watermarks; route late records.
    EventTime(EventTimeConfig),
    /// Running aggregates per key in keyed state; optional final results at the end.
    Aggregate(AggregateConfig),
    /// Drop (or dead-letter) records whose key was seen within a window.
    Dedupe(DedupeConfig),
}

impl StepConfig {
    /// The `type` of the step.
    pub fn kind(&self) -> &'static str {
        match self {
            StepConfig::Parse(_) => "parse",
            StepConfig::Validate(_) => "validate",
            StepConfig::Transform(_) => "transform",
            StepConfig::Filter(_) => "filter",
            StepConfig::Select(_) => "select",
            StepConfig::Drop(_) => "drop",
            StepConfig::Rename(_) => "rename",
            StepConfig::EventTime(_) => "event_time",
            StepConfig::Aggregate(_) => "aggregate",
            StepConfig::Dedupe(_) => "dedupe",
        }
    }

    /// The name given to the step, if any.
    pub fn given_name(&self) -> Option<&str> {
        match self {
            StepConfig::Parse(c) => c.name.as_deref(),
            StepConfig::Validate(c) => c.name.as_deref(),
            StepConfig::Transform(c) | StepConfig::Filter(c) => c.name.as_deref(),
            StepConfig::Select(c) | StepConfig::Drop(c) => c.name.as_deref(),
            StepConfig::Rename(c) => c.name.as_deref(),
            StepConfig::EventTime(c) => c.name.as_deref(),
            StepConfig::Aggregate(c) => c.name.as_deref(),
            StepConfig::Dedupe(c) => c.name.as_deref(),
        }
    }
}

/// Formats a parse step understands.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ParseFormat {
    /// One JSON object per record.
    #[default]
    Json,
    /// One CSV row per record; column names from the file's header line.
    Csv,
}

/// `type = "parse"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    /// Stage name in dead letters (default `parse`).
    #[serde(default)]
    pub name: Option<String>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    pub format: ParseFormat,
    /// CSV: field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// CSV: quote character (default `"`); doubled inside quotes it is a quote.
    #[serde(default)]
    pub quote: Option<char>,
    /// CSV: an escape character for quotes inside quoted fields, such as `\\` (default
    /// none: only doubled quotes).
    #[serde(default)]
    pub escape: Option<char>,
    /// CSV: turn values that look like integers, floats and booleans into those types.
    #[serde(default)]
    pub infer_types: bool,
    /// CSV: column names; without `header = true` they replace a header line (the files
    /// have none).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// CSV: the first record of each file is a header line (default: true unless
    /// `columns` is set). With `columns` too, the header line is skipped and `columns` used.
    #[serde(default)]
    pub header: Option<bool>,
    /// CSV: what empty fields become: `string` (`""` and nothing are both the empty
    /// string; the default), `null` (both null; the default with `infer_types`) or
    /// `null_unless_quoted` (`""` is the empty string, nothing is null).
    #[serde(default)]
    pub empty_fields: Option<EmptyFields>,
}

/// JSON types a field can be required to have.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TypeName {
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// A string.
    String,
    /// true or false.
    Boolean,
    /// An object.
    Object,
    /// An array.
    Array,
}

impl TypeName {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            TypeName::Integer => "integer",
            TypeName::Number => "number",
            TypeName::String => "string",
            TypeName::Boolean => "boolean",
            TypeName::Object => "object",
            TypeName::Array => "array",
        }
    }
}

/// `type = "validate"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Stage name in dead letters (default `validate`).
    #[serde(default)]
    pub name: Option<String>,
    /// Fields that must be present and not null (reason `missing_field`).
    #[serde(default)]
    pub required: Vec<String>,
    /// Types of fields, when present (reason `bad_type`).
    #[serde(default)]
    pub types: IndexMap<String, TypeName>,
    /// Value rules, each with its own reason.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// A JSON Schema file (relative to the pipeline file); reason `schema_violation`.
    #[serde(default)]
    pub schema: Option<String>,
}

/// One value rule of a validate step. A rule applies when its field is present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The field (dotted path).
    pub field: String,
    /// Reason of the failure: snake_case, for example `negative_amount`.
    pub reason: String,
    /// Numbers: smallest allowed value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Numbers: largest allowed value.
    #[serde(default)]
    pub max: Option<f64>,
    /// Strings: shortest allowed length (in characters).
    #[serde(default)]
    pub min_length: Option<usize>,
    /// Strings: longest allowed length (in characters).
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Strings: a regular expression the whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Allowed values.
    #[serde(default)]
    pub one_of: Option<Vec<toml::Value>>,
    /// Message in dead letters (default: generated).
    #[serde(default)]
    pub message: Option<String>,
}

/// `type = "transform"` and `type = "filter"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JqConfig {
    /// Stage name in dead letters.
    #[serde(default)]
    pub name: Option<String>,
    /// The jq program.
    pub jq: String,
}

/// `type = "select"` and `type = "drop"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    /// Stage name.
    #[serde(default)]
    pub name: Option<String>,
    /// Top-level field names.
    pub fields: Vec<String>,
}

/// `type = "rename"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameConfig {
    /// Stage name.
    #[serde(default)]
    pub name: Option<String>,
    /// Old name = new name.
    pub fields: IndexMap<String, String>,
}

/// How an event-time field is written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Integer milliseconds since the Unix epoch.
    #[default]
    Ms,
    /// Integer or fractional seconds since the Unix epoch.
    S,
    /// Integer microseconds since the Unix epoch.
    Us,
    /// Integer nanoseconds since the Unix epoch.
    Ns,
    /// An RFC 3339 string (`2023-11-14T01:00:00Z`).
    Rfc3339,
}

/// `type = "event_time"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// Stage name.
    #[serde(default)]
    pub name: Option<String>,
    /// The field holding event time.
    pub field: String,
    /// Its unit.
    #[serde(default)]
    pub unit: TimeUnit,
    /// How late records may arrive (default 5s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub lateness: Option<Duration>,
    /// A partition quiet for this long does not hold the watermark back (default 60s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// `dead_letter` (default), `drop` or `keep`.
    #[serde(default)]
    pub late: LatePolicy,
    /// How far ahead of the wall clock an event time may be (default 1h; `"0s"` accepts any).
    /// A record further ahead fails with reason `future_event_time` (dead-lettered by
    /// default) and does not move the watermark.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_future_skew: Option<Duration>,
}

/// `type = "aggregate"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Stage name; also the state table name (default `aggregate`).
    #[serde(default)]
    pub name: Option<String>,
    /// The key field (dotted path).
    pub key: String,
    /// Output field = `count()`, `sum(field)`, `min(field)` or `max(field)`.
    pub aggregates: IndexMap<String, String>,
    /// Add the running values to each record (default true).
    #[serde(default = "yes")]
    pub emit: bool,
    /// At the end of a bounded input, write one record per key to a sink.
    #[serde(default, rename = "final")]
    pub final_output: Option<FinalConfig>,
}

fn yes() -> bool {
    true
}

/// Final results of an aggregate step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalConfig {
    /// The sink (by name).
    pub sink: String,
    /// Output field = `key` or an aggregate name; default: the key field and every aggregate.
    #[serde(default)]
    pub fields: Option<IndexMap<String, String>>,
}

/// What dedupe does with a repeated key.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// Drop it and count it.
    #[default]
    Drop,
    /// Dead-letter it with reason `duplicate`.
    DeadLetter,
}

/// `type = "dedupe"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Stage name; also the state table name (default `dedupe`).
    #[serde(default)]
    pub name: Option<String>,
    /// The key field (dotted path).
    pub key: String,
    /// How long a key is remembered, in event time when the record has one.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// `drop` (default) or `dead_letter`.
    #[serde(default)]
    pub on_duplicate: DuplicatePolicy,
}

/// A sink.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkConfig {
    /// Files with exactly-once commits.
    Files(FilesSinkConfig),
    /// Standard output, at commit time.
    Stdout(StdoutSinkConfig),
    /// A Kafka topic, exactly once (the `kafka` feature).
    Kafka(KafkaSinkToml),
    /// A NATS JetStream subject, exactly once (the `nats` feature).
    Nats(NatsSinkToml),
    /// A Redis stream, exactly once (the `redis` feature).
    RedisStream(RedisStreamSinkToml),
    /// A PostgreSQL table, exactly once (the `postgres` feature).
    Postgres(PostgresSinkToml),
    /// Files per epoch on S3-compatible object storage, exactly once (the `s3` feature).
    S3(S3SinkToml),
    /// A Delta Lake table, one commit per epoch (the `delta` feature).
    Delta(DeltaSinkToml),
}

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Files(c) => &c.name,
            SinkConfig::Stdout(c) => &c.name,
            SinkConfig::Kafka(c) => &c.name,
            SinkConfig::Nats(c) => &c.name,
            SinkConfig::RedisStream(c) => &c.name,
            SinkConfig::Postgres(c) => &c.name,
            SinkConfig::S3(c) => &c.name,
            SinkConfig::Delta(c) => &c.name,
        }
    }
}

/// `type = "kafka"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkToml {
    /// Name, used by steps that write to it and in the writer header of its records.
    pub name: String,
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic (it must exist: keel does not create topics).
    pub topic: String,
    /// A top-level field of the output record to use as the message key.
    #[serde(default)]
    pub key: Option<String>,
    /// A top-level field of the output record naming its topic (records without it, or
    /// whose value is not a valid topic name, go to `topic`).
    #[serde(default)]
    pub topic_field: Option<String>,
    /// `murmur2` (default: the key's hash, as Kafka's Java clients; round-robin without a
    /// key) or `round_robin`.
    #[serde(default)]
    pub partitioner: Option<KafkaPartitionerName>,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Option<String>,
    /// Headers added to every record.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Where epochs are staged until their commit (default `<checkpoint path>/kafka/<name>`).
    #[serde(default)]
    pub staging: Option<String>,
    /// Publish each epoch in one Kafka transaction with its progress record, so that
    /// read_committed consumers see whole epochs only (needs a broker that hides aborted
    /// records: Apache Kafka, Redpanda).
    #[serde(default)]
    pub transactional: bool,
    /// The transactional id (default `keel-<pipeline>-<sink>`).
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// librdkafka settings passed through.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `type = "nats"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkToml {
    /// Name, used by steps that write to it and in its messages' ids.
    pub name: String,
    /// `nats://[user:pass@]host:port[,...]`.
    pub url: String,
    /// The subject (a stream must capture it: keel does not create streams).
    pub subject: String,
    /// A top-level field of the output record sent as the `keel.key` header.
    #[serde(default)]
    pub key: Option<String>,
    /// Headers added to every message.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Where epochs are staged until their commit (default `<checkpoint path>/nats/<name>`).
    #[serde(default)]
    pub staging: Option<String>,
    /// How long a commit waits out an outage before the run fails (default 5m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub publish_timeout: Option<Duration>,
    /// Messages awaiting the stream's acknowledgement, at most (default 4096).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
}

/// `type = "s3"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3SinkToml {
    /// Name, used by steps that write to it.
    pub name: String,
    /// The bucket.
    pub bucket: String,
    /// The prefix the sink owns inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// An S3-compatible server (`http://127.0.0.1:9000`); AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// The access key (default: the environment, `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub access_key: Option<String>,
    /// The secret key (default: the environment; `${VAR}` keeps it out of the file).
    #[serde(default)]
    pub secret_key: Option<String>,
    /// `json_lines` (default) or `csv`.
    #[serde(default)]
    pub format: FileFormat,
    /// CSV: the columns, in order (also the header line of each object).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// CSV: neutralize text that a spreadsheet would run as a formula.
    #[serde(default)]
    pub neutralize_formulas: bool,
    /// Start a new object within an epoch after this many bytes (default 128 MiB).
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Where epochs are staged until their commit (default `<checkpoint path>/s3/<name>`).
    #[serde(default)]
    pub staging: Option<String>,
    /// How long a commit waits out an outage before the run fails (default 5m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub publish_timeout: Option<Duration>,
}

/// `type = "delta"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkToml {
    /// Name, used by steps that write to it.
    pub name: String,
    /// A local directory (relative to the pipeline file) or `s3://bucket/path`.
    pub table: String,
    /// `{ column = "type" }` for a table the sink creates (`string`, `long`, `integer`,
    /// `double`, `boolean`, `timestamp`, `date`); default: the first epoch's fields.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Options of the table's storage (`aws_endpoint_url`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_region`, `aws_allow_http`...).
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// The app id of the sink's `txn` actions (default `keel/<pipeline>/<name>`).
    #[serde(default)]
    pub app_id: Option<String>,
    /// Where epochs are staged until their commit (default `<checkpoint path>/delta/<name>`).
    #[serde(default)]
    pub staging: Option<String>,
    /// How long a commit waits out an outage before the run fails (default 5m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub publish_timeout: Option<Duration>,
}

/// `type = "postgres"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkToml {
    /// Name, used by steps that write to it and in its progress row.
    pub name: String,
    /// `postgres://user[:password]@host:port/db` (`${VAR}` keeps the password out of the file).
    pub url: String,
    /// `table` or `schema.table` (it must exist).
    pub table: String,
    /// `{ column = "field" }`: the record field each column takes (default: every column
    /// from the field of its name; columns with a default are left to it).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Upsert on these columns (a unique index must cover them); default: insert.
    #[serde(default)]
    pub upsert_key: Vec<String>,
    /// Where epochs are staged until their commit (default `<checkpoint path>/postgres/<name>`).
    #[serde(default)]
    pub staging: Option<String>,
    /// How long a commit waits out an outage before the run fails (default 5m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub publish_timeout: Option<Duration>,
    /// Rows per INSERT statement in an epoch's transaction (default 5000).
    #[serde(default)]
    pub rows_per_statement: Option<usize>,
}

/// `type = "redis_stream"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamSinkToml {
    /// Name, used by steps that write to it and in its progress key.
    pub name: String,
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// The stream key.
    pub stream: String,
    /// A top-level field of the output record written as the entry's `key` field.
    #[serde(default)]
    pub key: Option<String>,
    /// `MAXLEN ~ n` on every append.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// Entries per atomic append (default: the whole epoch, so readers see whole epochs;
    /// with a chunk size, a crash mid-commit can leave a prefix of an epoch visible).
    #[serde(default)]
    pub chunk: Option<usize>,
    /// Where epochs are staged until their commit (default `<checkpoint path>/redis/<name>`).
    #[serde(default)]
    pub staging: Option<String>,
    /// How long a commit waits out an outage before the run fails (default 5m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub publish_timeout: Option<Duration>,
}

/// How the Kafka sink picks partitions.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaPartitionerName {
    /// murmur2 of the key.
    Murmur2,
    /// Round-robin.
    RoundRobin,
}

/// `type = "files"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSinkConfig {
    /// Name, used by steps that write to it.
    pub name: String,
    /// Output directory (relative to the pipeline file).
    pub path: String,
    /// `json_lines` (default) or `csv`.
    #[serde(default)]
    pub format: FileFormat,
    /// CSV: the columns, in order (also the header line).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// CSV: for files meant for spreadsheets, text fields starting with `=`, `+`, `-`, `@`,
    /// a tab or a carriage return get a leading `'`, so that no spreadsheet runs them as a
    /// formula (CSV injection). Numbers are left alone. Default false.
    #[serde(default)]
    pub neutralize_formulas: bool,
    /// File name prefix (default `part`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Start a new file within an epoch after this many bytes (default 256 MiB).
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
}

/// `type = "stdout"` sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Name.
    pub name: String,
}

/// The dead-letter output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// `files` (the default: segment files in `path`), `kafka` (a topic, with `path` as
    /// the local fallback), `nats` (a subject), `redis_stream` (a stream), `postgres` (a
    /// table), `s3` (objects under a prefix) or `delta` (a Delta Lake table).
    #[serde(default, rename = "type")]
    pub kind: DeadLetterKind,
    /// Directory of dead-letter files (relative to the pipeline file); with `type = "kafka"`,
    /// the fallback that takes the dead letters the topic cannot, until it can. Not used by
    /// `nats` and `redis_stream`.
    #[serde(default)]
    pub path: String,
    /// Kafka: `host:port[,host:port...]`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// Kafka: the dead-letter topic (it must exist: keel does not create topics).
    #[serde(default)]
    pub topic: Option<String>,
    /// Kafka: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Option<String>,
    /// Kafka: how long an epoch's dead letters wait for the topic before they go to `path`
    /// (default 30s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub fallback_after: Option<Duration>,
    /// Kafka: librdkafka settings passed through.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// NATS, Redis and PostgreSQL: the server's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// NATS: the dead-letter subject (a stream must capture it).
    #[serde(default)]
    pub subject: Option<String>,
    /// Redis: the dead-letter stream key.
    #[serde(default)]
    pub stream: Option<String>,
    /// PostgreSQL: the dead-letter table (created if missing); Delta: the table's location.
    #[serde(default)]
    pub table: Option<String>,
    /// Delta: the table's storage options.
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// S3: the bucket (with `prefix`, `endpoint`, `region`, `access_key`, `secret_key`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// S3: the prefix the dead letters own.
    #[serde(default)]
    pub prefix: Option<String>,
    /// S3: an S3-compatible server.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3: the region.
    #[serde(default)]
    pub region: Option<String>,
    /// S3: the access key.
    #[serde(default)]
    pub access_key: Option<String>,
    /// S3: the secret key.
    #[serde(default)]
    pub secret_key: Option<String>,
    /// A field to copy into each dead letter as its `id`; for records that are not valid
    /// JSON, the first `"<field>": <value>` in the text is used.
    #[serde(default)]
    pub id_field: Option<String>,
    /// A second directory that takes over when writing to `path` fails.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Start a new segment file within an epoch after this many bytes (default 64 MiB).
    #[serde(default)]
    pub max_segment_bytes: Option<u64>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` (or `:port` for loopback) to serve on; `--metrics-addr` overrides it.
    #[serde(default)]
    pub listen: Option<String>,
}

/// `[[notify]]`: a webhook for run-level events (`keel::notify`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `http://` or `https://` URL (`${VAR}` keeps a secret out of the file).
    pub url: String,
    /// `json` (default) or `slack` (`{"text": ...}`).
    #[serde(default)]
    pub format: Option<String>,
    /// Only these events: `paused`, `resumed`, `failed`, `aborted`,
    /// `finished_with_dead_letters`, `ingest_files_failed` (default: all).
    #[serde(default)]
    pub events: Vec<String>,
    /// At most one post per event kind in this time (default 1m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub min_interval: Option<Duration>,
    /// How long a post may take (default 5s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Headers added to each post.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Where dead letters go.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// Segment files in a directory.
    #[default]
    Files,
    /// A Kafka topic.
    Kafka,
    /// A NATS JetStream subject.
    Nats,
    /// A Redis stream.
    RedisStream,
    /// A PostgreSQL table.
    Postgres,
    /// Objects on S3-compatible storage.
    S3,
    /// A Delta Lake table.
    Delta,
}

/// `[errors]`: classification rules and what to do with each class of failure.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// Exit code of `keel run` when records were dead-lettered (default 1; 0 to ignore).
    #[serde(default)]
    pub exit_code_on_dead_letters: Option<u8>,
    /// Records larger than this many bytes fail with `oversized`. File sources enforce it
    /// while reading (default 1 MiB there): a longer line or CSV record is dead-lettered
    /// with its first 64 KiB and reading goes on after it.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,
    /// Most dead letters written per second; above it input slows down, nothing is dropped.
    #[serde(default)]
    pub dead_letter_rate: Option<f64>,
    /// Actions for every stage, per class.
    #[serde(default)]
    pub default: ClassActionsConfig,
    /// Actions for named stages (step names, sink names, `source`), per class.
    #[serde(default)]
    pub stages: IndexMap<String, ClassActionsConfig>,
    /// Reclassification rules, first match wins.
    #[serde(default)]
    pub classify: Vec<ClassifyConfig>,
    /// The retry budget shared by the pipeline, or `false` for none.
    #[serde(default)]
    pub retry_budget: Option<RetryBudgetConfig>,
    /// At most this many dead letters per window.
    #[serde(default)]
    pub error_budget: Option<ErrorBudgetConfig>,
    /// The circuit breaker of every sink.
    #[serde(default)]
    pub sink_breaker: Option<BreakerConfigToml>,
    /// The retry schedule of failed sink writes.
    #[serde(default)]
    pub sink_retry: Option<RetryConfig>,
}

/// Actions per class; absent classes keep the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassActionsConfig {
    /// For transient failures.
    #[serde(default)]
    pub transient: Option<ActionConfig>,
    /// For throttled failures.
    #[serde(default)]
    pub throttled: Option<ActionConfig>,
    /// For permanent failures.
    #[serde(default)]
    pub permanent: Option<ActionConfig>,
    /// For fatal failures.
    #[serde(default)]
    pub fatal: Option<ActionConfig>,
}

/// An action: a name (`"dead_letter"`) or a table (`{ action = "retry", max_attempts = 3 }`).
#[derive(Debug, Clone, PartialEq)]
pub enum ActionConfig {
    /// `fail`, `skip`, `dead_letter`, `abort`, `retry` or `pause` with default settings.
    Name(String),
    /// An action with settings.
    Table(Box<ActionTable>),
}

/// The table form of an action: `action`, the keys of a retry schedule ([`RetryConfig`]) and
/// those of a pause.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionTable {
    /// The action.
    pub action: String,
    /// Retry: `exponential` (default) or `constant`.
    #[serde(default)]
    pub backoff: Option<String>,
    /// Retry, exponential: the first delay (default 100ms).
    #[serde(default, deserialize_with = "opt_duration")]
    pub initial: Option<Duration>,
    /// Retry, exponential: the growth factor (default 2).
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Retry, exponential: the largest delay (default 10s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_delay: Option<Duration>,
    /// Retry, constant: the delay.
    #[serde(default, deserialize_with = "opt_duration")]
    pub delay: Option<Duration>,
    /// Retry: `none`, `full` (default), `equal` or `decorrelated`.
    #[serde(default)]
    pub jitter: Option<keel::policy::Jitter>,
    /// Retry: attempts, the first included (default 5).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Retry: give up when the next attempt would start later than this after the first one.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_elapsed: Option<Duration>,
    /// Pause: how long when the failure has no retry-after (default 1s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub duration: Option<Duration>,
    /// Pause: pauses per record before `then` (default 10).
    #[serde(default)]
    pub max_pauses: Option<u32>,
    /// Retry and pause: what to do after them (default `dead_letter`).
    #[serde(default)]
    pub then: Option<ActionConfig>,
}

impl ActionTable {
    /// The retry schedule of this table (default when it sets none of its keys).
    pub fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: self.backoff.clone(),
            initial: self.initial,
            multiplier: self.multiplier,
            max_delay: self.max_delay,
            delay: self.delay,
            jitter: self.jitter,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
        }
    }
}

impl<'de> Deserialize<'de> for ActionConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ActionConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an action name (\"dead_letter\") or a table ({ action = \"retry\", ... })")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ActionConfig, E> {
                Ok(ActionConfig::Name(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ActionConfig, A::Error> {
                ActionTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| ActionConfig::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A retry schedule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// `exponential` (default) or `constant`.
    #[serde(default)]
    pub backoff: Option<String>,
    /// Exponential: the first delay (default 100ms).
    #[serde(default, deserialize_with = "opt_duration")]
    pub initial: Option<Duration>,
    /// Exponential: the growth factor (default 2).
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Exponential: the largest delay (default 10s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_delay: Option<Duration>,
    /// Constant: the delay.
    #[serde(default, deserialize_with = "opt_duration")]
    pub delay: Option<Duration>,
    /// `none`, `full` (default), `equal` or `decorrelated`.
    #[serde(default)]
    pub jitter: Option<keel::policy::Jitter>,
    /// Attempts, the first included (default 5).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Give up when the next attempt would start later than this after the first one.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_elapsed: Option<Duration>,
}

/// A classification rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// Match this reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Match this stage.
    #[serde(default)]
    pub stage: Option<String>,
    /// Match these status codes.
    #[serde(default)]
    pub status: Option<Vec<u16>>,
    /// Match when the message contains this text.
    #[serde(default)]
    pub message: Option<String>,
    /// The class to give.
    pub class: keel::Class,
    /// A new reason.
    #[serde(default, rename = "as")]
    pub rename: Option<String>,
    /// A retry-after to give when the failure has none.
    #[serde(default, deserialize_with = "opt_duration")]
    pub retry_after: Option<Duration>,
}

/// The retry budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries as a fraction of first attempts (default 0.2); `enabled = false` disables it.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Retries allowed per second whatever the traffic (default 10).
    #[serde(default)]
    pub min_per_sec: Option<f64>,
    /// The window (default 10s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
    /// False to retry without a budget.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// The error budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBudgetConfig {
    /// Largest share of dead letters among the window's records, in percent.
    #[serde(default)]
    pub max_percent: Option<f64>,
    /// Largest number of dead letters in the window.
    #[serde(default)]
    pub max_count: Option<u64>,
    /// The window (default 1m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
    /// Records needed in the window before `max_percent` applies (default 100).
    #[serde(default)]
    pub min_records: Option<u64>,
    /// `pause` or `abort` (default).
    #[serde(default)]
    pub action: Option<keel::policy::BudgetAction>,
}

/// The sink circuit breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfigToml {
    /// False to run without a breaker.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Failures within the window that open it (default 5).
    #[serde(default)]
    pub failures: Option<u32>,
    /// Or this share of failed calls (0 to 1), with `min_calls`.
    #[serde(default)]
    pub failure_rate: Option<f64>,
    /// Calls needed before `failure_rate` applies (default 10).
    #[serde(default)]
    pub min_calls: Option<u32>,
    /// The window (default 10s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
    /// Slower successful calls count as failures.
    #[serde(default, deserialize_with = "opt_duration")]
    pub slow_call: Option<Duration>,
    /// How long it stays open before a probe (default 5s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub open_for: Option<Duration>,
    /// Successful probes that close it (default 1).
    #[serde(default)]
    pub probes: Option<u32>,
}

/// `[ingest]`: idempotent batch ingestion (see `keel::ingest`).
///
/// Each input file is a unit recorded in the ledger; completed, unchanged files are skipped;
/// each file's output is one transaction per file sink, committed to `<sink path>/<file>/`
/// (its dead letters to `<dead_letter path>/<file>/`), replacing that file's earlier output.
/// Its `Debug` shows the ledger location with the password redacted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// The ledger: `sqlite:PATH`, a path (relative to the pipeline file), or
    /// `postgres://...` (default: `ledger.db` in the checkpoint directory).
    #[serde(default)]
    pub ledger: Option<String>,
    /// PostgreSQL schema of the ledger tables (default `keel`).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The scope of the units (default `file`).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// `blake3` (default), `sha256` or `md5`.
    #[serde(default)]
    pub checksum: Option<String>,
    /// Hash every file, even completed ones whose size and modification time are unchanged.
    #[serde(default)]
    pub rehash: bool,
    /// How long a claim holds without renewal (default `5m`).
    #[serde(default, deserialize_with = "opt_duration")]
    pub lease: Option<Duration>,
    /// This worker's id (default: `KEEL_WORKER`, else an id generated at the first run and
    /// kept in the checkpoint directory). Must stay the same across restarts of one worker
    /// and differ between workers sharing a ledger.
    #[serde(default)]
    pub worker: Option<String>,
    /// A file fails if fewer records reach the main sink.
    #[serde(default)]
    pub min_records: u64,
    /// A file fails if more than this fraction of its records is dead-lettered (0 to 1).
    #[serde(default)]
    pub max_bad_ratio: Option<f64>,
    /// Validators run over each file's staged output of every sink: `non_empty`, `json_lines`.
    #[serde(default)]
    pub validators: Vec<String>,
    /// Files processed at the same time (default 4).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

impl std::fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestConfig")
            .field("ledger", &self.ledger.as_deref().map(keel::util::redact_url))
            .field("schema", &self.schema)
            .field("scope", &self.scope)
            .field("checksum", &self.checksum)
            .field("rehash", &self.rehash)
            .field("lease", &self.lease)
            .field("worker", &self.worker)
            .field("min_records", &self.min_records)
            .field("max_bad_ratio", &self.max_bad_ratio)
            .field("validators", &self.validators)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

fn default_schema() -> String {
    "keel".into()
}
fn default_scope() -> String {
    "file".into()
}

/// `[checkpoint]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoint directory (relative to the pipeline file; default `state`).
    #[serde(default = "default_state_path")]
    pub path: String,
    /// Time between checkpoints, or `"off"` for only a final one (default `1s`).
    #[serde(default = "default_interval", deserialize_with = "interval")]
    pub interval: Option<Duration>,
    /// Checkpoints to keep (default 3).
    #[serde(default = "default_retain")]
    pub retain: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            path: default_state_path(),
            interval: default_interval(),
            retain: default_retain(),
        }
    }
}

fn default_state_path() -> String {
    "state".into()
}
fn default_interval() -> Option<Duration> {
    Some(Duration::from_secs(1))
}
fn default_retain() -> usize {
    3
}

/// `[run]`: runtime tuning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Records per source read (default 1024).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Partitions read at once (default 64).
    #[serde(default)]
    pub max_open_partitions: Option<usize>,
    /// A ceiling on records read per second, across every partition (default: none).
    #[serde(default)]
    pub max_records_per_second: Option<u32>,
}

/// Parses `"1s"`, `"250ms"`, `"5m"`, `"1h"`, `"2d"`, `"1.5s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (like \"500ms\", \"1s\", \"5m\")"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "us" => n / 1e6,
        _ => return Err(format!("`{s}` has no known unit (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Reads a duration string; with `off`, also `"off"` (as `None`).
struct DurationVisitor {
    off: bool,
}

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Option<Duration>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.off {
            false => f.write_str("a duration like \"5s\""),
            true => f.write_str("a duration like \"1s\", or \"off\""),
        }
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<Duration>, E> {
        if self.off && v.trim() == "off" {
            return Ok(None);
        }
        parse_duration(v).map(Some).map_err(E::custom)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    opt_duration(d)?.ok_or_else(|| serde::de::Error::custom("expected a duration like \"5s\""))
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_str(DurationVisitor { off: false })
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let d = d.deserialize_str(DurationVisitor { off: true })?;
    if d.is_some_and(|d| d.is_zero()) {
        return Err(serde::de::Error::custom(
            "the checkpoint interval must be positive (or \"off\")",
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
