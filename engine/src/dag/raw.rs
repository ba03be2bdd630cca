//! The DAG file as written: TOML tables with the byte span of every key and value, before
//! interpolation and before any check against operators.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::Diagnostic;

/// `[dag]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    pub name: Spanned<String>,
    #[serde(default)]
    pub seed: Option<Spanned<i64>>,
    #[serde(default)]
    pub workspace: Option<Spanned<String>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub max_image_pixels: Option<Spanned<i64>>,
}

/// A key with its span.
pub type Key = Spanned<String>;
/// A value with its span.
pub type Value = Spanned<toml::Value>;

/// A `[models.NAME]` or `[nodes.NAME]` table: its name, the span of the name, and its entries in
/// file order.
#[derive(Debug)]
pub struct RawTable {
    pub name: String,
    pub name_span: Range<usize>,
    pub entries: Vec<(Key, Value)>,
}

impl RawTable {
    /// The entry named `key`.
    pub fn get(&self, key: &str) -> Option<&(Key, Value)> {
        self.entries.iter().find(|(k, _)| k.get_ref() == key)
    }
}

/// A whole DAG file.
#[derive(Debug)]
pub struct RawDag {
    pub header: Spanned<RawHeader>,
    pub vars: Vec<(Key, Value)>,
    pub models: Vec<RawTable>,
    pub nodes: Vec<RawTable>,
}

type SpannedMap = BTreeMap<Key, Value>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    dag: Option<Spanned<RawHeader>>,
    #[serde(default)]
    vars: SpannedMap,
    #[serde(default)]
    models: BTreeMap<Key, Spanned<SpannedMap>>,
    #[serde(default)]
    nodes: BTreeMap<Key, Spanned<SpannedMap>>,
}

/// Parses the TOML text; a syntax or structure error becomes one diagnostic at its position.
pub fn parse(text: &str) -> Result<RawDag, Diagnostic> {
    let file: File = toml::from_str(text).map_err(|e| {
        Diagnostic::new(format!("invalid DAG file: {}", e.message().trim_end()), e.span()).with_help(
            "a DAG file has a [dag] table (name, seed, workspace), optional [vars] and [models.NAME] tables, \
             and one [nodes.NAME] table per node with `op`, `inputs` and parameters",
        )
    })?;
    let header = file.dag.ok_or_else(|| {
        Diagnostic::new("missing the [dag] table", Some(0..0))
            .with_help("start the file with\n\n    [dag]\n    name = \"my-dag\"\n    seed = 0\n")
    })?;
    Ok(RawDag { header, vars: in_file_order(file.vars.into_iter().collect()), models: tables(file.models), nodes: tables(file.nodes) })
}

fn tables(map: BTreeMap<Key, Spanned<SpannedMap>>) -> Vec<RawTable> {
    let mut out: Vec<RawTable> = map
        .into_iter()
        .map(|(name, body)| RawTable {
            name_span: name.span(),
            name: name.into_inner(),
            entries: in_file_order(body.into_inner().into_iter().collect()),
        })
        .collect();
    out.sort_by_key(|t| t.name_span.start);
    out
}

fn in_file_order(mut entries: Vec<(Key, Value)>) -> Vec<(Key, Value)> {
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spans_and_file_order() {
        let text = "[dag]\nname = \"d\"\n\n[nodes.b]\nop = \"read\"\n\n[nodes.a]\nop = \"sql\"\nquery = \"x\"\n";
        let dag = parse(text).unwrap();
        let names: Vec<_> = dag.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let (k, v) = dag.nodes[1].get("query").unwrap();
        assert_eq!(&text[k.span()], "query");
        assert_eq!(&text[v.span()], "\"x\"");
        assert_eq!(&text[dag.nodes[0].name_span.clone()], "b");
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("[dag]\nname = \n").unwrap_err();
        assert!(err.span.is_some());
        assert!(err.message.starts_with("invalid DAG file"), "{}", err.message);
    }

    #[test]
    fn missing_header() {
        let err = parse("[nodes.a]\nop = \"read\"\n").unwrap_err();
        assert_eq!(err.message, "missing the [dag] table");
    }
}
