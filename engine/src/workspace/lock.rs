//! One `unoflow run` per workspace folder at a time, or any number of workers (which share it
//! through leases and hold the lock shared, so a `run` does not clear their attempts).
//!
//! The lock file names its holders, one JSON line each (pid, host, command, start), so that a
//! refusal can say who works in the workspace: a `run` alone replaces the file's text with its
//! line; a worker appends its own, after clearing the lines of holders that are gone when it
//! finds the lock free.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Held while a run works in a workspace; released when dropped or when the process dies (it
/// is an advisory file lock, so a killed run never leaves the workspace locked).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// A process holding the lock, as its line in the lock file says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Holder {
    /// `alone` (a `unoflow run`) or `shared` (a worker).
    mode: String,
    pid: u32,
    host: String,
    command: String,
    since: String,
}

impl Holder {
    fn this_process(mode: &str) -> Self {
        Self {
            mode: mode.into(),
            pid: std::process::id(),
            host: super::hostname(),
            command: command_line(),
            since: chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        }
    }

    fn line(&self) -> String {
        // A struct of strings and a number always serializes.
        serde_json::to_string(self).unwrap_or_default() + "\n"
    }

    /// `pid 123 on host since 2025-01-01 10:00:00: unoflow run dag.toml`.
    fn describe(&self) -> String {
        format!("pid {} on {} since {}: {}", self.pid, self.host, self.since, self.command)
    }

    /// Whether the process may still be alive: on this host, whether its pid exists (a worker
    /// killed while others held the lock leaves its line behind); elsewhere, yes.
    fn may_be_alive(&self) -> bool {
        if self.host != super::hostname() || !cfg!(target_os = "linux") {
            return true;
        }
        Path::new("/proc").join(self.pid.to_string()).exists()
    }
}

/// This process's command line, short: the program's file name and its arguments.
fn command_line() -> String {
    let mut args = std::env::args();
    let program = args.next().map(|p| Path::new(&p).file_name().map_or(p.clone(), |f| f.to_string_lossy().into_owned()));
    program.into_iter().chain(args).collect::<Vec<_>>().join(" ")
}

/// Who holds the lock, in words, from the lock file's text: the live holders' lines, or the
/// text as it is when it is not ours (an earlier version wrote `pid N since T`).
fn holders_text(text: &str) -> (String, usize) {
    let mut workers = Vec::new();
    let mut alone = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Holder>(line) {
            Ok(h) if !h.may_be_alive() => {}
            Ok(h) if h.mode == "shared" => workers.push(h.describe()),
            Ok(h) => alone.push(h.describe()),
            Err(_) => alone.push(line.to_string()),
        }
    }
    if !alone.is_empty() {
        return (alone.join("; "), 0);
    }
    let n = workers.len();
    (workers.join("; "), n)
}

