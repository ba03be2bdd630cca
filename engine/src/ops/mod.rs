//! What DAG nodes do, behind one trait.
//!
//! An [`OpKind`] is what `op = "…"` names: the engine's own `read`, `sql` and `export`, and one
//! [`compute::ComputeKind`] per compute operator of `unoflow-operators`. Validation binds each
//! node's checked parameters once ([`OpKind::bind`]) into an [`Op`], which the rest of the
//! engine asks everything else: the columns it needs, its output schema and storage, what its
//! fingerprint holds, how its work splits into units, and how to run a unit. Nothing outside
//! this module matches on the kind of a node.
//!
//! ```text
//!   Registry ──op = "…"──► OpKind::bind(params) ──► Op
//!     Op::derive(input schemas) ──► Derived { schema, storage: table | view }
//!     Op::units(input data) ──► UnitPlan ──► Op::open(..) ──► UnitRunner::run(unit) ──► UnitOutput
//! ```

pub mod compute;
pub mod export;
mod export_store;
pub mod lines;
pub mod read;
pub mod sql;

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use unoflow_api::columns::ColumnRequirement;
use unoflow_api::{DeviceDependence, Environment, ExecContext, OpSpec, ParamValue, Params, PartitionOutput, Resource, RowError};

use crate::data::{NodeData, TableData};
use crate::error::Result;
use crate::query::IdPolicy;
use crate::workspace::{FileDigest, Storage};

/// Why a node's parameters or output schema are wrong, and which parameter to point at.
#[derive(Debug)]
pub struct SchemaError {
    pub param: Option<&'static str>,
    pub message: String,
    pub help: Option<String>,
}

impl SchemaError {
    pub fn at(param: &'static str, message: impl Into<String>) -> Self {
        Self { param: Some(param), message: message.into(), help: None }
    }

