//! A tiny `black-forest-labs/FLUX.1-dev` folder, in the BFL or the diffusers layout, with the
//! text encoders and tokenizers as that repository ships them:
//!
//! ```text
//! flux1-dev.safetensors, ae.safetensors                      (BFL)
//! model_index.json, scheduler/, transformer/ (3 shards), vae/  (diffusers)
//! text_encoder/    config.json, model.safetensors             CLIP-L text, transformers keys
//! text_encoder_2/  config.json, model-0000{1,2}-of-00002.safetensors, model.safetensors.index.json
//! tokenizer/       vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json
//! tokenizer_2/     spiece.model, tokenizer.json, special_tokens_map.json, tokenizer_config.json
//! ```
//! File names and config fields follow the repository at its current revision and diffusers'
//! `FluxPipeline` (`model_index.json`, `FluxTransformer2DModel`, `AutoencoderKL`,
//! `FlowMatchEulerDiscreteScheduler`).

use burn::tensor::{DType, TensorData};
use serde_json::json;

use super::{FluxLayout, Folder, Recorder, Result, TinyError, spiece};
use crate::clip::{ClipText, ClipTextConfig};
use crate::device::CpuBackend;
use crate::flux::autoencoder::{self, AutoEncoder, AutoEncoderConfig};
use crate::flux::checkpoint::diffusers_tensors;
use crate::flux::{Flux, FluxConfig};
use crate::t5::{T5Config, T5Encoder};
use crate::tokenizer::clip_slow_files;

/// CLIP's byte-level BPE over a 525-token vocabulary (the 256 byte symbols, a few merges and
/// `<|startoftext|>`/`<|endoftext|>` at 523/524): the text tokenizer of every tiny model set.
pub const CLIP_TOKENIZER_JSON: &[u8] = include_bytes!("../../fixtures/clip_text/tokenizer/tokenizer.json");
/// A 59-piece T5 unigram tokenizer (`<pad>` 0, `</s>` 1, `<unk>` 2).
pub const T5_TOKENIZER_JSON: &[u8] = include_bytes!("../../fixtures/t5/tokenizer/tokenizer.json");

