//! A flaky sink: half of all writes fail with a connection reset. Each failed write is retried
//! with exponential backoff and jitter; a write that still fails after 3 attempts is given up
//! and its records go to the dead-letter queue with reason `retries_exhausted`, so nothing is
//! lost: every record is either in the output or in the dead-letter queue, exactly once.
//!
//! ```text
//! cargo run -p keel-examples --example flaky_sink
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use keel::policy::{Backoff, Jitter, Policies, RetryPolicy};
use keel::{FileCheckpointStore, Flow, Pipeline, Record};
use keel_connectors::file::dead_letters::{DeadLetterDir, Filter};
use keel_connectors::file::{FileFormat, FileSink, FileSinkConfig};
use keel_connectors::generator::{GeneratorConfig, GeneratorSource};
use keel_examples::{Faults, Faulty, count_lines, out_dir};

fn main() -> anyhow::Result<()> {
    let out = out_dir("flaky_sink");
    let sink = Faulty::new(
        FileSink::new(FileSinkConfig::new(out.join("out"), FileFormat::JsonLines)),
        Faults::Random(0.5),
    );
    let calls = sink.calls.clone();
    let policies = Policies {
        // no breaker here: a flaky sink is not down, its failures are retried one by one
        sink_breaker: None,
        sink_retry: RetryPolicy::new(
            Backoff::Exponential {
                initial: Duration::from_millis(20),
                multiplier: 2.0,
                max_delay: Duration::from_millis(200),
            },
            Jitter::Full,
            3,
            None,
        )?,
        ..Policies::default()
    };
    let source = GeneratorSource::new(GeneratorConfig {
        partitions: 2,
        records: Some(20_000),
        bad_fraction: 0.0,
        ..Default::default()
    })?;
    let summary = Pipeline::builder("flaky-sink")
        .source(source)
        .flow(Flow::<Record>::new().map(|r: Record| r.value))
        .sink_with("out", sink, keel::RawEncoder)
        .dead_letters(FileSink::new(FileSinkConfig::dead_letters(out.join("dead"))))
        .checkpoints(FileCheckpointStore::new(out.join("state")))
        .policies(policies)
        .configure(|o| {
            o.flush_bytes = 4 << 10;
            o.batch_size = 32;
        })
        .build()?
        .run()?;
    let (attempts, failed) = (calls.0.load(Ordering::Relaxed), calls.1.load(Ordering::Relaxed));
    let dead = DeadLetterDir::new(out.join("dead")).select(&Filter::default())?;
    println!(
        "{attempts} writes, {failed} failed and retried with backoff; {} records written, {} dead-lettered after 3 failed attempts",
        count_lines(&out.join("out")),
        dead.len()
    );
    if let Some((loc, e)) = dead.first() {
        println!("e.g. {loc}: reason {} at stage {}: {}", e.reason, e.stage, e.message);
    }
    assert_eq!(count_lines(&out.join("out")) + dead.len(), 20_000, "nothing lost");
    assert_eq!(summary.records_in, 20_000);
    Ok(())
}
