//! From a DAG file's text to a validated [`Dag`].

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use toml::Spanned;
use unoflow_api::params::PathKind;
use unoflow_api::{ParamType, ParamValue, Params};

use super::interpolate::Interpolator;
use super::raw::{self, RawDag, RawTable};
use super::vars::{self, VarOverride};
use super::{Dag, Node};
use crate::diagnostic::{Diagnostic, Diagnostics, SourceFile, did_you_mean};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::{Op, OpKind, Registry};
use crate::workspace::Location;

/// Keys of a `[nodes.NAME]` table that are not operator parameters.
const NODE_KEYS: &[&str] = &["op", "inputs", "salt", "description"];

/// How much of the data validation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Schemas from the head of each source (what `run`, `plan` and `sql` need).
    Schemas,
    /// Also every record of CSV and JSON-lines sources, so a bad line deep in a file is
    /// reported before anything runs (`unoflow validate`).
    EveryRecord,
}

/// What a command says about a DAG beyond its file: `--workspace`, `--var`s, and how much of
/// the data validation reads.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Overrides `[dag] workspace`.
    pub workspace: Option<&'a str>,
    /// Override `[vars]` entries.
    pub vars: &'a [VarOverride],
    pub depth: Depth,
    /// The device the DAG is planned and run for: its class and precision are part of model
    /// nodes' fingerprints ([`Dag::device`]).
    pub device: unoflow_api::Device,
}

impl<'a> LoadOptions<'a> {
    /// Schemas only, with this workspace and these variables.
    pub fn new(workspace: Option<&'a str>, vars: &'a [VarOverride]) -> Self {
        Self { workspace, vars, depth: Depth::Schemas, device: unoflow_api::Device::Cpu }
    }
}

/// Reads, parses and validates the DAG file at `path`. `workspace` overrides `[dag] workspace`.
pub async fn load(path: &Path, workspace: Option<&str>, registry: &Registry) -> Result<Dag> {
    load_with(path, LoadOptions::new(workspace, &[]), registry).await
}

/// [`load`], with `--var`s and reading the data to `options.depth`.
pub async fn load_with(path: &Path, options: LoadOptions<'_>, registry: &Registry) -> Result<Dag> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("cannot read DAG file {}: {e}", path.display())))?;
    let dag_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let dag_dir = std::path::absolute(&dag_dir).map_err(|e| Error::io(&dag_dir, e))?;
    let file = Arc::new(SourceFile::new(path, text));
    let builder = Builder { file: Arc::clone(&file), registry, dag_dir, errors: Vec::new(), depth: options.depth };
    let raw = raw::parse(&file.text).map_err(|d| builder.fail(vec![d]))?;
    let dag = builder.build(raw, options.workspace, options.vars).await?;
    Ok(Dag { device: options.device, ..dag })
}

/// Checks `--var`s against the DAG file's `[vars]` without validating the rest (for `submit`,
/// whose DAG may name files only the cluster has): an unknown name or a wrong type is an error.
pub fn check_vars(path: &Path, text: &str, overrides: &[VarOverride]) -> Result<()> {
    if overrides.is_empty() {
        return Ok(());
    }
    let file = Arc::new(SourceFile::new(path, text.to_string()));
    let fail = |items| -> Error { Diagnostics { file: Arc::clone(&file), items }.into() };
    let raw = raw::parse(text).map_err(|d| fail(vec![d]))?;
    let (_, errors) = vars::apply(&raw.vars, overrides);
    if errors.is_empty() { Ok(()) } else { Err(fail(errors)) }
}

struct Builder<'a> {
    file: Arc<SourceFile>,
    registry: &'a Registry,
    dag_dir: PathBuf,
    errors: Vec<Diagnostic>,
    depth: Depth,
}

/// A node after its own checks, before graph and schema checks.
struct Draft {
    name: String,
    span: Range<usize>,
    kind: Option<Arc<dyn OpKind>>,
    /// The parameters read by the kind, once they checked out.
    op: Option<Arc<dyn Op>>,
    inputs: Vec<(String, Range<usize>)>,
    inputs_span: Option<Range<usize>>,
    params: Params,
    param_spans: HashMap<String, Range<usize>>,
    secret_params: BTreeSet<String>,
    salt: Option<String>,
    /// Whether the node's own checks passed (its schema is derived only then).
    sound: bool,
}

