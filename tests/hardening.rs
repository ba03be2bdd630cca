//! Hardening: Kubernetes manifests the API accepts and warnings for files a pod cannot see;
//! commands ending quietly when their reader goes away; workers that die with the command that
//! started them, and locks that name their holders; nested interpolation refused; queries of a
//! workspace that several DAGs wrote.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Project, Run, sleep_project};

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_at_most(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut text);
    text
}

// ---------------------------------------------------------------- Kubernetes (point 7)

/// `kubernetes-validate` (PyPI) as a program and its first arguments: the program pip put on
/// PATH, or the module through python3; `None` when neither runs.
fn kubernetes_validate() -> Option<(&'static str, Vec<&'static str>)> {
    let candidates = [("kubernetes-validate", vec![]), ("python3", vec!["-m", "kubernetes_validate"])];
    candidates.into_iter().find(|(program, args)| {
        Command::new(program).args(args).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    })
}

/// Validates `file` against the API schema of Kubernetes 1.29 (what the manifest's header says
/// it needs) and of every later version the tool knows, offline and strictly (no unknown
/// fields); returns the versions checked, or `None` without the tool.
fn validate_every_version(file: &std::path::Path) -> Option<Vec<String>> {
    let Some((program, args)) = kubernetes_validate() else {
        assert!(
            std::env::var_os("UNOFLOW_REQUIRE_K8S_SCHEMA").is_none(),
            "kubernetes-validate does not run; pip install kubernetes-validate"
        );
        eprintln!("skipped: no kubernetes-validate (pip install kubernetes-validate) to check the manifest against the API schema");
        return None;
    };
    let mut checked = Vec::new();
    for minor in 29.. {
        let version = format!("1.{minor}.0");
        let out = Command::new(program).args(&args).args(["-k", &version, "--strict"]).arg(file).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if text.contains("does not support kubernetes version") {
            assert!(minor > 29, "kubernetes-validate has no schema for 1.29, which the manifest claims: {text}");
            break;
        }
        assert!(out.status.success(), "{} fails the Kubernetes {version} API schema:\n{text}", file.display());
        assert_eq!(text.matches(" passed ").count(), 2, "both documents checked against {version}: {text}");
        checked.push(version);
    }
    Some(checked)
}

#[test]
fn kubernetes_manifests_pass_the_api_schema_of_every_version_they_claim() {
    let p = sleep_project(4, 1);
    // The project's items are on a claim mounted where they are here.
    let project = format!("project=team-data:{}", p.path("items.jsonl").parent().unwrap().display());
    let submit = |workspace: &str, extra: &[&str], output: &str| {
        let mut args = vec!["submit", "dag.toml", "--workspace", workspace, "--workers", "4", "--backend", "kubernetes"];
        args.extend_from_slice(&["--image", "reg/unoflow:1", "--dry-run", "-o", output, "--volume", &project]);
        args.extend_from_slice(extra);
        p.unoflow_env(&args, &[("HF_HOME", "/cache/hf")]).ok();
        p.path(output)
    };
    let gpu = submit("s3://bucket/run", &["--secret", "unoflow-s3"], "gpu.k8s.yaml");
    let cpu = submit("gs://bucket/run", &["--gpus-per-worker", "0", "--lease-s", "60", "--grace-s", "30"], "cpu.k8s.yaml");
    let folder = submit("/mnt/shared/ws", &["--volume", "shared=team-rwx:/mnt/shared"], "folder.k8s.yaml");
    // Variables from this shell (a Secret `submit` applies) and from the --secret Secret.
    let env = submit("s3://bucket/run", &["--secret", "unoflow-s3", "--env", "HF_HOME", "--env", "VLM_ENDPOINT"], "env.k8s.yaml");
    let text = std::fs::read_to_string(&env).unwrap();
    assert!(text.contains("HF_HOME") && text.contains("VLM_ENDPOINT") && !text.contains("/cache/hf"), "{text}");
    for file in [gpu, cpu, folder, env] {
        let Some(versions) = validate_every_version(&file) else { return };
        assert!(versions.iter().any(|v| v == "1.34.0"), "checked only {versions:?}");
    }
}

