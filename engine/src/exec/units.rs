//! Running a node's units: as many at once as there are permits, in the order a [`UnitQueue`]
//! gives, each claimed first when workers share the workspace. A worker never waits for its
//! other units to end before it asks for the next one: a unit starts as soon as a permit is
//! free, so the slowest unit of a batch does not hold the others' slots idle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::claims::{Asked, Claims, MANIFEST_LEASE, Renewal};
use super::queue::{Next, UnitQueue};
use super::unit_set::UnitSet;
use crate::error::{Error, Result};
use crate::workspace::{Lease, LeaseOutcome, NodeStore, WatchReport, now_ms};

/// How a unit's task ended.
#[derive(Debug)]
pub enum UnitEnd<T> {
    /// Committed (by this attempt, or found committed).
    Committed(T),
    /// This attempt failed and the unit is left for another one.
    Retry,
}

/// A unit's task: given the unit and the lease it runs under (renewed meanwhile by the driver).
pub type UnitFuture<T> = BoxFuture<'static, Result<UnitEnd<T>>>;

/// What a node's units came to.
#[derive(Debug)]
pub struct Driven<T> {
    /// What this worker's committed units returned.
    pub done: Vec<T>,
    /// The units found committed by other workers.
    pub elsewhere: UnitSet,
    /// The node's manifest lease, when this worker became the node's watcher (renewed while
    /// this lives): it writes the manifest (see [`super::ManifestWriter`]).
    pub watching: Option<Renewal>,
}

/// Runs the units of one node of one worker (or of a run alone, without claims).
pub struct UnitDriver<'a> {
    pub claims: Option<&'a Claims>,
    /// The node's fingerprint (its leases are under it).
    pub fingerprint: &'a str,
    pub store: &'a NodeStore,
    /// One per unit running at once (shared with other nodes of the run).
    pub permits: Arc<Semaphore>,
    /// Whether to stop asking for units (the running ones end first).
    pub stop: &'a (dyn Fn() -> bool + Send + Sync),
}

impl std::fmt::Debug for UnitDriver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitDriver").field("fingerprint", &self.fingerprint).field("claims", &self.claims).finish_non_exhaustive()
    }
}

/// From how many units a check lists their leases too (fewer are asked for).
const LEASES_LISTED_FROM: usize = 8;

/// The longest sleep before the driver looks at `stop` again.
const STOP_CHECK: Duration = Duration::from_millis(100);

