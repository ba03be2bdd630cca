//! The per-host cache of remote inputs, under `remote/` of [`crate::host_cache::root`]:
//!
//! ```text
//! objects/<blake3>           each object once, named by the digest of its bytes
//! index/<id>.json            which object an (URL, key, size, ETag) is, and its file's stamp
//! partial/<id>.part          a download under way (a killed fetch leaves only these)
//! folders/<listing digest>/  a remote folder as a local tree of hard links into objects/
//! locks/<name>.lock          one per object and per folder: one fetch per host
//! ```
//!
//! A download is a conditional GET on the listed ETag (the object cannot change under it),
//! resumed from the partial file's length, checked against the listed size, hashed, then
//! renamed into `objects/`: a file there is always whole. Several workers on one host take the
//! object's lock, so one downloads and the others find it done. The locks are `flock`s
//! (`std::fs::File::lock`): the kernel drops them with the process, so a killed fetch leaves no
//! stale lock to detect, unlike a lock file created if absent. A cached object whose file changed
//! since it was hashed (size, modification time, inode) is hashed again, and fetched again if its
//! bytes are not the recorded ones.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::{Deserialize, Serialize};

use super::{Entry, Listing};
use crate::digest_cache::Stat;
use crate::error::{Error, IoContext, Result};
use crate::workspace::store::{Call, connect, wait};

/// Objects downloaded at once for one folder (a model folder has a few large files).
const PARALLEL_DOWNLOADS: usize = 4;

/// The cache of remote inputs at a folder of this host.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What the index records of a fetched object.
#[derive(Debug, Serialize, Deserialize)]
struct Indexed {
    url: String,
    size: u64,
    version: String,
    blake3: String,
    /// The object file when it was last hashed.
    stamp: Stat,
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_a: &Path, _b: &Path) -> bool {
    false
}

/// Marks a folder whose files are copies, not links (a filesystem without hard links).
const COPIES: &str = ".unoflow-copies";

impl Default for Cache {
    fn default() -> Self {
        Self::at(crate::host_cache::root().join("remote"))
    }
}

impl Cache {
    /// The cache at `root`.
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// A local copy of what `listing` names, fetching what this host lacks: a folder whose tree
    /// is the remote one, or (a URL naming one object) the file.
    pub fn local_copy(&self, listing: &Listing) -> Result<PathBuf> {
        let digest = listing.digest();
        let dir = self.root.join("folders").join(&digest);
        let target = match (listing.single_file, listing.entries.first()) {
            (true, Some(only)) => dir.join(&only.relative),
            _ => dir.clone(),
        };
        let _folder = self.lock(&format!("folder-{digest}"))?;
        let objects = self.fetch_all(listing)?;
        if !self.folder_is_whole(&dir, listing, &objects) {
            self.build_folder(&dir, &digest, listing, &objects)?;
        }
        Ok(target)
    }

