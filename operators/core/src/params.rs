//! Typed operator parameters: what an operator declares ([`ParamSpec`]) and what it receives
//! ([`Params`]).
//!
//! The engine turns DAG-file values into [`ParamValue`]s, checks each against its spec with
//! [`ParamType::check`], fills in defaults and hands the operator a [`Params`] map. Operators read
//! it with the typed getters, which cannot fail for a value that passed the check.

use std::collections::BTreeMap;
use std::fmt;

use crate::{OpError, Result};

/// A parameter value as it appears in a DAG file, after interpolation.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<ParamValue>),
}

impl ParamValue {
    /// The value in canonical JSON (used for fingerprints and run records).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Bool(b) => (*b).into(),
            Self::Int(i) => (*i).into(),
            // Floats are fingerprinted by their shortest round-trip text, so 0.5 and 0.50 agree.
            Self::Float(f) => {
                serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or_else(|| serde_json::Value::String(f.to_string()))
            }
            Self::Str(s) => s.clone().into(),
            Self::List(items) => items.iter().map(Self::to_json).collect(),
        }
    }

    /// The kind of value, for messages ("expected an integer, found a string").
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bool(_) => "a boolean",
            Self::Int(_) => "an integer",
            Self::Float(_) => "a float",
            Self::Str(_) => "a string",
            Self::List(_) => "an array",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x:?}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// What a path parameter points at; the engine resolves it relative to the DAG file and checks
/// that inputs exist before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// An existing file or folder that is read.
    Input,
    /// A file or folder that is written; its parent need not exist.
    Output,
}

/// The type of a parameter, with its admissible range.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    Bool,
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    Path(PathKind),
    /// An array of strings.
    StrList,
    /// A SQL query over the node's inputs.
    Sql,
}

impl ParamType {
    /// An integer in `min..=max`.
    pub const fn int(min: i64, max: i64) -> Self {
        Self::Int { min: Some(min), max: Some(max) }
    }

    /// A float in `min..=max`.
    pub const fn float(min: f64, max: f64) -> Self {
        Self::Float { min: Some(min), max: Some(max) }
    }

    /// Checks `value` and returns it in canonical form (an integer given for a float parameter
    /// becomes a float). The error is a sentence to show the user.
    pub fn check(&self, value: &ParamValue) -> std::result::Result<ParamValue, String> {
        match (self, value) {
            (Self::Bool, ParamValue::Bool(_)) => Ok(value.clone()),
            (Self::Int { min, max }, ParamValue::Int(i)) => {
                check_range(*i, *min, *max)?;
                Ok(value.clone())
            }
            (Self::Float { min, max }, ParamValue::Float(_) | ParamValue::Int(_)) => {
                let x = match value {
                    ParamValue::Int(i) => *i as f64,
                    ParamValue::Float(x) => *x,
                    _ => unreachable!("matched above"),
                };
                if !x.is_finite() {
                    return Err(format!("{x} is not a finite number"));
                }
                check_range(x, *min, *max)?;
                Ok(ParamValue::Float(x))
            }
            (Self::Str | Self::Path(_) | Self::Sql, ParamValue::Str(_)) => Ok(value.clone()),
            (Self::Choice(options), ParamValue::Str(s)) => {
                if options.contains(&s.as_str()) {
                    Ok(value.clone())
                } else {
                    Err(format!("{s:?} is not one of {}", quote_list(options)))
                }
            }
            (Self::StrList, ParamValue::List(items)) => {
                if let Some(bad) = items.iter().find(|v| !matches!(v, ParamValue::Str(_))) {
                    return Err(format!("expected an array of strings, found {} in it", bad.kind()));
                }
                Ok(value.clone())
            }
            (Self::StrList, ParamValue::Str(s)) => Ok(ParamValue::List(vec![ParamValue::Str(s.clone())])),
            _ => Err(format!("expected {}, found {}", self.describe(), value.kind())),
        }
    }

    /// The type in words: "an integer in 1..=16384".
    pub fn describe(&self) -> String {
        match self {
            Self::Bool => "a boolean".into(),
            Self::Int { min, max } => format!("an integer{}", range_text(*min, *max)),
            Self::Float { min, max } => format!("a number{}", range_text(*min, *max)),
            Self::Str => "a string".into(),
            Self::Choice(options) => format!("one of {}", quote_list(options)),
            Self::Path(PathKind::Input) => "a path to an existing file or folder".into(),
            Self::Path(PathKind::Output) => "an output path".into(),
            Self::StrList => "an array of strings".into(),
            Self::Sql => "a SQL query".into(),
        }
    }

    /// A short type name for listings: `int`, `float`, `path`, …
    pub fn short_name(&self) -> String {
        match self {
            Self::Bool => "bool".into(),
            Self::Int { min, max } => format!("int{}", range_text(*min, *max).replace(" in ", " ")),
            Self::Float { min, max } => format!("float{}", range_text(*min, *max).replace(" in ", " ")),
            Self::Str => "string".into(),
            Self::Choice(options) => options.join("|"),
            Self::Path(_) => "path".into(),
            Self::StrList => "[string]".into(),
            Self::Sql => "sql".into(),
        }
    }
}

