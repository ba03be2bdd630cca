//! `export`: writes a node's table out of the workspace.
//!
//! - `parquet`, `jsonl`: one file at `path`.
//! - `images`: a folder of PNG files, one per row, named after `name_column` (or the row id).
//! - `uno`: UNO's training data, a folder with `train.json` (`{"prompt", "image_paths": [...],
//!   "image_tgt_path"}` per row, paths relative to the JSON) and the images beside it.
//!
//! A folder is written next to its destination and renamed into place, so a killed export never
//! leaves a half-written folder; an existing folder is replaced only if unoflow wrote it.
//! File names derived from row data are sanitised and can never leave the folder. A `path` on
//! object storage (`s3://…`, as `${workspace}/…` is under a workspace on a bucket) is written
//! there ([`super::export_store`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray, StringBuilder, UInt64Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use unoflow_api::columns::{ColumnRequirement, ROW_ID, row_id_field};
use unoflow_api::params::{ParamType, PathKind};
use unoflow_api::rowid::RowIdHasher;
use unoflow_api::{DeviceDependence, ExecContext, OpSpec, Params, PartitionOutput, Resource, RowMapping};

use super::export_store::StoreDestination;
use super::{Derived, Op, OpKind, OpenContext, SchemaError, Unit, UnitOutput, UnitPlan, UnitRunner, Work};
use crate::data::{NodeData, TableData};
use crate::error::{Error, IoContext, Result};
use crate::query::{self, Verify};

/// Marks a folder as written by `export`, so a later export may replace it.
pub const MARKER: &str = ".unoflow-export";

unoflow_api::choice! {
    /// What an export writes.
    pub enum ExportFormat {
        Parquet = "parquet",
        Jsonl = "jsonl",
        Images = "images",
        Uno = "uno",
    }
}

impl ExportFormat {
    /// Whether the export is a folder (else one file).
    fn is_folder(self) -> bool {
        matches!(self, Self::Images | Self::Uno)
    }
}

unoflow_api::params! {
    /// `export`'s parameters.
    pub struct ExportParams {
        /// destination file (parquet, jsonl) or folder (images, uno)
        pub path: PathBuf = required(ParamType::Path(PathKind::Output)),
        /// what to write
        pub format: ExportFormat = choice(ExportFormat::Parquet),
        /// images: the image column
        pub column: String = optional(ParamType::Str, "image"),
        /// images, uno: column naming the files (default: row id)
        pub name_column: Option<String> = optional(ParamType::Str, ""),
        /// uno: the prompt column
        pub prompt_column: String = optional(ParamType::Str, "prompt"),
        /// uno: the reference image columns, in order
        pub ref_columns: Vec<String> = optional(ParamType::StrList, ["ref_image"]),
        /// uno: the target image column
        pub target_column: String = optional(ParamType::Str, "target_image"),
    }
}

pub static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "export",
    version: 1,
    summary: "write a table out of the workspace (Parquet, JSON lines, PNG files, or UNO training JSON)",
    doc: "`parquet`/`jsonl` write one file at `path`. `images` writes `column` as PNG files named after \
          `name_column` (default: the row id). `uno` writes `train.json` with UNO's fields \
          (`prompt`, `image_paths`, `image_tgt_path`) and the images beside it. Files and folders are replaced \
          atomically, and only if unoflow wrote them. The node's table lists the files written.",
    params: ExportParams::specs(),
    inputs: (1, 1),
    resource: Resource::Cpu,
    mapping: RowMapping::Derive,
    partition_rows: usize::MAX,
    device_dependence: DeviceDependence::Independent,
});

/// The `export` kind.
#[derive(Debug, Clone, Copy)]
pub struct Export;

impl OpKind for Export {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn bind(&self, params: &Params) -> std::result::Result<Arc<dyn Op>, SchemaError> {
        Ok(Arc::new(ExportNode(Arc::new(ExportParams::parse(params).map_err(|e| SchemaError::from_op(&SPEC, e))?))))
    }
}

#[derive(Debug)]
struct ExportNode(Arc<ExportParams>);

