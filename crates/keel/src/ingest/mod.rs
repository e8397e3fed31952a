//! Idempotent batch ingestion: every input file is a unit of work, recorded in a
//! [`Ledger`], whose output is one staged transaction per output store ([`FsTxnStore`]).
//!
//! # Protocol (per unit, in key order)
//!
//! 1. **Plan.** One `list` of the ledger loads what is known. A completed unit whose size and
//!    modification time are unchanged is skipped without reading it (unless `rehash`).
//! 2. **Claim.** Otherwise the file is hashed and claimed ([`Ledger::claim`], see
//!    [`crate::ledger::decide`]): completed with the same checksum → skip; held by another
//!    worker with a valid lease → busy; else this worker processes it, under a lease that a
//!    background timer renews every third of its length.
//! 3. **Stage.** A transaction with one id is begun in every output store, named after the
//!    unit (`dataset = key`). The runner (a pipeline over that one file) writes into the
//!    staging directories and checkpoints into `state/<txid>/`.
//! 4. **Check.** Unit checks (`min_records`, `max_bad_ratio`) and the stores' validators run.
//! 5. **Commit.** Every store commits (an atomic rename per store, replacing the unit's
//!    previous output: a changed file's old output is replaced, never duplicated); then the
//!    ledger marks the unit completed. Each commit is fenced: right before it the lease is
//!    renewed (a worker that lost it stops there), and the store publishes under a fencing
//!    token, the wall-clock time of the claim (ms), refusing it if the unit's output was
//!    published under a newer claim ([`FsTxnStore::commit_fenced`]). A take-over claims only
//!    after the previous lease ran out, so its token is newer as long as the workers' clocks
//!    agree within a lease; the token survives `keel ledger clear`, unlike a claim count. So a worker stalled past its lease (a
//!    pause, a swapped-out process) never replaces the output of the worker that took over. Any failure before rolls every store back and marks
//!    the unit failed with its reason; the batch goes on with the next unit.
//!
//! # Crash cases
//!
//! A restart finds the unit in progress and owned by this worker ([`Why::ResumeOwn`]):
//! - staged transactions and a checkpoint of the unit's run exist: the run resumes from its
//!   checkpoint (the pipeline's exactly-once protocol makes the resumed output exact);
//! - otherwise (crash before the first checkpoint, or during or after the commits): every
//!   store rolls back what it staged and the unit is processed again from the start; its
//!   commits replace whatever an earlier attempt published, so nothing is duplicated.
//!
//! A unit whose owner died is taken over once its lease expires ([`Why::TakeOver`]); the
//! dead worker's staging directories are its own namespace and are removed by
//! [`FsTxnStore::recover_staging`] when that worker comes back (or stay, harmless, hidden).

mod report;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::ShutdownHandle;
use crate::ledger::{Algorithm, Claim, ClaimRequest, Filter, Fingerprint, Ledger, LedgerError, Status, UnitRef, Why};
use crate::txn::{FsTxnStore, Txn, TxnError, Validator};

pub use report::{FailedUnit, IngestReport};

