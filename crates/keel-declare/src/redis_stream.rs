//! `type = "redis_stream"` sources, sinks and dead letters of a pipeline file. Built with
//! the `redis` feature; without it, a file naming Redis is refused before any work starts.

/// Why a file naming Redis streams cannot run in this build, if it cannot.
pub(crate) fn unavailable() -> Option<&'static str> {
    if cfg!(feature = "redis") {
        None
    } else {
        Some("this keel was built without Redis support: build it with the `redis` feature (the keel command has it)")
    }
}

#[cfg(feature = "redis")]
mod built {
    use std::path::PathBuf;

    use crate::config::RedisStreamStartToml;
    use crate::config::{DeadLetterConfig, RedisStreamSinkToml, RedisStreamSourceToml};
    use keel_connectors::redis_stream::{
        RedisStreamSink, RedisStreamSinkConfig, RedisStreamSource, RedisStreamSourceConfig, RedisStreamStart,
    };

    /// The source of a `type = "redis_stream"` table.
    pub(crate) fn source(r: &RedisStreamSourceToml) -> Result<RedisStreamSource, String> {
        let mut c = RedisStreamSourceConfig::new(r.url.clone(), r.streams.clone());
        c.bounded = r.bounded;
        c.group = r.group.clone();
        c.start = match r.start {
            None | Some(RedisStreamStartToml::Earliest) => RedisStreamStart::Earliest,
            Some(RedisStreamStartToml::Latest) => RedisStreamStart::Latest,
        };
        RedisStreamSource::new(c).map_err(|e| e.to_string())
    }

    /// The sink of a `type = "redis_stream"` table; `writer` names its progress key.
    pub(crate) fn sink(r: &RedisStreamSinkToml, writer: &str, staging: PathBuf) -> RedisStreamSink {
        let mut c = RedisStreamSinkConfig::new(r.url.clone(), r.stream.clone(), staging);
        c.maxlen = r.maxlen;
        c.chunk = r.chunk;
        if let Some(t) = r.publish_timeout {
            c.publish_timeout = t;
        }
        RedisStreamSink::with_config(writer, c)
    }

    /// The dead-letter sink of `[dead_letter] type = "redis_stream"`.
    pub(crate) fn dead_letter_sink(d: &DeadLetterConfig, staging: PathBuf) -> RedisStreamSink {
        let c = RedisStreamSinkConfig::new(
            d.url.clone().unwrap_or_default(),
            d.stream.clone().unwrap_or_default(),
            staging,
        );
        RedisStreamSink::dead_letters(c)
    }
}

#[cfg(feature = "redis")]
pub(crate) use built::{dead_letter_sink, sink, source};
