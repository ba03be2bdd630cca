//! SQL over node outputs: DataFusion sessions whose tables are committed part files or views.
//!
//! Every file is verified against its committed blake3 digest before it is registered (unless
//! the caller checked it), so a corrupt part is reported, never read. Each node's failed rows
//! are the table `errors.NODE`.
//!
//! # Determinism
//! Sessions run plans in one partition, and [`ordered_stream`] reads a plan's partitions one
//! after another: rows come out in an order fixed by the data (input position; joins in probe
//! order; groups in first-seen order), never by thread timing. The parts of a table are still
//! decoded and filtered on every core ([`parts`]), their rows yielded in part order; what runs
//! above the scans (joins, aggregates, sorts) takes one core, and the engine overlaps it with id
//! hashing and Parquet encoding, which use the others.

mod concat;
pub mod ids;
mod node_plan;
pub mod outside;
mod parts;
mod view;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTableUrl};
use datafusion::datasource::{MemTable, TableProvider, ViewTable};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlanProperties, SendableRecordBatchStream};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
pub use node_plan::{IdPolicy, NodePlan, is_volatile, node_plan, with_row_id};

use crate::data::{NodeData, TableData, ViewData};
use crate::error::{Error, Result};
use crate::workspace::error_schema;

/// A session configured for unoflow: one partition (see the module docs), no file statistics
/// (the order of parts stays fixed under a `LIMIT`), the `errors` schema,
/// and Parquet strings and binaries read back as the `Utf8`/`Binary` they were written as (not
/// view types), so the schemas validation derived are the schemas queries see.
pub fn session() -> SessionContext {
    session_on(Arc::new(RuntimeEnv::default()))
}

/// A [`session`] whose queries may hold at most `bytes` of memory between them (hash tables,
/// sorts, joins; beyond it a query fails with "Resources exhausted") and never spill to disk:
/// for queries a request starts, which must not take the server's memory or disk.
pub fn bounded_session(bytes: usize) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(bytes)))
        .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
        .build_arc()?;
    Ok(session_on(runtime))
}

/// A [`session`] over `runtime`: a view's own plans run on its reader's runtime, so they count
/// against the reader's memory bound.
fn session_on(runtime: Arc<RuntimeEnv>) -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(true).with_target_partitions(1);
    config.options_mut().execution.parquet.schema_force_view_types = false;
    // Without statistics, a `LIMIT` scans the parts in path (commit) order. With them, a
    // listing table stops at the first parts whose row counts reach the limit, in the order
    // their metadata happened to arrive: `LIMIT 50` over a node of many parts returned rows of
    // a different part from one query to the next.
    config.options_mut().execution.collect_statistics = false;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    if let Some(catalog) = ctx.catalog("datafusion") {
        let _ = catalog.register_schema("errors", Arc::new(MemorySchemaProvider::new()));
    }
    ctx
}

/// `name` as a quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Queries may read, never write: no DDL, DML (`COPY`, `INSERT`) or `SET` statements.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// Plans `query` against `ctx` as a read-only statement.
pub async fn plan(ctx: &SessionContext, query: &str) -> datafusion::error::Result<DataFrame> {
    ctx.sql_with_options(query, read_only()).await
}

/// The rows of `df` in a fixed order: its partitions one after another (a `UNION` has one per
/// branch), never interleaved as they happen to finish.
pub async fn ordered_stream(df: DataFrame) -> datafusion::error::Result<SendableRecordBatchStream> {
    let task = Arc::new(df.task_ctx());
    let physical = df.create_physical_plan().await?;
    let partitions = physical.output_partitioning().partition_count();
    if partitions == 1 {
        return physical.execute(0, task);
    }
    let schema = physical.schema();
    let streams = futures::stream::iter(0..partitions).map(move |p| physical.execute(p, Arc::clone(&task))).try_flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, streams)))
}

/// The rows of `data` (written or checked in this process) in row order, with the schema their
/// batches are [`conform`]ed to.
pub async fn node_rows(data: &NodeData) -> Result<(SchemaRef, SendableRecordBatchStream)> {
    let ctx = session();
    register(&ctx, data, Verify::AlreadyChecked).await?;
    let df = ctx.table(data.name()).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    Ok((schema, ordered_stream(df).await?))
}

/// Every row of `data`, in row order, as one batch: an input an operator reads whole (the
/// evaluation set it compares against).
pub async fn collect_rows(data: &NodeData) -> Result<RecordBatch> {
    let (schema, rows) = node_rows(data).await?;
    let batches: Vec<RecordBatch> = rows.try_collect().await?;
    let batches = batches.into_iter().map(|b| conform(b, &schema)).collect::<Result<Vec<_>>>()?;
    Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
}

/// `batch` with its columns cast to `schema`'s types where they differ: a query's literals may
/// come out wider at run time than its plan says (a `UNION` of `INT` and an integer literal).
pub fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields().iter().zip(schema.fields()).all(|(a, b)| a.data_type() == b.data_type()) {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(SchemaRef::clone(schema), columns)?)
}

