//! Which node outputs a reading command (`sql`, `lineage`, `serve`) sees: the current
//! fingerprints of a DAG's nodes, or, with only a workspace, the fingerprints its index last
//! recorded. Stored outputs are their committed parts; views are their queries over the
//! outputs they read.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::dag::Dag;
use crate::data::{NodeData, TableData, ViewData};
use crate::error::{Error, Result};
use crate::fingerprint::Components;
use crate::query::{self, Verify};
use crate::workspace::{Index, Location, Storage, Workspace};

/// The table of reviewers' labels (see `workspace::Labels`).
pub const LABELS: &str = "labels";

/// A node output with what made it.
#[derive(Debug, Clone)]
pub struct Located {
    pub data: NodeData,
    pub components: Components,
}

/// The node outputs, by name, the nodes that have none, and those whose output is damaged.
#[derive(Debug, Default)]
pub struct Catalog {
    pub tables: Vec<Located>,
    pub missing: Vec<String>,
    pub damaged: Vec<(String, String)>,
    /// The workspace, for messages.
    pub workspace: Option<Location>,
}

/// A node as the catalog learns it: its name, storage, what made it, the query of a view, and
/// its inputs' names.
struct Known {
    name: String,
    storage: Storage,
    components: Components,
    query: Option<String>,
}

/// Refuses an index that several DAGs wrote, naming them and how to choose one. A DAG is its
/// `[dag] name`: the same file run from another checkout, host or pod (another path) is the
/// same DAG.
fn one_dag(index: &Index, root: &Location) -> Result<()> {
    let dags = index.dags();
    let names: std::collections::BTreeSet<&str> = dags.iter().map(|d| d.name.as_str()).collect();
    if names.len() <= 1 {
        return Ok(());
    }
    let listed: Vec<String> = dags.iter().map(|d| format!("  {d}")).collect();
    Err(Error::Usage(format!(
        "the workspace {root} holds the outputs of {} DAGs, so a node name may mean either:\n{}\n\
         say which with --dag DAG (one of the files above, with --workspace {root})",
        names.len(),
        listed.join("\n"),
    )))
}

impl Catalog {
    /// From a DAG: each node's output for its current fingerprint.
    pub fn of_dag(dag: &Dag) -> Result<Self> {
        let ws = Workspace::open(&dag.workspace)?;
        let components = crate::fingerprint::compute(dag)?;
        let known = dag
            .nodes
            .iter()
            .zip(components)
            .map(|(node, components)| Known {
                name: node.name.clone(),
                storage: node.storage,
                components,
                query: node.op.view_query().map(str::to_string),
            })
            .collect();
        Ok(Self::build(&ws, known))
    }

    /// From a workspace alone: the outputs its index names. A workspace that several DAGs wrote
    /// is refused (exit 2): its index holds each name's last writer, so a name two DAGs share
    /// would answer from whichever ran last; the error lists the DAGs to pass as `--dag`.
    pub fn of_workspace(root: &Location) -> Result<Self> {
        let ws = Workspace::open(root)?;
        let index = ws.index()?;
        one_dag(&index, root)?;
        let mut known = Vec::new();
        for (name, entry) in index.nodes {
            let components: Components = serde_json::from_value(entry.components).map_err(|e| Error::Workspace {
                path: PathBuf::from(ws.store().url("index.json")),
                message: format!("the entry of node `{name}` is damaged ({e}); `unoflow run` with the DAG rewrites it"),
            })?;
            let query = components.written.get("query").and_then(|q| q.as_str()).map(str::to_string);
            known.push(Known { name, storage: entry.storage, components, query });
        }
        Ok(Self::build(&ws, known))
    }

    /// Finds each node's data; views after the outputs they read.
    fn build(ws: &Workspace, mut known: Vec<Known>) -> Self {
        let mut catalog = Self { workspace: Some(ws.location().clone()), ..Self::default() };
        // Stored outputs first, then views whose inputs are found, until nothing changes.
        let (tables, mut views): (Vec<Known>, Vec<Known>) = known.drain(..).partition(|k| k.storage == Storage::Table);
        for k in tables {
            let fp = k.components.fingerprint();
            let store = ws.node(&fp);
            match store.manifest() {
                Ok(Some(manifest)) => {
                    let data = NodeData::Table(Arc::new(TableData { name: k.name.clone(), store, manifest: Arc::new(manifest) }));
                    catalog.tables.push(Located { data, components: k.components });
                }
                Ok(None) => catalog.missing.push(k.name),
                Err(why) => catalog.damaged.push((k.name, why)),
            }
        }
        loop {
            let before = views.len();
            let mut waiting = Vec::new();
            for k in views {
                let inputs: Option<Vec<NodeData>> = k
                    .components
                    .inputs
                    .iter()
                    .map(|input| catalog.by_fingerprint(&input.fingerprint).map(|l| l.data.renamed(&input.name)))
                    .collect();
                match (inputs, &k.query) {
                    (Some(inputs), Some(query)) => {
                        let view = ViewData { name: k.name.clone(), fingerprint: k.components.fingerprint(), query: query.clone(), inputs };
                        catalog.tables.push(Located { data: NodeData::View(Arc::new(view)), components: k.components });
                    }
                    _ => waiting.push(k),
                }
            }
            views = waiting;
            if views.len() == before {
                break;
            }
        }
        // Views whose inputs have no output (or are damaged) have none either.
        catalog.missing.extend(views.into_iter().map(|k| k.name));
        catalog
    }

