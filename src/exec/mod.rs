//! Running a DAG: what is not cached is computed, unit by unit, committed as it goes.
//!
//! Each node is a tokio task that waits for its inputs. Independent nodes run at the same time;
//! CPU units share a pool of one permit per core, and GPU nodes take their device one at a time.
//! Blocking work runs on tokio's blocking pool, never on the async workers.
//!
//! # Cancellation
//! The caller's [`Interrupt`] at level 1 stops new units from starting; units in progress finish
//! and commit, and the run ends with [`Error::Interrupted`]. At level 2 the run records itself as
//! interrupted and returns at once: whatever was committed is kept either way.

mod ids;
mod progress;
mod units;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use unoflow_models::DeviceSpec;
use unoflow_operators::{Environment, ExecContext, PartitionProcessor, Resource};

pub use progress::Progress;
use units::{Target, Unit, Work};

use crate::dag::{Dag, Node};
use crate::error::{Error, Result};
use crate::fingerprint::{self, Components};
use crate::interrupt::Interrupt;
use crate::ops::{OpKind, export, read, sql};
use crate::query::{self, NodeTable};
use crate::workspace::{self, Commit, Index, IndexEntry, Manifest, NodeRecord, RunLock, RunRecord, Workspace};

/// What `unoflow run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only these nodes (and whatever they need that is not cached).
    pub only: Vec<String>,
    /// Recompute these nodes even if cached.
    pub force: Vec<String>,
    /// Stop at the first failed row.
    pub fail_fast: bool,
    pub quiet: bool,
    /// Wait for another run on the workspace instead of refusing.
    pub wait: bool,
    pub device: DeviceSpec,
}

/// How a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Computed,
    Resumed,
    Cached,
    Failed,
    Skipped,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Computed => "computed",
            Self::Resumed => "resumed",
            Self::Cached => "cached",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Interrupted => "interrupted",
        }
    }
}

/// One node's result.
#[derive(Debug, Clone)]
pub struct NodeOutcome {
    pub name: String,
    pub op: &'static str,
    pub fingerprint: String,
    pub status: Status,
    pub rows: u64,
    pub error_rows: u64,
    pub seconds: f64,
    pub message: Option<String>,
}

/// The result of a run.
#[derive(Debug)]
pub struct RunReport {
    pub run_id: String,
    pub outcomes: Vec<NodeOutcome>,
    /// Set when a signal stopped the run.
    pub interrupted: bool,
}

impl RunReport {
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| matches!(o.status, Status::Failed))
    }
}

/// Shared state of one run.
struct RunCtx {
    dag: Arc<Dag>,
    ws: Workspace,
    components: Vec<Components>,
    fingerprints: Vec<String>,
    force: Vec<bool>,
    fail_fast: bool,
    interrupt: Interrupt,
    progress: Progress,
    cpu: Arc<Semaphore>,
    gpu: tokio::sync::Mutex<()>,
    index: Mutex<Index>,
    env: Environment,
}

type NodeFuture = Shared<BoxFuture<'static, Option<Arc<Manifest>>>>;

