//! An operator's version is bumped whenever its output bytes change (DESIGN §4.4): a fingerprint
//! that says "same" must mean the same content, and a cached output made by older code must not
//! pass for a new one.
//!
//! Every operator that runs a model runs here on a tiny deterministic DAG (tiny random models,
//! CPU, seeded, a few rows), and each output table is digested (every column, images included;
//! files the rows name in the workspace by their content). `tests/fixtures/operator_outputs.json`
//! records per node the operator's version, the digest of its inputs and the digest of its
//! output. The output changed with the same version and the same inputs: the operator's code
//! changed its bytes, and its version must be bumped. Re-record with `UNOFLOW_BLESS=1` after a
//! bump, or when inputs changed upstream (a table that always matches the code).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::support::Project;

/// The table of record, committed.
const TABLE: &str = "tests/fixtures/operator_outputs.json";

/// The table: the CPU class it was recorded on, and each node's record.
#[derive(Debug, Serialize, Deserialize)]
struct Table {
    /// The matrix kernels pick their code path (and so their order of summation) by the CPU's
    /// vector extensions: output bytes are comparable only within one class.
    cpu: String,
    nodes: BTreeMap<String, Recorded>,
}

/// This CPU's class: its architecture and widest vector extension.
fn cpu_class() -> String {
    #[cfg(target_arch = "x86_64")]
    let level = if std::is_x86_feature_detected!("avx512f") {
        "avx512f"
    } else if std::is_x86_feature_detected!("avx2") {
        "avx2"
    } else {
        "sse2"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let level = "base";
    format!("{}+{level}", std::env::consts::ARCH)
}

/// One model-running operator's node in the fixture DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    op: String,
    version: u32,
    /// The digest of the node's input tables, in order.
    inputs: String,
    /// The digest of its output table.
    output: String,
}

/// Each model-running operator once (its node name first), on inputs from the project's own
/// files, small enough to run in seconds on a CPU.
const NODES: &[(&str, &str)] = &[
    ("diptychs", "incontext_generate"),
    ("dino", "dino_filter"),
    ("similarity", "image_similarity"),
    ("stage1", "train_lora"),
    ("regenerated", "regenerate_ref"),
    ("evaluation", "evaluate"),
    ("groups", "dedup"),
    ("leaks", "contamination"),
];

fn dag(root: &Path) -> String {
    format!(
        r#"[dag]
name = "operator_outputs"
seed = 11
workspace = "ws"

[vars]
datasets = "{datasets}"
fixtures = "{fixtures}"

[nodes.subjects]
op = "read"
path = "${{datasets}}/subjects.jsonl"
format = "jsonl"

[nodes.sample]
op = "sql"
inputs = ["subjects"]
query = "SELECT * FROM subjects ORDER BY category, style LIMIT 1"

[nodes.prompts]
op = "diptych_prompts"
inputs = ["sample"]
companions = "${{datasets}}/objects365_classes.txt"
prompts_per_subject = 2
resolutions = ["64x64"]

[nodes.diptychs]
op = "incontext_generate"
inputs = ["prompts"]
steps = 2
seeds_per_prompt = 1

[nodes.pairs]
op = "split_diptych"
inputs = ["diptychs"]

[nodes.dino]
op = "dino_filter"
inputs = ["pairs"]
weights = "${{fixtures}}/dinov2/tiny"
resize = 32
crop = 32
threshold = 0.5

[nodes.similarity]
op = "image_similarity"
inputs = ["pairs"]
weights = "${{fixtures}}/dinov2/tiny"
resize = 32
crop = 32

[nodes.groups]
op = "dedup"
inputs = ["pairs"]
column = "target_image"
method = "semantic"
weights = "${{fixtures}}/dinov2/tiny"
threshold = 0.9

[nodes.samples]
op = "read"
path = "${{datasets}}/samples"
format = "images"

[nodes.leaks]
op = "contamination"
inputs = ["pairs", "samples"]
column = "ref_image"
weights = "${{fixtures}}/dinov2/tiny"

[nodes.curated]
op = "sql"
inputs = ["dino"]
query = "SELECT row_id, subject1 || ' with ' || subject2 AS prompt, subject2, scene1, ref_image, target_image FROM dino"

[nodes.stage1]
op = "train_lora"
inputs = ["curated"]
rank = 2
steps = 2
learning_rate = 0.001
resolution = 32
checkpoint_every = 2

[nodes.with_boxes]
op = "sql"
inputs = ["curated", "stage1"]
query = """
SELECT c.*, 8 AS box_x1, 8 AS box_y1, 24 AS box_x2, 24 AS box_y2,
       (SELECT checkpoint FROM stage1 WHERE checkpoint IS NOT NULL ORDER BY step DESC LIMIT 1) AS stage1_lora
FROM curated c
"""

[nodes.regenerated]
op = "regenerate_ref"
inputs = ["with_boxes"]
dinov2_weights = "${{fixtures}}/dinov2/tiny"
lora = "stage1_lora"
width = 32
height = 32
steps = 1
resize = 32
crop = 32
threshold = 0.5

[nodes.protocol]
op = "read"
path = "${{datasets}}/dreambench_sample.json"
format = "jsonl"

[nodes.one_prompt]
op = "sql"
inputs = ["protocol"]
query = "SELECT * FROM protocol ORDER BY row_id LIMIT 1"

[nodes.evaluation]
op = "evaluate"
inputs = ["one_prompt"]
dataset = "${{datasets}}/samples"
dino_weights = "${{fixtures}}/dino/tiny"
clip_weights = "${{fixtures}}/clip/tiny"
width = 32
height = 32
steps = 1
dino_crop = 32
clip_crop = 16
"#,
        datasets = root.join("datasets").display(),
        fixtures = root.join("operators/models/fixtures").display(),
    )
}

