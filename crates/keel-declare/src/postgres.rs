//! `type = "postgres"` sinks and dead letters of a pipeline file. Built with the
//! `postgres` feature; without it, a file naming PostgreSQL is refused before any work.

/// Why a file naming PostgreSQL cannot run in this build, if it cannot.
pub(crate) fn unavailable() -> Option<&'static str> {
    if cfg!(feature = "postgres") {
        None
    } else {
        Some(
            "this keel was built without PostgreSQL support: build it with the `postgres` feature (the keel command has it)",
        )
    }
}

#[cfg(feature = "postgres")]
mod built {
    use std::path::PathBuf;

    use crate::config::{DeadLetterConfig, PostgresSinkToml};
    use keel_connectors::postgres::{PostgresSink, PostgresSinkConfig, WriteMode};

    /// The sink of a `type = "postgres"` table; `writer` names its progress row.
    pub(crate) fn sink(p: &PostgresSinkToml, writer: &str, staging: PathBuf) -> PostgresSink {
        let mut c = PostgresSinkConfig::new(p.url.clone(), p.table.clone(), staging);
        c.columns = p
            .columns
            .iter()
            .map(|(col, field)| (col.clone(), field.clone()))
            .collect();
        if !p.upsert_key.is_empty() {
            c.mode = WriteMode::Upsert {
                key: p.upsert_key.clone(),
            };
        }
        if let Some(t) = p.publish_timeout {
            c.publish_timeout = t;
        }
        if let Some(n) = p.rows_per_statement {
            c.rows_per_statement = n;
        }
        PostgresSink::with_config(writer, c)
    }

    /// The dead-letter sink of `[dead_letter] type = "postgres"`.
    pub(crate) fn dead_letter_sink(d: &DeadLetterConfig, staging: PathBuf) -> PostgresSink {
        let c = PostgresSinkConfig::new(
            d.url.clone().unwrap_or_default(),
            d.table.clone().unwrap_or_default(),
            staging,
        );
        PostgresSink::dead_letters(c)
    }
}

#[cfg(feature = "postgres")]
pub(crate) use built::{dead_letter_sink, sink};
