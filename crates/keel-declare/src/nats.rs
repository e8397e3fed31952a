//! `type = "nats"` sources, sinks and dead letters of a pipeline file. Built with the
//! `nats` feature; without it, a file naming NATS is refused before any work starts.

/// Why a file naming NATS cannot run in this build, if it cannot.
pub(crate) fn unavailable() -> Option<&'static str> {
    if cfg!(feature = "nats") {
        None
    } else {
        Some("this keel was built without NATS support: build it with the `nats` feature (the keel command has it)")
    }
}

#[cfg(feature = "nats")]
mod built {
    use std::path::PathBuf;

    use crate::config::NatsStartToml;
    use crate::config::{DeadLetterConfig, NatsSinkToml, NatsSourceToml};
    use keel_connectors::nats::{NatsSink, NatsSinkConfig, NatsSource, NatsSourceConfig, NatsStart};

    /// The source of a `type = "nats"` table.
    pub(crate) fn source(n: &NatsSourceToml) -> Result<NatsSource, String> {
        let mut c = NatsSourceConfig::new(n.url.clone(), n.stream.clone());
        c.subjects = n.subjects.clone();
        c.bounded = n.bounded;
        c.durable = n.durable.clone();
        c.start = match n.start {
            None | Some(NatsStartToml::Earliest) => NatsStart::Earliest,
            Some(NatsStartToml::Latest) => NatsStart::Latest,
            Some(NatsStartToml::Sequence(s)) => NatsStart::Sequence(s),
        };
        NatsSource::new(c).map_err(|e| e.to_string())
    }

    /// The sink of a `type = "nats"` table; `writer` names it in its message ids.
    pub(crate) fn sink(n: &NatsSinkToml, writer: &str, staging: PathBuf) -> NatsSink {
        let mut c = NatsSinkConfig::new(n.url.clone(), n.subject.clone(), staging);
        c.headers = n.headers.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
        if let Some(t) = n.publish_timeout {
            c.publish_timeout = t;
        }
        if let Some(m) = n.max_in_flight {
            c.max_in_flight = m;
        }
        NatsSink::with_config(writer, c)
    }

    /// The dead-letter sink of `[dead_letter] type = "nats"`.
    pub(crate) fn dead_letter_sink(d: &DeadLetterConfig, staging: PathBuf) -> NatsSink {
        let c = NatsSinkConfig::new(
            d.url.clone().unwrap_or_default(),
            d.subject.clone().unwrap_or_default(),
            staging,
        );
        NatsSink::dead_letters(c)
    }
}

#[cfg(feature = "nats")]
pub(crate) use built::{dead_letter_sink, sink, source};
