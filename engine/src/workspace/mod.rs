//! The workspace: where node outputs, run records and locks live. This module owns the layout:
//! no other module builds a path into a workspace.
//!
//! ```text
//! WORKSPACE/                 a local folder, or s3://bucket/prefix (gs://, az://)
//!   unoflow-workspace.json   marks the folder as a workspace (a run refuses other folders)
//!   lock                     held (flock) by the one `unoflow run` at work in a folder
//!   index.json               node name → its last fingerprint, what made it, table or view
//!   nodes/FP/…               the output of fingerprint FP (see `NodeStore`)
//!   leases/FP/uNNNNNN.json   who computes a unit now, until when (see `lease`)
//!   workers/ID.json          each worker's heartbeat
//!   tables/NAME              the current output of node NAME for other engines (see `tables`)
//!   runs/RUN_ID.json         one record per `unoflow run`
//!   artifacts/FP/            files operators keep for node FP (training checkpoints)
//!   cache/                   caches operators keep across runs (VLM answers), and
//!                            `unoflow serve`'s thumbnails
//!   labels/NODE.jsonl        reviewers' accept / reject labels of NODE's rows (see `labels`)
//! ```
//!
//! The bytes are in a [`store::Store`]: a local folder, or object storage through the
//! `object_store` crate; everything above is written through it.
//!
//! Outputs are addressed by fingerprint, never by node name, so renaming a node keeps its
//! output. Each unit is committed by its own record once its files are durable: a run killed
//! at any moment leaves whole commits or none, and a rerun redoes exactly the units without a
//! valid record.

mod clock;
mod index;
mod labels;
mod lease;
mod location;
mod lock;
mod node;
mod part_writer;
mod records;
mod runs;
pub mod store;
mod tables;
mod unit_keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use clock::ClockSkew;
pub use index::{DagRef, Index, IndexEntry, Storage};
pub use labels::{Label, Labels, MAX_ROW_ID, Verdict};
pub use lease::{GangRecord, Lease, LeaseOutcome, Leases, WorkerBeat, now_ms};
pub use location::Location;
pub use lock::RunLock;
pub(crate) use node::hostname;
pub use node::{Attempt, Committed, Garbage, NodeStore};
pub use part_writer::PartWriter;
pub use records::{Commit, CommitSummary, FileDigest, Manifest, SummarizedCommit, WatchReport, error_schema};
pub use runs::{NodeRecord, PeerSpan, RunList, RunRecord};
use store::{LocalStore, Store};

use crate::error::{Error, IoContext, Result};

/// How a process holds a workspace folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One `unoflow run` alone (waiting for another to finish, or not).
    Alone { wait: bool },
    /// One of many workers.
    Shared,
}

/// A workspace: a local folder or a prefix of a bucket.
#[derive(Debug, Clone)]
pub struct Workspace {
    location: Location,
    store: Arc<dyn Store>,
}

/// The file that marks a folder as a unoflow workspace. A run refuses a folder that holds
/// files but not this one: unoflow deletes files in its workspace (losing attempts, replaced
/// outputs), which must never be a user's.
pub const MARKER: &str = "unoflow-workspace.json";

/// Where object stores are probed for atomic create (see `store::ObjectBackend::probe`).
const PROBES: &str = ".unoflow-probe/";

