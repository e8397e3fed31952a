//! The orders job with keel's Rust API: per-customer running totals in keyed state, bad
//! records dead-lettered with their reason, final totals at the end, exactly-once across
//! crashes (kill it and run it again: it resumes from its last checkpoint).
//!
//! ```text
//! cargo run -p keel-examples --example orders -- [INPUT_DIR] [OUTPUT_DIR]
//! ```
//! Defaults: `examples/orders/input` and `target/orders-rs` (records/, final/, dead/, state/).

use std::path::PathBuf;

use keel::{Failure, FileCheckpointStore, Flow, Pipeline, Record, StateSpec};
use keel_connectors::file::{FileFormat, FileSink, FileSinkConfig, FileSource, FileSourceConfig};
use serde::{Deserialize, Serialize};

/// An input line.
#[derive(Deserialize)]
struct Order {
    id: i64,
    ts: i64,
    customer: String,
    amount: i64,
}

/// An output line.
#[derive(Serialize)]
struct RunningTotal {
    id: i64,
    customer: String,
    running_total: i64,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let input = PathBuf::from(args.next().unwrap_or_else(|| "examples/orders/input".into()));
    let out = PathBuf::from(args.next().unwrap_or_else(|| "target/orders-rs".into()));
    let jsonl = |dir: &str| FileSink::new(FileSinkConfig::new(out.join(dir), FileFormat::JsonLines));

    // One table of keyed state: the running total of each customer.
    let totals = StateSpec::<i64>::new("totals");
    let finals = totals.clone();

    let flow = Flow::<Record>::new()
        // malformed JSON, missing fields and wrong types are dead-lettered with their reason
        .parse_json::<Order>()
        .validate(|o| match o.amount {
            a if a < 0 => {
                Err(Failure::permanent("negative_amount", format!("amount {a} is negative")).with_field("amount"))
            }
            _ => Ok(()),
        })
        .event_time(|o| o.ts)
        .key_by(|o| o.customer.clone())
        .stateful(move |o, cx| {
            let running_total = cx.state(&totals).update(|t| {
                let t = t.get_or_insert(0);
                *t += o.amount;
                *t
            })?;
            Ok(RunningTotal {
                id: o.id,
                customer: o.customer,
                running_total,
            })
        })
        // when the input is exhausted: one line per customer to the `final` sink
        .on_finish(move |cx, _| {
            let mut all = cx.state_entries(&finals)?;
            all.sort();
            for (customer, total) in all {
                let customer = String::from_utf8_lossy(&customer);
                cx.emit_json("final", &serde_json::json!({ "customer": customer, "total": total }))?;
            }
            Ok(())
        });

    let pipeline = Pipeline::builder("orders-rs")
        .source(FileSource::new(FileSourceConfig::new(&input, FileFormat::JsonLines)))
        .flow(flow)
        .sink(jsonl("records"))
        .side_sink("final", jsonl("final"))
        .dead_letters(FileSink::new(FileSinkConfig::dead_letters(out.join("dead"))))
        .checkpoints(FileCheckpointStore::new(out.join("state")))
        .configure(|o| o.handle_signals = true)
        .build()?;
    for s in pipeline.sinks() {
        println!("sink {}: {} ({})", s.name, s.describe, s.guarantee);
    }
    let summary = pipeline.run()?;
    println!(
        "{:?}: {} records in, {} out, {} dead-lettered, {} checkpoints in {:.2?}",
        summary.outcome,
        summary.records_in,
        summary.records_out,
        summary.dead_letters,
        summary.checkpoints,
        summary.elapsed
    );
    Ok(())
}
