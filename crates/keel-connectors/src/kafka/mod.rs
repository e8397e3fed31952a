//! Kafka (the `kafka` feature): a source whose partitions are topic partitions, and a sink
//! that is exactly-once on any Kafka-protocol broker, transactions or not.
//!
//! - [`source`]: positions are offsets in keel's checkpoints; offsets go to the consumer
//!   group after each checkpoint for lag tools only.
//! - [`sink`]: each epoch is staged in a local file and published after its manifest is
//!   durable, every record carrying its writer and `(epoch, sequence)` in headers; recovery
//!   reads each partition back from its end at prepare and publishes only what an interrupted publish did
//!   not (the module docs give the protocol and its conditions).
//! - [`dead_letters`]: dead letters on a topic, the original record with its envelope in
//!   `keel.error.*` headers; a local directory takes what the topic cannot (`fallback`) and
//!   hands it to the topic later.
//! - [`errors`]: how broker errors are classified for the policies.

mod config;
pub mod dead_letters;
pub mod errors;
mod fallback;
pub mod sink;
pub mod source;
pub mod transactional;

pub use config::{KafkaSinkConfig, KafkaSourceConfig, Partitioner, StartPosition};
pub use dead_letters::{DeadLetterTopic, TopicEntry, TopicError};
pub use sink::{KafkaPreCommit, KafkaSink, PROGRESS_HEADER, WRITER_HEADER};
pub use source::{KafkaReader, KafkaSource, parse_partition, partition_name};