impl Workspace {
    /// Opens the workspace at `location` for a run, creating it if needed. A folder (or bucket
    /// prefix) that holds anything and is not a workspace is refused (exit 2): unoflow never
    /// writes into, or clears, a folder of the user's. Object storage is asked first for a
    /// listing (a missing bucket or refused credentials are named, exit 2), then probed for
    /// atomic create-if-absent, without which commits could not be exactly once.
    pub fn create(location: &Location) -> Result<Self> {
        let ws = match location {
            Location::Folder(root) => {
                create_folder(root)?;
                Self { location: location.clone(), store: Arc::new(LocalStore::new(root.clone())) }
            }
            Location::Url(url) => {
                let backend = Arc::new(store::ObjectBackend::open(url)?);
                backend.check_access()?;
                let marked = backend.size(MARKER)?.is_some();
                if !marked {
                    // Other workers' probes are not foreign.
                    let foreign = backend.first_keys(5, PROBES)?;
                    // Another worker may have made the workspace meanwhile.
                    if !foreign.is_empty() && backend.size(MARKER)?.is_none() {
                        return Err(Error::Usage(format!(
                            "{url} is not a unoflow workspace and holds objects unoflow did not write ({}); \
                             unoflow never writes among your objects: choose an empty prefix",
                            foreign.join(", ")
                        )));
                    }
                }
                backend.probe()?;
                if !marked {
                    backend.create(MARKER, &marker_text())?;
                }
                Self { location: location.clone(), store: backend }
            }
        };
        Ok(ws)
    }

    /// Opens an existing workspace for reading; it is an error if there is none. Writes nothing.
    pub fn open(location: &Location) -> Result<Self> {
        Self::open_existing(location)?.ok_or_else(|| {
            Error::Usage(format!("no unoflow workspace at {location}: run the DAG first (`unoflow run DAG`), or pass --workspace"))
        })
    }

    /// The workspace at `location` if there is one (`None` if nothing is there yet); a folder
    /// that is not a workspace is an error. Writes nothing.
    pub fn open_existing(location: &Location) -> Result<Option<Self>> {
        match location {
            Location::Folder(root) => {
                if !root.exists() {
                    return Ok(None);
                }
                if root.join(MARKER).is_file() || is_legacy(root) {
                    return Ok(Some(Self { location: location.clone(), store: Arc::new(LocalStore::new(root.clone())) }));
                }
                if foreign_entries(root)?.is_empty() {
                    return Ok(None);
                }
                Err(Error::Usage(format!("{} is not a unoflow workspace (it has no {MARKER})", root.display())))
            }
            Location::Url(url) => {
                let backend = store::ObjectBackend::open(url)?;
                backend.check_access()?;
                let ws = Self { location: location.clone(), store: Arc::new(backend) };
                Ok(ws.store.size(MARKER)?.is_some().then_some(ws))
            }
        }
    }

    /// Where the workspace is, for messages.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The store the workspace's bytes live in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The output stored under fingerprint `fp`.
    pub fn node(&self, fp: &str) -> NodeStore {
        NodeStore::new(Arc::clone(&self.store), fp)
    }

    /// Leases, worker heartbeats: how workers share the workspace's units.
    pub fn leases(&self) -> Leases {
        Leases::new(Arc::clone(&self.store))
    }

    /// Takes the run lock of a local workspace: one `unoflow run` works in a folder at a time
    /// (or any number of workers, which share it). Object storage has none: runs and workers
    /// share it through leases.
    pub fn lock(&self, mode: LockMode) -> Result<Option<RunLock>> {
        match (&self.location, mode) {
            (Location::Folder(root), LockMode::Alone { wait }) => RunLock::acquire(root, wait).map(Some),
            (Location::Folder(root), LockMode::Shared) => RunLock::share(root).map(Some),
            (Location::Url(_), _) => Ok(None),
        }
    }

    /// Whether a run holds the workspace now (a local folder's lock, or live workers' leases).
    /// Reads only.
    pub fn run_is_live(&self) -> bool {
        match &self.location {
            Location::Folder(root) if RunLock::is_held(root) => true,
            _ => self.leases().live_workers().is_ok_and(|w| !w.is_empty()),
        }
    }

    /// The index: each node name's last fingerprint. A missing index is empty; a damaged one is
    /// an error naming the file.
    pub fn index(&self) -> Result<Index> {
        Index::load(self.store.as_ref())
    }

    pub fn save_index(&self, index: &Index) -> Result<()> {
        index.save(self.store.as_ref())
    }

    /// Saves (or updates) a run record.
    pub fn save_run(&self, record: &RunRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
        self.store.put(&format!("runs/{}.json", record.id), &bytes)
    }

