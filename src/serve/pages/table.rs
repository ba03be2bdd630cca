//! A node's rows (or failed rows) as a paged grid, or as pairs: references beside the target
//! with the scores and the VLM's reasoning. A page is one `LIMIT`/`OFFSET` query with the
//! reader's `WHERE` and `ORDER BY`; image cells become thumbnails made for the page.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;

use super::{ident, read_rows, require_node};
use crate::serve::App;
use crate::serve::html::{Html, Url, binary_value, cell_text, html, page, string_value, url_part};
use crate::serve::http::HttpError;
use crate::serve::thumbs::{Thumb, Thumbnails, is_image};
use crate::workspace::Label;

/// Rows on a page.
pub const PAGE_ROWS: usize = 50;

/// The longest `WHERE` or `ORDER BY` text accepted.
const MAX_CLAUSE: usize = 2000;

/// The deepest page (an `OFFSET` scans the rows before it).
const MAX_PAGE: u64 = 1_000_000;

/// How to lay the rows out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Grid,
    /// References beside the target, for tables with `ref_image` and `target_image`.
    Pairs,
}

/// The query string of a table page.
#[derive(Debug, Default, Deserialize)]
pub struct TableParams {
    #[serde(default, rename = "where")]
    pub filter: String,
    #[serde(default)]
    pub order: String,
    #[serde(default)]
    pub page: u64,
    pub view: Option<Layout>,
}

/// Which rows of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Output,
    Errors,
}

/// `GET /node/NAME`: the node's rows.
pub async fn rows(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(params): Query<TableParams>,
) -> Result<response::Html<String>, HttpError> {
    show(app, name, params, Rows::Output).await
}

/// `GET /node/NAME/errors`: the node's failed rows and their messages.
pub async fn errors(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(params): Query<TableParams>,
) -> Result<response::Html<String>, HttpError> {
    show(app, name, params, Rows::Errors).await
}

async fn show(app: Arc<App>, name: String, params: TableParams, which: Rows) -> Result<response::Html<String>, HttpError> {
    let catalog = app.catalog().await?;
    let located = require_node(&catalog, &name)?;
    let total = match which {
        Rows::Output => located.data.rows(),
        Rows::Errors => match &located.data {
            crate::data::NodeData::Table(t) => Some(t.manifest.error_rows),
            crate::data::NodeData::View(_) => Some(0),
        },
    };
    if params.filter.len() > MAX_CLAUSE || params.order.len() > MAX_CLAUSE {
        return Err(HttpError::bad_request(format!("a WHERE or ORDER BY of over {MAX_CLAUSE} characters")));
    }
    if params.page > MAX_PAGE {
        return Err(HttpError::bad_request(format!("page {} is past the last page this server shows ({MAX_PAGE})", params.page)));
    }
    let table = match which {
        Rows::Output => ident(&name),
        Rows::Errors => format!("errors.{}", ident(&name)),
    };
    let mut sql = format!("SELECT * FROM {table}");
    if !params.filter.trim().is_empty() {
        let _ = write!(sql, " WHERE ({})", params.filter);
    }
    if !params.order.trim().is_empty() {
        let _ = write!(sql, " ORDER BY {}", params.order);
    }
    let _ = write!(sql, " LIMIT {} OFFSET {}", PAGE_ROWS + 1, params.page * PAGE_ROWS as u64);
    let batches = read_rows(app.queries(), &catalog, &sql, PAGE_ROWS + 1).await?;
    let workspace = app.workspace()?;
    let thumbs = app.thumbs().clone();
    let html = tokio::task::spawn_blocking(move || -> Result<String, HttpError> {
        let labels = if which == Rows::Output { workspace.labels().of_node(&name)? } else { BTreeMap::new() };
        Ok(render(&Spec { name, params, which, total }, &batches, &thumbs, &labels))
    })
    .await??;
    Ok(response::Html(html))
}

/// What a page shows, besides the rows.
struct Spec {
    name: String,
    params: TableParams,
    which: Rows,
    total: Option<u64>,
}

