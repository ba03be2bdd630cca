//! One FLUX.1-dev-sized forward on a CUDA GPU (bf16, random weights): the unoflow side of
//! `tools/gpu/check.sh`, which runs PyTorch on the same shapes and GPU and compares.
//!
//! ```sh
//! cargo bench -p unoflow-models --features cuda --bench flux_gpu -- --case ref512   # 512 txt + 1024 target + 1024 ref
//! cargo bench -p unoflow-models --features cuda --bench flux_gpu -- --case t2i1024  # 512 txt + 4096 target
//! ```
//!
//! Prints one JSON line: `{"case", "median_s", "times_s"}`. Peak memory is measured from
//! outside (the script polls `nvidia-smi`), the same way for both frameworks.

use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor, TensorData};
use unoflow_models::device::{CudaBackend, cuda_device};
use unoflow_models::flux::{Flux, FluxConfig, FluxInput, PeMode, TokenGrid, position_ids};

type B = CudaBackend;

const WARMUP: usize = 2;
const REPEATS: usize = 10;

fn ids(ids: &[[f32; 3]], device: &burn::backend::cuda::CudaDevice) -> Tensor<B, 3> {
    let flat: Vec<f32> = ids.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [1, ids.len(), 3]), (device, DType::F32))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let case = args.iter().position(|a| a == "--case").and_then(|i| args.get(i + 1)).map_or("ref512", String::as_str);
    let (grid, refs) = match case {
        "ref512" => (TokenGrid { rows: 32, cols: 32 }, vec![TokenGrid { rows: 32, cols: 32 }]),
        "t2i1024" => (TokenGrid { rows: 64, cols: 64 }, vec![]),
        other => panic!("unknown case {other}: ref512 or t2i1024"),
    };
    let device = cuda_device(0);
    let config = FluxConfig::dev();
    let model = Flux::<B>::random(&config, &device, DType::BF16);
    let pos = position_ids(512, grid, &refs, PeMode::Diagonal);
    let normal = |shape: [usize; 3]| Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
    let tokens = |g: &TokenGrid| g.rows * g.cols;
    let input = FluxInput {
        img: normal([1, tokens(&grid), 64]),
        img_ids: ids(&pos.target, &device),
        txt: normal([1, 512, 4096]),
        txt_ids: ids(&pos.txt, &device),
        y: Tensor::<B, 2>::random([1, 768], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16),
        timesteps: Tensor::from_data(TensorData::new(vec![0.5f32], [1]), (&device, DType::F32)),
        guidance: Some(Tensor::from_data(TensorData::new(vec![4.0f32], [1]), (&device, DType::F32))),
        refs: refs.iter().zip(&pos.refs).map(|(g, i)| (normal([1, tokens(g), 64]), ids(i, &device))).collect(),
    };
    let run = || {
        let started = Instant::now();
        let out = model.forward(input.clone()).expect("valid input");
        let _ = out.into_data(); // waits for the GPU
        started.elapsed().as_secs_f64()
    };
    for _ in 0..WARMUP {
        run();
    }
    let times: Vec<f64> = (0..REPEATS).map(|_| run()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!("{}", serde_json::json!({"case": case, "median_s": sorted[REPEATS / 2], "times_s": times}));
}
