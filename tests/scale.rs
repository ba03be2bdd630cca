//! Scale-out (issue 14): many `unoflow worker` processes on one workspace — a local folder, or
//! a bucket of a real S3-protocol server (moto, started here on 127.0.0.1) — while workers are
//! killed and others started; every row exactly once, the same rows as a run alone.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Project, Rng};

/// items (read) → slow (sleep, one unit per row) → even (view) → slower (sleep over the view,
/// units cut from its rows) → summary (a stored one-unit sql node).
fn dag(workspace: &str, rows: usize) -> String {
    format!(
        r#"[dag]
name = "scale"
seed = 11
workspace = "{workspace}"

[nodes.items]
op = "read"
path = "items.jsonl"
format = "jsonl"

[nodes.slow]
op = "sleep"
inputs = ["items"]
ms = 300

[nodes.even]
op = "sql"
inputs = ["slow"]
query = "SELECT row_id, n, name FROM slow WHERE n % 2 = 0"

[nodes.slower]
op = "sleep"
inputs = ["even"]
ms = 80

[nodes.summary]
op = "sql"
inputs = ["slower"]
materialize = true
query = "SELECT COUNT(*) AS rows, SUM(n) AS total, {rows} AS expected FROM slower"
"#
    )
}

fn project(workspace: &str, rows: usize) -> Project {
    let p = Project::new();
    let lines: Vec<String> = (0..rows).map(|n| format!(r#"{{"n": {n}, "name": "item {n}"}}"#)).collect();
    p.write("items.jsonl", &(lines.join("\n") + "\n"));
    p.dag(&dag(workspace, rows));
    p
}

/// The query's CSV lines, sorted (header first).
fn rows(p: &Project, env: &[(&str, &str)], query: &str) -> Vec<String> {
    let out = p.unoflow_env(&["sql", "--dag", "dag.toml", "--format", "csv", query], env).ok();
    out.stdout.lines().map(str::to_string).collect()
}

fn worker(p: &Project, env: &[(&str, &str)], rank: usize, world: usize) -> Child {
    let (rank, world) = (rank.to_string(), world.to_string());
    p.command(&["worker", "dag.toml", "--rank", &rank, "--world", &world, "--lease-s", "1.5", "--quiet"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a worker starts")
}

/// Runs 8 workers; kills three at random moments (SIGKILL) and starts replacements; waits for
/// the rest. Returns how many exited with success.
fn run_with_kills(p: &Project, env: &[(&str, &str)], seed: u64) -> usize {
    let mut rng = Rng(seed);
    let world = 8;
    let mut live: Vec<Child> = (0..world).map(|rank| worker(p, env, rank, world)).collect();
    // The first kill once the workers are into `slow` (about 0.9 s of work for 16 slots), the
    // next ones while it runs.
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(if round == 0 { rng.range(400, 700) } else { rng.range(100, 300) }));
        let victim = rng.range(0, live.len() as u64) as usize;
        let mut child = live.swap_remove(victim);
        let _ = child.kill();
        let _ = child.wait();
        // A replacement with the victim's rank would also work; a new rank tests takeover.
        live.push(worker(p, env, (round * 3) % world, world));
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut succeeded = 0;
    for mut child in live {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                use std::io::Read;
                let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
                assert!(status.success(), "a worker failed ({status}):\n{stderr}");
                succeeded += 1;
                break;
            }
            assert!(Instant::now() < deadline, "workers did not finish within 4 minutes");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    succeeded
}

/// What every run over the DAG must give: each row once, the same as a run alone.
fn check_exactly_once(p: &Project, env: &[(&str, &str)], alone: &Project, rows_in: usize) {
    for node in ["slow", "slower", "summary"] {
        let query = format!("SELECT * FROM {node} ORDER BY row_id");
        assert_eq!(rows(p, env, &query), rows(alone, &[], &query), "node `{node}` differs from a run alone");
    }
    assert_eq!(duplicated(p, env), "0");
    let count = rows(p, env, "SELECT COUNT(*) AS c FROM slow");
    assert_eq!(count[1], rows_in.to_string());
}

/// How many row ids of `slow` appear more than once.
fn duplicated(p: &Project, env: &[(&str, &str)]) -> String {
    rows(p, env, "SELECT COUNT(*) AS c FROM (SELECT row_id FROM slow GROUP BY row_id HAVING COUNT(*) > 1)")[1].clone()
}

/// Unit files of one node in a local workspace: commit records, and attempt folders.
fn commits_and_attempts(ws: &Path, fp: &str) -> (usize, BTreeSet<String>) {
    let node = ws.join("nodes").join(fp);
    let commits = std::fs::read_dir(node.join("commits"))
        .map_or(0, |d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count());
    let attempts = std::fs::read_dir(node.join("attempts"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    (commits, attempts)
}

fn fingerprint(p: &Project, env: &[(&str, &str)], node: &str) -> String {
    let out = p.unoflow_env(&["plan", "dag.toml", "--json"], env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v.as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()["fingerprint"].as_str().unwrap().to_string()
}

const ROWS: usize = 48;

fn run_alone() -> Project {
    let alone = project("ws", ROWS);
    alone.unoflow(&["run", "dag.toml", "--quiet"]).ok();
    alone
}

#[test]
fn eight_workers_on_a_folder_with_kills_give_every_row_once() {
    let alone = run_alone();
    let p = project("ws", ROWS);
    let survivors = run_with_kills(&p, &[], 5);
    assert_eq!(survivors, 8);
    check_exactly_once(&p, &[], &alone, ROWS);
    let fp = fingerprint(&p, &[], "slow");
    let (commits, attempts) = commits_and_attempts(&p.path("ws"), &fp);
    assert_eq!(commits, ROWS, "one commit per unit");
    assert!(p.path(&format!("ws/nodes/{fp}/manifest.json")).is_file());
    // Attempts of killed workers may remain until a later run collects them, but every unit's
    // winning folder is there, and a `run` alone afterwards finds everything cached and
    // removes the rest.
    assert!(attempts.len() >= ROWS);
    let again = p.unoflow(&["run", "dag.toml"]).ok();
    assert!(again.stdout.contains("0 computed, 0 resumed"), "{}", again.stdout);
    // Status reads the finished workspace.
    let status = p.unoflow(&["status", "--dag", "dag.toml"]).ok();
    assert!(status.stdout.contains("complete"), "{}", status.stdout);
}

#[test]
fn run_with_workers_shares_units_and_prints_one_summary() {
    let p = project("ws", 16);
    let out = p.unoflow(&["run", "dag.toml", "--workers", "4", "--lease-s", "2", "--quiet"]).ok();
    assert!(out.stdout.contains("computed by several workers"), "{}", out.stdout);
    assert!(out.stdout.contains("summary"), "{}", out.stdout);
    let summary = rows(&p, &[], "SELECT rows, total FROM summary");
    assert_eq!(summary[1], "8,56");
    // Each worker left a run record tagged with the command's group.
    let runs = p.unoflow(&["runs", "--dag", "dag.toml", "--json"]).ok();
    let records: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    let workers = records.as_array().unwrap().iter().filter(|r| r["worker"].is_string()).count();
    assert_eq!(workers, 5, "four workers and the finishing pass");
}

#[test]
fn a_stopped_workers_units_are_taken_over_and_its_late_commit_refused() {
    let p = project("ws", 6);
    let fp = fingerprint(&p, &[], "slow");
    // A first worker takes units, then freezes (SIGSTOP) past its lease, holding some.
    let frozen = worker(&p, &[], 0, 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while commits_and_attempts(&p.path("ws"), &fp).0 == 0 {
        assert!(Instant::now() < deadline, "the first worker committed nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Stopped between two units it holds no lease, and there is nothing to wait for: stop it
    // again until it is caught holding one (a lease whose unit has no commit).
    let names = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(p.path(dir))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    loop {
        signal(&frozen, "-STOP");
        let commits = names(&format!("ws/nodes/{fp}/commits"));
        if names(&format!("ws/leases/{fp}")).iter().any(|lease| lease.ends_with(".json") && !commits.contains(lease)) {
            break;
        }
        signal(&frozen, "-CONT");
        assert!(Instant::now() < deadline, "the first worker was never caught holding a unit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!p.path(&format!("ws/nodes/{fp}/manifest.json")).exists(), "the node finished before the worker was stopped");
    // Another finishes the DAG: it waits for the frozen worker's lease to expire, then takes
    // its unit over.
    let started = Instant::now();
    let mut taker = worker(&p, &[], 0, 1);
    assert!(taker.wait().unwrap().success());
    assert!(started.elapsed() >= Duration::from_millis(1500), "the lease was not waited for");
    // The frozen worker wakes up, finishes its unit, finds it committed and discards it.
    signal(&frozen, "-CONT");
    let out = frozen.wait_with_output().unwrap();
    assert!(out.status.success(), "the late worker should end cleanly:\n{}", String::from_utf8_lossy(&out.stderr));
    let (commits, attempts) = commits_and_attempts(&p.path("ws"), &fp);
    assert_eq!(commits, 6);
    assert_eq!(attempts.len(), 6, "the late attempt's files were removed: {attempts:?}");
    assert_eq!(duplicated(&p, &[]), "0");
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

/// A moto S3 server on a free port of 127.0.0.1, stopped when dropped.
pub(crate) struct S3Server {
    child: Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Starts moto (`pip install 'moto[server]'`; `.ci/run` installs it). Without it the test
    /// is skipped, unless UNOFLOW_REQUIRE_S3 is set (CI sets it).
    pub(crate) fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let port_text = port.to_string();
        let args = ["-H", "127.0.0.1", "-p", port_text.as_str()];
        let quiet = |mut command: Command| command.args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        // `moto_server` where pip put it on PATH, else the module through python3.
        let started = quiet(Command::new("moto_server")).or_else(|e| {
            let module = Command::new("python3").args(["-c", "import moto.server"]).stderr(Stdio::null()).status();
            match module {
                Ok(s) if s.success() => {
                    let mut python = Command::new("python3");
                    python.args(["-m", "moto.server"]);
                    quiet(python)
                }
                _ => Err(e),
            }
        });
        let child = match started {
            Ok(c) => c,
            Err(e) => {
                assert!(std::env::var_os("UNOFLOW_REQUIRE_S3").is_none(), "moto_server does not start ({e}); pip install 'moto[server]'");
                eprintln!("skipped: no S3 test server (moto_server: {e}); pip install 'moto[server]'");
                return None;
            }
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = Self { child, endpoint };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start listening");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The server's URL (`http://127.0.0.1:PORT`): objects are at `ENDPOINT/BUCKET/KEY`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn create_bucket(&self, bucket: &str) {
        ureq::put(&format!("{}/{bucket}", self.endpoint)).call().expect("the bucket is created");
    }

    /// Puts every file under `dir` into the store under `prefix` (`BUCKET/KEY…`); how many.
    pub(crate) fn upload_dir(&self, dir: &std::path::Path, prefix: &str) -> usize {
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                n += self.upload_dir(&path, &format!("{prefix}/{name}"));
            } else {
                let url = format!("{}/{prefix}/{name}", self.endpoint);
                ureq::put(&url).send_bytes(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("PUT {url}: {e}"));
                n += 1;
            }
        }
        n
    }

    /// An object unoflow wrote (with credentials, so private: an anonymous GET is refused),
    /// read or deleted through boto3, which moto depends on.
    fn boto3(&self, action: &str, bucket: &str, key: &str) -> std::process::Output {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='testing', \
             aws_secret_access_key='testing', region_name='us-east-1')\n{action}",
            self.endpoint
        );
        Command::new("python3").args(["-c", &script, bucket, key]).output().expect("python3 runs boto3")
    }

    pub(crate) fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self.boto3("sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())", bucket, key);
        out.status.success().then_some(out.stdout)
    }

    pub(crate) fn delete_object(&self, bucket: &str, key: &str) {
        let out = self.boto3("s3.delete_object(Bucket=sys.argv[1], Key=sys.argv[2])", bucket, key);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn eight_workers_on_s3_with_kills_give_every_row_once() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("scale");
    let alone = run_alone();
    let p = project("s3://scale/runs/one", ROWS);
    let owned = s3.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let survivors = run_with_kills(&p, &env, 9);
    assert_eq!(survivors, 8);
    check_exactly_once(&p, &env, &alone, ROWS);
    // Lineage, runs and status read the bucket too.
    let lineage = p.unoflow_env(&["lineage", "--dag", "dag.toml", "slower", &first_id(&p, &env)], &env).ok();
    assert!(lineage.stdout.contains("items"), "{}", lineage.stdout);
    let runs = p.unoflow_env(&["runs", "--workspace", "s3://scale/runs/one"], &env).ok();
    assert!(runs.stdout.lines().count() >= 9, "{}", runs.stdout);
    let status = p.unoflow_env(&["status", "--workspace", "s3://scale/runs/one"], &env).ok();
    assert!(status.stdout.contains("complete"), "{}", status.stdout);
    // No credentials in anything unoflow wrote.
    let records = p.unoflow_env(&["runs", "--workspace", "s3://scale/runs/one", "--json"], &env).ok();
    assert!(!records.stdout.contains("testing"), "a credential was recorded");
}

fn first_id(p: &Project, env: &[(&str, &str)]) -> String {
    rows(p, env, "SELECT row_id FROM slower ORDER BY row_id LIMIT 1")[1].clone()
}

#[test]
fn an_s3_prefix_holding_other_objects_is_refused() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("theirs");
    ureq::put(&format!("{}/theirs/data/file.csv", s3.endpoint)).send_string("a,b\n1,2\n").expect("an object is written");
    let p = project("s3://theirs/data", 4);
    let owned = s3.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = p.unoflow_env(&["run", "dag.toml"], &env).expect_code(2);
    assert!(out.stderr.contains("not a unoflow workspace") && out.stderr.contains("file.csv"), "{}", out.stderr);
}

#[test]
fn submit_writes_launchers_and_refuses_what_cannot_work() {
    let p = project("ws", 4);
    let slurm =
        p.unoflow(&["submit", "dag.toml", "--workspace", "s3://bucket/run", "--workers", "16", "--backend", "slurm", "--dry-run"]).ok();
    for expected in ["#SBATCH --array=0-15", "#SBATCH --requeue", "--signal=B:TERM@", "worker", "s3://bucket/run", "--device cuda:0"] {
        assert!(slurm.stdout.contains(expected), "`{expected}` missing from:\n{}", slurm.stdout);
    }
    assert!(p.path("dag.sbatch").is_file());
    let k8s = p
        .unoflow(&[
            "submit",
            "dag.toml",
            "--workspace",
            "s3://bucket/run",
            "--workers",
            "4",
            "--backend",
            "kubernetes",
            "--image",
            "reg/unoflow:1",
            "--volume",
            &format!("project=team-data:{}", p.path("items.jsonl").parent().unwrap().display()),
            "--dry-run",
        ])
        .ok();
    for expected in ["completionMode: Indexed", "backoffLimitPerIndex", "DisruptionTarget", "nvidia.com/gpu", "op = \\\"sleep\\\""] {
        assert!(k8s.stdout.contains(expected), "`{expected}` missing from:\n{}", k8s.stdout);
    }
    // Kubernetes needs an image; workers on other hosts cannot share a relative folder.
    let no_image =
        p.unoflow(&["submit", "dag.toml", "--workspace", "s3://b/p", "--workers", "4", "--backend", "kubernetes"]).expect_code(2);
    assert!(no_image.stderr.contains("--image"), "{}", no_image.stderr);
    p.unoflow(&["submit", "dag.toml", "--workspace", "ws", "--workers", "4", "--backend", "slurm", "--dry-run"]).expect_code(2);
}
