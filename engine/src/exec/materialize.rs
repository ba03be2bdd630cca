//! Computing one stored node: its units run (in parallel, each under a CPU permit), their rows
//! are given ids when needed, encoded into part files (several per large unit, in parallel) and
//! committed; the node's manifest is written once every unit has a commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use tokio::task::JoinSet;
use unoflow_api::columns::ROW_ID;
use unoflow_api::{ExecContext, RowError};

use super::RunCtx;
use super::claims::{Asked, Renewal};
use super::gang;
use super::gather::ManifestWriter;
use super::queue::{self, UnitQueue};
use super::unit_set::UnitSet;
use super::units::{UnitDriver, UnitEnd, UnitFuture, sleep_unless};
use crate::data::NodeData;
use crate::error::{Error, Result};
use crate::ops::{OpenContext, Unit, UnitOutput, UnitPlan, UnitRunner, Work};
use crate::query::ids::IdAssigner;
use crate::query::{self, IdPolicy, Verify};
use crate::workspace::{Attempt, Commit, FileDigest, Garbage, Lease, Manifest, NodeStore, error_schema, now_ms};

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
    let input_digest = input_digest(ctx, i, inputs);
    let gang_ended = AtomicBool::new(false);
    let mut committed = Committed {
        commits: Vec::new(),
        elsewhere: UnitSet::new(),
        verified: verified.clone(),
        store,
        input_digest: &input_digest,
        gang_ended: &gang_ended,
    };
    if ctx.claims.is_none() {
        // Alone in the workspace: attempts no commit names are from killed or failed runs, and
        // every record is read and checked before it is reused.
        store.collect_garbage(Garbage::AllUnreferenced, None)?;
        let (commits, damaged) = store.commits();
        for (unit, why) in &damaged {
            ctx.observer.warn(&format!("node `{}`: commit record of unit {unit}: {why}; recomputing it", node.name));
        }
        store.remove_commits(&damaged.iter().map(|(u, _)| *u).collect::<Vec<_>>())?;
        committed.commits = commits;
    } else {
        // Shared: which units are committed is one listing; their records are read once, by
        // the worker that writes the manifest.
        committed.elsewhere = store.committed_units()?.into_iter().collect();
    }

    let runner = LazyRunner::new(ctx, i, inputs);
    let node_ctx = NodeRun { ctx, i, store, input_digest: &input_digest, runner: &runner };
    let plan = node.op.units(inputs)?;
    // A data-parallel node's units are computed by gangs: while this worker waits for a unit
    // another holds, it joins that unit's gang.
    let gang_units = (ctx.claims.is_some() && node.op.data_parallel()).then(|| GangUnits::of(&plan));
    let node_done = Arc::new(AtomicBool::new(false));
    let units = async {
        let ran = match plan {
            UnitPlan::Listed(units) => {
                ctx.observer.node_started(&node.name, Some(units.iter().map(|u| u.rows).sum()));
                if ctx.claims.is_some() {
                    store.set_units(units.len())?;
                }
                node_ctx.run_listed(units, &mut committed).await
            }
            UnitPlan::Chunks { source, rows_per_unit } => {
                let total = count_rows(&source).await.ok();
                ctx.observer.node_started(&node.name, total);
                node_ctx.run_chunks(&source, rows_per_unit, &mut committed).await
            }
        };
        node_done.store(true, Ordering::Relaxed);
        ran
    };
    let follow = async {
        if let Some(gang_units) = gang_units {
            node_ctx.follow_gangs(&gang_units, &node_done, &gang_ended).await;
        }
    };
    let (ran, ()) = tokio::join!(units, follow);
    let Ran { commits, reused, watching } = ran?;
    if let Some(claims) = &ctx.claims {
        // Its units are all asked for: the commits this worker won there need no summary now
        // (a streamed view's units are not summarised).
        claims.forget_wins(&ctx.fingerprints[i]);
    }
    let manifest = match &ctx.claims {
        None => {
            let manifest = Manifest::new(&ctx.fingerprints[i], &node.name, node.op_name(), &input_digest, commits, super::now());
            store.finish(&manifest)?;
            manifest
        }
        Some(claims) => {
            let stop = || ctx.stop_requested();
            let warn = |message: &str| ctx.observer.warn(message);
            let writer = ManifestWriter {
                claims,
                store,
                fingerprint: &ctx.fingerprints[i],
                node: &node.name,
                op: node.op_name(),
                input_digest: &input_digest,
                stop: &stop,
                warn: &warn,
            };
            let gathered = writer.gather(commits, &committed.elsewhere, watching).await?;
            if gathered.written {
                writer.clean_up(&gathered.manifest).await;
            }
            gathered.manifest
        }
    };
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

