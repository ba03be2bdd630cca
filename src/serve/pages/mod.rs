//! The pages and endpoints, one module each, and what they share: reading rows with a bounded
//! query, and naming tables and columns in SQL.

pub mod assets;
pub mod calibrate;
pub mod dag;
pub mod labels;
pub mod row;
pub mod runs;
pub mod table;

use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;

use super::QueryBounds;
use super::http::HttpError;
use crate::catalog::Catalog;
use crate::query;

/// The rows of `sql` (read-only, as `unoflow sql` runs it), at most `max_rows`, within the
/// bounds of a request's query: the stream is dropped once they are read, so a query over a
/// large table reads what the page shows. Bad SQL, or SQL that needs more memory than the
/// bound, is a 400 with DataFusion's message.
pub async fn read_rows(bounds: &QueryBounds, catalog: &Catalog, sql: &str, max_rows: usize) -> Result<Vec<RecordBatch>, HttpError> {
    let failed = |e: datafusion::error::DataFusionError| HttpError::bad_request(format!("the query failed: {}", e.strip_backtrace()));
    bounded(bounds, async {
        let ctx = catalog.bounded_session_for(sql, bounds.memory).await?;
        let df = query::plan(&ctx, sql).await.map_err(failed)?;
        let mut stream = query::ordered_stream(df).await.map_err(failed)?;
        let mut out = Vec::new();
        let mut rows = 0;
        while rows < max_rows {
            let Some(batch) = stream.next().await else { break };
            let batch = batch.map_err(failed)?;
            let take = batch.num_rows().min(max_rows - rows);
            rows += take;
            out.push(batch.slice(0, take));
        }
        Ok(out)
    })
    .await
}

/// Runs a request's query `work` in its turn (one of `--max-queries`) and within its deadline.
/// The work runs in the request's own task, so it is cancelled when the deadline passes or
/// the client goes away (hyper drops the request's future with the connection).
pub async fn bounded<T>(bounds: &QueryBounds, work: impl Future<Output = Result<T, HttpError>>) -> Result<T, HttpError> {
    let in_turn = async {
        let _turn = bounds.running.acquire().await.map_err(|_| HttpError::unavailable("the server is stopping"))?;
        work.await
    };
    tokio::time::timeout(bounds.deadline, in_turn).await.unwrap_or_else(|_| {
        Err(HttpError::unavailable(format!(
            "the query took longer than {} s and was stopped: narrow the WHERE, or start the server with a longer --query-timeout",
            bounds.deadline.as_secs()
        )))
    })
}

pub use crate::query::{ident, literal};

/// The node named in a path, if the workspace has its output; 404 otherwise.
pub fn require_node<'a>(catalog: &'a Catalog, name: &str) -> Result<&'a crate::catalog::Located, HttpError> {
    catalog.require(name).map_err(|e| HttpError::not_found(e.to_string()))
}

/// A row id from a path: letters and digits only, so it is safe in SQL and URLs.
pub fn require_row_id(row_id: &str) -> Result<&str, HttpError> {
    let ok = !row_id.is_empty() && row_id.len() <= crate::workspace::MAX_ROW_ID && row_id.chars().all(|c| c.is_ascii_alphanumeric());
    if ok { Ok(row_id) } else { Err(HttpError::not_found(format!("`{row_id}` is not a row id"))) }
}