/// Runs `dag`.
pub async fn run(dag: Arc<Dag>, opts: RunOptions, command: Vec<String>, interrupt: Interrupt) -> Result<RunReport> {
    let selected = select(&dag, &opts)?;
    let force = dag.nodes.iter().map(|n| opts.force.contains(&n.name)).collect();
    let ws = Workspace::create(&dag.workspace)?;
    let _lock = RunLock::acquire(ws.root(), opts.wait)?;
    unoflow_operators::image_io::set_max_pixels(dag.max_image_pixels);
    ws.clear_tmp()?;
    let components = fingerprint::compute(&dag)?;
    let fingerprints = components.iter().map(Components::fingerprint).collect();
    let progress = Progress::new(opts.quiet);

    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let ctx = Arc::new(RunCtx {
        env: Environment {
            device: opts.device,
            seed: dag.seed,
            cache_dir: Some(ws.cache_dir()),
            artifacts_dir: None,
            workspace_dir: Some(ws.root().to_path_buf()),
        },
        index: Mutex::new(Index::load(ws.root()).unwrap_or_else(|e| {
            progress.warn(format!("{e}; it is rewritten as nodes finish"));
            Index::default()
        })),
        dag: Arc::clone(&dag),
        ws,
        components,
        fingerprints,
        force,
        fail_fast: opts.fail_fast,
        interrupt: interrupt.clone(),
        progress,
        cpu: Arc::new(Semaphore::new(threads)),
        gpu: tokio::sync::Mutex::new(()),
    });

    let mut record = RunRecord {
        id: run_id(),
        dag_name: dag.name.clone(),
        dag_path: dag.path().display().to_string(),
        dag_text: dag.file.text.clone(),
        started_at: now(),
        finished_at: None,
        status: "running".into(),
        unoflow_version: env!("CARGO_PKG_VERSION").into(),
        host: host_name(),
        command,
        nodes: Vec::new(),
    };
    save_record(&ctx.ws, &record)?;

    let outcomes: Arc<Mutex<BTreeMap<usize, NodeOutcome>>> = Arc::default();
    let mut futures: Vec<Option<NodeFuture>> = vec![None; dag.nodes.len()];
    // Nodes with the same fingerprint (same op, parameters and inputs) are one output: the
    // first computes it, the others wait for it instead of racing it for the same files.
    let mut first_of: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &selected {
        let ctx = Arc::clone(&ctx);
        let outcomes = Arc::clone(&outcomes);
        let fp = ctx.fingerprints[i].clone();
        if let Some(&twin) = first_of.get(&fp)
            && let Some(same) = futures[twin].clone()
        {
            let task = tokio::spawn(async move {
                let started = Instant::now();
                let manifest = same.await;
                let (status, message) = match &manifest {
                    Some(_) => (Status::Cached, format!("the same output as node `{}`", ctx.node(twin).name)),
                    None => (Status::Skipped, format!("node `{}`, which makes the same output, did not complete", ctx.node(twin).name)),
                };
                let outcome = ctx.outcome(i, status, manifest.as_deref(), started.elapsed().as_secs_f64(), Some(message));
                if manifest.is_some() {
                    ctx.remember(i);
                }
                outcomes.lock().expect("outcomes lock").insert(i, outcome);
                manifest
            });
            futures[i] = Some(task.map(|r| r.ok().flatten()).boxed().shared());
            continue;
        }
        first_of.insert(fp, i);
        let inputs: Vec<NodeFuture> = dag.nodes[i].inputs.iter().filter_map(|&j| futures[j].clone()).collect();
        let task = tokio::spawn(async move {
            let mut manifests = Vec::with_capacity(inputs.len());
            for input in inputs {
                manifests.push(input.await);
            }
            let (outcome, manifest) = match manifests.into_iter().collect::<Option<Vec<_>>>() {
                Some(inputs) => node_task(&ctx, i, inputs).await,
                None => (ctx.outcome(i, Status::Skipped, None, 0.0, Some("an input did not complete".into())), None),
            };
            outcomes.lock().expect("outcomes lock").insert(i, outcome);
            manifest
        });
        futures[i] = Some(task.map(|r| r.ok().flatten()).boxed().shared());
    }
    let all_done = futures::future::join_all(futures.into_iter().flatten());
    let aborted = tokio::select! {
        _ = all_done => false,
        _ = interrupt.aborted() => true,
    };

    let mut outcomes: BTreeMap<usize, NodeOutcome> = std::mem::take(&mut *outcomes.lock().expect("outcomes lock"));
    if aborted {
        // Nodes still at work when the second signal came are recorded as interrupted.
        for &i in &selected {
            outcomes
                .entry(i)
                .or_insert_with(|| ctx.outcome(i, Status::Interrupted, None, 0.0, Some("stopped at once by a second signal".into())));
        }
    }
    let outcomes: Vec<NodeOutcome> = outcomes.into_values().collect();
    let interrupted = interrupt.signalled();
    record.finished_at = Some(now());
    record.status = if interrupted {
        "interrupted"
    } else if outcomes.iter().any(|o| o.status == Status::Failed) {
        "failed"
    } else {
        "succeeded"
    }
    .into();
    record.nodes = outcomes
        .iter()
        .map(|o| NodeRecord {
            name: o.name.clone(),
            op: o.op.to_string(),
            fingerprint: o.fingerprint.clone(),
            status: o.status.as_str().into(),
            rows: o.rows,
            error_rows: o.error_rows,
            seconds: o.seconds,
            params: dag.index_of(&o.name).map(|i| fingerprint::redacted_params(&dag.nodes[i])).unwrap_or_default(),
            message: o.message.clone(),
        })
        .collect();
    save_record(&ctx.ws, &record)?;
    Ok(RunReport { run_id: record.id, outcomes, interrupted })
}

