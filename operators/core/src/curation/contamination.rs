//! `contamination`: which rows show an image of the evaluation set (DreamBench's references)
//! they will be scored against — a copy, a re-encode, a crop. Trained on, such a row makes the
//! evaluation measure memory rather than generalisation. A ledger: every row stays, with
//! `contaminated`, the `nearest` evaluation row and its `similarity`.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, BooleanArray, Float32Array, StringArray};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::columns::ColumnRequirement;
use crate::embed::{ImageEncoder, Pooling, open_dinov2};
use crate::image_similarity::embed_column;
use crate::near_duplicates::{Embeddings, nearest};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params, PathKind};
use crate::rows::{extend_schema, row_ids, with_added};
use crate::{OpError, Result};

/// The `contamination` operator.
#[derive(Debug, Clone, Copy)]
pub struct Contamination;

crate::params! {
    /// `contamination`'s parameters.
    pub struct ContaminationParams {
        /// the image column of the rows checked (the first input)
        pub column: String = optional(ParamType::Str, "image"),
        /// the image column of the evaluation set (the second input)
        pub reference_column: String = optional(ParamType::Str, "image"),
        /// the DINOv2 model folder (transformers layout), e.g. models/dinov2-small
        pub weights: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// the least cosine similarity (DINOv2 CLS) to an evaluation image that flags a row
        pub threshold: f32 = optional(ParamType::float(0.0, 1.0), 0.95),
        /// images per forward pass
        pub batch_size: usize = optional(ParamType::int(1, 4096), 16).not_fingerprinted(),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "contamination",
    version: 1,
    summary: "flags rows whose image is (a disguised copy of) an evaluation image; no row is dropped",
    doc: "Two inputs: the rows to check, then the evaluation set (e.g. a `read` of DreamBench's \
          references). Embeds both image columns with DINOv2 (CLS token) and adds, per row, \
          nearest (the most similar evaluation row's row_id), similarity (its cosine) and \
          contaminated (similarity ≥ `threshold`). On DreamBench with DINOv2-S, re-encoded, \
          halved and brightened copies score ≥ 0.984 against their photo, 90 % crops ≥ 0.87 \
          (135 of 158 reach 0.95), photos of two different subjects ≤ 0.941. Keep the rows \
          and train on `SELECT … WHERE NOT contaminated`.",
    params: ContaminationParams::specs(),
    inputs: (2, 2),
    resource: Resource::Gpu,
    mapping: RowMapping::Preserve,
    partition_rows: 64,
    device_dependence: DeviceDependence::ClassAndPrecision,
});

impl Operator for Contamination {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(ContaminationParams::parse(params)?))
    }
}

impl Configured for ContaminationParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![vec![ColumnRequirement::image(&self.column)], vec![ColumnRequirement::image(&self.reference_column)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let added = vec![
            Field::new("contaminated", DataType::Boolean, false),
            Field::new("nearest", DataType::Utf8, false),
            Field::new("similarity", DataType::Float32, false),
        ];
        Ok(extend_schema(&inputs[0], added))
    }

    fn prepare(&self, _env: &Environment, _input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        Err(OpError::Internal("`contamination` needs its evaluation set: prepare it with its second input".into()))
    }

    fn prepare_with_inputs(
        &self,
        env: &Environment,
        input_schema: &SchemaRef,
        others: &[RecordBatch],
    ) -> Result<Arc<dyn PartitionProcessor>> {
        let [evaluation] = others else {
            return Err(OpError::Internal(format!("`contamination` got {} evaluation inputs, not one", others.len())));
        };
        let encoder = open_dinov2(&self.weights, Pooling::Cls, None, env.device)?;
        let ctx = ExecContext::new(env.seed, 0, Default::default());
        let max_pixels = env.max_image_pixels.pixels();
        let embedded = embed_column(encoder.as_ref(), evaluation, &self.reference_column, max_pixels, self.batch_size, &ctx)?;
        // An evaluation image that cannot be read would let its copies pass unseen.
        if let Some(failed) = embedded.errors.first() {
            return Err(OpError::Column {
                column: self.reference_column.clone(),
                message: format!(
                    "evaluation row {}: {} (fix or drop it: every evaluation image must be checked)",
                    failed.row_id, failed.message
                ),
            });
        }
        let ids = row_ids(evaluation)?.clone();
        if ids.is_empty() {
            return Err(OpError::Execution("the evaluation set (the second input) has no rows: nothing to check against".into()));
        }
        let dim = embedded.values.first().map_or(0, Vec::len);
        Ok(Arc::new(Checker {
            encoder,
            evaluation: Embeddings::normalized(dim, embedded.values.iter().map(Vec::as_slice)),
            evaluation_ids: ids,
            column: self.column.clone(),
            threshold: self.threshold,
            batch_size: self.batch_size,
            max_pixels,
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Checker {
    encoder: Box<dyn ImageEncoder>,
    evaluation: Embeddings,
    evaluation_ids: StringArray,
    column: String,
    threshold: f32,
    batch_size: usize,
    max_pixels: u64,
    schema: SchemaRef,
}

impl PartitionProcessor for Checker {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let embedded = embed_column(self.encoder.as_ref(), input, &self.column, self.max_pixels, self.batch_size, ctx)?;
        let queries = Embeddings::normalized(self.evaluation.dim(), embedded.values.iter().map(Vec::as_slice));
        let found = nearest(&queries, &self.evaluation);
        let contaminated: BooleanArray = found.iter().map(|(_, s)| Some(*s >= self.threshold)).collect();
        let nearest_ids: StringArray = found.iter().map(|(j, _)| Some(self.evaluation_ids.value(*j))).collect();
        let similarity: Float32Array = found.iter().map(|(_, s)| Some(s.min(1.0))).collect();
        let added: Vec<ArrayRef> = vec![Arc::new(contaminated), Arc::new(nearest_ids), Arc::new(similarity)];
        Ok(PartitionOutput { rows: with_added(&self.schema, &embedded.kept(input)?, added)?, errors: embedded.errors })
    }
}
