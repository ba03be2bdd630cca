//! Where a workspace is: a local folder or an object-storage URL.

use std::fmt;
use std::path::PathBuf;

/// A workspace's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local folder (or a filesystem shared by the hosts).
    Folder(PathBuf),
    /// `s3://bucket/prefix`, `gs://…`, `az://…`, `memory://…`.
    Url(String),
}

impl Location {
    /// A location from what a user wrote: a URL, or a path (relative to `base`).
    pub fn parse(text: &str, base: &std::path::Path) -> Self {
        match text.split_once("://") {
            Some(("file", path)) => Self::Folder(PathBuf::from(path)),
            Some(_) => Self::Url(text.trim_end_matches('/').to_string()),
            None => Self::Folder(base.join(text)),
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

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder(p) => write!(f, "{}", p.display()),
            Self::Url(u) => f.write_str(u),
        }
    }
}
