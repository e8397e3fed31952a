//! The runtime the network clients of the connectors live on.
//!
//! A pipeline runs on a current-thread runtime, and sinks publish on the checkpoint thread,
//! which has no runtime at all. Clients whose connections are driven by background tasks
//! (NATS, Redis) are therefore created on one small runtime of their own, `keel-io`, with a
//! worker thread that keeps their connections alive (pings, reconnects) whatever the
//! pipeline's thread is doing. Code on any thread reaches it through [`run`] (from async
//! code) and [`block_on`] (from blocking code).

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

fn runtime() -> Result<&'static Runtime, String> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keel-io")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the connectors' I/O runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

#[cfg_attr(not(any(feature = "nats", feature = "redis")), allow(dead_code))]
/// Runs `f` on the I/O runtime and waits for it from async code (any runtime). `Err` when
/// the runtime cannot start or `f` panicked.
pub(crate) async fn run<F>(f: F) -> Result<F::Output, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime()?.spawn(f).await.map_err(|e| panicked(&e))
}

/// Runs `f` on the I/O runtime and blocks the calling thread until it is done. Works on any
/// thread, a runtime's included (it blocks that thread meanwhile).
pub(crate) fn block_on<F>(f: F) -> Result<F::Output, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(f.await);
    });
    // the sender is dropped without a value only when `f` panicked
    rx.recv().map_err(|_| "a connector task panicked".to_owned())
}

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
/// Spawns `f` on the I/O runtime (a reader's prefetch loop).
pub(crate) fn spawn<F>(f: F) -> Result<tokio::task::JoinHandle<F::Output>, String>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(runtime()?.spawn(f))
}

#[cfg_attr(not(any(feature = "nats", feature = "redis")), allow(dead_code))]
fn panicked(e: &tokio::task::JoinError) -> String {
    format!("a connector task failed: {e}")
}
