//! Line-accurate decoding of CSV and JSON-lines files into Arrow batches.
//!
//! Rows are decoded in chunks by Arrow's own decoders (fast); a chunk that fails is decoded
//! again record by record, so each bad record is reported with its file and line and the good
//! ones around it are kept. A bad line does not sink the file: it becomes a row of the node's
//! error table (`run`), or a diagnostic (`validate`, which reads every line).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, IoContext, Result};

/// Records the column types are inferred from (as DataFusion's default), across the files.
const INFER_RECORDS: usize = 1000;

/// The columns of `files`, inferred from their first records. Records that cannot be parsed
/// at all (broken JSON, a CSV row of the wrong width) are skipped here: decoding reports them
/// with their lines. A column seen with mixed types becomes text, and decoding then reads
/// numbers and booleans in it as text, so nothing is lost.
pub fn infer_schema(files: &[&Path], format: TextFormat) -> Result<Schema> {
    match format {
        TextFormat::JsonLines => {
            let mut values = Vec::new();
            'files: for path in files {
                let reader = BufReader::new(File::open(path).at(path)?);
                for line in reader.split(b'\n') {
                    let line = line.at(path)?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    if let Ok(value @ serde_json::Value::Object(_)) = serde_json::from_slice::<serde_json::Value>(&line) {
                        values.push(value);
                        if values.len() == INFER_RECORDS {
                            break 'files;
                        }
                    }
                }
            }
            Ok(datafusion::arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))?)
        }
        TextFormat::Csv => {
            let mut sample = Vec::new();
            let mut header: Option<csv::ByteRecord> = None;
            let mut taken = 0;
            {
                let mut writer = csv::WriterBuilder::new().from_writer(&mut sample);
                for path in files {
                    let mut reader =
                        csv::ReaderBuilder::new().has_headers(true).flexible(true).from_path(path).map_err(|e| csv_error(path, e))?;
                    let this = reader.byte_headers().map_err(|e| csv_error(path, e))?.clone();
                    match &header {
                        None => {
                            writer.write_byte_record(&this).map_err(|e| csv_error(path, e))?;
                            header = Some(this);
                        }
                        Some(first) if *first != this => {
                            return Err(Error::Execution(format!(
                                "{}: its header differs from the first file's; the files of one `read` must have the same columns",
                                path.display()
                            )));
                        }
                        Some(_) => {}
                    }
                    let width = header.as_ref().map_or(0, csv::ByteRecord::len);
                    let mut record = csv::ByteRecord::new();
                    while taken < INFER_RECORDS && reader.read_byte_record(&mut record).map_err(|e| csv_error(path, e))? {
                        if record.len() == width {
                            writer.write_byte_record(&record).map_err(|e| csv_error(path, e))?;
                            taken += 1;
                        }
                    }
                }
                writer.flush().map_err(|e| Error::Execution(e.to_string()))?;
            }
            let (schema, _) =
                datafusion::arrow::csv::reader::Format::default().with_header(true).infer_schema(std::io::Cursor::new(sample), None)?;
            Ok(schema)
        }
    }
}

/// Records decoded together; a chunk is also cut at [`CHUNK_BYTES`].
const CHUNK_RECORDS: usize = 8192;
const CHUNK_BYTES: usize = 8 << 20;

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line where the record starts.
    pub line: u64,
    pub message: String,
}

/// The text formats decoded line by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

/// Decodes `path` into batches of `schema` (the schema validation inferred, without `row_id`),
/// handing each to `emit`; returns the records that failed. I/O errors fail the whole file.
pub fn decode(
    path: &Path,
    format: TextFormat,
    schema: &SchemaRef,
    emit: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<Vec<BadLine>> {
    let mut chunk = Chunk::new(format, schema);
    let mut bad = Vec::new();
    match format {
        TextFormat::JsonLines => {
            let mut reader = BufReader::new(File::open(path).at(path)?);
            let mut line = Vec::new();
            let mut number = 0u64;
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).at(path)? == 0 {
                    break;
                }
                number += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                chunk.push(number, &line);
                if chunk.is_full() {
                    chunk.flush(emit, &mut bad)?;
                }
            }
        }
        TextFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_path(path).map_err(|e| csv_error(path, e))?;
            let header_len = reader.byte_headers().map_err(|e| csv_error(path, e))?.len();
            let mut record = csv::ByteRecord::new();
            let mut encoded = Vec::new();
            loop {
                match reader.read_byte_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => {
                        // A record the CSV parser itself rejects (bad UTF-8 is not checked on
                        // bytes, so this is I/O): the file cannot be read past it.
                        return Err(csv_error(path, e));
                    }
                }
                let number = record.position().map_or(0, |p| p.line());
                if record.len() != header_len {
                    bad.push(BadLine { line: number, message: format!("{} fields, but the header has {header_len}", record.len()) });
                    continue;
                }
                encoded.clear();
                {
                    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(&mut encoded);
                    writer.write_byte_record(&record).map_err(|e| csv_error(path, e))?;
                    writer.flush().at(path)?;
                }
                chunk.push(number, &encoded);
                if chunk.is_full() {
                    chunk.flush(emit, &mut bad)?;
                }
            }
        }
    }
    chunk.flush(emit, &mut bad)?;
    bad.sort_by_key(|b| b.line);
    Ok(bad)
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let at = e.position().map(|p| format!(":{}", p.line())).unwrap_or_default();
    Error::Execution(format!("{}{at}: {e}", path.display()))
}

