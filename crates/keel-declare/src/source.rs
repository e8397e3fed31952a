//! The sources a pipeline file can name.
//!
//! Every source of a pipeline file keeps its positions as `u64`: files and Kafka offsets,
//! NATS stream sequences, and Redis stream entry ids packed by [`pack_entry_id`].

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
    /// A NATS JetStream stream.
    #[cfg(feature = "nats")]
    Nats(keel_connectors::nats::NatsSource),
    /// Redis streams.
    #[cfg(feature = "redis")]
    RedisStream(keel_connectors::redis_stream::RedisStreamSource),
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
    /// A NATS stream or subject filter.
    #[cfg(feature = "nats")]
    Nats(keel_connectors::nats::NatsReader),
    /// A Redis stream, with a batch of its own for the entry ids.
    #[cfg(feature = "redis")]
    RedisStream(keel_connectors::redis_stream::RedisStreamReader, SourceBatch<String>),
}

/// Runs `$body` with `$s` bound to the source inside whichever variant `$e` is.
macro_rules! each_source {
    ($e:expr, $s:ident => $body:expr) => {
        match $e {
            AnySource::Files($s) => $body,
            AnySource::Generator($s) => $body,
            AnySource::Memory($s) => $body,
            #[cfg(feature = "kafka")]
            AnySource::Kafka($s) => $body,
            #[cfg(feature = "nats")]
            AnySource::Nats($s) => $body,
            #[cfg(feature = "redis")]
            AnySource::RedisStream($s) => $body,
        }
    };
}

impl From<std::convert::Infallible> for AnySource {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

#[cfg(feature = "kafka")]
impl From<keel_connectors::kafka::KafkaSource> for AnySource {
    fn from(s: keel_connectors::kafka::KafkaSource) -> Self {
        AnySource::Kafka(s)
    }
}

/// A Redis stream entry id `ms-seq` as one number: the time in the high 42 bits (until
/// the year 2109), the sequence in the low 22 (4,194,303 entries in one millisecond;
/// `XADD *` never gets near it). Ids outside that range cannot be kept as a position.
pub fn pack_entry_id(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (ms < 1 << 42 && seq < 1 << 22).then_some(ms << 22 | seq)
}

/// The entry id a position packed by [`pack_entry_id`] stands for.
pub fn unpack_entry_id(position: u64) -> String {
    format!("{}-{}", position >> 22, position & ((1 << 22) - 1))
}

impl Source for AnySource {
    type Position = u64;
    type Reader = AnyReader;

    fn describe(&self) -> String {
        each_source!(self, s => s.describe())
    }

    fn is_bounded(&self) -> bool {
        each_source!(self, s => s.is_bounded())
    }

    fn ends_are_final(&self) -> bool {
        each_source!(self, s => s.ends_are_final())
    }

    fn discovery_interval(&self) -> Option<std::time::Duration> {
        each_source!(self, s => s.discovery_interval())
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        each_source!(self, s => s.discover().await)
    }

    async fn acknowledge(
        &mut self,
        id: keel::checkpoint::CheckpointId,
        positions: &[(String, u64)],
    ) -> Result<(), SourceError> {
        match self {
            #[cfg(feature = "redis")]
            AnySource::RedisStream(s) => {
                let ids: Vec<(String, String)> = positions
                    .iter()
                    .map(|(p, at)| (p.clone(), unpack_entry_id(*at)))
                    .collect();
                s.acknowledge(id, &ids).await
            }
            AnySource::Files(s) => s.acknowledge(id, positions).await,
            AnySource::Generator(s) => s.acknowledge(id, positions).await,
            AnySource::Memory(s) => s.acknowledge(id, positions).await,
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => s.acknowledge(id, positions).await,
            #[cfg(feature = "nats")]
            AnySource::Nats(s) => s.acknowledge(id, positions).await,
        }
    }

    async fn open(&mut self, partition: &str, from: Option<u64>) -> Result<AnyReader, SourceError> {
        Ok(match self {
            AnySource::Files(s) => AnyReader::Files(s.open(partition, from).await?),
            AnySource::Generator(s) => AnyReader::Generator(s.open(partition, from).await?),
            AnySource::Memory(s) => AnyReader::Memory(s.open(partition, from).await?),
            #[cfg(feature = "kafka")]
            AnySource::Kafka(s) => AnyReader::Kafka(s.open(partition, from).await?),
            #[cfg(feature = "nats")]
            AnySource::Nats(s) => AnyReader::Nats(s.open(partition, from).await?),
            #[cfg(feature = "redis")]
            AnySource::RedisStream(s) => AnyReader::RedisStream(
                s.open(partition, from.map(unpack_entry_id)).await?,
                SourceBatch::default(),
            ),
        })
    }
}

impl PartitionReader for AnyReader {
    type Position = u64;

    fn lag(&self) -> Option<u64> {
        match self {
            AnyReader::Files(r) => r.lag(),
            AnyReader::Generator(r) => r.lag(),
            AnyReader::Memory(r) => r.lag(),
            #[cfg(feature = "kafka")]
            AnyReader::Kafka(r) => r.lag(),
            #[cfg(feature = "nats")]
            AnyReader::Nats(r) => r.lag(),
            #[cfg(feature = "redis")]
            AnyReader::RedisStream(r, _) => r.lag(),
        }
    }

    async fn next_batch(&mut self, batch: &mut SourceBatch<u64>, max: usize) -> Result<ReadStatus, SourceError> {
        match self {
            AnyReader::Files(r) => r.next_batch(batch, max).await,
            AnyReader::Generator(r) => r.next_batch(batch, max).await,
            AnyReader::Memory(r) => r.next_batch(batch, max).await,
            #[cfg(feature = "kafka")]
            AnyReader::Kafka(r) => r.next_batch(batch, max).await,
            #[cfg(feature = "nats")]
            AnyReader::Nats(r) => r.next_batch(batch, max).await,
            #[cfg(feature = "redis")]
            AnyReader::RedisStream(r, ids) => {
                ids.clear();
                let status = r.next_batch(ids, max).await?;
                for (record, id) in ids.records.drain(..).zip(ids.positions.drain(..)) {
                    let Some(at) = pack_entry_id(&id) else {
                        return Err(SourceError::BadPosition {
                            partition: r.stream().to_owned(),
                            position: id,
                            reason: "a Redis entry id beyond 2^42-1 ms or 2^22-1 entries in one ms cannot be kept as a position".into(),
                        });
                    };
                    batch.push(record, at);
                }
                Ok(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_pack_into_positions_that_sort_as_they_do() {
        let ids = [
            "0-1",
            "1-0",
            "1700000000000-0",
            "1700000000000-4194303",
            "1700000000001-0",
        ];
        let packed: Vec<u64> = ids.iter().map(|i| pack_entry_id(i).unwrap()).collect();
        assert!(packed.windows(2).all(|w| w[0] < w[1]));
        for (id, p) in ids.iter().zip(&packed) {
            assert_eq!(unpack_entry_id(*p), *id);
        }
        assert_eq!(pack_entry_id("1-4194304"), None);
        assert_eq!(pack_entry_id("4398046511104-0"), None);
        assert_eq!(pack_entry_id("nonsense"), None);
    }
}
