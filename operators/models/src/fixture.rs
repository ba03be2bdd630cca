//! Reference fixtures (DESIGN.md §4.5) and the comparison of a model's output with them.
//!
//! A fixture is a safetensors file whose metadata holds `kind` and `config` (JSON, in the
//! reference implementation's field names) and whose tensors are `input.<name>` and
//! `expected.<name>`. The weights are a separate file in the checkpoint's own key layout, so a
//! check exercises the real loader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::device::{Device, Precision};
use crate::flux::{FluxCheckpoint, FluxConfig, FluxError, FluxInput, load_lora};
use crate::kernels::Kernels;
use crate::weights::{Checkpoint, WeightsError};

/// Why a check could not run (as opposed to running and missing the tolerance).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: {message}")]
    Fixture { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] FluxError),
}

/// A fixture file.
#[derive(Debug)]
pub struct Fixture {
    path: PathBuf,
    data: Checkpoint,
    metadata: BTreeMap<String, String>,
}

impl Fixture {
    pub fn open(path: &Path) -> Result<Self, CheckError> {
        let file = crate::weights::SafetensorsFile::open(path)?;
        let metadata = file.metadata().clone();
        if !metadata.contains_key("kind") {
            return Err(CheckError::Fixture { path: path.into(), message: "no `kind` in the metadata: not a unoflow fixture".into() });
        }
        Ok(Self { path: path.to_path_buf(), data: Checkpoint::open(path)?, metadata })
    }

    pub fn kind(&self) -> &str {
        &self.metadata["kind"]
    }

    /// A metadata string.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The `config` metadata parsed as `T`.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T, CheckError> {
        let text = self.meta("config").ok_or_else(|| self.error("no `config` in the metadata"))?;
        serde_json::from_str(text).map_err(|e| self.error(format!("bad `config`: {e}")))
    }

    fn error(&self, message: impl Into<String>) -> CheckError {
        CheckError::Fixture { path: self.path.clone(), message: message.into() }
    }

    pub fn has(&self, name: &str) -> bool {
        self.data.contains(name)
    }

    /// The tensor `name` (`input.x` or `expected.x`), as f32.
    pub fn tensor<B: Backend, const D: usize>(&self, name: &str, device: &B::Device) -> Result<Tensor<B, D>, CheckError> {
        let shape = self.data.shape(name).ok_or_else(|| self.error(format!("no tensor `{name}`")))?.to_vec();
        if shape.len() != D {
            return Err(self.error(format!("`{name}` has {} dimensions, expected {D}", shape.len())));
        }
        let data = self.data.read(name, &shape)?;
        let dtype = data.dtype;
        Ok(Tensor::<B, D>::from_data(data, (device, dtype)).cast(DType::F32))
    }

    /// Token ids `[B][L]` from an integer tensor.
    pub fn ids(&self, name: &str) -> Result<Vec<Vec<u32>>, CheckError> {
        let shape = self.data.shape(name).ok_or_else(|| self.error(format!("no tensor `{name}`")))?.to_vec();
        let [_, l] = shape[..] else { return Err(self.error(format!("`{name}` must be [batch, length]"))) };
        let data = self.data.read(name, &shape)?;
        let flat: Vec<i64> = data.iter::<i64>().collect();
        Ok(flat.chunks(l).map(|row| row.iter().map(|&t| t as u32).collect()).collect())
    }

    /// Resolves a file named in the metadata relative to the fixture.
    pub fn sibling(&self, key: &str) -> Option<PathBuf> {
        self.meta(key).map(|name| self.path.parent().unwrap_or(Path::new(".")).join(name))
    }
}

/// How far an output is from the expected one, computed in f32 (f64 accumulation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// ‖out − expected‖₂ / ‖expected‖₂.
    pub rel_err: f64,
    pub max_abs_err: f64,
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rel_err={:.3e} max_abs_err={:.3e}", self.rel_err, self.max_abs_err)
    }
}

