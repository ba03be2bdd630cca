//! The curation operators end to end: the quickstart DAG, the full recipe's validation, and the
//! VLM operators against a local chat completions server.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::chat_server::{ChatServer, Reply, first_user_text};
use crate::support::Project;

#[test]
fn quickstart_runs_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    let ws = p.path("ws");
    let dag = root.join("dags/quickstart.toml");
    let (dag, ws) = (dag.to_str().unwrap(), ws.to_str().unwrap());
    let run = p.unoflow(&["run", dag, "-q", "--workspace", ws]).ok();
    // Its six `sql` nodes are views (issue 13).
    assert!(run.stdout.contains("12 computed") && run.stdout.contains("6 views"), "{}", run.stdout);
    let q = |sql: &str| p.unoflow(&["sql", "--dag", dag, "--workspace", ws, "--format", "csv", sql]).ok().stdout;
    // 6 subjects × 2 prompts × 2 seeds.
    assert_eq!(q("SELECT count(*) AS n FROM prompts"), "n\n12\n");
    assert_eq!(q("SELECT count(*) AS n FROM dino"), "n\n24\n");
    let prompt = q("SELECT prompt FROM prompts ORDER BY row_id LIMIT 1");
    assert!(prompt.contains("A diptych with two side-by-side images of same"), "{prompt}");
    // Every diptych was split into two panels that tile it.
    assert_eq!(q("SELECT count(*) AS n FROM pairs WHERE split BETWEEN 38 AND 90"), "n\n24\n");
    let curated: usize = q("SELECT count(*) AS n FROM curated").lines().nth(1).unwrap().parse().unwrap();
    let passed: usize = q("SELECT count(*) AS n FROM dino WHERE dino_pass").lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(curated, passed);
    let train: Value = serde_json::from_slice(&std::fs::read(p.path("ws/exports/uno/train.json")).unwrap()).unwrap();
    assert_eq!(train.as_array().unwrap().len(), curated);
    assert!(p.path("ws/exports/curated.parquet").exists());
    // Lineage: each pair walks back through the generation to its prompt and its subject.
    let pair = q("SELECT row_id FROM pairs ORDER BY row_id LIMIT 1");
    let id = pair.lines().nth(1).unwrap();
    let lineage = p.unoflow(&["lineage", "--dag", dag, "--workspace", ws, "pairs", id]).ok().stdout;
    for node in ["diptychs", "prompts", "sample", "subjects"] {
        assert!(lineage.contains(node), "{lineage}");
    }
    // Rerunning recomputes nothing; generating again elsewhere gives bit-identical images.
    // Training, regeneration, stage II and evaluation follow on the curated pairs.
    assert_eq!(q("SELECT count(*) AS n, count(checkpoint) AS saved FROM stage1"), "n,saved\n4,2\n");
    assert_eq!(q("SELECT count(*) AS n FROM regenerated"), format!("n\n{curated}\n"));
    let triplets: usize = q("SELECT count(*) AS n FROM triplets").lines().nth(1).unwrap().parse().unwrap();
    assert!(triplets > 0, "no triplets");
    assert_eq!(q("SELECT count(*) AS n FROM stage2"), "n\n4\n");
    assert_eq!(q("SELECT count(*) AS n FROM evaluation"), "n\n10\n");
    assert_eq!(q("SELECT count(*) AS n FROM scores"), "n\n6\n");
    assert!(p.unoflow(&["run", dag, "-q", "--workspace", ws]).ok().stdout.contains("12 cached, 6 views"));
    let other = p.path("ws2");
    let other = other.to_str().unwrap();
    p.unoflow(&["run", dag, "-q", "--workspace", other, "--only", "diptychs"]).ok();
    let digests = "SELECT row_id, seed, md5(image) AS digest FROM diptychs ORDER BY row_id";
    let again = p.unoflow(&["sql", "--dag", dag, "--workspace", other, "--format", "csv", digests]).ok().stdout;
    assert_eq!(q(digests), again);
}

#[test]
fn the_full_recipe_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    let fixtures = root.join("operators/models/fixtures");
    // Any existing folders stand in for the weights: validation checks paths, not contents.
    let flux = fixtures.join("flux");
    let dinov2 = fixtures.join("dinov2/tiny");
    let dag = root.join("dags/uno.toml");
    // A DreamBench folder with UNO's lists: the project's sample copy stands in.
    let bench = p.path("dreambench");
    std::fs::create_dir_all(&bench).unwrap();
    for list in ["dreambench_singleip.json", "dreambench_multiip.json"] {
        std::fs::copy(root.join("datasets/dreambench_sample.json"), bench.join(list)).unwrap();
    }
    let (dino, clip) = (fixtures.join("dino/tiny"), fixtures.join("clip/tiny"));
    let env = [
        ("FLUX_DIR", flux.to_str().unwrap()),
        ("DINOV2_DIR", dinov2.to_str().unwrap()),
        ("VLM_ENDPOINT", "http://127.0.0.1:9/v1"),
        ("DINO_DIR", dino.to_str().unwrap()),
        ("CLIP_DIR", clip.to_str().unwrap()),
        ("DREAMBENCH_DIR", bench.to_str().unwrap()),
    ];
    p.unoflow_env(&["validate", dag.to_str().unwrap()], &env).ok();
    // Without the environment, the error names the variable.
    let missing = p.unoflow(&["validate", dag.to_str().unwrap()]).expect_code(2);
    assert!(missing.stderr.contains("FLUX_DIR"), "{}", missing.stderr);
}

