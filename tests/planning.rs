//! `unoflow plan`: states and reasons after edits, and what stays cached.

use crate::support::{Project, plan_states, thumbs_dag_stored};

fn states(p: &Project) -> Vec<(String, String, Vec<String>)> {
    plan_states(&p.unoflow(&["plan", "dag.toml", "--json"]).ok())
}

fn state_names(p: &Project) -> Vec<(String, String)> {
    states(p).into_iter().map(|(n, s, _)| (n, s)).collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn project() -> Project {
    let p = Project::new();
    for (i, c) in [[200, 10, 10], [10, 200, 10], [10, 10, 200]].iter().enumerate() {
        p.solid_png(&format!("images/c{i}.png"), 40, 20, *c);
    }
    p.dag(&thumbs_dag_stored(8));
    p
}

#[test]
fn fresh_then_cached() {
    let p = project();
    let fresh = states(&p);
    assert!(fresh.iter().all(|(_, s, r)| s == "missing" && r == &["never computed"]), "{fresh:?}");
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert_eq!(state_names(&p), pairs(&[("photos", "cached"), ("thumbs", "cached"), ("small", "cached")]));
    let text = p.unoflow(&["plan", "dag.toml"]).ok().stdout;
    assert!(text.contains("0 of 3 nodes to compute"), "{text}");
}

#[test]
fn a_parameter_edit_stales_the_node_and_its_descendants_only() {
    let p = project();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    p.dag(&thumbs_dag_stored(16));
    let plan = states(&p);
    assert_eq!(plan[0].1, "cached");
    assert_eq!(plan[1].1, "stale");
    assert_eq!(plan[1].2, ["parameter `max_side` changed: 8 → 16"]);
    assert_eq!(plan[2].1, "stale");
    assert_eq!(plan[2].2, ["input `thumbs` changed"]);

    // Back to the old value: the earlier output is still there.
    p.dag(&thumbs_dag_stored(8));
    assert!(states(&p).iter().all(|(_, s, _)| s == "cached"));
}

#[test]
fn renaming_reordering_and_reformatting_keep_the_cache() {
    let p = project();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let renamed = thumbs_dag_stored(8)
        .replace("[nodes.thumbs]", "[nodes.mini]")
        .replace("inputs = [\"thumbs\"]", "inputs = [\"mini\"]")
        .replace("FROM thumbs", "FROM mini");
    // Reorder: put the query first, and reformat it.
    let (head, rest) = renamed.split_once("[nodes.photos]").unwrap();
    let (photos_and_mini, small) = rest.split_once("[nodes.small]").unwrap();
    let small = small.replace("SELECT row_id, path, width, height FROM mini", "select row_id,   path,\\n width, height\\n  from mini");
    p.dag(&format!("{head}[nodes.small]{small}\n\n[nodes.photos]{photos_and_mini}"));
    assert_eq!(state_names(&p), pairs(&[("photos", "cached"), ("mini", "cached"), ("small", "cached")]));
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.contains("0 computed, 0 resumed, 3 cached"), "{}", run.stdout);
}

#[test]
fn salt_and_source_changes_are_explained() {
    let p = project();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    p.dag(&thumbs_dag_stored(8).replace("max_side = 8", "max_side = 8\nsalt = \"again\""));
    assert_eq!(states(&p)[1].2, ["salt changed"]);
    p.dag(&thumbs_dag_stored(8));
    p.solid_png("images/c3.png", 10, 10, [1, 1, 1]);
    let plan = states(&p);
    assert_eq!((plan[0].1.as_str(), plan[0].2.clone()), ("stale", vec!["source files changed".to_string()]));
    assert_eq!(plan[1].2, ["input `photos` changed"]);
}

#[test]
fn a_changed_word_list_or_model_file_stales_the_node_that_reads_it() {
    let p = Project::new();
    p.write("subjects.jsonl", "{\"subject\": \"a red mug\", \"scenes\": [\"a kitchen\", \"a garden\"]}\n");
    p.write("companions.txt", "cat\ndog\n");
    p.dag(
        r#"[dag]
name = "d"
workspace = "ws"

[nodes.subjects]
op = "read"
path = "subjects.jsonl"
format = "jsonl"

[nodes.prompts]
op = "diptych_prompts"
inputs = ["subjects"]
companions = "companions.txt"
"#,
    );
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(states(&p).iter().all(|(_, s, _)| s == "cached"));
    p.write("companions.txt", "cat\nbird\n");
    let plan = states(&p);
    assert_eq!(plan[1].1, "stale");
    assert_eq!(plan[1].2, ["source files changed"]);
}
