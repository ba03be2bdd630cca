//! How a worker shares a node's units with the other workers on one workspace: leases say who
//! computes a unit now, commits say it is done (see `workspace::lease` and `workspace::node`).
//!
//! Each worker takes first the units whose key hashes to its rank (so workers started together
//! rarely compete for a unit), then any unit that nobody holds or whose holder stopped renewing.
//! A unit that fails on `max_attempts` attempts (by any workers) is committed as failed rows
//! instead of being retried for ever.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::workspace::store::Version;
use crate::workspace::{Commit, CommitSummary, Committed, Lease, LeaseOutcome, Leases, NodeStore, SummarizedCommit, WorkerBeat};

/// The name of a node's manifest lease: its holder writes the manifest, and watches for the
/// node's end (see `exec::queue`).
pub(super) const MANIFEST_LEASE: &str = "manifest";

/// Who this worker is among the workers of a workspace, and its lease settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This worker's rank, `0..world`.
    pub rank: usize,
    /// How many workers were started together (for the first choice of units).
    pub world: usize,
    /// How long a claim lasts without renewal; renewed every third of it.
    pub lease: Duration,
    /// Failed attempts at a unit after which its rows are committed as failed.
    pub max_attempts: usize,
    /// Run records of workers started by one command carry the same group.
    pub group: Option<String>,
}

/// The default lease: long enough that a renewal every 40 s survives a slow store, short
/// enough that a dead worker's units are taken over within a few minutes.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

impl Default for WorkerOptions {
    fn default() -> Self {
        Self { rank: 0, world: 1, lease: DEFAULT_LEASE, max_attempts: 3, group: None }
    }
}

/// What asking for a unit came to.
#[derive(Debug)]
pub enum Asked {
    /// This worker runs it, under this lease.
    Claimed(Lease),
    /// It was committed (by a worker whose lease was taken over).
    Committed,
    /// Another worker holds it; its lease may be taken over from this time (Unix ms) if it is
    /// not renewed.
    Held { retry_at_ms: i64 },
}

/// A worker's claims on the units of a workspace.
#[derive(Debug)]
pub struct Claims {
    leases: Leases,
    /// This worker's id: host, process and a random part.
    pub id: String,
    pub opts: WorkerOptions,
    units_done: AtomicU64,
    /// The commits this worker won, by node fingerprint, for its commit summaries.
    won: Mutex<BTreeMap<String, Won>>,
}

/// The commits a worker won at a node, and how many of them its summary names.
#[derive(Debug, Default)]
struct Won {
    summary: CommitSummary,
    written: usize,
}

impl Claims {
    pub fn new(leases: Leases, opts: WorkerOptions) -> Self {
        let salt = blake3::hash(format!("{:?}-{}", std::time::SystemTime::now(), std::process::id()).as_bytes()).to_hex();
        let id = format!("{}-{}-{}", crate::workspace::hostname(), std::process::id(), &salt[..6]);
        Self { leases, id, opts, units_done: AtomicU64::new(0), won: Mutex::default() }
    }

    /// Whether the unit with `key` is this worker's first choice.
    pub fn is_own(&self, key: &str) -> bool {
        first_choice(key, self.opts.world) == self.opts.rank
    }

    /// How often a worker waiting for units others hold looks again.
    pub fn poll_interval(&self) -> Duration {
        (self.opts.lease / 8).clamp(Duration::from_millis(100), Duration::from_secs(15))
    }

    /// Tries to claim unit `unit` of node `fp`.
    pub async fn claim(&self, fp: &str, unit: usize) -> Result<LeaseOutcome> {
        let (leases, fp, owner, lease) = (self.leases.clone(), fp.to_string(), self.id.clone(), self.opts.lease);
        blocking(move || leases.claim(&fp, unit, &owner, lease)).await
    }

    /// Asks for unit `unit` of node `fp`, whose commits are in `store`: claims it, unless
    /// another worker holds it or a worker that went quiet committed it before its lease was
    /// taken over.
    pub async fn ask(&self, fp: &str, unit: usize, store: &NodeStore) -> Result<Asked> {
        match self.claim(fp, unit).await? {
            // Its last holder may have committed it before going quiet.
            LeaseOutcome::Claimed(lease) if lease.taken_over && store.has_commit(unit)? => Ok(Asked::Committed),
            LeaseOutcome::Claimed(lease) => Ok(Asked::Claimed(lease)),
            LeaseOutcome::Held { expires_at_ms, .. } => Ok(Asked::Held { retry_at_ms: self.take_over_at(expires_at_ms) }),
        }
    }

