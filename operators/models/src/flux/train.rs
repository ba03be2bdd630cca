//! One UNO LoRA training step (uno-method §4.2, UNO's `train.py`): the rectified-flow loss on
//! the target tokens, gradients for the LoRA branches only, global gradient-norm clipping and
//! AdamW.
//!
//! ```text
//! x_t = (1 − t)·x_1 + t·x_0        x_1: packed target latents, x_0: noise
//! pred = flux(x_t, refs clean, t, guidance = 1)
//! loss = mean((pred − (x_0 − x_1))²)
//! g ← g · min(1, max_norm / (‖g‖₂ + 1e-6))   over all LoRA tensors together (clip_grad_norm_)
//! AdamW(β 0.9/0.999, ε 1e-8, weight decay 0.01) on the LoRA tensors
//! ```

use burn::module::{Module, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use super::model::{Flux, FluxError, FluxInput};
use crate::kernels::Kernels;

/// One training batch: everything the step needs, noise and t included, so a step is a
/// function of its batch (the caller draws them from a seeded generator).
#[derive(Debug, Clone)]
pub struct FlowBatch<B: Backend> {
    /// Packed clean target latents `[B, L, 64]`.
    pub x_1: Tensor<B, 3>,
    /// Noise of the same shape.
    pub x_0: Tensor<B, 3>,
    /// Timesteps `[B]` in [0, 1] (from the shifted 1000-point grid).
    pub t: Tensor<B, 1>,
    pub img_ids: Tensor<B, 3>,
    pub txt: Tensor<B, 3>,
    pub txt_ids: Tensor<B, 3>,
    pub y: Tensor<B, 2>,
    /// Clean packed reference latents and their UnoPE ids.
    pub refs: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
}

/// The model's input for `batch` (x_t, guidance 1, everything in the model's dtype) and the
/// flow target `x_0 − x_1` in f32.
pub(super) fn flow_input<B: Kernels>(dtype: DType, guided: bool, batch: FlowBatch<B>) -> (FluxInput<B>, Tensor<B, 3>) {
    let [b, _, _] = batch.x_1.dims();
    let t = batch.t.clone().cast(DType::F32).reshape([b, 1, 1]);
    let x_1 = batch.x_1.cast(DType::F32);
    let x_0 = batch.x_0.cast(DType::F32);
    let x_t = x_1.clone() * (t.clone().neg() + 1.0) + x_0.clone() * t;
    let device = x_1.device();
    let guidance = guided.then(|| Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32; b], [b]), (&device, DType::F32)));
    let input = FluxInput {
        img: x_t.cast(dtype),
        img_ids: batch.img_ids,
        txt: batch.txt.cast(dtype),
        txt_ids: batch.txt_ids,
        y: batch.y.cast(dtype),
        timesteps: batch.t,
        guidance,
        refs: batch.refs.into_iter().map(|(r, ids)| (r.cast(dtype), ids)).collect(),
    };
    (input, x_0 - x_1)
}

/// The mean squared error of the prediction against the flow target, f32 `[1]`.
pub(super) fn flow_loss<B: Backend>(pred: Tensor<B, 3>, target: Tensor<B, 3>) -> Tensor<B, 1> {
    let diff = pred.cast(DType::F32) - target;
    (diff.clone() * diff).mean()
}

/// The rectified-flow loss of `model` on `batch` (f32 scalar `[1]`), guidance embedding 1.
pub fn rectified_flow_loss<B: Kernels>(model: &Flux<B>, batch: FlowBatch<B>) -> Result<Tensor<B, 1>, FluxError> {
    let (input, target) = flow_input(model.dtype(), model.guidance_in.is_some(), batch);
    Ok(flow_loss(model.forward(input)?, target))
}

impl<B: Kernels> Flux<B> {
    /// The model with only its LoRA branches tracked by autodiff (base weights frozen).
    pub fn with_trainable_lora(self) -> Self {
        self.no_grad().map_lora_branches(|_, branch| branch.trainable())
    }
}

