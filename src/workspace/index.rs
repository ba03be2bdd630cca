//! `index.json`: for each node name, the fingerprint it last had and what that was made of, so
//! `plan` can say why a node is stale.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::write_atomic;
use crate::error::{Error, Result};
use crate::fingerprint::Components;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexEntry {
    pub fingerprint: String,
    pub components: Components,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    pub nodes: BTreeMap<String, IndexEntry>,
}

impl Index {
    /// Reads the index; a missing one is empty, a damaged one an error naming it.
    pub fn load(workspace: &Path) -> Result<Self> {
        let path = workspace.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Workspace {
                path: path.clone(),
                message: format!("damaged ({e}); `unoflow run` with the DAG rewrites it, or pass --dag to use the DAG's nodes"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn save(&self, workspace: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&workspace.join("index.json"), &bytes)
    }
}
