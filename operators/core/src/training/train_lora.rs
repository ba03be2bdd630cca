//! `train_lora`: UNO's LoRA training (uno-method §4.2–§4.3) as a node: the pairs or triplets of
//! its input table are the dataset, the output is one row per optimisation step, and the LoRA
//! checkpoints are files in the node's artifact folder.
//!
//! Determinism and resume: which examples a step uses, which prompts are dropped, t and the
//! noise are functions of the DAG seed and the step number only. A checkpoint holds the LoRA,
//! AdamW's moments and the rows so far; a killed training restarts from its last checkpoint
//! and continues with the very same steps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, ListBuilder, StringArray, StringBuilder, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};
use unoflow_api::gang::{GangFollower, GangRole, Order};
use unoflow_models::Kernels;
use unoflow_models::flux::sampling::ids_tensor;
use unoflow_models::flux::sampling::{noise, pack};
use unoflow_models::flux::train::{
    CHECKPOINT_LORA, CHECKPOINT_OPTIMIZER, FlowBatch, LoraGrads, LoraTrainer, OptimSettings, Recompute as KeptActivations, load_optimizer,
    lora_gradients_with, save_checkpoint, training_timesteps,
};
use unoflow_models::flux::{Flux, PeMode, TokenGrid, load_lora, position_ids};

use super::buckets::bucket_for;
use crate::columns::{ColumnRequirement, PARENT_IDS};
use crate::draws::Draws;
use crate::embed::load_err;
use crate::generate::{Models, Pe, PromptEmbedding, to_tensor};
use crate::operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, Resource, RowMapping,
};
use crate::params::{ParamType, Params, PathKind};
use crate::rowid::RowIdHasher;
use crate::rows::{binary, bytes_at, row_ids, text};
use crate::{OpError, Result, image_io};

/// How long a gang's leader waits at the start of a training for the workers started with it,
/// loading their models (later ones join at a checkpoint).
const GANG_START_WAIT: Duration = Duration::from_secs(60);
/// How long it waits when it resumes a training (its leader died): the peers of the last gang
/// have their models loaded and rejoin within a second or two; workers that died stay away.
const GANG_RESUME_WAIT: Duration = Duration::from_secs(10);

/// The `train_lora` operator.
#[derive(Debug, Clone, Copy)]
pub struct TrainLora;

