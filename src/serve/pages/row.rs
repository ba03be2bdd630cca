//! One row: every column (images full size), the parameters a PNG carries in its text chunks,
//! and the lineage chain with a thumbnail of each ancestor row. Also the full-size image
//! endpoint.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use datafusion::arrow::record_batch::RecordBatch;

use super::{ident, literal, read_rows, require_node, require_row_id};
use crate::format::cell_text;
use crate::serve::App;
use crate::serve::html::{binary_value, escape, page as frame, string_value, url_part};
use crate::serve::http::HttpError;
use crate::serve::thumbs::{Thumbnails, content_type, is_image};

/// `GET /node/NAME/row/ROW_ID`.
pub async fn page(State(app): State<Arc<App>>, Path((name, row_id)): Path<(String, String)>) -> Result<Html<String>, HttpError> {
    let catalog = app.catalog().await?;
    require_node(&catalog, &name)?;
    let id = require_row_id(&row_id)?.to_string();
    let condition = format!("row_id = {}", literal(&id));
    let rows = read_rows(&catalog, &format!("SELECT * FROM {} WHERE {condition} LIMIT 1", ident(&name)), 1).await?;
    let failed = read_rows(&catalog, &format!("SELECT * FROM errors.{} WHERE {condition} LIMIT 1", ident(&name)), 1).await?;
    let steps = crate::lineage::steps(&catalog, &name, &id).await.map_err(|e| match e {
        crate::Error::Usage(m) => HttpError::not_found(m),
        e => HttpError::from(e),
    })?;
    let label = app.workspace()?.labels().of_node(&name)?.remove(&id);
    let thumbs = app.thumbs().clone();
    let html = tokio::task::spawn_blocking(move || render(&name, &id, &rows, &failed, &steps, label, &thumbs)).await?;
    Ok(Html(html))
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
    let batches = read_rows(&catalog, &sql, 1).await.map_err(|e| HttpError::not_found(e.message))?;
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
    let mut body = String::new();
    let label_word = label.as_ref().map(|l| l.label.as_str()).unwrap_or("");
    let _ = write!(
        body,
        "<h1><a href=\"/node/{}\">{}</a> · row {}</h1><div class=\"row one\" data-node=\"{}\" data-row-id=\"{}\" data-label=\"{label_word}\" tabindex=\"-1\">\
         <p>label: <span class=\"badge\"></span> (keys <kbd>a</kbd>, <kbd>r</kbd>, <kbd>s</kbd>)</p></div>",
        url_part(name),
        escape(name),
        escape(id),
        escape(name),
        escape(id)
    );
    for (batches, title) in [(rows, "values"), (failed, "failed")] {
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else { continue };
        let _ = write!(body, "<h2>{title}</h2><table class=\"kv\">");
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let value = match binary_value(column, 0).filter(|b| is_image(b)) {
                Some(bytes) => {
                    let mut cell = format!(
                        "<img class=\"full\" src=\"/image/{}/{}/{}\" alt=\"{}\">",
                        url_part(name),
                        url_part(id),
                        url_part(field.name()),
                        escape(field.name())
                    );
                    let text = png_text(bytes);
                    if !text.is_empty() {
                        cell.push_str("<dl class=\"png-text\">");
                        for (k, v) in text {
                            let _ = write!(cell, "<dt>{}</dt><dd>{}</dd>", escape(&k), escape(&v));
                        }
                        cell.push_str("</dl>");
                    }
                    cell
                }
                None => format!("<pre>{}</pre>", escape(&cell_text(column, 0))),
            };
            let _ = write!(body, "<tr><th>{}</th><td>{value}</td></tr>", escape(field.name()));
        }
        let _ = write!(body, "</table>");
    }
    lineage(&mut body, steps, thumbs);
    frame(&format!("{name} {id}"), &body)
}

/// The lineage chain: each step's node, operator and parameters, and its rows with a
/// thumbnail of their first image.
fn lineage(body: &mut String, steps: &[crate::lineage::Step], thumbs: &Thumbnails) {
    let _ = write!(body, "<h2>lineage</h2><ol class=\"lineage\">");
    for step in steps {
        let _ = write!(body, "<li style=\"margin-left:{}em\">", step.depth * 2);
        if step.gone {
            let _ = write!(body, "<b>{}</b> (output no longer in the workspace)</li>", escape(&step.node));
            continue;
        }
        let _ = write!(
            body,
            "<b><a href=\"/node/{}\">{}</a></b> <span class=\"op\">{} v{}{}</span>",
            url_part(&step.node),
            escape(&step.node),
            escape(&step.op),
            step.version,
            if step.view { ", a view" } else { "" }
        );
        if !step.params.is_empty() {
            let params: Vec<String> = step.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(body, "<div class=\"params\">{}</div>", escape(&params.join(", ")));
        }
        for batch in &step.rows {
            for r in 0..batch.num_rows() {
                let id = batch.column_by_name(unoflow_api::columns::ROW_ID).and_then(|c| string_value(c, r)).unwrap_or_default();
                let image = batch.columns().iter().find_map(|c| binary_value(c, r).filter(|b| is_image(b)));
                let _ = write!(body, "<div class=\"ancestor\">");
                if let Some(Ok(t)) = image.map(|bytes| thumbs.make(bytes)) {
                    let _ = write!(
                        body,
                        "<img class=\"thumb\" src=\"/thumb/{}\" width=\"{}\" height=\"{}\" alt=\"\">",
                        t.digest, t.width, t.height
                    );
                }
                let _ = write!(body, "<a href=\"/node/{}/row/{}\">{}</a></div>", url_part(&step.node), url_part(&id), escape(&id));
            }
        }
        for (id, message) in &step.failed {
            let _ = write!(body, "<div class=\"error\">failed row {}: {}</div>", escape(id), escape(message));
        }
        let _ = write!(body, "</li>");
    }
    let _ = write!(body, "</ol>");
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
