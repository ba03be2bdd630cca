//! A client for the OpenAI-compatible chat completions API (`POST {endpoint}/chat/completions`),
//! which vLLM, SGLang, llama.cpp's server, Ollama and OpenAI serve.
//!
//! Requests are retried with exponential backoff on 408, 429, 5xx, timeouts and connection
//! errors (a 429's `Retry-After` is honoured); other 4xx answers are final. Successful answers
//! are cached on disk, keyed by a digest of the whole request body (model, messages with their
//! images, sampling parameters), so a rerun sends no request it has an answer for.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// Why a request gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum VlmError {
    #[error("HTTP {status} from {url}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: the answer is not a chat completion ({message}): {body}")]
    Malformed { url: String, message: String, body: String },
}

impl VlmError {
    /// Whether trying again may help.
    fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Transport { .. } => true,
            Self::Malformed { .. } => false,
        }
    }
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL up to and including the API version, e.g. `http://127.0.0.1:8000/v1`.
    pub endpoint: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub max_retries: u32,
    /// The first backoff; it doubles per retry, up to 30 s.
    pub backoff: Duration,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Where answers are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

/// One chat completion: the answer text and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub cached: bool,
}

/// A chat completions client shared by a node's worker threads.
#[derive(Debug)]
pub struct ChatClient {
    config: ClientConfig,
    agent: ureq::Agent,
    url: String,
    /// Cleared when the server rejects `response_format` (llama.cpp builds, older vLLM).
    structured_output: AtomicBool,
    /// Requests sent (not counting cache hits), for the benchmark and the tests.
    pub requests: AtomicU64,
}

impl ChatClient {
    pub fn new(config: ClientConfig) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(config.timeout).build();
        let url = format!("{}/chat/completions", config.endpoint.trim_end_matches('/'));
        Self { config, agent, url, structured_output: AtomicBool::new(true), requests: AtomicU64::new(0) }
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// The answer to `messages`; `schema` asks for JSON-schema structured output where the
    /// server accepts it (the caller parses tolerantly either way).
    pub fn complete(&self, messages: &[Value], schema: Option<&Value>) -> Result<Completion, VlmError> {
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        });
        if let Some(schema) = schema.filter(|_| self.structured_output.load(Ordering::Relaxed)) {
            body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}});
        }
        let text = body.to_string();
        let key = blake3::hash(text.as_bytes()).to_hex().to_string();
        if let Some(content) = self.cached(&key) {
            return Ok(Completion { content, cached: true });
        }
        match self.send_with_retries(&text) {
            Err(VlmError::Status { status: 400, body: reason, .. })
                if body.get("response_format").is_some() && mentions_response_format(&reason) =>
            {
                self.structured_output.store(false, Ordering::Relaxed);
                self.complete(messages, None)
            }
            Err(e) => Err(e),
            Ok(answer) => {
                let content = self.content_of(&answer)?;
                self.store(&key, &content);
                Ok(Completion { content, cached: false })
            }
        }
    }

    fn send_with_retries(&self, body: &str) -> Result<String, VlmError> {
        let mut attempt = 0;
        loop {
            match self.send(body) {
                Ok(answer) => return Ok(answer),
                Err((e, retry_after)) if e.is_transient() && attempt < self.config.max_retries => {
                    let backoff = self.config.backoff.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(30));
                    std::thread::sleep(retry_after.unwrap_or(backoff));
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One request; on failure, the error and the server's `Retry-After`.
    fn send(&self, body: &str) -> Result<String, (VlmError, Option<Duration>)> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.agent.post(&self.url).set("Content-Type", "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let url = || self.url.clone();
        match request.send_string(body) {
            Ok(response) => response.into_string().map_err(|e| (VlmError::Transport { url: url(), message: e.to_string() }, None)),
            Err(ureq::Error::Status(status, response)) => {
                let retry_after = response
                    .header("Retry-After")
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
                let body = response.into_string().unwrap_or_default();
                Err((VlmError::Status { url: url(), status, body: clip(&body, 500) }, retry_after))
            }
            Err(ureq::Error::Transport(t)) => Err((VlmError::Transport { url: url(), message: t.to_string() }, None)),
        }
    }

    /// `choices[0].message.content` (a string, or text parts joined).
    fn content_of(&self, answer: &str) -> Result<String, VlmError> {
        let malformed = |message: &str| VlmError::Malformed { url: self.url.clone(), message: message.into(), body: clip(answer, 300) };
        let value: Value = serde_json::from_str(answer).map_err(|e| malformed(&format!("not JSON: {e}")))?;
        let content = value.pointer("/choices/0/message/content").ok_or_else(|| malformed("no choices[0].message.content"))?;
        match content {
            Value::String(s) => Ok(s.clone()),
            Value::Array(parts) => Ok(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")),
            _ => Err(malformed("content is neither text nor text parts")),
        }
    }

    fn cache_path(&self, key: &str) -> Option<PathBuf> {
        self.config.cache_dir.as_ref().map(|dir| dir.join("vlm").join(&key[..2]).join(format!("{key}.json")))
    }

    fn cached(&self, key: &str) -> Option<String> {
        let bytes = std::fs::read(self.cache_path(key)?).ok()?;
        let value: Value = serde_json::from_slice(&bytes).ok()?;
        value.get("content")?.as_str().map(str::to_string)
    }

    /// Best effort: a cache that cannot be written costs requests on the next run, not this one.
    fn store(&self, key: &str, content: &str) {
        let Some(path) = self.cache_path(key) else { return };
        let Some(dir) = path.parent() else { return };
        let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, json!({"model": self.config.model, "content": content}).to_string()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

fn mentions_response_format(body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    body.contains("response_format") || body.contains("json_schema")
}

/// At most `n` characters of `s`, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

/// A `data:` URL for image bytes (PNG, JPEG or WebP as they are).
pub fn data_url(bytes: &[u8]) -> String {
    use base64::Engine;
    let mime = match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xFF, 0xD8, ..] => "image/jpeg",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        _ => "application/octet-stream",
    };
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}
