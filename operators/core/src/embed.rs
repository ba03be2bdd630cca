//! Image encoders behind one interface: images in, one embedding per image out.
//!
//! The backbone (DINOv2 now; DINO v1 and CLIP with the evaluation work) and the backend (CPU,
//! or CUDA with the `cuda` feature) are chosen when the encoder is opened; callers see
//! [`ImageEncoder`] only.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::DynamicImage;
use rayon::prelude::*;
use unoflow_models::Device;
use unoflow_models::Kernels;
use unoflow_models::clip::{Clip, ClipConfig};
use unoflow_models::dino::{Dino, DinoConfig, VitConfig, VitView};
use unoflow_models::dinov2::{Dinov2, Dinov2Config};
use unoflow_models::tokenizer::TextTokenizer;
use unoflow_models::vb::Vb;
use unoflow_models::weights::Checkpoint;

use crate::preprocess::Preprocess;
use crate::{OpError, Result};

/// Which token summary an embedding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The CLS token after the final norm (`pooler_output`).
    Cls,
    /// The mean of the patch tokens.
    MeanPatch,
    /// Both from one forward pass: the CLS embedding, then the patch mean (`2·dim` values).
    ClsThenMean,
}

/// Turns images into embeddings.
pub trait ImageEncoder: Send + Sync {
    /// One embedding per image, in order.
    fn embed(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>>;
}

/// Turns texts into embeddings.
pub trait TextEncoder: Send + Sync {
    /// One embedding per text, in order.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

/// Rows of a `[n, dim]` tensor as vectors.
fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let dim = t.dims()[1];
    let flat: Vec<f32> = t.into_data().iter::<f32>().collect();
    flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect()
}

/// Preprocesses images in parallel into one `[n, 3, crop, crop]` tensor.
fn pixels<B: Backend>(images: &[DynamicImage], preprocess: &Preprocess, device: &B::Device) -> Tensor<B, 4> {
    let side = preprocess.crop as usize;
    let flat: Vec<f32> = images.par_iter().map(|img| preprocess.apply(img)).flatten_iter().collect();
    Tensor::from_data(TensorData::new(flat, [images.len(), 3, side, side]), device)
}

/// Runs `open` on the backend of `device`, with `$b` naming the backend type.
macro_rules! on_device {
    ($device:expr, |$dev:ident: $b:ident| $open:expr) => {
        match $device {
            unoflow_models::Device::Cpu => {
                type $b = unoflow_models::device::CpuBackend;
                let $dev = Default::default();
                $open
            }
            #[cfg(feature = "cuda")]
            unoflow_models::Device::Cuda(n) => {
                type $b = unoflow_models::device::CudaBackend;
                let $dev = unoflow_models::device::cuda_device(n);
                $open
            }
            #[cfg(not(feature = "cuda"))]
            unoflow_models::Device::Cuda(_) => Err($crate::embed::load_err(unoflow_models::DeviceError::CudaNotBuilt($device))),
        }
    };
}

pub(crate) use on_device;

/// Cosine similarity; 0 for a zero vector.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += (*x as f64) * (*y as f64);
        na += (*x as f64) * (*x as f64);
        nb += (*y as f64) * (*y as f64);
    }
    let denom = (na * nb).sqrt();
    if denom == 0.0 { 0.0 } else { (dot / denom) as f32 }
}

/// A transformers model folder (`config.json` + `model.safetensors`), or the safetensors file
/// with its `config.json` beside it.
fn model_files(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let (dir, weights) = if path.is_dir() {
        (path.to_path_buf(), path.join("model.safetensors"))
    } else {
        (path.parent().unwrap_or(Path::new(".")).to_path_buf(), path.to_path_buf())
    };
    let config = dir.join("config.json");
    for f in [&weights, &config] {
        if !f.is_file() {
            return Err(OpError::Execution(format!(
                "{}: not found; expected a transformers model folder with config.json and model.safetensors",
                f.display()
            )));
        }
    }
    Ok((weights, config))
}

pub(crate) fn load_err(e: impl std::fmt::Display) -> OpError {
    OpError::Execution(e.to_string())
}

