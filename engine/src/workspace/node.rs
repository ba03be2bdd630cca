//! One node output in the workspace: the files, commit records and manifest stored under a
//! fingerprint, and the protocol that commits them.
//!
//! ```text
//! nodes/FP/node.json                          what FP is made of
//! nodes/FP/attempts/uNNNNNN-ATTEMPT/pKKK.parquet   rows written by one attempt at unit NNNNNN
//! nodes/FP/attempts/uNNNNNN-ATTEMPT/errors.parquet its failed rows
//! nodes/FP/commits/uNNNNNN.json               the unit's commit record: which attempt's files
//! nodes/FP/summaries/WORKER.json              the commits one worker won, with their ETags
//!                                             (object storage; read instead of the records)
//! nodes/FP/watch.json                         what the node's watcher last saw: units unclaimed
//!                                             (offered to idle workers), whether complete
//! nodes/FP/manifest.json                      every unit committed: the node is complete
//! ```
//!
//! An attempt writes its files in its own folder, makes them durable, then creates the unit's
//! commit record if it does not exist yet (atomic, and refused when the record is there: a hard
//! link in a folder, a conditional put in object storage). The first commit wins; a later attempt at the same unit (a run that was thought dead,
//! a duplicate) finds the record and discards its files. Readers only read files a commit names,
//! never a folder listing, so a half-written or losing attempt is never seen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};

use super::part_writer::PartWriter;
use super::records::{Commit, CommitSummary, FORMAT, FileDigest, FormatOnly, Manifest, WatchReport};
use super::store::{Listed, Store, Version};
use super::unit_keys::{listed_units, unit_key, unit_of};
use crate::error::{Error, IoContext, Result};

/// The output of one fingerprint.
#[derive(Debug, Clone)]
pub struct NodeStore {
    store: Arc<dyn Store>,
    /// `nodes/FP`.
    prefix: String,
    fingerprint: String,
}

/// How a commit ended.
#[derive(Debug)]
pub enum Committed {
    /// This attempt's record is the unit's; created at this version.
    Won(Commit, Version),
    /// Another attempt committed the unit first; its record is returned, this attempt's files
    /// were discarded.
    Lost(Commit),
}

impl Committed {
    /// The unit's commit, whoever made it.
    pub fn into_commit(self) -> Commit {
        match self {
            Self::Won(c, _) | Self::Lost(c) => c,
        }
    }
}

/// Which attempt folders [`NodeStore::collect_garbage`] may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// Every folder no commit names: nobody else writes this node (a run holding the
    /// workspace's lock).
    AllUnreferenced,
    /// Only the folders of units another attempt committed (workers share the node).
    Losers,
}

impl NodeStore {
    pub(super) fn new(store: Arc<dyn Store>, fp: &str) -> Self {
        Self { store, prefix: format!("nodes/{fp}"), fingerprint: fp.to_string() }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    fn commit_key(&self, unit: usize) -> String {
        unit_key(&self.key("commits"), unit)
    }

    /// The complete output, if there is one. A manifest that cannot be read, or was written in
    /// another format, is an error saying so (the node is then recomputed).
    pub fn manifest(&self) -> std::result::Result<Option<Manifest>, String> {
        let key = self.key(MANIFEST);
        match self.store.get(&key) {
            Ok(Some((bytes, _))) => parse_record(&bytes).map(Some).map_err(|why| format!("{}: {why}", self.store.url(&key))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.store.url(&key))),
        }
    }

    /// Checks that a committed file is whole: its size, then (in a local folder) its blake3
    /// digest. Object storage checks what it stores itself; its size is checked here.
    pub fn verify(&self, digest: &FileDigest) -> std::result::Result<(), String> {
        let key = self.key(&digest.name);
        let url = self.store.url(&key);
        let size = self.store.size(&key).map_err(|e| format!("{url}: {e}"))?.ok_or_else(|| format!("{url}: missing"))?;
        if size != digest.bytes {
            return Err(format!("{url}: {size} bytes, but {} were committed", digest.bytes));
        }
        if let Some(path) = self.store.local_path(&key) {
            // Hashed once per host while the part's size, modification time and inode stay
            // as they were (the host's digest cache): a query over a large workspace starts at
            // once, and a part written since is hashed again.
            let found = crate::digest_cache::file_digest(&path).map_err(|e| format!("{url}: {e}"))?;
            if found.to_hex().as_str() != digest.blake3 {
                return Err(format!("{url}: checksum mismatch (the file changed after it was committed)"));
            }
        }
        Ok(())
    }

