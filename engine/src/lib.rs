//! unoflow's engine: declarative DAG files over Arrow tables, with content-addressed caching,
//! exactly-once resume, lineage and SQL. A library: it knows no model framework (operators come
//! in through `unoflow-api`) and no command line (the `unoflow` binary is one program built on
//! it; `examples/own_operator.rs` is another).
//!
//! ```text
//!  dags/*.toml ──dag::load──► Dag: nodes bound to their ops (ops::OpKind::bind, typed
//!       │                     parameters), schemas and storage (table | view), graph (petgraph)
//!       │
//!       ├── fingerprint::compute ──► plan::plan (cached / stale / missing / view, and why)
//!       ▼
//!  exec::run ── per node: a view ──► handed to its readers (NodeData::View)
//!       │               stored ──► Op::units ──► UnitRunner::run ──► ids, parts, commit
//!       ▼
//!  workspace (the layout's one owner): nodes/FP/{attempts,commits,manifest}, index, runs,
//!       │                              tables/NAME for other engines
//!       ▼
//!  query: DataFusion over verified parts and views ──► catalog ──► sql, lineage
//! ```
//!
//! Extension points: a compute operator implements `unoflow_api::Operator` (the burn-free
//! contract crate) and is handed to [`ops::Registry::new`] (or added with
//! [`ops::Registry::with`]); the engine validates, plans, partitions, commits and queries it with
//! no further code. A run reports to an [`exec::RunObserver`].

pub mod catalog;
pub mod dag;
pub mod data;
pub mod diagnostic;
pub mod digest_cache;
pub mod error;
pub mod exec;
pub mod fingerprint;
pub mod format;
pub mod graph;
pub mod host_cache;
pub mod interrupt;
pub mod lineage;
pub mod ops;
pub mod plan;
pub mod query;
pub mod remote;
pub mod status;
pub mod workspace;

pub use error::{Error, Result};
