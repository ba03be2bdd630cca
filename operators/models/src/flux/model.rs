//! The FLUX transformer with UNO's reference tokens: configuration, embedders, blocks and the
//! top-level model.
//!
//! Reference: black-forest-labs/flux `src/flux/model.py`, `modules/layers.py`, `math.py` at
//! 802fb47, and the UNO fork at bytedance/UNO d305981 (`uno/flux/model.py`,
//! `uno/flux/modules/layers.py`), whose differences this follows: RoPE frequencies in f64, the
//! RMSNorm scale applied in f32, reference latents appended after the target in the image stream.

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use serde::{Deserialize, Serialize};

use super::lora::{DoubleStreamLora, SingleStreamLora};
use crate::kernels::Kernels;
use crate::nn::{Linear, gelu_tanh, scaled_dot_product};
use crate::vb::Vb;
use crate::weights::Result;

/// FLUX hyper-parameters, with the reference's field names (`FluxParams`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FluxConfig {
    pub in_channels: usize,
    pub vec_in_dim: usize,
    pub context_in_dim: usize,
    pub hidden_size: usize,
    pub mlp_ratio: f64,
    pub num_heads: usize,
    pub depth: usize,
    pub depth_single_blocks: usize,
    pub axes_dim: Vec<usize>,
    pub theta: f64,
    pub qkv_bias: bool,
    pub guidance_embed: bool,
}

