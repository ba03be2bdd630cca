//! `dedup`: exact, perceptual and semantic duplicates of an image column, as a ledger. Every
//! row stays, with the group it falls in (`dup_group`, its representative's `row_id`), whether
//! it represents it, and its similarity to the representative; the deduplicated set is a `sql`
//! view `WHERE is_representative`.
//!
//! Grouping compares rows with one another, so the node's one unit is its whole input (see
//! [`Configured::whole_input`]); images are decoded a batch at a time, and only their
//! signatures (32 bytes, 8 bytes or one embedding per row) are kept.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float32Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use crate::columns::ColumnRequirement;
use crate::embed::{ImageEncoder, Pooling, open_dinov2};
use crate::image_signature::{perceptual_hash, pixel_digest};
use crate::image_similarity::{decode_at, embed_column, embedding_type};
use crate::near_duplicates::{Embeddings, Grouping, MAX_HAMMING, by_cosine, by_hamming, by_key};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params, PathKind};
use crate::rows::{RowResults, binary, column, extend_schema, row_ids, with_added};
use crate::{OpError, Result};

/// The `dedup` operator.
#[derive(Debug, Clone, Copy)]
pub struct Dedup;

crate::choice! {
    /// How `dedup` compares images.
    pub enum DedupMethod {
        /// The same pixels (a digest of the decoded image).
        Exact = "exact",
        /// 64-bit DCT perceptual hashes at most `max_distance` bits apart.
        Perceptual = "perceptual",
        /// DINOv2 embeddings at least `threshold` apart in cosine similarity.
        Semantic = "semantic",
    }
}

crate::params! {
    /// `dedup`'s parameters.
    pub struct DedupParams {
        /// the image column compared
        pub column: String = optional(ParamType::Str, "image"),
        /// exact (same pixels), perceptual (pHash) or semantic (DINOv2 embeddings)
        pub method: DedupMethod = choice(DedupMethod::Perceptual),
        /// perceptual: the most bits a row's pHash may differ from its representative's
        pub max_distance: u32 = optional(ParamType::int(0, MAX_HAMMING as i64), 10),
        /// semantic: the least cosine similarity of a row to its representative
        pub threshold: f32 = optional(ParamType::float(0.0, 1.0), 0.95),
        /// semantic: the DINOv2 model folder (transformers layout), e.g. models/dinov2-small
        pub weights: Option<PathBuf> = optional(ParamType::Path(PathKind::Input), ""),
        /// semantic: a List<Float32> column of embeddings to compare instead of embedding `column`
        pub embedding: Option<String> = optional(ParamType::Str, ""),
        /// a numeric column: each group's representative is its row with the highest value (ties: the first in row order)
        pub prefer: Option<String> = optional(ParamType::Str, ""),
        /// semantic: images per forward pass
        pub batch_size: usize = optional(ParamType::int(1, 4096), 16).not_fingerprinted(),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "dedup",
    version: 1,
    summary: "exact, perceptual or semantic duplicate groups of an image column; no row is dropped",
    doc: "Groups the rows whose images are copies of one another and adds dup_group (the \
          representative's row_id), is_representative and dup_similarity (to the \
          representative: 1 for exact copies, 1 - bits/64 for pHashes, the cosine for \
          embeddings). `exact` digests the decoded pixels (lossless re-encodes group); \
          `perceptual` compares 64-bit DCT pHashes within `max_distance` bits (JPEG re-encodes, \
          resizes, brightness changes); `semantic` compares DINOv2 CLS embeddings at \
          `threshold` (also crops), computed with `weights` or read from `embedding`. Rows are \
          visited in row order (or best first by `prefer`): a row joins the most similar \
          representative before it within the bound, else it represents a new group — every \
          member is within the bound of its representative, groups never chain. Above 4096 \
          rows, semantic candidates come from k-means blocks (SemDeDup's blocking). On \
          DreamBench's 158 photos with four disguised copies each: pHash finds 473 of 474 \
          re-encoded, halved or brightened copies within 10 bits, and different photos are \
          ≥ 12 bits apart; DINOv2-S CLS scores those copies ≥ 0.984, 90 % crops ≥ 0.87 (135 \
          of 158 reach 0.95), two subjects ≤ 0.941, but 15 of 342 pairs of different photos \
          of one subject (bursts) ≥ 0.95. Keep the rows and curate with `SELECT … WHERE \
          is_representative`.",
    params: DedupParams::specs(),
    inputs: (1, 1),
    // A GPU only for `semantic` with `weights` (see `Configured::resource`).
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: usize::MAX,
    device_dependence: DeviceDependence::ClassAndPrecision,
});

