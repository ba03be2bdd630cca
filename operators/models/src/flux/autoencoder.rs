//! The FLUX autoencoder: images ↔ 16-channel latents at 1/8 resolution.
//!
//! Reference: black-forest-labs/flux `src/flux/modules/autoencoder.py` at 802fb47 (and UNO's
//! copy). Keys as `ae.safetensors` stores them (`encoder.down.0.block.1.norm1.weight`,
//! `decoder.up.3.upsample.conv.weight`, `encoder.mid.attn_1.q.weight`, …). Encoding returns the
//! distribution's mean, shifted and scaled (UNO samples by default; the mean is the
//! deterministic choice, and the std is tiny).
//!
//! Memory: activations are the reference's; the mid-block attention, the only quadratic part,
//! keeps its scores under `nn::SCORE_BYTES` (256 MB) by processing queries in blocks, so a
//! 1024² image decodes with a working set of 3.6 GiB on the CPU in f32 (measured by
//! `benches/ae_decode_cpu.rs`; the bound is the full-resolution 128-channel activations of the
//! last up level, 512 MiB each, not the attention).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::kernels::Kernels;
use crate::nn::{Conv2d, GroupNorm, scaled_dot_product};
use crate::vb::{TensorSource, Vb};
use crate::weights::{Checkpoint, Result, WeightsError};

/// `AutoEncoderParams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoEncoderConfig {
    pub resolution: usize,
    pub in_channels: usize,
    pub ch: usize,
    pub out_ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    pub scale_factor: f64,
    pub shift_factor: f64,
}

impl AutoEncoderConfig {
    /// FLUX.1's autoencoder (`ae.safetensors`, same for dev and schnell).
    pub fn flux() -> Self {
        Self {
            resolution: 256,
            in_channels: 3,
            ch: 128,
            out_ch: 3,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 16,
            scale_factor: 0.3611,
            shift_factor: 0.1159,
        }
    }
}

impl AutoEncoderConfig {
    /// The hyper-parameters of the autoencoder at `path`: a diffusers `vae/` folder's
    /// `config.json` (`block_out_channels`, `layers_per_block`, `latent_channels`,
    /// `scaling_factor`, `shift_factor`), or, for BFL's `ae.safetensors`, which carries no
    /// config, the tensor shapes (FLUX.1's scale and shift: the latent statistics of its training
    /// images, not in the weights).
    pub fn read(path: &std::path::Path) -> Result<Self> {
        if path.is_dir() {
            return Self::from_diffusers_config(&path.join("config.json"));
        }
        let file = crate::weights::SafetensorsFile::open(path)?;
        let shape = |key: &str| {
            file.shape(key).ok_or_else(|| WeightsError::Missing {
                path: path.to_path_buf(),
                key: key.into(),
                hint: " (needed to read the autoencoder's sizes: is this FLUX's ae.safetensors?)".into(),
            })
        };
        let conv_in = shape("encoder.conv_in.weight")?;
        let ch = conv_in[0];
        let levels = (0..).take_while(|i| file.shape(&format!("encoder.down.{i}.block.0.conv1.weight")).is_some()).count();
        let ch_mult = (0..levels)
            .map(|i| shape(&format!("encoder.down.{i}.block.0.conv1.weight")).map(|s| s[0] / ch.max(1)))
            .collect::<Result<_>>()?;
        Ok(Self {
            in_channels: conv_in[1],
            ch,
            out_ch: shape("decoder.conv_out.weight")?[0],
            ch_mult,
            num_res_blocks: (0..).take_while(|j| file.shape(&format!("encoder.down.0.block.{j}.conv1.weight")).is_some()).count(),
            z_channels: shape("decoder.conv_in.weight")?[1],
            ..Self::flux()
        })
    }

    fn from_diffusers_config(config: &std::path::Path) -> Result<Self> {
        let format = |message: String| WeightsError::Format { path: config.to_path_buf(), message };
        let text = std::fs::read(config).map_err(|source| WeightsError::Io { path: config.to_path_buf(), source })?;
        let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format(format!("not JSON ({e})")))?;
        let size = |key: &str| json[key].as_u64().map(|v| v as usize).ok_or_else(|| format(format!("no `{key}`")));
        let widths: Vec<usize> =
            serde_json::from_value(json["block_out_channels"].clone()).map_err(|e| format(format!("`block_out_channels`: {e}")))?;
        let ch = *widths.first().ok_or_else(|| format("`block_out_channels` is empty".into()))?;
        let flux = Self::flux();
        Ok(Self {
            in_channels: size("in_channels")?,
            ch,
            out_ch: size("out_channels")?,
            ch_mult: widths.iter().map(|w| w / ch.max(1)).collect(),
            num_res_blocks: size("layers_per_block")?,
            z_channels: size("latent_channels")?,
            scale_factor: json["scaling_factor"].as_f64().unwrap_or(flux.scale_factor),
            shift_factor: json["shift_factor"].as_f64().unwrap_or(flux.shift_factor),
            ..flux
        })
    }
}

