//! `read`: brings files into the workspace as a table.
//!
//! - `images`: a folder, recursively; PNG, JPEG and WebP files give rows of `path` (relative to
//!   the folder, `/`-separated), `image` (PNG bytes, EXIF orientation applied), `width`,
//!   `height`. An unreadable file becomes a row of the node's error table.
//! - `csv` (with a header row), `jsonl`: a file, or a folder of such files, decoded record by
//!   record: a bad record is a row error naming its file and line.
//! - `parquet`, and a `jsonl` file holding one JSON array (UNO's and DreamBench's lists): read
//!   whole.
//!
//! The node's fingerprint holds a digest of the files' names and contents, not the path: moving
//! the data keeps the cache, editing a file recomputes. The folder is listed and hashed once per
//! process; image rows reuse those digests for their ids.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, OnceLock};

use datafusion::arrow::array::{ArrayRef, BinaryBuilder, StringBuilder, UInt32Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use unoflow_api::columns::{HEIGHT, WIDTH, row_id_field};
use unoflow_api::params::{ParamType, PathKind};
use unoflow_api::rowid::RowIdHasher;
use unoflow_api::{DeviceDependence, ExecContext, OpSpec, Params, PartitionOutput, Resource, RowError, RowMapping};
use unoflow_image as image_io;

use super::lines::{self, TextFormat};
use super::{Derived, Op, OpKind, OpenContext, SchemaError, Unit, UnitOutput, UnitPlan, UnitRunner, Work};
use crate::data::NodeData;
use crate::error::{Error, IoContext, Result};
use crate::query::{self, IdPolicy, with_row_id};

unoflow_api::choice! {
    /// What a `read` node's files are.
    pub enum ReadFormat {
        Parquet = "parquet",
        Csv = "csv",
        Jsonl = "jsonl",
        Images = "images",
    }
}

impl ReadFormat {
    fn extensions(self) -> &'static [&'static str] {
        match self {
            Self::Parquet => &["parquet"],
            Self::Csv => &["csv"],
            Self::Jsonl => &["jsonl", "json", "ndjson"],
            Self::Images => &["png", "jpg", "jpeg", "webp"],
        }
    }
}

unoflow_api::params! {
    /// `read`'s parameters.
    pub struct ReadParams {
        /// file or folder to read, relative to the DAG file
        pub path: PathBuf = required(ParamType::Path(PathKind::Input)).not_fingerprinted(),
        /// what the files are
        pub format: ReadFormat = choice(ReadFormat::Parquet),
    }
}

/// Image files per unit.
const IMAGES_PER_UNIT: usize = 16;

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "read",
    version: 1,
    summary: "read files (Parquet, CSV, JSON lines, or a folder of images) into a table",
    doc: "`jsonl` also reads a file holding one JSON array of objects (UNO's and DreamBench's lists). `images` reads a folder \
          recursively (PNG, JPEG, WebP) into `path`, `image` (PNG bytes), `width`, `height`; unreadable files go to the error \
          table. `parquet`, `csv` (with a header) and `jsonl` read one file or a folder of them; a CSV or JSON-lines record that \
          cannot be read goes to the error table with its file and line. Rows get a `row_id` from their content unless the data \
          has one.",
    params: ReadParams::specs(),
    inputs: (0, 0),
    resource: Resource::Cpu,
    mapping: RowMapping::Derive,
    partition_rows: IMAGES_PER_UNIT,
    device_dependence: DeviceDependence::Independent,
});

/// The `read` kind.
#[derive(Debug, Clone, Copy)]
pub struct Read;

impl OpKind for Read {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn bind(&self, params: &Params) -> std::result::Result<Arc<dyn Op>, SchemaError> {
        let p = ReadParams::parse(params).map_err(|e| SchemaError::from_op(&SPEC, e))?;
        let remote = match crate::remote::RemoteUrl::recognise(&p.path.to_string_lossy()) {
            Some(url) => Some(url.map_err(|e| SchemaError::at("path", e.to_string()))?),
            None => None,
        };
        Ok(Arc::new(ReadNode { p, remote, local: OnceLock::new(), sources: OnceLock::new() }))
    }
}

/// One file to read: its path, its path relative to the `read` root, and its content digest.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub relative: String,
    pub digest: blake3::Hash,
}

#[derive(Debug)]
struct ReadNode {
    p: ReadParams,
    /// The URL `path` names, when the files are remote (`s3://…`, `https://…`).
    remote: Option<crate::remote::RemoteUrl>,
    /// Where the files are on this host: `path`, or a remote path's copy in the host's cache.
    local: OnceLock<std::result::Result<PathBuf, String>>,
    /// The files, listed and hashed once (the fingerprint and the units both need them).
    sources: OnceLock<std::result::Result<Arc<Vec<Source>>, String>>,
}

