//! SQL over node outputs: DataFusion sessions whose tables are committed part files.
//!
//! Every file is verified against its committed blake3 digest before it is registered, so a
//! corrupt part is reported, never read. Each node's failed rows are the table `errors.NODE`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{Error, Result};
use crate::workspace::{FileDigest, Manifest, error_schema, verify_file};

/// A node output to expose as a table.
#[derive(Debug, Clone)]
pub struct NodeTable {
    pub name: String,
    pub node_dir: PathBuf,
    pub manifest: Arc<Manifest>,
}

/// A session configured for unoflow: the `errors` schema exists, and Parquet strings and
/// binaries read back as the `Utf8`/`Binary` they were written as (not view types), so the
/// schemas validation derived are the schemas queries see.
///
/// # Determinism
/// Plans run in one partition: files are read in commit order and no operator merges
/// partitions as they happen to finish, so a query without `ORDER BY` returns its rows in the
/// same order on every run (input position; joins in probe order, groups in first-seen order).
/// The price is one core per query; the engine overlaps it with encoding and hashing, which
/// take the other cores.
pub fn session() -> SessionContext {
    let mut config = SessionConfig::new().with_information_schema(true).with_target_partitions(1);
    config.options_mut().execution.parquet.schema_force_view_types = false;
    let ctx = SessionContext::new_with_config(config);
    if let Some(catalog) = ctx.catalog("datafusion") {
        let _ = catalog.register_schema("errors", Arc::new(MemorySchemaProvider::new()));
    }
    ctx
}

/// Whether to check part digests before registering a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Check every file against its committed blake3 digest (reads from earlier runs).
    Digests,
    /// The caller verified or wrote the files itself in this process (a run reading outputs it
    /// computed or checked at its start).
    AlreadyChecked,
}

/// Registers `table`'s rows as `NAME` and its failed rows as `errors.NAME`, after verifying
/// its files unless the caller already did.
pub async fn register(ctx: &SessionContext, table: &NodeTable, verify: Verify) -> Result<()> {
    for f in table.manifest.files().filter(|_| verify == Verify::Digests) {
        verify_file(&table.node_dir, f).map_err(|why| Error::Workspace {
            path: table.node_dir.clone(),
            message: format!(
                "a part of node `{}` is corrupt, so it will not be read: {why}; run the DAG again to recompute it",
                table.name
            ),
        })?;
    }
    let rows = parquet_table(&table.node_dir, table.manifest.row_files()).await?;
    ctx.register_table(table.name.as_str(), rows)?;
    let errors: Arc<dyn TableProvider> = if table.manifest.error_rows == 0 {
        Arc::new(MemTable::try_new(error_schema(), vec![vec![]])?)
    } else {
        parquet_table(&table.node_dir, table.manifest.error_files()).await?
    };
    let schema =
        ctx.catalog("datafusion").and_then(|c| c.schema("errors")).ok_or_else(|| Error::Internal("the errors schema is missing".into()))?;
    schema.register_table(table.name.clone(), errors)?;
    Ok(())
}

async fn parquet_table<'a>(node_dir: &Path, files: impl Iterator<Item = &'a FileDigest>) -> Result<Arc<dyn TableProvider>> {
    let urls =
        files.map(|f| ListingTableUrl::parse(node_dir.join(&f.name).to_string_lossy())).collect::<datafusion::error::Result<Vec<_>>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default().with_force_view_types(false))).with_file_extension(".parquet");
    let state = session().state();
    let schema = options.infer_schema(&state, &urls[0]).await?;
    let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config)?))
}