    /// The units of `manifest` whose files are damaged, with why.
    pub fn damaged_units(&self, manifest: &Manifest) -> Vec<(usize, String)> {
        manifest.commits.iter().filter_map(|c| c.files().find_map(|f| self.verify(f).err()).map(|why| (c.unit, why))).collect()
    }

    /// Where a committed file is, for DataFusion (a path or a URL).
    pub fn url_of(&self, digest: &FileDigest) -> String {
        self.store.url(&self.key(&digest.name))
    }

    /// A committed file's local path, when the workspace is a folder.
    pub fn local_path_of(&self, digest: &FileDigest) -> Option<PathBuf> {
        self.store.local_path(&self.key(&digest.name))
    }

    /// The store, so readers can register it with DataFusion.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Makes the node incomplete again (its manifest goes; its commits stay).
    pub fn remove_manifest(&self) -> Result<()> {
        self.store.delete(&self.key(MANIFEST))
    }

    /// Forgets the commits of `units` (their files become garbage), and the manifest.
    pub fn remove_commits(&self, units: &[usize]) -> Result<()> {
        self.remove_manifest()?;
        for &unit in units {
            self.store.delete(&self.commit_key(unit))?;
        }
        Ok(())
    }

    /// Removes the whole output (for `--force`).
    pub fn clear(&self) -> Result<()> {
        self.store.delete_prefix(&self.prefix)
    }

    /// Records what the node about to be computed is made of.
    pub fn begin(&self, node_json: &[u8]) -> Result<()> {
        self.store.put(&self.key("node.json"), node_json)
    }

    /// Records how many units the node has, for `unoflow status` (known once they are listed or
    /// a view was cut).
    pub fn set_units(&self, units: usize) -> Result<()> {
        self.store.put(&self.key("units.json"), serde_json::json!({ "units": units }).to_string().as_bytes())
    }

    /// How many units the node has, if a worker recorded it.
    pub fn units(&self) -> Option<usize> {
        let (bytes, _) = self.store.get(&self.key("units.json")).ok()??;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("units")?.as_u64().map(|n| n as usize)
    }

    /// The commit records' keys and times (from a listing, without reading the records).
    pub fn commit_times(&self) -> Result<Vec<i64>> {
        Ok(self.store.list(&self.key("commits"))?.into_iter().filter(|l| unit_of(&l.key).is_some()).map(|l| l.modified_ms).collect())
    }

    /// Whether `unit` has a commit record (one request, without reading it).
    pub fn has_commit(&self, unit: usize) -> Result<bool> {
        Ok(self.store.size(&self.commit_key(unit))?.is_some())
    }

    /// The units that have a commit record (from a listing, without reading the records).
    pub fn committed_units(&self) -> Result<BTreeSet<usize>> {
        Ok(self.store.list(&self.key("commits"))?.iter().filter_map(|l| unit_of(&l.key)).collect())
    }

    /// Which of `units` have a commit record: by listings of runs of them where a listing
    /// starts at a key (never more requests than one each), else by a request each for a few
    /// and one listing of the records for many.
    pub fn committed_among(&self, units: &[usize]) -> Result<BTreeSet<usize>> {
        const ONE_BY_ONE: usize = 32;
        let wanted: BTreeSet<usize> = units.iter().copied().collect();
        if self.store.lists_by_range() || wanted.len() > ONE_BY_ONE {
            return Ok(listed_units(self.store.as_ref(), &self.key("commits"), &wanted)?.into_keys().collect());
        }
        let mut out = BTreeSet::new();
        for &unit in &wanted {
            if self.has_commit(unit)? {
                out.insert(unit);
            }
        }
        Ok(out)
    }

    /// The commit records present, by unit, and the records that cannot be read (with why).
    pub fn commits(&self) -> (Vec<Commit>, Vec<(usize, String)>) {
        let (mut commits, mut damaged) = (Vec::new(), Vec::new());
        let Ok(listed) = self.store.list(&self.key("commits")) else { return (commits, damaged) };
        for object in listed {
            let Some(unit) = unit_of(&object.key) else { continue };
            match self.commit_of(unit) {
                Ok(Some(commit)) if commit.unit == unit => commits.push(commit),
                Ok(Some(commit)) => damaged.push((unit, format!("u{unit:06}.json names unit {}", commit.unit))),
                Ok(None) => {}
                Err(why) => damaged.push((unit, why)),
            }
        }
        commits.sort_by_key(|c| c.unit);
        (commits, damaged)
    }

