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
    /// A TOML table: names to values (a Python operator's keyword arguments, a command's
    /// environment). Sorted by name, so its JSON is canonical.
    Table(BTreeMap<String, ParamValue>),
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
            Self::Table(entries) => entries.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<serde_json::Map<_, _>>().into(),
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
            Self::Table(_) => "a table",
        }
    }
}

impl From<&str> for ParamValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}

impl From<String> for ParamValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<i64> for ParamValue {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<f64> for ParamValue {
    fn from(x: f64) -> Self {
        Self::Float(x)
    }
}

impl From<bool> for ParamValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

/// An array of strings.
impl From<&[&str]> for ParamValue {
    fn from(items: &[&str]) -> Self {
        Self::List(items.iter().map(|s| Self::Str(s.to_string())).collect())
    }
}

impl<const N: usize> From<[&str; N]> for ParamValue {
    fn from(items: [&str; N]) -> Self {
        Self::from(&items[..])
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
            Self::Table(entries) if entries.is_empty() => f.write_str("{}"),
            Self::Table(entries) => {
                f.write_str("{ ")?;
                for (i, (name, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name} = {value}")?;
                }
                f.write_str(" }")
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
    /// A table of values (`{ name = value, … }`).
    Table,
    /// A program and its arguments, as an array of strings. The engine resolves the program and
    /// every argument that names an existing file relative to the DAG file's folder (as it does
    /// paths), so the operator gets absolute paths.
    Command,
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
            (Self::Table, ParamValue::Table(_)) => Ok(value.clone()),
            (Self::Command, ParamValue::List(items)) => {
                if items.is_empty() {
                    return Err("the command is empty: give the program and its arguments, e.g. [\"python3\", \"score.py\"]".into());
                }
                Self::StrList.check(value)
            }
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
            Self::Table => "a table (`{ name = value, … }`)".into(),
            Self::Command => "a program and its arguments (an array of strings)".into(),
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
            Self::Table => "table".into(),
            Self::Command => "[program, arg…]".into(),
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

// ---------------------------------------------------------------------------------------------
// Typed parameters

/// A value type a parameter can be read into (see [`params!`](crate::params!)).
pub trait FromParam: Sized {
    /// Converts a checked value; the error is a sentence for a message.
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String>;
}

impl FromParam for ParamValue {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        Ok(value.clone())
    }
}

impl FromParam for String {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        match value {
            ParamValue::Str(s) => Ok(s.clone()),
            v => Err(format!("expected a string, found {}", v.kind())),
        }
    }
}

impl FromParam for std::path::PathBuf {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        String::from_param(value).map(Self::from)
    }
}

/// An empty string reads as `None`: "no column", "no model folder".
impl<T: FromParam> FromParam for Option<T> {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        match value {
            ParamValue::Str(s) if s.is_empty() => Ok(None),
            v => T::from_param(v).map(Some),
        }
    }
}

impl FromParam for bool {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        match value {
            ParamValue::Bool(b) => Ok(*b),
            v => Err(format!("expected a boolean, found {}", v.kind())),
        }
    }
}

impl FromParam for f64 {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        match value {
            ParamValue::Float(x) => Ok(*x),
            ParamValue::Int(i) => Ok(*i as f64),
            v => Err(format!("expected a number, found {}", v.kind())),
        }
    }
}

impl FromParam for f32 {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        f64::from_param(value).map(|x| x as f32)
    }
}

macro_rules! integer_param {
    ($($t:ty),*) => {$(
        impl FromParam for $t {
            fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
                match value {
                    ParamValue::Int(i) => <$t>::try_from(*i).map_err(|_| format!("{i} does not fit {}", stringify!($t))),
                    v => Err(format!("expected an integer, found {}", v.kind())),
                }
            }
        }
    )*};
}
integer_param!(i64, i32, u64, u32, usize);

impl FromParam for Vec<String> {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        match value {
            ParamValue::List(items) => items.iter().map(String::from_param).collect(),
            ParamValue::Str(s) => Ok(vec![s.clone()]),
            v => Err(format!("expected an array of strings, found {}", v.kind())),
        }
    }
}

