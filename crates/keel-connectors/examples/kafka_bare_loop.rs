//! The ceiling for Kafka pipelines on a broker: a bare rdkafka loop that consumes every
//! partition of a topic to its end and produces each value to another topic, with no
//! checkpoints, no parsing and no guarantees. BENCHMARKS.md compares keel's Kafka → job →
//! Kafka run against it.
//!
//! ```text
//! cargo run --release -p keel-connectors --features kafka --example kafka_bare_loop -- BROKERS IN_TOPIC OUT_TOPIC PARTITIONS
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, input, output, partitions] = args.as_slice() else {
        return Err("usage: kafka_bare_loop BROKERS IN_TOPIC OUT_TOPIC PARTITIONS".into());
    };
    let partitions: i32 = partitions.parse()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "keel-bare-loop")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(input, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut ended = HashSet::new();
    let mut n = 0u64;
    while ended.len() < partitions as usize {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut rec = BaseRecord::<(), _>::to(output)
                    .partition(m.partition())
                    .payload(m.payload().unwrap_or_default());
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            rec = r;
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
                n += 1;
                if n % 4096 == 0 {
                    producer.poll(Duration::ZERO);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bare loop: {n} records in {secs:.2} s = {:.0} records/s",
        n as f64 / secs
    );
    Ok(())
}
