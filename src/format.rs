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
use unoflow_operators::image_io::png_size;

use crate::error::{Error, IoContext, Result};

/// How `unoflow sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
    Parquet,
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

/// Replaces binary columns with text: summaries for tables, base64 for data formats.
fn textualise(batch: &RecordBatch, encode: impl Fn(&[u8]) -> String) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if is_binary(field.data_type()) {
            let bin = cast(column, &DataType::Binary)?;
            let bin = bin.as_binary::<i32>();
            let text: StringArray = (0..bin.len()).map(|i| (!bin.is_null(i)).then(|| encode(bin.value(i)))).collect();
            fields.push(Field::new(field.name(), DataType::Utf8, field.is_nullable()));
            columns.push(Arc::new(text));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Writes `batches` to `out` in `format`.
pub fn write(out: &mut dyn Write, format: OutputFormat, batches: &[RecordBatch], schema: &Arc<Schema>) -> Result<()> {
    let stdout = || std::path::PathBuf::from("<stdout>");
    match format {
        OutputFormat::Table => {
            let mut table = Table::new();
            table.load_preset(presets::UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
            table.set_header(schema.fields().iter().map(|f| f.name().as_str()));
            let options = FormatOptions::default().with_null("NULL");
            let mut rows = 0;
            for batch in batches {
                let batch = textualise(batch, describe_binary)?;
                let formatters = batch
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                for row in 0..batch.num_rows() {
                    table.add_row(formatters.iter().map(|f| cut(&f.value(row).to_string())));
                }
                rows += batch.num_rows();
            }
            writeln!(out, "{table}").at(stdout())?;
            writeln!(out, "{rows} row{}", if rows == 1 { "" } else { "s" }).at(stdout())?;
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::Writer::new(&mut *out);
            for batch in batches {
                writer.write(&textualise(batch, base64)?)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(&textualise(batch, base64)?)?;
            }
            writer.finish()?;
        }
        OutputFormat::Parquet => {
            let mut buffer = Vec::new();
            let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(&mut buffer, Arc::clone(schema), None)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.close()?;
            out.write_all(&buffer).at(stdout())?;
        }
    }
    out.flush().map_err(|e| Error::io("<stdout>", e))
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
        let png = unoflow_operators::image_io::encode_png(&image::DynamicImage::new_rgb8(512, 256)).unwrap();
        assert!(describe_binary(&png).starts_with("<png 512x256 "), "{}", describe_binary(&png));
        assert_eq!(describe_binary(&[1, 2, 3]), "<binary 3 B>");
        assert_eq!(human_bytes(35_000), "35 KB");
    }
}
