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
use unoflow_models::DeviceSpec;
use unoflow_models::dinov2::{Dinov2, Dinov2Config};
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
}

/// Turns images into embeddings.
pub trait ImageEncoder: Send + Sync {
    /// One embedding per image, in order.
    fn embed(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>>;
}

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

fn load_err(e: impl std::fmt::Display) -> OpError {
    OpError::Execution(e.to_string())
}

/// Opens a DINOv2 encoder on `device`.
pub fn open_dinov2(path: &Path, pooling: Pooling, preprocess: Preprocess, device: DeviceSpec) -> Result<Box<dyn ImageEncoder>> {
    match device {
        DeviceSpec::Cpu => Ok(Box::new(
            Dinov2Encoder::<unoflow_models::device::CpuBackend>::open(path, pooling, Default::default())?.with_preprocess(preprocess),
        )),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => Ok(Box::new(
            Dinov2Encoder::<unoflow_models::device::CudaBackend>::open(path, pooling, unoflow_models::device::cuda_device(n))?
                .with_preprocess(preprocess),
        )),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(load_err(unoflow_models::DeviceError::CudaNotBuilt(device))),
    }
}

/// DINOv2 with its DreamBench-style preprocessing.
#[derive(Debug)]
pub struct Dinov2Encoder<B: Backend> {
    model: Dinov2<B>,
    device: B::Device,
    pooling: Pooling,
    preprocess: Preprocess,
}

impl<B: Backend> Dinov2Encoder<B> {
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

impl<B: Backend> ImageEncoder for Dinov2Encoder<B>
where
    B::Device: Send + Sync,
{
    fn embed(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.preprocess.crop as usize;
        let pixels: Vec<f32> = images.par_iter().map(|img| self.preprocess.apply(img)).flatten_iter().collect();
        let input = Tensor::<B, 4>::from_data(TensorData::new(pixels, [images.len(), 3, side, side]), &self.device);
        let out = self.model.forward(input);
        let pooled = match self.pooling {
            Pooling::Cls => out.pooler_output,
            Pooling::MeanPatch => out.mean_patch_tokens(),
        };
        let dim = pooled.dims()[1];
        let flat: Vec<f32> = pooled.into_data().iter::<f32>().collect();
        Ok(flat.chunks(dim).map(<[f32]>::to_vec).collect())
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
