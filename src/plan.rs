//! What `run` would do: for each node, whether its output is cached, stale or missing, and why.

use std::path::Path;

use serde::Serialize;

use crate::dag::Dag;
use crate::error::Result;
use crate::fingerprint::{self, Components};
use crate::ops::{OpKind, export};
use crate::workspace::{Index, Manifest, Workspace};

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
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Stale => "stale",
            Self::Missing => "missing",
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

/// Plans `dag` against its workspace. Reads only: works while a run is in progress.
pub fn plan(dag: &Dag) -> Result<Plan> {
    let components = fingerprint::compute(dag)?;
    let ws = Workspace::open_existing(&dag.workspace)?;
    // A damaged index only loses the explanations of what changed.
    let index = ws.as_ref().and_then(|ws| Index::load(ws.root()).ok()).unwrap_or_default();
    let mut nodes = Vec::with_capacity(dag.nodes.len());
    for (node, comps) in dag.nodes.iter().zip(&components) {
        let fp = comps.fingerprint();
        let Some(ws) = &ws else {
            nodes.push(NodePlan {
                node: node.name.clone(),
                fingerprint: fp,
                state: State::Missing,
                reasons: vec!["never computed".into()],
            });
            continue;
        };
        let node_dir = ws.node_dir(&fp);
        let (state, reasons) = match ws.manifest(&fp) {
            Ok(Some(manifest)) => match damage(&node_dir, &manifest, &node.op, &node.params) {
                None => (State::Cached, Vec::new()),
                Some(why) => (State::Stale, vec![why]),
            },
            Ok(None) | Err(_) => {
                let previous = index.nodes.get(&node.name).filter(|e| e.fingerprint != fp);
                let mut reasons = match previous {
                    Some(old) => comps.changes_since(&old.components),
                    None if index.nodes.contains_key(&node.name) => vec!["its output is no longer in the workspace".into()],
                    None => vec!["never computed".into()],
                };
                let committed = crate::workspace::read_commits(&node_dir).len();
                if committed > 0 {
                    reasons.push(format!("{committed} unit{} already committed: the run resumes", if committed == 1 { "" } else { "s" }));
                }
                (if previous.is_some() { State::Stale } else { State::Missing }, reasons)
            }
        };
        nodes.push(NodePlan { node: node.name.clone(), fingerprint: fp, state, reasons });
    }
    Ok(Plan { nodes, components })
}

/// Whether a complete output is still whole (every file against its committed size and
/// digest, as `run` checks before reusing it), and an export's files still where it wrote them.
fn damage(node_dir: &Path, manifest: &Manifest, op: &OpKind, params: &unoflow_operators::Params) -> Option<String> {
    for f in manifest.files() {
        if let Err(why) = crate::workspace::verify_file(node_dir, f) {
            return Some(format!("output damaged: {why}; it will be recomputed"));
        }
    }
    if matches!(op, OpKind::Export) {
        return export::missing_output(node_dir, manifest, params).map(|p| format!("exported file {p} is missing"));
    }
    None
}
