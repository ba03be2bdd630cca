//! Semantic deduplication at a million rows: 1 000 000 384-d embeddings (DINOv2-S's width) in
//! 2 000 clusters, 50 000 of them planted near copies (cosine ≈ 0.98 to the row before them),
//! grouped at `dedup`'s default threshold (0.95).
//!
//! 1. In process: `near_duplicates::by_cosine` (k-means blocks) over the million rows — time,
//!    peak resident memory, planted copies found, rows wrongly grouped.
//! 2. The baseline, in the same run: on the first 20 000 rows, every pair compared against the
//!    blocks — the time ratio and how many rows' groups differ.
//! 3. As a user meets it: `unoflow run` of a `dedup` node (`method = "semantic"`,
//!    `embedding = "embedding"`) over a Parquet file of the million rows, one process, the
//!    file's reading and the output's writing included — wall time and peak RSS (GNU `time`).
//!
//! ```sh
//! cargo bench --profile dev --bench dedup
//! cargo bench --profile dev --bench dedup -- --rows 200000
//! ```

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float32Builder, ListBuilder, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use measure::{measure, mib};
use unoflow_operators::near_duplicates::{Candidates, Embeddings, by_cosine, by_cosine_with};

#[path = "support/measure.rs"]
mod measure;

const DIM: usize = 384;
const CLUSTERS: usize = 2000;
/// Every twentieth row copies the row before it.
const COPY_EVERY: usize = 20;
const THRESHOLD: f32 = 0.95;
const BASELINE_ROWS: usize = 20_000;

/// Seeded draws.
struct Draws(unoflow_api::draws::Draws);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Two N(0, 1) values (Box–Muller).
    fn normals(&mut self) -> [f32; 2] {
        let (u, v) = (self.0.unit().max(f64::MIN_POSITIVE), self.0.unit());
        let r = (-2.0 * u.ln()).sqrt();
        let a = std::f64::consts::TAU * v;
        [(r * a.cos()) as f32, (r * a.sin()) as f32]
    }

    fn direction(&mut self) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM / 2).flat_map(|_| self.normals()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }
}

/// `rows` embeddings: a cluster's centre plus as much noise (cosine ≈ 0.7 to the centre), and
/// every [`COPY_EVERY`]th the row before it plus a little (cosine ≈ 0.98).
fn embeddings(rows: usize) -> Vec<Vec<f32>> {
    let mut draws = Draws(unoflow_api::draws::Draws::new(2504_02160, "benches/dedup", &[]));
    let centres: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| draws.direction()).collect();
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(rows);
    for i in 0..rows {
        let (base, spread) =
            if i % COPY_EVERY == COPY_EVERY - 1 { (&out[i - 1], 0.2) } else { (&centres[draws.next() as usize % CLUSTERS], 1.0) };
        let noise = draws.direction();
        let row = base.iter().zip(&noise).map(|(b, n)| b + spread * n).collect();
        out.push(row);
    }
    out
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize =
        args.iter().position(|a| a == "--rows").and_then(|i| args.get(i + 1)).map_or(1_000_000, |v| v.parse().expect("--rows N"));
    let started = Instant::now();
    let rows_data = embeddings(rows);
    println!("{rows} embeddings of {DIM} values, {} planted copies, made in {:.1} s", rows / COPY_EVERY, started.elapsed().as_secs_f64());

    // 1. In process.
    let embedded = Embeddings::normalized(DIM, rows_data.iter().map(Vec::as_slice));
    let order: Vec<usize> = (0..rows).collect();
    let before = peak_rss_mib();
    let started = Instant::now();
    let grouping = by_cosine(&embedded, THRESHOLD, &order);
    let blocked = started.elapsed().as_secs_f64();
    let planted: Vec<usize> = (0..rows).filter(|i| i % COPY_EVERY == COPY_EVERY - 1).collect();
    let found = planted.iter().filter(|&&i| grouping.representative[i] == i - 1).count();
    let wrong = (0..rows).filter(|&i| i % COPY_EVERY != COPY_EVERY - 1 && !grouping.is_representative(i)).count();
    println!(
        "by_cosine (k-means blocks): {blocked:.1} s; peak RSS {:.0} MiB ({before:.0} MiB before: the rows twice, as made and normalised); \
         planted copies found {found}/{}; other rows grouped {wrong}",
        peak_rss_mib(),
        planted.len()
    );

    // 2. The baseline: every pair, on a subset.
    let subset = rows.min(BASELINE_ROWS);
    let part = Embeddings::normalized(DIM, rows_data[..subset].iter().map(Vec::as_slice));
    let order: Vec<usize> = (0..subset).collect();
    let started = Instant::now();
    let exact = by_cosine_with(&part, THRESHOLD, &order, Candidates::AllPairs);
    let all_pairs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let fast = by_cosine(&part, THRESHOLD, &order);
    let fast_time = started.elapsed().as_secs_f64();
    let differ = (0..subset).filter(|&i| exact.representative[i] != fast.representative[i]).count();
    println!(
        "{subset} rows: every pair {all_pairs:.2} s, blocks {fast_time:.2} s ({:.1}x faster); rows grouped differently {differ}",
        all_pairs / fast_time
    );
    drop((embedded, part));

    // 3. As a user meets it.
    let dir = tempfile::tempdir().expect("temp dir");
    write_parquet(&dir.path().join("embeddings.parquet"), &rows_data);
    drop(rows_data);
    std::fs::write(
        dir.path().join("dag.toml"),
        "[dag]\nname = \"dedup-bench\"\nworkspace = \"ws\"\n\n[nodes.rows]\nop = \"read\"\npath = \"embeddings.parquet\"\n\n\
         [nodes.groups]\nop = \"dedup\"\ninputs = [\"rows\"]\nmethod = \"semantic\"\nembedding = \"embedding\"\n",
    )
    .expect("dag");
    let run = measure(Command::new(env!("CARGO_BIN_EXE_unoflow")).args(["run", "dag.toml", "-q"]), dir.path());
    let groups = Command::new(env!("CARGO_BIN_EXE_unoflow"))
        .args([
            "sql",
            "--dag",
            "dag.toml",
            "--format",
            "csv",
            "SELECT count(*) FILTER (WHERE NOT is_representative) AS grouped FROM groups",
        ])
        .current_dir(dir.path())
        .output()
        .expect("sql");
    println!(
        "unoflow run (read + dedup, one process): {:.1} s, peak RSS {} MiB; {}",
        run.wall.as_secs_f64(),
        mib(run.peak_kib),
        String::from_utf8_lossy(&groups.stdout).trim().replace('\n', " = ")
    );
}

fn write_parquet(path: &Path, rows: &[Vec<f32>]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::Utf8, false),
        Field::new("embedding", DataType::List(Arc::new(Field::new("item", DataType::Float32, true))), false),
    ]));
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).expect("file"), Arc::clone(&schema), None).expect("writer");
    for (start, chunk) in (0..).step_by(8192).zip(rows.chunks(8192)) {
        let ids = StringArray::from_iter_values((start..start + chunk.len()).map(|i| format!("e{i:07}")));
        let mut lists = ListBuilder::new(Float32Builder::new());
        for row in chunk {
            lists.values().append_slice(row);
            lists.append(true);
        }
        let columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(lists.finish())];
        writer.write(&RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch")).expect("write");
    }
    writer.close().expect("close");
}
