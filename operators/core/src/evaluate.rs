//! `evaluate`: the DreamBench protocol (uno-method §6.1). For each prompt row (UNO's
//! `dreambench_singleip.json` / `dreambench_multiip.json` format: `prompt`, `image_paths`), generate
//! `images_per_prompt` images with UNO from the row's references, and score each with DINO
//! (ViT-S/16, CLS), CLIP-I and CLIP-T (ViT-B/32): one output row per image. Per-subject and
//! overall means are `sql` views over it (`GROUP BY subject`), so two evaluation nodes compare
//! side by side in one query.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float32Array, StringArray, UInt32Array, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use image::DynamicImage;

use crate::columns::ColumnRequirement;
use crate::draws::Draws;
use crate::embed::{ImageEncoder, Resize, TextEncoder, open_clip, open_dino};
use crate::generate::{GenerateOptions, Pe, SamplingParams, SubjectGenerator, open_generator, png_with_text};
use crate::metrics::{Sample, Scorer};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params, PathKind};
use crate::rowid::RowIdHasher;
use crate::rows::{RowResults, column, derived, derived_schema, row_ids, text};
use crate::{OpError, Result, image_io};

/// The `evaluate` operator.
#[derive(Debug, Clone, Copy)]
pub struct Evaluate;

crate::params! {
    /// `evaluate`'s own parameters (the sampling ones are [`SamplingParams`]).
    pub struct EvaluateParams {
        /// a DreamBench-layout folder (SUBJECT/NN.jpg)
        pub dataset: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// DINO ViT-S/16 folder (timm layout)
        pub dino_weights: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// CLIP ViT-B/32 folder (transformers CLIPModel, with tokenizer.json)
        pub clip_weights: PathBuf = required(ParamType::Path(PathKind::Input)),
        /// FLUX model folder; empty: the tiny random models
        pub model_dir: Option<PathBuf> = optional(ParamType::Path(PathKind::Input), ""),
        /// a column with the LoRA file to evaluate
        pub lora: Option<String> = optional(ParamType::Str, ""),
        /// the prompt column
        pub prompt: String = optional(ParamType::Str, "prompt"),
        /// the reference paths column
        pub image_paths: String = optional(ParamType::Str, "image_paths"),
        /// images per prompt (paper: 6 for multi-subject)
        pub images_per_prompt: usize = optional(ParamType::int(1, 1000), 1),
        /// UnoPE mode
        pub pe: Pe = choice(Pe::Diagonal),
        /// DINO input side (0: 224 after 256)
        pub dino_crop: u32 = optional(ParamType::int(0, 4096), 0),
        /// CLIP input side (0: 224)
        pub clip_crop: u32 = optional(ParamType::int(0, 4096), 0),
    }
}

/// A configured `evaluate` node: its own parameters and the sampling options, checked.
#[derive(Debug)]
pub struct EvaluateConfig {
    params: EvaluateParams,
    options: GenerateOptions,
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "evaluate",
    // 2: the fused CPU kernels (issue 17) sum in another order: other output bytes.
    // 3: a row whose LoRA column is empty is an error (it was scored as the base model).
    version: 3,
    summary: "DreamBench evaluation: generate each prompt from its references with UNO, score DINO, CLIP-I, CLIP-T per image",
    doc: "Input rows are the protocol's prompts (`prompt`, `image_paths` relative to `dataset`, \
          UNO's `./dreambooth/dataset/SUBJECT/NN.jpg` form accepted; read `dreambench_singleip.json` or \
          `dreambench_multiip.json` with `read format = \"jsonl\"`). For each row, `images_per_prompt` \
          images (seeds drawn from the DAG seed and the row id) are generated with the UNO \
          pipeline of `unoflow generate` and scored: DINO (cosine of DINO ViT-S/16 CLS \
          embeddings, generated vs each reference, mean over references), CLIP-I (same with \
          CLIP image embeddings) and CLIP-T (CLIP image vs prompt; not ×100). `lora` names a \
          column holding the LoRA to evaluate (e.g. a training node's last checkpoint joined in \
          with `sql`). Output: one row per image with subject (the reference folders joined by \
          `+`), image_index, seed, image, dino, clip_i, clip_t.",
    params: [EvaluateParams::specs(), SamplingParams::specs()].concat(),
    inputs: (1, 1),
    resource: Resource::Gpu,
    mapping: RowMapping::Derive,
    partition_rows: 4,
    device_dependence: DeviceDependence::ClassAndPrecision,
});

fn added_fields() -> Vec<Field> {
    vec![
        Field::new("subject", DataType::Utf8, false),
        Field::new("image_index", DataType::UInt32, false),
        Field::new("seed", DataType::UInt64, false),
        Field::new("image", DataType::Binary, false),
        Field::new("dino", DataType::Float32, false),
        Field::new("clip_i", DataType::Float32, false),
        Field::new("clip_t", DataType::Float32, false),
    ]
}

