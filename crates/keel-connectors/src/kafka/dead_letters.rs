//! Dead letters on a Kafka topic: the original record, its provenance in headers.
//!
//! A dead letter published by [`super::KafkaSink::dead_letters`] is the failed record as it
//! was read (key, value and headers byte for byte, in order), followed by the envelope in
//! `keel.error.*` headers, in the spirit of Kafka Connect's `__connect.errors.*`:
//!
//! | header | value |
//! |---|---|
//! | `keel.error.v` | envelope version (`2`) |
//! | `keel.error.reason` | stable snake_case reason (`bad_json`, `oversized`...) |
//! | `keel.error.class` | `transient`, `throttled`, `permanent` or `fatal` |
//! | `keel.error.stage` | the step, sink or `source` that failed |
//! | `keel.error.message` | what went wrong, for a person |
//! | `keel.error.field` | the field concerned (when known) |
//! | `keel.error.chain` | JSON list of causes, outermost first (when any) |
//! | `keel.error.id` | JSON: the record's correlation id (when known) |
//! | `keel.error.pipeline`, `keel.error.epoch`, `keel.error.attempts` | where and how often |
//! | `keel.error.first_failed_ms`, `keel.error.last_failed_ms` | when (ms since the Unix epoch) |
//! | `keel.error.source.partition`, `keel.error.source.position` | keel's partition name and position (JSON) |
//! | `keel.error.topic`, `keel.error.partition`, `keel.error.offset` | the record's own coordinates, when it came from Kafka |
//! | `keel.error.metadata` | JSON object of user metadata (when any) |
//! | `keel.error.identity` | the dead letter's identity ([`Envelope::identity`]) |
//!
//! then the writer's `keel.writer` and `keel.progress`. [`envelope_of`] turns such a
//! message back into the [`Envelope`] `keel dlq` shows and replays: the original headers are
//! those before the last `keel.error.v`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel::dead_letter::{Envelope, Replay};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::source::SourceContext;

pub use crate::envelope::{DeadLetterMessage, ERROR_HEADER_PREFIX, IDENTITY_HEADER, envelope_of, message_of};

/// A dead-letter topic as `keel dlq` reads it: every message from the beginning of each
/// partition to its end, and the replays recorded for them in a local file (a topic cannot
/// be edited; `keel dlq replay` records its marks in `marks`, by identity).
#[derive(Clone, Debug)]
pub struct DeadLetterTopic {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// librdkafka settings passed through.
    pub options: BTreeMap<String, String>,
    /// The file of replay marks (JSON lines `{"identity": .., "replay": {..}}`).
    pub marks: PathBuf,
    /// How long reading may take.
    pub timeout: Duration,
}

/// One message of a dead-letter topic.
#[derive(Debug)]
pub struct TopicEntry {
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The dead letter (with its recorded replays), or why the message is not one.
    pub envelope: Result<Envelope, String>,
}

#[derive(Serialize, Deserialize)]
struct Mark {
    identity: String,
    replay: Replay,
}

