//! The user's processes: the devices they see, their standard error, how they ended, and waiting
//! for them with a deadline.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStderr, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use unoflow_api::{Device, Resource};

/// Lines of standard error kept for messages.
const TAIL_LINES: usize = 20;

/// Shows the process the GPU of this worker when it runs as a GPU node (`CUDA_VISIBLE_DEVICES`,
/// so one worker per GPU never shares one), and none when it runs as a CPU node, so that a CPU
/// node's framework does not take memory on a GPU another node computes on. `UNOFLOW_DEVICE`
/// tells the code which it got (`cpu`, `cuda:0`).
pub fn show_devices(command: &mut Command, resource: Resource, device: Device) {
    let (visible, name) = match (resource, device) {
        (Resource::Gpu, Device::Cuda(ordinal)) => (ordinal.to_string(), "cuda:0"),
        _ => (String::new(), "cpu"),
    };
    command.env("CUDA_VISIBLE_DEVICES", visible).env("UNOFLOW_DEVICE", name);
}

/// A child's standard error: each line is passed on to this process's standard error, prefixed
/// with the code's name, and the last lines are kept for error messages.
#[derive(Debug)]
pub struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl StderrTail {
    pub fn follow(stderr: ChildStderr, prefix: String) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let kept = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(std::io::stderr().lock(), "{prefix} {line}");
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() == TAIL_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Self { lines, reader: Some(reader) }
    }

    /// The kept lines, after the child closed its standard error (it exited), as a clause for a
    /// message: "; its last output: …" or nothing.
    pub fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() {
            String::new()
        } else {
            format!("; its last output:\n{}", lines.iter().cloned().collect::<Vec<_>>().join("\n"))
        }
    }
}

/// How a process ended, in words.
pub fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                6 => " (SIGABRT)",
                9 => " (SIGKILL: out of memory?)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "ended".into(),
    }
}

/// How waiting for a child ended.
#[derive(Debug)]
pub enum Waited {
    Exited(ExitStatus),
    /// It ran past the deadline and was killed.
    TimedOut,
    /// The run is stopping; it was killed.
    Cancelled,
}

/// Waits for `child` until `deadline`, checking `cancelled` as it waits; kills it when either
/// comes first.
pub fn wait(child: &mut Child, deadline: Instant, cancelled: &dyn Fn() -> bool) -> std::io::Result<Waited> {
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Waited::Exited(status));
        }
        let stop = if cancelled() {
            Some(Waited::Cancelled)
        } else if Instant::now() >= deadline {
            Some(Waited::TimedOut)
        } else {
            None
        };
        if let Some(stop) = stop {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(stop);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn a_child_past_its_deadline_is_killed_and_one_that_exits_is_described() {
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        let started = Instant::now();
        assert!(matches!(wait(&mut sleeper, Instant::now() + Duration::from_millis(100), &|| false).unwrap(), Waited::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut failing = Command::new("sh").args(["-c", "echo oops >&2; exit 3"]).stderr(Stdio::piped()).spawn().unwrap();
        let mut tail = StderrTail::follow(failing.stderr.take().unwrap(), "[test]".into());
        let Waited::Exited(status) = wait(&mut failing, Instant::now() + Duration::from_secs(30), &|| false).unwrap() else {
            panic!("did not exit")
        };
        assert_eq!(describe(status), "exited with status 3");
        assert_eq!(tail.finish(), "; its last output:\noops");
    }
}
