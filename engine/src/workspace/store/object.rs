//! A workspace in object storage: `s3://bucket/prefix`, `gs://…`, `az://…` (and `memory://` for
//! simulations), through the `object_store` crate, with credentials and endpoint from the
//! standard environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …; the GCS and Azure
//! equivalents), never recorded.
//!
//! Create-if-absent is a conditional put (`If-None-Match: *`), compare-and-swap a put on the
//! ETag (`If-Match`). Opening the store probes the first: a store that accepts a second create
//! of one object cannot give exactly-once commits and is refused.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart};

use super::{Listed, Store, Version};
use crate::error::{Error, IoContext, Result};
use crate::workspace::Location;

/// Files above this are uploaded in parts.
const MULTIPART_BYTES: u64 = 16 << 20;

/// A workspace under a prefix of a bucket.
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    /// `scheme://bucket`, the key DataFusion's object store registry knows the store by.
    base: url::Url,
    prefix: ObjectPath,
    /// The location as given, for messages.
    location: String,
    /// Local files being uploaded, and downloaded copies.
    scratch: PathBuf,
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend").field("location", &self.location).finish_non_exhaustive()
    }
}

/// What an object-store call asks, for the benchmarks' count of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Get,
    Head,
    Put,
    /// A put if absent (claims, commits, manifests).
    Create,
    /// A put if unchanged (lease renewals and take-overs).
    Update,
    /// A delete (of up to a thousand keys: S3 deletes them a request a thousand).
    Delete,
    /// A page of a listing (a thousand keys).
    List,
}

impl Call {
    pub const ALL: [Call; 7] = [Call::Get, Call::Head, Call::Put, Call::Create, Call::Update, Call::Delete, Call::List];

    pub fn name(self) -> &'static str {
        match self {
            Call::Get => "get",
            Call::Head => "head",
            Call::Put => "put",
            Call::Create => "create",
            Call::Update => "update",
            Call::Delete => "delete",
            Call::List => "list page",
        }
    }
}

/// Object-store calls made by this process, by [`Call`].
static CALLS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

fn count(call: Call, n: u64) {
    CALLS[call as usize].fetch_add(n, Ordering::Relaxed);
}

/// How many object-store calls of a kind this process made, for benchmarks.
pub fn calls(call: Call) -> u64 {
    CALLS[call as usize].load(Ordering::Relaxed)
}

/// How many object-store calls this process made, for benchmarks.
pub fn requests() -> u64 {
    Call::ALL.into_iter().map(calls).sum()
}

/// Counts the pages of a listing beyond its first (object stores return a thousand keys a
/// page), so a listing of many objects costs what it costs.
fn count_pages(objects: usize) {
    count(Call::List, (objects.saturating_sub(1) / 1000) as u64);
}

/// Runs an object-store request from synchronous code: on the current runtime when there is one
/// (letting the runtime use this thread meanwhile), else on a runtime of its own.
pub(crate) fn wait<T>(call: Call, future: impl Future<Output = T>) -> T {
    count(call, 1);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => tokio::task::block_in_place(|| handle.block_on(future)),
        Err(_) => {
            static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("an async runtime")
            });
            RUNTIME.block_on(future)
        }
    }
}

/// The in-memory bucket `name` of this process (`memory://NAME/prefix`, for simulations and
/// tests): every open of the same bucket sees the same objects.
fn memory_bucket(name: &str) -> Arc<dyn ObjectStore> {
    static BUCKETS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Arc<dyn ObjectStore>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut buckets = BUCKETS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(buckets.entry(name.to_string()).or_insert_with(|| Arc::new(super::memory::MemoryBucket::default())))
}

