//! Staged transactions: `begin → stage → validate → commit | rollback`.
//!
//! A transaction replaces one *dataset* (a named set of files) as a whole. Its files go to a
//! staging area that readers never see; validators check them; the commit makes all of them
//! visible at once, replacing the previous version of the dataset; any error before that
//! rolls back and leaves nothing behind. Committing a transaction that is already committed
//! is a no-op, so a commit interrupted by a crash can simply be repeated.
//!
//! How "at once" is achieved depends on the store:
//! - [`FsTxnStore`] (local file system): the dataset is a directory, published by an atomic
//!   rename (an atomic exchange when a previous version exists).
//! - `keel_connectors::txn::ObjectTxnStore` (S3 and other object stores, through the
//!   `object_store` crate): data objects never move; the commit writes a manifest listing them
//!   with put-if-absent under the next version number, and readers go through the newest
//!   manifest.
//!
//! [`Transaction`] is the handle to use: it runs the validators and rolls back on any error.
//! Stores implement [`TxnStore`].

mod fs;
mod validate;

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ledger::BoxFuture;

pub use fs::FsTxnStore;
pub use validate::{JsonLines, MinRecords, NonEmpty, Validator, validator_fn};

/// An error of a staged transaction.
#[derive(Debug, Error)]
pub enum TxnError {
    /// A file system error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The object store failed.
    #[error("object store: {0}")]
    Store(String),
    /// A validator refused the staged files; the transaction was rolled back.
    #[error("validation `{validator}` failed: {message}")]
    Validation {
        /// The validator.
        validator: String,
        /// Why.
        message: String,
    },
    /// The transaction's staged data is gone (it was rolled back or never existed).
    #[error("transaction {0} is not staged (rolled back or unknown)")]
    NotStaged(String),
    /// A rollback of a transaction that is already committed.
    #[error("transaction {0} is committed; it cannot be rolled back")]
    Committed(String),
    /// A fenced commit was refused: the dataset's current version was published under a newer
    /// fencing token (another writer took the work over and published first).
    #[error("transaction {txid} is fenced off: the dataset was published under token {current}, newer than {token}")]
    Fenced {
        /// The refused transaction.
        txid: String,
        /// Its token.
        token: u64,
        /// The token of the current version.
        current: u64,
    },
    /// A dataset or file name that cannot be used.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

impl TxnError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TxnError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A transaction: which dataset it replaces, and its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Txn {
    /// The dataset it replaces.
    pub dataset: String,
    /// Unique id (`<ms since epoch, 13 digits>-<16 hex>`): sorts by creation time.
    pub id: String,
}

impl Txn {
    /// A new transaction on `dataset`, with a fresh id.
    pub fn new(dataset: &str) -> Result<Self, TxnError> {
        check_dataset(dataset)?;
        Ok(Txn {
            dataset: dataset.to_owned(),
            id: new_id(),
        })
    }

    /// When the transaction began (ms since the Unix epoch), read from its id.
    pub fn created_ms(&self) -> Option<u64> {
        id_created_ms(&self.id)
    }
}

/// A fresh transaction id.
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let rand = h.finalize().to_hex();
    format!("{:013}-{}", now.as_millis(), &rand[..16])
}

/// The creation time encoded in a transaction id.
pub fn id_created_ms(id: &str) -> Option<u64> {
    let (ms, rest) = id.split_once('-')?;
    (ms.len() == 13 && rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| ms.parse().ok())
        .flatten()
}

/// True for a string shaped like a transaction id.
pub fn is_id(s: &str) -> bool {
    id_created_ms(s).is_some()
}

