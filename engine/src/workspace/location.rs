//! Where a workspace is: a local folder or an object-storage URL.
//!
//! URLs are read strictly. A lenient reading turned typos into something else that worked:
//! `s3:/bucket/x` (one slash) became a local folder named `s3:`, `s3://b/a/../c` the prefix
//! `c`, `s3://b/x?versionId=1` the prefix `x`. So a known scheme must be followed by `//`, a
//! bucket and clean segments; an unknown scheme is refused; only what has no scheme at all (or
//! a drive letter, `C:\…`) is a folder.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A workspace's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local folder (or a filesystem shared by the hosts).
    Folder(PathBuf),
    /// `s3://bucket/prefix`, `gs://…`, `az://…`, `memory://…`, normalised (lowercase scheme,
    /// no trailing `/`).
    Url(String),
}

/// The URL schemes of object stores a workspace may be in (those `store::ObjectBackend` opens).
pub const OBJECT_SCHEMES: [&str; 8] = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "memory"];

/// How a text names a place, before it is checked.
enum Written<'a> {
    /// `scheme://rest`.
    Url { scheme: String, rest: &'a str },
    /// A known scheme without `//`: `s3:/x`, `s3:x`.
    Slashless { scheme: String, rest: &'a str },
    /// No scheme: a path.
    Path,
}

impl Location {
    /// A location from what a user wrote: a URL, or a path (relative to `base`). A malformed
    /// URL is a usage error (exit 2) that says how to write it.
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        match written(text) {
            Written::Path => Ok(Self::Folder(base.join(text))),
            Written::Slashless { scheme, rest } => Err(slashless(text, &scheme, rest)),
            Written::Url { scheme, rest } => url(text, &scheme, rest),
        }
    }

    /// The local folder, if it is one.
    pub fn folder(&self) -> Option<&std::path::Path> {
        match self {
            Self::Folder(p) => Some(p),
            Self::Url(_) => None,
        }
    }
}

/// Splits off a URL scheme. A single letter is a Windows drive (`C:\data`), and a word before a
/// colon that is not a known scheme (`notes:2024`) is part of a folder's name.
fn written(text: &str) -> Written<'_> {
    let Some((scheme, after)) = text.split_once(':') else { return Written::Path };
    let mut chars = scheme.chars();
    let is_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && scheme.len() > 1;
    if !is_scheme {
        return Written::Path;
    }
    let scheme = scheme.to_ascii_lowercase();
    match after.strip_prefix("//") {
        Some(rest) => Written::Url { scheme, rest },
        None if is_known(&scheme) => Written::Slashless { scheme, rest: after },
        None => Written::Path,
    }
}

fn is_known(scheme: &str) -> bool {
    scheme == "file" || OBJECT_SCHEMES.contains(&scheme)
}

/// How a URL of `scheme` is written, for messages.
fn form(scheme: &str) -> &'static str {
    match scheme {
        "s3" | "s3a" => "s3://BUCKET/PREFIX",
        "gs" => "gs://BUCKET/PREFIX",
        "az" | "azure" => "az://CONTAINER/PREFIX",
        "abfs" | "abfss" => "abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX",
        "memory" => "memory://NAME/PREFIX",
        _ => "file:///ABSOLUTE/PATH",
    }
}

fn bad(text: &str, why: impl fmt::Display) -> Error {
    Error::Usage(format!("workspace `{text}`: {why}"))
}

/// `s3:/x` or `s3:x`: the `//` is missing (the lenient reading made it the folder `./s3:`).
fn slashless(text: &str, scheme: &str, rest: &str) -> Error {
    let trimmed = rest.trim_start_matches('/');
    let fixed = match scheme {
        _ if rest.trim_matches('/').is_empty() => form(scheme).to_string(),
        // A file URL's path is absolute: its third slash starts it.
        "file" => format!("file:///{trimmed}"),
        _ => format!("{scheme}://{trimmed}"),
    };
    bad(text, format!("a URL needs `//` after `{scheme}:`; write {fixed} ({}), or ./{text} for a folder of that name", form(scheme)))
}

/// Checks `scheme://rest` and normalises it.
fn url(text: &str, scheme: &str, rest: &str) -> Result<Location> {
    if !is_known(scheme) {
        return Err(bad(
            text,
            format!(
                "unknown scheme `{scheme}://`; a workspace is a folder, or s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, \
                 az://CONTAINER/PREFIX or file:///ABSOLUTE/PATH"
            ),
        ));
    }
    check_characters(text, rest)?;
    if scheme == "file" {
        return file_url(text, rest);
    }
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket(text, scheme, bucket)?;
    let path = path.strip_suffix('/').unwrap_or(path);
    check_segments(text, path)?;
    Ok(Location::Url(if path.is_empty() { format!("{scheme}://{bucket}") } else { format!("{scheme}://{bucket}/{path}") }))
}

