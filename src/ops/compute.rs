//! Compute operators (`unoflow-operators`) as nodes: their units are slices of the first input
//! (or chunks of a view's rows), processed in parallel on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use unoflow_api::columns::ColumnRequirement;
use unoflow_api::params::{ParamType, PathKind};
use unoflow_api::{Configured, ExecContext, OpSpec, Operator, ParamValue, Params, PartitionOutput, PartitionProcessor};

use super::{Derived, Op, OpKind, OpenContext, SchemaError, Unit, UnitOutput, UnitPlan, UnitRunner, Work};
use crate::data::NodeData;
use crate::error::{Error, IoContext, Result};

/// A compute operator as a kind of node.
#[derive(Debug, Clone)]
pub struct ComputeKind {
    op: Arc<dyn Operator>,
}

impl ComputeKind {
    pub fn new(op: Arc<dyn Operator>) -> Self {
        Self { op }
    }
}

impl OpKind for ComputeKind {
    fn spec(&self) -> &OpSpec {
        self.op.spec()
    }

    fn bind(&self, params: &Params) -> std::result::Result<Arc<dyn Op>, SchemaError> {
        let configured = self.op.configure(params).map_err(|e| SchemaError::from_op(self.op.spec(), e))?;
        Ok(Arc::new(ComputeNode { op: Arc::clone(&self.op), params: params.clone(), configured }))
    }
}

#[derive(Debug)]
struct ComputeNode {
    op: Arc<dyn Operator>,
    /// The checked parameters, for the digest of the files the node's path parameters name.
    params: Params,
    configured: Arc<dyn Configured>,
}

#[async_trait::async_trait]
impl Op for ComputeNode {
    fn spec(&self) -> &OpSpec {
        self.op.spec()
    }

    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        self.configured.required_columns()
    }

    async fn derive(&self, inputs: &[(String, SchemaRef)]) -> std::result::Result<Derived, SchemaError> {
        let schemas: Vec<SchemaRef> = inputs.iter().map(|(_, s)| Arc::clone(s)).collect();
        let schema = self.configured.output_schema(&schemas).map_err(|e| SchemaError::from_op(self.op.spec(), e))?;
        Ok(Derived::table(schema))
    }

    /// The digest of what the operator reads from disk: every file under each of its
    /// `Path(Input)` parameters (model folders, word lists).
    fn source_digest(&self) -> Result<Option<String>> {
        let mut hasher = blake3::Hasher::new();
        let mut any = false;
        for param in self.op.spec().params.iter().filter(|p| p.ty == ParamType::Path(PathKind::Input)) {
            let Some(ParamValue::Str(path)) = self.params.get(param.name) else { continue };
            if path.is_empty() {
                continue;
            }
            any = true;
            hasher.update(param.name.as_bytes()).update(&[0]);
            for (file, relative) in super::read::files_under(Path::new(path), &|_| true)? {
                hasher.update(relative.as_bytes()).update(&[0]).update(file_digest(&file)?.as_bytes());
            }
        }
        Ok(any.then(|| hasher.finalize().to_hex()[..32].to_string()))
    }

    fn units(&self, inputs: &[NodeData]) -> Result<UnitPlan> {
        let per_unit = self.op.spec().partition_rows.max(1);
        let input = inputs.first().ok_or_else(|| Error::Internal(format!("`{}` without input", self.op.spec().name)))?;
        let table = match input {
            NodeData::Table(table) => table,
            NodeData::View(_) => return Ok(UnitPlan::Chunks { source: input.clone(), rows_per_unit: per_unit }),
        };
        let mut units = Vec::new();
        for file in table.manifest.row_files() {
            let rows = file.rows as usize;
            for offset in (0..rows).step_by(per_unit) {
                let len = per_unit.min(rows - offset);
                units.push(Unit {
                    index: units.len(),
                    key: format!("{}:{offset}+{len}", &file.blake3[..16]),
                    rows: len as u64,
                    work: Work::Slice { input: Arc::clone(table), file: file.clone(), offset, len },
                });
            }
        }
        if units.is_empty() {
            units.push(Unit { index: 0, key: "empty".into(), rows: 0, work: Work::Empty });
        }
        Ok(UnitPlan::Listed(units))
    }

    async fn open(&self, ctx: OpenContext) -> Result<Arc<dyn UnitRunner>> {
        let input_schema = ctx.input_schemas.first().cloned().ok_or_else(|| Error::Internal("compute node without input".into()))?;
        let configured = Arc::clone(&self.configured);
        let env = ctx.env;
        // Loading weights is slow blocking work.
        let processor = tokio::task::spawn_blocking(move || configured.prepare(&env, &input_schema))
            .await
            .map_err(|e| Error::Internal(format!("preparing `{}` panicked: {e}", self.op.spec().name)))??;
        Ok(Arc::new(ComputeRunner { processor, schema: ctx.schema }))
    }
}

struct ComputeRunner {
    processor: Arc<dyn PartitionProcessor>,
    schema: SchemaRef,
}

#[async_trait::async_trait]
impl UnitRunner for ComputeRunner {
    async fn run(&self, unit: Unit, exec: ExecContext) -> Result<UnitOutput> {
        let processor = Arc::clone(&self.processor);
        let schema = Arc::clone(&self.schema);
        let output = tokio::task::spawn_blocking(move || -> Result<PartitionOutput> {
            let input = match unit.work {
                Work::Slice { input, file, offset, len } => {
                    let batches = input.store.read(&file, Some((offset, len)))?;
                    let schema = batches.first().map(RecordBatch::schema).ok_or_else(|| Error::Internal("empty input slice".into()))?;
                    concat_batches(&schema, &batches)?
                }
                Work::Rows(batch) => batch,
                Work::Empty => return Ok(PartitionOutput { rows: RecordBatch::new_empty(schema), errors: Vec::new() }),
                other => return Err(Error::Internal(format!("a compute unit cannot be {other:?}"))),
            };
            Ok(processor.process(&exec, &input)?)
        })
        .await
        .map_err(|e| Error::Internal(format!("a unit panicked: {e}")))??;
        Ok(UnitOutput::ready(output))
    }
}

/// Files above this size are identified by size, modification time and their first and last
/// MiB instead of their whole content: hashing FLUX.1-dev's 24 GB at every `plan` would cost
/// seconds to minutes, and a checkpoint that changes keeps neither its size, its time nor its
/// head and tail.
const FULL_HASH_LIMIT: u64 = 256 << 20;

/// The content digest of a file, or for a file above [`FULL_HASH_LIMIT`] the digest of its
/// modification time and its sampled digest (size, first and last MiB).
fn file_digest(path: &Path) -> Result<blake3::Hash> {
    let meta = std::fs::metadata(path).at(path)?;
    let mut hasher = blake3::Hasher::new();
    if meta.len() <= FULL_HASH_LIMIT {
        hasher.update_mmap_rayon(path).at(path)?;
        return Ok(hasher.finalize());
    }
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    hasher.update(&modified.to_le_bytes()).update(unoflow_operators::generate::sampled_digest(path).at(path)?.as_bytes());
    Ok(hasher.finalize())
}
