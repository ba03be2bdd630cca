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
