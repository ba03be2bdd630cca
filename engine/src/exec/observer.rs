//! What a run tells whoever watches it: the CLI draws progress bars from these events, the
//! review page shows them live. The engine itself never prints.

use super::NodeOutcome;

/// Receives a run's events. Called from many tasks at once; implementations must be cheap.
pub trait RunObserver: Send + Sync {
    /// Node `node` started computing; `rows` is how many rows it will go through, if known.
    fn node_started(&self, _node: &str, _rows: Option<u64>) {}

    /// Node `node` went through `rows` more rows (computed or found committed).
    fn rows_done(&self, _node: &str, _rows: u64) {}

    /// Node `node` ended (computed, cached, a view, failed, …).
    fn node_finished(&self, _outcome: &NodeOutcome) {}

    /// Something the user should know that does not stop the run (a damaged part recomputed).
    fn warn(&self, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl RunObserver for Unobserved {}