    /// The commit record of `unit`, if there is one.
    pub fn commit_of(&self, unit: usize) -> std::result::Result<Option<Commit>, String> {
        self.read_commit(unit).map_err(|e| e.to_string())?.transpose()
    }

    /// Unit `unit`'s commit record: `None` when there is none, the inner error when it cannot be
    /// parsed (damaged, or of another format), the outer one when the store failed to answer.
    pub fn read_commit(&self, unit: usize) -> Result<Option<std::result::Result<Commit, String>>> {
        Ok(self.store.get(&self.commit_key(unit))?.map(|(bytes, _)| parse_record(&bytes)))
    }

    /// A new attempt at `unit`, with a folder of its own.
    pub fn attempt(&self, unit: usize) -> Attempt {
        static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
        let n = ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = blake3::hash(format!("{}-{nanos}-{n}-{}", std::process::id(), hostname()).as_bytes()).to_hex()[..12].to_string();
        let folder = format!("attempts/u{unit:06}-{id}");
        Attempt { node: self.clone(), unit, id, folder }
    }

    /// Creates the unit's commit record unless one exists: the first commit wins.
    pub fn commit(&self, attempt: &Attempt, commit: Commit) -> Result<Committed> {
        let key = self.commit_key(commit.unit);
        let bytes = serde_json::to_vec_pretty(&commit).map_err(|e| Error::Internal(e.to_string()))?;
        if let Some(version) = self.store.create(&key, &bytes)? {
            return Ok(Committed::Won(commit, version));
        }
        attempt.discard();
        let theirs = self
            .commit_of(commit.unit)
            .map_err(|why| Error::Workspace { path: PathBuf::from(self.store.url(&key)), message: why })?
            .ok_or_else(|| Error::Internal(format!("the commit record of unit {} refused ours and then vanished", commit.unit)))?;
        Ok(Committed::Lost(theirs))
    }

    /// Whether commits are summarised per worker ([`CommitSummary`]): where a listing of the
    /// records tells whether each is still the one a summary names.
    pub fn keeps_summaries(&self) -> bool {
        self.store.lists_e_tags()
    }

    /// Writes (replaces) the summary of the commits worker `worker` won.
    pub fn write_summary(&self, worker: &str, summary: &CommitSummary) -> Result<()> {
        let bytes = serde_json::to_vec(summary).map_err(|e| Error::Internal(e.to_string()))?;
        self.store.put(&self.key(&format!("summaries/{worker}.json")), &bytes)
    }

    /// The keys of the workers' commit summaries (one listing).
    pub fn summary_keys(&self) -> Result<Vec<String>> {
        Ok(self.store.list(&self.key("summaries"))?.into_iter().map(|l| l.key).collect())
    }

    /// A commit summary, by its key from [`Self::summary_keys`]; `None` when it is gone or
    /// cannot be read (its commits' records are read instead).
    pub fn summary(&self, key: &str) -> Result<Option<CommitSummary>> {
        let Some((bytes, _)) = self.store.get(key)? else { return Ok(None) };
        Ok(serde_json::from_slice::<CommitSummary>(&bytes).ok().filter(|s| s.format == FORMAT))
    }

    /// Writes the node's watch report (see [`WatchReport`]).
    pub fn report_watch(&self, report: &WatchReport) -> Result<()> {
        let bytes = serde_json::to_vec(report).map_err(|e| Error::Internal(e.to_string()))?;
        self.store.put(&self.key(WATCH), &bytes)
    }

    /// The node's last watch report, if there is one (one request).
    pub fn watch_report(&self) -> Result<Option<WatchReport>> {
        Ok(self.store.get(&self.key(WATCH))?.and_then(|(bytes, _)| serde_json::from_slice(&bytes).ok()))
    }

    /// Removes what the workers told each other about the node's units (commit summaries, the
    /// watch report): the manifest says it all now.
    pub fn clear_hints(&self) -> Result<()> {
        self.store.delete_prefix(&self.key("summaries"))?;
        self.store.delete(&self.key(WATCH))
    }

    /// The commit records of `units` as listed (with their ETags, on object storage), by unit.
    pub fn listed_commits(&self, units: &BTreeSet<usize>) -> Result<BTreeMap<usize, Listed>> {
        listed_units(self.store.as_ref(), &self.key("commits"), units)
    }