    /// Every run record, oldest first, and the files that are not readable records.
    pub fn runs(&self) -> Result<RunList> {
        runs::list(self.store.as_ref())
    }

    /// The local folder where node `fp`'s operator keeps files that outlive a run (checkpoints):
    /// in the workspace folder, or a local mirror of `artifacts/FP/` for object storage (filled
    /// from the store before the node runs, sent back with [`Workspace::save_artifacts`]).
    pub fn artifacts_dir(&self, fp: &str) -> Result<PathBuf> {
        match &self.location {
            Location::Folder(root) => Ok(root.join("artifacts").join(fp)),
            Location::Url(_) => {
                let local = self.mirror().join("artifacts").join(fp);
                for object in self.store.list(&format!("artifacts/{fp}"))? {
                    let path = self.mirror().join(&object.key);
                    if path.metadata().is_ok_and(|m| m.len() == object.size) {
                        continue;
                    }
                    let (bytes, _) = self.store.get(&object.key)?.unwrap_or_default();
                    write_atomic(&path, &bytes)?;
                }
                std::fs::create_dir_all(&local).at(&local)?;
                Ok(local)
            }
        }
    }

    /// Sends node `fp`'s artifacts from the local mirror to object storage (nothing to do for a
    /// folder).
    pub fn save_artifacts(&self, fp: &str) -> Result<()> {
        let Location::Url(_) = &self.location else { return Ok(()) };
        let local = self.mirror().join("artifacts").join(fp);
        // Most operators keep no files: nothing to ask the store.
        if std::fs::read_dir(&local).map_or(true, |mut d| d.next().is_none()) {
            return Ok(());
        }
        let existing: std::collections::BTreeMap<String, u64> =
            self.store.list(&format!("artifacts/{fp}"))?.into_iter().map(|l| (l.key, l.size)).collect();
        for (path, relative) in crate::ops::read::files_under(&local, &|_| true).unwrap_or_default() {
            let key = format!("artifacts/{fp}/{relative}");
            let size = std::fs::metadata(&path).at(&path)?.len();
            if existing.get(&key) != Some(&size) {
                let bytes = std::fs::read(&path).at(&path)?;
                self.store.put(&key, &bytes)?;
            }
        }
        Ok(())
    }

    /// Caches operators keep across runs (the VLM response cache), keyed by content. Local to
    /// this host for object storage.
    pub fn cache_dir(&self) -> PathBuf {
        match &self.location {
            Location::Folder(root) => root.join("cache"),
            Location::Url(_) => self.mirror().join("cache"),
        }
    }

    /// Where `unoflow serve` keeps the thumbnails it makes, by image digest (local to this
    /// host for object storage).
    pub fn thumbnail_dir(&self) -> PathBuf {
        self.cache_dir().join("thumbnails")
    }

    /// The reviewers' labels.
    pub fn labels(&self) -> Labels {
        Labels::new(Arc::clone(&self.store))
    }

    /// The local mirror of an object-storage workspace (answers of VLMs, fetched artifacts,
    /// thumbnails), in this host's cache folder ([`crate::host_cache::root`]).
    fn mirror(&self) -> PathBuf {
        // Keyed by the URL and the endpoint it is reached at: two S3-compatible servers (a test
        // server, MinIO beside AWS) can hold the same bucket name with other contents.
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
        let id = blake3::hash(format!("{}\n{endpoint}", self.location).as_bytes()).to_hex()[..16].to_string();
        crate::host_cache::root().join("workspaces").join(id)
    }

    /// The local path of a file a row names relative to the workspace (`artifacts/…`), fetched
    /// from object storage when needed.
    pub fn local_file(&self, reference: &str) -> Result<PathBuf> {
        let path = Path::new(reference);
        if path.is_absolute() {
            return Ok(path.to_path_buf());
        }
        match &self.location {
            Location::Folder(root) => Ok(root.join(path)),
            Location::Url(_) => {
                let local = self.mirror().join(path);
                if !local.is_file() {
                    let (bytes, _) = self.store.get(reference)?.ok_or_else(|| Error::Workspace {
                        path: path.to_path_buf(),
                        message: format!("not in the workspace {}", self.location),
                    })?;
                    write_atomic(&local, &bytes)?;
                }
                Ok(local)
            }
        }
    }

