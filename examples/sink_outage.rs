//! A sink outage: the sink refuses every write for 6 seconds. The circuit breaker opens after
//! 3 failures, and the pipeline stops reading input instead of dead-lettering healthy records.
//! The breaker probes the sink every 2 seconds; when it answers again, the breaker closes and
//! the pipeline resumes by itself. Nothing is lost and nothing is dead-lettered.
//!
//! ```text
//! cargo run -p keel-examples --example sink_outage
//! ```

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keel::policy::{BreakerConfig, Policies};
use keel::{FileCheckpointStore, Flow, Pipeline, Record};
use keel_connectors::file::{FileFormat, FileSink, FileSinkConfig};
use keel_connectors::generator::{GeneratorConfig, GeneratorSource};
use keel_examples::{Faults, Faulty, count_lines, out_dir};

fn main() -> anyhow::Result<()> {
    let out = out_dir("sink_outage");
    let outage = Faults::Outage {
        from: Duration::from_secs(2),
        until: Duration::from_secs(8),
    };
    let sink = Faulty::new(
        FileSink::new(FileSinkConfig::new(out.join("out"), FileFormat::JsonLines)),
        outage,
    );
    let calls = sink.calls.clone();
    let policies = Policies {
        sink_breaker: Some(BreakerConfig {
            failures: 3,
            open_for: Duration::from_secs(2),
            ..Default::default()
        }),
        ..Policies::default()
    };
    // 2,000 records per second for 10 seconds
    let source = GeneratorSource::new(GeneratorConfig {
        partitions: 2,
        records: Some(20_000),
        rate: Some(2_000.0),
        bad_fraction: 0.0,
        ..Default::default()
    })?;
    let started = Instant::now();
    let summary = Pipeline::builder("sink-outage")
        .source(source)
        .flow(Flow::<Record>::new().map(|r: Record| r.value))
        .sink_with("out", sink, keel::RawEncoder)
        .dead_letters(FileSink::new(FileSinkConfig::dead_letters(out.join("dead"))))
        .checkpoints(FileCheckpointStore::new(out.join("state")))
        .policies(policies)
        .configure(|o| o.flush_bytes = 64 << 10)
        .build()?
        .run()?;
    let (_, b) = summary
        .breakers
        .iter()
        .find(|(n, _)| n == "out")
        .cloned()
        .unwrap_or_default();
    println!(
        "{:.1?}: the sink refused {} writes during a 6 s outage; the breaker opened {}x, failed {} probes, closed {}x; input paused {}x",
        started.elapsed(),
        calls.1.load(Ordering::Relaxed),
        b.opened,
        b.reopened,
        b.closed,
        summary.pauses
    );
    println!(
        "{} records written, {} dead-lettered",
        count_lines(&out.join("out")),
        summary.dead_letters
    );
    assert_eq!(summary.dead_letters, 0, "no healthy record dead-lettered");
    assert_eq!(count_lines(&out.join("out")), 20_000, "nothing lost");
    Ok(())
}
