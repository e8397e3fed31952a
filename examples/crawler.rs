//! A crawler written against the Rust API: every input line names a page of an API; the
//! pipeline fetches it (async), extracts what it needs, and writes one line per page. The
//! API misbehaves the way real ones do, and each kind of failure has its own action:
//!
//! | the API says | class (classifier) | action at stage `fetch` / `extract` |
//! |---|---|---|
//! | 429 with a retry-after | throttled | pause the whole pipeline for the retry-after, then retry |
//! | a timeout (408/504) | transient | retry with exponential backoff and jitter, 4 attempts |
//! | 401 (the token expired) | fatal (reclassified from `permanent` by status) | abort after a final checkpoint |
//! | a page without a title | permanent | `extract`: skip it (counted), the crawl goes on |
//!
//! Pages are fetched eight at a time (`.map_async(..).concurrency(8)`) and written in input
//! order. The first run's token expires after 150 calls: the run aborts with its counts kept, and
//! the second run (a fresh token) resumes from the last checkpoint. Every page is written
//! exactly once across both runs; logs go to stderr (`RUST_LOG=info` by default).
//!
//! ```text
//! cargo run -p keel-examples --example crawler
//! ```

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use keel::policy::{Backoff, ClassifyRule, Jitter, Policies, RetryPolicy};
use keel::prelude::*;
use keel_connectors::file::{FileFormat, FileSink, FileSinkConfig};
use keel_examples::out_dir;

const PAGES: u64 = 400;

/// The fake API: what each page does, and a token good for `token_calls` calls.
struct Api {
    token_calls: u64,
    calls: u64,
    attempts: HashMap<u64, u32>,
}

impl Api {
    /// The answer to `GET /pages/{id}`: a JSON page, or a failure carrying its HTTP status.
    fn answer(&mut self, id: u64) -> Result<serde_json::Value, Failure> {
        self.calls += 1;
        if self.calls > self.token_calls {
            return Err(Failure::permanent("unauthorized", "401: token expired").with_status(401));
        }
        let attempt = self.attempts.entry(id).or_default();
        *attempt += 1;
        match (id % 10, *attempt) {
            (3, 1) => Err(
                Failure::throttled("rate_limited", "429 Too Many Requests", Some(Duration::from_millis(50)))
                    .with_status(429),
            ),
            (7, 1 | 2) => Err(Failure::permanent("timeout", "504 Gateway Timeout").with_status(504)),
            _ if id % 25 == 11 => Ok(serde_json::json!({ "id": id, "body": "<html></html>" })),
            _ => Ok(serde_json::json!({ "id": id, "title": format!("Page {id}"), "body": "..." })),
        }
    }
}

/// What the API's statuses mean, whatever class the fetch code gave them.
fn classifier() -> Vec<ClassifyRule> {
    vec![
        ClassifyRule {
            status: Some(vec![401, 403]),
            class: Class::Fatal,
            ..Default::default()
        },
        ClassifyRule {
            status: Some(vec![408, 504]),
            class: Class::Transient,
            ..Default::default()
        },
    ]
}

fn policies() -> anyhow::Result<Policies> {
    let mut fetch = ClassActions::default();
    fetch.set(
        Class::Transient,
        Action::Retry {
            policy: RetryPolicy::new(
                Backoff::Exponential {
                    initial: Duration::from_millis(20),
                    multiplier: 2.0,
                    max_delay: Duration::from_millis(500),
                },
                Jitter::Full,
                4,
                Some(Duration::from_secs(30)),
            )?,
            then: Box::new(Action::DeadLetter),
        },
    );
    fetch.set(
        Class::Throttled,
        Action::Pause {
            duration: Duration::from_secs(1),
            max_pauses: 5,
            then: Box::new(Action::DeadLetter),
        },
    );
    fetch.set(Class::Fatal, Action::Abort);
    let mut extract = ClassActions::default();
    extract.set(Class::Permanent, Action::Skip);
    let mut p = Policies {
        classifier: keel::policy::Classifier::new(classifier()),
        ..Policies::default()
    };
    p.stages.insert("fetch".into(), fetch);
    p.stages.insert("extract".into(), extract);
    Ok(p)
}