/// Columns shown beside the images of a pair: scores, verdicts and similarities.
fn is_score(column: &str) -> bool {
    let skip = ["vlm_raw", "vlm_reasoning", "vlm_model"];
    !skip.contains(&column)
        && (column.starts_with("dino_")
            || column.starts_with("vlm_")
            || column.ends_with("_similarity")
            || column.ends_with("_score")
            || column.ends_with("_pass")
            || ["dino", "clip_i", "clip_t", "split"].contains(&column))
}

/// Columns a pair card shows as images, in this order.
const PAIR_IMAGES: [&str; 3] = ["ref_image", "ref2_image", "target_image"];

/// Columns a pair card names its subjects and prompt by.
const PAIR_TEXT: [&str; 3] = ["subject1", "subject2", "prompt"];

fn render(spec: &Spec, batches: &[RecordBatch], thumbs: &Thumbnails, labels: &BTreeMap<String, Label>) -> String {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let has_next = rows > PAGE_ROWS;
    let schema = batches.first().map(|b| b.schema());
    let columns: Vec<String> = schema.as_ref().map(|s| s.fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default();
    let pairs_possible =
        spec.which == Rows::Output && columns.iter().any(|c| c == "ref_image") && columns.iter().any(|c| c == "target_image");
    let layout = match spec.params.view {
        Some(Layout::Pairs) if pairs_possible => Layout::Pairs,
        None if pairs_possible => Layout::Pairs,
        _ => Layout::Grid,
    };
    let made = make_thumbs(batches, thumbs);

    let mut body = Html::new();
    let name = &spec.name;
    let what = if spec.which == Rows::Errors { "failed rows of " } else { "" };
    html!(&mut body; "<h1>" {what} "<a href=\"/node/" {Url(name)} "\">" {name} "</a></h1><p class=\"links\">");
    if let Some(total) = spec.total {
        html!(&mut body; {total} " rows · ");
    }
    let link = |params: &[(&str, &str)]| link(name, spec.which, &spec.params, params);
    if spec.which == Rows::Output {
        if pairs_possible {
            html!(&mut body; "<a href=\"" {link(&[("view", "pairs")])} "\">pairs</a> · <a href=\"" {link(&[("view", "grid")])} "\">grid</a> · ");
        }
        html!(&mut body;
            "<a href=\"/node/" {Url(name)} "/errors\">failed rows</a> · <a href=\"/node/" {Url(name)} "/calibrate\">calibrate a threshold</a>"
        );
    } else {
        html!(&mut body; "<a href=\"/node/" {Url(name)} "\">rows</a>");
    }
    html!(&mut body;
        "</p><form class=\"query\" method=\"get\"><label>WHERE <input name=\"where\" size=\"50\" value=\"" {spec.params.filter}
        "\" placeholder=\"dino_mean &gt; 0.9\"></label> <label>ORDER BY <input name=\"order\" size=\"24\" value=\"" {spec.params.order}
        "\" placeholder=\"dino_mean DESC\"></label>"
    );
    if let Some(view) = spec.params.view {
        html!(&mut body; "<input type=\"hidden\" name=\"view\" value=\"" {layout_word(view)} "\">");
    }
    html!(&mut body; "<button>apply</button></form>");
    let first = spec.params.page * PAGE_ROWS as u64;
    if rows == 0 {
        html!(&mut body; "<p class=\"empty\">no rows" {if first > 0 { " on this page" } else { "" }} "</p>");
    } else {
        html!(&mut body; "<p class=\"range\">rows " {first + 1} "–" {first + rows.min(PAGE_ROWS) as u64} "</p>");
    }
    let labelled = spec.which == Rows::Output;
    match layout {
        Layout::Grid => grid(&mut body, spec, batches, &columns, &made, labels, labelled),
        Layout::Pairs => pair_cards(&mut body, spec, batches, &made, labels),
    }
    html!(&mut body; "<p class=\"pager\">");
    if spec.params.page > 0 {
        let prev = (spec.params.page - 1).to_string();
        html!(&mut body; "<a rel=\"prev\" href=\"" {link(&[("page", &prev)])} "\">← previous</a> ");
    }
    if has_next {
        let next = (spec.params.page + 1).to_string();
        html!(&mut body; "<a rel=\"next\" href=\"" {link(&[("page", &next)])} "\">next →</a>");
    }
    html!(&mut body; "</p>");
    page(name, &body)
}

fn layout_word(layout: Layout) -> &'static str {
    match layout {
        Layout::Grid => "grid",
        Layout::Pairs => "pairs",
    }
}

