//! UNO inference end to end (the reference's `inference.py`): prompt and references in, images
//! out.
//!
//! ```text
//!  prompt ─► T5 (512 ids) ─► txt ─┐
//!         └► CLIP-L (77 ids) ─► y ┤   (text encoders dropped once the prompt is encoded)
//!  refs ─► Lanczos long side 512 (1 ref) / 320 (more), centre crop /16, [-1,1] ─► AE mean ─► pack
//!        ─► UnoPE ids ────────────┤
//!  seed ─► noise ─► pack ─► Euler steps of FLUX(img, txt, y, t, guidance, refs) ─► unpack ─► AE decode ─► PNG
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use unoflow_models::Kernels;
use unoflow_models::Precision;
use unoflow_models::clip::{ClipText, ClipTextConfig};
use unoflow_models::flux::autoencoder::{self, AutoEncoder, AutoEncoderConfig};
use unoflow_models::flux::sampling::{ShiftRule, ids_tensor, noise, pack, schedule, unpack};
use unoflow_models::flux::{Flux, FluxCheckpoint, FluxConfig, FluxInput, PeMode, TokenGrid, load_lora, position_ids};
use unoflow_models::t5::{T5Config, T5Encoder};
use unoflow_models::tiny;
use unoflow_models::tokenizer::TextTokenizer;
use unoflow_models::vb::Vb;
use unoflow_models::weights::Checkpoint;

use crate::params::ParamType;
use crate::{OpError, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub prompt: String,
    pub refs: Vec<DynamicImage>,
    /// Multiples of 16 (the caller rounds down, as the reference does).
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// The distilled guidance strength (4.0 for UNO, 3.5 for plain FLUX.1-dev).
    pub guidance: f32,
    /// Image `j` uses seed `seed + j`, as `inference.py` does.
    pub seed: u64,
    pub num_images: usize,
    pub pe: PeMode,
    pub shift: ShiftRule,
    /// The references' long side; `None`: 512 for one reference, 320 for several.
    pub ref_long_side: Option<u32>,
}

fn err(message: impl Into<String>) -> OpError {
    OpError::Execution(message.into())
}

/// A cheap identity of a weight file for provenance: blake3 of its size, header and first and
/// last MiB (hashing 24 GB of FLUX at every start would take longer than generating).
pub fn weights_fingerprint(path: &Path) -> Result<String> {
    let digest = sampled_digest(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(digest.to_hex()[..16].to_string())
}

/// blake3 of a file's size and its first and last MiB: the weights' identity in a generated
/// PNG's provenance chunks, cheap at every model load. (Fingerprints use whole-content digests,
/// cached per host by the engine.)
fn sampled_digest(path: &Path) -> std::io::Result<blake3::Hash> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    file.read_exact(&mut buf)?;
    h.update(&buf);
    if len > (2 << 20) {
        file.seek(std::io::SeekFrom::End(-(1 << 20)))?;
        file.read_exact(&mut buf)?;
        h.update(&buf);
    }
    Ok(h.finalize())
}

/// The models of a UNO pipeline.
#[derive(Debug)]
pub struct Models<B: Backend> {
    pub flux: Flux<B>,
    pub flux_config: FluxConfig,
    pub ae: AutoEncoder<B>,
    t5: Option<(T5Encoder<B>, TextTokenizer)>,
    clip: Option<(ClipText<B>, TextTokenizer)>,
    /// Provenance: model name → weights fingerprint.
    pub digests: BTreeMap<String, String>,
    device: B::Device,
}

