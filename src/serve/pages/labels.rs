//! The labels endpoint: `POST /api/labels` sets one row's label (what the page's keys send),
//! `GET /api/labels/NODE` lists a node's.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::{ident, literal, read_rows, require_node, require_row_id};
use crate::serve::App;
use crate::serve::http::HttpError;
use crate::workspace::{Label, Verdict};

/// A label as the page sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    pub node: String,
    pub row_id: String,
    pub label: Verdict,
}

/// `POST /api/labels` with `{"node", "row_id", "label": "accept" | "reject" | "skip"}`.
pub async fn set(State(app): State<Arc<App>>, Json(request): Json<LabelRequest>) -> Result<Json<Label>, HttpError> {
    let catalog = app.catalog().await?;
    require_node(&catalog, &request.node)?;
    require_row_id(&request.row_id)?;
    // A label names a row the node has: labels of made-up ids would reach SQL's `labels`.
    let sql = format!("SELECT row_id FROM {} WHERE row_id = {} LIMIT 1", ident(&request.node), literal(&request.row_id));
    if read_rows(app.queries(), &catalog, &sql, 1).await?.iter().all(|b| b.num_rows() == 0) {
        return Err(HttpError::not_found(format!("node `{}` has no row `{}`", request.node, request.row_id)));
    }
    let labels = app.workspace()?.labels();
    let label = tokio::task::spawn_blocking(move || labels.set(&request.node, &request.row_id, request.label)).await??;
    Ok(Json(label))
}

/// `GET /api/labels/NODE`: the node's labels.
pub async fn list(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Json<Vec<Label>>, HttpError> {
    let catalog = app.catalog().await?;
    require_node(&catalog, &name)?;
    let labels = app.workspace()?.labels();
    let all = tokio::task::spawn_blocking(move || labels.of_node(&name)).await??;
    Ok(Json(all.into_values().collect()))
}
