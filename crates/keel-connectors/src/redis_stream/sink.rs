//! The Redis Streams sink: epochs staged locally, appended at the commit in atomic chunks
//! that advance a progress key (see the module documentation of [`super`]).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::sink::SinkError;
use keel::{Class, Failure};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::config::RedisStreamSinkConfig;
use super::errors::classify;
use crate::stage::{Publish, Staged, StagedSink};

/// The Redis Streams sink: a [`StagedSink`] appending through a [`RedisStreamPublisher`].
pub type RedisStreamSink = StagedSink<RedisStreamPublisher>;

impl RedisStreamSink {
    /// A sink named `name` appending to `config.stream`.
    pub fn with_config(name: impl Into<String>, config: RedisStreamSinkConfig) -> Self {
        let dir = config.staging.clone();
        StagedSink::new(name, dir, RedisStreamPublisher::new(config))
    }

    /// The dead-letter sink: each dead letter an entry of its original bytes and its
    /// envelope's `keel.error.*` fields.
    pub fn dead_letters(mut config: RedisStreamSinkConfig) -> Self {
        config.dead_letters = true;
        Self::with_config("dead_letters", config)
    }
}

/// One chunk: `KEYS` = stream, progress key; `ARGV` = token, from, to, maxlen (0: none),
/// field count of the first entry, then per entry its field count and fields.
///
/// The progress key holds `<token>:<records done>`. A chunk whose end it has reached is
/// skipped (returns 0); a chunk that starts where it stands (or at 0 under a new token) is
/// appended, and the key advanced, in one atomic step.
const CHUNK: &str = r#"
local token, from, to, maxlen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local p = redis.call('GET', KEYS[2])
local done = -1
if p then
  local t, n = string.match(p, '^(.*):(%d+)$')
  if t == token then done = tonumber(n) end
end
if done >= to then return 0 end
if (done < 0 and from ~= 0) or (done >= 0 and done ~= from) then
  return redis.error_reply('KEELPROGRESS progress ' .. tostring(p) .. ' does not meet chunk ' .. from .. ' of ' .. token)
end
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {KEYS[1]}
  if maxlen > 0 then table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, maxlen) end
  table.insert(args, '*')
  for j = 1, n do table.insert(args, ARGV[i + j]) end
  redis.call('XADD', unpack(args))
  i = i + n + 1
end
redis.call('SET', KEYS[2], token .. ':' .. to)
return to - from
"#;

/// Appends epochs to a stream.
pub struct RedisStreamPublisher {
    config: RedisStreamSinkConfig,
    started: OnceLock<Started>,
}

struct Started {
    con: ConnectionManager,
    progress: String,
}

/// The token of an epoch's chunks, fixed at prepare: a later incarnation of the same epoch
/// number (a pipeline started from scratch) has another one, so its chunks are never taken
/// for done.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    token: String,
}

impl RedisStreamPublisher {
    /// A publisher for `config`; connects at [`Publish::start`].
    pub fn new(config: RedisStreamSinkConfig) -> Self {
        RedisStreamPublisher {
            config,
            started: OnceLock::new(),
        }
    }

    fn started(&self) -> Result<&Started, SinkError> {
        self.started
            .get()
            .ok_or_else(|| SinkError::Fatal("redis sink: used before start".into()))
    }

    /// The fields of staged record `i`, as flat `name, value` pairs.
    fn fields(&self, epoch: CheckpointId, i: usize, r: &Staged<'_>) -> Result<Vec<Vec<u8>>, SinkError> {
        let mut f: Vec<Vec<u8>> = Vec::with_capacity(4);
        if self.config.dead_letters {
            let env = keel::dead_letter::Envelope::decode(r.value)
                .map_err(|e| SinkError::Fatal(format!("staged dead letter {i} of epoch {epoch} is unreadable: {e}")))?;
            let dl = crate::envelope::message_of(&env);
            f.extend([b"value".to_vec(), dl.value.unwrap_or_default()]);
            if let Some(k) = dl.key {
                f.extend([b"key".to_vec(), k]);
            }
            for (k, v) in dl.headers {
                f.extend([k.into_bytes(), v]);
            }
            return Ok(f);
        }
        f.extend([b"value".to_vec(), r.value.to_vec()]);
        if let Some(k) = r.key {
            f.extend([b"key".to_vec(), k.to_vec()]);
        }
        Ok(f)
    }

