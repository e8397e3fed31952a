//! Redis Streams: a source reading streams by entry id and an exactly-once sink.
//!
//! - [`RedisStreamSource`]: each stream key is a partition; the position is the id of the
//!   last entry read, kept in keel's checkpoints. With `group`, a consumer group's last
//!   delivered id is set to each checkpoint's position, for monitoring only (`XINFO GROUPS`
//!   shows the lag).
//! - [`RedisStreamSink`]: stages each epoch locally ([`crate::stage`]) and appends it at the
//!   commit with one Lua script that checks and advances the sink's progress key
//!   (`keel:progress:{<stream>}:<pipeline>/<sink>` = `<token>:<records done>`, the token
//!   fixed at prepare) in the same atomic step as its `XADD`s: readers see whole epochs
//!   only, and a commit repeated after a crash finds the key past it and adds nothing. With
//!   `chunk`, large epochs go in several such steps (Redis is not blocked as long; a crash
//!   between two leaves a prefix visible that the restart completes).
//! - Dead letters to a stream ([`RedisStreamSink::dead_letters`]): entry fields `value`
//!   (the original bytes), `key`, then the envelope's `keel.error.*` fields.
//!
//! An entry is written as the field `value` (and `key` when the record has one). The source
//! reads an entry with a `value` field as those bytes, and any other entry as a JSON object
//! of its fields.
//!
//! Errors: a refused or dropped connection, a timeout, `LOADING` or `BUSY` is transient; a
//! refused password or a key of another type is fatal.

mod config;
mod errors;
mod sink;
mod source;

pub use config::{RedisStreamSinkConfig, RedisStreamSourceConfig, RedisStreamStart};
pub use sink::{RedisStreamPublisher, RedisStreamSink};
pub use source::{RedisStreamReader, RedisStreamSource};

/// A connection that reconnects by itself, opened on the connectors' I/O runtime.
pub(crate) async fn connect(url: &str) -> Result<redis::aio::ConnectionManager, keel::Failure> {
    let shown = keel::util::redact_url(url);
    let client = redis::Client::open(url).map_err(|e| keel::Failure::fatal("config", format!("{shown}: {e}")))?;
    crate::io::run(async move {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(30)));
        redis::aio::ConnectionManager::new_with_config(client, config).await
    })
    .await
    .map_err(|e| keel::Failure::fatal("runtime", e))?
    .map_err(|e| errors::classify(&e, &format!("connecting to {shown}")))
}
