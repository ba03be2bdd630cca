//! `export` to object storage: a `path` that is an `s3://`, `gs://` or `az://` URL (an export
//! under `${workspace}` of a workspace on a bucket is one).
//!
//! The export is written to a local staging folder as any export is, then uploaded. A store
//! has no rename of folders, so a folder is replaced object by object: its marker first (a
//! folder half replaced is still unoflow's to replace), then the files; a file's marker beside
//! it records the size uploaded. A destination holding objects unoflow did not write is refused,
//! as a local one is. The node's table lists every file, so a file missing from the store makes
//! the node stale ([`StoreDestination::missing`]).

use std::path::Path;
use std::sync::Arc;

use super::export::MARKER;
use crate::error::{Error, IoContext, Result};
use crate::workspace::store::{self, Store};

/// Where an export on object storage goes.
#[derive(Debug)]
pub struct StoreDestination {
    /// A folder export: the store rooted at the folder; a file export: rooted at its parent.
    store: Arc<dyn Store>,
    /// A file export's name in its parent (empty for a folder).
    name: String,
    url: String,
}

impl StoreDestination {
    /// The destination `url` names, if it is object storage (not a local path).
    pub fn of(path: &Path, folder: bool) -> Option<Result<Self>> {
        let text = path.to_str()?;
        if !store::is_url(text) {
            return None;
        }
        let url = text.trim_end_matches('/').to_string();
        let (root, name) = match (folder, url.rsplit_once('/')) {
            (false, Some((parent, name))) if !parent.ends_with('/') => (parent.to_string(), name.to_string()),
            (false, _) => {
                return Some(Err(Error::Usage(format!("export path {url}: name a file under the bucket, e.g. {url}/out.parquet"))));
            }
            (true, _) => (url.clone(), String::new()),
        };
        Some(store::open(&root).map(|store| Self { store, name, url }))
    }

    /// The file name a staged copy is written under.
    pub fn file_name(&self) -> &str {
        if self.name.is_empty() { "export" } else { &self.name }
    }

    fn marker_key(&self) -> String {
        if self.name.is_empty() { MARKER.to_string() } else { format!(".{}.unoflow-export", self.name) }
    }

    /// Whether the destination may be written: nothing there, or what an export wrote.
    pub fn replaceable(&self) -> std::result::Result<(), String> {
        let refused = |why: &str| format!("refusing to replace {}: {why}", self.url);
        let marker = self.store.get(&self.marker_key()).map_err(|e| e.to_string())?;
        if self.name.is_empty() {
            let listed = self.store.list("").map_err(|e| e.to_string())?;
            return match (listed.is_empty(), marker) {
                (true, _) | (false, Some(_)) => Ok(()),
                (false, None) => Err(refused("objects are stored under it that unoflow's export did not write")),
            };
        }
        let Some(size) = self.store.size(&self.name).map_err(|e| e.to_string())? else { return Ok(()) };
        // The marker holds the size uploaded and, once the upload is done, the object's write
        // time: a file of the same size put there since (a hand-fixed copy) is not ours.
        let recorded = marker.map(|(bytes, _)| String::from_utf8_lossy(&bytes).trim().to_string()).unwrap_or_default();
        let mut fields = recorded.split(' ');
        let same_size = fields.next() == Some(size.to_string().as_str());
        let same_time = match fields.next() {
            Some(ms) => self.store.written_at_ms(&self.name).map_err(|e| e.to_string())?.is_some_and(|t| t.to_string() == ms),
            None => true,
        };
        match same_size && same_time {
            true => Ok(()),
            false => Err(refused("it exists and was not written by unoflow's export (or changed since)")),
        }
    }

    /// Uploads a staged file export.
    pub fn upload_file(&self, file: &Path) -> Result<()> {
        self.check()?;
        let size = std::fs::metadata(file).at(file)?.len();
        // The marker first: a crash between the two leaves a marker that does not match the old
        // object, which is then refused, never silently replaced (as for a local file).
        self.store.put(&self.marker_key(), format!("{size}\n").as_bytes())?;
        self.store.finish_file(&self.name, file)?;
        if let Some(ms) = self.store.written_at_ms(&self.name)? {
            self.store.put(&self.marker_key(), format!("{size} {ms}\n").as_bytes())?;
        }
        Ok(())
    }

