//! Many workers sharing one node, the workspace protocol only: W workers (tokio tasks, one GPU
//! slot each) over an in-memory bucket that lists from a key as S3 does, U units whose time is
//! a fixed sleep. Each worker does what a worker does for a node (`exec::materialize`) through
//! the engine's own parts: lists the commits, drives its units with `UnitDriver` in the order of
//! a `UnitQueue` (own units first, then the others', checked a window at a time), claims each
//! with `Claims` and renews its lease while it runs, uploads the unit's part (4 KiB) and
//! creates its commit record, sends heartbeats, and at the end reads or writes the
//! node's manifest with `ManifestWriter`. What it leaves out is the data path around that
//! (planning the node, reading its input): 1,000 whole engines in one 2-core process measure
//! the host, not the protocol (see the `workers_sim` bench for whole engines).
//!
//! Measured: throughput against the ideal (U × unit time / W) up to when every worker is through
//! the node (wrote or saw its manifest: it would go on to the next node then; the manifest's
//! writer then cleans up, timed apart), and object-store calls per unit, all of them, by kind
//! (a listing counts a call per page of a thousand keys). Then the same with a tenth of
//! the workers killed mid-unit (their tasks aborted): their units are taken over after the
//! lease; the ideal is then over the workers left.
//!
//! ```sh
//! cargo bench --bench protocol_sim                       # 1,000 workers, 100,000 units of 1 s
//! cargo bench --bench protocol_sim -- --quick            # 100 workers, 5,000 units of 200 ms
//! cargo bench --bench protocol_sim -- WORKERS UNITS MS [LEASE_S]
//! cargo bench --bench protocol_sim -- --killed --timeline  # one case; slots busy over time
//! ```
//!
//! The lease (10 s by default) is to the unit time what the default lease (120 s) is to a GPU
//! unit of 10 s: renewals and heartbeats cost per unit what they would there.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use unoflow::exec::{Claims, ManifestWriter, UnitDriver, UnitEnd, UnitQueue, Unobserved, WorkerOptions, first_choice};
use unoflow::workspace::store::{Call, calls};
use unoflow::workspace::{Location, Manifest, NodeStore, Workspace};

const FINGERPRINT: &str = "sim";
const INPUT: &str = "input-digest";
/// The bytes a unit uploads.
const PART: [u8; 4096] = [7; 4096];

struct Job {
    workers: usize,
    units: usize,
    unit_time: Duration,
    lease: Duration,
    /// Units running now, and when the last commit was made (Unix ms), for `--timeline`.
    busy: AtomicUsize,
    last_commit_ms: AtomicI64,
    /// When each worker was through the node (Unix ms): it wrote or saw the manifest.
    through_ms: std::sync::Mutex<Vec<i64>>,
}

struct Outcome {
    /// Seconds the manifest's writer took to clean up after the node.
    clean_up: f64,
    /// Seconds from the start to the last commit.
    last_commit: f64,
    /// How many slots were busy, sampled every `unit_time`.
    busy: Vec<usize>,
    /// Seconds until every worker was through the node (wrote or saw its manifest).
    seconds: f64,
    /// Seconds from the last commit until the first, the median and the last worker was through.
    through_after: [f64; 3],
    calls: Vec<(Call, u64)>,
    manifest_units: usize,
}

/// A unit counted as running until this drops (also when its worker is killed).
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn start(busy: &'a AtomicUsize) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self(busy)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unit_key(unit: usize) -> String {
    format!("k{unit}")
}

/// One worker's share of the node: its units, then the manifest.
/// Whether to stop: a simulated worker never does.
fn never() -> bool {
    false
}

fn warn(message: &str) {
    eprintln!("{message}");
}

fn manifest_writer<'a>(claims: &'a Claims, store: &'a NodeStore) -> ManifestWriter<'a> {
    ManifestWriter { claims, store, fingerprint: FINGERPRINT, node: "work", op: "sleep", input_digest: INPUT, stop: &never, warn: &warn }
}

