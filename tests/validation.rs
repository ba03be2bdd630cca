//! `unoflow validate`: each class of mistake gets one message with file:line:col, what is wrong
//! and how to fix it, and exit code 2.

use crate::support::{Project, Run};

const HEADER: &str = "[dag]\nname = \"v\"\nworkspace = \"ws\"\n";

fn validate(text: &str) -> Run {
    let p = Project::new();
    p.solid_png("images/a.png", 8, 8, [1, 2, 3]);
    p.dag(&format!("{HEADER}{text}"));
    p.unoflow(&["validate", "dag.toml"])
}

/// Asserts exit code 2 and that stderr has every fragment.
#[track_caller]
fn fails_with(run: Run, fragments: &[&str]) {
    let run = run.expect_code(2);
    for f in fragments {
        assert!(run.stderr.contains(f), "missing {f:?} in:\n{}", run.stderr);
    }
}

const READ: &str = "[nodes.photos]\nop = \"read\"\npath = \"images\"\nformat = \"images\"\n";

#[test]
fn a_valid_dag_passes() {
    let run = validate(&format!("{READ}[nodes.thumbs]\nop = \"thumbnail\"\ninputs = [\"photos\"]\nmax_side = 4\n")).ok();
    assert!(run.stdout.contains("ok (2 nodes)"), "{}", run.stdout);
}

#[test]
fn toml_syntax() {
    fails_with(validate("[nodes.a]\nop = \"read\npath = 1\n"), &["error: invalid DAG file", "dag.toml:5:"]);
}

#[test]
fn unknown_op_suggests() {
    fails_with(
        validate("[nodes.a]\nop = \"thumbnial\"\n"),
        &["unknown op `thumbnial` in node `a`", "dag.toml:5:6", "did you mean `thumbnail`?"],
    );
}

#[test]
fn unknown_parameter_suggests() {
    fails_with(
        validate(&format!("{READ}[nodes.t]\nop = \"thumbnail\"\ninputs = [\"photos\"]\nmax_sid = 4\n")),
        &["unknown parameter `max_sid` for op `thumbnail` in node `t`", "dag.toml:11:1", "did you mean `max_side`?"],
    );
}

#[test]
fn wrong_type_and_range() {
    fails_with(
        validate(&format!("{READ}[nodes.t]\nop = \"thumbnail\"\ninputs = [\"photos\"]\nmax_side = \"big\"\n")),
        &["parameter `max_side` of node `t` (op `thumbnail`): expected an integer in 1..=16384, found a string", "dag.toml:11:12"],
    );
    fails_with(
        validate(&format!("{READ}[nodes.t]\nop = \"thumbnail\"\ninputs = [\"photos\"]\nmax_side = 0\n")),
        &["0 is out of range: must be 1..=16384"],
    );
    fails_with(
        validate(&format!("{READ}[nodes.t]\nop = \"thumbnail\"\ninputs = [\"photos\"]\nmax_side = 4\nfilter = \"bicubic\"\n")),
        &["\"bicubic\" is not one of \"lanczos3\""],
    );
}

#[test]
fn missing_required_parameter() {
    fails_with(
        validate(&format!("{READ}[nodes.t]\nop = \"thumbnail\"\ninputs = [\"photos\"]\n")),
        &["node `t` (op `thumbnail`) needs parameter `max_side`", "add `max_side = …` under [nodes.t]"],
    );
}

#[test]
fn missing_input_node() {
    fails_with(
        validate(&format!("{READ}[nodes.t]\nop = \"thumbnail\"\ninputs = [\"photo\"]\nmax_side = 4\n")),
        &["node `t` reads `photo`, which is not a node of this DAG", "did you mean `photos`?", "dag.toml:10:10"],
    );
    fails_with(validate("[nodes.t]\nop = \"thumbnail\"\nmax_side = 4\n"), &["takes 1 input, but has 0"]);
}

#[test]
fn cycle_is_printed() {
    fails_with(
        validate(
            "[nodes.a]\nop = \"sql\"\ninputs = [\"b\"]\nquery = \"SELECT 1\"\n\n[nodes.b]\nop = \"sql\"\ninputs = [\"a\"]\nquery = \"SELECT 1\"\n",
        ),
        &["the DAG has a cycle: a -> b -> a"],
    );
}

