//! Layers shared by the models: affine LayerNorm with PyTorch's parameter names, and attention
//! with the kernel that suits the backend.

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Tensor};

use crate::vb::Vb;
use crate::weights::Result;

/// `nn.LayerNorm(dim, eps)` with `weight` and `bias`, statistics in f32.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(vb: &Vb<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: Param::from_tensor(vb.tensor("weight", [dim])?), bias: Param::from_tensor(vb.tensor("bias", [dim])?), eps })
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let y = (x - mean) / (var + self.eps).sqrt();
        let w = self.weight.val().cast(DType::F32).unsqueeze::<D>();
        let b = self.bias.val().cast(DType::F32).unsqueeze::<D>();
        (y * w + b).cast(dtype)
    }
}

/// How attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The backend's attention (flash attention on CUDA).
    Fused,
    /// Scores by matrix product, softmax, product with the values: on the CPU this uses every
    /// core (the CPU backend's fused kernel runs one head at a time on one thread). Heads are
    /// processed in groups so the scores stay under [`SCORE_BYTES`].
    Matmul,
}

impl AttentionKernel {
    /// The faster kernel for backend `B`.
    pub fn for_backend<B: Backend>(device: &B::Device) -> Self {
        if B::name(device).contains("flex") { Self::Matmul } else { Self::Fused }
    }
}

/// The most memory the attention scores of one head group may take.
pub const SCORE_BYTES: usize = 256 << 20;

/// Scaled dot-product attention, `[B, H, L, D]` in and out, scale `1/sqrt(D)`, no mask.
pub fn scaled_dot_product<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, kernel: AttentionKernel) -> Tensor<B, 4> {
    attend(q, k, v, kernel, false)
}

/// Like [`scaled_dot_product`], with a causal mask (token i sees tokens 0..=i).
pub fn causal_scaled_dot_product<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, kernel: AttentionKernel) -> Tensor<B, 4> {
    attend(q, k, v, kernel, true)
}

fn attend<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, kernel: AttentionKernel, causal: bool) -> Tensor<B, 4> {
    match kernel {
        AttentionKernel::Fused => attention(q, k, v, None, None, AttentionModuleOptions { is_causal: causal, ..Default::default() }),
        AttentionKernel::Matmul => matmul_attention(q, k, v, causal),
    }
}

fn matmul_attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, causal: bool) -> Tensor<B, 4> {
    let [b, h, l, d] = q.dims();
    let lk = k.dims()[2];
    let scale = 1.0 / (d as f64).sqrt();
    let per_head = l * lk * 4;
    // Batch items one at a time when the whole batch's scores would not fit the budget.
    if b > 1 && b * h * per_head > SCORE_BYTES {
        let outs = (0..b)
            .map(|i| matmul_attention(q.clone().narrow(0, i, 1), k.clone().narrow(0, i, 1), v.clone().narrow(0, i, 1), causal))
            .collect();
        return Tensor::cat(outs, 0);
    }
    let group = (SCORE_BYTES / (b * per_head).max(1)).clamp(1, h);
    let outs: Vec<Tensor<B, 4>> = (0..h)
        .step_by(group)
        .map(|start| {
            let n = group.min(h - start);
            let (q, k, v) = (q.clone().narrow(1, start, n), k.clone().narrow(1, start, n), v.clone().narrow(1, start, n));
            let mut scores = q.matmul(k.swap_dims(2, 3)) * scale;
            if causal {
                let device = scores.device();
                let future = Tensor::<B, 2, Bool>::tril_mask([l, lk], 0, &device).unsqueeze::<4>();
                scores = scores.mask_fill(future, f32::NEG_INFINITY);
            }
            softmax(scores, 3).matmul(v)
        })
        .collect();
    if outs.len() == 1 { outs.into_iter().next().expect("one group") } else { Tensor::cat(outs, 1) }
}