impl ReadNode {
    /// The file or folder read, on this host: a remote one is fetched into the host's cache the
    /// first time its bytes are needed (never for the fingerprint).
    fn root(&self) -> Result<PathBuf> {
        self.local
            .get_or_init(|| match &self.remote {
                Some(url) => crate::remote::local_copy(url).map_err(|e| e.to_string()),
                None => Ok(self.p.path.clone()),
            })
            .clone()
            .map_err(Error::Execution)
    }

    fn sources(&self) -> Result<Arc<Vec<Source>>> {
        self.sources
            .get_or_init(|| self.root().and_then(|root| list_sources(&root, self.p.format)).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Execution)
    }

    /// The line-by-line format, if the files are CSV or JSON lines (not a JSON array file).
    fn text_format(&self) -> Option<TextFormat> {
        match self.p.format {
            ReadFormat::Csv => Some(TextFormat::Csv),
            ReadFormat::Jsonl => {
                // A file that cannot be fetched is a JSON-lines one here; reading it says why.
                let root = self.root().unwrap_or_else(|_| self.p.path.clone());
                (!(root.is_file() && starts_with_array(&root))).then_some(TextFormat::JsonLines)
            }
            _ => None,
        }
    }

    /// The columns of a CSV or JSON-lines source (its own, `row_id` only if it has one).
    fn text_schema(&self, text: TextFormat) -> Result<Schema> {
        let files = files_under(&self.root()?, &|name| has_extension(name, self.p.format.extensions()))?;
        if files.is_empty() {
            return Err(Error::Execution(format!("{}: no {} files", self.p.path.display(), self.p.format.extensions()[0])));
        }
        let paths: Vec<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
        lines::infer_schema(&paths, text)
    }
}

#[async_trait::async_trait]
impl Op for ReadNode {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    async fn derive(&self, _inputs: &[(String, SchemaRef)]) -> std::result::Result<Derived, SchemaError> {
        let fail =
            |e: &dyn std::fmt::Display| SchemaError::at("path", format!("cannot read {} as {}: {e}", self.p.path.display(), self.p.format));
        let schema = match (self.p.format, self.text_format()) {
            (ReadFormat::Images, _) => return Ok(Derived::table(image_schema())),
            (_, Some(text)) => self.text_schema(text).map_err(|e| fail(&e))?,
            (format, None) => {
                let root = self.root().map_err(|e| fail(&e))?;
                tabular(&query::session(), &root, format).await.map_err(|e| fail(&e))?.schema().as_arrow().clone()
            }
        };
        Ok(Derived::table(with_row_id(&schema).map_err(|m| SchemaError::at("path", m))?))
    }

    async fn check_data(&self) -> std::result::Result<(), SchemaError> {
        let Some(text) = self.text_format() else { return Ok(()) };
        let schema = Arc::new(self.text_schema(text).map_err(|e| SchemaError::at("path", e.to_string()))?);
        let sources = self.sources().map_err(|e| SchemaError::at("path", e.to_string()))?;
        let errors = decode_text(&sources, text, &schema, &mut |_| Ok(())).map_err(|e| SchemaError::at("path", e.to_string()))?;
        if errors.is_empty() {
            return Ok(());
        }
        const SHOWN: usize = 5;
        let plural = if errors.len() == 1 { "" } else { "s" };
        let mut message = format!("{} record{plural} cannot be read as the columns inferred from the first records:", errors.len());
        for e in errors.iter().take(SHOWN) {
            message.push_str(&format!("\n    {}", e.message));
        }
        if errors.len() > SHOWN {
            message.push_str(&format!("\n    … and {} more", errors.len() - SHOWN));
        }
        Err(SchemaError::at("path", message)
            .with_help("fix the records, or let `run` keep going without them: bad records become rows of `errors.NODE`"))
    }

    fn source_digest(&self) -> Result<Option<String>> {
        if let Some(url) = &self.remote {
            // The store's listing of the files read (names, sizes, ETags: a remote object's
            // identity is its store's checksum), so `plan` downloads nothing. A URL naming one
            // object is read whatever its name (as a local file is); under a prefix, the files
            // of the format are.
            let listing = crate::remote::listing(url)?;
            let extensions = self.p.format.extensions();
            return Ok(Some(listing.digest_of(|e| listing.single_file || has_extension(&e.relative, extensions))));
        }
        let mut hasher = blake3::Hasher::new();
        for source in self.sources()?.iter() {
            hasher.update(source.relative.as_bytes()).update(&[0]).update(source.digest.as_bytes());
        }
        Ok(Some(hasher.finalize().to_hex()[..32].to_string()))
    }

