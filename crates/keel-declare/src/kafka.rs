//! `type = "kafka"` sources and sinks of a pipeline file. Built with the `kafka` feature;
//! without it, a file naming Kafka is refused before any work starts, with the feature to
//! enable.

use std::path::PathBuf;

use keel_connectors::file::dead_letters::{Entry, Location};

use crate::config::{DeadLetterConfig, KafkaSinkToml, KafkaSourceToml};

/// Why a file naming Kafka cannot run in this build, if it cannot.
pub(crate) fn unavailable() -> Option<&'static str> {
    if cfg!(feature = "kafka") {
        None
    } else {
        Some("this keel was built without Kafka support: build it with the `kafka` feature (the keel command has it)")
    }
}

#[cfg(feature = "kafka")]
mod built {
    use super::*;
    use crate::config::{KafkaPartitionerName, KafkaStart};
    use keel_connectors::kafka::{
        KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig, Partitioner, StartPosition,
    };

    /// The source of a `type = "kafka"` table.
    pub(crate) fn source(k: &KafkaSourceToml) -> Result<KafkaSource, String> {
        let mut c = KafkaSourceConfig::new(k.brokers.clone(), k.topics.clone());
        c.group = k.group.clone();
        c.bounded = k.bounded;
        c.start = match k.start {
            None | Some(KafkaStart::Earliest) => StartPosition::Earliest,
            Some(KafkaStart::Latest) => StartPosition::Latest,
            Some(KafkaStart::Time(ms)) => StartPosition::Timestamp(ms),
        };
        if let Some(d) = k.discovery_interval {
            c.discovery_interval = d;
        }
        c.options = k.options.clone();
        KafkaSource::new(c).map_err(|e| e.to_string())
    }

    /// The sink of a `type = "kafka"` table; `writer` names it in its records' headers.
    pub(crate) fn sink(k: &KafkaSinkToml, writer: &str, staging: PathBuf) -> Result<KafkaSink, String> {
        let mut c = KafkaSinkConfig::new(k.brokers.clone(), k.topic.clone(), staging);
        c.partitioner = match k.partitioner {
            None | Some(KafkaPartitionerName::Murmur2) => Partitioner::Murmur2,
            Some(KafkaPartitionerName::RoundRobin) => Partitioner::RoundRobin,
        };
        c.compression = k.compression.clone();
        c.headers = k.headers.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        c.options = k.options.clone();
        c.topic_field = k.topic_field.clone();
        c.transactional = k.transactional;
        c.transactional_id = k.transactional_id.clone();
        KafkaSink::new(writer, c).map_err(|e| e.to_string())
    }

    /// The dead-letter sink of `[dead_letter] type = "kafka"`, with `fallback` (its `path`).
    pub(crate) fn dead_letter_sink(
        d: &DeadLetterConfig,
        staging: PathBuf,
        fallback: PathBuf,
    ) -> Result<KafkaSink, String> {
        let brokers = d.brokers.clone().unwrap_or_default();
        let topic = d.topic.clone().unwrap_or_default();
        let mut c = KafkaSinkConfig::dead_letters(brokers, topic, staging, Some(fallback));
        c.compression = d.compression.clone();
        if let Some(after) = d.fallback_after {
            c.fallback_after = after;
        }
        c.options = d.options.clone();
        KafkaSink::new("dead_letters", c).map_err(|e| e.to_string())
    }
}

#[cfg(feature = "kafka")]
pub(crate) use built::{dead_letter_sink, sink, source};

/// A dead-letter topic as `keel dlq` reads it (see [`crate::dead_letters`]).
#[cfg(feature = "kafka")]
pub(crate) struct TopicStore(keel_connectors::kafka::DeadLetterTopic);

