//! Errors as HTTP answers, the guard every request passes (the `Host` check, requests from
//! other sites, the token), and the headers every answer carries.

use std::sync::Arc;

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{self, IntoResponse, Response};

use super::App;
use super::html::{Html, html, page};
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

    /// The server cannot answer now (a query past its deadline): try again, or ask for less.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into() }
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
        let mut body = Html::new();
        html!(&mut body; "<h1>" {self.status.as_u16()} " " {title} "</h1><p class=\"error\">" {self.message} "</p>");
        (self.status, response::Html(page(title, &body))).into_response()
    }
}

/// The answer to a path no route knows.
pub async fn not_found_page() -> HttpError {
    HttpError::not_found("no such page")
}

/// The cookie that keeps the token once a link with it was opened.
const COOKIE: &str = "unoflow_token";

/// Checks every request: the `Host` it names (on loopback), where it comes from, then the
/// token (when one is set).
pub async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(bound) = app.bound.get().filter(|b| b.ip().is_loopback()) {
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !host_allowed(host, bound.ip(), bound.port()) {
            let link = authority(&host_text(bound.ip()), bound.port());
            return (StatusCode::FORBIDDEN, format!("this server answers requests for {link}, 127.0.0.1 or localhost only\n"))
                .into_response();
        }
    }
    if let Some(why) = foreign(&request) {
        return (StatusCode::FORBIDDEN, format!("{why}: open the page from its own address instead\n")).into_response();
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

/// An IP address as the host part of a URL (`[…]` around IPv6).
pub fn host_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    }
}

/// `host:port`, or `host` alone on port 80 (as browsers write the `Host` header).
pub fn authority(host: &str, port: u16) -> String {
    if port == 80 { host.to_string() } else { format!("{host}:{port}") }
}

/// Whether a `Host` header names this loopback server: the address it listens on, or
/// 127.0.0.1, localhost or [::1], with its port (which browsers leave out for port 80). Any
/// other name may be a DNS-rebinding page's.
fn host_allowed(host: &str, ip: IpAddr, port: u16) -> bool {
    let names = [host_text(ip), "127.0.0.1".into(), "localhost".into(), "[::1]".into()];
    names.iter().any(|name| {
        let with_port = format!("{name}:{port}");
        host.eq_ignore_ascii_case(&with_port) || (port == 80 && host.eq_ignore_ascii_case(name))
    })
}

/// Why a request that another site's page made is refused, if it is one: a page elsewhere
/// must not start queries here or act for the reader (an `<img>` or a hidden frame whose
/// address holds a `WHERE`, a form, a script's `fetch`). Browsers say where a request comes
/// from in `Sec-Fetch-Site` (and in `Origin` for anything but a plain navigation); a link
/// followed from elsewhere may still open a page in the window, but with nothing in its query
/// string but the layout and the token. Programs (curl, scripts) send neither header and are
/// not affected.
fn foreign(request: &Request) -> Option<&'static str> {
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|h| h.to_str().ok());
    if let (Some(origin), Some(host)) = (header("origin"), header("host")) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin != "null" && !origin_host.eq_ignore_ascii_case(host) {
            return Some("a request from another site's page");
        }
    }
    let site = header("sec-fetch-site")?;
    if matches!(site, "same-origin" | "none") {
        return None;
    }
    // A frame navigates too (`Sec-Fetch-Dest: iframe`): only the window's own document counts.
    let navigation = header("sec-fetch-mode") == Some("navigate")
        && header("sec-fetch-dest").is_none_or(|d| d == "document")
        && request.method() == Method::GET;
    let queries = request
        .uri()
        .query()
        .is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| !matches!(k.as_ref(), "view" | "token") && !v.is_empty()));
    match (navigation, queries) {
        (true, false) => None,
        (true, true) => Some("a link from another site that carries a query (WHERE, ORDER BY, a page, a column)"),
        (false, _) => Some("a request from another site's page"),
    }
}

/// What every answer carries: no script but the page's own file, nothing from elsewhere, no
/// framing by other pages (clickjacking), no type sniffing, and no `Referer` (a link's token
/// must not leak to the sites the page links to).
pub async fn with_safety_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
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
    fn hosts_are_the_address_listened_on_or_loopback_names_with_the_port() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(host_allowed("127.0.0.2:8787", ip, 8787));
        assert!(host_allowed("LOCALHOST:8787", ip, 8787));
        assert!(host_allowed("[::1]:8787", ip, 8787));
        assert!(!host_allowed("127.0.0.2", ip, 8787), "the port is part of the name off port 80");
        assert!(!host_allowed("evil.example:8787", ip, 8787));
        assert!(host_allowed("127.0.0.1", "127.0.0.1".parse().unwrap(), 80));
        assert!(host_allowed("localhost:80", "127.0.0.1".parse().unwrap(), 80));
        assert!(!host_allowed("evil.example", "127.0.0.1".parse().unwrap(), 80));
        assert_eq!(authority("[::1]", 80), "[::1]");
        assert_eq!(authority("127.0.0.1", 8787), "127.0.0.1:8787");
    }

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
