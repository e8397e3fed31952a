//! Staged transactions on object storage (S3 and compatible servers, or any store of the
//! `object_store` crate).
//!
//! Object stores have no atomic rename, so data never moves: a transaction's files are
//! written where they will stay, and its commit is one conditional write of a manifest.
//!
//! # Layout (under the store's prefix)
//!
//! ```text
//! <dataset>/data/<txid>/_keel.json              the transaction's staging marker
//! <dataset>/data/<txid>/_decision               `commit` or `rollback`, written put-if-absent
//! <dataset>/data/<txid>/<file>                  its files
//! <dataset>/_manifests/<version, 20 digits>.json  one per commit: version, txid, files
//! ```
//!
//! `<dataset>` is one path segment, the name with `/` escaped
//! ([`keel::txn::dataset_segment`]): datasets are never nested, so the pruning or rollback
//! of `a` cannot delete objects of `a/b` (or of a dataset named `a/data/<txid>`).
//!
//! Readers go through the newest manifest ([`TxnStore::current`]) and read only the files it
//! lists, so staged and rolled-back data is never seen.
//!
//! # Commit
//!
//! The manifest of version `v + 1` is written with put-if-absent (`PutMode::Create`): of two
//! writers, exactly one wins `v + 1`; the other finds the new manifest, checks it is not its
//! own, and tries `v + 2`. Before that, the commit writes the transaction's `_decision` with
//! put-if-absent, and so does a rollback before it deletes anything: of a commit and a
//! rollback racing on one transaction exactly one wins; the commit lists the files for its
//! manifest only after winning, and a rollback deletes only after winning (its decision
//! object last), so a rollback never deletes data that a manifest lists. A commit that already happened (the newest manifests name the
//! transaction) returns that version: committing twice is a no-op. After a commit, the
//! manifests and data of versions older than the last `keep_versions` are deleted.
//!
//! # Crash cases
//!
//! - Before the manifest write: nothing is visible; the staged objects stay until a repeated
//!   commit publishes them or [`TxnStore::recover`] rolls them back once abandoned.
//! - After it: the version is visible and complete (its data was written before).
//! - After the decision `commit`, before the manifest: a repeated commit finishes it;
//!   [`TxnStore::recover`] rolls it forward (commits it) instead of rolling it back.
//! - During a rollback (decision `rollback`): a repeated rollback or recovery finishes it;
//!   a commit is refused ([`TxnError::NotStaged`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use keel::ledger::BoxFuture;
use keel::txn::{
    Committed, StagedFile, Txn, TxnError, TxnRecovery, TxnStore, Version, check_dataset, check_file,
    dataset_of_segment, dataset_segment, is_id,
};
use keel::util::now_ms;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

const MARKER: &str = "_keel.json";
const DECISION: &str = "_decision";
const MANIFESTS: &str = "_manifests";
const DATA: &str = "data";

/// Where an S3-compatible bucket is (also the location of [`crate::s3::S3Sink`]).
#[derive(Clone, Debug, Default)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// A prefix inside the bucket (`ingest/orders`), or empty.
    pub prefix: String,
    /// The endpoint of an S3-compatible server (`http://127.0.0.1:9000`); AWS when unset.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when unset).
    pub region: Option<String>,
    /// The access key (from the environment when unset).
    pub access_key: Option<String>,
    /// The secret key.
    pub secret_key: Option<String>,
}

impl S3Location {
    /// A client of the bucket (credentials from the environment where not set).
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_region(self.region.as_deref().unwrap_or("us-east-1"));
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let Some(k) = &self.access_key {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_key {
            b = b.with_secret_access_key(s);
        }
        Ok(Arc::new(b.build()?))
    }
}

/// A transaction store on an object store.
#[derive(Clone, Debug)]
pub struct ObjectTxnStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    name: String,
    keep_versions: usize,
}

fn store_err(e: object_store::Error) -> TxnError {
    TxnError::Store(e.to_string())
}

