//! `sql` nodes as views (issue 13): nothing stored unless asked or needed, views compose, and
//! lineage, resume, `plan` and exports work through them. Also the `tables/` folder other
//! engines read.

use std::time::Duration;

use crate::support::{Project, Rng, plan_states, sql_csv};

/// photos → thumbs (stored) → big (view) → wide (view) → named (view); `again` is a compute
/// node over the view `wide`.
fn chain_dag(extra: &str) -> String {
    format!(
        r#"[dag]
name = "v"
seed = 1
workspace = "ws"

[nodes.photos]
op = "read"
path = "images"
format = "images"

[nodes.thumbs]
op = "thumbnail"
inputs = ["photos"]
max_side = 16

[nodes.big]
op = "sql"
inputs = ["thumbs"]
query = "SELECT row_id, path, image, width, height FROM thumbs WHERE width >= 8"

[nodes.wide]
op = "sql"
inputs = ["big"]
query = "SELECT * FROM big WHERE width >= height"

[nodes.named]
op = "sql"
inputs = ["wide"]
query = "SELECT row_id, upper(path) AS name, width FROM wide ORDER BY path"
{extra}"#
    )
}

fn project(images: usize, extra: &str) -> Project {
    let p = Project::new();
    let mut rng = Rng(3);
    for i in 0..images {
        let (w, h) = (rng.range(4, 40) as u32, rng.range(4, 40) as u32);
        p.solid_png(&format!("images/{i:03}.png"), w, h, [i as u8, 10, 20]);
    }
    p.dag(&chain_dag(extra));
    p
}

