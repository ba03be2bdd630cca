//! Timing a command as a user meets it: one process, start to exit, and its peak resident
//! memory from GNU `time` when it is installed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One timed process.
pub struct Measured {
    pub wall: Duration,
    pub peak_kib: Option<u64>,
}

/// Runs `command` in `dir`, under GNU `time` when it is installed (for the peak RSS).
pub fn measure(command: &mut Command, dir: &Path) -> Measured {
    let gnu_time = Path::new("/usr/bin/time");
    let report = dir.join("time.txt");
    let mut run = if gnu_time.is_file() {
        let mut wrapped = Command::new(gnu_time);
        wrapped.arg("-f").arg("%M").arg("-o").arg(&report).arg(command.get_program()).args(command.get_args());
        wrapped
    } else {
        std::mem::replace(command, Command::new("true"))
    };
    let started = Instant::now();
    let out = run.current_dir(dir).output().expect("spawn");
    let wall = started.elapsed();
    assert!(out.status.success(), "{:?} failed: {}", run, String::from_utf8_lossy(&out.stderr));
    let peak_kib = std::fs::read_to_string(&report).ok().and_then(|t| t.trim().lines().last()?.parse().ok());
    Measured { wall, peak_kib }
}

/// Kibibytes as whole mebibytes, `n/a` when unknown.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}
