//! `image_similarity`: embeddings of two image columns and their cosine similarity, per row.
//!
//! The DINOv2 filter of UNO's data pipeline (reference vs target of each diptych) and the
//! DreamBench image metrics are this operator with different backbones and poolings.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Float32Array, Float32Builder, ListBuilder};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use image::DynamicImage;
use rayon::prelude::*;

use crate::columns::ColumnRequirement;
use crate::embed::{ImageEncoder, Pooling, Resize, cosine, open_clip, open_dino, open_dinov2};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params, PathKind};
use crate::rows::{RowResults, binary, bytes_at, extend_schema, row_ids, with_added};

use crate::{OpError, Result, image_io};

/// The `image_similarity` operator.
#[derive(Debug, Clone, Copy)]
pub struct ImageSimilarity;

crate::choice! {
    /// The vision backbone of `image_similarity`.
    pub enum Backbone {
        /// transformers' Dinov2Model.
        Dinov2 = "dinov2",
        /// DINO v1 ViT, timm layout.
        Dino = "dino",
        /// transformers' CLIPModel.
        Clip = "clip",
    }
}

crate::choice! {
    /// Which token summary `image_similarity` compares.
    pub enum TokenPooling {
        Cls = "cls",
        Mean = "mean",
    }
}

impl From<TokenPooling> for Pooling {
    fn from(pooling: TokenPooling) -> Self {
        match pooling {
            TokenPooling::Cls => Self::Cls,
            TokenPooling::Mean => Self::MeanPatch,
        }
    }
}

crate::params! {
    /// `image_similarity`'s parameters.
    pub struct ImageSimilarityParams {
        /// the first image column
        pub left: String = optional(ParamType::Str, "ref_image"),
        /// the second image column
        pub right: String = optional(ParamType::Str, "target_image"),
        /// dinov2 (transformers Dinov2Model), dino (DINO v1 ViT, timm layout), clip (transformers CLIPModel)
        pub backbone: Backbone = choice(Backbone::Dinov2),
        /// the model folder (model.safetensors, config.json; CLIP also tokenizer.json)
        pub weights: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// CLS token, or mean of patch tokens (dinov2 only)
        pub pooling: TokenPooling = choice(TokenPooling::Cls),
        /// the name of the similarity column
        pub output: String = optional(ParamType::Str, "similarity"),
        /// also keep both embeddings (OUTPUT_left, OUTPUT_right)
        pub embeddings: bool = optional(ParamType::Bool, false),
        /// shorter side after resizing (0: the backbone's reference, 256 DINO, 224 CLIP)
        pub resize: u32 = optional(ParamType::int(0, 4096), 0),
        /// side of the centre crop fed to the model (0: the backbone's, 224)
        pub crop: u32 = optional(ParamType::int(0, 4096), 0),
        /// images per forward pass
        pub batch_size: usize = optional(ParamType::int(1, 4096), 16).not_fingerprinted(),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "image_similarity",
    // 2: the fused CPU kernels (issue 17) sum in another order: other output bytes.
    version: 2,
    summary: "embed two image columns with a vision backbone and add their cosine similarity",
    doc: "For each row, both images are preprocessed as the backbone's reference does (DINO, \
          DINOv2: shortest side 256 bicubic, centre crop 224, ImageNet statistics; CLIP: 224, \
          CLIP statistics), embedded (CLS token \
          or mean of patch tokens), and compared. Adds the `output` column (and the embeddings if \
          asked). Rows whose images cannot be read go to the error table.",
    params: ImageSimilarityParams::specs(),
    inputs: (1, 1),
    resource: Resource::Gpu,
    mapping: RowMapping::Preserve,
    partition_rows: 64,
    device_dependence: DeviceDependence::ClassAndPrecision,
});

impl Operator for ImageSimilarity {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(ImageSimilarityParams::parse(params)?))
    }
}