impl<B: Kernels> Models<B> {
    /// A tiny random model set (fixed seed): the whole pipeline with no downloads. The sizes are
    /// those of `unoflow model tiny --kind flux-dev` (but for the rope axes, kept as they were so
    /// `--tiny` images keep their bytes).
    pub fn tiny(device: &B::Device) -> Result<Self> {
        B::seed(device, 20_250_402);
        let flux_config = FluxConfig { axes_dim: vec![8, 12, 12], ..tiny::flux_config() };
        let ae_config = tiny::ae_config();
        let t5_config = tiny::t5_config();
        let clip_config = tiny::clip_text_config();
        let random = Vb::<B>::random(device, DType::F32);
        let loaded = |e: unoflow_models::weights::WeightsError| err(e.to_string());
        let models = Self {
            flux: Flux::load(&random, &flux_config).map_err(loaded)?,
            ae: AutoEncoder::load(&random, &ae_config).map_err(loaded)?,
            t5: Some((
                T5Encoder::load(&random, &t5_config).map_err(loaded)?,
                TextTokenizer::t5_from_bytes(tiny::T5_TOKENIZER_JSON).map_err(tokenizer_err)?,
            )),
            clip: Some((
                ClipText::load(&random, &clip_config).map_err(loaded)?,
                TextTokenizer::clip_from_bytes(tiny::CLIP_TOKENIZER_JSON).map_err(tokenizer_err)?,
            )),
            flux_config,
            digests: BTreeMap::from([("models".to_string(), "tiny-random-20250402".to_string())]),
            device: device.clone(),
        };
        Ok(models)
    }

    /// Loads a FLUX.1 model folder as Hugging Face ships it ([`Layout`]): the BFL files at the
    /// root or the diffusers `transformer/` and `vae/`, with the text encoders and tokenizers of
    /// `text_encoder/`, `text_encoder_2/`, `tokenizer/` and `tokenizer_2/`. The sizes come from
    /// the files (config.json, or the tensor shapes of BFL files, which carry no config), so a
    /// tiny rehearsal folder (`unoflow model tiny`) loads as the release does. `lora`: a UNO LoRA
    /// (`dit_lora.safetensors`).
    pub fn load(dir: &Path, lora: Option<&Path>, precision: Precision, device: &B::Device) -> Result<Self> {
        let layout = Layout::detect(dir)?;
        let dtype = Some(precision.dtype());
        let to_err = |e: unoflow_models::weights::WeightsError| err(e.to_string());
        let mut digests = BTreeMap::new();
        let transformer = FluxCheckpoint::open(&layout.transformer).map_err(to_err)?;
        let flux_config = transformer.config().map_err(to_err)?;
        let mut flux = transformer.load::<B>(&flux_config, device, dtype).map_err(to_err)?;
        if layout.transformer.is_file() {
            digests.insert("flux".into(), weights_fingerprint(&layout.transformer)?);
        }
        if let Some(lora) = lora {
            load_lora(&mut flux, &flux_config, lora, 1.0, device).map_err(to_err)?;
            digests.insert("lora".into(), weights_fingerprint(lora)?);
        }
        let ae_config = AutoEncoderConfig::read(&layout.ae).map_err(to_err)?;
        let ae = AutoEncoder::open(&layout.ae, &ae_config, device, dtype).map_err(to_err)?;
        digests.insert("ae".into(), weights_fingerprint(&autoencoder::weights_file(&layout.ae))?);
        let t5 = load_encoder(&layout.t5, device, dtype, |vb, c: &T5Config| T5Encoder::load(vb, c))?;
        let clip = load_encoder(&layout.clip, device, dtype, |vb, c: &ClipTextConfig| ClipText::load_text_model(vb, c))?;
        Ok(Self {
            flux,
            flux_config,
            ae,
            t5: Some((t5, TextTokenizer::t5(&layout.t5_tokenizer.join("tokenizer.json"), 512).map_err(tokenizer_err)?)),
            clip: Some((clip, TextTokenizer::clip_dir(&layout.clip_tokenizer, 77).map_err(tokenizer_err)?)),
            digests,
            device: device.clone(),
        })
    }