/// One worker's share of the node: its units, then the manifest. Returns the manifest if this
/// worker wrote it (it cleans up after the node then).
async fn worker(
    claims: Arc<Claims>,
    store: NodeStore,
    queue: UnitQueue,
    job: Arc<Job>,
) -> unoflow::Result<Option<(Arc<Claims>, Manifest)>> {
    let _beat = claims.heartbeat("sim".into(), Arc::new(Unobserved)).await?;
    let stop = || false;
    let driver =
        UnitDriver { claims: Some(&claims), fingerprint: FINGERPRINT, store: &store, permits: Arc::new(Semaphore::new(1)), stop: &stop };
    let driven = driver
        .run(queue, |unit, _lease| {
            let (store, claims, unit_time) = (store.clone(), Arc::clone(&claims), job.unit_time);
            let job = Arc::clone(&job);
            Box::pin(async move {
                let running = Running::start(&job.busy);
                tokio::time::sleep(unit_time).await;
                drop(running);
                let commit = tokio::task::spawn_blocking(move || {
                    let attempt = store.attempt(unit);
                    // The unit's output: one upload of a part's bytes (made in memory: a
                    // thousand workers' scratch files in one folder of one disk would measure
                    // that disk), then the commit record.
                    store.store().put(&format!("sim-parts/u{unit:06}-{}.bin", attempt.id()), &PART)?;
                    let record = attempt.record(&unit_key(unit), INPUT, Vec::new(), None, unit_time.as_secs_f64());
                    store.commit(&attempt, record)
                })
                .await
                .map_err(|e| unoflow::Error::Internal(e.to_string()))??;
                claims.unit_done();
                job.last_commit_ms.fetch_max(unoflow::workspace::now_ms(), Ordering::Relaxed);
                Ok(UnitEnd::Committed(claims.settle(FINGERPRINT, commit)))
            })
        })
        .await?;
    // A worker that saw the manifest (it ended watching for it) would read it to go on to the
    // next node: one request, counted here, but the thousand parsed copies of a 100,000-unit
    // manifest at once do not fit this machine's memory, where each worker has a host's.
    let seen = driven.watching.is_none() && store.has_manifest()?;
    let written = match seen {
        true => None,
        false => {
            Some(manifest_writer(&claims, &store).gather(driven.done, &driven.elsewhere, driven.watching).await?).filter(|g| g.written)
        }
    };
    // Through the node: this worker would go on to the next one now. The one that wrote the
    // manifest cleans up on its own host: here, once the others are through (on two shared
    // cores, removing 100,000 leases would slow the others' requests).
    job.through_ms.lock().expect("the times through").push(unoflow::workspace::now_ms());
    claims.finish("sim").await;
    Ok(written.map(|g| (claims, g.manifest)))
}