impl Builder<'_> {
    fn fail(&self, items: Vec<Diagnostic>) -> Error {
        Diagnostics { file: Arc::clone(&self.file), items }.into()
    }

    fn error(&mut self, message: impl Into<String>, span: Range<usize>, help: Option<String>) {
        let mut d = Diagnostic::new(message, Some(span));
        d.help = help;
        self.errors.push(d);
    }

    async fn build(mut self, raw: RawDag, workspace_override: Option<&str>, overrides: &[VarOverride]) -> Result<Dag> {
        let header = raw.header.get_ref();
        let name = header.name.get_ref().clone();
        let seed = match &header.seed {
            Some(s) if *s.get_ref() < 0 => {
                self.error("`seed` must not be negative", s.span(), Some("use an integer >= 0".into()));
                0
            }
            Some(s) => *s.get_ref() as u64,
            None => 0,
        };

        let max_image_pixels = match &header.max_image_pixels {
            Some(n) if *n.get_ref() < 1 => {
                self.error(
                    "`max_image_pixels` must be at least 1",
                    n.span(),
                    Some("e.g. max_image_pixels = 67108864 (8192 × 8192)".into()),
                );
                unoflow_api::PixelLimit::DEFAULT.pixels()
            }
            Some(n) => *n.get_ref() as u64,
            None => unoflow_api::PixelLimit::DEFAULT.pixels(),
        };

        let mut interp = Interpolator::new();
        interp.define("dag_dir", self.dag_dir.to_string_lossy());
        interp.define("dag_name", &name);
        let workspace = self.resolve_vars(&raw, &name, workspace_override, overrides, &mut interp)?;

        for model in &raw.models {
            self.error(
                format!("model `{}`: no model kinds are available in this build yet", model.name),
                model.name_span.clone(),
                Some("remove the [models] table; models arrive with the model operators".into()),
            );
        }

        let drafts: Vec<Draft> = raw.nodes.iter().map(|t| self.node(t, &interp)).collect();
        let order = self.graph(&drafts);
        // Schemas are checked even after other errors, for every node whose own table and
        // inputs are sound, so one run of `validate` reports every problem.
        let nodes = self.schemas(drafts, &order).await;
        if !self.errors.is_empty() {
            let errors = std::mem::take(&mut self.errors);
            return Err(self.fail(errors));
        }
        let graph = Graph::new(&nodes.iter().map(|n| n.inputs.clone()).collect::<Vec<_>>());
        let vars = last_of_each(overrides);
        Ok(Dag {
            file: self.file,
            name,
            seed,
            dag_dir: self.dag_dir,
            workspace,
            nodes,
            graph,
            max_image_pixels,
            vars,
            device: unoflow_api::Device::Cpu,
        })
    }

    /// Defines every `[vars]` entry (with the `--var` overrides put in) and the `workspace`
    /// built-in, in the order their references need (a variable may use one defined below it, or
    /// `${workspace}`, whose value may use variables); returns the workspace. A cycle of
    /// references is an error naming it.
    fn resolve_vars(
        &mut self,
        raw: &RawDag,
        dag_name: &str,
        workspace_override: Option<&str>,
        overrides: &[VarOverride],
        interp: &mut Interpolator,
    ) -> Result<Location> {
        const WORKSPACE: &str = "workspace";
        let header = raw.header.get_ref();
        let (declared, errors) = vars::apply(&raw.vars, overrides);
        self.errors.extend(errors);
        // (name, value, span): the values still to resolve.
        let mut pending: Vec<(String, toml::Value, Range<usize>)> = Vec::new();
        for (name, value, span) in declared {
            if value.is_table() {
                self.error(
                    format!("variable `{name}` is a table"),
                    span,
                    Some("a variable holds a string, number, boolean or array".into()),
                );
                continue;
            }
            pending.push((name, value, span));
        }
        match (workspace_override, &header.workspace) {
            (Some(w), _) => {
                let base = std::path::absolute(".").map_err(|e| Error::io(".", e))?;
                interp.define(WORKSPACE, workspace_text(w, &base)?);
            }
            (None, Some(w)) => pending.push((WORKSPACE.into(), toml::Value::String(w.get_ref().clone()), w.span())),
            (None, None) => interp.define(WORKSPACE, self.dag_dir.join(".unoflow").join(dag_name).to_string_lossy()),
        }
        loop {
            let waiting: Vec<&str> = pending.iter().map(|(n, ..)| n.as_str()).collect();
            let ready = pending.iter().position(|(name, value, _)| {
                Interpolator::value_references(value).iter().all(|r| r == name || !waiting.contains(r) || interp.is_defined(r))
            });
            let Some(k) = ready else { break };
            let (name, value, span) = pending.remove(k);
            if Interpolator::value_references(&value).contains(&name.as_str()) {
                self.error(
                    format!("variable `{name}` refers to itself"),
                    span,
                    Some("a variable cannot be defined in terms of itself".into()),
                );
                continue;
            }
            match interp.apply_value(&value) {
                Ok((toml::Value::String(text), _)) if name == WORKSPACE => match workspace_text(&text, &self.dag_dir) {
                    Ok(text) => interp.define(WORKSPACE, text),
                    Err(e) => {
                        self.error(e.to_string(), span, None);
                        // Kept as written, so that variables using it resolve and report nothing more.
                        interp.define(WORKSPACE, text);
                    }
                },
                Ok((other, _)) if name == WORKSPACE => {
                    self.error(format!("`workspace` must be a folder or URL, found {}", other.type_str()), span, None);
                    interp.define(WORKSPACE, self.dag_dir.join(".unoflow").join(dag_name).to_string_lossy());
                }
                Ok((v, secret)) => interp.define_value(name, v, secret),
                Err((m, h)) => self.error(m, span, Some(h)),
            }
        }
        if let Some((_, _, span)) = pending.first() {
            let names: Vec<String> = pending.iter().map(|(n, ..)| format!("`{n}`")).collect();
            self.error(
                format!("variables {} refer to each other in a cycle", names.join(", ")),
                span.clone(),
                Some("break the cycle: one of them must not depend on the others".into()),
            );
        }
        // A workspace that does not parse was reported above, and the build fails with it.
        Ok(Location::parse(interp.value(WORKSPACE).unwrap_or_default(), &self.dag_dir)
            .unwrap_or_else(|_| Location::Folder(self.dag_dir.clone())))
    }

    /// Checks one node's own table: name, op, parameters, files.
    fn node(&mut self, table: &RawTable, interp: &Interpolator) -> Draft {
        let mut draft = Draft {
            name: table.name.clone(),
            span: table.name_span.clone(),
            kind: None,
            op: None,
            inputs: Vec::new(),
            inputs_span: None,
            params: Params::new(),
            param_spans: HashMap::new(),
            secret_params: BTreeSet::new(),
            salt: None,
            sound: false,
        };
        let errors_before = self.errors.len();
        if !is_identifier(&table.name) {
            self.error(
                format!("node name `{}` is not a valid table name", table.name),
                table.name_span.clone(),
                Some(format!(
                    "node names are SQL table names: use lowercase letters, digits and `_`, starting with a letter (e.g. `{}`)",
                    suggest_identifier(&table.name)
                )),
            );
        }

        let op = match table.get("op") {
            None => {
                let names: Vec<_> = self.registry.names().collect();
                self.error(
                    format!("node `{}` has no `op`", table.name),
                    table.name_span.clone(),
                    Some(format!("add `op = \"…\"` under [nodes.{}]; operators: {}", table.name, names.join(", "))),
                );
                None
            }
            Some((_, v)) => match v.get_ref() {
                toml::Value::String(s) => match self.registry.get(s) {
                    Some(kind) => Some(Arc::clone(kind)),
                    None => {
                        let help = match did_you_mean(s, self.registry.names()) {
                            Some(m) => format!("did you mean `{m}`? `unoflow ops` lists the operators"),
                            None => "`unoflow ops` lists the operators".into(),
                        };
                        self.error(format!("unknown op `{s}` in node `{}`", table.name), v.span(), Some(help));
                        None
                    }
                },
                other => {
                    self.error(format!("`op` must be a string, found {}", other.type_str()), v.span(), None);
                    None
                }
            },
        };

        if let Some((_, v)) = table.get("inputs") {
            draft.inputs_span = Some(v.span());
            match v.get_ref() {
                toml::Value::String(s) => draft.inputs.push((s.clone(), v.span())),
                toml::Value::Array(items) if items.iter().all(|i| i.is_str()) => {
                    draft.inputs = items.iter().filter_map(|i| i.as_str()).map(|s| (s.to_string(), v.span())).collect();
                }
                _ => self.error(
                    "`inputs` must be a node name or an array of node names",
                    v.span(),
                    Some("e.g. inputs = [\"photos\"]".into()),
                ),
            }
        }
        if let Some((_, v)) = table.get("salt") {
            match v.get_ref() {
                toml::Value::String(s) => draft.salt = Some(s.clone()),
                other => draft.salt = Some(other.to_string()),
            }
        }

        let Some(op) = op else {
            return draft;
        };
        let spec = op.spec();
        let (min, max) = spec.inputs;
        let n = draft.inputs.len();
        if n < min || n > max {
            let want = match (min, max) {
                (0, 0) => "no inputs".to_string(),
                (a, b) if a == b => format!("{a} input{}", if a == 1 { "" } else { "s" }),
                (a, usize::MAX) => format!("at least {a} input{}", if a == 1 { "" } else { "s" }),
                (a, b) => format!("{a} to {b} inputs"),
            };
            let span = draft.inputs_span.clone().unwrap_or(table.name_span.clone());
            let help = if min > 0 && n == 0 {
                format!("add `inputs = [\"…\"]` under [nodes.{}]", table.name)
            } else {
                format!("`{}` reads no node: remove `inputs`", spec.name)
            };
            self.error(format!("node `{}` (op `{}`) takes {want}, but has {n}", table.name, spec.name), span, Some(help));
        }

        for (key, value) in &table.entries {
            let key_name = key.get_ref().as_str();
            if NODE_KEYS.contains(&key_name) {
                continue;
            }
            let Some(param) = spec.param(key_name) else {
                let candidates = spec.params.iter().map(|p| p.name).chain(NODE_KEYS.iter().copied());
                let known: Vec<_> = spec.params.iter().map(|p| format!("`{}`", p.name)).collect();
                let help = match did_you_mean(key_name, candidates) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None if known.is_empty() => format!("`{}` takes no parameters", spec.name),
                    None => format!("`{}` takes {}", spec.name, known.join(", ")),
                };
                self.error(
                    format!("unknown parameter `{key_name}` for op `{}` in node `{}`", spec.name, table.name),
                    key.span(),
                    Some(help),
                );
                continue;
            };
            let Some(converted) = self.value(value, interp) else { continue };
            let (converted, secret) = converted;
            if secret || param.secret {
                draft.secret_params.insert(key_name.to_string());
            }
            match param.ty.check(&converted) {
                Ok(mut checked) => {
                    let remote = match (&param.ty, &checked) {
                        (ParamType::Path(kind), ParamValue::Str(p)) => crate::remote::RemoteUrl::recognise(p).map(|url| (*kind, url)),
                        _ => None,
                    };
                    if let Some((kind, url)) = remote {
                        // A URL stays a URL (joined to the DAG's folder it became a local folder
                        // named `s3:`); an input must list something now, not when it is read.
                        match url.and_then(|url| remote_path(&url, kind)) {
                            Ok(normal) => checked = ParamValue::Str(normal),
                            Err(e) => self.error(
                                format!("{e} (parameter `{key_name}` of node `{}`)", table.name),
                                value.span(),
                                Some(REMOTE_HELP.to_string()),
                            ),
                        }
                    } else if let (ParamType::Path(kind), ParamValue::Str(p)) = (&param.ty, &checked) {
                        let resolved = normalize(&self.dag_dir.join(p));
                        if *kind == PathKind::Input && !resolved.exists() {
                            self.error(
                                format!("file not found: {} (parameter `{key_name}` of node `{}`)", resolved.display(), table.name),
                                value.span(),
                                Some(format!("paths are relative to the DAG file's folder, {}", self.dag_dir.display())),
                            );
                        }
                        checked = ParamValue::Str(resolved.to_string_lossy().into_owned());
                    } else if let (ParamType::Command, ParamValue::List(words)) = (&param.ty, &checked) {
                        checked = ParamValue::List(words.iter().map(|w| self.command_word(w)).collect());
                    }
                    draft.params.insert(key_name, checked);
                    draft.param_spans.insert(key_name.to_string(), value.span());
                }
                Err(message) => self.error(
                    format!("parameter `{key_name}` of node `{}` (op `{}`): {message}", table.name, spec.name),
                    value.span(),
                    Some(format!("`{key_name}` is {}: {}", param.ty.describe(), param.doc)),
                ),
            }
        }
        for param in &spec.params {
            if draft.params.get(param.name).is_some() {
                continue;
            }
            match &param.default {
                Some(d) => draft.params.insert(param.name, d.clone()),
                None if table.get(param.name).is_none() => self.error(
                    format!("node `{}` (op `{}`) needs parameter `{}`", table.name, spec.name, param.name),
                    table.name_span.clone(),
                    Some(format!("add `{} = …` under [nodes.{}]: {} ({})", param.name, table.name, param.doc, param.ty.describe())),
                ),
                None => {}
            }
        }
        let mut seen = BTreeSet::new();
        for (input, span) in &draft.inputs {
            if !seen.insert(input.as_str()) {
                self.error(
                    format!("node `{}` lists input `{input}` twice", table.name),
                    span.clone(),
                    Some(format!("list each input once; to read `{input}` twice, join it with itself in the query (`FROM {input} a JOIN {input} b …`)")),
                );
            }
        }
        if self.errors.len() == errors_before {
            match op.bind(&draft.params) {
                Ok(bound) => draft.op = Some(bound),
                Err(e) => {
                    let span = e.param.and_then(|p| draft.param_spans.get(p).cloned()).unwrap_or(table.name_span.clone());
                    self.error(format!("node `{}` (op `{}`): {}", table.name, spec.name, e.message), span, e.help);
                }
            }
        }
        draft.kind = Some(op);
        draft.sound = self.errors.len() == errors_before;
        draft
    }

    /// A word of a command line with a file it names made absolute: the program and arguments
    /// are written relative to the DAG file's folder, as paths are, but run from elsewhere.
    /// Words that name no file here (`python3`, `--flag`, `0.5`) stay as written.
    fn command_word(&self, word: &ParamValue) -> ParamValue {
        let ParamValue::Str(text) = word else { return word.clone() };
        let candidate = self.dag_dir.join(text);
        if text.is_empty() || text.starts_with('-') || !candidate.is_file() {
            return word.clone();
        }
        ParamValue::Str(normalize(&candidate).to_string_lossy().into_owned())
    }

    /// Converts a TOML value to a parameter value, interpolating strings (a string that is
    /// one `${var}` takes the variable's type); the flag says whether a secret went into it.
    fn value(&mut self, value: &Spanned<toml::Value>, interp: &Interpolator) -> Option<(ParamValue, bool)> {
        fn convert(v: toml::Value) -> Result<ParamValue, (String, String)> {
            Ok(match v {
                toml::Value::String(s) => ParamValue::Str(s),
                toml::Value::Integer(i) => ParamValue::Int(i),
                toml::Value::Float(f) => ParamValue::Float(f),
                toml::Value::Boolean(b) => ParamValue::Bool(b),
                toml::Value::Datetime(d) => ParamValue::Str(d.to_string()),
                toml::Value::Array(items) => ParamValue::List(items.into_iter().map(convert).collect::<Result<_, _>>()?),
                toml::Value::Table(entries) => {
                    ParamValue::Table(entries.into_iter().map(|(k, v)| convert(v).map(|v| (k, v))).collect::<Result<_, _>>()?)
                }
            })
        }
        match interp.apply_value(value.get_ref()).and_then(|(v, secret)| Ok((convert(v)?, secret))) {
            Ok(v) => Some(v),
            Err((m, h)) => {
                self.error(m, value.span(), Some(h));
                None
            }
        }
    }

    /// Checks inputs and cycles; returns the topological order (ties in file order).
    fn graph(&mut self, drafts: &[Draft]) -> Vec<usize> {
        let index: HashMap<&str, usize> = drafts.iter().enumerate().map(|(i, d)| (d.name.as_str(), i)).collect();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); drafts.len()];
        for (i, d) in drafts.iter().enumerate() {
            for (input, span) in &d.inputs {
                match index.get(input.as_str()) {
                    Some(&j) => edges[i].push(j),
                    None => {
                        let help = match did_you_mean(input, drafts.iter().map(|d| d.name.as_str())) {
                            Some(m) => format!("did you mean `{m}`?"),
                            None => format!("define it as [nodes.{input}], or use one of: {}", names(drafts)),
                        };
                        self.error(format!("node `{}` reads `{input}`, which is not a node of this DAG", d.name), span.clone(), Some(help));
                    }
                }
            }
        }
        match Graph::new(&edges).topological_order() {
            Ok(order) => order,
            Err(cycle) => {
                let path: Vec<&str> = cycle.iter().map(|&i| drafts[i].name.as_str()).collect();
                let first = &drafts[cycle[0]];
                self.error(
                    format!("the DAG has a cycle: {}", path.join(" -> ")),
                    first.inputs_span.clone().unwrap_or(first.span.clone()),
                    Some("a node cannot depend on its own output; remove one of these inputs".into()),
                );
                Vec::new()
            }
        }
    }

    /// Derives every node's output schema in order, checking each consumer's required columns.
    async fn schemas(&mut self, drafts: Vec<Draft>, order: &[usize]) -> Vec<Node> {
        // Draft index → index in `nodes`, for the nodes built so far.
        let mut built: HashMap<usize, usize> = HashMap::new();
        let index: HashMap<String, usize> = drafts.iter().enumerate().map(|(i, d)| (d.name.clone(), i)).collect();
        let mut slots: Vec<Option<Draft>> = drafts.into_iter().map(Some).collect();
        let mut nodes: Vec<Node> = Vec::with_capacity(order.len());
        let mut failed: BTreeSet<usize> = BTreeSet::new();
        for &i in order {
            let Some(draft) = slots[i].take() else { continue };
            let Some(op) = draft.op.clone() else {
                failed.insert(i);
                continue;
            };
            let Some(input_ids) = draft.inputs.iter().map(|(n, _)| index.get(n).copied()).collect::<Option<Vec<usize>>>() else {
                failed.insert(i);
                continue;
            };
            if !draft.sound || input_ids.iter().any(|j| failed.contains(j) || !built.contains_key(j)) {
                failed.insert(i);
                continue;
            }
            let inputs: Vec<(String, SchemaRef)> =
                input_ids.iter().map(|j| (nodes[built[j]].name.clone(), Arc::clone(&nodes[built[j]].schema))).collect();
            let producer_ops: Vec<&'static str> = input_ids.iter().map(|j| nodes[built[j]].op_name()).collect();
            if !self.check_columns(&draft, op.as_ref(), &inputs, &producer_ops) {
                failed.insert(i);
                continue;
            }
            let mut derived = op.derive(&inputs).await;
            if self.depth == Depth::EveryRecord
                && derived.is_ok()
                && let Err(e) = op.check_data().await
            {
                derived = Err(e);
            }
            match derived {
                Ok(derived) => {
                    built.insert(i, nodes.len());
                    nodes.push(Node {
                        name: draft.name,
                        op,
                        inputs: input_ids.iter().map(|j| built[j]).collect(),
                        params: draft.params,
                        salt: draft.salt,
                        secret_params: draft.secret_params,
                        span: draft.span,
                        schema: derived.schema,
                        storage: derived.storage,
                    })
                }
                Err(e) => {
                    let span = e.param.and_then(|p| draft.param_spans.get(p).cloned()).unwrap_or(draft.span.clone());
                    self.error(format!("node `{}` (op `{}`): {}", draft.name, op.spec().name, e.message), span, e.help);
                    failed.insert(i);
                }
            }
        }
        nodes
    }

    fn check_columns(&mut self, draft: &Draft, op: &dyn Op, inputs: &[(String, SchemaRef)], producer_ops: &[&str]) -> bool {
        let required = op.required_columns();
        let mut ok = true;
        for (k, reqs) in required.iter().enumerate() {
            let Some((producer, schema)) = inputs.get(k) else { continue };
            let producer_op = producer_ops[k];
            for req in reqs {
                let span = draft.inputs_span.clone().unwrap_or(draft.span.clone());
                match schema.field_with_name(&req.name) {
                    Ok(field) if req.accepts(field.data_type()) => {}
                    Ok(field) => {
                        ok = false;
                        self.error(
                            format!(
                                "node `{}` (op `{}`) needs column `{}` as {}, but `{producer}` (op `{producer_op}`) outputs it as {}",
                                draft.name,
                                op.spec().name,
                                req.name,
                                req.describe_types(),
                                field.data_type()
                            ),
                            span,
                            Some("cast it in a `sql` node between them, or read another column".into()),
                        );
                    }
                    Err(_) => {
                        ok = false;
                        let columns: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                        let help = match did_you_mean(&req.name, columns.iter().copied()) {
                            Some(m) => format!("did you mean `{m}`? `{producer}` outputs: {}", columns.join(", ")),
                            None => format!("`{producer}` outputs: {}", columns.join(", ")),
                        };
                        self.error(
                            format!(
                                "node `{}` (op `{}`) needs column `{}` ({}) from its input `{producer}` (op `{producer_op}`), which does not output it",
                                draft.name,
                                op.spec().name,
                                req.name,
                                req.describe_types()
                            ),
                            span,
                            Some(help),
                        );
                    }
                }
            }
        }
        ok
    }
}

