//! Row ids for tables made by queries and tabular reads.
//!
//! Rows that arrive with a `row_id` keep it; rows without one get an id from their content (a
//! blake3 digest of every column's value, hashed in parallel). An id seen before in the same
//! table is made unique by mixing in how many times it was seen, so ids are unique within a
//! table and stable across reruns of the same data.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use rayon::prelude::*;
use unoflow_api::columns::{ROW_ID, row_id_field};
use unoflow_api::rowid::RowIdHasher;

use crate::error::{Error, Result};

/// Assigns unique row ids across the batches of one table.
#[derive(Debug, Default)]
pub struct IdAssigner {
    /// How often each id was seen; keys are uniformly distributed 128-bit values, so the map
    /// hashes them by taking their low bits.
    seen: HashMap<u128, u32, BuildHasherDefault<LowBits>>,
}

/// A hasher for keys that are already uniform random bits.
#[derive(Debug, Default)]
struct LowBits(u64);

impl Hasher for LowBits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

/// A 128-bit key for an id: the id itself when it is one of ours (32 hex digits), else a digest.
fn key(id: &str) -> u128 {
    if id.len() == 32
        && let Ok(k) = u128::from_str_radix(id, 16)
    {
        return k;
    }
    u128::from_le_bytes(blake3::hash(id.as_bytes()).as_bytes()[..16].try_into().expect("16 bytes"))
}

impl IdAssigner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns `batch` with a unique `row_id` as its first column.
    pub fn assign(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = batch.schema();
        let (ids, rest): (ArrayRef, Vec<usize>) = match schema.index_of(ROW_ID) {
            Ok(i) => {
                let col = datafusion::arrow::compute::cast(batch.column(i), &DataType::Utf8)
                    .map_err(|e| Error::Execution(format!("`{ROW_ID}` must be text: {e}")))?;
                (self.dedupe(col.as_string::<i32>()), (0..batch.num_columns()).filter(|&c| c != i).collect())
            }
            Err(_) => {
                let ids = content_ids(&batch)?;
                (self.dedupe(&ids), (0..batch.num_columns()).collect())
            }
        };
        let mut fields = vec![Arc::new(row_id_field())];
        let mut columns: Vec<ArrayRef> = vec![ids];
        for c in rest {
            fields.push(Arc::clone(&schema.fields()[c]));
            columns.push(Arc::clone(batch.column(c)));
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
    }

    /// Records the ids; returns them as they are when none repeats (the usual case), else
    /// with repeats and nulls replaced.
    fn dedupe(&mut self, ids: &StringArray) -> ArrayRef {
        let mut replaced: Vec<(usize, String)> = Vec::new();
        self.seen.reserve(ids.len());
        for (row, id) in ids.iter().enumerate() {
            let id = match id {
                Some(id) if !id.is_empty() => id,
                _ => {
                    replaced.push((row, RowIdHasher::new("null-id").field(&(row as u64).to_le_bytes()).finish()));
                    continue;
                }
            };
            let count = self.seen.entry(key(id)).or_insert(0);
            *count += 1;
            if *count > 1 {
                replaced.push((row, RowIdHasher::new("repeat").field(id.as_bytes()).field(&count.to_le_bytes()).finish()));
            }
        }
        if replaced.is_empty() && ids.null_count() == 0 {
            return Arc::new(ids.clone());
        }
        let mut next = replaced.into_iter().peekable();
        let out: StringArray = (0..ids.len())
            .map(|row| match next.peek() {
                Some((r, _)) if *r == row => next.next().map(|(_, id)| id),
                _ => Some(ids.value(row).to_string()),
            })
            .collect();
        Arc::new(out)
    }
}