async fn simulate(job: Arc<Job>, owners: Arc<Vec<usize>>, kill_tenth: bool, bucket: &str) -> Outcome {
    let ws = Workspace::create(&Location::parse(&format!("memory://{bucket}/ws"), std::path::Path::new(".")).expect("a workspace URL"))
        .expect("workspace");
    let store = ws.node(FINGERPRINT);
    let before: Vec<(Call, u64)> = Call::ALL.iter().map(|&c| (c, calls(c))).collect();
    // Each worker plans on its own host; here the plans are made before the clock starts, so
    // a thousand of them do not queue on two cores.
    let mut workers = Vec::with_capacity(job.workers);
    for rank in 0..job.workers {
        let opts = WorkerOptions { rank, world: job.workers, lease: job.lease, ..WorkerOptions::default() };
        let claims = Arc::new(Claims::new(ws.leases(), opts));
        let committed = store.committed_units().expect("a listing of the commits");
        let first_choices = (0..job.units).filter(|u| !committed.contains(u)).map(|u| (u, owners[u] == rank));
        let poll = claims.poll_interval().as_millis() as i64;
        let queue = UnitQueue::shared(first_choices, job.units, rank * job.units / job.workers, unoflow::exec::WINDOW, 2, poll);
        workers.push((claims, queue));
    }
    let started_ms = unoflow::workspace::now_ms();
    let ended = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (job, ended) = (Arc::clone(&job), Arc::clone(&ended));
        tokio::spawn(async move {
            let mut busy = Vec::new();
            let mut tick = tokio::time::interval(job.unit_time);
            while !ended.load(Ordering::Relaxed) {
                tick.tick().await;
                busy.push(job.busy.load(Ordering::Relaxed));
            }
            busy
        })
    };
    let tasks: Vec<_> =
        workers.into_iter().map(|(claims, queue)| tokio::spawn(worker(claims, store.clone(), queue, Arc::clone(&job)))).collect();
    if kill_tenth {
        tokio::time::sleep(job.unit_time * 3 + job.unit_time / 2).await;
        for task in tasks.iter().step_by(10) {
            task.abort();
        }
    }
    let mut writer = None;
    for task in tasks {
        match task.await {
            Ok(result) => writer = writer.or(result.expect("a worker failed")),
            Err(e) if e.is_cancelled() => {}
            Err(e) => panic!("a worker panicked: {e}"),
        }
    }
    let (claims, manifest) = writer.expect("a worker wrote the manifest");
    let cleaning = Instant::now();
    manifest_writer(&claims, &store).clean_up(&manifest).await;
    let clean_up = cleaning.elapsed().as_secs_f64();
    ended.store(true, Ordering::Relaxed);
    let busy = sampler.await.expect("the sampler");
    let calls = before.into_iter().map(|(c, n)| (c, calls(c) - n)).collect();
    let manifest = store.manifest().expect("the manifest reads").expect("a manifest");
    let units: BTreeSet<usize> = manifest.commits.iter().map(|c| c.unit).collect();
    assert_eq!((units.len(), manifest.commits.len()), (job.units, job.units), "the manifest names every unit once");
    assert_eq!(store.committed_units().expect("commits").len(), job.units);
    let manifest_units = job.units;
    let last_commit = (job.last_commit_ms.load(Ordering::Relaxed) - started_ms) as f64 / 1000.0;
    let mut through = std::mem::take(&mut *job.through_ms.lock().expect("the times through"));
    through.sort_unstable();
    let after_last_commit = |ms: i64| (ms - job.last_commit_ms.load(Ordering::Relaxed)) as f64 / 1000.0;
    let through_after = [through[0], through[through.len() / 2], through[through.len() - 1]].map(after_last_commit);
    let seconds = (through[through.len() - 1] - started_ms) as f64 / 1000.0;
    Outcome { last_commit, clean_up, busy, seconds, through_after, calls, manifest_units }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let (quick, timeline) = (flag("--quick"), flag("--timeline"));
    let cases: Vec<(&str, bool)> = [("all workers live", false), ("a tenth killed mid-unit", true)]
        .into_iter()
        .filter(|(_, kill)| if *kill { !flag("--live") } else { !flag("--killed") })
        .collect();
    let number = |s: &String, what: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{what}: a number, not `{s}`"));
    let (workers, units, ms, lease_s) = match args.as_slice() {
        [w, u, m, rest @ ..] => {
            (number(w, "WORKERS"), number(u, "UNITS"), number(m, "MS"), rest.first().map_or(10, |l| number(l, "LEASE_S")))
        }
        _ if quick => (100, 5_000, 200, 2),
        _ => (1_000, 100_000, 1_000, 10),
    };
    let job = Arc::new(Job {
        workers: workers as usize,
        units: units as usize,
        unit_time: Duration::from_millis(ms),
        lease: Duration::from_secs(lease_s),
        busy: AtomicUsize::new(0),
        last_commit_ms: AtomicI64::new(0),
        through_ms: Default::default(),
    });
    let owners: Arc<Vec<usize>> = Arc::new((0..job.units).map(|u| first_choice(&unit_key(u), job.workers)).collect());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(512).build().expect("runtime");
    println!("{workers} workers × 1 slot, {units} units of {ms} ms, lease {lease_s} s, in-memory bucket listing from a key (2 cores)");
    println!("{:<24} {:>8} {:>8} {:>9} {:>11}  calls / unit by kind", "case", "ideal s", "took s", "of ideal", "calls/unit");
    for (label, kill) in cases {
        let bucket = if kill { "protocol-killed" } else { "protocol-live" };
        let outcome = runtime.block_on(simulate(Arc::clone(&job), Arc::clone(&owners), kill, bucket));
        let live = if kill { job.workers - job.workers.div_ceil(10) } else { job.workers };
        let ideal = job.units as f64 * job.unit_time.as_secs_f64() / live as f64;
        let total: u64 = outcome.calls.iter().map(|(_, n)| n).sum();
        let per_unit = |n: u64| n as f64 / outcome.manifest_units as f64;
        let kinds: Vec<String> =
            outcome.calls.iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{} {:.2}", c.name(), per_unit(*n))).collect();
        println!(
            "{label:<24} {ideal:>8.1} {:>8.1} {:>8.0}% {:>11.2}  {}",
            outcome.seconds,
            100.0 * ideal / outcome.seconds,
            per_unit(total),
            kinds.join(", ")
        );
        if timeline {
            // Slots busy (of the live workers') in each tenth of the run.
            let tenth = outcome.busy.len().div_ceil(10).max(1);
            let shares: Vec<String> = outcome
                .busy
                .chunks(tenth)
                .map(|c| format!("{:.0}", 100.0 * c.iter().sum::<usize>() as f64 / (c.len() * live) as f64))
                .collect();
            println!("{:<24} busy % by tenth of the run: {}", "", shares.join(" "));
            let tail: Vec<String> = outcome.busy.iter().rev().take(30).rev().map(|b| b.to_string()).collect();
            println!("{:<24} last commit at {:.1} s; slots busy, the last samples: {}", "", outcome.last_commit, tail.join(" "));
            let [first, median, last] = outcome.through_after;
            println!(
                "{:<24} workers through the node (wrote or saw the manifest) after the last commit: first +{first:.1} s, median +{median:.1} s, last +{last:.1} s; the writer then cleaned up in {:.1} s",
                "", outcome.clean_up
            );
        }
    }
}