impl FromParam for BTreeMap<String, ParamValue> {
    fn from_param(value: &ParamValue) -> std::result::Result<Self, String> {
        match value {
            ParamValue::Table(entries) => Ok(entries.clone()),
            v => Err(format!("expected a table, found {}", v.kind())),
        }
    }
}

/// A parameter whose value is one of a fixed set of words, as a Rust enum (see
/// [`choice!`](crate::choice!)).
pub trait Choice: Copy + Sized + 'static {
    /// Every value, as DAG files spell them.
    const NAMES: &'static [&'static str];
    /// How DAG files spell `self`.
    fn name(self) -> &'static str;
}

impl Params {
    /// Parameter `name` read into `T`; fails only for a value that did not pass the spec.
    pub fn typed<T: FromParam>(&self, name: &str) -> Result<T> {
        T::from_param(self.require(name)?).map_err(|message| OpError::Param { name: name.into(), message })
    }
}

/// Declares a choice parameter's enum: the variants and how DAG files spell them, with
/// `FromStr`, `Display` and [`Choice`] derived from that one list.
///
/// ```
/// unoflow_api::choice! {
///     /// How images are resampled.
///     pub enum Filter { Lanczos3 = "lanczos3", Nearest = "nearest" }
/// }
/// assert_eq!("nearest".parse::<Filter>(), Ok(Filter::Nearest));
/// assert_eq!(Filter::Lanczos3.to_string(), "lanczos3");
/// ```
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $( $(#[$vmeta])* $variant ),+ }

        impl $crate::params::Choice for $name {
            const NAMES: &'static [&'static str] = &[$($text),+];
            fn name(self) -> &'static str {
                match self { $( Self::$variant => $text ),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> ::std::result::Result<Self, String> {
                match s {
                    $( $text => Ok(Self::$variant), )+
                    other => Err($crate::params::not_one_of(other, <Self as $crate::params::Choice>::NAMES)),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::params::Choice::name(*self))
            }
        }

        impl $crate::params::FromParam for $name {
            fn from_param(value: &$crate::params::ParamValue) -> ::std::result::Result<Self, String> {
                match value {
                    $crate::params::ParamValue::Str(s) => s.parse(),
                    v => Err(format!("expected one of {}, found {}", <Self as $crate::params::Choice>::NAMES.join(", "), v.kind())),
                }
            }
        }
    };
}

/// Declares an operator's parameters once: a struct with one typed field per parameter, its
/// [`ParamSpec`]s (the parameter's name is the field's, its doc the field's doc comment) and a
/// `parse` that reads checked [`Params`] into it. A misspelt name cannot exist: there is only
/// the field.
///
/// Each field is `name: Type = kind(args)`, with `kind` one of
/// - `required(ParamType)`: no default;
/// - `optional(ParamType, default)`: `default` converts into a [`ParamValue`];
/// - `choice(Enum::Variant)`: a [`Choice`] enum (see [`choice!`](crate::choice!)) and its default;
///
/// followed by modifiers: `.secret()`, `.not_fingerprinted()`.
///
/// ```
/// use unoflow_api::params::ParamType;
/// unoflow_api::choice! { pub enum Filter { Lanczos3 = "lanczos3", Nearest = "nearest" } }
/// unoflow_api::params! {
///     /// `thumbnail`'s parameters.
///     pub struct ThumbnailParams {
///         /// the image column
///         pub column: String = optional(ParamType::Str, "image"),
///         /// the longer side after resizing
///         pub max_side: u32 = required(ParamType::int(1, 16384)),
///         /// resampling filter
///         pub filter: Filter = choice(Filter::Lanczos3),
///     }
/// }
/// let specs = ThumbnailParams::specs();
/// assert_eq!(specs[1].name, "max_side");
/// assert_eq!(specs[1].doc, "the longer side after resizing");
/// let mut params = unoflow_api::Params::new();
/// params.insert("column", "image".into());
/// params.insert("max_side", 64i64.into());
/// params.insert("filter", "nearest".into());
/// let parsed = ThumbnailParams::parse(&params).unwrap();
/// assert_eq!((parsed.max_side, parsed.filter), (64, Filter::Nearest));
/// ```
#[macro_export]
macro_rules! params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $fvis:vis $field:ident : $fty:ty = $kind:ident ( $($arg:expr),* $(,)? ) $(. $modifier:ident ())*
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( $(#[doc = $doc])+ $fvis $field: $fty, )*
        }

        impl $name {
            /// The parameters' declarations, for the operator's spec.
            pub fn specs() -> Vec<$crate::params::ParamSpec> {
                vec![$(
                    $crate::params::ParamSpec::$kind(stringify!($field), concat!($($doc),+), $($arg),*) $(.$modifier())*
                ),*]
            }

            /// Reads checked parameters (defaults filled in) into the struct.
            pub fn parse(params: &$crate::params::Params) -> $crate::Result<Self> {
                Ok(Self { $( $field: params.typed(stringify!($field))?, )* })
            }
        }
    };
}

