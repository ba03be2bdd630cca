//! `export`: writes a node's table out of the workspace.
//!
//! - `parquet`, `jsonl`: one file at `path`.
//! - `images`: a folder of PNG files, one per row, named after `name_column` (or the row id).
//! - `uno`: UNO's training data, a folder with `train.json` (`{"prompt", "image_paths": [...],
//!   "image_tgt_path"}` per row, paths relative to the JSON) and the images beside it.
//!
//! A folder is written next to its destination and renamed into place, so a killed export never
//! leaves a half-written folder; an existing folder is replaced only if unoflow wrote it.
//! File names derived from row data are sanitised and can never leave the folder.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray, StringBuilder, UInt64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use unoflow_operators::columns::{ColumnRequirement, ROW_ID, row_id_field};
use unoflow_operators::params::PathKind;
use unoflow_operators::rowid::RowIdHasher;
use unoflow_operators::{OpSpec, ParamSpec, ParamType, ParamValue, Params, Resource, RowMapping};

use super::SchemaError;
use crate::error::{Error, IoContext, Result};

const FORMATS: &[&str] = &["parquet", "jsonl", "images", "uno"];
/// Marks a folder as written by `export`, so a later export may replace it.
pub const MARKER: &str = ".unoflow-export";

pub static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "export",
    version: 1,
    summary: "write a table out of the workspace (Parquet, JSON lines, PNG files, or UNO training JSON)",
    doc: "`parquet`/`jsonl` write one file at `path`. `images` writes `column` as PNG files named after \
          `name_column` (default: the row id). `uno` writes `train.json` with UNO's fields \
          (`prompt`, `image_paths`, `image_tgt_path`) and the images beside it. Folders are replaced \
          atomically, and only if unoflow wrote them. The node's table lists the files written.",
    params: vec![
        ParamSpec::required("path", ParamType::Path(PathKind::Output), "destination file (parquet, jsonl) or folder (images, uno)"),
        ParamSpec::optional("format", ParamType::Choice(FORMATS), ParamValue::Str("parquet".into()), "what to write"),
        ParamSpec::optional("column", ParamType::Str, ParamValue::Str("image".into()), "images: the image column"),
        ParamSpec::optional(
            "name_column",
            ParamType::Str,
            ParamValue::Str(String::new()),
            "images, uno: column naming the files (default: row id)",
        ),
        ParamSpec::optional("prompt_column", ParamType::Str, ParamValue::Str("prompt".into()), "uno: the prompt column"),
        ParamSpec::optional(
            "ref_columns",
            ParamType::StrList,
            ParamValue::List(vec![ParamValue::Str("ref_image".into())]),
            "uno: the reference image columns, in order",
        ),
        ParamSpec::optional("target_column", ParamType::Str, ParamValue::Str("target_image".into()), "uno: the target image column"),
    ],
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Derive,
    partition_rows: usize::MAX,
});

/// The export's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Jsonl,
    Images,
    Uno,
}

impl Format {
    pub fn of(params: &Params) -> Result<Self> {
        Ok(match params.str("format")? {
            "parquet" => Self::Parquet,
            "jsonl" => Self::Jsonl,
            "images" => Self::Images,
            "uno" => Self::Uno,
            other => return Err(Error::Internal(format!("unchecked export format {other}"))),
        })
    }
}

pub fn required_columns(params: &Params) -> Result<Vec<Vec<ColumnRequirement>>, SchemaError> {
    let err = |e: unoflow_operators::OpError| SchemaError { param: None, message: e.to_string(), help: None };
    let mut cols = Vec::new();
    let name_column = params.str("name_column").map_err(err)?;
    match Format::of(params).map_err(|e| SchemaError::at("format", e.to_string()))? {
        Format::Parquet | Format::Jsonl => {}
        Format::Images => cols.push(ColumnRequirement::image(params.str("column").map_err(err)?)),
        Format::Uno => {
            cols.push(ColumnRequirement::text(params.str("prompt_column").map_err(err)?));
            for c in params.str_list("ref_columns").map_err(err)? {
                cols.push(ColumnRequirement::image(c));
            }
            cols.push(ColumnRequirement::image(params.str("target_column").map_err(err)?));
        }
    }
    if !name_column.is_empty() {
        cols.push(ColumnRequirement::text(name_column));
    }
    Ok(vec![cols])
}