    /// How a row names a local file an operator made (relative to the workspace when it is in
    /// it or in its mirror).
    pub fn reference(&self, local: &Path) -> String {
        let root = match &self.location {
            Location::Folder(root) => root.clone(),
            Location::Url(_) => self.mirror(),
        };
        local.strip_prefix(&root).unwrap_or(local).to_string_lossy().into_owned()
    }

    /// Makes node `name`'s output readable by other engines under `tables/` (see `tables`).
    pub fn publish_table(&self, name: &str, store: &NodeStore, manifest: &Manifest) -> Result<()> {
        tables::publish(self.store.as_ref(), name, store, manifest)
    }

    /// Makes view `name` readable by other engines: `tables/NAME.sql`, `script`'s statements.
    pub fn publish_view(&self, name: &str, script: &str) -> Result<()> {
        tables::publish_view(self.store.as_ref(), name, script)
    }
}

/// The operators' view of the workspace's files (checkpoints named in rows).
impl unoflow_api::WorkspaceFiles for Workspace {
    fn local(&self, reference: &str) -> std::io::Result<PathBuf> {
        self.local_file(reference).map_err(std::io::Error::other)
    }

    fn reference(&self, local: &Path) -> String {
        Workspace::reference(self, local)
    }
}

/// Makes a workspace folder (or checks an existing one is unoflow's).
fn create_folder(root: &Path) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::Usage(format!("workspace {} is a file, not a folder: choose another --workspace", root.display())));
        }
        Ok(_) => {
            if !root.join(MARKER).is_file() {
                let foreign = foreign_entries(root)?;
                // Another run may have made the workspace meanwhile (the marker is written
                // before anything else).
                if !foreign.is_empty() && !root.join(MARKER).is_file() {
                    return Err(Error::Usage(format!(
                        "{} is not a unoflow workspace and holds files unoflow did not write ({}); \
                         unoflow never writes into a folder of yours: choose a new or empty folder as the workspace",
                        root.display(),
                        foreign.join(", ")
                    )));
                }
                write_atomic(&root.join(MARKER), &marker_text())?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root).at(root)?;
            write_atomic(&root.join(MARKER), &marker_text())?;
        }
        Err(e) => return Err(Error::io(root, e)),
    }
    Ok(())
}

/// A workspace made before the marker existed: its lock file and node folder are unoflow's.
fn is_legacy(root: &Path) -> bool {
    root.join("nodes").is_dir() && root.join("lock").is_file()
}

/// The entries of `root` that make it someone else's folder (up to five, for the message); an
/// empty folder and one made by an earlier unoflow have none.
fn foreign_entries(root: &Path) -> Result<Vec<String>> {
    if is_legacy(root) {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).at(root)? {
        let name = entry.at(root)?.file_name().to_string_lossy().into_owned();
        // The marker, and a marker being written by another run starting at the same time.
        if name == MARKER || name.starts_with(&format!(".{MARKER}.")) {
            continue;
        }
        names.push(name);
        if names.len() == 5 {
            break;
        }
    }
    names.sort();
    Ok(names)
}

fn marker_text() -> Vec<u8> {
    serde_json::json!({
        "unoflow_workspace": 1,
        "created_by": format!("unoflow {}", env!("CARGO_PKG_VERSION")),
        "note": "unoflow's workspace: node outputs, run records, artifacts and caches; unoflow deletes only its own files here",
    })
    .to_string()
    .into_bytes()
}

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| Error::Internal(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).at(dir)?;
    // A name of its own per writer: two processes may write the same file at once (two runs
    // making one workspace), and each rename must find its own temporary file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
