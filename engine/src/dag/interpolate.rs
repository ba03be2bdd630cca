//! `${…}` interpolation in DAG string values.
//!
//! - `${env:NAME}` — an environment variable; `${env:NAME:-default}` when it may be unset.
//! - `${NAME}` — a variable from `[vars]`, or a built-in: `dag_dir` (the DAG file's folder),
//!   `dag_name`, `workspace`.
//! - `$${` — a literal `${`.
//!
//! A variable holds any TOML value but a table (`steps = 28`, `resolutions = ["1024x1024"]`). A
//! string that is one reference and nothing else (`steps = "${steps}"`) takes the variable's
//! value with its type, so a knob in `[vars]` can set an integer, float, boolean or array
//! parameter; inside longer text a number or boolean is written out (`LIMIT ${subjects}`), and an
//! array is refused (there is no one way to spell it in text).
//!
//! Values taken from environment variables whose names look secret (`*KEY*`, `*TOKEN*`,
//! `*SECRET*`, `*PASSWORD*`) are flagged so that they never reach run records or logs.

use std::collections::BTreeMap;

/// A string after interpolation.
#[derive(Debug, Clone, PartialEq)]
pub struct Interpolated {
    pub value: String,
    /// Whether a secret-looking environment variable went into it.
    pub secret: bool,
}

/// Resolves `${…}` references.
#[derive(Debug, Default)]
pub struct Interpolator {
    vars: BTreeMap<String, Var>,
}

/// A variable's value (its strings already interpolated), and whether a secret went into it.
#[derive(Debug, Clone, PartialEq)]
struct Var {
    value: toml::Value,
    secret: bool,
}

/// Whether an environment variable's name says it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"].iter().any(|w| upper.contains(w))
}

impl Interpolator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Defines `${name}` as a string.
    pub fn define(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.define_value(name, toml::Value::String(value.into()), false);
    }

    /// Defines `${name}` as any TOML value (its strings already interpolated); `secret` says a
    /// secret-looking environment variable went into it, so whatever uses it is secret too.
    pub fn define_value(&mut self, name: impl Into<String>, value: toml::Value, secret: bool) {
        self.vars.insert(name.into(), Var { value, secret });
    }

    /// The defined variable names, for suggestions.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// The value of `${name}`, if it is defined as a string.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.vars.get(name).and_then(|v| v.value.as_str())
    }

    /// Whether `${name}` is defined.
    pub fn is_defined(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// The variables `text` refers to (`${name}`; not `${env:…}`, not `$${` escapes).
    pub fn references(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            let after = &rest[pos..];
            if let Some(tail) = after.strip_prefix("$${") {
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let Some(end) = tail.find('}') else { break };
                let reference = &tail[..end];
                if !reference.starts_with("env:") {
                    out.push(reference);
                }
                rest = &tail[end + 1..];
            } else {
                rest = &after[1..];
            }
        }
        out
    }

    /// The variables a TOML value's strings refer to (see [`Self::references`]).
    pub fn value_references(value: &toml::Value) -> Vec<&str> {
        match value {
            toml::Value::String(s) => Self::references(s),
            toml::Value::Array(items) => items.iter().flat_map(Self::value_references).collect(),
            toml::Value::Table(t) => t.values().flat_map(Self::value_references).collect(),
            _ => Vec::new(),
        }
    }

    /// Interpolates the strings of a TOML value; a string that is exactly one `${name}` of a
    /// variable that is not a string becomes that variable's value, type and all. The flag says
    /// whether a secret went into it. The error is `(message, help)`.
    pub fn apply_value(&self, value: &toml::Value) -> Result<(toml::Value, bool), (String, String)> {
        Ok(match value {
            toml::Value::String(s) => match self.whole(s) {
                Some(var) => (var.value.clone(), var.secret),
                None => {
                    let Interpolated { value, secret } = self.apply(s)?;
                    (toml::Value::String(value), secret)
                }
            },
            toml::Value::Array(items) => {
                let mut secret = false;
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let (v, s) = self.apply_value(item)?;
                    secret |= s;
                    out.push(v);
                }
                (toml::Value::Array(out), secret)
            }
            toml::Value::Table(entries) => {
                let mut secret = false;
                let mut out = toml::map::Map::new();
                for (name, item) in entries {
                    let (v, s) = self.apply_value(item)?;
                    secret |= s;
                    out.insert(name.clone(), v);
                }
                (toml::Value::Table(out), secret)
            }
            other => (other.clone(), false),
        })
    }

    /// The variable `text` is exactly a reference to, when that variable is not a string (a
    /// string variable interpolates as text does, escapes and all).
    fn whole(&self, text: &str) -> Option<&Var> {
        let name = text.strip_prefix("${")?.strip_suffix('}')?;
        if name.contains(['$', '{', '}']) || name.starts_with("env:") {
            return None;
        }
        self.vars.get(name).filter(|v| !v.value.is_str())
    }

    /// Interpolates `text`. The error is `(message, help)`.
    pub fn apply(&self, text: &str) -> Result<Interpolated, (String, String)> {
        let mut out = String::with_capacity(text.len());
        let mut secret = false;
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let end = tail.find('}').ok_or_else(|| {
                    (format!("unterminated `${{` in {text:?}"), "close it with `}`, or write `$${` for a literal `${`".to_string())
                })?;
                let reference = &tail[..end];
                if reference.contains("${") {
                    return Err(nested(text));
                }
                let (value, from_secret) = self.resolve(reference)?;
                secret |= from_secret;
                out.push_str(&value);
                rest = &tail[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
        Ok(Interpolated { value: out, secret })
    }

    fn resolve(&self, reference: &str) -> Result<(String, bool), (String, String)> {
        if let Some(env) = reference.strip_prefix("env:") {
            let (name, default) = match env.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (env, None),
            };
            return match (std::env::var(name), default) {
                (Ok(v), _) => Ok((v, is_secret_name(name))),
                (Err(_), Some(d)) => Ok((d.to_string(), false)),
                (Err(_), None) => Err((
                    format!("environment variable `{name}` is not set"),
                    format!("set it (export {name}=…) or give a default: ${{env:{name}:-value}}"),
                )),
            };
        }
        match self.vars.get(reference) {
            Some(Var { value: toml::Value::String(s), secret }) => Ok((s.clone(), *secret)),
            Some(Var { value: toml::Value::Array(_) | toml::Value::Table(_), .. }) => Err((
                format!("variable `{reference}` is an array, and cannot be written into text"),
                format!("use it as a whole value (`param = \"${{{reference}}}\"`), or make it a string under [vars]"),
            )),
            // Numbers, booleans and dates as TOML writes them (`2`, `0.5`, `true`).
            Some(Var { value, secret }) => Ok((value.to_string(), *secret)),
            None => {
                let help = match crate::diagnostic::did_you_mean(reference, self.names()) {
                    Some(s) => {
                        format!("did you mean `${{{s}}}`? Variables come from [vars] and the built-ins dag_dir, dag_name, workspace")
                    }
                    None => {
                        "define it under [vars], use a built-in (dag_dir, dag_name, workspace), or read the environment with ${env:NAME}"
                            .into()
                    }
                };
                Err((format!("unknown variable `${{{reference}}}`"), help))
            }
        }
    }
}

