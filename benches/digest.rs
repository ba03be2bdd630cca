//! What a file's identity costs: the first digest of a large file (its whole content, blake3 on
//! all cores, memory-mapped) and a later one (this host's digest cache: a stat and one small
//! entry read), against the baseline of reading the same bytes once (`read` into a buffer,
//! sequentially, no hashing) measured in the same run.
//!
//! ```sh
//! cargo bench --bench digest              # a 2 GiB file of random bytes in the temp folder
//! cargo bench --bench digest -- PATH      # an existing file or model folder (e.g. FLUX.1-dev)
//! UNOFLOW_DIGEST_BENCH_GIB=8 cargo bench --bench digest
//! ```
//!
//! A file this bench writes is in the page cache when it is read and hashed: that measures the
//! hashing against memory bandwidth. Reading from disk bounds the first digest of a checkpoint
//! that is not in the page cache (`-- PATH` after dropping the page cache measures that; the
//! baseline read then brings into the page cache what fits).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use unoflow::digest_cache::DigestCache;

fn main() {
    let given = std::env::args().skip(1).find(|a| !a.starts_with("--")).map(PathBuf::from);
    let scratch = tempfile::tempdir().expect("a temp folder");
    let files = match &given {
        Some(path) => files_under(path),
        None => {
            let gib: u64 = std::env::var("UNOFLOW_DIGEST_BENCH_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
            let path = scratch.path().join("weights.bin");
            let started = Instant::now();
            write_random(&path, gib << 30);
            println!("wrote {gib} GiB of random bytes in {:.1} s", started.elapsed().as_secs_f64());
            vec![path]
        }
    };
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).sum();
    let cache = DigestCache::at(scratch.path().join("digests"));
    let read = time(|| files.iter().for_each(read_all));
    let first = time(|| {
        files.iter().for_each(|f| {
            std::hint::black_box(cache.digest(f).expect("digest"));
        })
    });
    let again = time(|| {
        files.iter().for_each(|f| {
            std::hint::black_box(cache.digest(f).expect("digest"));
        })
    });
    let mb = bytes as f64 / 1e6;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{} files, {:.0} MB, {threads} threads", files.len(), mb);
    println!("read once (baseline): {:.2} s ({:.0} MB/s)", read.as_secs_f64(), mb / read.as_secs_f64());
    println!(
        "first digest: {:.2} s ({:.0} MB/s), {:.2}x the read",
        first.as_secs_f64(),
        mb / first.as_secs_f64(),
        first.as_secs_f64() / read.as_secs_f64()
    );
    println!("cached:       {:.3} ms, {:.5}x the read", again.as_secs_f64() * 1e3, again.as_secs_f64() / read.as_secs_f64());
    let per_24gb = 24e3 / (mb / first.as_secs_f64());
    println!("24 GB at this rate: {per_24gb:.0} s first, then about {:.1} ms per file", again.as_secs_f64() * 1e3 / files.len() as f64);
}

/// Every byte of `path`, read sequentially in 1 MiB blocks and dropped.
fn read_all(path: &PathBuf) {
    use std::io::Read;
    let mut file = std::fs::File::open(path).expect("open");
    let mut block = vec![0u8; 1 << 20];
    while file.read(&mut block).expect("read") > 0 {}
}

fn time(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// Random bytes (xorshift64*), so no file system can store them sparse or compressed; the file is
/// dated an hour back, as a downloaded checkpoint is (the cache keeps only settled files).
fn write_random(path: &Path, len: u64) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..len.div_ceil(block.len() as u64) {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.write_all(&block).expect("write");
    }
    let file = out.into_inner().expect("flush");
    file.set_modified(SystemTime::now() - Duration::from_secs(3600)).expect("set the time");
}

fn files_under(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).expect("a readable folder").flatten() {
        out.extend(files_under(&entry.path()));
    }
    out.sort();
    out
}
