//! The Redis job queue: every operation that moves a job is one Lua script, so it is atomic
//! on the server (several workers on several machines never take the same job).
//!
//! # Keys (prefix `keel:q:{<name>}:`)
//!
//! ```text
//! seq, order          counters: job ids, readiness order
//! job:<id>            hash: kind, payload, priority, state, attempts, max_attempts, enqueued,
//!                     run_at, ready_at, lease_until, leases (takes so far: the lease token),
//!                     worker, key, budget (the attempts granted by each retry from the dead
//!                     set; missing on older jobs, whose max_attempts is that budget)
//! errors:<id>         list of the job's failed attempts (JSON)
//! ready               zset, score (1000 - priority) * 2^40 + order: priority, then FIFO
//! ready_at            zset, score when the job became ready (the oldest waiting job)
//! prio                hash: ready jobs per priority
//! scheduled, active   zsets by run_at and by lease_until
//! dead                zset by time of death
//! key:<k>             the job id of idempotency key k, expiring after the retention
//! ```
//!
//! Scripts build key names from the prefix, so the queue is for a single Redis server (or
//! one cluster slot: the prefix carries a hash tag).
//!
//! # Time
//!
//! Every lease, due and delay decision is taken inside the scripts on the server's clock
//! (`TIME`), as the PostgreSQL ledger does with the database clock: a worker whose clock
//! runs ahead never takes a job whose lease is still valid, nor a delayed job early. Times a
//! caller passes (a job's `run_at_ms`, a retry's `at_ms`) are on the caller's clock: the
//! client turns them into delays from its own now, and the server adds them to its own.
//! Stored times (`run_at`, `lease_until`, `enqueued`, ...) are server times.
//!
//! # Bounded work
//!
//! A take puts back at most [`PROMOTE_LIMIT`] expired leases and makes at most
//! [`PROMOTE_LIMIT`] due jobs ready, in the order of their time then id; the next takes go
//! on with the rest. (A full batch leaves the jobs of its last time to the next call, so
//! that order holds; only when more than [`PROMOTE_LIMIT`] jobs are due at the very same
//! millisecond are they made ready in batches whose ids follow Redis's text order.)

use std::collections::HashMap;
use std::time::Duration;

use keel::ledger::{BoxFuture, ms};
use keel::queue::{Disposition, Enqueued, Job, JobError, JobId, JobState, NewJob, Queue, QueueError, QueueStats};
use keel::util::{Clock, redact_url, system_clock};
use redis::aio::ConnectionManager;
use redis::{Script, Value};

/// Shared by the scripts: the server's clock (`now`, ms), and `make_ready`, which makes job
/// `id` ready (score by priority then readiness order).
const PRELUDE: &str = r#"
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = string.format('%.0f', now)
local function make_ready(id, prio, at)
  local order = redis.call('INCR', p .. 'order')
  local score = string.format('%.0f', (1000 - prio) * 1099511627776 + (order % 1099511627776))
  redis.call('ZADD', p .. 'ready', score, id)
  redis.call('ZADD', p .. 'ready_at', at, id)
  redis.call('HINCRBY', p .. 'prio', prio, 1)
  redis.call('HSET', p .. 'job:' .. id, 'state', 'ready', 'ready_at', at)
end
local function held(id, worker, lease)
  local s = redis.call('HMGET', p .. 'job:' .. id, 'state', 'worker', 'leases')
  return s[1] == 'active' and s[2] == worker and s[3] == lease
end
"#;

