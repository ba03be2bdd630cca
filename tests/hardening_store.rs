//! Hardening of the shared workspace: workspace URLs read strictly (a typo is refused, never a
//! folder named like a URL or another prefix), a missing bucket named in one line, a worker
//! whose clock is far from the store's refused, and `status` counting dead workers gone.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::scale::S3Server;
use crate::support::{Project, sleep_project};

/// The names in the project folder: what a run left there.
fn entries(p: &Project) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(p.path("")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn malformed_workspace_urls_are_refused_and_make_no_folder() {
    let p = sleep_project(2, 0);
    // (what was written, what the message must say)
    let cases = [
        ("s3:/bucket/typo", "write s3://bucket/typo"),
        ("s3:bucket/typo", "write s3://bucket/typo"),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://b/../x", "would name another prefix"),
        ("s3://b/a/../b", "would name another prefix"),
        ("s3://b/./c", "would name another prefix"),
        ("s3://b/a//c", "empty segment"),
        ("s3://b/x?versionId=1", "query string"),
        ("s3://b/x#part", "fragment"),
        ("ftp://host/x", "unknown scheme"),
        ("file://relative", "file:///ABSOLUTE/PATH"),
    ];
    for (workspace, says) in cases {
        let out = p.unoflow(&["run", "dag.toml", "--workspace", workspace]).expect_code(2);
        assert!(out.stderr.contains(says) && out.stderr.contains(workspace), "{workspace}: `{says}` missing from:\n{}", out.stderr);
        let status = p.unoflow(&["status", "--workspace", workspace]).expect_code(2);
        assert!(status.stderr.contains(says), "status {workspace}:\n{}", status.stderr);
        let submit = p.unoflow(&["submit", "dag.toml", "--workspace", workspace, "--workers", "2", "--backend", "slurm", "--dry-run"]);
        let submit = submit.expect_code(2);
        assert!(submit.stderr.contains(says), "submit {workspace}:\n{}", submit.stderr);
    }
    // Nothing was made: no `s3:` folder, no workspace, no job script.
    assert_eq!(entries(&p), ["dag.toml", "items.jsonl"]);
}

#[test]
fn a_malformed_url_in_the_dag_file_is_a_validation_error_at_its_line() {
    let p = sleep_project(2, 0);
    let text = std::fs::read_to_string(p.path("dag.toml")).unwrap().replace(r#"workspace = "ws""#, r#"workspace = "s3:/bucket/runs""#);
    p.dag(&text);
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("dag.toml:4") && out.stderr.contains("write s3://bucket/runs"), "{}", out.stderr);
    p.unoflow(&["run", "dag.toml"]).expect_code(2);
    assert_eq!(entries(&p), ["dag.toml", "items.jsonl"]);
}

#[test]
fn paths_that_only_look_like_urls_are_still_folders() {
    let p = sleep_project(2, 0);
    // A word before a colon that is no store's scheme, and a `./` before one, are folder names.
    for workspace in ["notes:2024", "./s3:backup"] {
        p.unoflow(&["run", "dag.toml", "--workspace", workspace, "--quiet"]).ok();
    }
    assert!(p.path("notes:2024/unoflow-workspace.json").is_file());
    assert!(p.path("s3:backup/unoflow-workspace.json").is_file());
}

#[test]
fn a_missing_bucket_is_named_in_one_line() {
    let Some(s3) = S3Server::start() else { return };
    // No bucket is created.
    let p = sleep_project(2, 0);
    let owned = s3.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for command in [&["run", "dag.toml", "--workspace", "s3://nobucket/ws", "--quiet"][..], &["status", "--workspace", "s3://nobucket/ws"]]
    {
        let out = p.unoflow_env(command, &env).expect_code(2);
        let message = out.stderr.trim();
        assert_eq!(message.lines().count(), 1, "one line:\n{message}");
        for expected in ["`nobucket`", "does not exist", "check the bucket name", "AWS_ENDPOINT_URL"] {
            assert!(message.contains(expected), "`{expected}` missing from: {message}");
        }
        assert!(!message.contains('<'), "the store's XML: {message}");
    }
}

/// libfaketime's library, which shifts the clock of the process it is preloaded in (Debian's
/// `libfaketime` package; `.ci/run` installs `faketime`, which brings it). `None`, with a loud
/// message, where it is missing, unless UNOFLOW_REQUIRE_FAKETIME is set (CI sets it).
fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").into_iter().flatten().flatten().map(|e| e.path().join("faketime"));
    let found = dirs.chain([PathBuf::from("/usr/lib/faketime"), PathBuf::from("/usr/local/lib/faketime")]).find_map(|dir| {
        let lib = dir.join("libfaketime.so.1");
        lib.is_file().then_some(lib)
    });
    if found.is_none() {
        assert!(
            std::env::var_os("UNOFLOW_REQUIRE_FAKETIME").is_none(),
            "libfaketime.so.1 is not under /usr/lib/*/faketime/; apt-get install faketime"
        );
        eprintln!("SKIPPED: the clock-skew test needs libfaketime (apt-get install faketime); it is not installed");
    }
    found
}

