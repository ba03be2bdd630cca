//! DINO v1 ViT (the backbone of DreamBench's DINO score): timm's `VisionTransformer` layout, as
//! `timm/vit_small_patch16_224.dino` ships it in `model.safetensors`; facebookresearch/dino's
//! `dino_vits16` checkpoint has the same key names (convert its `.pth` to safetensors).
//! `facebook/dino-vits16` (transformers `ViTModel`) is read through [`VitView`], which answers
//! timm keys from transformers tensors.
//!
//! - Paper: "Emerging Properties in Self-Supervised Vision Transformers", arXiv 2104.14294.
//! - Reference: timm `models/vision_transformer.py`; the embedding is the CLS token after the
//!   final norm (`forward_features(x)[:, 0]`), at the trained resolution (224 for ViT-S/16).

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

use crate::kernels::Kernels;
use crate::nn::{LayerNorm, Linear, gelu, scaled_dot_product};
use crate::vb::TensorSource;
use crate::vb::Vb;
use crate::weights::{Checkpoint, Result, WeightsError, cat_rows};

/// timm/DINO hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
}

impl DinoConfig {
    /// ViT-S/16 (`dino_vits16`, `vit_small_patch16_224.dino`).
    pub fn vit_small_16() -> Self {
        Self { img_size: 224, patch_size: 16, embed_dim: 384, depth: 12, num_heads: 6, mlp_ratio: 4.0 }
    }

    /// ViT-B/16 (`dino_vitb16`).
    pub fn vit_base_16() -> Self {
        Self { img_size: 224, patch_size: 16, embed_dim: 768, depth: 12, num_heads: 12, mlp_ratio: 4.0 }
    }
}

/// transformers `ViTConfig`, the sizes `facebook/dino-vits16`'s `config.json` gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
}

impl From<&VitConfig> for DinoConfig {
    fn from(c: &VitConfig) -> Self {
        Self {
            img_size: c.image_size,
            patch_size: c.patch_size,
            embed_dim: c.hidden_size,
            depth: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            mlp_ratio: c.intermediate_size as f64 / c.hidden_size as f64,
        }
    }
}

/// The transformers `ViTModel` tensors a timm key is made of: one, renamed, or the query, key
/// and value projections that timm fuses into `attn.qkv`.
pub fn vit_names(timm_key: &str) -> Option<Vec<String>> {
    let renamed = |name: &str| Some(vec![name.to_string()]);
    match timm_key {
        "cls_token" => return renamed("embeddings.cls_token"),
        "pos_embed" => return renamed("embeddings.position_embeddings"),
        _ => {}
    }
    let (stem, part) = timm_key.rsplit_once('.')?; // part: weight | bias
    let fields: Vec<&str> = stem.split('.').collect();
    let name = match fields.as_slice() {
        ["patch_embed", "proj"] => "embeddings.patch_embeddings.projection".to_string(),
        ["norm"] => "layernorm".to_string(),
        ["blocks", i, rest @ ..] => {
            let layer = format!("encoder.layer.{i}");
            let sub = match rest {
                ["norm1"] => "layernorm_before",
                ["norm2"] => "layernorm_after",
                ["attn", "proj"] => "attention.output.dense",
                ["mlp", "fc1"] => "intermediate.dense",
                ["mlp", "fc2"] => "output.dense",
                ["attn", "qkv"] => {
                    return Some(["query", "key", "value"].iter().map(|p| format!("{layer}.attention.attention.{p}.{part}")).collect());
                }
                _ => return None,
            };
            format!("{layer}.{sub}")
        }
        _ => return None,
    };
    Some(vec![format!("{name}.{part}")])
}

/// A transformers `ViTModel` checkpoint (`facebook/dino-vits16`) read through timm key names.
#[derive(Debug)]
pub struct VitView<'a>(pub &'a Checkpoint);

