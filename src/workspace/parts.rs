//! Part files, commit records and manifests.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use super::{sync_dir, write_atomic};
use crate::error::{Error, IoContext, Result};

/// A committed file: its name in the node folder, size, rows and blake3 digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    pub rows: u64,
    pub blake3: String,
}

/// The record that makes a unit's output part of the node. Written after its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    pub unit: usize,
    /// What the unit covers (an input slice, a list of files); a record with another key belongs
    /// to a different partitioning and is not reused.
    pub key: String,
    /// Digest of the exact input data the unit was computed from.
    pub input_digest: String,
    pub rows: FileDigest,
    pub errors: Option<FileDigest>,
    pub seconds: f64,
}

/// A complete node output; its presence means the node is done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
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
    /// The part files holding the rows, in order.
    pub fn row_files(&self) -> impl Iterator<Item = &FileDigest> {
        self.commits.iter().map(|c| &c.rows)
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
            h.update(c.rows.blake3.as_bytes());
            if let Some(e) = &c.errors {
                h.update(b"+").update(e.blake3.as_bytes());
            }
            h.update(b";");
        }
        h.finalize().to_hex()[..32].to_string()
    }
}

/// The schema of a node's error table.
pub fn error_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("row_id", DataType::Utf8, false), Field::new("message", DataType::Utf8, false)]))
}

/// Counts bytes and hashes them as they are written.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        // Large writes (blobs pass the buffer) are hashed on all cores.
        if n >= 1 << 17 {
            self.hasher.update_rayon(&buf[..n]);
        } else {
            self.hasher.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Row groups are flushed once their buffered size passes this, so image tables never hold more
/// than this much per writer in memory.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// zstd for ordinary columns; binary columns (images, already compressed) are stored as they
/// are, without dictionaries or statistics, which would only cost time.
fn writer_properties(schema: &Schema) -> Result<WriterProperties> {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1).map_err(|e| Error::Internal(e.to_string()))?);
    let mut props = WriterProperties::builder().set_compression(zstd);
    // Row ids are unique: a dictionary would only be built to be thrown away.
    props = props.set_column_dictionary_enabled(ColumnPath::from("row_id"), false);
    for field in schema.fields() {
        if matches!(field.data_type(), DataType::Binary | DataType::LargeBinary | DataType::BinaryView) {
            let path = ColumnPath::from(field.name().as_str());
            props = props
                .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path, EnabledStatistics::None);
        }
    }
    Ok(props.build())
}

/// Writes one part file under `tmp/`, then moves it into the node's `parts/` folder.
pub struct PartWriter {
    tmp: PathBuf,
    dest_dir: PathBuf,
    name: String,
    writer: ArrowWriter<HashingWriter<BufWriter<File>>>,
    rows: u64,
}

impl std::fmt::Debug for PartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartWriter").field("name", &self.name).field("rows", &self.rows).finish()
    }
}

impl PartWriter {
    /// A writer for `parts/NAME` of the node folder `node_dir`, staged in `tmp_dir`.
    pub fn create(tmp_dir: &Path, node_dir: &Path, name: &str, schema: SchemaRef) -> Result<Self> {
        let dest_dir = node_dir.join("parts");
        std::fs::create_dir_all(&dest_dir).at(&dest_dir)?;
        let tmp = tmp_dir.join(format!("{}-{name}", node_dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        let file = File::create(&tmp).at(&tmp)?;
        let props = writer_properties(&schema)?;
        let sink = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: blake3::Hasher::new(), bytes: 0 };
        let writer = ArrowWriter::try_new(sink, schema, Some(props))?;
        Ok(Self { tmp, dest_dir, name: name.to_string(), writer, rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch)?;
        self.rows += batch.num_rows() as u64;
        if self.writer.in_progress_size() > ROW_GROUP_BYTES {
            self.writer.flush()?;
        }
        Ok(())
    }

    /// Closes the file, makes it durable and moves it into place.
    pub fn finish(self) -> Result<FileDigest> {
        let sink = self.writer.into_inner()?;
        let HashingWriter { inner, hasher, bytes } = sink;
        let file = inner.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().at(&self.tmp)?;
        let dest = self.dest_dir.join(&self.name);
        std::fs::rename(&self.tmp, &dest).at(&dest)?;
        sync_dir(&self.dest_dir)?;
        Ok(FileDigest { name: format!("parts/{}", self.name), bytes, rows: self.rows, blake3: hasher.finalize().to_hex().to_string() })
    }
}

/// Writes a commit record (atomically, after its files).
pub fn write_commit(node_dir: &Path, commit: &Commit) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(commit).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(&node_dir.join("commits").join(format!("u{:06}.json", commit.unit)), &bytes)
}

/// Reads the commit records of a node folder, by unit. Unreadable records are skipped (their
/// units are recomputed).
pub fn read_commits(node_dir: &Path) -> Vec<Commit> {
    let Ok(entries) = std::fs::read_dir(node_dir.join("commits")) else { return Vec::new() };
    let mut commits: Vec<Commit> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json") && !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    commits.sort_by_key(|c| c.unit);
    commits
}

/// Checks that a committed file is whole: its size, then its blake3 digest. The error says
/// what is wrong with it.
pub fn verify_file(node_dir: &Path, digest: &FileDigest) -> std::result::Result<(), String> {
    let path = node_dir.join(&digest.name);
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() != digest.bytes {
        return Err(format!("{}: {} bytes, but {} were committed", path.display(), meta.len(), digest.bytes));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let actual = hasher.finalize().to_hex();
    if actual.as_str() != digest.blake3 {
        return Err(format!("{}: checksum mismatch (the file changed after it was committed)", path.display()));
    }
    Ok(())
}

/// Reads rows `offset..offset+len` (all rows if `None`) of a committed file, which the caller
/// has verified.
pub fn read_file(node_dir: &Path, digest: &FileDigest, slice: Option<(usize, usize)>) -> Result<Vec<RecordBatch>> {
    let path = node_dir.join(&digest.name);
    let file = File::open(&path).at(&path)?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    if let Some((offset, len)) = slice {
        builder = builder.with_row_selection(RowSelection::from(vec![RowSelector::skip(offset), RowSelector::select(len)]));
    }
    let reader = builder.with_batch_size(8192).build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}
