//! `evaluate`: the DreamBench protocol on tiny models, per image, then per subject with SQL.

use std::path::Path;

use crate::support::{Project, sql_csv};

#[test]
fn evaluates_single_and_multi_subject_prompts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("operators/models/fixtures");
    let p = Project::new();
    for (subject, rgb) in [("backpack", [200, 40, 40]), ("cat", [40, 200, 40]), ("dog", [40, 40, 200])] {
        p.solid_png(&format!("dreambench/{subject}/02.png"), 48, 40, rgb);
    }
    p.write(
        "protocol.json",
        r#"[
  {"prompt": "a backpack in the jungle", "image_paths": ["./dreambooth/dataset/backpack/02.png"]},
  {"prompt": "a cat and a dog in the snow", "image_paths": ["./dreambooth/dataset/cat/02.png", "./dreambooth/dataset/dog/02.png"]},
  {"prompt": "a missing subject", "image_paths": ["./dreambooth/dataset/bear/00.png"]}
]"#,
    );
    p.dag(&format!(
        r#"[dag]
name = "eval"
workspace = "ws"

[nodes.protocol]
op = "read"
path = "protocol.json"
format = "jsonl"

[nodes.eval]
op = "evaluate"
inputs = ["protocol"]
dataset = "dreambench"
dino_weights = "{dino}"
clip_weights = "{clip}"
images_per_prompt = 2
width = 32
height = 32
steps = 2
dino_crop = 32
clip_crop = 16

[nodes.per_subject]
op = "sql"
inputs = ["eval"]
query = "SELECT subject, count(*) AS images, avg(dino) AS dino, avg(clip_i) AS clip_i, avg(clip_t) AS clip_t FROM eval GROUP BY subject"
"#,
        dino = fixtures.join("dino/tiny").display(),
        clip = fixtures.join("clip/tiny").display()
    ));
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.contains("1 row error"), "{}", run.stdout);
    assert_eq!(sql_csv(&p, "SELECT subject, images FROM per_subject ORDER BY subject"), ["subject,images", "backpack,2", "cat+dog,2"]);
    let scores =
        sql_csv(&p, "SELECT count(*) AS n FROM eval WHERE dino BETWEEN -1 AND 1 AND clip_i BETWEEN -1 AND 1 AND clip_t BETWEEN -1 AND 1");
    assert_eq!(scores, ["n", "4"]);
    // Two images of a prompt differ (their own seeds).
    assert_eq!(sql_csv(&p, "SELECT count(DISTINCT md5(image)) AS n FROM eval"), ["n", "4"]);
    let errors = sql_csv(&p, "SELECT message FROM errors.eval");
    assert!(errors[1].contains("bear/00.png"), "{errors:?}");

    // A LoRA column left empty (a training that made no checkpoint) is a row error, never the
    // base model's scores under the LoRA's name.
    let dag = std::fs::read_to_string(p.path("dag.toml")).unwrap();
    let eval_node = dag.split("[nodes.eval]\n").nth(1).unwrap().split("\n\n").next().unwrap();
    let with_lora = eval_node.replace("inputs = [\"protocol\"]", "inputs = [\"untrained\"]\nlora = \"lora\"");
    p.dag(&format!(
        "{dag}\n[nodes.untrained]\nop = \"sql\"\ninputs = [\"protocol\"]\nquery = \"SELECT *, CAST(NULL AS VARCHAR) AS lora FROM protocol \
         WHERE prompt LIKE 'a backpack%'\"\n\n[nodes.eval_lora]\n{with_lora}\n"
    ));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let errors = sql_csv(&p, "SELECT message FROM errors.eval_lora");
    assert!(errors[1].contains("the `lora` column (parameter `lora`) is empty"), "{errors:?}");
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM eval_lora"), ["n", "0"]);
}