crate::params! {
    /// `train_lora`'s parameters.
    pub struct TrainLoraParams {
        /// FLUX model folder (BFL or diffusers layout); empty: the tiny random models
        pub model_dir: Option<PathBuf> = optional(ParamType::Path(PathKind::Input), ""),
        /// the prompt column
        pub prompt: String = optional(ParamType::Str, "prompt"),
        /// the target image column
        pub target: String = optional(ParamType::Str, "target_image"),
        /// the reference image columns, in order
        pub refs: Vec<String> = optional(ParamType::StrList, ["ref_image"]),
        /// a column with a LoRA file to start from (stage II)
        pub init_lora: Option<String> = optional(ParamType::Str, ""),
        /// LoRA rank of a fresh LoRA (paper: 512)
        pub rank: usize = optional(ParamType::int(1, 4096), 512),
        /// optimisation steps (paper: 5000 per stage)
        pub steps: u64 = optional(ParamType::int(1, 10_000_000), 5000),
        /// constant learning rate (paper: 1e-5)
        pub learning_rate: f64 = optional(ParamType::float(0.0, 1.0), 1e-5),
        /// examples per micro-batch
        pub batch_size: usize = optional(ParamType::int(1, 4096), 1),
        /// micro-batches per step
        pub gradient_accumulation: usize = optional(ParamType::int(1, 4096), 1),
        /// global gradient clipping
        pub max_grad_norm: f64 = optional(ParamType::float(0.0, 1e6), 1.0),
        /// AdamW weight decay
        pub weight_decay: f64 = optional(ParamType::float(0.0, 10.0), 0.01),
        /// fraction of prompts emptied
        pub text_dropout: f64 = optional(ParamType::float(0.0, 1.0), 0.1),
        /// training resolution (buckets and t schedule)
        pub resolution: u32 = optional(ParamType::int(16, 4096), 512),
        /// references' resolution (0: `resolution`)
        pub resolution_ref: u32 = optional(ParamType::int(0, 4096), 0),
        /// UnoPE mode
        pub pe: Pe = choice(Pe::Diagonal),
        /// what the backward pass recomputes instead of keeping: `none`, or `blocks` (only each
        /// block's input is kept, each block runs again in the backward pass: a fraction of the
        /// memory for one more forward pass per step); the LoRA is the same bits
        pub recompute: Recompute = choice(Recompute::None).not_fingerprinted(),
        /// steps between checkpoints
        pub checkpoint_every: u64 = optional(ParamType::int(1, 10_000_000), 1000).not_fingerprinted(),
    }
}

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "train_lora",
    // 2: the fused CPU kernels (issue 17) sum in another order: other output bytes.
    // 3: `recompute` left the fingerprint (the LoRA is the same bits either way), so the
    // `checkpoint` column names other artifact folders.
    version: 3,
    summary: "UNO LoRA training (rectified flow, UnoPE references, AdamW) on the input pairs; one row per step, checkpoints as artifacts",
    doc: "Trains a LoRA on every block of FLUX as UNO's train.py: target and references encoded by \
          the frozen autoencoder (targets resized without cropping to the bucket closest to the \
          batch's mean aspect ratio, references bucketed per index at `resolution_ref`), prompts by \
          the frozen T5 and CLIP with `text_dropout` of them emptied, t drawn uniformly from the \
          1000-point shifted schedule of the training resolution, x_t = (1−t)·x_1 + t·noise, \
          target noise − x_1, MSE on the target tokens, guidance 1, references clean with UnoPE. \
          AdamW (β 0.9/0.999, ε 1e-8, weight decay 0.01), global gradient clipping, constant \
          learning rate, gradient accumulation. Checkpoints (LoRA in UNO's layout, loadable by \
          `generate --lora`, and AdamW's state) every `checkpoint_every` steps and at the end, in \
          the node's artifact folder; the `checkpoint` column names them. `init_lora`: a column \
          holding a LoRA file to continue from (stage II continues stage I's: select its last \
          checkpoint into the data with a `sql` node, so editing stage I makes stage II stale).",
    params: TrainLoraParams::specs(),
    inputs: (1, 1),
    resource: Resource::Gpu,
    mapping: RowMapping::Derive,
    // The whole dataset is one unit: training is one sequential computation; checkpoints, not
    // partitions, make it resumable.
    partition_rows: 1 << 30,
    device_dependence: DeviceDependence::ClassAndPrecision,
});

