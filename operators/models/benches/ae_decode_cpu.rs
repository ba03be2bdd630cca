//! Peak memory and time of the FLUX autoencoder decoding a 1024² image on the CPU (f32,
//! full-size architecture, random weights).
//!
//! ```sh
//! cargo bench -p unoflow-models --profile dev --bench ae_decode_cpu
//! ```
//!
//! Peak memory is the process's resident high-water mark (`VmHWM`) after the decode minus the
//! resident size after loading the weights, so it is the decode's own working set.

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use unoflow_models::flux::autoencoder::{AutoEncoder, AutoEncoderConfig};
use unoflow_models::vb::Vb;

/// The allocator of the `unoflow` binary, so the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: unoflow_models::allocator::Allocator = unoflow_models::allocator::Allocator;

const THREADS: usize = 2;

/// A `/proc/self/status` field in MiB (Linux only; `None` elsewhere).
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    unoflow_models::allocator::keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global();
    let device = Default::default();
    Flex::seed(&device, 0);
    let ae = AutoEncoder::<Flex>::load(&Vb::random(&device, DType::F32), &AutoEncoderConfig::flux()).expect("random weights");
    let loaded = proc_status_mib("VmRSS:").unwrap_or(f64::NAN);
    println!("FLUX autoencoder decode, f32, {THREADS} threads, random weights ({loaded:.0} MiB resident after loading)");
    for side in [512usize, 1024] {
        let z = Tensor::<Flex, 4>::random([1, 16, side / 8, side / 8], Distribution::Normal(0.0, 1.0), &device);
        let started = Instant::now();
        let image = ae.decode(z).into_data();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(image.shape.iter().product::<usize>(), 3 * side * side);
        let peak = proc_status_mib("VmHWM:").unwrap_or(f64::NAN) - loaded;
        println!("{side}²  {seconds:6.1} s  peak working set {peak:6.0} MiB");
    }
}