impl UnitDriver<'_> {
    /// Asks for the units `queue` gives until it is empty (or `stop`), running each claimed
    /// one with `start`. The first error stops the asking; the units running then end first.
    pub async fn run<T: Send + 'static>(
        &self,
        mut queue: UnitQueue,
        mut start: impl FnMut(usize, Option<Lease>) -> UnitFuture<T>,
    ) -> Result<Driven<T>> {
        let mut running: JoinSet<(usize, Result<UnitEnd<T>>)> = JoinSet::new();
        let mut out = Driven { done: Vec::new(), elsewhere: UnitSet::new(), watching: None };
        let mut watching = Watching::default();
        let mut error: Option<Error> = None;
        let mut permit: Option<OwnedSemaphorePermit> = None;
        while error.is_none() && !(self.stop)() {
            let held = match permit.take() {
                Some(p) => p,
                None => {
                    tokio::select! {
                        biased;
                        Some(ended) = running.join_next(), if !running.is_empty() => {
                            collect(ended, &mut queue, &mut out, &mut error);
                            continue;
                        }
                        p = Arc::clone(&self.permits).acquire_owned() => p.map_err(|_| Error::Internal("the unit permits closed".into()))?,
                    }
                }
            };
            let now = now_ms();
            match queue.next(now) {
                Next::Ask(unit) => match self.ask(unit, &mut queue, &mut out, now).await {
                    Ok(Some(lease)) => {
                        let renewal = self.claims.zip(lease.clone()).map(|(c, l)| c.keep_alive(l));
                        let task = start(unit, lease);
                        running.spawn(async move {
                            let ended = task.await;
                            drop((renewal, held));
                            (unit, ended)
                        });
                    }
                    Ok(None) => permit = Some(held),
                    Err(e) => error = Some(e),
                },
                Next::Check(units) => match self.look_up(&units, true, &mut queue, &mut out, &mut watching).await {
                    Ok(()) => permit = Some(held),
                    Err(e) => error = Some(e),
                },
                Next::Recheck(units) => match self.look_up(&units, false, &mut queue, &mut out, &mut watching).await {
                    Ok(()) => permit = Some(held),
                    Err(e) => error = Some(e),
                },
                Next::Watch => match self.watch(&mut queue, &mut out, &mut watching, now).await {
                    Ok(()) => permit = Some(held),
                    Err(e) => error = Some(e),
                },
                Next::Wait(until) => {
                    drop(held);
                    self.summarize(&out).await;
                    let nap = Duration::from_millis(until.saturating_sub(now).max(1) as u64).min(STOP_CHECK);
                    tokio::select! {
                        Some(ended) = running.join_next(), if !running.is_empty() => collect(ended, &mut queue, &mut out, &mut error),
                        () = tokio::time::sleep(nap) => {}
                    }
                }
                Next::Empty => {
                    drop(held);
                    self.summarize(&out).await;
                    match running.join_next().await {
                        Some(ended) => collect(ended, &mut queue, &mut out, &mut error),
                        None => break,
                    }
                }
            }
        }
        while let Some(ended) = running.join_next().await {
            collect(ended, &mut queue, &mut out, &mut error);
        }
        // This worker asks for no more of the node's units.
        if let Some(claims) = self.claims {
            claims.forget_wins(self.fingerprint);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Tells `queue` which of `units` are committed, and, with `leases` when many are not,
    /// which others hold (one listing of the leases, so held units are not asked for one by one).
    async fn look_up<T>(
        &self,
        units: &[usize],
        leases: bool,
        queue: &mut UnitQueue,
        out: &mut Driven<T>,
        watching: &mut Watching,
    ) -> Result<()> {
        let committed = self.store.committed_among(units)?;
        let pending: Vec<usize> = units.iter().copied().filter(|u| !committed.contains(u)).collect();
        let others_hold = match self.claims {
            Some(claims) if leases && pending.len() > LEASES_LISTED_FROM => claims.held_among(self.fingerprint, &pending).await?,
            _ => BTreeMap::new(),
        };
        out.elsewhere.extend(committed.iter().copied());
        queue.checked(units, &committed, &others_hold, now_ms());
        if let Some(claims) = self.claims.filter(|_| queue.is_watcher()) {
            let (rank, world, round) = (claims.opts.rank, claims.opts.world, watching.written);
            let share = |units: &[usize]| WatchReport::share_of(units, round, rank, world).collect();
            let unclaimed = queue.offer(OFFERED_PER_WORKER * world.max(1), share);
            watching.report(self.store, unclaimed)?;
        }
        Ok(())
    }

    /// Brings this worker's summary of the commits it won up to date, when it has nothing to
    /// ask for now: the node's watcher reads it instead of a commit record per unit, and may
    /// see the node complete any moment. The watcher writes none (its own commits reach the
    /// manifest directly). A summary only saves requests: if it cannot be written, the
    /// records are read instead.
    async fn summarize<T>(&self, out: &Driven<T>) {
        if let Some(claims) = self.claims.filter(|_| out.watching.is_none()) {
            let _ = claims.write_summary(self.store).await;
        }
    }

    /// Becomes the node's watcher if nobody is (claims its manifest lease), else reads the
    /// watcher's report (one request): takes this worker's share of the units it offers, or
    /// looks whether the node is complete.
    async fn watch<T>(&self, queue: &mut UnitQueue, out: &mut Driven<T>, watching: &mut Watching, now: i64) -> Result<()> {
        let Some(claims) = self.claims else { return Ok(()) };
        if out.watching.is_none() && now >= watching.claim_at {
            match claims.claim_named(self.fingerprint, MANIFEST_LEASE).await? {
                // A late worker may find the lease gone with the node's (complete) leases.
                LeaseOutcome::Claimed(_) if self.store.has_manifest()? => {
                    out.elsewhere.extend(queue.complete());
                    return Ok(());
                }
                LeaseOutcome::Claimed(lease) => {
                    out.watching = Some(claims.keep_alive(lease));
                    queue.watch();
                    return Ok(());
                }
                LeaseOutcome::Held { expires_at_ms, .. } => {
                    watching.claim_at = claims.take_over_at(expires_at_ms);
                }
            }
        }
        // The watcher's report, while it comes anew each poll; else (the node complete, the
        // watcher gone or not there yet) whether the manifest is written.
        match watching.new_report(self.store)? {
            Some(report) if !report.complete => queue.take_offered(report.share(claims.opts.rank, claims.opts.world)),
            _ if self.store.has_manifest()? => out.elsewhere.extend(queue.complete()),
            _ => {}
        }
        Ok(())
    }

    /// Claims `unit` when workers share the workspace: its lease, or `None` when another worker
    /// holds it or it turned out committed. Alone, every unit is this run's (`Some(None)`).
    async fn ask<T>(&self, unit: usize, queue: &mut UnitQueue, out: &mut Driven<T>, now: i64) -> Result<Option<Option<Lease>>> {
        let Some(claims) = self.claims else { return Ok(Some(None)) };
        match claims.ask(self.fingerprint, unit, self.store).await? {
            Asked::Claimed(lease) => {
                queue.claimed();
                Ok(Some(Some(lease)))
            }
            Asked::Committed => {
                queue.claimed();
                out.elsewhere.insert(unit);
                Ok(None)
            }
            Asked::Held { retry_at_ms } => {
                queue.held(unit, retry_at_ms, now);
                Ok(None)
            }
        }
    }
}

/// How many unclaimed units the watcher offers per worker at most (the rest wait for its
/// next look).
const OFFERED_PER_WORKER: usize = 2;

/// A worker's part in watching a node: when to ask for the manifest lease again (its holder may
/// have stopped renewing it), and the watch reports — how many it wrote as the watcher, or the
/// round of the last one it read.
#[derive(Debug, Default)]
struct Watching {
    claim_at: i64,
    written: u64,
    seen_round: Option<u64>,
}

impl Watching {
    /// Writes the watcher's report of `unclaimed` units (every poll, also when nothing is
    /// unclaimed: a report that comes anew tells the others the watcher is at work).
    fn report(&mut self, store: &NodeStore, unclaimed: Vec<usize>) -> Result<()> {
        store.report_watch(&WatchReport { round: self.written, unclaimed, complete: false })?;
        self.written += 1;
        Ok(())
    }

    /// The watcher's report, if it wrote a new one since this worker looked (one request).
    fn new_report(&mut self, store: &NodeStore) -> Result<Option<WatchReport>> {
        let report = store.watch_report()?.filter(|r| self.seen_round != Some(r.round));
        if let Some(report) = &report {
            self.seen_round = Some(report.round);
        }
        Ok(report)
    }
}

/// Sleeps `wait`, looking at `stop` meanwhile; `false` if it said to stop.
pub(super) async fn sleep_unless(stop: &(dyn Fn() -> bool + Send + Sync), wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        if stop() {
            return false;
        }
        tokio::time::sleep(STOP_CHECK.min(until - tokio::time::Instant::now())).await;
    }
    !stop()
}

