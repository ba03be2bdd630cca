//! CLIP (transformers `CLIPModel`, `CLIPTextModel`): the text tower (causal, pooled at the
//! end-of-text token), the vision tower (CLS, pre- and post-LayerNorm) and their projections.
//!
//! - Paper: "Learning Transferable Visual Models From Natural Language Supervision",
//!   arXiv 2103.00020.
//! - Reference: transformers `models/clip/modeling_clip.py` (5.24). Keys as checkpoints store
//!   them: `text_model.encoder.layers.N.self_attn.q_proj.weight`, `vision_model.pre_layrnorm.*`
//!   (sic), `visual_projection.weight`, `text_projection.weight`.
//! - FLUX conditions on CLIP ViT-L/14's pooled text output (`openai/clip-vit-large-patch14`);
//!   DreamBench's CLIP-I and CLIP-T use ViT-B/32.

use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, embedding};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kernels::Kernels;
use crate::nn::{LayerNorm, Linear, causal_scaled_dot_product, gelu, scaled_dot_product};
use crate::vb::Vb;
use crate::weights::Result;

fn eps() -> f64 {
    1e-5
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn channels() -> usize {
    3
}
fn eos() -> u32 {
    2
}

/// `CLIPTextConfig` (transformers field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// 2 in legacy configs, where the pooled token is the one with the largest id.
    #[serde(default = "eos")]
    pub eos_token_id: u32,
}

/// `CLIPVisionConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "channels")]
    pub num_channels: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

/// `CLIPConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: usize,
}

impl ClipTextConfig {
    /// The text tower of OpenAI CLIP (ViT-B/32 and ViT-L/14 differ only in width):
    /// `openai/clip-vit-large-patch14` has hidden 768, 12 layers, 12 heads (FLUX's CLIP-L).
    fn openai(hidden_size: usize, heads: usize) -> Self {
        Self {
            vocab_size: 49408,
            hidden_size,
            intermediate_size: 4 * hidden_size,
            num_hidden_layers: 12,
            num_attention_heads: heads,
            max_position_embeddings: 77,
            hidden_act: quick_gelu(),
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }
}

impl ClipConfig {
    /// `openai/clip-vit-base-patch32` (DreamBench's CLIP-I and CLIP-T).
    pub fn vit_b_32() -> Self {
        Self {
            text_config: ClipTextConfig::openai(512, 8),
            vision_config: ClipVisionConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                image_size: 224,
                patch_size: 32,
                num_channels: 3,
                hidden_act: quick_gelu(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: 512,
        }
    }

    /// `openai/clip-vit-large-patch14` (FLUX's CLIP-L text encoder is its text tower).
    pub fn vit_l_14() -> Self {
        Self {
            text_config: ClipTextConfig::openai(768, 12),
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                image_size: 224,
                patch_size: 14,
                num_channels: 3,
                hidden_act: quick_gelu(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: 768,
        }
    }
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    QuickGelu,
    Gelu,
}

impl Act {
    fn parse(name: &str) -> Self {
        if name == "quick_gelu" { Self::QuickGelu } else { Self::Gelu }
    }

    fn apply<B: Kernels>(self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Self::Gelu => gelu(x),
        }
    }
}

/// One encoder layer (pre-norm).
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub layer_norm2: LayerNorm<B>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    heads: usize,
    #[module(skip)]
    act: Act,
}

impl<B: Kernels> EncoderLayer<B> {
    fn load(vb: &Vb<B>, hidden: usize, intermediate: usize, heads: usize, act: &str, eps: f64) -> Result<Self> {
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(Self {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), hidden, eps)?,
            q_proj: attn.linear("q_proj", hidden, hidden, true)?,
            k_proj: attn.linear("k_proj", hidden, hidden, true)?,
            v_proj: attn.linear("v_proj", hidden, hidden, true)?,
            out_proj: attn.linear("out_proj", hidden, hidden, true)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), hidden, eps)?,
            fc1: mlp.linear("fc1", hidden, intermediate, true)?,
            fc2: mlp.linear("fc2", intermediate, hidden, true)?,
            heads,
            act: Act::parse(act),
        })
    }

    fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let h = self.layer_norm1.forward(x.clone());
        let split = |t: Tensor<B, 3>| t.reshape([b, l, self.heads, d / self.heads]).swap_dims(1, 2);
        let (q, k, v) = (split(self.q_proj.forward(h.clone())), split(self.k_proj.forward(h.clone())), split(self.v_proj.forward(h)));
        let a = if causal { causal_scaled_dot_product(q, k, v) } else { scaled_dot_product(q, k, v) };
        let x = x + self.out_proj.forward(a.swap_dims(1, 2).reshape([b, l, d]));
        x.clone() + self.fc2.forward(self.act.apply(self.fc1.forward(self.layer_norm2.forward(x))))
    }
}

