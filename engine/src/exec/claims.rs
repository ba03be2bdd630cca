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

use super::RunObserver;
use crate::error::{Error, Result};
use crate::workspace::store::Version;
use crate::workspace::{ClockSkew, Commit, CommitSummary, Committed, Lease, LeaseOutcome, Leases, NodeStore, SummarizedCommit, WorkerBeat};

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
    /// When this worker started (Unix ms), for its heartbeats.
    started_at_ms: i64,
    /// Its heartbeats, written one at a time.
    beats: Mutex<Beats>,
}

/// What a worker's heartbeats carry from one to the next.
#[derive(Debug, Default)]
struct Beats {
    /// The last beat (`exited`) is written: no other may follow it, or a worker that exited
    /// would look live again.
    exited: bool,
    /// The clock skew measured at the last beat.
    skew: Option<ClockSkew>,
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
        let started_at_ms = crate::workspace::now_ms();
        Self { leases, id, opts, units_done: AtomicU64::new(0), won: Mutex::default(), started_at_ms, beats: Mutex::default() }
    }

    /// The workspace's leases (gangs write their rendezvous beside them).
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Whether the unit with `key` is this worker's first choice.
    pub fn is_own(&self, key: &str) -> bool {
        first_choice(key, self.opts.world) == self.opts.rank
    }

    /// How often a worker waiting for units others hold looks again: an eighth of the lease,
    /// at most the store's [`max_poll`](crate::workspace::store::Store::max_poll) — how soon a
    /// worker notices a commit or a node's end must not grow with the lease (at the default
    /// 120 s lease, polls of 15 s left 8 workers at 39 % of their ideal speed-up).
    pub fn poll_interval(&self) -> Duration {
        (self.opts.lease / 8).clamp(Duration::from_millis(100), self.leases.max_poll().max(Duration::from_millis(100)))
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
    /// (`unoflow status`, the review page) count a worker gone a few beats after its last one
    /// (see `WorkerBeat::gone_after`), and the leases, not the beats, decide when its units are
    /// taken over: more often would only cost requests (a beat every third of a lease was a
    /// third of a request per unit).
    pub fn beat_interval(&self) -> Duration {
        (self.opts.lease / 2).min(Duration::from_secs(60))
    }

    /// How far this host's clock may be from the store's: half the clock margin, so that the
    /// clocks of two workers within it differ by less than the margin, and neither takes over
    /// a lease the other still renews, nor waits past the margin for a dead one's.
    pub fn clock_bound(&self) -> Duration {
        Leases::margin(self.opts.lease) / 2
    }

    /// Starts this worker's heartbeats. The first one measures this host's clock against the
    /// store's: beyond [`Self::clock_bound`] the worker refuses to start (a usage error naming
    /// the skew and the fix), for lease expiries are written by the holder's clock. Then a beat
    /// every [`Self::beat_interval`] until the returned guard drops, each measuring the clock
    /// again and warning through `observer` when it drifted beyond the bound.
    pub async fn heartbeat(self: &Arc<Self>, device: String, observer: Arc<dyn RunObserver>) -> Result<Renewal> {
        let first = self.write_beat(&device, "working").await?;
        if let Some(skew) = first.filter(|s| s.exceeds(self.clock_bound())) {
            self.finish(&device).await;
            return Err(Error::Usage(self.skew_refused(&skew)));
        }
        let claims = Arc::clone(self);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(claims.beat_interval()).await;
                // A store error: the next beat tries again (readers allow for missed beats).
                if let Ok(Some(skew)) = claims.write_beat(&device, "working").await
                    && skew.exceeds(claims.clock_bound())
                {
                    observer.warn(&claims.skew_drifted(&skew));
                }
            }
        });
        Ok(Renewal { task })
    }

    /// Why a worker whose clock is `skew` from the store's does not start.
    fn skew_refused(&self, skew: &ClockSkew) -> String {
        format!(
            "{}, more than {:.1} s (half the clock margin of the {:.1} s lease): leases would be judged that much off \
             (a dead worker's units waited for, or a live one's taken over). Synchronise this host's clock with NTP \
             (chrony: `chronyc tracking`; systemd: `timedatectl`), or raise --lease-s to at least {:.0}",
            skew.describe(),
            self.clock_bound().as_secs_f64(),
            self.opts.lease.as_secs_f64(),
            Self::lease_for(skew).as_secs_f64().ceil()
        )
    }

    /// Why a worker's clock went wrong while it runs.
    fn skew_drifted(&self, skew: &ClockSkew) -> String {
        format!(
            "{}, more than {:.1} s (half the clock margin of the {:.1} s lease): synchronise this host's clock with NTP \
             (chrony, timedatectl); leases are judged that much off meanwhile",
            skew.describe(),
            self.clock_bound().as_secs_f64(),
            self.opts.lease.as_secs_f64()
        )
    }

    /// The shortest lease whose clock bound `skew` surely keeps within.
    fn lease_for(skew: &ClockSkew) -> Duration {
        // The bound is a quarter (the margin) of a half of the lease.
        Duration::from_millis((skew.offset_ms.unsigned_abs() + skew.uncertainty_ms.unsigned_abs()) * 8)
    }

    /// Records that this worker has stopped (whichever way): its last heartbeat, `exited`, after
    /// which readers count it gone at once.
    pub async fn finish(self: &Arc<Self>, device: &str) {
        let _ = self.write_beat(device, "exited").await;
    }

    /// Writes a heartbeat in `state`, unless the last one (`exited`) was written; a working beat
    /// measures the clock (its skew is returned and recorded in the next beat).
    async fn write_beat(self: &Arc<Self>, device: &str, state: &'static str) -> Result<Option<ClockSkew>> {
        let (claims, device) = (Arc::clone(self), device.to_string());
        blocking(move || {
            // Held while writing: the last beat cannot be overtaken by one started before it.
            let mut beats = claims.beats.lock().map_err(|_| Error::Internal("the heartbeats' lock is poisoned".into()))?;
            if beats.exited {
                return Ok(None);
            }
            let beat = claims.beat(&device, state, beats.skew);
            if state == "exited" {
                beats.exited = true;
                return claims.leases.beat(&beat).map(|()| None);
            }
            let skew = claims.leases.beat_and_measure(&beat)?;
            beats.skew = skew.or(beats.skew);
            Ok(skew)
        })
        .await
    }

    fn beat(&self, device: &str, state: &str, skew: Option<ClockSkew>) -> WorkerBeat {
        WorkerBeat {
            id: self.id.clone(),
            rank: self.opts.rank,
            world: self.opts.world,
            host: crate::workspace::hostname(),
            pid: std::process::id(),
            device: device.to_string(),
            started_at_ms: self.started_at_ms,
            beat_at_ms: crate::workspace::now_ms(),
            units_done: self.units_done.load(Ordering::Relaxed),
            state: state.into(),
            lease_ms: Some(u64::try_from(self.opts.lease.as_millis()).unwrap_or(u64::MAX)),
            beat_interval_ms: Some(u64::try_from(self.beat_interval().as_millis()).unwrap_or(u64::MAX)),
            clock_skew_ms: skew.map(|s| s.offset_ms),
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
    use crate::workspace::{Location, Workspace};

    fn claims(lease: Duration) -> Claims {
        let ws = Workspace::create(&Location::parse("memory://claims-test/ws", std::path::Path::new(".")).unwrap()).unwrap();
        Claims::new(ws.leases(), WorkerOptions { lease, ..WorkerOptions::default() })
    }

    #[test]
    fn heartbeats_come_every_half_lease_at_most_a_minute_apart_well_within_what_counts_a_worker_live() {
        assert_eq!(claims(Duration::from_secs(10)).beat_interval(), Duration::from_secs(5));
        assert_eq!(claims(DEFAULT_LEASE).beat_interval(), (DEFAULT_LEASE / 2).min(Duration::from_secs(60)));
        for lease_s in [1, 30, 120, 600, 3_600, 86_400] {
            let claims = claims(Duration::from_secs(lease_s));
            let interval = claims.beat_interval();
            assert!(interval <= Duration::from_secs(60), "lease {lease_s} s: a beat every {interval:?}");
            let beat = claims.beat("cpu", "working", None);
            assert!(beat.gone_after() >= interval * 3, "lease {lease_s} s: a worker two beats late would count as gone");
            let late = beat.beat_at_ms + (interval * 2).as_millis() as i64;
            assert!(beat.is_live(late), "lease {lease_s} s");
        }
    }

    #[test]
    fn a_waiting_worker_looks_again_within_its_stores_bound_whatever_the_lease() {
        // Object storage (here in memory): at most a look a second, at the default lease too.
        assert_eq!(claims(DEFAULT_LEASE).poll_interval(), Duration::from_secs(1));
        assert_eq!(claims(Duration::from_secs(86_400)).poll_interval(), Duration::from_secs(1));
        assert_eq!(claims(Duration::from_secs(2)).poll_interval(), Duration::from_millis(250), "an eighth of a short lease");
        assert_eq!(claims(Duration::from_millis(400)).poll_interval(), Duration::from_millis(100), "never below 100 ms");
        // A local folder: at most four looks a second.
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::create(&Location::parse(&dir.path().join("ws").to_string_lossy(), std::path::Path::new(".")).unwrap()).unwrap();
        let local = Claims::new(ws.leases(), WorkerOptions { lease: DEFAULT_LEASE, ..WorkerOptions::default() });
        assert_eq!(local.poll_interval(), Duration::from_millis(250));
    }

    #[test]
    fn the_clock_bound_is_half_the_margin_and_its_message_names_the_fix() {
        let claims = claims(DEFAULT_LEASE);
        assert_eq!(claims.clock_bound(), Duration::from_secs(15));
        let skew = ClockSkew { offset_ms: -300_000, uncertainty_ms: 500 };
        let message = claims.skew_refused(&skew);
        for expected in ["300.0 s ahead of the store's", "more than 15.0 s", "120.0 s lease", "NTP", "--lease-s to at least 2404"] {
            assert!(message.contains(expected), "`{expected}` missing from: {message}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn no_heartbeat_follows_the_last_one() {
        let ws = Workspace::create(&Location::parse("memory://claims-beats/ws", std::path::Path::new(".")).unwrap()).unwrap();
        let claims = Arc::new(Claims::new(ws.leases(), WorkerOptions { lease: Duration::from_millis(200), ..WorkerOptions::default() }));
        let leases = ws.leases();
        let beating = claims.heartbeat("cpu".into(), Arc::new(super::super::Unobserved)).await.unwrap();
        let first = leases.live_workers().unwrap();
        assert_eq!(first.len(), 1);
        assert!(first[0].lease_ms == Some(200) && first[0].beat_interval_ms == Some(100), "{:?}", first[0]);
        // A later beat carries the skew the one before it measured (in memory: none to speak of).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let skew = loop {
            if let Some(skew) = leases.live_workers().unwrap().first().and_then(|w| w.clock_skew_ms) {
                break skew;
            }
            assert!(std::time::Instant::now() < deadline, "no beat carried the measured skew");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(skew.abs() <= 1_000, "{skew}");
        claims.finish("cpu").await;
        assert!(leases.live_workers().unwrap().is_empty());
        // Beats keep coming due until the guard drops; none is written after the last.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(leases.live_workers().unwrap().is_empty());
        drop(beating);
    }
}
