//! Leases: which worker computes a unit now, and until when; and the workers' heartbeats.
//!
//! ```text
//! leases/FP/uNNNNNN.json   {owner, expires_at_ms}: created if absent to claim the unit,
//!                          replaced if unchanged (compare-and-swap) to renew or take it over
//! leases/FP/gang-uNNNNNN.json  the gang training a unit together (see `exec::gang`): its
//!                          leader, where it listens, the token peers present, its peers
//! workers/ID.json          a worker's heartbeat: rank, host, device, units done, last beat,
//!                          its lease and beat interval (how long it counts live), clock skew
//! ```
//!
//! A lease only saves work: correctness comes from the commit, which the first attempt wins.
//! A worker that loses its lease (it paused past expiry, and another took the unit over) may
//! still finish; its commit is then refused and its files discarded, so no row is duplicated.
//! A lease is taken over only once it expired more than [`Leases::margin`] ago by the taker's
//! clock, so clocks that differ by less than that are harmless; a worker whose clock is further
//! than half of it from the store's refuses to start (see `workspace::clock`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::ClockSkew;
use super::store::{Store, Version};
use super::unit_keys::{listed_units, unit_key, unit_of};
use crate::error::{Error, Result};

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    expires_at_ms: i64,
}

/// The rendezvous of a gang: the leader (the unit's lease holder) writes it, and workers that
/// want to join read where to connect, and the token that shows they share the workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GangRecord {
    /// The leader's worker id.
    pub leader: String,
    pub unit: usize,
    /// `HOST:PORT` the leader listens on.
    pub address: String,
    /// A random secret peers present when they connect (the port is open to the network; the
    /// workspace is not).
    pub token: String,
    /// The peers now, the leader first.
    pub peers: Vec<String>,
    /// The most peers it takes (one per micro-batch), once the training started.
    #[serde(default)]
    pub max_peers: Option<usize>,
    /// The step the gang was at when the record was written.
    pub step: u64,
    pub updated_at_ms: i64,
}

/// A lease this worker holds.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    version: Version,
    owner: String,
    /// Whether it was taken over from a worker whose lease expired (which may have committed
    /// the unit meanwhile).
    pub taken_over: bool,
}

/// What a claim found.
#[derive(Debug)]
pub enum LeaseOutcome {
    /// The unit is ours until the lease expires (renew it).
    Claimed(Lease),
    /// Another worker holds it, until `expires_at_ms`.
    Held { owner: String, expires_at_ms: i64 },
}

/// How long after its last heartbeat a worker counts as live when its heartbeat does not say
/// its beat interval and lease (written by versions before they were recorded): five of the
/// longest gaps between beats then (a minute).
const LEGACY_BEAT_COUNTS_FOR: Duration = Duration::from_secs(300);

/// How many beat intervals a worker may miss before it counts as gone.
const MISSED_BEATS: u32 = 3;

/// A worker's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerBeat {
    pub id: String,
    pub rank: usize,
    pub world: usize,
    pub host: String,
    pub pid: u32,
    pub device: String,
    pub started_at_ms: i64,
    pub beat_at_ms: i64,
    pub units_done: u64,
    /// `working`, or `exited` (its last beat: the process ended, whichever way); `done` in
    /// records of older versions.
    pub state: String,
    /// The worker's lease (`--lease-s`), in ms.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// How often the worker beats, in ms.
    #[serde(default)]
    pub beat_interval_ms: Option<u64>,
    /// How far the store's clock was from the worker's at its last measure (store = worker +
    /// this), in ms; see `workspace::ClockSkew`.
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
}

impl WorkerBeat {
    /// How long after its last beat the worker counts as gone: [`MISSED_BEATS`] of its beat
    /// intervals and the clock margin of its lease (a worker late with a beat or two is not
    /// counted gone, nor one whose clock is behind the reader's by less than the margin).
    pub fn gone_after(&self) -> Duration {
        match (self.lease_ms, self.beat_interval_ms) {
            (Some(lease), Some(interval)) => Duration::from_millis(interval) * MISSED_BEATS + Leases::margin(Duration::from_millis(lease)),
            _ => LEGACY_BEAT_COUNTS_FOR,
        }
    }

    /// Whether the worker counts as live at `now_ms`: it did not say it exited, and its last
    /// beat is recent. The one rule for `unoflow status`, the review page and whether a run
    /// holds the workspace.
    pub fn is_live(&self, now_ms: i64) -> bool {
        let exited = matches!(self.state.as_str(), "exited" | "done");
        !exited && now_ms - self.beat_at_ms <= i64::try_from(self.gone_after().as_millis()).unwrap_or(i64::MAX)
    }
}

/// The leases and heartbeats of a workspace.
#[derive(Debug, Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    /// When a lease expires and whether a worker is live are judged by it.
    clock: Arc<dyn Clock>,
}

