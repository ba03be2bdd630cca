//! A node's manifest once every unit has a commit, when workers share the workspace: one worker
//! (the holder of the node's manifest lease) writes it from its own commits and the records of
//! the units others committed; the others wait for it and read it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;

use super::claims::{Claims, MANIFEST_LEASE, Renewal};
use super::queue;
use super::unit_set::UnitSet;
use super::units::sleep_unless;
use crate::error::{Error, Result};
use crate::workspace::{Commit, Garbage, LeaseOutcome, Manifest, NodeStore, SummarizedCommit, WatchReport};

/// How many commit records are read at once: a request each on object storage, where one after
/// another 100,000 of them would keep the node's end waiting for half an hour.
const READS_AT_ONCE: usize = 32;

/// A node's manifest, and whether this worker wrote it (it then cleans up after the node, see
/// [`ManifestWriter::clean_up`]).
#[derive(Debug)]
pub struct Gathered {
    pub manifest: Manifest,
    pub written: bool,
}

/// Writes or reads the manifest of one node.
pub struct ManifestWriter<'a> {
    pub claims: &'a Claims,
    pub store: &'a NodeStore,
    /// The node's fingerprint, name and operator.
    pub fingerprint: &'a str,
    pub node: &'a str,
    pub op: &'a str,
    /// What the node's units were computed from: records made from anything else are stale.
    pub input_digest: &'a str,
    /// Whether the run is stopping (waiting for another worker's manifest ends then).
    pub stop: &'a (dyn Fn() -> bool + Send + Sync),
    /// Where what could not be cleaned up is told.
    pub warn: &'a (dyn Fn(&str) + Send + Sync),
}

