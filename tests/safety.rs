//! Reproducible reruns and safety (issue 12): the same DAG gives the same bytes, nothing of the
//! user's is touched, hostile input gets a clear error with bounded memory, and the small
//! mistakes found by a hostile user's probes each get the right answer.

use std::path::Path;
use std::time::Duration;

use crate::support::{Project, plan_states, sql_csv, thumbs_dag};

/// Keeps every core busy while alive, so thread timing varies as much as it can.
struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|k| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = k as u64 + 1;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn sigint(child: &std::process::Child) {
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Determinism

#[test]
fn a_query_over_a_node_of_many_parts_has_one_order() {
    let p = Project::new();
    p.noise_images("images", 120, 48, 5);
    p.dag(&thumbs_dag(16));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let _load = CpuLoad::start();
    let query = "SELECT row_id FROM thumbs WHERE width > 0";
    let first = sql_csv(&p, query);
    assert_eq!(first.len(), 121);
    for _ in 0..25 {
        assert_eq!(sql_csv(&p, query), first, "the same query gave another order");
    }
}

/// Every node's name, fingerprint and content digest in a workspace, from its index and
/// manifests.
fn contents(workspace: &Path) -> Vec<(String, String, String)> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(workspace.join("index.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (name, entry) in index["nodes"].as_object().unwrap() {
        let fp = entry["fingerprint"].as_str().unwrap().to_string();
        let manifest = workspace.join("nodes").join(&fp).join("manifest.json");
        let digest = match std::fs::read(&manifest) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["content_digest"].as_str().unwrap().to_string(),
            Err(_) => "view".into(),
        };
        out.push((name.clone(), fp, digest));
    }
    out
}

#[test]
fn the_quickstart_twice_under_load_gives_the_same_bytes_in_every_node() {
    let p = Project::new();
    let dag = Path::new(env!("CARGO_MANIFEST_DIR")).join("dags/quickstart.toml");
    let dag = dag.to_str().unwrap();
    let _load = CpuLoad::start();
    let (a, b) = (p.path("a"), p.path("b"));
    p.unoflow(&["run", dag, "-q", "--workspace", a.to_str().unwrap()]).ok();
    p.unoflow(&["run", dag, "-q", "--workspace", b.to_str().unwrap()]).ok();
    let (ca, cb) = (contents(&a), contents(&b));
    assert!(ca.len() >= 18, "{ca:?}");
    // Exports write into each workspace here, so their `path`, and with it their fingerprint,
    // differs; what they wrote does not.
    let exports = ["uno_train", "curated_parquet"];
    let strip = |c: &[(String, String, String)]| -> Vec<(String, String, String)> {
        c.iter().map(|(n, fp, d)| (n.clone(), if exports.contains(&n.as_str()) { String::new() } else { fp.clone() }, d.clone())).collect()
    };
    assert_eq!(strip(&ca), strip(&cb), "two clean runs of the same DAG differ");
    // The losses and scores themselves, not only their digests.
    let query =
        |ws: &Path, q: &str| p.unoflow(&["sql", "--dag", dag, "--workspace", ws.to_str().unwrap(), "--format", "csv", q]).ok().stdout;
    for q in ["SELECT step, loss, checkpoint FROM stage2", "SELECT * FROM scores"] {
        assert_eq!(query(&a, q), query(&b, q), "{q}");
    }
}

// ---------------------------------------------------------------------------------------------
// Nothing of the user's is touched

