use arrow::error::ArrowError;

/// Errors of the compute layer. Per-row failures are not errors: they travel as
/// [`RowError`](crate::RowError)s in a partition's output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// A parameter has the wrong type or value. The engine checks parameters against the spec
    /// before running, so at run time this is an operator bug or a value only the operator can
    /// judge.
    #[error("parameter `{name}`: {message}")]
    Param { name: String, message: String },
    /// An input lacks a column the operator needs, or has it with the wrong type.
    #[error("input column `{column}`: {message}")]
    Column { column: String, message: String },
    /// The partition as a whole could not be processed.
    #[error("{0}")]
    Execution(String),
    /// The run is stopping (a signal); nothing of the partition is kept.
    #[error("cancelled")]
    Cancelled,
    /// An Arrow kernel failed.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// A bug in unoflow; please report it.
    #[error("internal error (a bug in unoflow, please report it): {0}")]
    Internal(String),
}

/// Result type of the compute layer.
pub type Result<T, E = OpError> = std::result::Result<T, E>;
