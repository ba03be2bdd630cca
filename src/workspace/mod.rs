//! The workspace: where node outputs, run records and locks live.
//!
//! ```text
//! WORKSPACE/
//!   unoflow-workspace.json       marks the folder as a workspace (a run refuses other folders)
//!   lock                         held (flock) by the one `unoflow run` at work here
//!   index.json                   node name → its last fingerprint and what made it
//!   nodes/FP/node.json           what the fingerprint FP is made of
//!   nodes/FP/parts/uNNNNNN.parquet           rows of unit NNNNNN
//!   nodes/FP/parts/uNNNNNN.errors.parquet    failed rows of unit NNNNNN (if any)
//!   nodes/FP/commits/uNNNNNN.json            the unit's commit record (sizes, blake3, rows)
//!   nodes/FP/manifest.json       written last: the node is complete
//!   runs/RUN_ID.json             one record per `unoflow run`
//!   tmp/                         files being written; emptied when a run starts
//! ```
//!
//! Outputs are addressed by fingerprint, never by node name, so renaming a node keeps its
//! output. A unit is committed by writing its files under `tmp/`, fsyncing, renaming them into
//! `parts/`, and only then writing its commit record the same way: a run killed at any moment
//! leaves whole commits or none, and a rerun redoes exactly the units without a valid record.

mod index;
mod lock;
mod parts;
mod runs;

use std::path::{Path, PathBuf};

pub use index::{Index, IndexEntry};
pub use lock::RunLock;
pub use parts::{Commit, FileDigest, Manifest, PartWriter, error_schema, read_commits, read_file, verify_file, write_commit};
pub use runs::list as list_runs;
pub use runs::{NodeRecord, RunList, RunRecord};

use crate::error::{Error, IoContext, Result};

/// A workspace folder.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

/// The file that marks a folder as a unoflow workspace. A run refuses a folder that holds
/// files but not this one: the workspace's own files (`tmp/` is emptied at every run) must never
/// be mistaken for a user's.
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
        for dir in ["nodes", "runs", "tmp"] {
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of the node output with fingerprint `fp`.
    pub fn node_dir(&self, fp: &str) -> PathBuf {
        self.root.join("nodes").join(fp)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Files operators make that outlive a run (training checkpoints), one folder per node
    /// fingerprint.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Caches operators keep across runs (the VLM response cache), keyed by content.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// The complete output of `fp`, if there is one. A manifest that cannot be parsed is
    /// treated as absent (and recomputed), with the reason returned for the user.
    pub fn manifest(&self, fp: &str) -> std::result::Result<Option<Manifest>, String> {
        let path = self.node_dir(fp).join("manifest.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: unreadable manifest ({e})", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Removes everything in `tmp/` (left by a killed run). Only a run holding the lock calls it.
    pub fn clear_tmp(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        std::fs::create_dir_all(&tmp).at(&tmp)
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
        "note": "unoflow's workspace: node outputs, run records and scratch space; unoflow deletes only its own files here",
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
