//! The per-host cache folder: what this host keeps between runs outside any workspace (digests
//! of local files, copies of remote inputs, local mirrors of object-store workspaces). Every subfolder belongs to one module; deleting the
//! whole folder is always safe (it is refilled on demand).

use std::path::PathBuf;

/// The cache folder of this host: `$UNOFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/unoflow`, else
/// `$HOME/.cache/unoflow` (the XDG default), else a folder under the system's temporary folder
/// (a host without a home: a bare container).
pub fn root() -> PathBuf {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("UNOFLOW_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return dir.join("unoflow");
    }
    match set("HOME") {
        Some(home) => home.join(".cache").join("unoflow"),
        None => std::env::temp_dir().join("unoflow-cache"),
    }
}
