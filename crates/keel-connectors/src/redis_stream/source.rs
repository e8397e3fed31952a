//! The Redis Streams source: each stream key a partition, the position the id of the last
//! entry read (`XREAD` after it).

use std::time::Duration;

use bytes::Bytes;
use keel::checkpoint::CheckpointId;
use keel::{PartitionReader, ReadStatus, Record, Source, SourceBatch, SourceError};
use redis::Value;
use redis::aio::ConnectionManager;

use super::config::{RedisStreamSourceConfig, RedisStreamStart};
use super::errors::classify;

/// Reads Redis streams.
pub struct RedisStreamSource {
    config: RedisStreamSourceConfig,
    con: Option<ConnectionManager>,
}

impl std::fmt::Debug for RedisStreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamSource")
            .field("streams", &self.config.streams)
            .finish()
    }
}

fn failed(f: keel::Failure) -> SourceError {
    SourceError::Failed(keel::FailureError(f))
}

/// Runs a command on the I/O runtime.
async fn query<T: redis::FromRedisValue + Send + 'static>(
    con: &ConnectionManager,
    cmd: redis::Cmd,
    doing: String,
) -> Result<T, SourceError> {
    let mut con = con.clone();
    crate::io::run(async move { cmd.query_async::<T>(&mut con).await.map_err(|e| classify(&e, &doing)) })
        .await
        .map_err(SourceError::Other)?
        .map_err(failed)
}

/// The id of the last entry of `stream`, if it has any.
async fn last_id(con: &ConnectionManager, stream: &str) -> Result<Option<String>, SourceError> {
    let mut cmd = redis::cmd("XREVRANGE");
    cmd.arg(stream).arg("+").arg("-").arg("COUNT").arg(1);
    let v: Value = query(con, cmd, format!("reading the end of stream {stream}")).await?;
    Ok(entries(&v).into_iter().next().map(|(id, _)| id))
}

impl RedisStreamSource {
    /// A source with `config`; connects when partitions are first listed.
    pub fn new(config: RedisStreamSourceConfig) -> Result<Self, SourceError> {
        if config.streams.is_empty() {
            return Err(SourceError::Config("redis_stream source: `streams` is empty".into()));
        }
        Ok(RedisStreamSource { config, con: None })
    }

    async fn con(&mut self) -> Result<ConnectionManager, SourceError> {
        if let Some(c) = &self.con {
            return Ok(c.clone());
        }
        let c = super::connect(&self.config.url).await.map_err(failed)?;
        self.con = Some(c.clone());
        Ok(c)
    }
}

impl Source for RedisStreamSource {
    type Position = String;
    type Reader = RedisStreamReader;

    fn describe(&self) -> String {
        format!(
            "redis {} streams {}",
            keel::util::redact_url(&self.config.url),
            self.config.streams.join(", ")
        )
    }

    fn is_bounded(&self) -> bool {
        self.config.bounded
    }

    fn ends_are_final(&self) -> bool {
        false
    }

    async fn discover(&mut self) -> Result<Vec<String>, SourceError> {
        let con = self.con().await?;
        for s in &self.config.streams {
            let mut cmd = redis::cmd("TYPE");
            cmd.arg(s);
            let kind: String = query(&con, cmd, format!("checking key {s}")).await?;
            if kind != "stream" && kind != "none" {
                return Err(failed(keel::Failure::fatal(
                    "wrong_type",
                    format!("redis_stream source: key `{s}` holds a {kind}, not a stream"),
                )));
            }
        }
        Ok(self.config.streams.clone())
    }

    async fn open(&mut self, partition: &str, from: Option<String>) -> Result<RedisStreamReader, SourceError> {
        if !self.config.streams.iter().any(|s| s == partition) {
            return Err(SourceError::Config(format!(
                "`{partition}` is not one of the redis streams read"
            )));
        }
        // a reader blocks in XREAD: it has a connection of its own
        let con = super::connect(&self.config.url).await.map_err(failed)?;
        let last = last_id(&con, partition).await?;
        let after = match (from, self.config.start) {
            (Some(id), _) => id,
            (None, RedisStreamStart::Earliest) => "0-0".to_owned(),
            (None, RedisStreamStart::Latest) => last.clone().unwrap_or_else(|| "0-0".to_owned()),
        };
        let end = if self.config.bounded {
            Some(last.map(|l| parse_id(&l)).unwrap_or((0, 0)))
        } else {
            None
        };
        Ok(RedisStreamReader {
            stream: partition.to_owned(),
            con,
            ended: end.is_some_and(|e| parse_id(&after) >= e),
            after,
            end,
        })
    }