    /// Why node `name`'s output cannot be read, if it is damaged.
    pub fn damage_of(&self, name: &str) -> Option<&str> {
        self.damaged.iter().find(|(n, _)| n == name).map(|(_, why)| why.as_str())
    }

    /// A session holding the tables `query` reads (and their error tables), each verified
    /// against its committed digests first. Tables the query does not name are neither read nor
    /// checked, so a damaged node does not stop queries over the others.
    pub async fn session_for(&self, query: &str) -> Result<SessionContext> {
        self.register_for(query::session(), query).await
    }

    /// [`Catalog::session_for`] in a session whose queries hold at most `memory` bytes (see
    /// [`query::bounded_session`]): for queries a request starts.
    pub async fn bounded_session_for(&self, query: &str, memory: usize) -> Result<SessionContext> {
        self.register_for(query::bounded_session(memory)?, query).await
    }

    async fn register_for(&self, ctx: SessionContext, query: &str) -> Result<SessionContext> {
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(query, &dialect).map_err(|e| Error::Usage(e.strip_backtrace()))?;
        let references = state.resolve_table_references(&statement).map_err(|e| Error::Usage(e.strip_backtrace()))?;
        for reference in &references {
            if let Some(why) = self.damage_of(reference.table()) {
                return Err(self.damaged_error(reference.table(), why));
            }
        }
        // The information schema lists every table, so a query over it gets them all.
        let everything = references.iter().any(|r| r.schema() == Some("information_schema"));
        for located in &self.tables {
            if everything || references.iter().any(|r| r.table() == located.data.name()) {
                query::register(&ctx, &located.data, Verify::Digests).await?;
            }
        }
        // Reviewers' labels are the table `labels`, unless a node has that name.
        let labels_named = everything || references.iter().any(|r| r.table() == LABELS && r.schema().is_none());
        if labels_named && self.get(LABELS).is_none() {
            self.register_labels(&ctx)?;
        }
        Ok(ctx)
    }

    /// Registers the workspace's labels as the table `labels` (empty without a workspace).
    pub fn register_labels(&self, ctx: &SessionContext) -> Result<()> {
        let batch = match &self.workspace {
            Some(location) => Workspace::open(location)?.labels().table()?,
            None => datafusion::arrow::array::RecordBatch::new_empty(crate::workspace::Labels::schema()),
        };
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        ctx.register_table(LABELS, Arc::new(table))?;
        Ok(())
    }

    fn damaged_error(&self, name: &str, why: &str) -> Error {
        Error::Workspace {
            path: PathBuf::from(self.workspace.as_ref().map(ToString::to_string).unwrap_or_default()),
            message: format!("the output of node `{name}` is damaged: {why}; run the DAG again to recompute it"),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Located> {
        self.tables.iter().find(|t| t.data.name() == name)
    }

    /// The output with fingerprint `fp`, whatever its node is called now.
    pub fn by_fingerprint(&self, fp: &str) -> Option<&Located> {
        self.tables.iter().find(|t| t.data.fingerprint() == fp)
    }

    /// Looks up a node, with a helpful error.
    pub fn require(&self, name: &str) -> Result<&Located> {
        self.get(name).ok_or_else(|| {
            if let Some(why) = self.damage_of(name) {
                self.damaged_error(name, why)
            } else if self.missing.iter().any(|m| m == name) {
                Error::Usage(format!("node `{name}` has no output yet: run the DAG first"))
            } else {
                let hint = crate::diagnostic::did_you_mean(name, self.tables.iter().map(|t| t.data.name()))
                    .map(|m| format!(" (did you mean `{m}`?)"))
                    .unwrap_or_default();
                Error::Usage(format!("no node `{name}` in this workspace{hint}"))
            }
        })
    }
}
