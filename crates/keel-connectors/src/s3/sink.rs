//! The object storage sink: epochs staged locally, uploaded as whole objects at the commit
//! (see the module documentation of [`super`]).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;
use keel::checkpoint::CheckpointId;
use keel::checkpoint::recovery::SinkRecovery;
use keel::failure::reason;
use keel::sink::SinkError;
use keel::{Class, Failure};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::config::S3SinkConfig;
use crate::stage::{Publish, Staged, StagedSink};

/// The object storage sink: a [`StagedSink`] uploading through an [`S3Publisher`].
pub type S3Sink = StagedSink<S3Publisher>;

impl S3Sink {
    /// A sink named `name` writing objects under `config.location`.
    pub fn with_config(name: impl Into<String>, config: S3SinkConfig) -> Self {
        let dir = config.staging.clone();
        StagedSink::new(name, dir, S3Publisher::new(config))
    }

    /// The dead-letter sink: each epoch's dead letters as JSON lines in `dead-…jsonl`
    /// objects (the format of a dead-letter directory).
    pub fn dead_letters(mut config: S3SinkConfig) -> Self {
        config.dead_letters = true;
        config.extension = "jsonl".into();
        config.header = None;
        Self::with_config("dead_letters", config)
    }
}

/// Uploads epochs as objects.
pub struct S3Publisher {
    config: S3SinkConfig,
    store: OnceLock<Arc<dyn ObjectStore>>,
}

/// What an object store error means for the policies.
fn classify(e: &object_store::Error, doing: &str) -> Failure {
    let message = format!("{doing}: {e}");
    match e {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            Failure::fatal("not_authorized", format!("{message} (check the credentials)"))
        }
        object_store::Error::NotFound { .. } => {
            Failure::fatal("not_found", format!("{message} (does the bucket exist?)"))
        }
        object_store::Error::InvalidPath { .. } | object_store::Error::NotSupported { .. } => {
            Failure::fatal("config", message)
        }
        _ => Failure::transient(reason::IO, message),
    }
}

impl S3Publisher {
    /// A publisher for `config`; makes its client at [`Publish::start`].
    pub fn new(config: S3SinkConfig) -> Self {
        S3Publisher {
            config,
            store: OnceLock::new(),
        }
    }

    fn store(&self) -> Result<Arc<dyn ObjectStore>, SinkError> {
        self.store
            .get()
            .cloned()
            .ok_or_else(|| SinkError::Fatal("s3 sink: used before start".into()))
    }

    fn prefix(&self) -> &str {
        self.config.location.prefix.trim_matches('/')
    }

