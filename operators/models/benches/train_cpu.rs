//! One UNO LoRA training step on the CPU (forward + backward + clipping + AdamW): unoflow (burn
//! Flex + Autodiff) against the UNO reference in PyTorch, same configuration and threads, same
//! run; peak resident memory of both.
//!
//! ```sh
//! cargo bench -p unoflow-models --profile dev --bench train_cpu
//! cargo bench -p unoflow-models --profile dev --bench train_cpu -- --recompute ops
//! cargo bench -p unoflow-models --profile dev --bench train_cpu -- --recompute blocks
//! ```
//!
//! `--blocks D+S`: D double and S single blocks instead of 4+4 (memory against depth; the
//! PyTorch baseline runs 4+4 only). `--recompute ops`: burn's balanced checkpointing (not
//! offered by train_lora: with the fused kernels it takes more memory than keeping everything);
//! `--recompute blocks`: train_lora's `recompute = "blocks"`, each block's input kept and the
//! block run again in the backward pass. Each mode is its own process: the peak RSS is a
//! high-water mark.
//!
//! Hidden 256, 4 heads, 4 double + 4 single blocks, LoRA rank 16 on every block, 256 text +
//! 1024 target + 1024 reference tokens, f32, 2 threads. PyTorch runs `tools/bench/train_step.py`
//! with `UNOFLOW_REFENV_PYTHON` and the UNO checkout in `UNOFLOW_UNO_REPO` (default /tmp/UNO).

use std::process::Command;
use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use unoflow_models::flux::train::{FlowBatch, LoraTrainer, OptimSettings, Recompute};
use unoflow_models::flux::{Flux, FluxConfig, PeMode, TokenGrid, position_ids};

/// The allocator of the `unoflow` binary, so the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: unoflow_models::allocator::Allocator = unoflow_models::allocator::Allocator;

const REPEATS: usize = 3;
const THREADS: usize = 2;
const RANK: usize = 16;

fn config(double: usize, single: usize) -> FluxConfig {
    FluxConfig {
        in_channels: 64,
        vec_in_dim: 768,
        context_in_dim: 4096,
        hidden_size: 256,
        mlp_ratio: 4.0,
        num_heads: 4,
        depth: double,
        depth_single_blocks: single,
        axes_dim: vec![16, 24, 24],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

/// A `/proc/self/status` field in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok());
    kib.map_or(f64::NAN, |k| k / 1024.0)
}

fn ids<A: Backend>(ids: &[[f32; 3]], device: &A::Device) -> Tensor<A, 3> {
    let flat: Vec<f32> = ids.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [1, ids.len(), 3]), (device, DType::F32))
}

fn ours<C: CheckpointStrategy>(config: FluxConfig, recompute: Recompute) -> (f64, f64) {
    type A<C> = Autodiff<Flex, C>;
    let device = Default::default();
    A::<C>::seed(&device, 0);
    let mut model = Flux::<A<C>>::random(&config, &device, DType::F32);
    model.init_lora(&config, RANK, &device);
    let mut model = model.with_trainable_lora();
    let grid = TokenGrid { rows: 32, cols: 32 };
    let pos = position_ids(256, grid, &[grid], PeMode::Diagonal);
    let normal = |shape: [usize; 3]| Tensor::<A<C>, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let batch = FlowBatch {
        x_1: normal([1, 1024, 64]),
        x_0: normal([1, 1024, 64]),
        t: Tensor::from_data(TensorData::new(vec![0.5f32], [1]), &device),
        img_ids: ids(&pos.target, &device),
        txt: normal([1, 256, 4096]),
        txt_ids: ids(&pos.txt, &device),
        y: Tensor::random([1, 768], Distribution::Normal(0.0, 1.0), &device),
        refs: vec![(normal([1, 1024, 64]), ids(&pos.refs[0], &device))],
    };
    let mut trainer = LoraTrainer::<A<C>>::new(OptimSettings::default()).with_recompute(recompute);
    let mut times = Vec::new();
    for i in 0..=REPEATS {
        let started = Instant::now();
        let (next, _) = trainer.step(model, batch.clone()).expect("valid batch");
        model = next;
        if i > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    (times[REPEATS / 2], status_mib("VmHWM:"))
}

fn theirs() -> Result<(f64, f64), String> {
    let python = std::env::var("UNOFLOW_REFENV_PYTHON")
        .unwrap_or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cache/unoflow-refenv/bin/python")).unwrap_or_default());
    let uno = std::env::var("UNOFLOW_UNO_REPO").unwrap_or_else(|_| "/tmp/UNO".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench/train_step.py");
    let args = ["--uno-repo", &uno, "--threads", &THREADS.to_string(), "--repeats", &REPEATS.to_string(), "--rank", &RANK.to_string()];
    let out = Command::new(&python).arg(script).args(args).output().map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_string());
    }
    let json: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).map_err(|e| e.to_string())?;
    Ok((json["median_s"].as_f64().unwrap_or(f64::NAN), json["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)))
}

fn main() {
    unoflow_models::allocator::keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global();
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args.get(i + 1).map_or("", String::as_str));
    let blocks = value("--blocks").unwrap_or("4+4");
    let depths = blocks.split_once('+').and_then(|(d, s)| Some((d.parse::<usize>().ok()?, s.parse::<usize>().ok()?)));
    let Some((double, single)) = depths else {
        eprintln!("--blocks takes the double and single blocks as D+S (4+4), not `{blocks}`");
        std::process::exit(2);
    };
    let config = config(double, single);
    println!(
        "UNO LoRA training step, CPU, f32: hidden 256, {double}+{single} blocks, rank {RANK}, 256 txt + 1024 target + 1024 ref, {THREADS} threads"
    );
    let ((ours, our_peak), label) = match value("--recompute") {
        None => (ours::<NoCheckpointing>(config, Recompute::None), "unoflow (burn Flex + Autodiff)  "),
        Some("ops") => (ours::<BalancedCheckpointing>(config, Recompute::None), "unoflow (balanced checkpointing)"),
        Some("blocks") => (ours::<NoCheckpointing>(config, Recompute::Blocks), "unoflow (recompute = \"blocks\") "),
        Some(other) => {
            eprintln!("--recompute takes `ops` or `blocks`, not `{other}`");
            std::process::exit(2);
        }
    };
    println!("{label}median {ours:.3} s  peak RSS {our_peak:.0} MiB");
    if (double, single) != (4, 4) {
        println!("PyTorch baseline skipped: it runs 4+4 blocks only");
        return;
    }
    match theirs() {
        Ok((t, peak)) => {
            println!("PyTorch (UNO reference)         median {t:.3} s  peak RSS {peak:.0} MiB");
            println!("ratio unoflow / PyTorch = {:.2} (below 1 is faster), memory {:.2}", ours / t, our_peak / peak);
        }
        Err(why) => println!("PyTorch baseline skipped: {why}"),
    }
}