pub fn compare(out: &[f32], expected: &[f32]) -> Comparison {
    let (mut diff, mut norm, mut max_abs) = (0f64, 0f64, 0f64);
    for (&o, &e) in out.iter().zip(expected) {
        let d = (o - e) as f64;
        diff += d * d;
        norm += (e as f64) * (e as f64);
        max_abs = max_abs.max(d.abs());
    }
    if out.len() != expected.len() {
        return Comparison { rel_err: f64::INFINITY, max_abs_err: f64::INFINITY };
    }
    Comparison { rel_err: diff.sqrt() / norm.sqrt().max(f64::MIN_POSITIVE), max_abs_err: max_abs }
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Runs a FLUX fixture: loads the weights (and LoRA), feeds the fixture's inputs, compares
/// `expected.out`. `dtype` is the compute dtype (F32, or BF16 for the reduced-precision check).
pub fn check_flux<B: Kernels>(
    fixture: &Fixture,
    weights: &Path,
    lora: Option<&Path>,
    device: &B::Device,
    dtype: DType,
) -> Result<Comparison, CheckError> {
    if fixture.kind() != "flux" {
        return Err(fixture.error(format!("a `{}` fixture, not `flux`", fixture.kind())));
    }
    let config: FluxConfig = fixture.config()?;
    let mut model = FluxCheckpoint::open(weights)?.load::<B>(&config, device, Some(dtype))?;
    if let Some(lora) = lora {
        load_lora(&mut model, &config, lora, 1.0, device)?;
    } else if fixture.meta("lora").is_some() {
        return Err(fixture.error("this fixture was made with a LoRA: pass it with --lora"));
    }
    let out = model.forward(flux_input(fixture, device)?)?;
    let expected = fixture.tensor::<B, 3>("expected.out", device)?;
    if out.dims() != expected.dims() {
        return Err(fixture.error(format!("the model gave {:?}, the fixture expects {:?}", out.dims(), expected.dims())));
    }
    Ok(compare(&to_vec(out.cast(DType::F32)), &to_vec(expected)))
}

/// Runs the fixture at `fixture_path` for model `kind` on `device`, computing in `dtype`.
/// Checks that the fixture is of that kind.
pub fn check(
    kind: &str,
    fixture_path: &Path,
    weights: &Path,
    lora: Option<&Path>,
    device: Device,
    precision: Precision,
) -> Result<Comparison, CheckError> {
    let dtype = precision.dtype();
    let fixture = Fixture::open(fixture_path)?;
    if fixture.kind() != kind {
        return Err(fixture.error(format!("a `{}` fixture, but the command checks `{kind}`", fixture.kind())));
    }
    match device {
        Device::Cpu => check_on::<crate::device::CpuBackend>(&fixture, weights, lora, &Default::default(), dtype),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => check_on::<crate::device::CudaBackend>(&fixture, weights, lora, &crate::device::cuda_device(n), dtype),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(fixture.error(crate::device::DeviceError::CudaNotBuilt(device).to_string())),
    }
}

fn check_on<B: Kernels>(
    fixture: &Fixture,
    weights: &Path,
    lora: Option<&Path>,
    device: &B::Device,
    dtype: DType,
) -> Result<Comparison, CheckError> {
    match fixture.kind() {
        "flux" => check_flux::<B>(fixture, weights, lora, device, dtype),
        "dinov2" => no_lora(fixture, lora).and_then(|()| check_dinov2::<B>(fixture, weights, device, dtype)),
        "dino" => no_lora(fixture, lora).and_then(|()| check_dino::<B>(fixture, weights, device, dtype)),
        "clip" => no_lora(fixture, lora).and_then(|()| check_clip::<B>(fixture, weights, device, dtype)),
        "clip_text" => no_lora(fixture, lora).and_then(|()| check_clip_text::<B>(fixture, weights, device, dtype)),
        "ae" => no_lora(fixture, lora).and_then(|()| check_ae::<B>(fixture, weights, device, dtype)),
        "t5" => no_lora(fixture, lora).and_then(|()| check_t5::<B>(fixture, weights, device, dtype)),
        other => Err(fixture.error(format!(
            "model kind `{other}` is not available in this build (available: flux, ae, t5, clip_text, clip, dinov2, dino)"
        ))),
    }
}

fn no_lora(fixture: &Fixture, lora: Option<&Path>) -> Result<(), CheckError> {
    match lora {
        Some(_) => Err(fixture.error(format!("`{}` models take no LoRA", fixture.kind()))),
        None => Ok(()),
    }
}

/// The worse of several comparisons (a model with several outputs passes if all do).
fn worst(comparisons: impl IntoIterator<Item = Comparison>) -> Comparison {
    comparisons.into_iter().fold(Comparison { rel_err: 0.0, max_abs_err: 0.0 }, |a, b| Comparison {
        rel_err: a.rel_err.max(b.rel_err),
        max_abs_err: a.max_abs_err.max(b.max_abs_err),
    })
}

/// Compares a model output with `expected.NAME`.
fn against<B: Backend, const D: usize>(
    fixture: &Fixture,
    name: &str,
    out: Tensor<B, D>,
    device: &B::Device,
) -> Result<Comparison, CheckError> {
    let expected = fixture.tensor::<B, D>(&format!("expected.{name}"), device)?;
    if out.dims() != expected.dims() {
        return Err(fixture.error(format!("`{name}`: the model gave {:?}, the fixture expects {:?}", out.dims(), expected.dims())));
    }
    Ok(compare(&to_vec(out.cast(DType::F32)), &to_vec(expected)))
}

/// Runs a DINOv2 fixture (transformers `Dinov2Model` weights): `last_hidden_state` and
/// `pooler_output`.
pub fn check_dinov2<B: Kernels>(fixture: &Fixture, weights: &Path, device: &B::Device, dtype: DType) -> Result<Comparison, CheckError> {
    let config: crate::dinov2::Dinov2Config = fixture.config()?;
    let ckpt = Checkpoint::open(weights)?;
    let model = crate::dinov2::Dinov2::<B>::load(&crate::vb::Vb::new(&ckpt, device, Some(dtype)), &config)?;
    ckpt.check_all_read()?;
    let out = model.forward(fixture.tensor("input.pixel_values", device)?);
    Ok(worst([
        against(fixture, "last_hidden_state", out.last_hidden_state, device)?,
        against(fixture, "pooler_output", out.pooler_output, device)?,
    ]))
}

/// Loads a model from `weights` with `load`, checking that every tensor was used.
fn load_checked<B: Backend, M>(
    weights: &Path,
    device: &B::Device,
    dtype: DType,
    load: impl FnOnce(&crate::vb::Vb<B>) -> crate::weights::Result<M>,
) -> Result<M, CheckError> {
    let ckpt = Checkpoint::open(weights)?;
    let model = load(&crate::vb::Vb::new(&ckpt, device, Some(dtype)))?;
    ckpt.check_all_read()?;
    Ok(model)
}

/// Runs a DINO v1 fixture (timm layout): the CLS embedding.
pub fn check_dino<B: Kernels>(fixture: &Fixture, weights: &Path, device: &B::Device, dtype: DType) -> Result<Comparison, CheckError> {
    let config: crate::dino::DinoConfig = fixture.config()?;
    let model = load_checked(weights, device, dtype, |vb| crate::dino::Dino::<B>::load(vb, &config))?;
    against(fixture, "cls", model.forward(fixture.tensor("input.pixel_values", device)?), device)
}

/// Runs a CLIP fixture (transformers `CLIPModel`): normalised image and text embeddings.
pub fn check_clip<B: Kernels>(fixture: &Fixture, weights: &Path, device: &B::Device, dtype: DType) -> Result<Comparison, CheckError> {
    let config: crate::clip::ClipConfig = fixture.config()?;
    let model = load_checked(weights, device, dtype, |vb| crate::clip::Clip::<B>::load(vb, &config))?;
    let ids = fixture.ids("input.input_ids")?;
    Ok(worst([
        against(fixture, "image_embeds", model.image_embeds(fixture.tensor("input.pixel_values", device)?), device)?,
        against(fixture, "text_embeds", model.text_embeds(&ids), device)?,
    ]))
}

/// Runs a CLIP text fixture (transformers `CLIPTextModel`, keys under `text_model.`).
pub fn check_clip_text<B: Kernels>(fixture: &Fixture, weights: &Path, device: &B::Device, dtype: DType) -> Result<Comparison, CheckError> {
    let config: crate::clip::ClipTextConfig = fixture.config()?;
    let model = load_checked(weights, device, dtype, |vb| crate::clip::ClipText::<B>::load_text_model(vb, &config))?;
    let out = model.forward(&fixture.ids("input.input_ids")?);
    Ok(worst([
        against(fixture, "last_hidden_state", out.last_hidden_state, device)?,
        against(fixture, "pooler_output", out.pooler_output, device)?,
    ]))
}

/// Runs an autoencoder fixture (BFL `ae.safetensors` layout): encode `input.x` (the mean,
/// shifted and scaled) and decode `input.z`.
pub fn check_ae<B: Kernels>(fixture: &Fixture, weights: &Path, device: &B::Device, dtype: DType) -> Result<Comparison, CheckError> {
    let config: crate::flux::autoencoder::AutoEncoderConfig = fixture.config()?;
    let model = crate::flux::autoencoder::AutoEncoder::<B>::open(weights, &config, device, Some(dtype))?;
    Ok(worst([
        against(fixture, "z", model.encode(fixture.tensor("input.x", device)?), device)?,
        against(fixture, "x", model.decode(fixture.tensor("input.z", device)?), device)?,
    ]))
}

/// Runs a T5 encoder fixture (transformers `T5EncoderModel`).
pub fn check_t5<B: Kernels>(fixture: &Fixture, weights: &Path, device: &B::Device, dtype: DType) -> Result<Comparison, CheckError> {
    let config: crate::t5::T5Config = fixture.config()?;
    let model = load_checked(weights, device, dtype, |vb| crate::t5::T5Encoder::<B>::load(vb, &config))?;
    against(fixture, "last_hidden_state", model.forward(&fixture.ids("input.input_ids")?), device)
}

/// The inputs of a FLUX fixture.
pub fn flux_input<B: Backend>(fixture: &Fixture, device: &B::Device) -> Result<FluxInput<B>, CheckError> {
    let mut refs = Vec::new();
    while fixture.has(&format!("input.ref_img.{}", refs.len())) {
        let k = refs.len();
        refs.push((fixture.tensor(&format!("input.ref_img.{k}"), device)?, fixture.tensor(&format!("input.ref_img_ids.{k}"), device)?));
    }
    Ok(FluxInput {
        img: fixture.tensor("input.img", device)?,
        img_ids: fixture.tensor("input.img_ids", device)?,
        txt: fixture.tensor("input.txt", device)?,
        txt_ids: fixture.tensor("input.txt_ids", device)?,
        y: fixture.tensor("input.y", device)?,
        timesteps: fixture.tensor("input.timesteps", device)?,
        guidance: if fixture.has("input.guidance") { Some(fixture.tensor("input.guidance", device)?) } else { None },
        refs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error() {
        let c = compare(&[1.0, 2.0, 2.0], &[1.0, 2.0, 2.0]);
        assert_eq!(c.rel_err, 0.0);
        let c = compare(&[0.0, 3.0], &[0.0, 4.0]);
        assert!((c.rel_err - 0.25).abs() < 1e-12);
        assert_eq!(c.max_abs_err, 1.0);
        assert_eq!(c.to_string(), "rel_err=2.500e-1 max_abs_err=1.000e0");
    }
}
