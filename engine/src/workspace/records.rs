//! What the workspace records about node outputs: committed files, unit commit records and
//! node manifests. These are the workspace's file format; the layout they live in is
//! [`NodeStore`](super::NodeStore)'s.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

/// The format of commit records and manifests. An output written by another format is not
/// reused (it is recomputed), never misread.
pub const FORMAT: u32 = 2;

/// A committed file: its path in the node folder, size, rows and blake3 digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    pub rows: u64,
    pub blake3: String,
}

/// The record that makes a unit's output part of the node. Created (if absent) after its
/// files: the first attempt to commit a unit wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    pub format: u32,
    pub unit: usize,
    /// What the unit covers (an input slice, a list of files); a record with another key belongs
    /// to a different partitioning and is not reused.
    pub key: String,
    /// Digest of the exact input data the unit was computed from.
    pub input_digest: String,
    /// The attempt that wrote the files (its folder under `attempts/`).
    pub attempt: String,
    /// The rows, in order, in one or more part files (large units are encoded in parallel).
    pub rows: Vec<FileDigest>,
    pub errors: Option<FileDigest>,
    pub seconds: f64,
    /// When it was committed (Unix milliseconds), for throughput and ETAs.
    #[serde(default)]
    pub committed_at: i64,
}

/// The commits one worker won at one node, written by the worker when it has nothing left to
/// ask for, so that the worker writing the manifest reads an object per worker instead of a
/// commit record per unit. Each commit comes with the ETag its record was created with: it is
/// used only while a listing shows the record unchanged (a record removed and made again by
/// another attempt has another ETag), else the record is read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitSummary {
    pub format: u32,
    pub commits: Vec<SummarizedCommit>,
}

impl Default for CommitSummary {
    fn default() -> Self {
        Self { format: FORMAT, commits: Vec::new() }
    }
}

/// A commit in a [`CommitSummary`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummarizedCommit {
    /// The ETag of the commit record as it was created.
    pub e_tag: String,
    pub commit: Commit,
}

/// What a node's watcher tells the other workers each time it looks up the node's units (see
/// `exec::queue`): the units it found neither committed nor held, offered to the workers with
/// nothing to do (each takes its share, by rank, turning with `round` so the shares of workers
/// that died go to others), and whether the node is complete (its manifest written). A hint
/// only: the claims decide who runs a unit, the manifest whether the node is complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReport {
    /// How many reports the watcher wrote before this one.
    pub round: u64,
    pub unclaimed: Vec<usize>,
    pub complete: bool,
}

impl WatchReport {
    /// The unclaimed units that are the share of the worker of rank `rank` among `world`.
    pub fn share(&self, rank: usize, world: usize) -> impl Iterator<Item = usize> + '_ {
        Self::share_of(&self.unclaimed, self.round, rank, world)
    }

    /// The share of the worker of rank `rank` among `world` of `unclaimed` in round `round`.
    pub fn share_of(unclaimed: &[usize], round: u64, rank: usize, world: usize) -> impl Iterator<Item = usize> + '_ {
        let world = world.max(1);
        let turn = (round % world as u64) as usize;
        unclaimed.iter().enumerate().filter(move |(i, _)| (i + turn) % world == rank % world).map(|(_, u)| *u)
    }
}

impl Commit {
    /// Rows committed (without failed rows).
    pub fn row_count(&self) -> u64 {
        self.rows.iter().map(|f| f.rows).sum()
    }

    /// Failed rows committed.
    pub fn error_count(&self) -> u64 {
        self.errors.as_ref().map_or(0, |e| e.rows)
    }

    /// Every file of the unit.
    pub fn files(&self) -> impl Iterator<Item = &FileDigest> {
        self.rows.iter().chain(self.errors.as_ref())
    }
}

/// A complete node output; its presence means the node is done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub fingerprint: String,
    pub node: String,
    pub op: String,
    pub input_digest: String,
    /// Digest of all part digests in order: the identity of the data, which consumers record.
    pub content_digest: String,
    pub commits: Vec<Commit>,
    pub rows: u64,
    pub error_rows: u64,
    pub finished_at: String,
}

impl Manifest {
    /// The manifest of a node made of `commits` (in unit order).
    pub fn new(fingerprint: &str, node: &str, op: &str, input_digest: &str, commits: Vec<Commit>, finished_at: String) -> Self {
        Self {
            format: FORMAT,
            fingerprint: fingerprint.to_string(),
            node: node.to_string(),
            op: op.to_string(),
            input_digest: input_digest.to_string(),
            content_digest: Self::digest_of(&commits),
            rows: commits.iter().map(Commit::row_count).sum(),
            error_rows: commits.iter().map(Commit::error_count).sum(),
            commits,
            finished_at,
        }
    }

    /// The part files holding the rows, in order.
    pub fn row_files(&self) -> impl Iterator<Item = &FileDigest> {
        self.commits.iter().flat_map(|c| c.rows.iter())
    }

    /// The part files holding failed rows.
    pub fn error_files(&self) -> impl Iterator<Item = &FileDigest> {
        self.commits.iter().filter_map(|c| c.errors.as_ref())
    }

    /// Every file, rows and errors.
    pub fn files(&self) -> impl Iterator<Item = &FileDigest> {
        self.row_files().chain(self.error_files())
    }

    /// The content digest for a list of commits.
    pub fn digest_of(commits: &[Commit]) -> String {
        let mut h = blake3::Hasher::new();
        for c in commits {
            for f in &c.rows {
                h.update(f.blake3.as_bytes()).update(b",");
            }
            if let Some(e) = &c.errors {
                h.update(b"+").update(e.blake3.as_bytes());
            }
            h.update(b";");
        }
        h.finalize().to_hex()[..32].to_string()
    }
}

/// The format field of a record, read before the record itself, so a record of another format
/// is told apart from a damaged one.
#[derive(Debug, Deserialize)]
pub(super) struct FormatOnly {
    #[serde(default)]
    pub format: u32,
}

/// The schema of a node's error table.
pub fn error_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("row_id", DataType::Utf8, false), Field::new("message", DataType::Utf8, false)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unclaimed_unit_is_one_workers_share_and_the_shares_turn_with_the_round() {
        let report = |round| WatchReport { round, unclaimed: (100..107).collect(), complete: false };
        let shares = |round| (0..3).map(|rank| report(round).share(rank, 3).collect::<Vec<_>>()).collect::<Vec<_>>();
        assert_eq!(shares(0), [vec![100, 103, 106], vec![101, 104], vec![102, 105]]);
        // Next round, rank 0's units go to another rank (a dead worker's share is taken).
        assert_eq!(shares(1), [vec![102, 105], vec![100, 103, 106], vec![101, 104]]);
    }
}
