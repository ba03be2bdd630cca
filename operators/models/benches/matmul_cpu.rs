//! GFLOP/s of burn Flex's matrix products at the shapes of the FLUX CPU benchmark, against
//! PyTorch's at the same shapes in the same run, and against this machine's peak.
//!
//! ```sh
//! cargo bench -p unoflow-models --profile dev --bench matmul_cpu
//! ```
//!
//! Shapes (M × K × N, batch B) of `flux_cpu` (hidden 256, 4 heads of 64, 2,304 tokens): the
//! projections (QKV, MLP in and out) and attention's two products per head. PyTorch runs
//! `tools/bench/matmul.py` through `UNOFLOW_REFENV_PYTHON` (default: the refenv of
//! `../shared/tools/refenv.sh`). The nominal peak is cores × the clock /proc/cpuinfo reports ×
//! 32 f32 flops a cycle (two 8-wide FMA pipes; AVX-512 on Zen 4 issues as two 256-bit halves,
//! so it is the same); cores that boost above that clock go past it.

use std::process::Command;
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use unoflow_models::Kernels;
use unoflow_models::kernels::Mask;

/// The allocator of the `unoflow` binary, so the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: unoflow_models::allocator::Allocator = unoflow_models::allocator::Allocator;

const THREADS: usize = 2;

/// (M, K, N, batch) and what the product is in the FLUX forward.
const SHAPES: [(usize, usize, usize, usize, &str); 5] = [
    (2304, 256, 768, 1, "QKV projection"),
    (2304, 256, 1024, 1, "MLP in"),
    (2304, 1024, 256, 1, "MLP out"),
    (2304, 64, 2304, 4, "attention scores, 4 heads"),
    (2304, 2304, 64, 4, "attention × values, 4 heads"),
];

