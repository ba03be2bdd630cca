//! `unoflow ops`: the operators a program knows, as a listing, one in full, or the book's
//! operator reference (`--markdown`, the page `docs/operators.md` is generated from).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use unoflow_api::columns::{ColumnRequirement, ROW_ID};
use unoflow_api::{OpSpec, ParamSpec, ParamType, ParamValue, Params};

use super::output::{self, STDOUT};
use crate::error::{Error, IoContext, Result};
use crate::ops::{OpKind, Registry};

/// What `unoflow ops` prints.
pub(super) enum Listing<'a> {
    /// Every operator with its parameters, one line each.
    Short,
    /// One operator in full.
    One(&'a str),
    /// The operator reference of the book, in Markdown.
    Markdown,
}

pub(super) async fn ops(registry: &Registry, listing: Listing<'_>) -> Result<i32> {
    let text = match listing {
        Listing::Short => short(registry),
        Listing::One(name) => {
            let op = registry.get(name).ok_or_else(|| {
                let hint =
                    crate::diagnostic::did_you_mean(name, registry.names()).map(|m| format!(" (did you mean `{m}`?)")).unwrap_or_default();
                Error::Usage(format!("no operator `{name}`{hint}; `unoflow ops` lists them"))
            })?;
            full(op.spec())
        }
        Listing::Markdown => markdown(registry).await,
    };
    output::stdout().write_all(text.as_bytes()).at(STDOUT)?;
    Ok(0)
}

fn short(registry: &Registry) -> String {
    let width = registry.names().map(str::len).max().unwrap_or(4);
    let mut out = String::new();
    for op in registry.iter() {
        let spec = op.spec();
        let _ = writeln!(out, "{:width$}  {}", spec.name, spec.summary);
        for p in &spec.params {
            let default = p.default.as_ref().map(|d| format!(" = {d}")).unwrap_or_else(|| " (required)".into());
            let _ = writeln!(out, "{:width$}    {}: {}{default}", "", p.name, p.ty.short_name());
        }
    }
    out.push_str("\n`unoflow ops NAME` shows one operator in full; `unoflow ops --markdown` is the book's operator reference.\n");
    out
}

fn full(spec: &OpSpec) -> String {
    let facts = Facts::of(spec);
    let mut out = format!("{} (version {})\n\n{}\n\n{}\n\n", spec.name, spec.version, spec.summary, spec.doc);
    let _ = writeln!(out, "inputs: {}\nresource: {}\nrows per unit: {}\n", facts.inputs, facts.resource, facts.rows);
    out.push_str("parameters:\n");
    for p in &spec.params {
        let _ = writeln!(
            out,
            "  {} ({}, {}{})\n      {}",
            p.name,
            p.ty.describe(),
            default_text(p),
            if p.secret { ", secret" } else { "" },
            p.doc
        );
    }
    out
}

/// How an operator's work is shaped, in words.
struct Facts {
    inputs: String,
    resource: String,
    rows: String,
}

impl Facts {
    fn of(spec: &OpSpec) -> Self {
        let inputs = match spec.inputs {
            (0, 0) => "none".to_string(),
            (a, b) if a == b => a.to_string(),
            (a, usize::MAX) => format!("{a} or more"),
            (a, b) => format!("{a} to {b}"),
        };
        // The operators that run the user's code take both from their parameters.
        let user_code = spec.param("resource").is_some();
        let resource = if user_code { "the `resource` parameter".to_string() } else { format!("{:?}", spec.resource).to_lowercase() };
        let rows = match spec.partition_rows {
            _ if user_code => "the `batch_size` parameter".to_string(),
            usize::MAX => "all".into(),
            n => n.to_string(),
        };
        Self { inputs, resource, rows }
    }
}

fn default_text(p: &ParamSpec) -> String {
    p.default.as_ref().map(|d| format!("default {d}")).unwrap_or_else(|| "required".into())
}

/// The operator reference: an index, then per operator its help, how its work is shaped, its
/// parameters and the columns it reads and writes (found by binding it, as validation does).
async fn markdown(registry: &Registry) -> String {
    let mut out = String::from(
        "# Operator reference\n\n\
         Generated from the code by `unoflow ops --markdown` (a test fails when this page and the\n\
         code disagree). A column written `<name>` is the one the parameter `name` names.\n\n\
         | operator | what it does |\n|---|---|\n",
    );
    for op in registry.iter() {
        let spec = op.spec();
        let _ = writeln!(out, "| [`{0}`](#{0}) | {1} |", spec.name, cell(spec.summary));
    }
    for op in registry.iter() {
        let spec = op.spec();
        let facts = Facts::of(spec);
        let _ = write!(out, "\n## `{}`\n\n{}\n\n", spec.name, spec.summary);
        if !spec.doc.trim().is_empty() {
            let _ = write!(out, "{}\n\n", spec.doc.trim());
        }
        let _ = write!(
            out,
            "Inputs: {}. Resource: {}. Rows per unit: {}. Version: {}.\n\n",
            facts.inputs, facts.resource, facts.rows, spec.version
        );
        if spec.params.is_empty() {
            out.push_str("No parameters.\n");
        } else {
            out.push_str("| parameter | type | default | in the fingerprint | description |\n|---|---|---|---|---|\n");
            for p in &spec.params {
                let default = p.default.as_ref().map(|d| format!("`{d}`")).unwrap_or_else(|| "required".into());
                let fingerprinted = match (p.secret, p.fingerprinted) {
                    (true, _) => "no (secret)",
                    (false, true) => "yes",
                    (false, false) => "no",
                };
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} | {} |",
                    p.name,
                    cell(&p.ty.describe()),
                    cell(&default),
                    fingerprinted,
                    cell(p.doc)
                );
            }
        }
        out.push('\n');
        out.push_str(&columns(op.as_ref()).await);
    }
    out
}

