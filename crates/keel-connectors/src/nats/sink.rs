//! The NATS JetStream sink: epochs staged locally, published at the commit with
//! deterministic message ids (see the module documentation of [`super`]).

use std::collections::{HashSet, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::DeliverPolicy, message::PublishMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::SinkError;
use keel::{Class, Failure};
use serde::{Deserialize, Serialize};

use super::config::NatsSinkConfig;
use super::errors::{classify_publish, classify_request};
use crate::stage::{Publish, Staged, StagedSink};

/// The NATS sink: a [`StagedSink`] publishing through a [`NatsPublisher`].
pub type NatsSink = StagedSink<NatsPublisher>;

impl NatsSink {
    /// A sink named `name` publishing to `config.subject`.
    pub fn with_config(name: impl Into<String>, config: NatsSinkConfig) -> Self {
        let dir = config.staging.clone();
        StagedSink::new(name, dir, NatsPublisher::new(config))
    }

    /// The dead-letter sink: publishes each dead letter's original bytes with its envelope
    /// in `keel.error.*` headers to `config.subject`.
    pub fn dead_letters(mut config: NatsSinkConfig) -> Self {
        config.dead_letters = true;
        Self::with_config("dead_letters", config)
    }
}

/// Publishes epochs to a JetStream subject.
pub struct NatsPublisher {
    config: NatsSinkConfig,
    started: OnceLock<Started>,
}

struct Started {
    js: jetstream::Context,
    stream: String,
    writer: String,
    max_payload: usize,
}

/// Where an epoch's messages can only come after: the stream's last sequence at prepare.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    stream: String,
    after: u64,
}

fn rejected(f: Failure) -> SinkError {
    SinkError::Rejected(f)
}

/// A header value NATS accepts (no line breaks).
fn header_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v).replace(['\r', '\n'], " ")
}

impl NatsPublisher {
    /// A publisher for `config`; connects at [`Publish::start`].
    pub fn new(config: NatsSinkConfig) -> Self {
        NatsPublisher {
            config,
            started: OnceLock::new(),
        }
    }

    fn started(&self) -> Result<&Started, SinkError> {
        self.started
            .get()
            .ok_or_else(|| SinkError::Fatal("nats sink: used before start".into()))
    }

    fn shown(&self) -> String {
        keel::util::redact_url(&self.config.url)
    }

