//! A workspace in a local folder (or a shared filesystem mounted on every host).
//!
//! Create-if-absent is a hard link of a fully written temporary file (atomic, and refused when
//! the name exists); compare-and-swap takes an advisory lock on a lock file beside the object,
//! compares the object's digest and renames the new bytes in. Every write is fsynced before it
//! becomes visible, so a killed process or host leaves whole objects or none.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::prelude::SessionContext;

use super::{Listed, Store, Version};
use crate::error::{Error, IoContext, Result};
use crate::workspace::{sync_dir, write_atomic};

/// A workspace folder.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Creates `key` unless it exists (see [`Store::create`]).
    fn create_once(&self, key: &str, bytes: &[u8]) -> Result<Option<Version>> {
        let path = self.path(key);
        let dir = path.parent().ok_or_else(|| Error::Internal(format!("{} has no folder", path.display())))?;
        std::fs::create_dir_all(dir).at(dir)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let staged = dir.join(staging_name(&name));
        File::create(&staged)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()
            })
            .at(&staged)?;
        // A hard link is created atomically and refused when the name exists.
        let linked = std::fs::hard_link(&staged, &path);
        let _ = std::fs::remove_file(&staged);
        match linked {
            Ok(()) => {
                sync_dir(dir)?;
                Ok(Some(digest(bytes)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

/// A name no other writer uses at the same time, for staging files.
fn staging_name(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(".{name}.{}-{}.staged", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn digest(bytes: &[u8]) -> Version {
    Version(blake3::hash(bytes).to_hex()[..32].to_string())
}

impl Store for LocalStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let version = digest(&bytes);
                Ok(Some((bytes, version)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(key), bytes)
    }

    fn create(&self, key: &str, bytes: &[u8]) -> Result<Option<Version>> {
        // A folder removed between making it and linking into it (another process clearing a
        // node's leases) is made again.
        match self.create_once(key, bytes) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => self.create_once(key, bytes),
            other => other,
        }
    }

    fn update(&self, key: &str, bytes: &[u8], version: &Version) -> Result<Option<Version>> {
        let path = self.path(key);
        let dir = path.parent().ok_or_else(|| Error::Internal(format!("{} has no folder", path.display())))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A lock file that is never replaced, so every updater locks the same inode.
        let lock_path = dir.join(format!(".{name}.lock"));
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).at(&lock_path)?;
        lock.lock().at(&lock_path)?;
        let current = match std::fs::read(&path) {
            Ok(b) => Some(digest(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(path, e)),
        };
        let result = if current.as_ref() == Some(version) {
            write_atomic(&path, bytes)?;
            Some(digest(bytes))
        } else {
            None
        };
        let _ = lock.unlock();
        Ok(result)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        }
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let path = self.path(prefix);
        // Another process may add a file while the folder is emptied (a worker claiming a
        // lease as the node completes): empty it again, as object storage deletes what it lists.
        let mut tries = 0;
        loop {
            match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 3 => tries += 1,
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(path, e)),
                _ => return Ok(()),
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<Listed>) -> Result<()> {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(dir, e)),
            };
            for entry in entries {
                let entry = entry.at(dir)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Staging and lock files are the store's own.
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let meta = entry.metadata().at(&path)?;
                if meta.is_dir() {
                    walk(root, &path, out)?;
                } else {
                    let key = relative_key(root, &path);
                    let modified_ms =
                        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as i64);
                    out.push(Listed { key, size: meta.len(), modified_ms, e_tag: None });
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.root, &self.path(prefix), &mut out)?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn written_at_ms(&self, key: &str) -> Result<Option<i64>> {
        let path = self.path(key);
        match std::fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(t) => Ok(Some(chrono::DateTime::<chrono::Utc>::from(t).timestamp_millis())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn file_for_writing(&self, key: &str) -> Result<PathBuf> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        Ok(path)
    }

    fn finish_file(&self, _key: &str, file: &Path) -> Result<()> {
        File::open(file).and_then(|f| f.sync_all()).at(file)?;
        match file.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }

    fn local_copy(&self, key: &str) -> Result<PathBuf> {
        Ok(self.path(key))
    }

    fn url(&self, key: &str) -> String {
        self.path(key).to_string_lossy().into_owned()
    }

    fn register(&self, _ctx: &SessionContext) {}

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// `path` below `root` as a `/`-separated key (the same on every platform).
pub fn relative_key(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}
