//! `unoflow serve` under a hostile but realistic user: data whose names and values are markup,
//! queries that would take the server's time and memory, requests from other sites, slow
//! clients, and addresses other than the default.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::serve::Server;
use crate::support::Project;

/// Markup that runs a script wherever it is written unescaped (text, attribute, SVG).
pub const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// What must never appear in a page: the start of an element the data tried to inject.
pub const INJECTED: [&str; 4] = ["<img src=x", "<script>alert", "<svg onload", "onerror=alert(1)>"];

/// A PNG whose text chunk holds markup.
fn png_with_text(key: &str, text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 2, 2);
        encoder.set_color(png::ColorType::Rgb);
        encoder.add_text_chunk(key.to_string(), text.to_string()).unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[200; 12]).unwrap();
    }
    bytes
}

/// A workspace whose folder name, column names, values, file names and PNG text chunks are
/// markup; `items` has a labelled, hostile-named score column and a 300,000-character cell.
pub fn hostile_project() -> (Project, Vec<String>) {
    let p = Project::new();
    let long = "x".repeat(300_000);
    p.write(
        "items.jsonl",
        &format!(
            "{{\"n\": 1, \"note\": \"<script>alert(2)</script>\", \"{HOSTILE}\": 0.25}}\n\
             {{\"n\": 2, \"note\": \"{long}\", \"{HOSTILE}\": 0.75}}\n\
             {{\"n\": 3, \"note\": \"\\\"><svg onload=alert(5)>\", \"{HOSTILE}\": 0.5}}\n"
        ),
    );
    p.solid_png("images/\"><svg onload=alert(4)>.png", 8, 8, [10, 200, 30]);
    let png: String = png_with_text("parameters", "<script>alert(3)</script>").iter().map(|b| format!("{b:02x}")).collect();
    p.dag(&format!(
        r#"[dag]
name = "hostile"
seed = 1
workspace = "ws-{HOSTILE}"

[nodes.items]
op = "read"
path = "items.jsonl"
format = "jsonl"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.art]
op = "sql"
inputs = ["items"]
query = "SELECT *, n * 2 AS \"<script>alert(6)</script>\", decode('{png}', 'hex') AS image FROM items"
"#
    ));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let ids = crate::support::sql_csv(&p, "SELECT row_id FROM items ORDER BY n").into_iter().skip(1).collect();
    (p, ids)
}

/// No injected markup in `html` (the page at `path`).
#[track_caller]
pub fn assert_escaped(path: &str, html: &str) {
    for bad in INJECTED {
        assert!(!html.contains(bad), "{path} writes `{bad}` unescaped:\n{html}");
    }
}