/// Records waiting to be decoded together: their bytes, and where each starts.
struct Chunk<'a> {
    format: TextFormat,
    schema: &'a SchemaRef,
    bytes: Vec<u8>,
    /// (line number, start offset in `bytes`) of each record.
    records: Vec<(u64, usize)>,
}

impl<'a> Chunk<'a> {
    fn new(format: TextFormat, schema: &'a SchemaRef) -> Self {
        Self { format, schema, bytes: Vec::new(), records: Vec::new() }
    }

    fn push(&mut self, line: u64, record: &[u8]) {
        self.records.push((line, self.bytes.len()));
        self.bytes.extend_from_slice(record);
        if !record.ends_with(b"\n") {
            self.bytes.push(b'\n');
        }
    }

    fn is_full(&self) -> bool {
        self.records.len() >= CHUNK_RECORDS || self.bytes.len() >= CHUNK_BYTES
    }

    /// Decodes the waiting records: all at once, or one by one when that fails.
    fn flush(&mut self, emit: &mut dyn FnMut(RecordBatch) -> Result<()>, bad: &mut Vec<BadLine>) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        match decode_all(self.format, self.schema, &self.bytes, self.records.len()) {
            Ok(batch) => emit(batch)?,
            Err(_) => {
                let mut good = Vec::new();
                for (k, &(line, start)) in self.records.iter().enumerate() {
                    let end = self.records.get(k + 1).map_or(self.bytes.len(), |&(_, s)| s);
                    match decode_all(self.format, self.schema, &self.bytes[start..end], 1) {
                        Ok(batch) => good.push(batch),
                        Err(message) => bad.push(BadLine { line, message }),
                    }
                }
                if !good.is_empty() {
                    emit(concat_batches(self.schema, &good)?)?;
                }
            }
        }
        self.bytes.clear();
        self.records.clear();
        Ok(())
    }
}

/// Decodes `bytes` holding `count` records into one batch; the error is the decoder's message
/// (without the line it gives, which counts from the chunk, not the file).
fn decode_all(format: TextFormat, schema: &SchemaRef, bytes: &[u8], count: usize) -> std::result::Result<RecordBatch, String> {
    decode_chunk(format, schema, bytes, count).map_err(|m| without_chunk_line(&m))
}

/// `message` without arrow's ` at line N` (relative to the chunk decoded).
fn without_chunk_line(message: &str) -> String {
    let Some(at) = message.find(" at line ") else { return message.to_string() };
    let digits = message[at + 9..].chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return message.to_string();
    }
    format!("{}{}", &message[..at], &message[at + 9 + digits..])
}

fn decode_chunk(format: TextFormat, schema: &SchemaRef, bytes: &[u8], count: usize) -> std::result::Result<RecordBatch, String> {
    let batch = match format {
        TextFormat::JsonLines => {
            let mut decoder = datafusion::arrow::json::ReaderBuilder::new(SchemaRef::clone(schema))
                .with_batch_size(count.max(1))
                .with_coerce_primitive(true)
                .build_decoder()
                .map_err(|e| e.to_string())?;
            let used = decoder.decode(bytes).map_err(|e| e.to_string())?;
            if used < bytes.len() && !bytes[used..].iter().all(u8::is_ascii_whitespace) {
                return Err("more than one JSON value on the line".into());
            }
            decoder.flush().map_err(|e| e.to_string())?
        }
        TextFormat::Csv => {
            let mut decoder = datafusion::arrow::csv::ReaderBuilder::new(SchemaRef::clone(schema))
                .with_header(false)
                .with_batch_size(count.max(1))
                .build_decoder();
            let mut offset = 0;
            while offset < bytes.len() {
                let used = decoder.decode(&bytes[offset..]).map_err(|e| e.to_string())?;
                if used == 0 {
                    break;
                }
                offset += used;
            }
            decoder.decode(&[]).map_err(|e| e.to_string())?;
            decoder.flush().map_err(|e| e.to_string())?
        }
    };
    let batch = batch.ok_or_else(|| "no record".to_string())?;
    if batch.num_rows() != count {
        return Err(format!("{} records decoded where {count} were expected", batch.num_rows()));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("b", DataType::Utf8, true)]))
    }

    fn run(format: TextFormat, text: &str) -> (usize, Vec<BadLine>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, text).unwrap();
        let mut rows = 0;
        let bad = decode(&path, format, &schema(), &mut |b| {
            rows += b.num_rows();
            Ok(())
        })
        .unwrap();
        (rows, bad)
    }

    #[test]
    fn json_lines_report_the_real_line() {
        let mut text = String::new();
        for i in 0..20_000 {
            if i == 500 || i == 15_000 {
                text.push_str("{\"a\": \"not a number\", \"b\": \"x\"}\n");
            } else {
                text.push_str(&format!("{{\"a\": {i}, \"b\": \"x\"}}\n"));
            }
        }
        let (rows, bad) = run(TextFormat::JsonLines, &text);
        assert_eq!(rows, 19_998);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [501, 15_001]);
    }

    #[test]
    fn csv_reports_the_real_line_across_quoted_newlines() {
        let mut text = String::from("a,b\n");
        text.push_str("1,\"two\nlines\"\n");
        for i in 0..10_000 {
            text.push_str(&format!("{i},x\n"));
        }
        text.push_str("oops,x\n");
        text.push_str("7,x,extra\n");
        let (rows, bad) = run(TextFormat::Csv, &text);
        assert_eq!(rows, 10_001);
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), [10_004, 10_005]);
        assert!(bad[1].message.contains("3 fields"), "{:?}", bad[1]);
    }
}