/// The digest of a node's output: its rows in `row_id` order as JSON lines (binary cells in
/// base64), with every string naming a file in the workspace replaced by that file's digest
/// (LoRA checkpoints: their names hold fingerprints, their content is the output).
fn table_digest(p: &Project, node: &str) -> String {
    let out = p.unoflow(&["sql", "--dag", "dag.toml", "--format", "json", &format!("SELECT * FROM {node} ORDER BY row_id")]).ok();
    let ws = p.path("ws");
    let mut hasher = blake3::Hasher::new();
    for line in out.stdout.lines() {
        let mut row: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{node}: {e}: {line}"));
        with_files_digested(&mut row, &ws);
        hasher.update(row.to_string().as_bytes()).update(b"\n");
    }
    hasher.finalize().to_hex()[..32].to_string()
}

fn with_files_digested(value: &mut serde_json::Value, ws: &Path) {
    match value {
        serde_json::Value::String(s) if !s.is_empty() && !s.starts_with('/') && ws.join(&*s).is_file() => {
            *s = format!("file:{}", blake3::hash(&std::fs::read(ws.join(&*s)).unwrap()).to_hex());
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| with_files_digested(v, ws)),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(|v| with_files_digested(v, ws)),
        _ => {}
    }
}

/// The operators' versions, as `unoflow ops NAME` prints them.
fn version(p: &Project, op: &str) -> u32 {
    let text = p.unoflow(&["ops", op]).ok().stdout;
    let after = text.split("version ").nth(1).unwrap_or_else(|| panic!("`unoflow ops {op}` names no version:\n{text}"));
    after.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// The node's input names, from the DAG text (`inputs = [...]` in its table).
fn inputs_of(dag: &str, node: &str) -> Vec<String> {
    let table = dag.split(&format!("[nodes.{node}]\n")).nth(1).unwrap();
    let line = table.lines().find(|l| l.starts_with("inputs = ")).unwrap();
    serde_json::from_str(line.trim_start_matches("inputs = ")).unwrap()
}

fn table_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(TABLE)
}

#[test]
fn operator_outputs_change_only_with_their_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    let text = dag(root);
    p.dag(&text);
    p.unoflow(&["run", "dag.toml", "-q", "--device", "cpu"]).ok();
    let mut digests = BTreeMap::new();
    let mut digest = |node: &str| digests.entry(node.to_string()).or_insert_with(|| table_digest(&p, node)).clone();
    let now: BTreeMap<String, Recorded> = NODES
        .iter()
        .map(|&(node, op)| {
            let inputs: Vec<String> = inputs_of(&text, node).iter().map(|i| digest(i)).collect();
            let inputs = blake3::hash(inputs.join(",").as_bytes()).to_hex()[..32].to_string();
            (node.to_string(), Recorded { op: op.to_string(), version: version(&p, op), inputs, output: digest(node) })
        })
        .collect();

    if std::env::var_os("UNOFLOW_BLESS").is_some_and(|v| v == "1") {
        let table = Table { cpu: cpu_class(), nodes: now };
        std::fs::write(table_path(), serde_json::to_string_pretty(&table).unwrap() + "\n").unwrap();
        return;
    }
    let table: Table = serde_json::from_slice(&std::fs::read(table_path()).expect("the table of record"))
        .unwrap_or_else(|e| panic!("{TABLE}: {e}; re-record with UNOFLOW_BLESS=1"));
    let recorded = table.nodes;
    let mut now = now;
    if table.cpu != cpu_class() {
        // Another CPU class computes other bytes with the same code: only versions compare.
        println!("SKIPPED the byte comparison: {TABLE} was recorded on {}, this CPU is {}", table.cpu, cpu_class());
        for (node, new) in &mut now {
            if let Some(old) = recorded.get(node) {
                (new.inputs, new.output) = (old.inputs.clone(), old.output.clone());
            }
        }
    }
    let mut problems = Vec::new();
    for (node, new) in &now {
        let Some(old) = recorded.get(node) else {
            problems.push(format!("`{}` ({node}) is not in {TABLE}: record it with UNOFLOW_BLESS=1", new.op));
            continue;
        };
        if new == old {
            continue;
        }
        let problem = if new.version == old.version && new.inputs == old.inputs && new.output != old.output {
            format!(
                "`{}`'s output bytes changed without a version bump ({node}: {} → {}): bump the operator's version in its \
                 spec and re-record with UNOFLOW_BLESS=1",
                new.op, old.output, new.output
            )
        } else if new.version != old.version {
            format!("`{}` is at version {}, {TABLE} records {}: re-record with UNOFLOW_BLESS=1", new.op, new.version, old.version)
        } else {
            format!("the inputs of `{}` ({node}) changed upstream: re-record with UNOFLOW_BLESS=1", new.op)
        };
        problems.push(problem);
    }
    for node in recorded.keys().filter(|n| !now.contains_key(*n)) {
        problems.push(format!("{TABLE} records `{node}`, which the fixture no longer runs: re-record with UNOFLOW_BLESS=1"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every operator whose output depends on the device (the model-running ones) is in the
/// fixture, so none can change its bytes unnoticed.
#[test]
fn every_model_operator_is_in_the_fixture() {
    let model_ops: Vec<&str> = unoflow_operators::builtin_operators()
        .iter()
        .filter(|op| op.spec().device_dependence == unoflow_api::DeviceDependence::ClassAndPrecision)
        .map(|op| op.spec().name)
        .collect();
    for op in &model_ops {
        assert!(NODES.iter().any(|(_, o)| o == op), "`{op}` runs a model but is not in the fixture of operator_outputs.rs");
    }
    assert_eq!(model_ops.len(), NODES.len(), "{model_ops:?}");
}
