//! A view whose rows get their ids from the engine (joins, unions, aggregates, queries that drop
//! `row_id`), as a DataFusion table.
//!
//! An engine-given id depends on the row's content and on how many equal rows came before it,
//! so nothing can be pushed below the assignment: a query that reads `row_id` streams the whole
//! view through it. A query that does not read `row_id` (`count(*)`, an aggregate, most
//! filters) needs no ids, and gets the view planned through as DataFusion's `ViewTable` does:
//! its projections, filters and limits reach the stored parts. The rows are the same, in the
//! same order: where the plan has several partitions anywhere (a `UNION`'s branches, which only
//! the streamed path reads one after another), the streamed path is taken.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::{TableProvider, TableType, ViewTable};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use unoflow_api::columns::ROW_ID;

use super::node_plan::IdentifiedRows;

/// A view with engine-given ids (see the module docs).
#[derive(Debug)]
pub(super) struct IdentifiedView {
    /// The view's rows without ids, planned through.
    rows: ViewTable,
    /// The view's rows with ids, streamed through the assignment.
    identified: StreamingTable,
    /// For each column of the table after `row_id`, its index in the view's plan.
    plan_columns: Vec<usize>,
    schema: SchemaRef,
}

impl IdentifiedView {
    /// The view of `plan`, planned in `session` (where its inputs are registered).
    pub(super) fn new(session: SessionContext, plan: LogicalPlan) -> crate::Result<Self> {
        let plan_columns = plan.schema().fields().iter().enumerate().filter(|(_, f)| f.name() != ROW_ID).map(|(i, _)| i).collect();
        let rows = ViewTable::new(plan.clone(), None);
        let partition = IdentifiedRows::new(session, plan)?;
        let schema = Arc::clone(partition.output_schema());
        let identified = StreamingTable::try_new(Arc::clone(&schema), vec![Arc::new(partition)])?;
        Ok(Self { rows, identified, plan_columns, schema })
    }
}

#[async_trait]
impl TableProvider for IdentifiedView {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    /// Inexact: the streamed path (a query reading `row_id`) leaves them to the filter above.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let reads_ids = projection.is_none_or(|columns| columns.contains(&0));
        if !reads_ids {
            let columns: Vec<usize> = projection.into_iter().flatten().map(|&i| self.plan_columns[i - 1]).collect();
            let planned = self.rows.scan(state, Some(&columns), filters, limit).await?;
            if one_partition_throughout(&planned) {
                return Ok(planned);
            }
        }
        self.identified.scan(state, projection, &[], limit).await
    }
}

/// Whether every operator of `plan` has one partition: a `UNION`'s branches are partitions, and
/// an operator that merges them (for a `LIMIT`, say) takes their rows as they come.
fn one_partition_throughout(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.output_partitioning().partition_count() == 1 && plan.children().into_iter().all(one_partition_throughout)
}
