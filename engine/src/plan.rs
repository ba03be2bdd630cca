//! What `run` would do: for each node, whether its output is cached, stale, missing or a view,
//! and why. Reads only.

use std::sync::Arc;

use serde::Serialize;

use crate::dag::{Dag, Node};
use crate::data::TableData;
use crate::error::Result;
use crate::fingerprint::{self, Components};
use crate::workspace::{Index, NodeStore, Storage, Workspace};

/// A node's state in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its output for the current fingerprint is complete: `run` reuses it.
    Cached,
    /// The node was computed before, with different inputs or parameters (or its output was
    /// damaged): `run` recomputes it.
    Stale,
    /// There is no output for it yet: `run` computes it, resuming any committed units.
    Missing,
    /// A `sql` node stored as a view: nothing to compute; readers run its query.
    View,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Stale => "stale",
            Self::Missing => "missing",
            Self::View => "view",
        }
    }
}

/// One node of a plan; `plan --json` prints these.
#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub node: String,
    pub fingerprint: String,
    pub state: State,
    pub reasons: Vec<String>,
}

/// A plan and the fingerprint components it was made from.
#[derive(Debug)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
    pub components: Vec<Components>,
}

/// Plans `dag` against its workspace. Reads only: works while a run is in progress, and on a
/// workspace that does not exist yet.
pub fn plan(dag: &Dag) -> Result<Plan> {
    let components = fingerprint::compute(dag)?;
    let ws = Workspace::open_existing(&dag.workspace)?;
    // A damaged index only loses the explanations of what changed.
    let index = ws.as_ref().and_then(|ws| ws.index().ok()).unwrap_or_default();
    let nodes = dag
        .nodes
        .iter()
        .zip(&components)
        .map(|(node, comps)| {
            let fp = comps.fingerprint();
            let (state, reasons) = match (&ws, node.storage) {
                (_, Storage::View) => (State::View, Vec::new()),
                (None, Storage::Table) => (State::Missing, vec!["never computed".into()]),
                (Some(ws), Storage::Table) => state_of(node, &ws.node(&fp), comps, &index),
            };
            NodePlan { node: node.name.clone(), fingerprint: fp, state, reasons }
        })
        .collect();
    Ok(Plan { nodes, components })
}

/// A stored node's state: complete and whole (every file against its committed size and
/// digest, as `run` checks before reusing it, and an export's files still there), or why not.
fn state_of(node: &Node, store: &NodeStore, comps: &Components, index: &Index) -> (State, Vec<String>) {
    match store.manifest() {
        Ok(Some(manifest)) => {
            if let Some((_, why)) = store.damaged_units(&manifest).into_iter().next() {
                return (State::Stale, vec![format!("output damaged: {why}; it will be recomputed")]);
            }
            let table = TableData { name: node.name.clone(), store: store.clone(), manifest: Arc::new(manifest) };
            match node.op.output_missing(&table) {
                Some(missing) => (State::Stale, vec![format!("{missing} is missing")]),
                None => (State::Cached, Vec::new()),
            }
        }
        Err(why) => (State::Stale, vec![format!("{why}")]),
        Ok(None) => {
            let fp = store.fingerprint();
            let previous = index.nodes.get(&node.name).filter(|e| e.fingerprint != fp);
            let mut reasons = match previous.map(|old| serde_json::from_value::<Components>(old.components.clone())) {
                Some(Ok(old)) => comps.changes_since(&old),
                Some(Err(_)) => vec!["fingerprint changed".into()],
                None if index.nodes.contains_key(&node.name) => vec!["its output is no longer in the workspace".into()],
                None => vec!["never computed".into()],
            };
            let committed = store.commits().0.len();
            if committed > 0 {
                reasons.push(format!("{committed} unit{} already committed: the run resumes", if committed == 1 { "" } else { "s" }));
            }
            (if previous.is_some() { State::Stale } else { State::Missing }, reasons)
        }
    }
}
