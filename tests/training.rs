//! `train_lora` end to end: steps and checkpoints, resume from the last checkpoint with the
//! same data order, stage II continuing stage I's LoRA.

use crate::support::{Project, sql_csv};

const DAG: &str = r#"[dag]
name = "train"
seed = 7
workspace = "ws"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.pairs]
op = "sql"
inputs = ["photos"]
query = "SELECT row_id, image AS ref_image, image AS target_image, 'a photo of ' || path AS prompt FROM photos"

[nodes.stage1]
op = "train_lora"
inputs = ["pairs"]
rank = 4
steps = 6
checkpoint_every = 3
learning_rate = 0.001
resolution = 64
text_dropout = 0.5

# The same training with per-block recomputation: less memory, the same bits. `recompute` does
# not enter the fingerprint; the salt keeps the two trainings apart.
[nodes.stage1_blocks]
op = "train_lora"
inputs = ["pairs"]
salt = "blocks"
rank = 4
steps = 6
checkpoint_every = 3
learning_rate = 0.001
resolution = 64
text_dropout = 0.5
recompute = "blocks"

[nodes.triplets]
op = "sql"
inputs = ["pairs", "stage1"]
query = "SELECT p.*, (SELECT checkpoint FROM stage1 WHERE checkpoint IS NOT NULL ORDER BY step DESC LIMIT 1) AS stage1_lora FROM pairs p"

[nodes.stage2]
op = "train_lora"
inputs = ["triplets"]
init_lora = "stage1_lora"
steps = 2
learning_rate = 0.001
resolution = 64
"#;

fn project() -> Project {
    let p = Project::new();
    for (i, (w, h)) in [(64, 64), (96, 64), (64, 96)].iter().enumerate() {
        p.solid_png(&format!("images/p{i}.png"), *w, *h, [40 * i as u8, 120, 200]);
    }
    p.dag(DAG);
    p
}

#[test]
fn trains_checkpoints_resumes_and_continues_in_stage_two() {
    let p = project();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let steps = sql_csv(&p, "SELECT step, loss, grad_norm, examples_seen, checkpoint IS NOT NULL AS saved FROM stage1 ORDER BY step");
    assert_eq!(steps.len(), 7, "{steps:?}");
    let saved: Vec<&str> = steps[1..].iter().map(|l| l.rsplit(',').next().unwrap()).collect();
    assert_eq!(saved, ["false", "false", "true", "false", "false", "true"]);
    let loss: f64 = steps[1].split(',').nth(1).unwrap().parse().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{steps:?}");
    // Each step names the example it trained on; lineage can follow it.
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM stage1 WHERE array_length(parent_ids, 1) = 1"), ["n", "6"]);

    // The checkpoints are UNO-layout LoRA files in the node's artifact folder.
    // The column names them relative to the workspace, so the rows do not depend on where it is.
    let reference = sql_csv(&p, "SELECT checkpoint FROM stage1 WHERE step = 6")[1].clone();
    assert!(reference.starts_with("artifacts/") && reference.ends_with("step-000000006/lora.safetensors"), "{reference}");
    let lora = p.path("ws").join(&reference);
    assert!(lora.is_file(), "{}", lora.display());
    let optimizer = lora.with_file_name("optimizer.safetensors");
    assert!(optimizer.is_file());

    // Kill after step 3 (simulated: the last checkpoint removed) and rerun: the training resumes
    // from step 3 and repeats steps 4–6 exactly (same examples, noise, t and AdamW state).
    std::fs::remove_dir_all(lora.parent().unwrap()).unwrap();
    p.unoflow(&["run", "dag.toml", "-q", "--force", "stage1", "--only", "stage1"]).ok();
    let resumed = sql_csv(&p, "SELECT step, loss, grad_norm, examples_seen, checkpoint IS NOT NULL AS saved FROM stage1 ORDER BY step");
    assert_eq!(resumed, steps);

    let query = "SELECT step, loss, grad_norm, examples_seen, checkpoint IS NOT NULL AS saved FROM stage1_blocks ORDER BY step";
    assert_eq!(sql_csv(&p, query), steps, "recomputation changes memory, not results");
    let file = sql_csv(&p, "SELECT checkpoint FROM stage1_blocks WHERE step = 6")[1].clone();
    assert!(std::fs::read(p.path("ws").join(file)).unwrap() == std::fs::read(&lora).unwrap(), "the same LoRA, bit for bit");

    // Stage II starts from stage I's last LoRA and depends on it.
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM stage2"), ["n", "2"]);
    p.dag(&DAG.replace("learning_rate = 0.001\nresolution = 64\ntext_dropout", "learning_rate = 0.002\nresolution = 64\ntext_dropout"));
    let plan = p.unoflow(&["plan", "dag.toml"]).ok().stdout;
    assert!(plan.lines().any(|l| l.contains("stage2") && l.contains("stale")), "{plan}");
}