/// The overrides that apply: the last `--var` of each name, in the order first given.
fn last_of_each(overrides: &[VarOverride]) -> Vec<VarOverride> {
    let mut out: Vec<VarOverride> = Vec::new();
    for o in overrides {
        match out.iter_mut().find(|x| x.name == o.name) {
            Some(x) => *x = o.clone(),
            None => out.push(o.clone()),
        }
    }
    out
}

/// Resolves `.` and `..` in an absolute path without touching the file system, so messages
/// and records show `/repo/.unoflow/x`, not `/repo/dags/../.unoflow/x`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn names(drafts: &[Draft]) -> String {
    drafts.iter().map(|d| format!("`{}`", d.name)).collect::<Vec<_>>().join(", ")
}

/// Whether `name` is a lowercase identifier (so SQL finds the table without quotes).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn suggest_identifier(name: &str) -> String {
    let mut s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        s.insert(0, 'n');
    }
    s
}

/// What to check when a path parameter's URL is refused.
const REMOTE_HELP: &str = "inputs may be s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX or https://HOST/FILE, \
                           with credentials from the environment as for workspaces; exports may be written to the first three";

/// A path parameter's URL, normalised: an input's must list at least one object (its listing is
/// read now, once per process), an export's must be object storage.
fn remote_path(url: &crate::remote::RemoteUrl, kind: PathKind) -> Result<String> {
    match kind {
        PathKind::Input => {
            crate::remote::listing(url)?;
        }
        PathKind::Output if url.is_http() => {
            return Err(Error::Usage(format!("{url}: an export is written to object storage or a folder, not to a web server")));
        }
        PathKind::Output => {}
    }
    Ok(url.as_str().to_string())
}

/// The `workspace` variable's value: a URL as written, a folder as an absolute path (relative to
/// `base`); a malformed URL is an error saying how to write it.
fn workspace_text(text: &str, base: &Path) -> Result<String> {
    Ok(match Location::parse(text, base)? {
        Location::Url(url) => url,
        Location::Folder(path) => normalize(&path).to_string_lossy().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("thumbs_2"));
        assert!(!is_identifier("Thumbs"));
        assert!(!is_identifier("2x"));
        assert_eq!(suggest_identifier("My-Node"), "my_node");
    }
}
