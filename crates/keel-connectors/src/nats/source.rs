//! The NATS JetStream source: a stream (or each subject filter of it) is a partition; the
//! position is the next stream sequence to read.
//!
//! Each open partition has a consumer of its own on the connectors' I/O runtime (an ordered
//! consumer, or the configured durable one), which prefetches into a bounded channel; the
//! reader drains that channel. Ordered consumers recreate themselves after a server restart,
//! so an outage only pauses the partition.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use bytes::Bytes;
use futures_util::StreamExt;
use keel::checkpoint::CheckpointId;
use keel::{PartitionReader, ReadStatus, Record, Source, SourceBatch, SourceError};
use tokio::sync::mpsc;

use super::config::{NatsSourceConfig, NatsStart};
use super::errors::classify_request;

/// Per partition, stream sequences of read messages with their reply subjects: what
/// [`Source::acknowledge`] acknowledges (a durable consumer with `AckPolicy::All`).
type Replies = Arc<Mutex<HashMap<String, BTreeMap<u64, String>>>>;

/// Reads a JetStream stream.
pub struct NatsSource {
    config: NatsSourceConfig,
    client: Option<async_nats::Client>,
    replies: Replies,
}

impl std::fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("stream", &self.config.stream)
            .finish()
    }
}

fn failed(f: keel::Failure) -> SourceError {
    SourceError::Failed(keel::FailureError(f))
}

impl NatsSource {
    /// A source with `config`; connects when partitions are first listed.
    pub fn new(config: NatsSourceConfig) -> Result<Self, SourceError> {
        if config.stream.is_empty() {
            return Err(SourceError::Config("nats source: `stream` is empty".into()));
        }
        Ok(NatsSource {
            config,
            client: None,
            replies: Arc::default(),
        })
    }

    async fn client(&mut self) -> Result<async_nats::Client, SourceError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c = super::connect(&self.config.url).await.map_err(failed)?;
        self.client = Some(c.clone());
        Ok(c)
    }

    /// The subject filter of `partition`, `None` for the whole stream.
    fn filter<'a>(&self, partition: &'a str) -> Result<Option<&'a str>, SourceError> {
        if partition == self.config.stream && self.config.subjects.is_empty() {
            return Ok(None);
        }
        match partition
            .strip_prefix(&self.config.stream)
            .and_then(|p| p.strip_prefix(':'))
        {
            Some(f) if self.config.subjects.iter().any(|s| s == f) => Ok(Some(f)),
            _ => Err(SourceError::Config(format!(
                "`{partition}` is not a partition of nats stream {}",
                self.config.stream
            ))),
        }
    }
}

impl Source for NatsSource {
    type Position = u64;
    type Reader = NatsReader;

    fn describe(&self) -> String {
        format!(
            "nats {} stream {}",
            keel::util::redact_url(&self.config.url),
            self.config.stream
        )
    }

    fn is_bounded(&self) -> bool {
        self.config.bounded
    }

