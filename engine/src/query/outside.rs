//! Views for engines outside unoflow: `tables/NAME.sql`, DuckDB statements that define a view
//! over the stored parts of its inputs, so the table users want (a `curated` view) is readable
//! where the stored nodes are.
//!
//! ```text
//! duckdb -c ".read ws/tables/curated.sql" -c "SELECT count(*) FROM curated"
//! ```
//!
//! Each stored input is a view over its committed part files (the exact files of the output
//! the view was planned on, by path or URL); each view is its query as written. What DuckDB
//! cannot give: the engine's ids of a view whose rows get them from the engine (joins,
//! unions, aggregates, queries that drop `row_id`: there `row_id` is what the query says, if
//! anything), and the engine's fixed row order.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{ident, literal};
use crate::data::{NodeData, ViewData};

/// The statements defining `view` and every input it reads, inputs first.
pub fn duckdb_script(view: &ViewData) -> String {
    let mut out = format!(
        "-- The unoflow view `{}` (fingerprint {}) for DuckDB: `.read` this file, then query `{}`.\n\
         -- Written by `unoflow run`; the part files are those of the run that wrote it.\n",
        view.name, view.fingerprint, view.name
    );
    define_view(view, &mut BTreeSet::from([view.name.clone()]), &mut out);
    out
}

/// Defines `data` unless it is in `defined`.
fn define(data: &NodeData, defined: &mut BTreeSet<String>, out: &mut String) {
    if !defined.insert(data.name().to_string()) {
        return;
    }
    match data {
        NodeData::Table(table) => {
            let files: Vec<String> = table.manifest.row_files().map(|f| literal(&table.store.url_of(f))).collect();
            let _ = writeln!(out, "CREATE OR REPLACE VIEW {} AS SELECT * FROM read_parquet([{}]);", ident(&table.name), files.join(", "));
        }
        NodeData::View(view) => define_view(view, defined, out),
    }
}

/// Defines `view`'s inputs, then `view`.
fn define_view(view: &ViewData, defined: &mut BTreeSet<String>, out: &mut String) {
    for input in &view.inputs {
        define(input, defined, out);
    }
    let query = view.query.trim().trim_end_matches(';').trim_end();
    let _ = writeln!(out, "CREATE OR REPLACE VIEW {} AS\n{query};", ident(&view.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_quoted() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(literal("/w/it's/part.parquet"), "'/w/it''s/part.parquet'");
    }
}
