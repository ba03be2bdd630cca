//! Operators of the user's own: a Python function (`op = "python"`) and a program
//! (`op = "command"`) over Arrow, in a DAG beside the built-in operators; and a Rust operator in
//! a program of the user's built on the engine (`examples/own_operator.rs`).

use std::path::{Path, PathBuf};

use crate::support::{Project, plan_states, sql_csv};

/// Whether `python3` has what the scripts below import; CI requires it
/// (`UNOFLOW_REQUIRE_PYARROW`).
fn have_python_packages() -> bool {
    let probe = std::process::Command::new("python3").args(["-c", "import pyarrow, numpy, PIL"]).status();
    let ok = probe.is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("UNOFLOW_REQUIRE_PYARROW").is_none(), "python3 lacks pyarrow, numpy or Pillow; pip install them");
        eprintln!("skipped: python3 lacks pyarrow, numpy or Pillow");
    }
    ok
}

/// NumPy and Pillow over the image rows; refuses the photo named `bad`.
const BRIGHTNESS: &str = r#"import io

import numpy as np
from PIL import Image


def brightness(batch, scale=1.0):
    values = []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("image").to_pylist()):
        if "bad" in path:
            raise ValueError(f"refusing {path}")
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
        values.append(pixels.mean() * scale)
    print(f"scored {len(values)} images")
    return {"brightness": np.array(values)}
"#;

/// A program reading the rows as Arrow IPC on standard input: the length of each path, and an
/// exit with an error for a batch holding `bad`.
const NAME_LENGTH: &str = r#"import sys

import pyarrow as pa

batch = pa.ipc.open_stream(sys.stdin.buffer).read_all()
paths = batch.column("path").to_pylist()
if any("bad" in p for p in paths):
    print("cannot measure a bad name", file=sys.stderr)
    sys.exit(5)
out = pa.table({"name_length": pa.array([len(p) for p in paths], pa.int32())})
with pa.ipc.new_stream(sys.stdout.buffer, out.schema) as writer:
    writer.write_table(out)
"#;

const DAG: &str = r#"[dag]
name = "own"
seed = 3
workspace = "ws"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.bright]
op = "python"
inputs = ["photos"]
script = "brightness.py"
function = "brightness"
outputs = { brightness = "float64" }
params = { scale = 0.5 }
batch_size = 2

[nodes.lengths]
op = "command"
inputs = ["photos"]
command = ["python3", "name_length.py"]
outputs = { name_length = "int64" }
batch_size = 4
"#;

fn project() -> Project {
    let p = Project::new();
    for (i, name) in ["a", "b", "bad", "c", "d"].iter().enumerate() {
        let i = i as u8;
        p.solid_png(&format!("images/{name}.png"), 12 + u32::from(i), 8, [i * 40, 200 - i * 30, 7 * i]);
    }
    p.noise_images("images/noise", 2, 16, 11);
    p.write("brightness.py", BRIGHTNESS);
    p.write("name_length.py", NAME_LENGTH);
    p.dag(DAG);
    p
}

/// The mean of an image's RGB values, computed here with the `image` crate: the independent
/// reference for the script's NumPy and Pillow.
fn mean_rgb(path: &std::path::Path) -> f64 {
    let pixels = image::open(path).unwrap().to_rgb8().into_raw();
    pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / pixels.len() as f64
}