/// The time leases are judged by: this host's clock, or in tests one the test moves.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// This host's clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Leases {
    /// The longest a waiting worker goes between looks at this store ([`Store::max_poll`]).
    pub fn max_poll(&self) -> Duration {
        self.store.max_poll()
    }

    pub(super) fn new(store: Arc<dyn Store>) -> Self {
        Self::with_clock(store, Arc::new(SystemClock))
    }

    /// Leases judged by `clock` (tests move it instead of sleeping).
    pub fn with_clock(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// How long after its expiry a lease may be taken over: a quarter of the lease.
    pub fn margin(lease: Duration) -> Duration {
        lease / 4
    }

    fn key(fp: &str, name: &str) -> String {
        format!("leases/{fp}/{name}.json")
    }

    /// Which of `units` of node `fp` have a lease, and when each was last written (claimed or
    /// renewed; Unix ms by the store's clock): one listing, without reading the leases.
    pub fn written_among(&self, fp: &str, units: &[usize]) -> Result<BTreeMap<usize, i64>> {
        let wanted: BTreeSet<usize> = units.iter().copied().collect();
        Ok(listed_units(self.store.as_ref(), &format!("leases/{fp}"), &wanted)?.into_iter().map(|(u, l)| (u, l.modified_ms)).collect())
    }

    fn record(&self, owner: &str, lease: Duration) -> Result<Vec<u8>> {
        let record = LeaseRecord { owner: owner.to_string(), expires_at_ms: self.clock.now_ms() + lease.as_millis() as i64 };
        serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Claims unit `unit` of node `fp` for `owner` for `lease`: creates the lease if absent, or
    /// takes it over if it expired (by more than the margin).
    pub fn claim(&self, fp: &str, unit: usize, owner: &str, lease: Duration) -> Result<LeaseOutcome> {
        let key = unit_key(&format!("leases/{fp}"), unit);
        self.claim_key(key, owner, lease)
    }

    /// Claims the task `name` of node `fp` (a unit, or writing the manifest), as [`Self::claim`].
    pub fn claim_named(&self, fp: &str, name: &str, owner: &str, lease: Duration) -> Result<LeaseOutcome> {
        self.claim_key(Self::key(fp, name), owner, lease)
    }

    fn claim_key(&self, key: String, owner: &str, lease: Duration) -> Result<LeaseOutcome> {
        let bytes = self.record(owner, lease)?;
        if let Some(version) = self.store.create(&key, &bytes)? {
            return Ok(LeaseOutcome::Claimed(Lease { key, version, owner: owner.into(), taken_over: false }));
        }
        let Some((stored, version)) = self.store.get(&key)? else {
            // Released between our create and our read: try again next round.
            return Ok(LeaseOutcome::Held { owner: String::new(), expires_at_ms: 0 });
        };
        let current: LeaseRecord = match serde_json::from_slice(&stored) {
            Ok(r) => r,
            // A damaged lease is as good as expired.
            Err(_) => LeaseRecord { owner: String::new(), expires_at_ms: 0 },
        };
        if self.clock.now_ms() <= current.expires_at_ms + Self::margin(lease).as_millis() as i64 {
            return Ok(LeaseOutcome::Held { owner: current.owner, expires_at_ms: current.expires_at_ms });
        }
        match self.store.update(&key, &bytes, &version)? {
            Some(version) => Ok(LeaseOutcome::Claimed(Lease { key, version, owner: owner.into(), taken_over: true })),
            None => Ok(LeaseOutcome::Held { owner: current.owner, expires_at_ms: current.expires_at_ms }),
        }
    }

    /// Extends a lease we hold; `false` when it was taken over meanwhile.
    pub fn renew(&self, lease: &mut Lease, duration: Duration) -> Result<bool> {
        let bytes = self.record(&lease.owner, duration)?;
        match self.store.update(&lease.key, &bytes, &lease.version)? {
            Some(version) => {
                lease.version = version;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Gives a lease up (the unit is committed, or failed), unless someone took it over.
    pub fn release(&self, lease: &Lease) -> Result<()> {
        match self.store.get(&lease.key)? {
            Some((_, version)) if version == lease.version => self.store.delete(&lease.key),
            _ => Ok(()),
        }
    }

    /// Removes the leases of node `fp` (complete: nobody needs them).
    pub fn clear(&self, fp: &str) -> Result<()> {
        self.store.delete_prefix(&format!("leases/{fp}"))
    }

    /// The leases of node `fp` now: unit, owner, expiry.
    pub fn held(&self, fp: &str) -> Result<Vec<(usize, String, i64)>> {
        let mut out = Vec::new();
        for object in self.store.list(&format!("leases/{fp}"))? {
            let Some(unit) = unit_of(&object.key) else { continue };
            if let Some((bytes, _)) = self.store.get(&object.key)?
                && let Ok(record) = serde_json::from_slice::<LeaseRecord>(&bytes)
            {
                out.push((unit, record.owner, record.expires_at_ms));
            }
        }
        Ok(out)
    }

    fn gang_key(fp: &str, unit: usize) -> String {
        format!("leases/{fp}/gang-u{unit:06}.json")
    }

    /// Writes (or replaces) the rendezvous of the gang computing unit `record.unit` of `fp`.
    pub fn write_gang(&self, fp: &str, record: &GangRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
        self.store.put(&Self::gang_key(fp, record.unit), &bytes)
    }

    /// The rendezvous of the gang computing unit `unit` of `fp`, if there is one (a damaged
    /// record is none: its leader rewrites it).
    pub fn gang(&self, fp: &str, unit: usize) -> Result<Option<GangRecord>> {
        Ok(self.store.get(&Self::gang_key(fp, unit))?.and_then(|(bytes, _)| serde_json::from_slice(&bytes).ok()))
    }

    /// Every gang of node `fp`, for `unoflow status`.
    pub fn gangs(&self, fp: &str) -> Result<Vec<GangRecord>> {
        let mut out = Vec::new();
        for object in self.store.list(&format!("leases/{fp}"))? {
            if object.key.rsplit('/').next().is_some_and(|name| name.starts_with("gang-"))
                && let Some((bytes, _)) = self.store.get(&object.key)?
                && let Ok(record) = serde_json::from_slice::<GangRecord>(&bytes)
            {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Removes the rendezvous of a gang whose unit is done, if `leader` still leads it.
    pub fn remove_gang(&self, fp: &str, unit: usize, leader: &str) -> Result<()> {
        match self.gang(fp, unit)? {
            Some(record) if record.leader == leader => self.store.delete(&Self::gang_key(fp, unit)),
            _ => Ok(()),
        }
    }

    fn beat_key(id: &str) -> String {
        format!("workers/{id}.json")
    }

    /// Records a worker's heartbeat.
    pub fn beat(&self, beat: &WorkerBeat) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(beat).map_err(|e| Error::Internal(e.to_string()))?;
        self.store.put(&Self::beat_key(&beat.id), &bytes)
    }

    /// Records a worker's heartbeat, and measures this host's clock against the store's by it
    /// (the store's stamp of the write against this host's clock around it; one more request).
    /// `None` when the heartbeat vanished meanwhile.
    pub fn beat_and_measure(&self, beat: &WorkerBeat) -> Result<Option<ClockSkew>> {
        let before = self.clock.now_ms();
        self.beat(beat)?;
        let after = self.clock.now_ms();
        let stamped = self.store.written_at_ms(&Self::beat_key(&beat.id))?;
        Ok(stamped.map(|stamped| ClockSkew::measure(before, after, stamped)))
    }

    /// The workers counted live (see [`WorkerBeat::is_live`]).
    pub fn live_workers(&self) -> Result<Vec<WorkerBeat>> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for object in self.store.list("workers")? {
            if let Some((bytes, _)) = self.store.get(&object.key)?
                && let Ok(beat) = serde_json::from_slice::<WorkerBeat>(&bytes)
                && beat.is_live(now)
            {
                out.push(beat);
            }
        }
        out.sort_by_key(|b| b.rank);
        Ok(out)
    }

    /// Records that an attempt at a unit failed, with why; returns how many attempts at it
    /// failed so far.
    pub fn record_failure(&self, fp: &str, unit: usize, attempt: &str, message: &str) -> Result<usize> {
        self.store.put(&format!("failures/{fp}/u{unit:06}/{attempt}.txt"), message.as_bytes())?;
        Ok(self.store.list(&format!("failures/{fp}/u{unit:06}"))?.len())
    }

    /// Where the failures of a unit are, for messages.
    pub fn failures_of(&self, fp: &str, unit: usize) -> PathBuf {
        PathBuf::from(self.store.url(&format!("failures/{fp}/u{unit:06}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::store::{LocalStore, ObjectBackend};

    /// A clock the test moves.
    #[derive(Debug, Default)]
    struct ManualClock(std::sync::atomic::AtomicI64);

    impl ManualClock {
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn takeover(store: Arc<dyn Store>) {
        let clock = Arc::new(ManualClock(std::sync::atomic::AtomicI64::new(1_700_000_000_000)));
        let leases = Leases::with_clock(store, Arc::clone(&clock) as Arc<dyn Clock>);
        let lease = Duration::from_millis(200);
        let LeaseOutcome::Claimed(mut first) = leases.claim("fp", 3, "a", lease).unwrap() else { panic!("a fresh unit is claimed") };
        assert!(!first.taken_over);
        assert!(matches!(leases.claim("fp", 3, "b", lease).unwrap(), LeaseOutcome::Held { ref owner, .. } if owner == "a"));
        // Renewed in time, the lease holds past its first expiry.
        clock.advance(Duration::from_millis(150));
        assert!(leases.renew(&mut first, lease).unwrap());
        clock.advance(Duration::from_millis(150));
        assert!(matches!(leases.claim("fp", 3, "b", lease).unwrap(), LeaseOutcome::Held { .. }));
        // Not renewed: held up to expiry and the margin (350 + 50 ms after the claim), then
        // another worker takes it over, once.
        clock.advance(Duration::from_millis(100));
        assert!(matches!(leases.claim("fp", 3, "b", lease).unwrap(), LeaseOutcome::Held { .. }), "at the end of the margin");
        clock.advance(Duration::from_millis(1));
        let LeaseOutcome::Claimed(second) = leases.claim("fp", 3, "b", lease).unwrap() else { panic!("an expired lease is taken over") };
        assert!(second.taken_over);
        assert!(matches!(leases.claim("fp", 3, "c", lease).unwrap(), LeaseOutcome::Held { ref owner, .. } if owner == "b"));
        // The first holder's renewal is refused: it lost the unit.
        assert!(!leases.renew(&mut first, lease).unwrap());
        assert_eq!(leases.held("fp").unwrap().iter().map(|(u, o, _)| (*u, o.as_str())).collect::<Vec<_>>(), vec![(3, "b")]);
        assert_eq!(leases.record_failure("fp", 3, "x1", "boom").unwrap(), 1);
        assert_eq!(leases.record_failure("fp", 3, "x2", "boom").unwrap(), 2);
    }

    #[test]
    fn a_lease_is_taken_over_only_after_it_expired_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        takeover(Arc::new(LocalStore::new(dir.path().to_path_buf())));
    }

    #[test]
    fn a_lease_is_taken_over_only_after_it_expired_in_object_storage() {
        takeover(Arc::new(ObjectBackend::open("memory://leases/ws").unwrap()));
    }

    fn beat(state: &str, beat_at_ms: i64, lease_ms: Option<u64>, beat_interval_ms: Option<u64>) -> WorkerBeat {
        WorkerBeat {
            id: "w".into(),
            rank: 0,
            world: 1,
            host: "h".into(),
            pid: 1,
            device: "cpu".into(),
            started_at_ms: 0,
            beat_at_ms,
            units_done: 0,
            state: state.into(),
            lease_ms,
            beat_interval_ms,
            clock_skew_ms: None,
        }
    }

    #[test]
    fn a_worker_counts_gone_three_beats_and_a_margin_after_its_last_beat() {
        // A 4 s lease, a beat every 2 s: gone 3 × 2 s + 1 s after the last beat.
        let w = beat("working", 10_000, Some(4_000), Some(2_000));
        assert_eq!(w.gone_after(), Duration::from_secs(7));
        assert!(w.is_live(10_000 + 7_000));
        assert!(!w.is_live(10_000 + 7_001));
        // A default lease: 3 minutes and a half, not the five minutes of before.
        assert_eq!(beat("working", 0, Some(120_000), Some(60_000)).gone_after(), Duration::from_secs(210));
        // An exited worker is gone at once, whatever its last beat.
        assert!(!beat("exited", 10_000, Some(4_000), Some(2_000)).is_live(10_000));
        assert!(!beat("done", 10_000, None, None).is_live(10_000));
    }

    #[test]
    fn heartbeats_of_older_versions_still_parse_and_count_live_for_five_minutes() {
        let old = r#"{"id":"w","rank":0,"world":1,"host":"h","pid":1,"device":"cpu","started_at_ms":0,
            "beat_at_ms":1000,"units_done":3,"state":"working"}"#;
        let w: WorkerBeat = serde_json::from_str(old).unwrap();
        assert_eq!((w.lease_ms, w.beat_interval_ms, w.clock_skew_ms), (None, None, None));
        assert_eq!(w.gone_after(), LEGACY_BEAT_COUNTS_FOR);
        assert!(w.is_live(1000 + 299_000) && !w.is_live(1000 + 301_000));
    }

    #[test]
    fn a_heartbeat_measures_this_hosts_clock_against_a_folders() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::new(Arc::new(LocalStore::new(dir.path().to_path_buf())));
        let w = beat("working", now_ms(), Some(4_000), Some(2_000));
        let skew = leases.beat_and_measure(&w).unwrap().expect("the heartbeat was written");
        // The file's time is the kernel's clock, which is this process's.
        assert!(!skew.exceeds(Duration::ZERO), "{skew:?}");
        assert_eq!(leases.live_workers().unwrap().len(), 1);
        leases.beat(&WorkerBeat { state: "exited".into(), ..w }).unwrap();
        assert!(leases.live_workers().unwrap().is_empty());
    }
}
