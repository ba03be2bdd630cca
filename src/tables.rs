//! Which node outputs a read-only command (`sql`, `lineage`) sees: the current fingerprints of a
//! DAG's nodes, or, with only a workspace, the fingerprints its index last recorded.

use std::path::{Path, PathBuf};

use datafusion::prelude::SessionContext;
use std::sync::Arc;

use crate::dag::Dag;
use crate::error::{Error, Result};
use crate::fingerprint::Components;
use crate::query::{self, NodeTable};
use crate::workspace::{Index, Workspace};

/// A node output with what made it.
#[derive(Debug, Clone)]
pub struct Located {
    pub table: NodeTable,
    pub components: Components,
}

/// The complete node outputs, by name, the names of nodes that have none, and those whose
/// output is damaged (with why).
#[derive(Debug, Default)]
pub struct Catalog {
    pub tables: Vec<Located>,
    pub missing: Vec<String>,
    pub damaged: Vec<(String, String)>,
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
        let index = Index::load(ws.root())?;
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
            Ok(None) => self.missing.push(name.to_string()),
            Err(why) => self.damaged.push((name.to_string(), why)),
        }
    }

    /// Why node `name`'s output cannot be read, if it is damaged.
    pub fn damage_of(&self, name: &str) -> Option<&str> {
        self.damaged.iter().find(|(n, _)| n == name).map(|(_, why)| why.as_str())
    }

    /// A session holding the tables `query` reads (and their error tables), each verified
    /// against its committed digests first. Tables the query does not name are neither read nor
    /// checked, so a damaged node does not stop queries over the others.
    pub async fn session_for(&self, query: &str) -> Result<SessionContext> {
        let ctx = query::session();
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(query, &dialect).map_err(|e| Error::Usage(e.strip_backtrace()))?;
        let references = state.resolve_table_references(&statement).map_err(|e| Error::Usage(e.strip_backtrace()))?;
        // The information schema lists every table, so a query over it gets them all.
        let everything = references.iter().any(|r| r.schema() == Some("information_schema"));
        for located in &self.tables {
            let name = located.table.name.as_str();
            if everything || references.iter().any(|r| r.table() == name) {
                query::register(&ctx, &located.table, query::Verify::Digests).await?;
            }
        }
        for reference in &references {
            if let Some(why) = self.damage_of(reference.table()) {
                return Err(Error::Workspace {
                    path: PathBuf::from(reference.table()),
                    message: format!("the output of node `{}` is damaged: {why}; run the DAG again to recompute it", reference.table()),
                });
            }
        }
        Ok(ctx)
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
            if let Some(why) = self.damage_of(name) {
                Error::Workspace {
                    path: PathBuf::from(name),
                    message: format!("the output of node `{name}` is damaged: {why}; run the DAG again to recompute it"),
                }
            } else if self.missing.iter().any(|m| m == name) {
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