/// The store a URL names, with credentials and endpoint from the environment: the one place a
/// URL becomes a store (workspaces, and inputs read by URL through `crate::remote`).
/// `http(s)://` is the host's files over HTTP (inputs only: `Location::parse` refuses it for
/// workspaces); plain `http://` only to this host's loopback, where nothing crosses a network.
pub fn connect(url: &url::Url) -> Result<Arc<dyn ObjectStore>> {
    let location = url.as_str().trim_end_matches('/');
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => Arc::new(object_store::aws::AmazonS3Builder::from_env().with_url(location).build().map_err(|e| fail(location, e))?),
        "gs" => {
            Arc::new(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(location).build().map_err(|e| fail(location, e))?)
        }
        "az" | "azure" | "abfs" | "abfss" => {
            Arc::new(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(location).build().map_err(|e| fail(location, e))?)
        }
        "memory" => memory_bucket(url.host_str().unwrap_or_default()),
        "http" | "https" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            let options = object_store::ClientOptions::new().with_allow_http(url.scheme() == "https" || loopback);
            let base = format!("{}://{}", url.scheme(), &url[url::Position::BeforeHost..url::Position::AfterPort]);
            Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(base)
                    .with_client_options(options)
                    .build()
                    .map_err(|e| fail(location, e))?,
            )
        }
        other => {
            return Err(Error::Usage(format!("{location}: unknown scheme `{other}`; use a folder, or s3://, gs://, az://, file:// URLs")));
        }
    };
    Ok(store)
}

fn fail(location: &str, e: object_store::Error) -> Error {
    Error::Workspace { path: PathBuf::from(location), message: e.to_string() }
}