const ENQUEUE: &str = r#"
local ret, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 0, n - 1 do
  local b = 4 + i * 6
  local kind, payload, prio, delay, key, maxa = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), ARGV[b + 4], ARGV[b + 5]
  local run_at = now + delay
  local id = false
  if key ~= '' then id = redis.call('GET', p .. 'key:' .. key) end
  if id then
    out[#out + 1] = id
    out[#out + 1] = 1
  else
    id = tostring(redis.call('INCR', p .. 'seq'))
    redis.call('HSET', p .. 'job:' .. id, 'kind', kind, 'payload', payload, 'priority', prio, 'attempts', 0,
      'max_attempts', maxa, 'budget', maxa, 'enqueued', now, 'run_at', string.format('%.0f', run_at), 'key', key)
    if run_at <= now then
      make_ready(id, prio, now)
    else
      redis.call('HSET', p .. 'job:' .. id, 'state', 'scheduled')
      redis.call('ZADD', p .. 'scheduled', string.format('%.0f', run_at), id)
    end
    if key ~= '' then redis.call('SET', p .. 'key:' .. key, id, 'PX', ret) end
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
return out
"#;

const TAKE: &str = r#"
local lease, worker, max, limit = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
-- at most `limit` expired leases per call, the oldest first
local expired = redis.call('ZRANGEBYSCORE', p .. 'active', '-inf', '(' .. now_s, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local k = p .. 'job:' .. id
  redis.call('ZREM', p .. 'active', id)
  redis.call('HDEL', k, 'worker', 'lease_until')
  local s = redis.call('HMGET', k, 'attempts', 'max_attempts', 'priority')
  local att = tonumber(s[1])
  redis.call('RPUSH', p .. 'errors:' .. id, string.format(
    '{"attempt":%d,"class":"transient","reason":"lease_expired","message":"the worker\'s lease expired (it died or stalled)","at_ms":%s}',
    att, now_s))
  if att >= tonumber(s[2]) then
    redis.call('HSET', k, 'state', 'dead', 'dead_at', now_s)
    redis.call('ZADD', p .. 'dead', now_s, id)
  else
    redis.call('HSET', k, 'run_at', now_s)
    make_ready(id, tonumber(s[3]), now)
  end
end
-- at most `limit` due jobs become ready per call, in the order of their time, then of their id
local due = redis.call('ZRANGEBYSCORE', p .. 'scheduled', '-inf', now_s, 'WITHSCORES', 'LIMIT', 0, limit)
local pending = {}
for i = 1, #due, 2 do pending[#pending + 1] = {due[i], tonumber(due[i + 1])} end
if #pending >= limit and pending[1][2] ~= pending[#pending][2] then
  -- a full batch: more jobs of its last time may follow, and Redis orders equal times by
  -- the text of the id, not its number: that time is left whole to the next call
  local last = pending[#pending][2]
  while pending[#pending][2] == last do pending[#pending] = nil end
end
table.sort(pending, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return tonumber(a[1]) < tonumber(b[1])
end)
for _, e in ipairs(pending) do
  local id = e[1]
  redis.call('ZREM', p .. 'scheduled', id)
  local s = redis.call('HMGET', p .. 'job:' .. id, 'priority', 'run_at')
  make_ready(id, tonumber(s[1]), tonumber(s[2]))
end
if max < 1 then return {} end
local ids = redis.call('ZRANGE', p .. 'ready', 0, max - 1)
local until_ = string.format('%.0f', now + lease)
local out = {}
for _, id in ipairs(ids) do
  local k = p .. 'job:' .. id
  redis.call('ZREM', p .. 'ready', id)
  redis.call('ZREM', p .. 'ready_at', id)
  redis.call('HINCRBY', p .. 'prio', redis.call('HGET', k, 'priority'), -1)
  redis.call('HINCRBY', k, 'attempts', 1)
  redis.call('HINCRBY', k, 'leases', 1)
  redis.call('HSET', k, 'state', 'active', 'worker', worker, 'lease_until', until_)
  redis.call('ZADD', p .. 'active', until_, id)
  out[#out + 1] = {id, redis.call('HGETALL', k), redis.call('LRANGE', p .. 'errors:' .. id, 0, -1)}
end
return out
"#;

const EXTEND: &str = r#"
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
local until_ = string.format('%.0f', now + tonumber(ARGV[5]))
if not held(id, worker, lease) then return 0 end
redis.call('HSET', p .. 'job:' .. id, 'lease_until', until_)
redis.call('ZADD', p .. 'active', until_, id)
return 1
"#;

const ACK: &str = r#"
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
if not held(id, worker, lease) then return 0 end
redis.call('DEL', p .. 'job:' .. id, p .. 'errors:' .. id)
redis.call('ZREM', p .. 'active', id)
return 1
"#;

const FAIL: &str = r#"
local id, worker, lease, err, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local at = string.format('%.0f', now + tonumber(ARGV[7]))
if not held(id, worker, lease) then return 0 end
local k = p .. 'job:' .. id
redis.call('RPUSH', p .. 'errors:' .. id, err)
redis.call('ZREM', p .. 'active', id)
redis.call('HDEL', k, 'worker', 'lease_until')
if mode == 'retry' then
  redis.call('HSET', k, 'state', 'scheduled', 'run_at', at)
  redis.call('ZADD', p .. 'scheduled', at, id)
else
  redis.call('HSET', k, 'state', 'dead', 'dead_at', at)
  redis.call('ZADD', p .. 'dead', at, id)
end
return 1
"#;

const RELEASE: &str = r#"
local id, worker, lease = ARGV[2], ARGV[3], ARGV[4]
if not held(id, worker, lease) then return 0 end
local k = p .. 'job:' .. id
redis.call('ZREM', p .. 'active', id)
redis.call('HDEL', k, 'worker', 'lease_until')
redis.call('HINCRBY', k, 'attempts', -1)
redis.call('HSET', k, 'run_at', now_s)
make_ready(id, tonumber(redis.call('HGET', k, 'priority')), now)
return 1
"#;

const RETRY_DEAD: &str = r#"
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', p .. 'dead', 0, -1)
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', p .. 'dead', id) == 1 then
    local k = p .. 'job:' .. id
    -- the attempts go on counting; a fresh budget on top of them
    local s = redis.call('HMGET', k, 'attempts', 'max_attempts', 'budget')
    local budget = tonumber(s[3]) or tonumber(s[2]) or 1
    redis.call('HSET', k, 'max_attempts', (tonumber(s[1]) or 0) + budget, 'run_at', now_s)
    redis.call('HDEL', k, 'dead_at')
    make_ready(id, tonumber(redis.call('HGET', k, 'priority')), now)
    n = n + 1
  end
end
return n
"#;

const PURGE: &str = r#"
local set = ARGV[2]
local ids = redis.call('ZRANGE', p .. set, 0, -1)
for _, id in ipairs(ids) do
  if set == 'ready' then
    redis.call('HINCRBY', p .. 'prio', redis.call('HGET', p .. 'job:' .. id, 'priority'), -1)
    redis.call('ZREM', p .. 'ready_at', id)
  end
  redis.call('DEL', p .. 'job:' .. id, p .. 'errors:' .. id)
end
redis.call('DEL', p .. set)
return #ids
"#;

const STATS: &str = r#"
local out = {redis.call('ZCARD', p .. 'ready'), redis.call('ZCARD', p .. 'scheduled'),
  redis.call('ZCARD', p .. 'active'), redis.call('ZCARD', p .. 'dead')}
local oldest = redis.call('ZRANGE', p .. 'ready_at', 0, 0, 'WITHSCORES')
out[5] = oldest[2] or ''
-- (priorities of at most 10,000 due jobs, which takes make ready)
local due = redis.call('ZRANGEBYSCORE', p .. 'scheduled', '-inf', now_s, 'WITHSCORES', 'LIMIT', 0, 10000)
local prio = redis.call('HGETALL', p .. 'prio')
local extra = {}
for i = 1, #due, 2 do
  local pr = redis.call('HGET', p .. 'job:' .. due[i], 'priority')
  extra[#extra + 1] = pr
  extra[#extra + 1] = due[i + 1]
end
out[6] = prio
out[7] = extra
-- leases that ran out and that no take has put back yet
out[8] = redis.call('ZCOUNT', p .. 'active', '-inf', '(' .. now_s)
return out
"#;

struct Scripts {
    enqueue: Script,
    take: Script,
    extend: Script,
    ack: Script,
    fail: Script,
    release: Script,
    retry_dead: Script,
    purge: Script,
    stats: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            enqueue: s(ENQUEUE),
            take: s(TAKE),
            extend: s(EXTEND),
            ack: s(ACK),
            fail: s(FAIL),
            release: s(RELEASE),
            retry_dead: s(RETRY_DEAD),
            purge: s(PURGE),
            stats: s(STATS),
        }
    }
}

/// A queue on a Redis server.
#[derive(Clone)]
pub struct RedisQueue {
    /// The location with its password redacted ([`redact_url`]): the connection keeps the
    /// real one.
    url: String,
    prefix: String,
    retention: Duration,
    conn: ConnectionManager,
    scripts: std::sync::Arc<Scripts>,
    clock: Clock,
}

/// The most expired leases, and the most due scheduled jobs, that one take puts back or
/// makes ready: a take never blocks the server for long however many jobs are due at once
/// (the next takes go on with the rest, in the same order).
pub const PROMOTE_LIMIT: usize = 1000;

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn backend(e: redis::RedisError) -> QueueError {
    QueueError::Backend(redact_url(&e.to_string()))
}

impl RedisQueue {
    /// Connects to `url` (`redis://127.0.0.1:6379/`) for queue `name`; idempotency keys are
    /// kept for `retention`.
    pub async fn connect(url: &str, name: &str, retention: Duration) -> Result<Self, QueueError> {
        // only the redacted location is ever shown (errors, `describe`, `Debug`)
        let shown = redact_url(url);
        let client =
            redis::Client::open(url).map_err(|e| QueueError::Config(redact_url(&format!("redis url {shown}: {e}"))))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| QueueError::Config(redact_url(&format!("connecting to {shown}: {e}"))))?;
        Ok(RedisQueue {
            url: shown,
            prefix: format!("keel:q:{{{name}}}:"),
            retention,
            conn,
            scripts: std::sync::Arc::new(Scripts::new()),
            clock: system_clock(),
        })
    }

    /// With `clock` as this client's clock (tests inject a skewed one). It is used only to
    /// turn the times a caller passes ([`NewJob::run_at_ms`], [`Disposition::Retry`]) into
    /// delays from its own now; every lease, due and delay decision is taken on the server's
    /// clock, so workers whose clocks disagree still agree on leases.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    async fn held(&self, script: &Script, args: &[String], id: &str) -> Result<(), QueueError> {
        let mut inv = script.prepare_invoke();
        inv.arg(&self.prefix);
        for a in args {
            inv.arg(a);
        }
        let ok: i64 = inv.invoke_async(&mut self.conn.clone()).await.map_err(backend)?;
        if ok == 1 {
            Ok(())
        } else {
            Err(QueueError::LostLease(id.to_owned()))
        }
    }

    /// Reads jobs by id (in order), skipping ids that vanished meanwhile.
    async fn read(&self, ids: &[String]) -> Result<Vec<Job>, QueueError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(format!("{}job:{id}", self.prefix));
            pipe.lrange(format!("{}errors:{id}", self.prefix), 0, -1);
        }
        let replies: Vec<(HashMap<String, String>, Vec<String>)> = {
            let raw: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await.map_err(backend)?;
            raw.chunks(2)
                .map(|pair| {
                    let h: HashMap<String, String> = redis::from_redis_value(pair[0].clone()).unwrap_or_default();
                    let e: Vec<String> = redis::from_redis_value(pair[1].clone()).unwrap_or_default();
                    (h, e)
                })
                .collect()
        };
        Ok(ids
            .iter()
            .zip(replies)
            .filter(|(_, (h, _))| !h.is_empty())
            .map(|(id, (h, e))| job_of(id, &h, &e))
            .collect())
    }
}

/// Decodes a job from what Redis stores for it: the fields of its hash `job:<id>` and the
/// entries of its list `errors:<id>`. Never fails: a field that is missing or unreadable gets
/// its default. Public only for the fuzz target `queue_row`.
#[doc(hidden)]
pub fn job_of(id: &str, h: &HashMap<String, String>, errors: &[String]) -> Job {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok());
    let payload = h.get("payload").cloned().unwrap_or_default();
    Job {
        id: id.to_owned(),
        kind: h.get("kind").cloned().unwrap_or_default(),
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        priority: h.get("priority").and_then(|v| v.parse().ok()).unwrap_or(0),
        state: h
            .get("state")
            .and_then(|s| JobState::parse(s))
            .unwrap_or(JobState::Dead),
        attempts: num("attempts").unwrap_or(0) as u32,
        max_attempts: num("max_attempts").unwrap_or(1) as u32,
        enqueued_ms: num("enqueued").unwrap_or(0),
        run_at_ms: num("run_at").unwrap_or(0),
        lease_until_ms: num("lease_until"),
        lease: num("leases").unwrap_or(0),
        worker: h.get("worker").cloned(),
        errors: errors.iter().filter_map(|e| serde_json::from_str(e).ok()).collect(),
        idempotency_key: h.get("key").filter(|k| !k.is_empty()).cloned(),
    }
}

impl Queue for RedisQueue {
    fn describe(&self) -> String {
        format!("{} ({})", self.url, self.prefix)
    }

    fn enqueue_many<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>, QueueError>> {
        Box::pin(async move {
            for j in jobs {
                j.check()?;
            }
            let mut out = Vec::with_capacity(jobs.len());
            // one script per 1,000 jobs: atomic per chunk, without blocking the server long
            for chunk in jobs.chunks(1000) {
                let now = (self.clock)();
                let mut inv = self.scripts.enqueue.prepare_invoke();
                inv.arg(&self.prefix).arg(ms(self.retention).max(1)).arg(chunk.len());
                for j in chunk {
                    inv.arg(&j.kind)
                        .arg(j.payload.to_string())
                        .arg(j.priority)
                        .arg(j.run_at_ms.map_or(0, |at| at.saturating_sub(now)))
                        .arg(j.idempotency_key.as_deref().unwrap_or(""))
                        .arg(j.max_attempts);
                }
                let flat: Vec<(String, i64)> = inv.invoke_async(&mut self.conn.clone()).await.map_err(backend)?;
                out.extend(flat.into_iter().map(|(id, dup)| Enqueued {
                    id,
                    duplicate: dup == 1,
                }));
            }
            Ok(out)
        })
    }

    fn take<'a>(&'a self, worker: &'a str, lease: Duration, max: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>> {
        Box::pin(async move {
            // the script returns the jobs it took, so a take is one round trip
            let taken: Vec<(String, HashMap<String, String>, Vec<String>)> = self
                .scripts
                .take
                .prepare_invoke()
                .arg(&self.prefix)
                .arg(ms(lease))
                .arg(worker)
                .arg(max)
                .arg(PROMOTE_LIMIT)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(backend)?;
            Ok(taken.iter().map(|(id, h, e)| job_of(id, h, e)).collect())
        })
    }

    fn extend<'a>(
        &'a self,
        id: &'a str,
        worker: &'a str,
        lease: u64,
        duration: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let args = [
                id.to_owned(),
                worker.to_owned(),
                lease.to_string(),
                ms(duration).to_string(),
            ];
            self.held(&self.scripts.extend, &args, id).await
        })
    }

    fn ack<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let args = [id.to_owned(), worker.to_owned(), lease.to_string()];
            self.held(&self.scripts.ack, &args, id).await
        })
    }

    fn fail<'a>(
        &'a self,
        id: &'a str,
        worker: &'a str,
        lease: u64,
        error: &'a JobError,
        disposition: Disposition,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let json = serde_json::to_string(error).map_err(|e| QueueError::Backend(e.to_string()))?;
            // the retry time is on this client's clock: the server adds the delay to its own
            let (mode, delay) = match disposition {
                Disposition::Retry { at_ms } => ("retry", at_ms.saturating_sub((self.clock)())),
                Disposition::Dead => ("dead", 0),
            };
            let args = [
                id.to_owned(),
                worker.to_owned(),
                lease.to_string(),
                json,
                mode.to_owned(),
                delay.to_string(),
            ];
            self.held(&self.scripts.fail, &args, id).await
        })
    }

    fn release<'a>(&'a self, id: &'a str, worker: &'a str, lease: u64) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let args = [id.to_owned(), worker.to_owned(), lease.to_string()];
            self.held(&self.scripts.release, &args, id).await
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, QueueError>> {
        Box::pin(async move { Ok(self.read(&[id.to_owned()]).await?.pop()) })
    }

    fn list<'a>(&'a self, state: Option<JobState>, limit: usize) -> BoxFuture<'a, Result<Vec<Job>, QueueError>> {
        Box::pin(async move {
            let states = match state {
                Some(s) => vec![s],
                None => vec![JobState::Ready, JobState::Scheduled, JobState::Active, JobState::Dead],
            };
            let mut ids = Vec::new();
            for s in states {
                if ids.len() >= limit {
                    break;
                }
                let want = (limit - ids.len()) as isize;
                let more: Vec<String> = redis::cmd("ZRANGE")
                    .arg(format!("{}{}", self.prefix, s.as_str()))
                    .arg(0)
                    .arg(want - 1)
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(backend)?;
                ids.extend(more);
            }
            self.read(&ids).await
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        Box::pin(async move {
            type Reply = (u64, u64, u64, u64, String, Vec<String>, Vec<String>, u64);
            let (ready, scheduled, active, dead, oldest, prio, due, expired_leases): Reply = self
                .scripts
                .stats
                .prepare_invoke()
                .arg(&self.prefix)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(backend)?;
            let mut s = QueueStats {
                ready,
                scheduled,
                active,
                dead,
                oldest_ready_since_ms: oldest.parse::<f64>().ok().map(|v| v as u64),
                expired_leases,
                ..QueueStats::default()
            };
            for pair in prio.chunks(2) {
                if let [p, n] = pair
                    && let (Ok(p), Ok(n)) = (p.parse::<i32>(), n.parse::<u64>())
                    && n > 0
                {
                    *s.ready_by_priority.entry(p).or_default() += n;
                }
            }
            // scheduled jobs whose time has come are waiting like ready ones
            for pair in due.chunks(2) {
                if let [p, at] = pair {
                    s.ready += 1;
                    s.scheduled = s.scheduled.saturating_sub(1);
                    if let Ok(p) = p.parse::<i32>() {
                        *s.ready_by_priority.entry(p).or_default() += 1;
                    }
                    if let Ok(at) = at.parse::<f64>() {
                        let at = at as u64;
                        s.oldest_ready_since_ms = Some(s.oldest_ready_since_ms.map_or(at, |o| o.min(at)));
                    }
                }
            }
            Ok(s)
        })
    }

    fn retry_dead<'a>(&'a self, ids: Option<&'a [JobId]>) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(async move {
            if ids.is_some_and(|i| i.is_empty()) {
                return Ok(0);
            }
            let mut inv = self.scripts.retry_dead.prepare_invoke();
            inv.arg(&self.prefix);
            for id in ids.unwrap_or_default() {
                inv.arg(id);
            }
            inv.invoke_async(&mut self.conn.clone()).await.map_err(backend)
        })
    }

    fn purge(&self, state: JobState) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(async move {
            self.scripts
                .purge
                .prepare_invoke()
                .arg(&self.prefix)
                .arg(state.as_str())
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(backend)
        })
    }
}
