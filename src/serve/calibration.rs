//! Threshold calibration: given a score column and reviewers' accept / reject labels, how a
//! filter `score >= t` would agree with them at each threshold, and the threshold that agrees
//! best.

/// The filter's agreement with the labels at one threshold (the filter keeps `score >= t`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub threshold: f64,
    /// Accepted rows the filter keeps.
    pub kept_accepted: usize,
    /// Rejected rows the filter keeps.
    pub kept_rejected: usize,
    /// Of the labelled rows kept, the share accepted (1 when none is kept).
    pub precision: f64,
    /// Of the accepted rows, the share kept.
    pub recall: f64,
}

/// The curve and the best threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub accepted: usize,
    pub rejected: usize,
    /// One point per distinct useful threshold, ascending.
    pub points: Vec<Point>,
    /// The point whose filter disagrees with the fewest labels (ties: the higher balanced
    /// accuracy, then the lower threshold). `None` without both kinds of label.
    pub best: Option<Point>,
}

/// Calibrates from `(score, accepted)` pairs; NaN scores are left out.
pub fn calibrate(labelled: &[(f64, bool)]) -> Calibration {
    let mut sorted: Vec<(f64, bool)> = labelled.iter().copied().filter(|(s, _)| !s.is_nan()).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let accepted = sorted.iter().filter(|(_, a)| *a).count();
    let rejected = sorted.len() - accepted;
    // Candidate thresholds: each distinct score (keeping it and everything above), and one
    // above the highest (keeping nothing). Rows below index i are dropped.
    let mut points = Vec::new();
    let (mut dropped_accepted, mut dropped_rejected) = (0, 0);
    let mut i = 0;
    while i <= sorted.len() {
        // The roundest number that keeps row i and everything above, and drops the rows below.
        let below = i.checked_sub(1).map(|j| sorted[j].0);
        let threshold = match (below, sorted.get(i)) {
            (Some(lo), Some(&(hi, _))) => roundest_above(lo, hi),
            (None, Some(&(hi, _))) => hi,
            (Some(lo), None) => roundest_above(lo, next_up(lo.abs() * 2.0 + 1.0)),
            (None, None) => 0.0,
        };
        let score = sorted.get(i).map(|&(s, _)| s);
        let kept_accepted = accepted - dropped_accepted;
        let kept_rejected = rejected - dropped_rejected;
        let kept = kept_accepted + kept_rejected;
        points.push(Point {
            threshold,
            kept_accepted,
            kept_rejected,
            precision: if kept == 0 { 1.0 } else { kept_accepted as f64 / kept as f64 },
            recall: if accepted == 0 { 0.0 } else { kept_accepted as f64 / accepted as f64 },
        });
        // Step past every row with this score.
        if i == sorted.len() {
            break;
        }
        while i < sorted.len() && Some(sorted[i].0) == score {
            if sorted[i].1 {
                dropped_accepted += 1;
            } else {
                dropped_rejected += 1;
            }
            i += 1;
        }
    }
    let best = (accepted > 0 && rejected > 0)
        .then(|| {
            let errors = |p: &Point| (accepted - p.kept_accepted) + p.kept_rejected;
            let balanced = |p: &Point| p.kept_accepted as f64 / accepted as f64 + (rejected - p.kept_rejected) as f64 / rejected as f64;
            points.iter().copied().min_by(|a, b| errors(a).cmp(&errors(b)).then(balanced(b).total_cmp(&balanced(a))))
        })
        .flatten();
    Calibration { accepted, rejected, points, best }
}

/// The number with the fewest decimals in `(lo, hi]`: a threshold people can read and paste.
fn roundest_above(lo: f64, hi: f64) -> f64 {
    for decimals in 0..=15 {
        let scale = 10f64.powi(decimals);
        let t = (lo * scale).floor() / scale + 1.0 / scale;
        // Parse the printed form, so the threshold is exactly the number shown.
        let t: f64 = format!("{t:.*}", decimals as usize).parse().unwrap_or(t);
        if t > lo && t <= hi {
            return t;
        }
    }
    hi
}

/// The smallest f64 above `x`.
fn next_up(x: f64) -> f64 {
    if x.is_infinite() && x > 0.0 {
        return x;
    }
    let bits = x.to_bits();
    let next = if x == 0.0 {
        1
    } else if x > 0.0 {
        bits + 1
    } else {
        bits - 1
    };
    f64::from_bits(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_labels_give_the_threshold_between_them() {
        let labels = [(0.2, false), (0.4, false), (0.6, true), (0.9, true), (0.95, true)];
        let c = calibrate(&labels);
        assert_eq!((c.accepted, c.rejected), (3, 2));
        let best = c.best.unwrap();
        // The roundest number between the highest rejected and the lowest accepted score.
        assert_eq!(best.threshold, 0.5);
        assert_eq!((best.kept_accepted, best.kept_rejected, best.precision, best.recall), (3, 0, 1.0, 1.0));
        // The lowest threshold keeps everything; the last keeps nothing.
        assert_eq!(c.points[0].kept_accepted + c.points[0].kept_rejected, 5);
        let last = c.points.last().unwrap();
        assert_eq!(last.kept_accepted + last.kept_rejected, 0);
        assert!(last.threshold > 0.95);
        assert_eq!(roundest_above(0.99648, 0.99766), 0.997);
        assert_eq!(roundest_above(0.2, 0.9), 0.3);
        assert_eq!(roundest_above(-0.5, 0.25), 0.0);
    }

    #[test]
    fn overlapping_labels_give_the_fewest_disagreements() {
        // 0.5 rejected sits among the accepted: keeping >= 0.45 errs once, >= 0.55 errs once
        // too (drops an accepted row) — the tie goes to balanced accuracy.
        let labels = [(0.1, false), (0.3, false), (0.45, true), (0.5, false), (0.55, true), (0.7, true), (0.8, true)];
        let best = calibrate(&labels).best.unwrap();
        assert!(best.threshold > 0.5 && best.threshold <= 0.55, "{}", best.threshold);
        assert_eq!((best.kept_accepted, best.kept_rejected), (3, 0));
    }

    #[test]
    fn one_kind_of_label_has_no_best_threshold() {
        assert!(calibrate(&[(0.5, true), (0.7, true)]).best.is_none());
        assert!(calibrate(&[]).best.is_none());
        assert_eq!(calibrate(&[(f64::NAN, true)]).accepted, 0);
    }
}
