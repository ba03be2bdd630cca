//! Tiny folders of the vision models the UNO recipe scores with, as their Hugging Face
//! repositories ship them: `facebook/dinov2-small` (the DINOv2 filter), `facebook/dino-vits16`
//! and `openai/clip-vit-base-patch32` (DreamBench's DINO, CLIP-I and CLIP-T scores). Each keeps
//! the release's patch size and resolution, so the preprocessing and position-embedding paths are
//! the real ones; only the widths and depths shrink.

use burn::tensor::DType;
use serde_json::json;

use super::flux::{CLIP_TOKENIZER_JSON, clip_special_tokens, clip_text_config, merge};
use super::{Folder, Recorder, Result, TinyError, filled};
use crate::clip::{Clip, ClipConfig, ClipVisionConfig};
use crate::device::CpuBackend;
use crate::dino::{Dino, DinoConfig, VitConfig, vit_names};
use crate::dinov2::{Dinov2, Dinov2Config};
use crate::tokenizer::clip_slow_files;
use crate::weights::split_rows;

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| TinyError::Internal(e.to_string()))
}

/// `facebook/dinov2-small` at width 32: `config.json`, `model.safetensors` (with the
/// `mask_token` the loader skips), `preprocessor_config.json`.
pub(super) fn dinov2(out: &mut Folder, seed: u64) -> Result<()> {
    let config = Dinov2Config {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        mlp_ratio: 4.0,
        patch_size: 14,
        image_size: 518,
        layer_norm_eps: 1e-6,
        qkv_bias: true,
        use_swiglu_ffn: false,
        num_channels: 3,
    };
    let mut tensors = Recorder::record(seed, DType::F32, |vb| Dinov2::<CpuBackend>::load(vb, &config))?;
    tensors.push(("embeddings.mask_token".into(), filled(&[1, config.hidden_size], 0.0)));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut json = to_json(&config)?;
    let stages: Vec<String> =
        std::iter::once("stem".to_string()).chain((1..=config.num_hidden_layers).map(|i| format!("stage{i}"))).collect();
    merge(
        &mut json,
        json!({
            "architectures": ["Dinov2Model"], "model_type": "dinov2", "apply_layernorm": true, "attention_probs_dropout_prob": 0.0,
            "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "initializer_range": 0.02,
            "layerscale_value": 1.0, "out_features": [stages.last()], "out_indices": [config.num_hidden_layers],
            "reshape_hidden_states": true, "stage_names": stages, "torch_dtype": "float32", "use_mask_token": true,
        }),
    );
    out.json("config.json", &json)?;
    out.safetensors("model.safetensors", &tensors)?;
    out.json("preprocessor_config.json", &image_processor("BitImageProcessor", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3, 256))
}

/// `facebook/dino-vits16` (transformers `ViTModel`, no pooler) at width 32: ViT-S/16's patch and
/// resolution.
pub(super) fn dino(out: &mut Folder, seed: u64) -> Result<()> {
    let vit = VitConfig {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 128,
        image_size: 224,
        patch_size: 16,
    };
    let config = DinoConfig::from(&vit);
    let timm = Recorder::record(seed, DType::F32, |vb| Dino::<CpuBackend>::load(vb, &config))?;
    let mut tensors = Vec::new();
    for (key, data) in timm {
        let names = vit_names(&key).ok_or_else(|| TinyError::Internal(format!("no ViTModel name for the DINO tensor `{key}`")))?;
        let parts = if names.len() == 1 { vec![data] } else { split_rows(&data, names.len()) };
        tensors.extend(names.into_iter().zip(parts));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut json = to_json(&vit)?;
    merge(
        &mut json,
        json!({
            "architectures": ["ViTModel"], "model_type": "vit", "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "initializer_range": 0.02, "num_channels": 3, "qkv_bias": true, "torch_dtype": "float32",
        }),
    );
    out.json("config.json", &json)?;
    out.safetensors("model.safetensors", &tensors)?;
    out.json("preprocessor_config.json", &image_processor("ViTImageProcessor", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 2, 224))
}

/// `openai/clip-vit-base-patch32` at width 32: `config.json`, `model.safetensors` (with
/// `logit_scale`), and its tokenizer and image processor files as the repository ships them.
pub(super) fn clip(out: &mut Folder, seed: u64) -> Result<()> {
    let config = ClipConfig {
        text_config: clip_text_config(),
        vision_config: ClipVisionConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        },
        projection_dim: 24,
    };
    let mut tensors = Recorder::record(seed, DType::F32, |vb| Clip::<CpuBackend>::load(vb, &config))?;
    // ln(1/0.07), CLIP's initial temperature; a scalar.
    tensors.push(("logit_scale".into(), filled(&[], 2.6592)));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut json = to_json(&config)?;
    merge(&mut json["text_config"], json!({"model_type": "clip_text_model", "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}));
    merge(&mut json["vision_config"], json!({"model_type": "clip_vision_model"}));
    merge(
        &mut json,
        json!({"architectures": ["CLIPModel"], "model_type": "clip", "initializer_factor": 1.0, "logit_scale_init_value": 2.6592,
               "torch_dtype": "float32"}),
    );
    out.json("config.json", &json)?;
    out.safetensors("model.safetensors", &tensors)?;
    let (vocab, merges) = clip_slow_files(CLIP_TOKENIZER_JSON).map_err(TinyError::Internal)?;
    out.bytes("vocab.json", vocab.as_bytes())?;
    out.bytes("merges.txt", merges.as_bytes())?;
    out.bytes("tokenizer.json", CLIP_TOKENIZER_JSON)?;
    out.json("special_tokens_map.json", &clip_special_tokens())?;
    out.json(
        "tokenizer_config.json",
        &json!({
            "add_prefix_space": false, "bos_token": "<|startoftext|>", "do_lower_case": true, "eos_token": "<|endoftext|>",
            "errors": "replace", "model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
            "unk_token": "<|endoftext|>",
        }),
    )?;
    out.json(
        "preprocessor_config.json",
        &image_processor(
            "CLIPImageProcessor",
            [0.481_454_66, 0.457_827_5, 0.408_210_73],
            [0.268_629_54, 0.261_302_58, 0.275_777_11],
            3,
            224,
        ),
    )
}

/// An image processor's config: resize the short side to `resize`, centre-crop the model's
/// 224, normalise with `mean` and `std`.
fn image_processor(class: &str, mean: [f64; 3], std: [f64; 3], resample: u32, resize: u32) -> serde_json::Value {
    json!({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_convert_rgb": true, "do_normalize": true,
        "do_rescale": true, "do_resize": true, "image_mean": mean, "image_processor_type": class, "image_std": std,
        "resample": resample, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": resize},
    })
}