/// Gradients of the LoRA matrices, keyed `PREFIX.down` / `PREFIX.up` (UNO's branch prefixes),
/// in burn's layout (`down` `[in, rank]`, `up` `[rank, out]`).
#[derive(Debug, Clone)]
pub struct LoraGrads<B: Backend>(pub Vec<(String, Tensor<B, 2>)>);

impl<B: Backend> LoraGrads<B> {
    /// The gradients named by branch: `(prefix, [down, up])`, in the order given.
    pub(super) fn of_branches(branches: impl IntoIterator<Item = (String, [Tensor<B, 2>; 2])>) -> Self {
        let named = branches.into_iter().flat_map(|(prefix, [down, up])| [(format!("{prefix}.down"), down), (format!("{prefix}.up"), up)]);
        Self(named.collect())
    }

    /// The global L2 norm over every tensor.
    pub fn norm(&self) -> f64 {
        self.0.iter().map(|(_, g)| scalar(g.clone().cast(DType::F32).powi_scalar(2).sum())).sum::<f64>().sqrt()
    }

    /// Scales the gradients so that their global norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_` does; returns the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> f64 {
        let norm = self.norm();
        self.clip_with(norm, max_norm);
        norm
    }

    /// [`Self::clip`] with the norm given (computed elsewhere, the same on every peer of a
    /// data-parallel training).
    pub fn clip_with(&mut self, norm: f64, max_norm: f64) {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for (_, g) in &mut self.0 {
                *g = g.clone() * coef;
            }
        }
    }

    fn get(&self, key: &str) -> Option<&Tensor<B, 2>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, g)| g)
    }
}

/// The value of a one-element tensor.
pub(super) fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.cast(DType::F32).into_data().iter::<f32>().next().map_or(f64::NAN, f64::from)
}

/// How the backward pass gets the activations of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recompute {
    /// Autodiff keeps what every operation of the forward pass needs (burn's own checkpointing
    /// strategy, a type parameter of the backend, still applies).
    #[default]
    None,
    /// Only each block's input is kept; the backward pass runs each block again, last first,
    /// and differentiates it alone (see [`super::recompute`]). One more forward pass per step;
    /// the activations held at once are one block's. The gradients are the same bits.
    Blocks,
}

/// The loss of `batch` and the gradients of the LoRA matrices.
pub fn lora_gradients<B: AutodiffBackend + Kernels>(
    model: &Flux<B>,
    batch: FlowBatch<B>,
) -> Result<(LoraGrads<B::InnerBackend>, f64), FluxError> {
    let loss = rectified_flow_loss(model, batch)?;
    let value = scalar(loss.clone());
    let grads = loss.backward();
    Ok((LoraGrads::of_branches(model.lora_branches().into_iter().map(|(prefix, branch)| (prefix, branch_grads(branch, &grads)))), value))
}

/// [`lora_gradients`], keeping the activations `recompute` says.
pub fn lora_gradients_with<B: AutodiffBackend + Kernels>(
    model: &Flux<B>,
    batch: FlowBatch<B>,
    recompute: Recompute,
) -> Result<(LoraGrads<B::InnerBackend>, f64), FluxError> {
    match recompute {
        Recompute::None => lora_gradients(model, batch),
        Recompute::Blocks => super::recompute::lora_gradients_by_block(model, batch),
    }
}

/// The gradients of one branch's `down` and `up` (zeros where the graph did not reach them).
pub(super) fn branch_grads<B: AutodiffBackend>(
    branch: &super::lora::LoraLinear<B>,
    grads: &B::Gradients,
) -> [Tensor<B::InnerBackend, 2>; 2] {
    [&branch.down, &branch.up].map(|param| param.val().grad(grads).unwrap_or_else(|| param.val().inner().zeros_like()))
}

/// Optimiser settings (UNO's defaults; the paper's learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimSettings {
    pub lr: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
}

impl Default for OptimSettings {
    fn default() -> Self {
        Self { lr: 1e-5, beta_1: 0.9, beta_2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: 1.0 }
    }
}

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

/// AdamW's running moments of one tensor (PyTorch's names).
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    exp_avg: Tensor<B, 2>,
    exp_avg_sq: Tensor<B, 2>,
}