    /// The prompt's conditioning: T5 tokens `txt` `[1, L, ctx]` and the pooled CLIP vector
    /// `y` `[1, vec]`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEmbedding<B>> {
        let dropped = || err("the text encoders were dropped (Models::drop_text_encoders) before this prompt");
        let (t5, t5_tok) = self.t5.as_ref().ok_or_else(dropped)?;
        let (clip, clip_tok) = self.clip.as_ref().ok_or_else(dropped)?;
        let txt = t5.forward(&t5_tok.encode(&[prompt]).map_err(tokenizer_err)?);
        let y = clip.forward(&clip_tok.encode(&[prompt]).map_err(tokenizer_err)?).pooler_output;
        Ok(PromptEmbedding { txt, y })
    }

    /// Frees the text encoders (T5-XXL alone is 9 GB in bf16) once every prompt is encoded.
    pub fn drop_text_encoders(&mut self) {
        self.t5 = None;
        self.clip = None;
    }
}

/// A prompt encoded by T5 and CLIP.
#[derive(Debug, Clone)]
pub struct PromptEmbedding<B: Backend> {
    pub txt: Tensor<B, 3>,
    pub y: Tensor<B, 2>,
}

/// A tokenizer failure as an execution error (`OpError` lives in `unoflow-api`, so it cannot
/// have a `From` for a model crate's error here).
fn tokenizer_err(e: unoflow_models::tokenizer::TokenizerError) -> OpError {
    err(e.to_string())
}

fn load_encoder<B: Kernels, C: serde::de::DeserializeOwned, M>(
    dir: &Path,
    device: &B::Device,
    dtype: Option<DType>,
    load: impl FnOnce(&Vb<B>, &C) -> unoflow_models::weights::Result<M>,
) -> Result<M> {
    let config_file = dir.join("config.json");
    let text = std::fs::read(&config_file).map_err(|e| err(format!("{}: {e}", config_file.display())))?;
    let config: C = serde_json::from_slice(&text).map_err(|e| err(format!("{}: {e}", config_file.display())))?;
    let index = dir.join("model.safetensors.index.json");
    let ckpt = if index.is_file() { Checkpoint::open_index(&index) } else { Checkpoint::open(&dir.join("model.safetensors")) }
        .map_err(|e| err(e.to_string()))?;
    let model = load(&Vb::new(&ckpt, device, dtype), &config).map_err(|e| err(e.to_string()))?;
    ckpt.check_all_read().map_err(|e| err(e.to_string()))?;
    Ok(model)
}

/// What a FLUX.1 folder must hold, for messages: the repository as Hugging Face ships it.
const EXPECTED_FOLDER: &str = "expected the BFL layout (flux1-dev.safetensors or flux1-schnell.safetensors, and ae.safetensors) \
    or the diffusers layout (model_index.json, transformer/ with config.json and diffusion_pytorch_model*.safetensors, \
    vae/ with config.json and diffusion_pytorch_model.safetensors), with the text encoders as the release ships them: \
    text_encoder/ (config.json, model.safetensors), text_encoder_2/ (config.json, model.safetensors or \
    model.safetensors.index.json and its shards), tokenizer/ (vocab.json and merges.txt, or tokenizer.json), \
    tokenizer_2/ (tokenizer.json); download the whole repository, e.g. \
    `hf download black-forest-labs/FLUX.1-dev --local-dir DIR`, or rehearse with `unoflow model tiny DIR --kind flux-dev`";