/// An error that stops the whole batch (unit failures do not: they are reported).
#[derive(Debug, Error)]
pub enum IngestError {
    /// The ledger failed: nothing can be recorded, so nothing more is processed.
    #[error("ledger {0}")]
    Ledger(#[from] LedgerError),
    /// Listing the input or managing the unit state directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// An output store failed outside of a unit (recovery).
    #[error("{0}")]
    Txn(#[from] TxnError),
    /// Another run of this worker is in progress.
    #[error("another run of worker `{worker}` is in progress (it holds {}); give each worker its own id", lock.display())]
    Busy {
        /// The worker id.
        worker: String,
        /// Its lock file.
        lock: PathBuf,
    },
}

/// Settings of an ingestion.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// The pipeline name in the ledger.
    pub pipeline: String,
    /// The scope of units (`file`).
    pub scope: String,
    /// This worker's id: stable across restarts, so that a restarted worker resumes its own
    /// units; distinct per worker sharing a ledger.
    pub worker: String,
    /// How long a claim holds without renewal.
    pub lease: Duration,
    /// The checksum of file contents.
    pub checksum: Algorithm,
    /// Hash every file, even completed ones with unchanged size and modification time.
    pub rehash: bool,
    /// A unit fails if its run wrote fewer records to the main sink.
    pub min_records: u64,
    /// A unit fails if more than this fraction of its records was dead-lettered.
    pub max_bad_ratio: Option<f64>,
    /// Where runs of units checkpoint (`<dir>/<txid>/`).
    pub state_dir: PathBuf,
    /// Units processed at the same time (each waits mostly on fsyncs, so a few in flight
    /// multiply the throughput on small files).
    pub concurrency: usize,
}

impl IngestSettings {
    /// Defaults: scope `file`, a 5-minute lease, BLAKE3, no checks, 4 units at a time.
    pub fn new(pipeline: impl Into<String>, worker: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        IngestSettings {
            pipeline: pipeline.into(),
            scope: "file".into(),
            worker: worker.into(),
            lease: Duration::from_secs(300),
            checksum: Algorithm::Blake3,
            rehash: false,
            min_records: 0,
            max_bad_ratio: None,
            state_dir: state_dir.into(),
            concurrency: 4,
        }
    }
}

/// An output store of the units: each unit's output is one transaction in it.
pub struct OutputStore {
    /// A name for messages (the sink name).
    pub name: String,
    /// The store; its namespace should be the worker id.
    pub store: FsTxnStore,
    /// Validators run over each unit's staged files before the commit.
    pub validators: Vec<Box<dyn Validator>>,
}

impl std::fmt::Debug for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputStore")
            .field("name", &self.name)
            .field("store", &self.store)
            .field("validators", &self.validators.len())
            .finish()
    }
}

/// An input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// The unit key (the file name within the input directory).
    pub key: String,
    /// Its path.
    pub path: PathBuf,
}

/// What the runner is asked to do for one unit.
#[derive(Clone, Debug)]
pub struct UnitJob {
    /// The unit.
    pub unit: UnitRef,
    /// The input file.
    pub path: PathBuf,
    /// The transaction id (the same in every store).
    pub txid: String,
    /// Where each output store stages this unit's files, in store order.
    pub outputs: Vec<PathBuf>,
    /// Where the run checkpoints.
    pub state_dir: PathBuf,
    /// True when a checkpoint of an earlier attempt exists and the run resumes from it.
    pub resume: bool,
    /// Triggered when the run must stop (a signal, or this worker lost the unit's lease).
    pub shutdown: ShutdownHandle,
}

/// What a unit's run reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnitRun {
    /// Records read (over all attempts up to the end of the run).
    pub records_in: u64,
    /// Records written to the main output.
    pub records_out: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// The run stopped on request before the end of its input.
    pub stopped: bool,
}

/// The staging namespace of a worker (in output stores and under the state directory):
/// its id with anything but `[A-Za-z0-9.-]` replaced, and a hash of the exact id, so that
/// two ids never share one.
pub fn staging_namespace(worker: &str) -> String {
    let clean: String = worker
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let hash = blake3::hash(worker.as_bytes()).to_hex();
    format!("w-{clean}-{}", &hash[..8])
}

