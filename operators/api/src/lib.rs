//! The contract between unoflow's engine and its compute operators.
//!
//! An operator crate depends on this crate alone (plus what its computation needs): it declares
//! its parameters once with [`params!`] (a typed struct and the specs the engine validates DAG
//! files against), implements [`Operator`] (its spec, and [`Operator::configure`], which reads
//! checked parameters into that struct once, at validation) and [`Configured`] (required
//! columns, output schema, and [`Configured::prepare`], which loads what the node needs once
//! and returns a [`PartitionProcessor`]). Nothing here knows DAG files, workspaces, scheduling
//! or a tensor backend: a [`Device`] is a name, which an operator maps to its own backend.
//!
//! ```text
//!   DAG file ──engine validation──► Params ──Operator::configure──► Configured (typed params)
//!        Configured::output_schema (no data) ──► consumers checked in turn
//!        Configured::prepare(Environment) ──► PartitionProcessor::process(partition)
//!            ──► PartitionOutput { rows, errors } ──► the engine commits it atomically
//! ```

pub mod columns;
pub mod device;
pub mod draws;
mod error;
pub mod gang;
mod operator;
pub mod params;
pub mod rowid;
pub mod rows;

pub use device::Device;
pub use error::{OpError, Result};
pub use operator::{
    Configured, DeviceDependence, Environment, ExecContext, OpSpec, Operator, PartitionOutput, PartitionProcessor, PixelLimit, Resource,
    RowError, RowMapping, WorkspaceFiles,
};
pub use params::{Choice, FromParam, ParamSpec, ParamType, ParamValue, Params};
