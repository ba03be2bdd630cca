//! Computing one stored node: its units run (in parallel, each under a CPU permit), their rows
//! are given ids when needed, encoded into part files (several per large unit, in parallel) and
//! committed; the node's manifest is written once every unit has a commit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use tokio::task::JoinSet;
use unoflow_api::columns::ROW_ID;
use unoflow_api::{ExecContext, RowError};

use super::RunCtx;
use crate::data::NodeData;
use crate::error::{Error, Result};
use crate::ops::{OpenContext, Unit, UnitOutput, UnitPlan, UnitRunner, Work};
use crate::query::ids::IdAssigner;
use crate::query::{self, IdPolicy, Verify};
use crate::workspace::{Attempt, Commit, FileDigest, Manifest, NodeStore, error_schema};

/// Rows per part file: a large unit's rows go to several parts, encoded in parallel.
const PART_ROWS: usize = 256 * 1024;
/// Bytes per part file (image tables reach this long before `PART_ROWS`).
const PART_BYTES: usize = 256 << 20;

/// A node's computed output, and how many units were found committed.
pub(super) struct Materialized {
    pub manifest: Manifest,
    pub reused: usize,
}

/// Computes node `i` into `store`, reusing valid commits; `verified` are units whose files were
/// checked already in this run (so they are not hashed twice).
pub(super) async fn materialize(
    ctx: &Arc<RunCtx>,
    i: usize,
    store: &NodeStore,
    inputs: &[NodeData],
    verified: &BTreeSet<usize>,
) -> Result<Materialized> {
    let node = ctx.node(i);
    let node_json = serde_json::to_vec_pretty(&ctx.components[i]).map_err(|e| Error::Internal(e.to_string()))?;
    store.begin(&node_json)?;
    // The run holds the workspace: attempts no commit names are from killed or failed runs.
    store.collect_garbage()?;
    let input_digest = input_digest(ctx, i, inputs);

    let (commits, damaged) = store.commits();
    for (unit, why) in &damaged {
        ctx.observer.warn(&format!("node `{}`: commit record of unit {unit}: {why}; recomputing it", node.name));
    }
    store.remove_commits(&damaged.iter().map(|(u, _)| *u).collect::<Vec<_>>())?;
    let committed = Committed { commits, verified, store };

    let runner = LazyRunner::new(ctx, i, inputs);
    let node_ctx = NodeRun { ctx, i, store, input_digest: &input_digest, runner: &runner };
    let (commits, reused) = match node.op.units(inputs)? {
        UnitPlan::Listed(units) => {
            ctx.observer.node_started(&node.name, Some(units.iter().map(|u| u.rows).sum()));
            node_ctx.run_listed(units, committed).await?
        }
        UnitPlan::Chunks { source, rows_per_unit } => {
            let total = count_rows(&source).await.ok();
            ctx.observer.node_started(&node.name, total);
            node_ctx.run_chunks(&source, rows_per_unit, committed).await?
        }
    };
    let manifest = Manifest::new(&ctx.fingerprints[i], &node.name, node.op_name(), &input_digest, commits, super::now());
    store.finish(&manifest)?;
    Ok(Materialized { manifest, reused })
}

/// What the units of node `i` were computed from: a source's digest, or its inputs' identities.
fn input_digest(ctx: &RunCtx, i: usize, inputs: &[NodeData]) -> String {
    match (&ctx.components[i].source, inputs.is_empty()) {
        (Some(source), true) => source.clone(),
        _ => {
            let mut h = blake3::Hasher::new();
            for input in inputs {
                h.update(input.identity().as_bytes()).update(b";");
            }
            h.finalize().to_hex()[..32].to_string()
        }
    }
}

/// The commit records found at the start, and which units' files were already verified.
struct Committed<'a> {
    commits: Vec<Commit>,
    verified: &'a BTreeSet<usize>,
    store: &'a NodeStore,
}

impl Committed<'_> {
    /// The commit of unit `index` if it covers `key`, was computed from `input_digest` and its
    /// files are whole.
    fn take(&mut self, index: usize, key: &str, input_digest: &str) -> Option<Commit> {
        let pos = self.commits.iter().position(|c| c.unit == index)?;
        let c = &self.commits[pos];
        let fits = c.key == key && c.input_digest == input_digest;
        let whole = self.verified.contains(&index) || c.files().all(|f| self.store.verify(f).is_ok());
        (fits && whole).then(|| self.commits.swap_remove(pos))
    }
}

