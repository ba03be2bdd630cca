//! How far this host's clock is from the store's.
//!
//! Lease expiries are written by the holder's clock and compared with the taker's: a holder
//! whose clock runs ahead makes its leases last longer by as much (a worker five minutes ahead,
//! killed, held its units five minutes past their expiry). The clock margin (a quarter of the
//! lease, see `Leases::margin`) absorbs small differences; a worker measures its clock against
//! the store's, which all workers share, and refuses to start when the difference could eat
//! up the margin.
//!
//! The measure: the host's clock read before and after writing an object, and the time the
//! store stamped on it (an object's Last-Modified, a file's modification time set by the kernel
//! or the file server).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How coarse a store's timestamps may be: S3 gives Last-Modified to the second, truncated.
/// Assumed of every store (a local file's time is finer): a measure is never read as more
/// precise than it is.
const STAMP_RESOLUTION_MS: i64 = 1000;

/// How far the store's clock is from this host's: store time = host time + `offset_ms`,
/// within ± `uncertainty_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSkew {
    pub offset_ms: i64,
    pub uncertainty_ms: i64,
}

impl ClockSkew {
    /// The skew shown by one write: the host's clock read just before (`before_ms`) and just
    /// after (`after_ms`) it, and the store's stamp of it (`stamped_ms`).
    ///
    /// The store stamped the write at some store time `s` between `before + offset` and
    /// `after + offset`, and wrote down `s` truncated to its resolution: `stamped ∈ (s - res, s]`.
    /// So `offset ∈ [stamped - after, stamped + res - before]`.
    pub fn measure(before_ms: i64, after_ms: i64, stamped_ms: i64) -> Self {
        let low = stamped_ms - after_ms;
        let high = stamped_ms + STAMP_RESOLUTION_MS - before_ms;
        Self { offset_ms: low + (high - low) / 2, uncertainty_ms: (high - low + 1) / 2 }
    }

    /// Whether the clocks surely differ by more than `bound` (the measure's uncertainty is
    /// given to the host: only a difference beyond doubt refuses a worker).
    pub fn exceeds(&self, bound: Duration) -> bool {
        self.offset_ms.abs() - self.uncertainty_ms > i64::try_from(bound.as_millis()).unwrap_or(i64::MAX)
    }

    /// `this host's clock is 300.2 s ahead of the store's (± 0.5 s)`.
    pub fn describe(&self) -> String {
        let seconds = self.offset_ms.unsigned_abs() as f64 / 1000.0;
        let way = if self.offset_ms > 0 { "behind" } else { "ahead of" };
        format!("this host's clock is {seconds:.1} s {way} the store's (± {:.1} s)", self.uncertainty_ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_in_step_is_within_any_bound() {
        // Stamped to the second, during a write of 40 ms.
        let skew = ClockSkew::measure(1_000_900, 1_000_940, 1_000_000);
        assert!(skew.offset_ms.abs() <= skew.uncertainty_ms, "{skew:?}");
        assert!(!skew.exceeds(Duration::ZERO));
        // A store stamping to the millisecond.
        assert!(!ClockSkew::measure(5_000, 5_010, 5_004).exceeds(Duration::ZERO));
    }

    #[test]
    fn a_clock_five_minutes_ahead_is_measured_as_such() {
        let skew = ClockSkew::measure(300_000 + 1_000_900, 300_000 + 1_000_940, 1_000_000);
        assert!((skew.offset_ms + 300_000).abs() <= skew.uncertainty_ms, "{skew:?}");
        assert!(skew.exceeds(Duration::from_secs(15)));
        assert!(!skew.exceeds(Duration::from_secs(300)));
        assert!(skew.describe().starts_with("this host's clock is 300.") && skew.describe().contains("ahead of the store's"));
    }

    #[test]
    fn a_slow_clock_is_behind() {
        let skew = ClockSkew::measure(1_000_000 - 20_000, 1_000_000 - 19_990, 1_000_000);
        assert!(skew.exceeds(Duration::from_secs(15)));
        assert!(skew.describe().contains("behind the store's"), "{}", skew.describe());
    }
}
