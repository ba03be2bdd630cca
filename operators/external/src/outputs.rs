//! The columns a user's operator adds, declared in the DAG as `outputs = { name = "type" }`, and
//! the check that what the user's code returned is those columns.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use unoflow_api::columns::{PARENT_IDS, ROW_ID};
use unoflow_api::{OpError, ParamValue, Result};

/// The parameter that declares them.
pub const PARAM: &str = "outputs";

/// The type names `outputs` accepts, for messages.
pub const TYPE_NAMES: &str = "bool, int8, int16, int32, int64, uint8, uint16, uint32, uint64, float32, float64, utf8 (or string), large_utf8, binary, \
     large_binary, list<TYPE>";

/// The added columns, in name order (a TOML table has no order to keep). Each is nullable: a
/// function may have no value for a row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputColumns {
    schema: SchemaRef,
}

impl OutputColumns {
    /// Reads `outputs = { name = "type", … }`.
    pub fn parse(table: &BTreeMap<String, ParamValue>) -> Result<Self> {
        let bad = |message: String| OpError::Param { name: PARAM.into(), message };
        if table.is_empty() {
            return Err(bad("declares no column: name each column the code adds and its type, e.g. { score = \"float64\" }".into()));
        }
        let mut fields = Vec::with_capacity(table.len());
        for (name, ty) in table {
            if name == ROW_ID || name == PARENT_IDS {
                return Err(bad(format!("`{name}` is the engine's column; the outputs keep each input row's `{ROW_ID}`")));
            }
            let ParamValue::Str(text) = ty else {
                return Err(bad(format!("the type of `{name}` must be a string naming an Arrow type, found {}", ty.kind())));
            };
            let ty = parse_type(text).map_err(|why| bad(format!("column `{name}`: {why}")))?;
            fields.push(Field::new(name, ty, true));
        }
        Ok(Self { schema: Arc::new(Schema::new(fields)) })
    }

