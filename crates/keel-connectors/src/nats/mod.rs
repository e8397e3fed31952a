//! NATS JetStream: a source reading streams by sequence and an exactly-once sink.
//!
//! - [`NatsSource`]: a stream is one partition, or one per subject filter
//!   (`orders:orders.eu.>`); the position is the next stream sequence, kept in keel's
//!   checkpoints. With `durable`, a durable consumer of that name is acknowledged after each
//!   checkpoint commit, for monitoring only.
//! - [`NatsSink`]: stages each epoch locally ([`crate::stage`]) and publishes it at the
//!   commit, each message with the `Nats-Msg-Id` `<pipeline>/<sink>/<epoch>.<after>/<i>`
//!   (`after`: the stream's last sequence noted at prepare, so a later incarnation of the
//!   same epoch number never shares an id; `i`: the record's sequence in the epoch). A
//!   publish repeated by a retry is dropped by the stream's duplicate window; a publish
//!   resumed after a crash first reads the stream back from `after` and skips the ids it
//!   finds, so exactly-once holds whatever the window.
//! - Dead letters to a subject ([`NatsSink::dead_letters`]): the original bytes, the
//!   envelope in `keel.error.*` headers ([`crate::envelope`]).
//!
//! Errors: a refused connection, a timeout or a lost connection is transient (retried; the
//! breaker pauses the source); an authorization failure or a subject no stream captures is
//! fatal; a message over the server's `max_payload` is `oversized`.

mod config;
mod errors;
mod sink;
mod source;

pub use config::{NatsSinkConfig, NatsSourceConfig, NatsStart};
pub use errors::classify_connect;
pub use sink::{NatsPublisher, NatsSink};
pub use source::{NatsReader, NatsSource};

use std::time::Duration;

/// Connects to `url` (`nats://[user:pass@]host:port[,...]`), on the connectors' I/O runtime.
pub(crate) async fn connect(url: &str) -> Result<async_nats::Client, keel::Failure> {
    let shown = keel::util::redact_url(url);
    let url = url.to_owned();
    crate::io::run(async move {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name("keel")
            .connect(url.as_str())
            .await
    })
    .await
    .map_err(|e| keel::Failure::fatal("runtime", e))?
    .map_err(|e| errors::classify_connect(&e, &shown))
}
