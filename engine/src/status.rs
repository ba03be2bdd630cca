//! Where a run over a shared workspace stands: per node, units committed, held by a worker,
//! and pending; the live workers; throughput and an estimate of the time left. Reads only.

use std::time::Duration;

use serde::Serialize;

use crate::dag::Dag;
use crate::error::Result;
use crate::workspace::{Storage, WorkerBeat, Workspace, now_ms};

/// The window throughput is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(300);

/// One stored node's progress.
#[derive(Debug, Clone, Serialize)]
pub struct NodeProgress {
    pub node: String,
    pub fingerprint: String,
    /// Every unit is committed and the manifest written.
    pub complete: bool,
    pub done: usize,
    /// Units under a lease that has not expired.
    pub held: usize,
    /// Units known and neither committed nor held (`None` until a worker listed the units).
    pub pending: Option<usize>,
    pub rows: Option<u64>,
    /// Units committed per second over the last five minutes.
    pub units_per_s: f64,
    /// Seconds left at that rate.
    pub eta_s: Option<f64>,
}

/// A gang of workers computing a unit together (its token left out).
#[derive(Debug, Clone, Serialize)]
pub struct GangProgress {
    pub node: String,
    pub unit: usize,
    pub leader: String,
    /// Where the leader listens.
    pub address: String,
    /// The peers, the leader first.
    pub peers: Vec<String>,
    /// The step the gang was at when its peers last changed.
    pub step: u64,
}

/// A workspace's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub nodes: Vec<NodeProgress>,
    pub workers: Vec<WorkerBeat>,
    /// The gangs at work (data-parallel training).
    pub gangs: Vec<GangProgress>,
}

impl Progress {
    /// Units committed, and all units known, over every node.
    pub fn totals(&self) -> (usize, usize) {
        let done = self.nodes.iter().map(|n| n.done).sum();
        let total = self.nodes.iter().map(|n| n.done + n.held + n.pending.unwrap_or(0)).sum();
        (done, total)
    }
}

/// A node to report on: its name, fingerprint and storage.
pub type NodeRef = (String, String, Storage);

/// The nodes of `dag`, or, without one, those the workspace's index names.
pub fn nodes_of(ws: &Workspace, dag: Option<&Dag>) -> Result<Vec<NodeRef>> {
    match dag {
        Some(dag) => {
            let components = crate::fingerprint::compute(dag)?;
            Ok(dag.nodes.iter().zip(components).map(|(n, c)| (n.name.clone(), c.fingerprint(), n.storage)).collect())
        }
        None => Ok(ws.index()?.nodes.into_iter().map(|(name, e)| (name, e.fingerprint, e.storage)).collect()),
    }
}

/// The progress of the stored nodes among `nodes`.
pub fn progress(ws: &Workspace, nodes_in: &[NodeRef]) -> Result<Progress> {
    let mut nodes = Vec::new();
    let mut gangs = Vec::new();
    let now = now_ms();
    for (name, fingerprint, storage) in nodes_in.iter().cloned() {
        if storage != Storage::Table {
            continue;
        }
        let store = ws.node(&fingerprint);
        if let Ok(Some(manifest)) = store.manifest() {
            let done = manifest.commits.len();
            nodes.push(NodeProgress {
                node: name,
                fingerprint,
                complete: true,
                done,
                held: 0,
                pending: Some(0),
                rows: Some(manifest.rows),
                units_per_s: 0.0,
                eta_s: Some(0.0),
            });
            continue;
        }
        let times = store.commit_times()?;
        let committed = store.committed_units()?;
        let done = committed.len();
        let held =
            ws.leases().held(&fingerprint)?.into_iter().filter(|(unit, _, expires)| *expires > now && !committed.contains(unit)).count();
        let pending = store.units().map(|units| units.saturating_sub(done + held));
        let recent = times.iter().filter(|t| now - **t <= RATE_WINDOW.as_millis() as i64).count();
        let units_per_s = recent as f64 / RATE_WINDOW.as_secs_f64();
        let eta_s = pending.filter(|_| units_per_s > 0.0).map(|p| (p + held) as f64 / units_per_s);
        for gang in ws.leases().gangs(&fingerprint)?.into_iter().filter(|g| !committed.contains(&g.unit)) {
            gangs.push(GangProgress {
                node: name.clone(),
                unit: gang.unit,
                leader: gang.leader,
                address: gang.address,
                peers: gang.peers,
                step: gang.step,
            });
        }
        nodes.push(NodeProgress { node: name, fingerprint, complete: false, done, held, pending, rows: None, units_per_s, eta_s });
    }
    let workers = ws.leases().live_workers()?;
    Ok(Progress { nodes, workers, gangs })
}