/// Resize and crop sides that replace an encoder's reference preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    pub resize: u32,
    pub crop: u32,
}

impl Resize {
    /// The `resize`/`crop` parameters of a node (0: the backbone's own); `None` when both are 0.
    pub fn from_params(resize: u32, crop: u32) -> Option<Self> {
        (resize > 0 || crop > 0).then(|| Self { resize: resize.max(crop), crop: if crop == 0 { resize } else { crop } })
    }
}

impl Preprocess {
    fn with(self, custom: Option<Resize>) -> Self {
        match custom {
            Some(r) => Self { resize: r.resize, crop: r.crop, ..self },
            None => self,
        }
    }
}

fn fixed_size(model: &str, trained: usize, preprocess: &Preprocess) -> Result<()> {
    if preprocess.crop as usize != trained {
        return Err(OpError::Param {
            name: "crop".into(),
            message: format!(
                "{model} takes {trained}×{trained} images (its position embeddings are fixed): set crop = {trained} or leave it at 0"
            ),
        });
    }
    Ok(())
}

/// Opens a DINOv2 encoder on `device` (DINO preprocessing unless `custom`).
pub fn open_dinov2(path: &Path, pooling: Pooling, custom: Option<Resize>, device: Device) -> Result<Box<dyn ImageEncoder>> {
    on_device!(device, |dev: B| {
        let encoder = Dinov2Encoder::<B>::open(path, pooling, dev)?;
        let preprocess = encoder.preprocess.with(custom);
        Ok(Box::new(encoder.with_preprocess(preprocess)) as Box<dyn ImageEncoder>)
    })
}

/// Opens a DINO v1 encoder (CLS embedding) on `device`.
pub fn open_dino(path: &Path, custom: Option<Resize>, device: Device) -> Result<Box<dyn ImageEncoder>> {
    on_device!(device, |dev: B| {
        let encoder = DinoEncoder::<B>::open(path, dev)?;
        let preprocess = encoder.preprocess.with(custom);
        fixed_size("DINO", encoder.model.image_size(), &preprocess)?;
        Ok(Box::new(encoder.with_preprocess(preprocess)) as Box<dyn ImageEncoder>)
    })
}

/// Opens CLIP on `device`: an image encoder and a text encoder sharing the model.
pub fn open_clip(path: &Path, custom: Option<Resize>, device: Device) -> Result<(Box<dyn ImageEncoder>, Box<dyn TextEncoder>)> {
    on_device!(device, |dev: B| {
        let encoder = ClipEncoder::<B>::open(path, dev)?;
        let preprocess = encoder.preprocess.with(custom);
        fixed_size("CLIP", encoder.preprocess.crop as usize, &preprocess)?;
        let clip = std::sync::Arc::new(encoder.with_preprocess(preprocess));
        Ok((Box::new(ClipImages(std::sync::Arc::clone(&clip))) as Box<dyn ImageEncoder>, Box::new(ClipTexts(clip)) as Box<dyn TextEncoder>))
    })
}

/// DINOv2 with its DreamBench-style preprocessing.
#[derive(Debug)]
pub struct Dinov2Encoder<B: Backend> {
    model: Dinov2<B>,
    device: B::Device,
    pooling: Pooling,
    preprocess: Preprocess,
}

impl<B: Kernels> Dinov2Encoder<B> {
    pub fn open(path: &Path, pooling: Pooling, device: B::Device) -> Result<Self> {
        let (weights, config) = model_files(path)?;
        let text = std::fs::read(&config).map_err(|e| load_err(format!("{}: {e}", config.display())))?;
        let config: Dinov2Config = serde_json::from_slice(&text).map_err(|e| load_err(format!("{}: {e}", config.display())))?;
        let ckpt = Checkpoint::open(&weights).map_err(load_err)?;
        let model = Dinov2::load(&Vb::new(&ckpt, &device, Some(burn::tensor::DType::F32)), &config).map_err(load_err)?;
        ckpt.check_all_read().map_err(load_err)?;
        Ok(Self { model, device, pooling, preprocess: Preprocess::DINO })
    }

