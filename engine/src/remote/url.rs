//! Which parameter values name remote inputs, read as strictly as workspace URLs are.

use std::fmt;
use std::path::Path;

use object_store::path::Path as ObjectPath;

use crate::error::{Error, Result};
use crate::workspace::Location;

/// A file or folder on object storage (`s3://`, `gs://`, `az://`, `memory://`) or one file on a
/// web server (`https://`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteUrl {
    /// The URL as normalised (lowercase scheme, no trailing `/`): names it in messages and
    /// tells the stores apart in the cache.
    text: String,
    /// `scheme://bucket` (or `https://host:port`): what [`crate::workspace::store::connect`] opens.
    store: url::Url,
    /// The object or prefix inside the store.
    key: ObjectPath,
}

impl RemoteUrl {
    /// `Some` when `text` is written as a URL (then `Err` if it is malformed, saying how to write
    /// it), `None` when it is a path on this host (`file:///…` included).
    pub fn recognise(text: &str) -> Option<Result<Self>> {
        let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Some(Self::http(text));
        }
        match Location::parse(text, Path::new("")) {
            Ok(Location::Folder(_)) => None,
            Ok(Location::Url(normal)) => Some(Self::object(normal)),
            // The workspace parser's message, about this URL rather than a workspace.
            Err(Error::Usage(message)) => Some(Err(Error::Usage(message.strip_prefix("workspace ").unwrap_or(&message).to_string()))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Whether `text` names a remote input (a well-formed URL).
    pub fn is_remote(text: &str) -> bool {
        matches!(Self::recognise(text), Some(Ok(_)))
    }

    fn object(normal: String) -> Result<Self> {
        let parsed = url::Url::parse(&normal).map_err(|e| Error::Usage(format!("`{normal}`: not a URL: {e}")))?;
        let store = url::Url::parse(&format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default()))
            .map_err(|e| Error::Usage(format!("`{normal}`: {e}")))?;
        let key = ObjectPath::from_url_path(parsed.path()).map_err(|e| Error::Usage(format!("`{normal}`: {e}")))?;
        Ok(Self { text: normal, store, key })
    }

    /// One file on a web server. A query string is refused (the store would drop it: a signed
    /// URL would fetch unsigned), and plain `http://` is for this host's loopback only.
    fn http(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::Usage(format!("`{text}`: {why}"));
        let parsed = url::Url::parse(text).map_err(|e| bad(&format!("not a URL: {e}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // It would be kept in fingerprints' records, run records, errors and manifests.
            return Err(Error::Usage(format!(
                "`{}://…@{}…`: a URL cannot hold credentials (they would be written into run records and manifests); \
                 serve the file without them, or put it on object storage and its credentials in the environment",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default()
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("a query string or fragment cannot be fetched through the store client; name the file by its path alone"));
        }
        let loopback = matches!(parsed.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(parsed.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
            || parsed.host_str().is_some_and(|h| h.eq_ignore_ascii_case("localhost"));
        if parsed.scheme() == "http" && !loopback {
            return Err(bad("plain http:// is refused (anyone on the way could change the bytes); use https://"));
        }
        if parsed.path().ends_with('/') || parsed.path().is_empty() {
            return Err(bad(
                "an https:// URL names one file (web servers list no folders); put a folder on object storage (s3://, gs://, az://)",
            ));
        }
        let mut store = parsed.clone();
        store.set_path("");
        let key = ObjectPath::from_url_path(parsed.path()).map_err(|e| bad(&e.to_string()))?;
        let text = parsed.as_str().to_string();
        Ok(Self { text, store, key })
    }

    /// The URL, normalised.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The store's own URL (`s3://bucket`, `https://host:port`).
    pub fn store_url(&self) -> &url::Url {
        &self.store
    }

    /// The object or prefix in the store.
    pub fn key(&self) -> &ObjectPath {
        &self.key
    }

    /// Whether the URL names one file on a web server (which lists no folders).
    pub fn is_http(&self) -> bool {
        matches!(self.store.scheme(), "http" | "https")
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(text: &str) -> RemoteUrl {
        RemoteUrl::recognise(text).expect("a URL").expect("well formed")
    }

    #[test]
    fn urls_and_paths_are_told_apart() {
        assert!(RemoteUrl::recognise("/data/models/dinov2").is_none());
        assert!(RemoteUrl::recognise("relative/x.jsonl").is_none());
        assert!(RemoteUrl::recognise("file:///data/x").is_none());
        let s3 = remote("S3://bucket/models/dinov2/");
        assert_eq!(s3.as_str(), "s3://bucket/models/dinov2");
        assert_eq!(s3.store_url().as_str(), "s3://bucket");
        assert_eq!(s3.key().as_ref(), "models/dinov2");
        assert!(!s3.is_http());
        let web = remote("https://example.com:8443/files/list.jsonl");
        assert_eq!(web.store_url().as_str(), "https://example.com:8443/");
        assert_eq!(web.key().as_ref(), "files/list.jsonl");
        assert!(web.is_http());
        assert!(remote("http://127.0.0.1:9000/x.jsonl").is_http());
    }

    #[test]
    fn malformed_urls_say_how_to_write_them() {
        let message = |text: &str| RemoteUrl::recognise(text).expect("a URL").unwrap_err().to_string();
        assert!(message("s3:/bucket/x").contains("write s3://bucket/x"));
        assert!(!message("s3:/bucket/x").starts_with("workspace"));
        assert!(message("s3://b/../x").contains("another prefix"));
        assert!(message("http://example.com/x.jsonl").contains("use https://"));
        assert!(message("https://example.com/x?sig=1").contains("query string"));
        assert!(message("https://example.com/folder/").contains("names one file"));
        let with_password = message("https://me:hunter2@example.com/x.jsonl");
        assert!(with_password.contains("cannot hold credentials") && !with_password.contains("hunter2"), "{with_password}");
    }
}
