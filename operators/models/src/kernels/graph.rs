//! The unfused forms of the kernels: graphs of burn tensor operations. Every backend can run
//! them, and under autodiff burn differentiates them step by step.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Tensor};

use super::AfterNorm;

/// How an unfused attention is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The backend's attention (flash attention on CUDA).
    Fused,
    /// Scores by matrix product, softmax, product with the values: on the CPU this uses every
    /// core (burn Flex's own attention runs one head at a time on one thread). Heads are
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

/// Scaled dot-product attention, `[B, H, L, D]`, scale `1/√D`; `causal`: token i sees keys
/// `0..=i`.
pub fn attention_graph<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, causal: bool) -> Tensor<B, 4> {
    match AttentionKernel::for_backend::<B>(&q.device()) {
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

/// `√(2/π)`, GELU-tanh's constant.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// GELU with the tanh approximation (PyTorch `approximate="tanh"`), written with products
/// instead of `powf` (the CPU backend's `powf` is scalar libm).
pub fn gelu_tanh_graph<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner = (x.clone() * x.clone() * 0.044_715 + 1.0) * x.clone() * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}

/// The gradient through [`gelu_tanh_graph`]: `grad · gelu'(x)`.
pub fn gelu_tanh_backward_graph<B: Backend, const D: usize>(x: Tensor<B, D>, grad: Tensor<B, D>) -> Tensor<B, D> {
    let x2 = x.clone() * x.clone();
    let tanh = ((x2.clone() * 0.044_715 + 1.0) * x.clone() * SQRT_2_OVER_PI).tanh();
    let du = (x2 * (3.0 * 0.044_715) + 1.0) * SQRT_2_OVER_PI;
    let slope = (tanh.clone() + 1.0) * 0.5 + x * (tanh.clone() * tanh).neg().add_scalar(1.0) * du * 0.5;
    grad * slope
}

/// FLUX's rotary embedding of `x` `[B, L, H, D]` (pairs interleaved along D) with `cos`, `sin`
/// `[B, L, 1, D/2, 1]`, in f32; returns `x`'s dtype.
pub fn rope_graph<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 5>, sin: Tensor<B, 5>) -> Tensor<B, 4> {
    let dtype = x.dtype();
    let [b, l, h, d] = x.dims();
    let x = x.cast(DType::F32).reshape([b, l, h, d / 2, 2]); // (b, l, h, pair, 2)
    let x0 = x.clone().narrow(4, 0, 1);
    let x1 = x.narrow(4, 1, 1);
    let out0 = cos.clone() * x0.clone() - sin.clone() * x1.clone();
    let out1 = sin * x0 + cos * x1;
    Tensor::cat(vec![out0, out1], 4).reshape([b, l, h, d]).cast(dtype)
}

/// FLUX's modulated LayerNorm: `x` `[B, L, D]` normalised over D in f32 (no affine, `eps` added
/// to the biased variance), back to `x`'s dtype, then `(1 + scale)·x + shift` with `shift`,
/// `scale` `[B, 1, D]`.
pub fn layer_norm_modulate_graph<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 3>, scale: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let (var, mean) = x.clone().var_mean_bias(2);
    let normed = ((x - mean) / (var + eps).sqrt()).cast(dtype);
    (scale + 1.0) * normed + shift
}

/// A gated residual `x + gate·y`: `x`, `y` `[B, L, D]`, `gate` `[B, 1, D]`.
pub fn add_gated_graph<B: Backend>(x: Tensor<B, 3>, gate: Tensor<B, 3>, y: Tensor<B, 3>) -> Tensor<B, 3> {
    x + gate * y
}

/// LayerNorm over the last dimension with `weight` and `bias` `[D]`, statistics in f32;
/// returns `x`'s dtype.
pub fn layer_norm_graph<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 1>, bias: Tensor<B, 1>, eps: f64) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    let y = (x - mean) / (var + eps).sqrt();
    (y * weight.cast(DType::F32).unsqueeze::<D>() + bias.cast(DType::F32).unsqueeze::<D>()).cast(dtype)
}

/// `nn.Conv2d` with one group: `x` `[B, C, H, W]` (cast to the weight's dtype), `weight`
/// `[O, C, k, k]`, `pad` zero rows and columns before (top, left) and after (bottom, right).
pub fn conv2d_graph<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    pad: [usize; 2],
) -> Tensor<B, 4> {
    let [before, after] = pad;
    let mut x = x.cast(weight.dtype());
    if after != before {
        // Pad the side that needs more with zeros of the input's dtype ourselves (burn's
        // asymmetric padding makes its zeros in the default dtype, which a bf16 input rejects);
        // the convolution pads the rest symmetrically.
        let extra = after.abs_diff(before);
        let [b, c, h, wd] = x.dims();
        let options = (&x.device(), x.dtype());
        let (rows, cols) = (Tensor::zeros([b, c, extra, wd], options), Tensor::zeros([b, c, h + extra, extra], options));
        x = if after > before { Tensor::cat(vec![x, rows], 2) } else { Tensor::cat(vec![rows, x], 2) };
        x = if after > before { Tensor::cat(vec![x, cols], 3) } else { Tensor::cat(vec![cols, x], 3) };
    }
    let symmetric = before.min(after);
    let options = burn::tensor::ops::ConvOptions::new([stride, stride], [symmetric, symmetric], [1, 1], 1);
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// `nn.GroupNorm(groups, C, eps)` over `x` `[B, C, H, W]` with `weight` and `bias` `[C]`,
/// statistics in f32; then SiLU if `after` says so. Returns `x`'s dtype.
pub fn group_norm_graph<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    groups: usize,
    eps: f64,
    after: AfterNorm,
) -> Tensor<B, 4> {
    let dtype = x.dtype();
    let [b, c, h, w] = x.dims();
    let g = x.cast(DType::F32).reshape([b, groups, (c / groups) * h * w]);
    let (var, mean) = g.clone().var_mean_bias(2);
    let y = ((g - mean) / (var + eps).sqrt()).reshape([b, c, h, w]);
    let weight = weight.cast(DType::F32).reshape([1, c, 1, 1]);
    let bias = bias.cast(DType::F32).reshape([1, c, 1, 1]);
    let y = (y * weight + bias).cast(dtype);
    match after {
        AfterNorm::Nothing => y,
        AfterNorm::Silu => silu(y),
    }
}
