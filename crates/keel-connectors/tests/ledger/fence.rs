//! Batch ingestion publishes under a fence: a worker stalled past its lease never replaces
//! the output of the worker that took its unit over (SQLite ledger, file output store).

use std::sync::Arc;
use std::time::Duration;

use keel::ingest::{IngestSettings, Ingestor, InputFile, OutputStore, PauseHook, UnitJob, UnitRun, staging_namespace};
use keel::ledger::{BoxFuture, Claim, ClaimRequest, Filter, Ledger, LedgerError, Stats, Unit, UnitRef};
use keel::txn::FsTxnStore;
use keel_connectors::ledger::SqliteLedger;
use tokio::sync::watch;

/// A ledger whose renewals block while `frozen` is true: with the pause hook, the worker's
/// whole unit stalls, as a stopped process would.
#[derive(Debug)]
struct Stalling {
    inner: Arc<dyn Ledger>,
    frozen: watch::Receiver<bool>,
}

impl Ledger for Stalling {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn claim<'a>(
        &'a self,
        r: &'a [ClaimRequest],
        w: &'a str,
        l: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, LedgerError>> {
        self.inner.claim(r, w, l)
    }
    fn renew<'a>(
        &'a self,
        u: &'a [UnitRef],
        w: &'a str,
        l: Duration,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>> {
        let mut frozen = self.frozen.clone();
        Box::pin(async move {
            let _ = frozen.wait_for(|f| !*f).await;
            self.inner.renew(u, w, l).await
        })
    }
    fn complete<'a>(
        &'a self,
        u: &'a [(UnitRef, serde_json::Value)],
        w: &'a str,
    ) -> BoxFuture<'a, Result<Vec<UnitRef>, LedgerError>> {
        self.inner.complete(u, w)
    }
    fn fail<'a>(
        &'a self,
        u: &'a UnitRef,
        w: &'a str,
        e: &'a str,
        m: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        self.inner.fail(u, w, e, m)
    }
    fn list<'a>(&'a self, f: &'a Filter) -> BoxFuture<'a, Result<Vec<Unit>, LedgerError>> {
        self.inner.list(f)
    }
    fn retry<'a>(&'a self, f: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>> {
        self.inner.retry(f)
    }
    fn clear<'a>(&'a self, f: &'a Filter) -> BoxFuture<'a, Result<u64, LedgerError>> {
        self.inner.clear(f)
    }
    fn stats<'a>(&'a self, f: &'a Filter) -> BoxFuture<'a, Result<Stats, LedgerError>> {
        self.inner.stats(f)
    }
}

fn ingestor(ledger: Arc<dyn Ledger>, root: &std::path::Path, worker: &str, lease: Duration) -> Ingestor {
    let mut settings = IngestSettings::new("p", worker, root.join(format!("state-{worker}")));
    settings.lease = lease;
    settings.concurrency = 1;
    let store = FsTxnStore::with(root.join("out"), &staging_namespace(worker), keel::durable::local());
    Ingestor::new(
        ledger,
        vec![OutputStore {
            name: "out".into(),
            store,
            validators: Vec::new(),
        }],
        settings,
    )
}

/// The runner: writes which worker produced the output.
fn runner(worker: &'static str) -> impl Fn(UnitJob) -> BoxFuture<'static, Result<UnitRun, String>> {
    move |job: UnitJob| {
        Box::pin(async move {
            std::fs::write(job.outputs[0].join("part.txt"), worker).map_err(|e| e.to_string())?;
            Ok(UnitRun {
                records_in: 1,
                records_out: 1,
                ..UnitRun::default()
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stalled_past_its_lease_never_publishes_over_the_new_owner() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("u.jsonl"), "{}\n").unwrap();
    let inputs = vec![InputFile {
        key: "u.jsonl".into(),
        path: input.join("u.jsonl"),
    }];
    let ledger: Arc<dyn Ledger> = Arc::new(SqliteLedger::open(dir.path().join("ledger.db")).unwrap());

    // worker 1 stalls right before its commit, its lease renewals blocked too
    let (freeze, frozen) = watch::channel(false);
    let (reached_tx, mut reached) = watch::channel(false);
    let (resume_tx, resume) = watch::channel(false);
    let freeze = Arc::new(freeze);
    let reached_tx = Arc::new(reached_tx);
    let hook: PauseHook = {
        let freeze = freeze.clone();
        Arc::new(move |point, _unit| {
            let (freeze, reached_tx, mut resume) = (freeze.clone(), reached_tx.clone(), resume.clone());
            Box::pin(async move {
                if point == "before_commit" {
                    let _ = freeze.send(true);
                    let _ = reached_tx.send(true);
                    let _ = resume.wait_for(|r| *r).await;
                }
            })
        })
    };
    let stalling: Arc<dyn Ledger> = Arc::new(Stalling {
        inner: ledger.clone(),
        frozen,
    });
    let w1 = ingestor(stalling, dir.path(), "w1", Duration::from_millis(600)).with_pause_hook(hook);
    let first = {
        let inputs = inputs.clone();
        tokio::spawn(async move { w1.run(inputs, runner("w1")).await })
    };
    reached.wait_for(|r| *r).await.unwrap();

    // wait until worker 1's lease has run out (nothing renews it while it is stalled)
    loop {
        let units = ledger.list(&Filter::default()).await.unwrap();
        if units[0].lease_until_ms.is_some_and(|t| t < keel::util::now_ms()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // worker 2 takes the unit over and completes it
    let w2 = ingestor(ledger.clone(), dir.path(), "w2", Duration::from_secs(60));
    let r2 = w2.run(inputs.clone(), runner("w2")).await.unwrap();
    assert_eq!((r2.taken_over, r2.completed), (1, 1), "{r2:?}");

    // worker 1 wakes up: it must not publish
    let _ = freeze.send(false);
    let _ = resume_tx.send(true);
    let r1 = first.await.unwrap().unwrap();
    assert_eq!((r1.completed, r1.lost), (0, 1), "{r1:?}");

    let out = FsTxnStore::new(dir.path().join("out"));
    let v = out.current_version("u.jsonl").unwrap().unwrap();
    assert_eq!(v.version, 1, "only worker 2 published: {v:?}");
    let content = std::fs::read_to_string(out.dataset_dir("u.jsonl").join("part.txt")).unwrap();
    assert_eq!(content, "w2");
    let units = ledger.list(&Filter::default()).await.unwrap();
    assert_eq!(units[0].status, keel::ledger::Status::Completed);
    assert_eq!(units[0].metadata["worker"], "w2");
}
