//! The review page at size: a node of 1,000,000 rows, 10,000 of them with 512² PNG pairs.
//! Time to first byte and to a complete page (the HTML and every thumbnail it names, fetched
//! one after another) with a cold and a warm thumbnail cache; the server's memory. Each page's
//! query is also run by plain DataFusion over the same source file in this process, as the
//! baseline the ratios are against.
//!
//! ```sh
//! cargo bench --profile dev --bench serve                    # 1,000,000 rows, 10,000 pairs
//! cargo bench --profile dev --bench serve -- 100000 1000     # ROWS PAIRS
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, BinaryBuilder, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// Distinct images, cycled over the pairs (a page of 50 pairs shows 100 distinct ones).
const DISTINCT: usize = 200;

fn image(seed: usize) -> Vec<u8> {
    let img = image::RgbImage::from_fn(512, 512, |x, y| {
        let v = (x as usize * 3 + y as usize * (seed % 7 + 1) + seed * 37) as u32;
        image::Rgb([(v % 256) as u8, (((x / 16) ^ (y / 16)) as usize * 8 + seed) as u8, (y / 2) as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// `rows` rows; every `rows / pairs`-th holds a pair. `dino_mean` is spread over [0, 1).
fn write_source(path: &std::path::Path, rows: usize, pairs: usize) {
    let images: Vec<Vec<u8>> = (0..DISTINCT).map(image).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("subject1", DataType::Utf8, false),
        Field::new("dino_mean", DataType::Float64, false),
        Field::new("ref_image", DataType::Binary, true),
        Field::new("target_image", DataType::Binary, true),
    ]));
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
    let every = (rows / pairs.max(1)).max(1);
    let chunk = 50_000;
    let mut pair = 0;
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let n: Vec<i64> = (start as i64..end as i64).collect();
        let subject: Vec<String> = (start..end).map(|i| format!("subject {}", i % 977)).collect();
        // A fixed scramble of the row number, so filters select rows spread over the table.
        let dino: Vec<f64> = (start..end).map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 1_000_003) as f64 / 1_000_003.0).collect();
        let (mut refs, mut targets) = (BinaryBuilder::new(), BinaryBuilder::new());
        for i in start..end {
            if i % every == 0 && pair < pairs {
                refs.append_value(&images[(2 * pair) % DISTINCT]);
                targets.append_value(&images[(2 * pair + 1) % DISTINCT]);
                pair += 1;
            } else {
                refs.append_null();
                targets.append_null();
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(n)),
            Arc::new(StringArray::from(subject)),
            Arc::new(Float64Array::from(dino)),
            Arc::new(refs.finish()),
            Arc::new(targets.finish()),
        ];
        writer.write(&RecordBatch::try_new(Arc::clone(&schema), columns).unwrap()).unwrap();
    }
    writer.close().unwrap();
}

/// One GET: (seconds to the first byte, seconds to the last, body).
fn get(port: u16, path: &str) -> (f64, f64, Vec<u8>) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).unwrap();
    let ttfb = started.elapsed().as_secs_f64();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let total = started.elapsed().as_secs_f64();
    let mut all = first.to_vec();
    all.extend(rest);
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
    assert!(all.starts_with(b"HTTP/1.1 200"), "GET {path}: {}", String::from_utf8_lossy(&all[..split.min(all.len())]));
    (ttfb, total, all[split..].to_vec())
}

