//! The checkpoint thread: finishes checkpoints in order, off the worker thread.
//!
//! For checkpoint `k` it prepares every sealed sink (making the epoch's data durable), writes
//! the state file, writes manifest `k` durably, and only then commits the sinks (I2). Jobs are
//! handled strictly one after the other, so manifest `k + 1` is never written before the
//! commit of `k` finished. After a failure no later checkpoint is written: the pipeline stops
//! and a restart recovers from the last manifest that is durable.
//!
//! # State compaction
//!
//! The worker thread only writes deltas (what changed in the epoch) once a full snapshot
//! exists. This thread owns the chain of state files that restores the state (the full
//! snapshot, then the deltas) and puts it into every manifest. When the chain of a durable
//! manifest grows past the snapshot policy (more than `max_deltas` deltas, or deltas larger
//! than twice the full snapshot), a background thread folds those files into a new full
//! snapshot ([`crate::state::compact`]) named after that manifest and written durably like
//! any state file; the first manifest written after it finished lists the new snapshot in
//! place of the folded files. So every manifest references only durable files, and pruning
//! never deletes the files of a compaction in flight. A crash mid-compaction leaves a temp
//! file or an unreferenced file, both removed later.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::checkpoint::{CheckpointId, CheckpointStore, Manifest};
use crate::crash::crash_point;
use crate::sink::SealedEpoch;
use crate::state::{SnapshotPolicy, StateSnapshot};

/// One checkpoint to finish.
pub(crate) struct Job {
    pub(crate) manifest: Manifest,
    pub(crate) sealed: Vec<(String, Box<dyn SealedEpoch>)>,
    pub(crate) state: Option<StateSnapshot>,
}

/// The outcome of one job.
pub(crate) struct Completion {
    pub(crate) id: CheckpointId,
    pub(crate) at_ms: u64,
    pub(crate) keys: u64,
    pub(crate) result: Result<(), String>,
}

pub(crate) struct Checkpointer {
    pub(crate) jobs: mpsc::Sender<Job>,
    pub(crate) done: mpsc::UnboundedReceiver<Completion>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread. At most `queue` jobs wait; the coordinator waits beyond that.
    /// `chain` is the restored state chain with its file sizes.
    pub(crate) fn spawn(
        store: Option<Arc<dyn CheckpointStore>>,
        retain: usize,
        queue: usize,
        policy: SnapshotPolicy,
        chain: Vec<(String, u64)>,
        metrics: crate::metrics::RunMetrics,
    ) -> std::io::Result<Self> {
        let (jobs, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let (done_tx, done) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("keel-checkpoint".into())
            .spawn(move || {
                let mut compactor = store.clone().map(|s| Compactor::new(s, policy, chain));
                while let Some(job) = rx.blocking_recv() {
                    let id = job.manifest.id;
                    let at_ms = job.manifest.created_at_ms;
                    let keys = job.manifest.state.keys;
                    let result = finish(store.as_deref(), compactor.as_mut(), job, retain, &metrics);
                    let failed = result.is_err();
                    let _ = done_tx.send(Completion {
                        id,
                        at_ms,
                        keys,
                        result,
                    });
                    if failed {
                        break;
                    }
                }
                if let Some(c) = compactor {
                    c.stop();
                }
            })?;
        Ok(Checkpointer {
            jobs,
            done,
            thread: Some(thread),
        })
    }

    /// Closes the queue and waits for the thread to finish every queued job.
    pub(crate) fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let (closed, _) = mpsc::channel(1);
            self.jobs = closed;
            let _ = t.join();
        }
    }
}

fn finish(
    store: Option<&dyn CheckpointStore>,
    mut compactor: Option<&mut Compactor>,
    mut job: Job,
    retain: usize,
    metrics: &crate::metrics::RunMetrics,
) -> Result<(), String> {
    (|| {
        let id = job.manifest.id;
        let mut phase_started = std::time::Instant::now();
        let mut phase = |name: &'static str| {
            metrics.phase(name, phase_started.elapsed());
            phase_started = std::time::Instant::now();
        };
        for (name, sealed) in &mut job.sealed {
            let precommit = catch(|| sealed.prepare())
                .map_err(|p| format!("checkpoint {id}: panic while preparing sink `{name}`: {p}"))?
                .map_err(|e| format!("checkpoint {id}: preparing sink `{name}`: {e}"))?;
            if !precommit.is_null() {
                job.manifest.sinks.insert(name.clone(), precommit);
            }
        }
        phase("prepare");
        crash_point("after_prepare");
        if let Some(store) = store {
            if let Some(state) = &job.state {
                store.write_state(&state.name, &state.bytes).map_err(|e| {
                    crate::failure::name_io_cause(
                        format!("checkpoint {id}: writing state file {}: {e}", state.name),
                        &e,
                    )
                })?;
            }
            phase("state");
            crash_point("after_state");
            if let Some(c) = compactor.as_deref_mut() {
                c.extend(job.state.as_ref());
                c.describe(&mut job.manifest);
                metrics.state_bytes(job.manifest.state.bytes);
            }
            store
                .write_manifest(&job.manifest)
                .map_err(|e| crate::failure::name_io_cause(format!("checkpoint {id}: writing manifest: {e}"), &e))?;
            phase("manifest");
            crash_point("after_manifest");
        }
        for (name, sealed) in &mut job.sealed {
            catch(|| sealed.commit())
                .map_err(|p| format!("checkpoint {id}: panic while committing sink `{name}`: {p}"))?
                .map_err(|e| format!("checkpoint {id}: committing sink `{name}`: {e}"))?;
            crash_point("mid_commit");
        }
        phase("commit");
        crash_point("after_commit");
        if let Some(c) = compactor.as_deref_mut() {
            c.maybe_start(&job.manifest);
        }
        if let Some(store) = store {
            let protect: Vec<String> = compactor.as_deref().map(Compactor::protected).unwrap_or_default();
            if let Err(e) = store.prune_keeping(retain, &protect) {
                tracing::warn!(checkpoint = id, error = %e, "pruning old checkpoints failed; will retry at the next one");
            }
        }
        Ok(())
    })()
}