/// The nodes to visit: all, or the `--only` targets and their ancestors.
fn select(dag: &Dag, opts: &RunOptions) -> Result<Vec<usize>> {
    let lookup = |name: &String| {
        dag.index_of(name).ok_or_else(|| {
            let hint = crate::diagnostic::did_you_mean(name, dag.nodes.iter().map(|n| n.name.as_str()))
                .map(|m| format!(" (did you mean `{m}`?)"))
                .unwrap_or_default();
            Error::Usage(format!("no node `{name}` in {}{hint}", dag.path().display()))
        })
    };
    for name in &opts.force {
        lookup(name)?;
    }
    if opts.only.is_empty() {
        return Ok((0..dag.nodes.len()).collect());
    }
    let targets = opts.only.iter().map(lookup).collect::<Result<Vec<_>>>()?;
    Ok(dag.with_ancestors(&targets))
}

impl RunCtx {
    fn node(&self, i: usize) -> &Node {
        &self.dag.nodes[i]
    }

    fn outcome(&self, i: usize, status: Status, manifest: Option<&Manifest>, seconds: f64, message: Option<String>) -> NodeOutcome {
        let node = self.node(i);
        NodeOutcome {
            name: node.name.clone(),
            op: node.op.name(),
            fingerprint: self.fingerprints[i].clone(),
            status,
            rows: manifest.map_or(0, |m| m.rows),
            error_rows: manifest.map_or(0, |m| m.error_rows),
            seconds,
            message,
        }
    }

    fn stop_requested(&self) -> bool {
        self.interrupt.stop_requested()
    }
}

async fn node_task(ctx: &Arc<RunCtx>, i: usize, inputs: Vec<Arc<Manifest>>) -> (NodeOutcome, Option<Arc<Manifest>>) {
    let started = Instant::now();
    let node = ctx.node(i);
    let fp = &ctx.fingerprints[i];
    let node_dir = ctx.ws.node_dir(fp);

    if ctx.force[i] {
        if let Err(e) =
            std::fs::remove_dir_all(&node_dir).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
        {
            let message = format!("cannot clear {} for --force: {e}", node_dir.display());
            return (ctx.outcome(i, Status::Failed, None, 0.0, Some(message)), None);
        }
    } else if let Some(manifest) = reusable(ctx, i, &node_dir) {
        ctx.remember(i);
        let outcome = ctx.outcome(i, Status::Cached, Some(&manifest), started.elapsed().as_secs_f64(), None);
        return (outcome, Some(Arc::new(manifest)));
    }
    if ctx.stop_requested() {
        return (ctx.outcome(i, Status::Interrupted, None, 0.0, None), None);
    }

    let _gpu = match node.op.spec().resource {
        Resource::Gpu => Some(ctx.gpu.lock().await),
        Resource::Cpu => None,
    };
    match compute(ctx, i, &inputs).await {
        Ok((manifest, reused)) => {
            ctx.remember(i);
            let status = if reused > 0 { Status::Resumed } else { Status::Computed };
            let outcome = ctx.outcome(i, status, Some(&manifest), started.elapsed().as_secs_f64(), None);
            (outcome, Some(Arc::new(manifest)))
        }
        Err(Error::Interrupted(m)) => (ctx.outcome(i, Status::Interrupted, None, started.elapsed().as_secs_f64(), Some(m)), None),
        Err(e) => (ctx.outcome(i, Status::Failed, None, started.elapsed().as_secs_f64(), Some(e.to_string())), None),
    }
}

