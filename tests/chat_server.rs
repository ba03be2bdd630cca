//! A chat completions server on 127.0.0.1 for the VLM operators' tests: it records every
//! request body and answers as a scenario function says (good answers, broken JSON, 429, 500,
//! a stall past the client's timeout).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a chat completion whose message content is this text.
    Content(String),
    /// This status with a short error body and, for 429, `Retry-After: 0`.
    Status(u16),
    /// 400 with this error message (a request the server does not accept).
    BadRequest(&'static str),
    /// Wait this long, then answer `Content("late")` (the client will have given up).
    Stall(Duration),
}

type Scenario = dyn Fn(&Value, usize) -> Reply + Send + Sync;

/// A running server; it stops with the test process.
pub struct ChatServer {
    pub url: String,
    requests: Arc<Mutex<Log>>,
}

/// What the server keeps of the requests it saw.
#[derive(Default)]
struct Log {
    /// Whether to keep bodies (tests) or not (benchmarks, where they would pile up).
    keep: bool,
    bodies: Vec<Value>,
    /// How often each body (as text) was seen.
    seen: std::collections::HashMap<String, usize>,
}

impl ChatServer {
    /// Starts a server; `scenario(body, n)` decides the answer to a request whose body is
    /// `body` and whose identical body was seen `n` times before.
    pub fn start(scenario: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static) -> Self {
        Self::serve_with(scenario, true)
    }

    /// A server that keeps no request bodies (`seen` is always 0), for benchmarks.
    #[allow(dead_code)] // used by benches/curation.rs, which includes this file
    pub fn start_unlogged(scenario: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static) -> Self {
        Self::serve_with(scenario, false)
    }

    fn serve_with(scenario: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static, keep: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Log { keep, ..Log::default() }));
        let scenario: Arc<Scenario> = Arc::new(scenario);
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, scenario) = (Arc::clone(&log), Arc::clone(&scenario));
                std::thread::spawn(move || serve(stream, &log, scenario.as_ref()));
            }
        });
        Self { url, requests }
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().bodies.clone()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Log>, scenario: &Scenario) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let request_line = line.trim().to_string();
    let mut length = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let mut stream = stream;
    if request_line != "POST /v1/chat/completions HTTP/1.1" {
        let _ = respond(&mut stream, 404, &[], "{\"error\": \"not found\"}");
        return;
    }
    let text = String::from_utf8(body).expect("the request body is UTF-8");
    let body: Value = serde_json::from_str(&text).expect("the request body is JSON");
    let seen = {
        let mut log = log.lock().unwrap();
        if log.keep {
            log.bodies.push(body.clone());
            let count = log.seen.entry(text).or_default();
            *count += 1;
            *count - 1
        } else {
            0
        }
    };
    let _ = match scenario(&body, seen) {
        Reply::Content(text) => {
            let answer = serde_json::json!({
                "id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            });
            respond(&mut stream, 200, &[], &answer.to_string())
        }
        Reply::Status(429) => respond(&mut stream, 429, &[("Retry-After", "0")], "{\"error\": \"rate limited\"}"),
        Reply::Status(code) => respond(&mut stream, code, &[], "{\"error\": \"server error\"}"),
        Reply::BadRequest(message) => respond(&mut stream, 400, &[], &serde_json::json!({ "error": message }).to_string()),
        Reply::Stall(d) => {
            std::thread::sleep(d);
            respond(&mut stream, 200, &[], "{}")
        }
    };
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &str) -> std::io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// The text of the first user message (where the operators name the subject).
pub fn first_user_text(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let first = messages.iter().find(|m| m["role"] == "user").cloned().unwrap_or_default();
    first["content"].as_array().into_iter().flatten().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" ")
}
