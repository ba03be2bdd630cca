//! Every model against its reference implementation, through the fixtures in `fixtures/`
//! (made by `tools/fixtures/*.py`): f32 within 1e-4, bf16 within 2e-2.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::DType;
use unoflow_models::fixture::{Fixture, check_flux};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn flux_case(case: &str, dtype: DType) -> f64 {
    let dir = fixtures().join("flux");
    let fixture = Fixture::open(&dir.join(format!("{case}.fixture.safetensors"))).unwrap();
    let weights = fixture.sibling("weights").unwrap();
    let lora = fixture.sibling("lora");
    let c = check_flux::<Flex>(&fixture, &weights, lora.as_deref(), &Default::default(), dtype).unwrap();
    println!("{case} {dtype:?}: {c}");
    c.rel_err
}

const FLUX_CASES: &[&str] = &["noref", "ref1", "ref2_sizes", "ref2_pe_w", "lora_ref2", "schnell_ref1", "batch2_ref1"];

#[test]
fn flux_f32_matches_the_reference() {
    for case in FLUX_CASES {
        let err = flux_case(case, DType::F32);
        assert!(err < 1e-4, "{case}: rel_err {err:e}");
    }
}

#[test]
fn flux_bf16_is_close() {
    for case in ["ref2_sizes", "lora_ref2"] {
        let err = flux_case(case, DType::BF16);
        assert!(err < 2e-2, "{case}: rel_err {err:e}");
    }
}

#[test]
fn flux_diffusers_layout_loads_into_the_same_model() {
    let dir = fixtures().join("flux");
    let fixture = Fixture::open(&dir.join("noref.fixture.safetensors")).unwrap();
    let c = check_flux::<Flex>(&fixture, &dir.join("tiny_diffusers"), None, &Default::default(), DType::F32).unwrap();
    assert!(c.rel_err < 1e-4, "{c}");
}

#[test]
fn flux_checkpoint_errors_name_the_file_and_keys() {
    let dir = fixtures().join("flux");
    let fixture = Fixture::open(&dir.join("ref1.fixture.safetensors")).unwrap();
    let check = |weights: &std::path::Path, lora: Option<&std::path::Path>| {
        check_flux::<Flex>(&fixture, weights, lora, &Default::default(), DType::F32).unwrap_err().to_string()
    };
    // The LoRA file given as the base model.
    let err = check(&dir.join("tiny_lora.lora.safetensors"), None);
    assert!(err.contains("tiny_lora.lora.safetensors") && err.contains("no tensor `img_in.weight`"), "{err}");
    // A model of another configuration (schnell has no guidance embedder).
    let err = check(&dir.join("tiny_schnell.safetensors"), None);
    assert!(err.contains("guidance_in.in_layer.weight"), "{err}");
    // A base model given as the LoRA.
    let err = check(&dir.join("tiny.safetensors"), Some(&dir.join("tiny.safetensors")));
    assert!(err.contains("no UNO LoRA tensors"), "{err}");
    // Truncated and foreign files.
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir.join("tiny.safetensors")).unwrap();
    let truncated = tmp.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = check(&truncated, None);
    assert!(err.contains("truncated.safetensors") && err.contains("outside the file"), "{err}");
    let text = tmp.path().join("notes.safetensors");
    std::fs::write(&text, "just some text").unwrap();
    assert!(check(&text, None).contains("not a safetensors file"));
}

