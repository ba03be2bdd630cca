//! What a remote input is, read from its store's listing: relative names, sizes and each
//! object's ETag. No byte is downloaded: this is what enters fingerprints, and what the cache
//! checks downloads against.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::RemoteUrl;
use crate::error::{Error, Result};
use crate::workspace::store::{Call, connect, wait};

/// One object of a remote input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The object's key in its store.
    pub key: ObjectPath,
    /// Its path under the input's URL, `/`-separated (a single file: its name).
    pub relative: String,
    pub size: u64,
    /// The store's identity of this version of the object: its ETag, else (a web server that
    /// sends none) its modification time.
    pub version: String,
    /// The ETag as the store sends it, for conditional requests.
    pub e_tag: Option<String>,
}

/// The objects a URL names: every object under the prefix (hidden names, those with a segment
/// starting with `.`, left out as a local folder's are), or the one object it names.
#[derive(Debug, Clone)]
pub struct Listing {
    pub url: RemoteUrl,
    /// Whether the URL names one object (then `entries` holds it alone), not a prefix.
    pub single_file: bool,
    /// Sorted by relative path.
    pub entries: Vec<Entry>,
}

impl Listing {
    /// Lists `url` on its store. A URL under which nothing is stored is a usage error naming it.
    pub fn read(url: &RemoteUrl) -> Result<Self> {
        let store = connect(url.store_url())?;
        let fail = |e: object_store::Error| unreadable(url, &e);
        let mut entries = Vec::new();
        if !url.is_http() {
            let root = url.key().parts().count();
            let listed: Vec<object_store::ObjectMeta> = wait(Call::List, store.list(Some(url.key())).try_collect()).map_err(fail)?;
            for meta in listed {
                let parts: Vec<String> = meta.location.parts().skip(root).map(|p| p.as_ref().to_string()).collect();
                // Folder markers (`name/`, size 0) and hidden files are no part of a folder.
                if parts.is_empty() || parts.iter().any(|p| p.is_empty() || p.starts_with('.')) {
                    continue;
                }
                entries.push(entry(meta.location.clone(), parts.join("/"), &meta));
            }
            drop_folder_markers(&mut entries);
        }
        let single_file = entries.is_empty();
        if single_file {
            match wait(Call::Head, head(&store, url.key())) {
                Ok(meta) => {
                    let name = url.key().filename().unwrap_or_default().to_string();
                    entries.push(entry(url.key().clone(), name, &meta));
                }
                Err(object_store::Error::NotFound { .. }) => return Err(nothing_at(url)),
                Err(e) => return Err(fail(e)),
            }
        }
        entries.sort_by(|a, b| a.relative.cmp(&b.relative));
        Ok(Self { url: url.clone(), single_file, entries })
    }

    /// The input's identity for fingerprints: its relative names, sizes and versions (ETags).
    /// A remote object's identity is its store's checksum, not a digest of its bytes, so that
    /// `plan` downloads nothing; the same weights at another URL keep their fingerprint where the
    /// store's ETags are content digests (S3's for single-part uploads are their MD5). Where a
    /// version is weaker than that — a web server's ETag (nginx and Apache make it of the
    /// modification time and size) or a modification time — the URL is part of the identity,
    /// so two files that only share a name, a size and a time are not one input.
    pub fn digest(&self) -> String {
        self.digest_of(|_| true)
    }

    /// [`Listing::digest`] of the entries `keep` takes (a `read` takes its format's files).
    pub fn digest_of(&self, keep: impl Fn(&Entry) -> bool) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"unoflow remote listing 1\0").update(&[u8::from(self.single_file)]);
        if self.url.is_http() || self.entries.iter().any(|e| e.version.starts_with("modified:")) {
            hasher.update(b"url\0").update(self.url.as_str().as_bytes()).update(&[0]);
        }
        for e in self.entries.iter().filter(|e| keep(e)) {
            hasher.update(e.relative.as_bytes()).update(&[0]).update(&e.size.to_le_bytes()).update(e.version.as_bytes()).update(&[0]);
        }
        hasher.finalize().to_hex()[..32].to_string()
    }

    /// The total size of the objects.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
}