    /// Uses another preprocessing (e.g. a smaller crop for tiny models).
    pub fn with_preprocess(mut self, preprocess: Preprocess) -> Self {
        self.preprocess = preprocess;
        self
    }
}

impl<B: Kernels> ImageEncoder for Dinov2Encoder<B>
where
    B::Device: Send + Sync,
{
    fn embed(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.model.forward(pixels::<B>(images, &self.preprocess, &self.device));
        Ok(rows(match self.pooling {
            Pooling::Cls => out.pooler_output,
            Pooling::MeanPatch => out.mean_patch_tokens(),
            Pooling::ClsThenMean => {
                let mean = out.mean_patch_tokens();
                Tensor::cat(vec![out.pooler_output, mean], 1)
            }
        }))
    }
}

/// DINO v1 (timm layout): the CLS embedding, DreamBench's DINO score backbone.
#[derive(Debug)]
pub struct DinoEncoder<B: Backend> {
    model: Dino<B>,
    device: B::Device,
    preprocess: Preprocess,
}

impl<B: Kernels> DinoEncoder<B> {
    /// A folder with `model.safetensors` in transformers' `ViTModel` layout and its
    /// `config.json` (`facebook/dino-vits16` as shipped), or in timm's
    /// `vit_small_patch16_224.dino` layout, optionally with a `config.json` holding `img_size`,
    /// `patch_size`, `embed_dim`, `depth`, `num_heads`, `mlp_ratio` (without one, the sizes are
    /// read from the tensors, with 64-dim heads).
    pub fn open(path: &Path, device: B::Device) -> Result<Self> {
        let weights = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
        let ckpt = Checkpoint::open(&weights).map_err(load_err)?;
        let config_file = weights.with_file_name("config.json");
        if ckpt.contains("embeddings.cls_token") {
            return Self::open_vit(&ckpt, &config_file, device);
        }
        let config: DinoConfig = match std::fs::read(&config_file).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            Some(c) => c,
            None => infer_dino_config(&ckpt).ok_or_else(|| {
                load_err(format!(
                    "{}: not a DINO/timm ViT checkpoint (no cls_token, pos_embed, patch_embed.proj.weight)",
                    weights.display()
                ))
            })?,
        };
        let model = Dino::load(&Vb::new(&ckpt, &device, Some(burn::tensor::DType::F32)), &config).map_err(load_err)?;
        ckpt.check_all_read().map_err(load_err)?;
        Ok(Self { model, device, preprocess: Self::preprocess_for(&config) })
    }

    /// transformers `ViTModel` weights (`facebook/dino-vits16`), read through timm's names.
    fn open_vit(ckpt: &Checkpoint, config_file: &Path, device: B::Device) -> Result<Self> {
        let text = std::fs::read(config_file).map_err(|e| {
            load_err(format!("{}: {e}; a transformers ViTModel folder (facebook/dino-vits16) ships config.json", config_file.display()))
        })?;
        let vit: VitConfig = serde_json::from_slice(&text).map_err(|e| load_err(format!("{}: {e}", config_file.display())))?;
        let config = DinoConfig::from(&vit);
        let model = Dino::load(&Vb::new(&VitView(ckpt), &device, Some(burn::tensor::DType::F32)), &config).map_err(load_err)?;
        // A ViTModel saved with its pooler: DINO's score is the CLS token before it.
        for unused in ["pooler.dense.weight", "pooler.dense.bias"] {
            if let Some(shape) = ckpt.shape(unused).map(<[usize]>::to_vec) {
                ckpt.read(unused, &shape).map_err(load_err)?;
            }
        }
        ckpt.check_all_read().map_err(load_err)?;
        Ok(Self { model, device, preprocess: Self::preprocess_for(&config) })
    }

    /// DINO's evaluation preprocessing at the model's resolution (resize to 8/7, centre crop).
    fn preprocess_for(config: &DinoConfig) -> Preprocess {
        Preprocess { resize: config.img_size as u32 * 8 / 7, crop: config.img_size as u32, ..Preprocess::DINO }
    }

    pub fn with_preprocess(mut self, preprocess: Preprocess) -> Self {
        self.preprocess = preprocess;
        self
    }
}

