//! `unoflow model check`: the fixture contract of DESIGN.md §4.5 through the binary.

use std::path::PathBuf;

use crate::support::Project;

fn flux(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("operators/models/fixtures/flux").join(name).to_string_lossy().into_owned()
}

#[test]
fn check_passes_and_prints_errors_last() {
    let p = Project::new();
    let run = p
        .unoflow(&["model", "check", "flux", "--weights", &flux("tiny.safetensors"), "--fixture", &flux("ref2_sizes.fixture.safetensors")])
        .ok();
    let last = run.stdout.lines().last().unwrap();
    assert!(last.starts_with("rel_err=") && last.contains(" max_abs_err="), "{}", run.stdout);
}

#[test]
fn check_with_lora_and_in_bf16() {
    let p = Project::new();
    let args = ["model", "check", "flux", "--weights", &flux("tiny_lora.safetensors"), "--lora", &flux("tiny_lora.lora.safetensors")];
    let fixture = flux("lora_ref2.fixture.safetensors");
    p.unoflow(&[&args[..], &["--fixture", &fixture]].concat()).ok();
    // bf16 is within 2e-2 but not within the f32 tolerance.
    p.unoflow(&[&args[..], &["--fixture", &fixture, "--dtype", "bf16", "--tol", "2e-2"]].concat()).ok();
    let strict = p.unoflow(&[&args[..], &["--fixture", &fixture, "--dtype", "bf16"]].concat()).expect_code(1);
    assert!(strict.stdout.contains("FAILED"), "{}", strict.stdout);
}

#[test]
fn bad_input_exits_2() {
    let p = Project::new();
    let without_lora = p
        .unoflow(&[
            "model",
            "check",
            "flux",
            "--weights",
            &flux("tiny_lora.safetensors"),
            "--fixture",
            &flux("lora_ref2.fixture.safetensors"),
        ])
        .expect_code(2);
    assert!(without_lora.stderr.contains("pass it with --lora"), "{}", without_lora.stderr);
    let wrong_kind = p
        .unoflow(&["model", "check", "dinov2", "--weights", &flux("tiny.safetensors"), "--fixture", &flux("noref.fixture.safetensors")])
        .expect_code(2);
    assert!(wrong_kind.stderr.contains("a `flux` fixture, but the command checks `dinov2`"), "{}", wrong_kind.stderr);
    let missing = p
        .unoflow(&["model", "check", "flux", "--weights", "nope.safetensors", "--fixture", &flux("noref.fixture.safetensors")])
        .expect_code(2);
    assert!(missing.stderr.contains("nope.safetensors"), "{}", missing.stderr);
}