    fn units(&self, _inputs: &[NodeData]) -> Result<UnitPlan> {
        if self.p.format != ReadFormat::Images {
            return Ok(UnitPlan::Listed(vec![Unit { index: 0, key: "whole".into(), rows: 0, work: Work::Whole }]));
        }
        let sources = self.sources()?;
        let units = sources
            .chunks(IMAGES_PER_UNIT)
            .enumerate()
            .map(|(index, chunk)| Unit {
                index,
                key: format!("files:{}..{}:{}", chunk[0].relative, chunk[chunk.len() - 1].relative, chunk.len()),
                rows: chunk.len() as u64,
                work: Work::Files(chunk.to_vec()),
            })
            .collect();
        Ok(UnitPlan::Listed(units))
    }

    async fn open(&self, ctx: OpenContext) -> Result<Arc<dyn UnitRunner>> {
        let text = match self.text_format() {
            Some(text) => Some((text, Arc::new(self.text_schema(text)?), self.sources()?)),
            None => None,
        };
        Ok(Arc::new(ReadRunner { path: self.root()?, format: self.p.format, text, max_pixels: ctx.env.max_image_pixels.pixels() }))
    }
}

struct ReadRunner {
    path: PathBuf,
    format: ReadFormat,
    /// For CSV and JSON lines: the format, the files' columns and the files.
    text: Option<(TextFormat, SchemaRef, Arc<Vec<Source>>)>,
    /// The largest image decoded (the DAG's `max_image_pixels`).
    max_pixels: u64,
}

#[async_trait::async_trait]
impl UnitRunner for ReadRunner {
    async fn run(&self, unit: Unit, _exec: ExecContext) -> Result<UnitOutput> {
        match (unit.work, &self.text) {
            (Work::Files(files), _) => {
                let max_pixels = self.max_pixels;
                let output = tokio::task::spawn_blocking(move || read_images(&files, max_pixels))
                    .await
                    .map_err(|e| Error::Internal(format!("reading images panicked: {e}")))??;
                Ok(UnitOutput::ready(output))
            }
            (Work::Whole, Some((text, schema, sources))) => {
                // Decoded on the blocking pool, batches handed over a small queue.
                let (text, schema, sources) = (*text, Arc::clone(schema), Arc::clone(sources));
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch>>(4);
                let decoding = tokio::task::spawn_blocking(move || {
                    decode_text(&sources, text, &schema, &mut |batch| {
                        tx.blocking_send(Ok(batch)).map_err(|_| Error::Internal("the part writer stopped".into()))
                    })
                });
                let errors = async move { decoding.await.map_err(|e| Error::Internal(format!("decoding panicked: {e}")))? };
                Ok(UnitOutput { rows: Box::pin(receiver_stream(rx)), errors: Box::pin(errors), ids: IdPolicy::Assign })
            }
            (Work::Whole, None) => {
                let df = tabular(&query::session(), &self.path, self.format).await?;
                let rows = query::ordered_stream(df).await?.map(|b| b.map_err(Error::from));
                Ok(UnitOutput { rows: Box::pin(rows), errors: Box::pin(async { Ok(Vec::new()) }), ids: IdPolicy::Assign })
            }
            (work, _) => Err(Error::Internal(format!("`read` cannot run {work:?}"))),
        }
    }
}

/// The items received on `rx`, as a stream.
pub fn receiver_stream<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// The schema of an `images` read.
pub fn image_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        row_id_field(),
        Field::new("path", DataType::Utf8, false),
        Field::new("image", DataType::Binary, false),
        Field::new(WIDTH, DataType::UInt32, false),
        Field::new(HEIGHT, DataType::UInt32, false),
    ]))
}

/// The files a `read` node reads, sorted by relative path so units are deterministic, with
/// their content digests (from this host's digest cache, [`crate::digest_cache`]).
fn list_sources(root: &Path, format: ReadFormat) -> Result<Vec<Source>> {
    let files = files_under(root, &|name| has_extension(name, format.extensions()))?;
    files
        .into_iter()
        .map(|(path, relative)| {
            let digest = crate::digest_cache::file_digest(&path)?;
            Ok(Source { path, relative, digest })
        })
        .collect()
}

/// The files under `root` whose names `keep` accepts (hidden files and folders skipped), as
/// (path, path relative to `root` with `/` separators), sorted by relative path; `root` itself
/// when it is a file.
pub fn files_under(root: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Vec<(PathBuf, String)>> {
    if std::fs::metadata(root).at(root)?.is_file() {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![(root.to_path_buf(), name)]);
    }
    let mut out = Vec::new();
    walk(root, root, keep, &mut out)?;
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, keep: &dyn Fn(&str) -> bool, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let file_type = entry.file_type().at(&path)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if file_type.is_dir() {
            walk(root, &path, keep, out)?;
        } else if keep(&name) {
            let relative = crate::workspace::store::relative_key(root, &path);
            out.push((path, relative));
        }
    }
    Ok(())
}

