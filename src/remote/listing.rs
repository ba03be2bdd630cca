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
    /// store's ETags are content digests (S3's for single-part uploads are their MD5).
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"unoflow remote listing 1\0").update(&[u8::from(self.single_file)]);
        for e in &self.entries {
            hasher.update(e.relative.as_bytes()).update(&[0]).update(&e.size.to_le_bytes()).update(e.version.as_bytes()).update(&[0]);
        }
        hasher.finalize().to_hex()[..32].to_string()
    }

    /// The total size of the objects.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }
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

/// A listing that failed, with what to check.
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
    Error::Usage(format!("cannot read {url}: {text}; check {hint}"))
}
