//! unoflow's engine: declarative DAG files over Arrow tables, with content-addressed caching,
//! exactly-once resume, lineage and SQL.
//!
//! ```text
//!  dags/*.toml ──dag::load──► Dag (validated: ops, params, inputs, cycles, files, schemas)
//!       │                        │
//!       │                 fingerprint::compute ──► plan::plan (cached / stale / missing, why)
//!       ▼                        │
//!  exec::run ── units ──► operators (unoflow_operators::Operator, read, sql, export)
//!       │                        │
//!       └──► workspace: parts + commit records + manifests, run records, index
//!                                │
//!                 query (DataFusion over verified parts) ──► sql, lineage
//! ```
//!
//! Extension point: a compute operator implements [`unoflow_operators::Operator`] and is
//! listed in `unoflow_operators::builtin_operators`; the engine validates, plans, partitions,
//! commits and queries it with no further code.

pub mod cli;
pub mod dag;
pub mod diagnostic;
pub mod error;
pub mod exec;
pub mod fingerprint;
pub mod format;
pub mod generate;
pub mod interrupt;
pub mod lineage;
pub mod ops;
pub mod plan;
pub mod query;
pub mod tables;
pub mod workspace;

pub use error::{Error, Result};
