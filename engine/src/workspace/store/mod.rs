//! Where a workspace's bytes live: a local folder ([`LocalStore`]) or object storage
//! ([`ObjectBackend`]: S3, GCS, Azure, through the `object_store` crate DataFusion uses).
//!
//! The workspace protocol needs three things of a store beyond reads and writes, and a store
//! that cannot give them is refused when it is opened:
//! 1. **create if absent**, atomically (a unit's commit record, a manifest, a lease): of two
//!    writers, exactly one succeeds;
//! 2. **update if unchanged** (renewing or taking over a lease): compare-and-swap on a version;
//! 3. **read your writes** for single objects.
//!
//! Keys are `/`-separated paths relative to the workspace root. The trait is synchronous: its
//! callers are the engine's blocking threads (unit writers) and short bookkeeping in async tasks;
//! object storage runs its requests on the runtime and waits for them.

mod local;
mod memory;
mod object;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::prelude::SessionContext;
pub use local::{LocalStore, relative_key};
pub(crate) use object::wait;
pub use object::{Call, ObjectBackend, calls, connect, requests};

use super::Location;
use crate::error::Result;

/// An object's version, for compare-and-swap updates (an ETag, or a local file's digest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version(pub String);

/// An object listed: its key and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// When it was last written (Unix milliseconds).
    pub modified_ms: i64,
    /// Its ETag, where the listing gives one (object storage): a new one for every write.
    pub e_tag: Option<String>,
}

impl Version {
    /// The ETag part of the version (object storage), as a listing names it.
    pub fn e_tag(&self) -> Option<&str> {
        let e_tag = self.0.split('\n').next().map(unquoted)?;
        (!e_tag.is_empty()).then_some(e_tag)
    }
}

impl Listed {
    /// Whether the object listed is the one written with `e_tag` (no other write since).
    pub fn written_as(&self, e_tag: &str) -> bool {
        self.e_tag.as_deref().map(unquoted).is_some_and(|listed| !listed.is_empty() && listed == unquoted(e_tag))
    }
}

/// An ETag without its quotes (S3 quotes them in headers and listings alike; one may not).
fn unquoted(e_tag: &str) -> &str {
    e_tag.trim_matches('"')
}

/// The operations the workspace needs of where it is stored.
pub trait Store: Send + Sync + Debug {
    /// The object's bytes and version, if it exists.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>>;

    /// Writes the object, replacing it, atomically (readers see the old or the new bytes).
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;

    /// Creates the object unless it exists: its version, or `None` when it existed (nothing
    /// written).
    fn create(&self, key: &str, bytes: &[u8]) -> Result<Option<Version>>;

    /// Replaces the object if it is still at `version`: its new version, or `None` when it
    /// changed (or went) meanwhile.
    fn update(&self, key: &str, bytes: &[u8], version: &Version) -> Result<Option<Version>>;

    /// Removes the object (absent is fine).
    fn delete(&self, key: &str) -> Result<()>;

    /// Removes every object under `prefix/`.
    fn delete_prefix(&self, prefix: &str) -> Result<()>;

    /// The objects under `prefix/` (at any depth), sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>>;

    /// The longest a worker waiting on others (units held, a node's end, a manifest) goes
    /// between looks: each look lists or reads objects. A local folder answers from the
    /// file system's cache; object storage bills each request and takes tens of milliseconds.
    fn max_poll(&self) -> std::time::Duration {
        std::time::Duration::from_millis(250)
    }

    /// Whether [`Store::list_range`] lists only the range (else it filters a whole listing,
    /// and one listing of many keys costs what one of a few does).
    fn lists_by_range(&self) -> bool {
        false
    }

    /// The objects under `prefix` whose keys sort after `after` and up to `last` (included), in
    /// key order. Object storage lists from `after` and stops past `last`.
    fn list_range(&self, prefix: &str, after: &str, last: &str) -> Result<Vec<Listed>> {
        Ok(self.list(prefix)?.into_iter().filter(|l| l.key.as_str() > after && l.key.as_str() <= last).collect())
    }

    /// Whether listings give each object's ETag ([`Listed::e_tag`]), so that a listing tells
    /// whether an object is still the one written with a known version.
    fn lists_e_tags(&self) -> bool {
        false
    }

    fn size(&self, key: &str) -> Result<Option<u64>>;

    /// When the object was last written, in Unix ms by the store's clock (an object's
    /// Last-Modified, to the second on S3; a file's modification time, set by the kernel or the
    /// file server): how a worker measures its clock against the store's.
    fn written_at_ms(&self, key: &str) -> Result<Option<i64>>;

    /// A local file to write the object `key` through; [`Store::finish_file`] makes it the
    /// object. A local store writes in place; object storage writes a scratch file and uploads.
    fn file_for_writing(&self, key: &str) -> Result<PathBuf>;

    /// Makes the file from [`Store::file_for_writing`] the object `key`, durably.
    fn finish_file(&self, key: &str, file: &Path) -> Result<()>;

    /// A local path holding the object, downloading it if need be (files operators read:
    /// checkpoints).
    fn local_copy(&self, key: &str) -> Result<PathBuf>;

    /// How DataFusion names the object (a path or a URL), once [`Store::register`] was called
    /// on the session.
    fn url(&self, key: &str) -> String;

    /// Makes the store readable by `ctx` (object storage: its URL scheme and bucket).
    fn register(&self, ctx: &SessionContext);

    /// The object's path, when the store is a local folder (hashing by mmap, hard links).
    fn local_path(&self, key: &str) -> Option<PathBuf>;

    /// The store, for messages: a folder or a URL.
    fn describe(&self) -> String;
}

/// Opens the store at `location`: a URL (`s3://bucket/prefix`, `gs://…`, `az://…`,
/// `file:///path`) or a local folder (relative to the current folder). A malformed URL is
/// refused (see [`Location::parse`]).
pub fn open(location: &str) -> Result<Arc<dyn Store>> {
    match Location::parse(location, Path::new(""))? {
        Location::Folder(path) => Ok(Arc::new(LocalStore::new(path))),
        Location::Url(url) => Ok(Arc::new(ObjectBackend::open(&url)?)),
    }
}

/// Whether `location` names object storage (not a local folder, nor a malformed URL).
pub fn is_url(location: &str) -> bool {
    matches!(Location::parse(location, Path::new("")), Ok(Location::Url(_)))
}
