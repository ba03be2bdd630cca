//! HTML rendered on the server through one escaping path: [`Html`], a buffer that only
//! [`html!`] writes to. The macro takes string literals as markup and everything
//! else (any expression, in braces) as a value that [`Render`] escapes, so an unescaped
//! interpolation of data cannot compile: there is no way to append a runtime `String` to an
//! [`Html`] as markup.
//!
//! ```ignore
//! html!(out; "<a href=\"/node/" {Url(name)} "\">" {name} "</a>");
//! ```
//!
//! Values escape for text and for double-quoted attribute values alike (`&<>"'`); numbers are
//! written as they display. Markup made elsewhere (a cell, a thumbnail) is an [`Html`] and is
//! inserted as it is. Scripts are never written into pages: the page's one script is a static
//! file (the Content-Security-Policy of every answer forbids inline script).

use std::fmt::Write;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;

/// Markup whose every value was escaped on the way in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Html(String);

impl Html {
    pub fn new() -> Self {
        Self::default()
    }

    /// Markup from the page's own source text. Only [`html!`] calls this: a
    /// `&'static str` literal is written by a programmer, never taken from data.
    #[doc(hidden)]
    pub fn push_markup(&mut self, markup: &'static str) {
        self.0.push_str(markup);
    }

    /// `other`'s markup, appended.
    pub fn append(&mut self, other: &Html) {
        self.0.push_str(&other.0);
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// A value written into a page: text is escaped, numbers displayed, markup kept.
pub trait Render {
    fn render(&self, out: &mut Html);
}

impl Render for str {
    fn render(&self, out: &mut Html) {
        escape_into(self, &mut out.0);
    }
}

impl Render for String {
    fn render(&self, out: &mut Html) {
        escape_into(self, &mut out.0);
    }
}

impl Render for Html {
    fn render(&self, out: &mut Html) {
        out.append(self);
    }
}

impl<T: Render + ?Sized> Render for &T {
    fn render(&self, out: &mut Html) {
        (**self).render(out);
    }
}

impl<T: Render> Render for Option<T> {
    fn render(&self, out: &mut Html) {
        if let Some(v) = self {
            v.render(out);
        }
    }
}

/// Numbers and booleans cannot hold markup: written as they display.
macro_rules! render_display {
    ($($t:ty),*) => {$(
        impl Render for $t {
            fn render(&self, out: &mut Html) {
                let _ = write!(out.0, "{self}");
            }
        }
    )*};
}
render_display!(u8, u16, u32, u64, usize, i32, i64, bool);

/// A float with a fixed number of decimals (`Fixed(x, 1)` is `format!("{x:.1}")`).
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub f64, pub usize);

impl Render for Fixed {
    fn render(&self, out: &mut Html) {
        let _ = write!(out.0, "{:.*}", self.1, self.0);
    }
}

impl Render for f64 {
    fn render(&self, out: &mut Html) {
        let _ = write!(out.0, "{self}");
    }
}

/// Text percent-encoded for a URL path segment or query value (then escaped as any value).
#[derive(Debug, Clone, Copy)]
pub struct Url<'a>(pub &'a str);

impl Render for Url<'_> {
    fn render(&self, out: &mut Html) {
        url_part(self.0).render(out);
    }
}

/// Writes markup and values to an [`Html`]: string literals are markup, `{expr}` a value
/// rendered through [`Render`] (escaped).
macro_rules! html {
    (@part $out:ident, $markup:literal) => {
        $out.push_markup($markup)
    };
    (@part $out:ident, { $value:expr }) => {
        $crate::serve::html::Render::render(&$value, $out)
    };
    ($out:expr; $($part:tt)*) => {{
        let out: &mut $crate::serve::html::Html = $out;
        $( $crate::serve::html::html!(@part out, $part); )*
    }};
}
pub(crate) use html;

