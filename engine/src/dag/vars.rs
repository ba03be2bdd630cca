//! `--var NAME=VALUE`: a command line's overrides of a DAG file's `[vars]`.
//!
//! The value is read as a TOML value (`4`, `0.5`, `true`, `["512x512"]`, `"a b"`); a bare word
//! that is not one (`/data/x`, `flux-dev`) is taken as a string, so paths need no quotes. Only a
//! variable the file declares can be overridden, with a value of the declared type: a typo
//! (`--var step=4`) or a wrong type (`--var steps=four`) would otherwise leave the file's value
//! in place unseen, or fail far from its cause.

use std::ops::Range;
use std::str::FromStr;

use super::raw::{Key, Value};
use crate::diagnostic::{Diagnostic, did_you_mean};

/// One `--var NAME=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct VarOverride {
    pub name: String,
    pub value: toml::Value,
    /// The value as written, passed on as it is to the workers a command starts.
    pub text: String,
}

impl VarOverride {
    /// The `NAME=VALUE` argument that gives this override again.
    pub fn arg(&self) -> String {
        format!("{}={}", self.name, self.text)
    }
}

impl FromStr for VarOverride {
    type Err = String;

    fn from_str(arg: &str) -> Result<Self, String> {
        let Some((name, text)) = arg.split_once('=') else {
            return Err(format!("{arg:?}: write NAME=VALUE, e.g. --var steps=4"));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("{arg:?}: {name:?} is not a variable name (letters, digits, `_`, `-`)"));
        }
        Ok(Self { name: name.to_string(), value: parse_value(text)?, text: text.to_string() })
    }
}

/// `text` as a TOML value, or as a string when it is a bare word; text that starts like a
/// quoted string, array or table but does not parse is refused, not taken for a word.
fn parse_value(text: &str) -> Result<toml::Value, String> {
    match text.trim().parse::<toml::Value>() {
        Ok(toml::Value::Table(_)) => Err(format!("{text:?}: a table cannot be a variable's value")),
        Ok(value) => Ok(value),
        Err(e) if text.trim_start().starts_with(['"', '\'', '[', '{']) => {
            Err(format!("{text:?} is not a TOML value: {}", e.message().trim_end()))
        }
        Err(_) => Ok(toml::Value::String(text.to_string())),
    }
}

/// Built-in variables, which `--var` cannot set.
const BUILT_INS: &[(&str, &str)] =
    &[("workspace", "pass --workspace DIR|URL instead"), ("dag_dir", "it is the DAG file's folder"), ("dag_name", "it is the [dag] name")];

/// A variable of the DAG: its name, its value, and the span of its declaration.
pub(super) type DeclaredVar = (String, toml::Value, Range<usize>);

/// The file's `[vars]` with the overrides put in (the last of several for one name wins), each
/// with the span of its declaration; the diagnostics of the overrides that cannot apply.
pub(super) fn apply(declared: &[(Key, Value)], overrides: &[VarOverride]) -> (Vec<DeclaredVar>, Vec<Diagnostic>) {
    let mut vars: Vec<DeclaredVar> = declared.iter().map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone(), v.span())).collect();
    let mut errors = Vec::new();
    for o in overrides {
        match vars.iter_mut().find(|(name, ..)| *name == o.name) {
            Some((_, value, span)) => match typed_like(value, o) {
                Ok(v) => *value = v,
                Err(message) => errors.push(
                    Diagnostic::new(format!("--var {}: {message}", o.arg()), Some(span.clone()))
                        .with_help(format!("the file declares `{} = {value}`; give a value of that type", o.name)),
                ),
            },
            None => errors.push(unknown(o, declared)),
        }
    }
    (vars, errors)
}