#[test]
fn a_worker_whose_clock_is_five_minutes_ahead_of_the_store_refuses_to_start() {
    let Some(lib) = libfaketime() else { return };
    let p = sleep_project(3, 0);
    let lib = lib.to_string_lossy().into_owned();
    // The process's clock runs five minutes ahead; the kernel's, which stamps the workspace's
    // files as a file server or an object store would, does not. Monotonic time stays true
    // (timers), and file times are read as they are.
    let ahead = [("LD_PRELOAD", lib.as_str()), ("FAKETIME", "+5m"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1"), ("NO_FAKE_STAT", "1")];
    let out = p.unoflow_env(&["worker", "dag.toml", "--quiet"], &ahead).expect_code(2);
    for expected in ["ahead of the store's", "more than 15.0 s", "120.0 s lease", "NTP", "--lease-s"] {
        assert!(out.stderr.contains(expected), "`{expected}` missing from:\n{}", out.stderr);
    }
    let measured = out.stderr.split("clock is ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse::<f64>().ok());
    assert!(measured.is_some_and(|s| (295.0..=305.0).contains(&s)), "the skew measured: {}", out.stderr);
    // Nothing was claimed, and the refused worker counts as gone.
    assert!(!p.path("ws/leases").exists() || p.files_under("ws/leases").is_empty());
    assert_eq!(live_workers(&p), 0);
    // The same worker with the host's own clock works.
    p.unoflow(&["worker", "dag.toml", "--quiet"]).ok();
    let done = p.unoflow(&["status", "--dag", "dag.toml"]).ok();
    assert!(done.stdout.contains("complete"), "{}", done.stdout);
}

/// How many workers `unoflow status --json` counts live in the project's workspace (none
/// before a worker made it).
fn live_workers(p: &Project) -> usize {
    if !p.path("ws/unoflow-workspace.json").is_file() {
        return 0;
    }
    let out = p.unoflow(&["status", "--workspace", "ws", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status json: {e}\n{}", out.stdout));
    v["workers"].as_array().expect("a list of workers").len()
}

/// Waits until `status` counts `n` live workers; how long that took.
fn until_live(p: &Project, n: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if live_workers(p) == n {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "status did not count {n} live workers within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn worker(p: &Project, lease_s: &str) -> Child {
    p.command(&["worker", "dag.toml", "--lease-s", lease_s, "--quiet"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

#[test]
fn status_counts_workers_gone_when_they_exit_and_soon_after_they_are_killed() {
    // Workers that finish say so in their last beat: none is live right after.
    let finished = sleep_project(8, 50);
    finished.unoflow(&["run", "dag.toml", "--workers", "2", "--lease-s", "4", "--quiet"]).ok();
    assert_eq!(live_workers(&finished), 0);

    // A worker killed at once (SIGKILL) writes nothing more: it is counted gone a few of its
    // beats (every 2 s with a 4 s lease) after its last one, not minutes later.
    let p = sleep_project(60, 200);
    let mut killed = worker(&p, "4");
    until_live(&p, 1, Duration::from_secs(30));
    signal(&killed, "-KILL");
    let _ = killed.wait();
    // 3 beats of 2 s and a margin of 1 s after its last beat, and the polls' own time (they
    // run alongside other tests): seconds, not the minutes of a fixed span.
    let gone = until_live(&p, 0, Duration::from_secs(20));
    assert!(gone <= Duration::from_secs(12), "counted gone {gone:?} after it was killed");

    // A worker stopped by SIGTERM finishes its unit and says it exited.
    let mut stopped = worker(&p, "4");
    until_live(&p, 1, Duration::from_secs(30));
    signal(&stopped, "-TERM");
    let status = stopped.wait().unwrap();
    assert_eq!(status.code(), Some(130), "a worker stopped by SIGTERM exits 130");
    assert_eq!(live_workers(&p), 0);
}
