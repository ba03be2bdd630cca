//! The workspace: where node outputs, run records and locks live. This module owns the layout:
//! no other module builds a path into a workspace.
//!
//! ```text
//! WORKSPACE/
//!   unoflow-workspace.json   marks the folder as a workspace (a run refuses other folders)
//!   lock                     held (flock) by the one `unoflow run` at work here
//!   index.json               node name → its last fingerprint, what made it, table or view
//!   nodes/FP/…               the output of fingerprint FP (see `NodeStore`)
//!   tables/NAME              the current output of node NAME for other engines (see `tables`)
//!   runs/RUN_ID.json         one record per `unoflow run`
//!   artifacts/FP/            files operators keep for node FP (training checkpoints)
//!   cache/                   caches operators keep across runs (VLM answers)
//! ```
//!
//! Outputs are addressed by fingerprint, never by node name, so renaming a node keeps its
//! output. Each unit is committed by its own record once its files are durable: a run killed
//! at any moment leaves whole commits or none, and a rerun redoes exactly the units without a
//! valid record.

mod index;
mod lock;
mod node;
mod part_writer;
mod records;
mod runs;
mod tables;

use std::path::{Path, PathBuf};

pub use index::{Index, IndexEntry, Storage};
pub use lock::RunLock;
pub(crate) use node::hostname;
pub use node::{Attempt, Committed, NodeStore};
pub use part_writer::PartWriter;
pub use records::{Commit, FileDigest, Manifest, error_schema};
pub use runs::{NodeRecord, RunList, RunRecord};

use crate::error::{Error, IoContext, Result};

/// A workspace folder.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

/// The file that marks a folder as a unoflow workspace. A run refuses a folder that holds
/// files but not this one: unoflow deletes files in its workspace (losing attempts, replaced
/// outputs), which must never be a user's.
pub const MARKER: &str = "unoflow-workspace.json";

impl Workspace {
    /// Opens the workspace at `root` for a run, creating it if needed. A folder that exists, is
    /// not empty and is not a workspace is refused (exit 2): unoflow never writes into, or
    /// clears, a folder of the user's.
    pub fn create(root: &Path) -> Result<Self> {
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
                    write_marker(root)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(root).at(root)?;
                write_marker(root)?;
            }
            Err(e) => return Err(Error::io(root, e)),
        }
        for dir in ["nodes", "runs"] {
            std::fs::create_dir_all(root.join(dir)).at(root.join(dir))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// Opens an existing workspace for reading; it is an error if there is none. Writes nothing.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_existing(root)?.ok_or_else(|| {
            Error::Usage(format!("no unoflow workspace at {}: run the DAG first (`unoflow run DAG`), or pass --workspace", root.display()))
        })
    }

    /// The workspace at `root` if there is one (`None` if the folder does not exist yet); a
    /// folder that is not a workspace is an error. Writes nothing.
    pub fn open_existing(root: &Path) -> Result<Option<Self>> {
        if !root.exists() {
            return Ok(None);
        }
        if root.join(MARKER).is_file() || is_legacy(root) {
            return Ok(Some(Self { root: root.to_path_buf() }));
        }
        if foreign_entries(root)?.is_empty() {
            return Ok(None);
        }
        Err(Error::Usage(format!("{} is not a unoflow workspace (it has no {MARKER})", root.display())))
    }

    /// The folder, for messages.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The output stored under fingerprint `fp`.
    pub fn node(&self, fp: &str) -> NodeStore {
        NodeStore::new(self.root.join("nodes").join(fp), fp)
    }

    /// Takes the run lock: one `unoflow run` works in a workspace at a time.
    pub fn lock(&self, wait: bool) -> Result<RunLock> {
        RunLock::acquire(&self.root, wait)
    }

    /// Whether a run holds the workspace now. Reads only.
    pub fn run_is_live(&self) -> bool {
        RunLock::is_held(&self.root)
    }

    /// The index: each node name's last fingerprint. A missing index is empty; a damaged one is
    /// an error naming the file.
    pub fn index(&self) -> Result<Index> {
        Index::load(&self.root)
    }

    pub fn save_index(&self, index: &Index) -> Result<()> {
        index.save(&self.root)
    }

    /// Saves (or updates) a run record.
    pub fn save_run(&self, record: &RunRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&self.root.join("runs").join(format!("{}.json", record.id)), &bytes)
    }

    /// Every run record, oldest first, and the files that are not readable records.
    pub fn runs(&self) -> Result<RunList> {
        let dir = self.root.join("runs");
        match runs::list(&dir) {
            Ok(list) => Ok(list),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RunList::default()),
            Err(e) => Err(Error::io(dir, e)),
        }
    }

    /// The folder where node `fp`'s operator keeps files that outlive a run (checkpoints).
    pub fn artifacts_dir(&self, fp: &str) -> PathBuf {
        self.root.join("artifacts").join(fp)
    }

    /// Caches operators keep across runs (the VLM response cache), keyed by content.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Makes node `name`'s output readable by other engines under `tables/` (see `tables`).
    pub fn publish_table(&self, name: &str, store: &NodeStore, manifest: &Manifest) -> Result<()> {
        tables::publish(&self.root.join("tables"), name, store, manifest)
    }
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

fn write_marker(root: &Path) -> Result<()> {
    let text = serde_json::json!({
        "unoflow_workspace": 1,
        "created_by": format!("unoflow {}", env!("CARGO_PKG_VERSION")),
        "note": "unoflow's workspace: node outputs, run records, artifacts and caches; unoflow deletes only its own files here",
    });
    write_atomic(&root.join(MARKER), text.to_string().as_bytes())
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
