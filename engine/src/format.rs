//! Query results for people (aligned tables, image cells summarised) and for programs (CSV,
//! JSON lines, Parquet; binary cells base64-encoded in text formats).

use std::io::Write;
use std::sync::Arc;

use base64::Engine;
use comfy_table::{ContentArrangement, Table, presets};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use unoflow_image::png_size;

use crate::error::{IoContext, Result};

unoflow_api::choice! {
    /// How `unoflow sql` prints results.
    pub enum OutputFormat { Table = "table", Csv = "csv", Json = "json", Parquet = "parquet" }
}

/// Longest text shown in a table cell before it is cut.
const CELL_CHARS: usize = 60;

/// A binary cell in words: `<png 512x512 34 KB>` or `<binary 1.2 KB>`.
pub fn describe_binary(bytes: &[u8]) -> String {
    match png_size(bytes) {
        Some((w, h)) => format!("<png {w}x{h} {}>", human_bytes(bytes.len())),
        None => format!("<binary {}>", human_bytes(bytes.len())),
    }
}

/// One cell as text, as `unoflow lineage` and the review page show it: `NULL`, binary as
/// [`describe_binary`], anything else as Arrow displays it.
pub fn cell_text(column: &ArrayRef, row: usize) -> String {
    if column.is_null(row) {
        return "NULL".into();
    }
    if is_binary(column.data_type())
        && let Ok(bin) = cast(&column.slice(row, 1), &DataType::Binary)
    {
        return describe_binary(bin.as_binary::<i32>().value(0));
    }
    ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

fn human_bytes(n: usize) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{} KB", n.div_ceil(1024)),
        n => format!("{:.1} MB", n as f64 / (1024.0 * 1024.0)),
    }
}

fn is_binary(ty: &DataType) -> bool {
    matches!(ty, DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_))
}

/// Whether CSV can hold a column of this type as it is; others are written as text.
fn csv_native(ty: &DataType) -> bool {
    !matches!(
        ty,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(..)
            | DataType::Struct(_)
            | DataType::Map(..)
            | DataType::Union(..)
            | DataType::Dictionary(..)
            | DataType::RunEndEncoded(..)
    )
}

/// Replaces binary columns with text (summaries for tables, base64 for data formats) and, with
/// `nested_as_text`, nested columns with their display form (`[a, b]`), which CSV cannot hold.
fn textualise(batch: &RecordBatch, encode: impl Fn(&[u8]) -> String, nested_as_text: bool) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    let options = FormatOptions::default().with_null("");
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if is_binary(field.data_type()) {
            let bin = cast(column, &DataType::Binary)?;
            let bin = bin.as_binary::<i32>();
            let text: StringArray = (0..bin.len()).map(|i| (!bin.is_null(i)).then(|| encode(bin.value(i)))).collect();
            fields.push(Field::new(field.name(), DataType::Utf8, field.is_nullable()));
            columns.push(Arc::new(text));
        } else if nested_as_text && !csv_native(field.data_type()) {
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
            let text: StringArray = (0..column.len()).map(|i| (!column.is_null(i)).then(|| formatter.value(i).to_string())).collect();
            fields.push(Field::new(field.name(), DataType::Utf8, field.is_nullable()));
            columns.push(Arc::new(text));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// How many rows the `table` format shows by default: a table is for reading, and it has to
/// hold its rows to size its columns.
pub const TABLE_ROWS: usize = 1000;

/// Writes query results to `out` batch by batch, so no format holds the whole result: `table`
/// keeps at most `max_table_rows` rows and says when it stopped; the data formats stream.
pub struct ResultWriter<W: Write + Send> {
    inner: Sink<W>,
    rows: usize,
}

enum Sink<W: Write + Send> {
    Table { out: W, table: Table, max_rows: usize, truncated: bool },
    Csv(datafusion::arrow::csv::Writer<W>),
    Json(datafusion::arrow::json::LineDelimitedWriter<W>),
    Parquet(datafusion::parquet::arrow::ArrowWriter<W>),
}

impl<W: Write + Send> std::fmt::Debug for ResultWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultWriter").field("rows", &self.rows).finish_non_exhaustive()
    }
}

