//! Kafka (the `kafka` feature): a source whose partitions are topic partitions, and a sink
//! that is exactly-once on any Kafka-protocol broker, transactions or not.
//!
//! - [`source`]: positions are offsets in keel's checkpoints; offsets go to the consumer
//!   group after each checkpoint for lag tools only.
//! - [`sink`]: each epoch is staged in a local file and published after its manifest is
//!   durable, every record carrying its writer and `(epoch, sequence)` in headers; recovery
//!   reads each partition back from its end at prepare and publishes only what an interrupted publish did
//!   not (the module docs give the protocol and its conditions).
//! - [`errors`]: how broker errors are classified for the policies.

mod config;
pub mod errors;
pub mod sink;
pub mod source;

pub use config::{KafkaSinkConfig, KafkaSourceConfig, Partitioner, StartPosition};
pub use sink::{KafkaPreCommit, KafkaSink, PROGRESS_HEADER, WRITER_HEADER};
pub use source::{KafkaReader, KafkaSource, parse_partition, partition_name};