/// The paper's three rounds, answered by subject: `good` (structured JSON), `lines` (the
/// paper's `[Part i]: [score]` text), `busy` (429 once, then good), `malformed` (broken JSON),
/// `missing` (no parts), `slow` (past the timeout), `broken` (500 always).
fn scenario(body: &Value, seen: usize) -> Reply {
    let first = first_user_text(body);
    if let Some(rest) = first.strip_prefix("Locate the ") {
        return match rest.split(" in the image").next().unwrap_or("") {
            "ghost" => Reply::Content("I cannot find it.".into()),
            _ => Reply::Content("```json\n[{\"bbox_2d\": [2, 3, 10, 12], \"label\": \"x\"}]\n```".into()),
        };
    }
    let subject = first.split("The subject is: ").nth(1).and_then(|s| s.split('.').next()).unwrap_or("").to_string();
    let round = body["messages"].as_array().map_or(0, Vec::len) / 2;
    let text = |t: &str| Reply::Content(t.into());
    match (subject.as_str(), round) {
        ("slow", _) => Reply::Stall(Duration::from_secs(3)),
        ("broken", _) => Reply::Status(500),
        ("busy", 1) if seen == 0 => Reply::Status(429),
        (_, 1) => text("[subject]: a mug\n[caption1]: a mug on a table\n[caption2]: the mug in a garden\n[Break down]: body; logo"),
        (_, 2) => text("The body has the same shape; the logo is slightly smaller in the target."),
        ("lines", _) => text("[Part 1] Body: [4]\n[Part 2] Logo: [4]"),
        ("malformed", _) => text("{\"parts\": [{\"part\": \"body\", \"score\": "),
        ("missing", _) => text("{\"parts\": []}"),
        _ => text(r#"{"parts": [{"part": "body", "score": 4}, {"part": "logo", "score": 3}]}"#),
    }
}

const SUBJECTS: [&str; 7] = ["good", "lines", "busy", "malformed", "missing", "slow", "broken"];

fn vlm_project() -> Project {
    let p = Project::new();
    for (i, name) in SUBJECTS.iter().chain(["ghost"].iter()).enumerate() {
        p.solid_png(&format!("images/{name}.png"), 16, 16, [i as u8 * 30, 100, 50]);
    }
    p.dag(
        r#"[dag]
name = "vlm"
workspace = "ws"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.pairs]
op = "sql"
inputs = ["photos"]
query = "SELECT row_id, image AS ref_image, image AS target_image, split_part(path, '.', 1) AS subject FROM photos"

[nodes.vlm]
op = "vlm_score"
inputs = ["pairs"]
endpoint = "${env:VLM_ENDPOINT}"
model = "test-vlm"
subject = "subject"
timeout_s = 0.5
max_retries = 1
backoff_s = 0.01
concurrency = 8

[nodes.boxes]
op = "vlm_detect"
inputs = ["pairs"]
endpoint = "${env:VLM_ENDPOINT}"
model = "test-grounding"
subject = "subject"
"#,
    );
    p
}

/// `sql_csv` with the endpoint variable the DAG names set.
fn sql_env(p: &Project, server: &ChatServer, query: &str) -> Vec<String> {
    let out = p.unoflow_env(&["sql", "--dag", "dag.toml", "--format", "csv", query], &[("VLM_ENDPOINT", server.url.as_str())]).ok();
    out.stdout.lines().map(str::to_string).collect()
}

/// The subjects whose requests the server saw.
fn subjects_asked(requests: &[Value]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|b| first_user_text(b).split("The subject is: ").nth(1).and_then(|s| s.split('.').next()).map(str::to_string))
        .collect()
}