impl ObjectBackend {
    /// Opens the store named by `location`, with credentials from the environment. The URL is
    /// checked as every workspace URL is ([`Location::parse`]): a malformed one is refused
    /// rather than read as another prefix. Makes no request.
    pub fn open(location: &str) -> Result<Self> {
        let Location::Url(normal) = Location::parse(location, Path::new(""))? else {
            return Err(Error::Usage(format!("workspace `{location}` is a folder, not an object-store URL")));
        };
        let location = normal.as_str();
        let url = url::Url::parse(location).map_err(|e| Error::Usage(format!("workspace {location}: not a URL: {e}")))?;
        let store = connect(&url)?;
        let host = url.host_str().unwrap_or_default();
        let base =
            url::Url::parse(&format!("{}://{host}", url.scheme())).map_err(|e| Error::Usage(format!("workspace {location}: {e}")))?;
        let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| Error::Usage(format!("workspace {location}: {e}")))?;
        let id = blake3::hash(format!("{location}-{}", std::process::id()).as_bytes()).to_hex()[..12].to_string();
        let scratch = std::env::temp_dir().join("unoflow-scratch").join(id);
        Ok(Self { store, base, prefix, location: location.to_string(), scratch })
    }

    /// Up to `n` keys under the prefix, leaving out those starting with `skip`: what shows that
    /// a prefix is not empty, without listing all of it (a user's bucket may hold millions).
    pub fn first_keys(&self, n: usize, skip: &str) -> Result<Vec<String>> {
        let root = self.prefix.parts().count();
        wait(Call::List, async {
            self.store
                .list(Some(&self.prefix))
                .map_ok(|m| m.location.parts().skip(root).map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
                .try_filter(|key| futures::future::ready(!key.starts_with(skip)))
                .take(n)
                .try_collect()
                .await
                .map_err(|e| self.fail(e))
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        let mut path = self.prefix.clone();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// An object of a listing, its key relative to the workspace.
    fn listed(&self, meta: &object_store::ObjectMeta) -> Listed {
        let (location, prefix) = (meta.location.as_ref(), self.prefix.as_ref());
        let key = match location.strip_prefix(prefix) {
            Some(rest) if prefix.is_empty() => rest,
            Some(rest) => rest.strip_prefix('/').unwrap_or(rest),
            None => location,
        };
        Listed { key: key.to_string(), size: meta.size, modified_ms: meta.last_modified.timestamp_millis(), e_tag: meta.e_tag.clone() }
    }

    fn fail(&self, e: object_store::Error) -> Error {
        fail(&self.location, e)
    }

    /// The bucket (container) the workspace is in.
    fn bucket(&self) -> &str {
        self.base.host_str().unwrap_or_default()
    }

    /// Makes the first request to the store: a listing of at most one key. A bucket that does
    /// not exist, or credentials the store refuses, are named in one line (exit 2) with what
    /// to check, instead of the store's XML.
    pub fn check_access(&self) -> Result<()> {
        wait(Call::List, async { self.store.list(Some(&self.prefix)).take(1).try_collect::<Vec<_>>().await })
            .map(|_| ())
            .map_err(|e| self.unreachable(e))
    }

    /// What a failed first request means to the user.
    fn unreachable(&self, e: object_store::Error) -> Error {
        self.refused(&error_chain(&e)).unwrap_or_else(|| self.fail(e))
    }

    /// The user's error that a store's refusal is (read from its error's text), if it is one.
    fn refused(&self, error_text: &str) -> Option<Error> {
        let (bucket, location) = (self.bucket(), &self.location);
        let hints = Hints::of(self.base.scheme());
        let message = match Refusal::of(error_text)? {
            Refusal::NoBucket => format!(
                "the bucket `{bucket}` of the workspace {location} does not exist: check the bucket name{}, or create the bucket",
                hints.endpoint
            ),
            Refusal::Denied => format!(
                "the store refused access to the bucket `{bucket}` of the workspace {location}: check the credentials ({}) \
                 and that they may list, read and write under this prefix",
                hints.credentials
            ),
            Refusal::BadName => format!("`{bucket}` (in the workspace {location}) is not a valid bucket name: check the bucket name"),
        };
        Some(Error::Usage(message))
    }

    /// Refuses a store that does not make create-if-absent atomic: the second create of one
    /// object must be refused.
    pub fn probe(&self) -> Result<()> {
        let key = format!(
            ".unoflow-probe/{}",
            blake3::hash(format!("{}-{:?}", std::process::id(), std::time::Instant::now()).as_bytes()).to_hex()
        );
        // The first write: credentials that may list but not write are refused here.
        probe(self, &key).map_err(|e| {
            let text = e.to_string();
            match e {
                Error::Workspace { .. } => self.refused(&text).unwrap_or(e),
                e => e,
            }
        })
    }
}

fn version_of(e_tag: Option<String>, version: Option<String>) -> Version {
    Version(format!("{}\n{}", e_tag.unwrap_or_default(), version.unwrap_or_default()))
}

fn unversion(v: &Version) -> UpdateVersion {
    let (e_tag, version) = v.0.split_once('\n').unwrap_or((&v.0, ""));
    UpdateVersion { e_tag: Some(e_tag.to_string()).filter(|s| !s.is_empty()), version: Some(version.to_string()).filter(|s| !s.is_empty()) }
}

/// Why a store refused a request, when it is the user's to fix.
enum Refusal {
    NoBucket,
    Denied,
    BadName,
}

impl Refusal {
    /// Reads an error's text: its kind, the status and the store's error code (object_store
    /// passes a failed listing on as a generic error holding them).
    fn of(error_text: &str) -> Option<Self> {
        let text = error_text.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
        // A listing finds nothing under a missing prefix: only a missing bucket is "not found".
        if has(&["nosuchbucket", "containernotfound", "bucket does not exist", "404 not found"]) {
            Some(Self::NoBucket)
        } else if has(&[
            "lacked the necessary privileges",
            "lacked valid authentication credentials",
            "accessdenied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "authorizationfailure",
            "authenticationfailed",
            "403 forbidden",
            "401 unauthorized",
        ]) {
            Some(Self::Denied)
        } else if has(&["invalidbucketname"]) {
            Some(Self::BadName)
        } else {
            None
        }
    }
}

/// An error and its sources, one after another.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What a user of each kind of store checks when it refuses the workspace.
struct Hints {
    /// After "check the bucket name".
    endpoint: &'static str,
    credentials: &'static str,
}

impl Hints {
    fn of(scheme: &str) -> Self {
        match scheme {
            "gs" => Self { endpoint: "", credentials: "GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT" },
            "az" | "azure" | "abfs" | "abfss" => Self {
                endpoint: " (a container of the account AZURE_STORAGE_ACCOUNT_NAME)",
                credentials: "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY, or AZURE_STORAGE_SAS_KEY",
            },
            _ => Self {
                endpoint: " and AWS_ENDPOINT_URL (the server: unset for AWS itself) and AWS_REGION",
                credentials: "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the role of this host",
            },
        }
    }
}

impl Store for ObjectBackend {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>> {
        let path = self.path(key);
        wait(Call::Get, async {
            match self.store.get(&path).await {
                Ok(result) => {
                    let version = version_of(result.meta.e_tag.clone(), result.meta.version.clone());
                    let bytes = result.bytes().await.map_err(|e| self.fail(e))?;
                    Ok(Some((bytes.to_vec(), version)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.fail(e)),
            }
        })
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key);
        wait(Call::Put, self.store.put(&path, PutPayload::from(bytes.to_vec()))).map(|_| ()).map_err(|e| self.fail(e))
    }

    fn create(&self, key: &str, bytes: &[u8]) -> Result<Option<Version>> {
        let path = self.path(key);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match wait(Call::Create, self.store.put_opts(&path, PutPayload::from(bytes.to_vec()), opts)) {
            Ok(result) => Ok(Some(version_of(result.e_tag, result.version))),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn update(&self, key: &str, bytes: &[u8], version: &Version) -> Result<Option<Version>> {
        let path = self.path(key);
        let opts = PutOptions { mode: PutMode::Update(unversion(version)), ..Default::default() };
        match wait(Call::Update, self.store.put_opts(&path, PutPayload::from(bytes.to_vec()), opts)) {
            Ok(result) => Ok(Some(version_of(result.e_tag, result.version))),
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match wait(Call::Delete, self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let path = self.path(prefix);
        let deleted = wait(Call::List, async {
            let locations = self.store.list(Some(&path)).map_ok(|m| m.location).boxed();
            self.store.delete_stream(locations).try_collect::<Vec<_>>().await.map_err(|e| self.fail(e))
        })?;
        // The listing's pages, and S3's deletes of a thousand keys a request.
        count_pages(deleted.len());
        count(Call::Delete, deleted.len().div_ceil(1000) as u64);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let path = self.path(prefix);
        let mut out: Vec<Listed> = wait(Call::List, async {
            self.store.list(Some(&path)).map_ok(|m| self.listed(&m)).try_collect().await.map_err(|e| self.fail(e))
        })?;
        count_pages(out.len());
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn lists_by_range(&self) -> bool {
        // S3 and GCS list after a key, Azure from one; the in-memory bucket does too.
        true
    }

    /// One look a second per waiting worker: a thousand workers waiting at a node's end make a
    /// thousand requests a second, within what S3 serves per prefix.
    fn max_poll(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn lists_e_tags(&self) -> bool {
        // S3, GCS and Azure listings name each object's ETag, and so does the in-memory bucket.
        true
    }

    fn list_range(&self, prefix: &str, after: &str, last: &str) -> Result<Vec<Listed>> {
        let (path, offset) = (self.path(prefix), self.path(after));
        let out: Vec<Listed> = wait(Call::List, async {
            self.store
                .list_with_offset(Some(&path), &offset)
                .map_ok(|m| self.listed(&m))
                .try_take_while(|l| std::future::ready(Ok(l.key.as_str() <= last)))
                .try_collect()
                .await
                .map_err(|e| self.fail(e))
        })?;
        count_pages(out.len());
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key);
        match wait(Call::Head, self.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn written_at_ms(&self, key: &str) -> Result<Option<i64>> {
        let path = self.path(key);
        match wait(Call::Head, self.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.last_modified.timestamp_millis())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn file_for_writing(&self, key: &str) -> Result<PathBuf> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.scratch.join("uploads");
        std::fs::create_dir_all(&dir).at(&dir)?;
        let name = key.rsplit('/').next().unwrap_or("file");
        Ok(dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed))))
    }

    fn finish_file(&self, key: &str, file: &Path) -> Result<()> {
        let path = self.path(key);
        let size = std::fs::metadata(file).at(file)?.len();
        // The file is read with blocking reads: this thread waits for the upload anyway, and
        // tokio's file reads would each need a thread of the blocking pool, which the callers
        // (unit writers) may all hold.
        let uploaded = if size <= MULTIPART_BYTES {
            let bytes = std::fs::read(file).at(file)?;
            wait(Call::Put, self.store.put(&path, PutPayload::from(bytes))).map(|_| ()).map_err(|e| self.fail(e))
        } else {
            let mut reader = std::fs::File::open(file).at(file)?;
            wait(Call::Put, async {
                let upload = self.store.put_multipart(&path).await.map_err(|e| self.fail(e))?;
                let mut writer = WriteMultipart::new(upload);
                let mut chunk = vec![0u8; 8 << 20];
                loop {
                    let n = std::io::Read::read(&mut reader, &mut chunk).at(file)?;
                    if n == 0 {
                        break;
                    }
                    writer.wait_for_capacity(4).await.map_err(|e| self.fail(e))?;
                    writer.write(&chunk[..n]);
                }
                writer.finish().await.map(|_| ()).map_err(|e| self.fail(e))
            })
        };
        let _ = std::fs::remove_file(file);
        uploaded
    }

    fn local_copy(&self, key: &str) -> Result<PathBuf> {
        let local = self.scratch.join("copies").join(key);
        if local.is_file() {
            return Ok(local);
        }
        let (bytes, _) =
            self.get(key)?.ok_or_else(|| Error::Workspace { path: PathBuf::from(self.url(key)), message: "not found".into() })?;
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        crate::workspace::write_atomic(&local, &bytes)?;
        Ok(local)
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{}", self.base.as_str().trim_end_matches('/'), self.path(key))
    }

    fn register(&self, ctx: &SessionContext) {
        ctx.register_object_store(&self.base, Arc::clone(&self.store));
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}

/// Creates `key` twice in `store`: the second create must be refused, or the store cannot
/// give exactly-once commits and is refused.
pub(super) fn probe(store: &dyn Store, key: &str) -> Result<()> {
    let first = store.create(key, b"first")?;
    let second = store.create(key, b"second")?;
    let _ = store.delete(key);
    if first.is_some() && second.is_none() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "the object store at {} does not refuse a second create of one object (conditional `If-None-Match: *` writes); \
         unoflow commits each unit by creating its record if absent, so this store cannot give exactly-once results. \
         Use a store with conditional writes (AWS S3, GCS, Azure Blob, MinIO, Cloudflare R2) or a local folder",
        store.describe()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::store::LocalStore;

    /// A store whose "create if absent" overwrites, like an S3 server that ignores
    /// `If-None-Match`.
    #[derive(Debug)]
    struct Careless(LocalStore);

    impl Store for Careless {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>> {
            self.0.get(key)
        }
        fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
            self.0.put(key, bytes)
        }
        fn create(&self, key: &str, bytes: &[u8]) -> Result<Option<Version>> {
            self.0.put(key, bytes)?;
            Ok(self.0.get(key)?.map(|(_, v)| v))
        }
        fn update(&self, key: &str, bytes: &[u8], version: &Version) -> Result<Option<Version>> {
            self.0.update(key, bytes, version)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.0.delete(key)
        }
        fn delete_prefix(&self, prefix: &str) -> Result<()> {
            self.0.delete_prefix(prefix)
        }
        fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
            self.0.list(prefix)
        }
        fn size(&self, key: &str) -> Result<Option<u64>> {
            self.0.size(key)
        }
        fn written_at_ms(&self, key: &str) -> Result<Option<i64>> {
            self.0.written_at_ms(key)
        }
        fn file_for_writing(&self, key: &str) -> Result<PathBuf> {
            self.0.file_for_writing(key)
        }
        fn finish_file(&self, key: &str, file: &Path) -> Result<()> {
            self.0.finish_file(key, file)
        }
        fn local_copy(&self, key: &str) -> Result<PathBuf> {
            self.0.local_copy(key)
        }
        fn url(&self, key: &str) -> String {
            self.0.url(key)
        }
        fn register(&self, ctx: &SessionContext) {
            self.0.register(ctx)
        }
        fn local_path(&self, key: &str) -> Option<PathBuf> {
            self.0.local_path(key)
        }
        fn describe(&self) -> String {
            "s3://careless/ws".into()
        }
    }

    #[test]
    fn a_store_that_accepts_a_second_create_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = probe(&Careless(LocalStore::new(dir.path().to_path_buf())), "probe").unwrap_err();
        assert!(matches!(err, Error::Usage(_)));
        let message = err.to_string();
        assert!(message.contains("s3://careless/ws") && message.contains("second create"), "{message}");
    }

    #[test]
    fn stores_with_atomic_create_pass_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        probe(&LocalStore::new(dir.path().to_path_buf()), "probe").unwrap();
        ObjectBackend::open("memory://probe/ws").unwrap().probe().unwrap();
    }

    #[test]
    fn malformed_urls_are_refused_when_the_store_is_opened() {
        for text in ["s3:/bucket/typo", "s3://", "s3://b/../x", "s3://b/x?versionId=1", "ftp://b/x"] {
            assert!(matches!(ObjectBackend::open(text), Err(Error::Usage(_))), "{text}");
        }
        assert!(matches!(ObjectBackend::open("relative/folder"), Err(Error::Usage(m)) if m.contains("is a folder")));
        assert_eq!(ObjectBackend::open("memory://open/ws/").unwrap().describe(), "memory://open/ws");
    }

    #[test]
    fn a_missing_bucket_and_refused_credentials_are_the_users_to_fix() {
        let store = ObjectBackend::open("s3://nobucket/ws").unwrap();
        let s3_missing = "Generic S3 error: Error performing list request: Server returned non-2xx status code: 404 Not Found: \
                          <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code></Error>";
        let message = store.refused(s3_missing).unwrap().to_string();
        assert!(message.contains("`nobucket`") && message.contains("does not exist") && message.contains("AWS_ENDPOINT_URL"), "{message}");
        assert!(!message.contains('<') && !message.contains('\n'), "one line, no XML: {message}");
        let denied = "The operation lacked the necessary privileges to complete for path ws: Server returned non-2xx status code: \
                      403 Forbidden: <Error><Code>AccessDenied</Code></Error>";
        let message = store.refused(denied).unwrap().to_string();
        assert!(message.contains("refused access") && message.contains("AWS_ACCESS_KEY_ID"), "{message}");
        assert!(store.refused("Generic S3 error: connection reset").is_none(), "other failures are not the user's to fix");
    }

    #[test]
    fn keys_urls_and_listings_are_relative_to_the_prefix() {
        let store = ObjectBackend::open("memory://listing/some/ws").unwrap();
        assert!(store.create("nodes/fp/commits/u000001.json", b"{}").unwrap().is_some());
        assert!(store.create("nodes/fp/commits/u000001.json", b"{}").unwrap().is_none());
        store.put("nodes/fp/attempts/u000001-a/p000.parquet", b"1234").unwrap();
        let listed: Vec<(String, u64)> = store.list("nodes/fp").unwrap().into_iter().map(|l| (l.key, l.size)).collect();
        assert_eq!(
            listed,
            vec![("nodes/fp/attempts/u000001-a/p000.parquet".to_string(), 4), ("nodes/fp/commits/u000001.json".to_string(), 2)]
        );
        assert_eq!(store.url("nodes/fp/x"), "memory://listing/some/ws/nodes/fp/x");
        store.delete_prefix("nodes/fp/attempts").unwrap();
        assert_eq!(store.list("nodes/fp").unwrap().len(), 1);
    }
}
