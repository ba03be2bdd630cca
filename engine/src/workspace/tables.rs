//! `tables/`: each materialised node's current output under its name, for engines that know
//! nothing of fingerprints (DuckDB, Polars, pyarrow, Spark):
//!
//! ```text
//! tables/NAME -> NAME@FP12                 a symbolic link, swapped by rename
//! tables/NAME@FP12/part-000000.parquet …   hard links to the committed parts (no copies)
//! tables/errors.NAME -> errors.NAME@FP12   the failed rows, when there are any
//! ```
//!
//! A reader that resolves `tables/NAME` sees one complete output: the folder is filled before
//! the link points at it, and the link is replaced in one rename. The files are the committed
//! parts themselves: reading is free, and editing them is detected as damage.
//!
//! In object storage, which has no links, `tables/NAME.json` lists the URLs of the output's
//! files (`{"fingerprint", "files": […]}`), replaced in one put.
//!
//! A view (a `sql` node that stores nothing) is `tables/NAME.sql`: statements that define it
//! for DuckDB over its inputs' parts (written by `query::outside`).

use std::path::Path;

use super::store::Store;
use super::{Manifest, NodeStore};
use crate::error::{IoContext, Result};

/// Points `tables/NAME` (and `tables/errors.NAME`) at `manifest`'s files.
pub(super) fn publish(workspace: &dyn Store, name: &str, node: &NodeStore, manifest: &Manifest) -> Result<()> {
    // The node was a view before.
    workspace.delete(&view_key(name))?;
    let Some(dir) = workspace.local_path("tables") else {
        let files: Vec<String> = manifest.row_files().map(|f| node.url_of(f)).collect();
        let errors: Vec<String> = manifest.error_files().map(|f| node.url_of(f)).collect();
        let list = serde_json::json!({"fingerprint": node.fingerprint(), "files": files, "error_files": errors});
        return workspace.put(&format!("tables/{name}.json"), list.to_string().as_bytes());
    };
    std::fs::create_dir_all(&dir).at(&dir)?;
    let short = &node.fingerprint()[..node.fingerprint().len().min(12)];
    link_folder(&dir, name, short, manifest.row_files().filter_map(|f| node.local_path_of(f)))?;
    let errors = format!("errors.{name}");
    if manifest.error_rows > 0 {
        link_folder(&dir, &errors, short, manifest.error_files().filter_map(|f| node.local_path_of(f)))?;
    } else {
        remove_versions(&dir, &errors, None)?;
    }
    Ok(())
}

/// Writes `tables/NAME.sql`, the statements defining view `name` for other engines, and
/// removes what `tables/` held for the node when it was stored.
pub(super) fn publish_view(workspace: &dyn Store, name: &str, script: &str) -> Result<()> {
    match workspace.local_path("tables") {
        Some(dir) => {
            remove_versions(&dir, name, None)?;
            remove_versions(&dir, &format!("errors.{name}"), None)?;
        }
        None => workspace.delete(&format!("tables/{name}.json"))?,
    }
    workspace.put(&view_key(name), script.as_bytes())
}

fn view_key(name: &str) -> String {
    format!("tables/{name}.sql")
}

/// Fills `dir/NAME@VERSION/` with links to `files` (unless it is there) and points `dir/NAME`
/// at it; older versions are removed.
fn link_folder(dir: &Path, name: &str, version: &str, files: impl Iterator<Item = std::path::PathBuf>) -> Result<()> {
    let target = format!("{name}@{version}");
    let folder = dir.join(&target);
    if !folder.is_dir() {
        let staging = dir.join(format!(".{target}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).at(&staging)?;
        for (k, file) in files.enumerate() {
            let link = staging.join(format!("part-{k:06}.parquet"));
            // A hard link where the filesystem allows it (the same one), a copy otherwise.
            if std::fs::hard_link(&file, &link).is_err() {
                std::fs::copy(&file, &link).at(&link)?;
            }
        }
        if let Err(e) = std::fs::rename(&staging, &folder) {
            let _ = std::fs::remove_dir_all(&staging);
            // Another run published the same version meanwhile.
            if !folder.is_dir() {
                return Err(crate::error::Error::io(&folder, e));
            }
        }
    }
    point(dir, name, &target)?;
    remove_versions(dir, name, Some(&target))
}

/// Makes `dir/name` a link to `target`, atomically.
#[cfg(unix)]
fn point(dir: &Path, name: &str, target: &str) -> Result<()> {
    let link = dir.join(name);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(target)) {
        return Ok(());
    }
    let staging = dir.join(format!(".{name}.link.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(target, &staging).at(&staging)?;
    std::fs::rename(&staging, &link).at(&link)
}

/// Without symbolic links, readers use the versioned folder.
#[cfg(not(unix))]
fn point(_dir: &Path, _name: &str, _target: &str) -> Result<()> {
    Ok(())
}

/// Removes `dir/NAME@*` folders other than `keep` (and the link when nothing is kept).
fn remove_versions(dir: &Path, name: &str, keep: Option<&str>) -> Result<()> {
    let prefix = format!("{name}@");
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if entry_name.starts_with(&prefix) && Some(entry_name.as_str()) != keep {
            std::fs::remove_dir_all(entry.path()).at(entry.path())?;
        }
    }
    if keep.is_none() {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).at(&link)?;
        }
    }
    Ok(())
}
