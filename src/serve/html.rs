//! HTML rendered on the server: escaping, the page frame, and cell values.

use std::fmt::Write;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;

/// `text` safe inside HTML text and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
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
    out
}

/// `text` percent-encoded for a URL path segment or query value.
pub fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A whole page: the frame (title, navigation, stylesheet, script) around `body`.
pub fn page(title: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · unoflow</title><link rel=\"stylesheet\" href=\"/static/style.css\">\
         <script src=\"/static/app.js\" defer></script></head>\n<body>\
         <nav><a href=\"/\" class=\"brand\">unoflow</a> <a href=\"/\">DAG</a> <a href=\"/runs\">runs</a> \
         <span class=\"keys\">keys: <kbd>j</kbd>/<kbd>k</kbd> move · <kbd>a</kbd> accept · <kbd>r</kbd> reject · <kbd>s</kbd> skip</span></nav>\n\
         <main>{body}</main></body></html>\n",
        escape(title)
    );
    out
}

/// The longest text a grid cell shows; the rest is in the row page.
const CELL_CHARS: usize = 160;

/// A cell's value as text (binary as a size; long text cut, whole in the title attribute).
pub fn cell_text(column: &ArrayRef, row: usize) -> String {
    if column.is_null(row) {
        return "<span class=\"null\">NULL</span>".into();
    }
    let text = crate::format::cell_text(column, row);
    if text.chars().count() > CELL_CHARS {
        let short: String = text.chars().take(CELL_CHARS).collect();
        format!("<span title=\"{}\">{}…</span>", escape(&text), escape(&short))
    } else {
        escape(&text)
    }
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
    use super::*;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(url_part("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