fn output_fields() -> Vec<Field> {
    vec![
        crate::columns::row_id_field(),
        Field::new(PARENT_IDS, DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
        Field::new("step", DataType::UInt64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("learning_rate", DataType::Float64, false),
        Field::new("grad_norm", DataType::Float64, false),
        Field::new("examples_seen", DataType::UInt64, false),
        Field::new("checkpoint", DataType::Utf8, true),
    ]
}

impl Operator for TrainLora {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn configure(&self, params: &Params) -> Result<Arc<dyn Configured>> {
        Ok(Arc::new(TrainLoraParams::parse(params)?))
    }
}

impl Configured for TrainLoraParams {
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        let mut needed = vec![ColumnRequirement::text(&self.prompt), ColumnRequirement::image(&self.target)];
        needed.extend(self.refs.iter().map(ColumnRequirement::image));
        needed.extend(self.init_lora.as_deref().map(ColumnRequirement::text));
        vec![needed]
    }

    fn output_schema(&self, _inputs: &[SchemaRef]) -> Result<SchemaRef> {
        Ok(Arc::new(Schema::new(output_fields())))
    }

    /// Workers sharing a workspace train together: each computes its share of the
    /// micro-batches of every step (see [`Trainer::share`]).
    fn data_parallel(&self) -> bool {
        true
    }

    fn prepare(&self, env: &Environment, _input_schema: &SchemaRef) -> Result<Arc<dyn PartitionProcessor>> {
        let settings = Settings {
            prompt: self.prompt.clone(),
            target: self.target.clone(),
            refs: self.refs.clone(),
            init_lora: self.init_lora.clone(),
            rank: self.rank,
            steps: self.steps,
            batch_size: self.batch_size,
            accumulation: self.gradient_accumulation,
            text_dropout: self.text_dropout,
            resolution: self.resolution,
            resolution_ref: match self.resolution_ref {
                0 => self.resolution,
                r => r,
            },
            pe: self.pe.into(),
            checkpoint_every: self.checkpoint_every,
            kept: match self.recompute {
                Recompute::None => KeptActivations::None,
                Recompute::Blocks => KeptActivations::Blocks,
            },
            optim: OptimSettings {
                lr: self.learning_rate,
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
                ..OptimSettings::default()
            },
            seed: env.seed,
            artifacts: env
                .artifacts_dir
                .clone()
                .ok_or_else(|| OpError::Execution("train_lora needs a workspace for its checkpoints".into()))?,
            env: env.clone(),
        };
        let model_dir = self.model_dir.as_deref();
        let trainer = trainer_on(settings, model_dir, env)?;
        Ok(Arc::new(Node(Mutex::new(trainer))))
    }
}

/// A trainer on `env`'s device.
fn trainer_on(settings: Settings, model_dir: Option<&Path>, env: &Environment) -> Result<Box<dyn Train>> {
    Ok(match env.device {
        unoflow_models::Device::Cpu => {
            Box::new(Trainer::<Autodiff<unoflow_models::device::CpuBackend>>::new(settings, model_dir, Default::default())?)
        }
        #[cfg(feature = "cuda")]
        unoflow_models::Device::Cuda(n) => Box::new(Trainer::<Autodiff<unoflow_models::device::CudaBackend>>::new(
            settings,
            model_dir,
            unoflow_models::device::cuda_device(n),
        )?),
        #[cfg(not(feature = "cuda"))]
        unoflow_models::Device::Cuda(_) => return Err(load_err(unoflow_models::DeviceError::CudaNotBuilt(env.device))),
    })
}

crate::choice! {
    /// What the backward pass recomputes instead of keeping (`recompute`). Both choices give
    /// the same LoRA, bit for bit: the same operations run on the same values.
    ///
    /// burn's own op-level strategy (balanced checkpointing) is not offered: with the fused
    /// kernels it takes more memory than keeping everything (BENCHMARKS.md).
    pub enum Recompute {
        /// Nothing: every activation kept (the fastest).
        None = "none",
        /// Only each block's input kept; each block runs again in the backward pass.
        Blocks = "blocks",
    }
}

/// The node's settings.
#[derive(Debug, Clone)]
struct Settings {
    prompt: String,
    target: String,
    refs: Vec<String>,
    init_lora: Option<String>,
    rank: usize,
    steps: u64,
    batch_size: usize,
    accumulation: usize,
    text_dropout: f64,
    resolution: u32,
    resolution_ref: u32,
    pe: PeMode,
    checkpoint_every: u64,
    /// Whether gradients are computed block by block (`recompute = "blocks"`).
    kept: KeptActivations,
    optim: OptimSettings,
    seed: u64,
    artifacts: PathBuf,
    /// Resolves the `init_lora` column and names checkpoints in rows (workspace-relative).
    env: Environment,
}

/// One row of the output: what a step measured (also kept in checkpoints for resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StepRow {
    step: u64,
    loss: f64,
    grad_norm: f64,
    examples_seen: u64,
    /// Row ids of the examples the step used.
    examples: Vec<String>,
    checkpoint: Option<String>,
}

/// A training on some backend.
trait Train: Send {
    /// Trains on `input` (resuming from the last checkpoint if there is one) and returns every
    /// step's row.
    fn run(&mut self, ctx: &ExecContext, input: &RecordBatch) -> Result<Vec<StepRow>>;
    /// The (constant) learning rate.
    fn learning_rate(&self) -> f64;
}

/// The prepared node: the models, loaded once; the training runs on its single partition.
struct Node(Mutex<Box<dyn Train>>);

impl PartitionProcessor for Node {
    fn process(&self, ctx: &ExecContext, input: &RecordBatch) -> Result<PartitionOutput> {
        let mut trainer = self.0.lock().map_err(|_| OpError::Internal("a training panicked".into()))?;
        let rows = trainer.run(ctx, input)?;
        Ok(PartitionOutput { rows: step_table(&rows, trainer.learning_rate())?, errors: Vec::new() })
    }
}

/// The output table of the steps.
fn step_table(rows: &[StepRow], lr: f64) -> Result<RecordBatch> {
    let mut parents = ListBuilder::new(StringBuilder::new());
    for row in rows {
        for id in &row.examples {
            parents.values().append_value(id);
        }
        parents.append(true);
    }
    let ids: Vec<String> = rows.iter().map(|r| RowIdHasher::new("train_lora").field(&r.step.to_le_bytes()).finish()).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(parents.finish()),
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.step).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.loss).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(vec![lr; rows.len()])),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.grad_norm).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.examples_seen).collect::<Vec<_>>())),
        Arc::new(rows.iter().map(|r| r.checkpoint.as_deref()).collect::<StringArray>()),
    ];
    Ok(RecordBatch::try_new(Arc::new(Schema::new(output_fields())), columns)?)
}

