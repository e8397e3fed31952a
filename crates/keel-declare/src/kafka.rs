//! `type = "kafka"` sources and sinks of a pipeline file. Built with the `kafka` feature;
//! without it, a file naming Kafka is refused before any work starts, with the feature to
//! enable.

use std::path::PathBuf;

use crate::config::{KafkaSinkToml, KafkaSourceToml};

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
        KafkaSink::new(writer, c).map_err(|e| e.to_string())
    }
}

#[cfg(feature = "kafka")]
pub(crate) use built::{sink, source};

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

    pub(crate) fn source(_: &KafkaSourceToml) -> Result<std::convert::Infallible, String> {
        Err(super::unavailable().unwrap_or_default().to_owned())
    }
}

#[cfg(not(feature = "kafka"))]
pub(crate) use absent::{sink, source};
