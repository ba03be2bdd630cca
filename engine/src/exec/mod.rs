//! Running a DAG: what is not cached is computed, unit by unit, committed as it goes.
//!
//! Each node is a tokio task that waits for its inputs. Independent nodes run at the same time;
//! CPU units share a pool of one permit per core, and GPU nodes take their device one at a time.
//! Blocking work runs on tokio's blocking pool, never on the async workers. A `sql` node stored
//! as a view costs nothing here: it is handed to its readers, who run its query.
//!
//! # Cancellation
//! The caller's [`Interrupt`] at level 1 stops new units from starting; units in progress finish
//! and commit, and the run ends with [`Error::Interrupted`]. At level 2 the run records itself as
//! interrupted and returns at once: whatever was committed is kept either way.
//!
//! # Output
//! The engine prints nothing: it reports to a [`RunObserver`] (the CLI's progress bars).

mod claims;
pub mod gang;
mod gather;
mod materialize;
mod observer;
mod queue;
mod unit_set;
mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::Semaphore;
use unoflow_api::{Device, Environment, Resource};

pub use claims::{Asked, Claims, DEFAULT_LEASE, Renewal, WorkerOptions, first_choice};
pub use gather::{Gathered, ManifestWriter};
pub use observer::{RunObserver, Unobserved};
pub use queue::{Next, UnitQueue, WINDOW};
pub use unit_set::UnitSet;
pub use units::{Driven, UnitDriver, UnitEnd, UnitFuture};

use crate::dag::{Dag, Node};
use crate::data::{NodeData, TableData, ViewData};
use crate::error::{Error, Result};
use crate::fingerprint::{self, Components};
use crate::interrupt::Interrupt;
use crate::workspace::{DagRef, Index, IndexEntry, LockMode, Manifest, NodeRecord, NodeStore, PeerSpan, RunRecord, Storage, Workspace};

/// What `unoflow run` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run only these nodes (and whatever they need that is not cached).
    pub only: Vec<String>,
    /// Recompute these nodes even if cached.
    pub force: Vec<String>,
    /// Stop at the first failed row.
    pub fail_fast: bool,
    /// Wait for another run on the workspace instead of refusing.
    pub wait: bool,
    pub device: Device,
    /// Set for a worker: it shares the workspace with other processes through leases.
    pub worker: Option<WorkerOptions>,
}

/// How a node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Computed,
    Resumed,
    Cached,
    /// A view: nothing to compute; its readers run its query.
    View,
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
            Self::View => "view",
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
    /// For a node this worker led a gang for: how many peers took which steps.
    pub peers: Vec<PeerSpan>,
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
    observer: Arc<dyn RunObserver>,
    cpu: Arc<Semaphore>,
    /// How many permits `cpu` has.
    cpu_permits: usize,
    gpu: tokio::sync::Mutex<()>,
    index: Mutex<Index>,
    env: Environment,
    /// Leases, when other processes may work in the workspace (workers, object storage).
    claims: Option<Arc<claims::Claims>>,
    /// The gangs this worker led, by node: how many peers took which steps.
    gangs: Mutex<BTreeMap<usize, Vec<PeerSpan>>>,
    /// By node: how many of its units this worker is computing now (it follows no gang of a
    /// node it leads one of).
    leading: Vec<std::sync::atomic::AtomicUsize>,
}

type NodeFuture = Shared<BoxFuture<'static, Option<NodeData>>>;

/// Where a run works: the workspace, the nodes it visits, and its claims when it shares the
/// workspace with other processes.
struct Seat {
    ws: Workspace,
    selected: Vec<usize>,
    claims: Option<Arc<claims::Claims>>,
}