    /// When a lease that expires at `expires_at_ms` (Unix ms) may be taken over if its holder
    /// does not renew it: past the clock margin.
    pub fn take_over_at(&self, expires_at_ms: i64) -> i64 {
        expires_at_ms + Leases::margin(self.opts.lease).as_millis() as i64
    }

    /// Tries to claim the node-wide task `name` of node `fp` (writing its manifest).
    pub async fn claim_named(&self, fp: &str, name: &str) -> Result<LeaseOutcome> {
        let (leases, fp, name, owner, lease) = (self.leases.clone(), fp.to_string(), name.to_string(), self.id.clone(), self.opts.lease);
        blocking(move || leases.claim_named(&fp, &name, &owner, lease)).await
    }

    /// Which of `units` of node `fp` other workers hold now (by a listing of the leases), each
    /// with when its lease may be taken over if it is not renewed (Unix ms).
    pub async fn held_among(&self, fp: &str, units: &[usize]) -> Result<BTreeMap<usize, i64>> {
        let (leases, fp, units) = (self.leases.clone(), fp.to_string(), units.to_vec());
        let written = blocking(move || leases.written_among(&fp, &units)).await?;
        let hold = (self.opts.lease + Leases::margin(self.opts.lease)).as_millis() as i64;
        Ok(written.into_iter().map(|(unit, at)| (unit, at + hold)).collect())
    }

    /// Keeps `lease` alive while the returned guard lives.
    pub fn keep_alive(&self, lease: Lease) -> Renewal {
        let (leases, duration) = (self.leases.clone(), self.opts.lease);
        let task = tokio::spawn(async move {
            let mut lease = lease;
            loop {
                tokio::time::sleep(duration / 3).await;
                let leases = leases.clone();
                let renewed = tokio::task::spawn_blocking(move || {
                    let ok = leases.renew(&mut lease, duration);
                    (lease, ok)
                })
                .await;
                match renewed {
                    Ok((back, Ok(true))) => lease = back,
                    // Taken over (this worker paused past its lease): the commit decides who
                    // wins; renewing further would only fight the new holder.
                    Ok((_, Ok(false))) | Err(_) => break,
                    // A store error: try again next time, while the lease lasts.
                    Ok((back, Err(_))) => lease = back,
                }
            }
        });
        Renewal { task }
    }

    /// Records a failed attempt at a unit; `true` when it has failed often enough to be
    /// committed as failed rows.
    pub async fn failed(&self, fp: &str, unit: usize, attempt: &str, message: &str) -> Result<bool> {
        let (leases, fp, attempt, message) = (self.leases.clone(), fp.to_string(), attempt.to_string(), message.to_string());
        let max = self.opts.max_attempts.max(1);
        let failures = blocking(move || leases.record_failure(&fp, unit, &attempt, &message)).await?;
        Ok(failures >= max)
    }

    /// Gives up a lease (the unit failed and another attempt may take it at once).
    pub async fn release(&self, lease: Lease) -> Result<()> {
        let leases = self.leases.clone();
        blocking(move || leases.release(&lease)).await
    }

    /// Removes the leases of a complete node.
    pub async fn clear(&self, fp: &str) -> Result<()> {
        let (leases, fp) = (self.leases.clone(), fp.to_string());
        blocking(move || leases.clear(&fp)).await
    }

    /// The commit of a unit of node `fp`, remembered for this worker's commit summary when this
    /// worker's attempt won it.
    pub fn settle(&self, fp: &str, committed: Committed) -> Commit {
        if let Committed::Won(commit, version) = &committed {
            self.remember(fp, commit, version);
        }
        committed.into_commit()
    }

    fn remember(&self, fp: &str, commit: &Commit, version: &Version) {
        let Some(e_tag) = version.e_tag() else { return };
        if let Ok(mut won) = self.won.lock() {
            won.entry(fp.to_string())
                .or_default()
                .summary
                .commits
                .push(SummarizedCommit { e_tag: e_tag.to_string(), commit: commit.clone() });
        }
    }