#[cfg(feature = "kafka")]
impl TopicStore {
    pub(crate) fn new(d: &DeadLetterConfig, marks: PathBuf) -> Result<Self, crate::replay::ReplayError> {
        Ok(TopicStore(keel_connectors::kafka::DeadLetterTopic {
            brokers: d.brokers.clone().unwrap_or_default(),
            topic: d.topic.clone().unwrap_or_default(),
            options: d.options.clone(),
            marks,
            timeout: std::time::Duration::from_secs(30),
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.0.topic
    }

    /// True when `at` is a message of this topic (`TOPIC:PARTITION:OFFSET`).
    pub(crate) fn holds(&self, at: &Location) -> bool {
        at.file
            .strip_prefix(self.0.topic.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|p| p.parse::<i32>().is_ok())
    }

    pub(crate) fn read(&self) -> Result<Vec<Entry>, crate::replay::ReplayError> {
        let entries = self
            .0
            .read()
            .map_err(|e| crate::replay::ReplayError::Topic(e.to_string()))?;
        Ok(entries
            .into_iter()
            .map(|e| Entry {
                location: Location {
                    file: format!("{}:{}", self.0.topic, e.partition),
                    line: usize::try_from(e.offset).unwrap_or(0),
                },
                envelope: e.envelope.or_else(crate::dead_letters::unreadable),
            })
            .collect())
    }

    pub(crate) fn mark_replayed<'a>(
        &self,
        envelopes: impl IntoIterator<Item = &'a keel::dead_letter::Envelope>,
        replay: &keel::dead_letter::Replay,
    ) -> Result<usize, crate::replay::ReplayError> {
        self.0
            .mark_replayed(envelopes, replay)
            .map_err(|e| crate::replay::ReplayError::Topic(e.to_string()))
    }
}

/// Without the feature a pipeline naming a Kafka topic is refused before this is reached.
#[cfg(not(feature = "kafka"))]
pub(crate) enum TopicStore {}

#[cfg(not(feature = "kafka"))]
impl TopicStore {
    pub(crate) fn new(_: &DeadLetterConfig, _: PathBuf) -> Result<Self, crate::replay::ReplayError> {
        Err(crate::replay::ReplayError::Topic(
            unavailable().unwrap_or_default().to_owned(),
        ))
    }
    pub(crate) fn name(&self) -> &str {
        match *self {}
    }
    pub(crate) fn holds(&self, _: &Location) -> bool {
        match *self {}
    }
    pub(crate) fn read(&self) -> Result<Vec<Entry>, crate::replay::ReplayError> {
        match *self {}
    }
    pub(crate) fn mark_replayed<'a>(
        &self,
        _: impl IntoIterator<Item = &'a keel::dead_letter::Envelope>,
        _: &keel::dead_letter::Replay,
    ) -> Result<usize, crate::replay::ReplayError> {
        match *self {}
    }
}

/// Stand-ins when the feature is off: never built (`unavailable` refuses the file first).
#[cfg(not(feature = "kafka"))]
mod absent {
    use super::*;
    use keel::checkpoint::CheckpointId;
    use keel::checkpoint::recovery::SinkRecovery;
    use keel::sink::{Guarantee, OutBatch, RecoveryReport, SealedEpoch, Sink, SinkError};

    /// A sink that cannot exist.
    pub(crate) enum NoKafka {}

    impl Sink for NoKafka {
        fn describe(&self) -> String {
            match *self {}
        }
        fn guarantee(&self) -> Guarantee {
            match *self {}
        }
        async fn recover(&mut self, _: &SinkRecovery) -> Result<RecoveryReport, SinkError> {
            match *self {}
        }
        async fn write(&mut self, _: CheckpointId, _: &OutBatch) -> Result<(), SinkError> {
            match *self {}
        }
        async fn seal(&mut self, _: CheckpointId) -> Result<Box<dyn SealedEpoch>, SinkError> {
            match *self {}
        }
    }

    pub(crate) fn sink(_: &KafkaSinkToml, _: &str, _: PathBuf) -> Result<NoKafka, String> {
        Err(super::unavailable().unwrap_or_default().to_owned())
    }

    pub(crate) fn dead_letter_sink(_: &DeadLetterConfig, _: PathBuf, _: PathBuf) -> Result<NoKafka, String> {
        Err(super::unavailable().unwrap_or_default().to_owned())
    }

    pub(crate) fn source(_: &KafkaSourceToml) -> Result<std::convert::Infallible, String> {
        Err(super::unavailable().unwrap_or_default().to_owned())
    }
}

#[cfg(not(feature = "kafka"))]
pub(crate) use absent::{dead_letter_sink, sink, source};
