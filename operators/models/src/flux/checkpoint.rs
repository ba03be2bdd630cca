//! FLUX checkpoints: BFL single files (`flux1-dev.safetensors`) and the diffusers layout
//! (`transformer/` with sharded `diffusion_pytorch_model-*.safetensors` and an index), loaded into
//! the same [`Flux`].
//!
//! The model is written against BFL keys. A diffusers checkpoint is read through a view that
//! answers BFL keys from diffusers tensors: q, k, v (and the single blocks' MLP input) are
//! concatenated into the fused projections, and the final layer's modulation, which diffusers
//! stores as (scale, shift), is swapped back to BFL's (shift, scale).

use std::path::Path;

use burn::tensor::{DType, TensorData};

use super::model::{Flux, FluxConfig};
use crate::kernels::Kernels;
use crate::vb::{TensorSource, Vb};
use crate::weights::{Checkpoint, Result, WeightsError, cat_rows, split_rows, split_rows_by};

/// A FLUX transformer checkpoint in either layout.
#[derive(Debug)]
pub enum FluxCheckpoint {
    /// BFL/UNO keys (`double_blocks.0.img_attn.qkv.weight`).
    Bfl(Checkpoint),
    /// diffusers `FluxTransformer2DModel` keys (`transformer_blocks.0.attn.to_q.weight`).
    Diffusers(Checkpoint),
}

impl FluxCheckpoint {
    /// Opens a `.safetensors` file (either layout, told apart by its keys) or a diffusers
    /// folder: the pipeline root (with `transformer/`), or the transformer folder itself.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            let checkpoint = Checkpoint::open(path)?;
            // A bare `diffusion_pytorch_model.safetensors` has diffusers keys; BFL files have
            // `img_in`.
            let diffusers = checkpoint.keys().any(|k| k.starts_with("x_embedder.") || k.starts_with("transformer_blocks."));
            return Ok(if diffusers { Self::Diffusers(checkpoint) } else { Self::Bfl(checkpoint) });
        }
        let dir = if path.join("transformer").is_dir() { path.join("transformer") } else { path.to_path_buf() };
        let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
        let single = dir.join("diffusion_pytorch_model.safetensors");
        if index.is_file() {
            Ok(Self::Diffusers(Checkpoint::open_index(&index)?))
        } else if single.is_file() {
            Ok(Self::Diffusers(Checkpoint::open(&single)?))
        } else {
            Err(WeightsError::Format {
                path: path.to_path_buf(),
                message: "expected a BFL `.safetensors` file, or a diffusers folder with \
                          `transformer/diffusion_pytorch_model.safetensors[.index.json]`"
                    .into(),
            })
        }
    }

    /// The model's hyper-parameters. A diffusers `transformer/config.json` gives them (with the
    /// rope axes); a BFL file carries none, so they are read from the tensor shapes, as ComfyUI
    /// does: widths from `img_in`, `txt_in`, `vector_in` and `img_mlp.0`, the head dim from the
    /// query norm, depths by counting blocks, guidance and qkv bias by presence. The rope axes are
    /// FLUX.1's `[16, 56, 56]` for its 128-dim heads; other head dims (tiny rehearsal models,
    /// `unoflow model tiny`) are split in the same 1 : 3.5 : 3.5 proportion.
    pub fn config(&self) -> Result<FluxConfig> {
        let source = self.source();
        let path = self.checkpoint().path();
        let shape = |key: &str| {
            source.shape(key).ok_or_else(|| WeightsError::Missing {
                path: path.to_path_buf(),
                key: key.into(),
                hint: " (needed to read the model's sizes: is this a FLUX transformer?)".into(),
            })
        };
        let img_in = shape("img_in.weight")?;
        let (hidden_size, in_channels) = (img_in[0], img_in[1]);
        let head_dim = shape("double_blocks.0.img_attn.norm.query_norm.scale")?[0];
        let count = |prefix: &str, probe: &str| (0..).take_while(|i| source.contains(&format!("{prefix}.{i}.{probe}"))).count();
        let from_file = self.diffusers_config();
        let axes_dim = match from_file.as_ref().and_then(|c| c.get("axes_dims_rope")) {
            Some(axes) => serde_json::from_value(axes.clone())
                .map_err(|e| WeightsError::Format { path: path.to_path_buf(), message: format!("config.json `axes_dims_rope`: {e}") })?,
            None if head_dim == 128 => vec![16, 56, 56],
            None => vec![head_dim / 8, head_dim * 7 / 16, head_dim * 7 / 16],
        };
        Ok(FluxConfig {
            in_channels,
            vec_in_dim: shape("vector_in.in_layer.weight")?[1],
            context_in_dim: shape("txt_in.weight")?[1],
            hidden_size,
            mlp_ratio: shape("double_blocks.0.img_mlp.0.weight")?[0] as f64 / hidden_size as f64,
            num_heads: hidden_size / head_dim.max(1),
            depth: count("double_blocks", "img_attn.qkv.weight"),
            depth_single_blocks: count("single_blocks", "linear1.weight"),
            axes_dim,
            theta: 10_000.0,
            qkv_bias: source.contains("double_blocks.0.img_attn.qkv.bias"),
            guidance_embed: source.contains("guidance_in.in_layer.weight"),
        })
    }

    /// The diffusers `config.json` beside the transformer's weights, if any.
    fn diffusers_config(&self) -> Option<serde_json::Value> {
        let Self::Diffusers(c) = self else { return None };
        let text = std::fs::read(c.path().parent()?.join("config.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn source(&self) -> Box<dyn TensorSource + '_> {
        match self {
            Self::Bfl(c) => Box::new(BflView(c)),
            Self::Diffusers(c) => Box::new(DiffusersView(c)),
        }
    }

    fn checkpoint(&self) -> &Checkpoint {
        match self {
            Self::Bfl(c) | Self::Diffusers(c) => c,
        }
    }

    /// Builds the model. `dtype` casts every weight (e.g. a bf16 file computed in f32); `None`
    /// keeps the file's dtype. Fails on missing, misshapen or unexpected tensors.
    pub fn load<B: Kernels>(&self, config: &FluxConfig, device: &B::Device, dtype: Option<DType>) -> Result<Flux<B>> {
        config.validate().map_err(|message| WeightsError::Format { path: self.checkpoint().path().to_path_buf(), message })?;
        let source = self.source();
        let model = Flux::load(&Vb::new(source.as_ref(), device, dtype), config)?;
        self.checkpoint().check_all_read()?;
        Ok(model)
    }
}

/// The diffusers tensors of a BFL tensor (the inverse of the view diffusers checkpoints are read
/// through): renamed, split back into q, k, v (and the MLP input), or with the halves swapped.
/// Fused projections split into `hidden_size` rows each, the last part taking the rest.
pub fn diffusers_tensors(bfl_key: &str, data: &TensorData, hidden_size: usize) -> Option<Vec<(String, TensorData)>> {
    Some(match DiffusersView::recipe(bfl_key)? {
        Recipe::Rename(name) => vec![(name, data.clone())],
        Recipe::SwapHalves(name) => {
            let halves = split_rows(data, 2);
            vec![(name, cat_rows(vec![halves[1].clone(), halves[0].clone()]))]
        }
        Recipe::Cat(names) => {
            let mut rows = vec![hidden_size; names.len()];
            rows[names.len() - 1] = data.shape[0] - hidden_size * (names.len() - 1);
            names.into_iter().zip(split_rows_by(data, &rows)).collect()
        }
    })
}

/// Loads UNO LoRA weights from `path` into `model`, scaled by `weight`; returns the rank.
pub fn load_lora<B: Kernels>(model: &mut Flux<B>, config: &FluxConfig, path: &Path, weight: f64, device: &B::Device) -> Result<usize> {
    let ckpt = Checkpoint::open(path)?;
    let view = BflView(&ckpt);
    let rank = model.load_lora(&Vb::new(&view, device, Some(model.dtype())), config, weight)?;
    ckpt.check_all_read()?;
    Ok(rank)
}

struct BflView<'a>(&'a Checkpoint);

