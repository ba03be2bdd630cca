//! Inputs by URL: `read` paths and model folders on object storage (`s3://`, `gs://`, `az://`)
//! or one file on a web server (`https://`).
//!
//! A remote input enters fingerprints by its store's listing ([`Listing::digest`]: names,
//! sizes, ETags), so `validate` and `plan` download nothing. What an operator reads is a local
//! copy from the per-host cache ([`Cache`]): fetched once per host, resumed after a kill,
//! checked, and laid out as the remote tree, so loaders read it as any local folder.
//! Credentials come from the environment, as for workspaces on the same stores.

mod cache;
mod listing;
mod url;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use cache::Cache;
pub use listing::{Entry, Listing};
pub use url::RemoteUrl;

use crate::error::Result;

/// How long a listing is reused within a process: `validate`, `plan` and `run` of one command
/// list each input once, and a long-lived process (`serve`, a worker) still sees changes.
const LISTING_REUSE: Duration = Duration::from_secs(60);

/// The listing of `url`, read at most once a minute by this process.
pub fn listing(url: &RemoteUrl) -> Result<Arc<Listing>> {
    /// Each URL's listing and when it was read.
    type Listings = HashMap<String, (Instant, Arc<Listing>)>;
    static LISTINGS: LazyLock<Mutex<Listings>> = LazyLock::new(Default::default);
    if let Some((at, listing)) = LISTINGS.lock().unwrap_or_else(PoisonError::into_inner).get(url.as_str())
        && at.elapsed() < LISTING_REUSE
    {
        return Ok(Arc::clone(listing));
    }
    let listing = Arc::new(Listing::read(url)?);
    LISTINGS.lock().unwrap_or_else(PoisonError::into_inner).insert(url.as_str().to_string(), (Instant::now(), Arc::clone(&listing)));
    Ok(listing)
}

/// A local copy of `url` from this host's cache, fetched if need be: a folder, or the file a URL
/// naming one object names. Blocking (downloads); checked once per process.
pub fn local_copy(url: &RemoteUrl) -> Result<PathBuf> {
    static COPIES: LazyLock<Mutex<HashMap<String, PathBuf>>> = LazyLock::new(Default::default);
    let listing = listing(url)?;
    let key = format!("{}\n{}", url, listing.digest());
    if let Some(path) = COPIES.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
        return Ok(path.clone());
    }
    let path = Cache::default().local_copy(&listing)?;
    COPIES.lock().unwrap_or_else(PoisonError::into_inner).insert(key, path.clone());
    Ok(path)
}

/// The local path of a path parameter's value: a URL's cached copy (fetched if need be), else
/// the path itself.
pub fn local_path(value: &str) -> Result<PathBuf> {
    match RemoteUrl::recognise(value) {
        Some(url) => local_copy(&url?),
        None => Ok(PathBuf::from(value)),
    }
}
