//! Progress bars for `unoflow run`: one per node at work, and warnings printed above them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exec::{NodeOutcome, RunObserver};

/// The run's progress display; hidden with `--quiet` (warnings still print).
#[derive(Debug)]
pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Self { multi: MultiProgress::with_draw_target(target), bars: Mutex::default() }
    }

    fn bar(&self, node: &str) -> Option<ProgressBar> {
        self.bars.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(node).cloned()
    }
}

impl RunObserver for Progress {
    fn node_started(&self, node: &str, rows: Option<u64>) {
        let bar = self.multi.add(ProgressBar::new(rows.unwrap_or(0)));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>18.bold} [{bar:28.cyan/blue}] {human_pos:>7}/{human_len:7} rows  {per_sec:>10}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(node.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bars.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(node.to_string(), bar);
    }

    fn rows_done(&self, node: &str, rows: u64) {
        if let Some(bar) = self.bar(node) {
            bar.inc(rows);
            // A query's row count is not known in advance: the bar grows with it.
            if bar.position() > bar.length().unwrap_or(0) {
                bar.set_length(bar.position());
            }
        }
    }

    fn node_finished(&self, outcome: &NodeOutcome) {
        if let Some(bar) = self.bars.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&outcome.name) {
            bar.finish_and_clear();
        }
    }

    fn warn(&self, message: &str) {
        if self.multi.is_hidden() {
            super::output::error_line(&format!("warning: {message}"));
        } else {
            let _ = self.multi.println(format!("warning: {message}"));
        }
    }
}