#[test]
fn a_folder_of_the_users_is_never_used_as_a_workspace() {
    let p = Project::new();
    p.solid_png("images/a.png", 20, 20, [1, 2, 3]);
    p.dag(&thumbs_dag(8));
    p.write("mine/tmp/notes.txt", "precious");
    p.write("mine/data.csv", "a,b\n1,2\n");
    let refused = p.unoflow(&["run", "dag.toml", "-q", "--workspace", "mine"]).expect_code(2);
    assert!(refused.stderr.contains("is not a unoflow workspace"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(p.path("mine/tmp/notes.txt")).unwrap(), "precious");
    assert_eq!(p.files_under("mine").len(), 2, "{:?}", p.files_under("mine"));
    // An empty folder is fine, and becomes a workspace.
    std::fs::create_dir_all(p.path("empty")).unwrap();
    p.unoflow(&["run", "dag.toml", "-q", "--workspace", "empty"]).ok();
    assert!(p.path("empty/unoflow-workspace.json").is_file());
}

#[test]
fn read_only_commands_write_nothing() {
    let p = Project::new();
    p.solid_png("images/a.png", 20, 20, [1, 2, 3]);
    p.dag(&thumbs_dag(8));
    let plan = p.unoflow(&["plan", "dag.toml"]).ok();
    assert!(plan.stdout.contains("missing"), "{}", plan.stdout);
    p.unoflow(&["validate", "dag.toml"]).ok();
    assert!(!p.path("ws").exists(), "plan or validate created the workspace");
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let before = p.files_under("ws");
    p.unoflow(&["plan", "dag.toml"]).ok();
    p.unoflow(&["sql", "--dag", "dag.toml", "SELECT count(*) FROM thumbs"]).ok();
    p.unoflow(&["runs", "--dag", "dag.toml"]).ok();
    let id = sql_csv(&p, "SELECT row_id FROM thumbs")[1].clone();
    p.unoflow(&["lineage", "--dag", "dag.toml", "thumbs", &id]).ok();
    assert_eq!(p.files_under("ws"), before);
}

fn export_dag(path: &str, format: &str) -> String {
    format!("{}\n[nodes.out]\nop = \"export\"\ninputs = [\"thumbs\"]\nformat = \"{format}\"\npath = \"{path}\"\n", thumbs_dag(8))
}

#[test]
fn export_never_replaces_a_file_it_did_not_write() {
    let p = Project::new();
    p.solid_png("images/a.png", 20, 20, [1, 2, 3]);
    p.write("data.parquet", "my own data");
    p.dag(&export_dag("data.parquet", "parquet"));
    // Refused at validation (exit 2), before anything runs.
    let run = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(2);
    assert!(run.stderr.contains("refusing to replace") && run.stderr.contains("data.parquet"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(p.path("data.parquet")).unwrap(), "my own data");

    // Not even the DAG file itself.
    p.dag(&export_dag("dag.toml", "jsonl"));
    let text = std::fs::read_to_string(p.path("dag.toml")).unwrap();
    p.unoflow(&["run", "dag.toml", "-q"]).expect_code(2);
    assert_eq!(std::fs::read_to_string(p.path("dag.toml")).unwrap(), text);

    // Its own file it replaces; the same file edited by the user it does not.
    p.dag(&export_dag("out/t.jsonl", "jsonl"));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    p.unoflow(&["run", "dag.toml", "-q", "--force", "out"]).ok();
    std::fs::write(p.path("out/t.jsonl"), "edited by hand\n").unwrap();
    let run = p.unoflow(&["run", "dag.toml", "-q", "--force", "out"]).expect_code(2);
    assert!(run.stderr.contains("refusing to replace"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(p.path("out/t.jsonl")).unwrap(), "edited by hand\n");
    let leftovers: Vec<_> = p.files_under("out").into_iter().filter(|f| f.to_string_lossy().contains("unoflow-tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An export that fails half way (its view cannot cast a row) leaves nothing behind.
    p.dag(&format!(
        "{}\n[nodes.numbers]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT row_id, CAST(path AS INT) AS n FROM photos\"\n\n\
         [nodes.bad]\nop = \"export\"\ninputs = [\"numbers\"]\nformat = \"jsonl\"\npath = \"failed/n.jsonl\"\n",
        thumbs_dag(8)
    ));
    let run = p.unoflow(&["run", "dag.toml", "-q"]).expect_code(1);
    assert!(run.stdout.lines().any(|l| l.starts_with("bad") && l.contains("failed")), "{}", run.stdout);
    assert!(p.files_under("failed").is_empty(), "{:?}", p.files_under("failed"));
}

// ---------------------------------------------------------------------------------------------
// Bounded memory on hostile input

/// A PNG whose header claims `w × h` pixels, with almost no data behind it.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().unwrap();
    writer.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]).unwrap();
    drop(writer);
    out
}

#[test]
fn an_image_bomb_is_a_row_error_and_the_limit_is_configurable() {
    let p = Project::new();
    p.solid_png("images/ok.png", 20, 20, [1, 2, 3]);
    std::fs::write(p.path("images/bomb.png"), png_bomb(1_000_000, 1_000_000)).unwrap();
    p.dag(&thumbs_dag(8));
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.contains("1 row error"), "{}", run.stdout);
    let errors = sql_csv(&p, "SELECT message FROM errors.photos");
    assert!(errors[1].contains("above the limit") && errors[1].contains("bomb.png"), "{errors:?}");
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM thumbs"), ["n", "1"]);

    // A lower limit in the DAG turns ordinary images away too.
    let q = Project::new();
    q.solid_png("images/small.png", 10, 10, [1, 2, 3]);
    q.solid_png("images/large.png", 40, 40, [1, 2, 3]);
    q.dag(&thumbs_dag(8).replace("workspace = \"ws\"", "workspace = \"ws\"\nmax_image_pixels = 400"));
    q.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert_eq!(sql_csv(&q, "SELECT path FROM photos"), ["path", "small.png"]);
}

#[test]
fn table_output_is_limited_and_says_so() {
    let p = Project::new();
    for i in 0..30 {
        p.solid_png(&format!("images/{i}.png"), 16, 16, [i as u8, 0, 0]);
    }
    p.dag(&thumbs_dag(8));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let query = "SELECT t.row_id, n FROM thumbs t CROSS JOIN unnest(range(1000)) AS r(n)";
    let out = p.unoflow(&["sql", "--dag", "dag.toml", "--max-rows", "50", query]).ok();
    assert!(out.stdout.contains("first 50 rows shown"), "{}", &out.stdout[out.stdout.len().saturating_sub(300)..]);
    assert_eq!(out.stdout.lines().filter(|l| l.starts_with('│')).count(), 51, "header + 50 rows");
    // The data formats give every row, streamed.
    assert_eq!(sql_csv(&p, query).len(), 30_001);
}

#[test]
fn generate_refuses_bad_sizes_and_guidance_and_stops_on_ctrl_c() {
    let p = Project::new();
    let base = ["generate", "--tiny", "--prompt", "x", "--out", "o.png", "-q"];
    for bad in [["--width", "4294967296"], ["--height", "100000"], ["--guidance", "NaN"], ["--guidance", "inf"], ["--guidance=-1", ""]] {
        let args: Vec<&str> = bad.iter().copied().filter(|a| !a.is_empty()).collect();
        let run = p.unoflow(&[&base[..], &args[..]].concat()).expect_code(2);
        assert!(run.stderr.contains(bad[0].split('=').next().unwrap()), "{bad:?}: {}", run.stderr);
    }
    assert!(!p.path("o.png").exists());

    let child = p.spawn(&[&base[..], &["--steps", "1000", "--width", "512", "--height", "512"]].concat());
    std::thread::sleep(Duration::from_secs(3));
    sigint(&child);
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?} to stop", started.elapsed());
    assert!(!p.path("o.png").exists());
}

