//! Job queue backends: SQLite (embedded default) and Redis.
//!
//! Both implement [`keel::queue::Queue`] with the same behaviour, checked by one test suite
//! (`tests/queue`). [`open`] picks a backend from a location:
//!
//! - `sqlite:PATH` or a plain path: a SQLite file (created if missing);
//! - `redis://host:port/db`: a Redis server.

use std::sync::Arc;
use std::time::Duration;

use keel::queue::{Queue, QueueError};

#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "redis")]
pub use self::redis::RedisQueue;
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteQueue;

/// How long idempotency keys are remembered by default: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Opens queue `name` at `location`.
pub async fn open(location: &str, name: &str, retention: Duration) -> Result<Arc<dyn Queue>, QueueError> {
    if name.is_empty() || name.contains(['{', '}', ':']) {
        return Err(QueueError::Config(format!(
            "queue name `{name}`: use letters, digits, `-`, `_` or `.`"
        )));
    }
    if location.starts_with("redis://") || location.starts_with("rediss://") {
        #[cfg(feature = "redis")]
        return Ok(Arc::new(RedisQueue::connect(location, name, retention).await?));
        #[cfg(not(feature = "redis"))]
        return Err(QueueError::Config(missing_feature("Redis", "redis")));
    }
    let path = location.strip_prefix("sqlite:").unwrap_or(location);
    if path.is_empty() {
        return Err(QueueError::Config("an empty queue location".into()));
    }
    #[cfg(feature = "sqlite")]
    {
        let (path, name) = (path.to_owned(), name.to_owned());
        let queue = tokio::task::spawn_blocking(move || SqliteQueue::open(path, &name, retention))
            .await
            .map_err(|e| QueueError::Backend(format!("opening the queue: {e}")))??;
        Ok(Arc::new(queue))
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = retention;
        Err(QueueError::Config(missing_feature("SQLite", "sqlite")))
    }
}

/// The message for a backend this build leaves out.
#[cfg(not(all(feature = "sqlite", feature = "redis")))]
fn missing_feature(backend: &str, feature: &str) -> String {
    format!("this build of keel has no {backend} backend: enable the `{feature}` feature of keel-connectors")
}
