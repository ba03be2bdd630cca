//! `read`: brings files into the workspace as a table.
//!
//! - `images`: a folder, recursively; PNG, JPEG and WebP files give rows of `path` (relative to
//!   the folder, `/`-separated), `image` (PNG bytes, EXIF orientation applied), `width`,
//!   `height`. An unreadable file becomes a row of the node's error table.
//! - `parquet`, `csv` (with a header row), `jsonl`: a file, or a folder of such files.
//!
//! The node's fingerprint holds a digest of the files' names and contents, not the path: moving
//! the data keeps the cache, editing a file recomputes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BinaryBuilder, StringBuilder, UInt32Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext};
use unoflow_operators::columns::{HEIGHT, ROW_ID, WIDTH, row_id_field};
use unoflow_operators::params::PathKind;
use unoflow_operators::rowid::RowIdHasher;
use unoflow_operators::{OpSpec, ParamSpec, ParamType, ParamValue, Params, PartitionOutput, Resource, RowError, RowMapping, image_io};

use super::SchemaError;
use super::lines::TextFormat;
use crate::error::{Error, IoContext, Result};

const FORMATS: &[&str] = &["parquet", "csv", "jsonl", "images"];
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

pub static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "read",
    version: 1,
    summary: "read files (Parquet, CSV, JSON lines, or a folder of images) into a table",
    doc: "`jsonl` also reads a file holding one JSON array of objects (UNO's and DreamBench's lists). `images` reads a folder recursively (PNG, JPEG, WebP) into `path`, `image` (PNG bytes), \
          `width`, `height`; unreadable files go to the error table. `parquet`, `csv` (with a header) \
          and `jsonl` read one file or a folder of them. Rows get a `row_id` from their content \
          unless the data has one.",
    params: vec![
        ParamSpec::required("path", ParamType::Path(PathKind::Input), "file or folder to read, relative to the DAG file")
            .not_fingerprinted(),
        ParamSpec::optional("format", ParamType::Choice(FORMATS), ParamValue::Str("parquet".into()), "what the files are"),
    ],
    inputs: (0, 0),
    resource: Resource::Cpu,
    mapping: RowMapping::Derive,
    partition_rows: 16,
});

/// The format of a `read` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
    Jsonl,
    Images,
}

impl Format {
    pub fn of(params: &Params) -> Result<Self> {
        Ok(match params.str("format")? {
            "parquet" => Self::Parquet,
            "csv" => Self::Csv,
            "jsonl" => Self::Jsonl,
            "images" => Self::Images,
            other => return Err(Error::Internal(format!("unchecked read format {other}"))),
        })
    }

    fn extensions(self) -> &'static [&'static str] {
        match self {
            Self::Parquet => &["parquet"],
            Self::Csv => &["csv"],
            Self::Jsonl => &["jsonl", "json", "ndjson"],
            Self::Images => IMAGE_EXTENSIONS,
        }
    }
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

/// One file to read: its absolute path and its path relative to the `read` root.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub relative: String,
}

/// The files a `read` node reads, sorted by relative path so partitions are deterministic.
pub fn source_files(root: &Path, format: Format) -> Result<Vec<SourceFile>> {
    let meta = std::fs::metadata(root).at(root)?;
    if meta.is_file() {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![SourceFile { path: root.to_path_buf(), relative: name }]);
    }
    files_under(root, &|name| has_extension(name, format.extensions()))
}

/// The files under `root` whose names `keep` accepts (hidden files and folders skipped), sorted
/// by relative path; `root` itself when it is a file.
pub fn files_under(root: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Vec<SourceFile>> {
    if std::fs::metadata(root).at(root)?.is_file() {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![SourceFile { path: root.to_path_buf(), relative: name }]);
    }
    let mut out = Vec::new();
    walk(root, root, keep, &mut out)?;
    out.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, keep: &dyn Fn(&str) -> bool, out: &mut Vec<SourceFile>) -> Result<()> {
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
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(SourceFile { path, relative });
        }
    }
    Ok(())
}