/// The columns `op` reads from each input and the ones it writes, bound with its defaults and
/// a placeholder for each required parameter.
async fn columns(op: &dyn OpKind) -> String {
    let spec = op.spec();
    let mut params = Params::new();
    for p in &spec.params {
        params.insert(p.name, p.default.clone().unwrap_or_else(|| placeholder(p)));
    }
    let Ok(bound) = op.bind(&params) else {
        return "Columns: they depend on the parameters.\n".into();
    };
    let required = bound.required_columns();
    let input_count = spec.inputs.0.max(required.len());
    let inputs: Vec<(String, SchemaRef)> = (0..input_count)
        .map(|i| {
            let mut fields = vec![Field::new(ROW_ID, DataType::Utf8, false)];
            fields.extend(required.get(i).into_iter().flatten().map(|c| Field::new(&c.name, c.types[0].clone(), true)));
            (format!("input{i}"), Arc::new(Schema::new(fields)))
        })
        .collect();
    let mut out = String::new();
    for (i, needs) in required.iter().enumerate() {
        let which = if required.len() > 1 { format!(" (input {})", i + 1) } else { String::new() };
        let listed = if needs.is_empty() {
            "none beyond `row_id`".to_string()
        } else {
            needs.iter().map(column_text).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(out, "Reads{which}: {listed}.\n");
    }
    match bound.derive(&inputs).await {
        Ok(derived) => {
            let given: Vec<&str> = inputs.first().map(|(_, s)| s.fields().iter().map(|f| f.name().as_str()).collect()).unwrap_or_default();
            let keeps_input = inputs.len() == 1 && given.iter().all(|name| derived.schema.field_with_name(name).is_ok());
            let written: Vec<String> = derived
                .schema
                .fields()
                .iter()
                .filter(|f| !(keeps_input && given.contains(&f.name().as_str())))
                .map(|f| format!("`{}` ({})", f.name(), type_name(f.data_type())))
                .collect();
            let what = if keeps_input { "Adds to its input's columns" } else { "Writes" };
            let listed = if written.is_empty() { "nothing".to_string() } else { written.join(", ") };
            let _ = writeln!(out, "{what}: {listed}.");
        }
        Err(_) => out.push_str("Writes: columns that depend on the parameters and the input.\n"),
    }
    out
}

/// A stand-in for a required parameter: the example its help gives (`e.g. …`), else `<name>`
/// for words; the smallest value in range for numbers.
fn placeholder(p: &ParamSpec) -> ParamValue {
    let example =
        p.doc.split_once("e.g. ").and_then(|(_, rest)| rest.split_whitespace().next()).map(|w| w.trim_end_matches([')', ',', ';', '.']));
    let word = || ParamValue::Str(example.map_or_else(|| format!("<{}>", p.name), str::to_string));
    match &p.ty {
        ParamType::Bool => ParamValue::Bool(false),
        ParamType::Int { min, .. } => ParamValue::Int(min.unwrap_or(1)),
        ParamType::Float { min, .. } => ParamValue::Float(min.unwrap_or(1.0)),
        ParamType::Choice(words) => ParamValue::Str(words.first().map(|w| w.to_string()).unwrap_or_default()),
        ParamType::StrList | ParamType::Command => ParamValue::List(vec![word()]),
        ParamType::Table => ParamValue::Table(Default::default()),
        ParamType::Str | ParamType::Path(_) | ParamType::Sql => word(),
    }
}

fn column_text(c: &ColumnRequirement) -> String {
    let mut types: Vec<String> = Vec::new();
    for name in c.types.iter().map(type_name) {
        if !types.contains(&name) {
            types.push(name);
        }
    }
    format!("`{}` ({})", c.name, types.join(" or "))
}

/// An Arrow type as the docs name it.
fn type_name(ty: &DataType) -> String {
    match ty {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::List(f) | DataType::LargeList(f) => format!("list of {}", type_name(f.data_type())),
        DataType::FixedSizeList(f, n) => format!("{n} × {}", type_name(f.data_type())),
        other => other.to_string().to_lowercase(),
    }
}

/// `text` fit for one cell of a Markdown table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
