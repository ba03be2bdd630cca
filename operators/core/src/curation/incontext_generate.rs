//! `incontext_generate`: FLUX text-to-image of each diptych prompt, `seeds_per_prompt` images per
//! prompt (uno-method §5.2: the in-context generation that makes the pairs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use arrow::array::{ArrayRef, BinaryArray, Float32Array, StringArray, UInt32Array, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use burn::tensor::backend::Backend;
use image::RgbImage;
use unoflow_models::Kernels;
use unoflow_models::Precision;
use unoflow_models::flux::PeMode;

use crate::columns::{ColumnRequirement, HEIGHT, WIDTH};
use crate::draws::Draws;
use crate::embed::{load_err, on_device};
use crate::generate::{GenerateOptions, Models, PromptEmbedding, Shift, png_with_text, sample_batch};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params, PathKind};
use crate::rowid::RowIdHasher;
use crate::rows::{RowResults, column, derived, derived_schema, row_ids, text};
use crate::{OpError, Result};

/// The `incontext_generate` operator.
#[derive(Debug, Clone, Copy)]
pub struct IncontextGenerate;

crate::params! {
    /// `incontext_generate`'s parameters.
    pub struct IncontextGenerateParams {
        /// FLUX model folder (flux1-dev.safetensors, ae.safetensors, t5/, clip/; or diffusers); empty: tiny random models
        pub model_dir: Option<PathBuf> = optional(ParamType::Path(PathKind::Input), ""),
        /// the prompt column
        pub prompt: String = optional(ParamType::Str, "prompt"),
        /// images per prompt
        pub seeds_per_prompt: usize = optional(ParamType::int(1, 1000), 1),
        /// sampling steps
        pub steps: usize = optional(ParamType::int(1, 1000), 28),
        /// distilled guidance (3.5 for FLUX.1-dev text-to-image)
        pub guidance: f32 = optional(ParamType::float(0.0, 100.0), 3.5),
        /// images per forward pass (same size only); a batch that runs out of GPU memory is halved and retried
        pub batch_size: usize = optional(ParamType::int(1, 1024), 4),
        /// schedule shift: flux (image tokens, as FLUX) or uno (latent area / 256, as UNO's sampler)
        pub shift: Shift = choice(Shift::Flux),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "incontext_generate",
    // 2: the fused CPU kernels (issue 17) sum in another order: other output bytes.
    version: 2,
    summary: "FLUX text-to-image of each prompt (the diptychs), seeds_per_prompt images per prompt",
    doc: "Generates `seeds_per_prompt` images of `width`×`height` (the input's columns, multiples \
          of 16) for each prompt with FLUX: the flow-matching sampler of `unoflow generate` with \
          no reference. Each image's seed is drawn from the DAG seed and the prompt's row id. \
          The models load once per node (`model_dir`: BFL or diffusers layout; left out: the tiny \
          random model set of `generate --tiny`). Output: one row per image with `image` (PNG, \
          generation parameters in text chunks), `seed`, `steps`, `guidance`, `model_digest`; the \
          prompt row's columns are kept and `parent_ids` names it.",
    params: IncontextGenerateParams::specs(),
    inputs: (1, 1),
    resource: Resource::Gpu,
    mapping: RowMapping::Derive,
    partition_rows: 8,
    device_dependence: DeviceDependence::ClassAndPrecision,
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
    /// One image per `(prompt, seed)`, generated as one batch at `opts`' size.
    fn generate(&self, jobs: &[(&str, u64)], opts: &GenerateOptions) -> Result<Vec<RgbImage>>;
    /// The weights' identity, for provenance.
    fn digest(&self) -> String;
}

/// Models behind a mutex: the sampler is sequential, and a backend's modules need not be `Sync`.
struct Pipeline<B: Backend>(Mutex<Models<B>>);

impl<B: Kernels> TextToImage for Pipeline<B>
where
    B::Device: Send + Sync,
{
    fn generate(&self, jobs: &[(&str, u64)], opts: &GenerateOptions) -> Result<Vec<RgbImage>> {
        // A generation that panicked (a GPU out of memory) leaves the models as they were.
        let models = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut encoded: Vec<(&str, PromptEmbedding<B>)> = Vec::new();
        for (prompt, _) in jobs {
            if !encoded.iter().any(|(p, _)| p == prompt) {
                encoded.push((prompt, models.encode_prompt(prompt)?));
            }
        }
        let prompts: Vec<&PromptEmbedding<B>> =
            jobs.iter().map(|(prompt, _)| encoded.iter().find(|(p, _)| p == prompt).map(|(_, e)| e).expect("encoded above")).collect();
        let seeds: Vec<u64> = jobs.iter().map(|(_, seed)| *seed).collect();
        sample_batch(&models, &prompts, &seeds, opts, &mut |_| std::ops::ControlFlow::Continue(()))
    }

    fn digest(&self) -> String {
        let models = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::to_string(&models.digests).unwrap_or_default()
    }
}

/// Whether a failure is the device running out of memory (worth retrying with a smaller batch).
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("outofmemory")
}

