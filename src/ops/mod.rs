//! The operators a DAG can name: the engine's own (`read`, `sql`, `export`), which do I/O and
//! relational work, and the compute layer's ([`unoflow_operators::Operator`]s), which map
//! partitions of rows.

pub mod export;
pub mod lines;
pub mod read;
pub mod sql;

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use unoflow_operators::columns::ColumnRequirement;
use unoflow_operators::{OpSpec, Operator, Params};

/// What a node does.
#[derive(Debug, Clone)]
pub enum OpKind {
    /// Reads files into a table.
    Read,
    /// A DataFusion query over the node's inputs.
    Sql,
    /// Writes a table out of the workspace.
    Export,
    /// A compute-layer operator applied partition by partition.
    Map(Arc<dyn Operator>),
}

/// Why an output schema could not be derived, and which parameter to point at.
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

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl OpKind {
    /// The operator's declaration.
    pub fn spec(&self) -> &OpSpec {
        match self {
            Self::Read => &read::SPEC,
            Self::Sql => &sql::SPEC,
            Self::Export => &export::SPEC,
            Self::Map(op) => op.spec(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.spec().name
    }

    /// The columns each input must have.
    pub fn required_columns(&self, params: &Params) -> Result<Vec<Vec<ColumnRequirement>>, SchemaError> {
        match self {
            Self::Read | Self::Sql => Ok(Vec::new()),
            Self::Export => export::required_columns(params),
            Self::Map(op) => op.required_columns(params).map_err(|e| operator_error(op.as_ref(), e)),
        }
    }

    /// The output schema, from the parameters and the input schemas; `inputs` pairs each input's
    /// node name with its schema.
    pub async fn output_schema(&self, params: &Params, inputs: &[(String, SchemaRef)], dag_dir: &Path) -> Result<SchemaRef, SchemaError> {
        match self {
            Self::Read => read::output_schema(params, dag_dir).await,
            Self::Sql => sql::output_schema(params, inputs).await,
            Self::Export => Ok(export::output_schema()),
            Self::Map(op) => {
                let schemas: Vec<SchemaRef> = inputs.iter().map(|(_, s)| Arc::clone(s)).collect();
                op.output_schema(params, &schemas).map_err(|e| operator_error(op.as_ref(), e))
            }
        }
    }
}

/// An operator's complaint about its parameters, pointing at the parameter when it names one.
fn operator_error(op: &dyn Operator, e: unoflow_operators::OpError) -> SchemaError {
    match e {
        unoflow_operators::OpError::Param { name, message } => match op.spec().param(&name) {
            Some(param) => {
                SchemaError { param: Some(param.name), message: format!("parameter `{name}`: {message}"), help: Some(param.doc.into()) }
            }
            None => SchemaError { param: None, message: format!("parameter `{name}`: {message}"), help: None },
        },
        other => SchemaError { param: None, message: other.to_string(), help: None },
    }
}

/// Every operator a DAG can name.
#[derive(Debug, Clone)]
pub struct Registry {
    ops: Vec<OpKind>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut ops = vec![OpKind::Read, OpKind::Sql, OpKind::Export];
        ops.extend(unoflow_operators::builtin_operators().into_iter().map(OpKind::Map));
        Self { ops }
    }
}

impl Registry {
    /// The operator called `name`.
    pub fn get(&self, name: &str) -> Option<&OpKind> {
        self.ops.iter().find(|op| op.name() == name)
    }

    /// All operators, engine ones first.
    pub fn iter(&self) -> impl Iterator<Item = &OpKind> {
        self.ops.iter()
    }

    /// All operator names, for suggestions.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.ops.iter().map(OpKind::name)
    }
}
