//! Fresh queues for each test: a SQLite file in a temporary directory, or a Redis queue of
//! its own name (its keys deleted afterwards) on the machine's server.

use std::sync::Arc;
use std::time::Duration;

use keel::queue::Queue;
use keel_connectors::queue::{RedisQueue, SqliteQueue};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const RETENTION: Duration = Duration::from_secs(3600);

pub enum Kind {
    Sqlite(tempfile::TempDir),
    Redis(String),
}

/// A backend under test.
pub struct Backend {
    pub queue: Arc<dyn Queue>,
    pub kind: Kind,
}

impl Backend {
    /// Another handle (its own connection) on the same queue, as a second worker has.
    pub async fn another(&self) -> Arc<dyn Queue> {
        match &self.kind {
            Kind::Sqlite(dir) => Arc::new(SqliteQueue::open(dir.path().join("queue.db"), "test", RETENTION).unwrap()),
            Kind::Redis(name) => Arc::new(RedisQueue::connect(REDIS_URL, name, RETENTION).await.unwrap()),
        }
    }

    /// The backend's clock (ms): the Redis server's `TIME`, or this machine's for SQLite.
    pub async fn now_ms(&self) -> u64 {
        match &self.kind {
            Kind::Sqlite(_) => keel::util::now_ms(),
            Kind::Redis(_) => {
                let client = redis::Client::open(REDIS_URL).unwrap();
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
                s * 1000 + us / 1000
            }
        }
    }

    /// Waits until the backend's clock is past `ms` (a lease's end, a job's time): a
    /// readiness condition instead of a sleep whose length is a guess. Bounded: fails after
    /// 2,000 polls.
    pub async fn wait_past(&self, ms: u64) {
        for _ in 0..2000 {
            if self.now_ms().await > ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the backend's clock never passed {ms}");
    }

    pub async fn cleanup(self) {
        if let Kind::Redis(name) = &self.kind {
            let client = redis::Client::open(REDIS_URL).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("keel:q:{{{name}}}:*"))
                .query_async(&mut c)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL").arg(keys).query_async(&mut c).await.unwrap();
            }
        }
    }
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open(dir.path().join("queue.db"), "test", RETENTION).unwrap();
    Backend {
        queue: Arc::new(queue),
        kind: Kind::Sqlite(dir),
    }
}

pub async fn redis() -> Backend {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "t{}-{}-{}",
        std::process::id(),
        keel::util::now_ms(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let queue = RedisQueue::connect(REDIS_URL, &name, RETENTION).await.unwrap();
    Backend {
        queue: Arc::new(queue),
        kind: Kind::Redis(name),
    }
}