/// A batch's work: one result per item, or why the batch failed.
type BatchFn<'a, J, T> = dyn FnMut(&[J]) -> std::result::Result<Vec<T>, String> + 'a;

/// Runs `run` over `items` in batches of `size`; a batch that runs out of memory is halved and
/// retried, down to single items. Results in item order; a batch's other errors are returned
/// for each of its items.
fn in_batches<J, T>(items: &[J], size: usize, run: &mut BatchFn<'_, J, T>) -> Vec<std::result::Result<T, String>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(size.max(1)) {
        // Panics cross the models' FFI boundary as out-of-memory reports on some backends.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(chunk))).unwrap_or_else(|panic| {
            Err(panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
        });
        match attempt {
            Ok(results) => out.extend(results.into_iter().map(Ok)),
            Err(message) if chunk.len() > 1 && is_out_of_memory(&message) => {
                out.extend(in_batches(chunk, chunk.len().div_ceil(2), run));
            }
            Err(message) => out.extend(chunk.iter().map(|_| Err(message.clone()))),
        }
    }
    out
}

fn open_models(model_dir: Option<&Path>, env: &Environment) -> Result<Box<dyn TextToImage>> {
    on_device!(env.device, |device: B| {
        let models = match model_dir {
            None => Models::<B>::tiny(&device)?,
            Some(dir) => {
                let precision = if matches!(env.device, unoflow_models::Device::Cpu) { Precision::F32 } else { Precision::Bf16 };
                Models::<B>::load(dir, None, precision, &device)?
            }
        };
        Ok(Box::new(Pipeline(Mutex::new(models))) as Box<dyn TextToImage>)
    })
}

impl Operator for IncontextGenerate {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(IncontextGenerateParams::parse(params)?))
    }
}

impl Configured for IncontextGenerateParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let size = |name: &str| ColumnRequirement {
            name: name.into(),
            types: vec![DataType::UInt32, DataType::Int32, DataType::Int64, DataType::UInt64, DataType::UInt16, DataType::Int16],
        };
        vec![vec![ColumnRequirement::text(&self.prompt), size(WIDTH), size(HEIGHT)]]
    }

    fn output_schema(&self, inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(derived_schema(&inputs[0], &[], added_fields()))
    }

    fn prepare(&self, env: &Environment, input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let options = GenerateOptions {
            prompt: String::new(),
            refs: Vec::new(),
            width: 0,
            height: 0,
            steps: self.steps,
            guidance: self.guidance,
            seed: 0,
            num_images: 1,
            pe: PeMode::Diagonal,
            shift: self.shift.into(),
            ref_long_side: None,
        };
        let model = open_models(self.model_dir.as_deref(), env).map_err(|e| load_err(format!("incontext_generate: {e}")))?;
        Ok(Arc::new(Generator {
            digest: model.digest(),
            model,
            options,
            prompt: self.prompt.clone(),
            seeds_per_prompt: self.seeds_per_prompt,
            batch_size: self.batch_size,
            seed: env.seed,
            schema: self.output_schema(&[Arc::clone(input_schema)])?,
        }))
    }
}

struct Generator {
    model: Box<dyn TextToImage>,
    digest: String,
    options: GenerateOptions,
    prompt: String,
    seeds_per_prompt: usize,
    batch_size: usize,
    seed: u64,
    schema: SchemaRef,
}

fn sizes(input: &RecordBatch, name: &str) -> Result<UInt32Array> {
    let col = cast(column(input, name)?, &DataType::UInt32)?;
    col.as_any().downcast_ref::<UInt32Array>().cloned().ok_or_else(|| OpError::Internal("cast to UInt32".into()))
}

/// One image to make: the row it is for, its index among the row's images, prompt, size, seed.
struct Job<'a> {
    row: usize,
    prompt: &'a str,
    size: (u32, u32),
    seed: u64,
}

impl Generator {
    /// The seeds of a prompt row: drawn from the DAG seed and the row id, below 2⁵³ so they
    /// survive JSON and PyTorch's generators unchanged.
    fn seeds(&self, row_id: &str) -> Vec<u64> {
        let mut draws = Draws::new(self.seed, "incontext_generate", &[row_id.as_bytes()]);
        (0..self.seeds_per_prompt).map(|_| draws.next_u64() >> 11).collect()
    }

