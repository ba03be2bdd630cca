//! Temporary projects, sample data and a way to run the binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A throwaway folder holding DAG files, data and a workspace.
#[derive(Debug)]
pub struct Project {
    dir: tempfile::TempDir,
    /// The host cache folder its commands use (`UNOFLOW_CACHE_DIR`): not the user's, and
    /// outside the project folder, whose contents tests inspect.
    host_cache: tempfile::TempDir,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(self.code, code, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        self.expect_code(0)
    }
}

impl Project {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temp dir"), host_cache: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes `dag.toml`.
    pub fn dag(&self, text: &str) -> PathBuf {
        self.write("dag.toml", text)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(env!("CARGO_BIN_EXE_unoflow")), args)
    }

    /// `program ARGS` in the project folder, set up as [`Project::command`] sets up `unoflow`:
    /// for programs built on the engine (the examples).
    pub fn command_of(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(self.dir.path()).env("NO_COLOR", "1").env("UNOFLOW_CACHE_DIR", self.host_cache.path());
        cmd
    }

    /// Runs `program ARGS` (see [`Project::command_of`]).
    pub fn run_program(&self, program: &Path, args: &[&str]) -> Run {
        Run::from(self.command_of(program, args).output().expect("the program runs"))
    }

    /// Runs `unoflow ARGS` in the project folder.
    pub fn unoflow(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("unoflow runs"))
    }

    /// Runs `unoflow ARGS` with extra environment variables.
    pub fn unoflow_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from(self.command(args).envs(env.iter().copied()).output().expect("unoflow runs"))
    }

    /// Starts `unoflow ARGS` without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("unoflow starts")
    }

    /// Writes `n` noise PNGs of `size`×`size` under `dir`, deterministically from `seed`.
    pub fn noise_images(&self, dir: &str, n: usize, size: u32, seed: u64) {
        let mut rng = Rng(seed);
        let folder = self.path(dir);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(size, size - (i as u32 % 3) * 8, |_, _| {
                let v = rng.next();
                image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
            });
            img.save(folder.join(format!("img{i:04}.png"))).unwrap();
        }
    }

    /// Writes a small PNG with a solid colour.
    pub fn solid_png(&self, rel: &str, w: u32, h: u32, rgb: [u8; 3]) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
    }

    /// All files under `rel`, recursively.
    pub fn files_under(&self, rel: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() { walk(&p, out) } else { out.push(p) }
            }
        }
        let mut out = Vec::new();
        walk(&self.path(rel), &mut out);
        out.sort();
        out
    }
}

/// A small deterministic generator (xorshift64*), so tests that use randomness are repeatable.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// A DAG reading images from `images/`, making thumbnails, and a query over them.
pub fn thumbs_dag(max_side: u32) -> String {
    format!(
        r#"[dag]
name = "t"
seed = 1
workspace = "ws"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.thumbs]
op = "thumbnail"
inputs = ["photos"]
max_side = {max_side}

[nodes.small]
op = "sql"
inputs = ["thumbs"]
query = "SELECT row_id, path, width, height FROM thumbs"
"#
    )
}

/// A project whose DAG reads `rows` items and passes each through `sleep` for `ms` (a unit a
/// row): work for workers to share, kill and resume.
pub fn sleep_project(rows: usize, ms: u64) -> Project {
    let p = Project::new();
    let lines: Vec<String> = (0..rows).map(|n| format!(r#"{{"n": {n}, "name": "item {n}"}}"#)).collect();
    p.write("items.jsonl", &(lines.join("\n") + "\n"));
    p.dag(&format!(
        r#"[dag]
name = "slow"
seed = 5
workspace = "ws"

[nodes.items]
op = "read"
path = "items.jsonl"
format = "jsonl"

[nodes.slow]
op = "sleep"
inputs = ["items"]
ms = {ms}
"#
    ));
    p
}

/// The first part file of unit `unit` of the node stored under fingerprint `fp` in `ws/`.
pub fn part_file(p: &Project, fp: &str, unit: usize) -> PathBuf {
    let prefix = format!("u{unit:06}-");
    let commit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path(&format!("ws/nodes/{fp}/commits/u{unit:06}.json"))).expect("commit record")).unwrap();
    let attempt = commit["attempt"].as_str().unwrap();
    p.path(&format!("ws/nodes/{fp}/attempts/{prefix}{attempt}/p000.parquet"))
}

/// [`thumbs_dag`] with its query stored (`materialize = true`) rather than a view.
pub fn thumbs_dag_stored(max_side: u32) -> String {
    format!("{}materialize = true\n", thumbs_dag(max_side))
}

/// Parses `unoflow plan --json` output into (node, state, reasons).
pub fn plan_states(run: &Run) -> Vec<(String, String, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("plan json: {e}\n{}", run.stdout));
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
                n["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

/// Runs a query and returns its CSV output lines (header first).
pub fn sql_csv(project: &Project, query: &str) -> Vec<String> {
    let out = project.unoflow(&["sql", "--dag", "dag.toml", "--format", "csv", query]).ok();
    out.stdout.lines().map(str::to_string).collect()
}