    /// Uploads a staged folder export, replacing what an earlier export put there.
    pub fn upload_folder(&self, dir: &Path) -> Result<()> {
        self.check()?;
        self.store.put(MARKER, b"written by unoflow export\n")?;
        let stale: Vec<String> = self.store.list("")?.into_iter().map(|l| l.key).filter(|k| k != MARKER).collect();
        for key in stale {
            self.store.delete(&key)?;
        }
        for (file, relative) in super::read::files_under(dir, &|_| true)? {
            self.store.finish_file(&relative, &file)?;
        }
        Ok(())
    }

    /// The first of `names` (relative to the destination) not in the store.
    pub fn missing(&self, names: &[String]) -> Result<Option<String>> {
        if !self.name.is_empty() {
            return Ok(self.store.size(&self.name)?.is_none().then(|| self.url.clone()));
        }
        let listed: std::collections::HashSet<String> = self.store.list("")?.into_iter().map(|l| l.key).collect();
        Ok(names.iter().find(|n| !listed.contains(n.as_str())).map(|n| format!("{}/{n}", self.url)))
    }

    /// Checked again before writing, as objects may have appeared since validation.
    fn check(&self) -> Result<()> {
        self.replaceable().map_err(|m| Error::Execution(format!("{m}; choose another `path` or remove them")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_export_replaces_only_its_own_objects() {
        let staged = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(staged.path().join("images")).unwrap();
        std::fs::write(staged.path().join("train.json"), b"[]").unwrap();
        std::fs::write(staged.path().join("images/a.png"), b"png").unwrap();
        let dest = StoreDestination::of(Path::new("memory://export-folder/ws/exports/uno"), true).unwrap().unwrap();
        dest.replaceable().unwrap();
        dest.upload_folder(staged.path()).unwrap();
        assert_eq!(dest.missing(&["train.json".into(), "images/a.png".into()]).unwrap(), None);
        assert_eq!(dest.missing(&["images/b.png".into()]).unwrap().as_deref(), Some("memory://export-folder/ws/exports/uno/images/b.png"));
        dest.upload_folder(staged.path()).unwrap();

        let theirs = store::open("memory://export-folder/theirs").unwrap();
        theirs.put("data.csv", b"a\n").unwrap();
        let dest = StoreDestination::of(Path::new("memory://export-folder/theirs"), true).unwrap().unwrap();
        assert!(dest.replaceable().unwrap_err().contains("did not write"));
    }

    #[test]
    fn a_file_export_is_uploaded_with_its_marker() {
        let staged = tempfile::tempdir().unwrap();
        let file = staged.path().join("pairs.parquet");
        std::fs::write(&file, b"PAR1").unwrap();
        let dest = StoreDestination::of(Path::new("memory://export-file/ws/exports/pairs.parquet"), false).unwrap().unwrap();
        assert_eq!(dest.missing(&[]).unwrap().as_deref(), Some("memory://export-file/ws/exports/pairs.parquet"));
        dest.upload_file(&file).unwrap();
        assert_eq!(dest.missing(&[]).unwrap(), None);
        dest.replaceable().unwrap();
        // Put again with the same size (a hand-fixed copy): not ours any more.
        std::thread::sleep(std::time::Duration::from_millis(5));
        store::open("memory://export-file/ws/exports").unwrap().put("pairs.parquet", b"PAR2").unwrap();
        assert!(dest.replaceable().is_err(), "changed since it was exported, at the same size");
        store::open("memory://export-file/ws/exports").unwrap().put("pairs.parquet", b"changed!").unwrap();
        assert!(dest.replaceable().is_err(), "changed since it was exported");
        assert!(StoreDestination::of(Path::new("relative/out.parquet"), false).is_none());
    }
}