/// AdamW (PyTorch's formula: decoupled weight decay, bias-corrected moments, ε outside the
/// square root) over the LoRA branches of a FLUX model, with global gradient clipping. Its
/// state is keyed by UNO's tensor names, so it is saved and resumed next to the LoRA.
#[derive(Debug)]
pub struct LoraTrainer<B: AutodiffBackend + Kernels> {
    settings: OptimSettings,
    recompute: Recompute,
    steps_taken: u64,
    state: std::collections::BTreeMap<String, Moments<B::InnerBackend>>,
}

impl<B: AutodiffBackend + Kernels> LoraTrainer<B> {
    pub fn new(settings: OptimSettings) -> Self {
        Self { settings, recompute: Recompute::None, steps_taken: 0, state: Default::default() }
    }

    /// The trainer with [`step`](Self::step) keeping the activations `recompute` says.
    pub fn with_recompute(self, recompute: Recompute) -> Self {
        Self { recompute, ..self }
    }

    /// Optimisation steps taken (restored with the state).
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// One optimisation step on one batch: gradients, clipping, AdamW.
    pub fn step(&mut self, model: Flux<B>, batch: FlowBatch<B>) -> Result<(Flux<B>, StepStats), FluxError> {
        let (mut grads, loss) = lora_gradients_with(&model, batch, self.recompute)?;
        let grad_norm = grads.clip(self.settings.max_grad_norm);
        Ok((self.apply(model, &grads), StepStats { loss, grad_norm }))
    }

    /// Applies (already clipped, possibly accumulated) gradients with AdamW.
    pub fn apply(&mut self, model: Flux<B>, grads: &LoraGrads<B::InnerBackend>) -> Flux<B> {
        self.steps_taken += 1;
        let OptimSettings { lr, beta_1, beta_2, eps, weight_decay, .. } = self.settings;
        let t = self.steps_taken as i32;
        let (correction_1, correction_2) = (1.0 - beta_1.powi(t), 1.0 - beta_2.powi(t));
        let state = &mut self.state;
        model.map_lora_branches(|prefix, branch| {
            let mut update = |part: &str, param: Param<Tensor<B, 2>>| -> Param<Tensor<B, 2>> {
                let key = format!("{prefix}.{part}");
                let value = param.val().inner();
                let Some(g) = grads.get(&key) else { return param };
                let g = g.clone().cast(value.dtype());
                let m = state.remove(&key).unwrap_or_else(|| Moments { exp_avg: g.zeros_like(), exp_avg_sq: g.zeros_like() });
                let exp_avg = m.exp_avg * beta_1 + g.clone() * (1.0 - beta_1);
                let exp_avg_sq = m.exp_avg_sq * beta_2 + g.clone() * g * (1.0 - beta_2);
                let denom = (exp_avg_sq.clone() / correction_2).sqrt() + eps;
                let updated = value * (1.0 - lr * weight_decay) - (exp_avg.clone() / correction_1) / denom * lr;
                state.insert(key, Moments { exp_avg, exp_avg_sq });
                Param::from_tensor(Tensor::from_inner(updated)).set_require_grad(true)
            };
            super::lora::LoraLinear { down: update("down", branch.down), up: update("up", branch.up), weight: branch.weight }
        })
    }

    /// The optimiser state as tensors in UNO's layout (`PREFIX.down.weight.exp_avg`, …, the
    /// transpose of burn's) and the step count, for a checkpoint.
    pub fn state_tensors(&self) -> (Vec<(String, TensorData)>, u64) {
        let mut out = Vec::new();
        for (key, m) in &self.state {
            out.push((format!("{key}.weight.exp_avg"), m.exp_avg.clone().transpose().into_data()));
            out.push((format!("{key}.weight.exp_avg_sq"), m.exp_avg_sq.clone().transpose().into_data()));
        }
        (out, self.steps_taken)
    }