impl TensorSource for BflView<'_> {
    fn read(&self, key: &str, shape: &[usize]) -> Result<TensorData> {
        self.0.read(key, shape)
    }
    fn contains(&self, key: &str) -> bool {
        self.0.contains(key)
    }
    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.0.shape(key).map(<[usize]>::to_vec)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// How a BFL tensor is made from diffusers tensors.
enum Recipe {
    /// The same tensor under another name.
    Rename(String),
    /// Row-wise concatenation (fused projections).
    Cat(Vec<String>),
    /// The two halves of a tensor, swapped (diffusers' (scale, shift) → BFL's (shift, scale)).
    SwapHalves(String),
}

struct DiffusersView<'a>(&'a Checkpoint);

impl DiffusersView<'_> {
    fn recipe(key: &str) -> Option<Recipe> {
        let (stem, part) = key.rsplit_once('.')?; // part: weight | bias | scale
        let norm_part = if part == "scale" { "weight" } else { part };
        let rename = |s: &str| Some(Recipe::Rename(format!("{s}.{norm_part}")));
        let fields: Vec<&str> = stem.split('.').collect();
        match fields.as_slice() {
            ["img_in"] => rename("x_embedder"),
            ["txt_in"] => rename("context_embedder"),
            ["time_in", l] => rename(&format!("time_text_embed.timestep_embedder.{}", embedder_layer(l)?)),
            ["vector_in", l] => rename(&format!("time_text_embed.text_embedder.{}", embedder_layer(l)?)),
            ["guidance_in", l] => rename(&format!("time_text_embed.guidance_embedder.{}", embedder_layer(l)?)),
            ["final_layer", "linear"] => rename("proj_out"),
            ["final_layer", "adaLN_modulation", "1"] => Some(Recipe::SwapHalves(format!("norm_out.linear.{part}"))),
            ["double_blocks", i, rest @ ..] => {
                let d = format!("transformer_blocks.{i}");
                match rest {
                    ["img_mod", "lin"] => rename(&format!("{d}.norm1.linear")),
                    ["txt_mod", "lin"] => rename(&format!("{d}.norm1_context.linear")),
                    ["img_attn", "qkv"] => {
                        Some(Recipe::Cat(["to_q", "to_k", "to_v"].iter().map(|p| format!("{d}.attn.{p}.{part}")).collect()))
                    }
                    ["txt_attn", "qkv"] => Some(Recipe::Cat(
                        ["add_q_proj", "add_k_proj", "add_v_proj"].iter().map(|p| format!("{d}.attn.{p}.{part}")).collect(),
                    )),
                    ["img_attn", "proj"] => rename(&format!("{d}.attn.to_out.0")),
                    ["txt_attn", "proj"] => rename(&format!("{d}.attn.to_add_out")),
                    ["img_attn", "norm", "query_norm"] => rename(&format!("{d}.attn.norm_q")),
                    ["img_attn", "norm", "key_norm"] => rename(&format!("{d}.attn.norm_k")),
                    ["txt_attn", "norm", "query_norm"] => rename(&format!("{d}.attn.norm_added_q")),
                    ["txt_attn", "norm", "key_norm"] => rename(&format!("{d}.attn.norm_added_k")),
                    ["img_mlp", "0"] => rename(&format!("{d}.ff.net.0.proj")),
                    ["img_mlp", "2"] => rename(&format!("{d}.ff.net.2")),
                    ["txt_mlp", "0"] => rename(&format!("{d}.ff_context.net.0.proj")),
                    ["txt_mlp", "2"] => rename(&format!("{d}.ff_context.net.2")),
                    _ => None,
                }
            }
            ["single_blocks", i, rest @ ..] => {
                let d = format!("single_transformer_blocks.{i}");
                match rest {
                    ["linear1"] => Some(Recipe::Cat(
                        ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"].iter().map(|p| format!("{d}.{p}.{part}")).collect(),
                    )),
                    ["linear2"] => rename(&format!("{d}.proj_out")),
                    ["modulation", "lin"] => rename(&format!("{d}.norm.linear")),
                    ["norm", "query_norm"] => rename(&format!("{d}.attn.norm_q")),
                    ["norm", "key_norm"] => rename(&format!("{d}.attn.norm_k")),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

fn embedder_layer(bfl: &str) -> Option<&'static str> {
    match bfl {
        "in_layer" => Some("linear_1"),
        "out_layer" => Some("linear_2"),
        _ => None,
    }
}

impl TensorSource for DiffusersView<'_> {
    fn read(&self, key: &str, shape: &[usize]) -> Result<TensorData> {
        let missing =
            || WeightsError::Missing { path: self.0.path().to_path_buf(), key: key.into(), hint: " (no diffusers equivalent)".into() };
        let with_rows = |name: &str| -> Result<TensorData> {
            let found = self.0.shape(name).ok_or_else(|| WeightsError::Missing {
                path: self.0.path().to_path_buf(),
                key: name.into(),
                hint: format!(" (needed for `{key}`)"),
            })?;
            self.0.read(name, found)
        };
        let data = match Self::recipe(key).ok_or_else(missing)? {
            Recipe::Rename(name) => with_rows(&name)?,
            Recipe::Cat(names) => cat_rows(names.iter().map(|n| with_rows(n)).collect::<Result<_>>()?),
            Recipe::SwapHalves(name) => {
                let halves = split_rows(&with_rows(&name)?, 2);
                cat_rows(vec![halves[1].clone(), halves[0].clone()])
            }
        };
        if data.shape.as_slice() != shape {
            return Err(WeightsError::Shape {
                path: self.0.path().to_path_buf(),
                key: key.into(),
                expected: shape.to_vec(),
                found: data.shape.to_vec(),
            });
        }
        Ok(data)
    }

    fn contains(&self, key: &str) -> bool {
        match Self::recipe(key) {
            Some(Recipe::Rename(n) | Recipe::SwapHalves(n)) => self.0.contains(&n),
            Some(Recipe::Cat(ns)) => ns.iter().all(|n| self.0.contains(n)),
            None => false,
        }
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        match Self::recipe(key)? {
            Recipe::Rename(n) | Recipe::SwapHalves(n) => self.0.shape(&n).map(<[usize]>::to_vec),
            Recipe::Cat(ns) => {
                let shapes: Vec<Vec<usize>> = ns.iter().map(|n| self.0.shape(n).map(<[usize]>::to_vec)).collect::<Option<_>>()?;
                let mut s = shapes[0].clone();
                s[0] = shapes.iter().map(|x| x[0]).sum();
                Some(s)
            }
        }
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}
