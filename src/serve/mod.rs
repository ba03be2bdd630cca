//! `unoflow serve`: the review page — the DAG and its states, any node's rows as a paged grid
//! or as pairs with thumbnails, rows with their lineage, error tables, run history, and
//! accept / reject labels that calibrate the filters' thresholds.
//!
//! HTML is rendered here, on the server; `assets/app.js` adds keys and live updates and nothing
//! is fetched from elsewhere. Every table read is a paged DataFusion query through the same
//! catalog and read-only guard as `unoflow sql`, so memory does not grow with the tables.
//!
//! Safety: loopback by default, with the `Host` header checked (a page elsewhere cannot reach
//! the server through DNS rebinding); any other address needs a token, printed in the URL at
//! start and asked of every request; request bodies are bounded; only the workspace's rows and
//! the thumbnails made of them are served, named by node, row id, column or digest — never by
//! a path.

mod calibration;
mod html;
mod http;
mod pages;
mod thumbs;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
pub use http::HttpError;

use crate::catalog::Catalog;
use crate::dag::{self, Dag};
use crate::error::{Error, Result};
use crate::ops::Registry;
use crate::workspace::{Location, Workspace};

/// What `unoflow serve` was asked.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub dag: Option<PathBuf>,
    pub workspace: Option<String>,
    pub host: IpAddr,
    pub port: u16,
    /// The token to require; made up when the address is not loopback and none is given.
    pub token: Option<String>,
}

/// The largest request body (a label is well under 1 KB).
const MAX_BODY: usize = 16 * 1024;

/// The server's state, shared by every request.
#[derive(Debug)]
pub(crate) struct App {
    dag_path: Option<PathBuf>,
    workspace_arg: Option<String>,
    location: Location,
    registry: Registry,
    token: Option<String>,
    thumbs: thumbs::Thumbnails,
    /// Where the server listens, for the `Host` check.
    bound: OnceLock<SocketAddr>,
    dag_cache: Mutex<Option<(SystemTime, Arc<Dag>)>>,
}

impl App {
    /// The DAG, loaded again when its file changed.
    pub(crate) async fn dag(&self) -> Result<Option<Arc<Dag>>> {
        let Some(path) = &self.dag_path else { return Ok(None) };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).map_err(|e| Error::io(path, e))?;
        if let Some((at, dag)) = self.dag_cache.lock().map_err(poisoned)?.as_ref()
            && *at == modified
        {
            return Ok(Some(Arc::clone(dag)));
        }
        let dag = Arc::new(dag::load(path, self.workspace_arg.as_deref(), &self.registry).await?);
        *self.dag_cache.lock().map_err(poisoned)? = Some((modified, Arc::clone(&dag)));
        Ok(Some(dag))
    }

    /// The node outputs: the DAG's current ones, or those the workspace's index names. Read
    /// for every request (a few small manifests; the DAG's fingerprints are kept with the DAG):
    /// a rerun replaces parts, and a page must never name files that are gone.
    pub(crate) async fn catalog(&self) -> Result<Catalog> {
        match self.dag().await? {
            Some(dag) => Catalog::of_dag(&dag),
            None => Catalog::of_workspace(&self.location),
        }
    }

    pub(crate) fn workspace(&self) -> Result<Workspace> {
        Workspace::open(&self.location)
    }

    pub(crate) fn thumbs(&self) -> &thumbs::Thumbnails {
        &self.thumbs
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Internal("a request panicked while holding the server's cache".into())
}

/// The routes.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::dag::page))
        .route("/api/dag", get(pages::dag::json))
        .route("/runs", get(pages::runs::page))
        .route("/node/{name}", get(pages::table::rows))
        .route("/node/{name}/errors", get(pages::table::errors))
        .route("/node/{name}/row/{row_id}", get(pages::row::page))
        .route("/node/{name}/calibrate", get(pages::calibrate::page))
        .route("/image/{name}/{row_id}/{column}", get(pages::row::image))
        .route("/thumb/{digest}", get(pages::assets::thumb))
        .route("/static/{file}", get(pages::assets::asset))
        .route("/api/labels", post(pages::labels::set))
        .route("/api/labels/{name}", get(pages::labels::list))
        .fallback(http::not_found_page)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app), http::guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Runs the server until the process is stopped.
pub async fn serve(options: ServeOptions, registry: Registry) -> Result<i32> {
    let (location, dag_path) = match (&options.dag, &options.workspace) {
        (Some(path), w) => (dag::load(path, w.as_deref(), &registry).await?.workspace, Some(path.clone())),
        (None, Some(w)) => (Location::parse(w, &std::path::absolute(".").map_err(|e| Error::io(".", e))?), None),
        (None, None) => return Err(Error::Usage("say what to serve: --dag DAG or --workspace DIR|URL".into())),
    };
    let workspace = Workspace::open_existing(&location)?
        .ok_or_else(|| Error::Usage(format!("{location} is not a unoflow workspace yet: run a DAG first (`unoflow run DAG`)")))?;
    let token = match (&options.token, options.host.is_loopback()) {
        (Some(t), _) if t.len() < 16 => return Err(Error::Usage("--token: use at least 16 characters".into())),
        (Some(t), _) => Some(t.clone()),
        (None, true) => None,
        (None, false) => Some(http::new_token()?),
    };
    let app = Arc::new(App {
        dag_path,
        workspace_arg: options.workspace.clone(),
        location: location.clone(),
        registry,
        token: token.clone(),
        thumbs: thumbs::Thumbnails::new(workspace.thumbnail_dir()),
        bound: OnceLock::new(),
        dag_cache: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind((options.host, options.port))
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}:{}: {e} (pick another --port)", options.host, options.port)))?;
    let bound = listener.local_addr().map_err(|e| Error::io("<socket>", e))?;
    let _ = app.bound.set(bound);
    let host = match bound.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let query = token.as_ref().map(|t| format!("?token={t}")).unwrap_or_default();
    println!("serving workspace {location}");
    println!("open http://{host}:{}/{query}", bound.port());
    if token.is_some() {
        println!("(every request needs the token: it is in the link above, and kept in a cookie once opened)");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    axum::serve(listener, router(app)).await.map_err(|e| Error::io("<socket>", e))?;
    Ok(0)
}
