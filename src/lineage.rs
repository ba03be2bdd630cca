//! `unoflow lineage NODE ROW_ID`: where a row came from — its values, the parameters of the node
//! that made it, and, recursively, the rows it was made from.

use std::fmt::Write;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{col, lit};
use unoflow_api::columns::{PARENT_IDS, ROW_ID};

use crate::catalog::{Catalog, Located};
use crate::error::{Error, Result};
use crate::format::describe_binary;
use crate::query;

/// Deepest ancestry printed; DAGs are shallow, this only guards against surprises.
const MAX_DEPTH: usize = 32;

/// The lineage of `row_id` in `node`, as indented text.
pub async fn lineage(catalog: &Catalog, node: &str, row_id: &str) -> Result<String> {
    let located = catalog.require(node)?;
    let mut out = String::new();
    if !trace(catalog, located, &[row_id.to_string()], 0, &mut out).await? {
        return Err(Error::Usage(format!("no row `{row_id}` in node `{node}` (nor in errors.{node})")));
    }
    Ok(out)
}

/// Prints the rows `ids` of `located` and their ancestry; returns whether any was found.
fn trace<'a>(
    catalog: &'a Catalog,
    located: &'a Located,
    ids: &'a [String],
    depth: usize,
    out: &'a mut String,
) -> futures::future::BoxFuture<'a, Result<bool>> {
    Box::pin(async move {
        let indent = "    ".repeat(depth);
        let data = &located.data;
        let comps = &located.components;
        let ctx = query::session();
        query::register(&ctx, data, query::Verify::Digests).await?;
        let in_list: Vec<_> = ids.iter().map(|i| lit(i.as_str())).collect();
        let rows = ctx.table(data.name()).await?.filter(col(ROW_ID).in_list(in_list.clone(), false))?.collect().await?;
        let errors = ctx.table(format!("errors.{}", data.name())).await?.filter(col(ROW_ID).in_list(in_list, false))?.collect().await?;
        let found = rows.iter().chain(&errors).map(RecordBatch::num_rows).sum::<usize>();
        let view = if matches!(data, crate::data::NodeData::View(_)) { ", a view" } else { "" };
        let _ =
            writeln!(out, "{indent}{} (op {} v{}, fingerprint {}{view})", data.name(), comps.op, comps.version, &data.fingerprint()[..12]);
        if !comps.written.is_empty() {
            let params: Vec<String> = comps.written.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "{indent}  params: {}", params.join(", "));
        }
        if found == 0 {
            let _ = writeln!(out, "{indent}  (no row {} here)", ids.join(", "));
            return Ok(false);
        }
        let mut parents: Vec<String> = Vec::new();
        for batch in &rows {
            for row in 0..batch.num_rows() {
                let _ = writeln!(out, "{indent}  row:");
                write_row(out, &indent, batch, row)?;
                parents.extend(parent_ids(batch, row));
            }
        }
        for batch in &errors {
            let messages = batch.column_by_name("message").and_then(|c| c.as_string_opt::<i32>().cloned());
            for row in 0..batch.num_rows() {
                let id = batch.column(0).as_string::<i32>().value(row).to_string();
                let message = messages.as_ref().map(|m| m.value(row).to_string()).unwrap_or_default();
                let _ = writeln!(out, "{indent}  failed row {id}: {message}");
                parents.push(id);
            }
        }
        parents.sort();
        parents.dedup();
        if depth >= MAX_DEPTH {
            return Ok(true);
        }
        for input in &comps.inputs {
            match catalog.by_fingerprint(&input.fingerprint) {
                Some(parent) => {
                    trace(catalog, parent, &parents, depth + 1, out).await?;
                }
                None => {
                    let _ = writeln!(out, "{indent}    {} (output no longer in the workspace)", input.name);
                }
            }
        }
        Ok(true)
    })
}

fn write_row(out: &mut String, indent: &str, batch: &RecordBatch, row: usize) -> Result<()> {
    let options = FormatOptions::default().with_null("NULL");
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let value = match field.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView if !column.is_null(row) => {
                let bin = datafusion::arrow::compute::cast(column, &DataType::Binary)?;
                describe_binary(bin.as_binary::<i32>().value(row))
            }
            _ => ArrayFormatter::try_new(column.as_ref(), &options)?.value(row).to_string(),
        };
        let _ = writeln!(out, "{indent}    {} = {value}", field.name());
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
