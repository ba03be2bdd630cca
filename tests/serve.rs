//! `unoflow serve`: every page and endpoint over HTTP on a small curation workspace (generated
//! diptychs, split into pairs, scored by DINOv2), and a real browser labelling pairs by keys.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;

use crate::support::Project;

/// A running `unoflow serve`, stopped when dropped.
pub struct Server {
    child: Child,
    /// `http://HOST:PORT`, as printed.
    pub base: String,
    /// The URL it printed (with the token, if any).
    pub url: String,
}

impl Server {
    pub fn start(p: &Project, args: &[&str]) -> Self {
        let mut all = vec!["serve", "--port", "0"];
        all.extend_from_slice(args);
        let mut child = p.spawn(&all);
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("open ") => break line["open ".len()..].to_string(),
                Some(Ok(_)) => continue,
                _ => {
                    let mut err = String::new();
                    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
                    panic!("unoflow serve did not start: {err}");
                }
            }
        };
        // Keep reading so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // `http://HOST:PORT` of the printed link (its first: the loopback one when it prints several).
        let base = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        Self { child, base, url }
    }

    /// GET `path`: the status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        answer(ureq::get(&format!("{}{path}", self.base)).call())
    }

    /// GET `path` as bytes, with the content type.
    pub fn get_bytes(&self, path: &str) -> (u16, String, Vec<u8>) {
        match ureq::get(&format!("{}{path}", self.base)).call() {
            Ok(r) => {
                let kind = r.header("content-type").unwrap_or("").to_string();
                let mut bytes = Vec::new();
                r.into_reader().read_to_end(&mut bytes).unwrap();
                (200, kind, bytes)
            }
            Err(ureq::Error::Status(code, _)) => (code, String::new(), Vec::new()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    pub fn post_json(&self, path: &str, body: &str) -> (u16, String) {
        answer(ureq::post(&format!("{}{path}", self.base)).set("Content-Type", "application/json").send_string(body))
    }

    /// A request written by hand (paths a client library would normalise, odd headers): the
    /// status code.
    pub fn raw(&self, request_line: &str, host: Option<&str>) -> u16 {
        let addr = self.base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        let host = host.unwrap_or(addr);
        write!(stream, "{request_line} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {response:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` percent-encoded for a URL's path segment or query value.
pub fn url(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// A workspace with pairs: 3 subjects (one with a single scene: a failed row), a prompt each and 2 seeds,
/// 64×64 diptychs split into panels, scored by the tiny DINOv2; and 120 numbered rows.
pub fn pair_project() -> Project {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    p.write("companions.txt", "cat\nteapot\n");
    p.write(
        "subjects.jsonl",
        "{\"subject\": \"a red mug\", \"scenes\": [\"a kitchen\", \"a garden\"]}\n\
         {\"subject\": \"a blue lamp\", \"scenes\": [\"a desk\", \"a beach\"]}\n\
         {\"subject\": \"a lone vase\", \"scenes\": [\"a shelf\"]}\n",
    );
    let numbers: String = std::iter::once("n,word\n".to_string()).chain((1..=120).map(|n| format!("{n},w{n}\n"))).collect();
    p.write("numbers.csv", &numbers);
    let dino = root.join("operators/models/fixtures/dinov2/tiny");
    p.dag(&format!(
        r#"[dag]
name = "review"
seed = 7
workspace = "ws"

[nodes.subjects]
op = "read"
path = "subjects.jsonl"
format = "jsonl"

[nodes.prompts]
op = "diptych_prompts"
inputs = ["subjects"]
companions = "companions.txt"
resolutions = ["64x64"]

[nodes.diptychs]
op = "incontext_generate"
inputs = ["prompts"]
steps = 1
seeds_per_prompt = 2

[nodes.pairs]
op = "split_diptych"
inputs = ["diptychs"]

[nodes.dino]
op = "dino_filter"
inputs = ["pairs"]
weights = "{}"
resize = 32
crop = 32
threshold = 0.9995

[nodes.numbers]
op = "read"
path = "numbers.csv"
format = "csv"
"#,
        dino.display()
    ));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    p
}

/// The values of attribute `name` in `html`, in order.
fn attributes(html: &str, name: &str) -> Vec<String> {
    let needle = format!("{name}=\"");
    html.match_indices(&needle).map(|(i, _)| html[i + needle.len()..].split('"').next().unwrap().to_string()).collect()
}

fn sql(p: &Project, query: &str) -> String {
    p.unoflow(&["sql", "--dag", "dag.toml", "--format", "csv", query]).ok().stdout
}

#[test]
fn every_page_and_endpoint_answers_and_labels_reach_sql() {
    let p = pair_project();
    let server = Server::start(&p, &["--dag", "dag.toml"]);
    assert!(server.url.starts_with("http://127.0.0.1:") && !server.url.contains("token"), "{}", server.url);

    // The DAG page: the graph, states, rows; its JSON.
    let (code, home) = server.get("/");
    assert_eq!(code, 200);
    assert!(home.contains("<svg class=\"dag\"") && home.contains("<path class=\"edge\""), "{home}");
    for node in ["subjects", "prompts", "diptychs", "pairs", "dino", "numbers"] {
        assert!(home.contains(&format!("data-state-of=\"{node}\">cached<")), "{node} not cached on the page");
    }
    let dag: Value = serde_json::from_str(&server.get("/api/dag").1).unwrap();
    let dino = dag["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "dino").unwrap();
    assert_eq!(dino["state"], "cached");
    assert_eq!(dino["rows"], 4);
    assert_eq!(dino["inputs"], serde_json::json!(["pairs"]));
    assert!(dino["last_seconds"].as_f64().is_some());

    // Pairs: references beside targets, scores, thumbnails that decode.
    let (code, pairs) = server.get("/node/dino");
    assert_eq!(code, 200);
    let ids = attributes(&pairs, "data-row-id");
    assert_eq!(ids.len(), 4, "{pairs}");
    assert!(pairs.contains("class=\"pair row\"") && pairs.contains("<dt>dino_mean</dt>") && pairs.contains("ref_image"));
    let thumbs: Vec<String> = attributes(&pairs, "src").into_iter().filter(|s| s.starts_with("/thumb/")).collect();
    assert_eq!(thumbs.len(), 8, "a reference and a target per pair");
    let (code, kind, bytes) = server.get_bytes(&thumbs[0]);
    assert_eq!((code, kind.as_str()), (200, "image/jpeg"));
    let img = image::load_from_memory(&bytes).expect("the thumbnail decodes");
    assert!(img.width() > 0 && img.width() <= 256 && img.height() <= 256);
    let (_, grid) = server.get("/node/dino?view=grid");
    assert!(grid.contains("<table class=\"grid\">") && !grid.contains("class=\"pair row\""));

    // Paging, WHERE and ORDER BY; bad and non-SELECT SQL.
    let (_, first) = server.get("/node/numbers");
    assert_eq!(attributes(&first, "data-row-id").len(), 50);
    assert!(first.contains("rel=\"next\"") && !first.contains("rel=\"prev\""));
    let (_, last) = server.get("/node/numbers?page=2");
    assert_eq!(attributes(&last, "data-row-id").len(), 20);
    assert!(last.contains("rows 101–120") && !last.contains("rel=\"next\""));
    let (code, filtered) = server.get("/node/numbers?where=n%20%3E%20100&order=n%20DESC");
    assert_eq!(code, 200);
    assert_eq!(attributes(&filtered, "data-row-id").len(), 20);
    let first_n = filtered.find("<td>120</td>").expect("120 first");
    assert!(first_n < filtered.find("<td>101</td>").unwrap());
    let (code, bad) = server.get("/node/numbers?where=no_such_column%20%3E%201");
    assert_eq!(code, 400);
    assert!(bad.contains("no_such_column"), "DataFusion's message: {bad}");
    let (code, _) = server.get("/node/numbers?order=n%3B%20DELETE%20FROM%20numbers");
    assert_eq!(code, 400);
    let (code, _) = server.get("/node/numbers?where=1%3D1)%20UNION%20ALL%20(COPY%20numbers%20TO%20'x.csv'");
    assert_eq!(code, 400);
    let (code, _) = server.get("/node/numbers?page=abc");
    assert_eq!(code, 400);

    // Unknown nodes, rows, columns, digests; traversal attempts; a foreign Host.
    assert_eq!(server.get("/node/nope").0, 404);
    assert_eq!(server.get("/node/dino/row/ffff").0, 404);
    assert_eq!(server.get(&format!("/image/dino/{}/no_column", ids[0])).0, 404);
    assert_eq!(server.get(&format!("/thumb/{}", "0".repeat(64))).0, 404);
    for path in [
        "/static/..%2f..%2fCargo.toml",
        "/../../etc/passwd",
        "/thumb/..%2f..%2fdag.toml",
        "/static/../../dag.toml",
        "/node/..%2f..%2fdag.toml",
    ] {
        assert_eq!(server.raw(&format!("GET {path}"), None), 404, "{path}");
    }
    assert_eq!(server.raw("GET /", Some("evil.example:80")), 403);

    // A row: every column, the full images, the PNG's parameters, lineage with thumbnails.
    let diptych = sql(&p, "SELECT row_id FROM diptychs ORDER BY row_id LIMIT 1").lines().nth(1).unwrap().to_string();
    let (code, row) = server.get(&format!("/node/diptychs/row/{diptych}"));
    assert_eq!(code, 200);
    assert!(row.contains("<dt>parameters</dt>") && row.contains("&quot;steps&quot;:1"), "{row}");
    let (code, row) = server.get(&format!("/node/dino/row/{}", ids[0]));
    assert_eq!(code, 200);
    for node in ["dino", "pairs", "diptychs", "prompts", "subjects"] {
        assert!(row.contains(&format!("<a href=\"/node/{node}\">{node}</a></b>")), "{node} in the lineage");
    }
    assert!(row.contains("class=\"ancestor\"><img class=\"thumb\""));
    let (code, kind, png) = server.get_bytes(&format!("/image/dino/{}/target_image", ids[0]));
    assert_eq!((code, kind.as_str()), (200, "image/png"));
    assert!(image::load_from_memory(&png).is_ok());

    // Error tables and the runs page.
    let (code, errors) = server.get("/node/prompts/errors");
    assert_eq!(code, 200);
    assert!(errors.contains("has 1 scene(s)"), "{errors}");
    let (code, runs) = server.get("/runs");
    assert_eq!(code, 200);
    assert!(runs.contains("<svg class=\"chart\"") && runs.contains("<rect class=\"bar computed\""), "{runs}");

    // Labels: posted, read back, bounded, seen by SQL, kept through a rerun.
    let label =
        |id: &str, verdict: &str| server.post_json("/api/labels", &format!(r#"{{"node":"dino","row_id":"{id}","label":"{verdict}"}}"#));
    assert_eq!(label(&ids[0], "accept").0, 200);
    assert_eq!(label(&ids[1], "reject").0, 200);
    assert_eq!(label(&ids[1], "accept").0, 200, "a label is replaced");
    assert_eq!(label(&ids[2], "maybe").0, 422);
    assert_eq!(server.post_json("/api/labels", "{not json").0, 400);
    assert_eq!(server.post_json("/api/labels", &format!(r#"{{"node":"nope","row_id":"{}","label":"accept"}}"#, ids[0])).0, 404);
    assert_eq!(server.post_json("/api/labels", r#"{"node":"dino","row_id":"../x","label":"accept"}"#).0, 404);
    // A body over the bound (16 KiB) is refused once the bound is passed: the client sends one
    // byte past it and reads the answer (one that wrote all 40 KB first would find the
    // connection closed under it, as the server reads no more).
    let addr = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    write!(stream, "POST /api/labels HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 40000\r\n\r\n").unwrap();
    stream.write_all(&[b'x'; 16 * 1024 + 1]).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
    let listed: Value = serde_json::from_str(&server.get("/api/labels/dino").1).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let (_, relabelled) = server.get("/node/dino");
    assert!(relabelled.contains(&format!("data-row-id=\"{}\" data-label=\"accept\"", ids[1])));
    let joined = "SELECT count(*) AS n FROM dino d JOIN labels l ON d.row_id = l.row_id WHERE l.label = 'accept'";
    assert_eq!(sql(&p, joined), "n\n2\n");
    p.unoflow(&["run", "dag.toml", "-q", "--force", "dino"]).ok();
    assert_eq!(sql(&p, joined), "n\n2\n", "labels survive a rerun of the node");

    // Calibration: a score column against the labels.
    for (i, id) in ids.iter().enumerate().skip(2) {
        label(id, if i % 2 == 0 { "reject" } else { "accept" });
    }
    let (code, cal) = server.get("/node/dino/calibrate?column=dino_mean");
    assert_eq!(code, 200, "{cal}");
    assert!(cal.contains("data-labels=\"4\"") && cal.contains("data-threshold=") && cal.contains("<polyline class=\"precision\""), "{cal}");
    assert_eq!(server.get("/node/dino/calibrate?column=prompt").0, 400);

    // A DAG's `sql` node joins the labels through a `read` of the node's label file; a new
    // label changes the read's source, so the join is recomputed.
    let dag = std::fs::read_to_string(p.path("dag.toml")).unwrap();
    let extra = r#"
[nodes.labels]
op = "read"
path = "${workspace}/labels/dino.jsonl"
format = "jsonl"

[nodes.accepted]
op = "sql"
inputs = ["dino", "labels"]
query = "SELECT d.row_id, d.dino_mean FROM dino d JOIN labels l ON d.row_id = l.row_id WHERE l.label = 'accept'"
"#;
    p.write("dag.toml", &(dag + extra));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert_eq!(sql(&p, "SELECT count(*) AS n FROM accepted"), "n\n3\n");
    label(&ids[2], "accept");
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert_eq!(sql(&p, "SELECT count(*) AS n FROM accepted"), "n\n4\n");
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let p = pair_project();
    let server = Server::start(&p, &["--dag", "dag.toml", "--host", "0.0.0.0"]);
    let token = server.url.split("?token=").nth(1).expect("the printed URL carries a token").to_string();
    assert_eq!(token.len(), 32);
    assert_eq!(server.get("/").0, 401);
    assert_eq!(server.get("/node/dino").0, 401);
    assert_eq!(server.get("/node/dino?token=wrong").0, 401);
    let opened = ureq::get(&format!("{}/?token={token}", server.base)).call().expect("the link opens");
    let cookie = opened.header("set-cookie").expect("the token is kept in a cookie").split(';').next().unwrap().to_string();
    let with_cookie = ureq::get(&format!("{}/node/dino", server.base)).set("Cookie", &cookie).call().expect("the cookie is enough");
    assert_eq!(with_cookie.status(), 200);
    let bearer = ureq::get(&format!("{}/api/dag", server.base)).set("Authorization", &format!("Bearer {token}")).call();
    assert_eq!(bearer.map(|r| r.status()).ok(), Some(200));
    assert_eq!(answer(ureq::post(&format!("{}/api/labels", server.base)).set("Content-Type", "application/json").send_string("{}")).0, 401);
}

#[test]
fn serve_refuses_what_it_cannot_serve() {
    let p = Project::new();
    let run = p.unoflow(&["serve", "--workspace", "nothing-here"]).expect_code(2);
    assert!(run.stderr.contains("not a unoflow workspace"), "{}", run.stderr);
    let run = p.unoflow(&["serve"]).expect_code(2);
    assert!(run.stderr.contains("--dag DAG or --workspace"), "{}", run.stderr);
}

mod browser {
    //! A real browser (headless Chromium, driven over the DevTools protocol) on the pair view.

    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};
    use tungstenite::stream::MaybeTlsStream;
    use tungstenite::{Message, WebSocket};

    use super::{Server, pair_project, sql};

    /// Where screenshots go (printed by the test).
    fn screenshot_dir() -> std::path::PathBuf {
        std::env::var_os("UNOFLOW_SCREENSHOTS")
            .map(Into::into)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-screenshots"))
    }

    fn find_chromium() -> Option<String> {
        let candidates = std::env::var("UNOFLOW_CHROMIUM")
            .into_iter()
            .chain(["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"].map(String::from));
        candidates
            .into_iter()
            .find(|c| Command::new(c).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()))
    }

    struct Browser {
        child: Child,
        socket: WebSocket<MaybeTlsStream<TcpStream>>,
        next_id: u64,
        /// The messages of the dialogs pages opened (`alert`, `confirm`, `prompt`), each
        /// dismissed at once (after `Page.enable`).
        dialogs: Vec<String>,
        _profile: tempfile::TempDir,
    }

    /// Chromium's program, or `None` after saying loudly that the test did not run (a failure
    /// instead when `UNOFLOW_REQUIRE_BROWSER` is set).
    fn chromium_or_skip() -> Option<String> {
        let found = find_chromium();
        if found.is_none() {
            let required = std::env::var_os("UNOFLOW_REQUIRE_BROWSER").is_some();
            eprintln!(
                "\n!!!! NO BROWSER: the review page's browser test did not run: install Debian's `chromium` (or set UNOFLOW_CHROMIUM) !!!!\n"
            );
            assert!(!required, "UNOFLOW_REQUIRE_BROWSER is set and no Chromium was found");
        }
        found
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Browser {
        fn start(program: &str) -> Self {
            let profile = tempfile::tempdir().unwrap();
            let mut child = Command::new(program)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1400,1000",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("chromium starts");
            let stderr = BufReader::new(child.stderr.take().unwrap());
            let mut lines = stderr.lines();
            let browser_ws = loop {
                match lines.next() {
                    Some(Ok(line)) if line.contains("DevTools listening on ") => {
                        break line.split("DevTools listening on ").nth(1).unwrap().trim().to_string();
                    }
                    Some(Ok(_)) => continue,
                    _ => panic!("chromium did not open its DevTools port"),
                }
            };
            std::thread::spawn(move || for _ in lines {});
            let port = browser_ws.trim_start_matches("ws://").split('/').next().unwrap().to_string();
            let targets: Value =
                serde_json::from_str(&ureq::get(&format!("http://{port}/json/list")).call().unwrap().into_string().unwrap()).unwrap();
            let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
            let (socket, _) = tungstenite::connect(page["webSocketDebuggerUrl"].as_str().unwrap()).expect("DevTools connects");
            Self { child, socket, next_id: 0, dialogs: Vec::new(), _profile: profile }
        }

        /// Sends a DevTools command and waits for its answer (events in between are skipped).
        fn call(&mut self, method: &str, params: Value) -> Value {
            self.next_id += 1;
            let id = self.next_id;
            self.socket.send(Message::Text(json!({"id": id, "method": method, "params": params}).to_string().into())).unwrap();
            loop {
                let message = self.socket.read().expect("DevTools answers");
                let Message::Text(text) = message else { continue };
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if value["method"] == "Page.javascriptDialogOpening" {
                    self.dialogs.push(value["params"]["message"].to_string());
                    self.next_id += 1;
                    let dismiss = json!({"id": self.next_id, "method": "Page.handleJavaScriptDialog", "params": {"accept": false}});
                    self.socket.send(Message::Text(dismiss.to_string().into())).unwrap();
                    continue;
                }
                if value["id"] == id {
                    assert!(value.get("error").is_none(), "{method}: {value}");
                    return value["result"].clone();
                }
            }
        }

        fn eval(&mut self, expression: &str) -> Value {
            let result = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}));
            result["result"]["value"].clone()
        }

        /// Waits until `expression` is true.
        fn wait_for(&mut self, expression: &str, what: &str) {
            let start = Instant::now();
            while self.eval(expression) != Value::Bool(true) {
                assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        fn open(&mut self, url: &str) {
            self.call("Page.navigate", json!({"url": url}));
            // The old document is complete too: wait for the new one at its address.
            let loaded = format!(
                "location.href === {} && document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)",
                json!(url)
            );
            self.wait_for(&loaded, url);
        }

        fn key(&mut self, key: &str) {
            self.call("Input.dispatchKeyEvent", json!({"type": "keyDown", "key": key, "text": key}));
            self.call("Input.dispatchKeyEvent", json!({"type": "keyUp", "key": key}));
        }

        fn screenshot(&mut self, name: &str) -> std::path::PathBuf {
            use base64::Engine;
            let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
            let bytes = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
            let dir = screenshot_dir();
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    #[test]
    fn a_browser_shows_the_pairs_and_labels_them_by_keys() {
        let Some(program) = chromium_or_skip() else { return };
        let p = pair_project();
        let server = Server::start(&p, &["--dag", "dag.toml"]);
        let mut browser = Browser::start(&program);
        browser.open(&format!("{}/node/dino", server.base));
        // The thumbnails rendered: decoded, with the sizes the server made them at.
        let sizes = browser
            .eval("Array.from(document.querySelectorAll('img.thumb')).map(i => [i.naturalWidth, i.naturalHeight, i.width, i.height])");
        let sizes = sizes.as_array().unwrap();
        assert_eq!(sizes.len(), 8, "{sizes:?}");
        for s in sizes {
            assert!(s[0].as_u64().unwrap() > 0 && s[0] == s[2] && s[1] == s[3], "a thumbnail that did not decode: {s}");
        }
        let ids: Vec<String> =
            serde_json::from_value(browser.eval("Array.from(document.querySelectorAll('[data-row-id]')).map(r => r.dataset.rowId)"))
                .unwrap();
        // a: accept the first pair (and move on); j skips the second; r rejects the third.
        browser.key("a");
        browser.wait_for(
            &format!("document.querySelector('[data-row-id=\"{}\"]').dataset.label === 'accept'", ids[0]),
            "the accept to be saved",
        );
        browser.key("j");
        browser.key("r");
        browser.wait_for(
            &format!("document.querySelector('[data-row-id=\"{}\"]').dataset.label === 'reject'", ids[2]),
            "the reject to be saved",
        );
        let pairs_shot = browser.screenshot("pairs.png");
        let labels = sql(&p, "SELECT row_id, label FROM labels ORDER BY label");
        assert_eq!(labels, format!("row_id,label\n{},accept\n{},reject\n", ids[0], ids[2]), "the labels reached the workspace");
        // k goes back; the calibration page plots the two labels.
        browser.key("k");
        browser.key("k");
        browser.key("a");
        browser
            .wait_for(&format!("document.querySelector('[data-row-id=\"{}\"]').dataset.label === 'accept'", ids[1]), "the second accept");
        browser.open(&format!("{}/node/dino/calibrate?column=dino_mean", server.base));
        assert_eq!(browser.eval("document.getElementById('calibration').dataset.labels"), Value::String("3".into()));
        let calibration_shot = browser.screenshot("calibration.png");
        browser.open(&format!("{}/", server.base));
        let dag_shot = browser.screenshot("dag.png");
        eprintln!("screenshots: {} {} {}", pairs_shot.display(), calibration_shot.display(), dag_shot.display());
    }

    #[test]
    fn hostile_names_and_values_open_no_dialog_in_a_browser() {
        let Some(program) = chromium_or_skip() else { return };
        let (p, ids) = crate::serve_safety::hostile_project();
        let server = Server::start(&p, &["--dag", "dag.toml"]);
        for (id, verdict) in [(&ids[0], "accept"), (&ids[1], "reject")] {
            let body = format!(r#"{{"node":"items","row_id":"{id}","label":"{verdict}"}}"#);
            assert_eq!(server.post_json("/api/labels", &body).0, 200);
        }
        let art = sql(&p, "SELECT row_id FROM art ORDER BY n").lines().nth(1).unwrap().to_string();
        let hostile = super::url(crate::serve_safety::HOSTILE);
        let mut browser = Browser::start(&program);
        browser.call("Page.enable", json!({}));
        for path in [
            "/".to_string(),
            "/runs".into(),
            "/node/items?view=grid".into(),
            format!("/node/items/calibrate?column={hostile}"),
            format!("/node/items/row/{}", ids[0]),
            "/node/art".into(),
            format!("/node/art/row/{art}"),
            "/node/photos".into(),
            format!("/node/{hostile}"),
        ] {
            browser.open(&format!("{}{path}", server.base));
            assert_eq!(browser.eval("document.querySelectorAll('script:not([src])').length"), json!(0), "{path}: inline script");
        }
        browser.open(&format!("{}/node/items/calibrate?column={hostile}", server.base));
        let calibration = browser.eval("document.getElementById('calibration').textContent");
        assert!(calibration.as_str().unwrap_or("").contains("<img src=x onerror=alert(1)> >="), "shown as text: {calibration}");
        assert!(browser.dialogs.is_empty(), "pages opened dialogs: {:?}", browser.dialogs);
    }
}

#[test]
fn the_dag_page_follows_a_run() {
    let p = crate::support::sleep_project(12, 700);
    let mut run = p.spawn(&["run", "dag.toml", "-q"]);
    let started = std::time::Instant::now();
    while !p.path("ws/unoflow-workspace.json").exists() {
        assert!(started.elapsed().as_secs() < 20, "the run did not create its workspace");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let server = Server::start(&p, &["--dag", "dag.toml"]);
    let state = |server: &Server| -> (bool, String) {
        let dag: Value = serde_json::from_str(&server.get("/api/dag").1).unwrap();
        let slow = dag["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "slow").unwrap().clone();
        (dag["live"].as_bool().unwrap(), slow["state"].as_str().unwrap().to_string())
    };
    let mut seen_running = false;
    while run.try_wait().unwrap().is_none() {
        seen_running |= state(&server) == (true, "running".to_string());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(run.wait().unwrap().success());
    assert!(seen_running, "the page never showed the node running");
    assert_eq!(state(&server), (false, "cached".to_string()));
}