#[test]
fn vlm_score_rows_end_in_the_right_state_and_reruns_hit_the_cache() {
    let server = ChatServer::start(scenario);
    let p = vlm_project();
    let env = [("VLM_ENDPOINT", server.url.as_str())];
    let run = p.unoflow_env(&["run", "dag.toml", "-q", "--only", "vlm"], &env).ok();
    assert!(run.stdout.contains("4 row errors"), "{}", run.stdout);
    assert_eq!(
        sql_env(&p, &server, "SELECT subject, vlm_score, vlm_model, array_length(vlm_parts, 1) AS parts FROM vlm ORDER BY subject"),
        ["subject,vlm_score,vlm_model,parts", "busy,3.5,test-vlm,2", "ghost,3.5,test-vlm,2", "good,3.5,test-vlm,2", "lines,4.0,test-vlm,2"]
    );
    let errors =
        sql_env(&p, &server, "SELECT p.subject, e.message FROM errors.vlm e JOIN pairs p ON e.row_id = p.row_id ORDER BY p.subject");
    let message = |s: &str| errors.iter().find(|l| l.starts_with(&format!("{s},"))).cloned().unwrap_or_default();
    assert!(message("broken").contains("HTTP 500"), "{errors:?}");
    assert!(message("malformed").contains("no part scores"), "{errors:?}");
    assert!(message("missing").contains("no part scores"), "{errors:?}");
    assert!(message("slow").contains("round 1"), "{errors:?}");

    // Every request has the chat completions shape: the system prompt, then both images as
    // data URLs and the step-1 text; round 3 asks for JSON-schema output.
    let requests = server.requests();
    for body in &requests {
        assert_eq!(body["model"], "test-vlm");
        assert!(body["temperature"].is_number() && body["max_tokens"].is_number());
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert!(messages[0]["content"].as_str().unwrap().starts_with("You are an expert AI assistant"));
        let first = messages[1]["content"].as_array().unwrap();
        for image in &first[..2] {
            assert_eq!(image["type"], "image_url");
            assert!(image["image_url"]["url"].as_str().unwrap().starts_with("data:image/png;base64,"));
        }
        assert_eq!(first[2]["type"], "text");
        if messages.len() == 6 {
            assert_eq!(body["response_format"]["type"], "json_schema");
        }
    }
    let asked = subjects_asked(&requests);
    let count = |s: &str| asked.iter().filter(|a| *a == s).count();
    assert_eq!((count("good"), count("busy"), count("slow"), count("broken")), (3, 4, 2, 2), "{asked:?}");

    // Forced rerun: answered requests come from the cache; only the failed ones are sent again.
    p.unoflow_env(&["run", "dag.toml", "-q", "--only", "vlm", "--force", "vlm"], &env).ok();
    let again = subjects_asked(&server.requests()[requests.len()..]);
    assert!(!again.is_empty() && again.iter().all(|s| s == "slow" || s == "broken"), "{again:?}");
    assert_eq!(sql_env(&p, &server, "SELECT count(*) AS n FROM vlm"), ["n", "4"]);
}

#[test]
fn vlm_detect_reads_grounding_boxes_and_crops() {
    let server = ChatServer::start(scenario);
    let p = vlm_project();
    let env = [("VLM_ENDPOINT", server.url.as_str())];
    let run = p.unoflow_env(&["run", "dag.toml", "-q", "--only", "boxes"], &env).ok();
    assert!(run.stdout.contains("1 row error"), "{}", run.stdout);
    assert_eq!(
        sql_env(&p, &server, "SELECT box_x1, box_y1, box_x2, box_y2, count(*) AS n FROM boxes GROUP BY 1, 2, 3, 4"),
        ["box_x1,box_y1,box_x2,box_y2,n", "2,3,10,12,7"]
    );
    let errors = sql_env(&p, &server, "SELECT message FROM errors.boxes");
    assert!(errors[1].contains("no JSON box"), "{errors:?}");
    let crop = p.unoflow_env(&["sql", "--dag", "dag.toml", "SELECT subject_crop FROM boxes LIMIT 1"], &env).ok().stdout;
    assert!(crop.contains("<png 8x9"), "{crop}");
    // Each subject scored on its own crop, as PSR scores subjects: `dino_filter` on the crop,
    // its columns named by `output`.
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("operators/models/fixtures/dinov2/tiny");
    let scores = format!(
        "\n[nodes.subject_scores]\nop = \"dino_filter\"\ninputs = [\"boxes\"]\nweights = \"{}\"\nright = \"subject_crop\"\noutput = \"subject_dino\"\n",
        weights.display()
    );
    p.dag(&(std::fs::read_to_string(p.path("dag.toml")).unwrap() + &scores));
    p.unoflow_env(&["run", "dag.toml", "-q", "--only", "subject_scores"], &env).ok();
    assert_eq!(
        sql_env(&p, &server, "SELECT count(subject_dino_cls) AS scored, count(subject_dino_pass) AS verdicts FROM subject_scores"),
        ["scored,verdicts", "7,7"]
    );
}

