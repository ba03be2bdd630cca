//! One `unoflow run` per workspace folder at a time, or any number of workers (which share it
//! through leases and hold the lock shared, so a `run` does not clear their attempts).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Held while a run works in a workspace; released when dropped or when the process dies (it
/// is an advisory file lock, so a killed run never leaves the workspace locked).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
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
        let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).at(&path)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked(format!(
                "a `unoflow run` is working alone in {}; start workers when it has finished (or stop it: workers resume its work)",
                workspace.display()
            ))),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// Takes the lock. With `wait`, blocks until the other run finishes; otherwise fails at
    /// once, naming the process that holds it.
    pub(super) fn acquire(workspace: &Path, wait: bool) -> Result<Self> {
        let path = workspace.join("lock");
        let mut file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) if wait => file.lock().at(&path)?,
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Locked(format!(
                    "another `unoflow run` is working in {} ({}); wait for it to finish, or pass --wait to queue behind it",
                    workspace.display(),
                    holder.trim()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        write!(file, "pid {} since {}", std::process::id(), chrono::Local::now().format("%Y-%m-%d %H:%M:%S")).at(&path)?;
        Ok(Self { _file: file })
    }
}
