//! DINOv2 ViT-S/14 embeddings per second on the CPU at 224²: unoflow (burn Flex) against
//! PyTorch (transformers `Dinov2Model`), same threads, same run.
//!
//! ```sh
//! cargo bench -p unoflow-models --profile dev --bench dinov2_cpu
//! ```
//!
//! Random ViT-S/14 weights (the architecture, not the values, sets the speed). PyTorch runs
//! through `UNOFLOW_REFENV_PYTHON` (default: the refenv of `../shared/tools/refenv.sh`).

use std::process::Command;
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use unoflow_models::dinov2::{Dinov2, Dinov2Config};
use unoflow_models::vb::Vb;

/// The allocator of the `unoflow` binary, so the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: unoflow_models::allocator::Allocator = unoflow_models::allocator::Allocator;

const BATCH: usize = 8;
const THREADS: usize = 2;
const REPEATS: usize = 5;

fn main() {
    unoflow_models::allocator::keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global();
    let device = Default::default();
    Flex::seed(&device, 0);
    let model = Dinov2::<Flex>::load(&Vb::random(&device, DType::F32), &Dinov2Config::small()).expect("random weights");
    let x = Tensor::<Flex, 4>::random([BATCH, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let run = || {
        let started = Instant::now();
        let _ = model.forward(x.clone()).pooler_output.into_data();
        started.elapsed().as_secs_f64()
    };
    run();
    let mut times: Vec<f64> = (0..REPEATS).map(|_| run()).collect();
    times.sort_by(f64::total_cmp);
    let ours = BATCH as f64 / times[REPEATS / 2];
    println!("DINOv2 ViT-S/14, 224², batch {BATCH}, f32, {THREADS} threads");
    println!("unoflow (burn Flex)   {ours:.1} images/s");

    let python = std::env::var("UNOFLOW_REFENV_PYTHON")
        .unwrap_or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cache/unoflow-refenv/bin/python")).unwrap_or_default());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench/dinov2_forward.py");
    let out = Command::new(&python).args([script, "--batch", &BATCH.to_string(), "--threads", &THREADS.to_string()]).output();
    match out {
        Ok(out) if out.status.success() => {
            let json: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("JSON from the script");
            let theirs = json["images_per_s"].as_f64().expect("images_per_s");
            println!("PyTorch (transformers) {theirs:.1} images/s");
            println!("ratio unoflow / PyTorch throughput = {:.2} (above 1 is faster)", ours / theirs);
        }
        Ok(out) => println!("PyTorch baseline skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed")),
        Err(e) => println!("PyTorch baseline skipped: cannot run {python}: {e} (set UNOFLOW_REFENV_PYTHON)"),
    }
}
