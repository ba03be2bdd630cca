//! Units: how a node's work is split, and the work of one unit.
//!
//! A unit is the grain of parallelism, progress and resume. Map operators and image reads get
//! many small units (slices of the input, groups of files) that run in parallel; queries,
//! tabular reads and exports are one unit each, streamed. The split depends only on the input
//! data, so a rerun finds the same units and skips those already committed.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use indicatif::ProgressBar;
use unoflow_operators::{ExecContext, PartitionOutput, PartitionProcessor, RowError};

use super::ids::IdAssigner;
use crate::dag::Node;
use crate::error::{Error, Result};
use crate::ops::{OpKind, read};
use crate::workspace::{Commit, FileDigest, Manifest, PartWriter, error_schema};

/// What a unit covers.
#[derive(Debug, Clone)]
pub enum Work {
    /// Rows `offset..offset+len` of one part file of the first input.
    Slice { file: FileDigest, offset: usize, len: usize },
    /// A group of image files.
    Files(Vec<read::SourceFile>),
    /// The whole node, streamed.
    Whole,
    /// Nothing to do (an empty input); still committed, so the output has a schema.
    Empty,
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub index: usize,
    /// Identifies the unit's coverage; commit records with another key are not reused.
    pub key: String,
    pub rows: u64,
    pub work: Work,
}

impl Unit {
    pub fn file_name(&self, suffix: &str) -> String {
        format!("u{:06}{suffix}.parquet", self.index)
    }
}

/// Splits a node's work into units.
pub fn split(node: &Node, inputs: &[Arc<Manifest>]) -> Result<Vec<Unit>> {
    let per_unit = node.op.spec().partition_rows.max(1);
    let mut units = Vec::new();
    match &node.op {
        OpKind::Read if read::Format::of(&node.params)? == read::Format::Images => {
            let files = read::source_files(Path::new(node.params.str("path")?), read::Format::Images)?;
            for chunk in files.chunks(per_unit) {
                let key = format!("files:{}..{}:{}", chunk[0].relative, chunk[chunk.len() - 1].relative, chunk.len());
                units.push(Unit { index: units.len(), key, rows: chunk.len() as u64, work: Work::Files(chunk.to_vec()) });
            }
        }
        OpKind::Read | OpKind::Sql | OpKind::Export => {
            let rows = inputs.iter().map(|m| m.rows).sum();
            units.push(Unit { index: 0, key: "whole".into(), rows, work: Work::Whole });
        }
        OpKind::Map(_) => {
            for file in inputs[0].row_files() {
                let rows = file.rows as usize;
                for offset in (0..rows).step_by(per_unit) {
                    let len = per_unit.min(rows - offset);
                    let key = format!("{}:{offset}+{len}", &file.blake3[..16]);
                    units.push(Unit { index: units.len(), key, rows: len as u64, work: Work::Slice { file: file.clone(), offset, len } });
                }
            }
        }
    }
    if units.is_empty() {
        units.push(Unit { index: 0, key: "empty".into(), rows: 0, work: Work::Empty });
    }
    Ok(units)
}

/// Where a unit's files go.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub tmp_dir: &'a Path,
    pub node_dir: &'a Path,
    pub input_digest: &'a str,
}

/// Writes a unit's rows and errors and its commit record.
pub fn commit(target: &Target<'_>, unit: &Unit, output: PartitionOutput, started: Instant) -> Result<Commit> {
    let mut writer = PartWriter::create(target.tmp_dir, target.node_dir, &unit.file_name(""), output.rows.schema())?;
    writer.write(&output.rows)?;
    let rows = writer.finish()?;
    let errors = write_errors(target, unit, &output.errors)?;
    finish_commit(target, unit, rows, errors, started)
}

fn write_errors(target: &Target<'_>, unit: &Unit, errors: &[RowError]) -> Result<Option<FileDigest>> {
    if errors.is_empty() {
        return Ok(None);
    }
    let ids: Vec<&str> = errors.iter().map(|e| e.row_id.as_str()).collect();
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    let batch = RecordBatch::try_new(
        error_schema(),
        vec![Arc::new(datafusion::arrow::array::StringArray::from(ids)), Arc::new(datafusion::arrow::array::StringArray::from(messages))],
    )?;
    let mut writer = PartWriter::create(target.tmp_dir, target.node_dir, &unit.file_name(".errors"), error_schema())?;
    writer.write(&batch)?;
    Ok(Some(writer.finish()?))
}

