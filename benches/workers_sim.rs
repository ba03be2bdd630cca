//! Many workers on one workspace, simulated in one process: W workers (the engine's own
//! `exec::run` in worker mode, as tokio tasks) over an in-memory object store share a node of
//! U units whose time is a fixed sleep. Measured: throughput against the ideal (U × unit time /
//! slots), and object-store calls per unit (claims, commits, part uploads, listings,
//! heartbeats — everything the engine asks of the store, a listing counted as one call per
//! thousand keys, as object storage pages it). Then the same
//! with a tenth of the workers killed mid-unit (their tasks aborted): their units are taken
//! over after the lease.
//!
//! ```sh
//! cargo bench --bench workers_sim                # 200 workers, 20 000 units of 200 ms
//! cargo bench --bench workers_sim -- --quick     # 50 workers, 2 000 units
//! cargo bench --bench workers_sim -- WORKERS UNITS MS
//! ```
//!
//! Every worker runs as many units at once as the host has cores, so slots = W × cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use unoflow::exec::{RunOptions, Unobserved, WorkerOptions};
use unoflow::interrupt::Interrupt;
use unoflow::workspace::store::requests;

fn dag(bucket: &str, ms: u64) -> String {
    format!(
        r#"[dag]
name = "sim"
seed = 1
workspace = "memory://{bucket}/ws"

[nodes.items]
op = "read"
path = "items.jsonl"
format = "jsonl"

[nodes.work]
op = "sleep"
inputs = ["items"]
ms = {ms}
"#
    )
}

struct Outcome {
    seconds: f64,
    requests_per_unit: f64,
}

async fn simulate(workers: usize, units: usize, ms: u64, kill_tenth: bool, bucket: &str) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: Vec<String> = (0..units).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    std::fs::write(dir.path().join("items.jsonl"), lines.join("\n") + "\n").expect("data");
    std::fs::write(dir.path().join("dag.toml"), dag(bucket, ms)).expect("dag");
    let dag = Arc::new(unoflow::dag::load(&dir.path().join("dag.toml"), None, &unoflow::builtin_registry()).await.expect("the DAG loads"));
    // The input first, alone, so the measurement is of the shared node.
    let alone = RunOptions { only: vec!["items".into()], worker: Some(WorkerOptions::default()), ..RunOptions::default() };
    unoflow::exec::run(Arc::clone(&dag), alone, vec![], Interrupt::new(), Arc::new(Unobserved)).await.expect("items");
    let before = requests();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for rank in 0..workers {
        let worker = WorkerOptions { rank, world: workers, lease: Duration::from_secs(2), ..WorkerOptions::default() };
        let opts = RunOptions { worker: Some(worker), ..RunOptions::default() };
        let dag = Arc::clone(&dag);
        tasks.push(tokio::spawn(async move { unoflow::exec::run(dag, opts, vec![], Interrupt::new(), Arc::new(Unobserved)).await }));
    }
    if kill_tenth {
        tokio::time::sleep(Duration::from_millis(ms * 3 + ms / 2)).await;
        for task in tasks.iter().step_by(10) {
            task.abort();
        }
    }
    for task in tasks {
        match task.await {
            Ok(result) => {
                let report = result.expect("a worker fails");
                assert!(!report.failed(), "a node failed");
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => panic!("a worker panicked: {e}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Outcome { seconds, requests_per_unit: (requests() - before) as f64 / units as f64 }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let quick = std::env::args().any(|a| a == "--quick");
    let (workers, units, ms) = match args.as_slice() {
        [w, u, m, ..] => (w.parse().expect("WORKERS"), u.parse().expect("UNITS"), m.parse().expect("MS")),
        _ if quick => (50, 2_000, 200),
        _ => (200, 20_000, 200),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(4096).build().expect("runtime");
    println!("{workers} workers × {cores} slots, {units} units of {ms} ms, in-memory object store, lease 2 s");
    println!("{:<24} {:>9} {:>9} {:>10} {:>14}", "case", "ideal s", "took s", "of ideal", "calls / unit");
    for (label, kill) in [("all workers live", false), ("a tenth killed mid-unit", true)] {
        let bucket = if kill { "sim-killed" } else { "sim-live" };
        let outcome = runtime.block_on(simulate(workers, units, ms, kill, bucket));
        let live = if kill { workers - workers.div_ceil(10) } else { workers };
        let ideal = units as f64 * ms as f64 / 1000.0 / (live * cores) as f64;
        println!(
            "{label:<24} {ideal:>9.2} {:>9.2} {:>9.0}% {:>14.2}",
            outcome.seconds,
            100.0 * ideal / outcome.seconds,
            outcome.requests_per_unit
        );
    }
}