    fn kind(&self) -> &'static str {
        if self.config.dead_letters { "dead" } else { "part" }
    }

    fn object(&self, epoch: CheckpointId, n: usize) -> Result<Path, SinkError> {
        let name = format!("{}-{epoch:020}-{n:04}.{}", self.kind(), self.config.extension);
        let full = if self.prefix().is_empty() {
            name
        } else {
            format!("{}/{name}", self.prefix())
        };
        Path::parse(&full).map_err(|e| SinkError::Fatal(format!("s3 sink: {e}")))
    }

    /// The epoch in the name of one of this sink's objects.
    fn epoch_of(&self, location: &Path) -> Option<CheckpointId> {
        let name = location.filename()?;
        let rest = name.strip_prefix(self.kind())?.strip_prefix('-')?;
        rest.split('-').next()?.parse().ok()
    }

    fn shown(&self) -> String {
        format!("s3://{}/{}", self.config.location.bucket, self.prefix())
    }

    /// Runs `f` again while it fails transiently, until `deadline`.
    fn patiently<T>(&self, doing: &str, deadline: Instant, f: impl Fn() -> Result<T, Failure>) -> Result<T, SinkError> {
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.class == Class::Transient && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "s3 sink: {doing} failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(SinkError::Rejected(e)),
            }
        }
    }

    /// Every object of this sink under the prefix.
    fn objects(&self) -> Result<Vec<Path>, Failure> {
        let store = self.store().map_err(|e| Failure::fatal("runtime", e.to_string()))?;
        let prefix = (!self.prefix().is_empty()).then(|| Path::from(self.prefix()));
        let shown = self.shown();
        let listed = crate::io::block_on(async move {
            store
                .list(prefix.as_ref())
                .map_ok(|m| m.location)
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| classify(&e, &format!("listing {shown}")))
        })
        .map_err(|e| Failure::fatal("runtime", e))??;
        Ok(listed.into_iter().filter(|p| self.epoch_of(p).is_some()).collect())
    }

    /// The objects of an epoch: each record on its line, a new object after
    /// `max_file_bytes`, the header first in each.
    fn files(&self, records: &[Staged<'_>]) -> Vec<Vec<u8>> {
        let mut files = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        for r in records {
            if current.is_empty()
                && let Some(h) = &self.config.header
            {
                current.extend_from_slice(h.as_bytes());
                current.push(b'\n');
            }
            current.extend_from_slice(r.value);
            current.push(b'\n');
            if current.len() as u64 >= self.config.max_file_bytes {
                files.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            files.push(current);
        }
        files
    }
}

impl Publish for S3Publisher {
    fn describe(&self) -> String {
        let what = if self.config.dead_letters {
            "s3 dead letters"
        } else {
            "s3"
        };
        match &self.config.location.endpoint {
            Some(e) => format!("{what} {} at {}", self.shown(), keel::util::redact_url(e)),
            None => format!("{what} {}", self.shown()),
        }
    }

    fn start(&self, _writer: &str, _recovery: &SinkRecovery) -> Result<(), SinkError> {
        if self.store.get().is_some() {
            return Ok(());
        }
        let store = self
            .config
            .location
            .store()
            .map_err(|e| SinkError::Rejected(Failure::fatal("config", format!("s3 sink {}: {e}", self.shown()))))?;
        let _ = self.store.set(store);
        // the bucket must answer: a misspelt one fails the run before any work
        self.objects().map_err(SinkError::Rejected)?;
        Ok(())
    }

    fn roll_back_after(&self, restored: Option<CheckpointId>, from_scratch: bool) -> Result<usize, SinkError> {
        let newer: Vec<Path> = self
            .objects()
            .map_err(SinkError::Rejected)?
            .into_iter()
            .filter(|p| self.epoch_of(p).is_some_and(|e| restored.is_none_or(|r| e > r)))
            .collect();
        if newer.is_empty() {
            return Ok(0);
        }
        if restored.is_none() && !from_scratch {
            return Err(SinkError::Rejected(Failure::fatal(
                "unaccounted_output",
                format!(
                    "s3 sink: {} objects in {} ({} first) belong to no checkpoint; they are kept. Run with --from-scratch --confirm to delete them and start over",
                    newer.len(),
                    self.shown(),
                    newer[0]
                ),
            )));
        }
        let store = self.store()?;
        let n = newer.len();
        crate::io::block_on(async move {
            for p in newer {
                match store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(classify(&e, &format!("deleting {p}"))),
                }
            }
            Ok(())
        })
        .map_err(SinkError::Fatal)?
        .map_err(SinkError::Rejected)?;
        Ok(n)
    }

    fn mark(&self, _epoch: CheckpointId) -> Result<serde_json::Value, SinkError> {
        Ok(serde_json::Value::Null)
    }

    fn publish(
        &self,
        epoch: CheckpointId,
        _mark: &serde_json::Value,
        records: &[Staged<'_>],
        _resume: bool,
    ) -> Result<(), SinkError> {
        let store = self.store()?;
        let deadline = Instant::now() + self.config.publish_timeout;
        for (n, bytes) in self.files(records).into_iter().enumerate() {
            let path = self.object(epoch, n)?;
            let payload = Bytes::from(bytes);
            self.patiently("an upload", deadline, || {
                let (store, path, payload) = (store.clone(), path.clone(), payload.clone());
                crate::io::block_on(async move {
                    store
                        .put(&path, PutPayload::from_bytes(payload))
                        .await
                        .map(|_| ())
                        .map_err(|e| classify(&e, &format!("uploading {path}")))
                })
                .map_err(|e| Failure::fatal("runtime", e))?
            })?;
            if n == 0 && keel::crash::armed_at("mid_publish") {
                keel::crash::crash_point("mid_publish");
            }
        }
        Ok(())
    }
}