impl TensorSource for VitView<'_> {
    fn read(&self, key: &str, shape: &[usize]) -> Result<burn::tensor::TensorData> {
        let path = || self.0.path().to_path_buf();
        let names = vit_names(key).ok_or_else(|| WeightsError::Missing {
            path: path(),
            key: key.into(),
            hint: " (no ViTModel equivalent)".into(),
        })?;
        let mut parts = names
            .iter()
            .map(|n| {
                let found = self.0.shape(n).ok_or_else(|| WeightsError::Missing {
                    path: path(),
                    key: n.clone(),
                    hint: format!(" (needed for `{key}`)"),
                })?;
                self.0.read(n, found)
            })
            .collect::<Result<Vec<_>>>()?;
        let data = if parts.len() == 1 { parts.swap_remove(0) } else { cat_rows(parts) };
        if data.shape.as_slice() != shape {
            return Err(WeightsError::Shape { path: path(), key: key.into(), expected: shape.to_vec(), found: data.shape.to_vec() });
        }
        Ok(data)
    }

    fn contains(&self, key: &str) -> bool {
        vit_names(key).is_some_and(|ns| ns.iter().all(|n| self.0.contains(n)))
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let shapes: Vec<Vec<usize>> = vit_names(key)?.iter().map(|n| self.0.shape(n).map(<[usize]>::to_vec)).collect::<Option<_>>()?;
        let mut s = shapes.first()?.clone();
        s[0] = shapes.iter().map(|x| x[0]).sum();
        Some(s)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

const EPS: f64 = 1e-6;

/// One pre-norm block with a fused qkv projection.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub norm2: LayerNorm<B>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    heads: usize,
}

impl<B: Kernels> Block<B> {
    fn load(vb: &Vb<B>, c: &DinoConfig) -> Result<Self> {
        let (d, m) = (c.embed_dim, (c.embed_dim as f64 * c.mlp_ratio) as usize);
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), d, EPS)?,
            qkv: vb.pp("attn").linear("qkv", d, 3 * d, true)?,
            proj: vb.pp("attn").linear("proj", d, d, true)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), d, EPS)?,
            fc1: vb.pp("mlp").linear("fc1", d, m, true)?,
            fc2: vb.pp("mlp").linear("fc2", m, d, true)?,
            heads: c.num_heads,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let qkv = self.qkv.forward(self.norm1.forward(x.clone())).reshape([b, l, 3, self.heads, d / self.heads]);
        let part = |k: usize| qkv.clone().narrow(2, k, 1).reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2);
        let a = scaled_dot_product(part(0), part(1), part(2)).swap_dims(1, 2).reshape([b, l, d]);
        let x = x + self.proj.forward(a);
        x.clone() + self.fc2.forward(gelu(self.fc1.forward(self.norm2.forward(x))))
    }
}

/// The DINO ViT.
#[derive(Module, Debug)]
pub struct Dino<B: Backend> {
    pub cls_token: Param<Tensor<B, 3>>,
    pub pos_embed: Param<Tensor<B, 3>>,
    /// `patch_embed.proj.weight` `[dim, 3, patch, patch]`.
    pub patch_weight: Param<Tensor<B, 4>>,
    pub patch_bias: Param<Tensor<B, 1>>,
    pub blocks: Vec<Block<B>>,
    pub norm: LayerNorm<B>,
    patch_size: usize,
    img_size: usize,
}

impl<B: Kernels> Dino<B> {
    pub fn load(vb: &Vb<B>, c: &DinoConfig) -> Result<Self> {
        let (d, p) = (c.embed_dim, c.patch_size);
        let n = (c.img_size / p).pow(2) + 1;
        let proj = vb.pp("patch_embed").pp("proj");
        Ok(Self {
            cls_token: Param::from_tensor(vb.tensor("cls_token", [1, 1, d])?),
            pos_embed: Param::from_tensor(vb.tensor("pos_embed", [1, n, d])?),
            patch_weight: Param::from_tensor(proj.tensor("weight", [d, 3, p, p])?),
            patch_bias: Param::from_tensor(proj.tensor("bias", [d])?),
            blocks: (0..c.depth).map(|i| Block::load(&vb.pp("blocks").pp(i), c)).collect::<Result<_>>()?,
            norm: LayerNorm::load(&vb.pp("norm"), d, EPS)?,
            patch_size: p,
            img_size: c.img_size,
        })
    }

    /// The side of the images the model takes.
    pub fn image_size(&self) -> usize {
        self.img_size
    }

    /// The CLS embedding `[B, dim]` of images `[B, 3, img_size, img_size]`.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let b = pixels.dims()[0];
        let p = self.patch_size;
        let w = self.patch_weight.val();
        let x = conv2d(pixels.cast(w.dtype()), w, Some(self.patch_bias.val()), ConvOptions::new([p, p], [0, 0], [1, 1], 1));
        let [_, d, gh, gw] = x.dims();
        let x = x.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b as i64, 1, d as i64]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.pos_embed.val();
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x).narrow(1, 0, 1).reshape([b, d])
    }
}