impl std::fmt::Debug for ManifestWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestWriter").field("node", &self.node).field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl ManifestWriter<'_> {
    /// The node's manifest: written from `own` (this worker's commits) and the records of
    /// `elsewhere` (units other workers committed), or the one another worker wrote. `held` is
    /// the manifest lease when this worker holds it already (it watched the node's end).
    pub async fn gather(&self, own: Vec<Commit>, elsewhere: &UnitSet, held: Option<Renewal>) -> Result<Gathered> {
        let mut held = held;
        let damaged = |why: String| Error::Workspace { path: PathBuf::from(self.store.fingerprint()), message: why };
        // The manifest is usually written moments after the last commit: look again soon,
        // then less often.
        let mut wait = Duration::from_millis(queue::MIN_POLL_MS as u64);
        loop {
            if let Some(manifest) = self.store.manifest().map_err(damaged)? {
                return Ok(Gathered { manifest, written: false });
            }
            let _renewal = match held.take() {
                Some(renewal) => renewal,
                None => match self.claims.claim_named(self.fingerprint, MANIFEST_LEASE).await? {
                    LeaseOutcome::Claimed(lease) => self.claims.keep_alive(lease),
                    LeaseOutcome::Held { .. } if sleep_unless(self.stop, wait).await => {
                        wait = (wait * 2).min(self.claims.poll_interval());
                        continue;
                    }
                    LeaseOutcome::Held { .. } => return Err(Error::Interrupted("waiting for another worker's manifest".into())),
                },
            };
            let known: BTreeSet<usize> = own.iter().map(|c| c.unit).collect();
            let (mut commits, unread) = self.summarised(elsewhere.iter().filter(|u| !known.contains(u)).collect()).await?;
            let (records, stale) = self.read_records(unread).await?;
            commits.extend(records);
            if !stale.is_empty() {
                self.store.remove_commits(&stale)?;
                return Err(Error::Execution(format!(
                    "node `{}`: {} commit records were damaged or made from other input data, and were removed; run again to compute those units",
                    self.node,
                    stale.len()
                )));
            }
            commits.extend(own.iter().cloned());
            commits.sort_by_key(|c| c.unit);
            let manifest = Manifest::new(self.fingerprint, self.node, self.op, self.input_digest, commits, super::now());
            if self.store.finish(&manifest)? {
                return Ok(Gathered { manifest, written: true });
            }
        }
    }

    /// After this worker wrote the manifest: tells the workers watching the node that it is
    /// complete, and removes what is of no use now (losing attempts' files, the leases, the
    /// workers' hints). Nothing waits for this but this worker; what cannot be removed is told.
    pub async fn clean_up(&self, manifest: &Manifest) {
        let complete = WatchReport { complete: true, ..WatchReport::default() };
        if let Err(e) = self.store.report_watch(&complete) {
            (self.warn)(&format!("node `{}`: the watch report is not updated: {e}", self.node));
        }
        if let Err(e) = self.store.collect_garbage(Garbage::Losers, Some(&manifest.commits)) {
            (self.warn)(&format!("node `{}`: losing attempts stay: {e}", self.node));
        }
        if let Err(e) = self.claims.clear(self.fingerprint).await {
            (self.warn)(&format!("node `{}`: its leases stay: {e}", self.node));
        }
        if let Err(e) = self.store.clear_hints() {
            (self.warn)(&format!("node `{}`: its commit summaries and watch report stay: {e}", self.node));
        }
    }

    /// The commits of `units` that the workers' summaries name, each while a listing shows its
    /// record unchanged since (an object per worker read, not a record per unit), and the units
    /// whose records are to be read.
    async fn summarised(&self, units: BTreeSet<usize>) -> Result<(Vec<Commit>, BTreeSet<usize>)> {
        if units.is_empty() || !self.store.keeps_summaries() {
            return Ok((Vec::new(), units));
        }
        let (store, wanted) = (self.store.clone(), units.clone());
        let listed = tokio::task::spawn_blocking(move || Ok::<_, Error>((store.summary_keys()?, store.listed_commits(&wanted)?)));
        let (keys, records) = listed.await.map_err(|e| Error::Internal(format!("listing the commits panicked: {e}")))??;
        let store = self.store.clone();
        let summaries = read_at_once(keys, move |key| store.summary(&key)).await;
        let (mut commits, mut unread) = (Vec::new(), units);
        for summary in summaries.into_iter().filter_map(|read| read?.ok().flatten()) {
            for SummarizedCommit { e_tag, commit } in summary.commits {
                let unchanged = records.get(&commit.unit).is_some_and(|listed| listed.written_as(&e_tag));
                if unchanged && commit.input_digest == self.input_digest && unread.remove(&commit.unit) {
                    commits.push(commit);
                }
            }
        }
        Ok((commits, unread))
    }

    /// The commit records of `units`, and the units whose record is missing, damaged or made
    /// from other input data. A record the store failed to give is an error (it is not damaged:
    /// removing it would throw the unit's work away).
    async fn read_records(&self, units: BTreeSet<usize>) -> Result<(Vec<Commit>, Vec<usize>)> {
        let store = self.store.clone();
        let reads = read_at_once(units.iter().copied().collect(), move |unit| (unit, store.read_commit(unit))).await;
        let mut commits = Vec::with_capacity(reads.len());
        for read in reads {
            let (unit, read) = read.ok_or_else(|| Error::Internal("reading a commit record panicked".into()))?;
            match read? {
                Some(Ok(commit)) if commit.unit == unit && commit.input_digest == self.input_digest => commits.push(commit),
                _ => {}
            }
        }
        let read: BTreeSet<usize> = commits.iter().map(|c| c.unit).collect();
        Ok((commits, units.difference(&read).copied().collect()))
    }
}