#[test]
fn every_page_escapes_hostile_names_values_and_paths() {
    let (p, ids) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml"]);
    let label =
        |id: &str, verdict: &str| server.post_json("/api/labels", &format!(r#"{{"node":"items","row_id":"{id}","label":"{verdict}"}}"#));
    assert_eq!(label(&ids[0], "accept").0, 200);
    assert_eq!(label(&ids[1], "reject").0, 200);
    let column = crate::serve::url(HOSTILE);
    let photo = crate::support::sql_csv(&p, "SELECT row_id FROM photos").remove(1);
    let art = crate::support::sql_csv(&p, "SELECT row_id FROM art ORDER BY n").remove(1);
    let pages = [
        "/".to_string(),
        "/runs".into(),
        "/node/items".into(),
        "/node/items?view=grid&where=n%20%3E%200".into(),
        "/node/items/errors".into(),
        format!("/node/items/row/{}", ids[0]),
        format!("/node/items/row/{}", ids[2]),
        format!("/node/items/calibrate?column={column}"),
        "/node/photos".into(),
        format!("/node/photos/row/{photo}"),
        "/node/art".into(),
        format!("/node/art/row/{art}"),
        format!("/node/items?where={}", crate::serve::url(&format!("note = '{HOSTILE}'"))),
        format!("/node/{}", crate::serve::url(HOSTILE)),
        format!("/node/items?order={}", crate::serve::url(HOSTILE)),
    ];
    for path in &pages {
        let (code, html) = server.get(path);
        assert!(code == 200 || code == 400 || code == 404, "{path}: {code}\n{html}");
        assert_escaped(path, &html);
    }
    // The hostile values are shown, as text.
    let (_, calibration) = server.get(&format!("/node/items/calibrate?column={column}"));
    assert!(calibration.contains("&lt;img src=x onerror=alert(1)&gt; &gt;="), "{calibration}");
    let (_, art_row) = server.get(&format!("/node/art/row/{art}"));
    assert!(art_row.contains("<dt>parameters</dt><dd>&lt;script&gt;alert(3)&lt;/script&gt;</dd>"), "{art_row}");
    let (_, home) = server.get("/");
    assert!(home.contains("ws-&lt;img src=x onerror=alert(1)&gt;"), "the workspace path, escaped: {home}");
}

#[test]
fn long_cells_are_cut_on_the_grid_and_whole_on_the_row_page() {
    let (p, ids) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml"]);
    let (code, grid) = server.get("/node/items?view=grid");
    assert_eq!(code, 200);
    assert!(grid.len() < 20_000, "a 300,000-character cell made the grid {} bytes long", grid.len());
    let (_, row) = server.get(&format!("/node/items/row/{}", ids[1]));
    assert!(row.contains(&"x".repeat(300_000)), "the row page shows the whole value");
}

#[test]
fn every_answer_forbids_inline_script_and_framing() {
    let (p, _) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml"]);
    for path in ["/", "/node/items", "/no/such/page", "/static/app.js"] {
        let response = match ureq::get(&format!("{}{path}", server.base)).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{path}: {e}"),
        };
        let csp = response.header("content-security-policy").unwrap_or_default().to_string();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert_eq!(response.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"), "{path}");
    }
    // No page carries inline script or style for the policy to break.
    let ids = crate::support::sql_csv(&p, "SELECT row_id FROM items ORDER BY n");
    for path in ["/".to_string(), "/runs".into(), "/node/items".into(), format!("/node/items/row/{}", ids[1])] {
        let (_, html) = server.get(&path);
        assert!(!html.contains(" style=\"") && !html.contains("<script>") && !html.contains(" onclick="), "{path}: {html}");
    }
}

#[test]
fn labels_are_only_for_rows_the_node_has() {
    let (p, ids) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml"]);
    let made_up = "0123456789abcdef0123456789abcdef";
    let (code, message) = server.post_json("/api/labels", &format!(r#"{{"node":"items","row_id":"{made_up}","label":"accept"}}"#));
    assert_eq!(code, 404, "{message}");
    assert!(message.contains(made_up), "{message}");
    assert_eq!(server.post_json("/api/labels", &format!(r#"{{"node":"items","row_id":"{}","label":"accept"}}"#, ids[0])).0, 200);
    assert_eq!(crate::support::sql_csv(&p, "SELECT row_id FROM labels"), vec!["row_id".to_string(), ids[0].clone()]);
}

/// `GET path` with extra request headers, by hand: the status code.
fn get_with(server: &Server, method: &str, path: &str, headers: &[&str], body: &str) -> u16 {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {response:?}"))
}

#[test]
fn other_sites_cannot_start_queries_or_label() {
    let (p, ids) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml"]);
    let query = "/node/items?where=n%20%3E%201";
    let image = ["Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: no-cors", "Sec-Fetch-Dest: image"];
    assert_eq!(get_with(&server, "GET", query, &image, ""), 403, "an <img> on another site");
    assert_eq!(get_with(&server, "GET", "/node/items", &image, ""), 403);
    let same_site = ["Sec-Fetch-Site: same-site", "Sec-Fetch-Mode: cors", "Sec-Fetch-Dest: empty"];
    assert_eq!(get_with(&server, "GET", "/api/dag", &same_site, ""), 403, "a fetch from another port of this host");
    let link = ["Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document"];
    assert_eq!(get_with(&server, "GET", "/node/items", &link, ""), 200, "a link from elsewhere opens a page");
    assert_eq!(get_with(&server, "GET", query, &link, ""), 403, "but not with a query in it");
    assert_eq!(get_with(&server, "GET", "/node/items?page=3", &link, ""), 403, "nor a page deep into a table");
    let frame = ["Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: iframe"];
    assert_eq!(get_with(&server, "GET", "/node/items", &frame, ""), 403, "a hidden frame on another site");
    let own = ["Sec-Fetch-Site: same-origin", "Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document"];
    assert_eq!(get_with(&server, "GET", query, &own, ""), 200, "the page's own form");
    let typed = ["Sec-Fetch-Site: none", "Sec-Fetch-Mode: navigate"];
    assert_eq!(get_with(&server, "GET", query, &typed, ""), 200, "an address typed by the reader");
    let body = format!(r#"{{"node":"items","row_id":"{}","label":"accept"}}"#, ids[0]);
    assert_eq!(get_with(&server, "POST", "/api/labels", &["Origin: http://evil.example"], &body), 403);
    let origin = format!("Origin: {}", server.base);
    assert_eq!(get_with(&server, "POST", "/api/labels", &[origin.as_str(), "Sec-Fetch-Site: same-origin"], &body), 200);
}

#[test]
fn a_query_past_its_deadline_or_memory_is_stopped_and_the_server_goes_on() {
    let (p, _) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml", "--query-timeout", "2", "--query-memory", "64"]);
    // Memory: a hash aggregate of ten million groups (not in input order, so not streamed)
    // needs far more than 64 MiB.
    let hungry =
        crate::serve::url("(SELECT count(*) FROM (SELECT value * 7 % 10000019 AS v FROM generate_series(1, 10000000) GROUP BY v)) > 0");
    let started = Instant::now();
    let (code, message) = server.get(&format!("/node/items?where={hungry}"));
    assert_eq!(code, 400, "{message}");
    assert!(message.contains("Resources exhausted") || message.contains("memory"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // Time: a long scan that holds little memory is cancelled at its deadline.
    let slow = crate::serve::url("(SELECT sum(value) FROM generate_series(1, 100000000000)) > 0");
    let started = Instant::now();
    let (code, message) = server.get(&format!("/node/items?where={slow}"));
    assert_eq!(code, 503, "{message}");
    assert!(message.contains("longer than 2 s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(server.get("/node/items").0, 200);
    assert!(started.elapsed() < Duration::from_secs(2), "the server is free again: {:?}", started.elapsed());
}

#[test]
fn slow_clients_are_cut_off_and_connections_are_bounded() {
    let (p, _) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml", "--header-timeout", "1", "--max-connections", "2"]);
    let addr = server.base.trim_start_matches("http://").to_string();
    // Two clients that never finish their headers hold both connections...
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: ").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...so a third waits until the server closes them at the header timeout.
    let started = Instant::now();
    assert_eq!(server.get("/runs").0, 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(6), "the third request waited {waited:?}");
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                "the slow client's connection is still open"
            ),
        }
    }
}

#[test]
fn the_host_check_accepts_the_printed_address_and_port_80() {
    let p = Project::new();
    p.write("items.jsonl", "{\"n\": 1}\n");
    p.dag("[dag]\nname = \"h\"\nworkspace = \"ws\"\n\n[nodes.items]\nop = \"read\"\npath = \"items.jsonl\"\nformat = \"jsonl\"\n");
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let server = Server::start(&p, &["--dag", "dag.toml", "--host", "127.0.0.2"]);
    assert!(server.url.starts_with("http://127.0.0.2:"), "{}", server.url);
    let answer = ureq::get(&server.url).call().expect("its own printed link opens");
    assert_eq!(answer.status(), 200);
    let port = server.url.split(':').nth(2).unwrap().trim_end_matches('/').to_string();
    assert_eq!(server.raw("GET /", Some(&format!("127.0.0.2:{port}"))), 200);
    assert_eq!(server.raw("GET /", Some(&format!("localhost:{port}"))), 200);
    assert_eq!(server.raw("GET /", Some("evil.example")), 403);
    drop(server);

    // Port 80 (browsers leave it out of `Host`): only where this test may listen there.
    if std::net::TcpListener::bind("127.0.0.1:80").is_err() {
        eprintln!("port 80 is taken or needs privileges here: its Host check is covered by the unit test only");
        return;
    }
    let mut child = p.spawn(&["serve", "--dag", "dag.toml", "--port", "80"]);
    let started = Instant::now();
    let code = loop {
        match TcpStream::connect("127.0.0.1:80") {
            Ok(mut s) => {
                s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
                let mut response = String::new();
                let _ = s.read_to_string(&mut response);
                break response.split_whitespace().nth(1).unwrap_or("0").to_string();
            }
            Err(_) if started.elapsed() < Duration::from_secs(20) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("serve on port 80 did not start: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, "200", "Host: 127.0.0.1 on port 80");
}

#[test]
fn an_unspecified_address_prints_a_link_a_browser_can_open() {
    let (p, _) = hostile_project();
    let server = Server::start(&p, &["--dag", "dag.toml", "--host", "0.0.0.0"]);
    assert!(server.url.starts_with("http://127.0.0.1:") && server.url.contains("?token="), "{}", server.url);
    assert_eq!(ureq::get(&server.url).call().map(|r| r.status()).ok(), Some(200), "the printed link opens");
}