/// The page's URL with some parameters replaced.
fn link(name: &str, which: Rows, params: &TableParams, replace: &[(&str, &str)]) -> String {
    let base = match which {
        Rows::Output => format!("/node/{}", url_part(name)),
        Rows::Errors => format!("/node/{}/errors", url_part(name)),
    };
    let page = params.page.to_string();
    let view = params.view.map(layout_word).unwrap_or("");
    let current = [("where", params.filter.as_str()), ("order", params.order.as_str()), ("view", view), ("page", page.as_str())];
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in current {
        let value = replace.iter().find(|(k, _)| *k == key).map_or(value, |(_, v)| *v);
        let default = value.is_empty() || (key == "page" && value == "0");
        if !default {
            query.append_pair(key, value);
        }
    }
    let query = query.finish();
    if query.is_empty() { base } else { format!("{base}?{query}") }
}

/// The rows a page shows, as (batch index, batch, row): the query reads one more, to know
/// whether there is a next page.
fn page_rows(batches: &[RecordBatch]) -> impl Iterator<Item = (usize, &RecordBatch, usize)> {
    batches.iter().enumerate().flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (b, batch, r))).take(PAGE_ROWS)
}

/// The thumbnails of every image cell the page shows, by (batch, row, column).
fn make_thumbs(batches: &[RecordBatch], thumbs: &Thumbnails) -> HashMap<(usize, usize, usize), Result<Thumb, String>> {
    let mut keys = Vec::new();
    let mut images: Vec<&[u8]> = Vec::new();
    for (b, batch, r) in page_rows(batches) {
        for (c, column) in batch.columns().iter().enumerate() {
            if let Some(bytes) = binary_value(column, r).filter(|b| is_image(b)) {
                keys.push((b, r, c));
                images.push(bytes);
            }
        }
    }
    keys.into_iter().zip(thumbs.make_all(&images)).collect()
}

/// A thumbnail's `<img>` (linked to the full image when the row has an id), or why not.
fn thumb_html(
    made: &HashMap<(usize, usize, usize), Result<Thumb, String>>,
    key: (usize, usize, usize),
    node: &str,
    row_id: Option<&str>,
    column: &str,
) -> Option<Html> {
    let thumb = made.get(&key)?;
    let mut out = Html::new();
    match thumb {
        Ok(t) => {
            if let Some(id) = row_id {
                html!(&mut out; "<a href=\"/image/" {Url(node)} "/" {Url(id)} "/" {Url(column)} "\">");
            }
            html!(&mut out;
                "<img class=\"thumb\" src=\"/thumb/" {t.digest} "\" width=\"" {t.width} "\" height=\"" {t.height} "\" alt=\"" {column}
                "\" title=\"" {column} "\">"
            );
            if row_id.is_some() {
                html!(&mut out; "</a>");
            }
        }
        Err(why) => html!(&mut out; "<span class=\"error\">" {why} "</span>"),
    }
    Some(out)
}

/// A row's id, if the table has the column.
fn row_id_of(batch: &RecordBatch, row: usize) -> Option<String> {
    batch.column_by_name(unoflow_api::columns::ROW_ID).and_then(|c| string_value(c, row))
}

/// The attributes that make a row labellable by the keys (see `assets/app.js`).
fn row_attributes(out: &mut Html, node: &str, row_id: Option<&str>, labels: &BTreeMap<String, Label>, labelled: bool) {
    if let Some(id) = row_id.filter(|_| labelled) {
        let label = labels.get(id).map(|l| l.label.as_str()).unwrap_or("");
        html!(out; " data-node=\"" {node} "\" data-row-id=\"" {id} "\" data-label=\"" {label} "\" tabindex=\"-1\"");
    }
}