/// Runs `dag`.
pub async fn run(
    dag: Arc<Dag>,
    opts: RunOptions,
    command: Vec<String>,
    interrupt: Interrupt,
    observer: Arc<dyn RunObserver>,
) -> Result<RunReport> {
    let selected = select(&dag, &opts)?;
    let ws = Workspace::create(&dag.workspace)?;
    let mode = if opts.worker.is_some() { LockMode::Shared } else { LockMode::Alone { wait: opts.wait } };
    let lock = ws.lock(mode)?;
    // A run alone in its folder needs no leases; workers, and any run on object storage
    // (which has no lock), claim each unit.
    if let (Some(_), LockMode::Alone { .. }) = (&lock, mode) {
        return run_seated(dag, opts, command, interrupt, observer, Seat { ws, selected, claims: None }).await;
    }
    let claims = Arc::new(claims::Claims::new(ws.leases(), opts.worker.clone().unwrap_or_default()));
    let device = opts.device.to_string();
    // Refuses a host whose clock is too far from the store's, before any claim.
    let heartbeat = claims.heartbeat(device.clone(), Arc::clone(&observer)).await?;
    let seat = Seat { ws, selected, claims: Some(Arc::clone(&claims)) };
    let report = run_seated(dag, opts, command, interrupt, observer, seat).await;
    // The last beat, however the run ended: readers count this worker gone at once.
    drop(heartbeat);
    claims.finish(&device).await;
    report
}

/// Runs the selected nodes of `dag` in the seat's workspace.
async fn run_seated(
    dag: Arc<Dag>,
    opts: RunOptions,
    command: Vec<String>,
    interrupt: Interrupt,
    observer: Arc<dyn RunObserver>,
    seat: Seat,
) -> Result<RunReport> {
    let Seat { ws, selected, claims } = seat;
    let force = dag.nodes.iter().map(|n| opts.force.contains(&n.name)).collect();
    // Fingerprints hold the class and precision of `dag.device`: the outputs must be made there.
    if dag.device.compute_class() != opts.device.compute_class() {
        return Err(Error::Internal(format!("the DAG was loaded for {} but runs on {}", dag.device, opts.device)));
    }
    let components = fingerprint::compute(&dag)?;
    let fingerprints = components.iter().map(Components::fingerprint).collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let index = ws.index().unwrap_or_else(|e| {
        observer.warn(&format!("{e}; it is rewritten as nodes finish"));
        Index::default()
    });
    let ctx = Arc::new(RunCtx {
        env: Environment {
            device: opts.device,
            seed: dag.seed,
            cache_dir: Some(ws.cache_dir()),
            artifacts_dir: None,
            files: Some(Arc::new(ws.clone())),
            max_image_pixels: unoflow_api::PixelLimit(dag.max_image_pixels),
        },
        claims: claims.clone(),
        gangs: Mutex::default(),
        leading: dag.nodes.iter().map(|_| std::sync::atomic::AtomicUsize::new(0)).collect(),
        index: Mutex::new(index),
        dag: Arc::clone(&dag),
        ws,
        components,
        fingerprints,
        force,
        fail_fast: opts.fail_fast,
        interrupt: interrupt.clone(),
        observer,
        cpu: Arc::new(Semaphore::new(threads)),
        cpu_permits: threads,
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
        host: crate::workspace::hostname(),
        command,
        vars: dag.vars.iter().map(|v| (v.name.clone(), var_record(v))).collect(),
        nodes: Vec::new(),
        worker: ctx.claims.as_ref().map(|c| format!("{} (rank {} of {})", c.id, c.opts.rank, c.opts.world)),
        group: ctx.claims.as_ref().and_then(|c| c.opts.group.clone()),
    };
    ctx.ws.save_run(&record)?;

    let outcomes: Arc<Mutex<BTreeMap<usize, NodeOutcome>>> = Arc::default();
    let mut futures: Vec<Option<NodeFuture>> = vec![None; dag.nodes.len()];
    // Nodes with the same fingerprint (same op, parameters and inputs) are one output: the
    // first computes it, the others wait for it instead of racing it for the same files.
    let mut first_of: BTreeMap<String, usize> = BTreeMap::new();
    for &i in &selected {
        let ctx = Arc::clone(&ctx);
        let outcomes = Arc::clone(&outcomes);
        let fp = ctx.fingerprints[i].clone();
        let task = match first_of.get(&fp).and_then(|&twin| futures[twin].clone().map(|f| (twin, f))) {
            Some((twin, same)) => tokio::spawn(async move {
                let outcome = twin_task(&ctx, i, twin, same).await;
                finish(&ctx, &outcomes, i, outcome)
            }),
            None => {
                first_of.insert(fp, i);
                let inputs: Vec<NodeFuture> = dag.nodes[i].inputs.iter().filter_map(|&j| futures[j].clone()).collect();
                tokio::spawn(async move {
                    let mut data = Vec::with_capacity(inputs.len());
                    for input in inputs {
                        data.push(input.await);
                    }
                    let outcome = match data.into_iter().collect::<Option<Vec<_>>>() {
                        Some(inputs) => node_task(&ctx, i, inputs).await,
                        None => (ctx.outcome(i, Status::Skipped, None, 0.0, Some("an input did not complete".into())), None),
                    };
                    finish(&ctx, &outcomes, i, outcome)
                })
            }
        };
        futures[i] = Some(task.map(|r| r.ok().flatten()).boxed().shared());
    }
    let all_done = futures::future::join_all(futures.into_iter().flatten());
    let aborted = tokio::select! {
        _ = all_done => false,
        _ = interrupt.aborted() => true,
    };

    let mut outcomes: BTreeMap<usize, NodeOutcome> =
        std::mem::take(&mut *outcomes.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
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
            peers: o.peers.clone(),
        })
        .collect();
    ctx.ws.save_run(&record)?;
    Ok(RunReport { run_id: record.id, outcomes, interrupted })
}

