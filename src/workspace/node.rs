//! One node output in the workspace: the files, commit records and manifest stored under a
//! fingerprint, and the protocol that commits them.
//!
//! ```text
//! nodes/FP/node.json                          what FP is made of
//! nodes/FP/attempts/uNNNNNN-ATTEMPT/pKKK.parquet   rows written by one attempt at unit NNNNNN
//! nodes/FP/attempts/uNNNNNN-ATTEMPT/errors.parquet its failed rows
//! nodes/FP/commits/uNNNNNN.json               the unit's commit record: which attempt's files
//! nodes/FP/manifest.json                      every unit committed: the node is complete
//! ```
//!
//! An attempt writes its files in its own folder, makes them durable, then creates the unit's
//! commit record if it does not exist yet (a hard link: atomic, and refused when the record is
//! there). The first commit wins; a later attempt at the same unit (a run that was thought dead,
//! a duplicate) finds the record and discards its files. Readers only read files a commit names,
//! never a folder listing, so a half-written or losing attempt is never seen.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};

use super::part_writer::PartWriter;
use super::records::{Commit, FORMAT, FileDigest, FormatOnly, Manifest};
use super::{sync_dir, write_atomic};
use crate::error::{Error, IoContext, Result};

/// The output of one fingerprint.
#[derive(Debug, Clone)]
pub struct NodeStore {
    dir: PathBuf,
    fingerprint: String,
}

/// How a commit ended.
#[derive(Debug)]
pub enum Committed {
    /// This attempt's record is the unit's.
    Won(Commit),
    /// Another attempt committed the unit first; its record is returned, this attempt's files
    /// were discarded.
    Lost(Commit),
}

impl Committed {
    /// The unit's commit, whoever made it.
    pub fn into_commit(self) -> Commit {
        match self {
            Self::Won(c) | Self::Lost(c) => c,
        }
    }
}