/// One training example, decoded.
struct Example {
    id: String,
    prompt: String,
    target: DynamicImage,
    refs: Vec<DynamicImage>,
}

/// A training on backend `B`: the frozen models and the LoRA being trained.
struct Trainer<B: AutodiffBackend + Kernels> {
    settings: Settings,
    models: Models<B>,
    device: B::Device,
    prompts: HashMap<String, PromptEmbedding<B>>,
    /// The shuffled dataset order of one epoch (the last one asked for).
    epoch_order: Option<(u64, Vec<usize>)>,
    /// The 1000-point shifted schedule t is drawn from.
    timesteps: Vec<f32>,
}

impl<B: AutodiffBackend + Kernels> Trainer<B> {
    fn new(settings: Settings, model_dir: Option<&Path>, device: B::Device) -> Result<Self> {
        let models = match model_dir {
            None => Models::<B>::tiny(&device)?,
            Some(dir) => {
                let precision =
                    if B::name(&device).contains("flex") { unoflow_models::Precision::F32 } else { unoflow_models::Precision::Bf16 };
                Models::<B>::load(dir, None, precision, &device)?
            }
        };
        let timesteps = training_timesteps((settings.resolution as usize / 16).pow(2));
        Ok(Self { settings, models, device, prompts: HashMap::new(), epoch_order: None, timesteps })
    }

    /// The decoded examples of the input, and the LoRA file to start from, if any.
    fn examples(&self, input: &RecordBatch) -> Result<(Vec<Example>, Option<String>)> {
        let s = &self.settings;
        let ids = row_ids(input)?;
        let prompts = text(input, &s.prompt)?;
        let target = binary(input, &s.target)?;
        let refs = s.refs.iter().map(|c| binary(input, c)).collect::<Result<Vec<_>>>()?;
        let image = |col: &arrow::array::BinaryArray, name: &str, row: usize| -> Result<DynamicImage> {
            let bytes = bytes_at(col, name, row).map_err(|e| OpError::Execution(format!("row {}: {e}", ids.value(row))))?;
            image_io::decode(bytes, s.env.max_image_pixels.pixels())
                .map_err(|e| OpError::Execution(format!("row {}: `{name}`: {e}", ids.value(row))))
        };
        let mut examples = Vec::with_capacity(input.num_rows());
        for row in 0..input.num_rows() {
            examples.push(Example {
                id: ids.value(row).to_string(),
                prompt: if prompts.is_null(row) { String::new() } else { prompts.value(row).to_string() },
                target: image(&target, &s.target, row)?,
                refs: refs.iter().zip(&s.refs).map(|(col, name)| image(col, name, row)).collect::<Result<_>>()?,
            });
        }
        if examples.is_empty() {
            return Err(OpError::Execution("no training examples: the input table is empty".into()));
        }
        let init = match &s.init_lora {
            Some(column) => {
                let files = text(input, column)?;
                let first = files.iter().flatten().next().map(str::to_string);
                if files.iter().flatten().any(|f| Some(f) != first.as_deref()) {
                    return Err(OpError::Column {
                        column: column.clone(),
                        message: "rows name different LoRA files; one node continues one LoRA".into(),
                    });
                }
                Some(first.ok_or_else(|| OpError::Column { column: column.clone(), message: "is null in every row".into() })?)
            }
            None => None,
        };
        Ok((examples, init))
    }

    fn embed(&mut self, prompt: &str) -> Result<PromptEmbedding<B>> {
        if let Some(e) = self.prompts.get(prompt) {
            return Ok(e.clone());
        }
        let e = self.models.encode_prompt(prompt)?;
        self.prompts.insert(prompt.to_string(), e.clone());
        Ok(e)
    }