#[test]
fn a_training_killed_mid_way_resumes_from_its_checkpoint_with_the_same_steps() {
    let dag = |steps: u32| {
        format!(
            "[dag]\nname = \"k\"\nseed = 3\nworkspace = \"ws\"\n\n[nodes.photos]\nop = \"read\"\npath = \"images\"\nformat = \"images\"\n\n\
             [nodes.pairs]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT row_id, image AS ref_image, image AS target_image, path AS prompt FROM photos\"\n\n\
             [nodes.train]\nop = \"train_lora\"\ninputs = [\"pairs\"]\nrank = 4\nsteps = {steps}\ncheckpoint_every = 5\nlearning_rate = 0.001\nresolution = 64\n"
        )
    };
    // The uninterrupted run, in another project.
    let clean = project();
    clean.dag(&dag(30));
    clean.unoflow(&["run", "dag.toml", "-q"]).ok();
    let expected = sql_csv(&clean, "SELECT step, loss, grad_norm FROM train ORDER BY step");

    let p = project();
    p.dag(&dag(30));
    let mut child = p.spawn(&["run", "dag.toml", "-q"]);
    // Kill (SIGKILL) once the first checkpoints are on disk and the training is under way.
    let started = std::time::Instant::now();
    let mut checkpoints = 0;
    while started.elapsed() < std::time::Duration::from_secs(120) {
        checkpoints = p.files_under("ws/artifacts").iter().filter(|f| f.ends_with("rows.json")).count();
        if checkpoints >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(checkpoints >= 2, "no checkpoint appeared");
    let first = p.files_under("ws/artifacts").into_iter().find(|f| f.ends_with("step-000000005/rows.json")).unwrap();
    let written = std::fs::metadata(&first).unwrap().modified().unwrap();
    let rerun = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    // The kill landed in the training (the node was not finished), and the rerun resumed it.
    assert!(rerun.stdout.lines().any(|l| l.starts_with("train ") && l.contains("computed")), "{}", rerun.stdout);
    assert_eq!(sql_csv(&p, "SELECT step, loss, grad_norm FROM train ORDER BY step"), expected);
    // Steps up to the last checkpoint were not trained again: their checkpoint is untouched.
    assert_eq!(std::fs::metadata(&first).unwrap().modified().unwrap(), written);
}

#[test]
fn rows_naming_different_loras_fail_the_training_with_the_column_named() {
    let p = project();
    p.write("a.safetensors", "x");
    p.dag(
        r#"[dag]
name = "two"
workspace = "ws"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.pairs]
op = "sql"
inputs = ["photos"]
query = "SELECT row_id, image AS ref_image, image AS target_image, path AS prompt, 'lora_' || path AS init FROM photos"

[nodes.stage2]
op = "train_lora"
inputs = ["pairs"]
init_lora = "init"
steps = 1
resolution = 64
"#,
    );
    let run = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(1);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("`init`") && all.contains("different LoRA files"), "{all}");
}

#[test]
fn a_training_on_a_table_stored_in_several_parts_is_one_training() {
    let p = Project::new();
    // 20 images: `thumbnail` takes 16 a unit, so its table has two part files.
    for i in 0..20u8 {
        p.solid_png(&format!("images/p{i:02}.png"), 48, 48, [10 * i, 100, 200 - 5 * i]);
    }
    p.dag(
        r#"[dag]
name = "parts"
seed = 2
workspace = "ws"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.thumbs]
op = "thumbnail"
inputs = ["photos"]
max_side = 32

[nodes.train]
op = "train_lora"
inputs = ["thumbs"]
prompt = "path"
target = "image"
refs = ["image"]
rank = 2
steps = 3
learning_rate = 0.001
resolution = 32
"#,
    );
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let parts = p.files_under("ws/tables/thumbs").into_iter().filter(|f| f.extension().is_some_and(|e| e == "parquet")).count();
    assert!(parts >= 2, "the input has several parts: {parts}");
    // One row per step, once: not one training per part, each resuming the other's.
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n, count(DISTINCT step) AS steps FROM train"), ["n,steps", "3,3"]);
}