    fn ends_are_final(&self) -> bool {
        false
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        let client = self.client().await?;
        let stream = self.config.stream.clone();
        // the stream must exist: a misspelt name fails the run before any work
        crate::io::run(async move {
            let js = jetstream::new(client);
            let mut st = js
                .get_stream(&stream)
                .await
                .map_err(|e| classify_request(&e, &format!("nats source: stream {stream}")))?;
            st.info()
                .await
                .map_err(|e| classify_request(&e, &format!("nats source: stream {stream}")))?;
            Ok::<_, keel::Failure>(())
        })
        .await
        .map_err(SourceError::Other)?
        .map_err(failed)?;
        Ok(if self.config.subjects.is_empty() {
            vec![self.config.stream.clone()]
        } else {
            self.config
                .subjects
                .iter()
                .map(|s| format!("{}:{s}", self.config.stream))
                .collect()
        })
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<NatsReader, SourceError> {
        let filter = self.filter(partition)?.map(str::to_owned);
        let client = self.client().await?;
        let deliver = match (from, self.config.start) {
            (Some(seq), _) | (None, NatsStart::Sequence(seq)) => DeliverPolicy::ByStartSequence {
                start_sequence: seq.max(1),
            },
            (None, NatsStart::Earliest) => DeliverPolicy::All,
            (None, NatsStart::Latest) => DeliverPolicy::New,
        };
        let (tx, rx) = mpsc::channel(8192);
        let (stream, durable, name) = (
            self.config.stream.clone(),
            self.config.durable.clone(),
            partition.to_owned(),
        );
        // consumers are created here, so a refusal fails the open instead of a later read
        let spec = ConsumerSpec {
            client: client.clone(),
            stream: stream.clone(),
            filter: filter.clone(),
            durable: durable.clone(),
            name: name.clone(),
        };
        let opened = crate::io::run(open_consumer(client, stream, filter, deliver, durable, name.clone()))
            .await
            .map_err(SourceError::Other)?
            .map_err(failed)?;
        let (end, pending, consumer) = opened;
        let bounded_end = self.config.bounded.then_some(end);
        let pump = crate::io::spawn(pump(spec, consumer, deliver, tx)).map_err(SourceError::Other)?;
        let next = match (from, deliver) {
            (Some(seq), _) => seq,
            (None, DeliverPolicy::ByStartSequence { start_sequence }) => start_sequence,
            // the first message's sequence sets it
            _ => 0,
        };
        Ok(NatsReader {
            name,
            rx,
            pump,
            next,
            end: bounded_end,
            lag: None,
            replies: self.config.durable.is_some().then(|| self.replies.clone()),
            // a bounded partition with nothing to read ends at once
            ended: self.config.bounded && pending == 0,
        })
    }

    async fn acknowledge(&mut self, _id: CheckpointId, positions: &[(String, u64)]) -> Result<(), SourceError> {
        if self.config.durable.is_none() {
            return Ok(());
        }
        let mut acks = Vec::new();
        if let Ok(mut replies) = self.replies.lock() {
            for (partition, pos) in positions {
                let Some(r) = replies.get_mut(partition) else { continue };
                // everything up to the checkpoint's position is acknowledged at once (AckAll)
                let covered = r.range(..*pos).next_back().map(|(s, reply)| (*s, reply.clone()));
                if let Some((seq, reply)) = covered {
                    acks.push(reply);
                    r.retain(|s, _| *s > seq);
                }
            }
        }
        if acks.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        // for monitoring only: a lost acknowledgement is repaired by the next one
        let sent = crate::io::run(async move {
            for reply in acks {
                client.publish(reply, Bytes::from_static(b"+ACK")).await?;
            }
            client
                .flush()
                .await
                .map_err(|e| async_nats::PublishError::with_source(async_nats::client::PublishErrorKind::Send, e))
        })
        .await;
        if let Ok(Err(e)) | Err(e) = sent.map_err(|e| e.to_string()).map(|r| r.map_err(|e| e.to_string())) {
            tracing::debug!(error = %e, "nats source: acknowledging the checkpoint failed (monitoring only)");
        }
        Ok(())
    }
}

type Consumed = Result<jetstream::Message, String>;

enum Opened {
    Ordered(jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>),
    Durable(jetstream::consumer::PullConsumer),
}

/// Creates the partition's consumer; returns the stream's last sequence now (a bounded
/// partition's end) and the messages pending to the consumer with it.
async fn open_consumer(
    client: async_nats::Client,
    stream: String,
    filter: Option<String>,
    deliver: DeliverPolicy,
    durable: Option<String>,
    name: String,
) -> Result<(u64, u64, Opened), keel::Failure> {
    let doing = format!("nats source: opening {name}");
    let fail = |e: &dyn std::fmt::Display| classify_request(e, &doing);
    let js = jetstream::new(client);
    let mut st = js.get_stream(&stream).await.map_err(|e| fail(&e))?;
    let end = st.info().await.map_err(|e| fail(&e))?.state.last_sequence;
    let filter_subject = filter.unwrap_or_default();
    let opened = match durable {
        None => Opened::Ordered(
            st.create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject,
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(&e))?,
        ),
        Some(d) => {
            // keel's checkpoint decides where reading starts: the consumer is recreated there
            let durable_name = if filter_subject.is_empty() {
                d
            } else {
                format!("{d}-{}", filter_subject.replace(['.', '*', '>'], "_"))
            };
            let _ = st.delete_consumer(&durable_name).await;
            Opened::Durable(
                st.create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some(durable_name),
                    filter_subject,
                    deliver_policy: deliver,
                    ack_policy: jetstream::consumer::AckPolicy::All,
                    ack_wait: Duration::from_secs(3600),
                    max_ack_pending: 1_000_000,
                    ..Default::default()
                })
                .await
                .map_err(|e| fail(&e))?,
            )
        }
    };
    let pending = match &opened {
        Opened::Ordered(c) => c.cached_info().num_pending,
        Opened::Durable(c) => c.cached_info().num_pending,
    };
    Ok((end, pending, opened))
}

/// What a partition's consumer is made from, to make it again after a failure.
struct ConsumerSpec {
    client: async_nats::Client,
    stream: String,
    filter: Option<String>,
    durable: Option<String>,
    name: String,
}

async fn messages_of(
    consumer: Opened,
) -> Result<std::pin::Pin<Box<dyn futures_util::Stream<Item = Consumed> + Send>>, String> {
    Ok(match consumer {
        Opened::Ordered(c) => Box::pin(
            c.messages()
                .await
                .map_err(|e| e.to_string())?
                .map(|r| r.map_err(|e| e.to_string())),
        ),
        Opened::Durable(c) => Box::pin(
            c.messages()
                .await
                .map_err(|e| e.to_string())?
                .map(|r| r.map_err(|e| e.to_string())),
        ),
    })
}

