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

# The same training with recomputation: less memory, the same numbers.
[nodes.stage1_recompute]
op = "train_lora"
inputs = ["pairs"]
rank = 4
steps = 6
checkpoint_every = 3
learning_rate = 0.001
resolution = 64
text_dropout = 0.5
recompute = true

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
    let lora = sql_csv(&p, "SELECT checkpoint FROM stage1 WHERE step = 6")[1].clone();
    assert!(lora.ends_with("step-000000006/lora.safetensors") && std::path::Path::new(&lora).is_file(), "{lora}");
    let optimizer = std::path::Path::new(&lora).with_file_name("optimizer.safetensors");
    assert!(optimizer.is_file());

    // Kill after step 3 (simulated: the last checkpoint removed) and rerun: the training resumes
    // from step 3 and repeats steps 4–6 exactly (same examples, noise, t and AdamW state).
    std::fs::remove_dir_all(std::path::Path::new(&lora).parent().unwrap()).unwrap();
    p.unoflow(&["run", "dag.toml", "-q", "--force", "stage1", "--only", "stage1"]).ok();
    let resumed = sql_csv(&p, "SELECT step, loss, grad_norm, examples_seen, checkpoint IS NOT NULL AS saved FROM stage1 ORDER BY step");
    assert_eq!(resumed, steps);

    let recomputed =
        sql_csv(&p, "SELECT step, loss, grad_norm, examples_seen, checkpoint IS NOT NULL AS saved FROM stage1_recompute ORDER BY step");
    assert_eq!(recomputed, steps, "recomputation changes memory, not results");

    // Stage II starts from stage I's last LoRA and depends on it.
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM stage2"), ["n", "2"]);
    p.dag(&DAG.replace("learning_rate = 0.001\nresolution = 64\ntext_dropout", "learning_rate = 0.002\nresolution = 64\ntext_dropout"));
    let plan = p.unoflow(&["plan", "dag.toml"]).ok().stdout;
    assert!(plan.lines().any(|l| l.contains("stage2") && l.contains("stale")), "{plan}");
}