/// Refuses what a store would read as something else: a query string or fragment (dropped, so
/// `x?versionId=1` would be `x`), percent escapes (decoded, so `%2E%2E` would be `..`),
/// backslashes, spaces and control characters (a pasted line's end, most often).
fn check_characters(text: &str, rest: &str) -> Result<()> {
    if let Some(at) = rest.find(['?', '#']) {
        return Err(bad(
            text,
            format!("`{}` is a query string or fragment, which names no other place in a store; remove it", &rest[at..]),
        ));
    }
    if rest.contains('%') {
        return Err(bad(text, "percent escapes (`%..`) are decoded by the store into other names; write the characters themselves"));
    }
    if rest.contains('\\') {
        return Err(bad(text, "a backslash is no separator in a URL; separate the prefix's parts with `/`"));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(text, "spaces and control characters do not belong in a workspace URL; remove them"));
    }
    Ok(())
}

/// `file:///path`: a folder on this host, named by its absolute path.
fn file_url(text: &str, rest: &str) -> Result<Location> {
    if rest.is_empty() {
        return Err(bad(text, "no path; write file:///ABSOLUTE/PATH, or the folder's path alone"));
    }
    if !rest.starts_with('/') {
        return Err(bad(
            text,
            format!(
                "`{rest}` is a relative folder (or a host name), and a file URL names a folder by its absolute path: \
                 write file:///ABSOLUTE/PATH, or the folder's path alone"
            ),
        ));
    }
    Ok(Location::Folder(PathBuf::from(rest)))
}

/// The bucket (container, in-memory store) part: present, and neither a path step nor a host
/// with credentials or a port (the endpoint comes from the environment: AWS_ENDPOINT_URL, …).
fn check_bucket(text: &str, scheme: &str, bucket: &str) -> Result<()> {
    if bucket.is_empty() {
        return Err(bad(text, format!("no bucket; write {}", form(scheme))));
    }
    if bucket == "." || bucket == ".." {
        return Err(bad(text, format!("`{bucket}` is no bucket; write {}", form(scheme))));
    }
    // Azure's abfs URLs name the container and the account as CONTAINER@ACCOUNT.HOST.
    let allowed_at = matches!(scheme, "abfs" | "abfss");
    if bucket.contains(':') || (bucket.contains('@') && !allowed_at) {
        return Err(bad(
            text,
            format!(
                "`{bucket}` is not a bucket name (credentials and ports are not written in the URL: the endpoint and keys \
                 come from the environment, e.g. AWS_ENDPOINT_URL and AWS_ACCESS_KEY_ID); write {}",
                form(scheme)
            ),
        ));
    }
    Ok(())
}