impl FluxConfig {
    /// FLUX.1-dev (`configs["flux-dev"]`, flux/src/flux/util.py at 802fb47).
    pub fn dev() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_ratio: 4.0,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// FLUX.1-schnell: dev without the guidance embedder.
    pub fn schnell() -> Self {
        Self { guidance_embed: false, ..Self::dev() }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Checks the constraints the reference asserts.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(format!("hidden_size {} is not divisible by num_heads {}", self.hidden_size, self.num_heads));
        }
        if self.axes_dim.iter().sum::<usize>() != self.head_dim() || self.axes_dim.iter().any(|d| d % 2 == 1) {
            return Err(format!("axes_dim {:?} must be even and sum to the head dim {}", self.axes_dim, self.head_dim()));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Functions

/// Sinusoidal embedding of timesteps in [0, 1] (×1000), cos before sin, as f32 `[B, dim]`.
///
/// With `bf16_time`, `t` is rounded to bf16 and multiplied by 1000 in bf16 first, as the
/// reference does at inference (its `t_vec` is bf16): t = 0.9744 becomes 972.0.
pub fn timestep_embedding(t: &[f32], dim: usize, bf16_time: bool) -> Vec<f32> {
    let half = dim / 2;
    // As the reference: -ln(10000) in f64, then f32 arithmetic.
    let c = -(10_000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (c * i as f32 / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        let scaled = if bf16_time { half::bf16::from_f32(half::bf16::from_f32(ti).to_f32() * 1000.0).to_f32() } else { ti * 1000.0 };
        let args: Vec<f32> = freqs.iter().map(|f| scaled * f).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
    }
    out
}

/// RoPE rotation tables for position ids `[B, L, n_axes]`: cos and sin, each `[B, L, head_dim/2]`
/// in f32. Angles are computed in f64 and rounded once, as UNO's `rope`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub batch: usize,
    pub len: usize,
    pub half_dim: usize,
}

impl RopeTables {
    pub fn new(ids: &[f32], batch: usize, len: usize, axes_dim: &[usize], theta: f64) -> Self {
        let n_axes = axes_dim.len();
        let half_dim: usize = axes_dim.iter().map(|d| d / 2).sum();
        let omegas: Vec<Vec<f64>> =
            axes_dim.iter().map(|&d| (0..d).step_by(2).map(|k| 1.0 / theta.powf(k as f64 / d as f64)).collect()).collect();
        let mut cos = Vec::with_capacity(batch * len * half_dim);
        let mut sin = Vec::with_capacity(batch * len * half_dim);
        for token in ids.chunks(n_axes) {
            for (axis, omega) in omegas.iter().enumerate() {
                let pos = token[axis] as f64;
                for w in omega {
                    let angle = pos * w;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        Self { cos, sin, batch, len, half_dim }
    }

    /// The tables as tensors `[B, L, 1, head_dim/2, 1]`, ready to broadcast over heads.
    fn tensors<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let shape = [self.batch, self.len, 1, self.half_dim, 1];
        let make = |v: &Vec<f32>| Tensor::<B, 5>::from_data(TensorData::new(v.clone(), shape), (device, DType::F32));
        (make(&self.cos), make(&self.sin))
    }
}

/// Rotates interleaved pairs of `x` `[B, L, H, D]` in f32; returns `x`'s dtype.
fn apply_rope<B: Kernels>(x: Tensor<B, 4>, cos: &Tensor<B, 5>, sin: &Tensor<B, 5>) -> Tensor<B, 4> {
    let (cos, sin) = (cos.clone().into_primitive().tensor(), sin.clone().into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(B::rope(x.into_primitive().tensor(), cos, sin)))
}

/// Splits a fused projection `[B, L, 3·H·D]` ("B L (K H D)") into q, k, v, each `[B, L, H, D]`.
/// Heads stay inside tokens until attention, so norms and RoPE work on contiguous rows.
fn split_qkv<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; 3] {
    let [b, l, n] = qkv.dims();
    let hd = n / 3;
    let part = |k: usize| qkv.clone().narrow(2, k * hd, hd).reshape([b, l, heads, hd / heads]);
    [part(0), part(1), part(2)]
}

/// Attention with RoPE; q, k, v `[B, L, H, D]` in, `[B, L, H·D]` out.
fn rope_attention<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, pe: &Pe<B>) -> Tensor<B, 3> {
    let q = apply_rope(q, &pe.cos, &pe.sin).swap_dims(1, 2); // (b, h, l, d)
    let k = apply_rope(k, &pe.cos, &pe.sin).swap_dims(1, 2);
    let v = v.swap_dims(1, 2);
    let x = scaled_dot_product(q, k, v);
    let [b, h, l, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, l, h * d])
}

/// RoPE tables on the device, built once per forward.
#[derive(Debug, Clone)]
pub struct Pe<B: Backend> {
    cos: Tensor<B, 5>,
    sin: Tensor<B, 5>,
}

/// The state of a forward pass between the embedders and the first block: the streams the
/// blocks transform and what every block reads.
#[derive(Debug, Clone)]
pub(super) struct Streams<B: Backend> {
    /// Image tokens `[B, L_img + Σ L_ref, hidden]`: the target's, then the references'.
    pub img: Tensor<B, 3>,
    /// Text tokens `[B, L_txt, hidden]`.
    pub txt: Tensor<B, 3>,
    /// The modulation vector `[B, hidden]`.
    pub vec: Tensor<B, 2>,
    pub pe: Pe<B>,
    /// The target's token count (the tokens that reach the output).
    pub target_len: usize,
}

// ---------------------------------------------------------------------------------------------
// Leaf modules

/// `Linear → SiLU → Linear`.
#[derive(Module, Debug)]
pub struct MlpEmbedder<B: Backend> {
    pub in_layer: Linear<B>,
    pub out_layer: Linear<B>,
}

impl<B: Kernels> MlpEmbedder<B> {
    fn load(vb: &Vb<B>, d_in: usize, hidden: usize) -> Result<Self> {
        Ok(Self { in_layer: vb.linear("in_layer", d_in, hidden, true)?, out_layer: vb.linear("out_layer", hidden, hidden, true)? })
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.out_layer.forward(silu(self.in_layer.forward(x)))
    }
}

/// RMSNorm as UNO writes it: `(x·rsqrt(mean(x²) + 1e-6))·scale`, all in f32, then cast back.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub scale: Param<Tensor<B, 1>>,
}

impl<B: Kernels> RmsNorm<B> {
    fn load(vb: &Vb<B>, dim: usize) -> Result<Self> {
        Ok(Self { scale: Param::from_tensor(vb.tensor("scale", [dim])?) })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let rrms = (x.clone() * x.clone()).mean_dim(3).add_scalar(1e-6).sqrt().recip();
        let scale = self.scale.val().cast(DType::F32).unsqueeze::<4>();
        (x * rrms * scale).cast(dtype)
    }
}

/// Per-head RMSNorm of queries and keys.
#[derive(Module, Debug)]
pub struct QkNorm<B: Backend> {
    pub query_norm: RmsNorm<B>,
    pub key_norm: RmsNorm<B>,
}