fn encoder<B: Kernels>(
    vb: &Vb<B>,
    n: usize,
    hidden: usize,
    inter: usize,
    heads: usize,
    act: &str,
    eps: f64,
) -> Result<Vec<EncoderLayer<B>>> {
    (0..n).map(|i| EncoderLayer::load(&vb.pp("encoder").pp("layers").pp(i), hidden, inter, heads, act, eps)).collect()
}

/// Outputs of the text tower.
#[derive(Debug, Clone)]
pub struct TextOutput<B: Backend> {
    /// `[B, L, hidden]` after the final LayerNorm.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[B, hidden]`: the end-of-text token's state.
    pub pooler_output: Tensor<B, 2>,
}

/// `CLIPTextTransformer` (`text_model.*`).
#[derive(Module, Debug)]
pub struct ClipText<B: Backend> {
    /// `embeddings.token_embedding.weight` `[vocab, hidden]`.
    pub token_embedding: Param<Tensor<B, 2>>,
    /// `embeddings.position_embedding.weight` `[max_positions, hidden]`.
    pub position_embedding: Param<Tensor<B, 2>>,
    pub layers: Vec<EncoderLayer<B>>,
    pub final_layer_norm: LayerNorm<B>,
    eos_token_id: u32,
}

impl<B: Kernels> ClipText<B> {
    /// `vb` at `text_model`.
    pub fn load(vb: &Vb<B>, c: &ClipTextConfig) -> Result<Self> {
        let h = c.hidden_size;
        let emb = vb.pp("embeddings");
        Ok(Self {
            token_embedding: Param::from_tensor(emb.pp("token_embedding").tensor("weight", [c.vocab_size, h])?),
            position_embedding: Param::from_tensor(emb.pp("position_embedding").tensor("weight", [c.max_position_embeddings, h])?),
            layers: encoder(vb, c.num_hidden_layers, h, c.intermediate_size, c.num_attention_heads, &c.hidden_act, c.layer_norm_eps)?,
            final_layer_norm: LayerNorm::load(&vb.pp("final_layer_norm"), h, c.layer_norm_eps)?,
            eos_token_id: c.eos_token_id,
        })
    }

    /// Loads a `CLIPTextModel` checkpoint, whose keys are under `text_model.` (as downloaded
    /// checkpoints have them) or at the root (as transformers 5 writes a `CLIPTextModel`).
    pub fn load_text_model(vb: &Vb<B>, c: &ClipTextConfig) -> Result<Self> {
        if vb.contains("text_model.embeddings.token_embedding.weight") { Self::load(&vb.pp("text_model"), c) } else { Self::load(vb, c) }
    }

    /// Encodes token ids (`[B][L]`, already padded to one length) with a causal mask.
    pub fn forward(&self, ids: &[Vec<u32>]) -> TextOutput<B> {
        let device = self.token_embedding.device();
        let (b, l) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
        let index = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, l]), &device);
        let weights = self.token_embedding.val();
        let x = embedding(weights, index) + self.position_embedding.val().narrow(0, 0, l).unsqueeze::<3>();
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(x, true);
        }
        let x = self.final_layer_norm.forward(x);
        // The pooled token: the end-of-text token (legacy configs: the largest id, which is it).
        let rows: Vec<Tensor<B, 2>> = ids
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                let pos = if self.eos_token_id == 2 {
                    seq.iter().enumerate().max_by_key(|&(j, &t)| (t, std::cmp::Reverse(j))).map_or(0, |(j, _)| j)
                } else {
                    seq.iter().position(|&t| t == self.eos_token_id).unwrap_or(0)
                };
                x.clone().narrow(0, i, 1).narrow(1, pos, 1).reshape([1, x.dims()[2]])
            })
            .collect();
        TextOutput { pooler_output: Tensor::cat(rows, 0), last_hidden_state: x }
    }
}

/// `CLIPVisionTransformer` (`vision_model.*`).
#[derive(Module, Debug)]
pub struct ClipVision<B: Backend> {
    /// `embeddings.class_embedding` `[hidden]`.
    pub class_embedding: Param<Tensor<B, 1>>,
    /// `embeddings.patch_embedding.weight` `[hidden, channels, patch, patch]` (no bias).
    pub patch_embedding: Param<Tensor<B, 4>>,
    /// `embeddings.position_embedding.weight` `[patches + 1, hidden]`.
    pub position_embedding: Param<Tensor<B, 2>>,
    /// `pre_layrnorm` (the checkpoint's spelling).
    pub pre_layrnorm: LayerNorm<B>,
    pub layers: Vec<EncoderLayer<B>>,
    pub post_layernorm: LayerNorm<B>,
    patch_size: usize,
}