    /// Restores the state [`state_tensors`](Self::state_tensors) gave.
    pub fn restore(&mut self, tensors: Vec<(String, TensorData)>, steps_taken: u64, device: &burn::tensor::Device<B::InnerBackend>) {
        self.steps_taken = steps_taken;
        self.state.clear();
        type Half<B> = Option<Tensor<<B as AutodiffBackend>::InnerBackend, 2>>;
        let mut pending: std::collections::BTreeMap<String, (Half<B>, Half<B>)> = Default::default();
        for (name, data) in tensors {
            let tensor = Tensor::<B::InnerBackend, 2>::from_data(data, device).transpose();
            if let Some(key) = name.strip_suffix(".weight.exp_avg_sq") {
                pending.entry(key.to_string()).or_default().1 = Some(tensor);
            } else if let Some(key) = name.strip_suffix(".weight.exp_avg") {
                pending.entry(key.to_string()).or_default().0 = Some(tensor);
            }
        }
        for (key, pair) in pending {
            if let (Some(exp_avg), Some(exp_avg_sq)) = pair {
                self.state.insert(key, Moments { exp_avg, exp_avg_sq });
            }
        }
    }
}

/// The LoRA of a checkpoint folder (UNO's layout: `generate --lora` and UNO's own loader read it).
pub const CHECKPOINT_LORA: &str = "lora.safetensors";
/// AdamW's moments of a checkpoint folder (UNO's key layout with `.exp_avg`/`.exp_avg_sq`
/// suffixes; metadata `steps`).
pub const CHECKPOINT_OPTIMIZER: &str = "optimizer.safetensors";

/// Writes a checkpoint: the LoRA and the optimiser state, into `dir` (created).
pub fn save_checkpoint<B: AutodiffBackend + Kernels>(
    dir: &std::path::Path,
    model: &Flux<B>,
    trainer: &LoraTrainer<B>,
) -> crate::weights::Result<()> {
    use crate::weights::{WeightsError, write_safetensors};
    std::fs::create_dir_all(dir).map_err(|source| WeightsError::Io { path: dir.to_path_buf(), source })?;
    let meta = |k: &str, v: String| std::collections::BTreeMap::from([(k.to_string(), v)]);
    write_safetensors(&dir.join(CHECKPOINT_LORA), &model.lora_tensors(), &meta("format", "uno_lora".into()))?;
    let (state, steps) = trainer.state_tensors();
    write_safetensors(&dir.join(CHECKPOINT_OPTIMIZER), &state, &meta("steps", steps.to_string()))
}

/// Restores the optimiser state of a checkpoint written by [`save_checkpoint`] (the LoRA loads
/// with [`load_lora`](super::load_lora)).
pub fn load_optimizer<B: AutodiffBackend + Kernels>(
    dir: &std::path::Path,
    trainer: &mut LoraTrainer<B>,
    device: &burn::tensor::Device<B::InnerBackend>,
) -> crate::weights::Result<()> {
    let file = crate::weights::SafetensorsFile::open(&dir.join(CHECKPOINT_OPTIMIZER))?;
    let steps = file.metadata().get("steps").and_then(|s| s.parse().ok()).unwrap_or(0);
    let names: Vec<String> = file.keys().map(str::to_string).collect();
    let tensors = names.into_iter().map(|k| file.read(&k).map(|d| (k, d))).collect::<crate::weights::Result<Vec<_>>>()?;
    trainer.restore(tensors, steps, device);
    Ok(())
}

/// UNO's training timesteps: the 1000-point shifted schedule for `image_seq_len` target tokens
/// (the *training resolution's* count, `(res/16)²`, as `train.py` computes it), from which t is
/// drawn uniformly.
pub fn training_timesteps(image_seq_len: usize) -> Vec<f32> {
    super::sampling::schedule(999, image_seq_len, true)
}

#[cfg(test)]
pub(super) mod tests {
    use burn::backend::{Autodiff, Flex};

    use super::*;
    use crate::flux::sampling::noise;
    use crate::flux::{FluxConfig, PeMode, TokenGrid, position_ids};

    type A = Autodiff<Flex>;

