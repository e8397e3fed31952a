//! The stores under test, each in a fresh place: a temporary directory, or a unique prefix
//! in the `keel-test` bucket of the S3-compatible server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::TryStreamExt;
use keel::durable::{FailingOps, Ops};
use keel::txn::{FsTxnStore, TxnStore};
use keel_connectors::txn::{ObjectTxnStore, S3Location};
use object_store::ObjectStore;

use crate::faulty::Faulty;

pub const S3_ENDPOINT: &str = "http://127.0.0.1:9000";
pub const S3_BUCKET: &str = "keel-test";

pub enum Place {
    Dir(tempfile::TempDir),
    S3 { prefix: String, raw: Arc<dyn ObjectStore> },
}

/// A store under test, and what is needed to build variants of it.
pub struct Store {
    pub store: Arc<dyn TxnStore>,
    pub place: Place,
}

impl Store {
    /// The same place through a store whose operations fail from the `n`-th on.
    pub fn failing_from(&self, n: usize) -> Arc<dyn TxnStore> {
        match &self.place {
            Place::Dir(d) => {
                let ops: Ops = Arc::new(FailingOps::new(n));
                Arc::new(FsTxnStore::with(d.path(), "default", ops))
            }
            Place::S3 { prefix, raw } => {
                let faulty: Arc<dyn ObjectStore> = Arc::new(Faulty::new(raw.clone(), n));
                Arc::new(ObjectTxnStore::new(faulty, prefix, "faulty s3"))
            }
        }
    }

    /// Every file or object in the store's place, as relative names, sorted.
    pub async fn everything(&self) -> Vec<String> {
        match &self.place {
            Place::Dir(d) => {
                let mut out = Vec::new();
                walk(d.path(), d.path(), &mut out);
                out.sort();
                out
            }
            Place::S3 { prefix, raw } => {
                let p = object_store::path::Path::parse(prefix).unwrap();
                let objects: Vec<_> = raw.list(Some(&p)).try_collect().await.unwrap();
                let mut out: Vec<String> = objects
                    .iter()
                    .map(|o| {
                        o.location
                            .as_ref()
                            .trim_start_matches(prefix.as_str())
                            .trim_start_matches('/')
                            .to_owned()
                    })
                    .collect();
                out.sort();
                out
            }
        }
    }

    /// The spec a child process needs to open the same store: `fs:DIR` or `s3:PREFIX`.
    pub fn spec(&self) -> String {
        match &self.place {
            Place::Dir(d) => format!("fs:{}", d.path().display()),
            Place::S3 { prefix, .. } => format!("s3:{prefix}"),
        }
    }
}

fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

/// Opens a store from a spec made by [`Store::spec`].
pub fn open(spec: &str) -> Arc<dyn TxnStore> {
    match spec.split_once(':') {
        Some(("fs", dir)) => Arc::new(FsTxnStore::new(dir)),
        Some(("s3", prefix)) => Arc::new(ObjectTxnStore::new(raw_s3(), prefix, "s3")),
        _ => panic!("bad spec {spec}"),
    }
}

fn raw_s3() -> Arc<dyn ObjectStore> {
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(S3_BUCKET)
        .with_endpoint(S3_ENDPOINT)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("K")
        .with_secret_access_key("S")
        .build()
        .unwrap();
    Arc::new(s3)
}

pub async fn fs() -> Store {
    let dir = tempfile::tempdir().unwrap();
    Store {
        store: Arc::new(FsTxnStore::new(dir.path())),
        place: Place::Dir(dir),
    }
}

pub async fn s3() -> Store {
    static N: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "t{}-{}-{}",
        std::process::id(),
        keel::util::now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    // the typed constructor must build the same store as the raw one
    let loc = S3Location {
        bucket: S3_BUCKET.into(),
        prefix: prefix.clone(),
        endpoint: Some(S3_ENDPOINT.into()),
        region: None,
        access_key: Some("K".into()),
        secret_key: Some("S".into()),
    };
    let store = ObjectTxnStore::s3(&loc).unwrap_or_else(|e| panic!("S3 store: {e}"));
    Store {
        store: Arc::new(store),
        place: Place::S3 { prefix, raw: raw_s3() },
    }
}
