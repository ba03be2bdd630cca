//! One row: every column (images full size), the parameters a PNG carries in its text chunks,
//! and the lineage chain with a thumbnail of each ancestor row. Also the full-size image
//! endpoint.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{self, IntoResponse, Response};
use datafusion::arrow::record_batch::RecordBatch;

use super::{bounded, ident, literal, read_rows, require_node, require_row_id};
use crate::serve::App;
use crate::serve::html::{Html, Url, binary_value, html, page as frame, string_value};
use crate::serve::http::HttpError;
use crate::serve::thumbs::{Thumbnails, content_type, is_image};

/// `GET /node/NAME/row/ROW_ID`.
pub async fn page(State(app): State<Arc<App>>, Path((name, row_id)): Path<(String, String)>) -> Result<response::Html<String>, HttpError> {
    let catalog = app.catalog().await?;
    require_node(&catalog, &name)?;
    let id = require_row_id(&row_id)?.to_string();
    let condition = format!("row_id = {}", literal(&id));
    let bounds = app.queries();
    let rows = read_rows(bounds, &catalog, &format!("SELECT * FROM {} WHERE {condition} LIMIT 1", ident(&name)), 1).await?;
    let failed = read_rows(bounds, &catalog, &format!("SELECT * FROM errors.{} WHERE {condition} LIMIT 1", ident(&name)), 1).await?;
    let steps = bounded(bounds, async {
        crate::lineage::steps(&catalog, &name, &id, Some(bounds.memory)).await.map_err(|e| match e {
            crate::Error::Usage(m) => HttpError::not_found(m),
            e => HttpError::from(e),
        })
    })
    .await?;
    let label = app.workspace()?.labels().of_node(&name)?.remove(&id);
    let thumbs = app.thumbs().clone();
    let html = tokio::task::spawn_blocking(move || render(&name, &id, &rows, &failed, &steps, label, &thumbs)).await?;
    Ok(response::Html(html))
}

/// `GET /image/NAME/ROW_ID/COLUMN`: the image in that cell, as stored.
pub async fn image(
    State(app): State<Arc<App>>,
    Path((name, row_id, column)): Path<(String, String, String)>,
) -> Result<Response, HttpError> {
    let catalog = app.catalog().await?;
    require_node(&catalog, &name)?;
    let id = require_row_id(&row_id)?;
    let sql = format!("SELECT {} FROM {} WHERE row_id = {} LIMIT 1", ident(&column), ident(&name), literal(id));
    // An unknown column is a bad query: for an image address, that is "no such image".
    let batches = read_rows(app.queries(), &catalog, &sql, 1).await.map_err(|e| match e.status {
        StatusCode::BAD_REQUEST => HttpError::not_found(e.message),
        _ => e,
    })?;
    let bytes = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| binary_value(b.column(0), 0).map(<[u8]>::to_vec))
        .filter(|b| is_image(b))
        .ok_or_else(|| HttpError::not_found(format!("no image in column `{column}` of row {id} of `{name}`")))?;
    Ok(([(header::CONTENT_TYPE, content_type(&bytes)), (header::CACHE_CONTROL, "private, max-age=3600")], bytes).into_response())
}