fn collect<T>(
    ended: std::result::Result<(usize, Result<UnitEnd<T>>), tokio::task::JoinError>,
    queue: &mut UnitQueue,
    out: &mut Driven<T>,
    error: &mut Option<Error>,
) {
    match ended {
        Ok((_, Ok(UnitEnd::Committed(done)))) => out.done.push(done),
        Ok((unit, Ok(UnitEnd::Retry))) => queue.retry(unit),
        Ok((_, Err(e))) => {
            error.get_or_insert(e);
        }
        Err(join) => {
            error.get_or_insert(Error::Internal(format!("a unit panicked: {join}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::exec::WorkerOptions;
    use crate::workspace::{Location, Workspace};

    /// Three workers drive the same twelve units over an in-memory bucket, one of them asking
    /// for units slowly: every unit is committed once, each worker ends knowing every unit
    /// committed (by itself, or found committed elsewhere), and each that did not watch the
    /// node left a summary of the commits it won (for the manifest's writer).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_sharing_units_commit_each_once_and_each_sees_them_all() {
        const UNITS: usize = 12;
        let ws = Workspace::create(&Location::parse("memory://driver-test/ws", std::path::Path::new(".")).unwrap()).unwrap();
        let store = ws.node("fp");
        let attempts = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for rank in 0..3 {
            let (ws, store, attempts) = (ws.clone(), store.clone(), Arc::clone(&attempts));
            workers.push(tokio::spawn(async move {
                let opts = WorkerOptions { rank, world: 3, lease: Duration::from_secs(2), ..WorkerOptions::default() };
                let claims = Arc::new(Claims::new(ws.leases(), opts));
                let first_choices = (0..UNITS).map(|u| (u, crate::exec::first_choice(&format!("k{u}"), 3) == rank));
                let queue = UnitQueue::shared(first_choices, UNITS, rank * UNITS / 3, 4, 4, 250);
                let stop = || false;
                let driver = UnitDriver {
                    claims: Some(&claims),
                    fingerprint: "fp",
                    store: &store,
                    permits: Arc::new(Semaphore::new(2)),
                    stop: &stop,
                };
                let pause = Duration::from_millis(if rank == 0 { 60 } else { 15 });
                driver
                    .run(queue, |unit, lease| {
                        assert!(lease.is_some(), "a shared unit runs under a lease");
                        let (store, attempts, claims) = (store.clone(), Arc::clone(&attempts), Arc::clone(&claims));
                        Box::pin(async move {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(pause).await;
                            let attempt = store.attempt(unit);
                            let commit = store.commit(&attempt, attempt.record(&format!("k{unit}"), "d", Vec::new(), None, 0.0))?;
                            Ok(UnitEnd::Committed(claims.settle("fp", commit).unit))
                        })
                    })
                    .await
                    .unwrap()
            }));
        }
        let (mut committed_by_workers, mut won, mut watchers) = (Vec::new(), Vec::new(), 0);
        for worker in workers {
            let driven = worker.await.unwrap();
            let mut seen: BTreeSet<usize> = driven.done.iter().copied().collect();
            seen.extend(driven.elsewhere.iter());
            assert_eq!(seen, (0..UNITS).collect(), "a worker ended without seeing every unit committed");
            watchers += usize::from(driven.watching.is_some());
            if driven.watching.is_none() && !driven.done.is_empty() {
                won.push(driven.done.iter().copied().collect::<BTreeSet<usize>>());
            }
            committed_by_workers.extend(driven.done);
        }
        assert!(watchers <= 1, "one watcher at most");
        let mut summarised: Vec<BTreeSet<usize>> = store
            .summary_keys()
            .unwrap()
            .iter()
            .map(|key| store.summary(key).unwrap().expect("a summary").commits.iter().map(|c| c.commit.unit).collect())
            .collect();
        summarised.sort();
        won.sort();
        assert_eq!(summarised, won, "each worker that did not watch summarised all it won, when it had nothing to ask for");
        committed_by_workers.sort_unstable();
        assert_eq!(committed_by_workers, (0..UNITS).collect::<Vec<_>>(), "each unit is committed by exactly one worker");
        assert_eq!(attempts.load(Ordering::Relaxed), UNITS, "no unit was run twice");
        assert_eq!(store.committed_units().unwrap().len(), UNITS);
    }
}
