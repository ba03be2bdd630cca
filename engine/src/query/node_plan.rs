//! A node's query as the engine runs it: `row_id` first, and whether the rows already have
//! unique ids or the engine must give them ids.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, LogicalPlanBuilder, Volatility};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::{StreamExt, TryStreamExt};
use unoflow_api::columns::{ROW_ID, row_id_field};

use super::ids::IdAssigner;
use super::{ordered_stream, plan};

/// Who gives a query's rows their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdPolicy {
    /// The plan only projects, filters, sorts or limits one input and passes its `row_id`
    /// through: ids stay unique, nothing to do.
    Keep,
    /// The plan can repeat or make rows (joins, unions, aggregates, unnest) or drops `row_id`:
    /// the engine assigns ids (the row's own if unique, else derived from content).
    Assign,
}

/// A node's logical plan and its id policy.
#[derive(Debug)]
pub struct NodePlan {
    /// With `IdPolicy::Keep`, already with `row_id` first.
    pub plan: LogicalPlan,
    pub ids: IdPolicy,
}

/// Plans a node's query read-only against `ctx`.
pub async fn node_plan(ctx: &SessionContext, query: &str) -> datafusion::error::Result<NodePlan> {
    let logical = plan(ctx, query).await?.logical_plan().clone();
    let row_id_is_text = logical.schema().field_with_unqualified_name(ROW_ID).is_ok_and(|f| f.data_type() == &DataType::Utf8);
    if !(row_id_is_text && keeps_row_ids(&logical)) {
        return Ok(NodePlan { plan: logical, ids: IdPolicy::Assign });
    }
    // `row_id` first, as every stored table has it.
    let columns: Vec<Expr> = logical.schema().columns().into_iter().map(Expr::Column).collect();
    let (ids, rest): (Vec<Expr>, Vec<Expr>) = columns.into_iter().partition(|e| matches!(e, Expr::Column(c) if c.name == ROW_ID));
    let plan = LogicalPlanBuilder::from(logical).project(ids.into_iter().chain(rest))?.build()?;
    Ok(NodePlan { plan, ids: IdPolicy::Keep })
}

/// Whether every output row is one input row with its `row_id` passed through.
fn keeps_row_ids(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(p) => {
            let row_id = p.schema.fields().iter().zip(&p.expr).find(|(f, _)| f.name() == ROW_ID);
            row_id.is_some_and(|(_, e)| is_row_id_column(e)) && keeps_row_ids(&p.input)
        }
        LogicalPlan::Filter(f) => keeps_row_ids(&f.input),
        LogicalPlan::Sort(s) => keeps_row_ids(&s.input),
        LogicalPlan::Limit(l) => keeps_row_ids(&l.input),
        LogicalPlan::SubqueryAlias(a) => keeps_row_ids(&a.input),
        LogicalPlan::Window(w) => keeps_row_ids(&w.input),
        LogicalPlan::Distinct(Distinct::All(input)) => keeps_row_ids(input),
        LogicalPlan::TableScan(scan) => scan.projected_schema.field_with_unqualified_name(ROW_ID).is_ok(),
        _ => false,
    }
}

fn is_row_id_column(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == ROW_ID,
        Expr::Alias(a) => is_row_id_column(&a.expr),
        _ => false,
    }
}

/// Whether the plan calls a function whose result can differ between two runs over the same
/// data (`random()`, `now()`, `uuid()`): such a query must be computed once and stored.
pub fn is_volatile(plan: &LogicalPlan) -> bool {
    let mut volatile = false;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    volatile = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    volatile
}

/// `schema` with `row_id` first, added when the data has none.
pub fn with_row_id(schema: &Schema) -> Result<SchemaRef, String> {
    match schema.field_with_name(ROW_ID) {
        Ok(f) if f.data_type() != &DataType::Utf8 => {
            Err(format!("the data has a `{ROW_ID}` column of type {}; unoflow's row ids are Utf8: rename or cast it", f.data_type()))
        }
        _ => {
            let mut fields = vec![Arc::new(row_id_field())];
            fields.extend(schema.fields().iter().filter(|f| f.name() != ROW_ID).cloned());
            Ok(Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
        }
    }
}

/// The rows of a plan that needs ids, with ids given as they stream (a view's only partition).
pub(super) struct IdentifiedRows {
    session: SessionContext,
    plan: LogicalPlan,
    schema: SchemaRef,
}

impl std::fmt::Debug for IdentifiedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentifiedRows").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl IdentifiedRows {
    pub(super) fn new(session: SessionContext, plan: LogicalPlan) -> crate::Result<Self> {
        let schema = with_row_id(plan.schema().as_arrow()).map_err(crate::Error::Execution)?;
        Ok(Self { session, plan, schema })
    }

    pub(super) fn output_schema(&self) -> &SchemaRef {
        &self.schema
    }
}

impl PartitionStream for IdentifiedRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let df = DataFrame::new(self.session.state(), self.plan.clone());
        let rows = futures::stream::once(ordered_stream(df)).try_flatten();
        let mut ids = IdAssigner::new();
        let identified = rows.map(move |batch| batch.and_then(|b| ids.assign(b).map_err(|e| DataFusionError::External(Box::new(e)))));
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), identified))
    }
}
