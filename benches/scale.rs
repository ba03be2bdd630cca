//! Scale-out: the speed-up of 1 → 2 → 4 → 8 worker processes on one local workspace, on an
//! operator whose time is a fixed sleep (standing in for a GPU: the workers do not compete for
//! the CPU), each measured against the one-worker time of the same run.
//!
//! ```sh
//! cargo bench --bench scale              # 320 units of 250 ms
//! cargo bench --bench scale -- --quick   # 64 units of 100 ms
//! cargo bench --bench scale -- 640 250   # UNITS MS
//! ```
//!
//! A worker runs as many units at once as the host has cores (two here), so one worker is the
//! baseline, not one unit at a time; the ideal for N workers is N times its throughput.

use std::process::Command;
use std::time::Instant;

fn dag(ms: u64) -> String {
    format!(
        r#"[dag]
name = "scale"
seed = 1
workspace = "ws"

[nodes.items]
op = "read"
path = "items.jsonl"
format = "jsonl"

[nodes.work]
op = "sleep"
inputs = ["items"]
ms = {ms}

[nodes.summary]
op = "sql"
inputs = ["work"]
materialize = true
query = "SELECT COUNT(*) AS n FROM work"
"#
    )
}

/// Seconds for `workers` processes to complete the DAG in a fresh workspace.
fn run(rows: usize, ms: u64, workers: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: Vec<String> = (0..rows).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    std::fs::write(dir.path().join("items.jsonl"), lines.join("\n") + "\n").expect("data");
    std::fs::write(dir.path().join("dag.toml"), dag(ms)).expect("dag");
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_unoflow"))
        // No tuning flags: the default lease, as users run it.
        .args(["run", "dag.toml", "--quiet", "--workers", &workers.to_string()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("unoflow runs");
    assert!(status.success(), "the run failed");
    started.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (rows, ms) = match numbers.as_slice() {
        [rows, ms, ..] => (*rows as usize, *ms),
        _ if quick => (64, 100),
        _ => (320, 250),
    };
    println!("scale-out: {rows} units of {ms} ms (sleep), local folder workspace, {} cores", num_cpus());
    println!("{:>8} {:>10} {:>10} {:>10}", "workers", "seconds", "speed-up", "of ideal");
    let one = run(rows, ms, 1);
    println!("{:>8} {:>10.2} {:>10.2} {:>9.0}%", 1, one, 1.0, 100.0);
    for workers in [2, 4, 8] {
        let t = run(rows, ms, workers);
        let speedup = one / t;
        println!("{workers:>8} {t:>10.2} {speedup:>10.2} {:>9.0}%", 100.0 * speedup / workers as f64);
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