#[test]
fn kubernetes_submit_refuses_each_file_a_pod_cannot_see() {
    let p = Project::new();
    p.write("datasets/items.jsonl", "{\"n\": 1}\n{\"n\": 2}\n");
    p.write("models/words.txt", "cat\n");
    p.write(
        "dags/flow.toml",
        r#"[dag]
name = "flow"
workspace = "${dag_dir}/../ws"

[nodes.items]
op = "read"
path = "${dag_dir}/../datasets/items.jsonl"
format = "jsonl"

[nodes.out]
op = "export"
inputs = ["items"]
path = "exported"
"#,
    );
    let args = ["submit", "dags/flow.toml", "--workspace", "s3://b/p", "--workers", "2", "--dry-run"];
    let k8s = ["--backend", "kubernetes", "--image", "reg/u:1"];
    let refused = p.unoflow(&[&args[..], &k8s[..]].concat()).expect_code(2);
    let data = p.path("datasets/items.jsonl");
    let read = format!("node `items`, parameter `path`: {} is on this machine's disk", data.display());
    assert!(refused.stderr.contains(&read), "{read:?} not in:\n{}", refused.stderr);
    let export = format!("node `out`, parameter `path`: {} would be written on the pod's own disk", p.path("dags/exported").display());
    assert!(refused.stderr.contains(&export), "{export:?} not in:\n{}", refused.stderr);
    assert!(refused.stderr.contains("--volume NAME=CLAIM:"), "{}", refused.stderr);
    assert!(!p.path("dags/flow.k8s.yaml").exists(), "nothing written");
    // A claim mounted above both: the pods see them at the same paths.
    let root = p.path("dags").parent().unwrap().display().to_string();
    let volume = format!("project=team-rwx:{root}");
    let ok = p.unoflow(&[&args[..], &k8s[..], &["--volume", &volume]].concat()).ok();
    assert!(ok.stdout.contains(&format!("mountPath: \"{root}\"")), "{}", ok.stdout);
    // Slurm workers read the same paths on a shared filesystem: nothing to refuse or warn of.
    let slurm = p.unoflow(&[&args[..], &["--backend", "slurm"]].concat()).ok();
    assert!(!slurm.stderr.contains("warning:"), "{}", slurm.stderr);
}

// ---------------------------------------------------------------- closed output (point 8)

/// Runs `unoflow ARGS` with standard output a pipe nobody reads: its read end is closed before
/// the command starts, so every write fails (EPIPE).
fn with_closed_stdout(p: &Project, args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = p.command(args).stdout(writer).stderr(Stdio::piped()).output().unwrap();
    Run { code: out.status.code().unwrap_or(-1), stdout: String::new(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

#[track_caller]
fn assert_quiet_end(run: &Run, args: &[&str]) {
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("failed printing"), "`{}` panicked:\n{}", args.join(" "), run.stderr);
    assert!(run.code == 0 || run.code == 141, "`{}` ended with {}:\n{}", args.join(" "), run.code, run.stderr);
    assert!(!run.stderr.contains("error"), "`{}` reported an error:\n{}", args.join(" "), run.stderr);
}

#[test]
fn commands_end_quietly_when_their_reader_goes_away() {
    let p = sleep_project(3000, 0);
    p.unoflow(&["run", "dag.toml", "-q", "--only", "items"]).ok();
    let id = crate::support::sql_csv(&p, "SELECT row_id FROM items LIMIT 1")[1].clone();
    let commands: Vec<Vec<&str>> = vec![
        vec!["ops"],
        vec!["ops", "read"],
        vec!["validate", "dag.toml"],
        vec!["plan", "dag.toml"],
        vec!["plan", "dag.toml", "--json"],
        vec!["sql", "--dag", "dag.toml", "SELECT * FROM items"],
        vec!["sql", "--dag", "dag.toml", "--format", "csv", "SELECT * FROM items"],
        vec!["sql", "--dag", "dag.toml", "--format", "json", "SELECT * FROM items"],
        vec!["sql", "--workspace", "ws", "--format", "parquet", "SELECT * FROM items"],
        vec!["status", "--dag", "dag.toml"],
        vec!["status", "--workspace", "ws", "--json"],
        vec!["runs", "--dag", "dag.toml"],
        vec!["runs", "--dag", "dag.toml", "--json"],
        vec!["lineage", "--dag", "dag.toml", "items", &id],
        vec!["submit", "dag.toml", "--workspace", "s3://b/p", "--workers", "2", "--backend", "slurm", "--dry-run", "-o", "x.sbatch"],
        vec!["run", "dag.toml", "-q", "--only", "items"],
    ];
    for args in &commands {
        assert_quiet_end(&with_closed_stdout(&p, args), args);
    }
    // A reader that takes one line and leaves, while rows are still coming (`| head -1`).
    let args = ["sql", "--dag", "dag.toml", "--format", "csv", "SELECT * FROM items"];
    let mut child = p.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "row_id,n,name");
    let status = wait_at_most(&mut child, Duration::from_secs(60), "sql");
    let stderr = stderr_of(&mut child);
    assert_quiet_end(&Run { code: status.code().unwrap_or(-1), stdout: first, stderr }, &args);
}

// ---------------------------------------------------------------- workers and locks (point 11)

/// The processes whose parent is `parent` (from /proc).
#[cfg(target_os = "linux")]
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Some((_, ppid)) = state_and_parent(pid)
            && ppid == parent
        {
            out.push(pid);
        }
    }
    out
}