/// The commit records known, the units other workers committed (records not read), and which
/// units' files were already verified.
struct Committed<'a> {
    commits: Vec<Commit>,
    elsewhere: UnitSet,
    verified: BTreeSet<usize>,
    store: &'a NodeStore,
    input_digest: &'a str,
    /// Set when a gang this worker followed ended: its unit is being committed, so the worker
    /// looks at once rather than at its next poll.
    gang_ended: &'a AtomicBool,
}

impl Committed<'_> {
    /// The commit of unit `index` if it covers `key`, was computed from the node's inputs and
    /// its files are whole.
    fn take(&mut self, index: usize, key: &str) -> Option<Commit> {
        let pos = self.commits.iter().position(|c| c.unit == index)?;
        let c = &self.commits[pos];
        let fits = c.key == key && c.input_digest == self.input_digest;
        let whole = self.verified.contains(&index) || c.files().all(|f| self.store.verify(f).is_ok());
        (fits && whole).then(|| self.commits.swap_remove(pos))
    }

    /// Forgets the records of units about to be computed (from an earlier computation of the
    /// same fingerprint over other input data, or damaged): the unit's new commit replaces them.
    fn remove_stale(&mut self, units: impl Iterator<Item = usize>) -> Result<()> {
        let stale: Vec<usize> = units.filter(|u| self.commits.iter().any(|c| c.unit == *u)).collect();
        if !stale.is_empty() {
            self.store.remove_commits(&stale)?;
            self.commits.retain(|c| !stale.contains(&c.unit));
        }
        Ok(())
    }

    /// Learns which of `waiting` other workers committed since (without reading the records).
    fn refresh(&mut self, waiting: &BTreeSet<usize>) -> Result<()> {
        let waiting: Vec<usize> = waiting.iter().copied().collect();
        self.elsewhere.extend(self.store.committed_among(&waiting)?);
        Ok(())
    }
}

/// What running a node's units came to.
struct Ran {
    /// This worker's commits (all of them, when it is alone).
    commits: Vec<Commit>,
    /// How many units were found committed when the node started.
    reused: usize,
    /// The node's manifest lease, if this worker watched the node's end.
    watching: Option<Renewal>,
}

/// How a unit task ended.
enum UnitDone {
    Committed(Commit),
    /// A worker's attempt failed and another may try again.
    Retry(Unit),
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

    fn fingerprint(&self) -> &str {
        &self.ctx.fingerprints[self.i]
    }

    /// Claims `unit` when workers share the workspace and starts it (or finds it committed
    /// meanwhile). When another worker holds it: when its lease
    /// can be taken over if not renewed (Unix ms), so it is not asked for again before.
    async fn start(&self, pool: &mut UnitPool, unit: Unit, committed: &mut Committed<'_>) -> Result<Option<i64>> {
        let Some(claims) = &self.ctx.claims else {
            pool.admit(self, unit, None).await?;
            return Ok(None);
        };
        match claims.ask(self.fingerprint(), unit.index, self.store).await? {
            Asked::Claimed(lease) => pool.admit(self, unit, Some(lease)).await.map(|()| None),
            Asked::Committed => {
                committed.elsewhere.insert(unit.index);
                Ok(None)
            }
            Asked::Held { retry_at_ms } => Ok(Some(retry_at_ms)),
        }
    }

