//! Tiny random model folders in the file and key layout of the public releases, so a whole DAG
//! can be rehearsed before 37 GB of weights are downloaded (`unoflow model tiny`).
//!
//! Each folder is what the Hugging Face repository holds, at a few kilobytes a model: the same
//! file names, the same checkpoint keys and dtypes, config files in the upstream field names
//! carrying the tiny sizes (so the loaders build the tiny models from them, as they build the
//! real ones), and the tokenizer files as each repository ships them.
//!
//! The weights are made by running the real loaders over a [`TensorSource`] that invents each
//! tensor it is asked for and keeps it: the key set is by construction the one the loaders read,
//! and a layout the loaders read through a view (diffusers, transformers' ViT) is written by
//! inverting that view.

mod flux;
mod spiece;
mod vision;

pub use flux::{CLIP_TOKENIZER_JSON, T5_TOKENIZER_JSON, ae_config, clip_text_config, flux_config, t5_config};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::{DType, TensorData};

use crate::device::CpuBackend;
use crate::vb::{TensorSource, Vb};
use crate::weights::{WeightsError, write_safetensors};

/// Why a folder could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: the folder is not empty; `model tiny` writes a new folder (pick another path or remove this one)")]
    NotEmpty { path: PathBuf },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = TinyError> = std::result::Result<T, E>;

/// Which release a folder mimics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyKind {
    /// `black-forest-labs/FLUX.1-dev`: transformer, autoencoder, CLIP-L and T5-XXL encoders.
    FluxDev,
    /// `facebook/dinov2-small` (transformers `Dinov2Model`).
    Dinov2,
    /// `facebook/dino-vits16` (transformers `ViTModel`).
    Dino,
    /// `openai/clip-vit-base-patch32` (transformers `CLIPModel` with its tokenizer).
    Clip,
}

/// How the FLUX transformer and autoencoder are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FluxLayout {
    /// BFL's single files at the root: `flux1-dev.safetensors`, `ae.safetensors`.
    Bfl,
    /// diffusers: `model_index.json`, `transformer/` (sharded), `vae/`, `scheduler/`.
    Diffusers,
}

/// Writes the tiny `kind` folder at `dir` (created; it must not hold anything yet). `layout`
/// matters only for FLUX. The same seed writes the same bytes. Returns the files written.
pub fn write(dir: &Path, kind: TinyKind, layout: FluxLayout, seed: u64) -> Result<Vec<PathBuf>> {
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(TinyError::NotEmpty { path: dir.to_path_buf() });
    }
    let mut out = Folder { root: dir.to_path_buf(), written: Vec::new() };
    match kind {
        TinyKind::FluxDev => flux::write(&mut out, layout, seed)?,
        TinyKind::Dinov2 => vision::dinov2(&mut out, seed)?,
        TinyKind::Dino => vision::dino(&mut out, seed)?,
        TinyKind::Clip => vision::clip(&mut out, seed)?,
    }
    Ok(out.written)
}

/// The folder being written, and what has been written to it.
struct Folder {
    root: PathBuf,
    written: Vec<PathBuf>,
}

impl Folder {
    fn path(&self, rel: &str) -> Result<PathBuf> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| TinyError::Io { path: parent.to_path_buf(), source })?;
        }
        Ok(path)
    }

    fn bytes(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(rel)?;
        std::fs::write(&path, bytes).map_err(|source| TinyError::Io { path: path.clone(), source })?;
        self.written.push(path);
        Ok(())
    }

    /// A JSON file, pretty-printed as transformers and diffusers write theirs.
    fn json(&mut self, rel: &str, value: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(|e| TinyError::Internal(e.to_string()))?;
        self.bytes(rel, format!("{text}\n").as_bytes())
    }

    /// One safetensors file with the `format: pt` metadata PyTorch-saved files carry.
    fn safetensors(&mut self, rel: &str, tensors: &[(String, TensorData)]) -> Result<()> {
        let path = self.path(rel)?;
        write_safetensors(&path, tensors, &BTreeMap::from([("format".to_string(), "pt".to_string())]))?;
        self.written.push(path);
        Ok(())
    }

    /// `shards` files `{stem}-0000i-of-0000n.safetensors` of about equal size and the index
    /// `{stem}.safetensors.index.json` naming each key's file, under `sub/`, as
    /// `save_pretrained` shards a large model.
    fn sharded(&mut self, sub: &str, stem: &str, tensors: &[(String, TensorData)], shards: usize) -> Result<()> {
        let total: usize = tensors.iter().map(|(_, t)| t.as_bytes().len()).sum();
        let mut weight_map = serde_json::Map::new();
        let (mut start, mut written) = (0, 0);
        for i in 0..shards {
            let name = format!("{stem}-{:05}-of-{shards:05}.safetensors", i + 1);
            // Shards 1..=i hold up to i/shards of the bytes; the last takes the rest.
            let mut end = start;
            while end < tensors.len() && (i + 1 == shards || (written + tensors[end].1.as_bytes().len()) * shards <= total * (i + 1)) {
                written += tensors[end].1.as_bytes().len();
                end += 1;
            }
            if end == start && end < tensors.len() {
                written += tensors[end].1.as_bytes().len();
                end += 1;
            }
            for (key, _) in &tensors[start..end] {
                weight_map.insert(key.clone(), name.clone().into());
            }
            self.safetensors(&format!("{sub}/{name}"), &tensors[start..end])?;
            start = end;
        }
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        self.json(&format!("{sub}/{stem}.safetensors.index.json"), &index)
    }
}