/// Removes folder markers: object_store lists the key `a/b/` (what consoles, s3fs and rclone
/// create for an empty folder) as an empty object `a/b`, which as a file would stand where the
/// folder `a/b` must be.
fn drop_folder_markers(entries: &mut Vec<Entry>) {
    let names: std::collections::HashSet<String> =
        entries.iter().flat_map(|e| e.relative.match_indices('/').map(|(i, _)| e.relative[..i].to_string()).collect::<Vec<_>>()).collect();
    entries.retain(|e| !(e.size == 0 && names.contains(&e.relative)));
}

fn entry(key: ObjectPath, relative: String, meta: &object_store::ObjectMeta) -> Entry {
    let version = match &meta.e_tag {
        Some(tag) => format!("etag:{}", tag.trim_matches('"')),
        None => format!("modified:{}", meta.last_modified.timestamp_millis()),
    };
    Entry { key, relative, size: meta.size, version, e_tag: meta.e_tag.clone() }
}

async fn head(store: &Arc<dyn ObjectStore>, key: &ObjectPath) -> object_store::Result<object_store::ObjectMeta> {
    store.head(key).await
}

/// A URL that lists nothing: the user's to fix before anything runs.
fn nothing_at(url: &RemoteUrl) -> Error {
    Error::Usage(format!("nothing is stored at {url}: no object has this name, and no object is under it as a prefix; check the URL"))
}

/// A listing that failed, with what to check: a usage error (exit 2) where the URL or the
/// credentials are wrong, a failure to retry (exit 1) where the store or the network is (a
/// timeout, a 5xx, a reset: a Kubernetes index that exits 2 is not retried).
pub(super) fn unreadable(url: &RemoteUrl, e: &object_store::Error) -> Error {
    let hint = match url.store_url().scheme() {
        "gs" => "GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT",
        "az" | "azure" | "abfs" | "abfss" => "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY, or AZURE_STORAGE_SAS_KEY",
        "http" | "https" => "that the server answers this URL",
        _ => "AWS_ENDPOINT_URL, AWS_REGION, and AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the role of this host)",
    };
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    // The store's XML body says nothing a user needs; the first line does.
    let text = text.lines().next().unwrap_or_default().split(": <").next().unwrap_or_default().to_string();
    let message = format!("cannot read {url}: {text}; check {hint}");
    match e {
        object_store::Error::NotFound { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Error::Usage(message),
        _ => Error::Execution(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_of(relative: &str, size: u64) -> Entry {
        Entry { key: ObjectPath::from(relative), relative: relative.into(), size, version: "etag:x".into(), e_tag: None }
    }

    fn listing(url: &str, version: &str) -> Listing {
        let url = RemoteUrl::recognise(url).unwrap().unwrap();
        let mut file = entry_of("w.bin", 10);
        file.version = version.into();
        Listing { url, single_file: false, entries: vec![file] }
    }

    #[test]
    fn content_versions_ignore_the_url_and_weak_ones_do_not() {
        assert_eq!(listing("s3://a/m", "etag:md5").digest(), listing("s3://b/copy", "etag:md5").digest());
        assert_ne!(listing("s3://a/m", "modified:1").digest(), listing("s3://b/copy", "modified:1").digest());
        assert_ne!(listing("https://a.example/w.bin", "etag:5f-1").digest(), listing("https://b.example/w.bin", "etag:5f-1").digest());
        assert_eq!(listing("s3://a/m", "etag:x").digest(), listing("s3://a/m", "etag:x").digest_of(|_| true));
    }

    #[test]
    fn folder_markers_are_no_files() {
        let mut entries =
            vec![entry_of("tok", 0), entry_of("tok/vocab.json", 10), entry_of("empty.txt", 0), entry_of("a/b", 0), entry_of("a/b/c", 1)];
        drop_folder_markers(&mut entries);
        let names: Vec<&str> = entries.iter().map(|e| e.relative.as_str()).collect();
        assert_eq!(names, ["tok/vocab.json", "empty.txt", "a/b/c"], "an empty file that is no folder stays");
    }
}