    /// The examples micro-batch `micro` of step `step` uses: epoch-wise seeded permutations of
    /// the dataset, so the order is a function of the seed and the step alone.
    fn picks(&mut self, step: u64, micro: usize, n: usize) -> Vec<usize> {
        let (batch_size, accumulation, seed) = (self.settings.batch_size, self.settings.accumulation, self.settings.seed);
        let per_step = (batch_size * accumulation) as u64;
        (0..batch_size)
            .map(|j| {
                let index = (step - 1) * per_step + (micro * batch_size + j) as u64;
                let (epoch, position) = (index / n as u64, (index % n as u64) as usize);
                if self.epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    // Fisher–Yates, seeded by the epoch: shuffled once per epoch, not per pick.
                    let mut order: Vec<usize> = (0..n).collect();
                    let mut draws = Draws::new(seed, "train_lora.order", &[&epoch.to_le_bytes()]);
                    for i in (1..n).rev() {
                        order.swap(i, draws.below(i + 1));
                    }
                    self.epoch_order = Some((epoch, order));
                }
                self.epoch_order.as_ref().map_or(position, |(_, order)| order[position])
            })
            .collect()
    }

    /// Images resized (no crop) to the bucket of their mean aspect ratio, encoded, packed:
    /// `[B, L, 64]` and the token grid.
    fn encode(&self, images: &[&DynamicImage], resolution: u32) -> (Tensor<B, 3>, TokenGrid) {
        let ratios: Vec<f64> = images.iter().map(|i| i.width() as f64 / i.height() as f64).collect();
        let (h, w) = bucket_for(&ratios, resolution);
        let dtype = self.models.flux.dtype();
        let latents: Vec<Tensor<B, 4>> = images
            .iter()
            .map(|img| {
                let rgb: RgbImage = image::imageops::resize(&img.to_rgb8(), w, h, FilterType::Triangle);
                self.models.ae.encode(to_tensor::<B>(&rgb, &self.device).cast(dtype))
            })
            .collect();
        (pack(Tensor::cat(latents, 0)), TokenGrid { rows: h as usize / 16, cols: w as usize / 16 })
    }

    /// Micro-batch `micro` of step `step`.
    fn batch(&mut self, step: u64, micro: usize, examples: &[Example]) -> Result<(FlowBatch<B>, Vec<String>)> {
        let picks: Vec<&Example> = self.picks(step, micro, examples.len()).into_iter().map(|i| &examples[i]).collect();
        let mut draws = Draws::new(self.settings.seed, "train_lora.batch", &[&step.to_le_bytes(), &(micro as u64).to_le_bytes()]);
        let (x_1, grid) = self.encode(&picks.iter().map(|e| &e.target).collect::<Vec<_>>(), self.settings.resolution);
        let mut refs = Vec::new();
        let mut ref_grids = Vec::new();
        for k in 0..self.settings.refs.len() {
            let (tokens, g) = self.encode(&picks.iter().map(|e| &e.refs[k]).collect::<Vec<_>>(), self.settings.resolution_ref);
            refs.push(tokens);
            ref_grids.push(g);
        }
        let mut txt = Vec::new();
        let mut y = Vec::new();
        for e in &picks {
            let prompt = if draws.unit() < self.settings.text_dropout { "" } else { e.prompt.as_str() };
            let embedding = self.embed(prompt)?;
            txt.push(embedding.txt);
            y.push(embedding.y);
        }
        let n = picks.len();
        let (h, w) = (grid.rows * 16, grid.cols * 16);
        let noises: Vec<Tensor<B, 4>> = (0..n)
            .map(|_| {
                let (data, shape) = noise(draws.next_u64(), h, w);
                Tensor::from_data(TensorData::new(data, [1, shape[0], shape[1], shape[2]]), (&self.device, DType::F32))
            })
            .collect();
        let t: Vec<f32> = (0..n).map(|_| self.timesteps[draws.below(self.timesteps.len())]).collect();
        let txt = Tensor::cat(txt, 0);
        let ids = position_ids(txt.dims()[1], grid, &ref_grids, self.settings.pe);
        let batch = FlowBatch {
            x_1,
            x_0: pack(Tensor::cat(noises, 0)),
            t: Tensor::from_data(TensorData::new(t, [n]), (&self.device, DType::F32)),
            img_ids: ids_tensor(&ids.target, n, &self.device),
            txt,
            txt_ids: ids_tensor(&ids.txt, n, &self.device),
            y: Tensor::cat(y, 0),
            refs: refs.into_iter().zip(&ids.refs).map(|(r, i)| (r, ids_tensor(i, n, &self.device))).collect(),
        };
        Ok((batch, picks.iter().map(|e| e.id.clone()).collect()))
    }

    /// The newest complete checkpoint folder (`step-NNNNNNNNN`), if any.
    fn last_checkpoint(&self) -> Option<(u64, PathBuf)> {
        let entries = std::fs::read_dir(&self.settings.artifacts).ok()?;
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                e.path().join("rows.json").is_file().then(|| (step, e.path()))
            })
            .filter(|(step, _)| *step <= self.settings.steps)
            .max_by_key(|(step, _)| *step)
    }

    /// Writes a checkpoint next to its final place and renames it in, so a folder that exists is
    /// complete.
    fn checkpoint(&self, step: u64, flux: &Flux<B>, trainer: &LoraTrainer<B>, rows: &[StepRow]) -> Result<PathBuf> {
        let dir = self.settings.artifacts.join(format!("step-{step:09}"));
        let tmp = self.settings.artifacts.join(format!(".tmp-step-{step:09}"));
        let _ = std::fs::remove_dir_all(&tmp);
        save_checkpoint(&tmp, flux, trainer).map_err(load_err)?;
        let rows_json = serde_json::to_vec(rows).map_err(|e| OpError::Internal(e.to_string()))?;
        std::fs::write(tmp.join("rows.json"), rows_json).map_err(|e| OpError::Execution(format!("{}: {e}", tmp.display())))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(|e| OpError::Execution(format!("{}: {e}", dir.display())))?;
        Ok(dir)
    }
}