fn finish_commit(target: &Target<'_>, unit: &Unit, rows: FileDigest, errors: Option<FileDigest>, started: Instant) -> Result<Commit> {
    let commit = Commit {
        unit: unit.index,
        key: unit.key.clone(),
        input_digest: target.input_digest.to_string(),
        rows,
        errors,
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::workspace::write_commit(target.node_dir, &commit)?;
    Ok(commit)
}

/// Runs a unit of a map operator (through its prepared processor) or an image read (blocking
/// CPU work).
pub fn run_blocking(
    node: &Node,
    processor: Option<&dyn PartitionProcessor>,
    input_dir: Option<&Path>,
    unit: &Unit,
    ctx: &ExecContext,
) -> Result<PartitionOutput> {
    match (&node.op, &unit.work, processor) {
        (OpKind::Read, Work::Files(files), _) => read::read_images(files),
        (OpKind::Map(_), Work::Slice { file, offset, len }, Some(processor)) => {
            let dir = input_dir.ok_or_else(|| Error::Internal("map unit without input".into()))?;
            let batches = crate::workspace::read_file(dir, file, Some((*offset, *len)))?;
            let schema = batches.first().map(|b| b.schema()).ok_or_else(|| Error::Internal("empty input slice".into()))?;
            let input = concat_batches(&schema, &batches)?;
            Ok(processor.process(ctx, &input)?)
        }
        (_, Work::Empty, _) => Ok(PartitionOutput { rows: RecordBatch::new_empty(Arc::clone(&node.schema)), errors: Vec::new() }),
        _ => Err(Error::Internal(format!("unit {:?} does not fit op `{}`", unit.key, node.op.name()))),
    }
}

/// Streams a query's batches into the unit's part file, giving rows their ids, and commits it.
pub async fn stream_into(
    target: &Target<'_>,
    unit: &Unit,
    node: &Node,
    stream: SendableRecordBatchStream,
    bar: &ProgressBar,
    started: Instant,
) -> Result<Commit> {
    let rows = stream_rows(target, unit, node, stream.map(|b| b.map_err(Error::from)), bar).await?;
    finish_commit(target, unit, rows, None, started)
}

/// Commits a unit whose rows [`stream_rows`] wrote, with its failed rows.
pub fn commit_streamed(target: &Target<'_>, unit: &Unit, rows: FileDigest, errors: &[RowError], started: Instant) -> Result<Commit> {
    let errors = write_errors(target, unit, errors)?;
    finish_commit(target, unit, rows, errors, started)
}

/// Streams batches into the unit's part file, giving rows their ids. Ids and encoding run on a
/// blocking thread fed through a small queue, so they overlap with the producer.
pub async fn stream_rows(
    target: &Target<'_>,
    unit: &Unit,
    node: &Node,
    mut stream: impl futures::Stream<Item = Result<RecordBatch>> + Unpin + Send,
    bar: &ProgressBar,
) -> Result<FileDigest> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(4);
    let (tmp_dir, node_dir, name) = (target.tmp_dir.to_path_buf(), target.node_dir.to_path_buf(), unit.file_name(""));
    let (schema, bar_w) = (Arc::clone(&node.schema), bar.clone());
    let writer = tokio::task::spawn_blocking(move || -> Result<FileDigest> {
        let mut ids = IdAssigner::new();
        let mut writer: Option<PartWriter> = None;
        while let Some(batch) = rx.blocking_recv() {
            let batch = ids.assign(batch)?;
            let w = match writer.as_mut() {
                Some(w) => w,
                None => writer.insert(PartWriter::create(&tmp_dir, &node_dir, &name, batch.schema())?),
            };
            w.write(&batch)?;
            bar_w.inc(batch.num_rows() as u64);
            if bar_w.position() > bar_w.length().unwrap_or(0) {
                bar_w.set_length(bar_w.position());
            }
        }
        match writer {
            Some(w) => w.finish(),
            None => PartWriter::create(&tmp_dir, &node_dir, &name, schema)?.finish(),
        }
    });
    let mut failure = None;
    while let Some(batch) = stream.next().await {
        match batch {
            Ok(b) => {
                // A closed queue means the writer failed; its error is returned below.
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| Error::Internal(format!("part writer panicked: {e}")))?;
    if let Some(e) = failure {
        return Err(e);
    }
    written
}