    /// PNG bytes with the generation parameters as text chunks.
    fn png(&self, job: &Job<'_>, image: &RgbImage) -> std::result::Result<Vec<u8>, String> {
        let meta = serde_json::json!({
            "prompt": job.prompt, "width": job.size.0, "height": job.size.1, "seed": job.seed, "steps": self.options.steps,
            "guidance": self.options.guidance, "models": self.digest, "unoflow": env!("CARGO_PKG_VERSION"),
        });
        png_with_text(image, &[("parameters".into(), meta.to_string()), ("Software".into(), "unoflow".into())]).map_err(|e| e.to_string())
    }
}

impl PartitionProcessor for Generator {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let ids = row_ids(input)?;
        let prompts = text(input, &self.prompt)?;
        let (widths, heights) = (sizes(input, WIDTH)?, sizes(input, HEIGHT)?);
        // Rows with a bad size fail alone; the others become one job per image.
        let mut row_failures: Vec<Option<String>> = vec![None; input.num_rows()];
        let mut jobs = Vec::new();
        for (row, failure) in row_failures.iter_mut().enumerate() {
            let (w, h) = (widths.value(row), heights.value(row));
            if w == 0 || h == 0 || !w.is_multiple_of(16) || !h.is_multiple_of(16) {
                *failure = Some(format!("{w}×{h}: width and height must be positive multiples of 16"));
                continue;
            }
            for seed in self.seeds(ids.value(row)) {
                jobs.push(Job { row, prompt: prompts.value(row), size: (w, h), seed });
            }
        }
        // Batches hold one size; jobs keep their order within a size.
        jobs.sort_by_key(|j| j.size);
        let mut images: Vec<Option<std::result::Result<Vec<u8>, String>>> = (0..jobs.len()).map(|_| None).collect();
        let mut start = 0;
        while start < jobs.len() {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            let end = start + jobs[start..].iter().take_while(|j| j.size == jobs[start].size).count();
            let (w, h) = jobs[start].size;
            let opts = GenerateOptions { width: w as usize, height: h as usize, ..self.options.clone() };
            let made = in_batches(&jobs[start..end], self.batch_size, &mut |batch| {
                let pairs: Vec<(&str, u64)> = batch.iter().map(|j| (j.prompt, j.seed)).collect();
                let images = self.model.generate(&pairs, &opts).map_err(|e| e.to_string())?;
                batch.iter().zip(&images).map(|(job, image)| self.png(job, image)).collect()
            });
            for (slot, result) in images[start..end].iter_mut().zip(made) {
                *slot = Some(result);
            }
            start = end;
        }
        for (job, image) in jobs.iter().zip(&images) {
            if let Some(Err(message)) = image {
                row_failures[job.row].get_or_insert_with(|| message.clone());
            }
        }
        let results = RowResults::split(ids, row_failures.into_iter().map(|f| f.map_or(Ok(()), Err)));
        // Output rows in input order, a row's images in seed order.
        let mut order: Vec<usize> =
            (0..jobs.len()).filter(|&i| results.errors.iter().all(|e| e.row_id != ids.value(jobs[i].row))).collect();
        order.sort_by_key(|&i| jobs[i].row);
        let (mut sources, mut new_ids, mut pngs, mut seeds) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut k = 0;
        for (n, &i) in order.iter().enumerate() {
            let job = &jobs[i];
            k = if n > 0 && jobs[order[n - 1]].row == job.row { k + 1 } else { 0 };
            sources.push(job.row as u32);
            new_ids.push(
                RowIdHasher::new("incontext_generate").field(ids.value(job.row).as_bytes()).field(&(k as u64).to_le_bytes()).finish(),
            );
            pngs.push(images[i].as_ref().and_then(|r| r.as_ref().ok()).map(Vec::as_slice).unwrap_or_default());
            seeds.push(job.seed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_batches_are_halved_down_to_single_items() {
        let mut calls = Vec::new();
        let results = in_batches(&[1, 2, 3, 4, 5], 4, &mut |batch: &[i32]| {
            calls.push(batch.len());
            if batch.len() > 1 { Err("CUDA error: out of memory".into()) } else { Ok(vec![batch[0] * 10]) }
        });
        assert_eq!(results, vec![Ok(10), Ok(20), Ok(30), Ok(40), Ok(50)]);
        assert_eq!(calls, [4, 2, 1, 1, 2, 1, 1, 1]);
    }

    #[test]
    fn other_failures_fail_the_batch_and_panics_are_caught() {
        let results = in_batches::<i32, i32>(&[1, 2, 3], 2, &mut |batch: &[i32]| {
            if batch[0] == 1 { Err("bad prompt".into()) } else { panic!("out of memory") }
        });
        assert_eq!(results, vec![Err("bad prompt".to_string()), Err("bad prompt".to_string()), Err("out of memory".to_string())]);
    }
}
