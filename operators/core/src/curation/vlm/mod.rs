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
use crate::params::ParamType;
use crate::{OpError, Result, image_io};
use client::{ChatClient, ClientConfig, data_url};

crate::params! {
    /// How every VLM operator reaches its server; the operators' specs follow their own.
    pub struct ConnectionParams {
        /// API base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, llama.cpp, Ollama)
        pub endpoint: String = required(ParamType::Str).not_fingerprinted(),
        /// the model name the server knows (e.g. Qwen/Qwen2.5-VL-72B-Instruct)
        pub model: String = required(ParamType::Str),
        /// environment variable holding the API key (unset: no Authorization header)
        pub api_key_env: String = optional(ParamType::Str, "OPENAI_API_KEY").not_fingerprinted(),
        /// requests in flight per node
        pub concurrency: usize = optional(ParamType::int(1, 1024), 8).not_fingerprinted(),
        /// per-request timeout
        pub timeout_s: f64 = optional(ParamType::float(0.001, 3600.0), 120.0).not_fingerprinted(),
        /// retries on 429, 5xx and timeouts
        pub max_retries: u32 = optional(ParamType::int(0, 20), 4).not_fingerprinted(),
        /// first retry delay; doubles per retry
        pub backoff_s: f64 = optional(ParamType::float(0.0, 60.0), 1.0).not_fingerprinted(),
        /// sampling temperature
        pub temperature: f64 = optional(ParamType::float(0.0, 2.0), 0.0),
        /// answer length limit per round
        pub max_tokens: u32 = optional(ParamType::int(1, 1 << 20), 2048),
    }
}

crate::params! {
    /// How the VLM operators that send images (`vlm_score`, `vlm_detect`) size them; their specs
    /// end with it.
    pub struct ImageSendParams {
        /// downscale images to this long side before sending (0: as they are)
        pub image_max_side: u32 = optional(ParamType::int(0, 16384), 0),
    }
}

impl ConnectionParams {
    /// The endpoint, checked: an `http://` or `https://` URL. The operators check it when they
    /// are configured, so validation reports a bad one.
    pub fn endpoint(&self) -> Result<String> {
        let endpoint = self.endpoint.trim().to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(OpError::Param {
                name: "endpoint".into(),
                message: format!("{endpoint:?} is not an http:// or https:// URL (e.g. \"http://{endpoint}/v1\")"),
            });
        }
        Ok(endpoint)
    }

    /// The client these parameters describe.
    pub fn client(&self, env: &Environment) -> Result<ChatClient> {
        let endpoint = self.endpoint()?;
        let api_key = std::env::var(&self.api_key_env).ok().filter(|k| !k.is_empty());
        Ok(ChatClient::new(ClientConfig {
            endpoint,
            model: self.model.clone(),
            api_key,
            timeout: Duration::from_secs_f64(self.timeout_s),
            max_retries: self.max_retries,
            backoff: Duration::from_secs_f64(self.backoff_s),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            cache_dir: env.cache_dir.clone(),
        }))
    }
}

/// An image as the `image_url` content part of a chat message, downscaled to `max_side` (0: as
/// it is; images that are not PNG, JPEG or WebP are re-encoded as PNG); one of more than
/// `max_pixels` is refused rather than decoded.
pub fn image_part(bytes: &[u8], max_side: u32, max_pixels: u64) -> std::result::Result<serde_json::Value, String> {
    let known = bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xFF, 0xD8]) || (bytes.len() > 12 && &bytes[8..12] == b"WEBP");
    let url = if max_side == 0 && known {
        data_url(bytes)
    } else {
        let img = image_io::decode(bytes, max_pixels)?;
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