/// The complete, verified output of node `i`, if there is one. A damaged output is reported and
/// reduced to its whole commits, so only the damaged units are recomputed.
fn reusable(ctx: &RunCtx, i: usize, node_dir: &Path) -> Option<Manifest> {
    let fp = &ctx.fingerprints[i];
    let name = &ctx.node(i).name;
    let manifest = match ctx.ws.manifest(fp) {
        Ok(m) => m?,
        Err(why) => {
            ctx.progress.warn(format!("node `{name}`: {why}; recomputing"));
            let _ = std::fs::remove_file(node_dir.join("manifest.json"));
            return None;
        }
    };
    let mut damaged = Vec::new();
    for commit in &manifest.commits {
        let bad = std::iter::once(&commit.rows).chain(commit.errors.as_ref()).find_map(|f| workspace::verify_file(node_dir, f).err());
        if let Some(why) = bad {
            ctx.progress.warn(format!("node `{name}`: corrupt part, not read: {why}; recomputing unit {}", commit.unit));
            damaged.push(commit.unit);
        }
    }
    if damaged.is_empty() {
        if matches!(ctx.node(i).op, OpKind::Export)
            && let Some(missing) = export::missing_output(node_dir, &manifest, &ctx.node(i).params)
        {
            ctx.progress.warn(format!("node `{name}`: exported file {missing} is missing; exporting again"));
            let _ = std::fs::remove_file(node_dir.join("manifest.json"));
            let _ = std::fs::remove_dir_all(node_dir.join("commits"));
            return None;
        }
        return Some(manifest);
    }
    let _ = std::fs::remove_file(node_dir.join("manifest.json"));
    for unit in damaged {
        let _ = std::fs::remove_file(node_dir.join("commits").join(format!("u{unit:06}.json")));
    }
    None
}

impl RunCtx {
    /// Records node `i`'s fingerprint under its name, so later plans can explain changes.
    fn remember(&self, i: usize) {
        let mut index = self.index.lock().expect("index lock");
        let entry = IndexEntry { fingerprint: self.fingerprints[i].clone(), components: self.components[i].clone() };
        index.nodes.insert(self.node(i).name.clone(), entry);
        if let Err(e) = index.save(self.ws.root()) {
            self.progress.warn(format!("cannot save the workspace index: {e}"));
        }
    }
}

