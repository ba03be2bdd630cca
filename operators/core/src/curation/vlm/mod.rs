//! Operators that ask a (vision-)language model through the OpenAI-compatible chat API:
//! [`score`] (UNO's chain-of-thought consistency score), [`detect`] (grounding boxes) and
//! [`subjects`] (the taxonomy: subjects in three styles and their scenes).

pub mod client;
pub mod detect;
pub mod parse;
pub mod score;
pub mod subjects;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use image::imageops::FilterType;

use crate::operator::Environment;
use crate::params::{ParamSpec, ParamType, ParamValue, Params};
use crate::{OpError, Result, image_io};
use client::{ChatClient, ClientConfig, data_url};

/// The parameters every VLM operator takes.
pub fn connection_params() -> Vec<ParamSpec> {
    vec![
        ParamSpec::required("endpoint", ParamType::Str, "API base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, llama.cpp, Ollama)")
            .not_fingerprinted(),
        ParamSpec::required("model", ParamType::Str, "the model name the server knows (e.g. Qwen/Qwen2.5-VL-72B-Instruct)"),
        ParamSpec::optional(
            "api_key_env",
            ParamType::Str,
            ParamValue::Str("OPENAI_API_KEY".into()),
            "environment variable holding the API key (unset: no Authorization header)",
        )
        .not_fingerprinted(),
        ParamSpec::optional("concurrency", ParamType::int(1, 1024), ParamValue::Int(8), "requests in flight per node").not_fingerprinted(),
        ParamSpec::optional("timeout_s", ParamType::float(0.001, 3600.0), ParamValue::Float(120.0), "per-request timeout")
            .not_fingerprinted(),
        ParamSpec::optional("max_retries", ParamType::int(0, 20), ParamValue::Int(4), "retries on 429, 5xx and timeouts")
            .not_fingerprinted(),
        ParamSpec::optional("backoff_s", ParamType::float(0.0, 60.0), ParamValue::Float(1.0), "first retry delay; doubles per retry")
            .not_fingerprinted(),
        ParamSpec::optional("temperature", ParamType::float(0.0, 2.0), ParamValue::Float(0.0), "sampling temperature"),
        ParamSpec::optional("max_tokens", ParamType::int(1, 1 << 20), ParamValue::Int(2048), "answer length limit per round"),
        ParamSpec::optional(
            "image_max_side",
            ParamType::int(0, 16384),
            ParamValue::Int(0),
            "downscale images to this long side before sending (0: as they are)",
        ),
    ]
}

/// The endpoint, checked: an `http://` or `https://` URL (validation calls this too).
pub fn endpoint(params: &Params) -> Result<String> {
    let endpoint = params.str("endpoint")?.trim().to_string();
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(OpError::Param {
            name: "endpoint".into(),
            message: format!("{endpoint:?} is not an http:// or https:// URL (e.g. \"http://{endpoint}/v1\")"),
        });
    }
    Ok(endpoint)
}

/// The client a node's parameters describe.
pub fn client(params: &Params, env: &Environment) -> Result<ChatClient> {
    let endpoint = endpoint(params)?;
    let api_key = std::env::var(params.str("api_key_env")?).ok().filter(|k| !k.is_empty());
    Ok(ChatClient::new(ClientConfig {
        endpoint,
        model: params.str("model")?.into(),
        api_key,
        timeout: Duration::from_secs_f64(params.float("timeout_s")?),
        max_retries: params.int("max_retries")? as u32,
        backoff: Duration::from_secs_f64(params.float("backoff_s")?),
        temperature: params.float("temperature")?,
        max_tokens: params.int("max_tokens")? as u32,
        cache_dir: env.cache_dir.clone(),
    }))
}

/// An image as the `image_url` content part of a chat message, downscaled to `max_side` (0: as
/// it is; images that are not PNG, JPEG or WebP are re-encoded as PNG).
pub fn image_part(bytes: &[u8], max_side: u32) -> std::result::Result<serde_json::Value, String> {
    let known = bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xFF, 0xD8]) || (bytes.len() > 12 && &bytes[8..12] == b"WEBP");
    let url = if max_side == 0 && known {
        data_url(bytes)
    } else {
        let img = image_io::decode(bytes)?;
        let img = if max_side > 0 && img.width().max(img.height()) > max_side {
            let (w, h) = image_io::fit_long_side(img.width(), img.height(), max_side);
            img.resize_exact(w, h, FilterType::Lanczos3)
        } else {
            img
        };
        data_url(&image_io::encode_png(&img)?)
    };
    Ok(serde_json::json!({"type": "image_url", "image_url": {"url": url}}))
}

/// `work(i)` for `i` in `0..n` on `workers` threads; results in index order.
pub fn in_parallel<T: Send>(n: usize, workers: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let done = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, n.max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let result = work(i);
                    if let Ok(mut slots) = done.lock() {
                        slots[i] = Some(result);
                    }
                }
            });
        }
    });
    slots.into_iter().map(|s| s.expect("every index is worked once")).collect()
}
