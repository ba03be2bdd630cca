//! The benches' source table: a Parquet file of seeded synthetic rows.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

/// A Parquet file of `rows` rows: id, name, value in [0, 1), one of 16 categories, and a
/// `blob`-byte incompressible payload (an image's worth of entropy) when `blob > 0`.
pub fn make_source(path: &Path, rows: usize, blob: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, false),
    ]));
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).expect("create"), Arc::clone(&schema), None).expect("writer");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let chunk = if blob > 0 { 256 } else { 65_536 };
    for start in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - start);
        let ids: Vec<i64> = (start..start + n).map(|i| i as i64).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("name-{i}")).collect();
        let values: Vec<f64> = (0..n).map(|_| (next() % 1_000_000) as f64 / 1e6).collect();
        let categories: Vec<String> = (0..n).map(|_| format!("category-{}", next() % 16)).collect();
        let payloads: Vec<Vec<u8>> = (0..n).map(|_| (0..blob / 8).flat_map(|_| next().to_le_bytes()).collect()).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
            Arc::new(Float64Array::from(values)),
            Arc::new(StringArray::from(categories)),
            Arc::new(BinaryArray::from_iter_values(payloads.iter())),
        ];
        writer.write(&RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch")).expect("write");
    }
    writer.close().expect("close");
}