/// One run of the crawl with a token good for `token_calls` calls.
fn crawl(out: &std::path::Path, token_calls: u64, policies: Policies) -> Result<RunSummary, PipelineError> {
    let api = Rc::new(RefCell::new(Api {
        token_calls,
        calls: 0,
        attempts: HashMap::new(),
    }));
    // one list of pages, in one partition: `.concurrency(8)` fetches eight at a time
    let pages: Vec<String> = (0..PAGES).map(|i| format!("/pages/{i}")).collect();
    let flow = Flow::<Record>::new()
        .try_map(|r: Record| {
            let path = String::from_utf8_lossy(&r.value).into_owned();
            path.rsplit('/')
                .next()
                .and_then(|id| id.parse::<u64>().ok())
                .ok_or_else(|| Failure::permanent("bad_url", format!("not a page: {path}")))
        })
        .map_async(move |id: u64| {
            let api = api.clone();
            // calls interleave on one thread: never hold the RefCell across an await
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await; // the network
                api.borrow_mut().answer(id)
            }
        })
        .concurrency(8)
        .named("fetch")
        .try_map(|page: serde_json::Value| {
            let title = page["title"]
                .as_str()
                .ok_or_else(|| Failure::permanent("no_title", "the page has no title"))?;
            Ok(serde_json::json!({ "id": page["id"], "title": title })
                .to_string()
                .into_bytes())
        })
        .named("extract");
    Pipeline::builder("crawler")
        .source(VecSource::new(vec![pages]))
        .flow(flow)
        .sink_with(
            "pages",
            FileSink::new(FileSinkConfig::new(out.join("pages"), FileFormat::JsonLines)),
            RawEncoder,
        )
        .dead_letters(FileSink::new(FileSinkConfig::dead_letters(out.join("dead"))))
        .checkpoints(FileCheckpointStore::new(out.join("state")))
        .checkpoint_interval(Some(Duration::from_millis(50)))
        .policies(policies)
        .build()?
        .run()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let out = out_dir("crawler");

    // run 1: the token expires after 150 calls; the run aborts and keeps its counts
    let first = match crawl(&out, 150, policies()?) {
        Err(PipelineError::Aborted { reason, summary }) => {
            let s = summary.expect("an abort carries the run's summary");
            println!(
                "run 1 aborted ({reason}): {} pages written, {} skipped, {} retries, {} pauses; last checkpoint {:?}",
                s.records_out, s.skipped, s.retries, s.pauses, s.last_checkpoint
            );
            s
        }
        other => anyhow::bail!("expected the first run to abort on the 401, got {other:?}"),
    };

    // run 2: a fresh token; the crawl resumes from the last checkpoint
    let second = crawl(&out, u64::MAX, policies()?)?;
    println!(
        "run 2 resumed from checkpoint {:?}: {} pages written, {} skipped, {} retries, {} pauses",
        second.restored_from, second.records_out, second.skipped, second.retries, second.pauses
    );

    // every page with a title exactly once, across both runs
    let mut ids = Vec::new();
    for e in std::fs::read_dir(out.join("pages"))? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(['.', '_']) {
            continue;
        }
        for line in std::fs::read_to_string(e.path())?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            ids.push(v["id"].as_u64().unwrap_or(u64::MAX));
        }
    }
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    let want: BTreeSet<u64> = (0..PAGES).filter(|i| i % 25 != 11).collect();
    assert_eq!(unique.len(), ids.len(), "no page written twice");
    assert_eq!(unique, want, "every page with a title written");
    assert_eq!(second.outcome, Outcome::Finished);
    assert!(first.records_out > 0 && first.records_out < want.len() as u64);
    println!("{} pages in {}, each once", ids.len(), out.join("pages").display());
    Ok(())
}