/// One row per file written: its name relative to `path` (a file export: the file's name).
pub fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        row_id_field(),
        Field::new("file", DataType::Utf8, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("source_row_id", DataType::Utf8, true),
    ]))
}

/// Turns row data into a file name that stays inside its folder: only ASCII letters, digits,
/// `-`, `_` and `.` survive, leading dots are dropped, and the length is bounded.
pub fn sanitize_file_name(raw: &str) -> String {
    let mapped: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    let trimmed = mapped.trim_start_matches('.');
    trimmed.chars().take(120).collect()
}

/// Strips an image extension, so `cat/00.jpg` names `cat_00.png`, not `cat_00.jpg.png`.
fn stem(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext)) if ["png", "jpg", "jpeg", "webp"].iter().any(|e| e.eq_ignore_ascii_case(ext)) && !stem.is_empty() => stem,
        _ => name,
    }
}

/// The input of an export, streamed batch by batch.
pub type Batches<'a> = &'a mut dyn Iterator<Item = Result<RecordBatch>>;

/// Writes the batches as the export describes, streaming; returns the rows of the node's table.
pub fn write(params: &Params, schema: &SchemaRef, batches: Batches<'_>) -> Result<RecordBatch> {
    let dest = PathBuf::from(params.str("path")?);
    let mut files = FileList::default();
    match Format::of(params)? {
        Format::Parquet => write_file(&dest, |tmp| {
            let mut writer = ArrowWriter::try_new(BufWriter::new(File::create(tmp).at(tmp)?), Arc::clone(schema), None)?;
            for b in &mut *batches {
                writer.write(&b?)?;
            }
            writer.close()?;
            Ok(())
        })?,
        Format::Jsonl => write_file(&dest, |tmp| {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(BufWriter::new(File::create(tmp).at(tmp)?));
            for b in &mut *batches {
                writer.write(&b?)?;
            }
            writer.finish()?;
            writer.into_inner().flush().at(tmp)
        })?,
        Format::Images => write_folder(&dest, |dir| write_images(params, batches, dir, &mut files))?,
        Format::Uno => write_folder(&dest, |dir| write_uno(params, batches, dir, &mut files))?,
    }
    // Files are named relative to `path` (a file export names its own file), so the table does
    // not depend on where the DAG or workspace lives.
    if files.names.is_empty() {
        let bytes = std::fs::metadata(&dest).at(&dest)?.len();
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files.push(name, bytes, None);
    }
    files.finish()
}

#[derive(Default)]
struct FileList {
    names: Vec<String>,
    bytes: Vec<u64>,
    sources: Vec<Option<String>>,
}

impl FileList {
    fn push(&mut self, name: String, bytes: u64, source: Option<String>) {
        self.names.push(name);
        self.bytes.push(bytes);
        self.sources.push(source);
    }

    fn finish(self) -> Result<RecordBatch> {
        let (mut ids, mut names, mut bytes, mut sources) =
            (StringBuilder::new(), StringBuilder::new(), UInt64Builder::new(), StringBuilder::new());
        for ((n, b), s) in self.names.iter().zip(&self.bytes).zip(&self.sources) {
            ids.append_value(RowIdHasher::new("export").field(n.as_bytes()).finish());
            names.append_value(n);
            bytes.append_value(*b);
            sources.append_option(s.as_deref());
        }
        let cols: Vec<ArrayRef> =
            vec![Arc::new(ids.finish()), Arc::new(names.finish()), Arc::new(bytes.finish()), Arc::new(sources.finish())];
        Ok(RecordBatch::try_new(output_schema(), cols)?)
    }
}

