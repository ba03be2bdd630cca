//! What a node is: its inputs' content, not their paths or times; and the device class and
//! precision for nodes that run models. The same weights and data copied elsewhere keep every
//! node cached; a byte changed recomputes.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::support::{Project, plan_states};

/// Photos read from `${env:DATA}`, thumbnails (no model), pairs (a view) and their DINOv2
/// similarity with the weights at `${env:WEIGHTS}`.
const DAG: &str = r#"[dag]
name = "identity"
seed = 7
workspace = "ws"

[nodes.photos]
op = "read"
path = "${env:DATA}"
format = "images"

[nodes.thumbs]
op = "thumbnail"
inputs = ["photos"]
max_side = 8

[nodes.pairs]
op = "sql"
inputs = ["photos"]
query = "SELECT make_array(a.row_id, b.row_id) AS parent_ids, a.image AS ref_image, b.image AS target_image FROM photos a JOIN photos b ON a.path < b.path"

[nodes.sims]
op = "image_similarity"
inputs = ["pairs"]
weights = "${env:WEIGHTS}"
resize = 32
crop = 32
"#;

/// A project with the DAG, three photos in `data/` and a copy of the tiny DINOv2 in `weights/`.
fn project() -> Project {
    let p = Project::new();
    p.noise_images("data", 3, 24, 11);
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("operators/models/fixtures/dinov2/tiny");
    copy_folder(&tiny, &p.path("weights"));
    p.dag(DAG);
    p
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// `plan --json` with the data and weights at these paths (relative to the project).
fn plan(p: &Project, data: &str, weights: &str, extra: &[&str]) -> Vec<(String, String, Vec<String>)> {
    let (data, weights) = (p.path(data), p.path(weights));
    let mut args = vec!["plan", "dag.toml", "--json"];
    args.extend_from_slice(extra);
    plan_states(&p.unoflow_env(&args, &[("DATA", data.to_str().unwrap()), ("WEIGHTS", weights.to_str().unwrap())]).ok())
}

fn state<'a>(plan: &'a [(String, String, Vec<String>)], node: &str) -> (&'a str, &'a [String]) {
    let (_, state, reasons) = plan.iter().find(|(n, ..)| n == node).unwrap_or_else(|| panic!("no node {node}: {plan:?}"));
    (state, reasons)
}

fn run(p: &Project, data: &str, weights: &str) -> String {
    let (data, weights) = (p.path(data), p.path(weights));
    p.unoflow_env(&["run", "dag.toml", "-q"], &[("DATA", data.to_str().unwrap()), ("WEIGHTS", weights.to_str().unwrap())]).ok().stdout
}

#[track_caller]
fn all_cached(plan: &[(String, String, Vec<String>)]) {
    for (node, state, reasons) in plan {
        assert!(state == "cached" || state == "view", "{node} is {state}: {reasons:?}");
    }
}

#[test]
fn copied_weights_and_data_keep_every_node_cached() {
    let p = project();
    let first = run(&p, "data", "weights");
    assert!(first.contains("3 computed"), "{first}");
    all_cached(&plan(&p, "data", "weights", &[]));

    // The same files at other paths: another disk, another host's mount.
    copy_folder(&p.path("weights"), &p.path("elsewhere/dinov2"));
    copy_folder(&p.path("data"), &p.path("moved/photos"));
    all_cached(&plan(&p, "moved/photos", "elsewhere/dinov2", &[]));

    // A new modification time, the same content: still the same node.
    let weights = p.path("elsewhere/dinov2/model.safetensors");
    std::fs::File::options().write(true).open(&weights).unwrap().set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    std::fs::File::options().write(true).open(p.path("moved/photos/img0001.png")).unwrap().set_modified(SystemTime::now()).unwrap();
    all_cached(&plan(&p, "moved/photos", "elsewhere/dinov2", &[]));

    // One byte of the weights changed: the model node is stale, and says why; the others are not.
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let changed = plan(&p, "moved/photos", "elsewhere/dinov2", &[]);
    assert_eq!(state(&changed, "sims"), ("stale", &["source files changed".to_string()][..]));
    assert_eq!(state(&changed, "thumbs").0, "cached");

    // One byte of a photo changed: the read and everything after it.
    let photo = p.path("moved/photos/img0002.png");
    let mut bytes = std::fs::read(&photo).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&photo, bytes).unwrap();
    let changed = plan(&p, "moved/photos", "weights", &[]);
    assert_eq!(state(&changed, "photos"), ("stale", &["source files changed".to_string()][..]));
    assert_eq!(state(&changed, "thumbs"), ("stale", &["input `photos` changed".to_string()][..]));
}

