//! The `unoflow generate --tiny` pipeline at 512², 4 steps, one 512² reference, on the CPU,
//! against the same pipeline in PyTorch (diffusers/transformers modules with the same tiny
//! configuration), same threads, same run.
//!
//! ```sh
//! cargo bench -p unoflow-operators --profile dev --bench generate_cpu
//! ```

use std::process::Command;
use std::time::Instant;

use image::DynamicImage;
use unoflow_models::device::CpuBackend;
use unoflow_models::flux::PeMode;
use unoflow_models::flux::sampling::ShiftRule;
use unoflow_operators::generate::{GenerateOptions, Models, generate};

/// The allocator of the `unoflow` binary, so the numbers are the CLI's.
#[global_allocator]
static ALLOCATOR: unoflow_models::allocator::Allocator = unoflow_models::allocator::Allocator;

const THREADS: usize = 2;
const REPEATS: usize = 3;

fn main() {
    unoflow_models::allocator::keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build_global();
    let reference = DynamicImage::ImageRgb8(image::RgbImage::from_fn(512, 512, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8])));
    let options = GenerateOptions {
        prompt: "a cat in the park".into(),
        refs: vec![reference],
        width: 512,
        height: 512,
        steps: 4,
        guidance: 4.0,
        seed: 3407,
        num_images: 1,
        pe: PeMode::Diagonal,
        shift: ShiftRule::UnoLatentArea,
        ref_long_side: None,
    };
    let device = Default::default();
    let run = || {
        // Models are made per run: generation drops the text encoders after use.
        let mut models = Models::<CpuBackend>::tiny(&device).expect("tiny models");
        let started = Instant::now();
        generate(&mut models, &options, &mut |_, _| std::ops::ControlFlow::Continue(())).expect("generation");
        started.elapsed().as_secs_f64()
    };
    run();
    let mut times: Vec<f64> = (0..REPEATS).map(|_| run()).collect();
    times.sort_by(f64::total_cmp);
    let ours = times[REPEATS / 2];
    println!("generate --tiny: 512², 4 steps, one 512² reference, f32, {THREADS} threads");
    println!("unoflow (burn Flex)   median {ours:.2} s");
    let python = std::env::var("UNOFLOW_REFENV_PYTHON")
        .unwrap_or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cache/unoflow-refenv/bin/python")).unwrap_or_default());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench/generate_tiny.py");
    match Command::new(&python).args([script, "--threads", &THREADS.to_string()]).output() {
        Ok(out) if out.status.success() => {
            let json: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("JSON");
            let theirs = json["median_s"].as_f64().expect("median_s");
            println!("PyTorch               median {theirs:.2} s");
            println!("ratio unoflow / PyTorch = {:.2} (below 1 is faster)", ours / theirs);
        }
        Ok(out) => println!("PyTorch baseline skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed")),
        Err(e) => println!("PyTorch baseline skipped: cannot run {python}: {e}"),
    }
}
