//! Errors as HTTP answers, and the guard every request passes: the `Host` check and the token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use super::App;
use super::html::{escape, page};
use crate::error::Error;

/// An answer other than 200: its status and a message for the reader.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        match &e {
            Error::Usage(_) | Error::Spec(_) => Self::bad_request(e.to_string()),
            Error::Locked(_) => Self { status: StatusCode::CONFLICT, message: e.to_string() },
            _ => Self::internal(e.to_string()),
        }
    }
}

impl From<datafusion::error::DataFusionError> for HttpError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Self::from(Error::from(e))
    }
}

impl From<tokio::task::JoinError> for HttpError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("a request's work panicked: {e}"))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("error");
        let body = format!("<h1>{} {}</h1><p class=\"error\">{}</p>", self.status.as_u16(), escape(title), escape(&self.message));
        (self.status, Html(page(title, &body))).into_response()
    }
}

/// The answer to a path no route knows.
pub async fn not_found_page() -> HttpError {
    HttpError::not_found("no such page")
}

/// The cookie that keeps the token once a link with it was opened.
const COOKIE: &str = "unoflow_token";

/// Checks every request: the `Host` it names (on loopback), then the token (when one is set).
pub async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let bound = app.bound.get().copied();
    if let Some(bound) = bound.filter(|b| b.ip().is_loopback()) {
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let port = bound.port();
        let allowed = [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
        if !allowed.iter().any(|a| a == host) {
            return (StatusCode::FORBIDDEN, format!("this server answers requests for 127.0.0.1:{port} or localhost:{port} only\n"))
                .into_response();
        }
    }
    let Some(token) = app.token.as_deref() else {
        return next.run(request).await;
    };
    let from_query = request
        .uri()
        .query()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()));
    let presented = from_query.clone().or_else(|| token_of(request.headers()));
    if !presented.is_some_and(|p| same(p.as_bytes(), token.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "a token is needed: open the link `unoflow serve` printed\n").into_response();
    }
    let mut response = next.run(request).await;
    if from_query.is_some()
        && let Ok(cookie) = HeaderValue::from_str(&format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The token a request carries in its cookie or `Authorization: Bearer` header.
fn token_of(headers: &HeaderMap) -> Option<String> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
    if let Some(b) = bearer {
        return Some(b.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_string))
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token: 128 bits from the operating system, in hex.
pub fn new_token() -> crate::error::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(|e| Error::io("/dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_cookies_and_headers_and_compared_whole() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b; unoflow_token=abc123; c=d"));
        assert_eq!(token_of(&headers).as_deref(), Some("abc123"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer xyz"));
        assert_eq!(token_of(&headers).as_deref(), Some("xyz"));
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        let t = new_token().unwrap();
        assert_eq!(t.len(), 32);
        assert_ne!(t, new_token().unwrap());
    }
}
