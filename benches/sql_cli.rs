//! SQL as users meet it: one `unoflow sql --dag` process per query (the catalog, the parts'
//! digests, planning and the query), against one DataFusion process per query running the
//! same query, views written out as nested subqueries, over the same part files. Both sides
//! are timed from outside, process start to exit, and their peak resident memory read by GNU
//! `time` when it is installed.
//!
//! ```sh
//! cargo bench --profile dev --bench sql_cli                 # 3 M rows, as issue 30 measured
//! cargo bench --profile dev --bench sql_cli -- --rows 300000
//! ```
//!
//! The two views drop `row_id`, so the engine gives their rows ids: the case that streamed
//! every row of every column through the id assignment before views were planned through.

use std::path::Path;
use std::process::Command;

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use measure::{Measured, measure, mib};

#[path = "support/measure.rs"]
mod measure;
#[path = "support/source.rs"]
mod source;

const REPEATS: usize = 3;

const DAG: &str = r#"[dag]
name = "sql-cli"
workspace = "ws"

[nodes.src]
op = "read"
path = "src.parquet"

[nodes.a]
op = "sql"
inputs = ["src"]
query = "SELECT id, name, value, category FROM src WHERE value > 0.25"

[nodes.b]
op = "sql"
inputs = ["a"]
query = "SELECT id, name, value * 2 AS doubled, category FROM a WHERE category <> 'category-3'"
"#;

/// `b` as DataFusion reads it without the engine: the two views as nested subqueries.
const B: &str = "(SELECT id, name, value * 2 AS doubled, category FROM \
                 (SELECT id, name, value, category FROM src WHERE value > 0.25) a WHERE category <> 'category-3') b";

/// (what, the query through the engine, the same query for DataFusion)
fn cases() -> Vec<(&'static str, String, String)> {
    let aggregate = "SELECT category, count(*) AS n, avg(doubled) AS mean FROM {} WHERE doubled > 1.2 GROUP BY category ORDER BY category";
    vec![
        ("start-up (SELECT 1)", "SELECT 1".into(), "SELECT 1".into()),
        ("count(*) over the read node", "SELECT count(*) FROM src".into(), "SELECT count(*) FROM src".into()),
        ("count(*) over 2 views", "SELECT count(*) FROM b".into(), format!("SELECT count(*) FROM {B}")),
        ("filtered aggregate over 2 views", aggregate.replace("{}", "b"), aggregate.replace("{}", B)),
        ("top 10 rows of 2 views", "SELECT name, doubled FROM b LIMIT 10".into(), format!("SELECT name, doubled FROM {B} LIMIT 10")),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The baseline's own process: `--datafusion PARTS QUERY`.
    if let Some(i) = args.iter().position(|a| a == "--datafusion") {
        datafusion_query(Path::new(&args[i + 1]), &args[i + 2]);
        return;
    }
    let rows: usize = match args.iter().position(|a| a == "--rows") {
        Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).expect("--rows takes a number"),
        None => 3_000_000,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    source::make_source(&dir.path().join("src.parquet"), rows, 0);
    std::fs::write(dir.path().join("dag.toml"), DAG).expect("dag");
    let run = Command::new(env!("CARGO_BIN_EXE_unoflow")).args(["run", "dag.toml", "-q"]).current_dir(dir.path()).status();
    assert!(run.is_ok_and(|s| s.success()), "unoflow run failed");
    let parts = dir.path().join("ws/tables/src/");
    let me = std::env::current_exe().expect("this bench");

    println!("SQL, one process per query, {rows} rows, median of {REPEATS} (peak RSS: the run with the median time)");
    println!("{:<34} {:>12} {:>12} {:>8} {:>14} {:>14}", "query", "datafusion", "unoflow", "ratio", "datafusion MiB", "unoflow MiB");
    for (what, ours, theirs) in cases() {
        let mut theirs_runs: Vec<Measured> =
            (0..REPEATS).map(|_| measure(Command::new(&me).arg("--datafusion").arg(&parts).arg(&theirs), dir.path())).collect();
        let mut our_runs: Vec<Measured> = (0..REPEATS)
            .map(|_| {
                measure(
                    Command::new(env!("CARGO_BIN_EXE_unoflow")).args(["sql", "--dag", "dag.toml", "--format", "csv", &ours]),
                    dir.path(),
                )
            })
            .collect();
        let (t, o) = (median(&mut theirs_runs), median(&mut our_runs));
        println!(
            "{what:<34} {:>11.3}s {:>11.3}s {:>7.2}x {:>14} {:>14}",
            t.wall.as_secs_f64(),
            o.wall.as_secs_f64(),
            o.wall.as_secs_f64() / t.wall.as_secs_f64(),
            mib(t.peak_kib),
            mib(o.peak_kib)
        );
    }
}

/// Runs the query in this process with DataFusion's defaults (every core), the parts registered
/// as `src`; prints the row count.
fn datafusion_query(parts: &Path, query: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_parquet("src", &parts.to_string_lossy(), ParquetReadOptions::default()).await.expect("register");
        let batches = ctx.sql(query).await.expect("plan").collect().await.expect("run");
        println!("{}", batches.iter().map(|b| b.num_rows()).sum::<usize>());
    });
}

fn median(runs: &mut [Measured]) -> &Measured {
    runs.sort_by_key(|m| m.wall);
    &runs[runs.len() / 2]
}