    /// Runs the units not committed yet, as many at once as there are CPU permits. Workers
    /// take their own units first, then the others nobody holds, then wait for the units other
    /// workers hold (taking over those whose holder went quiet); see `exec::queue`.
    async fn run_listed(&self, units: Vec<Unit>, committed: &mut Committed<'_>) -> Result<Ran> {
        let total = units.len();
        let mut done: Vec<Commit> = Vec::with_capacity(units.len());
        let mut todo = Vec::new();
        for unit in units {
            match committed.take(unit.index, &unit.key) {
                Some(c) => {
                    self.ctx.observer.rows_done(self.name(), unit.rows);
                    done.push(c);
                }
                None if committed.elsewhere.contains(&unit.index) => self.ctx.observer.rows_done(self.name(), unit.rows),
                None => todo.push(unit),
            }
        }
        let reused = done.len() + committed.elsewhere.len();
        committed.remove_stale(todo.iter().map(|u| u.index))?;
        let queue = match &self.ctx.claims {
            None => UnitQueue::alone(todo.iter().map(|u| u.index)),
            Some(claims) => {
                let start = claims.opts.rank * total / claims.opts.world.max(1);
                let first_choices = todo.iter().map(|u| (u.index, claims.is_own(&u.key)));
                let window = if self.store.store().lists_by_range() { queue::WINDOW } else { usize::MAX };
                let poll = claims.poll_interval().as_millis() as i64;
                UnitQueue::shared(first_choices, total, start, window, 2 * self.ctx.cpu_permits, poll)
            }
        };
        let todo: BTreeMap<usize, Unit> = todo.into_iter().map(|u| (u.index, u)).collect();
        let stop = || self.ctx.stop_requested();
        let driver = UnitDriver {
            claims: self.ctx.claims.as_deref(),
            fingerprint: self.fingerprint(),
            store: self.store,
            permits: Arc::clone(&self.ctx.cpu),
            stop: &stop,
        };
        let driven = driver.run(queue, |index, lease| self.unit_task(todo[&index].clone(), lease)).await?;
        for unit in driven.elsewhere.iter().filter_map(|u| todo.get(&u)) {
            self.ctx.observer.rows_done(self.name(), unit.rows);
        }
        done.extend(driven.done);
        committed.elsewhere.extend(driven.elsewhere.iter());
        let commits = self.complete(done, &committed.elsewhere, total)?;
        Ok(Ran { commits, reused, watching: driven.watching })
    }

