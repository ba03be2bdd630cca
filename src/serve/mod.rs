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
//! start and asked of every request; requests another site's page makes are refused (see
//! [`http::guard`]); every page is written through one escaping path ([`html::Html`]) and
//! served with a Content-Security-Policy that allows no inline script and no framing; every
//! query a request starts has a deadline and a memory bound ([`Limits`]); request bodies,
//! header reads and connections are bounded; only the workspace's rows and the thumbnails made
//! of them are served, named by node, row id, column or digest — never by a path.

mod calibration;
mod html;
mod http;
mod pages;
mod thumbs;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

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
    /// `--var` overrides of the DAG's `[vars]`.
    pub vars: Vec<crate::dag::VarOverride>,
    /// The device the outputs were computed on (`--device`): part of model nodes' fingerprints.
    pub device: unoflow_api::Device,
    pub host: IpAddr,
    pub port: u16,
    /// The token to require; made up when the address is not loopback and none is given.
    pub token: Option<String>,
    pub limits: Limits,
}

/// What one request may cost the server.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Seconds a query a page starts may run (its `WHERE`, `ORDER BY`, a row, a calibration)
    /// before it is cancelled.
    #[arg(long, default_value_t = 20, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub query_timeout: u64,
    /// Memory one query may hold, in MiB (beyond it the query fails, it does not spill).
    #[arg(long, default_value_t = 512, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub query_memory: u64,
    /// Queries that run at once; others wait their turn (within their deadline).
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u64).range(1..1024))]
    pub max_queries: u64,
    /// Open connections at most; more wait to be accepted.
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u64).range(1..65536))]
    pub max_connections: u64,
    /// Seconds a client has to send a request's headers before its connection is closed.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
}

/// The bounds every query a request starts runs under.
#[derive(Debug)]
pub(crate) struct QueryBounds {
    pub deadline: Duration,
    pub memory: usize,
    /// One permit per query running.
    pub running: tokio::sync::Semaphore,
}

/// The largest request body (a label is well under 1 KB).
const MAX_BODY: usize = 16 * 1024;

/// The server's state, shared by every request.
#[derive(Debug)]
pub(crate) struct App {
    dag_path: Option<PathBuf>,
    workspace_arg: Option<String>,
    /// The `--var`s the DAG is loaded with, each time it is.
    vars: Vec<dag::VarOverride>,
    /// The device the DAG is loaded for (its fingerprints).
    device: unoflow_api::Device,
    location: Location,
    registry: Registry,
    token: Option<String>,
    thumbs: thumbs::Thumbnails,
    /// Where the server listens, for the `Host` check.
    bound: OnceLock<SocketAddr>,
    queries: QueryBounds,
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
        let options = dag::LoadOptions { device: self.device, ..dag::LoadOptions::new(self.workspace_arg.as_deref(), &self.vars) };
        let dag = Arc::new(dag::load_with(path, options, &self.registry).await?);
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

    pub(crate) fn queries(&self) -> &QueryBounds {
        &self.queries
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
        .layer(axum::middleware::map_response(http::with_safety_headers))
        .with_state(app)
}

/// Runs the server until the process is stopped.
pub async fn serve(options: ServeOptions, registry: Registry) -> Result<i32> {
    let (location, dag_path) = match (&options.dag, &options.workspace) {
        (Some(path), w) => {
            (dag::load_with(path, dag::LoadOptions::new(w.as_deref(), &options.vars), &registry).await?.workspace, Some(path.clone()))
        }
        (None, Some(w)) => (Location::parse(w, &std::path::absolute(".").map_err(|e| Error::io(".", e))?)?, None),
        (None, None) => return Err(Error::Usage("say what to serve: --dag DAG or --workspace DIR|URL".into())),
    };
    let workspace = Workspace::open_existing(&location)?
        .ok_or_else(|| Error::Usage(format!("{location} is not a unoflow workspace yet: run a DAG first (`unoflow run DAG`)")))?;
    // Without a DAG the pages show the nodes the index names: a workspace several DAGs wrote is
    // refused now, as `sql --workspace` refuses it, rather than on every page.
    if dag_path.is_none() {
        Catalog::of_workspace(&location)?;
    }
    let token = match (&options.token, options.host.is_loopback()) {
        (Some(t), _) if t.len() < 16 => return Err(Error::Usage("--token: use at least 16 characters".into())),
        (Some(t), _) => Some(t.clone()),
        (None, true) => None,
        (None, false) => Some(http::new_token()?),
    };
    let limits = options.limits;
    let app = Arc::new(App {
        dag_path,
        workspace_arg: options.workspace.clone(),
        vars: options.vars.clone(),
        device: options.device,
        location: location.clone(),
        registry,
        token: token.clone(),
        thumbs: thumbs::Thumbnails::new(workspace.thumbnail_dir()),
        bound: OnceLock::new(),
        queries: QueryBounds {
            deadline: Duration::from_secs(limits.query_timeout),
            memory: usize::try_from(limits.query_memory.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
            running: tokio::sync::Semaphore::new(limits.max_queries as usize),
        },
        dag_cache: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind((options.host, options.port))
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}:{}: {e} (pick another --port)", options.host, options.port)))?;
    let bound = listener.local_addr().map_err(|e| Error::io("<socket>", e))?;
    let _ = app.bound.set(bound);
    let query = token.as_ref().map(|t| format!("?token={t}")).unwrap_or_default();
    // Print errors are ignored: a closed standard output (`unoflow serve | head -2`) must not
    // stop the server, whose work is serving (`println!` would panic); nor mark standard output
    // closed (`cli::output`), which would silence a later error of the server.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "serving workspace {location}");
    for host in link_hosts(bound.ip()) {
        let _ = writeln!(out, "open http://{}/{query}", http::authority(&host, bound.port()));
    }
    if token.is_some() {
        let _ = writeln!(out, "(every request needs the token: it is in the link above, and kept in a cookie once opened)");
    }
    let _ = out.flush();
    accept(listener, router(app), &limits).await
}

/// The hosts to print links for: the address listened on, or for an unspecified one
/// (`0.0.0.0`, `::`), which a browser cannot open, this machine's loopback address and name.
fn link_hosts(ip: IpAddr) -> Vec<String> {
    if !ip.is_unspecified() {
        return vec![http::host_text(ip)];
    }
    let loopback = if ip.is_ipv4() { "127.0.0.1" } else { "[::1]" };
    let mut hosts = vec![loopback.to_string()];
    if let Some(name) = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()) {
        hosts.push(name);
    }
    hosts
}

/// Serves connections until the process is stopped: at most `--max-connections` at once (the
/// others wait in the listen queue), each closed when its client takes longer than
/// `--header-timeout` to send a request's headers (idle keep-alive connections included).
async fn accept(listener: tokio::net::TcpListener, router: Router, limits: &Limits) -> Result<i32> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections as usize));
    let header_timeout = Duration::from_secs(limits.header_timeout);
    loop {
        let permit = Arc::clone(&open).acquire_owned().await.map_err(|_| Error::Internal("the connection limit closed".into()))?;
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // A connection reset before it was accepted, or descriptors exhausted for a moment:
            // not the server's end.
            Err(e) => {
                eprintln!("warning: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            // A client that went away or timed out is not an error of the server's.
            let _ = connection.await;
            drop(permit);
        });
    }
}