impl<B: AutodiffBackend + Kernels> Train for Trainer<B> {
    fn learning_rate(&self) -> f64 {
        self.settings.optim.lr
    }

    fn run(&mut self, ctx: &ExecContext, input: &RecordBatch) -> Result<Vec<StepRow>> {
        let (examples, init) = self.examples(input)?;
        if let Some(r) = examples.iter().find(|e| e.refs.len() != self.settings.refs.len()) {
            return Err(OpError::Internal(format!("row {} has {} references", r.id, r.refs.len())));
        }
        let leader = match ctx.gang() {
            Some(GangRole::Follower(follower)) => {
                self.follow(ctx, follower, &examples)?;
                return Ok(Vec::new());
            }
            Some(GangRole::Leader(leader)) => Some(leader),
            None => None,
        };
        let (flux, mut trainer, mut rows) = self.start(init.as_deref())?;
        let mut flux = flux.with_trainable_lora();
        let per_step = (self.settings.batch_size * self.settings.accumulation) as u64;
        let first = rows.len() as u64 + 1;
        for step in first..=self.settings.steps {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            // Workers join at the start (waiting a while for those started together) and at
            // each checkpoint; they continue from the state all peers share then.
            if let Some(leader) = leader
                && (step == first || (step - 1) % self.settings.checkpoint_every == 0)
            {
                let wait = match step {
                    1 => GANG_START_WAIT,
                    _ if step == first => GANG_RESUME_WAIT,
                    _ => Duration::ZERO,
                };
                leader.admit(wait, self.settings.accumulation, &mut || self.state_bytes(&flux, &trainer))?;
            }
            let (mut grads, loss, summed_norm) = loop {
                let size = leader.map_or(1, |l| l.begin_step(step));
                let (grads, loss) = self.share(&flux, step, 0, size, &examples)?;
                let Some(leader) = leader.filter(|_| size > 1) else { break (grads, loss, None) };
                let (mut values, layout) = flatten(&grads);
                let mut scalars = [loss];
                if leader.all_reduce(&mut values, &mut scalars) {
                    break (unflatten::<B::InnerBackend>(&values, &layout, &self.device)?, scalars[0], Some(host_norm(&values)));
                }
                // A peer was lost: the step again, with the peers left.
            };
            let used = self.examples_of(step, &examples);
            let grad_norm = match summed_norm {
                Some(norm) => {
                    grads.clip_with(norm, self.settings.optim.max_grad_norm);
                    norm
                }
                None => grads.clip(self.settings.optim.max_grad_norm),
            };
            flux = trainer.apply(flux, &grads);
            rows.push(StepRow { step, loss, grad_norm, examples_seen: step * per_step, examples: used, checkpoint: None });
            if step % self.settings.checkpoint_every == 0 || step == self.settings.steps {
                let dir = self.checkpoint(step, &flux, &trainer, &rows)?;
                if let Some(last) = rows.last_mut() {
                    last.checkpoint = Some(self.settings.env.reference(&dir.join(CHECKPOINT_LORA)));
                }
                // The rows file of the checkpoint names its own LoRA too.
                let rows_json = serde_json::to_vec(&rows).map_err(|e| OpError::Internal(e.to_string()))?;
                std::fs::write(dir.join("rows.json"), rows_json).map_err(|e| OpError::Execution(format!("{}: {e}", dir.display())))?;
            }
        }
        Ok(rows)
    }
}

