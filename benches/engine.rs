//! Engine overhead on relational work, against plain DataFusion measured in the same process
//! and run:
//!
//! 1. `read → sql → export`: the same query over the same Parquet file, written to one Parquet
//!    file. The engine also copies the source into the workspace (row ids, encoding, blake3,
//!    fsync, commit) and reads it back; the `sql` node is a view, so it costs a plan.
//! 2. `unoflow sql` over a chain of three `sql` views against the same nested query in
//!    DataFusion over the same committed part files.
//!
//! ```sh
//! cargo bench --bench engine            # 1 M small rows and 10 k rows of 64 KB blobs
//! cargo bench --bench engine -- --quick # 100 k and 1 k rows
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use unoflow::exec::{RunOptions, Status, Unobserved};

#[path = "support/source.rs"]
mod source;
use source::make_source;

const QUERY: &str = "SELECT id, name, value * 2 AS doubled, category, payload FROM src WHERE value > 0.25";
const REPEATS: usize = 3;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let scale = if quick { 10 } else { 1 };
    println!("engine overhead: read → sql → export (Parquet), median of {REPEATS}, {} threads", rayon::current_num_threads());
    println!("{:<28} {:>12} {:>12} {:>8}   engine per node (read / sql / export)", "case", "datafusion", "unoflow", "ratio");
    for (rows, blob) in [(1_000_000 / scale, 0usize), (10_000 / scale, 64 * 1024)] {
        let label = if blob == 0 { format!("{rows} small rows") } else { format!("{rows} rows x {} KB blobs", blob / 1024) };
        let dir = tempfile::tempdir().expect("temp dir");
        make_source(&dir.path().join("src.parquet"), rows, blob);
        let mut df_times = Vec::new();
        let mut copy_times = Vec::new();
        let mut engine_times = Vec::new();
        let mut node_times = Vec::new();
        for i in 0..REPEATS {
            df_times.push(runtime.block_on(datafusion_pipeline(dir.path(), i)));
            copy_times.push(runtime.block_on(datafusion_with_copy(dir.path(), i)));
            let (total, nodes) = runtime.block_on(engine_pipeline(dir.path(), i));
            engine_times.push(total);
            node_times.push(nodes);
        }
        let (df, copy, engine) = (median(&mut df_times), median(&mut copy_times), median(&mut engine_times));
        let nodes = node_times.into_iter().min_by(|a, b| a.iter().sum::<f64>().total_cmp(&b.iter().sum::<f64>())).unwrap_or_default();
        let per_node: Vec<String> = nodes.iter().map(|s| format!("{s:.2}s")).collect();
        println!(
            "{label:<28} {:>11.2}s {:>11.2}s {:>7.2}x   {}; DataFusion with the read's copy {:.2}s ({:.2}x)",
            df.as_secs_f64(),
            engine.as_secs_f64(),
            engine.as_secs_f64() / df.as_secs_f64(),
            per_node.join(" / "),
            copy.as_secs_f64(),
            engine.as_secs_f64() / copy.as_secs_f64()
        );
        if blob == 0 {
            let (df, engine) = views_case(&runtime, dir.path());
            println!(
                "{:<28} {:>11.2}s {:>11.2}s {:>7.2}x   three chained views, `unoflow sql` vs the nested query",
                format!("{rows} rows, views"),
                df.as_secs_f64(),
                engine.as_secs_f64(),
                engine.as_secs_f64() / df.as_secs_f64()
            );
        }
    }
}