/// `"x" is not one of "a", "b"`.
pub fn not_one_of(value: &str, options: &[&str]) -> String {
    format!("{value:?} is not one of {}", quote_list(options))
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
    /// A required parameter. `doc` may carry the spaces of a doc comment; they are trimmed.
    pub fn required(name: &'static str, doc: &'static str, ty: ParamType) -> Self {
        Self { name, ty, default: None, doc: doc.trim(), secret: false, fingerprinted: true }
    }

    /// A parameter with a default value.
    pub fn optional(name: &'static str, doc: &'static str, ty: ParamType, default: impl Into<ParamValue>) -> Self {
        Self { name, ty, default: Some(default.into()), doc: doc.trim(), secret: false, fingerprinted: true }
    }

    /// A parameter that takes one of the words of a [`Choice`] enum, `default` unless given.
    pub fn choice<C: Choice>(name: &'static str, doc: &'static str, default: C) -> Self {
        Self::optional(name, doc, ParamType::Choice(C::NAMES), default.name())
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

    /// The value of `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&ParamValue> {
        self.0.get(name).ok_or_else(|| OpError::Param { name: name.into(), message: "is not set".into() })
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
    fn tables_and_commands() {
        let table = ParamValue::Table(BTreeMap::from([("b".to_string(), ParamValue::Int(2)), ("a".to_string(), "x".into())]));
        assert_eq!(ParamType::Table.check(&table), Ok(table.clone()));
        assert_eq!(table.to_json().to_string(), r#"{"a":"x","b":2}"#);
        assert_eq!(table.to_string(), r#"{ a = "x", b = 2 }"#);
        assert_eq!(ParamType::Table.check(&ParamValue::Int(1)).unwrap_err(), "expected a table (`{ name = value, … }`), found an integer");
        assert!(ParamType::Command.check(&ParamValue::List(Vec::new())).unwrap_err().contains("the command is empty"));
        assert!(ParamType::Command.check(&ParamValue::from(["python3", "x.py"])).is_ok());
        assert!(ParamType::Command.check(&ParamValue::List(vec![ParamValue::Int(1)])).unwrap_err().contains("array of strings"));
    }

    #[test]
    fn typed_getters() {
        let mut p = Params::new();
        p.insert("n", ParamValue::Int(3));
        assert_eq!(p.typed::<i64>("n").unwrap(), 3);
        assert_eq!(p.typed::<u32>("n").unwrap(), 3);
        assert_eq!(p.typed::<f64>("n").unwrap(), 3.0);
        assert!(p.typed::<String>("n").is_err());
        assert!(p.typed::<i64>("missing").is_err());
        p.insert("neg", ParamValue::Int(-1));
        assert!(p.typed::<u32>("neg").unwrap_err().to_string().contains("does not fit"));
        p.insert("none", ParamValue::Str(String::new()));
        assert_eq!(p.typed::<Option<String>>("none").unwrap(), None);
    }
}