fn check_range<T: PartialOrd + fmt::Display + Copy>(x: T, min: Option<T>, max: Option<T>) -> std::result::Result<(), String> {
    let below = min.is_some_and(|m| x < m);
    let above = max.is_some_and(|m| x > m);
    if below || above {
        return Err(format!("{x} is out of range: must be{}", range_text(min, max).trim_start_matches(" in")));
    }
    Ok(())
}

fn range_text<T: fmt::Display>(min: Option<T>, max: Option<T>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!(" in {a}..={b}"),
        (Some(a), None) => format!(" >= {a}"),
        (None, Some(b)) => format!(" <= {b}"),
        (None, None) => String::new(),
    }
}

fn quote_list(options: &[&str]) -> String {
    options.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", ")
}

/// One declared parameter of an operator.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// `None` makes the parameter required.
    pub default: Option<ParamValue>,
    /// One line shown by `unoflow ops`.
    pub doc: &'static str,
    /// Secrets (API keys) never reach fingerprints, run records, logs or provenance.
    pub secret: bool,
    /// Whether the value is part of the node's fingerprint. Off for values that cannot change the
    /// output (an API key) or whose effect the operator fingerprints otherwise (a source path,
    /// whose content digest is fingerprinted instead).
    pub fingerprinted: bool,
}

impl ParamSpec {
    /// A required parameter.
    pub const fn required(name: &'static str, ty: ParamType, doc: &'static str) -> Self {
        Self { name, ty, default: None, doc, secret: false, fingerprinted: true }
    }

    /// A parameter with a default value.
    pub fn optional(name: &'static str, ty: ParamType, default: ParamValue, doc: &'static str) -> Self {
        Self { name, ty, default: Some(default), doc, secret: false, fingerprinted: true }
    }

    /// Marks the parameter secret (and so not fingerprinted).
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self.fingerprinted = false;
        self
    }

    /// Leaves the parameter out of the fingerprint.
    pub fn not_fingerprinted(mut self) -> Self {
        self.fingerprinted = false;
        self
    }
}

/// The checked parameters of one node, defaults filled in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(BTreeMap<String, ParamValue>);

impl Params {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a value.
    pub fn insert(&mut self, name: impl Into<String>, value: ParamValue) {
        self.0.insert(name.into(), value);
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.0.get(name)
    }

    /// All values, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn require(&self, name: &str) -> Result<&ParamValue> {
        self.0.get(name).ok_or_else(|| OpError::Param { name: name.into(), message: "is not set".into() })
    }

    fn mistyped(name: &str, want: &str, got: &ParamValue) -> OpError {
        OpError::Param { name: name.into(), message: format!("expected {want}, found {}", got.kind()) }
    }

    /// A string (also a path, choice or SQL) parameter.
    pub fn str(&self, name: &str) -> Result<&str> {
        match self.require(name)? {
            ParamValue::Str(s) => Ok(s),
            v => Err(Self::mistyped(name, "a string", v)),
        }
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<i64> {
        match self.require(name)? {
            ParamValue::Int(i) => Ok(*i),
            v => Err(Self::mistyped(name, "an integer", v)),
        }
    }

    /// A float parameter (integers are accepted).
    pub fn float(&self, name: &str) -> Result<f64> {
        match self.require(name)? {
            ParamValue::Float(x) => Ok(*x),
            ParamValue::Int(i) => Ok(*i as f64),
            v => Err(Self::mistyped(name, "a number", v)),
        }
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Result<bool> {
        match self.require(name)? {
            ParamValue::Bool(b) => Ok(*b),
            v => Err(Self::mistyped(name, "a boolean", v)),
        }
    }

    /// An array-of-strings parameter.
    pub fn str_list(&self, name: &str) -> Result<Vec<&str>> {
        match self.require(name)? {
            ParamValue::List(items) => items
                .iter()
                .map(|v| match v {
                    ParamValue::Str(s) => Ok(s.as_str()),
                    v => Err(Self::mistyped(name, "an array of strings", v)),
                })
                .collect(),
            v => Err(Self::mistyped(name, "an array of strings", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_range_is_checked() {
        let ty = ParamType::int(1, 10);
        assert_eq!(ty.check(&ParamValue::Int(5)), Ok(ParamValue::Int(5)));
        let err = ty.check(&ParamValue::Int(0)).unwrap_err();
        assert_eq!(err, "0 is out of range: must be 1..=10");
        let err = ty.check(&ParamValue::Str("5".into())).unwrap_err();
        assert_eq!(err, "expected an integer in 1..=10, found a string");
    }

    #[test]
    fn float_accepts_integers() {
        let ty = ParamType::Float { min: Some(0.0), max: None };
        assert_eq!(ty.check(&ParamValue::Int(2)), Ok(ParamValue::Float(2.0)));
        assert!(ty.check(&ParamValue::Float(-0.5)).unwrap_err().contains("must be >= 0"));
    }

    #[test]
    fn choice_lists_options() {
        let ty = ParamType::Choice(&["png", "jpeg"]);
        assert_eq!(ty.check(&ParamValue::Str("gif".into())).unwrap_err(), "\"gif\" is not one of \"png\", \"jpeg\"");
    }

    #[test]
    fn typed_getters() {
        let mut p = Params::new();
        p.insert("n", ParamValue::Int(3));
        assert_eq!(p.int("n").unwrap(), 3);
        assert_eq!(p.float("n").unwrap(), 3.0);
        assert!(p.str("n").is_err());
        assert!(p.int("missing").is_err());
    }
}