const GROUPS: usize = 32;
const EPS: f64 = 1e-6;

/// Two GroupNorm → SiLU → conv layers with a residual (1×1 shortcut when widths differ).
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    pub nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Kernels> ResnetBlock<B> {
    fn load(vb: &Vb<B>, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), GROUPS, c_in, EPS)?,
            conv1: Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, 1, true)?,
            norm2: GroupNorm::load(&vb.pp("norm2"), GROUPS, c_out, EPS)?,
            conv2: Conv2d::load(&vb.pp("conv2"), c_out, c_out, 3, 1, 1, true)?,
            nin_shortcut: if c_in != c_out { Some(Conv2d::load(&vb.pp("nin_shortcut"), c_in, c_out, 1, 1, 0, true)?) } else { None },
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        let h = self.conv2.forward(self.norm2.forward_silu(h));
        let x = match &self.nin_shortcut {
            Some(s) => s.forward(x),
            None => x,
        };
        x + h
    }
}

/// Single-head self-attention over all positions.
#[derive(Module, Debug)]
pub struct AttnBlock<B: Backend> {
    pub norm: GroupNorm<B>,
    pub q: Conv2d<B>,
    pub k: Conv2d<B>,
    pub v: Conv2d<B>,
    pub proj_out: Conv2d<B>,
}

impl<B: Kernels> AttnBlock<B> {
    fn load(vb: &Vb<B>, c: usize) -> Result<Self> {
        let conv = |name: &str| Conv2d::load(&vb.pp(name), c, c, 1, 1, 0, true);
        Ok(Self {
            norm: GroupNorm::load(&vb.pp("norm"), GROUPS, c, EPS)?,
            q: conv("q")?,
            k: conv("k")?,
            v: conv("v")?,
            proj_out: conv("proj_out")?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        let tokens = |t: Tensor<B, 4>| t.reshape([b, c, h * w]).swap_dims(1, 2).reshape([b, 1, h * w, c]); // "b c h w -> b 1 (h w) c"
        let (q, k, v) = (tokens(self.q.forward(n.clone())), tokens(self.k.forward(n.clone())), tokens(self.v.forward(n)));
        let a = scaled_dot_product(q, k, v).reshape([b, h * w, c]).swap_dims(1, 2).reshape([b, c, h, w]);
        x + self.proj_out.forward(a)
    }
}

/// `block_1 → attn_1 → block_2` at the lowest resolution.
#[derive(Module, Debug)]
pub struct Mid<B: Backend> {
    pub block_1: ResnetBlock<B>,
    pub attn_1: AttnBlock<B>,
    pub block_2: ResnetBlock<B>,
}

impl<B: Kernels> Mid<B> {
    fn load(vb: &Vb<B>, c: usize) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::load(&vb.pp("block_1"), c, c)?,
            attn_1: AttnBlock::load(&vb.pp("attn_1"), c)?,
            block_2: ResnetBlock::load(&vb.pp("block_2"), c, c)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.block_2.forward(self.attn_1.forward(self.block_1.forward(x)))
    }
}

/// One resolution level: resnet blocks, then a resampling conv (all levels but the last/first).
#[derive(Module, Debug)]
pub struct Level<B: Backend> {
    pub block: Vec<ResnetBlock<B>>,
    /// `downsample.conv` (encoder) or `upsample.conv` (decoder).
    pub resample: Option<Conv2d<B>>,
}

/// Image `[B, 3, H, W]` in [-1, 1] → `[B, 2·z, H/8, W/8]` (mean and log-variance).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub down: Vec<Level<B>>,
    pub mid: Mid<B>,
    pub norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Kernels> Encoder<B> {
    fn load(vb: &Vb<B>, c: &AutoEncoderConfig) -> Result<Self> {
        let mut block_in = c.ch;
        let mut down = Vec::new();
        let levels = c.ch_mult.len();
        for (i, mult) in c.ch_mult.iter().enumerate() {
            let block_out = c.ch * mult;
            let lv = vb.pp("down").pp(i);
            let mut blocks = Vec::new();
            for j in 0..c.num_res_blocks {
                blocks.push(ResnetBlock::load(&lv.pp("block").pp(j), block_in, block_out)?);
                block_in = block_out;
            }
            let resample = if i + 1 != levels {
                Some(Conv2d::load(&lv.pp("downsample").pp("conv"), block_in, block_in, 3, 2, 0, true)?.with_trailing_pad(1))
            } else {
                None
            };
            down.push(Level { block: blocks, resample });
        }
        Ok(Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), c.in_channels, c.ch, 3, 1, 1, true)?,
            down,
            mid: Mid::load(&vb.pp("mid"), block_in)?,
            norm_out: GroupNorm::load(&vb.pp("norm_out"), GROUPS, block_in, EPS)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), block_in, 2 * c.z_channels, 3, 1, 1, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.conv_in.forward(x);
        for level in &self.down {
            for block in &level.block {
                h = block.forward(h);
            }
            if let Some(conv) = &level.resample {
                h = conv.forward(h);
            }
        }
        self.conv_out.forward(self.norm_out.forward_silu(self.mid.forward(h)))
    }
}