/// Records a node's outcome and tells the observer.
fn finish(
    ctx: &RunCtx,
    outcomes: &Mutex<BTreeMap<usize, NodeOutcome>>,
    i: usize,
    (outcome, data): (NodeOutcome, Option<NodeData>),
) -> Option<NodeData> {
    ctx.observer.node_finished(&outcome);
    outcomes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(i, outcome);
    data
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
            op: node.op_name(),
            fingerprint: self.fingerprints[i].clone(),
            status,
            rows: manifest.map_or(0, |m| m.rows),
            error_rows: manifest.map_or(0, |m| m.error_rows),
            seconds,
            message,
            peers: self.gangs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&i).cloned().unwrap_or_default(),
        }
    }

    /// Records the steps a gang this worker led took, and with how many peers.
    fn gang_took(&self, i: usize, spans: Vec<PeerSpan>) {
        let mut gangs = self.gangs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let all = gangs.entry(i).or_default();
        all.extend(spans);
        all.sort_by_key(|s| s.first_step);
    }

    fn stop_requested(&self) -> bool {
        self.interrupt.stop_requested()
    }

    /// Records node `i`'s fingerprint under its name, so later plans can explain changes and
    /// the workspace can be queried without its DAG.
    fn remember(&self, i: usize, storage: Storage) {
        let components = match serde_json::to_value(&self.components[i]) {
            Ok(c) => c,
            Err(e) => return self.observer.warn(&format!("cannot record node `{}` in the index: {e}", self.node(i).name)),
        };
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let dag = self.dag_ref();
        index.note_dag(&dag);
        let entry = IndexEntry { fingerprint: self.fingerprints[i].clone(), storage, components, dag: Some(dag) };
        index.nodes.insert(self.node(i).name.clone(), entry);
        if let Err(e) = self.ws.save_index(&index) {
            self.observer.warn(&format!("cannot save the workspace index: {e}"));
        }
    }

    /// Which DAG this run is of, for the index: its name and its file's absolute path (the
    /// same file named from two folders is one DAG).
    fn dag_ref(&self) -> DagRef {
        let path = match self.dag.path().file_name() {
            Some(file) => self.dag.dag_dir.join(file),
            None => self.dag.path().to_path_buf(),
        };
        DagRef { name: self.dag.name.clone(), path: path.display().to_string() }
    }

    /// The data of a complete stored node `i`, published under `tables/` for other engines.
    fn table(&self, i: usize, store: &NodeStore, manifest: Manifest) -> NodeData {
        let name = &self.node(i).name;
        if let Err(e) = self.ws.publish_table(name, store, &manifest) {
            self.observer.warn(&format!("node `{name}`: cannot update tables/{name}: {e}"));
        }
        NodeData::Table(Arc::new(TableData { name: name.clone(), store: store.clone(), manifest: Arc::new(manifest) }))
    }
}

