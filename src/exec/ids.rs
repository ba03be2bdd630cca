//! Row ids for tables made by queries and tabular reads.
//!
//! Rows that arrive with a `row_id` keep it; rows without one get an id from their content. An
//! id seen before in the same table is made unique by mixing in how many times it was seen, so
//! ids are unique within a table and stable across reruns of the same data.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::row::{RowConverter, SortField};
use unoflow_operators::columns::{ROW_ID, row_id_field};
use unoflow_operators::rowid::RowIdHasher;

use crate::error::{Error, Result};

/// Assigns unique row ids across the batches of one table.
#[derive(Debug, Default)]
pub struct IdAssigner {
    seen: HashMap<u128, u32>,
}

fn key(id: &str) -> u128 {
    u128::from_le_bytes(blake3::hash(id.as_bytes()).as_bytes()[..16].try_into().expect("16 bytes"))
}

impl IdAssigner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns `batch` with a unique `row_id` as its first column.
    pub fn assign(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let (ids, rest): (Vec<String>, Vec<usize>) = match schema.index_of(ROW_ID) {
            Ok(i) => {
                let col = datafusion::arrow::compute::cast(batch.column(i), &datafusion::arrow::datatypes::DataType::Utf8)
                    .map_err(|e| Error::Execution(format!("`{ROW_ID}` must be text: {e}")))?;
                let col = col.as_string::<i32>();
                let ids = (0..col.len()).map(|r| if col.is_null(r) { String::new() } else { col.value(r).to_string() }).collect();
                (ids, (0..batch.num_columns()).filter(|&c| c != i).collect())
            }
            Err(_) => {
                let fields: Vec<SortField> = schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
                let converter = RowConverter::new(fields)?;
                let rows = converter.convert_columns(batch.columns())?;
                let ids = rows.iter().map(|row| RowIdHasher::new("row").field(row.as_ref()).finish()).collect();
                (ids, (0..batch.num_columns()).collect())
            }
        };
        let unique: Vec<String> = ids
            .into_iter()
            .map(|id| {
                let id = if id.is_empty() { RowIdHasher::new("null-id").finish() } else { id };
                let count = self.seen.entry(key(&id)).or_insert(0);
                *count += 1;
                if *count == 1 { id } else { RowIdHasher::new("repeat").field(id.as_bytes()).field(&count.to_le_bytes()).finish() }
            })
            .collect();
        let mut fields = vec![Arc::new(row_id_field())];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(unique))];
        for c in rest {
            fields.push(Arc::clone(&schema.fields()[c]));
            columns.push(Arc::clone(batch.column(c)));
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields.into_iter().map(|f| Field::clone(&f)).collect::<Vec<_>>())), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;

    use super::*;

    #[test]
    fn content_ids_are_stable_and_unique() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", datafusion::arrow::datatypes::DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 1]))]).unwrap();
        let out = IdAssigner::new().assign(batch.clone()).unwrap();
        let ids = out.column(0).as_string::<i32>();
        assert_eq!(out.schema().field(0).name(), ROW_ID);
        assert_ne!(ids.value(0), ids.value(2), "repeated content gets distinct ids");
        let again = IdAssigner::new().assign(batch).unwrap();
        assert_eq!(again.column(0).as_string::<i32>(), ids);
    }
}
