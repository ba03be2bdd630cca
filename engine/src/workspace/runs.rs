//! Run records: what each `unoflow run` did, for `unoflow runs` and for audits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One node's part in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub op: String,
    pub fingerprint: String,
    /// `computed`, `resumed`, `cached`, `failed`, `skipped` or `interrupted`.
    pub status: String,
    pub rows: u64,
    pub error_rows: u64,
    pub seconds: f64,
    /// Parameters as resolved, secrets replaced by `<redacted>`.
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a node trained by a gang of workers: how many peers took each range of steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerSpan>,
}

/// How many peers of a gang computed a range of steps together (see `exec::gang`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpan {
    pub first_step: u64,
    pub last_step: u64,
    pub peers: usize,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub dag_name: String,
    pub dag_path: String,
    /// The DAG file as written (before interpolation, so no environment value is in it).
    pub dag_text: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    pub unoflow_version: String,
    pub host: String,
    pub command: Vec<String>,
    /// The `--var` overrides of the DAG's `[vars]` (the last of each name), values as TOML read
    /// them; secret-looking names redacted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    pub nodes: Vec<NodeRecord>,
    /// The worker that made the record: id, rank and world size (none for a run alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Records of workers started by one command share a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The run records of a workspace, oldest first, and the files that could not be read as one.
#[derive(Debug, Default)]
pub struct RunList {
    pub records: Vec<RunRecord>,
    /// Damaged records: the file and why.
    pub damaged: Vec<(std::path::PathBuf, String)>,
}

/// Reads every run record; reads only.
pub(super) fn list(store: &dyn super::store::Store) -> crate::error::Result<RunList> {
    let mut list = RunList::default();
    for object in store.list("runs")? {
        if !object.key.ends_with(".json") {
            continue;
        }
        let path = std::path::PathBuf::from(store.url(&object.key));
        match store.get(&object.key)? {
            Some((bytes, _)) => match serde_json::from_slice::<RunRecord>(&bytes) {
                Ok(record) => list.records.push(record),
                Err(e) => list.damaged.push((path, e.to_string())),
            },
            None => continue,
        }
    }
    list.records.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    list.damaged.sort();
    Ok(list)
}