/// Moves the consumer's messages into `tx` until the reader is dropped. When the consumer
/// fails or ends (the server restarted, the connection broke), another is made where this
/// one stopped, again and again with a pause: an outage only pauses the partition. Every
/// tenth failure in a row is handed to the reader as a transient failure, so that the
/// source's policies and metrics see a long outage.
async fn pump(spec: ConsumerSpec, mut consumer: Opened, mut deliver: DeliverPolicy, tx: mpsc::Sender<Consumed>) {
    let mut failures = 0u32;
    loop {
        match messages_of(consumer).await {
            Ok(mut messages) => {
                while let Some(m) = messages.next().await {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(partition = %spec.name, error = %e, "nats source: the consumer failed; making another");
                            break;
                        }
                    };
                    if let Ok(info) = m.info() {
                        deliver = DeliverPolicy::ByStartSequence {
                            start_sequence: info.stream_sequence + 1,
                        };
                    }
                    failures = 0;
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(partition = %spec.name, error = %e, "nats source: the consumer failed; making another")
            }
        }
        // make another consumer where this one stopped
        consumer = loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = open_consumer(
                spec.client.clone(),
                spec.stream.clone(),
                spec.filter.clone(),
                deliver,
                spec.durable.clone(),
                spec.name.clone(),
            )
            .await;
            match again {
                Ok((_, _, c)) => break c,
                Err(f) => {
                    failures += 1;
                    if failures % 10 == 0 && tx.send(Err(f.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        };
    }
}

/// Reads one partition.
pub struct NatsReader {
    name: String,
    rx: mpsc::Receiver<Consumed>,
    pump: tokio::task::JoinHandle<()>,
    /// The sequence of the next message to read (0: not known yet).
    next: u64,
    /// Bounded: the last sequence to read.
    end: Option<u64>,
    lag: Option<u64>,
    replies: Option<Replies>,
    ended: bool,
}

impl std::fmt::Debug for NatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsReader")
            .field("partition", &self.name)
            .field("next", &self.next)
            .finish()
    }
}

impl Drop for NatsReader {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl NatsReader {
    /// Adds `m` to `batch`, unless it is a redelivery of a message already read. True when
    /// the bounded end is reached.
    fn take(&mut self, m: jetstream::Message, batch: &mut SourceBatch<u64>) -> Result<bool, SourceError> {
        let info = m
            .info()
            .map_err(|e| SourceError::Other(format!("nats source: {}: {e}", self.name)))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq < self.next {
            return Ok(false);
        }
        if self.end.is_some_and(|end| seq > end) {
            return Ok(true);
        }
        self.next = seq + 1;
        self.lag = Some(pending);
        if let (Some(replies), Some(reply)) = (&self.replies, &m.reply)
            && let Ok(mut r) = replies.lock()
        {
            r.entry(self.name.clone()).or_default().insert(seq, reply.to_string());
        }
        let headers = m
            .headers
            .as_ref()
            .map(|h| {
                h.iter()
                    .flat_map(|(k, vs)| {
                        vs.iter()
                            .map(move |v| (k.to_string(), Bytes::copy_from_slice(v.as_str().as_bytes())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let record = Record {
            key: Some(Bytes::copy_from_slice(m.subject.as_bytes())),
            value: m.payload.clone(),
            headers,
            event_time: None,
        };
        batch.push(record, seq + 1);
        Ok(self.end.is_some_and(|end| seq >= end) || (self.end.is_some() && pending == 0))
    }
}

impl PartitionReader for NatsReader {
    type Position = u64;

    fn lag(&self) -> Option<u64> {
        self.lag
    }

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        if self.ended {
            return Ok(ReadStatus::End);
        }
        let first = match tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await {
            Err(_) => return Ok(ReadStatus::Idle),
            Ok(None) => {
                return Err(SourceError::Other(format!(
                    "nats source: {}: the consumer stopped",
                    self.name
                )));
            }
            Ok(Some(m)) => m,
        };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let m = m.map_err(|e| {
                failed(keel::Failure::transient(
                    keel::failure::reason::IO,
                    format!("nats source: reading {}: {e}", self.name),
                ))
            })?;
            if self.take(m, batch)? {
                self.ended = true;
                break;
            }
            if batch.len() < max {
                next = self.rx.try_recv().ok();
            }
        }
        Ok(if !batch.is_empty() {
            ReadStatus::Records
        } else if self.ended {
            ReadStatus::End
        } else {
            ReadStatus::Idle
        })
    }
}