#[test]
fn missing_column_names_both_nodes() {
    let text = format!(
        "{READ}[nodes.meta]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT row_id, path FROM photos\"\n\n\
         [nodes.t]\nop = \"thumbnail\"\ninputs = [\"meta\"]\nmax_side = 4\n"
    );
    fails_with(
        validate(&text),
        &[
            "node `t` (op `thumbnail`) needs column `image`",
            "from its input `meta` (op `sql`), which does not output it",
            "`meta` outputs: row_id, path",
        ],
    );
    let typed = format!(
        "{READ}[nodes.meta]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT row_id, path AS image FROM photos\"\n\n\
         [nodes.t]\nop = \"thumbnail\"\ninputs = [\"meta\"]\nmax_side = 4\n"
    );
    fails_with(validate(&typed), &["needs column `image` as Binary", "outputs it as Utf8"]);
}

#[test]
fn bad_sql_points_at_the_query() {
    fails_with(
        validate(&format!("{READ}[nodes.q]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT nope FROM photos\"\n")),
        &["node `q` (op `sql`): invalid query", "nope", "dag.toml:11:9", "the query can read the node's inputs: `photos`"],
    );
}

#[test]
fn missing_file() {
    fails_with(
        validate("[nodes.p]\nop = \"read\"\npath = \"no/such/folder\"\nformat = \"images\"\n"),
        &["file not found:", "no/such/folder", "parameter `path` of node `p`", "paths are relative to the DAG file's folder"],
    );
}

#[test]
fn node_names_are_table_names() {
    fails_with(
        validate("[nodes.My-Node]\nop = \"sql\"\nquery = \"SELECT 1\"\n"),
        &["node name `My-Node` is not a valid table name", "my_node"],
    );
}

#[test]
fn interpolation_errors() {
    fails_with(
        validate("[nodes.p]\nop = \"read\"\npath = \"${env:UNOFLOW_TEST_SURELY_UNSET}\"\n"),
        &["environment variable `UNOFLOW_TEST_SURELY_UNSET` is not set", "${env:UNOFLOW_TEST_SURELY_UNSET:-value}"],
    );
    fails_with(
        validate("[vars]\nroot = \"images\"\n\n[nodes.p]\nop = \"read\"\npath = \"${roots}\"\n"),
        &["unknown variable `${roots}`", "did you mean `${root}`?"],
    );
}

#[test]
fn several_errors_are_reported_together() {
    let run = validate("[nodes.a]\nop = \"nope\"\n\n[nodes.b]\nop = \"thumbnail\"\ninputs = [\"zzz\"]\nmax_side = 1\n").expect_code(2);
    assert!(run.stderr.contains("unknown op `nope`"), "{}", run.stderr);
    assert!(run.stderr.contains("reads `zzz`"), "{}", run.stderr);
    assert!(run.stderr.contains("2 errors in dag.toml"), "{}", run.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let p = Project::new();
    p.unoflow(&["validate", "missing.toml"]).expect_code(2);
    p.unoflow(&["run", "missing.toml", "--device", "tpu"]).expect_code(2);
    let run = p.unoflow(&["ops", "thumbnial"]).expect_code(2);
    assert!(run.stderr.contains("did you mean `thumbnail`?"), "{}", run.stderr);
}

#[test]
fn operator_parameter_values_are_checked_before_running() {
    let pairs = "[nodes.pairs]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT row_id, image AS ref_image, image AS target_image, 'x' AS subject, 64 AS width, 64 AS height, layout FROM photos CROSS JOIN (SELECT 'left_right' AS layout)\"\n";
    let bad_endpoint = "[nodes.vlm]\nop = \"vlm_score\"\ninputs = [\"pairs\"]\nendpoint = \"localhost:8000\"\nmodel = \"m\"\n";
    fails_with(validate(&format!("{READ}{pairs}{bad_endpoint}")), &["dag.toml:", "parameter `endpoint`", "http://localhost:8000/v1"]);
    let bad_size = "[nodes.subjects]\nop = \"sql\"\ninputs = [\"photos\"]\nquery = \"SELECT row_id, 'a mug' AS subject, make_array('a', 'b') AS scenes FROM photos\"\n\
                    [nodes.prompts]\nop = \"diptych_prompts\"\ninputs = [\"subjects\"]\ncompanions = \"dag.toml\"\nresolutions = [\"1000x768\"]\n";
    fails_with(validate(&format!("{READ}{bad_size}")), &["dag.toml:", "resolutions = [\"1000x768\"]", "multiples of 32"]);
}
