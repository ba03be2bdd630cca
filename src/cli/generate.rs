//! `unoflow generate`: one-shot UNO inference from the command line.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use unoflow_models::{Device, Precision};
use unoflow_operators::generate::{GenerateOptions, Models, generate, png_with_text};

use super::GenerateArgs;
use crate::error::{Error, IoContext, Result};
use crate::interrupt::Interrupt;

/// Reads a reference image of at most `max_pixels`; a missing or undecodable file is a usage
/// error naming it.
fn read_ref(path: &Path, max_pixels: u64) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::Usage(format!("cannot read reference image {}: {e}", path.display())))?;
    unoflow_operators::image_io::decode(&bytes, max_pixels).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

fn round_down_16(name: &str, value: u32) -> Result<usize> {
    let value = value as usize;
    let rounded = value / 16 * 16;
    if rounded == 0 {
        return Err(Error::Usage(format!("--{name} {value} is below 16 pixels")));
    }
    if rounded != value {
        eprintln!("warning: --{name} {value} is not a multiple of 16; using {rounded}");
    }
    Ok(rounded)
}

/// The file for image `j` of `n`.
fn output_path(out: &Path, j: usize, n: usize) -> PathBuf {
    if n == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    out.with_file_name(format!("{stem}_{j}.png"))
}

pub async fn run(args: GenerateArgs, interrupt: Interrupt) -> Result<i32> {
    let options = GenerateOptions {
        prompt: args.prompt.clone(),
        refs: args.refs.iter().map(|p| read_ref(p, args.max_image_pixels)).collect::<Result<_>>()?,
        width: round_down_16("width", args.width)?,
        height: round_down_16("height", args.height)?,
        steps: args.steps as usize,
        guidance: args.guidance,
        seed: args.seed,
        num_images: args.num_images as usize,
        pe: args.pe.into(),
        shift: args.shift.into(),
        ref_long_side: (args.ref_size > 0).then_some(args.ref_size),
    };
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(Error::Usage(format!("--out {}: the folder {} does not exist", args.out.display(), parent.display())));
    }
    // Models compute on the blocking pool; CPU inference runs f32, CUDA bf16 (as the reference).
    tokio::task::spawn_blocking(move || match args.device {
        Device::Cpu => run_on::<unoflow_models::device::CpuBackend>(&args, &options, Default::default(), Precision::F32, &interrupt),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => run_on::<unoflow_models::device::CudaBackend>(
            &args,
            &options,
            unoflow_models::device::cuda_device(n),
            Precision::Bf16,
            &interrupt,
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(Error::Usage(unoflow_models::DeviceError::CudaNotBuilt(args.device).to_string())),
    })
    .await
    .map_err(|e| Error::Internal(format!("generation panicked: {e}")))?
}

fn run_on<B: unoflow_models::Kernels>(
    args: &GenerateArgs,
    options: &GenerateOptions,
    device: B::Device,
    precision: Precision,
    interrupt: &Interrupt,
) -> Result<i32> {
    let mut models = match (&args.model_dir, args.tiny) {
        // A folder that is not a model folder, or is missing files, is the user's to fix.
        (Some(dir), _) => Models::<B>::load(dir, args.lora.as_deref(), precision, &device).map_err(|e| Error::Usage(e.to_string()))?,
        (None, _) => {
            if args.lora.is_some() {
                return Err(Error::Usage("--lora needs --model-dir (the tiny models have no LoRA layout to match)".into()));
            }
            Models::<B>::tiny(&device)?
        }
    };
    let total = (options.steps * options.num_images) as u64;
    let bar =
        ProgressBar::with_draw_target(Some(total), if args.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() });
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] step {pos}/{len}  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("generating");
    let mut progress = |_, _| {
        bar.inc(1);
        if interrupt.stop_requested() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    };
    let images = match generate(&mut models, options, &mut progress) {
        Err(unoflow_api::OpError::Cancelled) => return Err(Error::Interrupted("no image was written".into())),
        other => other?,
    };
    bar.finish_and_clear();
    let parameters = serde_json::json!({
        "prompt": options.prompt,
        "refs": args.refs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "width": options.width,
        "height": options.height,
        "steps": options.steps,
        "guidance": options.guidance,
        "pe": options.pe.to_string(),
        "shift": args.shift.to_string(),
        "models": models.digests,
        "unoflow": env!("CARGO_PKG_VERSION"),
    });
    for (j, image) in images.iter().enumerate() {
        let mut meta = parameters.clone();
        meta["seed"] = serde_json::json!(options.seed + j as u64);
        let png = png_with_text(image, &[("parameters".to_string(), meta.to_string()), ("Software".to_string(), "unoflow".to_string())])?;
        let path = output_path(&args.out, j, images.len());
        std::fs::write(&path, png).map_err(|e| Error::io(&path, e))?;
        writeln!(super::output::stdout(), "{}", path.display()).at(super::output::STDOUT)?;
    }
    Ok(0)
}