/// The error for a `${` inside `${…}` (`${env:X:-${dag_dir}/m}`). Taken as it stands, the
/// first `}` would close the outer reference and the rest would become a strange path: refused,
/// saying what to write instead.
fn nested(text: &str) -> (String, String) {
    (
        format!("nested `${{…}}` is not supported: {text:?}"),
        "a reference cannot hold another: write the default as plain text; paths are relative to the DAG file's \
         folder, so `${env:NAME:-models/m}` needs no `${dag_dir}`"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp() -> Interpolator {
        let mut i = Interpolator::new();
        i.define("root", "/data");
        i
    }

    #[test]
    fn variables_and_escapes() {
        let i = interp();
        assert_eq!(i.apply("${root}/x").unwrap().value, "/data/x");
        assert_eq!(i.apply("cost $5 $${root}").unwrap().value, "cost $5 ${root}");
    }

    #[test]
    fn env_with_default_and_secret_flag() {
        let i = interp();
        assert_eq!(i.apply("${env:UNOFLOW_SURELY_UNSET_VAR:-d}").unwrap().value, "d");
        let err = i.apply("${env:UNOFLOW_SURELY_UNSET_VAR}").unwrap_err();
        assert!(err.0.contains("is not set"));
        // PATH is always set and not secret-looking.
        assert!(!i.apply("${env:PATH}").unwrap().secret);
        assert!(is_secret_name("OPENAI_API_KEY"));
        assert!(!is_secret_name("HOME"));
    }

    #[test]
    fn references_skip_env_and_escapes() {
        assert_eq!(Interpolator::references("${a}/$${b}/${env:C}/${d}"), ["a", "d"]);
    }

    #[test]
    fn nested_references_are_refused() {
        let i = interp();
        for text in ["${env:UNOFLOW_SURELY_UNSET_VAR:-${root}/m}", "${a${root}}", "x/${env:PATH:-${root}}"] {
            let (message, help) = i.apply(text).unwrap_err();
            assert!(message.starts_with("nested `${…}` is not supported"), "{text}: {message}");
            assert!(help.contains("plain text"), "{help}");
        }
        // A reference after another, and an escaped `$${` after one, are not nested.
        assert_eq!(i.apply("${root}${root}").unwrap().value, "/data/data");
        assert_eq!(i.apply("${root}/$${x}").unwrap().value, "/data/${x}");
    }

    #[test]
    fn whole_references_keep_the_type() {
        let mut i = interp();
        i.define_value("steps", toml::Value::Integer(4), false);
        i.define_value("sizes", toml::Value::Array(vec!["8x8".into()]), false);
        let typed = |text: &str| i.apply_value(&toml::Value::String(text.into())).map(|(v, _)| v);
        assert_eq!(typed("${steps}").unwrap(), toml::Value::Integer(4));
        assert_eq!(typed("${sizes}").unwrap(), toml::Value::Array(vec!["8x8".into()]));
        // In text, a number is written out; an array cannot be.
        assert_eq!(typed("LIMIT ${steps}").unwrap(), toml::Value::String("LIMIT 4".into()));
        assert!(typed("x ${sizes}").unwrap_err().0.contains("is an array"));
        // A string variable stays a string; arrays interpolate their items.
        assert_eq!(typed("${root}").unwrap(), toml::Value::String("/data".into()));
        let list = i.apply_value(&toml::Value::Array(vec!["${root}/a".into(), "${steps}".into()])).unwrap().0;
        assert_eq!(list, toml::Value::Array(vec!["/data/a".into(), toml::Value::Integer(4)]));
    }

    #[test]
    fn unknown_variable_suggests() {
        let err = interp().apply("${rot}").unwrap_err();
        assert_eq!(err.0, "unknown variable `${rot}`");
        assert!(err.1.contains("did you mean `${root}`"), "{}", err.1);
        assert!(interp().apply("${root").unwrap_err().0.contains("unterminated"));
    }
}
