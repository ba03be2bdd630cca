//! Reviewers' labels: accept, reject or skip for a node's rows, kept by `row_id`.
//!
//! Row ids are derived from content, so a label given to a row survives reruns that make the
//! same row again. Each node's labels are one JSON-lines object, `labels/NODE.jsonl`, rewritten
//! by compare-and-swap: two reviewers labelling at once both keep their labels, on a folder and
//! on object storage alike. SQL sees them all as the table `labels` (see [`Labels::table`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::store::Store;
use crate::error::{Error, Result};

/// What a reviewer said of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Reject,
    /// Looked at and left undecided.
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Skip => "skip",
        }
    }
}

/// One label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub node: String,
    pub row_id: String,
    pub label: Verdict,
    /// When it was given (RFC 3339, UTC).
    pub labeled_at: String,
}

/// The labels of a workspace.
#[derive(Debug, Clone)]
pub struct Labels {
    store: Arc<dyn Store>,
}

/// Where the labels live in the workspace.
const PREFIX: &str = "labels";

/// Row ids are 32 hex digits; anything longer is not one.
pub const MAX_ROW_ID: usize = 64;

impl Labels {
    pub(super) fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    fn key(node: &str) -> String {
        format!("{PREFIX}/{node}.jsonl")
    }

    /// Sets (or replaces) the label of `row_id` in `node`.
    pub fn set(&self, node: &str, row_id: &str, label: Verdict) -> Result<Label> {
        if !valid_node(node) {
            return Err(Error::Usage(format!("`{node}` is not a node name (letters, digits, `_`, `-`)")));
        }
        if row_id.is_empty() || row_id.len() > MAX_ROW_ID || !row_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Usage(format!("`{row_id}` is not a row id (up to {MAX_ROW_ID} letters and digits)")));
        }
        let new = Label {
            node: node.to_string(),
            row_id: row_id.to_string(),
            label,
            labeled_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let key = Self::key(node);
        // Compare-and-swap: a concurrent writer's label is read again, never overwritten.
        loop {
            let current = self.store.get(&key)?;
            let mut by_row = match &current {
                Some((bytes, _)) => parse(&self.store.url(&key), bytes)?,
                None => BTreeMap::new(),
            };
            by_row.insert(new.row_id.clone(), new.clone());
            let bytes = serialize(by_row.values());
            let written = match &current {
                Some((_, version)) => self.store.update(&key, &bytes, version)?,
                None => self.store.create(&key, &bytes)?,
            };
            if written.is_some() {
                return Ok(new);
            }
        }
    }

    /// Every label of `node`, by row id.
    pub fn of_node(&self, node: &str) -> Result<BTreeMap<String, Label>> {
        if !valid_node(node) {
            return Ok(BTreeMap::new());
        }
        let key = Self::key(node);
        match self.store.get(&key)? {
            Some((bytes, _)) => parse(&self.store.url(&key), &bytes),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Every label in the workspace, by node then row id.
    pub fn all(&self) -> Result<Vec<Label>> {
        let mut out = Vec::new();
        for object in self.store.list(PREFIX)? {
            if let Some(node) = object.key.strip_prefix("labels/").and_then(|k| k.strip_suffix(".jsonl")) {
                out.extend(self.of_node(node)?.into_values());
            }
        }
        Ok(out)
    }

    /// The schema of the `labels` table.
    pub fn schema() -> SchemaRef {
        let text = |name| Field::new(name, DataType::Utf8, false);
        Arc::new(Schema::new(vec![text("node"), text("row_id"), text("label"), text("labeled_at")]))
    }

    /// Every label as one batch of the `labels` table.
    pub fn table(&self) -> Result<RecordBatch> {
        let all = self.all()?;
        let column = |f: &dyn Fn(&Label) -> &str| Arc::new(StringArray::from_iter_values(all.iter().map(f))) as _;
        Ok(RecordBatch::try_new(
            Self::schema(),
            vec![column(&|l| &l.node), column(&|l| &l.row_id), column(&|l| l.label.as_str()), column(&|l| &l.labeled_at)],
        )?)
    }
}

fn valid_node(node: &str) -> bool {
    !node.is_empty() && node.len() <= 128 && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse(path: &str, bytes: &[u8]) -> Result<BTreeMap<String, Label>> {
    let mut out = BTreeMap::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let label: Label = serde_json::from_slice(line).map_err(|e| Error::Workspace {
            path: path.into(),
            message: format!("line {} is not a label ({e}); fix or remove the line", n + 1),
        })?;
        out.insert(label.row_id.clone(), label);
    }
    Ok(out)
}

fn serialize<'a>(labels: impl Iterator<Item = &'a Label>) -> Vec<u8> {
    let mut out = Vec::new();
    for label in labels {
        // A label is plain strings: serialising cannot fail.
        out.extend(serde_json::to_vec(label).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::store::LocalStore;

    #[test]
    fn a_label_is_replaced_not_repeated_and_other_nodes_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let labels = Labels::new(Arc::new(LocalStore::new(dir.path().to_path_buf())));
        labels.set("dino", "abc1", Verdict::Accept).unwrap();
        labels.set("dino", "abc2", Verdict::Reject).unwrap();
        labels.set("dino", "abc1", Verdict::Reject).unwrap();
        labels.set("pairs", "abc1", Verdict::Skip).unwrap();
        let dino = labels.of_node("dino").unwrap();
        assert_eq!(dino.len(), 2);
        assert_eq!(dino["abc1"].label, Verdict::Reject);
        let table = labels.table().unwrap();
        assert_eq!(table.num_rows(), 3);
        assert!(labels.set("../x", "abc", Verdict::Accept).is_err());
        assert!(labels.set("dino", "a/b", Verdict::Accept).is_err());
    }
}
