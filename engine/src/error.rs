//! The engine's error type. Variants say whose fault it is, which decides the exit code.

use std::path::PathBuf;

use crate::diagnostic::Diagnostics;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The DAG file is wrong; nothing ran.
    #[error("{0}")]
    Spec(Box<Diagnostics>),
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// Another run holds the workspace.
    #[error("{0}")]
    Locked(String),
    /// The run was interrupted by a signal; committed work is kept.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A workspace file is damaged or from an incompatible version.
    #[error("workspace: {path}: {message}")]
    Workspace { path: PathBuf, message: String },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Work failed while running.
    #[error("{0}")]
    Execution(String),
    #[error(transparent)]
    Op(#[from] unoflow_api::OpError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// A bug in unoflow.
    #[error("internal error (a bug in unoflow, please report it): {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this error: 2 for what the user must fix before running
    /// (DAG file, arguments), 130 for an interrupted run, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Spec(_) | Self::Usage(_) => 2,
            Self::Interrupted(_) => 130,
            _ => 1,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        Self::Spec(Box::new(d))
    }
}

/// Result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path to an I/O result.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
