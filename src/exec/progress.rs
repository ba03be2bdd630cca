//! Progress bars (one per running node) and messages that do not tear them.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The run's progress display; hidden with `--quiet` or when stderr is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    multi: MultiProgress,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Self { multi: MultiProgress::with_draw_target(target), quiet }
    }

    /// A bar for one node counting `total` rows.
    pub fn node(&self, name: &str, total: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>18.bold} [{bar:28.cyan/blue}] {human_pos:>7}/{human_len:7} rows  {per_sec:>10}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// Prints a line above the bars (to stderr), unless quiet.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Prints a warning, even when quiet.
    pub fn warn(&self, line: impl AsRef<str>) {
        if self.multi.is_hidden() {
            eprintln!("warning: {}", line.as_ref());
        } else {
            let _ = self.multi.println(format!("warning: {}", line.as_ref()));
        }
    }
}
