//! `unoflow lineage NODE ROW_ID`: where a row came from — its values, the parameters of the node
//! that made it, and, recursively, the rows it was made from.

use std::fmt::Write;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{col, lit};
use unoflow_api::columns::{PARENT_IDS, ROW_ID};

use crate::catalog::{Catalog, Located};
use crate::error::{Error, Result};
use crate::query;

/// Deepest ancestry printed; DAGs are shallow, this only guards against surprises.
const MAX_DEPTH: usize = 32;

/// One node on a row's way: the node, what made it, and the rows of it the row came from.
#[derive(Debug)]
pub struct Step {
    /// How many steps up from the row asked about (0: its own node).
    pub depth: usize,
    pub node: String,
    pub op: String,
    pub version: u32,
    pub fingerprint: String,
    pub view: bool,
    /// The node's parameters as written.
    pub params: Vec<(String, String)>,
    /// The rows looked for that are in the node (one batch per part read).
    pub rows: Vec<RecordBatch>,
    /// The rows looked for that failed there: their id and message.
    pub failed: Vec<(String, String)>,
    /// The ids looked for.
    pub ids: Vec<String>,
    /// The output is no longer in the workspace.
    pub gone: bool,
}

/// The lineage of `row_id` in `node`, as indented text.
pub async fn lineage(catalog: &Catalog, node: &str, row_id: &str) -> Result<String> {
    let mut out = String::new();
    for step in steps(catalog, node, row_id, None).await? {
        let indent = "    ".repeat(step.depth);
        if step.gone {
            let _ = writeln!(out, "{indent}{} (output no longer in the workspace)", step.node);
            continue;
        }
        let view = if step.view { ", a view" } else { "" };
        let _ = writeln!(out, "{indent}{} (op {} v{}, fingerprint {}{view})", step.node, step.op, step.version, &step.fingerprint[..12]);
        if !step.params.is_empty() {
            let params: Vec<String> = step.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "{indent}  params: {}", params.join(", "));
        }
        if step.rows.iter().all(|b| b.num_rows() == 0) && step.failed.is_empty() {
            let _ = writeln!(out, "{indent}  (no row {} here)", step.ids.join(", "));
        }
        for batch in &step.rows {
            for row in 0..batch.num_rows() {
                let _ = writeln!(out, "{indent}  row:");
                write_row(&mut out, &indent, batch, row)?;
            }
        }
        for (id, message) in &step.failed {
            let _ = writeln!(out, "{indent}  failed row {id}: {message}");
        }
    }
    Ok(out)
}

/// The steps of `row_id`'s lineage in `node`, the row's own node first, each followed by its
/// inputs' steps (depth first). With `memory`, each step's query holds at most that many bytes
/// (see [`query::bounded_session`]): for lineage a request asks for.
pub async fn steps(catalog: &Catalog, node: &str, row_id: &str, memory: Option<usize>) -> Result<Vec<Step>> {
    let located = catalog.require(node)?;
    let mut out = Vec::new();
    if !trace(catalog, located, &[row_id.to_string()], 0, memory, &mut out).await? {
        return Err(Error::Usage(format!("no row `{row_id}` in node `{node}` (nor in errors.{node})")));
    }
    Ok(out)
}

/// Adds the step of rows `ids` of `located` and their ancestry; returns whether any was found.
fn trace<'a>(
    catalog: &'a Catalog,
    located: &'a Located,
    ids: &'a [String],
    depth: usize,
    memory: Option<usize>,
    out: &'a mut Vec<Step>,
) -> futures::future::BoxFuture<'a, Result<bool>> {
    Box::pin(async move {
        let data = &located.data;
        let comps = &located.components;
        let ctx = match memory {
            Some(bytes) => query::bounded_session(bytes)?,
            None => query::session(),
        };
        query::register(&ctx, data, query::Verify::Digests).await?;
        let in_list: Vec<_> = ids.iter().map(|i| lit(i.as_str())).collect();
        let rows = ctx.table(data.name()).await?.filter(col(ROW_ID).in_list(in_list.clone(), false))?.collect().await?;
        let errors = ctx.table(format!("errors.{}", data.name())).await?.filter(col(ROW_ID).in_list(in_list, false))?.collect().await?;
        let found = rows.iter().chain(&errors).map(RecordBatch::num_rows).sum::<usize>();
        let mut parents: Vec<String> = Vec::new();
        for batch in &rows {
            for row in 0..batch.num_rows() {
                parents.extend(parent_ids(batch, row));
            }
        }
        let mut failed = Vec::new();
        for batch in &errors {
            let messages = batch.column_by_name("message").and_then(|c| c.as_string_opt::<i32>().cloned());
            for row in 0..batch.num_rows() {
                let id = batch.column(0).as_string::<i32>().value(row).to_string();
                let message = messages.as_ref().map(|m| m.value(row).to_string()).unwrap_or_default();
                parents.push(id.clone());
                failed.push((id, message));
            }
        }
        out.push(Step {
            depth,
            node: data.name().to_string(),
            op: comps.op.clone(),
            version: comps.version,
            fingerprint: data.fingerprint().to_string(),
            view: matches!(data, crate::data::NodeData::View(_)),
            params: comps.written.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            rows: rows.into_iter().filter(|b| b.num_rows() > 0).collect(),
            failed,
            ids: ids.to_vec(),
            gone: false,
        });
        if found == 0 {
            return Ok(false);
        }
        parents.sort();
        parents.dedup();
        if depth >= MAX_DEPTH {
            return Ok(true);
        }
        for input in &comps.inputs {
            match catalog.by_fingerprint(&input.fingerprint) {
                Some(parent) => {
                    trace(catalog, parent, &parents, depth + 1, memory, out).await?;
                }
                None => out.push(Step {
                    depth: depth + 1,
                    node: input.name.clone(),
                    op: String::new(),
                    version: 0,
                    fingerprint: input.fingerprint.clone(),
                    view: false,
                    params: Vec::new(),
                    rows: Vec::new(),
                    failed: Vec::new(),
                    ids: parents.clone(),
                    gone: true,
                }),
            }
        }
        Ok(true)
    })
}

fn write_row(out: &mut String, indent: &str, batch: &RecordBatch, row: usize) -> Result<()> {
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let _ = writeln!(out, "{indent}    {} = {}", field.name(), crate::format::cell_text(column, row));
    }
    Ok(())
}

/// The ids to look for upstream: the row's own id (operators that keep rows keep their ids)
/// and its `parent_ids` (operators that make rows name their sources). Both are needed: a kept
/// row may carry `parent_ids` from an operator further up, which name rows two steps away.
/// Ids are digests in per-operator domains, so neither can match an unrelated row.
fn parent_ids(batch: &RecordBatch, row: usize) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(list) = batch.column_by_name(PARENT_IDS).and_then(|c| c.as_list_opt::<i32>())
        && !list.is_null(row)
        // Queries may build the list with any string type (`make_array` gives Utf8View).
        && let Ok(values) = datafusion::arrow::compute::cast(&list.value(row), &DataType::Utf8)
    {
        out.extend(values.as_string::<i32>().iter().flatten().map(str::to_string));
    }
    let ids = batch.column_by_name(ROW_ID).and_then(|c| c.as_string_opt::<i32>().map(|s| s.value(row).to_string()));
    out.extend(ids);
    out
}
