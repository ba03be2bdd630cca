//! `sql`: a DataFusion query over the node's inputs, each input's table named after its node.
//!
//! A `sql` node is a view unless told otherwise: nothing is written; whoever reads it (a query,
//! an export, a compute node, another view) runs the query over the inputs' committed parts,
//! and a chain of views is one DataFusion plan. It is stored instead (`materialize = true`,
//! or a query whose result may differ between runs: `random()`, `now()`, `uuid()`).

use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart, visit_relations_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::StreamExt;
use unoflow_api::params::ParamType;
use unoflow_api::{DeviceDependence, ExecContext, OpSpec, ParamValue, Params, Resource, RowMapping};

use super::{Derived, Op, OpKind, OpenContext, SchemaError, Unit, UnitOutput, UnitPlan, UnitRunner, Work};
use crate::data::NodeData;
use crate::error::{Error, Result};
use crate::query::{self, NodePlan, Verify};
use crate::workspace::Storage;

unoflow_api::params! {
    /// `sql`'s parameters.
    pub struct SqlParams {
        /// the SELECT statement
        pub query: String = required(ParamType::Sql),
        /// store the result instead of computing it when read (a query over large inputs read by many consumers; results are the same either way)
        pub materialize: bool = optional(ParamType::Bool, false).not_fingerprinted(),
    }
}

pub static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "sql",
    version: 1,
    summary: "a SQL query (DataFusion) over the node's inputs, each a table named after its node; a view unless materialised",
    doc: "The query sees each input as a table named after the input node; `errors.NODE` holds that node's failed rows. \
          Rows keep the `row_id` the query passes through; rows without one get an id from their content. Queries are \
          read-only. The node is a view: nothing is stored, and readers run the query over the inputs (a chain of views \
          is one plan). `materialize = true` stores the result, as does a query calling a function whose result can \
          differ between runs (`random()`, `now()`, `uuid()`), so what was read once is what is read later.",
    params: SqlParams::specs(),
    inputs: (1, usize::MAX),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: usize::MAX,
    device_dependence: DeviceDependence::Independent,
});

/// The `sql` kind.
#[derive(Debug, Clone, Copy)]
pub struct Sql;

impl OpKind for Sql {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn bind(&self, params: &Params) -> std::result::Result<Arc<dyn Op>, SchemaError> {
        Ok(Arc::new(SqlNode(SqlParams::parse(params).map_err(|e| SchemaError::from_op(&SPEC, e))?)))
    }
}

#[derive(Debug)]
struct SqlNode(SqlParams);

#[async_trait::async_trait]
impl Op for SqlNode {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    /// The query planned against empty tables of the input schemas.
    async fn derive(&self, inputs: &[(String, SchemaRef)]) -> std::result::Result<Derived, SchemaError> {
        let ctx = query::session();
        for (name, schema) in inputs {
            let table = MemTable::try_new(Arc::clone(schema), vec![vec![]]).map_err(|e| SchemaError::at("query", e.to_string()))?;
            ctx.register_table(name.as_str(), Arc::new(table)).map_err(|e| SchemaError::at("query", e.to_string()))?;
        }
        let NodePlan { plan, .. } = query::node_plan(&ctx, &self.0.query).await.map_err(|e| {
            let names: Vec<_> = inputs.iter().map(|(n, _)| format!("`{n}`")).collect();
            SchemaError::at("query", format!("invalid query: {}", e.strip_backtrace()))
                .with_help(format!("the query can read the node's inputs: {}", names.join(", ")))
        })?;
        let schema = query::with_row_id(plan.schema().as_arrow()).map_err(|m| SchemaError::at("query", m))?;
        let storage = if self.0.materialize || query::is_volatile(&plan) { Storage::Table } else { Storage::View };
        Ok(Derived { schema, storage })
    }

    fn fingerprint_value(&self, name: &str, value: &ParamValue, input_names: &[&str]) -> serde_json::Value {
        match (name, value) {
            ("query", ParamValue::Str(q)) => serde_json::Value::String(canonical_query(q, input_names)),
            _ => value.to_json(),
        }
    }

    fn view_query(&self) -> Option<&str> {
        Some(&self.0.query)
    }

    fn units(&self, _inputs: &[NodeData]) -> Result<UnitPlan> {
        Ok(UnitPlan::Listed(vec![Unit { index: 0, key: "whole".into(), rows: 0, work: Work::Whole }]))
    }

    async fn open(&self, ctx: OpenContext) -> Result<Arc<dyn UnitRunner>> {
        Ok(Arc::new(Materialize { query: self.0.query.clone(), inputs: ctx.inputs }))
    }
}

/// Stores a `sql` node's result (a materialised or volatile query).
struct Materialize {
    query: String,
    inputs: Vec<NodeData>,
}

#[async_trait::async_trait]
impl UnitRunner for Materialize {
    async fn run(&self, _unit: Unit, _exec: ExecContext) -> Result<UnitOutput> {
        let ctx = query::session();
        for input in &self.inputs {
            query::register(&ctx, input, Verify::AlreadyChecked).await?;
        }
        let NodePlan { plan, ids } = query::node_plan(&ctx, &self.query).await?;
        let rows = query::ordered_stream(DataFrame::new(ctx.state(), plan)).await?.map(|b| b.map_err(Error::from));
        Ok(UnitOutput { rows: Box::pin(rows), errors: Box::pin(async { Ok(Vec::new()) }), ids })
    }
}

/// The query with its input tables renamed to their position (`__input_0`, …), and its
/// whitespace and keyword case normalised: the form that goes into the fingerprint, so renaming
/// an input node (and the query with it) or reformatting the query keeps the cache.
pub fn canonical_query(query: &str, inputs: &[&str]) -> String {
    let Ok(mut statements) = Parser::parse_sql(&GenericDialect {}, query) else {
        return query.trim().to_string();
    };
    let _ = visit_relations_mut(&mut statements, |name: &mut ObjectName| {
        if let [ObjectNamePart::Identifier(ident)] = name.0.as_slice()
            && let Some(i) = inputs.iter().position(|n| n.eq_ignore_ascii_case(&ident.value))
        {
            *name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(format!("__input_{i}")))]);
        }
        ControlFlow::<()>::Continue(())
    });
    statements.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_ignores_input_names_and_layout() {
        let a = canonical_query("SELECT *   FROM thumbs\nWHERE width > 3", &["thumbs"]);
        let b = canonical_query("select * from small where width > 3", &["small"]);
        assert_eq!(a, b);
        let c = canonical_query("SELECT * FROM thumbs WHERE width > 4", &["thumbs"]);
        assert_ne!(a, c);
    }
}