/// Writes a file through a temporary sibling and renames it into place. An existing file is
/// replaced only if an export wrote it and it has not changed since (its marker beside it holds
/// the digest written); a failed write leaves nothing behind.
fn write_file(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let marker = sibling(dest, "unoflow-export");
    if dest.exists() {
        let ours = std::fs::read_to_string(&marker).ok().is_some_and(|recorded| file_digest(dest).is_ok_and(|d| d == recorded.trim()));
        if !ours {
            return Err(Error::Execution(format!(
                "refusing to replace {}: it exists and was not written by unoflow's export (or changed since); choose another `path` or remove it",
                dest.display()
            )));
        }
    }
    let tmp = sibling(dest, "unoflow-tmp");
    let written = write(&tmp).and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()).at(&tmp)).and_then(|()| file_digest(&tmp));
    let digest = match written {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The marker first: a crash between the two leaves a marker that does not match the old
    // file, which is then refused, never silently replaced.
    std::fs::write(&marker, format!("{digest}\n")).at(&marker)?;
    std::fs::rename(&tmp, dest).at(dest)
}

fn file_digest(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path).at(path)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Writes a folder next to `dest`, then swaps it in; refuses to replace a folder unoflow did not
/// write. A failed write removes its temporary folder.
fn write_folder(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dest.exists() && !dest.join(MARKER).exists() {
        return Err(Error::Execution(format!(
            "refusing to replace {}: it exists and was not written by unoflow's export; choose another `path` or remove it",
            dest.display()
        )));
    }
    let tmp = sibling(dest, "unoflow-tmp");
    let old = sibling(dest, "unoflow-old");
    for stale in [&tmp, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).at(stale)?;
        }
    }
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    if let Err(e) = write(&tmp).and_then(|()| std::fs::write(tmp.join(MARKER), b"written by unoflow export\n").at(&tmp)) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        std::fs::rename(dest, &old).at(dest)?;
    }
    std::fs::rename(&tmp, dest).at(dest)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(())
}

fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}"))
}

/// Column accessors for one batch.
struct Columns<'a> {
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn text(&self, name: &str) -> Result<StringArray> {
        let col = self.batch.column_by_name(name).ok_or_else(|| Error::Execution(format!("export: no column `{name}`")))?;
        let col = cast(col, &DataType::Utf8)?;
        col.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| Error::Internal("cast to Utf8".into()))
    }

    fn binary(&self, name: &str) -> Result<BinaryArray> {
        let col = self.batch.column_by_name(name).ok_or_else(|| Error::Execution(format!("export: no column `{name}`")))?;
        let col = cast(col, &DataType::Binary)?;
        col.as_any().downcast_ref::<BinaryArray>().cloned().ok_or_else(|| Error::Internal("cast to Binary".into()))
    }
}

/// Picks unique, sanitised file stems.
#[derive(Default)]
struct Namer {
    used: std::collections::HashSet<String>,
}

impl Namer {
    fn name(&mut self, raw: Option<&str>, row_id: &str) -> String {
        let base = raw.map(|r| sanitize_file_name(stem(r))).filter(|s| !s.is_empty()).unwrap_or_else(|| row_id.to_string());
        let name = if self.used.contains(&base) { format!("{base}-{}", &row_id[..row_id.len().min(8)]) } else { base };
        self.used.insert(name.clone());
        name
    }
}

fn write_png(dir: &Path, name: &str, bytes: &[u8]) -> Result<u64> {
    let path = dir.join(name);
    if !path.starts_with(dir) || path.parent() != Some(dir) {
        return Err(Error::Internal(format!("export file name {name:?} escapes {}", dir.display())));
    }
    std::fs::write(&path, bytes).at(&path)?;
    Ok(bytes.len() as u64)
}

