//! `[vars]` of any TOML type and `--var NAME=VALUE`: typed whole-value interpolation, overrides
//! on every command that loads a DAG, their errors, the run record, and the workers they reach.

use crate::support::{Project, plan_states};

/// Thumbnails whose size and count are knobs in `[vars]`, each of another type than a string.
fn knobs_dag() -> &'static str {
    r#"[dag]
name = "knobs"
seed = 1
workspace = "ws"

[vars]
images = "images"
max_side = 8           # an integer parameter, whole: "${max_side}"
rows = 2               # an integer inside a query: LIMIT ${rows}

[nodes.photos]
op = "read"
path = "${images}"
format = "images"

[nodes.thumbs]
op = "thumbnail"
inputs = ["photos"]
max_side = "${max_side}"

[nodes.few]
op = "sql"
inputs = ["thumbs"]
query = "SELECT row_id, width, height FROM thumbs ORDER BY path LIMIT ${rows}"
materialize = true
"#
}

fn project() -> Project {
    let p = Project::new();
    for (i, c) in [[200, 10, 10], [10, 200, 10], [10, 10, 200]].iter().enumerate() {
        p.solid_png(&format!("images/c{i}.png"), 40, 20, *c);
    }
    p.dag(knobs_dag());
    p
}

fn plan(p: &Project, vars: &[&str]) -> Vec<(String, String, Vec<String>)> {
    let mut args = vec!["plan", "dag.toml", "--json"];
    for v in vars {
        args.extend(["--var", v]);
    }
    plan_states(&p.unoflow(&args).ok())
}

fn csv(p: &Project, vars: &[&str], query: &str) -> Vec<String> {
    let mut args = vec!["sql", "--dag", "dag.toml", "--format", "csv"];
    for v in vars {
        args.extend(["--var", v]);
    }
    args.push(query);
    p.unoflow(&args).ok().stdout.lines().map(str::to_string).collect()
}

#[test]
fn whole_value_references_take_the_variables_type() {
    let p = project();
    p.unoflow(&["validate", "dag.toml"]).ok();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    // max_side = 8 reached the operator as an integer, and LIMIT ${rows} as text.
    assert_eq!(csv(&p, &[], "SELECT width, height FROM few"), ["width,height", "8,4", "8,4"]);
    // A string variable where an integer is expected is still refused, naming the parameter.
    p.dag(&knobs_dag().replace("max_side = 8 ", "max_side = \"8\" "));
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("parameter `max_side` of node `thumbs`"), "{}", out.stderr);
    // An array cannot be written into text.
    p.dag(&knobs_dag().replace("rows = 2 ", "rows = [2] "));
    let out = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(out.stderr.contains("variable `rows` is an array"), "{}", out.stderr);
}

#[test]
fn a_var_overrides_the_file_and_changes_the_fingerprint() {
    let p = project();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let before = plan(&p, &[]);
    assert!(before.iter().all(|(_, s, _)| s == "cached"), "{before:?}");
    let after = plan(&p, &["max_side=16", "rows=3"]);
    assert_eq!(after[0].1, "cached");
    // The earlier output is there under another fingerprint.
    assert_eq!(after[1].1, "stale");
    let run = p.unoflow(&["run", "dag.toml", "-q", "--var", "max_side=16", "--var", "rows=3"]).ok();
    // The commands it prints to paste carry the variables.
    assert!(run.stdout.contains("unoflow plan dag.toml --var max_side=16 --var rows=3"), "{}", run.stdout);
    assert!(plan(&p, &["max_side=16", "rows=3"]).iter().all(|(_, s, _)| s == "cached"));
    assert_eq!(csv(&p, &["max_side=16", "rows=3"], "SELECT width FROM few"), ["width", "16", "16", "16"]);
    // The file's values keep their own outputs; validate takes --var too.
    assert_eq!(csv(&p, &[], "SELECT width FROM few"), ["width", "8", "8"]);
    p.unoflow(&["validate", "dag.toml", "--var", "max_side=32"]).ok();
    // The run record holds the overrides, typed.
    let runs: serde_json::Value = serde_json::from_str(&p.unoflow(&["runs", "--dag", "dag.toml", "--json"]).ok().stdout).unwrap();
    let last = runs.as_array().unwrap().last().unwrap();
    assert_eq!(last["vars"], serde_json::json!({"max_side": 16, "rows": 3}), "{last}");
    assert!(runs[0].get("vars").is_none(), "a run without --var records none: {}", runs[0]);
}

