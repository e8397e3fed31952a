//! Object stores that misbehave on purpose: [`Faulty`] fails every call from the `n`-th on
//! (the S3 counterpart of `keel::durable::FailingOps`); [`Racing`] lets another writer
//! commit just before the first manifest write it sees.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn ObjectStore>,
    fail_from: usize,
    calls: AtomicUsize,
}

impl Faulty {
    pub fn new(inner: Arc<dyn ObjectStore>, fail_from: usize) -> Self {
        Faulty {
            inner,
            fail_from,
            calls: AtomicUsize::new(0),
        }
    }

    fn gate(&self) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from {
            Err(object_store::Error::Generic {
                store: "faulty",
                source: format!("injected failure at call {n}").into(),
            })
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "faulty({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.gate()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.gate()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gate()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        match self.gate() {
            Ok(()) => self.inner.delete_stream(locations),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.gate() {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.gate()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.gate()?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// Before forwarding the first put-if-absent of a manifest, commits `theirs` through `other`
/// (which takes that same version), so the forwarded write loses the race.
#[derive(Debug)]
pub struct Racing {
    inner: Arc<dyn ObjectStore>,
    other: Arc<dyn keel::txn::TxnStore>,
    theirs: keel::txn::Txn,
    raced: std::sync::atomic::AtomicBool,
}

impl Racing {
    pub fn new(inner: Arc<dyn ObjectStore>, other: Arc<dyn keel::txn::TxnStore>, theirs: keel::txn::Txn) -> Self {
        Racing {
            inner,
            other,
            theirs,
            raced: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl fmt::Display for Racing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "racing({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Racing {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let manifest = location.as_ref().contains("/_manifests/") && opts.mode == object_store::PutMode::Create;
        if manifest && !self.raced.swap(true, Ordering::SeqCst) {
            self.other.commit(&self.theirs).await.expect("the other writer commits");
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Runs a rollback of `txn` through `other` (another store on the same place) just before
/// the first manifest write it sees, as a rollback racing with the commit would; the
/// rollback's result is kept for the test to inspect.
#[derive(Debug)]
pub struct RollbackRacing {
    inner: Arc<dyn ObjectStore>,
    other: Arc<dyn keel::txn::TxnStore>,
    txn: keel::txn::Txn,
    pub result: tokio::sync::Mutex<Option<std::result::Result<(), String>>>,
}

impl RollbackRacing {
    pub fn new(inner: Arc<dyn ObjectStore>, other: Arc<dyn keel::txn::TxnStore>, txn: keel::txn::Txn) -> Self {
        RollbackRacing {
            inner,
            other,
            txn,
            result: tokio::sync::Mutex::new(None),
        }
    }
}

impl fmt::Display for RollbackRacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rollback-racing({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for RollbackRacing {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let manifest = location.as_ref().contains("/_manifests/") && opts.mode == object_store::PutMode::Create;
        if manifest {
            let mut r = self.result.lock().await;
            if r.is_none() {
                *r = Some(self.other.rollback(&self.txn).await.map_err(|e| e.to_string()));
            }
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