    /// A tiny FLUX: one double and one single block.
    pub(in crate::flux) fn tiny() -> FluxConfig {
        FluxConfig {
            in_channels: 64,
            vec_in_dim: 16,
            context_in_dim: 32,
            hidden_size: 64,
            mlp_ratio: 2.0,
            num_heads: 2,
            depth: 1,
            depth_single_blocks: 1,
            axes_dim: vec![8, 12, 12],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    fn ids(ids: &[[f32; 3]], device: &burn::backend::flex::FlexDevice) -> Tensor<A, 3> {
        let flat: Vec<f32> = ids.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [1, ids.len(), 3]), (device, DType::F32))
    }

    /// A tiny model with a fresh rank-8 LoRA. The backend's random generator is global to the
    /// process (other tests draw from it concurrently), so this is built once per test and
    /// everything after it is drawn on the host.
    fn model() -> Flux<A> {
        let device = Default::default();
        <A as Backend>::seed(&device, 11);
        let config = tiny();
        let mut model = Flux::<A>::random(&config, &device, DType::F32);
        model.init_lora(&config, 8, &device);
        model.with_trainable_lora()
    }

    /// Standard normal values of `shape` from the host generator, keyed by `seed`.
    fn host_normal<const D: usize>(seed: u64, shape: [usize; D]) -> Tensor<A, D> {
        let n: usize = shape.iter().product();
        let (mut values, _) = noise(seed, 16, 16 * n.div_ceil(16 * 4));
        values.truncate(n);
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    /// A tiny fixed dataset: four examples, each with its noise and t drawn once from `seed`
    /// (fixed, so the test measures the optimisation, not the flow objective's irreducible
    /// variance over fresh noise).
    fn dataset(seed: u64) -> Vec<FlowBatch<A>> {
        let device = Default::default();
        let grid = TokenGrid { rows: 4, cols: 4 };
        let pos = position_ids(8, grid, &[grid], PeMode::Diagonal);
        let grid_t = training_timesteps(16);
        (0..4u64)
            .map(|k| {
                let key = |part: u64| seed.wrapping_mul(1000).wrapping_add(k * 10 + part);
                let t = grid_t[(key(0).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % grid_t.len()];
                FlowBatch {
                    x_1: host_normal(1000 + k, [1, 16, 64]),
                    x_0: host_normal(key(1), [1, 16, 64]),
                    t: Tensor::from_data(TensorData::new(vec![t], [1]), &device),
                    img_ids: ids(&pos.target, &device),
                    txt: host_normal(2000 + k, [1, 8, 32]),
                    txt_ids: ids(&pos.txt, &device),
                    y: host_normal(3000 + k, [1, 16]),
                    refs: vec![(host_normal(4000 + k, [1, 16, 64]), ids(&pos.refs[0], &device))],
                }
            })
            .collect()
    }

    /// Trains for `steps` steps, cycling through `data`; returns the losses and asserts the
    /// base weights did not move.
    fn train(mut model: Flux<A>, data: &[FlowBatch<A>], steps: usize) -> Vec<f64> {
        let base: Vec<f32> = model.img_in.weight.val().into_data().to_vec().expect("f32");
        let mut trainer = LoraTrainer::<A>::new(OptimSettings { lr: 1e-2, ..OptimSettings::default() });
        let mut losses = Vec::with_capacity(steps);
        for step in 0..steps {
            let (next, stats) = trainer.step(model, data[step % data.len()].clone()).expect("valid batch");
            model = next;
            losses.push(stats.loss);
        }
        let after: Vec<f32> = model.img_in.weight.val().into_data().to_vec().expect("f32");
        assert_eq!(base, after, "base weights must stay bit-identical");
        losses
    }

    #[test]
    fn loss_halves_on_a_tiny_dataset_and_runs_repeat_exactly() {
        let model = model();
        let losses = train(model.clone(), &dataset(5), 300);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&losses[..4]), mean(&losses[losses.len() - 4..]));
        assert!(last < first / 2.0, "loss {first:.4} → {last:.4}");
        assert_eq!(&losses[..20], &train(model.clone(), &dataset(5), 20)[..], "same seed, same losses");
        assert_ne!(&losses[..20], &train(model, &dataset(6), 20)[..]);
    }
}