fn has_extension(name: &str, extensions: &[&str]) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// Whether a file's first non-blank byte opens a JSON array (`[{…}, …]`, as UNO's and
/// DreamBench's lists are written) rather than JSON lines.
fn starts_with_array(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// A file holding one JSON array of objects, as a table (schema inferred from the objects).
fn json_array(ctx: &SessionContext, path: &Path) -> datafusion::error::Result<DataFrame> {
    use datafusion::error::DataFusionError;
    let fail = |e: String| DataFusionError::Execution(format!("{}: {e}", path.display()));
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let values: Vec<serde_json::Value> = serde_json::from_slice(&text).map_err(|e| fail(format!("not a JSON array of objects: {e}")))?;
    let schema = datafusion::arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))?;
    let mut decoder = datafusion::arrow::json::ReaderBuilder::new(Arc::new(schema.clone())).build_decoder()?;
    decoder.serialize(&values)?;
    let batch = decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(Arc::new(schema)));
    ctx.read_batch(batch)
}

/// A DataFrame over the files read whole: Parquet, or a JSON array file.
async fn tabular(ctx: &SessionContext, path: &Path, format: ReadFormat) -> datafusion::error::Result<DataFrame> {
    match format {
        ReadFormat::Parquet => {
            // A single file is read whatever its extension; a folder keeps the `.parquet` files.
            let ext = if path.is_file() {
                path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default()
            } else {
                ".parquet".to_string()
            };
            ctx.read_parquet(path.to_string_lossy().as_ref(), ParquetReadOptions::default().file_extension(&ext)).await
        }
        ReadFormat::Jsonl => json_array(ctx, path),
        other => Err(datafusion::error::DataFusionError::Internal(format!("{other} files are decoded line by line"))),
    }
}

/// Decodes every file of a CSV or JSON-lines `read` in order into batches of `schema` (the
/// files' own columns), handing each to `emit`; bad records come back as row errors naming
/// their file and line.
fn decode_text(
    sources: &[Source],
    format: TextFormat,
    schema: &SchemaRef,
    emit: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<Vec<RowError>> {
    let mut errors = Vec::new();
    for source in sources {
        for bad in lines::decode(&source.path, format, schema, emit)? {
            errors.push(RowError {
                row_id: RowIdHasher::new("read.line").field(source.relative.as_bytes()).field(&bad.line.to_le_bytes()).finish(),
                message: format!("{}:{}: {}", source.relative, bad.line, bad.message),
            });
        }
    }
    Ok(errors)
}

/// Reads one unit of image files.
fn read_images(files: &[Source], max_pixels: u64) -> Result<PartitionOutput> {
    let (mut ids, mut paths, mut images) = (StringBuilder::new(), StringBuilder::new(), BinaryBuilder::new());
    let (mut widths, mut heights) = (UInt32Builder::new(), UInt32Builder::new());
    let mut errors = Vec::new();
    for file in files {
        let loaded = std::fs::read(&file.path)
            .map_err(|e| format!("cannot read {}: {e}", file.path.display()))
            .and_then(|bytes| to_png(&bytes, max_pixels));
        match loaded {
            Ok((png, w, h)) => {
                ids.append_value(RowIdHasher::new("read.images").field(file.relative.as_bytes()).field(file.digest.as_bytes()).finish());
                paths.append_value(&file.relative);
                images.append_value(&png);
                widths.append_value(w);
                heights.append_value(h);
            }
            Err(message) => errors.push(RowError {
                row_id: RowIdHasher::new("read.images").field(file.relative.as_bytes()).finish(),
                message: format!("{}: {message}", file.relative),
            }),
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(paths.finish()),
        Arc::new(images.finish()),
        Arc::new(widths.finish()),
        Arc::new(heights.finish()),
    ];
    Ok(PartitionOutput { rows: RecordBatch::try_new(image_schema(), columns)?, errors })
}

/// Decodes any supported image and re-encodes it as PNG; PNG input without EXIF rotation is kept
/// byte for byte.
fn to_png(bytes: &[u8], max_pixels: u64) -> std::result::Result<(Vec<u8>, u32, u32), String> {
    let decoded = image_io::decode_detailed(bytes, max_pixels)?;
    let (w, h) = (decoded.image.width(), decoded.image.height());
    if decoded.format == image::ImageFormat::Png && !decoded.reoriented {
        return Ok((bytes.to_vec(), w, h));
    }
    Ok((image_io::encode_png(&decoded.image)?, w, h))
}
