//! The T5 v1.1 encoder (transformers `T5EncoderModel`), FLUX's text encoder (T5-XXL, 512
//! tokens, `last_hidden_state`).
//!
//! Reference: transformers `models/t5/modeling_t5.py` (5.24): RMS LayerNorm (no mean, no bias,
//! statistics in f32), attention without the 1/√d scaling plus a learned relative-position bias
//! that block 0 computes and every block reuses (bidirectional buckets), gated-GELU
//! feed-forward (`wi_0`, `wi_1`, `wo`; GELU with the tanh approximation, `gelu_new`).
//! Keys: `shared.weight` (or `encoder.embed_tokens.weight`), `encoder.block.N.layer.0.
//! SelfAttention.{q,k,v,o}.weight`, `…relative_attention_bias.weight` (block 0),
//! `encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight`, `encoder.final_layer_norm`.

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kernels::Kernels;
use crate::kernels::graph::AttentionKernel;
use crate::nn::{Linear, gelu_tanh};
use crate::vb::Vb;
use crate::weights::Result;

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn eps() -> f64 {
    1e-6
}
fn gated_gelu() -> String {
    "gated-gelu".into()
}

/// `T5Config` (transformers field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "gated_gelu")]
    pub feed_forward_proj: String,
}

impl T5Config {
    /// T5 v1.1 XXL's encoder, as FLUX uses it (`xlabs-ai/xflux_text_encoders`).
    pub fn xxl() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }
}

/// T5's LayerNorm: `x · rsqrt(mean(x²) + eps) · weight`, statistics in f32.
#[derive(Module, Debug)]
pub struct T5LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    eps: f64,
}

impl<B: Kernels> T5LayerNorm<B> {
    fn load(vb: &Vb<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: Param::from_tensor(vb.tensor("weight", [dim])?), eps })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let rrms = (x32.clone() * x32.clone()).mean_dim(2).add_scalar(self.eps).sqrt().recip();
        let w = self.weight.val();
        (x32 * rrms).cast(w.dtype()) * w.unsqueeze::<3>().cast(dtype)
    }
}

/// The bucket of each relative position `key − query` (bidirectional), as T5 computes it.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let large = max_exact
            + ((n as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln() * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket as usize
}

/// One encoder block: self-attention then the gated feed-forward, each pre-normed.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// `layer.0.layer_norm`.
    pub attn_norm: T5LayerNorm<B>,
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    /// `layer.1.layer_norm`.
    pub ff_norm: T5LayerNorm<B>,
    pub wi_0: Linear<B>,
    pub wi_1: Linear<B>,
    pub wo: Linear<B>,
    heads: usize,
    d_kv: usize,
}

impl<B: Kernels> Block<B> {
    fn load(vb: &Vb<B>, c: &T5Config) -> Result<Self> {
        let (d, inner) = (c.d_model, c.num_heads * c.d_kv);
        let sa = vb.pp("layer").pp(0).pp("SelfAttention");
        let ff = vb.pp("layer").pp(1).pp("DenseReluDense");
        Ok(Self {
            attn_norm: T5LayerNorm::load(&vb.pp("layer").pp(0).pp("layer_norm"), d, c.layer_norm_epsilon)?,
            q: sa.linear("q", d, inner, false)?,
            k: sa.linear("k", d, inner, false)?,
            v: sa.linear("v", d, inner, false)?,
            o: sa.linear("o", inner, d, false)?,
            ff_norm: T5LayerNorm::load(&vb.pp("layer").pp(1).pp("layer_norm"), d, c.layer_norm_epsilon)?,
            wi_0: ff.linear("wi_0", d, c.d_ff, false)?,
            wi_1: ff.linear("wi_1", d, c.d_ff, false)?,
            wo: ff.linear("wo", c.d_ff, d, false)?,
            heads: c.num_heads,
            d_kv: c.d_kv,
        })
    }

