//! The sources a pipeline file can name.

use keel::source::{MemoryReader, MemorySource};
use keel::{PartitionReader, ReadStatus, Source, SourceBatch, SourceError};
use keel_connectors::file::{FileReader, FileSource};
use keel_connectors::generator::{GeneratorReader, GeneratorSource};

/// Any source of a pipeline file.
#[derive(Debug)]
pub enum AnySource {
    /// Files.
    Files(FileSource),
    /// The generator.
    Generator(GeneratorSource),
    /// Records in memory (replays).
    Memory(MemorySource),
    /// Kafka topics.
    #[cfg(feature = "kafka")]
    Kafka(keel_connectors::kafka::KafkaSource),
}

#[cfg(feature = "kafka")]
impl From<keel_connectors::kafka::KafkaSource> for AnySource {
    fn from(s: keel_connectors::kafka::KafkaSource) -> Self {
        AnySource::Kafka(s)
    }
}

impl From<std::convert::Infallible> for AnySource {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// A reader of any source.
#[derive(Debug)]
pub enum AnyReader {
    /// Files.
    Files(FileReader),
    /// The generator.
    Generator(GeneratorReader),
    /// Records in memory.
    Memory(MemoryReader),
    /// A Kafka partition.
    #[cfg(feature = "kafka")]
    Kafka(keel_connectors::kafka::KafkaReader),
}

impl Source for AnySource {
    type Position = u64;
    type Reader = AnyReader;

    fn describe(&self) -> String {
        match self {
            AnySource::Files(s) => s.describe(),
            AnySource::Generator(s) => s.describe(),
            AnySource::Memory(s) => s.describe(),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => s.describe(),
        }
    }

    fn is_bounded(&self) -> bool {
        match self {
            AnySource::Files(s) => s.is_bounded(),
            AnySource::Generator(s) => s.is_bounded(),
            AnySource::Memory(s) => s.is_bounded(),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => s.is_bounded(),
        }
    }

    fn ends_are_final(&self) -> bool {
        match self {
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => s.ends_are_final(),
            _ => true,
        }
    }

    fn discovery_interval(&self) -> Option<std::time::Duration> {
        match self {
            AnySource::Files(s) => s.discovery_interval(),
            AnySource::Generator(s) => s.discovery_interval(),
            AnySource::Memory(s) => s.discovery_interval(),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => s.discovery_interval(),
        }
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        match self {
            AnySource::Files(s) => s.discover().await,
            AnySource::Generator(s) => s.discover().await,
            AnySource::Memory(s) => s.discover().await,
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => s.discover().await,
        }
    }

    async fn acknowledge(
        &mut self,
        id: keel::checkpoint::CheckpointId,
        positions: &[(String, u64)],
    ) -> Result<(), SourceError> {
        self.acknowledge_any(id, positions).await
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<AnyReader, SourceError> {
        Ok(match self {
            AnySource::Files(s) => AnyReader::Files(s.open(partition, from).await?),
            AnySource::Generator(s) => AnyReader::Generator(s.open(partition, from).await?),
            AnySource::Memory(s) => AnyReader::Memory(s.open(partition, from).await?),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => AnyReader::Kafka(s.open(partition, from).await?),
        })
    }
}

impl AnySource {
    /// Monitoring acknowledgements of the sources that have them (Kafka group offsets).
    async fn acknowledge_any(
        &mut self,
        id: keel::checkpoint::CheckpointId,
        positions: &[(String, u64)],
    ) -> Result<(), SourceError> {
        match self {
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => s.acknowledge(id, positions).await,
            _ => {
                let _ = (id, positions);
                Ok(())
            }
        }
    }
}

impl PartitionReader for AnyReader {
    type Position = u64;

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        match self {
            AnyReader::Files(r) => r.next_batch(batch, max).await,
            AnyReader::Generator(r) => r.next_batch(batch, max).await,
            AnyReader::Memory(r) => r.next_batch(batch, max).await,
            #[cfg(feature = "kafka")]
            AnyReader::Kafka(r) => r.next_batch(batch, max).await,
        }
    }
}
