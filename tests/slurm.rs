//! `unoflow submit --backend slurm` against a real Slurm: a one-node cluster
//! (`tools/slurm-one-node.sh`, Debian's `slurm-wlm` and `munge`) started for the test. One
//! array task is requeued with `scontrol requeue` and one worker killed outright while they
//! work; the array still finishes the DAG with every row once.
//!
//! Skipped where Slurm is not installed or the test is not root (slurmd starts jobs as their
//! submitters), unless UNOFLOW_REQUIRE_SLURM is set (CI sets it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Project, sleep_project};

/// A one-node cluster whose state lives in a temp folder; stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/slurm-one-node.sh")
}

impl Cluster {
    /// Starts the cluster with `cpus` CPUs on its node; `None` (the test skips) where Slurm or
    /// root is missing.
    fn start(cpus: usize) -> Option<Self> {
        let required = std::env::var_os("UNOFLOW_REQUIRE_SLURM").is_some();
        let installed = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged"].iter().all(|p| Path::new(p).exists());
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if !installed || !root {
            let why = if installed { "this test runs as root (slurmd starts jobs)" } else { "apt-get install slurm-wlm munge" };
            assert!(!required, "UNOFLOW_REQUIRE_SLURM is set but Slurm cannot start here: {why}");
            eprintln!("skipped: no one-node Slurm ({why})");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(script())
            .args(["start".as_ref(), dir.path().as_os_str()])
            .env("SLURM_ONE_NODE_CPUS", cpus.to_string())
            .output()
            .expect("the cluster script runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "the one-node cluster did not start:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let conf = stdout.lines().find_map(|l| l.strip_prefix("SLURM_CONF=")).expect("the script prints SLURM_CONF").into();
        Some(Self { dir, conf })
    }

    /// Runs a Slurm command (`squeue`, `scontrol`) against this cluster; its standard output.
    fn tool(&self, args: &[&str]) -> String {
        let out = Command::new(args[0]).args(&args[1..]).env("SLURM_CONF", &self.conf).output().expect("a Slurm tool runs");
        assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Each array task of `job` still queued: (task id, its own job id, state).
    fn tasks(&self, job: &str) -> Vec<(String, String, String)> {
        self.tool(&["squeue", "-h", "-r", "-j", job, "-o", "%K %A %T"])
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace().map(str::to_string);
                Some((words.next()?, words.next()?, words.next()?))
            })
            .collect()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.dir.path().join("log")).into_iter().flatten().flatten() {
            text += &format!("--- {}\n{}\n", entry.path().display(), std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["stop".as_ref(), self.dir.path().as_os_str()]).status();
    }
}

/// Polls `done` every 100 ms for at most `limit`; panics with `what` past that.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every array task's log, for failure messages.
fn worker_logs(p: &Project) -> String {
    let mut text = String::new();
    for file in std::fs::read_dir(p.path("")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".out")) {
        text += &format!("--- {}\n{}\n", file.path().display(), std::fs::read_to_string(file.path()).unwrap_or_default());
    }
    text
}

const ROWS: usize = 36;

#[test]
fn a_slurm_array_with_a_requeued_task_and_a_killed_worker_gives_every_row_once() {
    // One CPU per worker and more CPUs than a small CI machine has, so the three run at once.
    let Some(cluster) = Cluster::start(4) else { return };
    let p = sleep_project(ROWS, 400);
    let ws = p.path("shared-ws");
    let conf = cluster.conf.to_string_lossy().into_owned();
    let env = [("SLURM_CONF", conf.as_str())];
    let submit = p.unoflow_env(
        &[
            "submit",
            "dag.toml",
            "--backend",
            "slurm",
            "--workers",
            "3",
            "--workspace",
            &ws.to_string_lossy(),
            "--gpus-per-worker",
            "0",
            "--cpus-per-worker",
            "1",
            "--lease-s",
            "2",
            "--grace-s",
            "10",
            "--time",
            "5",
        ],
        &env,
    );
    let submit = submit.ok();
    let job = submit
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Submitted batch job "))
        .unwrap_or_else(|| panic!("sbatch's answer:\n{}\n{}", submit.stdout, submit.stderr))
        .trim()
        .to_string();

    // All three at work, and some units committed, before the disruptions.
    wait_for(Duration::from_secs(20), "three array tasks run", || cluster.tasks(&job).iter().filter(|t| t.2 == "RUNNING").count() == 3);
    let commits = || p.files_under("shared-ws").iter().filter(|f| f.to_string_lossy().contains("/commits/u")).count();
    wait_for(Duration::from_secs(20), "a first unit committed", || commits() > 0);

    // Task 0 is requeued: Slurm stops its worker (SIGTERM) and runs the task again later.
    cluster.tool(&["scontrol", "requeue", &format!("{job}_0")]);
    // Task 1's worker is killed outright: its leases expire and the others take its units.
    let task1 = cluster.tasks(&job).into_iter().find(|t| t.0 == "1").expect("task 1 runs").1;
    let pids = cluster.tool(&["scontrol", "listpids", &task1]);
    let batch = pids.lines().find(|l| l.split_whitespace().nth(2) == Some("batch")).expect("task 1's batch process");
    let pid = batch.split_whitespace().next().unwrap();
    assert!(Command::new("kill").args(["-9", pid]).status().unwrap().success());

    wait_for(Duration::from_secs(60), "the array finishes", || cluster.tasks(&job).is_empty());
    let states = cluster.tool(&["scontrol", "show", "job", &job]);
    let logs = || format!("{states}\n{}\n{}", worker_logs(&p), cluster.logs());
    assert_eq!(states.matches("JobState=COMPLETED").count(), 2, "tasks 0 and 2 complete:\n{}", logs());
    assert_eq!(states.matches("JobState=FAILED").count(), 1, "the killed task fails:\n{}", logs());
    assert!(states.contains("Restarts=1"), "task 0 ran again:\n{}", logs());

    // Every row once: the DAG is complete, and `slow` has each row id once.
    let ws_arg = ws.to_string_lossy().into_owned();
    let plan = p.unoflow(&["plan", "dag.toml", "--workspace", &ws_arg]).ok();
    assert!(!plan.stdout.contains("missing") && !plan.stdout.contains("stale"), "{}\n{}", plan.stdout, logs());
    let query = "SELECT COUNT(*) AS n, COUNT(DISTINCT row_id) AS ids FROM slow";
    let counts = p.unoflow(&["sql", "--dag", "dag.toml", "--workspace", &ws_arg, "--format", "csv", query]).ok();
    assert_eq!(counts.stdout.lines().nth(1), Some(format!("{ROWS},{ROWS}").as_str()), "{}", logs());
}