    /// Where the progress key stands for `token`: records done, 0 under another token.
    fn done(&self, s: &Started, token: &str) -> Result<usize, Failure> {
        let (mut con, key) = (s.con.clone(), s.progress.clone());
        let p: Option<String> =
            crate::io::block_on(async move { redis::cmd("GET").arg(&key).query_async(&mut con).await })
                .map_err(|e| Failure::fatal("runtime", e))?
                .map_err(|e| classify(&e, "reading the progress key"))?;
        Ok(p.as_deref()
            .and_then(|p| p.rsplit_once(':'))
            .filter(|(t, _)| *t == token)
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0))
    }

    /// Appends records `from..` in chunks.
    fn append(
        &self,
        s: &Started,
        epoch: CheckpointId,
        token: &str,
        records: &[Staged<'_>],
        from: usize,
    ) -> Result<(), Failure> {
        let chunk = self.config.chunk.unwrap_or(usize::MAX).max(1);
        let mut at = from;
        while at < records.len() {
            let to = (at + chunk).min(records.len());
            // EVAL sends the script each time (Redis keeps it compiled): a few hundred bytes
            // beside a chunk of records, and no NOSCRIPT after a server restart
            let mut inv = redis::cmd("EVAL");
            inv.arg(CHUNK).arg(2).arg(&self.config.stream).arg(&s.progress);
            inv.arg(token).arg(at).arg(to).arg(self.config.maxlen.unwrap_or(0));
            for (i, r) in records[at..to].iter().enumerate() {
                let fields = self
                    .fields(epoch, at + i, r)
                    .map_err(|e| Failure::fatal("staging", e.to_string()))?;
                inv.arg(fields.len());
                for v in fields {
                    inv.arg(v);
                }
            }
            let mut con = s.con.clone();
            let stream = self.config.stream.clone();
            let added: i64 = crate::io::block_on(async move { inv.query_async(&mut con).await })
                .map_err(|e| Failure::fatal("runtime", e))?
                .map_err(|e| classify(&e, &format!("appending epoch {epoch} to stream {stream}")))?;
            tracing::trace!(epoch, at, to, added, "redis sink: chunk appended");
            if at == from && to < records.len() {
                // a crash test's window between two chunks of an epoch
                keel::crash::crash_point("mid_publish");
            }
            at = to;
        }
        Ok(())
    }
}

impl Publish for RedisStreamPublisher {
    fn describe(&self) -> String {
        let what = if self.config.dead_letters {
            "redis dead letters"
        } else {
            "redis"
        };
        format!(
            "{what} {} stream {}",
            keel::util::redact_url(&self.config.url),
            self.config.stream
        )
    }

    fn start(&self, writer: &str, _recovery: &SinkRecovery) -> Result<(), SinkError> {
        if self.started.get().is_some() {
            return Ok(());
        }
        let (url, stream) = (self.config.url.clone(), self.config.stream.clone());
        let con = crate::io::block_on(async move {
            let mut con = super::connect(&url).await?;
            let kind: String = redis::cmd("TYPE")
                .arg(&stream)
                .query_async(&mut con)
                .await
                .map_err(|e| classify(&e, &format!("checking key {stream}")))?;
            if kind != "stream" && kind != "none" {
                return Err(Failure::fatal(
                    "wrong_type",
                    format!("redis sink: key `{stream}` holds a {kind}, not a stream"),
                ));
            }
            Ok(con)
        })
        .map_err(SinkError::Fatal)?
        .map_err(SinkError::Rejected)?;
        let _ = self.started.set(Started {
            con,
            // the hash tag puts the progress key in the stream's cluster slot
            progress: format!("keel:progress:{{{}}}:{writer}", self.config.stream),
        });
        Ok(())
    }

    fn mark(&self, epoch: CheckpointId) -> Result<serde_json::Value, SinkError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        serde_json::to_value(Mark {
            token: format!("{epoch}.{nanos}.{}", std::process::id()),
        })
        .map_err(|e| SinkError::Other(e.to_string()))
    }

    fn publish(
        &self,
        epoch: CheckpointId,
        mark: &serde_json::Value,
        records: &[Staged<'_>],
        _resume: bool,
    ) -> Result<(), SinkError> {
        let s = self.started()?;
        let mark: Mark =
            serde_json::from_value(mark.clone()).map_err(|e| SinkError::PreCommit(format!("redis sink: {e}")))?;
        let deadline = Instant::now() + self.config.publish_timeout;
        loop {
            // the progress key says exactly what is done, whatever interrupted the last try
            let attempt = self
                .done(s, &mark.token)
                .and_then(|from| self.append(s, epoch, &mark.token, records, from));
            match attempt {
                Ok(()) => return Ok(()),
                Err(f) if f.class == Class::Transient && Instant::now() < deadline => {
                    tracing::warn!(error = %f, epoch, "redis sink: append interrupted; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(f) => return Err(SinkError::Rejected(f)),
            }
        }
    }
}