/// Runs `f`, turning a panic into its message.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| super::panic_message(&*p))
}

/// Owns the chain of state files and compacts it in the background (see the module docs).
struct Compactor {
    store: Arc<dyn CheckpointStore>,
    policy: SnapshotPolicy,
    /// The files that restore the state as of the last state file written, in order.
    chain: Vec<String>,
    /// Known sizes of state files.
    sizes: HashMap<String, u64>,
    /// The compaction in flight.
    running: Option<Running>,
}

struct Running {
    prefix: Vec<String>,
    full: String,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64, String>>,
}

impl Compactor {
    fn new(store: Arc<dyn CheckpointStore>, policy: SnapshotPolicy, chain: Vec<(String, u64)>) -> Self {
        Compactor {
            store,
            policy,
            chain: chain.iter().map(|(n, _)| n.clone()).collect(),
            sizes: chain.into_iter().collect(),
            running: None,
        }
    }

    /// Appends the state file just written (a full snapshot starts a new chain).
    fn extend(&mut self, state: Option<&StateSnapshot>) {
        let Some(s) = state else { return };
        self.sizes.insert(s.name.clone(), s.bytes.len() as u64);
        if s.kind == crate::state::file::Kind::Full {
            self.chain.clear();
        }
        self.chain.push(s.name.clone());
    }

    /// Puts the chain into manifest `m`, with a finished compaction in place of the files it
    /// folded.
    fn describe(&mut self, m: &mut crate::checkpoint::Manifest) {
        if self.running.as_ref().is_some_and(|r| r.thread.is_finished())
            && let Some(r) = self.running.take()
        {
            match r.thread.join() {
                Ok(Ok(bytes)) if self.chain.starts_with(&r.prefix) => {
                    self.sizes.insert(r.full.clone(), bytes);
                    self.chain.splice(..r.prefix.len(), [r.full]);
                }
                Ok(Ok(_)) => tracing::debug!("state compaction superseded by a new full snapshot"),
                Ok(Err(e)) => tracing::warn!(error = %e, "state compaction failed; the deltas stay in use"),
                Err(_) => tracing::warn!("state compaction panicked; the deltas stay in use"),
            }
        }
        m.state.files = self.chain.clone();
        m.state.bytes = self.chain.iter().map(|f| self.sizes.get(f).copied().unwrap_or(0)).sum();
    }

    /// Starts folding the chain of the durable manifest `m` when it is long or heavy.
    fn maybe_start(&mut self, m: &crate::checkpoint::Manifest) {
        let files = &m.state.files;
        if self.running.is_some() || files.len() < 2 || std::env::var_os("KEEL_NO_COMPACT").is_some() {
            return;
        }
        let size = |f: &String| self.sizes.get(f).copied().unwrap_or(0);
        let deltas: u64 = files[1..].iter().map(size).sum();
        let heavy = size(&files[0]) > 0 && deltas > 2 * size(&files[0]);
        if files.len() - 1 <= self.policy.max_deltas && !heavy {
            return;
        }
        let id = m.id;
        let full = format!("{id:020}.full");
        if files.contains(&full) {
            return;
        }
        let prefix = files.clone();
        let store = self.store.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let name = full.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-compact".into())
            .spawn(move || -> Result<u64, String> {
                let snap = crate::state::compact(id, &prefix, |f| {
                    if stop.load(Ordering::Relaxed) {
                        return Err(std::io::Error::other("cancelled"));
                    }
                    store.read_state(f)
                })
                .map_err(|e| e.to_string())?;
                if stop.load(Ordering::Relaxed) {
                    return Err("cancelled".into());
                }
                store
                    .write_state(&name, &snap.bytes)
                    .map_err(|e| format!("writing {name}: {e}"))?;
                Ok(snap.bytes.len() as u64)
            });
        match spawned {
            Ok(thread) => {
                tracing::debug!(checkpoint = id, files = files.len(), "compacting the state chain");
                self.running = Some(Running {
                    prefix: files.clone(),
                    full,
                    cancel,
                    thread,
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot start a state compaction"),
        }
    }

    /// State files that pruning must keep although no manifest lists them yet.
    fn protected(&self) -> Vec<String> {
        let mut keep = self.chain.clone();
        if let Some(r) = &self.running {
            keep.push(r.full.clone());
            keep.extend(r.prefix.iter().cloned());
        }
        keep
    }

    /// Cancels a compaction in flight and waits for its thread.
    fn stop(self) {
        if let Some(r) = self.running {
            r.cancel.store(true, Ordering::Relaxed);
            let _ = r.thread.join();
        }
    }
}