    fn forward(&self, x: Tensor<B, 3>, bias: &Tensor<B, 4>, kernel: AttentionKernel) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let h = self.attn_norm.forward(x.clone());
        let split = |t: Tensor<B, 3>| t.reshape([b, l, self.heads, self.d_kv]).swap_dims(1, 2);
        let (q, k, v) = (split(self.q.forward(h.clone())), split(self.k.forward(h.clone())), split(self.v.forward(h)));
        let a = match kernel {
            // T5 does not scale the scores.
            AttentionKernel::Fused => {
                attention(q, k, v, None, Some(bias.clone()), AttentionModuleOptions { scale: Some(1.0), ..Default::default() })
            }
            AttentionKernel::Matmul => softmax(q.matmul(k.swap_dims(2, 3)) + bias.clone(), 3).matmul(v),
        };
        let x = x + self.o.forward(a.swap_dims(1, 2).reshape([b, l, self.heads * self.d_kv]));
        let h = self.ff_norm.forward(x.clone());
        x + self.wo.forward(gelu_tanh(self.wi_0.forward(h.clone())) * self.wi_1.forward(h))
    }
}

/// `T5EncoderModel`.
#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    /// `shared.weight` `[vocab, d_model]`.
    pub shared: Param<Tensor<B, 2>>,
    /// `encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight` `[buckets, heads]`.
    pub relative_attention_bias: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub final_layer_norm: T5LayerNorm<B>,
    num_buckets: usize,
    max_distance: usize,
}

impl<B: Kernels> T5Encoder<B> {
    pub fn load(vb: &Vb<B>, c: &T5Config) -> Result<Self> {
        let enc = vb.pp("encoder");
        // The embedding is tied: checkpoints store it as `shared.weight`, `encoder.embed_tokens.weight`, or both.
        let shared = if vb.contains("shared.weight") {
            enc.skip("embed_tokens.weight")?;
            vb.tensor("shared.weight", [c.vocab_size, c.d_model])?
        } else {
            enc.tensor("embed_tokens.weight", [c.vocab_size, c.d_model])?
        };
        Ok(Self {
            shared: Param::from_tensor(shared),
            relative_attention_bias: Param::from_tensor(
                enc.pp("block")
                    .pp(0)
                    .pp("layer")
                    .pp(0)
                    .pp("SelfAttention")
                    .tensor("relative_attention_bias.weight", [c.relative_attention_num_buckets, c.num_heads])?,
            ),
            blocks: (0..c.num_layers).map(|i| Block::load(&enc.pp("block").pp(i), c)).collect::<Result<_>>()?,
            final_layer_norm: T5LayerNorm::load(&enc.pp("final_layer_norm"), c.d_model, c.layer_norm_epsilon)?,
            num_buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
        })
    }

    /// The position bias `[1, heads, L, L]`, shared by all blocks.
    fn position_bias(&self, len: usize) -> Tensor<B, 4> {
        let device = self.shared.device();
        let buckets: Vec<i64> = (0..len)
            .flat_map(|q| (0..len).map(move |k| (q, k)))
            .map(|(q, k)| relative_position_bucket(k as i64 - q as i64, self.num_buckets, self.max_distance) as i64)
            .collect();
        let index = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [1, len * len]), &device);
        let bias = embedding(self.relative_attention_bias.val(), index); // (1, L·L, heads)
        let heads = bias.dims()[2];
        bias.reshape([1, len, len, heads]).permute([0, 3, 1, 2])
    }

    /// `last_hidden_state` `[B, L, d_model]` for token ids `[B][L]` (no attention mask, as FLUX).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Tensor<B, 3> {
        let device = self.shared.device();
        let (b, l) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
        let index = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, l]), &device);
        let mut x = embedding(self.shared.val(), index);
        let bias = self.position_bias(l).cast(x.dtype());
        let kernel = AttentionKernel::for_backend::<B>(&device);
        for block in &self.blocks {
            x = block.forward(x, &bias, kernel);
        }
        self.final_layer_norm.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_t5() {
        // Values from transformers' `_relative_position_bucket` (bidirectional, 32 buckets, 128).
        let cases = [(0, 0), (1, 17), (-1, 1), (7, 23), (-8, 8), (20, 26), (-100, 15), (500, 31), (-500, 15)];
        for (rel, bucket) in cases {
            assert_eq!(relative_position_bucket(rel, 32, 128), bucket, "relative position {rel}");
        }
    }
}