impl NodeStore {
    pub(super) fn new(dir: PathBuf, fingerprint: &str) -> Self {
        Self { dir, fingerprint: fingerprint.to_string() }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    fn commit_path(&self, unit: usize) -> PathBuf {
        self.dir.join("commits").join(format!("u{unit:06}.json"))
    }

    /// The complete output, if there is one. A manifest that cannot be read, or was written in
    /// another format, is an error saying so (the node is then recomputed).
    pub fn manifest(&self) -> std::result::Result<Option<Manifest>, String> {
        let path = self.manifest_path();
        match std::fs::read(&path) {
            Ok(bytes) => parse_record(&bytes).map(Some).map_err(|why| format!("{}: {why}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Checks that a committed file is whole: its size, then its blake3 digest. The error says
    /// what is wrong with it.
    pub fn verify(&self, digest: &FileDigest) -> std::result::Result<(), String> {
        let path = self.path_of(digest);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() != digest.bytes {
            return Err(format!("{}: {} bytes, but {} were committed", path.display(), meta.len(), digest.bytes));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if hasher.finalize().to_hex().as_str() != digest.blake3 {
            return Err(format!("{}: checksum mismatch (the file changed after it was committed)", path.display()));
        }
        Ok(())
    }

    /// The units of `manifest` whose files are damaged, with why.
    pub fn damaged_units(&self, manifest: &Manifest) -> Vec<(usize, String)> {
        manifest.commits.iter().filter_map(|c| c.files().find_map(|f| self.verify(f).err()).map(|why| (c.unit, why))).collect()
    }

    /// Where a committed file is, for readers that open it themselves (DataFusion).
    pub fn path_of(&self, digest: &FileDigest) -> PathBuf {
        self.dir.join(&digest.name)
    }

    /// Makes the node incomplete again (its manifest goes; its commits stay).
    pub fn remove_manifest(&self) -> Result<()> {
        remove_file_if_present(&self.manifest_path())
    }

    /// Forgets the commits of `units` (their files become garbage), and the manifest.
    pub fn remove_commits(&self, units: &[usize]) -> Result<()> {
        self.remove_manifest()?;
        for &unit in units {
            remove_file_if_present(&self.commit_path(unit))?;
        }
        Ok(())
    }

    /// Removes the whole output (for `--force`).
    pub fn clear(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&self.dir, e)),
            _ => Ok(()),
        }
    }

    /// Prepares the folder of a node about to be computed, recording what it is made of.
    pub fn begin(&self, node_json: &[u8]) -> Result<()> {
        for sub in ["commits", "attempts"] {
            let dir = self.dir.join(sub);
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        write_atomic(&self.dir.join("node.json"), node_json)
    }

    /// The commit records present, by unit, and the records that cannot be read (with why).
    pub fn commits(&self) -> (Vec<Commit>, Vec<(usize, String)>) {
        let (mut commits, mut damaged) = (Vec::new(), Vec::new());
        let Ok(entries) = std::fs::read_dir(self.dir.join("commits")) else { return (commits, damaged) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(unit) = name.strip_prefix('u').and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            match std::fs::read(entry.path()).map_err(|e| e.to_string()).and_then(|b| parse_record::<Commit>(&b)) {
                Ok(commit) if commit.unit == unit => commits.push(commit),
                Ok(commit) => damaged.push((unit, format!("{name} names unit {}", commit.unit))),
                Err(why) => damaged.push((unit, why)),
            }
        }
        commits.sort_by_key(|c| c.unit);
        (commits, damaged)
    }

    /// A new attempt at `unit`, with a folder of its own.
    pub fn attempt(&self, unit: usize) -> Attempt {
        static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
        let n = ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = blake3::hash(format!("{}-{nanos}-{n}-{}", std::process::id(), hostname()).as_bytes()).to_hex()[..12].to_string();
        let folder = format!("attempts/u{unit:06}-{id}");
        Attempt { store: self.clone(), unit, id, folder }
    }

    /// Creates the unit's commit record unless one exists: the first commit wins.
    pub fn commit(&self, attempt: &Attempt, commit: Commit) -> Result<Committed> {
        let path = self.commit_path(commit.unit);
        let dir = self.dir.join("commits");
        std::fs::create_dir_all(&dir).at(&dir)?;
        let staged = dir.join(format!(".u{:06}.{}.json", commit.unit, attempt.id));
        let bytes = serde_json::to_vec_pretty(&commit).map_err(|e| Error::Internal(e.to_string()))?;
        let written = File::create(&staged).and_then(|mut f| {
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        });
        written.at(&staged)?;
        // A hard link is created atomically and refused when the name exists.
        let linked = std::fs::hard_link(&staged, &path);
        let _ = std::fs::remove_file(&staged);
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(Committed::Won(commit))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                attempt.discard();
                let existing = std::fs::read(&path).at(&path)?;
                let theirs = parse_record(&existing).map_err(|why| Error::Workspace { path: path.clone(), message: why })?;
                Ok(Committed::Lost(theirs))
            }
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Records the node as complete.
    pub fn finish(&self, manifest: &Manifest) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&self.manifest_path(), &bytes)
    }

    /// Reads rows `offset..offset+len` (all rows if `None`) of a committed file, which the caller
    /// has verified.
    pub fn read(&self, digest: &FileDigest, slice: Option<(usize, usize)>) -> Result<Vec<RecordBatch>> {
        let path = self.path_of(digest);
        let file = File::open(&path).at(&path)?;
        let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        if let Some((offset, len)) = slice {
            builder = builder.with_row_selection(RowSelection::from(vec![RowSelector::skip(offset), RowSelector::select(len)]));
        }
        let reader = builder.with_batch_size(8192).build()?;
        Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Removes the attempt folders no commit record names (attempts that lost, failed or were
    /// killed). Only safe while no one else writes this node (a run holding the workspace).
    pub fn collect_garbage(&self) -> Result<usize> {
        let (commits, _) = self.commits();
        let keep: std::collections::BTreeSet<String> = commits.iter().map(|c| format!("u{:06}-{}", c.unit, c.attempt)).collect();
        let dir = self.dir.join("attempts");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(0) };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                std::fs::remove_dir_all(entry.path()).at(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// One attempt at a unit: the folder its files go to.
#[derive(Debug, Clone)]
pub struct Attempt {
    store: NodeStore,
    unit: usize,
    id: String,
    /// Relative to the node folder.
    folder: String,
}

impl Attempt {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn unit(&self) -> usize {
        self.unit
    }

    /// A writer for part `part` of the unit's rows.
    pub fn part_writer(&self, part: usize, schema: SchemaRef) -> Result<PartWriter> {
        let name = format!("{}/p{part:03}.parquet", self.folder);
        PartWriter::create(self.store.dir.join(&name), name, schema)
    }

    /// A writer for the unit's failed rows.
    pub fn errors_writer(&self, schema: SchemaRef) -> Result<PartWriter> {
        let name = format!("{}/errors.parquet", self.folder);
        PartWriter::create(self.store.dir.join(&name), name, schema)
    }

    /// A commit record naming `rows` and `errors` as this attempt's output for its unit.
    pub fn record(&self, key: &str, input_digest: &str, rows: Vec<FileDigest>, errors: Option<FileDigest>, seconds: f64) -> Commit {
        Commit {
            format: FORMAT,
            unit: self.unit,
            key: key.to_string(),
            input_digest: input_digest.to_string(),
            attempt: self.id.clone(),
            rows,
            errors,
            seconds,
        }
    }

    /// Removes the attempt's files (it lost, or failed).
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(self.store.dir.join(&self.folder));
    }
}

/// Parses a commit record or manifest of this format.
fn parse_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    match serde_json::from_slice::<FormatOnly>(bytes) {
        Ok(FormatOnly { format }) if format != FORMAT => {
            Err(format!("written by another version of unoflow (format {format}, this one reads {FORMAT}); it will be recomputed"))
        }
        Ok(_) => serde_json::from_slice(bytes).map_err(|e| format!("damaged ({e})")),
        Err(e) => Err(format!("damaged ({e})")),
    }
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// This host's name, for attempt ids (two hosts may share a workspace).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
