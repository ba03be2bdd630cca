//! The curation operators' throughput on the CPU: the DINOv2 filter's rows per second, and the
//! VLM operator's cost per request against a local chat completions server at 1, 8 and 64
//! requests in flight, with plain HTTP posts of the same bodies as the baseline (same run).
//!
//! ```sh
//! cargo bench --bench curation
//! ```
//!
//! The DINOv2 filter uses the real ViT-S/14 from `../shared/models/dinov2-small` when it is
//! there (else the tiny fixture, and says so) on 512² reference/target pairs.

#[path = "../tests/chat_server.rs"]
#[allow(dead_code)]
mod chat_server;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use unoflow_operators::{Environment, ExecContext, Operator, ParamValue, Params};

use chat_server::{ChatServer, Reply};

const REPEATS: usize = 3;

/// The operator's defaults with `overrides`.
fn params(op: &dyn Operator, overrides: &[(&str, ParamValue)]) -> Params {
    let mut p = Params::new();
    for spec in &op.spec().params {
        if let Some(d) = &spec.default {
            p.insert(spec.name, d.clone());
        }
    }
    for (k, v) in overrides {
        p.insert(*k, v.clone());
    }
    p
}

/// `n` rows of `ref_image`/`target_image` noise PNGs of `side`².
fn pairs(n: usize, side: u32) -> RecordBatch {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut png = || {
        let img = image::RgbImage::from_fn(side, side, |_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
        });
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).expect("png");
        out
    };
    let refs: Vec<Vec<u8>> = (0..n).map(|_| png()).collect();
    let targets: Vec<Vec<u8>> = (0..n).map(|_| png()).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::Utf8, false),
        Field::new("ref_image", DataType::Binary, false),
        Field::new("target_image", DataType::Binary, false),
    ]));
    let ids: Vec<String> = (0..n).map(|i| format!("{i:032x}")).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(BinaryArray::from(refs.iter().map(Vec::as_slice).collect::<Vec<_>>())),
        Arc::new(BinaryArray::from(targets.iter().map(Vec::as_slice).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(schema, columns).expect("batch")
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn ctx() -> ExecContext {
    ExecContext::new(0, 0, Arc::new(AtomicBool::new(false)))
}

fn dino_filter() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let real = root.join("../shared/models/dinov2-small");
    let (weights, label, extra) = if real.join("model.safetensors").is_file() {
        (real, "ViT-S/14 (real weights), 224² crops", vec![])
    } else {
        let tiny = root.join("operators/models/fixtures/dinov2/tiny");
        (
            tiny,
            "tiny fixture (../shared/models/dinov2-small absent), 32² crops",
            vec![("resize", ParamValue::Int(32)), ("crop", ParamValue::Int(32))],
        )
    };
    let op = unoflow_operators::curation::dino_filter::DinoFilter;
    let mut overrides = vec![("weights", ParamValue::Str(weights.to_string_lossy().into_owned()))];
    overrides.extend(extra);
    let params = params(&op, &overrides);
    let batch = pairs(64, 512);
    let configured = op.configure(&params).expect("dino_filter configures");
    let processor = configured.prepare(&Environment::default(), &batch.schema()).expect("dino_filter prepares");
    let run = || {
        let started = Instant::now();
        let out = processor.process(&ctx(), &batch).expect("dino_filter runs");
        assert_eq!(out.rows.num_rows(), batch.num_rows());
        started.elapsed().as_secs_f64()
    };
    run();
    let seconds = median((0..REPEATS).map(|_| run()).collect());
    println!("dino_filter, {label}, 512² PNG pairs, {} threads", rayon::current_num_threads());
    println!(
        "  {:.1} rows/s ({} rows in {seconds:.2} s; a row is two images decoded, preprocessed, embedded)",
        batch.num_rows() as f64 / seconds,
        batch.num_rows()
    );
}

fn vlm_overhead() {
    let answer = r#"{"parts": [{"part": "body", "score": 4}, {"part": "logo", "score": 3}]}"#;
    let server = ChatServer::start_unlogged(move |_, _| Reply::Content(answer.into()));
    let op = unoflow_operators::curation::vlm::score::VlmScore;
    let batch = pairs(192, 64);
    println!("vlm_score against a local server that answers at once ({} rows, 3 requests per row, no cache)", batch.num_rows());
    println!("  {:>11} {:>14} {:>14} {:>12} {:>8}", "in flight", "vlm_score", "plain POSTs", "per request", "ratio");
    for concurrency in [1i64, 8, 64] {
        let params = params(
            &op,
            &[
                ("endpoint", ParamValue::Str(server.url.clone())),
                ("model", ParamValue::Str("bench".into())),
                ("concurrency", ParamValue::Int(concurrency)),
            ],
        );
        let configured = op.configure(&params).expect("vlm_score configures");
        let processor = configured.prepare(&Environment::default(), &batch.schema()).expect("vlm_score prepares");
        let requests = batch.num_rows() * 3;
        let ours = median(
            (0..REPEATS)
                .map(|_| {
                    let started = Instant::now();
                    let out = processor.process(&ctx(), &batch).expect("vlm_score runs");
                    assert!(out.errors.is_empty(), "{:?}", out.errors.first());
                    started.elapsed().as_secs_f64()
                })
                .collect(),
        );
        // Baseline: the same number of POSTs of a body of the same size, same concurrency.
        let body = serde_json::json!({"model": "bench", "messages": [{"role": "user", "content": "x".repeat(2 * 4 * 64 * 64 * 3 / 3)}]})
            .to_string();
        let agent = ureq::AgentBuilder::new().build();
        let url = format!("{}/chat/completions", server.url);
        let plain = median(
            (0..REPEATS)
                .map(|_| {
                    let started = Instant::now();
                    let next = std::sync::atomic::AtomicUsize::new(0);
                    std::thread::scope(|s| {
                        for _ in 0..concurrency {
                            s.spawn(|| {
                                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                                    let answer = agent.post(&url).set("Content-Type", "application/json").send_string(&body).expect("POST");
                                    let _ = answer.into_string();
                                }
                            });
                        }
                    });
                    started.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!("  {concurrency:>11} {:>12.3} s {:>12.3} s {:>9.0} µs {:>7.2}×", ours, plain, ours / requests as f64 * 1e6, ours / plain);
    }
}

fn main() {
    dino_filter();
    vlm_overhead();
}
