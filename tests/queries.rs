//! `unoflow sql` and `unoflow lineage`.

use crate::support::{Project, sql_csv, thumbs_dag};

fn project() -> Project {
    let p = Project::new();
    p.solid_png("images/cat/a.png", 64, 32, [200, 0, 0]);
    p.solid_png("images/dog/b.png", 20, 40, [0, 200, 0]);
    p.dag(&format!(
        "{}\n[nodes.pairs]\nop = \"sql\"\ninputs = [\"thumbs\"]\n\
         query = \"SELECT make_array(a.row_id, b.row_id) AS parent_ids, a.path AS left_path, b.path AS right_path FROM thumbs a, thumbs b WHERE a.path < b.path\"\n",
        thumbs_dag(16)
    ));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    p
}

#[test]
fn table_output_describes_images() {
    let p = project();
    let out = p.unoflow(&["sql", "--dag", "dag.toml", "SELECT path, image, width, height FROM thumbs ORDER BY path"]).ok();
    assert!(out.stdout.contains("<png 16x8 "), "{}", out.stdout);
    assert!(out.stdout.contains("<png 8x16 "), "{}", out.stdout);
    assert!(out.stdout.contains("cat/a.png"), "{}", out.stdout);
    assert!(out.stdout.trim_end().ends_with("2 rows"), "{}", out.stdout);
}

#[test]
fn csv_json_parquet() {
    let p = project();
    assert_eq!(sql_csv(&p, "SELECT path, width FROM thumbs ORDER BY path"), ["path,width", "cat/a.png,16", "dog/b.png,8"]);
    let json = p.unoflow(&["sql", "--workspace", "ws", "--format", "json", "SELECT path, height FROM thumbs ORDER BY path"]).ok();
    let rows: Vec<serde_json::Value> = json.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows[0]["path"], "cat/a.png");
    assert_eq!(rows[1]["height"], 16);
    p.unoflow(&["sql", "--dag", "dag.toml", "--format", "parquet", "-o", "out.parquet", "SELECT * FROM thumbs"]).ok();
    let bytes = std::fs::read(p.path("out.parquet")).unwrap();
    assert_eq!(&bytes[..4], b"PAR1");
    // Binary columns in text formats are base64 of the PNG.
    let csv = sql_csv(&p, "SELECT image FROM thumbs ORDER BY path LIMIT 1");
    assert!(csv[1].starts_with("iVBORw0KGgo"), "{csv:?}");
}

#[test]
fn queries_are_read_only() {
    let p = project();
    for stmt in
        ["CREATE TABLE x AS SELECT 1", "COPY thumbs TO 'copied.parquet'", "INSERT INTO thumbs SELECT * FROM thumbs", "DROP TABLE thumbs"]
    {
        let run = p.unoflow(&["sql", "--dag", "dag.toml", stmt]);
        assert_ne!(run.code, 0, "{stmt} was accepted");
    }
    assert!(!p.path("copied.parquet").exists());
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM thumbs"), ["n", "2"]);
}

#[test]
fn unknown_tables_are_listed() {
    let p = project();
    let run = p.unoflow(&["sql", "--dag", "dag.toml", "SELECT * FROM thumb"]).expect_code(2);
    assert!(run.stderr.contains("tables: pairs, photos, small, thumbs"), "{}", run.stderr);
}

#[test]
fn lineage_walks_back_to_the_photos() {
    let p = project();
    let id = sql_csv(&p, "SELECT row_id FROM pairs")[1].clone();
    let out = p.unoflow(&["lineage", "pairs", &id, "--dag", "dag.toml"]).ok().stdout;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("pairs (op sql v1"), "{out}");
    assert!(out.contains("left_path = cat/a.png"), "{out}");
    assert!(out.contains("    thumbs (op thumbnail v1"), "{out}");
    assert!(out.contains("params: ") && out.contains("max_side=16"), "{out}");
    assert!(out.contains("        photos (op read v1"), "{out}");
    assert!(out.contains("image = <png 64x32"), "{out}");
    assert!(out.contains("image = <png 20x40"), "{out}");
    let missing = p.unoflow(&["lineage", "pairs", "nope", "--dag", "dag.toml"]).expect_code(2);
    assert!(missing.stderr.contains("no row `nope` in node `pairs`"), "{}", missing.stderr);
}

#[test]
fn a_json_array_file_reads_as_a_table() {
    // UNO's and DreamBench's prompt lists are JSON arrays, not JSON lines.
    let p = Project::new();
    p.write(
        "list.json",
        r#"[
  {"prompt": "a backpack in the jungle", "image_paths": ["./dreambooth/dataset/backpack/02.jpg"]},
  {"prompt": "a cat and a dog", "image_paths": ["./dreambooth/dataset/cat/04.jpg", "./dreambooth/dataset/dog/02.jpg"]}
]"#,
    );
    p.dag("[dag]\nname = \"j\"\nworkspace = \"ws\"\n\n[nodes.list]\nop = \"read\"\npath = \"list.json\"\nformat = \"jsonl\"\n");
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert_eq!(
        sql_csv(&p, "SELECT prompt, array_length(image_paths, 1) AS refs FROM list ORDER BY prompt"),
        ["prompt,refs", "a backpack in the jungle,1", "a cat and a dog,2"]
    );
}

#[test]
fn a_limit_over_many_parts_gives_the_first_rows_every_time() {
    // One part per row: a LIMIT once returned rows of whichever parts' metadata arrived first.
    let p = Project::new();
    let items: String = (0..120).map(|n| format!("{{\"n\": {n}}}\n")).collect();
    p.write("items.jsonl", &items);
    p.dag(
        "[dag]\nname = \"parts\"\nworkspace = \"ws\"\n\n[nodes.items]\nop = \"read\"\npath = \"items.jsonl\"\nformat = \"jsonl\"\n\n\
         [nodes.each]\nop = \"sleep\"\ninputs = [\"items\"]\nms = 0\n",
    );
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    for _ in 0..8 {
        assert_eq!(sql_csv(&p, "SELECT n FROM each LIMIT 3"), ["n", "0", "1", "2"]);
        assert_eq!(sql_csv(&p, "SELECT n FROM each LIMIT 2 OFFSET 60"), ["n", "60", "61"]);
    }
}