/// A node that makes the same output as node `twin`: it waits for that one.
async fn twin_task(ctx: &RunCtx, i: usize, twin: usize, same: NodeFuture) -> (NodeOutcome, Option<NodeData>) {
    let started = Instant::now();
    let Some(data) = same.await else {
        let message = format!("node `{}`, which makes the same output, did not complete", ctx.node(twin).name);
        return (ctx.outcome(i, Status::Skipped, None, 0.0, Some(message)), None);
    };
    let (status, manifest) = match &data {
        NodeData::Table(t) => (Status::Cached, Some(Arc::clone(&t.manifest))),
        NodeData::View(_) => (Status::View, None),
    };
    ctx.remember(i, ctx.node(i).storage);
    let message = format!("the same output as node `{}`", ctx.node(twin).name);
    let outcome = ctx.outcome(i, status, manifest.as_deref(), started.elapsed().as_secs_f64(), Some(message));
    (outcome, Some(data.renamed(&ctx.node(i).name)))
}

async fn node_task(ctx: &Arc<RunCtx>, i: usize, inputs: Vec<NodeData>) -> (NodeOutcome, Option<NodeData>) {
    let started = Instant::now();
    let node = ctx.node(i);
    if let (Storage::View, Some(query)) = (node.storage, node.op.view_query()) {
        let view = ViewData { name: node.name.clone(), fingerprint: ctx.fingerprints[i].clone(), query: query.to_string(), inputs };
        if let Err(e) = ctx.ws.publish_view(&view.name, &crate::query::outside::duckdb_script(&view)) {
            ctx.observer.warn(&format!("node `{}`: cannot write tables/{}.sql: {e}", view.name, view.name));
        }
        ctx.remember(i, Storage::View);
        return (ctx.outcome(i, Status::View, None, started.elapsed().as_secs_f64(), None), Some(NodeData::View(Arc::new(view))));
    }

    let store = ctx.ws.node(&ctx.fingerprints[i]);
    let verified = if ctx.force[i] {
        if let Err(e) = store.clear() {
            return (ctx.outcome(i, Status::Failed, None, 0.0, Some(format!("cannot clear the output for --force: {e}"))), None);
        }
        BTreeSet::new()
    } else {
        match reusable(ctx, i, &store) {
            Ok(Reuse::Complete(manifest)) => {
                ctx.remember(i, Storage::Table);
                let outcome = ctx.outcome(i, Status::Cached, Some(&manifest), started.elapsed().as_secs_f64(), None);
                return (outcome, Some(ctx.table(i, &store, manifest)));
            }
            Ok(Reuse::Partial(verified)) => verified,
            Err(e) => return (ctx.outcome(i, Status::Failed, None, 0.0, Some(e.to_string())), None),
        }
    };
    if ctx.stop_requested() {
        return (ctx.outcome(i, Status::Interrupted, None, 0.0, None), None);
    }

    let _gpu = match node.op.resource() {
        Resource::Gpu => Some(ctx.gpu.lock().await),
        Resource::Cpu => None,
    };
    match materialize::materialize(ctx, i, &store, &inputs, &verified).await {
        Ok(done) => {
            ctx.remember(i, Storage::Table);
            let status = if done.reused > 0 { Status::Resumed } else { Status::Computed };
            let outcome = ctx.outcome(i, status, Some(&done.manifest), started.elapsed().as_secs_f64(), None);
            (outcome, Some(ctx.table(i, &store, done.manifest)))
        }
        Err(Error::Interrupted(m)) => (ctx.outcome(i, Status::Interrupted, None, started.elapsed().as_secs_f64(), Some(m)), None),
        Err(e) => (ctx.outcome(i, Status::Failed, None, started.elapsed().as_secs_f64(), Some(e.to_string())), None),
    }
}

