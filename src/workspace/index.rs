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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    pub nodes: BTreeMap<String, IndexEntry>,
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

    pub(super) fn save(&self, store: &dyn Store) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        store.put(KEY, &bytes)
    }
}