    pub fn new(message: impl Into<String>) -> Self {
        Self { param: None, message: message.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// An operator's complaint, pointing at the parameter it names.
    pub fn from_op(spec: &OpSpec, e: unoflow_api::OpError) -> Self {
        match e {
            unoflow_api::OpError::Param { name, message } => match spec.param(&name) {
                Some(param) => Self::at(param.name, format!("parameter `{name}`: {message}")).with_help(param.doc),
                None => Self::new(format!("parameter `{name}`: {message}")),
            },
            other => Self::new(other.to_string()),
        }
    }
}

/// What validation derives of a node.
#[derive(Debug, Clone)]
pub struct Derived {
    /// The output's columns, `row_id` first.
    pub schema: SchemaRef,
    /// Whether the output is stored or computed when read.
    pub storage: Storage,
}

impl Derived {
    /// A stored output with `schema`.
    pub fn table(schema: SchemaRef) -> Self {
        Self { schema, storage: Storage::Table }
    }
}

/// A kind of node: what `op = "…"` names.
pub trait OpKind: Send + Sync + Debug {
    /// The declaration DAG files are validated against and `unoflow ops` prints.
    fn spec(&self) -> &OpSpec;

    /// Reads a node's checked parameters (defaults filled in, paths absolute) into the kind's
    /// typed form. Called once per node, at validation.
    fn bind(&self, params: &Params) -> std::result::Result<Arc<dyn Op>, SchemaError>;
}

/// A node's operation with its parameters read: what the engine asks of a node.
///
/// # Units
/// A node's work is split into [`Unit`]s, the grain of parallelism, progress and resume; the
/// split depends only on the input data, so a rerun finds the same units and skips those
/// committed. A unit's output streams out of [`UnitRunner::run`]; the engine gives rows their
/// ids when the output says so, encodes them, and commits the unit.
///
/// # Determinism
/// The same inputs and parameters must give the same rows in the same order.
#[async_trait::async_trait]
pub trait Op: Send + Sync + Debug {
    fn spec(&self) -> &OpSpec;

    /// The columns each input must have.
    fn required_columns(&self) -> Vec<Vec<ColumnRequirement>> {
        Vec::new()
    }

    /// The output schema and storage, from the inputs' names and schemas alone.
    async fn derive(&self, inputs: &[(String, SchemaRef)]) -> std::result::Result<Derived, SchemaError>;

    /// Reads the whole source to find bad records before anything runs (`unoflow validate`).
    async fn check_data(&self) -> std::result::Result<(), SchemaError> {
        Ok(())
    }

    /// The fingerprinted form of parameter `name` (a query, canonicalised).
    fn fingerprint_value(&self, _name: &str, value: &ParamValue, _input_names: &[&str]) -> serde_json::Value {
        value.to_json()
    }

    /// A digest of the files the node reads outside the workspace (sources, model folders),
    /// part of its fingerprint.
    fn source_digest(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// What the output depends on besides parameters and files: interpreter and package
    /// versions (see [`unoflow_api::Configured::runtime`]). Part of the fingerprint when not
    /// empty.
    fn runtime(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(std::collections::BTreeMap::new())
    }

    /// The scarce resource the node holds while it runs.
    fn resource(&self) -> Resource {
        self.spec().resource
    }

    /// Whether the node's output bytes depend on the device it runs on (then the device's
    /// class and precision enter its fingerprint).
    fn device_dependence(&self) -> DeviceDependence {
        self.spec().device_dependence
    }

    /// How the node's work splits into units, given its inputs' data.
    fn units(&self, inputs: &[NodeData]) -> Result<UnitPlan>;

    /// What the node's units share (models loaded once); dropped when the node is done.
    async fn open(&self, ctx: OpenContext) -> Result<Arc<dyn UnitRunner>>;

    /// The query a node stored as a view runs when read (its names are the inputs' node names).
    fn view_query(&self) -> Option<&str> {
        None
    }

    /// Whether workers sharing the workspace compute each unit together as a gang (see
    /// `exec::gang`).
    fn data_parallel(&self) -> bool {
        false
    }

    /// For a complete output: something it made outside the workspace that is gone (an export's
    /// file), which makes it stale.
    fn output_missing(&self, _table: &TableData) -> Option<String> {
        None
    }
}

/// What [`Op::open`] gets.
#[derive(Debug, Clone)]
pub struct OpenContext {
    /// Device, seed, the node's artifact folder, the workspace.
    pub env: Environment,
    pub inputs: Vec<NodeData>,
    pub input_schemas: Vec<SchemaRef>,
    /// The node's output schema.
    pub schema: SchemaRef,
}

/// What a unit covers.
#[derive(Debug, Clone)]
pub enum Work {
    /// Rows `offset..offset+len` of one part file of the first input.
    Slice { input: Arc<TableData>, file: FileDigest, offset: usize, len: usize },
    /// Rows of a view, cut from its stream.
    Rows(RecordBatch),
    /// A group of source files.
    Files(Vec<read::Source>),
    /// The whole node, streamed.
    Whole,
    /// Nothing to do (an empty input); still committed, so the output has a schema.
    Empty,
}

/// One unit of a node's work.
#[derive(Debug, Clone)]
pub struct Unit {
    pub index: usize,
    /// Identifies the unit's coverage; commit records with another key are not reused.
    pub key: String,
    pub rows: u64,
    pub work: Work,
}

/// How a node's work splits.
#[derive(Debug)]
pub enum UnitPlan {
    /// Units known before any data is read.
    Listed(Vec<Unit>),
    /// Units cut from a view's rows as they stream, `rows_per_unit` each, keyed by their ids.
    Chunks { source: NodeData, rows_per_unit: usize },
}

/// Runs a node's units; made once per node by [`Op::open`].
#[async_trait::async_trait]
pub trait UnitRunner: Send + Sync {
    async fn run(&self, unit: Unit, exec: ExecContext) -> Result<UnitOutput>;
}

/// The output of one unit.
pub struct UnitOutput {
    /// The rows, in order.
    pub rows: BoxStream<'static, Result<RecordBatch>>,
    /// The failed rows, known once `rows` is exhausted.
    pub errors: BoxFuture<'static, Result<Vec<RowError>>>,
    /// Whether the engine must give the rows their ids.
    pub ids: IdPolicy,
}

impl std::fmt::Debug for UnitOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOutput").field("ids", &self.ids).finish_non_exhaustive()
    }
}

impl UnitOutput {
    /// An output computed all at once, whose rows have their ids.
    pub fn ready(output: PartitionOutput) -> Self {
        let PartitionOutput { rows, errors } = output;
        Self {
            rows: Box::pin(futures::stream::once(async move { Ok(rows) })),
            errors: Box::pin(async move { Ok(errors) }),
            ids: IdPolicy::Keep,
        }
    }
}

/// Every kind of node a DAG can name.
#[derive(Debug, Clone)]
pub struct Registry {
    kinds: Vec<Arc<dyn OpKind>>,
}

impl Registry {
    /// The engine's own kinds (`read`, `sql`, `export`) and `operators`, in that order.
    pub fn new(operators: Vec<Arc<dyn unoflow_api::Operator>>) -> Self {
        let mut kinds: Vec<Arc<dyn OpKind>> = vec![Arc::new(read::Read), Arc::new(sql::Sql), Arc::new(export::Export)];
        kinds.extend(operators.into_iter().map(|op| Arc::new(compute::ComputeKind::new(op)) as Arc<dyn OpKind>));
        Self { kinds }
    }

    /// The registry with `operator` added: how a program built on the engine brings an
    /// operator of its own (see the workspace's `examples/own_operator.rs`). A name taken already is refused.
    pub fn with(mut self, operator: Arc<dyn unoflow_api::Operator>) -> Result<Self> {
        let name = operator.spec().name;
        if self.get(name).is_some() {
            return Err(crate::Error::Usage(format!("an operator named `{name}` is registered already; give yours another name")));
        }
        self.kinds.push(Arc::new(compute::ComputeKind::new(operator)));
        Ok(self)
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn OpKind>> {
        self.kinds.iter().find(|k| k.spec().name == name)
    }

    /// All kinds, the engine's first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn OpKind>> {
        self.kinds.iter()
    }

    /// All names, for suggestions.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(|k| k.spec().name)
    }
}
