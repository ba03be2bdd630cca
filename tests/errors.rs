//! Per-row failures: recorded in the node's error table, counted, and never fatal unless
//! `--fail-fast`.

use crate::support::{Project, sql_csv, thumbs_dag};

fn project() -> Project {
    let p = Project::new();
    for i in 0..6 {
        p.solid_png(&format!("images/ok{i}.png"), 32, 16, [i * 30, 0, 0]);
    }
    p.write("images/broken.png", "this is not a png");
    p.dag(&thumbs_dag(8));
    p
}

#[test]
fn bad_rows_go_to_the_error_table() {
    let p = project();
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.contains("1 row error"), "{}", run.stdout);
    assert!(run.stdout.contains("errors.photos"), "{}", run.stdout);
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM thumbs"), ["n", "6"]);
    let errors = sql_csv(&p, "SELECT message FROM errors.photos");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[1].contains("broken.png") && errors[1].contains("not an image"), "{errors:?}");
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM errors.thumbs"), ["n", "0"]);
}

#[test]
fn fail_fast_stops() {
    let p = project();
    let run = p.unoflow(&["run", "dag.toml", "-q", "--fail-fast"]).expect_code(1);
    assert!(run.stderr.contains("--fail-fast"), "{}", run.stderr);
    assert!(run.stdout.lines().any(|l| l.starts_with("photos") && l.contains("failed")), "{}", run.stdout);
    // Without it, the same workspace completes (committed units are reused).
    let again = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(again.stdout.contains("1 row error"), "{}", again.stdout);
}
