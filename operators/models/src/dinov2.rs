//! DINOv2 (transformers `Dinov2Model`): ViT with a CLS token, layer scale and position
//! embeddings interpolated to any input size.
//!
//! - Paper: "DINOv2: Learning Robust Visual Features without Supervision", arXiv 2304.07193.
//! - Reference: transformers `models/dinov2/modeling_dinov2.py` (5.24); checkpoints in its
//!   on-disk key layout (`encoder.layer.N.attention.attention.query.weight`, …), e.g.
//!   `facebook/dinov2-small`.
//! - Check: `unoflow model check dinov2 --weights model.safetensors --fixture tiny.fixture.safetensors`
//!   (fixtures by `tools/fixtures/make_dinov2.py`).

use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels::Kernels;
use crate::nn::{LayerNorm, Linear, gelu, scaled_dot_product};
use crate::vb::Vb;
use crate::weights::Result;

fn default_eps() -> f64 {
    1e-6
}

fn default_true() -> bool {
    true
}

/// `Dinov2Config`, with transformers' field names (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dinov2Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub mlp_ratio: f64,
    pub patch_size: usize,
    pub image_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
}

fn default_channels() -> usize {
    3
}

impl Dinov2Config {
    fn vit(hidden_size: usize, layers: usize, heads: usize, swiglu: bool) -> Self {
        Self {
            hidden_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            mlp_ratio: 4.0,
            patch_size: 14,
            image_size: 518,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            use_swiglu_ffn: swiglu,
            num_channels: 3,
        }
    }

    /// ViT-S/14 (`facebook/dinov2-small`).
    pub fn small() -> Self {
        Self::vit(384, 12, 6, false)
    }

    /// ViT-B/14.
    pub fn base() -> Self {
        Self::vit(768, 12, 12, false)
    }

    /// ViT-L/14.
    pub fn large() -> Self {
        Self::vit(1024, 24, 16, false)
    }

    /// ViT-g/14 (SwiGLU MLP).
    pub fn giant() -> Self {
        Self::vit(1536, 40, 24, true)
    }

    fn mlp_hidden(&self) -> usize {
        let hidden = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        if self.use_swiglu_ffn { (hidden * 2 / 3).div_ceil(8) * 8 } else { hidden }
    }
}

/// Patch projection, CLS token and position embeddings.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    pub cls_token: Param<Tensor<B, 3>>,
    /// `patch_embeddings.projection.weight` `[hidden, channels, patch, patch]`.
    pub projection_weight: Param<Tensor<B, 4>>,
    pub projection_bias: Param<Tensor<B, 1>>,
    pub position_embeddings: Param<Tensor<B, 3>>,
    patch_size: usize,
}

impl<B: Kernels> Embeddings<B> {
    fn load(vb: &Vb<B>, c: &Dinov2Config) -> Result<Self> {
        let (h, p) = (c.hidden_size, c.patch_size);
        let grid = c.image_size / p;
        let proj = vb.pp("patch_embeddings").pp("projection");
        vb.skip("mask_token")?; // only for masked-image training
        Ok(Self {
            cls_token: Param::from_tensor(vb.tensor("cls_token", [1, 1, h])?),
            projection_weight: Param::from_tensor(proj.tensor("weight", [h, c.num_channels, p, p])?),
            projection_bias: Param::from_tensor(proj.tensor("bias", [h])?),
            position_embeddings: Param::from_tensor(vb.tensor("position_embeddings", [1, grid * grid + 1, h])?),
            patch_size: p,
        })
    }

    /// Position embeddings for an `h × w` patch grid: bicubic resampling of the trained grid
    /// (in f32, `align_corners=False`, no antialiasing, as transformers does), CLS first.
    fn positions(&self, h: usize, w: usize) -> Tensor<B, 3> {
        let pos = self.position_embeddings.val();
        let [_, n, dim] = pos.dims();
        let trained = ((n - 1) as f64).sqrt() as usize;
        if h * w == n - 1 && h == w {
            return pos;
        }
        let dtype = pos.dtype();
        let cls = pos.clone().narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, n - 1).reshape([1, trained, trained, dim]).permute([0, 3, 1, 2]).cast(DType::F32);
        let resized = interpolate(grid, [h, w], InterpolateOptions::new(InterpolateMode::Bicubic).with_align_corners(false));
        let resized = resized.permute([0, 2, 3, 1]).reshape([1, h * w, dim]).cast(dtype);
        Tensor::cat(vec![cls, resized], 1)
    }

    fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let b = pixels.dims()[0];
        let p = self.patch_size;
        let weight = self.projection_weight.val();
        let x = conv2d(pixels.cast(weight.dtype()), weight, Some(self.projection_bias.val()), ConvOptions::new([p, p], [0, 0], [1, 1], 1));
        let [_, dim, gh, gw] = x.dims();
        let x = x.reshape([b, dim, gh * gw]).swap_dims(1, 2); // (b, patches, dim)
        let cls = self.cls_token.val().expand([b as i64, 1, dim as i64]);
        Tensor::cat(vec![cls, x], 1) + self.positions(gh, gw)
    }
}

/// Self-attention with separate query, key and value projections.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    /// `attention.output.dense`.
    pub output: Linear<B>,
    heads: usize,
}