fn grid(
    body: &mut Html,
    spec: &Spec,
    batches: &[RecordBatch],
    columns: &[String],
    made: &HashMap<(usize, usize, usize), Result<Thumb, String>>,
    labels: &BTreeMap<String, Label>,
    labelled: bool,
) {
    let name = &spec.name;
    html!(body; "<table class=\"grid\"><thead><tr><th></th>");
    for c in columns {
        html!(body; "<th>" {c} "</th>");
    }
    html!(body; "</tr></thead><tbody>");
    for (b, batch, r) in page_rows(batches) {
        let id = row_id_of(batch, r);
        html!(body; "<tr class=\"row\"");
        row_attributes(body, name, id.as_deref(), labels, labelled);
        html!(body; ">");
        match (&id, spec.which) {
            (Some(id), Rows::Output) => html!(body;
                "<td class=\"label-cell\"><a href=\"/node/" {Url(name)} "/row/" {Url(id)} "\">row</a> <span class=\"badge\"></span></td>"
            ),
            _ => html!(body; "<td></td>"),
        }
        for (c, column) in batch.columns().iter().enumerate() {
            let cell = thumb_html(made, (b, r, c), name, id.as_deref(), &columns[c]).unwrap_or_else(|| cell_text(column, r));
            html!(body; "<td>" {cell} "</td>");
        }
        html!(body; "</tr>");
    }
    html!(body; "</tbody></table>");
}

fn pair_cards(
    body: &mut Html,
    spec: &Spec,
    batches: &[RecordBatch],
    made: &HashMap<(usize, usize, usize), Result<Thumb, String>>,
    labels: &BTreeMap<String, Label>,
) {
    let name = &spec.name;
    html!(body; "<div class=\"pairs\">");
    for (b, batch, r) in page_rows(batches) {
        let schema = batch.schema();
        let id = row_id_of(batch, r);
        html!(body; "<section class=\"pair row\"");
        row_attributes(body, name, id.as_deref(), labels, true);
        html!(body; "><header>");
        if let Some(id) = &id {
            html!(body; "<a href=\"/node/" {Url(name)} "/row/" {Url(id)} "\">" {id.get(..12).unwrap_or(id)} "</a> ");
        }
        let subjects: Vec<String> =
            PAIR_TEXT[..2].iter().filter_map(|c| batch.column_by_name(c).and_then(|col| string_value(col, r))).collect();
        html!(body; "<span class=\"badge\"></span> <span class=\"subjects\">" {subjects.join(" · ")} "</span></header><div class=\"images\">");
        for column in PAIR_IMAGES {
            if let Some((c, _)) = schema.column_with_name(column) {
                html!(body; "<figure>");
                match thumb_html(made, (b, r, c), name, id.as_deref(), column) {
                    Some(img) => html!(body; {img}),
                    None => html!(body; "<span class=\"null\">none</span>"),
                }
                html!(body; "<figcaption>" {column} "</figcaption></figure>");
            }
        }
        html!(body; "</div><dl class=\"scores\">");
        for (c, field) in schema.fields().iter().enumerate() {
            if is_score(field.name()) {
                html!(body; "<dt>" {field.name()} "</dt><dd>" {cell_text(batch.column(c), r)} "</dd>");
            }
        }
        html!(body; "</dl>");
        if let Some(prompt) = batch.column_by_name(PAIR_TEXT[2]).and_then(|c| string_value(c, r)) {
            html!(body; "<p class=\"prompt\">" {prompt} "</p>");
        }
        if let Some(reasoning) = batch.column_by_name("vlm_reasoning").and_then(|c| string_value(c, r)) {
            html!(body; "<p class=\"reasoning\">" {reasoning} "</p>");
        }
        html!(body; "</section>");
    }
    html!(body; "</div>");
}
