//! A node's manifest once every unit has a commit, when workers share the workspace: one worker
//! (the holder of the node's manifest lease) writes it from its own commits and the records of
//! the units others committed; the others wait for it and read it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;

use super::claims::{Claims, MANIFEST_LEASE, Renewal};
use super::queue;
use super::units::sleep_unless;
use crate::error::{Error, Result};
use crate::workspace::{Commit, Garbage, LeaseOutcome, Manifest, NodeStore};

/// How many commit records are read at once: a request each on object storage, where one after
/// another 100,000 of them would keep the node's end waiting for half an hour.
const READS_AT_ONCE: usize = 32;

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
    pub async fn gather(&self, own: Vec<Commit>, elsewhere: &BTreeSet<usize>, held: Option<Renewal>) -> Result<Manifest> {
        let mut held = held;
        let damaged = |why: String| Error::Workspace { path: PathBuf::from(self.store.fingerprint()), message: why };
        // The manifest is usually written moments after the last commit: look again soon,
        // then less often.
        let mut wait = Duration::from_millis(queue::MIN_POLL_MS as u64);
        loop {
            if let Some(manifest) = self.store.manifest().map_err(damaged)? {
                return Ok(manifest);
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
            let (mut commits, stale) = self.read_records(elsewhere.difference(&known).copied().collect()).await;
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
                // Every unit has its winner now: other attempts' files are garbage, and the
                // leases are of no use.
                if let Err(e) = self.store.collect_garbage(Garbage::Losers, Some(&manifest.commits)) {
                    (self.warn)(&format!("node `{}`: losing attempts stay: {e}", self.node));
                }
                if let Err(e) = self.claims.clear(self.fingerprint).await {
                    (self.warn)(&format!("node `{}`: its leases stay: {e}", self.node));
                }
                return Ok(manifest);
            }
        }
    }

    /// The commit records of `units`, read [`READS_AT_ONCE`] at a time, and the units whose
    /// record is missing, damaged or made from other input data.
    async fn read_records(&self, units: Vec<usize>) -> (Vec<Commit>, Vec<usize>) {
        let reads = futures::stream::iter(units).map(|unit| {
            let store = self.store.clone();
            async move { (unit, tokio::task::spawn_blocking(move || store.commit_of(unit)).await) }
        });
        let mut reads = reads.buffer_unordered(READS_AT_ONCE);
        let (mut commits, mut stale) = (Vec::new(), Vec::new());
        while let Some((unit, read)) = reads.next().await {
            match read {
                Ok(Ok(Some(commit))) if commit.unit == unit && commit.input_digest == self.input_digest => commits.push(commit),
                _ => stale.push(unit),
            }
        }
        (commits, stale)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exec::WorkerOptions;
    use crate::workspace::{Location, Workspace};

    /// The watcher holds the manifest lease when its units end: it writes the manifest with
    /// that lease at once (not waiting for the lease to lapse as if another worker held it),
    /// from its own commits and the records of the units others committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_writes_the_manifest_with_the_lease_it_holds() {
        let ws = Workspace::create(&Location::parse("memory://gather-test/ws", std::path::Path::new("."))).unwrap();
        let store = ws.node("fp");
        let commit = |unit: usize| {
            let attempt = store.attempt(unit);
            store.commit(&attempt, attempt.record(&format!("k{unit}"), "digest", Vec::new(), None, 0.0)).unwrap().into_commit()
        };
        let own = vec![commit(0), commit(2)];
        let _others = (commit(1), commit(3));
        let claims = Claims::new(ws.leases(), WorkerOptions { lease: Duration::from_secs(60), ..WorkerOptions::default() });
        let LeaseOutcome::Claimed(lease) = claims.claim_named("fp", MANIFEST_LEASE).await.unwrap() else { panic!("the lease is free") };
        let held = claims.keep_alive(lease);
        let (stop, warn) = (|| false, |_: &str| {});
        let writer = ManifestWriter {
            claims: &claims,
            store: &store,
            fingerprint: "fp",
            node: "work",
            op: "sleep",
            input_digest: "digest",
            stop: &stop,
            warn: &warn,
        };
        let elsewhere = BTreeSet::from([1, 3]);
        let manifest = tokio::time::timeout(Duration::from_secs(10), writer.gather(own, &elsewhere, Some(held)))
            .await
            .expect("written at once, not after the lease lapses")
            .unwrap();
        assert_eq!(manifest.commits.iter().map(|c| c.unit).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(store.has_manifest().unwrap());
    }
}
