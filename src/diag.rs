//! Diagnostics for bad input: one located problem per line.
//!
//! This module owns the *shape* of an input error (file, line, column, key, message) and how it is
//! printed. It does not decide what is wrong: `config`, `prompt` and `graph` find problems and hand them
//! over as [`Diagnostic`]s. The invariant: every problem a user can fix by editing a file names that
//! file and, whenever the file has a position for it, the line and column, so the user never has to
//! search for it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (relative paths stay relative).
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a position.
    pub position: Option<(usize, usize)>,
    /// The dotted config key the problem concerns (`nodes.body.model`), when there is one.
    pub key: Option<String>,
    pub message: String,
    /// The offending source line and the caret under it, when the position is known.
    pub snippet: Option<Snippet>,
}

/// A source line with the span to underline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    pub line_number: usize,
    pub line: String,
    /// Columns (0-based, in characters) to underline within `line`.
    pub underline: Range<usize>,
}

impl Diagnostic {
    /// A problem with a whole file (missing, unreadable, not UTF-8).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            position: None,
            key: None,
            message: message.into(),
            snippet: None,
        }
    }

    /// A problem at a byte span of `source`, the text of `file`.
    pub fn at(
        file: impl Into<PathBuf>,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line_number, column, snippet) = locate(source, span);
        Diagnostic {
            file: file.into(),
            position: Some((line_number, column)),
            key: None,
            message: message.into(),
            snippet: Some(snippet),
        }
    }

    /// A problem at a 1-based line (and optional 1-based column) of `source`.
    pub fn at_line(
        file: impl Into<PathBuf>,
        source: &str,
        line_number: usize,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let offset = line_start(source, line_number) + column.unwrap_or(1).saturating_sub(1);
        let end = source[offset.min(source.len())..]
            .find('\n')
            .map_or(source.len(), |n| offset + n);
        Diagnostic::at(file, source, offset.min(source.len())..end, message)
    }

    /// Names the dotted config key the problem concerns.
    pub fn with_key(mut self, key: impl Into<String>) -> Diagnostic {
        self.key = Some(key.into());
        self
    }

    /// The one-line form: `file:line:col: key: message`.
    pub fn headline(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some((line, column)) = self.position {
            out.push_str(&format!(":{line}:{column}"));
        }
        out.push_str(": ");
        if let Some(key) = &self.key {
            out.push_str(&format!("`{key}`: "));
        }
        out.push_str(&self.message);
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.headline())?;
        if let Some(snippet) = &self.snippet {
            let number = snippet.line_number.to_string();
            let pad = " ".repeat(number.len());
            let caret_start = " ".repeat(snippet.underline.start);
            let carets = "^".repeat((snippet.underline.end - snippet.underline.start).max(1));
            write!(
                f,
                "\n{pad} |\n{number} | {}\n{pad} | {caret_start}{carets}",
                snippet.line
            )?;
        }
        Ok(())
    }
}

/// Every problem found in the input, in the order found. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// `Ok(value)` when no problem was found, the problems otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Diagnostics {
        Diagnostics(vec![diagnostic])
    }
}

/// Byte offset where 1-based `line_number` starts.
fn line_start(source: &str, line_number: usize) -> usize {
    if line_number <= 1 {
        return 0;
    }
    source
        .match_indices('\n')
        .nth(line_number - 2)
        .map_or(source.len(), |(i, _)| i + 1)
}

/// Turns a byte span into (line, column, snippet), all counted in characters as an editor shows them.
fn locate(source: &str, span: Range<usize>) -> (usize, usize, Snippet) {
    let start = floor_char_boundary(source, span.start.min(source.len()));
    let end = floor_char_boundary(source, span.end.clamp(start, source.len()));
    let line_begin = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[start..]
        .find('\n')
        .map_or(source.len(), |i| start + i);
    let line_number = source[..start].matches('\n').count() + 1;
    let line = source[line_begin..line_end].trim_end_matches('\r');
    let column = source[line_begin..start].chars().count();
    let underline_end = column + source[start..end.min(line_end)].chars().count();
    let snippet = Snippet {
        line_number,
        line: line.replace('\t', " "),
        underline: column..underline_end.max(column + 1),
    };
    (line_number, column + 1, snippet)
}

fn floor_char_boundary(source: &str, mut index: usize) -> usize {
    while index > 0 && !source.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// The closest of `candidates` to `name`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(name.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters; names are short, so the quadratic table is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Shows `path` relative to `base` when it lies below it, as given otherwise.
pub fn display_path(base: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_names_file_line_column_and_key() {
        let source = "[dataset]\nrows = 0\n";
        let d = Diagnostic::at("dataset.toml", source, 17..18, "must be at least 1")
            .with_key("dataset.rows");
        assert_eq!(
            d.headline(),
            "dataset.toml:2:8: `dataset.rows`: must be at least 1"
        );
        assert_eq!(
            d.to_string(),
            "dataset.toml:2:8: `dataset.rows`: must be at least 1\n  |\n2 | rows = 0\n  |        ^"
        );
    }

    #[test]
    fn at_line_points_at_the_column() {
        let source = "a\nhello {{ x }}\n";
        let d = Diagnostic::at_line("p.jinja", source, 2, Some(10), "unknown variable `x`");
        assert_eq!(d.position, Some((2, 10)));
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            did_you_mean("defualt", ["default", "cheap"]),
            Some("default")
        );
        assert_eq!(did_you_mean("zzz", ["default", "cheap"]), None);
    }
}
