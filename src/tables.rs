//! Which node outputs a read-only command (`sql`, `lineage`) sees: the current fingerprints of a
//! DAG's nodes, or, with only a workspace, the fingerprints its index last recorded.

use std::path::Path;
use std::sync::Arc;

use crate::dag::Dag;
use crate::error::{Error, Result};
use crate::fingerprint::Components;
use crate::query::NodeTable;
use crate::workspace::{Index, Workspace};

/// A node output with what made it.
#[derive(Debug, Clone)]
pub struct Located {
    pub table: NodeTable,
    pub components: Components,
}

/// The complete node outputs, by name, and the names of nodes that have none.
#[derive(Debug, Default)]
pub struct Catalog {
    pub tables: Vec<Located>,
    pub missing: Vec<String>,
}

impl Catalog {
    /// From a DAG: each node's output for its current fingerprint.
    pub fn of_dag(dag: &Dag) -> Result<Self> {
        let ws = Workspace::open(&dag.workspace)?;
        let components = crate::fingerprint::compute(dag)?;
        let mut catalog = Self::default();
        for (node, comps) in dag.nodes.iter().zip(components) {
            catalog.add(&ws, &node.name, comps);
        }
        Ok(catalog)
    }

    /// From a workspace alone: the outputs its index names.
    pub fn of_workspace(root: &Path) -> Result<Self> {
        let ws = Workspace::open(root)?;
        let index = Index::load(ws.root());
        let mut catalog = Self::default();
        for (name, entry) in index.nodes {
            catalog.add(&ws, &name, entry.components);
        }
        Ok(catalog)
    }

    fn add(&mut self, ws: &Workspace, name: &str, components: Components) {
        let fp = components.fingerprint();
        match ws.manifest(&fp) {
            Ok(Some(manifest)) => self.tables.push(Located {
                table: NodeTable { name: name.to_string(), node_dir: ws.node_dir(&fp), manifest: Arc::new(manifest) },
                components,
            }),
            _ => self.missing.push(name.to_string()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Located> {
        self.tables.iter().find(|t| t.table.name == name)
    }

    /// The output with fingerprint `fp`, whatever its node is called now.
    pub fn by_fingerprint(&self, fp: &str) -> Option<&Located> {
        self.tables.iter().find(|t| t.table.manifest.fingerprint == fp)
    }

    /// Looks up a node, with a helpful error.
    pub fn require(&self, name: &str) -> Result<&Located> {
        self.get(name).ok_or_else(|| {
            if self.missing.iter().any(|m| m == name) {
                Error::Usage(format!("node `{name}` has no output yet: run the DAG first"))
            } else {
                let hint = crate::diagnostic::did_you_mean(name, self.tables.iter().map(|t| t.table.name.as_str()))
                    .map(|m| format!(" (did you mean `{m}`?)"))
                    .unwrap_or_default();
                Error::Usage(format!("no node `{name}` in this workspace{hint}"))
            }
        })
    }
}