    /// Runs `f` again while it fails transiently, until `deadline`.
    fn patiently<T>(&self, doing: &str, deadline: Instant, f: impl Fn() -> Result<T, Failure>) -> Result<T, SinkError> {
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.class == Class::Transient && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "nats sink: {doing} failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(rejected(e)),
            }
        }
    }

    /// The stream's last sequence now.
    fn last_sequence(&self, s: &Started) -> Result<u64, Failure> {
        let (js, stream) = (s.js.clone(), s.stream.clone());
        crate::io::block_on(async move {
            let mut st = js
                .get_stream(&stream)
                .await
                .map_err(|e| classify_request(&e, &format!("reading stream {stream}")))?;
            let info = st
                .info()
                .await
                .map_err(|e| classify_request(&e, &format!("reading stream {stream}")))?;
            Ok(info.state.last_sequence)
        })
        .map_err(|e| Failure::fatal("runtime", e))?
    }

    /// The sequences of this writer's messages of `epoch` stored after `after`.
    fn read_back(&self, s: &Started, epoch: CheckpointId, after: u64) -> Result<HashSet<u64>, Failure> {
        let last = self.last_sequence(s)?;
        if last <= after {
            return Ok(HashSet::new());
        }
        let (js, stream, subject) = (s.js.clone(), s.stream.clone(), self.config.subject.clone());
        let prefix = format!("{}/{epoch}.{after}/", s.writer);
        let doing = format!("reading back stream {stream}");
        crate::io::block_on(async move {
            let fail = |e: &dyn std::fmt::Display| classify_request(e, &doing);
            let st = js.get_stream(&stream).await.map_err(|e| fail(&e))?;
            let consumer = st
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: subject,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| fail(&e))?;
            let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
            let mut found = HashSet::new();
            loop {
                let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                    // nothing more matches the subject up to the end
                    Err(_) | Ok(None) => break,
                    Ok(Some(m)) => m.map_err(|e| fail(&e))?,
                };
                let info = m.info().map_err(|e| fail(&e))?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID));
                if let Some(i) = id.and_then(|id| id.as_str().strip_prefix(&prefix)?.parse().ok()) {
                    found.insert(i);
                }
                if pending == 0 || seq >= last {
                    break;
                }
            }
            Ok(found)
        })
        .map_err(|e| Failure::fatal("runtime", e))?
    }

    /// The message for staged record `i` of `epoch`.
    fn message(
        &self,
        s: &Started,
        epoch: CheckpointId,
        after: u64,
        i: usize,
        r: &Staged<'_>,
    ) -> Result<PublishMessage, SinkError> {
        let mut m = PublishMessage::build().message_id(format!("{}/{epoch}.{after}/{i}", s.writer));
        for (k, v) in &self.config.headers {
            m = m.header(k.as_str(), v.as_str());
        }
        if self.config.dead_letters {
            let env = keel::dead_letter::Envelope::decode(r.value)
                .map_err(|e| SinkError::Fatal(format!("staged dead letter {i} of epoch {epoch} is unreadable: {e}")))?;
            let dl = crate::envelope::message_of(&env);
            for (k, v) in &dl.headers {
                m = m.header(k.as_str(), header_value(v).as_str());
            }
            if let Some(k) = &dl.key {
                m = m.header("keel.key", header_value(k).as_str());
            }
            return Ok(m.payload(Bytes::from(dl.value.unwrap_or_default())));
        }
        if let Some(k) = r.key {
            m = m.header("keel.key", header_value(k).as_str());
        }
        Ok(m.payload(Bytes::copy_from_slice(r.value)))
    }

    /// Publishes the records not in `done`, at most `max_in_flight` unacknowledged.
    fn send(
        &self,
        s: &Started,
        epoch: CheckpointId,
        after: u64,
        records: &[Staged<'_>],
        done: &HashSet<u64>,
    ) -> Result<(), SinkError> {
        let mut messages = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if !done.contains(&(i as u64)) {
                messages.push(self.message(s, epoch, after, i, r)?);
            }
        }
        let (js, subject, window) = (
            s.js.clone(),
            self.config.subject.clone(),
            self.config.max_in_flight.max(1),
        );
        crate::io::block_on(async move {
            let doing = format!("publishing to {subject}");
            let mut acks = VecDeque::with_capacity(window);
            let half = messages.len() / 2;
            for (n, m) in messages.into_iter().enumerate() {
                if n == half && n > 0 && keel::crash::armed_at("mid_publish") {
                    // a crash test's window in the middle of a publish: what was sent is stored
                    for ack in acks.drain(..) {
                        let ack: jetstream::context::PublishAckFuture = ack;
                        ack.await.map_err(|e| classify_publish(&e, &doing))?;
                    }
                    keel::crash::crash_point("mid_publish");
                }
                if acks.len() >= window
                    && let Some(ack) = acks.pop_front()
                {
                    let ack: jetstream::context::PublishAckFuture = ack;
                    ack.await.map_err(|e| classify_publish(&e, &doing))?;
                }
                let ack = js
                    .send_publish(subject.clone(), m)
                    .await
                    .map_err(|e| classify_publish(&e, &doing))?;
                acks.push_back(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| classify_publish(&e, &doing))?;
            }
            Ok::<(), Failure>(())
        })
        .map_err(SinkError::Fatal)?
        .map_err(rejected)
    }
}

