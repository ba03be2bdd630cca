//! Gangs: the workers of a workspace computing one unit of a data-parallel node together
//! (`train_lora`), however they were started (`run --workers`, `--devices`, Slurm, Kubernetes).
//!
//! The worker that claims the unit leads: it listens on a TCP port and writes the gang's
//! rendezvous beside the unit's lease (`leases/FP/gang-uNNNNNN.json`: where it listens, a
//! random token, the peers). A worker that finds the unit held reads the rendezvous, connects,
//! presents the token (so only workers that can read the workspace join) and follows: the
//! operator on both ends drives the steps through [`unoflow_api::gang`]. The commit protocol is
//! untouched: the leader commits the unit as any unit; if it dies, its lease runs out, another
//! worker claims the unit, resumes from the last checkpoint and leads a new gang.
//!
//! Why not `burn-collective`: its peers are fixed when they register (a count of devices and
//! nodes), a peer that dies leaves the others blocked in the all-reduce with no timeout, it
//! needs an orchestrator process at a known address, and it keeps one registration per
//! process. A gang here grows at checkpoints and shrinks when a peer goes silent, which needs
//! its own small protocol; the sums are taken on the leader in rank order (a star), so they do
//! not depend on which peer is fastest.

mod follower;
mod leader;
mod wire;

use std::net::TcpListener;
use std::sync::Arc;

pub use follower::Follower;
pub use leader::{Charter, Leader, Roster};
pub use wire::Hello;

use crate::error::{Error, Result};
use crate::workspace::{GangRecord, Leases, hostname, now_ms};

/// The environment variable naming the host (name or address) other workers reach this one
/// at; default: the host's name.
pub const HOST_ENV: &str = "UNOFLOW_GANG_HOST";
/// The environment variable naming the port a leader listens on; default: any free port.
pub const PORT_ENV: &str = "UNOFLOW_GANG_PORT";

/// Starts leading the gang of unit `unit` (rows `unit_key`) of node `fp`: listens; the
/// rendezvous is written when the operator first admits peers (the training started).
pub fn lead(leases: &Leases, fp: &str, unit: usize, unit_key: &str, id: &str, expected: usize) -> Result<Arc<Leader>> {
    let port = match std::env::var(PORT_ENV) {
        Ok(v) => v.trim().parse::<u16>().map_err(|_| Error::Usage(format!("{PORT_ENV}={v:?} is not a port number")))?,
        Err(_) => 0,
    };
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| Error::Execution(format!("a gang leader cannot listen on port {port} ({PORT_ENV}): {e}")))?;
    let host = std::env::var(HOST_ENV).unwrap_or_else(|_| hostname());
    let listening = |e: std::io::Error| Error::Execution(format!("a gang leader cannot listen: {e}"));
    let address = format!("{host}:{}", listener.local_addr().map_err(listening)?.port());
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| Error::Execution(format!("no random token for a gang: {e}")))?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let record = GangRecord {
        leader: id.to_string(),
        unit,
        address,
        token: token.clone(),
        peers: vec![id.to_string()],
        max_peers: None,
        step: 0,
        updated_at_ms: now_ms(),
    };
    let (leases, fp_owned) = (leases.clone(), fp.to_string());
    let on_change = move |roster: Roster| {
        let record =
            GangRecord { peers: roster.peers, step: roster.step, max_peers: roster.max_peers, updated_at_ms: now_ms(), ..record.clone() };
        // The record is for `status` and for joiners; a failed write costs neither the training.
        let _ = leases.write_gang(&fp_owned, &record);
    };
    let charter = Charter { fingerprint: fp.to_string(), unit, unit_key: unit_key.to_string(), token, expected };
    Leader::start(listener, id.to_string(), charter, Box::new(on_change)).map_err(listening)
}

/// Whether a worker should try to join the gang of `record`: not its own, not full.
pub fn joinable(record: &GangRecord, id: &str) -> bool {
    record.leader != id && record.max_peers.is_none_or(|max| record.peers.len() < max)
}

/// Joins the gang of `record` as worker `id` of node `fp`, for the unit keyed `unit_key`;
/// `stop` is asked at every heartbeat while the follower waits for an order.
pub fn join(
    record: &GangRecord,
    fp: &str,
    unit_key: &str,
    id: &str,
    stop: Box<dyn Fn() -> bool + Send + Sync>,
) -> std::io::Result<Follower> {
    let hello = Hello {
        worker: id.to_string(),
        fingerprint: fp.to_string(),
        unit: record.unit,
        unit_key: unit_key.to_string(),
        token: record.token.clone(),
    };
    Follower::connect(&reachable(&record.address), &hello, stop)
}

/// The address to connect to: a leader on this very host is reached over loopback (its name
/// may not resolve inside a container).
fn reachable(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((host, port)) if host == hostname() && std::env::var(HOST_ENV).is_err() => format!("127.0.0.1:{port}"),
        _ => address.to_string(),
    }
}
