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

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use super::model::{Flux, FluxError, FluxInput};

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

/// The rectified-flow loss of `model` on `batch` (f32 scalar `[1]`), guidance embedding 1.
pub fn rectified_flow_loss<B: Backend>(model: &Flux<B>, batch: FlowBatch<B>) -> Result<Tensor<B, 1>, FluxError> {
    let [b, _, _] = batch.x_1.dims();
    let dtype = model.dtype();
    let t = batch.t.clone().cast(DType::F32).reshape([b, 1, 1]);
    let x_1 = batch.x_1.cast(DType::F32);
    let x_0 = batch.x_0.cast(DType::F32);
    let x_t = x_1.clone() * (t.clone().neg() + 1.0) + x_0.clone() * t;
    let device = x_1.device();
    let guidance =
        model.guidance_in.is_some().then(|| Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32; b], [b]), (&device, DType::F32)));
    let pred = model.forward(FluxInput {
        img: x_t.cast(dtype),
        img_ids: batch.img_ids,
        txt: batch.txt.cast(dtype),
        txt_ids: batch.txt_ids,
        y: batch.y.cast(dtype),
        timesteps: batch.t,
        guidance,
        refs: batch.refs.into_iter().map(|(r, ids)| (r.cast(dtype), ids)).collect(),
    })?;
    let diff = pred.cast(DType::F32) - (x_0 - x_1);
    Ok((diff.clone() * diff).mean())
}

impl<B: Backend> Flux<B> {
    /// The model with only its LoRA branches tracked by autodiff (base weights frozen).
    pub fn with_trainable_lora(self) -> Self {
        let mut model = self.no_grad();
        for block in &mut model.double_blocks {
            block.processor = block.processor.take().map(|p| super::lora::DoubleStreamLora {
                qkv_lora1: p.qkv_lora1.trainable(),
                proj_lora1: p.proj_lora1.trainable(),
                qkv_lora2: p.qkv_lora2.trainable(),
                proj_lora2: p.proj_lora2.trainable(),
            });
        }
        for block in &mut model.single_blocks {
            block.processor = block
                .processor
                .take()
                .map(|p| super::lora::SingleStreamLora { qkv_lora: p.qkv_lora.trainable(), proj_lora: p.proj_lora.trainable() });
        }
        model
    }
}

/// The ids of the 2-D parameters autodiff tracks (the LoRA matrices of a
/// [`Flux::with_trainable_lora`] model).
struct TrainableIds(Vec<ParamId>);

impl<B: Backend> ModuleVisitor<B> for TrainableIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if D == 2 && param.val().is_require_grad() {
            self.0.push(param.id);
        }
    }
}

/// The value of a one-element tensor.
fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.cast(DType::F32).into_data().iter::<f32>().next().map_or(f64::NAN, f64::from)
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does; returns the norm before clipping.
pub fn clip_grad_norm<B: AutodiffBackend>(model: &Flux<B>, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut ids = TrainableIds(Vec::new());
    model.visit(&mut ids);
    let mut sum_sq = 0.0f64;
    for id in &ids.0 {
        if let Some(g) = grads.get::<B::InnerBackend, 2>(*id) {
            let g = g.cast(DType::F32);
            sum_sq += scalar((g.clone() * g).sum());
        }
    }
    let norm = sum_sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for id in &ids.0 {
            if let Some(g) = grads.remove::<B::InnerBackend, 2>(*id) {
                grads.register::<B::InnerBackend, 2>(*id, g * coef);
            }
        }
    }
    norm
}

/// Optimiser settings (UNO's defaults; the paper's learning rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimSettings {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub eps: f32,
    pub weight_decay: f32,
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

/// AdamW over the LoRA branches of a FLUX model.
pub struct LoraTrainer<B: AutodiffBackend> {
    settings: OptimSettings,
    optimizer: OptimizerAdaptor<AdamW, Flux<B>, B>,
}