impl<B: AutodiffBackend + Kernels> Trainer<B> {
    /// The LoRA, the optimiser and the rows to start from: the last checkpoint, else the
    /// `init_lora` file or a fresh LoRA.
    fn start(&self, init: Option<&str>) -> Result<(Flux<B>, LoraTrainer<B>, Vec<StepRow>)> {
        let config = self.models.flux_config.clone();
        let mut flux = self.models.flux.clone();
        match init {
            Some(file) => {
                let local = self.settings.env.resolve(file).map_err(|e| OpError::Internal(format!("the LoRA {file}: {e}")))?;
                load_lora(&mut flux, &config, &local, 1.0, &self.device).map_err(load_err)?;
            }
            None => {
                B::seed(&self.device, self.settings.seed);
                flux.init_lora(&config, self.settings.rank, &self.device);
            }
        }
        let mut trainer = LoraTrainer::<B>::new(self.settings.optim);
        let mut rows: Vec<StepRow> = Vec::new();
        if let Some((step, dir)) = self.last_checkpoint() {
            load_lora(&mut flux, &config, &dir.join(CHECKPOINT_LORA), 1.0, &self.device).map_err(load_err)?;
            load_optimizer(&dir, &mut trainer, &self.device).map_err(load_err)?;
            let text = std::fs::read(dir.join("rows.json")).map_err(|e| OpError::Execution(format!("{}: {e}", dir.display())))?;
            rows = serde_json::from_slice(&text).map_err(|e| OpError::Execution(format!("{}: {e}", dir.display())))?;
            debug_assert_eq!(rows.len() as u64, step);
        }
        Ok((flux, trainer, rows))
    }

    /// The share of rank `rank` of `size` peers of step `step`: the micro-batches `m` with
    /// `m mod size = rank`, their gradients (each scaled by 1/accumulation) and losses summed
    /// in micro-batch order. Alone (`size` 1) that is the whole step. A gang is never larger
    /// than the number of micro-batches, so every rank has one.
    fn share(
        &mut self,
        flux: &Flux<B>,
        step: u64,
        rank: usize,
        size: usize,
        examples: &[Example],
    ) -> Result<(LoraGrads<B::InnerBackend>, f64)> {
        let accumulation = self.settings.accumulation;
        let scale = 1.0 / accumulation as f64;
        let mut total: Option<LoraGrads<B::InnerBackend>> = None;
        let mut loss = 0.0;
        for micro in (rank..accumulation).step_by(size.max(1)) {
            let (batch, _) = self.batch(step, micro, examples)?;
            let (grads, l) = lora_gradients_with(flux, batch, self.settings.kept).map_err(|e| OpError::Execution(e.to_string()))?;
            loss += l * scale;
            let grads = LoraGrads(grads.0.into_iter().map(|(k, g)| (k, g * scale)).collect());
            total = Some(match total {
                None => grads,
                Some(sum) => LoraGrads(sum.0.into_iter().zip(grads.0).map(|((k, a), (_, b))| (k, a + b)).collect()),
            });
        }
        let total = total.ok_or_else(|| OpError::Internal(format!("rank {rank} of {size} has no micro-batch of {accumulation}")))?;
        Ok((total, loss))
    }

    /// The row ids of the examples step `step` uses, in micro-batch order.
    fn examples_of(&mut self, step: u64, examples: &[Example]) -> Vec<String> {
        (0..self.settings.accumulation).flat_map(|micro| self.picks(step, micro, examples.len())).map(|i| examples[i].id.clone()).collect()
    }

