//! Column names and types the engine and the operators agree on.

use arrow::datatypes::{DataType, Field};

/// The stable id of a row: 32 lowercase hex digits derived from its content or its inputs.
pub const ROW_ID: &str = "row_id";
/// The ids of the input rows a derived row came from (a `List<Utf8>` column).
pub const PARENT_IDS: &str = "parent_ids";
/// Image bytes (PNG) columns are `Binary`; their sizes live in these `UInt32` columns.
pub const WIDTH: &str = "width";
/// See [`WIDTH`].
pub const HEIGHT: &str = "height";

/// The `row_id` field.
pub fn row_id_field() -> Field {
    Field::new(ROW_ID, DataType::Utf8, false)
}

/// A column an operator needs from one of its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnRequirement {
    /// Column name.
    pub name: String,
    /// The types accepted, the first being the one to name in messages.
    pub types: Vec<DataType>,
}

impl ColumnRequirement {
    /// A column of exactly this type.
    pub fn new(name: impl Into<String>, ty: DataType) -> Self {
        Self { name: name.into(), types: vec![ty] }
    }

    /// A binary image column (PNG bytes); `LargeBinary` and `BinaryView` are accepted too.
    pub fn image(name: impl Into<String>) -> Self {
        Self { name: name.into(), types: vec![DataType::Binary, DataType::LargeBinary, DataType::BinaryView] }
    }

    /// A text column in any of Arrow's string encodings.
    pub fn text(name: impl Into<String>) -> Self {
        Self { name: name.into(), types: vec![DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View] }
    }

    /// Whether `ty` satisfies this requirement.
    pub fn accepts(&self, ty: &DataType) -> bool {
        self.types.contains(ty)
    }

    /// The accepted types, for messages: `Binary` or `Utf8 | LargeUtf8`.
    pub fn describe_types(&self) -> String {
        self.types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" | ")
    }
}
