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

    /// The backend's clock, which can move into a handler.
    pub fn clock(&self) -> BackendClock {
        BackendClock {
            redis: matches!(self.kind, Kind::Redis(_)),
        }
    }

    /// The backend's clock (ms): the Redis server's `TIME`, or this machine's for SQLite.
    pub async fn now_ms(&self) -> u64 {
        self.clock().now_ms().await
    }

    /// See [`BackendClock::wait_past`].
    pub async fn wait_past(&self, ms: u64) {
        self.clock().wait_past(ms).await
    }

    /// Checks that the backend's records agree with each other, whatever a test did: every
    /// job is in exactly the set of its state (Redis: `ready`, `scheduled`, `active`, `dead`;
    /// `ready_at` for ready jobs; the per-priority counts), an active job has a worker and a
    /// lease and no other job has, and no job has more attempts than it may.
    pub async fn check_consistency(&self) {
        match &self.kind {
            Kind::Sqlite(dir) => check_sqlite(&dir.path().join("queue.db")),
            Kind::Redis(name) => check_redis(name).await,
        }
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

/// The clock a backend decides on.
#[derive(Clone, Copy, Debug)]
pub struct BackendClock {
    redis: bool,
}

impl BackendClock {
    /// Now (ms): the Redis server's `TIME`, or this machine's for SQLite.
    pub async fn now_ms(&self) -> u64 {
        if !self.redis {
            return keel::util::now_ms();
        }
        let client = redis::Client::open(REDIS_URL).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        s * 1000 + us / 1000
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

fn check_sqlite(path: &std::path::Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT id, state, worker IS NOT NULL, lease_until IS NOT NULL, dead_at IS NOT NULL, attempts, max_attempts, errors FROM keel_jobs")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, u32>(6)?,
                r.get::<_, String>(7)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, state, worker, lease, dead_at, attempts, max, errors) = row.unwrap();
        let active = state == "active";
        assert!(
            ["ready", "scheduled", "active", "dead"].contains(&state.as_str()),
            "job {id}: {state}"
        );
        assert_eq!(
            (worker, lease),
            (active, active),
            "job {id} ({state}): worker and lease"
        );
        assert_eq!(dead_at, state == "dead", "job {id} ({state}): dead_at");
        assert!(attempts <= max, "job {id}: {attempts} attempts of {max}");
        assert!(
            serde_json::from_str::<Vec<keel::queue::JobError>>(&errors).is_ok(),
            "job {id}: errors {errors}"
        );
    }
}

async fn check_redis(name: &str) {
    use std::collections::{BTreeMap, HashMap, HashSet};
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("keel:q:{{{name}}}:");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}job:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let mut sets: HashMap<&str, HashMap<String, f64>> = HashMap::new();
    for set in ["ready", "scheduled", "active", "dead", "ready_at"] {
        let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}{set}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await
            .unwrap();
        sets.insert(set, members.into_iter().collect());
    }
    let prio: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("{prefix}prio"))
        .query_async(&mut c)
        .await
        .unwrap();
    let mut ready_by_priority: BTreeMap<i64, i64> = BTreeMap::new();
    let mut ids = HashSet::new();
    for chunk in keys.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("HMGET")
                .arg(k)
                .arg(&["state", "priority", "worker", "lease_until", "attempts", "max_attempts"]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut c).await.unwrap();
        for (k, row) in chunk.iter().zip(rows) {
            let id = k.strip_prefix(&format!("{prefix}job:")).unwrap().to_owned();
            let state = row[0].clone().unwrap_or_else(|| panic!("job {id} has no state"));
            for set in ["ready", "scheduled", "active", "dead"] {
                assert_eq!(
                    sets[set].contains_key(&id),
                    set == state,
                    "job {id} ({state}) in set {set}"
                );
            }
            assert_eq!(
                sets["ready_at"].contains_key(&id),
                state == "ready",
                "job {id} ({state}) in ready_at"
            );
            let active = state == "active";
            assert_eq!(
                (row[2].is_some(), row[3].is_some()),
                (active, active),
                "job {id} ({state}): worker and lease"
            );
            if active {
                let until: f64 = row[3].as_deref().unwrap().parse().unwrap();
                assert_eq!(sets["active"][&id], until, "job {id}: its lease in the active set");
            }
            if state == "ready" {
                *ready_by_priority
                    .entry(row[1].as_deref().unwrap().parse().unwrap())
                    .or_default() += 1;
            }
            let attempts: u32 = row[4].as_deref().unwrap().parse().unwrap();
            let max: u32 = row[5].as_deref().unwrap().parse().unwrap();
            assert!(attempts <= max, "job {id}: {attempts} attempts of {max}");
            ids.insert(id);
        }
    }
    for (set, members) in &sets {
        for id in members.keys() {
            assert!(ids.contains(id), "{set} holds {id}, which has no job");
        }
    }
    let counted: BTreeMap<i64, i64> = prio
        .into_iter()
        .map(|(p, n)| (p.parse().unwrap(), n))
        .filter(|(_, n)| *n != 0)
        .collect();
    assert_eq!(counted, ready_by_priority, "ready jobs per priority");
}