/// The prefix's segments: none empty (`a//b`), none `.` or `..` (a store takes them literally,
/// a URL parser folds them into another prefix: either way not what was meant).
fn check_segments(text: &str, path: &str) -> Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(bad(text, "an empty segment (`//`) in the prefix; separate its parts with a single `/`")),
            "." | ".." => {
                return Err(bad(text, format!("`{segment}` in the prefix would name another prefix; write the prefix without it")));
            }
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder(p) => write!(f, "{}", p.display()),
            Self::Url(u) => f.write_str(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Location> {
        Location::parse(text, Path::new("/base"))
    }

    /// The message of the usage error `text` gives.
    #[track_caller]
    fn refused(text: &str) -> String {
        match parse(text) {
            Err(Error::Usage(message)) => {
                assert!(message.contains(&format!("`{text}`")), "the message names what was written: {message}");
                message
            }
            other => panic!("{text:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn object_store_urls_are_normalised() {
        assert_eq!(parse("s3://bucket/runs/one").unwrap(), Location::Url("s3://bucket/runs/one".into()));
        assert_eq!(parse("s3://bucket/runs/one/").unwrap(), Location::Url("s3://bucket/runs/one".into()));
        assert_eq!(parse("S3://bucket/x").unwrap(), Location::Url("s3://bucket/x".into()));
        assert_eq!(parse("gs://b").unwrap(), Location::Url("gs://b".into()));
        assert_eq!(parse("gs://b/").unwrap(), Location::Url("gs://b".into()));
        assert_eq!(parse("az://container/p").unwrap(), Location::Url("az://container/p".into()));
        assert_eq!(parse("azure://container/p").unwrap(), Location::Url("azure://container/p".into()));
        assert_eq!(parse("abfss://c@acct.dfs.core.windows.net/p").unwrap(), Location::Url("abfss://c@acct.dfs.core.windows.net/p".into()));
        assert_eq!(parse("memory://sim/ws").unwrap(), Location::Url("memory://sim/ws".into()));
        assert_eq!(parse("s3://my.bucket-1/a.b/c-d_e").unwrap(), Location::Url("s3://my.bucket-1/a.b/c-d_e".into()));
    }

    #[test]
    fn paths_and_file_urls_are_folders() {
        assert_eq!(parse("ws").unwrap(), Location::Folder("/base/ws".into()));
        assert_eq!(parse("/abs/ws").unwrap(), Location::Folder("/abs/ws".into()));
        assert_eq!(parse("file:///abs/ws").unwrap(), Location::Folder("/abs/ws".into()));
        assert_eq!(parse("../up/./ws").unwrap(), Location::Folder("/base/../up/./ws".into()));
        // A Windows-looking path: the drive letter is no scheme.
        assert_eq!(parse(r"C:\data\ws").unwrap(), Location::Folder(Path::new("/base").join(r"C:\data\ws")));
        assert_eq!(parse("C:/data/ws").unwrap(), Location::Folder(Path::new("/base").join("C:/data/ws")));
        // An unknown word before a colon is part of a folder's name; so is a `./` before a scheme.
        assert_eq!(parse("notes:2024").unwrap(), Location::Folder("/base/notes:2024".into()));
        assert_eq!(parse("./s3:x").unwrap(), Location::Folder("/base/./s3:x".into()));
        assert_eq!(parse("runs/a://b").unwrap(), Location::Folder("/base/runs/a://b".into()));
    }

    #[test]
    fn a_known_scheme_without_its_two_slashes_is_refused() {
        let message = refused("s3:/bucket/typo");
        assert!(message.contains("write s3://bucket/typo") && message.contains("./s3:/bucket/typo"), "{message}");
        assert!(refused("s3:bucket/typo").contains("write s3://bucket/typo"));
        assert!(refused("s3:").contains("write s3://BUCKET/PREFIX"));
        assert!(refused("GS:/b/p").contains("gs://b/p"));
        assert!(refused("file:/abs").contains("write file:///abs"));
        refused("az:/c/p");
        refused("memory:x");
    }

    #[test]
    fn unknown_schemes_are_refused() {
        for text in ["ftp://host/x", "http://bucket/x", "s4://bucket/x", "hdfs://nn/x"] {
            let message = refused(text);
            assert!(message.contains("unknown scheme") && message.contains("s3://BUCKET/PREFIX"), "{message}");
        }
    }

    #[test]
    fn a_missing_bucket_is_refused() {
        for text in ["s3://", "s3:///", "s3:///prefix", "gs://", "memory://"] {
            assert!(refused(text).contains("no bucket"), "{text}");
        }
        assert!(refused("s3://../x").contains("no bucket"));
        assert!(refused("s3://user@bucket/x").contains("AWS_ENDPOINT_URL"));
        assert!(refused("s3://bucket:9000/x").contains("not a bucket name"));
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        for text in ["s3://b/../x", "s3://b/a/../b", "s3://b/./c", "s3://b/a/..", "s3://b/."] {
            assert!(refused(text).contains("another prefix"), "{text}");
        }
        for text in ["s3://b/a//b", "s3://b//a", "s3://b/a//"] {
            assert!(refused(text).contains("empty segment"), "{text}");
        }
    }

    #[test]
    fn query_strings_fragments_and_escapes_are_refused() {
        assert!(refused("s3://b/x?versionId=1").contains("`?versionId=1` is a query string"));
        assert!(refused("s3://b/x#frag").contains("fragment"));
        assert!(refused("s3://b?x").contains("query string"));
        assert!(refused("s3://b/%2E%2E/x").contains("percent"));
        assert!(refused(r"s3://b/a\b").contains("backslash"));
        assert!(refused("s3://b/x ").contains("spaces"));
        assert!(refused("file:///abs?x").contains("query string"));
    }

    #[test]
    fn a_file_url_names_an_absolute_path() {
        let message = refused("file://relative/ws");
        assert!(message.contains("`relative/ws` is a relative folder") && message.contains("file:///ABSOLUTE/PATH"), "{message}");
        assert!(refused("file://").contains("no path"));
    }
}