    /// Cuts a view's rows into units as they stream, keyed by their ids, and runs those not
    /// committed. At most one unit per CPU permit (plus the one being cut) is held in memory.
    /// Workers sharing the workspace stream the view once per pass: the first pass takes their
    /// own units, later ones any unit left, until every unit has a commit.
    async fn run_chunks(&self, source: &NodeData, rows_per_unit: usize, committed: &mut Committed<'_>) -> Result<Ran> {
        let (mut done, mut reused, mut units) = (Vec::new(), 0, 0);
        let mut done_units: BTreeSet<usize> = BTreeSet::new();
        let mut not_before: BTreeMap<usize, i64> = BTreeMap::new();
        for pass in 0.. {
            let mut pool = UnitPool::default();
            let mut waiting: BTreeSet<usize> = BTreeSet::new();
            let mut chunks = Chunks::open(source, rows_per_unit).await?;
            let mut index = 0;
            while let Some(chunk) = chunks.next().await? {
                let unit = Unit { index, key: chunk_key(&chunk)?, rows: chunk.num_rows() as u64, work: Work::Rows(chunk) };
                index += 1;
                if done_units.contains(&unit.index) || committed.elsewhere.contains(&unit.index) {
                    continue;
                }
                if let Some(c) = committed.take(unit.index, &unit.key) {
                    self.ctx.observer.rows_done(self.name(), unit.rows);
                    done_units.insert(c.unit);
                    done.push(c);
                    reused += usize::from(pass == 0);
                    continue;
                }
                if self.ctx.stop_requested() || pool.failed() {
                    continue;
                }
                let first_choice = self.ctx.claims.as_ref().is_none_or(|c| pass > 0 || c.is_own(&unit.key));
                if pass == 0 {
                    committed.remove_stale(std::iter::once(unit.index))?;
                }
                if !first_choice || not_before.get(&unit.index).is_some_and(|t| *t > now_ms()) {
                    waiting.insert(unit.index);
                } else if let Some(retry_at) = self.start(&mut pool, unit.clone(), committed).await? {
                    not_before.insert(unit.index, retry_at);
                    waiting.insert(unit.index);
                }
            }
            if index == 0 {
                // An empty view still gives the node a (empty) part, so it has a schema.
                let unit = Unit { index: 0, key: "empty".to_string(), rows: 0, work: Work::Empty };
                index = 1;
                match committed.take(0, &unit.key) {
                    Some(c) => done.push(c),
                    None => {
                        if pass == 0 {
                            committed.remove_stale(std::iter::once(0))?;
                        }
                        if self.start(&mut pool, unit, committed).await?.is_some() {
                            waiting.insert(0);
                        }
                    }
                }
            }
            if pass == 0 && self.ctx.claims.is_some() {
                self.store.set_units(index)?;
            }
            units = index;
            let (commits, retry) = pool.finish(self).await?;
            done.extend(commits);
            waiting.extend(retry.iter().map(|u| u.index));
            done_units.extend(done.iter().map(|c| c.unit));
            waiting.retain(|u| !done_units.contains(u) && !committed.elsewhere.contains(u));
            if waiting.is_empty() || self.ctx.stop_requested() {
                break;
            }
            // Units left after the first pass are others' first choices: look at once; after
            // that, wait for their holders between passes.
            let poll = self.ctx.claims.as_ref().map_or(Duration::ZERO, |c| c.poll_interval());
            if pass > 0 {
                let gang_ended = || committed.gang_ended.swap(false, Ordering::Relaxed);
                sleep_unless(&|| self.ctx.stop_requested() || gang_ended(), poll).await;
                if self.ctx.stop_requested() {
                    break;
                }
            }
            committed.refresh(&waiting)?;
        }
        let commits = self.complete(done, &committed.elsewhere, units)?;
        Ok(Ran { commits, reused, watching: None })
    }

    /// Joins the gangs other workers lead at this node's units, one after the other, until the
    /// node is done here (`node_done`) or the run stops. A gang this worker cannot reach (its
    /// leader died; its record is stale) is tried again each time its record is looked at.
    async fn follow_gangs(&self, units: &GangUnits, node_done: &Arc<AtomicBool>, gang_ended: &AtomicBool) {
        let Some(claims) = self.ctx.claims.as_deref() else { return };
        let stop = || node_done.load(Ordering::Relaxed) || self.ctx.stop_requested();
        let mut last_warning = String::new();
        // Each look lists the node's leases (a request on object storage): as often as a
        // waiting worker polls, not faster than FOLLOW_POLL.
        let poll = claims.poll_interval().max(FOLLOW_POLL);
        while !stop() {
            let pause = match self.follow_one(claims, units, node_done, &stop).await {
                Ok(Some(unit)) => {
                    // The leader commits right after it ends the gang: wait for that (briefly),
                    // then have the node look at once.
                    let committed = || self.store.committed_among(&[unit]).is_ok_and(|c| c.contains(&unit));
                    let waited = Instant::now();
                    while !committed() && waited.elapsed() < COMMIT_AFTER_GANG && !stop() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    gang_ended.store(true, Ordering::Relaxed);
                    poll
                }
                Ok(None) => poll,
                Err(e) => {
                    let warning = format!("node `{}`: this worker left a gang: {e}", self.name());
                    if warning != last_warning {
                        self.ctx.observer.warn(&warning);
                        last_warning = warning;
                    }
                    FOLLOW_BACKOFF
                }
            };
            sleep_unless(&stop, pause).await;
        }
    }

