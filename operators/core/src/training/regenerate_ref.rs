//! `regenerate_ref`: UNO's multi-subject data step (uno-method §5.6). Subject 2 is cropped from
//! the target (a grounding box), and the stage-I model generates a new reference of it in
//! another scene from the crop — the crop itself would teach copy-paste. The new reference is
//! checked against the crop with DINOv2; triplets (ref1, ref2, target) are a `sql` view over
//! the verdict.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, BinaryArray, BooleanArray, Float32Array, StringArray, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use image::DynamicImage;
use unoflow_models::flux::PeMode;

use crate::columns::ColumnRequirement;
use crate::draws::Draws;
use crate::embed::{ImageEncoder, Pooling, Resize, cosine, open_dinov2};
use crate::generate::{GenerateOptions, SamplingParams, SubjectGenerator, open_generator, png_with_text};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params, PathKind};
use crate::rows::{RowResults, binary, bytes_at, column, extend_schema, row_ids, text, with_added};
use crate::{OpError, Result, image_io};

/// The `regenerate_ref` operator.
#[derive(Debug, Clone, Copy)]
pub struct RegenerateRef;

const BOX: [&str; 4] = ["box_x1", "box_y1", "box_x2", "box_y2"];

crate::params! {
    /// `regenerate_ref`'s own parameters (the sampling ones are [`SamplingParams`]).
    pub struct RegenerateRefParams {
        /// DINOv2 folder for the check
        pub dinov2_weights: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// FLUX folder; empty: tiny models
        pub model_dir: Option<PathBuf> = optional(ParamType::Path(PathKind::Input), ""),
        /// a column with the stage-I LoRA file
        pub lora: Option<String> = optional(ParamType::Str, ""),
        /// the target image column
        pub target: String = optional(ParamType::Str, "target_image"),
        /// the column naming subject 2
        pub subject: String = optional(ParamType::Str, "subject2"),
        /// the column with the new scene
        pub scene: String = optional(ParamType::Str, "scene1"),
        /// DINOv2 similarity to the crop needed
        pub threshold: f32 = optional(ParamType::float(-1.0, 1.0), 0.85),
        /// DINOv2 resize (0: 256)
        pub resize: u32 = optional(ParamType::int(0, 4096), 0),
        /// DINOv2 crop (0: 224)
        pub crop: u32 = optional(ParamType::int(0, 4096), 0),
    }
}

/// A configured `regenerate_ref` node: its own parameters and the sampling options, checked.
#[derive(Debug)]
pub struct RegenerateRefConfig {
    params: RegenerateRefParams,
    options: GenerateOptions,
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "regenerate_ref",
    // 2: the fused CPU kernels (issue 17) sum in another order: other output bytes.
    version: 2,
    summary: "crop subject 2 from the target, regenerate it in another scene with the stage-I model, DINOv2-check it",
    doc: "For each row: crop `box_x1..box_y2` (vlm_detect's columns, or any given box) from the \
          target, generate `subject2 in SCENE` (SCENE from the `scene` column: the reference \
          panel's scene, so not the target's) with the crop as the UNO reference and the LoRA \
          named by the `lora` column (stage I's last checkpoint), and compare the new reference \
          with the crop (DINOv2, mean of patch tokens). Adds subject2_crop, ref2_image, \
          ref2_prompt, ref2_seed, ref2_similarity and ref2_pass (≥ `threshold`). Keep triplets \
          with `WHERE ref2_pass`.",
    params: [RegenerateRefParams::specs(), SamplingParams::specs()].concat(),
    inputs: (1, 1),
    resource: Resource::Gpu,
    mapping: RowMapping::Preserve,
    partition_rows: 4,
    device_dependence: DeviceDependence::ClassAndPrecision,
});

fn added_fields() -> Vec<Field> {
    vec![
        Field::new("subject2_crop", DataType::Binary, false),
        Field::new("ref2_image", DataType::Binary, false),
        Field::new("ref2_prompt", DataType::Utf8, false),
        Field::new("ref2_seed", DataType::UInt64, false),
        Field::new("ref2_similarity", DataType::Float32, false),
        Field::new("ref2_pass", DataType::Boolean, false),
    ]
}

impl Operator for RegenerateRef {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let options = SamplingParams::parse(params)?.options(PeMode::Diagonal)?;
        Ok(Arc::new(RegenerateRefConfig { params: RegenerateRefParams::parse(params)?, options }))
    }
}

