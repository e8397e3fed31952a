//! A poison record: one line of a partition cannot be decoded. It goes to the dead-letter
//! queue with its reason, stage and provenance (partition, byte position, epoch), and its
//! partition goes on with the next record; the other partition never notices.
//!
//! ```text
//! cargo run -p keel-examples --example poison_record
//! ```

use keel::{FileCheckpointStore, Flow, Pipeline, Record};
use keel_connectors::file::dead_letters::{DeadLetterDir, Filter};
use keel_connectors::file::{FileFormat, FileSink, FileSinkConfig, FileSource, FileSourceConfig};
use keel_examples::{count_lines, out_dir};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
struct Payment {
    id: u64,
    amount: i64,
}

fn main() -> anyhow::Result<()> {
    let out = out_dir("poison_record");
    let input = out.join("in");
    std::fs::create_dir_all(&input)?;
    let lines = |ids: std::ops::Range<u64>| {
        ids.map(|i| format!("{{\"id\": {i}, \"amount\": {}}}\n", i * 10))
            .collect::<String>()
    };
    std::fs::write(
        input.join("a.jsonl"),
        format!("{}{{\"id\": 3, \"amount\": \"lots\"}}\n{}", lines(0..3), lines(4..10)),
    )?;
    std::fs::write(input.join("b.jsonl"), lines(100..110))?;

    let summary = Pipeline::builder("poison-record")
        .source(FileSource::new(FileSourceConfig::new(&input, FileFormat::JsonLines)))
        .flow(Flow::<Record>::new().parse_json::<Payment>())
        .sink(FileSink::new(FileSinkConfig::new(
            out.join("out"),
            FileFormat::JsonLines,
        )))
        .dead_letters(FileSink::new(FileSinkConfig::dead_letters(out.join("dead"))))
        .checkpoints(FileCheckpointStore::new(out.join("state")))
        .build()?
        .run()?;
    println!(
        "{} records out, {} dead-lettered",
        summary.records_out, summary.dead_letters
    );
    let dead = DeadLetterDir::new(out.join("dead")).select(&Filter::default())?;
    for (loc, e) in &dead {
        println!(
            "{loc}: {} ({}) at stage {}, partition {} position {}: {}\n  original: {}",
            e.reason,
            e.class,
            e.stage,
            e.partition,
            e.position,
            e.message,
            e.raw.as_deref().unwrap_or("<binary>")
        );
    }
    assert_eq!(count_lines(&out.join("out")), 19, "both partitions went on");
    assert_eq!(summary.dead_letters, 1);
    Ok(())
}