/// Where a FLUX.1 folder keeps each model. Both layouts of the Hugging Face release are read as
/// shipped:
///
/// ```text
/// DIR/flux1-dev.safetensors (or flux1-schnell)  ┐ BFL: the transformer and autoencoder
/// DIR/ae.safetensors                            ┘ (the release root holds both layouts)
/// DIR/model_index.json, transformer/, vae/        diffusers (used when no BFL file is present)
/// DIR/text_encoder/    CLIP-L text (config.json, model.safetensors)
/// DIR/text_encoder_2/  T5-XXL encoder (config.json, model-0000N-of-00002.safetensors + index)
/// DIR/tokenizer/       CLIP's vocab.json + merges.txt (no tokenizer.json in the release)
/// DIR/tokenizer_2/     T5's tokenizer.json (and spiece.model)
/// ```
/// An older hand-assembled form, `t5/` and `clip/` folders each with its `tokenizer.json`,
/// beside the BFL files, is still read.
#[derive(Debug)]
struct Layout {
    transformer: PathBuf,
    /// `ae.safetensors`, or a diffusers `vae/` folder.
    ae: PathBuf,
    t5: PathBuf,
    /// The folder holding T5's `tokenizer.json`.
    t5_tokenizer: PathBuf,
    clip: PathBuf,
    /// The folder holding CLIP's `tokenizer.json`, or `vocab.json` and `merges.txt`.
    clip_tokenizer: PathBuf,
}

impl Layout {
    fn detect(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(err(format!("{}: not a folder; {EXPECTED_FOLDER}", dir.display())));
        }
        let bfl = ["flux1-dev.safetensors", "flux1-schnell.safetensors"].iter().map(|f| dir.join(f)).find(|p| p.is_file());
        let diffusers = dir.join("model_index.json").is_file() || dir.join("transformer").is_dir();
        let (transformer, ae) = match bfl {
            Some(file) => (file, dir.join("ae.safetensors")),
            None if diffusers => {
                let ae = if dir.join("ae.safetensors").is_file() { dir.join("ae.safetensors") } else { dir.join("vae") };
                (dir.to_path_buf(), ae)
            }
            None => return Err(err(format!("{}: no FLUX transformer found; {EXPECTED_FOLDER}", dir.display()))),
        };
        let hand_assembled = !dir.join("text_encoder").is_dir() && dir.join("t5").is_dir() && dir.join("clip").is_dir();
        let layout = if hand_assembled {
            Self {
                transformer,
                ae,
                t5: dir.join("t5"),
                t5_tokenizer: dir.join("t5"),
                clip: dir.join("clip"),
                clip_tokenizer: dir.join("clip"),
            }
        } else {
            Self {
                transformer,
                ae,
                t5: dir.join("text_encoder_2"),
                t5_tokenizer: dir.join("tokenizer_2"),
                clip: dir.join("text_encoder"),
                clip_tokenizer: dir.join("tokenizer"),
            }
        };
        let missing = layout.missing_files();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string()).collect();
            return Err(err(format!("{}: missing {}; {EXPECTED_FOLDER}", dir.display(), names.join(", "))));
        }
        Ok(layout)
    }

    /// The files the loaders open that are not there (the diffusers transformer's own files are
    /// checked when it is opened).
    fn missing_files(&self) -> Vec<PathBuf> {
        let mut missing: Vec<PathBuf> = Vec::new();
        let mut need = |p: PathBuf| {
            if !p.is_file() {
                missing.push(p);
            }
        };
        need(autoencoder::weights_file(&self.ae));
        if self.ae.is_dir() {
            need(self.ae.join("config.json"));
        }
        for encoder in [&self.clip, &self.t5] {
            need(encoder.join("config.json"));
            if !encoder.join("model.safetensors.index.json").is_file() {
                need(encoder.join("model.safetensors"));
            }
        }
        if !self.clip_tokenizer.join("tokenizer.json").is_file() {
            need(self.clip_tokenizer.join("vocab.json"));
            need(self.clip_tokenizer.join("merges.txt"));
        }
        need(self.t5_tokenizer.join("tokenizer.json"));
        missing
    }
}

/// The reference preprocessing of a reference image: Lanczos resize so the long side is
/// `long_side` (short side floored), centre crop to multiples of 16, RGB.
pub fn preprocess_ref(image: &DynamicImage, long_side: u32) -> RgbImage {
    let rgb = image.to_rgb8();
    let (w, h) = rgb.dimensions();
    let (nw, nh) = if w >= h {
        (long_side, (long_side as f64 / w as f64 * h as f64) as u32)
    } else {
        ((long_side as f64 / h as f64 * w as f64) as u32, long_side)
    };
    let resized = image::imageops::resize(&rgb, nw.max(16), nh.max(16), FilterType::Lanczos3);
    let (tw, th) = (resized.width() / 16 * 16, resized.height() / 16 * 16);
    let (left, top) = ((resized.width() - tw) / 2, (resized.height() - th) / 2);
    image::imageops::crop_imm(&resized, left, top, tw, th).to_image()
}