impl Configured for RegenerateRefConfig {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let p = &self.params;
        let coordinate = |name: &str| ColumnRequirement {
            name: name.into(),
            types: vec![DataType::UInt32, DataType::Int32, DataType::Int64, DataType::UInt64, DataType::Float32, DataType::Float64],
        };
        let mut needed = vec![ColumnRequirement::image(&p.target), ColumnRequirement::text(&p.subject), ColumnRequirement::text(&p.scene)];
        needed.extend(BOX.iter().map(|c| coordinate(c)));
        needed.extend(p.lora.as_deref().map(ColumnRequirement::text));
        vec![needed]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(extend_schema(&inputs[0], added_fields()))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let p = &self.params;
        let preprocess = Resize::from_params(p.resize, p.crop);
        Ok(Arc::new(Regenerator {
            generator: open_generator(p.model_dir.as_deref(), env)?,
            dinov2: open_dinov2(&p.dinov2_weights, Pooling::MeanPatch, preprocess, env.device)?,
            options: self.options.clone(),
            lora: p.lora.clone(),
            env: env.clone(),
            target: p.target.clone(),
            subject: p.subject.clone(),
            scene: p.scene.clone(),
            threshold: p.threshold,
            seed: env.seed,
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Regenerator {
    /// Resolves the files the `lora` column names (workspace-relative checkpoints).
    env: Environment,
    generator: Box<dyn SubjectGenerator>,
    dinov2: Box<dyn ImageEncoder>,
    options: GenerateOptions,
    lora: Option<String>,
    target: String,
    subject: String,
    scene: String,
    threshold: f32,
    seed: u64,
    schema: SchemaRef,
}

/// One regenerated reference.
struct Regenerated {
    crop: Vec<u8>,
    image: Vec<u8>,
    prompt: String,
    seed: u64,
    similarity: f32,
}

impl Regenerator {
    fn row(
        &self,
        row_id: &str,
        target: &[u8],
        bbox: [f64; 4],
        subject: &str,
        scene: &str,
        lora: Option<&str>,
    ) -> std::result::Result<Regenerated, String> {
        let target = image_io::decode(target, self.env.max_image_pixels.pixels()).map_err(|e| format!("`{}`: {e}", self.target))?;
        let (w, h) = (target.width() as f64, target.height() as f64);
        let [x1, y1, x2, y2] =
            [bbox[0].clamp(0.0, w), bbox[1].clamp(0.0, h), bbox[2].clamp(0.0, w), bbox[3].clamp(0.0, h)].map(|v| v.round() as u32);
        if x2 <= x1 || y2 <= y1 {
            return Err(format!("empty box {bbox:?} in a {}×{} target", target.width(), target.height()));
        }
        let crop = target.crop_imm(x1, y1, x2 - x1, y2 - y1);
        let prompt = format!("{subject} in {scene}");
        let seed = Draws::new(self.seed, "regenerate_ref", &[row_id.as_bytes()]).next_u64() >> 11;
        let opts = GenerateOptions { prompt: prompt.clone(), refs: vec![crop.clone()], ..self.options.clone() };
        // The row names the LoRA (workspace-relative for a checkpoint); the file is resolved here.
        let file = match lora {
            Some(l) => Some(self.env.resolve(l).map_err(|e| format!("the LoRA {l}: {e}"))?.to_string_lossy().into_owned()),
            None => None,
        };
        let image = self.generator.generate(file.as_deref(), &opts, &[seed]).map_err(|e| e.to_string())?.remove(0);
        let generated = DynamicImage::ImageRgb8(image.clone());
        let embeddings = self.dinov2.embed(&[generated, crop.clone()]).map_err(|e| e.to_string())?;
        let meta = serde_json::json!({"prompt": prompt, "seed": seed, "steps": opts.steps, "guidance": opts.guidance, "lora": lora});
        Ok(Regenerated {
            crop: image_io::encode_png(&crop)?,
            image: png_with_text(&image, &[("parameters".into(), meta.to_string())]).map_err(|e| e.to_string())?,
            prompt,
            seed,
            similarity: cosine(&embeddings[0], &embeddings[1]),
        })
    }
}

impl PartitionProcessor for Regenerator {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let targets = binary(input, &self.target)?;
        let (subjects, scenes) = (text(input, &self.subject)?, text(input, &self.scene)?);
        let boxes: Vec<Float32Array> = BOX
            .iter()
            .map(|c| {
                let values = cast(column(input, c)?, &DataType::Float32)?;
                values.as_any().downcast_ref::<Float32Array>().cloned().ok_or_else(|| OpError::Internal(format!("`{c}` cast to Float32")))
            })
            .collect::<Result<_>>()?;
        let loras = self.lora.as_deref().map(|c| text(input, c)).transpose()?;
        let mut results = Vec::with_capacity(input.num_rows());
        for row in 0..input.num_rows() {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            let bbox = [0, 1, 2, 3].map(|i| boxes[i].value(row) as f64);
            let lora = loras.as_ref().filter(|l| l.is_valid(row)).map(|l| l.value(row));
            results.push(
                bytes_at(&targets, &self.target, row)
                    .and_then(|t| self.row(ids.value(row), t, bbox, subjects.value(row), scenes.value(row), lora)),
            );
        }
        let results = RowResults::split(ids, results);
        let v = &results.values;
        let added: Vec<ArrayRef> = vec![
            Arc::new(v.iter().map(|r| Some(r.crop.as_slice())).collect::<BinaryArray>()),
            Arc::new(v.iter().map(|r| Some(r.image.as_slice())).collect::<BinaryArray>()),
            Arc::new(v.iter().map(|r| Some(r.prompt.as_str())).collect::<StringArray>()),
            Arc::new(v.iter().map(|r| Some(r.seed)).collect::<UInt64Array>()),
            Arc::new(v.iter().map(|r| Some(r.similarity)).collect::<Float32Array>()),
            Arc::new(v.iter().map(|r| Some(r.similarity >= self.threshold)).collect::<BooleanArray>()),
        ];
        Ok(PartitionOutput { rows: with_added(&self.schema, &results.kept(input)?, added)?, errors: results.errors })
    }
}
