//! `unoflow run`: caching, summaries, concurrency between runs, `--only`/`--force`, exports,
//! run records and secrets, and the quickstart DAG end to end.

use std::path::Path;

use crate::support::{Project, sql_csv, thumbs_dag};

fn project(images: usize) -> Project {
    let p = Project::new();
    for i in 0..images {
        p.solid_png(&format!("images/s{}/x{i}.png", i % 2), 30 + i as u32, 20, [i as u8 * 10, 50, 90]);
    }
    p.dag(&thumbs_dag(8));
    p
}

#[test]
fn second_run_is_all_cached() {
    let p = project(5);
    let first = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    // `small` is a view: nothing to compute (issue 13).
    assert!(first.stdout.contains("2 computed, 0 resumed, 0 cached, 1 view"), "{}", first.stdout);
    assert!(first.stdout.lines().any(|l| l.starts_with("thumbs") && l.contains("computed") && l.contains(" 5 ")), "{}", first.stdout);
    let second = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(second.stdout.contains("0 computed, 0 resumed, 2 cached, 1 view"), "{}", second.stdout);
}

#[test]
fn force_and_only() {
    let p = project(3);
    let only = p.unoflow(&["run", "dag.toml", "-q", "--only", "thumbs"]).ok();
    assert!(only.stdout.contains("2 computed"), "{}", only.stdout);
    assert!(!only.stdout.lines().any(|l| l.starts_with("small")), "{}", only.stdout);
    let forced = p.unoflow(&["run", "dag.toml", "-q", "--force", "thumbs"]).ok();
    assert!(forced.stdout.contains("1 computed, 0 resumed, 1 cached, 1 view"), "{}", forced.stdout);
    let run = p.unoflow(&["run", "dag.toml", "--only", "thumbz"]).expect_code(2);
    assert!(run.stderr.contains("did you mean `thumbs`?"), "{}", run.stderr);
}

