//! Compute operators (`unoflow-operators`) as nodes: their units are slices of the first input
//! (or chunks of a view's rows; the whole input for an operator that compares rows with one
//! another), processed in parallel on the blocking pool. Further inputs are read whole when the
//! node opens.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use unoflow_api::columns::ColumnRequirement;
use unoflow_api::params::{ParamType, PathKind};
use unoflow_api::{
    Configured, DeviceDependence, ExecContext, OpSpec, Operator, ParamValue, Params, PartitionOutput, PartitionProcessor, Resource,
};

use super::{Derived, Op, OpKind, OpenContext, SchemaError, Unit, UnitOutput, UnitPlan, UnitRunner, Work};
use crate::data::NodeData;
use crate::error::{Error, Result};

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
        Ok(Arc::new(ComputeNode { op: Arc::clone(&self.op), params: params.clone(), configured, runtime: OnceLock::new() }))
    }
}

#[derive(Debug)]
struct ComputeNode {
    op: Arc<dyn Operator>,
    /// The checked parameters, for the digest of the files the node's path parameters name.
    params: Params,
    configured: Arc<dyn Configured>,
    /// [`Configured::runtime`], once asked.
    runtime: OnceLock<BTreeMap<String, String>>,
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

    /// The digest of what the operator reads from disk: the relative names and content digests
    /// of every file under each of its `Path(Input)` parameters (model folders, word lists). The
    /// paths themselves are not in it (nor in the fingerprint's parameters): the same weights at
    /// another path, on another disk or host, are the same node.
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
            // A URL enters by its store's listing (names, sizes, ETags): a remote object's
            // identity is its store's checksum, not a digest of bytes `plan` would download.
            if let Some(url) = crate::remote::RemoteUrl::recognise(path) {
                hasher.update(b"remote\0").update(crate::remote::listing(&url?)?.digest().as_bytes());
                continue;
            }
            for (file, relative) in super::read::files_under(Path::new(path), &|_| true)? {
                hasher.update(relative.as_bytes()).update(&[0]).update(crate::digest_cache::file_digest(&file)?.as_bytes());
            }
        }
        Ok(any.then(|| hasher.finalize().to_hex()[..32].to_string()))
    }

    fn data_parallel(&self) -> bool {
        self.configured.data_parallel()
    }

    fn runtime(&self) -> Result<BTreeMap<String, String>> {
        // Asked by every plan and run of the process; the operator may start an interpreter to
        // answer, so it is asked once.
        if let Some(known) = self.runtime.get() {
            return Ok(known.clone());
        }
        let runtime = self.configured.runtime()?;
        Ok(self.runtime.get_or_init(|| runtime).clone())
    }

    fn resource(&self) -> Resource {
        self.configured.resource().unwrap_or(self.op.spec().resource)
    }

    fn device_dependence(&self) -> DeviceDependence {
        self.configured.device_dependence().unwrap_or(self.op.spec().device_dependence)
    }

    fn units(&self, inputs: &[NodeData]) -> Result<UnitPlan> {
        let whole_input = self.configured.whole_input();
        let per_unit =
            if whole_input { usize::MAX } else { self.configured.rows_per_unit().unwrap_or(self.op.spec().partition_rows).max(1) };
        let input = inputs.first().ok_or_else(|| Error::Internal(format!("`{}` without input", self.op.spec().name)))?;
        let table = match input {
            // A data-parallel node (a training) and one comparing rows with one another (a
            // dedup) take their whole input as one unit; a table in several part files is
            // streamed as one, as a view is.
            NodeData::Table(table) if !self.configured.data_parallel() && !whole_input => table,
            _ => return Ok(UnitPlan::Chunks { source: input.clone(), rows_per_unit: per_unit }),
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
        let mut others = Vec::with_capacity(ctx.inputs.len().saturating_sub(1));
        for other in ctx.inputs.iter().skip(1) {
            others.push(crate::query::collect_rows(other).await?);
        }
        let (op, params, configured) = (Arc::clone(&self.op), self.params.clone(), Arc::clone(&self.configured));
        let env = ctx.env;
        // Fetching remote weights and loading them is slow blocking work.
        let processor = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok(with_local_copies(op.as_ref(), &params, configured)?.prepare_with_inputs(&env, &input_schema, &others)?)
        })
        .await
        .map_err(|e| Error::Internal(format!("preparing `{}` panicked: {e}", self.op.spec().name)))??;
        Ok(Arc::new(ComputeRunner { processor, schema: ctx.schema }))
    }
}

/// The operator configured with each URL among its input paths replaced by the local copy in
/// this host's cache (fetched if need be): loaders open local folders only.
fn with_local_copies(op: &dyn Operator, params: &Params, configured: Arc<dyn Configured>) -> Result<Arc<dyn Configured>> {
    let mut local = params.clone();
    let mut remote = false;
    for param in op.spec().params.iter().filter(|p| p.ty == ParamType::Path(PathKind::Input)) {
        if let Some(ParamValue::Str(value)) = params.get(param.name)
            && crate::remote::RemoteUrl::recognise(value).is_some()
        {
            local.insert(param.name, ParamValue::Str(crate::remote::local_path(value)?.to_string_lossy().into_owned()));
            remote = true;
        }
    }
    if !remote {
        return Ok(configured);
    }
    Ok(op.configure(&local)?)
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