/// Whether to check part digests before reading a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Check every file against its committed blake3 digest (reads from earlier runs).
    Digests,
    /// The caller verified or wrote the files itself in this process (a run reading outputs it
    /// computed or checked at its start).
    AlreadyChecked,
}

/// Registers `data` as a table named after it, and its failed rows as `errors.NAME`.
pub async fn register(ctx: &SessionContext, data: &NodeData, verify: Verify) -> Result<()> {
    register_stores(ctx, data);
    ctx.register_table(data.name(), provider(data, verify, &ctx.runtime_env()).await?)?;
    let schema =
        ctx.catalog("datafusion").and_then(|c| c.schema("errors")).ok_or_else(|| Error::Internal("the errors schema is missing".into()))?;
    schema.register_table(data.name().to_string(), errors_provider(data).await?)?;
    Ok(())
}

/// Makes the stores `data`'s files are in (a view's: its inputs') readable by `ctx`.
fn register_stores(ctx: &SessionContext, data: &NodeData) {
    match data {
        NodeData::Table(table) => table.store.store().register(ctx),
        NodeData::View(view) => view.inputs.iter().for_each(|input| register_stores(ctx, input)),
    }
}

/// The rows of `data` as a DataFusion table, its views planned on `runtime`.
fn provider<'a>(
    data: &'a NodeData,
    verify: Verify,
    runtime: &'a Arc<RuntimeEnv>,
) -> futures::future::BoxFuture<'a, Result<Arc<dyn TableProvider>>> {
    Box::pin(async move {
        match data {
            NodeData::Table(table) => {
                if verify == Verify::Digests {
                    check(table)?;
                }
                parquet_table(table, table.manifest.row_files()).await
            }
            NodeData::View(view) => view_provider(view, verify, runtime).await,
        }
    })
}

/// The failed rows of `data` (a view has none of its own).
async fn errors_provider(data: &NodeData) -> Result<Arc<dyn TableProvider>> {
    match data {
        NodeData::Table(table) if table.manifest.error_rows > 0 => parquet_table(table, table.manifest.error_files()).await,
        _ => Ok(Arc::new(MemTable::try_new(error_schema(), vec![vec![]])?)),
    }
}

/// Verifies every committed file of `table`.
fn check(table: &TableData) -> Result<()> {
    for f in table.manifest.files() {
        table.store.verify(f).map_err(|why| Error::Workspace {
            path: std::path::PathBuf::from(table.store.url_of(f)),
            message: format!(
                "a part of node `{}` is corrupt, so it will not be read: {why}; run the DAG again to recompute it",
                table.name
            ),
        })?;
    }
    Ok(())
}

async fn parquet_table<'a>(
    table: &TableData,
    files: impl Iterator<Item = &'a crate::workspace::FileDigest>,
) -> Result<Arc<dyn TableProvider>> {
    let urls = files.map(|f| ListingTableUrl::parse(table.store.url_of(f))).collect::<datafusion::error::Result<Vec<_>>>()?;
    let Some(first) = urls.first() else {
        return Err(Error::Internal(format!("node `{}` has no part files", table.name)));
    };
    let inference = session();
    table.store.store().register(&inference);
    let schema = listing_options(false).infer_schema(&inference.state(), first).await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Arc::new(parts::PartsTable::try_new(urls, listing_options, schema, cores)?))
}

/// How a node's part files are listed and read; `late_materialisation` evaluates filters while
/// decoding, before the other columns are decoded.
fn listing_options(late_materialisation: bool) -> ListingOptions {
    let mut parquet = datafusion::common::config::TableParquetOptions::default();
    parquet.global.pushdown_filters = late_materialisation;
    parquet.global.reorder_filters = true;
    let format = ParquetFormat::default().with_options(parquet).with_force_view_types(false);
    ListingOptions::new(Arc::new(format)).with_file_extension(".parquet")
}

/// A view: its query planned over its inputs' tables. A query that passes its input's row ids
/// through unchanged is an ordinary DataFusion view, which composes with the query reading it
/// (filters and projections reach the files); others get ids as a materialised node would,
/// and compose the same way with queries that do not read the ids ([`view::IdentifiedView`]).
async fn view_provider(view: &ViewData, verify: Verify, runtime: &Arc<RuntimeEnv>) -> Result<Arc<dyn TableProvider>> {
    let ctx = session_on(Arc::clone(runtime));
    for input in &view.inputs {
        register(&ctx, input, verify).await?;
    }
    let NodePlan { plan, ids } =
        node_plan(&ctx, &view.query).await.map_err(|e| Error::Execution(format!("view `{}`: {}", view.name, e.strip_backtrace())))?;
    match ids {
        IdPolicy::Keep => Ok(Arc::new(ViewTable::new(plan, Some(view.query.clone())))),
        IdPolicy::Assign => Ok(Arc::new(view::IdentifiedView::new(ctx, plan)?)),
    }
}