    /// The added columns alone, as the code must return them.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The node's output schema: the input's columns, then the added ones. An added column may
    /// not shadow an input column: a typo would silently replace data.
    pub fn output_schema(&self, input: &Schema) -> Result<SchemaRef> {
        if let Some(clash) = self.schema.fields().iter().find(|f| input.field_with_name(f.name()).is_ok()) {
            return Err(OpError::Param {
                name: PARAM.into(),
                message: format!("the input has a column `{}` already; name the added column otherwise", clash.name()),
            });
        }
        let fields: Vec<Field> = input.fields().iter().chain(self.schema.fields().iter()).map(|f| f.as_ref().clone()).collect();
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The declared columns of `returned`, in declaration order and type, or what is wrong with
    /// it: a missing or undeclared column, another row count, a value that does not convert.
    pub fn conform(&self, returned: &RecordBatch, rows: usize) -> std::result::Result<Vec<ArrayRef>, String> {
        if returned.num_rows() != rows {
            return Err(format!("returned {} rows for {rows} input rows; return one value per input row", returned.num_rows()));
        }
        let declared: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
        let undeclared: Vec<&str> =
            returned.schema_ref().fields().iter().map(|f| f.name().as_str()).filter(|n| !declared.contains(n)).collect();
        if !undeclared.is_empty() {
            return Err(format!("returned columns not in `{PARAM}`: {}; declare them or drop them", undeclared.join(", ")));
        }
        let strict = CastOptions { safe: false, ..Default::default() };
        self.schema
            .fields()
            .iter()
            .map(|field| {
                let column = returned.column_by_name(field.name()).ok_or_else(|| format!("did not return column `{}`", field.name()))?;
                if column.data_type() == field.data_type() {
                    return Ok(Arc::clone(column));
                }
                cast_with_options(column, field.data_type(), &strict).map_err(|e| {
                    format!(
                        "column `{}` is {}, which does not convert to the declared {}: {e}",
                        field.name(),
                        column.data_type(),
                        field.data_type()
                    )
                })
            })
            .collect()
    }
}

/// An Arrow type from its name in `outputs`.
pub fn parse_type(text: &str) -> std::result::Result<DataType, String> {
    let name = text.trim();
    if let Some(inner) = name.strip_prefix("list<").and_then(|rest| rest.strip_suffix('>')) {
        return Ok(DataType::List(Arc::new(Field::new("item", parse_type(inner)?, true))));
    }
    Ok(match name {
        "bool" | "boolean" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" => DataType::Float32,
        "float64" => DataType::Float64,
        "utf8" | "string" => DataType::Utf8,
        "large_utf8" | "large_string" => DataType::LargeUtf8,
        "binary" => DataType::Binary,
        "large_binary" => DataType::LargeBinary,
        _ => return Err(format!("unknown type {text:?}; the types are {TYPE_NAMES}")),
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float32Array, Int64Array, StringArray};

    use super::*;

    fn outputs(pairs: &[(&str, &str)]) -> Result<OutputColumns> {
        OutputColumns::parse(&pairs.iter().map(|(k, v)| (k.to_string(), ParamValue::from(*v))).collect())
    }

    #[test]
    fn types_parse_with_lists_nested() {
        assert_eq!(parse_type("float64"), Ok(DataType::Float64));
        assert_eq!(parse_type("string"), Ok(DataType::Utf8));
        let nested = parse_type("list<list<int32>>").unwrap();
        assert_eq!(nested.to_string(), "List(List(Int32))");
        assert!(parse_type("float").unwrap_err().contains("unknown type \"float\"; the types are bool"));
        let err = outputs(&[("s", "decimal")]).unwrap_err().to_string();
        assert!(err.starts_with("parameter `outputs`: column `s`: unknown type"), "{err}");
        assert!(outputs(&[("row_id", "utf8")]).unwrap_err().to_string().contains("the engine's column"));
        assert!(outputs(&[]).unwrap_err().to_string().contains("declares no column"));
    }

    #[test]
    fn output_columns_follow_the_input_and_may_not_shadow_it() {
        let declared = outputs(&[("score", "float64"), ("label", "utf8")]).unwrap();
        let input = Schema::new(vec![Field::new(ROW_ID, DataType::Utf8, false), Field::new("image", DataType::Binary, true)]);
        let schema = declared.output_schema(&input).unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["row_id", "image", "label", "score"]);
        let clash = Schema::new(vec![Field::new("score", DataType::Float64, true)]);
        assert!(declared.output_schema(&clash).unwrap_err().to_string().contains("has a column `score` already"));
    }

    #[test]
    fn returned_columns_are_checked_and_converted() {
        let declared = outputs(&[("score", "float64"), ("n", "int64")]).unwrap();
        let batch = |columns: Vec<(&str, ArrayRef)>| RecordBatch::try_from_iter(columns).unwrap();
        let good = batch(vec![("n", Arc::new(Int64Array::from(vec![1, 2]))), ("score", Arc::new(Float32Array::from(vec![0.5, 1.5])))]);
        let columns = declared.conform(&good, 2).unwrap();
        assert_eq!(columns[1].data_type(), &DataType::Float64, "converted to the declared type (name order: n, score)");
        assert!(declared.conform(&good, 3).unwrap_err().contains("returned 2 rows for 3 input rows"));
        let missing = batch(vec![("score", Arc::new(Float32Array::from(vec![0.5])))]);
        assert_eq!(declared.conform(&missing, 1).unwrap_err(), "did not return column `n`");
        let extra = batch(vec![
            ("n", Arc::new(Int64Array::from(vec![1]))),
            ("score", Arc::new(Float32Array::from(vec![0.5]))),
            ("other", Arc::new(Int64Array::from(vec![1]))),
        ]);
        assert!(declared.conform(&extra, 1).unwrap_err().contains("returned columns not in `outputs`: other"));
        let text = batch(vec![("n", Arc::new(StringArray::from(vec!["x"]))), ("score", Arc::new(Float32Array::from(vec![0.5])))]);
        assert!(declared.conform(&text, 1).unwrap_err().contains("column `n` is Utf8, which does not convert to the declared Int64"));
    }
}