impl<B: Kernels> QkNorm<B> {
    fn load(vb: &Vb<B>, head_dim: usize) -> Result<Self> {
        Ok(Self { query_norm: RmsNorm::load(&vb.pp("query_norm"), head_dim)?, key_norm: RmsNorm::load(&vb.pp("key_norm"), head_dim)? })
    }

    fn forward(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (self.query_norm.forward(q), self.key_norm.forward(k))
    }
}

/// The attention projections of one stream (the attention itself is joint, in the block).
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub qkv: Linear<B>,
    pub norm: QkNorm<B>,
    pub proj: Linear<B>,
}

impl<B: Kernels> SelfAttention<B> {
    fn load(vb: &Vb<B>, c: &FluxConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            qkv: vb.linear("qkv", h, 3 * h, c.qkv_bias)?,
            norm: QkNorm::load(&vb.pp("norm"), c.head_dim())?,
            proj: vb.linear("proj", h, h, true)?,
        })
    }
}

/// Shift, scale and gate of one modulated sub-layer, each `[B, 1, hidden]`.
#[derive(Debug, Clone)]
struct ModulationOut<B: Backend> {
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    gate: Tensor<B, 3>,
}

impl<B: Kernels> ModulationOut<B> {
    /// `(1 + scale)·LayerNorm(x) + shift`.
    fn norm_modulate(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        layer_norm_modulate(x, self.shift.clone(), self.scale.clone())
    }

    /// `x + gate·y`.
    fn add_gated(&self, x: Tensor<B, 3>, y: Tensor<B, 3>) -> Tensor<B, 3> {
        let (x, gate, y) = (x.into_primitive().tensor(), self.gate.clone().into_primitive().tensor(), y.into_primitive().tensor());
        Tensor::from_primitive(TensorPrimitive::Float(B::add_gated(x, gate, y)))
    }
}

/// `(1 + scale)·LayerNorm(x) + shift`: LayerNorm over the last dimension without affine
/// parameters (eps 1e-6, statistics in f32), `shift` and `scale` `[B, 1, D]`.
fn layer_norm_modulate<B: Kernels>(x: Tensor<B, 3>, shift: Tensor<B, 3>, scale: Tensor<B, 3>) -> Tensor<B, 3> {
    let (x, shift, scale) = (x.into_primitive().tensor(), shift.into_primitive().tensor(), scale.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm_modulate(x, shift, scale, 1e-6)))
}

/// `Linear(silu(vec))` split into one (single blocks) or two (double blocks) (shift, scale,
/// gate) triples.
#[derive(Module, Debug)]
pub struct Modulation<B: Backend> {
    pub lin: Linear<B>,
    triples: usize,
}

impl<B: Kernels> Modulation<B> {
    fn load(vb: &Vb<B>, hidden: usize, double: bool) -> Result<Self> {
        let triples = if double { 2 } else { 1 };
        Ok(Self { lin: vb.linear("lin", hidden, 3 * triples * hidden, true)?, triples })
    }

    fn forward(&self, vec: Tensor<B, 2>) -> Vec<ModulationOut<B>> {
        let out = self.lin.forward(silu(vec)).unsqueeze_dim::<3>(1); // (b, 1, triples·3·hidden)
        let chunks = out.chunk(3 * self.triples, 2);
        chunks.chunks(3).map(|c| ModulationOut { shift: c[0].clone(), scale: c[1].clone(), gate: c[2].clone() }).collect()
    }
}

/// `Linear → GELU(tanh) → Linear`, stored as `NAME.0` and `NAME.2` (a PyTorch Sequential).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `NAME.0`.
    pub fc1: Linear<B>,
    /// `NAME.2`.
    pub fc2: Linear<B>,
}