/// Nearest-neighbour ×2 upsampling (each value copied into a 2×2 block).
fn upsample_nearest<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b as i64, c as i64, h as i64, 2, w as i64, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// Latent `[B, z, h, w]` → image `[B, 3, 8h, 8w]`.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid: Mid<B>,
    /// Indexed by resolution level as the checkpoint stores them; run from the last level.
    pub up: Vec<Level<B>>,
    pub norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Kernels> Decoder<B> {
    fn load(vb: &Vb<B>, c: &AutoEncoderConfig) -> Result<Self> {
        let levels = c.ch_mult.len();
        let mut block_in = c.ch * c.ch_mult[levels - 1];
        let conv_in = Conv2d::load(&vb.pp("conv_in"), c.z_channels, block_in, 3, 1, 1, true)?;
        let mid = Mid::load(&vb.pp("mid"), block_in)?;
        let mut up: Vec<Option<Level<B>>> = (0..levels).map(|_| None).collect();
        for i in (0..levels).rev() {
            let block_out = c.ch * c.ch_mult[i];
            let lv = vb.pp("up").pp(i);
            let mut blocks = Vec::new();
            for j in 0..=c.num_res_blocks {
                blocks.push(ResnetBlock::load(&lv.pp("block").pp(j), block_in, block_out)?);
                block_in = block_out;
            }
            let resample =
                if i != 0 { Some(Conv2d::load(&lv.pp("upsample").pp("conv"), block_in, block_in, 3, 1, 1, true)?) } else { None };
            up[i] = Some(Level { block: blocks, resample });
        }
        Ok(Self {
            conv_in,
            mid,
            up: up.into_iter().flatten().collect(),
            norm_out: GroupNorm::load(&vb.pp("norm_out"), GROUPS, block_in, EPS)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), block_in, c.out_ch, 3, 1, 1, true)?,
        })
    }

    fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = self.mid.forward(self.conv_in.forward(z));
        for level in self.up.iter().rev() {
            for block in &level.block {
                h = block.forward(h);
            }
            if let Some(conv) = &level.resample {
                h = conv.forward(upsample_nearest(h));
            }
        }
        self.conv_out.forward(self.norm_out.forward_silu(h))
    }
}

/// The autoencoder.
#[derive(Module, Debug)]
pub struct AutoEncoder<B: Backend> {
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    scale_factor: f64,
    shift_factor: f64,
    z_channels: usize,
}

impl<B: Kernels> AutoEncoder<B> {
    pub fn load(vb: &Vb<B>, c: &AutoEncoderConfig) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::load(&vb.pp("encoder"), c)?,
            decoder: Decoder::load(&vb.pp("decoder"), c)?,
            scale_factor: c.scale_factor,
            shift_factor: c.shift_factor,
            z_channels: c.z_channels,
        })
    }

    /// Images in [-1, 1] → latents `(mean − shift) · scale`.
    pub fn encode(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let moments = self.encoder.forward(x);
        let mean = moments.narrow(1, 0, self.z_channels);
        (mean - self.shift_factor) * self.scale_factor
    }

    /// Latents → images (not clamped).
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        self.decoder.forward(z / self.scale_factor + self.shift_factor)
    }
}

impl<B: Kernels> AutoEncoder<B> {
    /// Loads `ae.safetensors` (BFL layout) or a diffusers `vae/` folder
    /// (`diffusion_pytorch_model.safetensors`), checking every tensor is used.
    pub fn open(path: &std::path::Path, c: &AutoEncoderConfig, device: &B::Device, dtype: Option<burn::tensor::DType>) -> Result<Self> {
        let ckpt = Checkpoint::open(&weights_file(path))?;
        // A folder is diffusers' `vae/`; a file is either layout, told apart by its keys.
        let diffusers = path.is_dir() || ckpt.keys().any(|k| k.starts_with("encoder.down_blocks."));
        let model = if diffusers {
            let view = DiffusersAutoEncoder { checkpoint: &ckpt, levels: c.ch_mult.len() };
            Self::load(&Vb::new(&view, device, dtype), c)?
        } else {
            Self::load(&Vb::new(&ckpt, device, dtype), c)?
        };
        ckpt.check_all_read()?;
        Ok(model)
    }
}