/// The override's value as the declared one's type: an integer where an integer was declared
/// (a float takes an integer too), and the text as written where a string was.
fn typed_like(declared: &toml::Value, o: &VarOverride) -> Result<toml::Value, String> {
    use toml::Value as V;
    match (declared, &o.value) {
        (V::String(_), V::Array(_) | V::Table(_)) => Err(format!("`{}` is a string, and this is {}", o.name, o.value.type_str())),
        (V::String(_), V::String(_)) => Ok(o.value.clone()),
        // `--var tag=2024` for a string variable means the text 2024.
        (V::String(_), _) => Ok(V::String(o.text.trim().to_string())),
        (V::Float(_), V::Integer(i)) => Ok(V::Float(*i as f64)),
        (d, v) if d.same_type(v) => Ok(v.clone()),
        (d, v) => Err(format!("`{}` is {} {}, and this is {} {}", o.name, article(d), d.type_str(), article(v), v.type_str())),
    }
}

fn article(v: &toml::Value) -> &'static str {
    if matches!(v, toml::Value::Integer(_) | toml::Value::Array(_)) { "an" } else { "a" }
}

/// The error for an override of a variable the file does not declare.
fn unknown(o: &VarOverride, declared: &[(Key, Value)]) -> Diagnostic {
    if let Some((_, why)) = BUILT_INS.iter().find(|(name, _)| *name == o.name) {
        return Diagnostic::new(format!("--var {}: `{}` is built in and cannot be set", o.arg(), o.name), None).with_help(*why);
    }
    let names: Vec<&str> = declared.iter().map(|(k, _)| k.get_ref().as_str()).collect();
    let message = format!("--var {}: the DAG declares no variable `{}`", o.arg(), o.name);
    let listed = if names.is_empty() {
        "it has no [vars]".to_string()
    } else {
        format!("its [vars] are {}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))
    };
    let help = match did_you_mean(&o.name, names.iter().copied()) {
        Some(close) => format!("did you mean `{close}`? {listed}"),
        None => format!("{listed}; --var overrides a variable declared under [vars]"),
    };
    Diagnostic::new(message, None).with_help(help)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arg: &str) -> Result<toml::Value, String> {
        arg.parse::<VarOverride>().map(|o| o.value)
    }

    #[test]
    fn values_are_toml_or_bare_words() {
        assert_eq!(parse("steps=4").unwrap(), toml::Value::Integer(4));
        assert_eq!(parse("t=0.5").unwrap(), toml::Value::Float(0.5));
        assert_eq!(parse("b=true").unwrap(), toml::Value::Boolean(true));
        assert_eq!(parse("r=[\"8x8\", \"16x8\"]").unwrap(), toml::Value::Array(vec!["8x8".into(), "16x8".into()]));
        assert_eq!(parse("d=/data/x y").unwrap(), toml::Value::String("/data/x y".into()));
        assert_eq!(parse("q=\"a=b\"").unwrap(), toml::Value::String("a=b".into()));
        assert_eq!(parse("e=").unwrap(), toml::Value::String(String::new()));
        assert!(parse("r=[1,").unwrap_err().contains("is not a TOML value"));
        assert!(parse("t={a = 1}").unwrap_err().contains("table"));
        assert!(parse("steps").unwrap_err().contains("NAME=VALUE"));
        assert!(parse("=4").unwrap_err().contains("not a variable name"));
    }

    #[test]
    fn overrides_keep_the_declared_type() {
        let o = |arg: &str| arg.parse::<VarOverride>().unwrap();
        let int = toml::Value::Integer(28);
        assert_eq!(typed_like(&int, &o("steps=4")).unwrap(), toml::Value::Integer(4));
        assert_eq!(typed_like(&int, &o("steps=four")).unwrap_err(), "`steps` is an integer, and this is a string");
        assert_eq!(typed_like(&toml::Value::Float(0.8), &o("t=1")).unwrap(), toml::Value::Float(1.0));
        assert_eq!(typed_like(&toml::Value::String("x".into()), &o("tag=2024")).unwrap(), toml::Value::String("2024".into()));
    }
}
