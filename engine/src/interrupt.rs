//! How a user stops work: the binary turns signals (Ctrl-C, SIGTERM) into levels of an
//! [`Interrupt`], and the engine reacts to the level. The library never installs signal
//! handlers, prints about them, or exits the process.
//!
//! - Level 1 (first signal): stop starting new work; units in progress finish and commit.
//! - Level 2 (second signal): stop now; the run records itself as interrupted and returns at
//!   once, leaving units in progress uncommitted (a rerun redoes them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tokio::sync::watch;

/// A shared, cloneable stop request with two levels.
#[derive(Debug, Clone)]
pub struct Interrupt {
    /// Set at level 1 and above; operators poll it between rows (`ExecContext`).
    stop: Arc<AtomicBool>,
    level: Arc<AtomicU8>,
    changed: watch::Sender<u8>,
}

impl Default for Interrupt {
    fn default() -> Self {
        Self::new()
    }
}

impl Interrupt {
    pub fn new() -> Self {
        Self { stop: Arc::new(AtomicBool::new(false)), level: Arc::new(AtomicU8::new(0)), changed: watch::Sender::new(0) }
    }

    /// Raises the level by one (a signal arrived); returns the new level.
    pub fn raise(&self) -> u8 {
        let level = self.level.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        self.stop.store(true, Ordering::SeqCst);
        self.changed.send_replace(level);
        level
    }

    /// Asks for a graceful stop without a signal (`--fail-fast`, a failed node).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether new work should not start.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether a signal (not an internal stop) arrived.
    pub fn signalled(&self) -> bool {
        self.level.load(Ordering::SeqCst) >= 1
    }

    /// The flag operators poll.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Resolves once a second signal asks to stop at once.
    pub async fn aborted(&self) {
        let mut rx = self.changed.subscribe();
        // `wait_for` only fails when the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|level| *level >= 2).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn levels() {
        let i = Interrupt::new();
        assert!(!i.stop_requested());
        assert_eq!(i.raise(), 1);
        assert!(i.stop_requested() && i.signalled());
        let waiter = tokio::spawn({
            let i = i.clone();
            async move { i.aborted().await }
        });
        assert_eq!(i.raise(), 2);
        waiter.await.unwrap();
    }
}