impl<W: Write + Send> ResultWriter<W> {
    /// A writer of `format` for results of `schema`.
    pub fn new(out: W, format: OutputFormat, schema: &Arc<Schema>, max_table_rows: usize) -> Result<Self> {
        let inner = match format {
            OutputFormat::Table => {
                let mut table = Table::new();
                table.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
                table.set_header(schema.fields().iter().map(|f| f.name().as_str()));
                Sink::Table { out, table, max_rows: max_table_rows, truncated: false }
            }
            OutputFormat::Csv => Sink::Csv(datafusion::arrow::csv::Writer::new(out)),
            OutputFormat::Json => Sink::Json(datafusion::arrow::json::LineDelimitedWriter::new(out)),
            OutputFormat::Parquet => Sink::Parquet(datafusion::parquet::arrow::ArrowWriter::try_new(out, Arc::clone(schema), None)?),
        };
        Ok(Self { inner, rows: 0 })
    }

    /// Whether the writer wants no more rows (a full table).
    pub fn is_full(&self) -> bool {
        matches!(&self.inner, Sink::Table { truncated: true, .. })
    }

    /// Writes one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match &mut self.inner {
            Sink::Table { table, max_rows, truncated, .. } => {
                let room = max_rows.saturating_sub(self.rows);
                if batch.num_rows() > room {
                    *truncated = true;
                }
                let batch = textualise(&batch.slice(0, batch.num_rows().min(room)), describe_binary, false)?;
                let options = FormatOptions::default().with_null("NULL");
                let formatters = batch
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                for row in 0..batch.num_rows() {
                    table.add_row(formatters.iter().map(|f| cut(&f.value(row).to_string())));
                }
                self.rows += batch.num_rows();
            }
            Sink::Csv(w) => {
                w.write(&textualise(batch, base64, true)?)?;
                self.rows += batch.num_rows();
            }
            Sink::Json(w) => {
                w.write(&textualise(batch, base64, false)?)?;
                self.rows += batch.num_rows();
            }
            Sink::Parquet(w) => {
                w.write(batch)?;
                self.rows += batch.num_rows();
            }
        }
        Ok(())
    }

    /// Ends the output (the table, its row count and a notice when rows were left out).
    pub fn finish(self) -> Result<()> {
        let stdout = || std::path::PathBuf::from("<output>");
        let rows = self.rows;
        match self.inner {
            Sink::Table { mut out, table, max_rows, truncated } => {
                writeln!(out, "{table}").at(stdout())?;
                if truncated {
                    writeln!(
                        out,
                        "first {rows} rows shown; the table stops at {max_rows} (add LIMIT, raise --max-rows, or use --format csv|json|parquet for every row)"
                    )
                    .at(stdout())?;
                } else {
                    writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" }).at(stdout())?;
                }
                out.flush().at(stdout())
            }
            Sink::Csv(w) => w.into_inner().flush().at(stdout()),
            Sink::Json(mut w) => {
                w.finish()?;
                w.into_inner().flush().at(stdout())
            }
            Sink::Parquet(w) => {
                let mut out = w.into_inner()?;
                out.flush().at(stdout())
            }
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn cut(s: &str) -> String {
    let one_line = s.replace('\n', "⏎");
    if one_line.chars().count() > CELL_CHARS {
        format!("{}…", one_line.chars().take(CELL_CHARS - 1).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_cells_are_described() {
        let png = unoflow_image::encode_png(&image::DynamicImage::new_rgb8(512, 256)).unwrap();
        assert!(describe_binary(&png).starts_with("<png 512x256 "), "{}", describe_binary(&png));
        assert_eq!(describe_binary(&[1, 2, 3]), "<binary 3 B>");
        assert_eq!(human_bytes(35_000), "35 KB");
    }
}
