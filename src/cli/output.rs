//! Standard output for what commands print.
//!
//! Rust ignores SIGPIPE, so when the reader of a pipe goes away (`unoflow ops | head -1`) a
//! write to standard output fails with EPIPE, and `println!` panics on that. Commands write
//! through [`stdout`] instead, with `writeln!(out, …).at(STDOUT)?`: the error ends the command
//! like any other, and `main` asks [`closed`] whether the reader left, in which case it ends
//! quietly (exit 141, as a process stopped by SIGPIPE; not 0, which would call a failed run a
//! success) instead of reporting an error. One flag for the whole
//! process, set where the write failed, so it does not matter how the error was wrapped on its
//! way up (an Arrow CSV writer's, a Parquet writer's or ours).

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// How standard output is named in errors about it.
pub const STDOUT: &str = "<standard output>";

/// Set once a write to standard output found its reader gone.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether a write to standard output failed because its reader went away.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Standard output, noting a closed pipe (see the module's doc).
pub fn stdout() -> Stdout {
    Stdout(std::io::stdout())
}

/// Standard output that records a broken pipe before returning the error.
#[derive(Debug)]
pub struct Stdout(std::io::Stdout);

impl Stdout {
    fn note<T>(result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &result
            && e.kind() == ErrorKind::BrokenPipe
        {
            CLOSED.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::note(self.0.write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        Self::note(self.0.write_all(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::note(self.0.flush())
    }
}

/// Writes a line to standard error, ignoring a closed one: `eprintln!` would panic where the
/// reader of `2>&1 | head` went away, and there is nowhere left to report that.
pub fn error_line(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}