/// An RGB image as `[1, 3, H, W]` in [-1, 1] (the autoencoder's input).
pub(crate) fn to_tensor<B: Backend>(image: &RgbImage, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut data = vec![0f32; 3 * plane];
    for (i, p) in image.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = p[c] as f32 / 127.5 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 3, h as usize, w as usize]), (device, DType::F32))
}

/// `[1, 3, H, W]` in [-1, 1] → RGB, clamped, `uint8(127.5·(x + 1))`.
fn to_image<B: Backend>(x: Tensor<B, 4>) -> RgbImage {
    let [_, _, h, w] = x.dims();
    let data: Vec<f32> = x.cast(DType::F32).clamp(-1.0, 1.0).into_data().iter::<f32>().collect();
    let plane = h * w;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        image::Rgb([0, 1, 2].map(|c| (127.5 * (data[c * plane + i] + 1.0)) as u8))
    })
}

impl GenerateOptions {
    /// The references' long side: as given, else 512 for one reference and 320 for several.
    pub fn ref_long_side(&self) -> u32 {
        self.ref_long_side.unwrap_or(if self.refs.len() <= 1 { 512 } else { 320 })
    }
}

/// The UnoPE ids of a generation: `txt_len` text tokens, the target's grid, and each
/// preprocessed reference's (8× down in the autoencoder, 2×2 per token).
pub fn position_plan(opts: &GenerateOptions, prepared_refs: &[RgbImage], txt_len: usize) -> unoflow_models::flux::PositionIds {
    let target = TokenGrid { rows: opts.height.div_ceil(16), cols: opts.width.div_ceil(16) };
    let grids: Vec<TokenGrid> =
        prepared_refs.iter().map(|r| TokenGrid::of_latent(r.height() as usize / 8, r.width() as usize / 8)).collect();
    position_ids(txt_len, target, &grids, opts.pe)
}