impl<B: Kernels> Mlp<B> {
    fn load(vb: &Vb<B>, hidden: usize, mlp_hidden: usize) -> Result<Self> {
        Ok(Self { fc1: vb.linear("0", hidden, mlp_hidden, true)?, fc2: vb.linear("2", mlp_hidden, hidden, true)? })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2.forward(gelu_tanh(self.fc1.forward(x)))
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks

/// A double-stream block: text and image tokens keep their own weights and attend jointly,
/// text first.
#[derive(Module, Debug)]
pub struct DoubleStreamBlock<B: Backend> {
    pub img_mod: Modulation<B>,
    pub img_attn: SelfAttention<B>,
    pub img_mlp: Mlp<B>,
    pub txt_mod: Modulation<B>,
    pub txt_attn: SelfAttention<B>,
    pub txt_mlp: Mlp<B>,
    /// UNO's LoRA (`NAME.processor.*` in its checkpoints).
    pub processor: Option<DoubleStreamLora<B>>,
    num_heads: usize,
}

impl<B: Kernels> DoubleStreamBlock<B> {
    fn load(vb: &Vb<B>, c: &FluxConfig) -> Result<Self> {
        let (h, m) = (c.hidden_size, c.mlp_hidden());
        Ok(Self {
            img_mod: Modulation::load(&vb.pp("img_mod"), h, true)?,
            img_attn: SelfAttention::load(&vb.pp("img_attn"), c)?,
            img_mlp: Mlp::load(&vb.pp("img_mlp"), h, m)?,
            txt_mod: Modulation::load(&vb.pp("txt_mod"), h, true)?,
            txt_attn: SelfAttention::load(&vb.pp("txt_attn"), c)?,
            txt_mlp: Mlp::load(&vb.pp("txt_mlp"), h, m)?,
            processor: None,
            num_heads: c.num_heads,
        })
    }

    /// # Shapes
    /// `img` `[B, L_img, hidden]`, `txt` `[B, L_txt, hidden]`, `vec` `[B, hidden]`.
    pub(super) fn forward(&self, img: Tensor<B, 3>, txt: Tensor<B, 3>, vec: &Tensor<B, 2>, pe: &Pe<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let lora = self.processor.as_ref();
        let [img_mod1, img_mod2] = <[_; 2]>::try_from(self.img_mod.forward(vec.clone())).expect("double modulation");
        let [txt_mod1, txt_mod2] = <[_; 2]>::try_from(self.txt_mod.forward(vec.clone())).expect("double modulation");

        let img_m = img_mod1.norm_modulate(img.clone());
        let mut img_qkv = self.img_attn.qkv.forward(img_m.clone());
        if let Some(l) = lora {
            img_qkv = img_qkv + l.qkv_lora1.forward(img_m);
        }
        let [img_q, img_k, img_v] = split_qkv(img_qkv, self.num_heads);
        let (img_q, img_k) = self.img_attn.norm.forward(img_q, img_k);

        let txt_m = txt_mod1.norm_modulate(txt.clone());
        let mut txt_qkv = self.txt_attn.qkv.forward(txt_m.clone());
        if let Some(l) = lora {
            txt_qkv = txt_qkv + l.qkv_lora2.forward(txt_m);
        }
        let [txt_q, txt_k, txt_v] = split_qkv(txt_qkv, self.num_heads);
        let (txt_q, txt_k) = self.txt_attn.norm.forward(txt_q, txt_k);

        let txt_len = txt.dims()[1];
        // Joint attention over [txt | img] tokens (dim 1 of `[B, L, H, D]`).
        let q = Tensor::cat(vec![txt_q, img_q], 1);
        let k = Tensor::cat(vec![txt_k, img_k], 1);
        let v = Tensor::cat(vec![txt_v, img_v], 1);
        let attn = rope_attention(q, k, v, pe);
        let total = attn.dims()[1];
        let txt_a = attn.clone().narrow(1, 0, txt_len);
        let img_a = attn.narrow(1, txt_len, total - txt_len);

        let mut img_proj = self.img_attn.proj.forward(img_a.clone());
        if let Some(l) = lora {
            img_proj = img_proj + l.proj_lora1.forward(img_a);
        }
        let img = img_mod1.add_gated(img, img_proj);
        let img_mlp = self.img_mlp.forward(img_mod2.norm_modulate(img.clone()));
        let img = img_mod2.add_gated(img, img_mlp);

        let mut txt_proj = self.txt_attn.proj.forward(txt_a.clone());
        if let Some(l) = lora {
            txt_proj = txt_proj + l.proj_lora2.forward(txt_a);
        }
        let txt = txt_mod1.add_gated(txt, txt_proj);
        let txt_mlp = self.txt_mlp.forward(txt_mod2.norm_modulate(txt.clone()));
        let txt = txt_mod2.add_gated(txt, txt_mlp);
        (img, txt)
    }
}

/// A single-stream block over `[txt | img]`: one fused `linear1` (q, k, v and the MLP input) and
/// one `linear2` (attention output and MLP output).
#[derive(Module, Debug)]
pub struct SingleStreamBlock<B: Backend> {
    pub linear1: Linear<B>,
    pub linear2: Linear<B>,
    pub norm: QkNorm<B>,
    pub modulation: Modulation<B>,
    /// UNO's LoRA (`NAME.processor.*`).
    pub processor: Option<SingleStreamLora<B>>,
    num_heads: usize,
    hidden_size: usize,
    mlp_hidden: usize,
}

impl<B: Kernels> SingleStreamBlock<B> {
    fn load(vb: &Vb<B>, c: &FluxConfig) -> Result<Self> {
        let (h, m) = (c.hidden_size, c.mlp_hidden());
        Ok(Self {
            linear1: vb.linear("linear1", h, 3 * h + m, true)?,
            linear2: vb.linear("linear2", h + m, h, true)?,
            norm: QkNorm::load(&vb.pp("norm"), c.head_dim())?,
            modulation: Modulation::load(&vb.pp("modulation"), h, false)?,
            processor: None,
            num_heads: c.num_heads,
            hidden_size: h,
            mlp_hidden: m,
        })
    }

    /// # Shapes
    /// `x` `[B, L_txt + L_img, hidden]`, `vec` `[B, hidden]`.
    pub(super) fn forward(&self, x: Tensor<B, 3>, vec: &Tensor<B, 2>, pe: &Pe<B>) -> Tensor<B, 3> {
        let lora = self.processor.as_ref();
        let [m] = <[_; 1]>::try_from(self.modulation.forward(vec.clone())).expect("single modulation");
        let x_mod = m.norm_modulate(x.clone());
        let fused = self.linear1.forward(x_mod.clone());
        let mut qkv = fused.clone().narrow(2, 0, 3 * self.hidden_size);
        let mlp = fused.narrow(2, 3 * self.hidden_size, self.mlp_hidden);
        if let Some(l) = lora {
            qkv = qkv + l.qkv_lora.forward(x_mod);
        }
        let [q, k, v] = split_qkv(qkv, self.num_heads);
        let (q, k) = self.norm.forward(q, k);
        let attn = rope_attention(q, k, v, pe);
        let hidden = Tensor::cat(vec![attn, gelu_tanh(mlp)], 2);
        let mut out = self.linear2.forward(hidden.clone());
        if let Some(l) = lora {
            out = out + l.proj_lora.forward(hidden);
        }
        m.add_gated(x, out)
    }
}

/// The output layer: `adaLN_modulation` (shift first, then scale) and a projection to the
/// latent channels.
#[derive(Module, Debug)]
pub struct LastLayer<B: Backend> {
    /// `final_layer.linear`.
    pub linear: Linear<B>,
    /// `final_layer.adaLN_modulation.1` (index 0 of that Sequential is the SiLU).
    pub ada_ln_modulation: Linear<B>,
}

impl<B: Kernels> LastLayer<B> {
    fn load(vb: &Vb<B>, hidden: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            linear: vb.linear("linear", hidden, out_channels, true)?,
            ada_ln_modulation: vb.linear("adaLN_modulation.1", hidden, 2 * hidden, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>, vec: Tensor<B, 2>) -> Tensor<B, 3> {
        let mods = self.ada_ln_modulation.forward(silu(vec)).unsqueeze_dim::<3>(1).chunk(2, 2);
        let (shift, scale) = (mods[0].clone(), mods[1].clone());
        self.linear.forward(layer_norm_modulate(x, shift, scale))
    }
}

// ---------------------------------------------------------------------------------------------
// The model

/// The inputs of one forward pass.
#[derive(Debug, Clone)]
pub struct FluxInput<B: Backend> {
    /// Packed target latents `[B, L_img, in_channels]` (noisy).
    pub img: Tensor<B, 3>,
    /// Target position ids `[B, L_img, 3]`.
    pub img_ids: Tensor<B, 3>,
    /// T5 features `[B, L_txt, context_in_dim]`.
    pub txt: Tensor<B, 3>,
    /// Text position ids `[B, L_txt, 3]` (zeros).
    pub txt_ids: Tensor<B, 3>,
    /// CLIP pooled features `[B, vec_in_dim]`.
    pub y: Tensor<B, 2>,
    /// Timesteps in [0, 1], `[B]`.
    pub timesteps: Tensor<B, 1>,
    /// Distilled guidance strength `[B]`; required by models with a guidance embedder.
    pub guidance: Option<Tensor<B, 1>>,
    /// Reference latents (packed, clean) and their UnoPE ids: `([B, L_k, in_channels], [B, L_k, 3])`.
    pub refs: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
}

/// Why a forward pass was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FluxError {
    #[error("input `{name}` has shape {found:?}, expected {expected}")]
    Shape { name: String, found: Vec<usize>, expected: String },
    #[error("this model has a guidance embedder (FLUX.1-dev): pass a guidance strength")]
    MissingGuidance,
}

/// FLUX with UNO's reference tokens.
#[derive(Module, Debug)]
pub struct Flux<B: Backend> {
    pub img_in: Linear<B>,
    pub time_in: MlpEmbedder<B>,
    pub vector_in: MlpEmbedder<B>,
    pub guidance_in: Option<MlpEmbedder<B>>,
    pub txt_in: Linear<B>,
    pub double_blocks: Vec<DoubleStreamBlock<B>>,
    pub single_blocks: Vec<SingleStreamBlock<B>>,
    pub final_layer: LastLayer<B>,
    axes_dim: Vec<usize>,
    theta: f64,
    in_channels: usize,
    context_in_dim: usize,
    vec_in_dim: usize,
    /// Round timesteps to bf16 and scale them in bf16, as the reference does when it samples in
    /// bf16 (its `t_vec` is bf16). Off by default: the model then sees the timesteps it is given.
    pub bf16_time: bool,
}

impl<B: Kernels> Flux<B> {
    /// Builds the model from tensors in the BFL/UNO key layout.
    pub fn load(vb: &Vb<B>, c: &FluxConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            img_in: vb.linear("img_in", c.in_channels, h, true)?,
            time_in: MlpEmbedder::load(&vb.pp("time_in"), 256, h)?,
            vector_in: MlpEmbedder::load(&vb.pp("vector_in"), c.vec_in_dim, h)?,
            guidance_in: if c.guidance_embed { Some(MlpEmbedder::load(&vb.pp("guidance_in"), 256, h)?) } else { None },
            txt_in: vb.linear("txt_in", c.context_in_dim, h, true)?,
            double_blocks: (0..c.depth).map(|i| DoubleStreamBlock::load(&vb.pp("double_blocks").pp(i), c)).collect::<Result<_>>()?,
            single_blocks: (0..c.depth_single_blocks)
                .map(|i| SingleStreamBlock::load(&vb.pp("single_blocks").pp(i), c))
                .collect::<Result<_>>()?,
            final_layer: LastLayer::load(&vb.pp("final_layer"), h, c.in_channels)?,
            axes_dim: c.axes_dim.clone(),
            theta: c.theta,
            in_channels: c.in_channels,
            context_in_dim: c.context_in_dim,
            vec_in_dim: c.vec_in_dim,
            bf16_time: false,
        })
    }

