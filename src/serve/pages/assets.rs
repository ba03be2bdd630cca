//! Files the pages use: the script and stylesheet (built into the binary), and thumbnails
//! from the cache.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::serve::App;
use crate::serve::http::HttpError;

const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// `GET /static/FILE`: one of the two files above; any other name is not found.
pub async fn asset(Path(file): Path<String>) -> Result<Response, HttpError> {
    let (body, kind) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return Err(HttpError::not_found(format!("no file `{file}`"))),
    };
    Ok(([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}

/// `GET /thumb/DIGEST`: a thumbnail a page made.
pub async fn thumb(State(app): State<Arc<App>>, Path(digest): Path<String>) -> Result<Response, HttpError> {
    let path = app.thumbs().file(&digest).ok_or_else(|| HttpError::not_found(format!("no thumbnail `{digest}`")))?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| HttpError::not_found(format!("thumbnail `{digest}`: {e}")))?;
    // A digest names its content forever.
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "private, max-age=31536000, immutable")], bytes).into_response())
}