/// One node being computed.
struct NodeRun<'a> {
    ctx: &'a Arc<RunCtx>,
    i: usize,
    store: &'a NodeStore,
    input_digest: &'a str,
    runner: &'a LazyRunner,
}

impl NodeRun<'_> {
    fn name(&self) -> &str {
        &self.ctx.node(self.i).name
    }

    /// Runs the units not committed yet, as many at once as there are CPU permits.
    async fn run_listed(&self, units: Vec<Unit>, mut committed: Committed<'_>) -> Result<(Vec<Commit>, usize)> {
        let mut done: Vec<Commit> = Vec::with_capacity(units.len());
        let mut todo = Vec::new();
        for unit in units {
            match committed.take(unit.index, &unit.key, self.input_digest) {
                Some(c) => {
                    self.ctx.observer.rows_done(self.name(), unit.rows);
                    done.push(c);
                }
                None => todo.push(unit),
            }
        }
        let reused = done.len();
        let total = reused + todo.len();
        let mut pool = UnitPool::default();
        for unit in todo {
            if self.ctx.stop_requested() || pool.failed() {
                break;
            }
            pool.admit(self, unit).await?;
        }
        done.extend(pool.finish(self).await?);
        self.complete(done, total).map(|c| (c, reused))
    }

    /// Cuts a view's rows into units as they stream, keyed by their ids, and runs those not
    /// committed. At most one unit per CPU permit (plus the one being cut) is held in memory.
    async fn run_chunks(&self, source: &NodeData, rows_per_unit: usize, mut committed: Committed<'_>) -> Result<(Vec<Commit>, usize)> {
        let ctx = query::session();
        query::register(&ctx, source, Verify::AlreadyChecked).await?;
        let df = ctx.table(source.name()).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut stream = query::ordered_stream(df).await?;
        let (mut done, mut reused, mut index) = (Vec::new(), 0, 0);
        let mut pool = UnitPool::default();
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0;
        let mut finished = false;
        while !finished {
            match stream.next().await.transpose()? {
                Some(batch) => {
                    pending_rows += batch.num_rows();
                    pending.push(query::conform(batch, &schema)?);
                }
                None => finished = true,
            }
            while pending_rows >= rows_per_unit || (finished && pending_rows > 0) {
                let all = concat_batches(&schema, &pending)?;
                let take = rows_per_unit.min(all.num_rows());
                let chunk = all.slice(0, take);
                let rest = all.slice(take, all.num_rows() - take);
                pending = if rest.num_rows() > 0 { vec![rest] } else { Vec::new() };
                pending_rows -= take;
                let key = chunk_key(&chunk)?;
                match committed.take(index, &key, self.input_digest) {
                    Some(c) => {
                        self.ctx.observer.rows_done(self.name(), chunk.num_rows() as u64);
                        done.push(c);
                        reused += 1;
                    }
                    None if self.ctx.stop_requested() || pool.failed() => {}
                    None => pool.admit(self, Unit { index, key, rows: chunk.num_rows() as u64, work: Work::Rows(chunk) }).await?,
                }
                index += 1;
            }
        }
        if index == 0 {
            // An empty view still gives the node a (empty) part, so it has a schema.
            let key = "empty".to_string();
            match committed.take(0, &key, self.input_digest) {
                Some(c) => done.push(c),
                None => pool.admit(self, Unit { index: 0, key, rows: 0, work: Work::Empty }).await?,
            }
            index = 1;
        }
        done.extend(pool.finish(self).await?);
        self.complete(done, index).map(|c| (c, reused))
    }

    /// The commits in unit order, or why the node is not complete.
    fn complete(&self, mut commits: Vec<Commit>, units: usize) -> Result<Vec<Commit>> {
        commits.sort_by_key(|c| c.unit);
        if commits.len() < units {
            if self.ctx.stop_requested() {
                return Err(Error::Interrupted(format!("{} of {units} units committed", commits.len())));
            }
            return Err(Error::Internal(format!("node `{}`: {} of {units} units have no commit", self.name(), units - commits.len())));
        }
        Ok(commits)
    }

    /// Runs one unit and commits it.
    async fn run_unit(&self, unit: Unit) -> Result<Commit> {
        let started = Instant::now();
        let runner = self.runner.get().await?;
        let exec = ExecContext::new(self.ctx.dag.seed, unit.index, self.ctx.interrupt.stop_flag());
        let (index, key) = (unit.index, unit.key.clone());
        let output = runner.run(unit, exec).await?;
        let attempt = self.store.attempt(index);
        let schema = Arc::clone(&self.ctx.node(self.i).schema);
        match write_output(self.ctx, self.name(), &attempt, output, schema).await {
            Ok((rows, errors)) => {
                let record = attempt.record(&key, self.input_digest, rows, errors, started.elapsed().as_secs_f64());
                Ok(self.store.commit(&attempt, record)?.into_commit())
            }
            Err(e) => {
                attempt.discard();
                Err(e)
            }
        }
    }
}