#[async_trait::async_trait]
impl Op for ExportNode {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let p = &self.0;
        let mut cols = Vec::new();
        match p.format {
            ExportFormat::Parquet | ExportFormat::Jsonl => {}
            ExportFormat::Images => cols.push(ColumnRequirement::image(&p.column)),
            ExportFormat::Uno => {
                cols.push(ColumnRequirement::text(&p.prompt_column));
                cols.extend(p.ref_columns.iter().map(ColumnRequirement::image));
                cols.push(ColumnRequirement::image(&p.target_column));
            }
        }
        cols.extend(p.name_column.iter().map(ColumnRequirement::text));
        vec![cols]
    }

    /// Refuses, before anything runs, a destination that is not the export's to replace.
    async fn derive(&self, _inputs: &[(String, SchemaRef)]) -> std::result::Result<Derived, SchemaError> {
        let folder = self.0.format.is_folder();
        match StoreDestination::of(&self.0.path, folder) {
            Some(dest) => dest.map_err(|e| e.to_string()).and_then(|d| d.replaceable()),
            None => replaceable(&self.0.path, folder),
        }
        .map_err(|m| SchemaError::at("path", m).with_help("choose another `path`, or move the file away"))?;
        Ok(Derived::table(output_schema()))
    }

    fn units(&self, _inputs: &[NodeData]) -> Result<UnitPlan> {
        Ok(UnitPlan::Listed(vec![Unit { index: 0, key: "whole".into(), rows: 0, work: Work::Whole }]))
    }

    async fn open(&self, ctx: OpenContext) -> Result<Arc<dyn UnitRunner>> {
        let input = ctx.inputs.into_iter().next().ok_or_else(|| Error::Internal("export without input".into()))?;
        Ok(Arc::new(ExportRunner { params: Arc::clone(&self.0), input }))
    }

    fn output_missing(&self, table: &TableData) -> Option<String> {
        let store = StoreDestination::of(&self.0.path, self.0.format.is_folder());
        let mut names = Vec::new();
        for f in table.manifest.row_files() {
            let batches = table.store.read(f, None).ok()?;
            for b in &batches {
                let files = Columns { batch: b }.text("file").ok()?;
                for name in files.iter().flatten() {
                    if store.is_some() {
                        names.push(name.to_string());
                        continue;
                    }
                    let path = if self.0.format.is_folder() { self.0.path.join(name) } else { self.0.path.clone() };
                    if !path.exists() {
                        return Some(path.display().to_string());
                    }
                }
            }
        }
        match store? {
            Ok(dest) => dest.missing(&names).unwrap_or_else(|e| Some(format!("{} ({e})", self.0.path.display()))),
            Err(e) => Some(format!("{} ({e})", self.0.path.display())),
        }
    }
}

struct ExportRunner {
    params: Arc<ExportParams>,
    input: NodeData,
}

#[async_trait::async_trait]
impl UnitRunner for ExportRunner {
    async fn run(&self, _unit: Unit, _exec: ExecContext) -> Result<UnitOutput> {
        let Some(dest) = StoreDestination::of(&self.params.path, self.params.format.is_folder()) else {
            return Ok(UnitOutput::ready(PartitionOutput { rows: self.write_local(Arc::clone(&self.params)).await?, errors: Vec::new() }));
        };
        // Written to a local staging folder as a local export is, then uploaded.
        let dest = dest?;
        let staging = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let local = staging.path().join(dest.file_name());
        let rows = self.write_local(Arc::new(ExportParams { path: local.clone(), ..(*self.params).clone() })).await?;
        let folder = self.params.format.is_folder();
        tokio::task::spawn_blocking(move || if folder { dest.upload_folder(&local) } else { dest.upload_file(&local) })
            .await
            .map_err(|e| Error::Internal(format!("uploading an export panicked: {e}")))??;
        Ok(UnitOutput::ready(PartitionOutput { rows, errors: Vec::new() }))
    }
}

impl ExportRunner {
    /// Writes the export to `params.path`, a local file or folder; returns the node's rows.
    async fn write_local(&self, params: Arc<ExportParams>) -> Result<RecordBatch> {
        let ctx = query::session();
        query::register(&ctx, &self.input, Verify::AlreadyChecked).await?;
        let df: DataFrame = ctx.table(self.input.name()).await?;
        if params.format == ExportFormat::Parquet {
            // DataFusion's writer encodes the columns of a row group in parallel (the rows stay
            // in order): the export is the one Parquet encoding a pipeline cannot avoid.
            let dest = params.path.clone();
            let written = write_file_async(&dest, |tmp| {
                let tmp = tmp.to_string_lossy().into_owned();
                async move {
                    let options = DataFrameWriteOptions::new().with_single_file_output(true);
                    df.write_parquet(&tmp, options, None).await?;
                    Ok(())
                }
            })
            .await?;
            let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut files = FileList::default();
            files.push(name, written, None);
            return files.finish();
        }
        let mut stream = query::ordered_stream(df).await?;
        let runtime = tokio::runtime::Handle::current();
        // Writing files is blocking work: it runs on the blocking pool, pulling the query's
        // batches one at a time so nothing is held in memory.
        tokio::task::spawn_blocking(move || {
            let mut batches = std::iter::from_fn(|| runtime.block_on(stream.next()).map(|b| b.map_err(Error::from)));
            write(&params, &mut batches)
        })
        .await
        .map_err(|e| Error::Internal(format!("export panicked: {e}")))?
    }
}