#[test]
fn llm_subjects_makes_subjects_in_three_styles_with_scenes() {
    let server = ChatServer::start(|body, _| {
        let prompt = first_user_text(body);
        let text = body["messages"][0]["content"].as_str().unwrap_or(&prompt).to_string();
        if text.contains("brief subject prompts for the category \"Cup\"") {
            Reply::Content("Here are the subjects:\n1. a red mug\n2. a tin cup".into())
        } else if text.contains("brief subject prompts") {
            Reply::Content("I would rather not invent subjects for a category I do not know well enough, sorry about that.".into())
        } else {
            Reply::Content("- a sunlit kitchen, close-up\n- a mossy garden, wide shot".into())
        }
    });
    let p = Project::new();
    p.write("categories.csv", "category\nCup\nSpaceship\n");
    p.dag(
        r#"[dag]
name = "tax"
workspace = "ws"

[nodes.categories]
op = "read"
path = "categories.csv"
format = "csv"

[nodes.subjects]
op = "llm_subjects"
inputs = ["categories"]
endpoint = "${env:VLM_ENDPOINT}"
model = "test-llm"
subjects_per_style = 5
backoff_s = 0.01

[nodes.prompts]
op = "diptych_prompts"
inputs = ["subjects"]
companions = "categories.csv"
"#,
    );
    let run = p.unoflow_env(&["run", "dag.toml", "-q"], &[("VLM_ENDPOINT", server.url.as_str())]).ok();
    assert!(run.stdout.contains("1 row error"), "{}", run.stdout);
    assert_eq!(
        sql_env(&p, &server, "SELECT style, subject, array_length(scenes, 1) AS n FROM subjects ORDER BY style, subject"),
        [
            "style,subject,n",
            "creative,a red mug,3",
            "creative,a tin cup,3",
            "realistic,a red mug,3",
            "realistic,a tin cup,3",
            "text_decorated,a red mug,3",
            "text_decorated,a tin cup,3"
        ]
    );
    let errors = sql_env(&p, &server, "SELECT message FROM errors.subjects");
    assert!(errors[1].contains("no creative subjects") || errors[1].contains("subjects in the answer"), "{errors:?}");
    assert_eq!(sql_env(&p, &server, "SELECT count(*) AS n FROM prompts"), ["n", "6"]);
}

#[test]
fn a_server_without_structured_output_gets_plain_requests() {
    // Round 3 asks for JSON-schema output; this server refuses it as llama.cpp builds do, and
    // the operator asks again without it and parses the paper-style lines.
    let server = ChatServer::start(|body, _| {
        if body.get("response_format").is_some() {
            return Reply::BadRequest("response_format is not supported by this server");
        }
        match body["messages"].as_array().map_or(0, Vec::len) / 2 {
            3 => Reply::Content("[Part 1] Body: [3]".into()),
            _ => Reply::Content("a description".into()),
        }
    });
    let p = vlm_project();
    let env = [("VLM_ENDPOINT", server.url.as_str())];
    p.unoflow_env(&["run", "dag.toml", "-q", "--only", "vlm"], &env).ok();
    assert_eq!(sql_env(&p, &server, "SELECT count(*) AS n, min(vlm_score) AS s FROM vlm"), ["n,s", "8,3.0"]);
    let refused = server.requests().iter().filter(|b| b.get("response_format").is_some()).count();
    assert!(refused >= 1, "the first round-3 request asked for structured output");
}

#[test]
fn bad_generation_sizes_and_scene_lists_fail_their_rows_only() {
    let p = Project::new();
    p.write("companions.txt", "cat\n");
    p.write(
        "subjects.jsonl",
        "{\"subject\": \"a mug\", \"scenes\": [\"a kitchen\", \"a garden\"]}\n{\"subject\": \"a lamp\", \"scenes\": [\"a desk\"]}\n",
    );
    p.dag(
        r#"[dag]
name = "bad"
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

[nodes.sized]
op = "sql"
inputs = ["prompts"]
query = "SELECT row_id, prompt, CAST(100 AS INT) AS width, CAST(64 AS INT) AS height FROM prompts UNION ALL SELECT row_id || 'b', prompt, 32, 32 FROM prompts"

[nodes.diptychs]
op = "incontext_generate"
inputs = ["sized"]
steps = 1
"#,
    );
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let prompts = crate::support::sql_csv(&p, "SELECT message FROM errors.prompts");
    assert!(prompts[1].contains("a lamp") && prompts[1].contains("has 1 scene(s)"), "{prompts:?}");
    let sizes = crate::support::sql_csv(&p, "SELECT message FROM errors.diptychs");
    assert!(sizes[1].contains("100×64") && sizes[1].contains("multiples of 16"), "{sizes:?}");
    assert_eq!(crate::support::sql_csv(&p, "SELECT count(*) AS n FROM diptychs"), ["n", "1"]);
}