impl Operator for Evaluate {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        let own = EvaluateParams::parse(params)?;
        let options = SamplingParams::parse(params)?.options(own.pe.into())?;
        Ok(Arc::new(EvaluateConfig { params: own, options }))
    }
}

impl Configured for EvaluateConfig {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let p = &self.params;
        let mut needed = vec![
            ColumnRequirement::text(&p.prompt),
            ColumnRequirement {
                name: p.image_paths.clone(),
                types: vec![
                    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                    DataType::List(Arc::new(Field::new("item", DataType::Utf8View, true))),
                    DataType::List(Arc::new(Field::new("item", DataType::LargeUtf8, true))),
                ],
            },
        ];
        needed.extend(p.lora.as_deref().map(ColumnRequirement::text));
        vec![needed]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(derived_schema(&inputs[0], &[], added_fields()))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let p = &self.params;
        // A custom side replaces the encoder's preprocessing (0: the encoder's own). DINO's
        // reference resizes to 256 and crops 224; a custom crop keeps that ratio.
        let custom = |crop: u32, resize: u32| (crop > 0).then_some(Resize { resize, crop });
        let dino_crop = custom(p.dino_crop, p.dino_crop * 256 / 224);
        let clip_crop = custom(p.clip_crop, p.clip_crop);
        let dino = open_dino(&p.dino_weights, dino_crop, env.device)?;
        let (clip_image, clip_text) = open_clip(&p.clip_weights, clip_crop, env.device)?;
        Ok(Arc::new(Evaluator {
            generator: open_generator(p.model_dir.as_deref(), env)?,
            dino,
            clip_image,
            clip_text,
            dataset: p.dataset.clone(),
            options: self.options.clone(),
            prompt: p.prompt.clone(),
            image_paths: p.image_paths.clone(),
            lora: p.lora.clone(),
            env: env.clone(),
            images_per_prompt: p.images_per_prompt,
            seed: env.seed,
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Evaluator {
    /// Resolves the files the `lora` column names (workspace-relative checkpoints).
    env: Environment,
    generator: Box<dyn SubjectGenerator>,
    dino: Box<dyn ImageEncoder>,
    clip_image: Box<dyn ImageEncoder>,
    clip_text: Box<dyn TextEncoder>,
    dataset: PathBuf,
    options: GenerateOptions,
    prompt: String,
    image_paths: String,
    lora: Option<String>,
    images_per_prompt: usize,
    seed: u64,
    schema: SchemaRef,
}

/// A reference path of the protocol inside `dataset`: as given, or with UNO's
/// `./dreambooth/dataset/` prefix (everything up to `dataset/`) removed.
pub fn resolve_reference(dataset: &Path, path: &str) -> std::result::Result<PathBuf, String> {
    let direct = dataset.join(path.trim_start_matches("./"));
    if direct.is_file() {
        return Ok(direct);
    }
    let stripped = path.rsplit_once("dataset/").map(|(_, rest)| dataset.join(rest));
    stripped.filter(|p| p.is_file()).ok_or_else(|| format!("reference {path:?} is not in {}", dataset.display()))
}

/// The subject name of a reference path: its folder (`backpack` for `…/backpack/02.jpg`).
fn subject_of(path: &str) -> String {
    Path::new(path).parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// One evaluated image.
struct Scored {
    index: u32,
    seed: u64,
    png: Vec<u8>,
    scores: crate::metrics::Scores,
}

impl Evaluator {
    fn row(&self, row_id: &str, prompt: &str, paths: &[String], lora: Option<&str>) -> std::result::Result<(String, Vec<Scored>), String> {
        if paths.is_empty() {
            return Err("no reference images".into());
        }
        let refs: Vec<DynamicImage> = paths
            .iter()
            .map(|p| {
                let file = resolve_reference(&self.dataset, p)?;
                let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                image_io::decode(&bytes, self.env.max_image_pixels.pixels()).map_err(|e| format!("{}: {e}", file.display()))
            })
            .collect::<std::result::Result<_, String>>()?;
        let mut draws = Draws::new(self.seed, "evaluate", &[row_id.as_bytes()]);
        let seeds: Vec<u64> = (0..self.images_per_prompt).map(|_| draws.next_u64() >> 11).collect();
        let opts = GenerateOptions { prompt: prompt.into(), refs: refs.clone(), ..self.options.clone() };
        // The row names the LoRA (workspace-relative for a checkpoint); the file is resolved here.
        let file = match lora {
            Some(l) => Some(self.env.resolve(l).map_err(|e| format!("the LoRA {l}: {e}"))?.to_string_lossy().into_owned()),
            None => None,
        };
        let images = self.generator.generate(file.as_deref(), &opts, &seeds).map_err(|e| e.to_string())?;
        let generated: Vec<DynamicImage> = images.iter().map(|i| DynamicImage::ImageRgb8(i.clone())).collect();
        let samples: Vec<Sample<'_>> =
            generated.iter().map(|g| Sample { generated: g, references: refs.iter().collect(), prompt }).collect();
        let scorer =
            Scorer { dino: self.dino.as_ref(), clip_image: self.clip_image.as_ref(), clip_text: self.clip_text.as_ref(), batch_size: 8 };
        let scores = scorer.score(&samples).map_err(|e| e.to_string())?;
        let subject = paths.iter().map(|p| subject_of(p)).collect::<Vec<_>>().join("+");
        let scored = images
            .iter()
            .zip(seeds)
            .zip(scores)
            .enumerate()
            .map(|(k, ((image, seed), scores))| {
                let meta = serde_json::json!({"prompt": prompt, "refs": paths, "seed": seed, "steps": opts.steps, "guidance": opts.guidance, "lora": lora});
                let png = png_with_text(image, &[("parameters".into(), meta.to_string())]).map_err(|e| e.to_string())?;
                Ok(Scored { index: k as u32, seed, png, scores })
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok((subject, scored))
    }
}

impl PartitionProcessor for Evaluator {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let prompts = text(input, &self.prompt)?;
        let lists = cast(column(input, &self.image_paths)?, &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))))?;
        let lists = lists.as_list::<i32>();
        let loras = self.lora.as_deref().map(|c| text(input, c)).transpose()?;
        let mut results = Vec::with_capacity(input.num_rows());
        for row in 0..input.num_rows() {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            let paths: Vec<String> = if lists.is_null(row) {
                Vec::new()
            } else {
                lists.value(row).as_string::<i32>().iter().flatten().map(str::to_string).collect()
            };
            // A row whose LoRA column is empty (a training upstream that made no checkpoint) is
            // an error, never the base model's scores under the LoRA's name.
            let lora = match (&loras, &self.lora) {
                (Some(l), Some(column)) if l.is_null(row) => {
                    results.push(Err(format!(
                        "the `{column}` column (parameter `lora`) is empty in this row: did the training upstream make no \
                         checkpoint (no rows to train on)? Leave `lora` out to evaluate the base model"
                    )));
                    continue;
                }
                (Some(l), _) => Some(l.value(row)),
                (None, _) => None,
            };
            results.push(self.row(ids.value(row), prompts.value(row), &paths, lora));
        }
        let results = RowResults::split(ids, results);
        let (mut sources, mut new_ids, mut subjects, mut index, mut seeds, mut pngs) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut dino, mut clip_i, mut clip_t) = (vec![], vec![], vec![]);
        for (row, (subject, scored)) in results.kept_rows().zip(&results.values) {
            for s in scored {
                sources.push(row as u32);
                new_ids.push(RowIdHasher::new("evaluate").field(ids.value(row).as_bytes()).field(&s.index.to_le_bytes()).finish());
                subjects.push(subject.clone());
                index.push(s.index);
                seeds.push(s.seed);
                pngs.push(s.png.as_slice());
                dino.push(s.scores.dino);
                clip_i.push(s.scores.clip_i);
                clip_t.push(s.scores.clip_t);
            }
        }
        let added: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(subjects)),
            Arc::new(UInt32Array::from(index)),
            Arc::new(UInt64Array::from(seeds)),
            Arc::new(BinaryArray::from(pngs)),
            Arc::new(Float32Array::from(dino)),
            Arc::new(Float32Array::from(clip_i)),
            Arc::new(Float32Array::from(clip_t)),
        ];
        Ok(PartitionOutput { rows: derived(&self.schema, input, &sources, new_ids, added)?, errors: results.errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uno_reference_paths_resolve_in_a_dreambench_folder() {
        let dir = tempfile_dir();
        std::fs::create_dir_all(dir.join("backpack")).unwrap();
        std::fs::write(dir.join("backpack/02.jpg"), b"x").unwrap();
        assert_eq!(resolve_reference(&dir, "./dreambooth/dataset/backpack/02.jpg").unwrap(), dir.join("backpack/02.jpg"));
        assert_eq!(resolve_reference(&dir, "backpack/02.jpg").unwrap(), dir.join("backpack/02.jpg"));
        assert!(resolve_reference(&dir, "./dreambooth/dataset/cat/00.jpg").unwrap_err().contains("cat/00.jpg"));
        assert_eq!(subject_of("./dreambooth/dataset/backpack/02.jpg"), "backpack");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unoflow-evaluate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