impl<B: Kernels> ClipVision<B> {
    /// `vb` at `vision_model`.
    pub fn load(vb: &Vb<B>, c: &ClipVisionConfig) -> Result<Self> {
        let (h, p) = (c.hidden_size, c.patch_size);
        let emb = vb.pp("embeddings");
        let positions = (c.image_size / p).pow(2) + 1;
        Ok(Self {
            class_embedding: Param::from_tensor(emb.tensor("class_embedding", [h])?),
            patch_embedding: Param::from_tensor(emb.pp("patch_embedding").tensor("weight", [h, c.num_channels, p, p])?),
            position_embedding: Param::from_tensor(emb.pp("position_embedding").tensor("weight", [positions, h])?),
            pre_layrnorm: LayerNorm::load(&vb.pp("pre_layrnorm"), h, c.layer_norm_eps)?,
            layers: encoder(vb, c.num_hidden_layers, h, c.intermediate_size, c.num_attention_heads, &c.hidden_act, c.layer_norm_eps)?,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), h, c.layer_norm_eps)?,
            patch_size: p,
        })
    }

    /// The pooled (CLS, post-LayerNorm) output `[B, hidden]` of images `[B, 3, S, S]` at the
    /// trained size.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let b = pixels.dims()[0];
        let p = self.patch_size;
        let weight = self.patch_embedding.val();
        let x = conv2d(pixels.cast(weight.dtype()), weight, None, ConvOptions::new([p, p], [0, 0], [1, 1], 1));
        let [_, d, gh, gw] = x.dims();
        let x = x.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let cls = self.class_embedding.val().reshape([1, 1, d]).expand([b as i64, 1, d as i64]);
        let x = Tensor::cat(vec![cls, x], 1) + self.position_embedding.val().unsqueeze::<3>();
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x, false);
        }
        self.post_layernorm.forward(x.narrow(1, 0, 1).reshape([b, d]))
    }
}

/// `CLIPModel`: both towers and their projections into the shared embedding space.
#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    pub text_model: ClipText<B>,
    pub vision_model: ClipVision<B>,
    pub visual_projection: Linear<B>,
    pub text_projection: Linear<B>,
}

/// L2-normalises rows.
pub fn normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = (x.clone() * x.clone()).sum_dim(1).sqrt();
    x / norm
}

impl<B: Kernels> Clip<B> {
    pub fn load(vb: &Vb<B>, c: &ClipConfig) -> Result<Self> {
        vb.skip("logit_scale")?; // a training-time temperature
        // Buffers (0..n) that checkpoints saved before transformers 4.31 still carry.
        vb.skip("text_model.embeddings.position_ids")?;
        vb.skip("vision_model.embeddings.position_ids")?;
        Ok(Self {
            text_model: ClipText::load(&vb.pp("text_model"), &c.text_config)?,
            vision_model: ClipVision::load(&vb.pp("vision_model"), &c.vision_config)?,
            visual_projection: vb.linear("visual_projection", c.vision_config.hidden_size, c.projection_dim, false)?,
            text_projection: vb.linear("text_projection", c.text_config.hidden_size, c.projection_dim, false)?,
        })
    }

    /// Normalised image embeddings `[B, projection_dim]`.
    pub fn image_embeds(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        normalize(self.visual_projection.forward(self.vision_model.forward(pixels)))
    }

    /// Normalised text embeddings `[B, projection_dim]`.
    pub fn text_embeds(&self, ids: &[Vec<u32>]) -> Tensor<B, 2> {
        normalize(self.text_projection.forward(self.text_model.forward(ids).pooler_output))
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::DType;

    use super::*;

    #[test]
    fn presets_build_with_the_reference_shapes() {
        // Random weights on the CPU for the smaller preset: every shape of the key tree is
        // consistent (a wrong intermediate size or patch count would fail to load or to run).
        let device = Default::default();
        let config = ClipConfig {
            vision_config: ClipVisionConfig { num_hidden_layers: 1, ..ClipConfig::vit_b_32().vision_config },
            ..ClipConfig::vit_b_32()
        };
        let config = ClipConfig { text_config: ClipTextConfig { num_hidden_layers: 1, ..config.text_config.clone() }, ..config };
        let model = Clip::<Flex>::load(&Vb::random(&device, DType::F32), &config).unwrap();
        let image = model.image_embeds(Tensor::zeros([1, 3, 224, 224], &device));
        assert_eq!(image.dims(), [1, 512]);
        let text = model.text_embeds(&[vec![49406, 320, 49407]]);
        assert_eq!(text.dims(), [1, 512]);
        assert_eq!(ClipConfig::vit_l_14().text_config.hidden_size, 768);
    }
}