    /// The object file of every entry, fetching those not cached, a few at a time.
    fn fetch_all(&self, listing: &Listing) -> Result<Vec<PathBuf>> {
        let store = connect(listing.url.store_url())?;
        let next = AtomicUsize::new(0);
        let results: Vec<Result<Vec<(usize, PathBuf)>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..PARALLEL_DOWNLOADS.min(listing.entries.len()))
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(entry) = listing.entries.get(i) else { return Ok(done) };
                            done.push((i, self.object(&store, listing, entry)?));
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(Error::Internal("a download thread panicked".into())))).collect()
        });
        let mut paths = vec![PathBuf::new(); listing.entries.len()];
        for result in results {
            for (i, path) in result? {
                paths[i] = path;
            }
        }
        Ok(paths)
    }

    /// The cached file of one object, downloaded unless a whole, unchanged copy is here.
    fn object(&self, store: &Arc<dyn ObjectStore>, listing: &Listing, entry: &Entry) -> Result<PathBuf> {
        let id = object_id(listing, entry);
        let _lock = self.lock(&id)?;
        let index = self.root.join("index").join(format!("{id}.json"));
        if let Some(path) = self.cached(&index)? {
            return Ok(path);
        }
        let part = self.root.join("partial").join(format!("{id}.part"));
        download(store, listing, entry, &part)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(&part).at(&part)?;
        let digest = hasher.finalize().to_hex().to_string();
        File::open(&part).and_then(|f| f.sync_all()).at(&part)?;
        let path = self.root.join("objects").join(&digest);
        std::fs::create_dir_all(self.root.join("objects")).at(self.root.join("objects"))?;
        // Objects are named by their content: one already here (another URL with the same bytes)
        // is kept, never replaced, so the folders linked to it stay whole. A link fails
        // atomically where the name exists; a filesystem without links renames.
        match std::fs::hard_link(&part, &path) {
            Ok(()) => std::fs::remove_file(&part).at(&part)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::remove_file(&part).at(&part)?,
            Err(_) => std::fs::rename(&part, &path).at(&path)?,
        }
        let stamp = Stat::of_path(&path).ok_or_else(|| Error::Internal(format!("{} vanished", path.display())))?;
        let indexed = Indexed {
            url: format!("{}/{}", listing.url.store_url().as_str().trim_end_matches('/'), entry.key),
            size: entry.size,
            version: entry.version.clone(),
            blake3: digest,
            stamp,
        };
        let json = serde_json::to_vec_pretty(&indexed).map_err(|e| Error::Internal(e.to_string()))?;
        crate::workspace::write_atomic(&index, &json)?;
        Ok(path)
    }

    /// The object file an index entry names, if it holds the recorded bytes. A file changed
    /// since it was hashed is hashed again; one whose bytes differ is removed (and fetched again).
    fn cached(&self, index: &Path) -> Result<Option<PathBuf>> {
        let Ok(text) = std::fs::read(index) else { return Ok(None) };
        let Ok(mut indexed) = serde_json::from_slice::<Indexed>(&text) else { return Ok(None) };
        let path = self.root.join("objects").join(&indexed.blake3);
        let Some(stamp) = Stat::of_path(&path) else { return Ok(None) };
        if stamp == indexed.stamp {
            return Ok(Some(path));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(&path).at(&path)?;
        if hasher.finalize().to_hex().as_str() != indexed.blake3 {
            std::fs::remove_file(&path).at(&path)?;
            return Ok(None);
        }
        indexed.stamp = stamp;
        let json = serde_json::to_vec_pretty(&indexed).map_err(|e| Error::Internal(e.to_string()))?;
        crate::workspace::write_atomic(index, &json)?;
        Ok(Some(path))
    }

    /// Whether `dir` holds every entry as its object file (a link to it, or a copy of its size).
    fn folder_is_whole(&self, dir: &Path, listing: &Listing, objects: &[PathBuf]) -> bool {
        let copies = dir.join(COPIES).exists();
        listing.entries.iter().zip(objects).all(|(entry, object)| {
            let file = dir.join(&entry.relative);
            same_file(&file, object) || (copies && std::fs::metadata(&file).is_ok_and(|m| m.len() == entry.size))
        })
    }

    /// Lays the folder out beside its place and renames it in: a reader sees a whole folder or
    /// none.
    fn build_folder(&self, dir: &Path, digest: &str, listing: &Listing, objects: &[PathBuf]) -> Result<()> {
        let folders = self.root.join("folders");
        let tmp = folders.join(format!(".tmp-{digest}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        for (entry, object) in listing.entries.iter().zip(objects) {
            let file = tmp.join(&entry.relative);
            let parent = file.parent().unwrap_or(&tmp);
            std::fs::create_dir_all(parent).at(parent)?;
            // A link costs nothing; a filesystem without them gets copies.
            if std::fs::hard_link(object, &file).is_err() {
                std::fs::copy(object, &file).at(&file)?;
                std::fs::write(tmp.join(COPIES), b"").at(&tmp)?;
            }
        }
        // The old folder is moved aside and the new one moved in before the old is removed: a
        // reader opening a file between the two renames is the only one who can miss it.
        let old = dir.exists().then(|| folders.join(format!(".old-{digest}-{}", std::process::id())));
        if let Some(old) = &old {
            std::fs::rename(dir, old).at(dir)?;
        }
        std::fs::rename(&tmp, dir).at(dir)?;
        if let Some(old) = &old {
            std::fs::remove_dir_all(old).at(old)?;
        }
        Ok(())
    }

    /// Takes the lock `name` of this host, waiting for its holder.
    fn lock(&self, name: &str) -> Result<File> {
        let dir = self.root.join("locks");
        std::fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).at(&path)?;
        file.lock().at(&path)?;
        Ok(file)
    }
}

/// The cache's name of one version of one object: its store, key, size and version.
fn object_id(listing: &Listing, entry: &Entry) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update(listing.url.store_url().as_str().as_bytes())
        .update(&[0])
        .update(entry.key.as_ref().as_bytes())
        .update(&[0])
        .update(&entry.size.to_le_bytes())
        .update(entry.version.as_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

/// Downloads `entry` into `part`, from where an earlier download stopped. The GET is conditional
/// on the listed ETag, so the bytes are all of the listed version.
fn download(store: &Arc<dyn ObjectStore>, listing: &Listing, entry: &Entry, part: &Path) -> Result<()> {
    let dir = part.parent().unwrap_or(part);
    std::fs::create_dir_all(dir).at(dir)?;
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > entry.size {
        have = 0;
    }
    let mut file = OpenOptions::new().create(true).write(true).truncate(have == 0).open(part).at(part)?;
    file.set_len(have).at(part)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).at(part)?;
    if have < entry.size {
        let url = &listing.url;
        let options =
            GetOptions { if_match: entry.e_tag.clone(), range: (have > 0).then_some(GetRange::Offset(have)), ..Default::default() };
        let fetched: Result<()> = wait(Call::Get, async {
            let got = store.get_opts(&entry.key, options).await.map_err(|e| fetch_failed(url, entry, &e))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk.map_err(|e| fetch_failed(url, entry, &e))?).at(part)?;
            }
            Ok(())
        });
        fetched?;
    }
    let got = std::fs::metadata(part).at(part)?.len();
    if got != entry.size {
        let _ = std::fs::remove_file(part);
        return Err(Error::Execution(format!(
            "{}/{}: fetched {got} bytes where the store lists {}; run again to fetch it anew",
            listing.url, entry.relative, entry.size
        )));
    }
    Ok(())
}

