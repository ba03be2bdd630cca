//! File identity by content, cheaply: the blake3 digest of a file's whole content, computed once
//! per host and kept in the host's cache folder (`digests/` under [`crate::host_cache::root`]).
//!
//! A file enters fingerprints by its content, never by its path or modification time, so the
//! same weights copied to another disk, path or host give the same fingerprint. Hashing a 24 GB
//! checkpoint at every `plan` would cost seconds to minutes, so, as git's index and DVC do, a
//! digest is kept under a key of what the file system says about the file: absolute path, size,
//! modification time (ns), inode and device. Any of them differing (an edit, a `touch`, a copy
//! over it) makes the entry stale and the file is hashed again.
//!
//! One small entry file per path (`digests/ab/cdef….json`, named by the path's digest), written
//! to a temporary name and renamed into place: several workers on one host share the folder
//! without locks (the last writer wins with an entry as good as the others). An entry that
//! cannot be read or parsed is ignored and rewritten; a cache that cannot be written (a read-only
//! home) only costs the hashing again. Deleting the folder is always safe.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

/// Files smaller than this are hashed every time: reading them costs less than reading an entry
/// (and a folder of thousands of thumbnails keeps no thousands of entries).
const CACHED_FROM: u64 = 64 << 10;

/// An entry is only written for a file last modified longer ago than this when its hashing
/// began. A file written again within the file system's timestamp granularity (1–2 s on some
/// file systems and network mounts) could keep its size and time with other content: git's
/// "racily clean" entries.
const SETTLED: Duration = Duration::from_secs(2);

/// What the file system says about a file: the key an entry must match (and what the remote
/// input cache checks its object files by). Any write to the file changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stat {
    size: u64,
    /// Nanoseconds since the epoch (u64 lasts until 2554; serde's `flatten` cannot carry u128).
    modified_ns: u64,
    inode: u64,
    device: u64,
}

impl Stat {
    /// The stat of `path`, if it can be read.
    pub(crate) fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|meta| Self::of(&meta))
    }

    fn of(meta: &std::fs::Metadata) -> Self {
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let (inode, device) = inode_and_device(meta);
        Self { size: meta.len(), modified_ns, inode, device }
    }
}

#[cfg(unix)]
fn inode_and_device(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.ino(), meta.dev())
}

#[cfg(not(unix))]
fn inode_and_device(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// One cached digest.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The absolute path, checked on reading (the entry's file name is only its digest).
    path: PathBuf,
    #[serde(flatten)]
    stat: Stat,
    /// The content's blake3 digest, hex.
    blake3: String,
}

/// The digest of `path`'s whole content: from this host's cache when the file is unchanged
/// since it was hashed, else hashed (on all cores) and cached.
pub fn file_digest(path: &Path) -> Result<blake3::Hash> {
    DigestCache::for_host().digest(path)
}

/// A digest cache in one folder.
#[derive(Debug, Clone)]
pub struct DigestCache {
    dir: PathBuf,
}

impl DigestCache {
    /// This host's cache (`digests/` under [`crate::host_cache::root`]).
    pub fn for_host() -> Self {
        Self::at(crate::host_cache::root().join("digests"))
    }

    /// A cache kept in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The digest of `path`'s whole content (see [`file_digest`]).
    pub fn digest(&self, path: &Path) -> Result<blake3::Hash> {
        let path = std::path::absolute(path).at(path)?;
        let meta = std::fs::metadata(&path).at(&path)?;
        let stat = Stat::of(&meta);
        if stat.size < CACHED_FROM {
            return hash(&path);
        }
        let entry_path = self.entry_path(&path);
        if let Some(digest) = read_entry(&entry_path, &path, &stat) {
            return Ok(digest);
        }
        let began = SystemTime::now();
        let digest = hash(&path)?;
        // Cache only what is settled and was not changed while it was read.
        let unchanged = std::fs::metadata(&path).is_ok_and(|after| Stat::of(&after) == stat);
        let settled = meta.modified().ok().and_then(|m| began.duration_since(m).ok()).is_some_and(|age| age >= SETTLED);
        if unchanged && settled {
            // A cache that cannot be written costs the hashing again, nothing else.
            let _ = write_entry(&entry_path, &Entry { path, stat, blake3: digest.to_hex().to_string() });
        }
        Ok(digest)
    }

    /// Where the entry of `path` (absolute) lives: named by the path's digest, in one of 256
    /// subfolders.
    fn entry_path(&self, path: &Path) -> PathBuf {
        let name = blake3::hash(path.as_os_str().as_encoded_bytes()).to_hex();
        self.dir.join(&name[..2]).join(format!("{}.json", &name[2..32]))
    }
}

