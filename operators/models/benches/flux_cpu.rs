//! One FLUX forward on the CPU: unoflow (burn, Flex backend) against PyTorch (diffusers) with
//! the same configuration and thread count, in the same run.
//!
//! ```sh
//! cargo bench -p unoflow-models --profile dev --bench flux_cpu
//! ```
//!
//! Configuration (issue: Models I): hidden 256, 4 heads, 4 double + 4 single blocks, 256 text +
//! 1024 target + 1024 reference tokens, f32, 2 threads. PyTorch runs through the Python of
//! `UNOFLOW_REFENV_PYTHON` (default: the environment `../shared/tools/refenv.sh` makes); without
//! it the baseline is reported as skipped.

use std::process::Command;
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use unoflow_models::flux::{Flux, FluxConfig, FluxInput, PeMode, TokenGrid, position_ids};

/// The allocator of the `unoflow` binary, so the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: unoflow_models::allocator::Allocator = unoflow_models::allocator::Allocator;

const REPEATS: usize = 5;
const THREADS: usize = 2;

fn config() -> FluxConfig {
    FluxConfig {
        in_channels: 64,
        vec_in_dim: 768,
        context_in_dim: 4096,
        hidden_size: 256,
        mlp_ratio: 4.0,
        num_heads: 4,
        depth: 4,
        depth_single_blocks: 4,
        axes_dim: vec![16, 24, 24],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

fn ids<B: Backend>(ids: &[[f32; 3]], device: &B::Device) -> Tensor<B, 3> {
    let flat: Vec<f32> = ids.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [1, ids.len(), 3]), (device, DType::F32))
}

fn burn_forward() -> (f64, Vec<f64>) {
    let device = Default::default();
    Flex::seed(&device, 0);
    let config = config();
    let model = Flux::<Flex>::random(&config, &device, DType::F32);
    let grid = TokenGrid { rows: 32, cols: 32 };
    let pos = position_ids(256, grid, &[grid], PeMode::Diagonal);
    let normal = |shape: [usize; 3]| Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let input = FluxInput {
        img: normal([1, 1024, 64]),
        img_ids: ids(&pos.target, &device),
        txt: normal([1, 256, 4096]),
        txt_ids: ids(&pos.txt, &device),
        y: Tensor::random([1, 768], Distribution::Normal(0.0, 1.0), &device),
        timesteps: Tensor::from_data(TensorData::new(vec![0.5f32], [1]), &device),
        guidance: Some(Tensor::from_data(TensorData::new(vec![4.0f32], [1]), &device)),
        refs: vec![(normal([1, 1024, 64]), ids(&pos.refs[0], &device))],
    };
    let run = || {
        let started = Instant::now();
        let out = model.forward(input.clone()).expect("valid input");
        let _ = out.into_data(); // wait for the result
        started.elapsed().as_secs_f64()
    };
    run();
    let mut times: Vec<f64> = (0..REPEATS).map(|_| run()).collect();
    let sorted = {
        times.sort_by(f64::total_cmp);
        times.clone()
    };
    (sorted[REPEATS / 2], times)
}

fn torch_forward() -> Result<f64, String> {
    let python = std::env::var("UNOFLOW_REFENV_PYTHON")
        .unwrap_or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cache/unoflow-refenv/bin/python")).unwrap_or_default());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench/flux_forward.py");
    let out = Command::new(&python)
        .args([script, "--threads", &THREADS.to_string(), "--repeats", &REPEATS.to_string()])
        .output()
        .map_err(|e| format!("cannot run {python}: {e} (set UNOFLOW_REFENV_PYTHON)"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_string());
    }
    let json: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).map_err(|e| e.to_string())?;
    json["median_s"].as_f64().ok_or_else(|| "no median_s".into())
}

fn main() {
    unoflow_models::allocator::keep_freed_memory();
    // Both sides get the same number of threads: rayon's pool for burn, torch.set_num_threads.
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        rayon_threads(THREADS);
    }
    println!("FLUX forward, CPU, f32: hidden 256, 4 heads, 4+4 blocks, 256 txt + 1024 target + 1024 ref tokens, {THREADS} threads");
    let (burn, times) = burn_forward();
    println!("unoflow (burn Flex)  median {burn:.3} s  (runs: {})", times.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(", "));
    match torch_forward() {
        Ok(torch) => {
            println!("PyTorch (diffusers)  median {torch:.3} s");
            println!("ratio unoflow / PyTorch = {:.2} (below 1 is faster)", burn / torch);
        }
        Err(why) => println!("PyTorch baseline skipped: {why}"),
    }
}

fn rayon_threads(n: usize) {
    // SAFETY-free: set before any rayon use, read once by rayon's global pool.
    // (std::env::set_var is unsafe in edition 2024, so configure the pool directly.)
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
}
