//! Data-parallel peers: several workers computing one unit together (`train_lora`'s gang).
//!
//! The engine forms the gang (over the workspace and the network) and hands each peer its end;
//! the operator drives the steps. The leader (the worker holding the unit's lease) decides
//! everything: who is in the gang, each peer's rank, the state a joining peer starts from, and
//! the order in which the peers' contributions are summed (rank order), so the sums are the
//! same bytes on every peer and depend only on the gang's size.

use std::fmt::Debug;
use std::time::Duration;

use crate::Result;

/// A peer's end of a gang.
#[derive(Debug, Clone, Copy)]
pub enum GangRole<'a> {
    /// This worker holds the unit: it decides the steps and commits the output.
    Leader(&'a dyn GangLeader),
    /// This worker helps: it computes its share of each step and commits nothing.
    Follower(&'a dyn GangFollower),
}

/// A worker's place in a gang, as the engine hands it to an operator.
pub trait Gang: Send + Sync + Debug {
    fn role(&self) -> GangRole<'_>;
}

/// The leader's end: admits peers at step boundaries and sums their shares.
pub trait GangLeader: Send + Sync + Debug {
    /// Admits workers waiting to join, so that the gang has at most `max_peers` peers (this one
    /// included), waiting up to `wait` for as many as the engine expects. Each admitted peer is
    /// sent `state()` (made once, only if someone joins), the state it continues from. Returns
    /// the gang's size.
    fn admit(&self, wait: Duration, max_peers: usize, state: &mut dyn FnMut() -> Result<Vec<u8>>) -> Result<usize>;

    /// Begins (or begins again) step `step`: each follower is told its rank and the gang's
    /// size, which is returned (this peer is rank 0). Peers that cannot be reached are dropped.
    fn begin_step(&self, step: u64) -> usize;

    /// Sums `values` and `scalars` element-wise over the peers of the step begun last, in rank
    /// order, in place, and sends every follower the sums. `false` when a peer was lost before
    /// every share came in: nobody has the sums, and the step must be begun again (the gang is
    /// smaller now).
    fn all_reduce(&self, values: &mut [f32], scalars: &mut [f64]) -> bool;
}

/// What a follower is told to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    /// Continue from this state (made by the leader's `state()`).
    State(Vec<u8>),
    /// Compute the share of rank `rank` of `size` peers of step `step`, and send it.
    Step { step: u64, rank: usize, size: usize },
    /// The sums of the step's shares: apply them.
    Sums { values: Vec<f32>, scalars: Vec<f64> },
    /// The unit is done.
    Done,
}

/// A follower's end.
pub trait GangFollower: Send + Sync + Debug {
    /// The next order; an error when the leader is gone (the follower then stops).
    fn next(&self) -> Result<Order>;

    /// Sends this peer's share of the step last ordered.
    fn send(&self, values: &[f32], scalars: &[f64]) -> Result<()>;
}
