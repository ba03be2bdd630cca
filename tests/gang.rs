//! `train_lora` trained by a gang of workers: the same LoRA and loss curve whatever the number
//! of peers, a peer killed mid-training, a worker arriving late.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use unoflow_models::weights::SafetensorsFile;

use crate::support::{Project, sql_csv};

/// A training of `steps` steps of 4 micro-batches (so up to 4 peers share each step).
fn dag(steps: u32, checkpoint_every: u32) -> String {
    format!(
        r#"[dag]
name = "gang"
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

[nodes.train]
op = "train_lora"
inputs = ["pairs"]
rank = 4
steps = {steps}
checkpoint_every = {checkpoint_every}
gradient_accumulation = 4
learning_rate = 0.001
resolution = 64
"#
    )
}

fn project(steps: u32, checkpoint_every: u32) -> Project {
    let p = Project::new();
    for (i, (w, h)) in [(64, 64), (96, 64), (64, 96), (80, 64), (64, 64)].iter().enumerate() {
        p.solid_png(&format!("images/p{i}.png"), *w, *h, [40 * i as u8, 120, 200 - 30 * i as u8]);
    }
    p.dag(&dag(steps, checkpoint_every));
    p
}

/// The steps' loss and gradient norm.
fn curve(p: &Project) -> Vec<(f64, f64)> {
    sql_csv(p, "SELECT loss, grad_norm FROM train ORDER BY step")[1..]
        .iter()
        .map(|l| {
            let (loss, norm) = l.split_once(',').unwrap();
            (loss.parse().unwrap(), norm.parse().unwrap())
        })
        .collect()
}

/// The LoRA of the last checkpoint, tensor by tensor.
fn lora(p: &Project) -> Vec<(String, Vec<f32>)> {
    let reference = sql_csv(p, "SELECT checkpoint FROM train WHERE checkpoint IS NOT NULL ORDER BY step DESC LIMIT 1")[1].clone();
    let file = SafetensorsFile::open(&p.path("ws").join(reference)).unwrap();
    let mut keys: Vec<String> = file.keys().map(str::to_string).collect();
    keys.sort();
    keys.into_iter().map(|k| (k.clone(), file.read(&k).unwrap().convert::<f32>().to_vec::<f32>().unwrap())).collect()
}

/// ‖a − b‖ / ‖a‖ over every tensor: the largest.
fn lora_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(a.iter().map(|(k, _)| k).collect::<Vec<_>>(), b.iter().map(|(k, _)| k).collect::<Vec<_>>());
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| {
            let diff: f64 = x.iter().zip(y).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = x.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            diff / norm.max(1e-30)
        })
        .fold(0.0, f64::max)
}

#[track_caller]
fn assert_same_curve(expected: &[(f64, f64)], got: &[(f64, f64)], what: &str) {
    assert_eq!(expected.len(), got.len(), "{what}: {got:?}");
    for (step, ((l1, g1), (l2, g2))) in expected.iter().zip(got).enumerate() {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs());
        assert!(close(*l1, *l2) && close(*g1, *g2), "{what}, step {}: loss {l1} vs {l2}, norm {g1} vs {g2}", step + 1);
    }
}

/// The `peers` of the train node in the run records: `(first step, last step, peers)`.
fn peer_spans(p: &Project) -> Vec<(u64, u64, u64)> {
    let json: serde_json::Value = serde_json::from_str(&p.unoflow(&["runs", "--dag", "dag.toml", "--json"]).ok().stdout).unwrap();
    let records = json.as_array().cloned().or_else(|| json["runs"].as_array().cloned()).unwrap();
    let mut spans: Vec<(u64, u64, u64)> = records
        .iter()
        .flat_map(|r| r["nodes"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["name"] == "train")
        .flat_map(|n| n["peers"].as_array().cloned().unwrap_or_default())
        .map(|s| (s["first_step"].as_u64().unwrap(), s["last_step"].as_u64().unwrap(), s["peers"].as_u64().unwrap()))
        .collect();
    spans.sort();
    spans
}

#[test]
fn one_two_and_four_peers_train_the_same_lora_and_the_records_say_how_many_trained() {
    let alone = project(4, 2);
    alone.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(peer_spans(&alone).is_empty(), "a training alone is no gang");
    for workers in ["2", "4"] {
        let p = project(4, 2);
        p.unoflow(&["run", "dag.toml", "-q", "--workers", workers, "--lease-s", "4"]).ok();
        let peers: u64 = workers.parse().unwrap();
        assert_eq!(peer_spans(&p), [(1, 4, peers)], "{workers} workers: every step by all of them");
        assert_same_training(&alone, &p, &format!("{workers} peers"));
        // The step rows (examples used, checkpoints named) are the same rows.
        let rows = "SELECT step, examples_seen, parent_ids, checkpoint FROM train ORDER BY step";
        assert_eq!(sql_csv(&p, rows), sql_csv(&alone, rows));
    }
}

/// Waits (up to a minute) for `ready`, panicking with `what` if it never is.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The gang's record (peers, the leader first), while there is one.
fn gang_peers(p: &Project) -> Vec<String> {
    let record: Option<PathBuf> =
        p.files_under("ws/leases").into_iter().find(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("gang-")));
    record
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|r| r["peers"].as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_string)).collect()))
        .unwrap_or_default()
}