/// `text` safe inside HTML text and quoted attribute values.
fn escape_into(text: &str, out: &mut String) {
    out.reserve(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `text` percent-encoded for a URL path segment or query value.
pub fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A whole page: the frame (title, navigation, stylesheet, script) around `body`.
pub fn page(title: &str, body: &Html) -> String {
    let mut out = Html(String::with_capacity(body.0.len() + 1024));
    html!(&mut out;
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>" {title} " · unoflow</title><link rel=\"stylesheet\" href=\"/static/style.css\">\
         <script src=\"/static/app.js\" defer></script></head>\n<body>\
         <nav><a href=\"/\" class=\"brand\">unoflow</a> <a href=\"/\">DAG</a> <a href=\"/runs\">runs</a> \
         <span class=\"keys\">keys: <kbd>j</kbd>/<kbd>k</kbd> move · <kbd>a</kbd> accept · <kbd>r</kbd> reject · <kbd>s</kbd> skip</span></nav>\n\
         <main>" {body} "</main></body></html>\n"
    );
    out.0
}

/// The longest text a grid cell shows; the rest is in the row page.
const CELL_CHARS: usize = 160;

/// The longest text a grid cell's tooltip holds: a cell of a million characters must not make
/// every page that shows it megabytes long (the whole value is on the row page).
const TITLE_CHARS: usize = 1000;

/// A cell's value as markup (binary as a size; long text cut, with a longer cut in the title
/// attribute).
pub fn cell_text(column: &ArrayRef, row: usize) -> Html {
    let mut out = Html::new();
    if column.is_null(row) {
        html!(&mut out; "<span class=\"null\">NULL</span>");
        return out;
    }
    let text = crate::format::cell_text(column, row);
    match text.char_indices().nth(CELL_CHARS) {
        None => html!(&mut out; {text}),
        Some((short_end, _)) => {
            let title_end = text.char_indices().nth(TITLE_CHARS).map_or(text.len(), |(i, _)| i);
            let more = if title_end < text.len() { "…" } else { "" };
            html!(&mut out; "<span title=\"" {&text[..title_end]} {more} "\">" {&text[..short_end]} "…</span>");
        }
    }
    out
}

/// The bytes of a binary cell.
pub fn binary_value(column: &ArrayRef, row: usize) -> Option<&[u8]> {
    if column.is_null(row) {
        return None;
    }
    match column.data_type() {
        DataType::Binary => Some(column.as_binary::<i32>().value(row)),
        DataType::LargeBinary => Some(column.as_binary::<i64>().value(row)),
        DataType::BinaryView => Some(column.as_binary_view().value(row)),
        _ => None,
    }
}

/// A string cell's text.
pub fn string_value(column: &ArrayRef, row: usize) -> Option<String> {
    if column.is_null(row) {
        return None;
    }
    match column.data_type() {
        DataType::Utf8 => Some(column.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Some(column.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Some(column.as_string_view().value(row).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::StringArray;

    use super::*;

    #[test]
    fn values_are_escaped_and_literals_are_markup() {
        let mut out = Html::new();
        let hostile = "<img src=x onerror=alert(1)> \"'&";
        html!(&mut out; "<b title=\"" {hostile} "\">" {hostile} "</b>" {3u64} " " {Fixed(0.25, 1)} " " {Url("a b/c?d")});
        assert_eq!(
            out.as_str(),
            "<b title=\"&lt;img src=x onerror=alert(1)&gt; &quot;&#39;&amp;\">&lt;img src=x onerror=alert(1)&gt; &quot;&#39;&amp;</b>3 0.2 a%20b%2Fc%3Fd"
        );
        let mut outer = Html::new();
        html!(&mut outer; "<p>" {out} "</p>");
        assert!(outer.as_str().starts_with("<p><b title="), "markup is kept as it is");
    }

    #[test]
    fn long_cells_are_cut_in_the_text_and_in_the_title() {
        let long = "x".repeat(300_000);
        let column: ArrayRef = Arc::new(StringArray::from(vec![long.as_str(), "short <b>"]));
        let cell = cell_text(&column, 0);
        assert!(cell.as_str().len() < TITLE_CHARS + CELL_CHARS + 100, "{} bytes", cell.as_str().len());
        assert_eq!(cell_text(&column, 1).as_str(), "short &lt;b&gt;");
    }
}