/// Case 2: a chain of three views queried through the engine's catalog, against the same nested
/// query in DataFusion over the same part files. Returns (DataFusion, unoflow) medians.
fn views_case(runtime: &tokio::runtime::Runtime, dir: &Path) -> (Duration, Duration) {
    let dag_path = dir.join("views.toml");
    std::fs::write(
        &dag_path,
        "[dag]\nname = \"views\"\nworkspace = \"ws-views\"\n\n\
         [nodes.src]\nop = \"read\"\npath = \"src.parquet\"\n\n\
         [nodes.a]\nop = \"sql\"\ninputs = [\"src\"]\nquery = \"SELECT row_id, id, name, value, category FROM src WHERE value > 0.25\"\n\n\
         [nodes.b]\nop = \"sql\"\ninputs = [\"a\"]\nquery = \"SELECT row_id, id, name, value * 2 AS doubled, category FROM a WHERE category <> 'category-3'\"\n\n\
         [nodes.c]\nop = \"sql\"\ninputs = [\"b\"]\nquery = \"SELECT row_id, name, doubled FROM b WHERE id % 3 = 0\"\n",
    )
    .expect("dag");
    let final_query = "SELECT count(*), sum(doubled), max(name) FROM c";
    let nested = "SELECT count(*), sum(doubled), max(name) FROM (SELECT row_id, name, doubled FROM (SELECT row_id, id, name, value * 2 AS doubled, category FROM (SELECT row_id, id, name, value, category FROM src WHERE value > 0.25) a WHERE category <> 'category-3') b WHERE id % 3 = 0) c";
    runtime.block_on(async {
        let dag = Arc::new(unoflow::dag::load(&dag_path, None, &unoflow::builtin_registry()).await.expect("valid DAG"));
        unoflow::exec::run(Arc::clone(&dag), RunOptions::default(), Vec::new(), Default::default(), Arc::new(Unobserved))
            .await
            .expect("run");
        let (mut df_times, mut engine_times) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            let started = Instant::now();
            let ctx = SessionContext::new();
            ctx.register_parquet("src", &dir.join("ws-views/tables/src/").to_string_lossy(), ParquetReadOptions::default())
                .await
                .expect("register");
            let baseline = ctx.sql(nested).await.expect("plan").collect().await.expect("run");
            df_times.push(started.elapsed());

            let started = Instant::now();
            let catalog = unoflow::catalog::Catalog::of_dag(&dag).expect("catalog");
            let ctx = catalog.session_for(final_query).await.expect("session");
            let df = unoflow::query::plan(&ctx, final_query).await.expect("plan");
            let ours = df.collect().await.expect("run");
            engine_times.push(started.elapsed());
            assert_eq!(baseline[0].column(0).len(), ours[0].column(0).len());
        }
        (median(&mut df_times), median(&mut engine_times))
    })
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn datafusion_pipeline(dir: &Path, i: usize) -> Duration {
    let started = Instant::now();
    let ctx = SessionContext::new();
    ctx.register_parquet("src", dir.join("src.parquet").to_str().expect("utf8 path"), ParquetReadOptions::default())
        .await
        .expect("register");
    let out = dir.join(format!("datafusion-{i}.parquet"));
    ctx.sql(QUERY)
        .await
        .expect("plan")
        .write_parquet(out.to_str().expect("utf8 path"), DataFrameWriteOptions::new().with_single_file_output(true), None)
        .await
        .expect("write");
    started.elapsed()
}

/// The same pipeline in DataFusion with the copy the engine's `read` makes: the source written
/// to a Parquet copy, then the query over the copy written out. The floor for a workspace that
/// owns its data.
async fn datafusion_with_copy(dir: &Path, i: usize) -> Duration {
    let started = Instant::now();
    let ctx = SessionContext::new();
    ctx.register_parquet("raw", dir.join("src.parquet").to_str().expect("utf8 path"), ParquetReadOptions::default())
        .await
        .expect("register");
    let copy = dir.join(format!("copy-{i}.parquet"));
    ctx.sql("SELECT * FROM raw")
        .await
        .expect("plan")
        .write_parquet(copy.to_str().expect("utf8 path"), DataFrameWriteOptions::new().with_single_file_output(true), None)
        .await
        .expect("copy");
    ctx.register_parquet("src", copy.to_str().expect("utf8 path"), ParquetReadOptions::default()).await.expect("register");
    let out = dir.join(format!("datafusion-copy-{i}.parquet"));
    ctx.sql(QUERY)
        .await
        .expect("plan")
        .write_parquet(out.to_str().expect("utf8 path"), DataFrameWriteOptions::new().with_single_file_output(true), None)
        .await
        .expect("write");
    started.elapsed()
}

async fn engine_pipeline(dir: &Path, i: usize) -> (Duration, Vec<f64>) {
    let dag_path = dir.join(format!("bench-{i}.toml"));
    std::fs::write(
        &dag_path,
        format!(
            "[dag]\nname = \"bench\"\nworkspace = \"ws-{i}\"\n\n\
             [nodes.src]\nop = \"read\"\npath = \"src.parquet\"\n\n\
             [nodes.query]\nop = \"sql\"\ninputs = [\"src\"]\nquery = \"{}\"\n\n\
             [nodes.out]\nop = \"export\"\ninputs = [\"query\"]\npath = \"unoflow-{i}.parquet\"\n",
            QUERY
        ),
    )
    .expect("dag");
    let started = Instant::now();
    let dag = Arc::new(unoflow::dag::load(&dag_path, None, &unoflow::builtin_registry()).await.expect("valid DAG"));
    let report = unoflow::exec::run(dag, RunOptions::default(), Vec::new(), Default::default(), Arc::new(Unobserved)).await.expect("run");
    let elapsed = started.elapsed();
    assert!(report.outcomes.iter().all(|o| matches!(o.status, Status::Computed | Status::View)), "{:?}", report.outcomes);
    (elapsed, report.outcomes.iter().map(|o| o.seconds).collect())
}
