//! DAG files: parsing, interpolation and validation into a [`Dag`] ready to plan and run.
//!
//! ```text
//!   TOML text ──raw::parse──► RawDag (spans) ──interpolate, check params, inputs, cycles,
//!   files──► nodes in topological order ──schemas (producer → consumer)──► Dag
//! ```
//!
//! Every problem becomes a [`Diagnostic`] with the file, line and column and a fix; all problems
//! found are reported together, and nothing runs.

mod build;
pub mod interpolate;
pub mod raw;
mod vars;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use unoflow_api::params::PathKind;
use unoflow_api::{ParamType, ParamValue, Params};

pub use build::{Depth, LoadOptions, check_vars, load, load_with};
pub use vars::VarOverride;

use crate::diagnostic::SourceFile;
use crate::graph::Graph;
use crate::ops::Op;
use crate::workspace::{Location, Storage};

/// A validated DAG.
#[derive(Debug)]
pub struct Dag {
    pub file: Arc<SourceFile>,
    pub name: String,
    pub seed: u64,
    /// The folder of the DAG file; relative paths in it are relative to this.
    pub dag_dir: PathBuf,
    /// Where outputs are stored (from `[dag] workspace`, `--workspace`, or `.unoflow/NAME`
    /// beside the DAG file).
    pub workspace: Location,
    /// Nodes in topological order (ties in file order).
    pub nodes: Vec<Node>,
    /// Which node reads which (indices into `nodes`).
    pub graph: Graph,
    /// Images with more pixels are refused when decoded (a row error), not allocated.
    pub max_image_pixels: u64,
    /// The device the DAG is planned and run for (`--device`, through
    /// [`LoadOptions::device`]): its class and precision are part of model nodes' fingerprints.
    pub device: unoflow_api::Device,
    /// The `--var` overrides of `[vars]` it was loaded with (the last of each name), for the
    /// run record.
    pub vars: Vec<VarOverride>,
}

/// One node of a DAG.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// The node's operation, its parameters read.
    pub op: Arc<dyn Op>,
    /// Indices of the input nodes in [`Dag::nodes`], in declared order.
    pub inputs: Vec<usize>,
    /// Checked parameters, defaults filled in, paths absolute.
    pub params: Params,
    /// Changing the salt recomputes the node (and its descendants) with nothing else changed.
    pub salt: Option<String>,
    /// Parameters whose values must never be written anywhere (declared secret, or made from a
    /// secret-looking environment variable).
    pub secret_params: BTreeSet<String>,
    /// Span of the node's name in its `[nodes.NAME]` header.
    pub span: Range<usize>,
    /// The node's output schema.
    pub schema: SchemaRef,
    /// Stored, or a view computed when read.
    pub storage: Storage,
}

/// A path parameter of a node that is set: a file or folder on this machine's disk that the
/// node reads (data, a model folder, a word list) or writes (an export).
#[derive(Debug, Clone, PartialEq)]
pub struct FileParam<'a> {
    pub node: &'a str,
    pub param: &'static str,
    /// Absolute (validation resolved it against the DAG file's folder).
    pub path: &'a str,
    pub kind: PathKind,
}

impl Node {
    /// The node's path parameters that are set (an optional one left out is empty).
    pub fn file_params(&self) -> impl Iterator<Item = FileParam<'_>> {
        self.op.spec().params.iter().filter_map(move |spec| {
            let ParamType::Path(kind) = spec.ty else { return None };
            match self.params.get(spec.name) {
                // A URL (`s3://…`) is on no machine's disk: every host fetches it.
                Some(ParamValue::Str(path)) if !path.is_empty() && !crate::remote::RemoteUrl::is_remote(path) => {
                    Some(FileParam { node: &self.name, param: spec.name, path, kind })
                }
                _ => None,
            }
        })
    }

    /// The name of the node's op (`read`, `sql`, `thumbnail`, …).
    pub fn op_name(&self) -> &'static str {
        self.op.spec().name
    }
}

impl Dag {
    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The names of a node's inputs.
    pub fn input_names(&self, node: &Node) -> Vec<&str> {
        node.inputs.iter().map(|&i| self.nodes[i].name.as_str()).collect()
    }

    /// Indices of `targets` and all their ancestors, in topological order.
    pub fn with_ancestors(&self, targets: &[usize]) -> Vec<usize> {
        self.graph.with_ancestors(targets).into_iter().collect()
    }

    /// Indices of `sources` and every node that reads from them, in topological order.
    pub fn with_descendants(&self, sources: &[usize]) -> Vec<usize> {
        self.graph.with_descendants(sources).into_iter().collect()
    }

    /// Every node's path parameters that are set, in node order (see [`Node::file_params`]).
    pub fn file_params(&self) -> Vec<FileParam<'_>> {
        self.nodes.iter().flat_map(Node::file_params).collect()
    }

    /// The path of the DAG file, for messages.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}