fn infer_dino_config(ckpt: &Checkpoint) -> Option<DinoConfig> {
    let dim = *ckpt.shape("cls_token")?.last()?;
    let positions = ckpt.shape("pos_embed")?[1];
    let patch = ckpt.shape("patch_embed.proj.weight")?[2];
    let depth = (0..).take_while(|i| ckpt.contains(&format!("blocks.{i}.attn.qkv.weight"))).count();
    let mlp = ckpt.shape("blocks.0.mlp.fc1.weight")?[0];
    let grid = ((positions - 1) as f64).sqrt() as usize;
    Some(DinoConfig {
        img_size: grid * patch,
        patch_size: patch,
        embed_dim: dim,
        depth,
        num_heads: (dim / 64).max(1),
        mlp_ratio: mlp as f64 / dim as f64,
    })
}

impl<B: Kernels> ImageEncoder for DinoEncoder<B>
where
    B::Device: Send + Sync,
{
    fn embed(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        Ok(rows(self.model.forward(pixels::<B>(images, &self.preprocess, &self.device))))
    }
}

/// CLIP with its tokenizer (`tokenizer.json` in the model folder).
#[derive(Debug)]
pub struct ClipEncoder<B: Backend> {
    model: Clip<B>,
    /// `tokenizer.json` beside the weights; only text embeddings need it.
    tokenizer: Option<TextTokenizer>,
    device: B::Device,
    preprocess: Preprocess,
}

impl<B: Kernels> ClipEncoder<B> {
    pub fn open(path: &Path, device: B::Device) -> Result<Self> {
        let (weights, config) = model_files(path)?;
        let text = std::fs::read(&config).map_err(|e| load_err(format!("{}: {e}", config.display())))?;
        let config: ClipConfig = serde_json::from_slice(&text).map_err(|e| load_err(format!("{}: {e}", config.display())))?;
        let ckpt = Checkpoint::open(&weights).map_err(load_err)?;
        let model = Clip::load(&Vb::new(&ckpt, &device, Some(burn::tensor::DType::F32)), &config).map_err(load_err)?;
        ckpt.check_all_read().map_err(load_err)?;
        // openai/clip-vit-base-patch32 ships tokenizer.json and vocab.json + merges.txt; either will do.
        let dir = weights.parent().unwrap_or(Path::new("."));
        let has_tokenizer = dir.join("tokenizer.json").is_file() || dir.join("vocab.json").is_file();
        let tokenizer = if has_tokenizer {
            Some(TextTokenizer::clip_dir(dir, config.text_config.max_position_embeddings).map_err(load_err)?)
        } else {
            None
        };
        let size = config.vision_config.image_size as u32;
        Ok(Self { model, tokenizer, device, preprocess: Preprocess { resize: size, crop: size, ..Preprocess::CLIP } })
    }

    pub fn with_preprocess(mut self, preprocess: Preprocess) -> Self {
        self.preprocess = preprocess;
        self
    }
}

struct ClipImages<B: Backend>(std::sync::Arc<ClipEncoder<B>>);
struct ClipTexts<B: Backend>(std::sync::Arc<ClipEncoder<B>>);

impl<B: Kernels> ImageEncoder for ClipImages<B>
where
    B::Device: Send + Sync,
{
    fn embed(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let c = &self.0;
        Ok(rows(c.model.image_embeds(pixels::<B>(images, &c.preprocess, &c.device))))
    }
}

impl<B: Kernels> TextEncoder for ClipTexts<B>
where
    B::Device: Send + Sync,
{
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tokenizer = self.0.tokenizer.as_ref().ok_or_else(|| {
            load_err("this CLIP folder has no tokenizer (tokenizer.json, or vocab.json + merges.txt): text embeddings need it")
        })?;
        let ids = tokenizer.encode(texts).map_err(load_err)?;
        Ok(rows(self.0.model.text_embeds(&ids)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_basics() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }
}