/// Why a dead-letter topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The broker refused or did not answer.
    #[error("reading dead-letter topic {topic}: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// The error.
        source: KafkaError,
    },
    /// The topic is not there.
    #[error("dead-letter topic {0} does not exist")]
    Missing(String),
    /// Reading did not reach the end of a partition in time.
    #[error("reading dead-letter topic {0} timed out")]
    Timeout(String),
    /// The marks file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl DeadLetterTopic {
    fn kafka(&self) -> impl FnOnce(KafkaError) -> TopicError + '_ {
        |source| TopicError::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }

    /// Every message, partition by partition, in offset order.
    pub fn read(&self) -> Result<Vec<TopicEntry>, TopicError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", "keel-dlq")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        let consumer: BaseConsumer<SourceContext> =
            c.create_with_context(SourceContext::default()).map_err(self.kafka())?;
        let md = consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(self.kafka())?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(TopicError::Missing(self.topic.clone()));
        }
        let marks = self.marks()?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&self.topic, *p, Offset::Beginning)
                .map_err(self.kafka())?;
        }
        consumer.assign(&tpl).map_err(self.kafka())?;
        let mut ended: std::collections::HashSet<i32> = std::collections::HashSet::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + self.timeout;
        while ended.len() < partitions.len() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let headers: Vec<(&str, &[u8])> = m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
                        .unwrap_or_default();
                    let identity = headers
                        .iter()
                        .rev()
                        .find(|(k, _)| *k == IDENTITY_HEADER)
                        .and_then(|(_, v)| std::str::from_utf8(v).ok());
                    let mut envelope = envelope_of(m.key(), m.payload(), headers.iter().copied());
                    if let (Ok(env), Some(id)) = (&mut envelope, identity) {
                        env.replays = marks.get(id).cloned().unwrap_or_default();
                    }
                    out.push(TopicEntry {
                        partition: m.partition(),
                        offset: m.offset(),
                        envelope,
                    });
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                }
                Some(Err(e)) => return Err(self.kafka()(e)),
                None if Instant::now() > deadline => return Err(TopicError::Timeout(self.topic.clone())),
                None => {}
            }
        }
        out.sort_by_key(|e| (e.partition, e.offset));
        Ok(out)
    }

    /// The replays recorded per identity.
    fn marks(&self) -> Result<HashMap<String, Vec<Replay>>, TopicError> {
        let text = match std::fs::read_to_string(&self.marks) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out: HashMap<String, Vec<Replay>> = HashMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let m: Mark = serde_json::from_str(line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", self.marks.display(), i + 1),
                )
            })?;
            out.entry(m.identity).or_default().push(m.replay);
        }
        Ok(out)
    }

    /// Records `replay` for each dead letter of `envelopes` that does not record it yet;
    /// returns how many were marked. The marks file is rewritten atomically.
    pub fn mark_replayed<'a>(
        &self,
        envelopes: impl IntoIterator<Item = &'a Envelope>,
        replay: &Replay,
    ) -> Result<usize, TopicError> {
        let marks = self.marks()?;
        let mut text = std::fs::read_to_string(&self.marks).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(String::new()),
            _ => Err(e),
        })?;
        let mut marked = 0;
        let mut seen = std::collections::HashSet::new();
        for env in envelopes {
            let identity = env.identity();
            let done = marks
                .get(&identity)
                .is_some_and(|r| r.iter().any(|r| r.id == replay.id));
            if done || !seen.insert(identity.clone()) {
                continue;
            }
            let line = serde_json::to_string(&Mark {
                identity,
                replay: replay.clone(),
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            text.push_str(&line);
            text.push('\n');
            marked += 1;
        }
        if marked > 0 {
            let ops = keel::durable::LocalOps;
            if let Some(dir) = self.marks.parent().filter(|d| !d.as_os_str().is_empty()) {
                keel::durable::create_dir_durable(&ops, dir)?;
            }
            keel::durable::write_atomic(&ops, &self.marks, text.as_bytes())?;
        }
        Ok(marked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel::dead_letter::Provenance;
    use keel::{Failure, Record};

    fn envelope(partition: &str, value: &[u8]) -> Envelope {
        let mut record = Record::from_value(bytes::Bytes::copy_from_slice(value));
        record.key = Some(bytes::Bytes::from_static(b"customer-7"));
        record.headers = vec![
            ("trace".into(), bytes::Bytes::from_static(b"abc")),
            ("bin".into(), bytes::Bytes::from_static(&[0xff, 0x00])),
            ("trace".into(), bytes::Bytes::from_static(b"again")),
        ];
        let mut f = Failure::permanent("bad_json", "expected value at line 1");
        f.stage = "parse".into();
        f.field = Some("amount".into());
        f.chain = vec!["cause".into()];
        f.record_id = Some(serde_json::json!(42));
        let position = serde_json::json!(16);
        Envelope::new(
            &record,
            &f,
            Provenance {
                pipeline: "orders",
                partition,
                position: &position,
                epoch: 3,
                attempts: 2,
                first_failed_ms: 1000,
                last_failed_ms: 2000,
            },
        )
    }

    #[test]
    fn a_dead_letter_round_trips_through_its_message() {
        for value in [&b"{not json"[..], &[0xfe, 0x01][..], b""] {
            let env = envelope("orders:3", value);
            let m = message_of(&env);
            assert_eq!(m.key.as_deref(), Some(&b"customer-7"[..]));
            assert_eq!(m.value.as_deref(), Some(value));
            // the original headers first, untouched and in order
            assert_eq!(m.headers[0], ("trace".into(), b"abc".to_vec()));
            assert_eq!(m.headers[1], ("bin".into(), vec![0xff, 0x00]));
            assert_eq!(m.headers[2], ("trace".into(), b"again".to_vec()));
            let h = |name: &str| {
                m.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            };
            assert_eq!(h("keel.error.topic").as_deref(), Some("orders"));
            assert_eq!(h("keel.error.partition").as_deref(), Some("3"));
            assert_eq!(h("keel.error.offset").as_deref(), Some("15"));
            assert_eq!(h("keel.error.reason").as_deref(), Some("bad_json"));
            assert_eq!(h("keel.error.class").as_deref(), Some("permanent"));
            // a keel.writer/keel.progress pair after it, as the sink adds, changes nothing
            let mut all: Vec<(&str, &[u8])> = m.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            all.push(("keel.writer", b"p/dead_letters"));
            all.push(("keel.progress", b"3/0"));
            let back = envelope_of(m.key.as_deref(), m.value.as_deref(), all).unwrap();
            assert_eq!(back, env);
            assert_eq!(back.identity(), m.identity);
        }
    }

    #[test]
    fn a_dead_letter_of_a_dead_letter_keeps_the_inner_envelope_as_original_headers() {
        let inner = message_of(&envelope("orders:0", b"x"));
        let mut record = Record::from_value(bytes::Bytes::from_static(b"x"));
        record.headers = inner
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), bytes::Bytes::from(v.clone())))
            .collect();
        let env = Envelope::new(
            &record,
            &Failure::permanent("still_bad", "again"),
            Provenance {
                pipeline: "fix",
                partition: "orders-dlq:0",
                position: &serde_json::json!(1),
                epoch: 1,
                attempts: 1,
                first_failed_ms: 1,
                last_failed_ms: 1,
            },
        );
        let outer = message_of(&env);
        let back = envelope_of(
            outer.key.as_deref(),
            outer.value.as_deref(),
            outer.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        )
        .unwrap();
        assert_eq!(back, env);
        assert_eq!(back.headers.len(), inner.headers.len());
    }

    #[test]
    fn a_message_without_the_envelope_is_refused() {
        let e = envelope_of(Some(b"k"), Some(b"v"), [("trace", &b"x"[..])]).unwrap_err();
        assert!(e.contains("not a keel dead letter"), "{e}");
        let m = message_of(&envelope("file.jsonl", b"v"));
        assert!(
            !m.headers.iter().any(|(k, _)| k == "keel.error.offset"),
            "not from Kafka"
        );
        let cut: Vec<(&str, &[u8])> = m
            .headers
            .iter()
            .filter(|(k, _)| k != "keel.error.reason")
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let e = envelope_of(None, Some(b"v"), cut).unwrap_err();
        assert!(e.contains("keel.error.reason"), "{e}");
    }
}