#[test]
fn a_second_run_on_the_same_workspace_refuses_or_waits() {
    let p = project(3);
    p.unoflow(&["run", "dag.toml", "-q", "--only", "photos"]).ok(); // makes the workspace
    // Hold the workspace lock the way a running `unoflow run` does.
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(p.path("ws/lock")).unwrap();
    lock.lock().unwrap();
    std::fs::write(p.path("ws/lock"), "pid 4242 since now").unwrap();
    let refused = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(1);
    assert!(refused.stderr.contains("another `unoflow run` is working in"), "{}", refused.stderr);
    assert!(refused.stderr.contains("pid 4242"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--wait"), "{}", refused.stderr);
    let waiting = p.spawn(&["run", "dag.toml", "-q", "--wait"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    lock.unlock().unwrap();
    let waited = waiting.wait_with_output().unwrap();
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    assert!(String::from_utf8_lossy(&waited.stdout).contains("1 computed"));
}

#[test]
fn concurrent_runs_do_not_corrupt_the_workspace() {
    let p = Project::new();
    p.noise_images("images", 48, 256, 7);
    p.dag(&thumbs_dag(16));
    let runs: Vec<_> = (0..3).map(|_| p.spawn(&["run", "dag.toml", "-q", "--wait"])).collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM thumbs"), ["n,ids", "48,48"]);
    let last = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(last.stdout.contains("2 cached, 1 view"), "{}", last.stdout);
}

#[test]
fn export_names_cannot_escape_the_folder() {
    let p = project(2);
    p.dag(&format!(
        "{}\n[nodes.named]\nop = \"sql\"\ninputs = [\"thumbs\"]\nquery = \"SELECT row_id, '../../escape/' || path AS name, image FROM thumbs\"\n\n\
         [nodes.out]\nop = \"export\"\ninputs = [\"named\"]\nformat = \"images\"\nname_column = \"name\"\npath = \"exported\"\n",
        thumbs_dag(8)
    ));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let files = p.files_under("exported");
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n == ".unoflow-export" || n.starts_with("_.._escape_s")), "{names:?}");
    assert!(files.iter().all(|f| f.starts_with(p.path("exported"))));
    assert!(!p.path("escape").exists() && !Path::new("/escape").exists());
}

#[test]
fn export_refuses_to_replace_a_folder_it_did_not_write() {
    let p = project(1);
    p.write("exported/mine.txt", "precious");
    p.dag(&format!("{}\n[nodes.out]\nop = \"export\"\ninputs = [\"thumbs\"]\nformat = \"images\"\npath = \"exported\"\n", thumbs_dag(8)));
    // Refused at validation, before anything runs.
    let run = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(2);
    assert!(run.stderr.contains("refusing to replace"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(p.path("exported/mine.txt")).unwrap(), "precious");
}

#[test]
fn deleted_exports_are_written_again() {
    let p = project(2);
    p.dag(&format!(
        "{}\n[nodes.out]\nop = \"export\"\ninputs = [\"thumbs\"]\nformat = \"parquet\"\npath = \"out/t.parquet\"\n",
        thumbs_dag(8)
    ));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    std::fs::remove_file(p.path("out/t.parquet")).unwrap();
    let plan = p.unoflow(&["plan", "dag.toml"]).ok();
    assert!(plan.stdout.contains("t.parquet is missing"), "{}", plan.stdout);
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(p.path("out/t.parquet").exists());
}

#[test]
fn secrets_never_reach_the_workspace() {
    let p = project(1);
    p.dag(&format!(
        "{}\n[nodes.keyed]\nop = \"sql\"\ninputs = [\"thumbs\"]\nquery = \"SELECT row_id, '${{env:UNOFLOW_TEST_API_KEY}}' = 'x' AS authorised FROM thumbs\"\n",
        thumbs_dag(8)
    ));
    let secret = "sk-test-5ecret-value";
    let out = p.command(&["run", "dag.toml", "-q"]).env("UNOFLOW_TEST_API_KEY", secret).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    for file in p.files_under("ws") {
        if file.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(!text.contains(secret), "secret in {}", file.display());
        }
    }
    let runs = p.unoflow(&["runs", "--workspace", "ws", "--json"]).ok();
    assert!(runs.stdout.contains("<redacted>"), "{}", runs.stdout);
}

#[test]
fn runs_are_recorded() {
    let p = project(2);
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let runs = p.unoflow(&["runs", "--dag", "dag.toml"]).ok();
    let lines: Vec<&str> = runs.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", runs.stdout);
    assert!(lines[1].contains("succeeded") && lines[1].contains("       2  "), "{}", runs.stdout);
    let json: serde_json::Value = serde_json::from_str(&p.unoflow(&["runs", "--workspace", "ws", "--json"]).ok().stdout).unwrap();
    let first = &json[0];
    assert_eq!(first["status"], "succeeded");
    assert!(first["dag_text"].as_str().unwrap().contains("[nodes.thumbs]"));
    assert_eq!(first["nodes"][1]["params"]["max_side"], 8);
    assert!(first["host"].as_str().is_some_and(|h| !h.is_empty()));
}

#[test]
fn photo_pairs_runs_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    let ws = p.path("ws");
    let dag = root.join("dags/photo_pairs.toml");
    let run = p.unoflow(&["run", dag.to_str().unwrap(), "-q", "--workspace", ws.to_str().unwrap()]).ok();
    assert!(run.stdout.contains("5 computed") && run.stdout.contains("3 views"), "{}", run.stdout);
    // 4 subjects × 3 scenes; each subject gives 3 × 2 ordered pairs.
    let q = |sql: &str| {
        p.unoflow(&["sql", "--dag", dag.to_str().unwrap(), "--workspace", ws.to_str().unwrap(), "--format", "csv", sql]).ok().stdout
    };
    assert_eq!(q("SELECT count(*) AS n FROM catalog"), "n\n12\n");
    assert_eq!(q("SELECT count(*) AS n FROM pairs"), "n\n24\n");
    let train: serde_json::Value = serde_json::from_slice(&std::fs::read(ws.join("exports/uno/train.json")).unwrap()).unwrap();
    let items = train.as_array().unwrap();
    // The DINOv2 ledger keeps every pair; the curated view and the export keep those above the
    // threshold.
    assert_eq!(q("SELECT count(*) AS n FROM dino"), "n\n24\n");
    let curated: usize = q("SELECT count(*) AS n FROM curated").lines().nth(1).unwrap().parse().unwrap();
    assert!(0 < curated && curated < 24, "{curated}");
    assert_eq!(items.len(), curated);
    for item in items {
        assert!(item["prompt"].as_str().unwrap().starts_with("a "));
        let target = ws.join("exports/uno").join(item["image_tgt_path"].as_str().unwrap());
        assert!(target.exists(), "{}", target.display());
        assert_eq!(item["image_paths"].as_array().unwrap().len(), 1);
    }
    assert!(ws.join("exports/catalog.parquet").exists());
}

#[test]
fn image_similarity_with_each_backbone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("operators/models/fixtures");
    let p = Project::new();
    p.dag(&format!(
        r#"[dag]
name = "sims"
workspace = "ws"

[nodes.photos]
op = "read"
path = "{samples}"
format = "images"

[nodes.pairs]
op = "sql"
inputs = ["photos"]
query = "SELECT make_array(a.row_id, b.row_id) AS parent_ids, a.path AS left_path, b.path AS right_path, a.image AS ref_image, b.image AS target_image FROM photos a JOIN photos b ON split_part(a.path, '/', 1) = split_part(b.path, '/', 1)"

[nodes.dinov2]
op = "image_similarity"
inputs = ["pairs"]
weights = "{fixtures}/dinov2/tiny"
pooling = "mean"
resize = 32
crop = 32

[nodes.dino]
op = "image_similarity"
inputs = ["pairs"]
backbone = "dino"
weights = "{fixtures}/dino/tiny"

[nodes.clip]
op = "image_similarity"
inputs = ["pairs"]
backbone = "clip"
weights = "{fixtures}/clip/tiny"
embeddings = true
"#,
        samples = root.join("datasets/samples").display(),
        fixtures = fixtures.display()
    ));
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.contains("4 computed, 0 resumed, 0 cached, 1 view"), "{}", run.stdout);
    for node in ["dinov2", "dino", "clip"] {
        let rows =
            sql_csv(&p, &format!("SELECT count(*) AS n, min(similarity) >= -1.0001 AND max(similarity) <= 1.0001 AS bounded FROM {node}"));
        assert_eq!(rows, ["n,bounded", "36,true"], "{node}");
        let same = sql_csv(&p, &format!("SELECT min(similarity) > 0.9999 AS ok FROM {node} WHERE left_path = right_path"));
        assert_eq!(same, ["ok", "true"], "{node}: an image is identical to itself");
    }
    let dims = sql_csv(&p, "SELECT array_length(similarity_left) AS d FROM clip LIMIT 1");
    assert_eq!(dims, ["d", "24"], "CLIP's projection dim");

    // A crop the fixed-size model cannot take is a clear error.
    let dag = std::fs::read_to_string(p.path("dag.toml")).unwrap().replace("embeddings = true", "embeddings = true\ncrop = 64");
    p.dag(&dag);
    let run = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(1);
    assert!(run.stderr.contains("CLIP takes 16×16 images"), "{}", run.stderr);
}