/// A page and its thumbnails: (first byte, HTML done, everything done, thumbnails).
fn page(port: u16, path: &str) -> (f64, f64, f64, usize) {
    let started = Instant::now();
    let (ttfb, html_done, body) = get(port, path);
    let html = String::from_utf8_lossy(&body);
    if let Some(at) = html.find("class=\"error\"") {
        panic!("GET {path}: the page shows an error: {}", &html[at..(at + 300).min(html.len())]);
    }
    let thumbs: Vec<&str> = html.match_indices("src=\"/thumb/").map(|(i, _)| html[i + 5..].split('"').next().unwrap()).collect();
    for t in &thumbs {
        get(port, t);
    }
    (ttfb, html_done, started.elapsed().as_secs_f64(), thumbs.len())
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unoflow"))
        .args(["serve", "--dag", "dag.toml", "--port", "0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut text = String::new();
    let mut byte = [0u8; 1];
    while !text.contains("open http") || !text.ends_with('\n') {
        out.read_exact(&mut byte).unwrap();
        text.push(byte[0] as char);
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let port = text.split("127.0.0.1:").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    Server(child, port)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rows = args.first().copied().unwrap_or(1_000_000);
    let pairs = args.get(1).copied().unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    write_source(&dir.path().join("pairs.parquet"), rows, pairs);
    let dag =
        "[dag]\nname = \"review\"\nworkspace = \"ws\"\n\n[nodes.pairs]\nop = \"read\"\npath = \"pairs.parquet\"\nformat = \"parquet\"\n";
    std::fs::write(dir.path().join("dag.toml"), dag).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_unoflow"))
        .args(["run", "dag.toml", "-q"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mb = std::fs::metadata(dir.path().join("pairs.parquet")).unwrap().len() / (1024 * 1024);
    println!("workspace: {rows} rows, {pairs} with 512² PNG pairs, {mb} MB of Parquet ({:.0} s to make)", t.elapsed().as_secs_f64());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ctx = SessionContext::new();
    runtime
        .block_on(ctx.register_parquet("pairs", dir.path().join("pairs.parquet").to_str().unwrap(), ParquetReadOptions::default()))
        .unwrap();
    let baseline = |sql: &str| {
        let best = (0..3)
            .map(|_| {
                let t = Instant::now();
                runtime.block_on(async { ctx.sql(sql).await.unwrap().collect().await.unwrap() });
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        best.max(1e-6)
    };

    let server = serve(dir.path());
    // The server's first query of a table checks every part against its committed digest
    // (once per process); measured apart, so the rows below are about thumbnails and queries.
    let (_, first, _) = get(server.1, "/node/pairs?where=false");
    println!("first query after start (checks the digests of every part, once): {:.0} ms", first * 1e3);
    let pages = [
        ("first page", "/node/pairs", "SELECT * FROM pairs LIMIT 51"),
        ("50 pairs", "/node/pairs?where=ref_image%20IS%20NOT%20NULL", "SELECT * FROM pairs WHERE ref_image IS NOT NULL LIMIT 51"),
        ("filtered", "/node/pairs?where=dino_mean%20%3E%200.9", "SELECT * FROM pairs WHERE dino_mean > 0.9 LIMIT 51"),
        ("sorted", "/node/pairs?order=dino_mean%20DESC", "SELECT * FROM pairs ORDER BY dino_mean DESC LIMIT 51"),
    ];
    // The server's own memory is its anonymous resident memory (heap, buffers); the peak
    // resident size also counts part files mapped while their digests are checked, which the
    // kernel drops at will.
    let anon_start = rss_kb(server.0.id(), "RssAnon:");
    let mut anon_max = anon_start;
    println!(
        "\n{:12}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}",
        "page", "thumbs", "cache", "first byte", "HTML", "complete", "DataFusion", "HTML/DF"
    );
    for (name, path, sql) in pages {
        let df = baseline(sql);
        // Cold: no thumbnail made yet for these images; warm: the same page again.
        let _ = std::fs::remove_dir_all(dir.path().join("ws/cache/thumbnails"));
        std::thread::sleep(Duration::from_millis(2100)); // past the catalog's reuse window
        for cache in ["cold", "warm"] {
            let (ttfb, html, done, thumbs) = page(server.1, path);
            println!(
                "{name:12}  {thumbs:>6}  {cache:>10}  {:>8.0}ms  {:>8.0}ms  {:>8.0}ms  {:>8.1}ms  {:>7.1}×",
                ttfb * 1e3,
                html * 1e3,
                done * 1e3,
                df * 1e3,
                html / df
            );
            anon_max = anon_max.max(rss_kb(server.0.id(), "RssAnon:"));
        }
    }
    println!(
        "\nserver memory (anonymous): {} MB at start, {} MB at most after a page; peak resident with mapped parts: {} MB",
        anon_start / 1024,
        anon_max / 1024,
        rss_kb(server.0.id(), "VmHWM:") / 1024
    );
}