#[test]
fn unknown_names_wrong_types_and_bad_values_are_usage_errors() {
    let p = project();
    let out = p.unoflow(&["plan", "dag.toml", "--var", "max_sid=4"]).expect_code(2);
    for want in ["--var max_sid=4: the DAG declares no variable `max_sid`", "did you mean `max_side`?", "`images`, `max_side`, `rows`"] {
        assert!(out.stderr.contains(want), "{want:?} not in:\n{}", out.stderr);
    }
    let out = p.unoflow(&["run", "dag.toml", "--var", "max_side=big"]).expect_code(2);
    assert!(out.stderr.contains("`max_side` is an integer, and this is a string"), "{}", out.stderr);
    assert!(!p.path("ws").exists(), "nothing ran");
    let out = p.unoflow(&["validate", "dag.toml", "--var", "rows=[1,"]).expect_code(2);
    assert!(out.stderr.contains("is not a TOML value"), "{}", out.stderr);
    let out = p.unoflow(&["sql", "--dag", "dag.toml", "--var", "workspace=x", "SELECT 1"]).expect_code(2);
    assert!(out.stderr.contains("built in") && out.stderr.contains("--workspace"), "{}", out.stderr);
    // A bare word is a string: a path needs no quotes.
    p.unoflow(&["validate", "dag.toml", "--var", "images=images"]).ok();
    let help = p.unoflow(&["run", "--help"]).ok().stdout;
    assert!(help.contains("--var <NAME=VALUE>") && help.contains("is taken as a"), "{help}");
}

#[test]
fn workers_get_the_vars() {
    let p = project();
    p.unoflow(&["run", "dag.toml", "-q", "--workers", "2", "--var", "max_side=16"]).ok();
    let runs: serde_json::Value = serde_json::from_str(&p.unoflow(&["runs", "--dag", "dag.toml", "--json"]).ok().stdout).unwrap();
    let workers: Vec<&serde_json::Value> = runs.as_array().unwrap().iter().filter(|r| r.get("worker").is_some()).collect();
    assert_eq!(workers.len(), 3, "two workers and the command that finishes after them: {runs}");
    for w in workers {
        assert_eq!(w["vars"], serde_json::json!({"max_side": 16}), "{w}");
    }

    let volume = format!("data=project:{}", p.path("images").parent().unwrap().display());
    let submit = |backend: &str, vars: &[&str]| {
        let mut args = vec!["submit", "dag.toml", "--workspace", "s3://b/p", "--workers", "2", "--backend", backend, "--dry-run"];
        if backend == "kubernetes" {
            // The pods see the project's images on a claim mounted where they are here.
            args.extend(["--image", "reg/unoflow:1", "--volume", &volume]);
        }
        for v in vars {
            args.extend(["--var", v]);
        }
        p.unoflow(&args)
    };
    let slurm = submit("slurm", &["max_side=16", "images=/data/my images"]).ok().stdout;
    let exec = slurm.lines().find(|l| l.starts_with("exec ")).unwrap();
    assert!(exec.contains(" --var max_side=16 --var 'images=/data/my images'"), "{exec}");
    let k8s = submit("kubernetes", &["max_side=16"]).ok().stdout;
    assert!(k8s.contains(r#""--var", "max_side=16""#), "{k8s}");
    let out = submit("slurm", &["max_sid=16"]).expect_code(2);
    assert!(out.stderr.contains("did you mean `max_side`?"), "{}", out.stderr);
}