/// One column's values as bytes to hash.
enum Values<'a> {
    /// Fixed-width primitives: the value buffer (shared, not copied), the index of the array's
    /// first value in it, and the width of one value.
    Fixed(Buffer, usize, usize, &'a dyn Array),
    Utf8(&'a datafusion::arrow::array::StringArray),
    LargeUtf8(&'a datafusion::arrow::array::LargeStringArray),
    Utf8View(&'a datafusion::arrow::array::StringViewArray),
    Binary(&'a datafusion::arrow::array::BinaryArray),
    LargeBinary(&'a datafusion::arrow::array::LargeBinaryArray),
    BinaryView(&'a datafusion::arrow::array::BinaryViewArray),
    /// Anything else, through Arrow's row format.
    Rows(Rows, &'a dyn Array),
}

impl<'a> Values<'a> {
    fn new(array: &'a ArrayRef) -> Result<Self> {
        let a = array.as_ref();
        Ok(match array.data_type() {
            DataType::Utf8 => Self::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => Self::LargeUtf8(a.as_string::<i64>()),
            DataType::Utf8View => Self::Utf8View(a.as_string_view()),
            DataType::Binary => Self::Binary(a.as_binary::<i32>()),
            DataType::LargeBinary => Self::LargeBinary(a.as_binary::<i64>()),
            DataType::BinaryView => Self::BinaryView(a.as_binary_view()),
            t if t.is_primitive() => {
                let width = t.primitive_width().ok_or_else(|| Error::Internal(format!("no width for {t}")))?;
                let data = a.to_data();
                let buffer = data.buffers().first().ok_or_else(|| Error::Internal("primitive array without values".into()))?.clone();
                Self::Fixed(buffer, data.offset(), width, a)
            }
            t => {
                let converter = RowConverter::new(vec![SortField::new(t.clone())])?;
                Self::Rows(converter.convert_columns(std::slice::from_ref(array))?, a)
            }
        })
    }

    fn feed(&self, row: usize, out: &mut Vec<u8>) {
        let valid = match self {
            Self::Fixed(.., a) | Self::Rows(_, a) => a.is_valid(row),
            Self::Utf8(a) => a.is_valid(row),
            Self::LargeUtf8(a) => a.is_valid(row),
            Self::Utf8View(a) => a.is_valid(row),
            Self::Binary(a) => a.is_valid(row),
            Self::LargeBinary(a) => a.is_valid(row),
            Self::BinaryView(a) => a.is_valid(row),
        };
        if !valid {
            out.push(0);
            return;
        }
        let bytes: &[u8] = match self {
            Self::Fixed(values, first, width, _) => &values.as_slice()[(first + row) * width..(first + row + 1) * width],
            Self::Utf8(a) => a.value(row).as_bytes(),
            Self::LargeUtf8(a) => a.value(row).as_bytes(),
            Self::Utf8View(a) => a.value(row).as_bytes(),
            Self::Binary(a) => a.value(row),
            Self::LargeBinary(a) => a.value(row),
            Self::BinaryView(a) => a.value(row),
            Self::Rows(rows, _) => rows.row(row).data(),
        };
        // Large values (images) are hashed on their own and only their digest is buffered.
        if bytes.len() > 4096 {
            out.push(2);
            out.extend_from_slice(blake3::hash(bytes).as_bytes());
        } else {
            out.push(1);
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// Content ids of every row: blake3 over each column's value, rows hashed in parallel.
fn content_ids(batch: &RecordBatch) -> Result<StringArray> {
    let columns = batch.columns().iter().map(Values::new).collect::<Result<Vec<_>>>()?;
    let digests: Vec<[u8; 16]> = (0..batch.num_rows())
        .into_par_iter()
        .map_init(Vec::new, |buf, row| {
            // One contiguous buffer per row: a single hash call is much cheaper than one per
            // column for the short rows tables are mostly made of.
            buf.clear();
            buf.extend_from_slice(b"row");
            for c in &columns {
                c.feed(row, buf);
            }
            blake3::hash(buf).as_bytes()[..16].try_into().expect("16 bytes")
        })
        .collect();
    let mut out = StringBuilder::with_capacity(digests.len(), digests.len() * 32);
    let mut text = [0u8; 32];
    for digest in &digests {
        for (i, b) in digest.iter().enumerate() {
            text[2 * i] = HEX[(b >> 4) as usize];
            text[2 * i + 1] = HEX[(b & 15) as usize];
        }
        out.append_value(std::str::from_utf8(&text).expect("hex is ASCII"));
    }
    Ok(out.finish())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{BooleanArray, Int64Array};
    use datafusion::arrow::datatypes::Field;

    use super::*;

    fn batch(xs: Vec<i64>, names: Vec<&str>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("flag", DataType::Boolean, false),
        ]));
        let flags = BooleanArray::from(xs.iter().map(|x| x % 2 == 0).collect::<Vec<_>>());
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(xs)), Arc::new(StringArray::from(names)), Arc::new(flags)]).unwrap()
    }

    #[test]
    fn content_ids_are_stable_and_unique() {
        let b = batch(vec![1, 2, 1], vec!["a", "b", "a"]);
        let out = IdAssigner::new().assign(b.clone()).unwrap();
        let ids = out.column(0).as_string::<i32>();
        assert_eq!(out.schema().field(0).name(), ROW_ID);
        assert_ne!(ids.value(0), ids.value(1));
        assert_ne!(ids.value(0), ids.value(2), "repeated content gets distinct ids");
        let again = IdAssigner::new().assign(b).unwrap();
        assert_eq!(again.column(0).as_string::<i32>(), ids);
    }

    #[test]
    fn ids_do_not_depend_on_batch_boundaries() {
        let whole = IdAssigner::new().assign(batch(vec![1, 2, 3], vec!["a", "b", "c"])).unwrap();
        let sliced = IdAssigner::new().assign(batch(vec![1, 2, 3], vec!["a", "b", "c"]).slice(1, 2)).unwrap();
        assert_eq!(whole.column(0).as_string::<i32>().value(1), sliced.column(0).as_string::<i32>().value(0));
    }
}