/// Checks a dataset name: `/`-separated segments, none empty, `.`, `..`, or starting with `.`
/// or `_` (those names are reserved for staging and manifests). A `/` does not nest datasets
/// in storage: see [`dataset_segment`].
pub fn check_dataset(name: &str) -> Result<(), TxnError> {
    let bad = |reason| {
        Err(TxnError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 512 {
        return bad("must have 1 to 512 bytes");
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return bad("empty path segment");
        }
        if seg.starts_with('.') || seg.starts_with('_') {
            return bad("segments must not start with `.` or `_` (reserved)");
        }
        if seg.contains(['\\', '\0']) {
            return bad("must not contain `\\` or NUL");
        }
    }
    Ok(())
}

/// The one path segment under which a store keeps `dataset`: the name with `!` written as
/// `!21` and `/` as `!2F`. Datasets are never nested in storage, so committing (replacing) a
/// dataset `a` cannot touch a dataset `a/b`, whose segment `a!2Fb` is a sibling of `a`. The
/// mapping is injective and leaves names without `!` or `/` unchanged.
pub fn dataset_segment(dataset: &str) -> String {
    let mut out = String::with_capacity(dataset.len());
    for c in dataset.chars() {
        match c {
            '!' => out.push_str("!21"),
            '/' => out.push_str("!2F"),
            c => out.push(c),
        }
    }
    out
}

/// The dataset whose segment is `segment` ([`dataset_segment`] backwards); `None` when
/// `segment` is not one.
pub fn dataset_of_segment(segment: &str) -> Option<String> {
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(i) = rest.find('!') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("21") => out.push('!'),
            Some("2F") => out.push('/'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Checks a file name within a transaction: one segment, not reserved.
pub fn check_file(name: &str) -> Result<(), TxnError> {
    if name.contains('/') {
        return Err(TxnError::InvalidName {
            name: name.to_owned(),
            reason: "file names must not contain `/`",
        });
    }
    check_dataset(name)
}

/// A staged file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// Its name in the dataset.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A committed version of a dataset: what readers see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The dataset.
    pub dataset: String,
    /// Counts commits of the dataset, from 1.
    pub version: u64,
    /// The transaction that wrote it.
    pub txid: String,
    /// When it was committed (ms since the Unix epoch).
    pub committed_ms: u64,
    /// Its files.
    pub files: Vec<StagedFile>,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The version now visible.
    pub version: Version,
    /// True when the transaction was already committed and nothing was done.
    pub already: bool,
}

/// What a store's recovery cleaned up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRecovery {
    /// Staged transactions older than the limit, rolled back.
    pub rolled_back: Vec<String>,
    /// Leftovers of finished commits (displaced old versions, unreferenced data) removed.
    pub cleaned: usize,
}

/// Where transactions are staged and published. Every method is safe to repeat after a
/// crash; see the module docs for the layout each store uses.
pub trait TxnStore: Send + Sync + std::fmt::Debug {
    /// A short description for logs (`files out/`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Opens the staging area of a new transaction on `dataset`.
    fn begin<'a>(&'a self, dataset: &'a str) -> BoxFuture<'a, Result<Txn, TxnError>>;

    /// Stages file `name` of `txn` with `data` (replacing an earlier file of that name).
    fn stage<'a>(&'a self, txn: &'a Txn, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), TxnError>>;

    /// The files staged so far, by name.
    fn staged<'a>(&'a self, txn: &'a Txn) -> BoxFuture<'a, Result<Vec<StagedFile>, TxnError>>;

    /// The content of a staged file (validators that read data use this).
    fn read_staged<'a>(&'a self, txn: &'a Txn, name: &'a str) -> BoxFuture<'a, Result<Bytes, TxnError>>;

    /// Makes the staged files the dataset's new version, all at once. Idempotent: for a
    /// transaction already committed it returns that version with `already` set.
    fn commit<'a>(&'a self, txn: &'a Txn) -> BoxFuture<'a, Result<Committed, TxnError>>;

    /// Discards the staged files. Refused ([`TxnError::Committed`]) once committed; a
    /// transaction with nothing staged is fine.
    fn rollback<'a>(&'a self, txn: &'a Txn) -> BoxFuture<'a, Result<(), TxnError>>;

    /// The dataset's current version, if it has one.
    fn current<'a>(&'a self, dataset: &'a str) -> BoxFuture<'a, Result<Option<Version>, TxnError>>;

    /// Reads a file of a committed version.
    fn read<'a>(&'a self, version: &'a Version, name: &'a str) -> BoxFuture<'a, Result<Bytes, TxnError>>;

    /// Rolls back transactions staged more than `abandoned_after` ago (their writer is gone)
    /// and removes what interrupted commits left behind.
    fn recover<'a>(&'a self, abandoned_after: Duration) -> BoxFuture<'a, Result<TxnRecovery, TxnError>>;
}

