//! A node output as its readers see it: committed part files, or a view computed when read.

use std::sync::Arc;

use crate::workspace::{Manifest, NodeStore};

/// A node output, under the name its node has in the DAG at hand.
#[derive(Debug, Clone)]
pub enum NodeData {
    /// Committed part files.
    Table(Arc<TableData>),
    /// A query over other outputs, computed when read.
    View(Arc<ViewData>),
}

/// A materialised node output.
#[derive(Debug)]
pub struct TableData {
    pub name: String,
    pub store: NodeStore,
    pub manifest: Arc<Manifest>,
}

/// A `sql` node stored as a view: its query and the outputs it reads.
#[derive(Debug)]
pub struct ViewData {
    pub name: String,
    pub fingerprint: String,
    /// The query as written, naming its inputs by `inputs[i].name()`.
    pub query: String,
    pub inputs: Vec<NodeData>,
}

impl NodeData {
    pub fn name(&self) -> &str {
        match self {
            Self::Table(t) => &t.name,
            Self::View(v) => &v.name,
        }
    }

    pub fn fingerprint(&self) -> &str {
        match self {
            Self::Table(t) => &t.manifest.fingerprint,
            Self::View(v) => &v.fingerprint,
        }
    }

    /// The identity of the rows: two outputs with the same identity hold the same rows in the
    /// same order. A table's is its content digest; a view's combines its query (through its
    /// fingerprint) with its inputs' identities, since it is a function of them.
    pub fn identity(&self) -> String {
        match self {
            Self::Table(t) => t.manifest.content_digest.clone(),
            Self::View(v) => {
                let mut h = blake3::Hasher::new();
                h.update(b"view:").update(v.fingerprint.as_bytes());
                for input in &v.inputs {
                    h.update(b";").update(input.identity().as_bytes());
                }
                h.finalize().to_hex()[..32].to_string()
            }
        }
    }

    /// Rows, when known without reading (a view's are not).
    pub fn rows(&self) -> Option<u64> {
        match self {
            Self::Table(t) => Some(t.manifest.rows),
            Self::View(_) => None,
        }
    }

    /// The same output under another name (a DAG node that makes the same output as another).
    pub fn renamed(&self, name: &str) -> Self {
        match self {
            Self::Table(t) => {
                Self::Table(Arc::new(TableData { name: name.to_string(), store: t.store.clone(), manifest: Arc::clone(&t.manifest) }))
            }
            Self::View(v) => Self::View(Arc::new(ViewData {
                name: name.to_string(),
                fingerprint: v.fingerprint.clone(),
                query: v.query.clone(),
                inputs: v.inputs.clone(),
            })),
        }
    }
}
