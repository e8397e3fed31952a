//! `type = "s3"` sinks and dead letters of a pipeline file. Built with the `s3` feature;
//! without it, a file naming S3 is refused before any work starts.

/// Why a file naming S3 cannot run in this build, if it cannot.
pub(crate) fn unavailable() -> Option<&'static str> {
    if cfg!(feature = "s3") {
        None
    } else {
        Some("this keel was built without S3 support: build it with the `s3` feature (the keel command has it)")
    }
}

#[cfg(feature = "s3")]
mod built {
    use std::path::PathBuf;

    use crate::config::{DeadLetterConfig, S3SinkToml};
    use keel_connectors::s3::{S3Sink, S3SinkConfig};
    use keel_connectors::txn::S3Location;

    /// The sink of a `type = "s3"` table; `header` is the CSV header, if any.
    pub(crate) fn sink(s: &S3SinkToml, writer: &str, staging: PathBuf, header: Option<String>) -> S3Sink {
        let location = S3Location {
            bucket: s.bucket.clone(),
            prefix: s.prefix.clone(),
            endpoint: s.endpoint.clone(),
            region: s.region.clone(),
            access_key: s.access_key.clone(),
            secret_key: s.secret_key.clone(),
        };
        let mut c = S3SinkConfig::new(location, staging);
        if s.format == keel_connectors::file::FileFormat::Csv {
            c.extension = "csv".into();
            c.header = header.map(|h| h.trim_end_matches(['\r', '\n']).to_owned());
        }
        if let Some(m) = s.max_file_bytes {
            c.max_file_bytes = m;
        }
        if let Some(t) = s.publish_timeout {
            c.publish_timeout = t;
        }
        S3Sink::with_config(writer, c)
    }

    /// The dead-letter sink of `[dead_letter] type = "s3"`.
    pub(crate) fn dead_letter_sink(d: &DeadLetterConfig, staging: PathBuf) -> S3Sink {
        let location = S3Location {
            bucket: d.bucket.clone().unwrap_or_default(),
            prefix: d.prefix.clone().unwrap_or_default(),
            endpoint: d.endpoint.clone(),
            region: d.region.clone(),
            access_key: d.access_key.clone(),
            secret_key: d.secret_key.clone(),
        };
        S3Sink::dead_letters(S3SinkConfig::new(location, staging))
    }
}

#[cfg(feature = "s3")]
pub(crate) use built::{dead_letter_sink, sink};