impl<B: AutodiffBackend> std::fmt::Debug for LoraTrainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraTrainer").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend> LoraTrainer<B>
where
    Flux<B>: AutodiffModule<B>,
{
    pub fn new(settings: OptimSettings) -> Self {
        let optimizer = AdamWConfig::new()
            .with_beta_1(settings.beta_1)
            .with_beta_2(settings.beta_2)
            .with_epsilon(settings.eps)
            .with_weight_decay(settings.weight_decay)
            .init();
        Self { settings, optimizer }
    }

    /// The gradients of one batch (before clipping) and its loss.
    pub fn gradients(&self, model: &Flux<B>, batch: FlowBatch<B>) -> Result<(GradientsParams, f64), FluxError> {
        let loss = rectified_flow_loss(model, batch)?;
        let value = scalar(loss.clone());
        Ok((GradientsParams::from_grads(loss.backward(), model), value))
    }

    /// One optimisation step: gradients, clipping, AdamW.
    pub fn step(&mut self, model: Flux<B>, batch: FlowBatch<B>) -> Result<(Flux<B>, StepStats), FluxError> {
        let (mut grads, loss) = self.gradients(&model, batch)?;
        let grad_norm = clip_grad_norm(&model, &mut grads, self.settings.max_grad_norm);
        let model = self.optimizer.step(self.settings.lr, model, grads);
        Ok((model, StepStats { loss, grad_norm }))
    }
}

/// UNO's training timesteps: the 1000-point shifted schedule for `image_seq_len` target tokens
/// (the *training resolution's* count, `(res/16)²`, as `train.py` computes it), from which t is
/// drawn uniformly.
pub fn training_timesteps(image_seq_len: usize) -> Vec<f32> {
    super::sampling::schedule(999, image_seq_len, true)
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    use super::*;
    use crate::flux::sampling::{noise, pack};
    use crate::flux::{FluxConfig, PeMode, TokenGrid, position_ids};

    type A = Autodiff<Flex>;

    fn tiny() -> FluxConfig {
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

    /// Trains a fresh rank-8 LoRA for `steps` steps over a tiny fixed dataset: four examples,
    /// each with its noise and t drawn once from `seed` (fixed, so the test measures the
    /// optimisation and not the flow objective's irreducible variance over fresh noise).
    /// Returns the losses; asserts the base weights did not move.
    fn train(steps: usize, seed: u64) -> Vec<f64> {
        let device = Default::default();
        <A as Backend>::seed(&device, 11);
        let config = tiny();
        let mut model = Flux::<A>::random(&config, &device, DType::F32);
        model.init_lora(&config, 8, &device);
        let base: Vec<f32> = model.img_in.weight.val().into_data().to_vec().expect("f32");
        let mut model = model.with_trainable_lora();
        let grid = TokenGrid { rows: 4, cols: 4 };
        let pos = position_ids(8, grid, &[grid], PeMode::Diagonal);
        let random = |shape: [usize; 3]| Tensor::<A, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let grid_t = training_timesteps(16);
        let dataset: Vec<FlowBatch<A>> = (0..4u64)
            .map(|k| {
                let (data, shape) = noise(seed.wrapping_mul(31).wrapping_add(k), 64, 64);
                let x_0 = pack(Tensor::<A, 4>::from_data(TensorData::new(data, [1, shape[0], shape[1], shape[2]]), &device));
                let t = grid_t[(seed.wrapping_add(k).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % grid_t.len()];
                FlowBatch {
                    x_1: random([1, 16, 64]),
                    x_0,
                    t: Tensor::from_data(TensorData::new(vec![t], [1]), &device),
                    img_ids: ids(&pos.target, &device),
                    txt: random([1, 8, 32]),
                    txt_ids: ids(&pos.txt, &device),
                    y: Tensor::<A, 2>::random([1, 16], Distribution::Normal(0.0, 1.0), &device),
                    refs: vec![(random([1, 16, 64]), ids(&pos.refs[0], &device))],
                }
            })
            .collect();
        let mut trainer = LoraTrainer::<A>::new(OptimSettings { lr: 1e-2, ..OptimSettings::default() });
        let mut losses = Vec::with_capacity(steps);
        for step in 0..steps {
            let (next, stats) = trainer.step(model, dataset[step % dataset.len()].clone()).expect("valid batch");
            model = next;
            losses.push(stats.loss);
        }
        let after: Vec<f32> = model.img_in.weight.val().into_data().to_vec().expect("f32");
        assert_eq!(base, after, "base weights must stay bit-identical");
        losses
    }

    #[test]
    fn loss_halves_on_a_tiny_dataset_and_runs_repeat_exactly() {
        let losses = train(300, 5);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&losses[..4]), mean(&losses[losses.len() - 4..]));
        assert!(last < first / 2.0, "loss {first:.4} → {last:.4}");
        assert_eq!(&losses[..20], &train(20, 5)[..], "same seed, same losses");
        assert_ne!(&losses[..20], &train(20, 6)[..]);
    }
}
