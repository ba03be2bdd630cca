//! Per-row work over a partition: reading typed columns, splitting rows that succeeded from
//! rows that failed, and assembling the output batch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, StringArray, UInt32Array};
use arrow::compute::{cast, filter_record_batch, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::columns::{PARENT_IDS, ROW_ID};
use crate::operator::RowError;
use crate::{OpError, Result};

/// A column of `batch`, or an error naming it.
pub fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| OpError::Column { column: name.into(), message: "missing from the input".into() })
}

/// The `row_id` column.
pub fn row_ids(batch: &RecordBatch) -> Result<&StringArray> {
    column(batch, ROW_ID)?.as_string_opt::<i32>().ok_or_else(|| OpError::Column { column: ROW_ID.into(), message: "must be Utf8".into() })
}

/// A binary column (any of Arrow's binary encodings) as `Binary`.
pub fn binary(batch: &RecordBatch, name: &str) -> Result<BinaryArray> {
    Ok(cast(column(batch, name)?, &DataType::Binary)?.as_binary::<i32>().clone())
}

/// A text column (any of Arrow's string encodings) as `Utf8`.
pub fn text(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    Ok(cast(column(batch, name)?, &DataType::Utf8)?.as_string::<i32>().clone())
}

/// Row `row` of a binary column, or a message naming the column when it is null.
pub fn bytes_at<'a>(col: &'a BinaryArray, name: &str, row: usize) -> std::result::Result<&'a [u8], String> {
    if col.is_null(row) { Err(format!("`{name}` is null")) } else { Ok(col.value(row)) }
}

/// The outcome of per-row work: the values of the rows that succeeded, in order, and a
/// [`RowError`] for each row that failed.
#[derive(Debug)]
pub struct RowResults<T> {
    keep: Vec<bool>,
    pub values: Vec<T>,
    pub errors: Vec<RowError>,
}

impl<T> RowResults<T> {
    /// Splits `results` (one per row of the batch whose ids are `ids`).
    pub fn split(ids: &StringArray, results: impl IntoIterator<Item = std::result::Result<T, String>>) -> Self {
        let mut out = Self { keep: Vec::new(), values: Vec::new(), errors: Vec::new() };
        for (row, result) in results.into_iter().enumerate() {
            out.keep.push(result.is_ok());
            match result {
                Ok(value) => out.values.push(value),
                Err(message) => out.errors.push(RowError { row_id: ids.value(row).to_string(), message }),
            }
        }
        out
    }

    /// The same rows with `f` of each value.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> RowResults<U> {
        RowResults { keep: self.keep, values: self.values.into_iter().map(f).collect(), errors: self.errors }
    }

    /// The indices of the rows that succeeded, in order (one per value).
    pub fn kept_rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i)
    }

    /// The rows of `batch` that succeeded.
    pub fn kept(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if self.errors.is_empty() {
            // Every row: the batch itself, not a copy of it (a whole input can be gigabytes).
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, &BooleanArray::from(self.keep.clone()))?)
    }
}

/// `input`'s fields without those named in `added`, then `added`: the schema of an operator that
/// adds (or replaces) columns.
pub fn extend_schema(input: &Schema, added: Vec<Field>) -> SchemaRef {
    let mut fields: Vec<Field> =
        input.fields().iter().filter(|f| !added.iter().any(|a| a.name() == f.name())).map(|f| f.as_ref().clone()).collect();
    fields.extend(added);
    Arc::new(Schema::new(fields))
}

/// Column `field` of `batch`, in the field's type: a query's literals may come out wider at
/// run time than its plan said (`UNION` of `INT` and an integer literal), and the output
/// must match the schema validation promised.
fn carried_column(batch: &RecordBatch, field: &Field) -> Result<ArrayRef> {
    let col = column(batch, field.name())?;
    if col.data_type() == field.data_type() { Ok(Arc::clone(col)) } else { Ok(cast(col, field.data_type())?) }
}

/// The output batch of an operator that adds columns: `schema`'s leading fields come from `kept`,
/// its last `added.len()` fields are `added`.
pub fn with_added(schema: &SchemaRef, kept: &RecordBatch, added: Vec<ArrayRef>) -> Result<RecordBatch> {
    let carried = schema.fields().len() - added.len();
    let mut columns: Vec<ArrayRef> = schema.fields().iter().take(carried).map(|f| carried_column(kept, f)).collect::<Result<_>>()?;
    columns.extend(added);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The output of an operator that makes several rows from one: `input`'s rows `sources[i]`,
/// with fresh `row_id`s, `parent_ids` naming the source row, and the `added` columns; `schema`
/// is `derived_schema(input, added fields)`.
pub fn derived(schema: &SchemaRef, input: &RecordBatch, sources: &[u32], ids: Vec<String>, added: Vec<ArrayRef>) -> Result<RecordBatch> {
    let indices = UInt32Array::from(sources.to_vec());
    let parents = row_ids(input)?;
    let mut parent_ids = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
    for &s in sources {
        parent_ids.values().append_value(parents.value(s as usize));
        parent_ids.append(true);
    }
    let carried = schema.fields().len() - added.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields().iter().take(carried) {
        columns.push(match field.name().as_str() {
            ROW_ID => Arc::new(StringArray::from(ids.clone())),
            PARENT_IDS => Arc::new(parent_ids.finish()),
            _ => take(&carried_column(input, field)?, &indices, None)?,
        });
    }
    columns.extend(added);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The schema of [`derived`] rows: `row_id`, `parent_ids`, the input's other columns except
/// `dropped` and those `added` replaces, then `added`.
pub fn derived_schema(input: &Schema, dropped: &[&str], added: Vec<Field>) -> SchemaRef {
    let parent_ids = Field::new(PARENT_IDS, DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false);
    let mut fields = vec![crate::columns::row_id_field(), parent_ids];
    fields.extend(
        input
            .fields()
            .iter()
            .filter(|f| {
                let name = f.name().as_str();
                name != ROW_ID && name != PARENT_IDS && !dropped.contains(&name) && !added.iter().any(|a| a.name() == name)
            })
            .map(|f| f.as_ref().clone()),
    );
    fields.extend(added);
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_successes_in_order_and_names_failures() {
        let ids = StringArray::from(vec!["a", "b", "c"]);
        let r = RowResults::split(&ids, vec![Ok(1), Err("bad".to_string()), Ok(3)]);
        assert_eq!(r.values, vec![1, 3]);
        assert_eq!(r.errors, vec![RowError { row_id: "b".into(), message: "bad".into() }]);
        let batch =
            RecordBatch::try_new(Arc::new(Schema::new(vec![crate::columns::row_id_field()])), vec![Arc::new(ids.clone()) as ArrayRef])
                .unwrap();
        assert_eq!(row_ids(&r.kept(&batch).unwrap()).unwrap(), &StringArray::from(vec!["a", "c"]));
    }
}
