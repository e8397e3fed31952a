//! The Kafka source: each topic partition a keel partition (`orders:3`), its position the
//! offset of the next record to read.
//!
//! One consumer serves every partition (librdkafka fetches in its own threads); each open
//! partition has its own queue split off that consumer, so partitions are read, paused
//! and checkpointed independently. Positions live in keel's checkpoints; offsets are
//! committed to the group after each checkpoint only so that lag tools see them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel::checkpoint::CheckpointId;
use keel::{PartitionReader, ReadStatus, Record, Source, SourceBatch, SourceError};
use rdkafka::ClientContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::config::{KafkaSourceConfig, StartPosition};
use super::errors::source_error;
use crate::file::glob_match;

type Client = Arc<BaseConsumer<SourceContext>>;

/// Where librdkafka's own error reports go: the end of a partition is no error, and broker
/// trouble (retried inside librdkafka) is a warning; what a read fails with goes through the
/// policies. Its statistics (every `statistics.interval.ms`, 5 s by default) give each
/// partition's end, for the readers' lag.
#[derive(Default)]
pub struct SourceContext {
    ends: std::sync::Mutex<std::collections::HashMap<(String, i32), i64>>,
}

impl SourceContext {
    /// The end of `topic:partition` in the last statistics: the last stable offset (what a
    /// read_committed consumer can read up to), else the high watermark.
    fn end(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ends.lock().ok()?.get(&(topic.to_owned(), partition)).copied()
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Ok(mut ends) = self.ends.lock() else {
            return;
        };
        for (name, topic) in statistics.topics {
            for (p, s) in topic.partitions {
                let end = if s.ls_offset >= 0 { s.ls_offset } else { s.hi_offset };
                if p >= 0 && end >= 0 {
                    ends.insert((name.clone(), p), end);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                tracing::debug!(%reason, "kafka: end of partition")
            }
            e => tracing::warn!(error = %e, %reason, "kafka consumer"),
        }
    }
}

impl ConsumerContext for SourceContext {}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads topics of a Kafka cluster.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    consumer: Client,
    /// Partitions found by the first discovery of this run: they start at `config.start`.
    first: Option<HashSet<String>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("config", &self.config).finish()
    }
}

/// `orders:3` for partition 3 of topic `orders` (`:` cannot appear in a topic name).
pub fn partition_name(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

/// The topic and partition of a keel partition name.
pub fn parse_partition(name: &str) -> Option<(&str, i32)> {
    crate::envelope::kafka_partition(name)
}

impl KafkaSource {
    /// A source with `config`; connects lazily.
    pub fn new(config: KafkaSourceConfig) -> Result<Self, SourceError> {
        if config.topics.is_empty() {
            return Err(SourceError::Config("kafka source: `topics` is empty".into()));
        }
        let consumer: BaseConsumer<SourceContext> = config
            .client()
            .create_with_context(SourceContext::default())
            .map_err(|e| SourceError::Config(format!("kafka source: {e}")))?;
        Ok(KafkaSource {
            config,
            consumer: Arc::new(consumer),
            first: None,
        })
    }

    /// Runs a blocking call of the consumer off the pipeline's thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BaseConsumer<SourceContext>) -> Result<T, KafkaError> + Send + 'static,
        doing: String,
    ) -> Result<T, SourceError> {
        let c = self.consumer.clone();
        match tokio::task::spawn_blocking(move || f(&c)).await {
            Ok(r) => r.map_err(|e| source_error(&e, &doing)),
            Err(e) => Err(SourceError::Other(format!("{doing}: {e}"))),
        }
    }
}

impl Source for KafkaSource {
    type Position = u64;
    type Reader = KafkaReader;

    fn describe(&self) -> String {
        format!(
            "kafka {} topics {}{}",
            keel::util::redact_url(&self.config.brokers),
            self.config.topics.join(","),
            if self.config.bounded { " (bounded)" } else { "" }
        )
    }

    fn is_bounded(&self) -> bool {
        self.config.bounded
    }

    fn ends_are_final(&self) -> bool {
        false
    }

