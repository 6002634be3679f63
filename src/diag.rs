//! Diagnostics for bad input: one located problem per line.
//!
//! This module owns the *shape* of an input error (file, line, column, key, message) and how it is
//! printed. It does not decide what is wrong: `config`, `prompt` and `graph` find problems and hand them
//! over as [`Diagnostic`]s. The invariant: every problem a user can fix by editing a file names that
//! file and, whenever the file has a position for it, the line and column, so the user never has to
//! search for it.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One problem in one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (relative paths stay relative).
    pub(crate) file: PathBuf,
    /// 1-based line and column, when the problem has a position.
    pub(crate) position: Option<(usize, usize)>,
    /// The dotted config key the problem concerns (`nodes.body.model`), when there is one.
    pub(crate) key: Option<String>,
    pub(crate) message: String,
    /// The offending source line and the caret under it, when the position is known.
    pub(crate) snippet: Option<Snippet>,
}

/// A source line with the span to underline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snippet {
    pub(crate) line_number: usize,
    pub(crate) line: String,
    /// Columns (0-based, in characters) to underline within `line`.
    pub(crate) underline: Range<usize>,
}

impl Diagnostic {
    /// A problem with a whole file (missing, unreadable, not UTF-8).
    pub(crate) fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            position: None,
            key: None,
            message: message.into(),
            snippet: None,
        }
    }

    /// A problem at a byte span of `source`, the text of `file`.
    pub(crate) fn at(
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

    /// A problem at a 1-based line (and optional 1-based column, counted in characters as an
    /// editor shows it) of `source`.
    pub(crate) fn at_line(
        file: impl Into<PathBuf>,
        source: &str,
        line_number: usize,
        column: Option<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let begin = line_start(source, line_number);
        let line_end = source[begin..]
            .find('\n')
            .map_or(source.len(), |n| begin + n);
        // Columns count characters, so walk them to a byte offset; a column past the end of the
        // line points at its end.
        let offset = source[begin..line_end]
            .char_indices()
            .nth(column.unwrap_or(1).saturating_sub(1))
            .map_or(line_end, |(i, _)| begin + i);
        Diagnostic::at(file, source, offset..line_end, message)
    }

    /// A problem with a command-line argument (`--rows`): no file, the flag as the key.
    pub(crate) fn argument(flag: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: PathBuf::new(),
            position: None,
            key: Some(flag.into()),
            message: message.into(),
            snippet: None,
        }
    }

    /// `file` is not valid UTF-8: located at the first bad byte (line and column as an editor shows
    /// them up to there), without a snippet, since the line cannot be printed as text.
    pub(crate) fn invalid_utf8(
        file: impl Into<PathBuf>,
        bytes: &[u8],
        valid_up_to: usize,
    ) -> Diagnostic {
        let valid = &bytes[..valid_up_to.min(bytes.len())];
        let line_begin = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        // The prefix is valid UTF-8 by definition of `valid_up_to`, so this counts characters.
        let column = String::from_utf8_lossy(&valid[line_begin..])
            .chars()
            .count()
            + 1;
        Diagnostic {
            file: file.into(),
            position: Some((line, column)),
            key: None,
            message: "is not valid UTF-8".to_string(),
            snippet: None,
        }
    }

    /// Drops the source line when it may hold a credential (see [`may_hold_secret`]): the position
    /// stays, so the problem is still found, but a key never reaches a terminal or a log.
    pub(crate) fn without_secrets(mut self) -> Diagnostic {
        if self
            .snippet
            .as_ref()
            .is_some_and(|snippet| may_hold_secret(&snippet.line))
        {
            self.snippet = None;
        }
        self
    }

    /// Drops the quoted source line (it holds what must not be printed, such as a credential).
    pub(crate) fn without_snippet(mut self) -> Diagnostic {
        self.snippet = None;
        self
    }

    /// Names the dotted config key the problem concerns.
    pub(crate) fn with_key(mut self, key: impl Into<String>) -> Diagnostic {
        self.key = Some(key.into());
        self
    }

    /// The one-line form: `file:line:col: key: message`.
    pub(crate) fn headline(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some((line, column)) = self.position {
            out.push_str(&format!(":{line}:{column}"));
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
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
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// `Ok(value)` when no problem was found, the problems otherwise.
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
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

/// `` `a`, `b`, `c` ``: names as messages list them.
pub(crate) fn backticked<T: std::fmt::Display>(names: impl IntoIterator<Item = T>) -> String {
    names
        .into_iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ` (did you mean `x`?)` when one of `candidates` is a near miss of `name`, or nothing: the
/// suffix every "unknown name" message ends with.
pub(crate) fn suggestion<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(name, candidates).map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

/// The closest of `candidates` to `name`, when it is close enough to be a likely typo. Distance
/// is the optimal string alignment distance over characters, where swapping two adjacent
/// characters is one edit like an insertion, a deletion or a substitution: `rwos` is one edit
/// from `rows`.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::osa_distance(name, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(name.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Whether a source line may hold a pasted credential: a run of 16 or more letters and digits with
/// both letters and digits. API keys have such runs (`sk-proj-` followed by random characters);
/// names, sentences, URLs and model names (`claude-3-5-sonnet-20241022`) do not.
pub(crate) fn may_hold_secret(line: &str) -> bool {
    line.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| {
        run.len() >= 16
            && run.chars().any(|c| c.is_ascii_digit())
            && run.chars().any(|c| c.is_ascii_alphabetic())
    })
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
    fn at_line_counts_columns_in_characters() {
        // Found by tests/fuzz.rs: a column after multi-byte characters used to be taken as a byte
        // offset and sliced inside a character.
        let source = "¡𐀀{{ m(topic) }}";
        let d = Diagnostic::at_line("p.jinja", source, 1, Some(3), "unknown variable `m`");
        assert_eq!(d.position, Some((1, 3)));
        assert_eq!(d.snippet.as_ref().map(|s| s.underline.start), Some(2));
        let past_the_end = Diagnostic::at_line("p.jinja", source, 1, Some(99), "x");
        assert_eq!(past_the_end.position, Some((1, 17)));
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            did_you_mean("defualt", ["default", "cheap"]),
            Some("default")
        );
        assert_eq!(did_you_mean("zzz", ["default", "cheap"]), None);
    }

    #[test]
    fn a_transposition_is_one_edit() {
        assert_eq!(strsim::osa_distance("rwos", "rows"), 1);
        assert_eq!(strsim::osa_distance("mdoel", "model"), 1);
        assert_eq!(strsim::osa_distance("abc", "abc"), 0);
        assert_eq!(strsim::osa_distance("", "abc"), 3);
        assert_eq!(strsim::osa_distance("kitten", "sitting"), 3);
        assert_eq!(did_you_mean("rwos", ["rows", "seed"]), Some("rows"));
    }

    #[test]
    fn lines_with_a_key_are_not_printed() {
        assert!(may_hold_secret(
            "api_key_env = \"sk-proj-Ab3dEf9hIjKlMn0pQrStUv\""
        ));
        assert!(may_hold_secret("x = \"0123456789abcdef0123\""));
        assert!(!may_hold_secret("model = \"claude-3-5-sonnet-20241022\""));
        assert!(!may_hold_secret("base_url = \"http://localhost:8000/v1\""));
        assert!(!may_hold_secret("\"Billing and Payments\" = 1"));
        let source = "key = \"sk-Ab3dEf9hIjKlMn0pQrStUv\"\n";
        let d = Diagnostic::at("d.toml", source, 0..3, "bad").without_secrets();
        assert_eq!(d.position, Some((1, 1)));
        assert!(d.snippet.is_none());
    }

    #[test]
    fn argument_problems_name_the_flag_without_a_file() {
        let d = Diagnostic::argument("--rows", "must be at least 1, found 0");
        assert_eq!(d.headline(), "`--rows`: must be at least 1, found 0");
    }

    #[test]
    fn invalid_utf8_is_located_at_the_first_bad_byte() {
        let bytes = b"a = 1\nname = \"x\xff\"\n";
        // Valid up to the 0xff byte, the 15th.
        let d = Diagnostic::invalid_utf8("dataset.toml", bytes, 15);
        assert_eq!(d.headline(), "dataset.toml:2:10: is not valid UTF-8");
    }
}
