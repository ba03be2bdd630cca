//! `sql`: a DataFusion query over the node's inputs, each input's table named after its node.

use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart, visit_relations_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use unoflow_operators::{OpSpec, ParamSpec, ParamType, Params, Resource, RowMapping};

use super::SchemaError;
use super::read::with_row_id;

pub static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "sql",
    version: 1,
    summary: "a SQL query (DataFusion) over the node's inputs, each a table named after its node",
    doc: "The query sees each input as a table named after the input node; `errors.NODE` holds \
          that node's failed rows. Rows keep the `row_id` the query passes through; rows without \
          one get an id from their content. Queries are read-only.",
    params: vec![ParamSpec::required("query", ParamType::Sql, "the SELECT statement")],
    inputs: (1, usize::MAX),
    resource: Resource::Cpu,
    mapping: RowMapping::Preserve,
    partition_rows: usize::MAX,
});

/// Queries may read, never write: no DDL, DML (`COPY`, `INSERT`) or `SET` statements.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Plans `query` against `ctx` as a read-only statement.
pub async fn plan(ctx: &SessionContext, query: &str) -> datafusion::error::Result<DataFrame> {
    ctx.sql_with_options(query, read_only()).await
}

/// The output schema: the query planned against empty tables of the input schemas.
pub async fn output_schema(params: &Params, inputs: &[(String, SchemaRef)]) -> Result<SchemaRef, SchemaError> {
    let query = params.str("query").map_err(|e| SchemaError::at("query", e.to_string()))?;
    let ctx = crate::query::session();
    for (name, schema) in inputs {
        let table = MemTable::try_new(Arc::clone(schema), vec![vec![]]).map_err(|e| SchemaError::at("query", e.to_string()))?;
        ctx.register_table(name.as_str(), Arc::new(table)).map_err(|e| SchemaError::at("query", e.to_string()))?;
    }
    let df = plan(&ctx, query).await.map_err(|e| {
        let names: Vec<_> = inputs.iter().map(|(n, _)| format!("`{n}`")).collect();
        SchemaError::at("query", format!("invalid query: {}", e.strip_backtrace()))
            .with_help(format!("the query can read the node's inputs: {}", names.join(", ")))
    })?;
    with_row_id(df.schema().as_arrow().clone()).map_err(|m| SchemaError::at("query", m))
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