    /// Writes this worker's summary of the commits it won at the node of `store`, if it won
    /// any since the last one (one request).
    pub async fn write_summary(&self, store: &NodeStore) -> Result<()> {
        let summary = {
            let mut won = self.won.lock().map_err(|_| Error::Internal("the commit summaries' lock is poisoned".into()))?;
            match won.get_mut(store.fingerprint()) {
                Some(w) if w.summary.commits.len() > w.written && store.keeps_summaries() => {
                    w.written = w.summary.commits.len();
                    Some(w.summary.clone())
                }
                _ => None,
            }
        };
        let Some(summary) = summary else { return Ok(()) };
        let (store, id) = (store.clone(), self.id.clone());
        blocking(move || store.write_summary(&id, &summary)).await
    }

    /// Forgets the commits this worker won at node `fp` (it summarises them no more).
    pub fn forget_wins(&self, fp: &str) {
        if let Ok(mut won) = self.won.lock() {
            won.remove(fp);
        }
    }

    pub fn unit_done(&self) {
        self.units_done.fetch_add(1, Ordering::Relaxed);
    }

    /// How often this worker records its heartbeat: half a lease, at most a minute. Readers
    /// (`unoflow status`, the review page) count a worker live for minutes after its last beat,
    /// and the leases, not the beats, decide when its units are taken over: more often would
    /// only cost requests (a beat every third of a lease was a third of a request per unit).
    pub fn beat_interval(&self) -> Duration {
        (self.opts.lease / 2).min(Duration::from_secs(60))
    }

    /// Writes this worker's heartbeat every [`Self::beat_interval`] until the returned guard
    /// drops; `finish` writes the last one.
    pub fn heartbeat(self: &Arc<Self>, device: String) -> Renewal {
        let claims = Arc::clone(self);
        let started_at_ms = crate::workspace::now_ms();
        let task = tokio::spawn(async move {
            loop {
                let beat = claims.beat(&device, started_at_ms, "working");
                let leases = claims.leases.clone();
                let _ = tokio::task::spawn_blocking(move || leases.beat(&beat)).await;
                tokio::time::sleep(claims.beat_interval()).await;
            }
        });
        Renewal { task }
    }

    /// Records that this worker has stopped.
    pub async fn finish(&self, device: &str) {
        let beat = self.beat(device, 0, "done");
        let leases = self.leases.clone();
        let _ = tokio::task::spawn_blocking(move || leases.beat(&beat)).await;
    }

    fn beat(&self, device: &str, started_at_ms: i64, state: &str) -> WorkerBeat {
        WorkerBeat {
            id: self.id.clone(),
            rank: self.opts.rank,
            world: self.opts.world,
            host: crate::workspace::hostname(),
            pid: std::process::id(),
            device: device.to_string(),
            started_at_ms,
            beat_at_ms: crate::workspace::now_ms(),
            units_done: self.units_done.load(Ordering::Relaxed),
            state: state.into(),
        }
    }
}

/// The rank of the worker (of `world`) whose first choice the unit with `key` is.
pub fn first_choice(key: &str, world: usize) -> usize {
    let hash = blake3::hash(key.as_bytes());
    let n = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default());
    (n % world.max(1) as u64) as usize
}

/// A background task (lease renewal, heartbeat) that stops when this is dropped.
#[derive(Debug)]
pub struct Renewal {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a store call (synchronous, it may wait on the network) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("a workspace request panicked: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{BEAT_COUNTS_FOR, Location, Workspace};

    fn claims(lease: Duration) -> Claims {
        let ws = Workspace::create(&Location::parse("memory://claims-test/ws", std::path::Path::new("."))).unwrap();
        Claims::new(ws.leases(), WorkerOptions { lease, ..WorkerOptions::default() })
    }

    #[test]
    fn heartbeats_come_every_half_lease_at_most_a_minute_apart_well_within_what_counts_a_worker_live() {
        assert_eq!(claims(Duration::from_secs(10)).beat_interval(), Duration::from_secs(5));
        assert_eq!(claims(DEFAULT_LEASE).beat_interval(), (DEFAULT_LEASE / 2).min(Duration::from_secs(60)));
        for lease_s in [1, 30, 120, 600, 3_600, 86_400] {
            let beat = claims(Duration::from_secs(lease_s)).beat_interval();
            assert!(beat <= Duration::from_secs(60), "lease {lease_s} s: a beat every {beat:?}");
            assert!(beat * 5 <= BEAT_COUNTS_FOR, "lease {lease_s} s: a worker two beats late would count as gone");
        }
    }
}
