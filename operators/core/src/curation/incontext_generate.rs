//! `incontext_generate`: FLUX text-to-image of each diptych prompt, `seeds_per_prompt` images per
//! prompt (uno-method §5.2: the in-context generation that makes the pairs).

use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use arrow::array::{ArrayRef, BinaryArray, Float32Array, StringArray, UInt32Array, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use burn::tensor::backend::Backend;
use image::RgbImage;
use unoflow_models::Precision;
use unoflow_models::flux::PeMode;
use unoflow_models::flux::sampling::ShiftRule;

use crate::columns::{ColumnRequirement, HEIGHT, WIDTH};
use crate::draws::Draws;
use crate::embed::{load_err, on_device};
use crate::generate::{GenerateOptions, Models, png_with_text, sample};
use crate::operator::{Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping};
use crate::params::{ParamSpec, ParamType, ParamValue, Params, PathKind};
use crate::rowid::RowIdHasher;
use crate::rows::{RowResults, column, derived, derived_schema, row_ids, text};
use crate::{OpError, Result};

/// The `incontext_generate` operator.
#[derive(Debug, Clone, Copy)]
pub struct IncontextGenerate;

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "incontext_generate",
    version: 1,
    summary: "FLUX text-to-image of each prompt (the diptychs), seeds_per_prompt images per prompt",
    doc: "Generates `seeds_per_prompt` images of `width`×`height` (the input's columns, multiples \
          of 16) for each prompt with FLUX: the flow-matching sampler of `unoflow generate` with \
          no reference. Each image's seed is drawn from the DAG seed and the prompt's row id. \
          The models load once per node (`model_dir`: BFL or diffusers layout; left out: the tiny \
          random model set of `generate --tiny`). Output: one row per image with `image` (PNG, \
          generation parameters in text chunks), `seed`, `steps`, `guidance`, `model_digest`; the \
          prompt row's columns are kept and `parent_ids` names it.",
    params: vec![
        ParamSpec::optional(
            "model_dir",
            ParamType::Path(PathKind::Input),
            ParamValue::Str(String::new()),
            "FLUX model folder (flux1-dev.safetensors, ae.safetensors, t5/, clip/; or diffusers); empty: tiny random models",
        ),
        ParamSpec::optional("prompt", ParamType::Str, ParamValue::Str("prompt".into()), "the prompt column"),
        ParamSpec::optional("seeds_per_prompt", ParamType::int(1, 1000), ParamValue::Int(1), "images per prompt"),
        ParamSpec::optional("steps", ParamType::int(1, 1000), ParamValue::Int(28), "sampling steps"),
        ParamSpec::optional(
            "guidance",
            ParamType::float(0.0, 100.0),
            ParamValue::Float(3.5),
            "distilled guidance (3.5 for FLUX.1-dev text-to-image)",
        ),
        ParamSpec::optional(
            "shift",
            ParamType::Choice(&["flux", "uno"]),
            ParamValue::Str("flux".into()),
            "schedule shift: flux (image tokens, as FLUX) or uno (latent area / 256, as UNO's sampler)",
        ),
    ],
    inputs: (1, 1),
    resource: Resource::Gpu,
    mapping: RowMapping::Derive,
    partition_rows: 8,
});

fn added_fields() -> Vec<Field> {
    vec![
        Field::new("image", DataType::Binary, false),
        Field::new("seed", DataType::UInt64, false),
        Field::new("steps", DataType::UInt32, false),
        Field::new("guidance", DataType::Float32, false),
        Field::new("model_digest", DataType::Utf8, false),
    ]
}

/// A text-to-image model on some backend.
trait TextToImage: Send + Sync {
    /// One image per seed.
    fn generate(&self, prompt: &str, opts: &GenerateOptions, seeds: &[u64]) -> Result<Vec<RgbImage>>;
    /// The weights' identity, for provenance.
    fn digest(&self) -> String;
}

/// Models behind a mutex: the sampler is sequential, and a backend's modules need not be `Sync`.
struct Pipeline<B: Backend>(Mutex<Models<B>>);

impl<B: Backend> TextToImage for Pipeline<B>
where
    B::Device: Send + Sync,
{
    fn generate(&self, prompt: &str, opts: &GenerateOptions, seeds: &[u64]) -> Result<Vec<RgbImage>> {
        let models = self.0.lock().map_err(|_| OpError::Internal("a generation panicked".into()))?;
        let embedding = models.encode_prompt(prompt)?;
        let mut images = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            let opts = GenerateOptions { seed, num_images: 1, ..opts.clone() };
            images.extend(sample(&models, &embedding, &opts, &mut |_, _| {})?);
        }
        Ok(images)
    }

    fn digest(&self) -> String {
        self.0.lock().map(|m| serde_json::to_string(&m.digests).unwrap_or_default()).unwrap_or_default()
    }
}

fn open_models(model_dir: &str, env: &Environment) -> Result<Box<dyn TextToImage>> {
    on_device!(env.device, |device: B| {
        let models = if model_dir.is_empty() {
            Models::<B>::tiny(&device)?
        } else {
            let precision = if matches!(env.device, unoflow_models::DeviceSpec::Cpu) { Precision::F32 } else { Precision::Bf16 };
            Models::<B>::load(Path::new(model_dir), None, precision, &device)?
        };
        Ok(Box::new(Pipeline(Mutex::new(models))) as Box<dyn TextToImage>)
    })
}