    /// Follows the first gang it can join, to its end: its unit, or `None` when there was none.
    async fn follow_one(
        &self,
        claims: &super::Claims,
        units: &GangUnits,
        node_done: &Arc<AtomicBool>,
        stop: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Option<usize>> {
        let (leases, fp) = (claims.leases().clone(), self.fingerprint().to_string());
        let records = tokio::task::spawn_blocking(move || leases.gangs(&fp))
            .await
            .map_err(|e| Error::Internal(format!("reading gangs panicked: {e}")))??;
        for record in records.into_iter().filter(|r| gang::joinable(r, &claims.id)) {
            // A worker leading a unit of the node follows no gang of it: its training holds the
            // node's models.
            if stop()
                || self.ctx.leading[self.i].load(Ordering::Relaxed) > 0
                || self.store.committed_among(&[record.unit])?.contains(&record.unit)
            {
                continue;
            }
            let Some(unit) = units.unit(record.unit).await? else { continue };
            let runner = self.runner.get().await?;
            let (fp, id, key, address) = (self.fingerprint().to_string(), claims.id.clone(), unit.key.clone(), record.address.clone());
            let flag = self.ctx.interrupt.stop_flag();
            let done = Arc::clone(node_done);
            let stop_following: Box<dyn Fn() -> bool + Send + Sync> =
                Box::new(move || flag.load(Ordering::Relaxed) || done.load(Ordering::Relaxed));
            let joined = tokio::task::spawn_blocking(move || gang::join(&record, &fp, &key, &id, stop_following))
                .await
                .map_err(|e| Error::Internal(format!("joining a gang panicked: {e}")))?;
            let follower = match joined {
                Ok(follower) => follower,
                // A leader that died leaves its record until the next one rewrites it; one
                // alive but unreachable (a firewall, a host name that does not resolve here)
                // is worth saying.
                Err(e) => {
                    return Err(Error::Execution(format!(
                        "cannot reach the gang's leader at {address}: {e} (see {} and {})",
                        gang::HOST_ENV,
                        gang::PORT_ENV
                    )));
                }
            };
            let exec = ExecContext::new(self.ctx.dag.seed, unit.index, self.ctx.interrupt.stop_flag()).with_gang(Arc::new(follower));
            // A follower's rows are the leader's to commit.
            let index = unit.index;
            drop(runner.run(unit, exec).await?);
            return Ok(Some(index));
        }
        Ok(None)
    }

    /// The commits in unit order, or why the node is not complete.
    fn complete(&self, mut commits: Vec<Commit>, elsewhere: &UnitSet, units: usize) -> Result<Vec<Commit>> {
        commits.sort_by_key(|c| c.unit);
        commits.dedup_by_key(|c| c.unit);
        let found = commits.len() + elsewhere.iter().filter(|u| commits.binary_search_by_key(u, |c| c.unit).is_err()).count();
        if found < units {
            if self.ctx.stop_requested() {
                return Err(Error::Interrupted(format!("{found} of {units} units committed")));
            }
            return Err(Error::Internal(format!("node `{}`: {} of {units} units have no commit", self.name(), units - found)));
        }
        Ok(commits)
    }

    /// The task that runs `unit` under `lease` for the unit driver.
    fn unit_task(&self, unit: Unit, lease: Option<Lease>) -> UnitFuture<Commit> {
        let ctx = Arc::clone(self.ctx);
        let (i, store, digest, runner) = (self.i, self.store.clone(), self.input_digest.to_string(), self.runner.clone());
        Box::pin(async move {
            let run = NodeRun { ctx: &ctx, i, store: &store, input_digest: &digest, runner: &runner };
            match run.run_unit(unit, lease).await? {
                UnitDone::Committed(commit) => run.fail_fast(&commit).map(|()| UnitEnd::Committed(commit)),
                UnitDone::Retry(_) => Ok(UnitEnd::Retry),
            }
        })
    }

    /// The unit's commit, remembered for this worker's commit summary when its attempt won.
    fn settle(&self, committed: crate::workspace::Committed) -> Commit {
        match &self.ctx.claims {
            Some(claims) => claims.settle(self.fingerprint(), committed),
            None => committed.into_commit(),
        }
    }

    /// With `--fail-fast`, a committed unit with failed rows stops the run.
    fn fail_fast(&self, commit: &Commit) -> Result<()> {
        if !self.ctx.fail_fast || commit.errors.is_none() {
            return Ok(());
        }
        self.ctx.interrupt.request_stop();
        let name = self.name();
        Err(Error::Execution(format!(
            "node `{name}`: a row failed and --fail-fast is set; see `unoflow sql \"SELECT * FROM errors.{name}\"`"
        )))
    }

    /// Runs one unit and commits it. A worker's failed attempt is recorded and the unit left
    /// for another attempt, until it failed `max_attempts` times: then its rows are committed
    /// as failed rows, so the node completes. The caller keeps the lease alive meanwhile.
    async fn run_unit(&self, unit: Unit, lease: Option<Lease>) -> Result<UnitDone> {
        let claims = self.ctx.claims.as_ref().zip(lease);
        let attempt = self.store.attempt(unit.index);
        let result = self.attempt_unit(&attempt, unit.clone()).await;
        let Some((claims, lease)) = claims else { return result.map(UnitDone::Committed) };
        match result {
            Ok(commit) => {
                claims.unit_done();
                Ok(UnitDone::Committed(commit))
            }
            Err(e @ Error::Interrupted(_)) => Err(e),
            Err(e) => {
                let message = e.to_string();
                self.ctx.observer.warn(&format!("node `{}`: unit {} failed: {message}", self.name(), unit.index));
                if claims.failed(self.fingerprint(), unit.index, attempt.id(), &message).await? {
                    let commit = self.commit_failed(&unit, &message).await?;
                    return Ok(UnitDone::Committed(commit));
                }
                claims.release(lease).await?;
                Ok(UnitDone::Retry(unit))
            }
        }
    }

    async fn attempt_unit(&self, attempt: &Attempt, unit: Unit) -> Result<Commit> {
        let started = Instant::now();
        let runner = self.runner.get().await?;
        let exec = ExecContext::new(self.ctx.dag.seed, unit.index, self.ctx.interrupt.stop_flag());
        let key = unit.key.clone();
        let index = unit.index;
        let leader = match &self.ctx.claims {
            Some(claims) if self.ctx.node(self.i).op.data_parallel() => {
                let (leases, fp, id, world) =
                    (claims.leases().clone(), self.fingerprint().to_string(), claims.id.clone(), claims.opts.world);
                let unit_key = key.clone();
                let leader = tokio::task::spawn_blocking(move || gang::lead(&leases, &fp, index, &unit_key, &id, world - 1))
                    .await
                    .map_err(|e| Error::Internal(format!("starting a gang panicked: {e}")))??;
                Some((claims, leader))
            }
            _ => None,
        };
        let exec = match &leader {
            Some((_, l)) => exec.with_gang(Arc::clone(l) as Arc<dyn unoflow_api::gang::Gang>),
            None => exec,
        };
        self.ctx.leading[self.i].fetch_add(1, Ordering::Relaxed);
        let output = runner.run(unit, exec).await;
        self.ctx.leading[self.i].fetch_sub(1, Ordering::Relaxed);
        if let Some((claims, leader)) = leader {
            self.ctx.gang_took(self.i, leader.spans());
            let failure = output.as_ref().err().map(|e| e.to_string());
            let (leases, fp, id) = (claims.leases().clone(), self.fingerprint().to_string(), claims.id.clone());
            // Telling the peers and removing the rendezvous wait on the network and the store.
            let _ = tokio::task::spawn_blocking(move || {
                leader.close(failure.as_deref());
                leases.remove_gang(&fp, index, &id)
            })
            .await;
        }
        let schema = Arc::clone(&self.ctx.node(self.i).schema);
        let written = match output {
            Ok(output) => write_output(self.ctx, self.name(), attempt, output, schema).await,
            Err(e) => Err(e),
        };
        // Files the operator keeps beside its rows (checkpoints) reach the store before the
        // commit that names them.
        let written = written.and_then(|w| self.ctx.ws.save_artifacts(self.fingerprint()).map(|()| w));
        match written {
            Ok((rows, errors)) => {
                let record = attempt.record(&key, self.input_digest, rows, errors, started.elapsed().as_secs_f64());
                Ok(self.settle(self.store.commit(attempt, record)?))
            }
            Err(e) => {
                attempt.discard();
                Err(e)
            }
        }
    }

    /// Commits a unit that failed on every attempt: no rows, and one failed row per row of the
    /// unit (or one for the unit, when its rows are not known before it runs).
    async fn commit_failed(&self, unit: &Unit, message: &str) -> Result<Commit> {
        let message = format!("failed on every attempt; the last: {message}");
        let ids: Vec<String> = match &unit.work {
            Work::Rows(chunk) => chunk
                .column_by_name(ROW_ID)
                .and_then(|c| c.as_string_opt::<i32>())
                .map(|ids| ids.iter().map(|id| id.unwrap_or_default().to_string()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let ids = if ids.is_empty() { vec![format!("unit {} ({})", unit.index, unit.key)] } else { ids };
        let errors = ids.into_iter().map(|row_id| RowError { row_id, message: message.clone() }).collect();
        let attempt = self.store.attempt(unit.index);
        let schema = Arc::clone(&self.ctx.node(self.i).schema);
        let empty = attempt.clone();
        let part = tokio::task::spawn_blocking(move || {
            let mut writer = empty.part_writer(0, Arc::clone(&schema))?;
            writer.write(&RecordBatch::new_empty(schema))?;
            writer.finish()
        })
        .await
        .map_err(|e| Error::Internal(format!("writing a failed unit panicked: {e}")))??;
        let errors = write_errors(&attempt, errors).await?;
        let record = attempt.record(&unit.key, self.input_digest, vec![part], Some(errors), 0.0);
        Ok(self.settle(self.store.commit(&attempt, record)?))
    }
}

/// The shortest pause between a waiting worker's looks for a gang to join.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How long a follower waits for the leader's commit after the gang ended.
const COMMIT_AFTER_GANG: Duration = Duration::from_secs(30);
/// How long it waits after a gang refused it or was left.
const FOLLOW_BACKOFF: Duration = Duration::from_secs(2);

/// Where a follower finds the input of a unit it helps with.
enum GangUnits {
    Listed(BTreeMap<usize, Unit>),
    Chunks { source: NodeData, rows_per_unit: usize },
}

impl GangUnits {
    fn of(plan: &UnitPlan) -> Self {
        match plan {
            UnitPlan::Listed(units) => Self::Listed(units.iter().map(|u| (u.index, u.clone())).collect()),
            UnitPlan::Chunks { source, rows_per_unit } => Self::Chunks { source: source.clone(), rows_per_unit: *rows_per_unit },
        }
    }

    /// Unit `index` (a view's rows streamed up to its chunk).
    async fn unit(&self, index: usize) -> Result<Option<Unit>> {
        match self {
            Self::Listed(units) => Ok(units.get(&index).cloned()),
            Self::Chunks { source, rows_per_unit } => {
                let mut chunks = Chunks::open(source, *rows_per_unit).await?;
                let mut at = 0;
                while let Some(chunk) = chunks.next().await? {
                    if at == index {
                        let unit = Unit { index, key: chunk_key(&chunk)?, rows: chunk.num_rows() as u64, work: Work::Rows(chunk) };
                        return Ok(Some(unit));
                    }
                    at += 1;
                }
                Ok(None)
            }
        }
    }
}

/// A view's rows cut into chunks of `rows_per_unit` as they stream.
struct Chunks {
    stream: datafusion::physical_plan::SendableRecordBatchStream,
    schema: SchemaRef,
    rows_per_unit: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    finished: bool,
}

impl Chunks {
    async fn open(source: &NodeData, rows_per_unit: usize) -> Result<Self> {
        let (schema, stream) = query::node_rows(source).await?;
        Ok(Self { stream, schema, rows_per_unit, pending: Vec::new(), pending_rows: 0, finished: false })
    }

    /// The next chunk: `rows_per_unit` rows, fewer for the last one.
    async fn next(&mut self) -> Result<Option<RecordBatch>> {
        while !self.finished && self.pending_rows < self.rows_per_unit {
            match self.stream.next().await.transpose()? {
                Some(batch) => {
                    self.pending_rows += batch.num_rows();
                    self.pending.push(query::conform(batch, &self.schema)?);
                }
                None => self.finished = true,
            }
        }
        if self.pending_rows == 0 {
            return Ok(None);
        }
        // One batch pending (a small view, or the last of a stream) needs no copy.
        let all = match self.pending.as_slice() {
            [one] => one.clone(),
            _ => concat_batches(&self.schema, &self.pending)?,
        };
        let take = self.rows_per_unit.min(all.num_rows());
        let rest = all.slice(take, all.num_rows() - take);
        self.pending = if rest.num_rows() > 0 { vec![rest] } else { Vec::new() };
        self.pending_rows -= take;
        Ok(Some(all.slice(0, take)))
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
    tasks: JoinSet<Result<UnitDone>>,
    done: Vec<Commit>,
    retry: Vec<Unit>,
    error: Option<Error>,
}

impl UnitPool {
    fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Waits for a CPU permit (collecting finished units meanwhile), then starts `unit`.
    async fn admit(&mut self, run: &NodeRun<'_>, unit: Unit, lease: Option<Lease>) -> Result<()> {
        let permit = Arc::clone(&run.ctx.cpu).acquire_owned().await.map_err(|_| Error::Internal("CPU pool closed".into()))?;
        while let Some(finished) = self.tasks.try_join_next() {
            self.collect(run, finished);
        }
        let ctx = Arc::clone(run.ctx);
        let (i, store, digest, runner) = (run.i, run.store.clone(), run.input_digest.to_string(), run.runner.clone());
        let renewal = run.ctx.claims.as_ref().zip(lease.clone()).map(|(c, l)| c.keep_alive(l));
        self.tasks.spawn(async move {
            let _held = (permit, renewal);
            let run = NodeRun { ctx: &ctx, i, store: &store, input_digest: &digest, runner: &runner };
            run.run_unit(unit, lease).await
        });
        Ok(())
    }

    fn collect(&mut self, run: &NodeRun<'_>, finished: std::result::Result<Result<UnitDone>, tokio::task::JoinError>) {
        match finished {
            Ok(Ok(UnitDone::Committed(commit))) => {
                if let Err(e) = run.fail_fast(&commit) {
                    self.error.get_or_insert(e);
                }
                self.done.push(commit);
            }
            Ok(Ok(UnitDone::Retry(unit))) => self.retry.push(unit),
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

    /// Waits for the units in flight: the commits, and the units to try again; the first
    /// error wins.
    async fn finish(mut self, run: &NodeRun<'_>) -> Result<(Vec<Commit>, Vec<Unit>)> {
        while let Some(finished) = self.tasks.join_next().await {
            self.collect(run, finished);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok((self.done, self.retry)),
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
                    env: unoflow_api::Environment { artifacts_dir: Some(ctx.ws.artifacts_dir(&ctx.fingerprints[i])?), ..ctx.env.clone() },
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