/// Computes node `i`, reusing its valid commits. Returns the manifest and how many units were
/// reused.
async fn compute(ctx: &Arc<RunCtx>, i: usize, inputs: &[Arc<Manifest>]) -> Result<(Manifest, usize)> {
    let node = ctx.node(i);
    let fp = ctx.fingerprints[i].clone();
    let node_dir = ctx.ws.node_dir(&fp);
    std::fs::create_dir_all(node_dir.join("commits")).map_err(|e| Error::io(&node_dir, e))?;
    let node_json = serde_json::to_vec_pretty(&ctx.components[i]).map_err(|e| Error::Internal(e.to_string()))?;
    workspace::write_atomic(&node_dir.join("node.json"), &node_json)?;

    let input_digest = match (&ctx.components[i].source, inputs.is_empty()) {
        (Some(source), true) => source.clone(),
        _ => {
            let mut h = blake3::Hasher::new();
            for m in inputs {
                h.update(m.content_digest.as_bytes()).update(b";");
            }
            h.finalize().to_hex()[..32].to_string()
        }
    };
    let units = units::split(node, inputs)?;
    let mut commits: Vec<Option<Commit>> = vec![None; units.len()];
    for c in workspace::read_commits(&node_dir) {
        let fits = units.get(c.unit).is_some_and(|u| u.key == c.key) && c.input_digest == input_digest;
        let whole = std::iter::once(&c.rows).chain(c.errors.as_ref()).all(|f| workspace::verify_file(&node_dir, f).is_ok());
        if fits && whole {
            let unit = c.unit;
            commits[unit] = Some(c);
        }
    }
    let reused = commits.iter().flatten().count();
    let bar = ctx.progress.node(&node.name, units.iter().map(|u| u.rows).sum());
    bar.inc(units.iter().filter(|u| commits[u.index].is_some()).map(|u| u.rows).sum());
    let todo: Vec<Unit> = units.into_iter().filter(|u| commits[u.index].is_none()).collect();

    let input_dir = inputs.first().map(|m| ctx.ws.node_dir(&m.fingerprint));
    let result = match todo.first().map(|u| &u.work) {
        None => Ok(Vec::new()),
        Some(Work::Whole) => {
            let target = Target { tmp_dir: &ctx.ws.tmp_dir(), node_dir: &node_dir, input_digest: &input_digest };
            run_whole(ctx, i, inputs, &todo[0], &target, &bar).await.map(|c| vec![c])
        }
        Some(_) => run_parallel(ctx, i, input_dir, todo, &node_dir, &input_digest, &bar).await,
    };
    bar.finish_and_clear();
    for c in result? {
        let unit = c.unit;
        commits[unit] = Some(c);
    }
    if ctx.stop_requested() && commits.iter().any(Option::is_none) {
        return Err(Error::Interrupted(format!("{} of {} units committed", commits.iter().flatten().count(), commits.len())));
    }
    let commits: Vec<Commit> = commits.into_iter().collect::<Option<_>>().ok_or_else(|| Error::Internal("a unit has no commit".into()))?;
    let manifest = Manifest {
        fingerprint: fp,
        node: node.name.clone(),
        op: node.op.name().to_string(),
        input_digest,
        content_digest: Manifest::digest_of(&commits),
        rows: commits.iter().map(|c| c.rows.rows).sum(),
        error_rows: commits.iter().filter_map(|c| c.errors.as_ref()).map(|e| e.rows).sum(),
        commits,
        finished_at: now(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
    workspace::write_atomic(&node_dir.join("manifest.json"), &bytes)?;
    Ok((manifest, reused))
}

/// Runs units in parallel on the blocking pool, one CPU permit each.
async fn run_parallel(
    ctx: &Arc<RunCtx>,
    i: usize,
    input_dir: Option<std::path::PathBuf>,
    todo: Vec<Unit>,
    node_dir: &Path,
    input_digest: &str,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Commit>> {
    // Parse parameters and load models once for all the node's units (on the blocking pool:
    // loading weights is slow); dropped when the node is done.
    let processor: Option<Arc<dyn PartitionProcessor>> = match &ctx.node(i).op {
        OpKind::Map(op) => {
            let (op, ctx2) = (Arc::clone(op), Arc::clone(ctx));
            let prepared = tokio::task::spawn_blocking(move || {
                let node = ctx2.node(i);
                let input_schema = &ctx2.dag.nodes[node.inputs[0]].schema;
                // Artifacts (checkpoints) live under the node's fingerprint, so a resumed node
                // finds its own and an edited one starts afresh.
                let env = Environment { artifacts_dir: Some(ctx2.ws.artifacts_dir().join(&ctx2.fingerprints[i])), ..ctx2.env.clone() };
                op.prepare(&node.params, &env, input_schema)
            })
            .await
            .map_err(|e| Error::Internal(format!("preparing node `{}` panicked: {e}", ctx.node(i).name)))??;
            Some(prepared)
        }
        _ => None,
    };
    let mut tasks: JoinSet<Result<Commit>> = JoinSet::new();
    let mut commits = Vec::new();
    let mut first_error: Option<Error> = None;
    let mut pending = todo.into_iter();
    loop {
        // Keep at most one unit per permit in flight; collect finished ones meanwhile.
        let next = if ctx.stop_requested() || first_error.is_some() { None } else { pending.next() };
        let Some(unit) = next else { break };
        let permit = Arc::clone(&ctx.cpu).acquire_owned().await.map_err(|_| Error::Internal("CPU pool closed".into()))?;
        while let Some(done) = tasks.try_join_next() {
            collect(ctx, i, done, bar, &mut commits, &mut first_error);
        }
        let ctx2 = Arc::clone(ctx);
        let input_dir = input_dir.clone();
        let node_dir = node_dir.to_path_buf();
        let input_digest = input_digest.to_string();
        let processor = processor.clone();
        tasks.spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let node = ctx2.node(i);
            let exec = ExecContext::new(ctx2.dag.seed, unit.index, ctx2.interrupt.stop_flag());
            let output = units::run_blocking(node, processor.as_deref(), input_dir.as_deref(), &unit, &exec)?;
            let tmp = ctx2.ws.tmp_dir();
            units::commit(&Target { tmp_dir: &tmp, node_dir: &node_dir, input_digest: &input_digest }, &unit, output, started)
        });
    }
    while let Some(done) = tasks.join_next().await {
        collect(ctx, i, done, bar, &mut commits, &mut first_error);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(commits),
    }
}

fn collect(
    ctx: &RunCtx,
    i: usize,
    done: std::result::Result<Result<Commit>, tokio::task::JoinError>,
    bar: &indicatif::ProgressBar,
    commits: &mut Vec<Commit>,
    first_error: &mut Option<Error>,
) {
    match done {
        Ok(Ok(commit)) => {
            bar.inc(commit.rows.rows + commit.errors.as_ref().map_or(0, |e| e.rows));
            if ctx.fail_fast && commit.errors.is_some() && first_error.is_none() {
                *first_error = Some(Error::Execution(format!(
                    "node `{}`: a row failed and --fail-fast is set; see `unoflow sql \"SELECT * FROM errors.{}\"`",
                    ctx.node(i).name,
                    ctx.node(i).name
                )));
                ctx.interrupt.request_stop();
            }
            commits.push(commit);
        }
        Ok(Err(e)) => {
            if first_error.is_none() {
                *first_error = Some(e);
            }
        }
        Err(join) => {
            if first_error.is_none() {
                *first_error = Some(Error::Internal(format!("a unit of node `{}` panicked: {join}", ctx.node(i).name)));
            }
        }
    }
}

/// Runs a node that is one streamed unit: a query, a tabular read or an export.
async fn run_whole(
    ctx: &RunCtx,
    i: usize,
    inputs: &[Arc<Manifest>],
    unit: &Unit,
    target: &Target<'_>,
    bar: &indicatif::ProgressBar,
) -> Result<Commit> {
    let node = ctx.node(i);
    let started = Instant::now();
    let tables = || -> Vec<NodeTable> {
        node.inputs
            .iter()
            .zip(inputs)
            .map(|(&j, m)| NodeTable { name: ctx.node(j).name.clone(), node_dir: ctx.ws.node_dir(&m.fingerprint), manifest: Arc::clone(m) })
            .collect()
    };
    match &node.op {
        OpKind::Read => {
            let path = Path::new(node.params.str("path")?);
            let format = read::Format::of(&node.params)?;
            let Some(text) = read::text_format(format, path) else {
                let session = query::session();
                let df = read::tabular(&session, path, format).await?;
                return units::stream_into(target, unit, node, df.execute_stream().await?, bar, started).await;
            };
            // CSV and JSON lines: decoded record by record on the blocking pool, bad records
            // becoming row errors with their lines.
            let schema = Arc::new(read::text_schema(path, format, text)?);
            let files = read::source_files(path, format)?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<datafusion::arrow::record_batch::RecordBatch>>(4);
            let decoding = tokio::task::spawn_blocking(move || {
                read::decode_text(&files, text, &schema, &mut |batch| {
                    tx.blocking_send(Ok(batch)).map_err(|_| Error::Internal("the part writer stopped".into()))
                })
            });
            let rows = units::stream_rows(target, unit, node, tokio_stream_of(rx), bar).await;
            let errors = decoding.await.map_err(|e| Error::Internal(format!("decoding panicked: {e}")))??;
            units::commit_streamed(target, unit, rows?, &errors, started)
        }
        OpKind::Sql => {
            let session = query::session();
            for table in tables() {
                query::register(&session, &table, query::Verify::AlreadyChecked).await?;
            }
            let df = sql::plan(&session, node.params.str("query")?).await?;
            units::stream_into(target, unit, node, df.execute_stream().await?, bar, started).await
        }
        OpKind::Export => {
            let table = tables().into_iter().next().ok_or_else(|| Error::Internal("export without input".into()))?;
            let session = query::session();
            query::register(&session, &table, query::Verify::AlreadyChecked).await?;
            let df = session.table(table.name.as_str()).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await?;
            let params = node.params.clone();
            let (bar, runtime) = (bar.clone(), tokio::runtime::Handle::current());
            // Writing files is blocking work: it runs on the blocking pool, pulling the query's
            // batches one at a time so nothing is held in memory.
            let rows = tokio::task::spawn_blocking(move || {
                let mut batches = std::iter::from_fn(|| {
                    runtime.block_on(stream.next()).map(|b| {
                        let b = b?;
                        bar.inc(b.num_rows() as u64);
                        Ok(b)
                    })
                });
                export::write(&params, &schema, &mut batches)
            })
            .await
            .map_err(|e| Error::Internal(format!("export panicked: {e}")))??;
            units::commit(target, unit, unoflow_operators::PartitionOutput { rows, errors: Vec::new() }, started)
        }
        OpKind::Map(_) => Err(Error::Internal("map operators run in units".into())),
    }
}

/// The batches sent through `rx`, as a stream.
fn tokio_stream_of<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Unpin + Send {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

fn save_record(ws: &Workspace, record: &RunRecord) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
    workspace::write_atomic(&ws.runs_dir().join(format!("{}.json", record.id)), &bytes)
}

fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

fn run_id() -> String {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let salt = blake3::hash(format!("{}-{:?}", std::process::id(), Instant::now()).as_bytes()).to_hex();
    format!("{stamp}-{}", &salt[..6])
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