fn render(
    name: &str,
    id: &str,
    rows: &[RecordBatch],
    failed: &[RecordBatch],
    steps: &[crate::lineage::Step],
    label: Option<crate::workspace::Label>,
    thumbs: &Thumbnails,
) -> String {
    let mut body = Html::new();
    let label_word = label.as_ref().map(|l| l.label.as_str()).unwrap_or("");
    html!(&mut body;
        "<h1><a href=\"/node/" {Url(name)} "\">" {name} "</a> · row " {id} "</h1><div class=\"row one\" data-node=\"" {name}
        "\" data-row-id=\"" {id} "\" data-label=\"" {label_word} "\" tabindex=\"-1\">\
         <p>label: <span class=\"badge\"></span> (keys <kbd>a</kbd>, <kbd>r</kbd>, <kbd>s</kbd>)</p></div>"
    );
    for (batches, title) in [(rows, "values"), (failed, "failed")] {
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else { continue };
        html!(&mut body; "<h2>" {title} "</h2><table class=\"kv\">");
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            html!(&mut body; "<tr><th>" {field.name()} "</th><td>");
            match binary_value(column, 0).filter(|b| is_image(b)) {
                Some(bytes) => {
                    html!(&mut body;
                        "<img class=\"full\" src=\"/image/" {Url(name)} "/" {Url(id)} "/" {Url(field.name())} "\" alt=\"" {field.name()}
                        "\">"
                    );
                    let text = png_text(bytes);
                    if !text.is_empty() {
                        html!(&mut body; "<dl class=\"png-text\">");
                        for (k, v) in text {
                            html!(&mut body; "<dt>" {k} "</dt><dd>" {v} "</dd>");
                        }
                        html!(&mut body; "</dl>");
                    }
                }
                None => html!(&mut body; "<pre>" {crate::format::cell_text(column, 0)} "</pre>"),
            }
            html!(&mut body; "</td></tr>");
        }
        html!(&mut body; "</table>");
    }
    lineage(&mut body, steps, thumbs);
    frame(&format!("{name} {id}"), &body)
}

/// How far a lineage step is indented at most (a class per depth in the stylesheet: the
/// Content-Security-Policy allows no inline style).
const MAX_DEPTH_CLASS: usize = 8;

/// The lineage chain: each step's node, operator and parameters, and its rows with a
/// thumbnail of their first image.
fn lineage(body: &mut Html, steps: &[crate::lineage::Step], thumbs: &Thumbnails) {
    html!(body; "<h2>lineage</h2><ol class=\"lineage\">");
    for step in steps {
        html!(body; "<li class=\"depth-" {step.depth.min(MAX_DEPTH_CLASS)} "\">");
        if step.gone {
            html!(body; "<b>" {step.node} "</b> (output no longer in the workspace)</li>");
            continue;
        }
        let view = if step.view { ", a view" } else { "" };
        html!(body;
            "<b><a href=\"/node/" {Url(&step.node)} "\">" {step.node} "</a></b> <span class=\"op\">" {step.op} " v" {step.version}
            {view} "</span>"
        );
        if !step.params.is_empty() {
            let params: Vec<String> = step.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            html!(body; "<div class=\"params\">" {params.join(", ")} "</div>");
        }
        for batch in &step.rows {
            for r in 0..batch.num_rows() {
                let id = batch.column_by_name(unoflow_api::columns::ROW_ID).and_then(|c| string_value(c, r)).unwrap_or_default();
                let image = batch.columns().iter().find_map(|c| binary_value(c, r).filter(|b| is_image(b)));
                html!(body; "<div class=\"ancestor\">");
                if let Some(Ok(t)) = image.map(|bytes| thumbs.make(bytes)) {
                    html!(body;
                        "<img class=\"thumb\" src=\"/thumb/" {t.digest} "\" width=\"" {t.width} "\" height=\"" {t.height} "\" alt=\"\">"
                    );
                }
                html!(body; "<a href=\"/node/" {Url(&step.node)} "/row/" {Url(&id)} "\">" {id} "</a></div>");
            }
        }
        for (id, message) in &step.failed {
            html!(body; "<div class=\"error\">failed row " {id} ": " {message} "</div>");
        }
        html!(body; "</li>");
    }
    html!(body; "</ol>");
}
/// The text chunks of PNG bytes (generation parameters, when a writer put them there).
fn png_text(bytes: &[u8]) -> Vec<(String, String)> {
    let Ok(reader) = png::Decoder::new(std::io::Cursor::new(bytes)).read_info() else { return Vec::new() };
    let info = reader.info();
    let mut out: Vec<(String, String)> = info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect();
    out.extend(info.compressed_latin1_text.iter().filter_map(|t| Some((t.keyword.clone(), t.get_text().ok()?))));
    out.extend(info.utf8_text.iter().filter_map(|t| Some((t.keyword.clone(), t.get_text().ok()?))));
    out
}