/// A tensor source that invents every tensor asked for (deterministically from the seed and
/// the key) and keeps it, so a model's loader tells what its checkpoint holds.
struct Recorder {
    seed: u64,
    tensors: Mutex<BTreeMap<String, TensorData>>,
}

impl Recorder {
    fn new(seed: u64) -> Self {
        Self { seed, tensors: Mutex::new(BTreeMap::new()) }
    }

    /// Runs `load` over invented tensors; returns them by key, in `dtype`.
    fn record<M>(
        seed: u64,
        dtype: DType,
        load: impl FnOnce(&Vb<CpuBackend>) -> crate::weights::Result<M>,
    ) -> Result<Vec<(String, TensorData)>> {
        let recorder = Self::new(seed);
        let device = Default::default();
        load(&Vb::new(&recorder, &device, Some(DType::F32)))?;
        let tensors = recorder.tensors.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(tensors.into_iter().map(|(k, t)| (k, t.convert_dtype(dtype))).collect())
    }

    /// Values that keep a random network's activations in range: matrices with a 1/√fan-in
    /// spread, norm scales (and DINOv2's layer scales) 1, other vectors small.
    fn invent(&self, key: &str, shape: &[usize]) -> TensorData {
        let mut state = self.seed ^ key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut uniform = move || {
            // xorshift64*: repeatable across platforms, unlike a seeded backend RNG.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let n: usize = shape.iter().product();
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let norm_scale = shape.len() == 1 && (leaf == "scale" || leaf.starts_with("lambda") || (leaf == "weight" && key.contains("norm")));
        let values: Vec<f32> = if norm_scale {
            vec![1.0; n]
        } else if shape.len() <= 1 {
            (0..n).map(|_| 0.02 * uniform()).collect()
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let spread = (3.0 / fan_in.max(1) as f32).sqrt();
            (0..n).map(|_| spread * uniform()).collect()
        };
        TensorData::new(values, shape.to_vec())
    }
}

impl TensorSource for Recorder {
    fn read(&self, key: &str, shape: &[usize]) -> crate::weights::Result<TensorData> {
        let mut tensors = self.tensors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(tensors.entry(key.to_string()).or_insert_with(|| self.invent(key, shape)).clone())
    }

    /// Everything is there: optional parts (guidance, biases) are written.
    fn contains(&self, _key: &str) -> bool {
        true
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let tensors = self.tensors.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tensors.get(key).map(|t| t.shape.to_vec())
    }

    fn path(&self) -> &Path {
        Path::new("<tiny random weights>")
    }
}

/// An f32 tensor of `shape` filled with `value` (buffers and temperatures the loaders skip).
fn filled(shape: &[usize], value: f32) -> TensorData {
    TensorData::new(vec![value; shape.iter().product()], shape.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_every_tensor_once_and_index_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Folder { root: dir.path().to_path_buf(), written: Vec::new() };
        let tensors: Vec<(String, TensorData)> = (0..7).map(|i| (format!("t{i}"), filled(&[i + 1, 4], 1.0))).collect();
        out.sharded("m", "model", &tensors, 3).unwrap();
        let ckpt = crate::weights::Checkpoint::open_index(&dir.path().join("m/model.safetensors.index.json")).unwrap();
        assert_eq!(ckpt.keys().count(), 7);
        for i in 1..=3 {
            assert!(dir.path().join(format!("m/model-{i:05}-of-00003.safetensors")).is_file(), "shard {i}");
        }
    }

    #[test]
    fn a_folder_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.txt"), "x").unwrap();
        let err = write(dir.path(), TinyKind::Dinov2, FluxLayout::Bfl, 0).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }
}