impl ObjectTxnStore {
    /// A store on `store`, under `prefix` (may be empty); `name` describes it in logs.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, name: &str) -> Self {
        ObjectTxnStore {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            name: name.to_owned(),
            keep_versions: 3,
        }
    }

    /// An S3 (or S3-compatible) bucket.
    pub fn s3(loc: &S3Location) -> Result<Self, TxnError> {
        let s3 = loc.store().map_err(store_err)?;
        let name = format!("s3://{}/{}", loc.bucket, loc.prefix.trim_matches('/'));
        Ok(Self::new(s3, &loc.prefix, &name))
    }

    /// Keeps the last `n` versions of each dataset (at least 1); older ones are deleted
    /// after each commit. Readers still reading an older version may then fail.
    pub fn keep_versions(mut self, n: usize) -> Self {
        self.keep_versions = n.max(1);
        self
    }

    fn path(&self, parts: &[&str]) -> Result<Path, TxnError> {
        let mut s = self.prefix.clone();
        for p in parts {
            if !s.is_empty() {
                s.push('/');
            }
            s.push_str(p);
        }
        Path::parse(&s).map_err(|_| TxnError::InvalidName {
            name: s.clone(),
            reason: "not a valid object path",
        })
    }

    fn data_dir(&self, txn: &Txn) -> Result<Path, TxnError> {
        self.path(&[&dataset_segment(&txn.dataset), DATA, &txn.id])
    }

    fn manifest_path(&self, dataset: &str, version: u64) -> Result<Path, TxnError> {
        self.path(&[&dataset_segment(dataset), MANIFESTS, &format!("{version:020}.json")])
    }

    async fn get_bytes(&self, p: &Path) -> Result<Option<Bytes>, TxnError> {
        match self.store.get(p).await {
            Ok(r) => r.bytes().await.map(Some).map_err(store_err),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, TxnError> {
        self.store.list(Some(prefix)).try_collect().await.map_err(store_err)
    }

    /// The versions of `dataset` that have a manifest, newest first.
    async fn versions(&self, dataset: &str) -> Result<Vec<u64>, TxnError> {
        let dir = self.path(&[&dataset_segment(dataset), MANIFESTS])?;
        let mut v: Vec<u64> = self
            .list(&dir)
            .await?
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        Ok(v)
    }

    async fn manifest(&self, dataset: &str, version: u64) -> Result<Option<Version>, TxnError> {
        let p = self.manifest_path(dataset, version)?;
        match self.get_bytes(&p).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| TxnError::Store(format!("manifest {p}: {e}"))),
        }
    }

    /// The version `txn` committed, if it did. Only manifests committed after the
    /// transaction began (with ten minutes of slack for clock skew) can be its own.
    async fn committed(&self, txn: &Txn, versions: &[u64]) -> Result<Option<Version>, TxnError> {
        let began = txn.created_ms().unwrap_or(0).saturating_sub(600_000);
        for &v in versions {
            let Some(m) = self.manifest(&txn.dataset, v).await? else {
                continue;
            };
            if m.txid == txn.id {
                return Ok(Some(m));
            }
            if m.committed_ms < began {
                break;
            }
        }
        Ok(None)
    }

    async fn staged_marker(&self, txn: &Txn) -> Result<bool, TxnError> {
        let p = self.data_dir(txn)?.join(MARKER);
        match self.store.head(&p).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn delete_all(&self, prefix: &Path) -> Result<usize, TxnError> {
        let objects = self.list(prefix).await?;
        for o in &objects {
            match self.store.delete(&o.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        Ok(objects.len())
    }

    /// Writes `want` as the decision of `txn` unless it has one; returns the decision that
    /// holds (ours, or the one written before).
    async fn decide(&self, txn: &Txn, want: &'static str) -> Result<String, TxnError> {
        let p = self.data_dir(txn)?.join(DECISION);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&p, PutPayload::from_static(want.as_bytes()), opts)
            .await
        {
            Ok(_) => Ok(want.to_owned()),
            Err(object_store::Error::AlreadyExists { .. }) => match self.get_bytes(&p).await? {
                Some(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
                // deleted meanwhile: the last step of a finished rollback
                None => Ok("rollback".to_owned()),
            },
            Err(e) => Err(store_err(e)),
        }
    }

    async fn commit_txn(&self, txn: &Txn) -> Result<Committed, TxnError> {
        let mut decided = false;
        loop {
            let versions = self.versions(&txn.dataset).await?;
            if let Some(v) = self.committed(txn, &versions).await? {
                return Ok(Committed {
                    version: v,
                    already: true,
                });
            }
            if !self.staged_marker(txn).await? {
                return Err(TxnError::NotStaged(txn.id.clone()));
            }
            if !decided {
                if self.decide(txn, "commit").await? != "commit" {
                    return Err(TxnError::NotStaged(txn.id.clone()));
                }
                decided = true;
                // a rollback that finished before our decision removed the marker
                if !self.staged_marker(txn).await? {
                    return Err(TxnError::NotStaged(txn.id.clone()));
                }
            }
            // listed after winning the decision: no rollback deletes any of it from now on
            let files = self.staged_files(txn).await?;
            let next = versions.first().map_or(1, |v| v + 1);
            let version = Version {
                dataset: txn.dataset.clone(),
                version: next,
                txid: txn.id.clone(),
                committed_ms: now_ms(),
                files,
            };
            let body = serde_json::to_vec_pretty(&version).map_err(|e| TxnError::Store(e.to_string()))?;
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            let path = self.manifest_path(&txn.dataset, next)?;
            keel::crash::crash_point("txn_before_publish");
            match self.store.put_opts(&path, PutPayload::from(body), opts).await {
                Ok(_) => {
                    keel::crash::crash_point("txn_after_publish");
                    if let Err(e) = self.prune(&txn.dataset).await {
                        tracing::warn!(dataset = %txn.dataset, error = %e, "deleting old versions failed; the next commit retries");
                    }
                    return Ok(Committed {
                        version,
                        already: false,
                    });
                }
                // another writer took this version (or our earlier attempt did): look again
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// Deletes versions older than the last `keep_versions`, oldest first: data, then manifest.
    async fn prune(&self, dataset: &str) -> Result<(), TxnError> {
        let versions = self.versions(dataset).await?;
        for &v in versions.iter().skip(self.keep_versions).rev() {
            if let Some(m) = self.manifest(dataset, v).await? {
                let dir = self.path(&[&dataset_segment(dataset), DATA, &m.txid])?;
                self.delete_all(&dir).await?;
            }
            match self.store.delete(&self.manifest_path(dataset, v)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        Ok(())
    }

    async fn staged_files(&self, txn: &Txn) -> Result<Vec<StagedFile>, TxnError> {
        let dir = self.data_dir(txn)?;
        let mut files: Vec<StagedFile> = self
            .list(&dir)
            .await?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_owned();
                (!name.starts_with('_')).then_some(StagedFile { name, size: m.size })
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    async fn rollback_txn(&self, txn: &Txn) -> Result<(), TxnError> {
        let versions = self.versions(&txn.dataset).await?;
        if self.committed(txn, &versions).await?.is_some() {
            return Err(TxnError::Committed(txn.id.clone()));
        }
        let dir = self.data_dir(txn)?;
        if self.list(&dir).await?.is_empty() {
            return Ok(());
        }
        // a commit that decided first owns the data: it is finished, never deleted
        if self.decide(txn, "rollback").await? == "commit" {
            return Err(TxnError::Committed(txn.id.clone()));
        }
        // the marker goes first (a repeated commit then fails cleanly), the decision last
        // (until then, no commit can start publishing this transaction)
        let decision = dir.clone().join(DECISION);
        for p in [dir.clone().join(MARKER)] {
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        for o in self.list(&dir).await? {
            if o.location == decision {
                continue;
            }
            match self.store.delete(&o.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        match self.store.delete(&decision).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn recover_all(&self, abandoned_after: Duration) -> Result<TxnRecovery, TxnError> {
        use std::collections::{BTreeMap, BTreeSet};
        let cutoff = now_ms().saturating_sub(keel::ledger::ms(abandoned_after));
        let root = if self.prefix.is_empty() {
            None
        } else {
            Some(Path::parse(&self.prefix).map_err(|_| TxnError::InvalidName {
                name: self.prefix.clone(),
                reason: "not a valid object path",
            })?)
        };
        let objects: Vec<_> = self.store.list(root.as_ref()).try_collect().await.map_err(store_err)?;
        let skip = root.as_ref().map_or(0, |r| r.parts().count());
        // dataset -> staged txids; dataset -> has manifests
        let mut staged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for o in &objects {
            let parts: Vec<String> = o.location.parts().skip(skip).map(|p| p.as_ref().to_owned()).collect();
            let n = parts.len();
            if n == 4
                && parts[1] == DATA
                && is_id(&parts[2])
                && let Some(dataset) = dataset_of_segment(&parts[0])
            {
                staged.entry(dataset).or_default().insert(parts[2].clone());
            }
        }
        let mut report = TxnRecovery::default();
        for (dataset, txids) in staged {
            let versions = self.versions(&dataset).await?;
            let mut live = BTreeSet::new();
            for &v in &versions {
                if let Some(m) = self.manifest(&dataset, v).await? {
                    live.insert(m.txid);
                }
            }
            for id in txids.difference(&live) {
                let txn = Txn {
                    dataset: dataset.clone(),
                    id: id.clone(),
                };
                if txn.created_ms().is_some_and(|t| t <= cutoff) {
                    match self.rollback_txn(&txn).await {
                        Ok(()) => report.rolled_back.push(txn.id),
                        // decided to commit before its writer went away: finish the commit
                        Err(TxnError::Committed(_)) => {
                            self.commit_txn(&txn).await?;
                            report.cleaned += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(report)
    }
}

impl TxnStore for ObjectTxnStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn begin<'a>(&'a self, dataset: &'a str) -> BoxFuture<'a, Result<Txn, TxnError>> {
        Box::pin(async move {
            let txn = Txn::new(dataset)?;
            let marker = serde_json::to_vec(&txn).map_err(|e| TxnError::Store(e.to_string()))?;
            let p = self.data_dir(&txn)?.join(MARKER);
            self.store.put(&p, PutPayload::from(marker)).await.map_err(store_err)?;
            Ok(txn)
        })
    }

    fn stage<'a>(&'a self, txn: &'a Txn, name: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), TxnError>> {
        Box::pin(async move {
            check_file(name)?;
            if !self.staged_marker(txn).await? {
                return Err(TxnError::NotStaged(txn.id.clone()));
            }
            let p = self.data_dir(txn)?.join(name);
            self.store.put(&p, PutPayload::from(data)).await.map_err(store_err)?;
            Ok(())
        })
    }

    fn staged<'a>(&'a self, txn: &'a Txn) -> BoxFuture<'a, Result<Vec<StagedFile>, TxnError>> {
        Box::pin(self.staged_files(txn))
    }

    fn read_staged<'a>(&'a self, txn: &'a Txn, name: &'a str) -> BoxFuture<'a, Result<Bytes, TxnError>> {
        Box::pin(async move {
            check_file(name)?;
            let p = self.data_dir(txn)?.join(name);
            self.get_bytes(&p)
                .await?
                .ok_or_else(|| TxnError::NotStaged(txn.id.clone()))
        })
    }

    fn commit<'a>(&'a self, txn: &'a Txn) -> BoxFuture<'a, Result<Committed, TxnError>> {
        Box::pin(self.commit_txn(txn))
    }

    fn rollback<'a>(&'a self, txn: &'a Txn) -> BoxFuture<'a, Result<(), TxnError>> {
        Box::pin(self.rollback_txn(txn))
    }

    fn current<'a>(&'a self, dataset: &'a str) -> BoxFuture<'a, Result<Option<Version>, TxnError>> {
        Box::pin(async move {
            check_dataset(dataset)?;
            for v in self.versions(dataset).await? {
                if let Some(m) = self.manifest(dataset, v).await? {
                    return Ok(Some(m));
                }
            }
            Ok(None)
        })
    }

    fn read<'a>(&'a self, version: &'a Version, name: &'a str) -> BoxFuture<'a, Result<Bytes, TxnError>> {
        Box::pin(async move {
            check_file(name)?;
            let p = self.path(&[&dataset_segment(&version.dataset), DATA, &version.txid, name])?;
            self.get_bytes(&p)
                .await?
                .ok_or_else(|| TxnError::Store(format!("{p}: missing (version {} was pruned?)", version.version)))
        })
    }

    fn recover<'a>(&'a self, abandoned_after: Duration) -> BoxFuture<'a, Result<TxnRecovery, TxnError>> {
        Box::pin(self.recover_all(abandoned_after))
    }
}
