//! Inputs and weights by URL: a `read` of images and a DINOv2 model folder on a bucket of a real
//! S3-protocol server (moto, started here), run with a local and with an S3 workspace; the
//! host's cache fetched once, resumed after a killed download, repaired after corruption; an
//! export under the S3 workspace written to the bucket; a file read over HTTP from a server
//! started here.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::scale::S3Server;
use crate::support::Project;

fn dag(weights: &str) -> String {
    format!(
        r#"[dag]
name = "remote"
workspace = "ws"

[nodes.photos]
op = "read"
path = "s3://inputs/data/samples"
format = "images"

[nodes.pairs]
op = "sql"
inputs = ["photos"]
query = "SELECT make_array(a.row_id, b.row_id) AS parent_ids, a.path AS left_path, b.path AS right_path, a.image AS ref_image, b.image AS target_image FROM photos a JOIN photos b ON split_part(a.path, '/', 1) = split_part(b.path, '/', 1)"

[nodes.sims]
op = "image_similarity"
inputs = ["pairs"]
weights = "{weights}"
pooling = "mean"
resize = 32
crop = 32

[nodes.out]
op = "export"
inputs = ["sims"]
path = "${{workspace}}/exports/sims.parquet"
"#
    )
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cache's object files, and their modification times.
fn objects(cache: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(cache.join("remote/objects"))
        .map(|d| d.flatten().map(|e| (e.path(), e.metadata().unwrap().modified().unwrap())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn partials(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("remote/partial")).map(|d| d.count()).unwrap_or(0)
}

fn similarities(p: &Project, env: &[(&str, &str)], workspace: &str) -> Vec<String> {
    let query = "SELECT count(*) AS n, min(CASE WHEN left_path = right_path THEN similarity END) > 0.9999 AS same FROM sims";
    let out = p.unoflow_env(&["sql", "--dag", "dag.toml", "--workspace", workspace, "--format", "csv", query], env).ok();
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn data_and_weights_on_s3_are_fetched_once_per_host_and_exports_land_in_the_bucket() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("inputs");
    s3.create_bucket("work");
    let images = s3.upload_dir(&root().join("datasets/samples"), "inputs/data/samples");
    let model = root().join("operators/models/fixtures/dinov2/tiny");
    let model_files = s3.upload_dir(&model, "inputs/models/dinov2");
    let cache = tempfile::tempdir().unwrap();
    let mut owned = s3.env();
    owned.push(("UNOFLOW_CACHE_DIR", cache.path().to_string_lossy().into_owned()));
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = Project::new();
    p.dag(&dag("s3://inputs/models/dinov2"));

    // Validation and planning list the bucket and download nothing.
    p.unoflow_env(&["validate", "dag.toml"], &env).ok();
    p.unoflow_env(&["plan", "dag.toml"], &env).ok();
    assert!(objects(cache.path()).is_empty(), "plan downloaded");

    // A local workspace: everything fetched once into the host's cache.
    let run = p.unoflow_env(&["run", "dag.toml", "-q"], &env).ok();
    assert!(run.stdout.contains("3 computed"), "{}", run.stdout);
    assert_eq!(similarities(&p, &env, "ws"), ["n,same", "36,true"]);
    assert!(p.path("ws/exports/sims.parquet").is_file());
    let fetched = objects(cache.path());
    assert_eq!(fetched.len(), images + model_files, "one object file per remote file");
    assert_eq!(partials(cache.path()), 0);

    // An S3 workspace on the same host: computed again, nothing downloaded again, the export in
    // the bucket; the nodes' fingerprints are the local workspace's but for the export's.
    let plan_of = |ws: &str| {
        let out = p.unoflow_env(&["plan", "dag.toml", "--workspace", ws, "--json"], &env).ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v.as_array().unwrap().iter().map(|n| n["fingerprint"].to_string()).collect::<Vec<_>>()
    };
    // (The export's own path is under the workspace: only it differs.)
    let (local, remote) = (plan_of("ws"), plan_of("s3://work/ws"));
    assert_eq!(local[..3], remote[..3]);
    assert_ne!(local[3], remote[3]);
    p.unoflow_env(&["run", "dag.toml", "--workspace", "s3://work/ws", "-q"], &env).ok();
    assert_eq!(similarities(&p, &env, "s3://work/ws"), ["n,same", "36,true"]);
    assert_eq!(objects(cache.path()), fetched, "the cache was filled once");
    let bytes = s3.get_object("work", "ws/exports/sims.parquet").expect("the export is in the bucket");
    assert!(bytes.starts_with(b"PAR1"), "a Parquet file");
    assert!(!Path::new("s3:").exists() && !p.path("s3:").exists(), "no local folder named after the URL");
    // Removed from the bucket, the export is missing: the node is stale.
    s3.delete_object("work", "ws/exports/sims.parquet");
    let plan = p.unoflow_env(&["plan", "dag.toml", "--workspace", "s3://work/ws"], &env).ok();
    assert!(plan.stdout.contains("sims.parquet"), "{}", plan.stdout);

    // A download killed half way leaves a partial file and no index entry: the next run
    // fetches the rest.
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let index = cache.path().join("remote/index");
    let entry = std::fs::read_dir(&index)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|path| std::fs::read_to_string(path).unwrap().contains("model.safetensors"))
        .expect("the weights are indexed");
    let recorded: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&entry).unwrap()).unwrap();
    let object = cache.path().join("remote/objects").join(recorded["blake3"].as_str().unwrap());
    let id = entry.file_stem().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&entry).unwrap();
    std::fs::remove_file(&object).unwrap();
    std::fs::write(cache.path().join(format!("remote/partial/{id}.part")), &weights[..weights.len() / 2]).unwrap();
    p.unoflow_env(&["run", "dag.toml", "--workspace", "ws2", "-q"], &env).ok();
    assert_eq!(std::fs::read(&object).unwrap(), weights, "resumed and whole");
    assert_eq!(partials(cache.path()), 0);
    assert_eq!(similarities(&p, &env, "ws2"), ["n,same", "36,true"]);

    // A cached object corrupted in place (same size) is detected and fetched again.
    let mut garbage = weights.clone();
    let middle = garbage.len() / 2;
    garbage[middle] ^= 0xff;
    std::fs::write(&object, &garbage).unwrap();
    p.unoflow_env(&["run", "dag.toml", "--workspace", "ws3", "-q"], &env).ok();
    assert_eq!(std::fs::read(&object).unwrap(), weights, "fetched again");
    assert_eq!(similarities(&p, &env, "ws3"), ["n,same", "36,true"]);

    // Two workers of one run on one host: each fetches through the cache's locks, once.
    let before = objects(cache.path());
    p.unoflow_env(&["run", "dag.toml", "--workspace", "ws4", "--workers", "2", "-q"], &env).ok();
    assert_eq!(objects(cache.path()), before);
    assert_eq!(similarities(&p, &env, "ws4"), ["n,same", "36,true"]);

    // A URL that names nothing is refused before anything runs.
    p.dag(&dag("s3://inputs/models/nothing"));
    let refused = p.unoflow_env(&["validate", "dag.toml"], &env).expect_code(2);
    assert!(
        refused.stderr.contains("nothing is stored at s3://inputs/models/nothing") && refused.stderr.contains("weights"),
        "{}",
        refused.stderr
    );
}

