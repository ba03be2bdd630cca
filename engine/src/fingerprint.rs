//! Node fingerprints: what a node's output is a function of.
//!
//! `fingerprint = blake3(op, op version, fingerprinted parameters, source digest, salt,
//! device class and precision, input fingerprints)`. Input *names* are not in it, nor the node's
//! own name, nor the file's layout: renaming a node, reordering the file or reformatting keeps
//! the cache. `sql` queries enter in a canonical form with inputs renamed to their position.
//! Secret parameters never enter.
//!
//! Files a node reads (a `read` node's data, model folders, word lists) enter by their relative
//! names and content digests ([`Op::source_digest`](crate::ops::Op::source_digest)), never by
//! their path: the same weights or data at another path, on another disk or host, are the same
//! node. The device class and precision (`cpu/f32`, `cuda/bf16`) enter only for operators that
//! declare their output depends on them ([`DeviceDependence`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use unoflow_api::DeviceDependence;
use unoflow_api::params::{ParamType, PathKind};

use crate::dag::{Dag, Node};
use crate::diagnostic::Diagnostic;
use crate::error::Result;

/// The named input of a fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputRef {
    pub name: String,
    pub fingerprint: String,
}

/// What a fingerprint is made of; kept in the index so that `plan` can say what changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Components {
    pub op: String,
    pub version: u32,
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub salt: Option<String>,
    /// The device class and precision of the run (`cpu/f32`, `cuda/bf16`), for operators whose
    /// output depends on them; `None` for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What the output depends on outside the DAG and its files: an interpreter's version, the
    /// versions of the packages a script imports, a program's digest ([`Op::runtime`]).
    /// Hashed only when not empty, so other nodes keep their fingerprints.
    ///
    /// [`Op::runtime`]: crate::ops::Op::runtime
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime: BTreeMap<String, String>,
    pub inputs: Vec<InputRef>,
    /// All parameters as the DAG gives them (secrets redacted), for people reading lineage and
    /// records; not hashed (the canonical `params` are).
    #[serde(default)]
    pub written: BTreeMap<String, serde_json::Value>,
}

impl Components {
    /// The fingerprint: 32 hex digits.
    pub fn fingerprint(&self) -> String {
        let mut hashed = serde_json::json!({
            "op": self.op,
            "version": self.version,
            "params": self.params,
            "source": self.source,
            "salt": self.salt,
            "inputs": self.inputs.iter().map(|i| &i.fingerprint).collect::<Vec<_>>(),
        });
        // Only where it matters: the fingerprints of device-independent nodes stay those they
        // had before devices entered.
        if let Some(device) = &self.device {
            hashed["device"] = serde_json::Value::String(device.clone());
        }
        if !self.runtime.is_empty() {
            hashed["runtime"] = serde_json::json!(self.runtime);
        }
        blake3::hash(hashed.to_string().as_bytes()).to_hex()[..32].to_string()
    }

    /// Why `self` differs from `old`, in words, most specific first.
    pub fn changes_since(&self, old: &Components) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.op != old.op {
            reasons.push(format!("op changed: {} → {}", old.op, self.op));
            return reasons;
        }
        if self.version != old.version {
            reasons.push(format!("operator `{}` changed: version {} → {}", self.op, old.version, self.version));
        }
        let keys: std::collections::BTreeSet<&String> = self.params.keys().chain(old.params.keys()).collect();
        for key in keys {
            match (old.params.get(key), self.params.get(key)) {
                (Some(a), Some(b)) if a != b => reasons.push(format!("parameter `{key}` changed: {} → {}", short(a), short(b))),
                (None, Some(b)) => reasons.push(format!("parameter `{key}` added: {}", short(b))),
                (Some(a), None) => reasons.push(format!("parameter `{key}` removed (was {})", short(a))),
                _ => {}
            }
        }
        if self.source != old.source {
            reasons.push("source files changed".into());
        }
        if self.salt != old.salt {
            reasons.push("salt changed".into());
        }
        if self.device != old.device {
            let name = |d: &Option<String>| d.clone().unwrap_or_else(|| "unrecorded".into());
            reasons.push(format!("device changed: {} → {}", name(&old.device), name(&self.device)));
        }
        let keys: std::collections::BTreeSet<&String> = self.runtime.keys().chain(old.runtime.keys()).collect();
        for key in keys {
            match (old.runtime.get(key), self.runtime.get(key)) {
                (Some(a), Some(b)) if a != b => reasons.push(format!("runtime `{key}` changed: {a} → {b}")),
                (None, Some(b)) => reasons.push(format!("runtime `{key}` added: {b}")),
                (Some(a), None) => reasons.push(format!("runtime `{key}` removed (was {a})")),
                _ => {}
            }
        }
        if self.inputs.len() != old.inputs.len() {
            reasons.push(format!("inputs changed: {} → {}", names(&old.inputs), names(&self.inputs)));
        } else {
            for (new, old) in self.inputs.iter().zip(&old.inputs) {
                if new.fingerprint != old.fingerprint {
                    reasons.push(format!("input `{}` changed", new.name));
                }
            }
        }
        if reasons.is_empty() && self.fingerprint() != old.fingerprint() {
            reasons.push("fingerprint changed".into());
        }
        reasons
    }
}