// ---------------------------------------------------------------------------------------------
// Identical nodes, interrupted runs, damaged workspace files

#[test]
fn two_nodes_with_the_same_fingerprint_do_not_race() {
    let p = Project::new();
    p.noise_images("images", 40, 32, 3);
    p.dag(&format!("{}\n[nodes.again]\nop = \"thumbnail\"\ninputs = [\"photos\"]\nmax_side = 8\n", thumbs_dag(8)));
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.lines().any(|l| l.starts_with("again") && l.contains("cached")), "{}", run.stdout);
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM again"), ["n", "40"]);
}

/// A DAG whose `thumbs` units take seconds each: large images resized with Lanczos.
fn slow_project() -> Project {
    let p = Project::new();
    for i in 0..32 {
        p.solid_png(&format!("images/{i:02}.png"), 3000, 3000, [i as u8, 100, 200]);
    }
    p.dag(&thumbs_dag(24));
    p
}

/// Waits until a unit of `thumbs` (the second node) is under way: `photos` has committed.
fn wait_for_thumbs(p: &Project, workspace: &str) {
    for _ in 0..3000 {
        let manifests = p.files_under(&format!("{workspace}/nodes")).iter().filter(|f| f.ends_with("manifest.json")).count();
        if manifests >= 1 {
            std::thread::sleep(Duration::from_millis(300));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the run did not get to `thumbs`");
}

#[test]
fn two_signals_record_the_run_as_interrupted() {
    let p = slow_project();
    let child = p.spawn(&["run", "dag.toml", "-q"]);
    wait_for_thumbs(&p, "ws");
    sigint(&child);
    std::thread::sleep(Duration::from_millis(100));
    sigint(&child);
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    // The second signal does not wait for the units in progress.
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?} after the second signal", started.elapsed());
    let runs = p.unoflow(&["runs", "--dag", "dag.toml"]).ok();
    let line = runs.stdout.lines().nth(1).unwrap_or_default().to_string();
    assert!(line.contains("interrupted"), "{}", runs.stdout);
}

#[test]
fn the_resume_hint_names_the_workspace() {
    let p = slow_project();
    let child = p.spawn(&["run", "dag.toml", "-q", "--workspace", "elsewhere"]);
    wait_for_thumbs(&p, "elsewhere");
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("unoflow run dag.toml --workspace elsewhere"), "{stderr}");
}