fn fetch_failed(url: &super::RemoteUrl, entry: &Entry, e: &object_store::Error) -> Error {
    match e {
        object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => Error::Execution(format!(
            "{url}: `{}` changed or went while it was fetched (it is no longer the version listed); run again",
            entry.relative
        )),
        other => super::listing::unreadable(url, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::RemoteUrl;
    use crate::workspace::store::{ObjectBackend, Store};

    fn bucket(name: &str, files: &[(&str, &[u8])]) -> Listing {
        let store = ObjectBackend::open(&format!("memory://{name}")).unwrap();
        for (key, bytes) in files {
            store.put(key, bytes).unwrap();
        }
        let url = RemoteUrl::recognise(&format!("memory://{name}/models/m")).unwrap().unwrap();
        Listing::read(&url).unwrap()
    }

    #[test]
    fn a_folder_is_fetched_once_and_laid_out_as_its_tree() {
        let listing = bucket("cache-once", &[("models/m/config.json", b"{}"), ("models/m/sub/w.bin", b"weights"), ("other/x", b"x")]);
        let names: Vec<&str> = listing.entries.iter().map(|e| e.relative.as_str()).collect();
        assert_eq!(names, ["config.json", "sub/w.bin"]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().to_path_buf());
        let folder = cache.local_copy(&listing).unwrap();
        assert_eq!(std::fs::read(folder.join("sub/w.bin")).unwrap(), b"weights");
        let object = dir.path().join("objects").join(blake3::hash(b"weights").to_hex().as_str());
        let stamp = Stat::of_path(&object).unwrap();
        assert_eq!(cache.local_copy(&listing).unwrap(), folder);
        assert_eq!(Stat::of_path(&object), Some(stamp), "not fetched again");
        assert_eq!(std::fs::read_dir(dir.path().join("partial")).unwrap().count(), 0);
    }

    #[test]
    fn a_corrupt_object_is_fetched_again_and_a_partial_one_resumed() {
        let listing = bucket("cache-repair", &[("models/m/w.bin", b"0123456789")]);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().to_path_buf());
        let folder = cache.local_copy(&listing).unwrap();
        // Corrupted in place (through the folder's link): detected and fetched again.
        std::fs::write(folder.join("w.bin"), b"0123456780").unwrap();
        let folder = cache.local_copy(&listing).unwrap();
        assert_eq!(std::fs::read(folder.join("w.bin")).unwrap(), b"0123456789");
        // A download killed half way: the rerun fetches the rest.
        let id = object_id(&listing, &listing.entries[0]);
        std::fs::remove_file(dir.path().join("index").join(format!("{id}.json"))).unwrap();
        std::fs::remove_dir_all(dir.path().join("objects")).unwrap();
        std::fs::write(dir.path().join("partial").join(format!("{id}.part")), b"01234").unwrap();
        let folder = cache.local_copy(&listing).unwrap();
        assert_eq!(std::fs::read(folder.join("w.bin")).unwrap(), b"0123456789");
    }

    #[test]
    fn a_url_naming_one_object_gives_its_file() {
        let store = ObjectBackend::open("memory://cache-file").unwrap();
        store.put("data/list.jsonl", b"{\"a\":1}\n").unwrap();
        let url = RemoteUrl::recognise("memory://cache-file/data/list.jsonl").unwrap().unwrap();
        let listing = Listing::read(&url).unwrap();
        assert!(listing.single_file);
        let dir = tempfile::tempdir().unwrap();
        let file = Cache::at(dir.path().to_path_buf()).local_copy(&listing).unwrap();
        assert!(file.ends_with("list.jsonl") && file.is_file());
        let missing = RemoteUrl::recognise("memory://cache-file/nothing/here").unwrap().unwrap();
        assert!(
            matches!(Listing::read(&missing), Err(Error::Usage(m)) if m.contains("nothing is stored at memory://cache-file/nothing/here"))
        );
    }
}
