//! `type = "delta"` sinks and dead letters of a pipeline file. Built with the `delta`
//! feature; without it, a file naming Delta Lake is refused before any work starts.

/// Why a file naming Delta Lake cannot run in this build, if it cannot.
pub(crate) fn unavailable() -> Option<&'static str> {
    if cfg!(feature = "delta") {
        None
    } else {
        Some(
            "this keel was built without Delta Lake support: build it with the `delta` feature (the keel command has it)",
        )
    }
}

/// The column types a `columns` table may name, checked before any work.
pub(crate) fn check_column_type(ty: &str) -> Result<(), String> {
    match ty {
        "string" | "long" | "bigint" | "integer" | "int" | "double" | "boolean" | "timestamp" | "date" => Ok(()),
        other => Err(format!(
            "`{other}` is not a column type: string, long, integer, double, boolean, timestamp or date"
        )),
    }
}

#[cfg(feature = "delta")]
mod built {
    use std::path::PathBuf;

    use crate::config::{DeadLetterConfig, DeltaSinkToml};
    use keel_connectors::delta::{DeltaSink, DeltaSinkConfig};

    /// The sink of a `type = "delta"` table at `location` (resolved), committing as
    /// `app_id`.
    pub(crate) fn sink(
        d: &DeltaSinkToml,
        writer: &str,
        location: String,
        app_id: String,
        staging: PathBuf,
    ) -> DeltaSink {
        let mut c = DeltaSinkConfig::new(location, app_id, staging);
        c.storage_options = d.storage_options.clone().into_iter().collect();
        c.columns = d
            .columns
            .iter()
            .filter_map(|(n, t)| Some((n.clone(), t.parse().ok()?)))
            .collect();
        if let Some(t) = d.publish_timeout {
            c.publish_timeout = t;
        }
        DeltaSink::with_config(writer, c)
    }

    /// The dead-letter sink of `[dead_letter] type = "delta"`.
    pub(crate) fn dead_letter_sink(
        d: &DeadLetterConfig,
        location: String,
        app_id: String,
        staging: PathBuf,
    ) -> DeltaSink {
        let mut c = DeltaSinkConfig::new(location, app_id, staging);
        c.storage_options = d.storage_options.clone().into_iter().collect();
        DeltaSink::dead_letters(c)
    }
}

#[cfg(feature = "delta")]
pub(crate) use built::{dead_letter_sink, sink};