fn names(inputs: &[InputRef]) -> String {
    format!("[{}]", inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "))
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 { format!("{}…", s.chars().take(57).collect::<String>()) } else { s }
}

/// Fingerprints of every node of `dag`, in its order, for a run on `dag.device`.
pub fn compute(dag: &Dag) -> Result<Vec<Components>> {
    let mut out: Vec<Components> = Vec::with_capacity(dag.nodes.len());
    for node in &dag.nodes {
        let inputs = node.inputs.iter().map(|&i| InputRef { name: dag.nodes[i].name.clone(), fingerprint: out[i].fingerprint() }).collect();
        out.push(components(dag, node, inputs)?);
    }
    Ok(out)
}

fn components(dag: &Dag, node: &Node, inputs: Vec<InputRef>) -> Result<Components> {
    let spec = node.op.spec();
    let input_names = dag.input_names(node);
    let mut params = BTreeMap::new();
    for (name, value) in node.params.iter() {
        let Some(param) = spec.param(name) else { continue };
        // A file or folder the node reads enters by its content (the source digest), not its path.
        if !param.fingerprinted || node.secret_params.contains(name) || param.ty == ParamType::Path(PathKind::Input) {
            continue;
        }
        params.insert(name.to_string(), node.op.fingerprint_value(name, value, &input_names));
    }
    Ok(Components {
        op: spec.name.to_string(),
        version: spec.version,
        params,
        source: node.op.source_digest()?,
        salt: node.salt.clone(),
        device: (node.op.device_dependence() == DeviceDependence::ClassAndPrecision).then(|| dag.device.compute_class().to_string()),
        runtime: node.op.runtime().map_err(|e| runtime_error(dag, node, e))?,
        inputs,
        written: redacted_params(node),
    })
}

/// A runtime that cannot be read because of the DAG (a script that does not parse, an
/// interpreter that is not there) is a problem of the DAG file, shown at the node.
fn runtime_error(dag: &Dag, node: &Node, e: crate::Error) -> crate::Error {
    match e {
        crate::Error::Op(e @ unoflow_api::OpError::Param { .. }) => {
            let message = format!("node `{}` (op `{}`): {e}", node.name, node.op.spec().name);
            crate::diagnostic::Diagnostics {
                file: std::sync::Arc::clone(&dag.file),
                items: vec![Diagnostic::new(message, Some(node.span.clone()))],
            }
            .into()
        }
        other => other,
    }
}

/// A node's parameters for records and lineage: all of them, secrets replaced by `<redacted>`.
pub fn redacted_params(node: &Node) -> BTreeMap<String, serde_json::Value> {
    node.params
        .iter()
        .map(|(name, value)| {
            let secret = node.secret_params.contains(name) || node.op.spec().param(name).is_some_and(|p| p.secret);
            let v = if secret { serde_json::Value::String("<redacted>".into()) } else { value.to_json() };
            (name.to_string(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(max_side: i64, input_fp: &str) -> Components {
        Components {
            op: "thumbnail".into(),
            version: 1,
            params: BTreeMap::from([("max_side".to_string(), serde_json::json!(max_side))]),
            source: None,
            salt: None,
            device: None,
            runtime: BTreeMap::new(),
            inputs: vec![InputRef { name: "photos".into(), fingerprint: input_fp.into() }],
            written: BTreeMap::new(),
        }
    }

    #[test]
    fn input_names_do_not_matter() {
        let a = comps(64, "f1");
        let mut b = comps(64, "f1");
        b.inputs[0].name = "renamed".into();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), comps(65, "f1").fingerprint());
    }

    #[test]
    fn reasons_name_the_change() {
        assert_eq!(comps(128, "f1").changes_since(&comps(64, "f1")), ["parameter `max_side` changed: 64 → 128"]);
        assert_eq!(comps(64, "f2").changes_since(&comps(64, "f1")), ["input `photos` changed"]);
    }

    #[test]
    fn the_runtime_enters_when_there_is_one() {
        let with = |numpy: &str| Components { runtime: BTreeMap::from([("numpy".to_string(), numpy.to_string())]), ..comps(64, "f1") };
        assert_ne!(with("2.4.6").fingerprint(), comps(64, "f1").fingerprint());
        assert_ne!(with("2.4.6").fingerprint(), with("2.5.0").fingerprint());
        assert_eq!(with("2.5.0").changes_since(&with("2.4.6")), ["runtime `numpy` changed: 2.4.6 → 2.5.0"]);
    }

    #[test]
    fn the_device_enters_where_declared() {
        let on = |device: Option<&str>| Components { device: device.map(str::to_string), ..comps(64, "f1") };
        let (cpu, cuda) = (on(Some("cpu/f32")), on(Some("cuda/bf16")));
        assert_ne!(cpu.fingerprint(), cuda.fingerprint());
        assert_eq!(cuda.changes_since(&cpu), ["device changed: cpu/f32 → cuda/bf16"]);
        // A node without a device keeps the fingerprint it had before devices entered.
        let before = serde_json::json!({
            "op": "thumbnail", "version": 1, "params": {"max_side": 64}, "source": null, "salt": null, "inputs": ["f1"],
        });
        assert_eq!(on(None).fingerprint(), blake3::hash(before.to_string().as_bytes()).to_hex()[..32]);
    }
}