impl Operator for Dedup {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let parsed = DedupParams::parse(params)?;
        let param = |name: &str, message: &str| Err(OpError::Param { name: name.into(), message: message.into() });
        match (parsed.method, &parsed.weights, &parsed.embedding) {
            (DedupMethod::Semantic, None, None) => {
                return param("weights", "method = \"semantic\" needs `weights` (a DINOv2 folder) or `embedding` (a column)");
            }
            (DedupMethod::Semantic, Some(_), Some(_)) => {
                return param("embedding", "give `weights` or `embedding`, not both: the embeddings come from one or the other");
            }
            (DedupMethod::Exact | DedupMethod::Perceptual, Some(_), _) => {
                return param("weights", "only method = \"semantic\" uses `weights`");
            }
            (DedupMethod::Exact | DedupMethod::Perceptual, _, Some(_)) => {
                return param("embedding", "only method = \"semantic\" reads an `embedding` column");
            }
            _ => {}
        }
        Ok(Arc::new(parsed))
    }
}

impl DedupParams {
    /// Whether the node embeds images with DINOv2 (else it reads pixels or stored embeddings).
    fn runs_a_model(&self) -> bool {
        self.method == DedupMethod::Semantic && self.weights.is_some()
    }
}

/// The types `prefer` may have.
fn numeric(name: &str) -> ColumnRequirement {
    ColumnRequirement {
        name: name.into(),
        types: vec![DataType::Float64, DataType::Float32, DataType::Int64, DataType::Int32, DataType::UInt64, DataType::UInt32],
    }
}

