//! Parquet part files, hashed while they are written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use super::records::FileDigest;
use super::store::Store;
use crate::error::{Error, IoContext, Result};

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

/// Writes one part file of an attempt. Nothing reads it until a commit record names it, so it
/// is written in place (object storage: a local file, uploaded by [`finish`](Self::finish));
/// `finish` makes it durable and returns its digest.
pub struct PartWriter {
    store: Arc<dyn Store>,
    key: String,
    path: PathBuf,
    /// The name a commit records: the path relative to the node folder.
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
    pub(super) fn create(store: Arc<dyn Store>, key: String, name: String, schema: SchemaRef) -> Result<Self> {
        let path = store.file_for_writing(&key)?;
        let file = File::create(&path).at(&path)?;
        let props = writer_properties(&schema)?;
        let sink = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: blake3::Hasher::new(), bytes: 0 };
        let writer = ArrowWriter::try_new(sink, schema, Some(props))?;
        Ok(Self { store, key, path, name, writer, rows: 0 })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        // A batch larger than a row group (the output of a node whose unit is its whole input)
        // is written in slices, so its encoded pages are not all buffered at once. Smaller
        // batches are written whole, as they always were: their files keep their bytes.
        // The slice's own bytes: a unit's rows are often a slice of a larger batch, whose
        // buffers `get_array_memory_size` would count whole.
        let bytes: usize = batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or(0)).sum();
        let rows = batch.num_rows();
        let slice = if bytes > ROW_GROUP_BYTES { (rows * (ROW_GROUP_BYTES / 4) / bytes).max(1) } else { rows.max(1) };
        for offset in (0..rows).step_by(slice) {
            self.writer.write(&batch.slice(offset, slice.min(rows - offset)))?;
            if self.writer.in_progress_size() > ROW_GROUP_BYTES {
                self.writer.flush()?;
            }
        }
        if rows == 0 {
            self.writer.write(batch)?;
        }
        self.rows += rows as u64;
        Ok(())
    }

    /// Closes the file and makes it durable in the store.
    pub fn finish(self) -> Result<FileDigest> {
        let sink = self.writer.into_inner()?;
        let HashingWriter { inner, hasher, bytes } = sink;
        inner.into_inner().map_err(|e| Error::io(&self.path, e.into_error()))?;
        self.store.finish_file(&self.key, &self.path)?;
        Ok(FileDigest { name: self.name, bytes, rows: self.rows, blake3: hasher.finalize().to_hex().to_string() })
    }
}