/// Whether `dest` may be written: absent, or written by an export and unchanged since.
fn replaceable(dest: &Path, folder: bool) -> std::result::Result<(), String> {
    if !dest.exists() {
        return Ok(());
    }
    let ours = if folder {
        dest.is_dir() && dest.join(MARKER).exists()
    } else {
        dest.is_file()
            && std::fs::read_to_string(sibling(dest, "unoflow-export"))
                .ok()
                .is_some_and(|recorded| file_digest(dest).is_ok_and(|d| d == recorded.trim()))
    };
    if ours {
        Ok(())
    } else {
        Err(format!("refusing to replace {}: it exists and was not written by unoflow's export (or changed since)", dest.display()))
    }
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
fn write(params: &ExportParams, batches: Batches<'_>) -> Result<RecordBatch> {
    let dest = &params.path;
    let mut files = FileList::default();
    match params.format {
        ExportFormat::Parquet => return Err(Error::Internal("Parquet exports are written by DataFusion's writer".into())),
        ExportFormat::Jsonl => write_file(dest, |tmp| {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(BufWriter::new(File::create(tmp).at(tmp)?));
            for b in &mut *batches {
                writer.write(&b?)?;
            }
            writer.finish()?;
            writer.into_inner().flush().at(tmp)
        })?,
        ExportFormat::Images => write_folder(dest, |dir| write_images(params, batches, dir, &mut files))?,
        ExportFormat::Uno => write_folder(dest, |dir| write_uno(params, batches, dir, &mut files))?,
    }
    // Files are named relative to `path` (a file export names its own file), so the table does
    // not depend on where the DAG or workspace lives.
    if files.names.is_empty() {
        let bytes = std::fs::metadata(dest).at(dest)?.len();
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
    let tmp = prepare_file(dest)?;
    let written = write(&tmp);
    finish_file(dest, &tmp, written).map(|_| ())
}

/// [`write_file`] for a writer that is a future; returns the file's size.
async fn write_file_async<F: std::future::Future<Output = Result<()>>>(dest: &Path, write: impl FnOnce(&Path) -> F) -> Result<u64> {
    let tmp = prepare_file(dest)?;
    let written = write(&tmp).await;
    finish_file(dest, &tmp, written)
}

/// The temporary sibling to write `dest` through, once `dest` is known to be replaceable.
fn prepare_file(dest: &Path) -> Result<PathBuf> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    // Checked at validation too; checked again here, as the file may have appeared since.
    replaceable(dest, false).map_err(|m| Error::Execution(format!("{m}; choose another `path` or remove it")))?;
    Ok(sibling(dest, "unoflow-tmp"))
}

/// Makes a written temporary file durable and moves it into place (or removes it if writing
/// failed); returns its size.
fn finish_file(dest: &Path, tmp: &Path, written: Result<()>) -> Result<u64> {
    let durable = written.and_then(|()| File::open(tmp).and_then(|f| f.sync_all()).at(tmp)).and_then(|()| file_digest(tmp));
    let digest = match durable {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            return Err(e);
        }
    };
    let bytes = std::fs::metadata(tmp).at(tmp)?.len();
    // The marker first: a crash between the two leaves a marker that does not match the old
    // file, which is then refused, never silently replaced.
    let marker = sibling(dest, "unoflow-export");
    std::fs::write(&marker, format!("{digest}\n")).at(&marker)?;
    std::fs::rename(tmp, dest).at(dest)?;
    Ok(bytes)
}

fn file_digest(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path).at(path)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Writes a folder next to `dest`, then swaps it in; refuses to replace a folder unoflow did not
/// write. A failed write removes its temporary folder.
fn write_folder(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    replaceable(dest, true).map_err(|m| Error::Execution(format!("{m}; choose another `path` or remove it")))?;
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

fn write_images(params: &ExportParams, batches: Batches<'_>, dir: &Path, files: &mut FileList) -> Result<()> {
    let column = params.column.as_str();
    let mut namer = Namer::default();
    for batch in batches {
        let batch = &batch?;
        let cols = Columns { batch };
        let ids = cols.text(ROW_ID)?;
        let images = cols.binary(column)?;
        let names = params.name_column.as_deref().map(|c| cols.text(c)).transpose()?;
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

fn write_uno(params: &ExportParams, batches: Batches<'_>, dir: &Path, files: &mut FileList) -> Result<()> {
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).at(&images_dir)?;
    let mut namer = Namer::default();
    let mut records = Vec::new();
    for batch in batches {
        let batch = &batch?;
        let cols = Columns { batch };
        let ids = cols.text(ROW_ID)?;
        let prompts = cols.text(&params.prompt_column)?;
        let refs = params.ref_columns.iter().map(|c| cols.binary(c)).collect::<Result<Vec<_>>>()?;
        let targets = cols.binary(&params.target_column)?;
        let names = params.name_column.as_deref().map(|c| cols.text(c)).transpose()?;
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