fn fingerprint(p: &Project, node: &str) -> String {
    let out = p.unoflow(&["plan", "dag.toml", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v.as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()["fingerprint"].as_str().unwrap().to_string()
}

#[test]
fn views_store_nothing_and_compose() {
    let p = project(40, "");
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    for view in ["big", "wide", "named"] {
        assert!(run.stdout.lines().any(|l| l.starts_with(view) && l.contains(" view ")), "{}", run.stdout);
        assert!(!p.path(&format!("ws/nodes/{}", fingerprint(&p, view))).exists(), "view `{view}` was stored");
    }
    let states = plan_states(&p.unoflow(&["plan", "dag.toml", "--json"]).ok());
    let state = |n: &str| states.iter().find(|s| s.0 == n).unwrap().1.clone();
    assert_eq!((state("thumbs").as_str(), state("named").as_str()), ("cached", "view"));

    // The chain is one query; its rows are those of the same query written out by hand.
    let through_views = sql_csv(&p, "SELECT * FROM named");
    let by_hand = sql_csv(&p, "SELECT row_id, upper(path) AS name, width FROM thumbs WHERE width >= 8 AND width >= height ORDER BY path");
    assert_eq!(through_views, by_hand);
    assert!(through_views.len() > 2, "{through_views:?}");
    // A view has an (empty) error table like any node.
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n FROM errors.named"), ["n", "0"]);

    // Editing a view's query changes nothing stored, and the next query sees the change.
    p.dag(&chain_dag("").replace("WHERE width >= height", "WHERE width < height"));
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.contains("0 computed"), "{}", run.stdout);
    let narrow = sql_csv(&p, "SELECT count(*) AS n FROM wide");
    let expected = sql_csv(&p, "SELECT count(*) AS n FROM thumbs WHERE width >= 8 AND width < height");
    assert_eq!(narrow, expected);
}

#[test]
fn volatile_queries_and_materialize_are_stored() {
    let extra = "\n[nodes.sampled]\nop = \"sql\"\ninputs = [\"thumbs\"]\nquery = \"SELECT row_id, random() AS r FROM thumbs\"\n\n\
                 [nodes.kept]\nop = \"sql\"\ninputs = [\"wide\"]\nquery = \"SELECT * FROM wide\"\nmaterialize = true\n";
    let p = project(20, extra);
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    for stored in ["sampled", "kept"] {
        assert!(run.stdout.lines().any(|l| l.starts_with(stored) && l.contains("computed")), "{}", run.stdout);
        assert!(p.path(&format!("ws/nodes/{}/manifest.json", fingerprint(&p, stored))).is_file());
    }
    // What was read once is what is read later.
    let first = sql_csv(&p, "SELECT r FROM sampled ORDER BY row_id");
    assert_eq!(sql_csv(&p, "SELECT r FROM sampled ORDER BY row_id"), first);
    assert_eq!(sql_csv(&p, "SELECT * FROM kept ORDER BY row_id"), sql_csv(&p, "SELECT * FROM wide ORDER BY row_id"));
}

#[test]
fn a_compute_node_over_a_view_resumes_and_traces_through_it() {
    let extra = "\n[nodes.again]\nop = \"thumbnail\"\ninputs = [\"wide\"]\nmax_side = 4\n\n\
                 [nodes.out]\nop = \"export\"\ninputs = [\"named\"]\nformat = \"jsonl\"\npath = \"named.jsonl\"\n";
    let p = project(300, extra);
    let started = std::time::Instant::now();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let whole = started.elapsed();
    let rows = sql_csv(&p, "SELECT count(*) AS n FROM wide")[1].clone();
    assert_eq!(sql_csv(&p, "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM again")[1], format!("{rows},{rows}"));
    // The export wrote the view's rows.
    let exported = std::fs::read_to_string(p.path("named.jsonl")).unwrap();
    assert_eq!(exported.lines().count().to_string(), rows);

    // Killed part way, the node over the view resumes with its committed units.
    let mut rng = Rng(9);
    for _ in 0..3 {
        let again = fingerprint(&p, "again");
        std::fs::remove_dir_all(p.path(&format!("ws/nodes/{again}"))).unwrap();
        let mut child = p.spawn(&["run", "dag.toml", "-q"]);
        std::thread::sleep(Duration::from_millis(rng.range(20, (whole.as_millis() as u64).max(40))));
        let _ = child.kill();
        let _ = child.wait();
        p.unoflow(&["run", "dag.toml", "-q"]).ok();
        assert_eq!(sql_csv(&p, "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM again")[1], format!("{rows},{rows}"));
    }

    // Lineage walks from the node over the view, through the views, to the photo.
    let id = sql_csv(&p, "SELECT row_id FROM again LIMIT 1")[1].clone();
    let out = p.unoflow(&["lineage", "--dag", "dag.toml", "again", &id]).ok();
    for step in ["again (op thumbnail", "wide (op sql", ", a view)", "big (op sql", "thumbs (op thumbnail", "photos (op read"] {
        assert!(out.stdout.contains(step), "{step}:\n{}", out.stdout);
    }
}

#[test]
fn other_engines_read_stored_nodes_by_name() {
    let p = project(30, "");
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let folder = p.path("ws/tables/thumbs");
    let mut rows = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let file = std::fs::File::open(entry.unwrap().path()).unwrap();
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
    }
    assert_eq!(rows.to_string(), sql_csv(&p, "SELECT count(*) AS n FROM thumbs")[1]);
    // After a change, the name points at the new output, and the old files are gone.
    let before = std::fs::read_link(&folder).unwrap();
    p.dag(&chain_dag("").replace("max_side = 16", "max_side = 12"));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let after = std::fs::read_link(&folder).unwrap();
    assert_ne!(before, after);
    assert!(!p.path("ws/tables").join(&before).exists());
    assert!(!p.path("ws/tables/big").exists(), "views are not files");
}