/// The safetensors file behind an autoencoder path: the path itself, or
/// `diffusion_pytorch_model.safetensors` inside a diffusers `vae/` folder.
pub fn weights_file(path: &std::path::Path) -> std::path::PathBuf {
    if path.is_dir() { path.join("diffusion_pytorch_model.safetensors") } else { path.to_path_buf() }
}

/// A diffusers `AutoencoderKL` checkpoint (`vae/diffusion_pytorch_model.safetensors`) read
/// through BFL key names: `down.N.block.M` ← `down_blocks.N.resnets.M`, `up.N` ←
/// `up_blocks.(levels − 1 − N)`, `mid.attn_1.q` ← `mid_block.attentions.0.to_q` (a linear
/// weight `[c, c]` read as a 1×1 convolution `[c, c, 1, 1]`), and so on.
#[derive(Debug)]
pub struct DiffusersAutoEncoder<'a> {
    pub checkpoint: &'a Checkpoint,
    pub levels: usize,
}

impl DiffusersAutoEncoder<'_> {
    fn translate(&self, key: &str) -> Option<String> {
        diffusers_name(key, self.levels)
    }
}

/// The diffusers `AutoencoderKL` name of the BFL key `key` in an autoencoder of `levels`
/// resolution levels (diffusers numbers the decoder's levels from the bottom).
pub fn diffusers_name(key: &str, levels: usize) -> Option<String> {
    let (stem, part) = key.rsplit_once('.')?;
    let f: Vec<&str> = stem.split('.').collect();
    let mapped = match f.as_slice() {
        [side, "conv_in"] | [side, "conv_out"] => format!("{side}.{}", f[1]),
        [side, "norm_out"] => format!("{side}.conv_norm_out"),
        ["encoder", "down", i, "block", j, rest @ ..] => format!("encoder.down_blocks.{i}.resnets.{j}.{}", resnet_part(rest)?),
        ["encoder", "down", i, "downsample", "conv"] => format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
        ["decoder", "up", i, "block", j, rest @ ..] => {
            let k = levels - 1 - i.parse::<usize>().ok()?;
            format!("decoder.up_blocks.{k}.resnets.{j}.{}", resnet_part(rest)?)
        }
        ["decoder", "up", i, "upsample", "conv"] => {
            let k = levels - 1 - i.parse::<usize>().ok()?;
            format!("decoder.up_blocks.{k}.upsamplers.0.conv")
        }
        [side, "mid", block @ ("block_1" | "block_2"), rest @ ..] => {
            let n = if *block == "block_1" { 0 } else { 1 };
            format!("{side}.mid_block.resnets.{n}.{}", resnet_part(rest)?)
        }
        [side, "mid", "attn_1", layer] => {
            let name = match *layer {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                _ => return None,
            };
            format!("{side}.mid_block.attentions.0.{name}")
        }
        _ => return None,
    };
    Some(format!("{mapped}.{part}"))
}

fn resnet_part(rest: &[&str]) -> Option<&'static str> {
    Some(match rest {
        ["norm1"] => "norm1",
        ["conv1"] => "conv1",
        ["norm2"] => "norm2",
        ["conv2"] => "conv2",
        ["nin_shortcut"] => "conv_shortcut",
        _ => return None,
    })
}

impl TensorSource for DiffusersAutoEncoder<'_> {
    fn read(&self, key: &str, shape: &[usize]) -> Result<burn::tensor::TensorData> {
        let missing = || WeightsError::Missing {
            path: self.checkpoint.path().to_path_buf(),
            key: key.into(),
            hint: " (no diffusers equivalent)".into(),
        };
        let name = self.translate(key).ok_or_else(missing)?;
        let found = self.checkpoint.shape(&name).ok_or_else(missing)?.to_vec();
        let data = self.checkpoint.read(&name, &found)?;
        // Attention projections are linear layers in diffusers, 1×1 convolutions in BFL.
        if found.iter().product::<usize>() == shape.iter().product::<usize>() && found != shape {
            return Ok(burn::tensor::TensorData::from_bytes_vec(data.as_bytes().to_vec(), shape.to_vec(), data.dtype));
        }
        Ok(data)
    }

    fn contains(&self, key: &str) -> bool {
        self.translate(key).is_some_and(|k| self.checkpoint.contains(&k))
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.checkpoint.shape(&self.translate(key)?).map(<[usize]>::to_vec)
    }

    fn path(&self) -> &std::path::Path {
        self.checkpoint.path()
    }
}