    fn discovery_interval(&self) -> Option<Duration> {
        Some(self.config.discovery_interval)
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        let metadata = self
            .blocking(
                |c| c.fetch_metadata(None, METADATA_TIMEOUT),
                format!("listing the topics of {}", keel::util::redact_url(&self.config.brokers)),
            )
            .await?;
        let mut found = Vec::new();
        for wanted in &self.config.topics {
            let pattern = wanted.contains(['*', '?']);
            let mut any = false;
            for t in metadata.topics() {
                let hit = if pattern {
                    !t.name().starts_with("__") && glob_match(wanted.as_bytes(), t.name().as_bytes())
                } else {
                    t.name() == wanted
                };
                if hit && t.error().is_none() {
                    any = true;
                    found.extend(t.partitions().iter().map(|p| partition_name(t.name(), p.id())));
                }
            }
            if !any && !pattern {
                return Err(SourceError::Failed(keel::FailureError(keel::Failure::fatal(
                    "unknown_topic",
                    format!("kafka source: topic `{wanted}` does not exist (keel does not create topics)"),
                ))));
            }
        }
        found.sort_by(|a, b| {
            let (ta, pa) = parse_partition(a).unwrap_or((a, 0));
            let (tb, pb) = parse_partition(b).unwrap_or((b, 0));
            (ta, pa).cmp(&(tb, pb))
        });
        found.dedup();
        if self.first.is_none() {
            self.first = Some(found.iter().cloned().collect());
        }
        Ok(found)
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<KafkaReader, SourceError> {
        let Some((topic, p)) = parse_partition(partition) else {
            return Err(SourceError::Config(format!(
                "`{partition}` is not a Kafka partition (topic:number)"
            )));
        };
        let (topic, name) = (topic.to_owned(), partition.to_owned());
        let start = match from {
            Some(pos) => Offset::Offset(i64::try_from(pos).unwrap_or(i64::MAX)),
            // a partition that appeared during the run is read from its beginning
            None if !self.first.as_ref().is_some_and(|f| f.contains(partition)) => Offset::Beginning,
            None => match self.config.start {
                StartPosition::Earliest => Offset::Beginning,
                StartPosition::Latest => Offset::End,
                StartPosition::Timestamp(ts) => {
                    let t = topic.clone();
                    let found = self
                        .blocking(
                            move |c| {
                                let mut tpl = TopicPartitionList::new();
                                tpl.add_partition_offset(&t, p, Offset::Offset(ts))?;
                                c.offsets_for_times(tpl, METADATA_TIMEOUT)
                            },
                            format!("finding the offset of time {ts} in {partition}"),
                        )
                        .await?;
                    found
                        .find_partition(&topic, p)
                        .map_or(Offset::End, |e| match e.offset() {
                            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                            _ => Offset::End,
                        })
                }
            },
        };
        let queue = self
            .consumer
            .split_partition_queue(&topic, p)
            .ok_or_else(|| SourceError::Other(format!("cannot split a queue off for {partition}")))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p, start)
            .map_err(|e| source_error(&e, &format!("opening {partition}")))?;
        self.consumer
            .incremental_assign(&tpl)
            .map_err(|e| source_error(&e, &format!("opening {partition}")))?;
        Ok(KafkaReader {
            consumer: self.consumer.clone(),
            queue,
            topic,
            partition: p,
            name,
            next: from.map(|f| f as i64),
            bounded: self.config.bounded,
            eof: false,
        })
    }

    async fn acknowledge(&mut self, _id: CheckpointId, positions: &[(String, u64)]) -> Result<(), SourceError> {
        if self.config.group.is_none() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (name, pos) in positions {
            if let Some((topic, p)) = parse_partition(name) {
                tpl.add_partition_offset(topic, p, Offset::Offset(*pos as i64))
                    .map_err(|e| source_error(&e, "committing offsets"))?;
            }
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| source_error(&e, "committing offsets to the group"))
    }
}

/// Reads one topic partition.
pub struct KafkaReader {
    consumer: Client,
    queue: PartitionQueue<SourceContext>,
    topic: String,
    partition: i32,
    name: String,
    /// The offset of the next record, once known.
    next: Option<i64>,
    /// Stop at the end of the partition.
    bounded: bool,
    /// Bounded: the consumer reached the end of the partition. (The end comes from the
    /// consumer's end-of-partition event, not from a high-watermark query: some
    /// Kafka-protocol brokers answer that query with the last batch's first offset.)
    eof: bool,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader")
            .field("partition", &self.name)
            .field("next", &self.next)
            .finish()
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        // the partition may be opened again later (its place given to another meanwhile)
        let _ = self.consumer.incremental_unassign(&tpl);
    }
}

impl PartitionReader for KafkaReader {
    type Position = u64;

    /// Records between the next offset and the partition's end in librdkafka's last
    /// statistics (no request). Some Kafka-protocol brokers report the end short of the
    /// truth, which shows as less lag.
    fn lag(&self) -> Option<u64> {
        let next = self.next?;
        let end = self.consumer.context().end(&self.topic, self.partition)?;
        Some(end.saturating_sub(next).max(0) as u64)
    }

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        // the main queue serves the consumer's events (errors, statistics); its records
        // all went to the partition queues
        if let Some(Err(e)) = self.consumer.poll(Duration::ZERO) {
            tracing::debug!(error = %e, "kafka consumer event");
        }
        while batch.len() < max && !self.eof {
            let m = match self.queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.eof = self.bounded;
                    break;
                }
                Some(Err(e)) => return Err(source_error(&e, &format!("reading {}", self.name))),
            };
            let offset = m.offset();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), Bytes::copy_from_slice(h.value.unwrap_or_default())))
                        .collect()
                })
                .unwrap_or_default();
            let record = Record {
                key: m.key().map(Bytes::copy_from_slice),
                value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                headers,
                event_time: m.timestamp().to_millis(),
            };
            self.next = Some(offset + 1);
            batch.push(record, (offset + 1) as u64);
        }
        Ok(if !batch.is_empty() {
            ReadStatus::Records
        } else if self.eof {
            ReadStatus::End
        } else {
            ReadStatus::Idle
        })
    }
}