fn has_extension(name: &str, extensions: &[&str]) -> bool {
    name.rsplit_once('.').is_some_and(|(_, ext)| extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// Digest of the names and contents of the files read; part of the node's fingerprint.
pub fn source_digest(root: &Path, format: Format) -> Result<String> {
    let files = source_files(root, format)?;
    let mut hasher = blake3::Hasher::new();
    for file in &files {
        let mut file_hasher = blake3::Hasher::new();
        file_hasher.update_mmap_rayon(&file.path).at(&file.path)?;
        hasher.update(file.relative.as_bytes()).update(&[0]).update(file_hasher.finalize().as_bytes());
    }
    Ok(hasher.finalize().to_hex()[..32].to_string())
}

/// The output schema; tabular files are inspected without reading their rows.
pub async fn output_schema(params: &Params, _dag_dir: &Path) -> Result<SchemaRef, SchemaError> {
    let format = Format::of(params).map_err(|e| SchemaError::at("format", e.to_string()))?;
    if format == Format::Images {
        return Ok(image_schema());
    }
    let path = Path::new(params.str("path").map_err(|e| SchemaError::at("path", e.to_string()))?);
    if let Some(text) = text_format(format, path) {
        let schema = text_schema(path, format, text).map_err(|e| SchemaError::at("path", e.to_string()))?;
        return with_row_id(schema).map_err(|m| SchemaError::at("path", m));
    }
    let ctx = crate::query::session();
    let df = tabular(&ctx, path, format)
        .await
        .map_err(|e| SchemaError::at("path", format!("cannot read {} as {}: {e}", path.display(), params.str("format").unwrap_or("?"))))?;
    let schema: Schema = df.schema().as_arrow().clone();
    with_row_id(schema).map_err(|m| SchemaError::at("path", m))
}

/// Decodes every record of a CSV or JSON-lines source (for `unoflow validate`); the error
/// lists the first bad lines with their files.
pub async fn check_every_record(params: &Params, _schema: &SchemaRef) -> Result<(), SchemaError> {
    let format = Format::of(params).map_err(|e| SchemaError::at("format", e.to_string()))?;
    let path = Path::new(params.str("path").map_err(|e| SchemaError::at("path", e.to_string()))?);
    let Some(text) = text_format(format, path) else { return Ok(()) };
    let schema = Arc::new(text_schema(path, format, text).map_err(|e| SchemaError::at("path", e.to_string()))?);
    let files = source_files(path, format).map_err(|e| SchemaError::at("path", e.to_string()))?;
    let errors = decode_text(&files, text, &schema, &mut |_| Ok(())).map_err(|e| SchemaError::at("path", e.to_string()))?;
    if errors.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 5;
    let mut message = format!(
        "{} record{} cannot be read as the columns inferred from the first records:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors.iter().take(SHOWN) {
        message.push_str(&format!("\n    {}", e.message));
    }
    if errors.len() > SHOWN {
        message.push_str(&format!("\n    … and {} more", errors.len() - SHOWN));
    }
    Err(SchemaError::at("path", message)
        .with_help("fix the records, or let `run` keep going without them: bad records become rows of `errors.NODE`"))
}

/// Puts `row_id` first, adding it when the data has none.
pub fn with_row_id(schema: Schema) -> Result<SchemaRef, String> {
    match schema.field_with_name(ROW_ID) {
        Ok(f) if f.data_type() != &DataType::Utf8 => {
            Err(format!("the data has a `{ROW_ID}` column of type {}; unoflow's row ids are Utf8: rename or cast it", f.data_type()))
        }
        Ok(_) => Ok(Arc::new(schema)),
        Err(_) => {
            let mut fields = vec![Arc::new(row_id_field())];
            fields.extend(schema.fields().iter().cloned());
            Ok(Arc::new(Schema::new(fields)))
        }
    }
}

/// A DataFrame over tabular source files.
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

pub async fn tabular(ctx: &SessionContext, path: &Path, format: Format) -> datafusion::error::Result<DataFrame> {
    let location = path.to_string_lossy();
    // A single file is read whatever its extension; a folder keeps the files with the format's.
    let ext = if path.is_file() {
        path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default()
    } else {
        format!(".{}", format.extensions()[0])
    };
    match format {
        Format::Parquet => ctx.read_parquet(location.as_ref(), ParquetReadOptions::default().file_extension(&ext)).await,
        Format::Csv => ctx.read_csv(location.as_ref(), CsvReadOptions::new().has_header(true).file_extension(&ext)).await,
        Format::Jsonl if path.is_file() && starts_with_array(path) => json_array(ctx, path),
        Format::Jsonl => ctx.read_json(location.as_ref(), JsonReadOptions::default().file_extension(&ext)).await,
        Format::Images => Err(datafusion::error::DataFusionError::Internal("images are not tabular".into())),
    }
}

/// The line-by-line format of a `read` node, if it has one: CSV and JSON lines are decoded
/// record by record so a bad record becomes a row error with its line; Parquet and a JSON
/// array file are read whole.
pub fn text_format(format: Format, path: &Path) -> Option<TextFormat> {
    match format {
        Format::Csv => Some(TextFormat::Csv),
        Format::Jsonl if !(path.is_file() && starts_with_array(path)) => Some(TextFormat::JsonLines),
        _ => None,
    }
}

/// The columns of a CSV or JSON-lines source (its own, without `row_id` unless it has one).
pub fn text_schema(path: &Path, format: Format, text: TextFormat) -> Result<Schema> {
    let files = source_files(path, format)?;
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    if paths.is_empty() {
        return Err(Error::Execution(format!("{}: no {} files", path.display(), format.extensions()[0])));
    }
    super::lines::infer_schema(&paths, text)
}

/// Decodes every file of a CSV or JSON-lines `read` in order into batches of `schema` (the
/// files' own columns), handing each to `emit`; bad records come back as row errors naming
/// their file and line.
pub fn decode_text(
    files: &[SourceFile],
    format: TextFormat,
    schema: &SchemaRef,
    emit: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<Vec<RowError>> {
    let mut errors = Vec::new();
    for file in files {
        for bad in super::lines::decode(&file.path, format, schema, emit)? {
            errors.push(RowError {
                row_id: RowIdHasher::new("read.line").field(file.relative.as_bytes()).field(&bad.line.to_le_bytes()).finish(),
                message: format!("{}:{}: {}", file.relative, bad.line, bad.message),
            });
        }
    }
    Ok(errors)
}

/// Reads one partition of image files.
pub fn read_images(files: &[SourceFile]) -> Result<PartitionOutput> {
    let (mut ids, mut paths, mut images) = (StringBuilder::new(), StringBuilder::new(), BinaryBuilder::new());
    let (mut widths, mut heights) = (UInt32Builder::new(), UInt32Builder::new());
    let mut errors = Vec::new();
    for file in files {
        let loaded = std::fs::read(&file.path)
            .map_err(|e| format!("cannot read {}: {e}", file.path.display()))
            .and_then(|bytes| to_png(&bytes).map(|png| (bytes, png)));
        match loaded {
            Ok((bytes, (png, w, h))) => {
                let id = RowIdHasher::new("read.images").field(file.relative.as_bytes()).field(blake3::hash(&bytes).as_bytes()).finish();
                ids.append_value(id);
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
fn to_png(bytes: &[u8]) -> Result<(Vec<u8>, u32, u32), String> {
    let decoded = image_io::decode_detailed(bytes)?;
    let (w, h) = (decoded.image.width(), decoded.image.height());
    if decoded.format == image::ImageFormat::Png && !decoded.reoriented {
        return Ok((bytes.to_vec(), w, h));
    }
    Ok((image_io::encode_png(&decoded.image)?, w, h))
}