/// A transaction in progress: stage files, then [`commit`](Transaction::commit) (which runs
/// the validators) or [`rollback`](Transaction::rollback). Any error in staging, validation
/// or commit rolls the transaction back before it is returned, so no partial output remains.
pub struct Transaction<'s> {
    store: &'s dyn TxnStore,
    txn: Txn,
    validators: Vec<Box<dyn Validator>>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("txn", &self.txn)
            .field("validators", &self.validators.len())
            .finish()
    }
}

impl<'s> Transaction<'s> {
    /// Begins a transaction that will replace `dataset` in `store`.
    pub async fn begin(store: &'s dyn TxnStore, dataset: &str) -> Result<Self, TxnError> {
        let txn = store.begin(dataset).await?;
        Ok(Transaction {
            store,
            txn,
            validators: Vec::new(),
        })
    }

    /// Adds a validator, run at commit.
    pub fn validate_with(mut self, v: impl Validator + 'static) -> Self {
        self.validators.push(Box::new(v));
        self
    }

    /// The transaction (to commit again or inspect later).
    pub fn txn(&self) -> &Txn {
        &self.txn
    }

    /// Stages a file; on error the transaction is rolled back.
    pub async fn stage(&mut self, name: &str, data: impl Into<Bytes>) -> Result<(), TxnError> {
        match self.store.stage(&self.txn, name, data.into()).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.undo(e).await),
        }
    }

    /// Runs the validators over the staged files, then commits.
    pub async fn commit(self) -> Result<Committed, TxnError> {
        if let Err(e) = self.run_validators().await {
            return Err(self.undo(e).await);
        }
        match self.store.commit(&self.txn).await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.undo(e).await),
        }
    }

    /// Discards the staged files.
    pub async fn rollback(self) -> Result<(), TxnError> {
        self.store.rollback(&self.txn).await
    }

    async fn run_validators(&self) -> Result<(), TxnError> {
        validate_staged(self.store, &self.txn, &self.validators).await
    }

    /// Rolls back after `e`; returns `e` (a commit that did happen is never rolled back: the
    /// store refuses it).
    async fn undo(&self, e: TxnError) -> TxnError {
        if let Err(re) = self.store.rollback(&self.txn).await {
            tracing::warn!(txn = %self.txn.id, error = %re, "rolling back after `{e}` failed; recovery will clean up");
        }
        e
    }
}

pub use validate::StagedContent;

/// Runs `validators` over the files `txn` staged in `store`; the first failure is returned.
pub async fn validate_staged(
    store: &dyn TxnStore,
    txn: &Txn,
    validators: &[Box<dyn Validator>],
) -> Result<(), TxnError> {
    if validators.is_empty() {
        return Ok(());
    }
    let files = store.staged(txn).await?;
    let need = validators.iter().any(|v| v.needs_content());
    let mut content = Vec::with_capacity(files.len());
    for f in files {
        let data = if need {
            Some(store.read_staged(txn, &f.name).await?)
        } else {
            None
        };
        content.push(validate::StagedContent {
            name: f.name,
            size: f.size,
            data,
        });
    }
    for v in validators {
        v.check(&content).map_err(|message| TxnError::Validation {
            validator: v.name(),
            message,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_parse_back() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(is_id(&a) && is_id(&b));
        let now = crate::util::now_ms();
        assert!(id_created_ms(&a).is_some_and(|t| t <= now && t + 60_000 > now));
        assert!(!is_id("part-000.jsonl") && !is_id("123-xyz"));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["a.jsonl", "daily/2026-11-23", "x_y"] {
            assert!(check_dataset(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_staging", ".hidden", "a//b", "a/../b", "a/.b", "a\\b"] {
            assert!(check_dataset(bad).is_err(), "{bad}");
        }
        assert!(check_file("a/b").is_err());
        assert!(check_file("part-0.jsonl").is_ok());
    }

    #[test]
    fn dataset_segments_are_flat_and_injective() {
        for (name, seg) in [
            ("a", "a"),
            ("daily/2026-11-23", "daily!2F2026-11-23"),
            ("a!2Fb", "a!212Fb"),
            ("a/b!", "a!2Fb!21"),
        ] {
            assert_eq!(dataset_segment(name), seg);
            assert_eq!(dataset_of_segment(seg).as_deref(), Some(name));
            assert!(!seg.contains('/'));
        }
        assert_ne!(dataset_segment("a/b"), dataset_segment("a!2Fb"));
        assert_eq!(dataset_of_segment("a!zz"), None);
    }
}