impl Configured for ImageSimilarityParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        vec![vec![ColumnRequirement::image(&self.left), ColumnRequirement::image(&self.right)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        let output = &self.output;
        let mut added = vec![Field::new(output, DataType::Float32, false)];
        if self.embeddings {
            for side in ["left", "right"] {
                added.push(Field::new(format!("{output}_{side}"), embedding_type(), false));
            }
        }
        Ok(extend_schema(&inputs[0], added))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let pooling = Pooling::from(self.pooling);
        let preprocess = Resize::from_params(self.resize, self.crop);
        let encoder = match self.backbone {
            Backbone::Dinov2 => open_dinov2(&self.weights, pooling, preprocess, env.device)?,
            Backbone::Dino if self.pooling == TokenPooling::Mean => {
                return Err(OpError::Param {
                    name: "pooling".into(),
                    message: "DINO v1 gives its CLS embedding: use pooling = \"cls\"".into(),
                });
            }
            Backbone::Dino => open_dino(&self.weights, preprocess, env.device)?,
            Backbone::Clip => open_clip(&self.weights, preprocess, env.device)?.0,
        };
        Ok(Arc::new(Comparer {
            encoder,
            left: self.left.clone(),
            right: self.right.clone(),
            keep_embeddings: self.embeddings,
            batch_size: self.batch_size,
            max_pixels: env.max_image_pixels.pixels(),
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

/// A prepared `image_similarity` node: the encoder is loaded once.
struct Comparer {
    encoder: Box<dyn ImageEncoder>,
    left: String,
    right: String,
    keep_embeddings: bool,
    batch_size: usize,
    /// The largest image decoded.
    max_pixels: u64,
    schema: SchemaRef,
}

/// The image in row `row` of the binary column `name`, decoded (none of more than
/// `max_pixels`), or a message naming the column.
pub(crate) fn decode_at(
    images: &arrow::array::BinaryArray,
    name: &str,
    row: usize,
    max_pixels: u64,
) -> std::result::Result<DynamicImage, String> {
    image_io::decode(bytes_at(images, name, row)?, max_pixels).map_err(|e| format!("`{name}`: {e}"))
}

/// The type of an embedding column (`List<Float32>`).
pub(crate) fn embedding_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
}

/// Decodes both images of every row in parallel (none of more than `max_pixels`); a row fails
/// if either image does.
pub(crate) fn decode_pairs(
    input: &RecordBatch,
    left: &str,
    right: &str,
    max_pixels: u64,
) -> Result<RowResults<(DynamicImage, DynamicImage)>> {
    let ids = row_ids(input)?;
    let (lefts, rights) = (binary(input, left)?, binary(input, right)?);
    let decoded: Vec<std::result::Result<(DynamicImage, DynamicImage), String>> = (0..input.num_rows())
        .into_par_iter()
        .map(|row| Ok((decode_at(&lefts, left, row, max_pixels)?, decode_at(&rights, right, row, max_pixels)?)))
        .collect();
    Ok(RowResults::split(ids, decoded))
}

/// The embedding of each row's image in `column`, `batch_size` images decoded and embedded at a
/// time (a whole table's images are never held decoded at once); a row whose image does not
/// decode fails alone.
pub(crate) fn embed_column(
    encoder: &dyn ImageEncoder,
    input: &RecordBatch,
    column: &str,
    max_pixels: u64,
    batch_size: usize,
    ctx: &ExecContext,
) -> Result<RowResults<Vec<f32>>> {
    let images = binary(input, column)?;
    let mut embedded: Vec<std::result::Result<Vec<f32>, String>> = Vec::with_capacity(input.num_rows());
    for start in (0..input.num_rows()).step_by(batch_size.max(1)) {
        if ctx.is_cancelled() {
            return Err(OpError::Cancelled);
        }
        let rows = start..(start + batch_size.max(1)).min(input.num_rows());
        let decoded: Vec<std::result::Result<DynamicImage, String>> =
            rows.into_par_iter().map(|row| decode_at(&images, column, row, max_pixels)).collect();
        let good: Vec<DynamicImage> = decoded.iter().filter_map(|d| d.as_ref().ok().cloned()).collect();
        let mut embeddings = encoder.embed(&good)?.into_iter();
        for d in decoded {
            embedded.push(d.map(|_| embeddings.next().expect("one embedding per decoded image")));
        }
    }
    Ok(RowResults::split(row_ids(input)?, embedded))
}

/// The left and the right embeddings of a list of pairs.
pub(crate) type PairEmbeddings = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// The embeddings of both images of each pair, `batch_size` images per forward pass.
pub(crate) fn embed_pairs(
    encoder: &dyn ImageEncoder,
    pairs: &[(DynamicImage, DynamicImage)],
    batch_size: usize,
    ctx: &ExecContext,
) -> Result<PairEmbeddings> {
    let mut lefts = Vec::with_capacity(pairs.len());
    let mut rights = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(2) / 2) {
        if ctx.is_cancelled() {
            return Err(OpError::Execution("cancelled".into()));
        }
        let images: Vec<DynamicImage> = chunk.iter().flat_map(|(l, r)| [l.clone(), r.clone()]).collect();
        let embeddings = encoder.embed(&images)?;
        for pair in embeddings.chunks(2) {
            lefts.push(pair[0].clone());
            rights.push(pair[1].clone());
        }
    }
    Ok((lefts, rights))
}

impl PartitionProcessor for Comparer {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let pairs = decode_pairs(input, &self.left, &self.right, self.max_pixels)?;
        let (lefts, rights) = embed_pairs(self.encoder.as_ref(), &pairs.values, self.batch_size, ctx)?;
        let similarity: Float32Array = lefts.iter().zip(&rights).map(|(l, r)| Some(cosine(l, r))).collect();
        let mut added: Vec<ArrayRef> = vec![Arc::new(similarity)];
        if self.keep_embeddings {
            for side in [&lefts, &rights] {
                let mut builder = ListBuilder::new(Float32Builder::new());
                for e in side.iter() {
                    builder.values().append_slice(e);
                    builder.append(true);
                }
                added.push(Arc::new(builder.finish()));
            }
        }
        Ok(PartitionOutput { rows: with_added(&self.schema, &pairs.kept(input)?, added)?, errors: pairs.errors })
    }
}