fn checkpointed(p: &Project, step: u32) -> bool {
    p.files_under("ws/artifacts").iter().any(|f| f.ends_with(format!("step-{step:09}/rows.json")))
}

/// The process id in a worker id (`HOST-PID-SALT`).
fn pid_of(worker: &str) -> u32 {
    worker.rsplit('-').nth(1).unwrap().parse().unwrap()
}

fn worker(p: &Project, rank: &str, world: &str) -> Child {
    p.spawn(&["worker", "dag.toml", "-q", "--rank", rank, "--world", world, "--lease-s", "4"])
}

#[track_caller]
fn wait_ok(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Asserts that `p` trained what `alone` did: the same loss curve and LoRA.
#[track_caller]
fn assert_same_training(alone: &Project, p: &Project, what: &str) {
    assert_same_curve(&curve(alone), &curve(p), what);
    let difference = lora_difference(&lora(alone), &lora(p));
    assert!(difference <= 1e-5, "{what}: the LoRA differs by {difference:e}");
}

/// Two workers train 12 steps (checkpoints every 3) as a gang; once the first checkpoint is
/// written, the peer at `victim` in the gang's record (0: the leader) is killed (SIGKILL). Returns
/// the project after the survivor finished, and a training alone to compare it with.
fn kill_a_peer(victim: usize, while_two: impl FnOnce(&Project)) -> (Project, Project) {
    let alone = project(12, 3);
    alone.unoflow(&["run", "dag.toml", "-q"]).ok();
    let p = project(12, 3);
    let children = [worker(&p, "0", "2"), worker(&p, "1", "2")];
    wait_for("a gang of two", || gang_peers(&p).len() == 2);
    while_two(&p);
    wait_for("the first checkpoint", || checkpointed(&p, 3));
    let pid = pid_of(&gang_peers(&p)[victim]);
    let (mut killed, survivor): (Vec<Child>, Vec<Child>) = children.into_iter().partition(|c| c.id() == pid);
    assert_eq!(killed.len(), 1, "the peer is one of the two workers");
    killed[0].kill().unwrap();
    killed[0].wait().unwrap();
    for child in survivor {
        wait_ok(child);
    }
    (alone, p)
}

#[test]
fn a_peer_killed_mid_training_leaves_the_others_to_finish_the_same_lora() {
    let (alone, p) = kill_a_peer(1, |p| {
        // `status` shows the gang, and keeps its token (the key to join it) to the workspace.
        let status = p.unoflow(&["status", "--dag", "dag.toml"]).ok().stdout;
        assert!(status.contains("gang training `train` (unit 0): 2 peers"), "{status}");
        let json = p.unoflow(&["status", "--dag", "dag.toml", "--json"]).ok().stdout;
        assert!(json.contains("\"gangs\"") && !json.contains("token"), "{json}");
    });
    let spans = peer_spans(&p);
    assert_eq!(spans.first().map(|s| (s.0, s.2)), Some((1, 2)), "{spans:?}");
    assert_eq!(spans.last().map(|s| (s.1, s.2)), Some((12, 1)), "the survivor finished alone: {spans:?}");
    assert_same_training(&alone, &p, "a peer killed");
}

#[test]
fn a_leader_killed_mid_training_is_replaced_by_a_follower_that_resumes_from_the_checkpoint() {
    let (alone, p) = kill_a_peer(0, |_| {});
    // The survivor took the unit over when the lease ran out, and trained from the last
    // checkpoint on, alone.
    let spans = peer_spans(&p);
    let resumed = spans.first().unwrap_or_else(|| panic!("the survivor led no gang: {spans:?}"));
    assert_eq!((resumed.0 - 1) % 3, 0, "resumed after a checkpoint: {spans:?}");
    assert_eq!(spans.last().map(|s| (s.1, s.2)), Some((12, 1)), "{spans:?}");
    assert_same_training(&alone, &p, "the leader killed");
}

#[test]
fn a_worker_arriving_late_joins_at_a_checkpoint() {
    let alone = project(16, 2);
    alone.unoflow(&["run", "dag.toml", "-q"]).ok();
    let p = project(16, 2);
    // Started alone (a world of one: the leader waits for nobody).
    let first = worker(&p, "0", "1");
    wait_for("the first checkpoint", || checkpointed(&p, 2));
    let late = worker(&p, "0", "1");
    wait_ok(first);
    wait_ok(late);
    let spans = peer_spans(&p);
    assert_eq!(spans.first().map(|s| (s.0, s.2)), Some((1, 1)), "{spans:?}");
    let joined = spans.iter().find(|s| s.2 == 2).unwrap_or_else(|| panic!("the late worker never joined: {spans:?}"));
    assert_eq!((joined.0 - 1) % 2, 0, "joined at a checkpoint: {spans:?}");
    assert_same_training(&alone, &p, "a late joiner");
}