/// Lists the input files of a directory (regular, not hidden, matching `keep`), by name.
pub fn list_inputs(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<InputFile>, IngestError> {
    let io = |source| IngestError::Io {
        context: format!("listing input directory {}", dir.display()),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') || !keep(&name) {
            continue;
        }
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            out.push(InputFile {
                key: name,
                path: entry.path(),
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// A test hook: awaited at named points of a unit's processing (`before_commit`: the lease
/// was just checked, the store commit comes next), so that tests can stall a worker there.
pub type PauseHook = Arc<dyn Fn(&'static str, &UnitRef) -> crate::ledger::BoxFuture<'static, ()> + Send + Sync>;

struct Hook(Option<PauseHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(hook)" } else { "None" })
    }
}

/// Runs batches of units: see the module docs.
#[derive(Debug)]
pub struct Ingestor {
    ledger: Arc<dyn Ledger>,
    stores: Vec<OutputStore>,
    settings: IngestSettings,
    shutdown: ShutdownHandle,
    /// This worker's unit checkpoints: `<state_dir>/<namespace>/<txid>/`.
    unit_states: PathBuf,
    pause: Hook,
}

/// How a unit's run and commits ended.
enum Body {
    Committed(UnitRun),
    Failed(String),
    Stopped,
    Lost,
}

/// How a unit's processing ended.
pub(crate) enum Outcome {
    Done(UnitRun),
    Failed(String),
    Stopped,
    LostLease,
}

/// What happened to one unit of a batch.
pub(crate) enum Done {
    Skipped,
    Busy,
    Unreadable,
    Processed {
        key: String,
        attempt: u32,
        why: Why,
        outcome: Outcome,
    },
}

impl Done {
    /// The outcome, as [`crate::metrics::INGEST_FILES`] labels it.
    fn outcome(&self) -> &'static str {
        match self {
            Done::Skipped => "skipped",
            Done::Busy => "busy",
            Done::Unreadable => "unreadable",
            Done::Processed { outcome, .. } => match outcome {
                Outcome::Done(_) => "completed",
                Outcome::Failed(_) => "failed",
                Outcome::Stopped => "stopped",
                Outcome::LostLease => "lost",
            },
        }
    }

    /// `took`, when the unit was processed to an end (completed or failed).
    fn took(&self, took: Duration) -> Option<Duration> {
        matches!(self.outcome(), "completed" | "failed").then_some(took)
    }

    /// `size`, when the unit completed.
    fn bytes(&self, size: Option<u64>) -> Option<u64> {
        size.filter(|_| self.outcome() == "completed")
    }
}

impl Ingestor {
    /// An ingestor writing each unit's output to `stores` (at least one).
    pub fn new(ledger: Arc<dyn Ledger>, stores: Vec<OutputStore>, settings: IngestSettings) -> Self {
        let unit_states = settings.state_dir.join(staging_namespace(&settings.worker));
        Ingestor {
            ledger,
            stores,
            settings,
            shutdown: ShutdownHandle::default(),
            unit_states,
            pause: Hook(None),
        }
    }

    /// Installs a [`PauseHook`] (tests).
    pub fn with_pause_hook(mut self, hook: PauseHook) -> Self {
        self.pause = Hook(Some(hook));
        self
    }

    /// A handle that stops the batch gracefully: the running unit checkpoints and stays in
    /// progress (the next run resumes it); no further unit starts.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The settings.
    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    fn unit(&self, key: &str) -> UnitRef {
        UnitRef::new(&self.settings.pipeline, &self.settings.scope, key)
    }

    /// Processes every unit of `inputs` that needs it with `runner`, up to
    /// [`IngestSettings::concurrency`] at a time; see the module docs.
    pub async fn run<F, Fut>(&self, inputs: Vec<InputFile>, runner: F) -> Result<IngestReport, IngestError>
    where
        F: Fn(UnitJob) -> Fut,
        Fut: Future<Output = Result<UnitRun, String>>,
    {
        use futures_util::StreamExt as _;
        let started = std::time::Instant::now();
        let _lock = self.lock()?;
        let mut report = IngestReport {
            inputs: inputs.len(),
            ..IngestReport::default()
        };
        let known: HashMap<String, crate::ledger::Unit> = self
            .ledger
            .list(&Filter {
                pipeline: Some(self.settings.pipeline.clone()),
                scope: Some(self.settings.scope.clone()),
                ..Filter::default()
            })
            .await?
            .into_iter()
            .map(|u| (u.unit.key.clone(), u))
            .collect();
        self.recover_staging(&known, &inputs).await?;
        let mut inputs = inputs.into_iter();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let limit = self.settings.concurrency.max(1);
        loop {
            while running.len() < limit && !self.shutdown.is_triggered() {
                let Some(input) = inputs.next() else { break };
                // completed and unchanged by size and modification time: skip without reading
                let unchanged = !self.settings.rehash
                    && known.get(&input.key).is_some_and(|u| {
                        u.status == Status::Completed
                            && Fingerprint::stat(&input.path).is_ok_and(|now| u.fingerprint.same_stat(&now))
                    });
                if unchanged {
                    report.skipped += 1;
                } else {
                    let before = known.get(&input.key).map(|u| &u.fingerprint);
                    let size = std::fs::metadata(&input.path).map(|m| m.len()).ok();
                    let one = self.one(input, before, &runner);
                    running.push(async move {
                        let started = std::time::Instant::now();
                        one.await.map(|d| (d, started.elapsed(), size))
                    });
                }
                if unchanged {
                    crate::metrics::ingest_file(&self.settings.pipeline, "skipped", None, None);
                }
            }
            crate::metrics::ingest_in_progress(&self.settings.pipeline, running.len());
            match running.next().await {
                Some(done) => {
                    let (done, took, size) = done?;
                    crate::metrics::ingest_file(
                        &self.settings.pipeline,
                        done.outcome(),
                        done.took(took),
                        done.bytes(size),
                    );
                    report.add(done);
                }
                None => break,
            }
        }
        report.interrupted |= self.shutdown.is_triggered() && inputs.next().is_some();
        report.failed.sort_by(|a, b| a.key.cmp(&b.key));
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Hashes, claims and (if the claim says so) processes one unit.
    async fn one<F, Fut>(&self, input: InputFile, before: Option<&Fingerprint>, runner: &F) -> Result<Done, IngestError>
    where
        F: Fn(UnitJob) -> Fut,
        Fut: Future<Output = Result<UnitRun, String>>,
    {
        let algorithm = self.settings.checksum;
        let path = input.path.clone();
        let fp_now = match tokio::task::spawn_blocking(move || Fingerprint::of_file(&path, algorithm)).await {
            Ok(Ok(fp)) => fp,
            Ok(Err(e)) => {
                // vanished or unreadable since the listing: nothing to ingest now
                tracing::warn!(file = %input.path.display(), error = %e, "cannot read input file; skipped");
                return Ok(Done::Unreadable);
            }
            Err(e) => {
                return Err(IngestError::Io {
                    context: format!("hashing {}", input.path.display()),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        };
        let unit = self.unit(&input.key);
        let claim = self
            .ledger
            .claim(
                &[ClaimRequest {
                    unit: unit.clone(),
                    fingerprint: fp_now.clone(),
                }],
                &self.settings.worker,
                self.settings.lease,
            )
            .await?
            .pop();
        Ok(match claim {
            Some(Claim::Skip) | None => Done::Skipped,
            Some(Claim::Busy { owner, .. }) => {
                tracing::info!(unit = %input.key, %owner, "held by another worker");
                Done::Busy
            }
            Some(Claim::Process { attempt, why }) => {
                tracing::info!(unit = %input.key, attempt, why = ?why, "processing");
                // resume only an attempt on the same content: a file changed while its worker
                // was down starts over (its partial output is rolled back)
                let resumable = why == Why::ResumeOwn && before.is_some_and(|b| b.same_content(&fp_now));
                let token = crate::util::now_ms();
                let outcome = self.process(&unit, &input, resumable, token, runner).await?;
                Done::Processed {
                    key: input.key,
                    attempt,
                    why,
                    outcome,
                }
            }
        })
    }

    /// Removes what this worker's crashed attempts left: staged transactions of units that
    /// are no longer in progress for this worker (or whose input file is gone: those are
    /// marked failed), displaced versions, and checkpoints of runs whose transaction is gone.
    async fn recover_staging(
        &self,
        known: &HashMap<String, crate::ledger::Unit>,
        inputs: &[InputFile],
    ) -> Result<(), IngestError> {
        let worker = self.settings.worker.as_str();
        let present: std::collections::HashSet<&str> = inputs.iter().map(|i| i.key.as_str()).collect();
        let held = |u: &crate::ledger::Unit| u.status == Status::InProgress && u.owner.as_deref() == Some(worker);
        for u in known
            .values()
            .filter(|u| held(u) && !present.contains(u.unit.key.as_str()))
        {
            tracing::warn!(unit = %u.unit.key, "the input file of a unit in progress is gone: marked failed");
            let meta = serde_json::json!({ "reason": "input file gone" });
            match self.ledger.fail(&u.unit, worker, "the input file is gone", meta).await {
                Ok(()) | Err(LedgerError::LostLease(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mine = |dataset: &str| present.contains(dataset) && known.get(dataset).is_some_and(held);
        let mut staged = std::collections::HashSet::new();
        for s in &self.stores {
            s.store.recover_staging(Duration::MAX)?;
            for txn in s.store.staged_txns()? {
                if mine(&txn.dataset) {
                    staged.insert(txn.id);
                } else {
                    s.store.rollback_txn(&txn)?;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.unit_states) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if crate::txn::is_id(&name) && !staged.contains(&name) {
                    remove_state(&e.path());
                }
            }
        }
        Ok(())
    }

    /// Holds this worker's run lock (`<state>/<namespace>/.lock`) until dropped: two runs of
    /// one worker id would resume each other's units.
    fn lock(&self) -> Result<std::fs::File, IngestError> {
        let io = |context: String| move |source| IngestError::Io { context, source };
        std::fs::create_dir_all(&self.unit_states).map_err(io(format!("creating {}", self.unit_states.display())))?;
        let path = self.unit_states.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
            IngestError::Busy {
                worker: self.settings.worker.clone(),
                lock: path.clone(),
            }
        })?;
        Ok(file)
    }

    /// Stages, runs, checks and commits one claimed unit.
    async fn process<F, Fut>(
        &self,
        unit: &UnitRef,
        input: &InputFile,
        resumable: bool,
        token: u64,
        runner: &F,
    ) -> Result<Outcome, IngestError>
    where
        F: Fn(UnitJob) -> Fut,
        Fut: Future<Output = Result<UnitRun, String>>,
    {
        let stores: Vec<FsTxnStore> = self.stores.iter().map(|s| s.store.clone()).collect();
        let (states, key) = (self.unit_states.clone(), input.key.clone());
        let (txn, resume) = match off_thread(move || stage(&stores, &states, &key, resumable)).await {
            Ok(t) => t,
            Err(e) => return self.fail(unit, input, None, format!("staging: {e}")).await,
        };
        let state_dir = self.unit_states.join(&txn.id);
        let job = UnitJob {
            unit: unit.clone(),
            path: input.path.clone(),
            txid: txn.id.clone(),
            outputs: self.stores.iter().map(|s| s.store.stage_dir(&txn)).collect(),
            state_dir: state_dir.clone(),
            resume,
            shutdown: ShutdownHandle::default(),
        };
        let stop = job.shutdown.clone();
        let lost = AtomicBool::new(false);
        // the lease is renewed (and checked before each commit) until every store committed
        let body = async {
            let run = match runner(job).await {
                Err(reason) => return Body::Failed(reason),
                Ok(run) if run.stopped && !lost.load(Ordering::SeqCst) => return Body::Stopped,
                Ok(run) => run,
            };
            if lost.load(Ordering::SeqCst) {
                return Body::Lost;
            }
            if let Err(reason) = self.check(&txn, &run).await {
                return Body::Failed(reason);
            }
            for s in &self.stores {
                if lost.load(Ordering::SeqCst) {
                    // stores committed before keep this version; the new holder replaces it
                    return Body::Lost;
                }
                // fenced publish, part 1: the lease is checked (and extended) right before
                match self
                    .ledger
                    .renew(std::slice::from_ref(unit), &self.settings.worker, self.settings.lease)
                    .await
                {
                    Ok(gone) if gone.is_empty() => {}
                    Ok(_) => {
                        lost.store(true, Ordering::SeqCst);
                        return Body::Lost;
                    }
                    Err(e) => return Body::Failed(format!("checking the lease before committing `{}`: {e}", s.name)),
                }
                if let Some(hook) = &self.pause.0 {
                    hook("before_commit", unit).await;
                }
                // part 2: however long this worker stalled since, the store refuses to replace
                // output published under a newer claim of the unit
                let (store, t) = (s.store.clone(), txn.clone());
                match off_thread(move || store.commit_fenced(&t, Some(token))).await {
                    Ok(_) => {}
                    Err(TxnError::Fenced { .. }) => {
                        lost.store(true, Ordering::SeqCst);
                        return Body::Lost;
                    }
                    // stores committed before this one keep the new version; a retry replaces it
                    Err(e) => return Body::Failed(format!("committing output `{}`: {e}", s.name)),
                }
            }
            Body::Committed(run)
        };
        let run = match self.with_lease(unit, &stop, &lost, body).await? {
            Body::Committed(run) => run,
            Body::Failed(reason) => return self.fail(unit, input, Some((&txn, &state_dir)), reason).await,
            Body::Stopped => return Ok(Outcome::Stopped),
            Body::Lost => {
                // another worker may hold it now: leave its output and ledger row alone
                self.rollback(&txn, &state_dir).await;
                tracing::warn!(unit = %unit.key, "lost the lease: the unit was left to the worker that took it over");
                return Ok(Outcome::LostLease);
            }
        };
        let metadata = serde_json::json!({
            "path": input.path.display().to_string(),
            "txid": txn.id,
            "worker": self.settings.worker,
            "records_in": run.records_in,
            "records_out": run.records_out,
            "dead_letters": run.dead_letters,
        });
        let gone = self
            .ledger
            .complete(&[(unit.clone(), metadata)], &self.settings.worker)
            .await?;
        let _ = off_thread(move || {
            remove_state(&state_dir);
            Ok(())
        })
        .await;
        if !gone.is_empty() {
            tracing::warn!(unit = %unit.key, "committed, but the lease had been taken over meanwhile: the other worker's commit replaces this output");
            return Ok(Outcome::LostLease);
        }
        Ok(Outcome::Done(run))
    }

    /// Runs `body` while renewing the lease every third of it. When the lease is lost (taken
    /// over, or not renewed for a whole lease because the ledger kept failing), sets `lost`
    /// and stops the unit's run; a batch shutdown stops it too.
    async fn with_lease<Fut: Future>(
        &self,
        unit: &UnitRef,
        stop: &ShutdownHandle,
        lost: &AtomicBool,
        body: Fut,
    ) -> Result<Fut::Output, IngestError> {
        let lease = self.settings.lease;
        let every = (lease / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut renewed = tokio::time::Instant::now();
        let mut forwarded = false;
        tokio::pin!(body);
        loop {
            tokio::select! {
                r = &mut body => return Ok(r),
                _ = tick.tick(), if !lost.load(Ordering::SeqCst) => {
                    match self.ledger.renew(std::slice::from_ref(unit), &self.settings.worker, lease).await {
                        Ok(gone) if gone.is_empty() => renewed = tokio::time::Instant::now(),
                        Ok(_) => {
                            lost.store(true, Ordering::SeqCst);
                            stop.trigger();
                        }
                        Err(e) if renewed.elapsed() + every < lease => {
                            tracing::warn!(unit = %unit.key, error = %e, "renewing the lease failed; trying again");
                        }
                        Err(e) => {
                            tracing::error!(unit = %unit.key, error = %e, "the lease could not be renewed before it ran out");
                            lost.store(true, Ordering::SeqCst);
                            stop.trigger();
                        }
                    }
                }
                _ = self.shutdown.wait(), if !forwarded => {
                    forwarded = true;
                    stop.trigger();
                }
            }
        }
    }

    /// Unit checks and validators over the staged output.
    async fn check(&self, txn: &Txn, run: &UnitRun) -> Result<(), String> {
        if run.records_out < self.settings.min_records {
            return Err(format!(
                "min_records: {} records written, at least {} required",
                run.records_out, self.settings.min_records
            ));
        }
        if let Some(max) = self.settings.max_bad_ratio
            && run.records_in > 0
        {
            let ratio = run.dead_letters as f64 / run.records_in as f64;
            if ratio > max {
                return Err(format!(
                    "max_bad_ratio: {} of {} records dead-lettered ({:.2}% > {:.2}%)",
                    run.dead_letters,
                    run.records_in,
                    ratio * 100.0,
                    max * 100.0
                ));
            }
        }
        for s in self.stores.iter().filter(|s| !s.validators.is_empty()) {
            crate::txn::validate_staged(&s.store, txn, &s.validators)
                .await
                .map_err(|e| format!("output `{}`: {e}", s.name))?;
        }
        Ok(())
    }

    /// Rolls `txn` back in every store and removes its run's checkpoints (failures are
    /// logged: the next run's recovery cleans up).
    async fn rollback(&self, txn: &Txn, state_dir: &Path) {
        // the checkpoint first: a crash in between must not leave a resumable pair
        let dir = state_dir.to_path_buf();
        let _ = off_thread(move || {
            remove_state(&dir);
            Ok(())
        })
        .await;
        for s in &self.stores {
            let (store, t) = (s.store.clone(), txn.clone());
            if let Err(e) = off_thread(move || store.rollback_txn(&t)).await {
                tracing::warn!(output = %s.name, txn = %txn.id, error = %e, "rollback failed; the next run cleans up");
            }
        }
    }

    /// Rolls back and records the failure.
    async fn fail(
        &self,
        unit: &UnitRef,
        input: &InputFile,
        staged: Option<(&Txn, &PathBuf)>,
        reason: String,
    ) -> Result<Outcome, IngestError> {
        if let Some((txn, state)) = staged {
            self.rollback(txn, state).await;
        }
        tracing::warn!(unit = %unit.key, %reason, "unit failed; its output was rolled back");
        let metadata = serde_json::json!({ "path": input.path.display().to_string(), "reason": reason });
        match self.ledger.fail(unit, &self.settings.worker, &reason, metadata).await {
            Ok(()) => Ok(Outcome::Failed(reason)),
            Err(LedgerError::LostLease(_)) => Ok(Outcome::LostLease),
            Err(e) => Err(e.into()),
        }
    }
}

/// The unit's transaction: the staged one of a crashed attempt of this worker when it
/// can resume (staged in every store, with a checkpoint), else a fresh one.
fn stage(stores: &[FsTxnStore], state_dir: &Path, key: &str, resumable: bool) -> Result<(Txn, bool), TxnError> {
    let mut staged: Vec<Vec<Txn>> = Vec::with_capacity(stores.len());
    for s in stores {
        staged.push(s.staged_txns()?.into_iter().filter(|t| t.dataset == key).collect());
    }
    if resumable
        && let Some(candidate) = staged.first().and_then(|t| t.last())
        && staged.iter().all(|ts| ts.iter().any(|t| t.id == candidate.id))
        && has_checkpoint(&state_dir.join(&candidate.id))
    {
        let keep = candidate.clone();
        for (s, ts) in stores.iter().zip(&staged) {
            for t in ts.iter().filter(|t| t.id != keep.id) {
                s.rollback_txn(t)?;
            }
        }
        return Ok((keep, true));
    }
    for (s, ts) in stores.iter().zip(&staged) {
        for t in ts {
            // the checkpoint first: a crash in between must not leave a resumable pair
            remove_state(&state_dir.join(&t.id));
            s.rollback_txn(t)?;
        }
    }
    let txn = Txn::new(key)?;
    for s in stores {
        s.begin_with(txn.clone())?;
    }
    Ok((txn, false))
}

/// Runs blocking file-system work off the runtime thread (other units keep running).
async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TxnError> + Send + 'static,
) -> Result<T, TxnError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TxnError::io("a blocking task", std::io::Error::other(e.to_string())))?
}

fn has_checkpoint(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

fn remove_state(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a unit's checkpoints");
    }
}
