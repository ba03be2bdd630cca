//! The documentation against the program: the operator reference is what `ops --markdown`
//! prints, every link and anchor resolves, every DAG in the docs validates, every command's
//! help has an example.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::support::Project;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README, BENCHMARKS.md and every page of the book.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md"), repo().join("BENCHMARKS.md")];
    let mut book: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    book.sort();
    pages.extend(book);
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).display().to_string()
}

#[test]
fn the_operator_reference_is_what_the_code_prints() {
    let printed = Project::new().unoflow(&["ops", "--markdown"]).ok().stdout;
    let page = repo().join("docs/operators.md");
    if std::env::var_os("UNOFLOW_BLESS").is_some() {
        std::fs::write(&page, &printed).expect("write docs/operators.md");
    }
    let written = read(&page);
    assert!(
        written == printed,
        "docs/operators.md differs from `unoflow ops --markdown`; regenerate it with\n  cargo run -- ops --markdown > docs/operators.md\n(first differing line: {:?})",
        written.lines().zip(printed.lines()).find(|(a, b)| a != b)
    );
    // Every operator of the program is on the page, with its parameters.
    for name in ["read", "sql", "export", "python", "command", "incontext_generate", "dino_filter", "vlm_score", "train_lora", "evaluate"] {
        assert!(printed.contains(&format!("\n## `{name}`\n")), "{name} is missing from the reference");
    }
    assert!(printed.contains("| `threshold` |"), "{printed}");
    let both = Project::new().unoflow(&["ops", "read", "--markdown"]).expect_code(2);
    assert!(both.stderr.contains("`--markdown` lists every operator; leave out the operator's name"), "{}", both.stderr);
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, only letters, digits, `-` and `_`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings (outside code blocks), with GitHub's `-1`, `-2` for
/// repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (heading, _) in prose_lines(text).filter_map(|line| line.strip_prefix('#').map(|rest| (rest.trim_start_matches('#'), ()))) {
        let base = slug(heading);
        let mut anchor = base.clone();
        let mut n = 0;
        while !found.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    found
}

/// The lines of `text` outside fenced code blocks.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The targets of the Markdown links `[text](target)` in the prose of `text`.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_link_and_anchor_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        for target in links(&text) {
            let target = target.split_whitespace().next().unwrap_or_default();
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').map_or((target, None), |(f, a)| (f, Some(a)));
            let file = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
            if !file.exists() {
                broken.push(format!("{}: `{target}`: no file {}", shown(&page), shown(&file)));
                continue;
            }
            if !file.canonicalize().unwrap().starts_with(repo().canonicalize().unwrap()) {
                broken.push(format!("{}: `{target}` points outside the repository", shown(&page)));
            }
            if let Some(anchor) = anchor {
                let known = if file.is_file() { anchors(&read(&file)) } else { BTreeSet::new() };
                if !known.contains(anchor) {
                    broken.push(format!("{}: `{target}`: no heading with that anchor in {}", shown(&page), shown(&file)));
                }
            }
        }
        if text.contains("../shared") {
            broken.push(format!("{}: names a path outside the repository (`../shared`)", shown(&page)));
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_book_lists_every_page_and_the_readme_stays_short() {
    let summary = read(&repo().join("docs/SUMMARY.md"));
    let listed: BTreeSet<String> = links(&summary).into_iter().collect();
    for page in pages().iter().filter(|p| p.parent() == Some(&repo().join("docs"))) {
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name == "SUMMARY.md" || listed.contains(&name), "docs/SUMMARY.md does not list {name}");
    }
    let readme = read(&repo().join("README.md"));
    assert!(readme.lines().count() <= 150, "the README has {} lines; the book holds the rest", readme.lines().count());
    // The two commands of a fresh machine.
    assert!(readme.contains("cargo run -- run dags/quickstart.toml"));
    assert!(readme.contains("cargo test --workspace"));
}

/// The complete DAGs of a page: its ```toml blocks with a `[nodes.…]` table (parts of a DAG are
/// fenced as ```toml fragment).
fn dags(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut block {
            None if fence.starts_with("```") && fence.trim_start_matches('`').trim() == "toml" => block = Some((n + 1, String::new())),
            None => {}
            Some(_) if fence.starts_with("```") => {
                let (line, body) = block.take().unwrap();
                if body.lines().any(|l| l.trim_start().starts_with("[nodes.")) {
                    found.push((line, body));
                }
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    found
}

#[test]
fn every_dag_in_the_docs_validates_as_a_file_at_the_repository_root() {
    // A folder that looks like the repository's root: its entries linked in, so the DAGs'
    // relative paths (`datasets/…`) resolve as they do for a user who saves them there.
    let root = Project::new();
    for entry in std::fs::read_dir(repo()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), root.path(&name.to_string_lossy())).unwrap();
    }
    let mut checked = 0;
    let mut failed = Vec::new();
    for page in pages() {
        for (line, dag) in dags(&read(&page)) {
            let file = format!("doc-dag-{checked}.toml");
            root.write(&file, &dag);
            let run = root.unoflow(&["validate", &file]);
            if run.code != 0 {
                failed.push(format!("{}:{line}: {}{}", shown(&page), run.stdout, run.stderr));
            }
            checked += 1;
        }
    }
    assert!(failed.is_empty(), "DAGs in the docs that do not validate:\n{}", failed.join("\n"));
    assert!(checked >= 2, "the docs hold {checked} complete DAGs; the README and writing-dags.md show one each");
}

#[test]
fn every_command_s_help_shows_an_example() {
    let p = Project::new();
    let top = p.unoflow(&["--help"]).ok().stdout;
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description goes on under the first, indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 10, "{top}");
    let mut missing = Vec::new();
    for command in &commands {
        let help = p.unoflow(&[command, "--help"]).ok().stdout;
        if !help.contains("Example") {
            missing.push(command.clone());
        }
    }
    assert!(missing.is_empty(), "commands whose --help has no example: {missing:?}");
}
