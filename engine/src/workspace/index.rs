//! `index.json`: for each node name, the fingerprint it last had, what that was made of and
//! whether it is stored or a view, so `plan` can say why a node is stale and a workspace can be
//! queried without its DAG.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::store::Store;
use crate::error::{Error, Result};

const KEY: &str = "index.json";

/// Where a node's output lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Committed part files.
    #[default]
    Table,
    /// A query over its inputs, computed when read.
    View,
}

/// A node's last fingerprint. `components` is what the fingerprint was made of, as the engine's
/// fingerprint module writes it (opaque here).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexEntry {
    pub fingerprint: String,
    #[serde(default)]
    pub storage: Storage,
    pub components: serde_json::Value,
    /// The DAG whose run wrote the entry: several DAGs may share a workspace, and a reader
    /// without a DAG must not mix their nodes. `None` in indexes of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dag: Option<DagRef>,
}

/// Which DAG wrote an index entry: its `[dag] name` and its file's absolute path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct DagRef {
    pub name: String,
    pub path: String,
}

impl std::fmt::Display for DagRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` ({})", self.name, self.path)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    pub nodes: BTreeMap<String, IndexEntry>,
    /// Every DAG whose runs wrote entries, in order. It only grows: a DAG whose entries another
    /// replaced (the same node names) still wrote outputs here, and a reader without a DAG
    /// cannot tell whose a name is meant to be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dags: Vec<DagRef>,
}

impl Index {
    /// Reads the index; a missing one is empty, a damaged one an error naming it.
    pub(super) fn load(store: &dyn Store) -> Result<Self> {
        match store.get(KEY)? {
            Some((bytes, _)) => serde_json::from_slice(&bytes).map_err(|e| Error::Workspace {
                path: PathBuf::from(store.url(KEY)),
                message: format!("damaged ({e}); `unoflow run` with the DAG rewrites it, or pass --dag to use the DAG's nodes"),
            }),
            None => Ok(Self::default()),
        }
    }

    /// Records that a run of `dag` writes entries.
    pub fn note_dag(&mut self, dag: &DagRef) {
        if let Err(at) = self.dags.binary_search(dag) {
            self.dags.insert(at, dag.clone());
        }
    }

    /// The DAGs that wrote entries, each once, in order (entries of earlier versions, which do
    /// not say, are not counted).
    pub fn dags(&self) -> Vec<&DagRef> {
        let set: std::collections::BTreeSet<&DagRef> = self.dags.iter().chain(self.nodes.values().filter_map(|e| e.dag.as_ref())).collect();
        set.into_iter().collect()
    }

    pub(super) fn save(&self, store: &dyn Store) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        store.put(KEY, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dag: Option<(&str, &str)>) -> IndexEntry {
        IndexEntry {
            fingerprint: "f".into(),
            storage: Storage::Table,
            components: serde_json::Value::Null,
            dag: dag.map(|(name, path)| DagRef { name: name.into(), path: path.into() }),
        }
    }

    #[test]
    fn dags_are_listed_once_and_old_entries_do_not_count() {
        let mut index = Index::default();
        index.nodes.insert("a".into(), entry(Some(("one", "/p/one.toml"))));
        index.nodes.insert("b".into(), entry(Some(("one", "/p/one.toml"))));
        index.nodes.insert("c".into(), entry(None));
        assert_eq!(index.dags().len(), 1);
        index.nodes.insert("d".into(), entry(Some(("two", "/p/two.toml"))));
        let names: Vec<String> = index.dags().iter().map(ToString::to_string).collect();
        assert_eq!(names, ["`one` (/p/one.toml)", "`two` (/p/two.toml)"]);
        // A DAG whose every entry another replaced is still counted once noted.
        let three = DagRef { name: "three".into(), path: "/p/three.toml".into() };
        index.note_dag(&three);
        index.note_dag(&three);
        assert_eq!(index.dags.len(), 1);
        assert_eq!(index.dags().len(), 3);
        // An entry of an earlier version reads without the field, and is written without it.
        let old: IndexEntry = serde_json::from_str(r#"{"fingerprint": "f", "components": null}"#).unwrap();
        assert_eq!(old.dag, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("dag"));
    }
}