/// The key of a unit cut from a view: the digest of its rows' ids, so a rerun that cuts the
/// same rows finds the unit's commit.
fn chunk_key(chunk: &RecordBatch) -> Result<String> {
    let ids = chunk
        .column_by_name(ROW_ID)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal("a view's rows have no `row_id`".into()))?;
    let mut h = blake3::Hasher::new();
    for id in ids.iter() {
        h.update(id.unwrap_or_default().as_bytes()).update(b",");
    }
    Ok(format!("rows:{}:{}", chunk.num_rows(), &h.finalize().to_hex()[..32]))
}

/// How many rows a view has (for the progress display).
async fn count_rows(source: &NodeData) -> Result<u64> {
    let ctx = query::session();
    query::register(&ctx, source, Verify::AlreadyChecked).await?;
    Ok(ctx.table(source.name()).await?.count().await? as u64)
}

/// The units of a node in flight, each holding a CPU permit.
#[derive(Default)]
struct UnitPool {
    tasks: JoinSet<Result<Commit>>,
    done: Vec<Commit>,
    error: Option<Error>,
}

impl UnitPool {
    fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Waits for a CPU permit (collecting finished units meanwhile), then starts `unit`.
    async fn admit(&mut self, run: &NodeRun<'_>, unit: Unit) -> Result<()> {
        let permit = Arc::clone(&run.ctx.cpu).acquire_owned().await.map_err(|_| Error::Internal("CPU pool closed".into()))?;
        while let Some(finished) = self.tasks.try_join_next() {
            self.collect(run, finished);
        }
        let ctx = Arc::clone(run.ctx);
        let (i, store, digest, runner) = (run.i, run.store.clone(), run.input_digest.to_string(), run.runner.clone());
        self.tasks.spawn(async move {
            let _permit = permit;
            let run = NodeRun { ctx: &ctx, i, store: &store, input_digest: &digest, runner: &runner };
            run.run_unit(unit).await
        });
        Ok(())
    }

    fn collect(&mut self, run: &NodeRun<'_>, finished: std::result::Result<Result<Commit>, tokio::task::JoinError>) {
        match finished {
            Ok(Ok(commit)) => {
                if run.ctx.fail_fast && commit.errors.is_some() && self.error.is_none() {
                    let name = run.name();
                    self.error = Some(Error::Execution(format!(
                        "node `{name}`: a row failed and --fail-fast is set; see `unoflow sql \"SELECT * FROM errors.{name}\"`"
                    )));
                    run.ctx.interrupt.request_stop();
                }
                self.done.push(commit);
            }
            Ok(Err(e)) => {
                if self.error.is_none() {
                    self.error = Some(e);
                }
            }
            Err(join) => {
                if self.error.is_none() {
                    self.error = Some(Error::Internal(format!("a unit of node `{}` panicked: {join}", run.name())));
                }
            }
        }
    }

    /// Waits for the units in flight; the first error wins.
    async fn finish(mut self, run: &NodeRun<'_>) -> Result<Vec<Commit>> {
        while let Some(finished) = self.tasks.join_next().await {
            self.collect(run, finished);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.done),
        }
    }
}

/// The node's unit runner, opened (models loaded) when the first unit needs it: a node whose
/// units are all committed loads nothing.
#[derive(Clone)]
struct LazyRunner {
    cell: Arc<tokio::sync::OnceCell<Arc<dyn UnitRunner>>>,
    ctx: Arc<RunCtx>,
    i: usize,
    inputs: Arc<[NodeData]>,
}

impl LazyRunner {
    fn new(ctx: &Arc<RunCtx>, i: usize, inputs: &[NodeData]) -> Self {
        Self { cell: Arc::new(tokio::sync::OnceCell::new()), ctx: Arc::clone(ctx), i, inputs: inputs.into() }
    }

