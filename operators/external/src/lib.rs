//! Operators that run the user's own code in another process, so a data engineer adds a model or
//! a rule without forking unoflow:
//!
//! - [`python::PythonOp`] (`op = "python"`): a function in a Python file, called on batches of
//!   rows as `pyarrow.RecordBatch`es in long-lived interpreters;
//! - [`command::CommandOp`] (`op = "command"`): any program, started per batch, reading the rows
//!   as an Arrow IPC stream on standard input and writing the added columns on standard output.
//!
//! Both add the columns declared in `outputs` to the input rows (row ids kept), turn a failure
//! on a batch into a retry row by row so only the failing rows become error rows, and enter
//! what their result depends on outside the DAG (the interpreter's and packages' versions, the
//! program's content) into the fingerprint through [`unoflow_api::Configured::runtime`].
//!
//! ```text
//!   engine ──batch──► call::process ──► Call::call ──Arrow IPC──► the user's process
//!                        │ fails on the batch? each row alone; failing rows ──► errors.NODE
//!                        ▼
//!                  outputs::OutputColumns::conform (declared columns, one per row) ──► rows
//! ```

mod call;
mod child;
pub mod command;
mod ipc;
pub mod outputs;
pub mod python;

use std::sync::Arc;

use unoflow_api::{Operator, Resource};

unoflow_api::choice! {
    /// Where the user's code computes, as DAG files spell it.
    pub enum ResourceChoice { Cpu = "cpu", Gpu = "gpu" }
}

impl From<ResourceChoice> for Resource {
    fn from(choice: ResourceChoice) -> Self {
        match choice {
            ResourceChoice::Cpu => Resource::Cpu,
            ResourceChoice::Gpu => Resource::Gpu,
        }
    }
}

/// The operators of this crate.
pub fn operators() -> Vec<Arc<dyn Operator>> {
    vec![Arc::new(python::PythonOp), Arc::new(command::CommandOp)]
}

/// A file's content digest (32 hex digits of blake3); the error is a sentence.
fn file_digest(path: &std::path::Path) -> Result<String, String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hasher.finalize().to_hex()[..32].to_string())
}