    /// Whether the node's manifest exists (one request, without reading it).
    pub fn has_manifest(&self) -> Result<bool> {
        Ok(self.store.size(&self.key(MANIFEST))?.is_some())
    }

    /// Records the node as complete, unless another worker did first (`false`: read theirs).
    pub fn finish(&self, manifest: &Manifest) -> Result<bool> {
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(self.store.create(&self.key(MANIFEST), &bytes)?.is_some())
    }

    /// Reads rows `offset..offset+len` (all rows if `None`) of a committed file, which the caller
    /// has verified.
    pub fn read(&self, digest: &FileDigest, slice: Option<(usize, usize)>) -> Result<Vec<RecordBatch>> {
        let key = self.key(&digest.name);
        match self.store.local_path(&key) {
            Some(path) => read_parquet(std::fs::File::open(&path).at(&path)?, slice),
            None => {
                let (bytes, _) = self.store.get(&key)?.ok_or_else(|| Error::Workspace {
                    path: PathBuf::from(self.store.url(&key)),
                    message: "committed, but missing".into(),
                })?;
                read_parquet(bytes::Bytes::from(bytes), slice)
            }
        }
    }

    /// Removes attempt folders that hold nothing anyone will read: those of units another
    /// attempt committed, and with [`Garbage::AllUnreferenced`] every folder no commit names
    /// (attempts of killed or failed runs).
    /// `commits` are the unit's commits when the caller has them (read otherwise).
    pub fn collect_garbage(&self, which: Garbage, commits: Option<&[Commit]>) -> Result<usize> {
        let read;
        let commits = match commits {
            Some(c) => c,
            None => {
                read = self.commits().0;
                &read
            }
        };
        let winners: BTreeMap<usize, String> = commits.iter().map(|c| (c.unit, c.attempt.clone())).collect();
        let mut folders: BTreeSet<String> = BTreeSet::new();
        for object in self.store.list(&self.key("attempts"))? {
            if let Some(folder) = object.key.strip_prefix(&format!("{}/attempts/", self.prefix)).and_then(|r| r.split('/').next()) {
                folders.insert(folder.to_string());
            }
        }
        let mut removed = 0;
        for folder in folders {
            let Some((unit, attempt)) = folder.strip_prefix('u').and_then(|r| r.split_once('-')) else { continue };
            let Ok(unit) = unit.parse::<usize>() else { continue };
            let garbage = match winners.get(&unit) {
                Some(winner) => winner != attempt,
                None => which == Garbage::AllUnreferenced,
            };
            if garbage {
                self.store.delete_prefix(&self.key(&format!("attempts/{folder}")))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Rows `offset..offset+len` (all if `None`) of a Parquet file.
fn read_parquet<R: datafusion::parquet::file::reader::ChunkReader + 'static>(
    file: R,
    slice: Option<(usize, usize)>,
) -> Result<Vec<RecordBatch>> {
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(8192);
    if let Some((offset, len)) = slice {
        builder = builder.with_row_selection(RowSelection::from(vec![RowSelector::skip(offset), RowSelector::select(len)]));
    }
    Ok(builder.build()?.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// The node's manifest, in its folder.
const MANIFEST: &str = "manifest.json";

/// The node watcher's report.
const WATCH: &str = "watch.json";

/// One attempt at a unit: the folder its files go to.
#[derive(Debug, Clone)]
pub struct Attempt {
    node: NodeStore,
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

    fn writer(&self, file: &str, schema: SchemaRef) -> Result<PartWriter> {
        let name = format!("{}/{file}", self.folder);
        PartWriter::create(Arc::clone(&self.node.store), self.node.key(&name), name, schema)
    }

    /// A writer for part `part` of the unit's rows.
    pub fn part_writer(&self, part: usize, schema: SchemaRef) -> Result<PartWriter> {
        self.writer(&format!("p{part:03}.parquet"), schema)
    }

    /// A writer for the unit's failed rows.
    pub fn errors_writer(&self, schema: SchemaRef) -> Result<PartWriter> {
        self.writer("errors.parquet", schema)
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
            committed_at: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// Removes the attempt's files (it lost, or failed).
    pub fn discard(&self) {
        let _ = self.node.store.delete_prefix(&self.node.key(&self.folder));
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

/// This host's name, for attempt ids (two hosts may share a workspace).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
