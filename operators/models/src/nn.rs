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

/// `nn.GroupNorm(groups, channels, eps)` with `weight` and `bias` over `[B, C, H, W]`,
/// statistics in f32.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    groups: usize,
    eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    pub fn load(vb: &Vb<B>, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [channels])?),
            bias: Param::from_tensor(vb.tensor("bias", [channels])?),
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let [b, c, h, w] = x.dims();
        let g = x.cast(DType::F32).reshape([b, self.groups, (c / self.groups) * h * w]);
        let (var, mean) = g.clone().var_mean_bias(2);
        let y = ((g - mean) / (var + self.eps).sqrt()).reshape([b, c, h, w]);
        let weight = self.weight.val().cast(DType::F32).reshape([1, c, 1, 1]);
        let bias = self.bias.val().cast(DType::F32).reshape([1, c, 1, 1]);
        (y * weight + bias).cast(dtype)
    }
}

/// `nn.Conv2d` with PyTorch's weight layout `[out, in, k, k]`; padding may differ per side.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    stride: usize,
    /// Padding before (top, left) and after (bottom, right).
    pad: [usize; 2],
}

impl<B: Backend> Conv2d<B> {
    /// Loads `NAME.weight` (and `NAME.bias`), square kernel `k`, symmetric padding `pad`.
    pub fn load(vb: &Vb<B>, c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [c_out, c_in, k, k])?),
            bias: if bias { Some(Param::from_tensor(vb.tensor("bias", [c_out])?)) } else { None },
            stride,
            pad: [pad, pad],
        })
    }

    /// Pads only after (bottom/right), as FLUX's autoencoder downsampling does.
    pub fn with_trailing_pad(mut self, pad: usize) -> Self {
        self.pad = [0, pad];
        self
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let w = self.weight.val();
        let (s, [before, after]) = (self.stride, self.pad);
        let mut x = x.cast(w.dtype());
        if after > before {
            // Pad the trailing sides with zeros of the input's dtype ourselves: burn's asymmetric
            // padding makes its zeros in the default dtype, which a bf16 input rejects.
            let [b, c, h, wd] = x.dims();
            let options = (&x.device(), x.dtype());
            x = Tensor::cat(vec![x, Tensor::zeros([b, c, after - before, wd], options)], 2);
            x = Tensor::cat(vec![x, Tensor::zeros([b, c, h + after - before, after - before], options)], 3);
        }
        let options = burn::tensor::ops::ConvOptions::new([s, s], [before, before], [1, 1], 1);
        burn::tensor::module::conv2d(x, w, self.bias.as_ref().map(|b| b.val()), options)
    }
}

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
    // One head whose scores alone exceed the budget (the autoencoder's single-head attention
    // at high resolution): process the queries in blocks. Exact, only the peak changes.
    if h == 1 && b == 1 && per_head > SCORE_BYTES && !causal {
        let block = (SCORE_BYTES / (lk * 4)).max(1);
        let outs = (0..l)
            .step_by(block)
            .map(|s| matmul_attention(q.clone().narrow(2, s, block.min(l - s)), k.clone(), v.clone(), false))
            .collect();
        return Tensor::cat(outs, 2);
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