    /// A model with random weights (seed the backend first for repeatable ones).
    pub fn random(config: &FluxConfig, device: &B::Device, dtype: DType) -> Self {
        Self::load(&Vb::random(device, dtype), config).expect("random weights cannot be missing")
    }

    /// The dtype the model computes in (that of its weights).
    pub fn dtype(&self) -> DType {
        self.img_in.weight.val().dtype()
    }

    /// RoPE tables for all tokens of a forward pass, `[txt | img | ref1 | …]`.
    pub fn pe(&self, ids: Tensor<B, 3>) -> Pe<B> {
        let [b, l, _] = ids.dims();
        let device = ids.device();
        let host: Vec<f32> = ids.into_data().iter::<f32>().collect();
        let (cos, sin) = RopeTables::new(&host, b, l, &self.axes_dim, self.theta).tensors::<B>(&device);
        Pe { cos, sin }
    }

    fn embed_time(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        let dtype = self.dtype();
        let device = t.device();
        let host: Vec<f32> = t.into_data().iter::<f32>().collect();
        let emb = timestep_embedding(&host, 256, self.bf16_time);
        Tensor::<B, 2>::from_data(TensorData::new(emb, [host.len(), 256]), (&device, DType::F32)).cast(dtype)
    }

    fn check(&self, input: &FluxInput<B>) -> Result<(), FluxError> {
        let [b, l_img, c] = input.img.dims();
        let shape = |name: &str, found: &[usize], expected: String| FluxError::Shape { name: name.into(), found: found.to_vec(), expected };
        if c != self.in_channels {
            return Err(shape("img", &input.img.dims(), format!("[B, L, {}]", self.in_channels)));
        }
        if input.img_ids.dims() != [b, l_img, 3] {
            return Err(shape("img_ids", &input.img_ids.dims(), format!("[{b}, {l_img}, 3]")));
        }
        let [tb, l_txt, tc] = input.txt.dims();
        if tb != b || tc != self.context_in_dim {
            return Err(shape("txt", &input.txt.dims(), format!("[{b}, L, {}]", self.context_in_dim)));
        }
        if input.txt_ids.dims() != [b, l_txt, 3] {
            return Err(shape("txt_ids", &input.txt_ids.dims(), format!("[{b}, {l_txt}, 3]")));
        }
        if input.y.dims() != [b, self.vec_in_dim] {
            return Err(shape("y", &input.y.dims(), format!("[{b}, {}]", self.vec_in_dim)));
        }
        if input.timesteps.dims() != [b] {
            return Err(shape("timesteps", &input.timesteps.dims(), format!("[{b}]")));
        }
        if self.guidance_in.is_some() && input.guidance.is_none() {
            return Err(FluxError::MissingGuidance);
        }
        for (k, (r, ids)) in input.refs.iter().enumerate() {
            let [rb, rl, rc] = r.dims();
            if rb != b || rc != self.in_channels {
                return Err(shape(&format!("ref_img.{k}"), &r.dims(), format!("[{b}, L, {}]", self.in_channels)));
            }
            if ids.dims() != [b, rl, 3] {
                return Err(shape(&format!("ref_img_ids.{k}"), &ids.dims(), format!("[{b}, {rl}, 3]")));
            }
        }
        Ok(())
    }