impl RunLock {
    /// Whether a run holds the lock of `workspace` now. Reads only: the lock file is opened
    /// read-only and a shared lock tried and released.
    pub(super) fn is_held(workspace: &Path) -> bool {
        let Ok(file) = File::open(workspace.join("lock")) else { return false };
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Error(_)) => false,
        }
    }

    /// Takes the lock shared, as a worker: other workers may hold it too, a `run` may not.
    pub(super) fn share(workspace: &Path) -> Result<Self> {
        let path = workspace.join("lock");
        let mut file = open(&path)?;
        clear_if_free(&path)?;
        // A worker clearing the file holds the lock alone for an instant: try a few times
        // before concluding that a `run` holds it.
        let mut tries = 0;
        loop {
            match file.try_lock_shared() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if tries < SHARE_TRIES => {
                    tries += 1;
                    std::thread::sleep(SHARE_RETRY);
                }
                Err(TryLockError::WouldBlock) => {
                    let (holder, _) = holders_text(&read_all(&mut file));
                    return Err(Error::Locked(format!(
                        "a `unoflow run` is working alone in {} ({holder}); start workers when it has finished (or stop \
                         it: workers resume its work)",
                        workspace.display()
                    )));
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        // Appended in one write, so that workers starting together do not mix their lines.
        let mut appender = OpenOptions::new().append(true).open(&path).at(&path)?;
        appender.write_all(Holder::this_process("shared").line().as_bytes()).at(&path)?;
        Ok(Self { _file: file })
    }

    /// Takes the lock. With `wait`, blocks until the other run finishes; otherwise fails at
    /// once, naming the processes that hold it.
    pub(super) fn acquire(workspace: &Path, wait: bool) -> Result<Self> {
        let path = workspace.join("lock");
        let mut file = open(&path)?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if wait => {
                    file.lock().at(&path)?;
                    break;
                }
                Err(TryLockError::WouldBlock) => {
                    let holders = read_all(&mut file);
                    // An empty file under a held lock is a worker clearing gone holders' lines
                    // ([`clear_if_free`]) for an instant: look again before refusing.
                    if holders.trim().is_empty() && tries < SHARE_TRIES {
                        tries += 1;
                        std::thread::sleep(SHARE_RETRY);
                        continue;
                    }
                    return Err(refusal(workspace, &holders));
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        file.write_all(Holder::this_process("alone").line().as_bytes()).at(&path)?;
        Ok(Self { _file: file })
    }
}

/// How often, and how far apart, a worker tries to share the lock while another holds it alone.
const SHARE_TRIES: u32 = 20;
const SHARE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The lock file, made if missing.
fn open(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).at(path)
}

/// Empties the lock file if nobody holds the lock: the lines of holders that are gone (killed
/// workers) go, and the file does not grow with every worker. Through its own handle, whose
/// lock conflicts with the caller's, and only for an instant; lines are written only by
/// holders, so no live holder's line is lost.
fn clear_if_free(path: &Path) -> Result<()> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).at(path)?;
            file.unlock().at(path)
        }
        Err(TryLockError::WouldBlock) => Ok(()),
        Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// The lock file's text (empty if it cannot be read: the refusal still names the workspace).
fn read_all(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    text
}

/// Why a `run` cannot start: who holds the workspace, and what to do.
fn refusal(workspace: &Path, text: &str) -> Error {
    let ws = workspace.display();
    match holders_text(text) {
        (holders, 0) if holders.is_empty() => Error::Locked(format!(
            "another process holds {ws}/lock and did not say which; wait for it to finish, or pass --wait to queue behind it"
        )),
        (holder, 0) => Error::Locked(format!(
            "another `unoflow run` is working in {ws} ({holder}); wait for it to finish, or pass --wait to queue behind it"
        )),
        (workers, n) => Error::Locked(format!(
            "{n} worker{} {} working in {ws} ({workers}); wait for them to finish (`unoflow status --workspace {ws}`), or pass \
             --wait to queue behind them",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_holders() {
        let dir = tempfile::tempdir().unwrap();
        let held = RunLock::acquire(dir.path(), false).unwrap();
        let refused = RunLock::acquire(dir.path(), false).unwrap_err().to_string();
        let me = format!("pid {} on {}", std::process::id(), crate::workspace::hostname());
        assert!(refused.contains("another `unoflow run`") && refused.contains(&me), "{refused}");
        let refused = RunLock::share(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("working alone") && refused.contains(&me), "{refused}");
        drop(held);
        // Two workers: each appends its line; a `run` names them both.
        let (a, b) = (RunLock::share(dir.path()).unwrap(), RunLock::share(dir.path()).unwrap());
        let refused = RunLock::acquire(dir.path(), false).unwrap_err().to_string();
        assert!(refused.starts_with("2 workers are working in") && refused.matches(&me).count() == 2, "{refused}");
        drop((a, b));
        // A dead holder's line (a pid no process has) is not named, and the next worker clears it.
        let gone = Holder { pid: u32::MAX, ..Holder::this_process("shared") };
        std::fs::write(dir.path().join("lock"), gone.line()).unwrap();
        let _c = RunLock::share(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("lock")).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains(&u32::MAX.to_string()), "{text}");
    }

    #[test]
    fn foreign_text_is_shown_as_it_is() {
        assert_eq!(holders_text("pid 4242 since now\n"), ("pid 4242 since now".to_string(), 0));
        assert_eq!(holders_text(""), (String::new(), 0));
    }
}
