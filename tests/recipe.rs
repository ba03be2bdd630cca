//! The recipe as its users run it: the real `dags/uno.toml` (not a copy), end to end, by three
//! workers over the S3 test server, with its weights and data on the store.
//!
//! The models are tiny random ones that `unoflow model tiny` writes in the release layouts
//! (FLUX.1-dev as BFL ships it, then the same weights as diffusers saves them), the real
//! DINOv2-S where `../shared/models` has it; the VLM is a stand-in speaking the OpenAI chat
//! completions protocol; DreamBench is the project's sample images under UNO's release list
//! names and format. `--var`s shrink the recipe to a few rows; nothing else is changed.

use std::path::Path;

use serde_json::Value;

use crate::chat_server::{ChatServer, Reply, first_user_text};
use crate::scale::S3Server;
use crate::support::{Project, plan_states};

/// The rehearsal's size: two subjects, one prompt and seed each, small images, two optimiser
/// steps per stage at rank 4, two prompts of each DreamBench list with two images each.
const VARS: &[&str] = &[
    "subjects=2",
    "prompts_per_subject=1",
    "seeds_per_prompt=1",
    r#"resolutions=["64x64"]"#,
    "steps=2",
    "dino_threshold=-1.0",
    "ref2_threshold=-1.0",
    "train_steps=2",
    "train_resolution=64",
    "lora_rank=4",
    "eval_prompts=2",
    "eval_resolution=32",
    "eval_steps=2",
    "eval_images=2",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The VLM: every pair scores 4 on each part (three rounds), and every subject is found.
fn vlm(body: &Value, _seen: usize) -> Reply {
    if first_user_text(body).starts_with("Locate the ") {
        return Reply::Content("```json\n[{\"bbox_2d\": [4, 4, 40, 40], \"label\": \"subject\"}]\n```".into());
    }
    Reply::Content(match body["messages"].as_array().map_or(0, Vec::len) / 2 {
        1 => "[subject]: a toy\n[caption1]: a toy on a table\n[caption2]: the toy in a garden\n[Break down]: body; face".into(),
        2 => "The body and the face are the same in both images.".into(),
        _ => r#"{"parts": [{"part": "body", "score": 4}, {"part": "face", "score": 4}]}"#.into(),
    })
}

/// DreamBench as UNO releases it, on the project's sample subjects: `SUBJECT/FILE` images and
/// `dreambench_singleip.json` / `dreambench_multiip.json`, JSON arrays of `prompt` and
/// `image_paths` in the `./dreambooth/dataset/` form.
fn dreambench(dir: &Path) {
    let samples = root().join("datasets/samples");
    let mut subjects: Vec<String> =
        std::fs::read_dir(&samples).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    subjects.sort();
    for subject in &subjects {
        std::fs::create_dir_all(dir.join(subject)).unwrap();
        for file in ["studio.png", "beach.png"] {
            std::fs::copy(samples.join(subject).join(file), dir.join(subject).join(file)).unwrap();
        }
    }
    let reference = |subject: &str, file: &str| format!("./dreambooth/dataset/{subject}/{file}");
    let name = |subject: &str| subject.replace('_', " ");
    let scenes = ["in the snow", "on the beach"];
    let single: Vec<Value> = subjects
        .iter()
        .flat_map(|s| {
            scenes.map(|scene| serde_json::json!({"prompt": format!("a {} {scene}", name(s)), "image_paths": [reference(s, "studio.png")]}))
        })
        .collect();
    let multi: Vec<Value> = subjects
        .iter()
        .zip(subjects.iter().skip(1))
        .flat_map(|(a, b)| {
            scenes.map(|scene| {
                serde_json::json!({
                    "prompt": format!("a {} and a {} {scene}", name(a), name(b)),
                    "image_paths": [reference(a, "studio.png"), reference(b, "beach.png")],
                })
            })
        })
        .collect();
    std::fs::write(dir.join("dreambench_singleip.json"), serde_json::to_string_pretty(&single).unwrap()).unwrap();
    std::fs::write(dir.join("dreambench_multiip.json"), serde_json::to_string_pretty(&multi).unwrap()).unwrap();
}

/// The store's layout for the recipe: models, datasets and DreamBench under `uno/`.
struct Inputs {
    dinov2: &'static str,
}

fn upload_inputs(p: &Project, s3: &S3Server) -> Inputs {
    for (kind, dir, layout) in [
        ("flux-dev", "flux-bfl", "bfl"),
        ("flux-dev", "flux-diffusers", "diffusers"),
        ("dino", "dino", ""),
        ("clip", "clip", ""),
        ("dinov2", "dinov2", ""),
    ] {
        let mut args = vec!["model", "tiny", dir, "--kind", kind];
        if !layout.is_empty() {
            args.extend(["--layout", layout]);
        }
        p.unoflow(&args).ok();
        s3.upload_dir(&p.path(dir), &format!("uno/models/{dir}"));
    }
    let real = root().join("../shared/models/dinov2-small");
    let dinov2 = if real.join("model.safetensors").is_file() {
        s3.upload_dir(&real, "uno/models/dinov2-small");
        "s3://uno/models/dinov2-small"
    } else {
        println!("SKIPPED the real DINOv2-S: {} is not here; the tiny one filters", real.display());
        "s3://uno/models/dinov2"
    };
    dreambench(&p.path("dreambench"));
    s3.upload_dir(&p.path("dreambench"), "uno/dreambench");
    for file in ["subjects.jsonl", "objects365_classes.txt"] {
        let url = format!("{}/uno/datasets/{file}", s3.endpoint());
        ureq::put(&url).send_bytes(&std::fs::read(root().join("datasets").join(file)).unwrap()).unwrap();
    }
    Inputs { dinov2 }
}

/// The decoded pixels of a CSV column of PNG images (base64, header first), by digest.
fn pixels(csv: &[String]) -> Vec<String> {
    use base64::Engine;
    assert!(csv.len() > 1, "no images: {csv:?}");
    csv[1..]
        .iter()
        .map(|cell| {
            let png = base64::engine::general_purpose::STANDARD.decode(cell).expect("a base64 image");
            blake3::hash(image::load_from_memory(&png).expect("a PNG").to_rgb8().as_raw()).to_hex().to_string()
        })
        .collect()
}

fn with_vars<'a>(mut args: Vec<&'a str>, vars: &'a [String]) -> Vec<&'a str> {
    for v in vars {
        args.extend(["--var", v.as_str()]);
    }
    args
}

#[test]
fn uno_toml_runs_end_to_end_on_the_store_by_three_workers() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("uno");
    let p = Project::new();
    let inputs = upload_inputs(&p, &s3);
    let server = ChatServer::start(vlm);
    let dag = root().join("dags/uno.toml").to_string_lossy().into_owned();
    let mut vars: Vec<String> = VARS.iter().map(|v| v.to_string()).collect();
    vars.push("datasets=s3://uno/datasets".into());

    let mut owned = s3.env();
    owned.extend([
        ("FLUX_DIR", "s3://uno/models/flux-bfl".to_string()),
        ("DINOV2_DIR", inputs.dinov2.to_string()),
        ("DINO_DIR", "s3://uno/models/dino".to_string()),
        ("CLIP_DIR", "s3://uno/models/clip".to_string()),
        ("DREAMBENCH_DIR", "s3://uno/dreambench".to_string()),
        ("VLM_ENDPOINT", server.url.clone()),
        ("VLM_MODEL", "stand-in-vlm".to_string()),
    ]);
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let workspace = "s3://uno/ws";

    p.unoflow_env(&with_vars(vec!["validate", &dag], &vars), &env).ok();
    let run = p.unoflow_env(&with_vars(vec!["run", &dag, "--workspace", workspace, "--workers", "3", "-q"], &vars), &env).ok();
    assert!(run.stdout.contains(" 0 failed, 0 skipped; 0 row errors"), "{}", run.stdout);

    // Every node computed (or a view over computed ones); a rerun has nothing to do.
    let plan = p.unoflow_env(&with_vars(vec!["plan", &dag, "--workspace", workspace, "--json"], &vars), &env).ok();
    let states = plan_states(&plan);
    assert_eq!(states.len(), 24, "{states:?}");
    assert!(states.iter().all(|(_, state, _)| state == "cached" || state == "view"), "{states:?}");
    // Three workers shared the work, each recording the --vars.
    let runs: Value =
        serde_json::from_str(&p.unoflow_env(&["runs", "--dag", &dag, "--workspace", workspace, "--json"], &env).ok().stdout).unwrap();
    let workers: Vec<&Value> = runs.as_array().unwrap().iter().filter(|r| r.get("worker").is_some()).collect();
    assert!(workers.len() >= 3, "{runs}");
    assert!(workers.iter().all(|w| w["vars"]["lora_rank"] == 4), "{runs}");

    let sql = |query: &str| -> Vec<String> {
        let out =
            p.unoflow_env(&with_vars(vec!["sql", "--dag", &dag, "--workspace", workspace, "--format", "csv", query], &vars), &env).ok();
        out.stdout.lines().map(str::to_string).collect()
    };
    // Two subjects, one prompt, one seed: two diptychs, both past the (lowered) DINOv2 filter,
    // scored 4 by the VLM's three rounds, their second subject located.
    assert_eq!(sql("SELECT count(*) AS n FROM diptychs"), ["n", "2"]);
    assert_eq!(sql("SELECT count(*) AS n, min(vlm_score) AS lo, max(vlm_score) AS hi FROM vlm"), ["n,lo,hi", "2,4.0,4.0"]);
    assert_eq!(sql("SELECT count(*) AS n, min(box_x2 - box_x1) > 0 AS boxed FROM boxes"), ["n,boxed", "2,true"]);
    // Both stages trained (stage II on the triplets of regenerated second references) their two steps; the evaluations ran with the stage-II LoRA.
    assert_eq!(sql("SELECT max(step) AS s FROM stage1"), ["s", "2"]);
    assert_eq!(sql("SELECT count(*) AS n FROM triplets"), ["n", "2"]);
    assert_eq!(sql("SELECT max(step) AS s FROM stage2"), ["s", "2"]);
    let report = sql(
        "SELECT protocol, images, dino IS NOT NULL AND clip_i IS NOT NULL AND clip_t IS NOT NULL AS scored FROM report ORDER BY protocol",
    );
    assert_eq!(report, ["protocol,images,scored", "multi,4,true", "single,2,true"]);
    let asked = server.requests();
    let detects = asked.iter().filter(|b| first_user_text(b).starts_with("Locate the ")).count();
    assert_eq!((asked.len() - detects, detects), (6, 2), "three rounds per pair, one detection per pair");
    // The export under the store's workspace is in the bucket.
    assert!(s3.get_object("uno", "ws/exports/curated.parquet").is_some_and(|b| b.starts_with(b"PAR1")));

    // The same weights in the diffusers layout: other files, so the FLUX nodes compute again,
    // and the same pixels and scores come out (the PNGs' text chunks name the model's digest).
    let images = "SELECT image FROM diptychs ORDER BY row_id";
    let bfl = (pixels(&sql(images)), sql("SELECT * FROM report ORDER BY protocol"));
    let diffusers_env: Vec<(&str, &str)> =
        env.iter().map(|&(k, v)| if k == "FLUX_DIR" { (k, "s3://uno/models/flux-diffusers") } else { (k, v) }).collect();
    let run = p.unoflow_env(&with_vars(vec!["run", &dag, "--workspace", workspace, "--workers", "3", "-q"], &vars), &diffusers_env).ok();
    assert!(run.stdout.contains(" 0 failed, 0 skipped; 0 row errors"), "{}", run.stdout);
    let sql = |query: &str| -> Vec<String> {
        let args = with_vars(vec!["sql", "--dag", &dag, "--workspace", workspace, "--format", "csv", query], &vars);
        p.unoflow_env(&args, &diffusers_env).ok().stdout.lines().map(str::to_string).collect()
    };
    assert_eq!((pixels(&sql(images)), sql("SELECT * FROM report ORDER BY protocol")), bfl);
}
