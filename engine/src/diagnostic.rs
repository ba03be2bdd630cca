//! Errors in a DAG file, rendered like a compiler's: what is wrong, where (file:line:col, with the
//! line shown), and how to fix it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A DAG file's text, with what is needed to turn byte offsets into lines and columns.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl AsRef<Path>, text: String) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { path: path.as_ref().to_path_buf(), text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn location(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let col = self.text[self.line_starts[line]..offset].chars().count() + 1;
        (line + 1, col)
    }

    /// The text of a 1-based line, without its newline.
    pub fn line(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self.line_starts.get(line).copied().unwrap_or(self.text.len());
        self.text[start..end].trim_end_matches(['\n', '\r'])
    }
}

/// One problem in a DAG file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub message: String,
    /// Byte range in the file; `None` for problems of the file as a whole.
    pub span: Option<Range<usize>>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Self { message: message.into(), span, help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// All problems found in one DAG file; validation reports them together.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: Arc<SourceFile>,
    pub items: Vec<Diagnostic>,
}

impl std::error::Error for Diagnostics {}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            render(f, &self.file, d)?;
        }
        if self.items.len() > 1 {
            write!(f, "\n{} errors in {}", self.items.len(), self.file.path.display())?;
        }
        Ok(())
    }
}

fn render(f: &mut fmt::Formatter<'_>, file: &SourceFile, d: &Diagnostic) -> fmt::Result {
    writeln!(f, "error: {}", d.message)?;
    match &d.span {
        Some(span) => {
            let (line, col) = file.location(span.start);
            let gutter = line.to_string().len();
            writeln!(f, "{:gutter$}--> {}:{line}:{col}", "", file.path.display())?;
            writeln!(f, "{:gutter$} |", "")?;
            let text = file.line(line);
            // Underline the span's part on its first line.
            let (end_line, end_col) = file.location(span.end.max(span.start + 1));
            let width =
                if end_line == line { end_col.saturating_sub(col).max(1) } else { text.chars().count().saturating_sub(col - 1).max(1) };
            let (shown, pad, width) = window(text, col - 1, width);
            writeln!(f, "{line} | {shown}")?;
            write!(f, "{:gutter$} | {:pad$}{}", "", "", "^".repeat(width), pad = pad)?;
        }
        None => write!(f, "  --> {}", file.path.display())?,
    }
    if let Some(help) = &d.help {
        write!(f, "\n  = help: {help}")?;
    }
    Ok(())
}

/// The widest source line shown; longer lines (a minified or generated file) are cut to a
/// window around the error, so a message never echoes a whole file.
const MAX_SHOWN: usize = 120;

/// The part of `text` to show for an error at character `start` spanning `width` characters:
/// the text, the caret's offset in it and the caret's width.
fn window(text: &str, start: usize, width: usize) -> (String, usize, usize) {
    let len = text.chars().count();
    if len <= MAX_SHOWN {
        return (text.to_string(), start, width);
    }
    let first = start.saturating_sub(MAX_SHOWN / 3).min(len.saturating_sub(MAX_SHOWN));
    let last = (first + MAX_SHOWN).min(len);
    let mut shown: String = text.chars().skip(first).take(last - first).collect();
    let mut pad = start - first;
    if first > 0 {
        shown.insert(0, '…');
        pad += 1;
    }
    if last < len {
        shown.push('…');
    }
    (shown, pad, width.min(last.saturating_sub(start)).max(1))
}

/// The closest of `candidates` to `name`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based() {
        let f = SourceFile::new("d.toml", "a = 1\nbé = 2\n".into());
        assert_eq!(f.location(0), (1, 1));
        assert_eq!(f.location(6), (2, 1));
        assert_eq!(f.location(9), (2, 3));
        assert_eq!(f.line(2), "bé = 2");
    }

    #[test]
    fn renders_with_caret() {
        let file = Arc::new(SourceFile::new("d.toml", "[nodes.a]\nmax_sid = 3\n".into()));
        let d = Diagnostics {
            file,
            items: vec![Diagnostic::new("unknown parameter `max_sid`", Some(10..17)).with_help("did you mean `max_side`?")],
        };
        let text = d.to_string();
        assert!(text.contains("--> d.toml:2:1"), "{text}");
        assert!(text.contains("2 | max_sid = 3"), "{text}");
        assert!(text.contains("  | ^^^^^^^"), "{text}");
        assert!(text.contains("= help: did you mean `max_side`?"), "{text}");
    }

    #[test]
    fn long_lines_are_cut_around_the_error() {
        let line = format!("x = {}", "[".repeat(100_000));
        let file = Arc::new(SourceFile::new("d.toml", line));
        let d = Diagnostics { file, items: vec![Diagnostic::new("too deep", Some(50_000..50_001))] };
        let text = d.to_string();
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert!(text.contains("…["), "{text}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("max_sid", ["column", "max_side"]), Some("max_side"));
        assert_eq!(did_you_mean("zzz", ["column", "max_side"]), None);
    }
}