impl Configured for DedupParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let mut columns = match &self.embedding {
            Some(embedding) => vec![ColumnRequirement::new(embedding, embedding_type())],
            None => vec![ColumnRequirement::image(&self.column)],
        };
        columns.extend(self.prefer.as_deref().map(numeric));
        vec![columns]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let added = vec![
            Field::new("dup_group", DataType::Utf8, false),
            Field::new("is_representative", DataType::Boolean, false),
            Field::new("dup_similarity", DataType::Float32, false),
        ];
        Ok(extend_schema(&inputs[0], added))
    }

    fn whole_input(&self) -> bool {
        true
    }

    /// Only a model holds the device; digests, hashes and stored embeddings are CPU work.
    fn resource(&self) -> Option<Resource> {
        self.runs_a_model().then_some(Resource::Gpu)
    }

    /// Without a model, the groups are the same whatever `--device` says.
    fn device_dependence(&self) -> Option<DeviceDependence> {
        (!self.runs_a_model()).then_some(DeviceDependence::Independent)
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let signature = match (self.method, &self.weights) {
            (DedupMethod::Exact, _) => Signature::Pixels,
            (DedupMethod::Perceptual, _) => Signature::PerceptualHash { max_distance: self.max_distance },
            (DedupMethod::Semantic, Some(weights)) => Signature::Embedding {
                source: EmbeddingSource::Model(open_dinov2(weights, Pooling::Cls, None, env.device)?),
                threshold: self.threshold,
            },
            (DedupMethod::Semantic, None) => Signature::Embedding {
                source: EmbeddingSource::Column(self.embedding.clone().unwrap_or_default()),
                threshold: self.threshold,
            },
        };
        Ok(Arc::new(Deduplicator {
            signature,
            column: self.column.clone(),
            prefer: self.prefer.clone(),
            batch_size: self.batch_size,
            max_pixels: env.max_image_pixels.pixels(),
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

/// What rows are compared by.
enum Signature {
    Pixels,
    PerceptualHash { max_distance: u32 },
    Embedding { source: EmbeddingSource, threshold: f32 },
}

enum EmbeddingSource {
    Model(Box<dyn ImageEncoder>),
    Column(String),
}

struct Deduplicator {
    signature: Signature,
    column: String,
    prefer: Option<String>,
    batch_size: usize,
    max_pixels: u64,
    schema: SchemaRef,
}

impl Deduplicator {
    /// `f` of each row's decoded image, in parallel; a row that does not decode fails alone.
    fn of_images<T: Send>(&self, input: &RecordBatch, f: impl Fn(&image::DynamicImage) -> T + Sync) -> Result<RowResults<T>> {
        let images = binary(input, &self.column)?;
        let name = self.column.as_str();
        let signatures: Vec<std::result::Result<T, String>> =
            (0..input.num_rows()).into_par_iter().map(|row| Ok(f(&decode_at(&images, name, row, self.max_pixels)?))).collect();
        Ok(RowResults::split(row_ids(input)?, signatures))
    }

    /// The rows that have a signature, grouped (indices into those rows).
    fn group(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<(RowResults<()>, Grouping)> {
        Ok(match &self.signature {
            Signature::Pixels => {
                let digests = self.of_images(input, pixel_digest)?;
                let order = self.order(input, &digests)?;
                let grouping = by_key(&digests.values, &order);
                (digests.map(|_| ()), grouping)
            }
            Signature::PerceptualHash { max_distance } => {
                let hashes = self.of_images(input, perceptual_hash)?;
                let order = self.order(input, &hashes)?;
                let grouping = by_hamming(&hashes.values, *max_distance, &order);
                (hashes.map(|_| ()), grouping)
            }
            Signature::Embedding { source, threshold } => {
                let (kept, embeddings) = match source {
                    EmbeddingSource::Model(encoder) => {
                        let embedded = embed_column(encoder.as_ref(), input, &self.column, self.max_pixels, self.batch_size, ctx)?;
                        let dim = embedded.values.first().map_or(0, Vec::len);
                        let embeddings = Embeddings::normalized(dim, embedded.values.iter().map(Vec::as_slice));
                        (embedded.map(|_| ()), embeddings)
                    }
                    EmbeddingSource::Column(name) => embeddings_of(input, name)?,
                };
                let order = self.order(input, &kept)?;
                (kept, by_cosine(&embeddings, *threshold, &order))
            }
        })
    }

    /// The order rows claim representatives in (indices into the rows kept by `kept`): row
    /// order, or the highest `prefer` first (nulls and NaN last, ties in row order).
    fn order<T>(&self, input: &RecordBatch, kept: &RowResults<T>) -> Result<Vec<usize>> {
        let Some(prefer) = &self.prefer else { return Ok((0..kept.values.len()).collect()) };
        let values = cast(column(input, prefer)?, &DataType::Float64)?;
        let values = values.as_primitive::<arrow::datatypes::Float64Type>();
        let score: Vec<f64> = kept
            .kept_rows()
            .map(|row| if values.is_null(row) || values.value(row).is_nan() { f64::NEG_INFINITY } else { values.value(row) })
            .collect();
        let mut order: Vec<usize> = (0..score.len()).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        Ok(order)
    }
}

/// The embeddings of a `List<Float32>` column, normalised as they are read (a million rows'
/// are never copied twice); a null, empty or null-holding one fails its row, and one of
/// another length than the first fails the node.
fn embeddings_of(input: &RecordBatch, name: &str) -> Result<(RowResults<()>, Embeddings)> {
    let list = column(input, name)?;
    let list = list.as_list_opt::<i32>().ok_or_else(|| OpError::Column { column: name.into(), message: "must be List<Float32>".into() })?;
    let values = list
        .values()
        .as_primitive_opt::<arrow::datatypes::Float32Type>()
        .ok_or_else(|| OpError::Column { column: name.into(), message: "must be List<Float32>".into() })?;
    let offsets = list.value_offsets();
    let mut dim = None;
    let mut checked = Vec::with_capacity(input.num_rows());
    for row in 0..input.num_rows() {
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        checked.push(if list.is_null(row) {
            Err(format!("`{name}` is null"))
        } else if start == end || values.slice(start, end - start).null_count() > 0 {
            Err(format!("`{name}` is empty or holds nulls"))
        } else if values.values()[start..end].iter().any(|v| !v.is_finite()) {
            Err(format!("`{name}` holds NaN or infinite values"))
        } else if *dim.get_or_insert(end - start) != end - start {
            let message =
                format!("row {row} holds {} values, the rows before it {}: one model's embeddings only", end - start, dim.unwrap_or(0));
            return Err(OpError::Column { column: name.into(), message });
        } else {
            Ok((start, end))
        });
    }
    let kept = RowResults::split(row_ids(input)?, checked);
    let embeddings = Embeddings::normalized(dim.unwrap_or(0), kept.values.iter().map(|&(start, end)| &values.values()[start..end]));
    Ok((kept.map(|_| ()), embeddings))
}

impl PartitionProcessor for Deduplicator {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let (kept, grouping) = self.group(ctx, input)?;
        let rows = kept.kept(input)?;
        let ids = row_ids(&rows)?;
        let group: StringArray = grouping.representative.iter().map(|&r| Some(ids.value(r))).collect();
        let representative: BooleanArray = (0..rows.num_rows()).map(|r| Some(grouping.is_representative(r))).collect();
        let similarity = Float32Array::from(grouping.similarity);
        let added: Vec<ArrayRef> = vec![Arc::new(group), Arc::new(representative), Arc::new(similarity)];
        Ok(PartitionOutput { rows: with_added(&self.schema, &rows, added)?, errors: kept.errors })
    }
}