fn gflops(m: usize, k: usize, n: usize, b: usize) -> f64 {
    let device = Default::default();
    let a = Tensor::<Flex, 3>::random([b, m, k], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<Flex, 3>::random([b, k, n], Distribution::Normal(0.0, 1.0), &device);
    let run = || {
        let started = Instant::now();
        // Flex computes eagerly: the product is done when `matmul` returns (no copy out is
        // timed; PyTorch's side times none either).
        drop(a.clone().matmul(w.clone()));
        started.elapsed().as_secs_f64()
    };
    run();
    let flop = 2.0 * (m * k * n * b) as f64;
    let reps = ((4e9 / flop) as usize).max(3);
    let seconds: f64 = (0..reps).map(|_| run()).sum::<f64>() / reps as f64;
    flop / seconds / 1e9
}

/// Seconds per call of `f`, averaged over enough calls for `flop` to reach 4 GFLOP, after one
/// warm-up call.
fn seconds_per_call(flop: f64, mut f: impl FnMut()) -> f64 {
    f();
    let reps = ((4e9 / flop) as usize).max(3);
    let started = Instant::now();
    (0..reps).for_each(|_| f());
    started.elapsed().as_secs_f64() / reps as f64
}

/// GFLOP/s of the fused linear kernel (`Kernels::fused_linear`) on `[1, m, k]` with a weight as
/// the loaders hand it out: PyTorch's `[n, k]` seen as `[k, n]`.
fn linear_kernel_gflops(m: usize, k: usize, n: usize) -> f64 {
    let device = Default::default();
    let x = Tensor::<Flex, 3>::random([1, m, k], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &device).transpose();
    let flop = 2.0 * (m * k * n) as f64;
    let seconds = seconds_per_call(flop, || {
        drop(Flex::fused_linear::<3>(x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor(), None));
    });
    flop / seconds / 1e9
}

/// GFLOP/s of the fused attention kernel and of the unfused graph (two products and a softmax)
/// on the same `[1, heads, tokens, dim]` operands, counting the two products' flops.
fn attention_gflops(heads: usize, tokens: usize, dim: usize) -> (f64, f64) {
    let device = Default::default();
    let normal = || Tensor::<Flex, 4>::random([1, heads, tokens, dim], Distribution::Normal(0.0, 1.0), &device);
    let (q, k, v) = (normal(), normal(), normal());
    let flop = 4.0 * (heads * tokens * tokens * dim) as f64;
    let fused = seconds_per_call(flop, || {
        let (q, k, v) = (q.clone().into_primitive().tensor(), k.clone().into_primitive().tensor(), v.clone().into_primitive().tensor());
        drop(Flex::fused_attention(q, k, v, Mask::None));
    });
    let graph = seconds_per_call(flop, || drop(unoflow_models::kernels::graph::attention_graph(q.clone(), k.clone(), v.clone(), false)));
    (flop / fused / 1e9, flop / graph / 1e9)
}

fn main() {
    unoflow_models::allocator::keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global();
    Flex::seed(&Default::default(), 0);
    let mhz: f64 = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| text.lines().find(|l| l.starts_with("cpu MHz")).and_then(|l| l.split(':').nth(1)?.trim().parse().ok()))
        .unwrap_or(0.0);
    let peak = THREADS as f64 * mhz / 1000.0 * 32.0;
    let python = std::env::var("UNOFLOW_REFENV_PYTHON")
        .unwrap_or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cache/unoflow-refenv/bin/python")).unwrap_or_default());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench/matmul.py");
    let shapes: Vec<String> = SHAPES.iter().map(|(m, k, n, b, _)| format!("{m},{k},{n},{b}")).collect();
    let theirs: Option<serde_json::Value> =
        match Command::new(&python).args([script, "--threads", &THREADS.to_string(), "--shapes", &shapes.join(";")]).output() {
            Ok(out) if out.status.success() => Some(serde_json::from_slice(out.stdout.trim_ascii()).expect("JSON from the script")),
            Ok(out) => {
                println!("PyTorch baseline skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed"));
                None
            }
            Err(e) => {
                println!("PyTorch baseline skipped: cannot run {python}: {e} (set UNOFLOW_REFENV_PYTHON)");
                None
            }
        };
    println!("f32 matrix products, {THREADS} threads; nominal peak {peak:.0} GFLOP/s ({THREADS} cores × {mhz:.0} MHz × 32 flop/cycle)");
    println!("{:<34} {:>16} {:>10} {:>8} {:>9}", "M × K × N (batch)", "unoflow GFLOP/s", "PyTorch", "ratio", "of nominal");
    for ((m, k, n, b, what), key) in SHAPES.iter().zip(&shapes) {
        let ours = gflops(*m, *k, *n, *b);
        let torch = theirs.as_ref().and_then(|t| t[key].as_f64());
        let (torch_s, ratio) = match torch {
            Some(t) => (format!("{t:.0}"), format!("{:.2}", ours / t)),
            None => ("-".into(), "-".into()),
        };
        let of_peak = if peak > 0.0 { format!("{:.0} %", 100.0 * ours / peak) } else { "-".into() };
        println!("{:<34} {ours:>16.0} {torch_s:>10} {ratio:>8} {of_peak:>9}  {what}", format!("{m} × {k} × {n} ({b})"));
    }
    println!();
    println!("unoflow's kernels (Kernels for Flex) at the same shapes, against burn Flex's product in this run:");
    for (m, k, n, b, what) in SHAPES.iter().filter(|shape| shape.3 == 1) {
        let (kernel, flex) = (linear_kernel_gflops(*m, *k, *n), gflops(*m, *k, *n, *b));
        println!(
            "{:<34} linear kernel {kernel:>5.0} GFLOP/s, Flex matmul {flex:>5.0}: {:.2}×  {what}",
            format!("{m} × {k} × {n}"),
            kernel / flex
        );
    }
    let (fused, graph) = attention_gflops(4, 2304, 64);
    println!(
        "{:<34} attention kernel {fused:>5.0} GFLOP/s, Flex graph {graph:>5.0}: {:.2}×  4 heads × 2304 tokens × 64",
        "attention",
        fused / graph
    );
}
