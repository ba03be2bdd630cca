//! Exactly-once resume: kill -9 at random moments, SIGINT, corrupt parts.

use std::time::Duration;

use crate::support::{Project, Rng, plan_states, sql_csv, thumbs_dag};

const IMAGES: usize = 96;

fn project() -> Project {
    let p = Project::new();
    p.noise_images("images", IMAGES, 320, 42);
    p.dag(&thumbs_dag(24));
    p
}

fn fingerprint(p: &Project, node: &str) -> String {
    let out = p.unoflow(&["plan", "dag.toml", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v.as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()["fingerprint"].as_str().unwrap().to_string()
}

#[track_caller]
fn assert_exactly_once(p: &Project) {
    for table in ["photos", "thumbs", "small"] {
        let counts = sql_csv(p, &format!("SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM {table}"));
        assert_eq!(counts, ["n,ids".to_string(), format!("{IMAGES},{IMAGES}")], "{table}");
    }
}

#[test]
fn kill_9_at_random_moments_then_rerun() {
    let p = project();
    let thumbs_fp = fingerprint(&p, "thumbs");
    let thumbs_units = IMAGES.div_ceil(16);
    // Kill within the time a whole run takes here, so the kills land in the work.
    let started = std::time::Instant::now();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let whole = (started.elapsed().as_millis() as u64).max(50);
    let mut rng = Rng(20261126);
    for _round in 0..6 {
        let _ = std::fs::remove_dir_all(p.path("ws"));
        let mut child = p.spawn(&["run", "dag.toml", "-q"]);
        std::thread::sleep(Duration::from_millis(rng.range(5, whole)));
        let _ = child.kill(); // SIGKILL: no chance to clean up
        let _ = child.wait();
        // Commit records only: a kill between staging a record and linking it leaves a
        // `.uNNNNNN.json.PID-N.staged` file beside them, which commits nothing.
        let committed = p
            .files_under(&format!("ws/nodes/{thumbs_fp}/commits"))
            .iter()
            .filter(|f| f.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
            .count();
        let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
        if committed > 0 && committed < thumbs_units {
            // Finished units are not redone.
            assert!(run.stdout.lines().any(|l| l.starts_with("thumbs") && l.contains("resumed")), "{}", run.stdout);
        }
        assert_exactly_once(&p);
    }
}

#[test]
fn sigint_stops_cleanly_and_the_rerun_resumes() {
    // Enough thumbnail units that many are still waiting when the signal arrives.
    let p = Project::new();
    p.noise_images("images", 2 * IMAGES, 320, 43);
    p.dag(&thumbs_dag(24));
    let child = p.spawn(&["run", "dag.toml", "-q"]);
    // Interrupt once the first thumbnail unit is committed.
    let commits = || p.files_under("ws/nodes").iter().filter(|f| f.to_string_lossy().contains("/commits/u")).count();
    let photos_units = (2 * IMAGES).div_ceil(16);
    for _ in 0..2000 {
        if commits() > photos_units {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("again to resume"), "{stderr}");
    let run = p.unoflow(&["run", "dag.toml", "-q"]).ok();
    assert!(run.stdout.lines().any(|l| l.starts_with("thumbs") && l.contains("resumed")), "{}", run.stdout);
    assert_eq!(
        sql_csv(&p, "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM thumbs"),
        ["n,ids".to_string(), format!("{},{}", 2 * IMAGES, 2 * IMAGES)]
    );
}

#[test]
fn a_corrupt_part_is_detected_never_read_and_recomputed() {
    let p = project();
    p.unoflow(&["run", "dag.toml", "-q"]).ok();
    let part = crate::support::part_file(&p, &fingerprint(&p, "thumbs"), 1);
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&part, &bytes).unwrap();

    let refused = p.unoflow(&["sql", "--dag", "dag.toml", "SELECT count(*) FROM thumbs"]).expect_code(1);
    assert!(refused.stderr.contains("is corrupt, so it will not be read"), "{}", refused.stderr);
    assert!(refused.stderr.contains("checksum mismatch"), "{}", refused.stderr);

    let run = p.unoflow(&["run", "dag.toml"]).ok();
    assert!(run.stderr.contains("corrupt part, not read"), "{}", run.stderr);
    assert!(run.stdout.lines().any(|l| l.starts_with("thumbs") && l.contains("resumed")), "{}", run.stdout);
    // Only the damaged unit was recomputed; the view downstream reads the new part.
    assert!(run.stdout.lines().any(|l| l.starts_with("small") && l.contains("view")), "{}", run.stdout);
    assert_exactly_once(&p);

    // A truncated part shows in the plan (the recomputed unit wrote a new attempt's part).
    let part = crate::support::part_file(&p, &fingerprint(&p, "thumbs"), 1);
    std::fs::write(&part, &bytes[..100]).unwrap();
    let states = plan_states(&p.unoflow(&["plan", "dag.toml", "--json"]).ok());
    let thumbs = states.iter().find(|(n, _, _)| n == "thumbs").unwrap();
    assert_eq!(thumbs.1, "stale");
    assert!(thumbs.2[0].contains("output damaged"), "{thumbs:?}");
}
