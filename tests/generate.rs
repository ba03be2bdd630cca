//! `unoflow generate --tiny`: determinism, references, bad input.

use std::path::Path;

use crate::support::Project;

fn samples(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/samples").join(name).to_string_lossy().into_owned()
}

const FAST: [&str; 8] = ["--tiny", "--steps", "2", "--width", "128", "--height", "96", "-q"];

#[test]
fn same_seed_same_bytes_other_seed_other_image() {
    let p = Project::new();
    let r = samples("red_disc/beach.png");
    let base = ["generate", "--prompt", "a red disc in the forest", "--ref", r.as_str()];
    p.unoflow(&[&base[..], &FAST, &["--out", "a.png"]].concat()).ok();
    p.unoflow(&[&base[..], &FAST, &["--out", "b.png"]].concat()).ok();
    p.unoflow(&[&base[..], &FAST, &["--out", "c.png", "--seed", "7"]].concat()).ok();
    let (a, b, c) =
        (std::fs::read(p.path("a.png")).unwrap(), std::fs::read(p.path("b.png")).unwrap(), std::fs::read(p.path("c.png")).unwrap());
    assert_eq!(a, b, "same seed, same bytes");
    assert_ne!(a, c, "another seed, another image");
    let img = image::load_from_memory(&a).unwrap();
    assert_eq!((img.width(), img.height()), (128, 96));
    // The parameters and model fingerprints ride along as PNG text.
    let text = String::from_utf8_lossy(&a);
    assert!(text.contains("parameters") && text.contains("a red disc in the forest") && text.contains("tiny-random"), "no tEXt chunk");
}

#[test]
fn zero_to_three_references_and_several_images() {
    let p = Project::new();
    let refs = [samples("red_disc/beach.png"), samples("blue_square/forest.png"), samples("green_ring/studio.png")];
    for n in 0..=3 {
        let mut args = vec!["generate", "--prompt", "subjects together"];
        for r in &refs[..n] {
            args.extend(["--ref", r.as_str()]);
        }
        let out = format!("refs{n}.png");
        args.extend(["--out", out.as_str()]);
        p.unoflow(&[&args[..], &FAST].concat()).ok();
        assert!(p.path(&out).exists(), "{n} references");
    }
    p.unoflow(&[&["generate", "--prompt", "x", "--out", "many.png", "--num-images", "2"][..], &FAST].concat()).ok();
    assert!(p.path("many_0.png").exists() && p.path("many_1.png").exists());
}

#[test]
fn bad_input() {
    let p = Project::new();
    let run = |extra: &[&str]| p.unoflow(&[&["generate", "--prompt", "x", "--out", "o.png"][..], &FAST, extra].concat());
    let missing = run(&["--ref", "nope.png"]).expect_code(2);
    assert!(missing.stderr.contains("nope.png"), "{}", missing.stderr);
    p.write("notes.png", "not an image");
    let garbage = run(&["--ref", "notes.png"]).expect_code(2);
    assert!(garbage.stderr.contains("notes.png") && garbage.stderr.contains("not an image"), "{}", garbage.stderr);
    run(&["--steps", "0"]).expect_code(2);
    run(&["--pe", "x"]).expect_code(2);
    let dir = run(&["--model-dir", "."]).expect_code(2);
    assert!(dir.stderr.contains("cannot be used with") || dir.stderr.contains("expected"), "{}", dir.stderr);
    let none = p.unoflow(&["generate", "--prompt", "x", "--out", "o.png"]).expect_code(2);
    assert!(none.stderr.contains("--model-dir") || none.stderr.contains("--tiny"), "{}", none.stderr);
    let not_models = p.unoflow(&["generate", "--prompt", "x", "--out", "o.png", "--model-dir", "."]).expect_code(2);
    assert!(not_models.stderr.contains("expected the BFL layout"), "{}", not_models.stderr);
    // Sizes not multiple of 16 are rounded down with a warning, as the reference does.
    let rounded = p
        .unoflow(&["generate", "--tiny", "--prompt", "x", "--out", "r.png", "--steps", "1", "--width", "100", "--height", "70", "-q"])
        .ok();
    assert!(rounded.stderr.contains("not a multiple of 16; using 96"), "{}", rounded.stderr);
    let img = image::open(p.path("r.png")).unwrap();
    assert_eq!((img.width(), img.height()), (96, 64));
}
