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
    /// Reads the index; a missing or unreadable one is empty (it only feeds explanations).
    pub fn load(workspace: &Path) -> Self {
        std::fs::read(workspace.join("index.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub fn save(&self, workspace: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&workspace.join("index.json"), &bytes)
    }
}
