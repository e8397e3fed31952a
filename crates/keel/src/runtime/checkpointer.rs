//! The checkpoint thread: finishes checkpoints in order, off the worker thread.
//!
//! For checkpoint `k` it prepares every sealed sink (making the epoch's data durable), writes
//! the state file, writes manifest `k` durably, and only then commits the sinks (I2). Jobs are
//! handled strictly one after the other, so manifest `k + 1` is never written before the
//! commit of `k` finished. After a failure no later checkpoint is written: the pipeline stops
//! and a restart recovers from the last manifest that is durable.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::checkpoint::{CheckpointId, CheckpointStore, Manifest};
use crate::crash::crash_point;
use crate::sink::SealedEpoch;
use crate::state::StateSnapshot;

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
    pub(crate) fn spawn(store: Option<Arc<dyn CheckpointStore>>, retain: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, mut rx) = mpsc::channel::<Job>(queue.max(1));
        let (done_tx, done) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("keel-checkpoint".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let id = job.manifest.id;
                    let at_ms = job.manifest.created_at_ms;
                    let keys = job.manifest.state.keys;
                    let result = finish(store.as_deref(), job, retain);
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

fn finish(store: Option<&dyn CheckpointStore>, mut job: Job, retain: usize) -> Result<(), String> {
    let id = job.manifest.id;
    for (name, sealed) in &mut job.sealed {
        let precommit = sealed
            .prepare()
            .map_err(|e| format!("checkpoint {id}: preparing sink `{name}`: {e}"))?;
        if !precommit.is_null() {
            job.manifest.sinks.insert(name.clone(), precommit);
        }
    }
    crash_point("after_prepare");
    if let Some(store) = store {
        if let Some(state) = &job.state {
            store
                .write_state(&state.name, &state.bytes)
                .map_err(|e| format!("checkpoint {id}: writing state file {}: {e}", state.name))?;
        }
        crash_point("after_state");
        store
            .write_manifest(&job.manifest)
            .map_err(|e| format!("checkpoint {id}: writing manifest: {e}"))?;
        crash_point("after_manifest");
    }
    for (name, sealed) in &mut job.sealed {
        sealed
            .commit()
            .map_err(|e| format!("checkpoint {id}: committing sink `{name}`: {e}"))?;
        crash_point("mid_commit");
    }
    crash_point("after_commit");
    if let Some(store) = store
        && let Err(e) = store.prune(retain)
    {
        tracing::warn!(checkpoint = id, error = %e, "pruning old checkpoints failed; will retry at the next one");
    }
    Ok(())
}