/// The tiny transformer: FLUX.1-dev's architecture (guidance, qkv bias, 3-axis rope) at width 64,
/// 2 heads of 32, one double and two single blocks. The rope axes are what the BFL loader
/// derives for a 32-dim head, so both layouts build the same model.
pub fn flux_config() -> FluxConfig {
    FluxConfig {
        in_channels: 64,
        vec_in_dim: 32,
        context_in_dim: 32,
        hidden_size: 64,
        mlp_ratio: 4.0,
        num_heads: 2,
        depth: 1,
        depth_single_blocks: 2,
        axes_dim: vec![4, 14, 14],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

/// The tiny autoencoder: FLUX's four levels (8× down) and 16 latent channels, 32 wide.
pub fn ae_config() -> AutoEncoderConfig {
    AutoEncoderConfig { ch: 32, ch_mult: vec![1, 1, 1, 1], num_res_blocks: 1, ..AutoEncoderConfig::flux() }
}

/// The tiny T5 encoder (T5 v1.1's gated-GELU blocks), 32 wide.
pub fn t5_config() -> T5Config {
    T5Config { vocab_size: 100, d_model: 32, d_kv: 8, d_ff: 64, num_layers: 1, num_heads: 4, ..T5Config::xxl() }
}

/// The tiny CLIP text tower over [`CLIP_TOKENIZER_JSON`]'s vocabulary, 77 positions as CLIP-L.
pub fn clip_text_config() -> ClipTextConfig {
    ClipTextConfig {
        vocab_size: 525,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        max_position_embeddings: 77,
        hidden_act: "quick_gelu".into(),
        layer_norm_eps: 1e-5,
        eos_token_id: 524,
    }
}

pub(super) fn write(out: &mut Folder, layout: FluxLayout, seed: u64) -> Result<()> {
    let config = flux_config();
    // The release stores the transformer in bf16 and the autoencoder in f32.
    let transformer = Recorder::record(seed, DType::BF16, |vb| Flux::<CpuBackend>::load(vb, &config))?;
    let ae_config = ae_config();
    let ae = Recorder::record(seed.wrapping_add(1), DType::F32, |vb| AutoEncoder::<CpuBackend>::load(vb, &ae_config))?;
    match layout {
        FluxLayout::Bfl => {
            out.safetensors("flux1-dev.safetensors", &transformer)?;
            out.safetensors("ae.safetensors", &ae)?;
        }
        FluxLayout::Diffusers => {
            out.json("model_index.json", &model_index())?;
            out.json("scheduler/scheduler_config.json", &scheduler_config())?;
            out.json("transformer/config.json", &transformer_config(&config))?;
            let mut tensors = Vec::new();
            for (key, data) in &transformer {
                let parts = diffusers_tensors(key, data, config.hidden_size)
                    .ok_or_else(|| TinyError::Internal(format!("no diffusers name for the FLUX tensor `{key}`")))?;
                tensors.extend(parts);
            }
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            out.sharded("transformer", "diffusion_pytorch_model", &tensors, 3)?;
            out.json("vae/config.json", &vae_config(&ae_config))?;
            out.safetensors("vae/diffusion_pytorch_model.safetensors", &diffusers_vae(&ae, ae_config.ch_mult.len())?)?;
        }
    }
    text_encoders(out, seed)?;
    tokenizers(out)
}

/// `text_encoder/` (CLIP-L text, one file) and `text_encoder_2/` (T5-XXL's encoder, two shards),
/// in transformers' keys: `text_model.…` and `shared.weight` + `encoder.…`.
fn text_encoders(out: &mut Folder, seed: u64) -> Result<()> {
    let clip = clip_text_config();
    // FLUX.1-dev ships CLIP in f16 and T5 in bf16.
    let clip_tensors = Recorder::record(seed.wrapping_add(2), DType::F16, |vb| ClipText::<CpuBackend>::load_text_model(vb, &clip))?;
    let mut clip_json = serde_json::to_value(&clip).map_err(|e| TinyError::Internal(e.to_string()))?;
    merge(
        &mut clip_json,
        json!({
            "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0, "dropout": 0.0,
            "initializer_factor": 1.0, "initializer_range": 0.02, "projection_dim": 768,
            // The release's legacy ids: the pooled token is the one with the largest id (`<|endoftext|>`).
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float16",
        }),
    );
    out.json("text_encoder/config.json", &clip_json)?;
    out.safetensors("text_encoder/model.safetensors", &clip_tensors)?;

    let t5 = t5_config();
    let t5_tensors = Recorder::record(seed.wrapping_add(3), DType::BF16, |vb| T5Encoder::<CpuBackend>::load(vb, &t5))?;
    let mut t5_json = serde_json::to_value(&t5).map_err(|e| TinyError::Internal(e.to_string()))?;
    merge(
        &mut t5_json,
        json!({
            "architectures": ["T5EncoderModel"], "model_type": "t5", "classifier_dropout": 0.0, "decoder_start_token_id": 0,
            "dense_act_fn": "gelu_new", "dropout_rate": 0.1, "eos_token_id": 1, "pad_token_id": 0, "initializer_factor": 1.0,
            "is_encoder_decoder": true, "is_gated_act": true, "num_decoder_layers": t5.num_layers, "output_past": true,
            "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
        }),
    );
    out.json("text_encoder_2/config.json", &t5_json)?;
    out.sharded("text_encoder_2", "model", &t5_tensors, 2)
}

/// `tokenizer/` as the release ships CLIP's (the slow tokenizer's files, no `tokenizer.json`)
/// and `tokenizer_2/` as it ships T5's.
fn tokenizers(out: &mut Folder) -> Result<()> {
    let (vocab, merges) = clip_slow_files(CLIP_TOKENIZER_JSON).map_err(TinyError::Internal)?;
    out.bytes("tokenizer/vocab.json", vocab.as_bytes())?;
    out.bytes("tokenizer/merges.txt", merges.as_bytes())?;
    out.json("tokenizer/special_tokens_map.json", &clip_special_tokens())?;
    out.json(
        "tokenizer/tokenizer_config.json",
        &json!({
            "add_prefix_space": false, "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": true,
            "do_lower_case": true, "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
            "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
        }),
    )?;
    out.bytes("tokenizer_2/spiece.model", &spiece::model(T5_TOKENIZER_JSON).map_err(TinyError::Internal)?)?;
    out.bytes("tokenizer_2/tokenizer.json", T5_TOKENIZER_JSON)?;
    out.json("tokenizer_2/special_tokens_map.json", &json!({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))?;
    out.json(
        "tokenizer_2/tokenizer_config.json",
        &json!({
            "clean_up_tokenization_spaces": true, "eos_token": "</s>", "extra_ids": 0, "legacy": true,
            "model_max_length": 512, "pad_token": "<pad>", "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        }),
    )
}

/// CLIP's `special_tokens_map.json`, shared with the CLIP model folder.
pub(super) fn clip_special_tokens() -> serde_json::Value {
    json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
}

/// Adds `extra`'s fields to the object `base` (config fields the loaders do not read).
pub(super) fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(base), serde_json::Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
}

fn model_index() -> serde_json::Value {
    json!({
        "_class_name": "FluxPipeline", "_diffusers_version": "0.30.0.dev0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
    })
}

fn scheduler_config() -> serde_json::Value {
    json!({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0", "base_image_seq_len": 256,
        "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
        "use_dynamic_shifting": true,
    })
}

/// `FluxTransformer2DModel`'s config for `c`.
fn transformer_config(c: &FluxConfig) -> serde_json::Value {
    json!({
        "_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.30.0.dev0",
        "attention_head_dim": c.head_dim(), "axes_dims_rope": c.axes_dim, "guidance_embeds": c.guidance_embed,
        "in_channels": c.in_channels, "joint_attention_dim": c.context_in_dim, "num_attention_heads": c.num_heads,
        "num_layers": c.depth, "num_single_layers": c.depth_single_blocks, "patch_size": 1,
        "pooled_projection_dim": c.vec_in_dim,
    })
}

/// `AutoencoderKL`'s config for `c`, as FLUX.1's `vae/config.json` (no quant convolutions).
fn vae_config(c: &AutoEncoderConfig) -> serde_json::Value {
    let levels = c.ch_mult.len();
    json!({
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0", "act_fn": "silu",
        "block_out_channels": c.ch_mult.iter().map(|m| m * c.ch).collect::<Vec<_>>(),
        "down_block_types": vec!["DownEncoderBlock2D"; levels], "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "force_upcast": true, "in_channels": c.in_channels, "out_channels": c.out_ch, "latent_channels": c.z_channels,
        "latents_mean": null, "latents_std": null, "layers_per_block": c.num_res_blocks, "mid_block_add_attention": true,
        "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": c.scale_factor, "shift_factor": c.shift_factor,
        "use_post_quant_conv": false, "use_quant_conv": false,
    })
}

/// The autoencoder's tensors under diffusers' names; the mid-block attention's 1×1 convolutions
/// become the linear layers diffusers stores.
fn diffusers_vae(ae: &[(String, TensorData)], levels: usize) -> Result<Vec<(String, TensorData)>> {
    let mut tensors = ae
        .iter()
        .map(|(key, data)| {
            let name = autoencoder::diffusers_name(key, levels)
                .ok_or_else(|| TinyError::Internal(format!("no diffusers name for the autoencoder tensor `{key}`")))?;
            let data = match data.shape.as_slice() {
                [o, i, 1, 1] if key.contains(".attn_1.") => TensorData::from_bytes_vec(data.as_bytes().to_vec(), vec![*o, *i], data.dtype),
                _ => data.clone(),
            };
            Ok((name, data))
        })
        .collect::<Result<Vec<_>>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}