    async fn acknowledge(&mut self, _id: CheckpointId, positions: &[(String, String)]) -> Result<(), SourceError> {
        let Some(group) = self.config.group.clone() else {
            return Ok(());
        };
        let con = self.con().await?;
        for (stream, id) in positions {
            let mut create = redis::cmd("XGROUP");
            create.arg("CREATE").arg(stream).arg(&group).arg("0").arg("MKSTREAM");
            let _: Result<Value, _> = query(&con, create, String::new()).await;
            let mut set = redis::cmd("XGROUP");
            set.arg("SETID").arg(stream).arg(&group).arg(id);
            if let Err(e) = query::<Value>(&con, set, format!("setting group {group} of {stream}")).await {
                tracing::debug!(error = %e, "redis_stream source: following the checkpoint with the group failed (monitoring only)");
            }
        }
        Ok(())
    }
}

/// `ms-seq` as numbers, for comparisons (an unreadable id compares as 0-0).
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// An entry's fields, in order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of an `XRANGE` reply: ids with their fields, in order.
fn entries(v: &Value) -> Vec<(String, Fields)> {
    let mut out = Vec::new();
    for e in items(v) {
        let parts = items(e);
        let (Some(id), Some(fields)) = (parts.first().and_then(|i| bytes(i)), parts.get(1)) else {
            continue;
        };
        let flat = items(fields);
        let fields = flat
            .chunks(2)
            .filter_map(|kv| Some((bytes(kv.first()?)?, bytes(kv.get(1)?)?)))
            .collect();
        out.push((String::from_utf8_lossy(&id).into_owned(), fields));
    }
    out
}

/// Reads one stream.
pub struct RedisStreamReader {
    stream: String,
    con: ConnectionManager,
    /// The id of the last entry read.
    after: String,
    /// Bounded: the last entry to read.
    end: Option<(u64, u64)>,
    ended: bool,
}

impl std::fmt::Debug for RedisStreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamReader")
            .field("stream", &self.stream)
            .field("after", &self.after)
            .finish()
    }
}

/// A record from an entry: the `value` field's bytes, or a JSON object of every field.
fn record_of(fields: Fields) -> Record {
    let mut key = None;
    let mut value = None;
    for (k, v) in &fields {
        match k.as_slice() {
            b"value" => value = Some(Bytes::copy_from_slice(v)),
            b"key" => key = Some(Bytes::copy_from_slice(v)),
            _ => {}
        }
    }
    let value = value.unwrap_or_else(|| {
        let object: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(&v).into_owned()),
                )
            })
            .collect();
        Bytes::from(serde_json::to_vec(&object).unwrap_or_default())
    });
    Record {
        key,
        value,
        headers: Vec::new(),
        event_time: None,
    }
}

impl RedisStreamReader {
    /// The stream key this reader reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

impl PartitionReader for RedisStreamReader {
    type Position = String;

    async fn next_batch(&mut self, batch: &mut SourceBatch<String>, max: usize) -> Result<ReadStatus, SourceError> {
        if self.ended {
            return Ok(ReadStatus::End);
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(max.max(1))
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(&self.after);
        let reply: Value = tokio::time::timeout(
            Duration::from_secs(35),
            query(&self.con, cmd, format!("reading stream {}", self.stream)),
        )
        .await
        .map_err(|_| {
            failed(keel::Failure::transient(
                keel::failure::reason::TIMEOUT,
                format!("reading stream {}: no answer in 35 s", self.stream),
            ))
        })??;
        // XREAD answers [[stream, entries]] (a map under RESP3), or nil after the block
        let found: Vec<_> = match &reply {
            Value::Array(streams) => streams
                .iter()
                .flat_map(|s| items(s).get(1).map(|e| entries(e)))
                .flatten()
                .collect(),
            Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
            _ => Vec::new(),
        };
        for (id, fields) in found {
            let at = parse_id(&id);
            if self.end.is_some_and(|e| at > e) {
                self.ended = true;
                break;
            }
            batch.push(record_of(fields), id.clone());
            self.after = id;
            if self.end == Some(at) {
                self.ended = true;
                break;
            }
        }
        Ok(if !batch.is_empty() {
            ReadStatus::Records
        } else if self.ended {
            ReadStatus::End
        } else {
            ReadStatus::Idle
        })
    }
}