/// A process's state letter and parent, from /proc/PID/stat (`pid (comm) S ppid …`; the name
/// may hold spaces and parentheses, so it is read after the last `)`).
#[cfg(target_os = "linux")]
fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Whether `pid` runs (a zombie, dead but not yet reaped, does not).
#[cfg(target_os = "linux")]
fn is_running(pid: u32) -> bool {
    state_and_parent(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// Waits until `n` processes started by `parent` run, and returns them.
#[cfg(target_os = "linux")]
fn wait_for_children(parent: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let children: Vec<u32> = children_of(parent).into_iter().filter(|&c| is_running(c)).collect();
        if children.len() >= n {
            return children;
        }
        assert!(Instant::now() < deadline, "{n} workers did not start (found {children:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fingerprint of node `node` of `dag.toml`.
fn fingerprint(p: &Project, node: &str) -> String {
    let plan = p.unoflow(&["plan", "dag.toml", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    v.as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()["fingerprint"].as_str().unwrap().to_string()
}

/// How many units of the node stored under `fp` in `ws/` are committed.
fn commits(p: &Project, fp: &str) -> usize {
    std::fs::read_dir(p.path(&format!("ws/nodes/{fp}/commits"))).map_or(0, |d| d.flatten().count())
}

#[cfg(target_os = "linux")]
fn wait_gone(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|&pid| is_running(pid)) {
        let left: Vec<u32> = pids.iter().copied().filter(|&pid| is_running(pid)).collect();
        assert!(Instant::now() < deadline, "workers {left:?} still run {limit:?} after their `run --workers` was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[cfg(target_os = "linux")]
fn workers_stop_when_their_run_is_killed_and_the_next_run_resumes() {
    const ROWS: usize = 40;
    let p = sleep_project(ROWS, 300);
    let fp = fingerprint(&p, "slow");
    let mut parent = p
        .command(&["run", "dag.toml", "--workers", "3", "--lease-s", "2", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let workers = wait_for_children(parent.id(), 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    while commits(&p, &fp) == 0 {
        assert!(Instant::now() < deadline, "the workers committed nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    parent.kill().unwrap(); // SIGKILL: the parent cannot pass anything on
    parent.wait().unwrap();
    // Each worker sees its standard input (a pipe from the parent) close, finishes the unit it
    // runs and exits, well before the work is done (3 workers would need 4 s for the 40 units).
    wait_gone(&workers, Duration::from_secs(5));
    let done = commits(&p, &fp);
    assert!(done < ROWS, "the workers finished the DAG instead of stopping ({done} units)");
    let next = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(next.stdout.contains("1 resumed"), "{}", next.stdout);
    let counts = crate::support::sql_csv(&p, "SELECT COUNT(*) AS n, COUNT(DISTINCT row_id) AS ids FROM slow");
    assert_eq!(counts[1], format!("{ROWS},{ROWS}"));
}

/// Waits until the lock file of `ws/` names `pid`.
fn wait_for_lock_line(p: &Project, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(p.path("ws/lock")).unwrap_or_default().contains(&format!("\"pid\":{pid},")) {
        assert!(Instant::now() < deadline, "pid {pid} never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg(target_os = "linux")]
fn a_refused_run_names_who_holds_the_workspace() {
    let p = sleep_project(12, 500);
    // A `run` alone: named by pid, host and command.
    let mut holder = p.command(&["run", "dag.toml", "-q"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_lock_line(&p, holder.id());
    let refused = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(1);
    let named = format!("another `unoflow run` is working in {} (pid {} on ", p.path("ws").display(), holder.id());
    assert!(refused.stderr.contains(&named), "{named:?} not in:\n{}", refused.stderr);
    assert!(refused.stderr.contains(": unoflow run dag.toml -q)"), "{}", refused.stderr);
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Workers of `run --workers 2`: counted, each named.
    let mut parent = p.command(&["run", "dag.toml", "--workers", "2", "-q"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let workers = wait_for_children(parent.id(), 2);
    for &w in &workers {
        wait_for_lock_line(&p, w);
    }
    let refused = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(1);
    assert!(refused.stderr.contains("2 workers are working in"), "{}", refused.stderr);
    for w in &workers {
        assert!(refused.stderr.contains(&format!("pid {w} on ")), "worker {w} not named:\n{}", refused.stderr);
    }
    assert!(refused.stderr.contains("unoflow worker dag.toml"), "{}", refused.stderr);
    parent.kill().unwrap();
    parent.wait().unwrap();
    wait_gone(&workers, Duration::from_secs(10));
}

// ---------------------------------------------------------------- interpolation (point 12a)

#[test]
fn a_reference_inside_a_reference_is_an_error_at_its_line() {
    let p = sleep_project(2, 0);
    let dag = std::fs::read_to_string(p.path("dag.toml")).unwrap();
    p.dag(&dag.replace(r#"path = "items.jsonl""#, r#"path = "${env:UNOFLOW_SURELY_UNSET:-${dag_dir}/items.jsonl}""#));
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("nested `${…}` is not supported"), "{}", out.stderr);
    assert!(out.stderr.contains("dag.toml:8:"), "no file:line:col in:\n{}", out.stderr);
    assert!(out.stderr.contains("plain text"), "no fix in:\n{}", out.stderr);
    // The same in [vars], and with the variable set: still refused, not made into a path.
    p.dag(&dag.replace("[nodes.items]", "[vars]\nm = \"${env:PATH:-${dag_dir}}\"\n\n[nodes.items]"));
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("nested `${…}` is not supported") && out.stderr.contains("dag.toml:"), "{}", out.stderr);
}

// ---------------------------------------------------------------- shared workspaces (point 12c)

/// A DAG named `name` reading `rows` items from its own file into `items`, in workspace `ws`.
fn write_dag(p: &Project, file: &str, name: &str, rows: usize) {
    let data = format!("{name}.jsonl");
    p.write(&data, &(0..rows).map(|n| format!("{{\"n\": {n}}}\n")).collect::<String>());
    p.write(
        file,
        &format!("[dag]\nname = \"{name}\"\nworkspace = \"ws\"\n\n[nodes.items]\nop = \"read\"\npath = \"{data}\"\nformat = \"jsonl\"\n"),
    );
}

#[test]
fn a_workspace_two_dags_wrote_is_queried_through_one_of_them() {
    let p = Project::new();
    write_dag(&p, "a.toml", "alpha", 2);
    write_dag(&p, "b.toml", "beta", 5);
    p.unoflow(&["run", "a.toml", "-q"]).ok();
    // One DAG wrote it: the workspace answers alone, as it always did.
    let one = p.unoflow(&["sql", "--workspace", "ws", "--format", "csv", "SELECT COUNT(*) AS n FROM items"]).ok();
    assert_eq!(one.stdout.lines().nth(1), Some("2"));
    // The same DAG from another checkout (another path, the same `[dag] name`) is one DAG.
    std::fs::create_dir_all(p.path("checkout")).unwrap();
    std::fs::copy(p.path("alpha.jsonl"), p.path("checkout/alpha.jsonl")).unwrap();
    let copy = std::fs::read_to_string(p.path("a.toml")).unwrap().replace("workspace = \"ws\"", "workspace = \"../ws\"");
    p.write("checkout/a.toml", &copy);
    p.unoflow(&["run", "checkout/a.toml", "-q"]).ok();
    let again = p.unoflow(&["sql", "--workspace", "ws", "--format", "csv", "SELECT COUNT(*) AS n FROM items"]).ok();
    assert_eq!(again.stdout.lines().nth(1), Some("2"));
    p.unoflow(&["run", "b.toml", "-q"]).ok();
    let query = "SELECT COUNT(*) AS n FROM items";
    let refused = p.unoflow(&["sql", "--workspace", "ws", query]).expect_code(2);
    for want in ["2 DAGs", "`alpha`", "`beta`", "a.toml", "b.toml", "--dag"] {
        assert!(refused.stderr.contains(want), "{want:?} not in:\n{}", refused.stderr);
    }
    for (dag, n) in [("a.toml", "2"), ("b.toml", "5")] {
        let out = p.unoflow(&["sql", "--dag", dag, "--workspace", "ws", "--format", "csv", query]).ok();
        assert_eq!(out.stdout.lines().nth(1), Some(n), "{dag}");
    }
    // `lineage` and `serve` read the same catalog: refused the same way (serve at once).
    let lineage = p.unoflow(&["lineage", "--workspace", "ws", "items", "0123456789abcdef0123456789abcdef"]).expect_code(2);
    assert!(lineage.stderr.contains("`alpha`") && lineage.stderr.contains("`beta`"), "{}", lineage.stderr);
    let mut serve = p.command(&["serve", "--workspace", "ws", "--port", "0"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let status = wait_at_most(&mut serve, Duration::from_secs(30), "serve over a workspace of two DAGs");
    let stderr = stderr_of(&mut serve);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`alpha`") && stderr.contains("`beta`"), "{stderr}");
}