/// What can be reused of a stored node's output.
enum Reuse {
    /// Complete and whole.
    Complete(Manifest),
    /// Not complete; these units' files were verified already (the intact units of a damaged
    /// output), the others are checked as they are found.
    Partial(BTreeSet<usize>),
}

/// The complete, verified output of node `i`, if there is one. A damaged output is reported and
/// reduced to its whole commits, so only the damaged units are recomputed.
fn reusable(ctx: &RunCtx, i: usize, store: &NodeStore) -> Result<Reuse> {
    let name = &ctx.node(i).name;
    let manifest = match store.manifest() {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(Reuse::Partial(BTreeSet::new())),
        Err(why) => {
            ctx.observer.warn(&format!("node `{name}`: {why}; recomputing"));
            store.remove_manifest()?;
            return Ok(Reuse::Partial(BTreeSet::new()));
        }
    };
    let damaged = store.damaged_units(&manifest);
    if damaged.is_empty() {
        let table = TableData { name: name.clone(), store: store.clone(), manifest: Arc::new(manifest.clone()) };
        if let Some(missing) = ctx.node(i).op.output_missing(&table) {
            ctx.observer.warn(&format!("node `{name}`: {missing} is missing; making it again"));
            store.remove_commits(&manifest.commits.iter().map(|c| c.unit).collect::<Vec<_>>())?;
            return Ok(Reuse::Partial(BTreeSet::new()));
        }
        return Ok(Reuse::Complete(manifest));
    }
    for (unit, why) in &damaged {
        ctx.observer.warn(&format!("node `{name}`: corrupt part, not read: {why}; recomputing unit {unit}"));
    }
    let bad: Vec<usize> = damaged.iter().map(|(u, _)| *u).collect();
    store.remove_commits(&bad)?;
    Ok(Reuse::Partial(manifest.commits.iter().map(|c| c.unit).filter(|u| !bad.contains(u)).collect()))
}

pub(crate) fn now() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

/// A `--var`'s value for the run record: as TOML read it, unless its name looks secret.
fn var_record(var: &crate::dag::VarOverride) -> serde_json::Value {
    if crate::dag::interpolate::is_secret_name(&var.name) {
        return "<redacted>".into();
    }
    match &var.value {
        toml::Value::Datetime(d) => d.to_string().into(),
        value => serde_json::to_value(value).unwrap_or_else(|_| var.text.clone().into()),
    }
}

fn run_id() -> String {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let salt = blake3::hash(format!("{}-{:?}", std::process::id(), Instant::now()).as_bytes()).to_hex();
    format!("{stamp}-{}", &salt[..6])
}

/// Folds into `report` what the workers of `group` did: a node this process found cached was
/// computed by them.
pub fn merge_group(ws: &Workspace, group: &str, report: &mut RunReport) -> Result<()> {
    let records: Vec<RunRecord> = ws.runs()?.records.into_iter().filter(|r| r.group.as_deref() == Some(group)).collect();
    for outcome in report.outcomes.iter_mut().filter(|o| o.status == Status::Cached) {
        let theirs = records.iter().flat_map(|r| &r.nodes).filter(|n| n.fingerprint == outcome.fingerprint);
        let mut seconds: f64 = 0.0;
        let mut status = None;
        for node in theirs {
            match node.status.as_str() {
                "computed" => status = Some(Status::Computed),
                "resumed" if status.is_none() => status = Some(Status::Resumed),
                _ => continue,
            }
            seconds = seconds.max(node.seconds);
        }
        if let Some(status) = status {
            outcome.status = status;
            outcome.seconds = seconds;
        }
    }
    Ok(())
}