/// Serves `body` at `/data/list.jsonl` over plain HTTP on 127.0.0.1 (HEAD and GET, one request
/// a connection); returns the port.
fn http_server(body: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let mut stream = reader.into_inner();
            let found = request.split(' ').nth(1) == Some("/data/list.jsonl");
            let head = request.starts_with("HEAD");
            let _ = if found {
                let headers = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nLast-Modified: Mon, 07 Dec 2026 06:00:00 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(headers.as_bytes()).and_then(|()| if head { Ok(()) } else { stream.write_all(body) })
            } else {
                stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            };
        }
    });
    port
}

#[test]
fn a_file_is_read_over_http() {
    let port = http_server(b"{\"subject\": \"cat\"}\n{\"subject\": \"dog\"}\n{\"subject\": \"owl\"}\n");
    let p = Project::new();
    let cache = tempfile::tempdir().unwrap();
    let env = [("UNOFLOW_CACHE_DIR", cache.path().to_str().unwrap())];
    p.dag(&format!(
        "[dag]\nname = \"web\"\nworkspace = \"ws\"\n\n[nodes.subjects]\nop = \"read\"\npath = \"http://127.0.0.1:{port}/data/list.jsonl\"\nformat = \"jsonl\"\n"
    ));
    p.unoflow_env(&["run", "dag.toml", "-q"], &env).ok();
    let out = p
        .unoflow_env(
            &["sql", "--dag", "dag.toml", "--format", "csv", "SELECT string_agg(subject, '|' ORDER BY subject) AS s FROM subjects"],
            &env,
        )
        .ok();
    assert_eq!(out.stdout.lines().nth(1), Some("cat|dog|owl"));
    // A file the server does not have is refused at validation.
    p.dag(&format!(
        "[dag]\nname = \"web\"\nworkspace = \"ws\"\n\n[nodes.subjects]\nop = \"read\"\npath = \"http://127.0.0.1:{port}/data/gone.jsonl\"\nformat = \"jsonl\"\n"
    ));
    let refused = p.unoflow_env(&["validate", "dag.toml"], &env).expect_code(2);
    assert!(refused.stderr.contains("nothing is stored at http://127.0.0.1"), "{}", refused.stderr);
    // Plain http to another host is refused.
    p.dag("[dag]\nname = \"web\"\nworkspace = \"ws\"\n\n[nodes.subjects]\nop = \"read\"\npath = \"http://example.com/list.jsonl\"\nformat = \"jsonl\"\n");
    let refused = p.unoflow_env(&["validate", "dag.toml"], &env).expect_code(2);
    assert!(refused.stderr.contains("use https://"), "{}", refused.stderr);
}