    /// The velocity for the target tokens, `[B, L_img, in_channels]`.
    pub fn forward(&self, input: FluxInput<B>) -> Result<Tensor<B, 3>, FluxError> {
        let Streams { mut img, mut txt, vec, pe, target_len } = self.embed(input)?;
        for block in &self.double_blocks {
            (img, txt) = block.forward(img, txt, &vec, &pe);
        }
        let txt_len = txt.dims()[1];
        let mut x = Tensor::cat(vec![txt, img], 1);
        for block in &self.single_blocks {
            x = block.forward(x, &vec, &pe);
        }
        Ok(self.head(x, vec, txt_len, target_len))
    }

    /// Checks the input and runs everything before the first block.
    pub(super) fn embed(&self, input: FluxInput<B>) -> Result<Streams<B>, FluxError> {
        self.check(&input)?;
        let dtype = self.dtype();
        let FluxInput { img, img_ids, txt, txt_ids, y, timesteps, guidance, refs } = input;
        let target_len = img.dims()[1];

        let mut vec = self.time_in.forward(self.embed_time(timesteps));
        if let (Some(g_in), Some(g)) = (&self.guidance_in, guidance) {
            vec = vec + g_in.forward(self.embed_time(g));
        }
        let vec = vec + self.vector_in.forward(y.cast(dtype));
        let txt = self.txt_in.forward(txt.cast(dtype));

        // [target | ref1 | …] in the image stream, all through the same `img_in`, refs clean.
        let mut images = vec![self.img_in.forward(img.cast(dtype))];
        let mut ids = vec![txt_ids, img_ids];
        for (r, r_ids) in refs {
            images.push(self.img_in.forward(r.cast(dtype)));
            ids.push(r_ids);
        }
        let img = Tensor::cat(images, 1);
        let pe = self.pe(Tensor::cat(ids, 1));
        Ok(Streams { img, txt, vec, pe, target_len })
    }

    /// Everything after the last single block: the target's tokens of `x` `[B, L_txt + …,
    /// hidden]` through the output layer.
    pub(super) fn head(&self, x: Tensor<B, 3>, vec: Tensor<B, 2>, txt_len: usize, target_len: usize) -> Tensor<B, 3> {
        // Only the target's tokens reach the output.
        self.final_layer.forward(x.narrow(1, txt_len, target_len), vec)
    }
}