fn write_images(params: &Params, batches: Batches<'_>, dir: &Path, files: &mut FileList) -> Result<()> {
    let column = params.str("column")?;
    let name_column = params.str("name_column")?;
    let mut namer = Namer::default();
    for batch in batches {
        let batch = &batch?;
        let cols = Columns { batch };
        let ids = cols.text(ROW_ID)?;
        let images = cols.binary(column)?;
        let names = if name_column.is_empty() { None } else { Some(cols.text(name_column)?) };
        for row in 0..batch.num_rows() {
            if images.is_null(row) {
                continue;
            }
            let id = ids.value(row);
            let raw = names.as_ref().filter(|n| !n.is_null(row)).map(|n| n.value(row));
            let file = format!("{}.png", namer.name(raw, id));
            let bytes = write_png(dir, &file, images.value(row))?;
            files.push(file, bytes, Some(id.to_string()));
        }
    }
    Ok(())
}

fn write_uno(params: &Params, batches: Batches<'_>, dir: &Path, files: &mut FileList) -> Result<()> {
    let name_column = params.str("name_column")?;
    let ref_columns = params.str_list("ref_columns")?;
    let target_column = params.str("target_column")?;
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).at(&images_dir)?;
    let mut namer = Namer::default();
    let mut records = Vec::new();
    for batch in batches {
        let batch = &batch?;
        let cols = Columns { batch };
        let ids = cols.text(ROW_ID)?;
        let prompts = cols.text(params.str("prompt_column")?)?;
        let refs = ref_columns.iter().map(|c| cols.binary(c)).collect::<Result<Vec<_>>>()?;
        let targets = cols.binary(target_column)?;
        let names = if name_column.is_empty() { None } else { Some(cols.text(name_column)?) };
        for row in 0..batch.num_rows() {
            let id = ids.value(row);
            let raw = names.as_ref().filter(|n| !n.is_null(row)).map(|n| n.value(row));
            let stem = namer.name(raw, id);
            let mut image_paths = Vec::new();
            for (k, r) in refs.iter().enumerate() {
                if r.is_null(row) {
                    continue;
                }
                let file = format!("{stem}_ref{k}.png");
                let bytes = write_png(&images_dir, &file, r.value(row))?;
                files.push(format!("images/{file}"), bytes, Some(id.to_string()));
                image_paths.push(format!("images/{file}"));
            }
            let target = format!("{stem}_target.png");
            let bytes = write_png(&images_dir, &target, targets.value(row))?;
            files.push(format!("images/{target}"), bytes, Some(id.to_string()));
            records.push(serde_json::json!({
                "prompt": prompts.value(row),
                "image_paths": image_paths,
                "image_tgt_path": format!("images/{target}"),
            }));
        }
    }
    let json = dir.join("train.json");
    let text = serde_json::to_vec_pretty(&records).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(&json, &text).at(&json)?;
    files.push("train.json".into(), text.len() as u64, None);
    Ok(())
}

/// The first file an export wrote that is no longer there, if any.
pub fn missing_output(node_dir: &Path, manifest: &crate::workspace::Manifest, params: &Params) -> Option<String> {
    let dest = PathBuf::from(params.str("path").ok()?);
    let folder = matches!(Format::of(params).ok()?, Format::Images | Format::Uno);
    for f in manifest.row_files() {
        let batches = crate::workspace::read_file(node_dir, f, None).ok()?;
        for b in &batches {
            let files = Columns { batch: b }.text("file").ok()?;
            for name in files.iter().flatten() {
                let path = if folder { dest.join(name) } else { dest.clone() };
                if !path.exists() {
                    return Some(path.display().to_string());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize_file_name(".."), "");
        assert_eq!(sanitize_file_name("a b/c\\d"), "a_b_c_d");
        assert_eq!(sanitize_file_name("ok-name_1.png"), "ok-name_1.png");
        assert_eq!(stem("cat/00.jpg"), "cat/00");
        let mut namer = Namer::default();
        assert_eq!(namer.name(Some(".."), "abcdef0123"), "abcdef0123");
        assert_eq!(namer.name(Some("x.png"), "1111111111"), "x");
        assert_eq!(namer.name(Some("x.jpg"), "2222222222"), "x-22222222");
    }
}