    async fn get(&self) -> Result<Arc<dyn UnitRunner>> {
        let runner = self
            .cell
            .get_or_try_init(|| async {
                let (ctx, i) = (&self.ctx, self.i);
                let node = ctx.node(i);
                let open = OpenContext {
                    env: unoflow_api::Environment { artifacts_dir: Some(ctx.ws.artifacts_dir(&ctx.fingerprints[i])), ..ctx.env.clone() },
                    input_schemas: node.inputs.iter().map(|&j| Arc::clone(&ctx.dag.nodes[j].schema)).collect(),
                    schema: Arc::clone(&node.schema),
                    inputs: self.inputs.to_vec(),
                };
                node.op.open(open).await
            })
            .await?;
        Ok(Arc::clone(runner))
    }
}

/// Writes a unit's rows (ids given if needed) into part files, encoding several parts at once,
/// and its failed rows into an errors file.
async fn write_output(
    ctx: &RunCtx,
    node: &str,
    attempt: &Attempt,
    output: UnitOutput,
    schema: SchemaRef,
) -> Result<(Vec<FileDigest>, Option<FileDigest>)> {
    let UnitOutput { mut rows, errors, ids } = output;
    let mut assigner = (ids == IdPolicy::Assign).then(IdAssigner::new);
    let mut encoders: JoinSet<Result<(usize, FileDigest)>> = JoinSet::new();
    let mut parts: Vec<(usize, FileDigest)> = Vec::new();
    let (mut part, mut buffered, mut buffered_rows, mut buffered_bytes) = (0usize, Vec::new(), 0usize, 0usize);
    let in_flight = std::thread::available_parallelism().map_or(2, |n| n.get());
    while let Some(batch) = rows.next().await {
        let batch = batch?;
        // Ids depend on the rows before (a repeated id is made unique by its count), so they
        // are given in order here; encoding then runs in parallel.
        let batch = match assigner.as_mut() {
            Some(a) => tokio::task::block_in_place(|| a.assign(batch))?,
            None => batch,
        };
        ctx.observer.rows_done(node, batch.num_rows() as u64);
        buffered_rows += batch.num_rows();
        buffered_bytes += batch.get_array_memory_size();
        buffered.push(batch);
        if buffered_rows >= PART_ROWS || buffered_bytes >= PART_BYTES {
            while encoders.len() >= in_flight {
                parts.push(joined(encoders.join_next().await)?);
            }
            spawn_encode(&mut encoders, attempt, part, std::mem::take(&mut buffered));
            (part, buffered_rows, buffered_bytes) = (part + 1, 0, 0);
        }
    }
    if !buffered.is_empty() || part == 0 {
        if buffered.is_empty() {
            // No rows at all: one empty part, so the output has its schema.
            buffered.push(RecordBatch::new_empty(schema));
        }
        spawn_encode(&mut encoders, attempt, part, buffered);
    }
    while let Some(done) = encoders.join_next().await {
        parts.push(joined(Some(done))?);
    }
    parts.sort_by_key(|(k, _)| *k);
    let errors: Vec<RowError> = errors.await?;
    let errors = if errors.is_empty() { None } else { Some(write_errors(attempt, errors).await?) };
    Ok((parts.into_iter().map(|(_, f)| f).collect(), errors))
}

fn spawn_encode(encoders: &mut JoinSet<Result<(usize, FileDigest)>>, attempt: &Attempt, part: usize, batches: Vec<RecordBatch>) {
    let attempt = attempt.clone();
    encoders.spawn_blocking(move || {
        let schema = batches.first().map(RecordBatch::schema).ok_or_else(|| Error::Internal("a part without batches".into()))?;
        let mut writer = attempt.part_writer(part, schema)?;
        for b in &batches {
            writer.write(b)?;
        }
        Ok((part, writer.finish()?))
    });
}

fn joined(done: Option<std::result::Result<Result<(usize, FileDigest)>, tokio::task::JoinError>>) -> Result<(usize, FileDigest)> {
    match done {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(Error::Internal(format!("encoding a part panicked: {e}"))),
        None => Err(Error::Internal("no encoder to wait for".into())),
    }
}

async fn write_errors(attempt: &Attempt, errors: Vec<RowError>) -> Result<FileDigest> {
    let attempt = attempt.clone();
    tokio::task::spawn_blocking(move || {
        let ids: Vec<&str> = errors.iter().map(|e| e.row_id.as_str()).collect();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        let batch = RecordBatch::try_new(
            error_schema(),
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(ids)),
                Arc::new(datafusion::arrow::array::StringArray::from(messages)),
            ],
        )?;
        let mut writer = attempt.errors_writer(error_schema())?;
        writer.write(&batch)?;
        writer.finish()
    })
    .await
    .map_err(|e| Error::Internal(format!("writing failed rows panicked: {e}")))?
}