impl Publish for NatsPublisher {
    fn describe(&self) -> String {
        let what = if self.config.dead_letters {
            "nats dead letters"
        } else {
            "nats"
        };
        format!("{what} {} subject {}", self.shown(), self.config.subject)
    }

    fn max_record_bytes(&self) -> Option<usize> {
        // the message id and headers take a few hundred bytes of the payload limit
        let s = self.started.get()?;
        (!self.config.dead_letters).then(|| s.max_payload.saturating_sub(512 + s.writer.len()))
    }

    fn start(&self, writer: &str, recovery: &SinkRecovery) -> Result<(), SinkError> {
        if self.started.get().is_some() {
            return Ok(());
        }
        let (url, subject) = (self.config.url.clone(), self.config.subject.clone());
        let (client, stream, window) = crate::io::block_on(async move {
            let client = super::connect(&url).await?;
            let js = jetstream::new(client.clone());
            let stream = js.stream_by_subject(subject.clone()).await.map_err(|e| {
                Failure::fatal(
                    "unknown_stream",
                    format!("nats sink: no stream captures subject `{subject}` ({e}); keel does not create streams"),
                )
            })?;
            let mut st = js
                .get_stream(&stream)
                .await
                .map_err(|e| classify_request(&e, &format!("reading stream {stream}")))?;
            let info = st
                .info()
                .await
                .map_err(|e| classify_request(&e, &format!("reading stream {stream}")))?;
            Ok::<_, Failure>((client, stream, info.config.duplicate_window))
        })
        .map_err(SinkError::Fatal)?
        .map_err(rejected)?;
        let needed = recovery.checkpoint_interval.unwrap_or_default() + Duration::from_secs(60);
        if window < needed {
            tracing::warn!(
                stream = %stream,
                "nats sink: the stream's duplicate window ({window:?}) is shorter than the checkpoint interval plus a minute for a restart; exactly-once still holds (recovery reads the stream back), but a publish retried later than the window after a timeout could store a message twice"
            );
        } else {
            tracing::info!(stream = %stream, "nats sink: duplicate window {window:?} covers the checkpoint interval plus a restart");
        }
        let max_payload = client.server_info().max_payload;
        let _ = self.started.set(Started {
            js: jetstream::new(client),
            stream,
            writer: writer.to_owned(),
            max_payload,
        });
        Ok(())
    }

    fn mark(&self, _epoch: CheckpointId) -> Result<serde_json::Value, SinkError> {
        let s = self.started()?;
        let deadline = Instant::now() + self.config.publish_timeout;
        let after = self.patiently("reading the stream's last sequence", deadline, || self.last_sequence(s))?;
        serde_json::to_value(Mark {
            stream: s.stream.clone(),
            after,
        })
        .map_err(|e| SinkError::Other(e.to_string()))
    }

    fn publish(
        &self,
        epoch: CheckpointId,
        mark: &serde_json::Value,
        records: &[Staged<'_>],
        resume: bool,
    ) -> Result<(), SinkError> {
        let s = self.started()?;
        let mark: Mark =
            serde_json::from_value(mark.clone()).map_err(|e| SinkError::PreCommit(format!("nats sink: {e}")))?;
        let deadline = Instant::now() + self.config.publish_timeout;
        let mut done = if resume {
            self.patiently("reading the stream back", deadline, || {
                self.read_back(s, epoch, mark.after)
            })?
        } else {
            HashSet::new()
        };
        loop {
            match self.send(s, epoch, mark.after, records, &done) {
                Ok(()) => return Ok(()),
                Err(SinkError::Rejected(f)) if f.class == Class::Transient && Instant::now() < deadline => {
                    tracing::warn!(error = %f, epoch, "nats sink: publish interrupted; resuming after a read-back");
                    std::thread::sleep(Duration::from_millis(500));
                    done = self.patiently("reading the stream back", deadline, || {
                        self.read_back(s, epoch, mark.after)
                    })?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