impl Operator for IncontextGenerate {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn required_columns(&self, params: &Params) -> Result<Vec<Vec<ColumnRequirement>>> {
        let size = |name: &str| ColumnRequirement {
            name: name.into(),
            types: vec![DataType::UInt32, DataType::Int32, DataType::Int64, DataType::UInt64, DataType::UInt16, DataType::Int16],
        };
        Ok(vec![vec![ColumnRequirement::text(params.str("prompt")?), size(WIDTH), size(HEIGHT)]])
    }

    fn output_schema(&self, _params: &Params, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(derived_schema(&inputs[0], &[], added_fields()))
    }

    fn prepare(&self, params: &Params, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let options = GenerateOptions {
            prompt: String::new(),
            refs: Vec::new(),
            width: 0,
            height: 0,
            steps: params.int("steps")? as usize,
            guidance: params.float("guidance")? as f32,
            seed: 0,
            num_images: 1,
            pe: PeMode::Diagonal,
            shift: if params.str("shift")? == "uno" { ShiftRule::UnoLatentArea } else { ShiftRule::ImageTokens },
            ref_long_side: None,
        };
        let model = open_models(params.str("model_dir")?, env).map_err(|e| load_err(format!("incontext_generate: {e}")))?;
        Ok(Arc::new(Generator {
            digest: model.digest(),
            model,
            options,
            prompt: params.str("prompt")?.into(),
            seeds_per_prompt: params.int("seeds_per_prompt")? as usize,
            seed: env.seed,
            schema: self.output_schema(params, &[Arc::clone(input_schema)])?,
        }))
    }
}

struct Generator {
    model: Box<dyn TextToImage>,
    digest: String,
    options: GenerateOptions,
    prompt: String,
    seeds_per_prompt: usize,
    seed: u64,
    schema: SchemaRef,
}

fn sizes(input: &RecordBatch, name: &str) -> Result<UInt32Array> {
    let col = cast(column(input, name)?, &DataType::UInt32)?;
    col.as_any().downcast_ref::<UInt32Array>().cloned().ok_or_else(|| OpError::Internal("cast to UInt32".into()))
}

impl Generator {
    /// The images of one prompt row, PNG-encoded with their parameters.
    fn row(&self, row_id: &str, prompt: &str, width: u32, height: u32) -> std::result::Result<Vec<(u64, Vec<u8>)>, String> {
        if width == 0 || height == 0 || !width.is_multiple_of(16) || !height.is_multiple_of(16) {
            return Err(format!("{width}×{height}: width and height must be positive multiples of 16"));
        }
        let mut draws = Draws::new(self.seed, "incontext_generate", &[row_id.as_bytes()]);
        // Seeds stay below 2⁵³ so they survive JSON and PyTorch's generators unchanged.
        let seeds: Vec<u64> = (0..self.seeds_per_prompt).map(|_| draws.next_u64() >> 11).collect();
        let opts = GenerateOptions { prompt: prompt.into(), width: width as usize, height: height as usize, ..self.options.clone() };
        let images = self.model.generate(prompt, &opts, &seeds).map_err(|e| e.to_string())?;
        seeds
            .iter()
            .zip(images)
            .map(|(&seed, image)| {
                let meta = serde_json::json!({
                    "prompt": prompt, "width": width, "height": height, "seed": seed, "steps": opts.steps,
                    "guidance": opts.guidance, "models": self.digest, "unoflow": env!("CARGO_PKG_VERSION"),
                });
                let png = png_with_text(&image, &[("parameters".into(), meta.to_string()), ("Software".into(), "unoflow".into())])
                    .map_err(|e| e.to_string())?;
                Ok((seed, png))
            })
            .collect()
    }
}

impl PartitionProcessor for Generator {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let prompts = text(input, &self.prompt)?;
        let (widths, heights) = (sizes(input, WIDTH)?, sizes(input, HEIGHT)?);
        let mut results = Vec::with_capacity(input.num_rows());
        for row in 0..input.num_rows() {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            results.push(self.row(ids.value(row), prompts.value(row), widths.value(row), heights.value(row)));
        }
        let results = RowResults::split(ids, results);
        let (mut sources, mut new_ids, mut pngs, mut seeds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (row, images) in results.kept_rows().zip(&results.values) {
            for (k, (seed, png)) in images.iter().enumerate() {
                sources.push(row as u32);
                new_ids.push(
                    RowIdHasher::new("incontext_generate").field(ids.value(row).as_bytes()).field(&(k as u64).to_le_bytes()).finish(),
                );
                pngs.push(png.as_slice());
                seeds.push(*seed);
            }
        }
        let n = pngs.len();
        let added: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from(pngs)),
            Arc::new(UInt64Array::from(seeds)),
            Arc::new(UInt32Array::from(vec![self.options.steps as u32; n])),
            Arc::new(Float32Array::from(vec![self.options.guidance; n])),
            Arc::new(StringArray::from(vec![self.digest.clone(); n])),
        ];
        Ok(PartitionOutput { rows: derived(&self.schema, input, &sources, new_ids, added)?, errors: results.errors })
    }
}