/// The whole content's digest, read with memory mapping on all cores.
fn hash(path: &Path) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path).at(path)?;
    Ok(hasher.finalize())
}

/// The cached digest, if the entry exists, parses, and matches the path and its stat.
fn read_entry(entry_path: &Path, path: &Path, stat: &Stat) -> Option<blake3::Hash> {
    let text = std::fs::read(entry_path).ok()?;
    let entry: Entry = serde_json::from_slice(&text).ok()?;
    if entry.path != path || entry.stat != *stat {
        return None;
    }
    blake3::Hash::from_hex(&entry.blake3).ok()
}

/// Writes an entry under a temporary name and renames it into place, so a reader sees the old
/// entry or the new one, never a part.
fn write_entry(entry_path: &Path, entry: &Entry) -> std::io::Result<()> {
    let dir = entry_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".entry-").tempfile_in(dir)?;
    tmp.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
    tmp.persist(entry_path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes from `seed`, last modified an hour ago (settled).
    fn file(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
        let path = dir.join(name);
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        std::fs::write(&path, bytes).unwrap();
        set_age(&path, 3600);
        path
    }

    fn set_age(path: &Path, seconds: u64) {
        let when = SystemTime::now() - Duration::from_secs(seconds);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            out.extend(std::fs::read_dir(sub.path()).unwrap().flatten().map(|e| e.path()));
        }
        out
    }

    #[test]
    fn a_digest_is_the_content_digest_and_is_kept() {
        let (data, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = DigestCache::at(cache_dir.path());
        let path = file(data.path(), "w.bin", 100_000, 1);
        let expected = blake3::hash(&std::fs::read(&path).unwrap());
        assert_eq!(cache.digest(&path).unwrap(), expected);
        let kept = entries(cache_dir.path());
        assert_eq!(kept.len(), 1);
        // Read from the entry: an entry saying otherwise is believed while the stat matches.
        let mut entry: Entry = serde_json::from_slice(&std::fs::read(&kept[0]).unwrap()).unwrap();
        entry.blake3 = blake3::hash(b"other").to_hex().to_string();
        std::fs::write(&kept[0], serde_json::to_vec(&entry).unwrap()).unwrap();
        assert_eq!(cache.digest(&path).unwrap(), blake3::hash(b"other"));
    }

    #[test]
    fn a_changed_stat_makes_the_entry_stale() {
        let (data, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = DigestCache::at(cache_dir.path());
        let path = file(data.path(), "w.bin", 100_000, 1);
        cache.digest(&path).unwrap();
        // Same size, other content, older time: hashed again.
        std::fs::write(&path, std::fs::read(file(data.path(), "v.bin", 100_000, 2)).unwrap()).unwrap();
        set_age(&path, 7200);
        assert_eq!(cache.digest(&path).unwrap(), blake3::hash(&std::fs::read(&path).unwrap()));
    }

    #[test]
    fn a_corrupt_entry_is_rewritten() {
        let (data, cache_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = DigestCache::at(cache_dir.path());
        let path = file(data.path(), "w.bin", 100_000, 3);
        let expected = cache.digest(&path).unwrap();
        let entry = entries(cache_dir.path()).remove(0);
        std::fs::write(&entry, b"{\"path\": \"tru").unwrap();
        assert_eq!(cache.digest(&path).unwrap(), expected);
        assert!(serde_json::from_slice::<Entry>(&std::fs::read(&entry).unwrap()).is_ok(), "the entry was not rewritten");
    }

    #[test]
    fn small_recent_and_uncachable_files_are_hashed_every_time() {
        let data = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = DigestCache::at(cache_dir.path());
        let small = file(data.path(), "s.txt", 100, 4);
        assert_eq!(cache.digest(&small).unwrap(), blake3::hash(&std::fs::read(&small).unwrap()));
        let recent = file(data.path(), "r.bin", 100_000, 5);
        set_age(&recent, 0);
        cache.digest(&recent).unwrap();
        assert!(entries(cache_dir.path()).is_empty(), "{:?}", entries(cache_dir.path()));
        // A cache folder that cannot be made: still the digest.
        let blocked = DigestCache::at(small.join("not-a-folder"));
        let big = file(data.path(), "b.bin", 100_000, 6);
        assert_eq!(blocked.digest(&big).unwrap(), blake3::hash(&std::fs::read(&big).unwrap()));
        // A missing file is an error naming it.
        let missing = cache.digest(&data.path().join("gone.bin")).unwrap_err().to_string();
        assert!(missing.contains("gone.bin"), "{missing}");
    }
}