#[test]
fn a_python_function_and_a_command_add_columns_and_only_their_failing_rows_become_errors() {
    if !have_python_packages() {
        return;
    }
    let p = project();
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.contains("2 row errors"), "{}", run.stdout);
    assert!(run.stderr.contains("scored 2 images"), "what the script prints reaches standard error: {}", run.stderr);

    let rows = sql_csv(&p, "SELECT path, brightness FROM bright ORDER BY path");
    assert_eq!(rows.len(), 1 + 6, "six photos scored, `bad` not: {rows:?}");
    for row in &rows[1..] {
        let (path, value) = row.split_once(',').unwrap();
        let expected = mean_rgb(&p.path(&format!("images/{path}"))) * 0.5;
        let got: f64 = value.parse().unwrap();
        assert!((got - expected).abs() < 1e-9, "{path}: {got} vs {expected}");
    }
    let errors = sql_csv(&p, "SELECT e.message FROM errors.bright e JOIN photos USING (row_id)");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[1].contains("ValueError: refusing bad.png (brightness.py, line 11, in brightness)"), "{errors:?}");

    let lengths = sql_csv(&p, "SELECT path, name_length FROM lengths ORDER BY path");
    assert_eq!(lengths.len(), 1 + 6, "{lengths:?}");
    for row in &lengths[1..] {
        let (path, length) = row.split_once(',').unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), path.len(), "{row}");
    }
    let errors = sql_csv(&p, "SELECT replace(message, chr(10), ' / ') AS message FROM errors.lengths");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[1], "`python3 name_length.py` exited with status 5; its last output: / cannot measure a bad name");
    // The columns are typed as declared (the program wrote int32; `outputs` says int64).
    let types =
        sql_csv(&p, "SELECT arrow_typeof(name_length) AS t, arrow_typeof(brightness) AS u FROM lengths JOIN bright USING (row_id) LIMIT 1");
    assert_eq!(types, ["t,u", "Int64,Float64"]);

    // Editing the script makes its node stale, and only it; the plan says why.
    p.write("brightness.py", &BRIGHTNESS.replace("def brightness", "# mean of the RGB values\ndef brightness"));
    let states = plan_states(&p.unoflow(&["plan", "dag.toml", "--json"]).ok());
    let state = |node: &str| states.iter().find(|(n, ..)| n == node).unwrap().clone();
    assert_eq!(state("photos").1, "cached");
    assert_eq!(state("lengths").1, "cached");
    assert_eq!(state("bright").1, "stale", "{states:?}");
    assert_eq!(state("bright").2, ["source files changed"]);
}

#[test]
fn a_user_operator_declared_wrong_is_refused_before_anything_runs() {
    if !have_python_packages() {
        return;
    }
    let p = project();
    p.dag(&DAG.replace(r#"outputs = { brightness = "float64" }"#, r#"outputs = { brightness = "float" }"#));
    let run = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(run.stderr.contains("unknown type \"float\"; the types are bool"), "{}", run.stderr);
    assert!(run.stderr.contains("dag.toml"), "{}", run.stderr);

    p.dag(&DAG.replace(r#"function = "brightness""#, r#"function = "brigthness""#));
    let run = p.unoflow(&["plan", "dag.toml"]).expect_code(2);
    assert!(
        run.stderr.contains("node `bright` (op `python`): parameter `script`: brightness.py defines no function `brigthness`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("dag.toml:"), "points at the node in the file: {}", run.stderr);
}

/// The example program with an operator of its own, which `cargo test` builds with the tests.
fn example_program() -> PathBuf {
    let unoflow = Path::new(env!("CARGO_BIN_EXE_unoflow"));
    let program = unoflow.parent().unwrap().join("examples").join("own_operator");
    assert!(
        program.exists(),
        "{} is not built: run the tests as the README does (`cargo test --workspace` builds the examples)",
        program.display()
    );
    program
}

#[test]
fn a_program_built_on_the_engine_runs_its_own_rust_operator() {
    let p = Project::new();
    p.write("captions.csv", "caption\na red cup on a table\none\n  two   words \n");
    p.dag(
        r#"[dag]
name = "words"
workspace = "ws"

[nodes.captions]
op = "read"
path = "captions.csv"
format = "csv"

[nodes.counted]
op = "word_count"
inputs = ["captions"]
"#,
    );
    let program = example_program();
    let listed = p.run_program(&program, &["ops"]).ok();
    assert!(listed.stdout.contains("word_count") && listed.stdout.contains("python"), "{}", listed.stdout);
    p.run_program(&program, &["run", "dag.toml", "-q"]).ok();
    let rows = p.run_program(&program, &["sql", "--dag", "dag.toml", "--format", "csv", "SELECT caption, words FROM counted"]).ok();
    assert_eq!(rows.stdout.lines().collect::<Vec<_>>(), ["caption,words", "a red cup on a table,6", "one,1", "  two   words ,2"]);
    // The stock binary does not know the operator, and says so.
    let stock = p.unoflow(&["validate", "dag.toml"]).expect_code(2);
    assert!(stock.stderr.contains("unknown op `word_count`"), "{}", stock.stderr);
}
