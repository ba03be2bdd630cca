//! The `unoflow` program as a library: the command line ([`cli`], `unoflow generate` included),
//! the review page ([`serve`]) and the built-in operator set, over the engine
//! (`unoflow-engine`), whose modules are re-exported here.
//!
//! ```text
//!   unoflow (this crate: CLI, review page, built-in operators, the allocator)
//!     └── unoflow-engine (DAGs, plans, units, workspaces, SQL; no burn, no CLI)
//!           └── unoflow-api (the operator contract)  ◄── unoflow-operators, unoflow-external
//! ```

pub mod cli;
pub mod serve;

pub use unoflow_engine::{
    Error, Result, catalog, dag, data, diagnostic, digest_cache, error, exec, fingerprint, format, graph, host_cache, interrupt, lineage,
    ops, plan, query, remote, status, workspace,
};

/// The engine's registry with the built-in operators: UNO's (`unoflow_operators`) and those
/// that run the user's code (`python`, `command`).
pub fn builtin_registry() -> ops::Registry {
    ops::Registry::new(unoflow_operators::builtin_operators())
}