/// `read` of each of `items` (a request each on object storage), [`READS_AT_ONCE`] at a time,
/// in the order they end; `None` for a read that panicked.
async fn read_at_once<I, T>(items: Vec<I>, read: impl Fn(I) -> T + Clone + Send + 'static) -> Vec<Option<T>>
where
    I: Send + 'static,
    T: Send + 'static,
{
    let reads = futures::stream::iter(items).map(|item| {
        let read = read.clone();
        async move { tokio::task::spawn_blocking(move || read(item)).await.ok() }
    });
    reads.buffer_unordered(READS_AT_ONCE).collect().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exec::WorkerOptions;
    use crate::workspace::{Committed, Location, Workspace};

    /// The manifest writer of node `fp` (inputs `digest`) for the tests, never stopped.
    fn writer<'a>(claims: &'a Claims, store: &'a NodeStore) -> ManifestWriter<'a> {
        fn never() -> bool {
            false
        }
        fn ignore(_: &str) {}
        ManifestWriter { claims, store, fingerprint: "fp", node: "work", op: "sleep", input_digest: "digest", stop: &never, warn: &ignore }
    }

    /// Commits unit `unit` (key `kUNIT`, input digest `digest`) by a new attempt.
    fn commit_unit(store: &NodeStore, unit: usize) -> Committed {
        let attempt = store.attempt(unit);
        store.commit(&attempt, attempt.record(&format!("k{unit}"), "digest", Vec::new(), None, 0.0)).unwrap()
    }

    /// The watcher holds the manifest lease when its units end: it writes the manifest with
    /// that lease at once (not waiting for the lease to lapse as if another worker held it),
    /// from its own commits and the records of the units others committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_writes_the_manifest_with_the_lease_it_holds() {
        let ws = Workspace::create(&Location::parse("memory://gather-test/ws", std::path::Path::new(".")).unwrap()).unwrap();
        let store = ws.node("fp");
        let commit = |unit: usize| commit_unit(&store, unit).into_commit();
        let own = vec![commit(0), commit(2)];
        let _others = (commit(1), commit(3));
        let claims = Claims::new(ws.leases(), WorkerOptions { lease: Duration::from_secs(60), ..WorkerOptions::default() });
        let LeaseOutcome::Claimed(lease) = claims.claim_named("fp", MANIFEST_LEASE).await.unwrap() else { panic!("the lease is free") };
        let held = claims.keep_alive(lease);
        let writer = writer(&claims, &store);
        let elsewhere = UnitSet::from_iter([1, 3]);
        let manifest = tokio::time::timeout(Duration::from_secs(10), writer.gather(own, &elsewhere, Some(held)))
            .await
            .expect("written at once, not after the lease lapses")
            .unwrap();
        assert!(manifest.written, "written by the watcher");
        let manifest = manifest.manifest;
        assert_eq!(manifest.commits.iter().map(|c| c.unit).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(store.has_manifest().unwrap());
    }

    /// The manifest's writer takes a commit from a worker's summary only while a listing shows
    /// its record with the ETag the summary names: a record removed and made again since (by
    /// another attempt) is read instead, so the manifest names the attempt that holds the unit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_summarised_commit_is_used_only_while_its_record_is_unchanged() {
        let ws = Workspace::create(&Location::parse("memory://gather-summary/ws", std::path::Path::new(".")).unwrap()).unwrap();
        let store = ws.node("fp");
        let record = |unit: usize| commit_unit(&store, unit);
        // Another worker won units 1 and 3 and summarised them.
        let other = Claims::new(ws.leases(), WorkerOptions::default());
        for unit in [1, 3] {
            other.settle("fp", record(unit));
        }
        other.write_summary(&store).await.unwrap();
        assert_eq!(store.summary_keys().unwrap().len(), 1);
        // Unit 3 is recomputed: its record removed and made again by another attempt.
        store.remove_commits(&[3]).unwrap();
        let remade = record(3).into_commit();

        let own = vec![record(0).into_commit()];
        let claims = Claims::new(ws.leases(), WorkerOptions::default());
        let writer = writer(&claims, &store);
        let gathered = writer.gather(own, &UnitSet::from_iter([1, 3]), None).await.unwrap();
        assert!(gathered.written);
        let commits: Vec<(usize, String)> = gathered.manifest.commits.iter().map(|c| (c.unit, c.attempt.clone())).collect();
        assert_eq!(commits.len(), 3);
        assert_eq!(commits[2], (3, remade.attempt), "the record made again, not the summary's");
        writer.clean_up(&gathered.manifest).await;
        assert!(store.summary_keys().unwrap().is_empty(), "summaries go with the node's end");
        assert_eq!(store.watch_report().unwrap(), None);
    }
}