#[test]
fn flux_lora_merged_equals_side_branch_and_round_trips() {
    use unoflow_models::flux::{FluxCheckpoint, FluxConfig, load_lora};
    let dir = fixtures().join("flux");
    let fixture = Fixture::open(&dir.join("lora_ref2.fixture.safetensors")).unwrap();
    let config: FluxConfig = fixture.config().unwrap();
    let device = Default::default();
    let mut model =
        FluxCheckpoint::open(&dir.join("tiny_lora.safetensors")).unwrap().load::<Flex>(&config, &device, Some(DType::F32)).unwrap();
    let rank = load_lora(&mut model, &config, &dir.join("tiny_lora.lora.safetensors"), 1.0, &device).unwrap();
    assert_eq!(rank, 4);

    // Save the branches in UNO's layout and load them back: identical tensors.
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("dit_lora.safetensors");
    unoflow_models::weights::write_safetensors(&saved, &model.lora_tensors(), &Default::default()).unwrap();
    let a = unoflow_models::weights::Checkpoint::open(&saved).unwrap();
    let b = unoflow_models::weights::Checkpoint::open(&dir.join("tiny_lora.lora.safetensors")).unwrap();
    let mut keys: Vec<&str> = b.keys().collect();
    keys.sort();
    for key in keys {
        let shape = b.shape(key).unwrap().to_vec();
        assert_eq!(a.read(key, &shape).unwrap().as_bytes(), b.read(key, &shape).unwrap().as_bytes(), "{key}");
    }

    let merged = model.clone().merge_lora();
    assert!(merged.double_blocks.iter().all(|b| b.processor.is_none()));
    let run = |m: &unoflow_models::flux::Flux<Flex>| -> Vec<f32> {
        let input = unoflow_models::fixture::flux_input::<Flex>(&fixture, &device).unwrap();
        m.forward(input).unwrap().into_data().iter::<f32>().collect()
    };
    let c = unoflow_models::fixture::compare(&run(&merged), &run(&model));
    assert!(c.rel_err < 1e-5, "merged vs branch: {c}");
}

fn dinov2_case(case: &str, dtype: DType) -> f64 {
    let dir = fixtures().join("dinov2");
    let fixture = Fixture::open(&dir.join(format!("{case}.fixture.safetensors"))).unwrap();
    let weights = fixture.sibling("weights").unwrap();
    let c = unoflow_models::fixture::check_dinov2::<Flex>(&fixture, &weights, &Default::default(), dtype).unwrap();
    println!("dinov2 {case} {dtype:?}: {c}");
    c.rel_err
}

#[test]
fn dinov2_matches_the_reference() {
    for case in ["native_grid_batch2", "interpolated_up", "interpolated_down", "swiglu"] {
        let err = dinov2_case(case, DType::F32);
        assert!(err < 1e-4, "{case}: rel_err {err:e}");
    }
    let err = dinov2_case("interpolated_up", DType::BF16);
    assert!(err < 2e-2, "bf16: rel_err {err:e}");
}

fn generic_case(kind: &str, dir: &str, case: &str, dtype: DType) -> f64 {
    let path = fixtures().join(dir).join(format!("{case}.fixture.safetensors"));
    let fixture = Fixture::open(&path).unwrap();
    let weights = fixture.sibling("weights").unwrap();
    let precision = if dtype == DType::F32 { unoflow_models::Precision::F32 } else { unoflow_models::Precision::Bf16 };
    let c = unoflow_models::fixture::check(kind, &path, &weights, None, unoflow_models::DeviceSpec::Cpu, precision).unwrap();
    println!("{kind} {case} {dtype:?}: {c}");
    c.rel_err
}

#[test]
fn clip_dino_match_the_reference() {
    for (kind, dir, case) in [
        ("clip", "clip", "tiny"),
        ("clip_text", "clip_text", "tiny"),
        ("clip_text", "clip_text", "tiny_legacy_eos"),
        ("dino", "dino", "tiny"),
        ("ae", "ae", "tiny"),
        ("t5", "t5", "tiny"),
    ] {
        let err = generic_case(kind, dir, case, DType::F32);
        assert!(err < 1e-4, "{kind} {case}: rel_err {err:e}");
        let err = generic_case(kind, dir, case, DType::BF16);
        // T5's residual stream grows large across blocks, and bf16 keeps 8 bits of it: its bf16
        // error is about twice the others' (the reference has the same behaviour in bf16).
        let tolerance = if kind == "t5" { 5e-2 } else { 2e-2 };
        assert!(err < tolerance, "{kind} {case} bf16: rel_err {err:e}");
    }
}

#[test]
fn ae_diffusers_layout_loads_into_the_same_model() {
    let dir = fixtures().join("ae");
    let path = dir.join("tiny.fixture.safetensors");
    let c = unoflow_models::fixture::check(
        "ae",
        &path,
        &dir.join("tiny_diffusers"),
        None,
        unoflow_models::DeviceSpec::Cpu,
        unoflow_models::Precision::F32,
    )
    .unwrap();
    assert!(c.rel_err < 1e-4, "{c}");
}