impl<B: Kernels> Attention<B> {
    fn load(vb: &Vb<B>, c: &Dinov2Config) -> Result<Self> {
        let h = c.hidden_size;
        let a = vb.pp("attention");
        Ok(Self {
            query: a.linear("query", h, h, c.qkv_bias)?,
            key: a.linear("key", h, h, c.qkv_bias)?,
            value: a.linear("value", h, h, c.qkv_bias)?,
            output: vb.pp("output").linear("dense", h, h, true)?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let split = |t: Tensor<B, 3>| t.reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));
        let out = scaled_dot_product(q, k, v).swap_dims(1, 2).reshape([b, l, d]);
        self.output.forward(out)
    }
}

/// `fc1 → GELU → fc2`.
#[derive(Module, Debug)]
pub struct GeluMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

/// SwiGLU (ViT-g): `weights_out(silu(x1) · x2)` with `x1, x2 = weights_in(x).chunk(2)`.
#[derive(Module, Debug)]
pub struct SwiGluMlp<B: Backend> {
    pub weights_in: Linear<B>,
    pub weights_out: Linear<B>,
}

/// The MLP of a layer.
#[derive(Module, Debug)]
pub enum Mlp<B: Backend> {
    Gelu(GeluMlp<B>),
    SwiGlu(SwiGluMlp<B>),
}

impl<B: Kernels> Mlp<B> {
    fn load(vb: &Vb<B>, c: &Dinov2Config) -> Result<Self> {
        let (h, m) = (c.hidden_size, c.mlp_hidden());
        Ok(if c.use_swiglu_ffn {
            Self::SwiGlu(SwiGluMlp {
                weights_in: vb.linear("weights_in", h, 2 * m, true)?,
                weights_out: vb.linear("weights_out", m, h, true)?,
            })
        } else {
            Self::Gelu(GeluMlp { fc1: vb.linear("fc1", h, m, true)?, fc2: vb.linear("fc2", m, h, true)? })
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Self::Gelu(GeluMlp { fc1, fc2 }) => fc2.forward(gelu(fc1.forward(x))),
            Self::SwiGlu(SwiGluMlp { weights_in, weights_out }) => {
                let h = weights_in.forward(x);
                let half = h.dims()[2] / 2;
                let (x1, x2) = (h.clone().narrow(2, 0, half), h.narrow(2, half, half));
                weights_out.forward(silu(x1) * x2)
            }
        }
    }
}

/// One transformer layer (pre-norm, layer scale on both branches).
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attention: Attention<B>,
    /// `layer_scale1.lambda1`.
    pub layer_scale1: Param<Tensor<B, 1>>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    /// `layer_scale2.lambda1`.
    pub layer_scale2: Param<Tensor<B, 1>>,
}

impl<B: Kernels> Layer<B> {
    fn load(vb: &Vb<B>, c: &Dinov2Config) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), h, c.layer_norm_eps)?,
            attention: Attention::load(&vb.pp("attention"), c)?,
            layer_scale1: Param::from_tensor(vb.pp("layer_scale1").tensor("lambda1", [h])?),
            norm2: LayerNorm::load(&vb.pp("norm2"), h, c.layer_norm_eps)?,
            mlp: Mlp::load(&vb.pp("mlp"), c)?,
            layer_scale2: Param::from_tensor(vb.pp("layer_scale2").tensor("lambda1", [h])?),
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let ls1 = self.layer_scale1.val().unsqueeze::<3>();
        let ls2 = self.layer_scale2.val().unsqueeze::<3>();
        let x = x.clone() + self.attention.forward(self.norm1.forward(x)) * ls1;
        x.clone() + self.mlp.forward(self.norm2.forward(x)) * ls2
    }
}

/// The outputs: every token after the final norm, and the CLS token (`pooler_output`).
#[derive(Debug, Clone)]
pub struct Dinov2Output<B: Backend> {
    /// `[B, 1 + patches, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[B, hidden]`.
    pub pooler_output: Tensor<B, 2>,
}

impl<B: Backend> Dinov2Output<B> {
    /// The mean of the patch tokens (CLS excluded), `[B, hidden]`.
    pub fn mean_patch_tokens(&self) -> Tensor<B, 2> {
        let [b, n, d] = self.last_hidden_state.dims();
        self.last_hidden_state.clone().narrow(1, 1, n - 1).mean_dim(1).reshape([b, d])
    }
}

/// `Dinov2Model`.
#[derive(Module, Debug)]
pub struct Dinov2<B: Backend> {
    pub embeddings: Embeddings<B>,
    /// `encoder.layer.N`.
    pub layers: Vec<Layer<B>>,
    pub layernorm: LayerNorm<B>,
}

impl<B: Kernels> Dinov2<B> {
    pub fn load(vb: &Vb<B>, c: &Dinov2Config) -> Result<Self> {
        Ok(Self {
            embeddings: Embeddings::load(&vb.pp("embeddings"), c)?,
            layers: (0..c.num_hidden_layers).map(|i| Layer::load(&vb.pp("encoder").pp("layer").pp(i), c)).collect::<Result<_>>()?,
            layernorm: LayerNorm::load(&vb.pp("layernorm"), c.hidden_size, c.layer_norm_eps)?,
        })
    }

    /// # Shapes
    /// `pixels` `[B, 3, H, W]`, normalised; H and W need not be multiples of the patch size
    /// (the remainder is cropped, as a strided convolution does).
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Dinov2Output<B> {
        let mut x = self.embeddings.forward(pixels);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let x = self.layernorm.forward(x);
        let [b, _, d] = x.dims();
        let cls = x.clone().narrow(1, 0, 1).reshape([b, d]);
        Dinov2Output { last_hidden_state: x, pooler_output: cls }
    }
}