fn fingerprint(p: &Project, node: &str) -> String {
    let states = p.unoflow(&["plan", "dag.toml", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&states.stdout).unwrap();
    v.as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()["fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn damaged_workspace_files_are_named_not_hidden() {
    let p = Project::new();
    p.noise_images("images", 40, 32, 3);
    p.dag(&crate::support::thumbs_dag_stored(8));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();

    // A part changed in place, same size: the plan says stale, not cached.
    let part = crate::support::part_file(&p, &fingerprint(&p, "thumbs"), 1);
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&part, &bytes).unwrap();
    let states = plan_states(&p.unoflow(&["plan", "dag.toml", "--json"]).ok());
    assert_eq!(states.iter().find(|s| s.0 == "thumbs").unwrap().1, "stale", "{states:?}");
    // ... and queries over the other tables still work.
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM photos"), ["n", "40"]);

    // A damaged manifest is named as such.
    let manifest = p.path(&format!("ws/nodes/{}/manifest.json", fingerprint(&p, "small")));
    std::fs::write(&manifest, "{ not json").unwrap();
    let out = p.unoflow(&["sql", "--dag", "dag.toml", "SELECT * FROM small"]).expect_code(1);
    assert!(out.stderr.contains("damaged") && out.stderr.contains("small"), "{}", out.stderr);

    // A truncated index is an error, not an empty workspace.
    let index = std::fs::read(p.path("ws/index.json")).unwrap();
    std::fs::write(p.path("ws/index.json"), &index[..index.len() / 2]).unwrap();
    let out = p.unoflow(&["sql", "--workspace", "ws", "SELECT count(*) FROM photos"]).expect_code(1);
    assert!(out.stderr.contains("index.json") && out.stderr.contains("damaged"), "{}", out.stderr);

    // A damaged run record is reported by `runs`.
    let record = p.files_under("ws/runs").into_iter().next().unwrap();
    std::fs::write(&record, "{").unwrap();
    let out = p.unoflow(&["runs", "--workspace", "ws"]).ok();
    assert!(out.stderr.contains("damaged run record"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Text sources: line numbers, and `validate` reads every record

#[test]
fn bad_lines_are_row_errors_with_their_line_numbers() {
    let p = Project::new();
    let mut jsonl = String::new();
    for i in 0..1000 {
        if i == 500 {
            jsonl.push_str("{\"x\": 500, \"name\": \"broken\"\n");
        } else if i == 900 {
            // A mixed column becomes text; nothing is lost.
            jsonl.push_str("{\"x\": \"nine hundred\", \"name\": \"n900\"}\n");
        } else {
            jsonl.push_str(&format!("{{\"x\": {i}, \"name\": \"n{i}\"}}\n"));
        }
    }
    p.write("data.jsonl", &jsonl);
    p.dag("[dag]\nname = \"j\"\nworkspace = \"ws\"\n\n[nodes.data]\nop = \"read\"\npath = \"data.jsonl\"\nformat = \"jsonl\"\n");
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM data"), ["n", "999"]);
    let errors = sql_csv(&p, "SELECT message FROM errors.data");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[1].starts_with("data.jsonl:501:"), "{errors:?}");
    assert_eq!(sql_csv(&p, "SELECT x FROM data WHERE name IN ('n0', 'n900') ORDER BY x"), ["x", "0", "nine hundred"]);

    let mut csv = String::from("x,name\n");
    for i in 0..150_001 {
        csv.push_str(&format!("{i},n{i}\n"));
    }
    csv.push_str("not a number,late\n");
    p.write("data.csv", &csv);
    p.dag("[dag]\nname = \"c\"\nworkspace = \"ws\"\n\n[nodes.data]\nop = \"read\"\npath = \"data.csv\"\nformat = \"csv\"\n");
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("data.csv:150003:"), "{}", out.stderr);
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let errors = sql_csv(&p, "SELECT message FROM errors.data");
    assert!(errors[1].trim_start_matches('"').starts_with("data.csv:150003: "), "{errors:?}");
    assert!(!errors[1].contains("line 0"), "{errors:?}");
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn variables_may_refer_to_later_ones_and_to_the_workspace() {
    let p = Project::new();
    p.solid_png("pics/a.png", 20, 20, [1, 2, 3]);
    p.dag(
        "[dag]\nname = \"v\"\nworkspace = \"${base}/ws\"\n\n[vars]\nimages = \"${root}/pics\"\nroot = \"${dag_dir}\"\nbase = \"${root}/out\"\n\
         report = \"${workspace}/report.jsonl\"\n\n\
         [nodes.photos]\nop = \"read\"\npath = \"${images}\"\nformat = \"images\"\n\n\
         [nodes.out]\nop = \"export\"\ninputs = [\"photos\"]\nformat = \"jsonl\"\npath = \"${report}\"\n",
    );
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(p.path("out/ws/report.jsonl").is_file());
    p.dag("[dag]\nname = \"v\"\n\n[vars]\na = \"${b}\"\nb = \"${a}\"\n");
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("cycle"), "{}", out.stderr);
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = Project::new();
    p.solid_png("images/a.png", 20, 20, [1, 2, 3]);
    p.dag(
        "[dag]\nname = \"e\"\n\n[nodes.photos]\nop = \"read\"\npath = \"images\"\nformat = \"images\"\n\n\
         [nodes.lost]\nop = \"sql\"\ninputs = [\"nowhere\"]\nquery = \"SELECT 1\"\n\n\
         [nodes.wrong]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT no_such_column FROM photos\"\n\n\
         [nodes.twice]\nop = \"sql\"\ninputs = [\"photos\", \"photos\"]\nquery = \"SELECT * FROM photos\"\n",
    );
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("`nowhere`, which is not a node"), "{}", out.stderr);
    assert!(out.stderr.contains("no_such_column"), "{}", out.stderr);
    assert!(out.stderr.contains("lists input `photos` twice"), "{}", out.stderr);
    assert!(!out.stderr.contains("already exists"), "{}", out.stderr);
}

#[test]
fn a_deeply_nested_file_gets_a_short_error() {
    let p = Project::new();
    p.dag(&format!("[dag]\nname = \"d\"\nx = {}\n", "[".repeat(100_000)));
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.len() < 2000, "{} bytes of error", out.stderr.len());
}

// ---------------------------------------------------------------------------------------------
// Query output and exit codes

#[test]
fn csv_holds_list_columns_and_query_mistakes_exit_2() {
    let p = Project::new();
    p.solid_png("images/a.png", 20, 20, [1, 2, 3]);
    p.dag(&thumbs_dag(8));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let out = sql_csv(&p, "SELECT make_array('a', 'b') AS xs, path FROM photos");
    assert_eq!(out, ["xs,path", "\"[a, b]\",a.png"]);
    let json = p.unoflow(&["sql", "--dag", "dag.toml", "--format", "json", "SELECT make_array('a', 'b') AS xs FROM photos"]).ok();
    assert_eq!(json.stdout.trim(), r#"{"xs":["a","b"]}"#);
    for query in ["SELECT length(image) FROM photos", "SELECT nope FROM photos", "SELECT * FROM nowhere"] {
        p.unoflow(&["sql", "--dag", "dag.toml", query]).expect_code(2);
    }
    std::fs::create_dir_all(p.path("adir")).unwrap();
    let out = p.unoflow(&["sql", "--dag", "dag.toml", "-o", "adir", "SELECT 1"]).expect_code(2);
    assert!(out.stderr.contains("is a folder"), "{}", out.stderr);
}