/// Views whose rows get their ids from the engine (a projection without `row_id`, a union) are
/// planned through when a query does not read `row_id`: projections and filters reach the
/// stored parts instead of every row streaming through the id assignment. The rows, and their
/// order, are the streamed path's.
#[test]
fn views_with_engine_ids_are_planned_through_when_the_ids_are_not_read() {
    let p = Project::new();
    let mut csv = String::from("name,value,category\n");
    for i in 0..300 {
        csv += &format!("n{},{i},{}\n", i % 37, i % 5);
    }
    p.write("rows.csv", &csv);
    p.dag(
        r#"[dag]
name = "ids"
workspace = "ws"

[nodes.src]
op = "read"
path = "rows.csv"
format = "csv"

[nodes.a]
op = "sql"
inputs = ["src"]
query = "SELECT name, value, category FROM src WHERE value % 2 = 0"

[nodes.b]
op = "sql"
inputs = ["a"]
query = "SELECT name, category, value * 2 AS doubled FROM a WHERE category <> 3"

[nodes.both]
op = "sql"
inputs = ["a", "b"]
query = "SELECT name, category FROM a UNION ALL SELECT name, category FROM b"
"#,
    );
    p.unoflow(&["run", "dag.toml", "-q"]).ok();

    let explain = sql_csv(&p, "EXPLAIN SELECT count(*) FROM b WHERE doubled > 100").join("\n");
    assert!(!explain.contains("StreamingTableExec"), "no row streams through the id assignment:\n{explain}");
    let scan = explain.lines().find(|l| l.contains("DataSourceExec")).unwrap_or_else(|| panic!("{explain}"));
    assert!(scan.contains("predicate=") && !scan.contains("name"), "the filter and the projection reach the parts: {scan}");

    let without_ids = |lines: Vec<String>| -> Vec<String> { lines.iter().map(|l| l.split_once(',').unwrap().1.to_string()).collect() };
    for (view, columns) in [("b", "name, doubled"), ("both", "name, category")] {
        let streamed = without_ids(sql_csv(&p, &format!("SELECT row_id, {columns} FROM {view}")));
        assert_eq!(sql_csv(&p, &format!("SELECT {columns} FROM {view}")), streamed, "{view}: the same rows in the same order");
        let limited = sql_csv(&p, &format!("SELECT {columns} FROM {view} LIMIT 40"));
        assert_eq!(limited[..], streamed[..41], "{view}");
        let count = sql_csv(&p, &format!("SELECT count(*) AS n FROM {view}"));
        assert_eq!(count, ["n".to_string(), (streamed.len() - 1).to_string()], "{view}");
    }
    let filtered = sql_csv(&p, "SELECT name, doubled FROM b WHERE doubled > 100 AND name LIKE 'n1%'");
    let streamed = without_ids(sql_csv(&p, "SELECT row_id, name, doubled FROM b WHERE doubled > 100 AND name LIKE 'n1%'"));
    assert_eq!(filtered, streamed);
    assert!(filtered.len() > 5, "{filtered:?}");

    // A filter on the ids themselves takes the streamed path and finds the row.
    let some = sql_csv(&p, "SELECT row_id, name FROM b LIMIT 1");
    let (id, name) = some[1].split_once(',').unwrap();
    assert_eq!(sql_csv(&p, &format!("SELECT name FROM b WHERE row_id = '{id}'")), ["name", name]);
}

/// Views are readable from outside too: `tables/NAME.sql` defines the view and its inputs for
/// DuckDB (from PyPI), over the stored parts; DuckDB's rows are unoflow's.
#[test]
fn duckdb_reads_a_view_from_its_sql_file() {
    let probe = std::process::Command::new("python3").args(["-c", "import duckdb"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(std::env::var_os("UNOFLOW_REQUIRE_DUCKDB").is_none(), "DuckDB does not import; pip install duckdb");
        eprintln!("skipped: no DuckDB for Python (pip install duckdb)");
        return;
    }
    let p = Project::new();
    p.write("rows.csv", &(0..120).fold(String::from("name,value\n"), |csv, i| csv + &format!("n{},{i}\n", i % 7)));
    p.dag(
        r#"[dag]
name = "duck"
workspace = "ws"

[nodes.src]
op = "read"
path = "rows.csv"
format = "csv"

[nodes.kept]
op = "sql"
inputs = ["src"]
query = "SELECT row_id, name, value * 2 AS doubled FROM src WHERE value % 3 = 0"

[nodes.grouped]
op = "sql"
inputs = ["kept"]
query = "SELECT name, count(*) AS n, sum(doubled) AS total FROM kept GROUP BY name"
"#,
    );
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let script = p.path("ws/tables/grouped.sql");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("CREATE OR REPLACE VIEW \"kept\"") && text.contains("read_parquet(["), "{text}");

    let duck = |query: &str| -> Vec<String> {
        let program = "import duckdb, sys\ncon = duckdb.connect()\ncon.execute(open(sys.argv[1]).read())\n\
                       for row in con.sql(sys.argv[2]).fetchall(): print(','.join(str(v) for v in row))";
        let out = std::process::Command::new("python3").args(["-c", program]).arg(&script).arg(query).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
    };
    let ours = |query: &str| sql_csv(&p, query)[1..].to_vec();
    let grouped = "SELECT name, n, total FROM grouped ORDER BY name";
    assert_eq!(duck(grouped), ours(grouped));
    let kept = "SELECT row_id, name, doubled FROM kept ORDER BY row_id";
    assert_eq!(duck(kept), ours(kept), "a view that passes row_id through has unoflow's ids");
    assert_eq!(duck("SELECT count(*) FROM kept"), ["40"]);

    // Stored again (`materialize`), the node is Parquet under tables/ and its .sql file goes.
    let text = std::fs::read_to_string(p.path("dag.toml")).unwrap();
    p.dag(&text.replace("FROM kept GROUP BY name\"", "FROM kept GROUP BY name\"\nmaterialize = true"));
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(!script.exists() && p.path("ws/tables/grouped").is_dir());
}