#[test]
fn the_host_keeps_digests_of_settled_large_files() {
    let p = project();
    // Written an hour ago: settled, so its digest is kept (the 749-byte config is hashed each time).
    let weights = p.path("weights/model.safetensors");
    std::fs::File::options().write(true).open(&weights).unwrap().set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
    let cache = p.path("host-cache");
    let env = [
        ("DATA", p.path("data").to_str().unwrap().to_string()),
        ("WEIGHTS", p.path("weights").to_str().unwrap().to_string()),
        ("UNOFLOW_CACHE_DIR", cache.to_str().unwrap().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = plan_states(&p.unoflow_env(&["plan", "dag.toml", "--json"], &env).ok());
    let entries = p.files_under("host-cache/digests");
    assert_eq!(entries.len(), 1, "{entries:?}");
    // An entry made unreadable is ignored and written again, never an error.
    std::fs::write(&entries[0], "not json").unwrap();
    let again = plan_states(&p.unoflow_env(&["plan", "dag.toml", "--json"], &env).ok());
    assert_eq!(first, again);
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&entries[0]).unwrap()).expect("the entry was rewritten");
    assert_eq!(entry["path"].as_str(), weights.to_str());
    assert_eq!(entry["blake3"].as_str().unwrap(), blake3::hash(&std::fs::read(&weights).unwrap()).to_hex().as_str());
}

#[test]
fn model_nodes_are_fingerprinted_for_their_device_class_and_precision() {
    let p = project();
    run(&p, "data", "weights");
    let cpu = plan(&p, "data", "weights", &["--device", "cpu"]);
    all_cached(&cpu);
    // A CUDA run (bf16) would recompute the model node and nothing else; planning it needs no GPU.
    let cuda = plan(&p, "data", "weights", &["--device", "cuda"]);
    assert_eq!(state(&cuda, "sims"), ("stale", &["device changed: cpu/f32 → cuda/bf16".to_string()][..]));
    for node in ["photos", "thumbs"] {
        assert_eq!(state(&cuda, node).0, "cached", "{node}");
    }
    let fingerprint = |plan: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(plan).unwrap();
        v.as_array().unwrap().iter().map(|n| n["fingerprint"].as_str().unwrap().to_string()).collect()
    };
    let env = [("DATA", p.path("data")), ("WEIGHTS", p.path("weights"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.to_str().unwrap())).collect();
    let on = |device: &str| fingerprint(&p.unoflow_env(&["plan", "dag.toml", "--json", "--device", device], &env).ok().stdout);
    // Every CUDA device of a run is the same class.
    assert_eq!(on("cuda:0"), on("cuda:3"));
    assert_ne!(on("cpu"), on("cuda"));
}

/// An operator whose parameters decide whether it runs a model: `dedup` by pHash keeps its
/// output on another device; by DINOv2 embeddings it does not.
#[test]
fn a_node_is_device_dependent_only_when_its_parameters_run_a_model() {
    let p = Project::new();
    p.noise_images("data", 3, 24, 5);
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("operators/models/fixtures/dinov2/tiny");
    p.dag(&format!(
        "[dag]\nname = \"devices\"\nworkspace = \"ws\"\n\n[nodes.photos]\nop = \"read\"\npath = \"data\"\nformat = \"images\"\n\n\
         [nodes.hashes]\nop = \"dedup\"\ninputs = [\"photos\"]\n\n\
         [nodes.embeddings]\nop = \"dedup\"\ninputs = [\"photos\"]\nmethod = \"semantic\"\nweights = \"{}\"\n",
        tiny.display()
    ));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let cuda = plan_states(&p.unoflow(&["plan", "dag.toml", "--json", "--device", "cuda"]).ok());
    assert_eq!(state(&cuda, "hashes").0, "cached");
    assert_eq!(state(&cuda, "embeddings"), ("stale", &["device changed: cpu/f32 → cuda/bf16".to_string()][..]));
}