    /// Follows a gang's leader: takes the state it sends, computes the shares it orders and
    /// applies the sums, as the leader does, until it says the training is done.
    fn follow(&mut self, ctx: &ExecContext, gang: &dyn GangFollower, examples: &[Example]) -> Result<()> {
        let mut state: Option<(Flux<B>, LoraTrainer<B>)> = None;
        let mut layout: Vec<Slot> = Vec::new();
        loop {
            if ctx.is_cancelled() {
                return Err(OpError::Execution("cancelled".into()));
            }
            match gang.next()? {
                Order::State(bytes) => state = Some(self.load_state(&bytes)?),
                Order::Step { step, rank, size } => {
                    let (flux, _) = state.as_ref().ok_or_else(|| OpError::Internal("a step ordered before any state".into()))?;
                    let flux = flux.clone();
                    let (grads, loss) = self.share(&flux, step, rank, size, examples)?;
                    let (values, slots) = flatten(&grads);
                    layout = slots;
                    gang.send(&values, &[loss])?;
                }
                Order::Sums { values, .. } => {
                    let (flux, mut trainer) = state.take().ok_or_else(|| OpError::Internal("sums sent before any state".into()))?;
                    let mut grads = unflatten::<B::InnerBackend>(&values, &layout, &self.device)?;
                    grads.clip_with(host_norm(&values), self.settings.optim.max_grad_norm);
                    state = Some((trainer.apply(flux, &grads), trainer));
                }
                Order::Done => return Ok(()),
            }
        }
    }

    /// The training's state (the LoRA and AdamW's), as a gang's joining peer receives it: the
    /// two files of a checkpoint, each after its length.
    fn state_bytes(&self, flux: &Flux<B>, trainer: &LoraTrainer<B>) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir().map_err(|e| OpError::Execution(format!("a temporary folder: {e}")))?;
        save_checkpoint(dir.path(), flux, trainer).map_err(load_err)?;
        let mut out = Vec::new();
        for name in [CHECKPOINT_LORA, CHECKPOINT_OPTIMIZER] {
            let bytes = std::fs::read(dir.path().join(name)).map_err(|e| OpError::Execution(format!("{name}: {e}")))?;
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// The model and optimiser of a state from [`Self::state_bytes`].
    fn load_state(&self, bytes: &[u8]) -> Result<(Flux<B>, LoraTrainer<B>)> {
        let dir = tempfile::tempdir().map_err(|e| OpError::Execution(format!("a temporary folder: {e}")))?;
        let mut rest = bytes;
        for name in [CHECKPOINT_LORA, CHECKPOINT_OPTIMIZER] {
            let bad = || OpError::Execution("a gang's leader sent a damaged training state".into());
            let len = rest.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize).ok_or_else(bad)?;
            let file = rest.get(8..8 + len).ok_or_else(bad)?;
            std::fs::write(dir.path().join(name), file).map_err(|e| OpError::Execution(format!("{name}: {e}")))?;
            rest = &rest[8 + len..];
        }
        let mut flux = self.models.flux.clone();
        load_lora(&mut flux, &self.models.flux_config, &dir.path().join(CHECKPOINT_LORA), 1.0, &self.device).map_err(load_err)?;
        let mut trainer = LoraTrainer::<B>::new(self.settings.optim);
        load_optimizer(dir.path(), &mut trainer, &self.device).map_err(load_err)?;
        Ok((flux.with_trainable_lora(), trainer))
    }
}

/// Where one gradient tensor sits in a flat vector: its name, shape and type.
struct Slot {
    name: String,
    shape: [usize; 2],
    dtype: DType,
}

/// The gradients as one f32 vector, for the gang's sums.
fn flatten<B: burn::tensor::backend::Backend>(grads: &LoraGrads<B>) -> (Vec<f32>, Vec<Slot>) {
    let mut values = Vec::new();
    let mut slots = Vec::with_capacity(grads.0.len());
    for (name, g) in &grads.0 {
        slots.push(Slot { name: name.clone(), shape: g.dims(), dtype: g.dtype() });
        values.extend(g.clone().cast(DType::F32).into_data().iter::<f32>());
    }
    (values, slots)
}

/// The global L2 norm of a gang's summed gradients, taken on the host in f64 from their bytes:
/// the same on every peer, whatever its device's reductions do.
fn host_norm(values: &[f32]) -> f64 {
    values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt()
}

/// The gradients of a flat vector laid out as `slots`.
fn unflatten<B: burn::tensor::backend::Backend>(values: &[f32], slots: &[Slot], device: &B::Device) -> Result<LoraGrads<B>> {
    let mut at = 0;
    let mut out = Vec::with_capacity(slots.len());
    for slot in slots {
        let n = slot.shape[0] * slot.shape[1];
        let part = values.get(at..at + n).ok_or_else(|| OpError::Internal("the gang's sums are shorter than the gradients".into()))?;
        at += n;
        let t = Tensor::<B, 2>::from_data(TensorData::new(part.to_vec(), slot.shape), (device, DType::F32)).cast(slot.dtype);
        out.push((slot.name.clone(), t));
    }
    Ok(LoraGrads(out))
}
