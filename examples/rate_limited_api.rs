//! A rate-limited API: each record is enriched by a call to an API that allows 200 calls per
//! second and answers `429 Too Many Requests` with a retry-after beyond that. A throttled
//! failure pauses the whole pipeline for the retry-after (input stops everywhere, a checkpoint
//! is taken), then the record is retried and everything resumes by itself. Nothing is
//! dead-lettered, nothing is lost.
//!
//! ```text
//! cargo run -p keel-examples --example rate_limited_api
//! ```

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use keel::{Failure, FileCheckpointStore, Flow, Pipeline, Record};
use keel_connectors::file::{FileFormat, FileSink, FileSinkConfig};
use keel_connectors::generator::{GeneratorConfig, GeneratorSource};
use keel_examples::{count_lines, out_dir};

/// A fake API with a fixed window rate limit.
struct Api {
    window: Instant,
    calls: u32,
    per_second: u32,
    throttled: u32,
}

impl Api {
    fn enrich(&mut self, order: &[u8]) -> Result<Vec<u8>, Failure> {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.calls = 0;
        }
        if self.calls >= self.per_second {
            self.throttled += 1;
            let retry_after = Duration::from_secs(1).saturating_sub(self.window.elapsed());
            return Err(
                Failure::throttled("rate_limited", "429 Too Many Requests", Some(retry_after)).with_status(429),
            );
        }
        self.calls += 1;
        let mut v: serde_json::Value =
            serde_json::from_slice(order).map_err(|e| Failure::permanent("malformed", e.to_string()))?;
        v["segment"] = if v["amount"].as_i64().unwrap_or(0) > 25_000 {
            "large"
        } else {
            "small"
        }
        .into();
        Ok(serde_json::to_vec(&v).unwrap_or_default())
    }
}

fn main() -> anyhow::Result<()> {
    let out = out_dir("rate_limited_api");
    let api = Rc::new(RefCell::new(Api {
        window: Instant::now(),
        calls: 0,
        per_second: 200,
        throttled: 0,
    }));
    let a = api.clone();
    let flow = Flow::<Record>::new().map_async(move |r: Record| {
        let api = a.clone();
        async move { api.borrow_mut().enrich(&r.value) }
    });
    let source = GeneratorSource::new(GeneratorConfig {
        partitions: 4,
        records: Some(600),
        bad_fraction: 0.0,
        ..GeneratorConfig::default()
    })?;
    let started = Instant::now();
    let summary = Pipeline::builder("rate-limited-api")
        .source(source)
        .flow(flow)
        .sink_with(
            "enriched",
            FileSink::new(FileSinkConfig::new(out.join("enriched"), FileFormat::JsonLines)),
            keel::RawEncoder,
        )
        .dead_letters(FileSink::new(FileSinkConfig::dead_letters(out.join("dead"))))
        .checkpoints(FileCheckpointStore::new(out.join("state")))
        .build()?
        .run()?;
    println!(
        "{} records enriched in {:.1?}: the API said 429 {} times, the pipeline paused {} times, {} dead letters",
        summary.records_out,
        started.elapsed(),
        api.borrow().throttled,
        summary.pauses,
        summary.dead_letters
    );
    println!(
        "output: {} lines in {}",
        count_lines(&out.join("enriched")),
        out.join("enriched").display()
    );
    assert_eq!(summary.records_out, 600, "every record enriched");
    assert_eq!(summary.dead_letters, 0);
    Ok(())
}
