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
    pub nodes: Vec<NodeRecord>,
}

/// The run records of a workspace, oldest first, and the files that could not be read as one.
#[derive(Debug, Default)]
pub struct RunList {
    pub records: Vec<RunRecord>,
    /// Damaged records: the file and why.
    pub damaged: Vec<(std::path::PathBuf, String)>,
}

/// Reads every record under `runs_dir`; reads only.
pub(super) fn list(runs_dir: &std::path::Path) -> std::io::Result<RunList> {
    let mut list = RunList::default();
    for entry in std::fs::read_dir(runs_dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // `.NAME.tmp` files are records being written.
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<RunRecord>(&b).map_err(|e| e.to_string()))
        {
            Ok(record) => list.records.push(record),
            Err(why) => list.damaged.push((path, why)),
        }
    }
    list.records.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    list.damaged.sort();
    Ok(list)
}
