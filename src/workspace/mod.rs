//! The workspace: where node outputs, run records and locks live.
//!
//! ```text
//! WORKSPACE/
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
pub use runs::{NodeRecord, RunRecord};

use crate::error::{Error, IoContext, Result};

/// A workspace folder.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// Opens (creating if needed) the workspace at `root`.
    pub fn create(root: &Path) -> Result<Self> {
        for dir in ["nodes", "runs", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).at(root.join(dir))?;
        }
        Ok(Self { root: root.to_path_buf() })
    }

    /// Opens an existing workspace for reading; it is an error if there is none.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("nodes").is_dir() {
            return Err(Error::Usage(format!(
                "no unoflow workspace at {}: run the DAG first (`unoflow run DAG`), or pass --workspace",
                root.display()
            )));
        }
        Ok(Self { root: root.to_path_buf() })
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

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| Error::Internal(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).at(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let mut f = std::fs::File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