/// Generates `num_images` images for `opts.prompt`, dropping the text encoders as soon as the
/// prompt is encoded; `progress(image, step)` is called after each step, and generation stops
/// with [`OpError::Cancelled`] when it breaks.
pub fn generate<B: Kernels>(
    models: &mut Models<B>,
    opts: &GenerateOptions,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<Vec<RgbImage>> {
    let prompt = models.encode_prompt(&opts.prompt)?;
    models.drop_text_encoders();
    sample(models, &prompt, opts, progress)
}

/// Generates `num_images` images from an encoded prompt (`opts.prompt` is not read), one at a
/// time: image `j` uses seed `opts.seed + j`.
pub fn sample<B: Kernels>(
    models: &Models<B>,
    prompt: &PromptEmbedding<B>,
    opts: &GenerateOptions,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<Vec<RgbImage>> {
    let mut images = Vec::with_capacity(opts.num_images);
    for j in 0..opts.num_images {
        images.extend(sample_batch(models, &[prompt], &[opts.seed + j as u64], opts, &mut |step| progress(j, step))?);
    }
    Ok(images)
}

/// Generates one image per `(prompts[i], seeds[i])` in one batch (the same size, steps,
/// guidance and references for all); `progress(step)` is called after each step, and sampling
/// stops with [`OpError::Cancelled`] when it breaks.
pub fn sample_batch<B: Kernels>(
    models: &Models<B>,
    prompts: &[&PromptEmbedding<B>],
    seeds: &[u64],
    opts: &GenerateOptions,
    progress: &mut dyn FnMut(usize) -> ControlFlow<()>,
) -> Result<Vec<RgbImage>> {
    if !opts.width.is_multiple_of(16) || !opts.height.is_multiple_of(16) || opts.width == 0 || opts.height == 0 {
        return Err(err(format!("width and height must be positive multiples of 16, got {}×{}", opts.width, opts.height)));
    }
    if opts.steps == 0 {
        return Err(err("steps must be at least 1"));
    }
    if prompts.len() != seeds.len() || prompts.is_empty() {
        return Err(OpError::Internal(format!("{} prompts for {} seeds", prompts.len(), seeds.len())));
    }
    let batch = seeds.len();
    let device = models.device.clone();
    let dtype = models.flux.dtype();
    let txt = Tensor::cat(prompts.iter().map(|p| p.txt.clone()).collect(), 0);
    let y = Tensor::cat(prompts.iter().map(|p| p.y.clone()).collect(), 0);

    // References: encoded once, their tokens and UnoPE ids reused at every step.
    let prepared: Vec<RgbImage> = opts.refs.iter().map(|r| preprocess_ref(r, opts.ref_long_side())).collect();
    let ref_tokens: Vec<Tensor<B, 3>> =
        prepared.iter().map(|pre| pack(models.ae.encode(to_tensor::<B>(pre, &device).cast(dtype))).repeat_dim(0, batch)).collect();
    let ids = position_plan(opts, &prepared, txt.dims()[1]);
    let (rows, cols) = (opts.height.div_ceil(16), opts.width.div_ceil(16));
    let timesteps = schedule(opts.steps, opts.shift.seq_len(opts.width, opts.height), true);
    let guidance = models
        .flux_config
        .guidance_embed
        .then(|| Tensor::<B, 1>::from_data(TensorData::new(vec![opts.guidance; batch], [batch]), (&device, DType::F32)));

    let latents: Vec<Tensor<B, 4>> = seeds
        .iter()
        .map(|&seed| {
            let (data, shape) = noise(seed, opts.height, opts.width);
            Tensor::from_data(TensorData::new(data, [1, shape[0], shape[1], shape[2]]), (&device, DType::F32))
        })
        .collect();
    let mut img = pack(Tensor::cat(latents, 0)).cast(dtype);
    for (step, pair) in timesteps.windows(2).enumerate() {
        let (t_curr, t_prev) = (pair[0], pair[1]);
        let input = FluxInput {
            img: img.clone(),
            img_ids: ids_tensor(&ids.target, batch, &device),
            txt: txt.clone(),
            txt_ids: ids_tensor(&ids.txt, batch, &device),
            y: y.clone(),
            timesteps: Tensor::from_data(TensorData::new(vec![t_curr; batch], [batch]), (&device, DType::F32)),
            guidance: guidance.clone(),
            refs: ref_tokens.iter().zip(&ids.refs).map(|(r, i)| (r.clone(), ids_tensor(i, batch, &device))).collect(),
        };
        let pred = models.flux.forward(input).map_err(|e| err(e.to_string()))?;
        img = img + pred * (t_prev - t_curr);
        if progress(step + 1).is_break() {
            return Err(OpError::Cancelled);
        }
    }
    let decoded = models.ae.decode(unpack(img, rows, cols));
    Ok(decoded.chunk(batch, 0).into_iter().map(to_image).collect())
}

/// The UNO pipeline on some backend, with the LoRA it currently carries.
pub trait SubjectGenerator: Send + Sync {
    /// One image per seed from `refs` and `prompt`, with the LoRA `lora` loaded (once).
    fn generate(&self, lora: Option<&str>, opts: &GenerateOptions, seeds: &[u64]) -> Result<Vec<RgbImage>>;
}

crate::choice! {
    /// The UnoPE mode of the `pe` parameter, spelt as DAG files and `unoflow generate --pe` do.
    pub enum Pe {
        /// Both axes (UnoPE).
        Diagonal = "d",
        /// Rows only.
        Height = "h",
        /// Columns only.
        Width = "w",
        /// No offset: references overlap the target's positions.
        None = "o",
    }
}

impl From<Pe> for PeMode {
    fn from(pe: Pe) -> Self {
        match pe {
            Pe::Diagonal => Self::Diagonal,
            Pe::Height => Self::Height,
            Pe::Width => Self::Width,
            Pe::None => Self::None,
        }
    }
}

crate::choice! {
    /// The schedule shift rule of the `shift` parameter.
    pub enum Shift {
        /// From the number of image tokens, as FLUX.
        Flux = "flux",
        /// From the latent area / 256, as UNO's sampler.
        Uno = "uno",
    }
}

impl From<Shift> for ShiftRule {
    fn from(shift: Shift) -> Self {
        match shift {
            Shift::Flux => Self::ImageTokens,
            Shift::Uno => Self::UnoLatentArea,
        }
    }
}

crate::params! {
    /// The sampling parameters of the operators that generate with UNO from references
    /// (`evaluate`, `regenerate_ref`): image size, steps, guidance. Declared once here so both
    /// operators take them alike; their specs follow the operator's own.
    pub struct SamplingParams {
        /// generated width (multiple of 16)
        pub width: usize = optional(ParamType::int(16, 4096), 512),
        /// generated height (multiple of 16)
        pub height: usize = optional(ParamType::int(16, 4096), 512),
        /// sampling steps
        pub steps: usize = optional(ParamType::int(1, 1000), 25),
        /// distilled guidance (UNO: 4)
        pub guidance: f32 = optional(ParamType::float(0.0, 100.0), 4.0),
    }
}

impl SamplingParams {
    /// The options these parameters describe (no prompt, no references yet; UNO's shift rule).
    /// An error names a size that is not a multiple of 16, so validation reports it.
    pub fn options(&self, pe: PeMode) -> Result<GenerateOptions> {
        let size = |name: &str, value: usize| -> Result<usize> {
            if !value.is_multiple_of(16) {
                return Err(OpError::Param { name: name.into(), message: format!("{value} is not a multiple of 16") });
            }
            Ok(value)
        };
        Ok(GenerateOptions {
            prompt: String::new(),
            refs: Vec::new(),
            width: size("width", self.width)?,
            height: size("height", self.height)?,
            steps: self.steps,
            guidance: self.guidance,
            seed: 0,
            num_images: 1,
            pe,
            shift: ShiftRule::UnoLatentArea,
            ref_long_side: None,
        })
    }
}

/// The models, the transformer without LoRA (to attach another LoRA to), and the LoRA file
/// the models carry now.
struct Pipeline<B: Backend> {
    state: Mutex<(Models<B>, Option<String>)>,
    base: Flux<B>,
    device: B::Device,
}

impl<B: Kernels> SubjectGenerator for Pipeline<B>
where
    B::Device: Send + Sync,
{
    fn generate(&self, lora: Option<&str>, opts: &GenerateOptions, seeds: &[u64]) -> Result<Vec<RgbImage>> {
        let mut guard = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.1.as_deref() != lora {
            // Another LoRA: attach it to the base transformer (a cheap clone: tensors are shared).
            let mut flux = self.base.clone();
            if let Some(file) = lora {
                let config = guard.0.flux_config.clone();
                load_lora(&mut flux, &config, Path::new(file), 1.0, &self.device).map_err(|e| err(e.to_string()))?;
            }
            guard.0.flux = flux;
            guard.1 = lora.map(str::to_string);
        }
        let models = &guard.0;
        let prompt = models.encode_prompt(&opts.prompt)?;
        let mut images = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            images.extend(sample(models, &prompt, &GenerateOptions { seed, num_images: 1, ..opts.clone() }, &mut |_, _| {
                ControlFlow::Continue(())
            })?);
        }
        Ok(images)
    }
}

/// The UNO pipeline (tiny random models without `model_dir`) on `env`'s device.
pub fn open_generator(model_dir: Option<&Path>, env: &crate::operator::Environment) -> Result<Box<dyn SubjectGenerator>> {
    crate::embed::on_device!(env.device, |device: B| {
        let precision = if matches!(env.device, unoflow_models::Device::Cpu) { Precision::F32 } else { Precision::Bf16 };
        let models = match model_dir {
            None => Models::<B>::tiny(&device)?,
            Some(dir) => Models::<B>::load(dir, None, precision, &device)?,
        };
        Ok(Box::new(Pipeline::<B> { base: models.flux.clone(), state: Mutex::new((models, None)), device }) as Box<dyn SubjectGenerator>)
    })
}

/// PNG bytes with `tEXt` chunks (generation parameters, model fingerprints).
pub fn png_with_text(image: &RgbImage, text: &[(String, String)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            encoder.add_text_chunk(k.clone(), v.clone()).map_err(|e| err(format!("PNG text chunk {k}: {e}")))?;
        }
        let mut writer = encoder.write_header().map_err(|e| err(format!("PNG: {e}")))?;
        writer.write_image_data(image.as_raw()).map_err(|e| err(format!("PNG: {e}")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(refs: Vec<DynamicImage>) -> GenerateOptions {
        GenerateOptions {
            prompt: "p".into(),
            refs,
            width: 512,
            height: 512,
            steps: 1,
            guidance: 4.0,
            seed: 0,
            num_images: 1,
            pe: PeMode::Diagonal,
            shift: ShiftRule::UnoLatentArea,
            ref_long_side: None,
        }
    }

    #[test]
    fn pe_words_mean_what_the_model_crate_reads_them_as() {
        use crate::params::Choice;
        for word in Pe::NAMES {
            let pe: Pe = word.parse().unwrap();
            assert_eq!(PeMode::from(pe), word.parse::<PeMode>().unwrap(), "{word}");
        }
    }

    #[test]
    fn references_are_resized_and_cropped_like_the_reference() {
        let img = DynamicImage::new_rgb8(600, 400);
        let r = preprocess_ref(&img, 512);
        // 512 × int(512/600·400) = 512 × 341 → centre crop to multiples of 16: 512 × 336.
        assert_eq!(r.dimensions(), (512, 336));
        assert_eq!(preprocess_ref(&DynamicImage::new_rgb8(300, 500), 320).dimensions(), (192, 320));
    }

    #[test]
    fn unope_ids_through_the_pipeline() {
        // One 512² reference: rows/cols 32..63 after a 512² target.
        let one = options(vec![DynamicImage::new_rgb8(512, 512)]);
        let prepared: Vec<RgbImage> = one.refs.iter().map(|r| preprocess_ref(r, one.ref_long_side())).collect();
        let ids = position_plan(&one, &prepared, 512);
        assert_eq!(ids.target.len(), 1024);
        assert_eq!((ids.refs[0].first().unwrap()[1], ids.refs[0].last().unwrap()[1]), (32.0, 63.0));
        // Two references of different sizes, at 320: 320×213→320×208 (20×13 tokens) and
        // 192×320 (12×20 tokens), chained on both axes.
        let two = options(vec![DynamicImage::new_rgb8(600, 400), DynamicImage::new_rgb8(300, 500)]);
        let prepared: Vec<RgbImage> = two.refs.iter().map(|r| preprocess_ref(r, two.ref_long_side())).collect();
        assert_eq!(prepared[0].dimensions(), (320, 208));
        let ids = position_plan(&two, &prepared, 512);
        let (first, last) = (ids.refs[0][0], *ids.refs[0].last().unwrap());
        assert_eq!((first[1], first[2], last[1], last[2]), (32.0, 32.0, 44.0, 51.0));
        let (first, last) = (ids.refs[1][0], *ids.refs[1].last().unwrap());
        assert_eq!((first[1], first[2], last[1], last[2]), (45.0, 52.0, 64.0, 63.0));
    }
}
