//! Turning a `toml` error into a diagnostic a user can act on.
//!
//! `toml` reports a span and a message written for Rust programmers (`expected i64`, `unknown field`,
//! `duplicate key`). This module adds what the user needs to find and fix the problem: the dotted key
//! path (`dataset.rows`), types in TOML's words (an integer, an array, a table), the keys a table
//! takes with a suggestion for a typo, and for a duplicate key the line it was first defined on.
//!
//! The key path of a span comes from the document itself, parsed a second time (only on error) with
//! `toml::de::DeTable`, which keeps the span of every key and value: the path is that of the innermost
//! key whose key or value span contains the error's span.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, suggestion};

/// Keys the file format accepts only to refuse them with a better message; never suggested.
const HIDDEN_KEYS: [&str; 1] = ["api_key"];

/// The diagnostic for an error `toml::from_str` returned on `source`, the text of `path`.
pub(super) fn diagnose(path: &Path, source: &str, error: &toml::de::Error) -> Diagnostic {
    let (document, syntax_errors) = DeTable::parse_recoverable(source);
    let diagnostic = match syntax_errors.first() {
        Some(syntax) => syntax_error(path, source, document.get_ref(), syntax),
        None => data_error(path, source, document.get_ref(), error),
    };
    // A value pasted into the wrong key may be a secret: keep the position, drop the line.
    diagnostic.without_secrets()
}

/// An error of TOML syntax: the document could not be read at all.
fn syntax_error(
    path: &Path,
    source: &str,
    document: &DeTable<'_>,
    error: &toml::de::Error,
) -> Diagnostic {
    let message = lowercase_first(error.message());
    let Some(span) = error.span() else {
        return Diagnostic::file(path, message);
    };
    if message == "duplicate key" {
        return duplicate_key(path, source, document, span);
    }
    let start = span.start.min(source.len());
    let line_begin = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[start..]
        .find('\n')
        .map_or(source.len(), |i| start + i);
    let before = &source[line_begin..start];
    let after = source[start..line_end].trim();
    let message =
        if before.trim_end().ends_with('=') && (after.is_empty() || after.starts_with('#')) {
            "expected a value after `=`".to_string()
        } else {
            message
        };
    Diagnostic::at(path, source, span, message)
}

/// `key` is defined twice: names the key path and the line of the first definition.
fn duplicate_key(
    path: &Path,
    source: &str,
    document: &DeTable<'_>,
    span: Range<usize>,
) -> Diagnostic {
    let span = span.start.min(source.len())..span.end.min(source.len());
    let line_begin = source[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line = source[line_begin..]
        .split('\n')
        .next()
        .unwrap_or_default()
        .trim();
    let name = unquote(source.get(span.clone()).unwrap_or_default());
    let full_path: Option<Vec<String>> = if line.starts_with('[') {
        // A table header: its path is the header's.
        header_path(line)
    } else {
        // A key in a table: the section's path, then the key as written up to the error.
        let key_text = source
            .get(line_begin..span.end)
            .unwrap_or_default()
            .trim_start();
        let section = last_header_before(source, line_begin).unwrap_or_default();
        key_path(key_text).map(|key| section.into_iter().chain(key).collect())
    };
    let first_line = full_path.as_ref().and_then(|full| {
        if line.starts_with('[') {
            first_header_line(source, full)
        } else {
            find_key(document, full).map(|key_span| line_of(source, key_span.start))
        }
    });
    let mut message = format!("duplicate key: `{name}` is already defined");
    if let Some(first) = first_line {
        message.push_str(&format!(" on line {first}"));
    }
    let diagnostic = Diagnostic::at(path, source, span, message);
    match full_path {
        Some(full) => diagnostic.with_key(full.join(".")),
        None => diagnostic,
    }
}

/// An error of the data: the document is TOML, but a key or a value is not what the format wants.
fn data_error(
    path: &Path,
    source: &str,
    document: &DeTable<'_>,
    error: &toml::de::Error,
) -> Diagnostic {
    let message = lowercase_first(error.message());
    if message == "missing field `dataset`" {
        // Reported by the checker instead; kept here in case serde still gets there first.
        return Diagnostic::file(
            path,
            "missing the [dataset] table; add `[dataset]` with the dataset's `name` and `rows`",
        );
    }
    let Some(span) = error.span() else {
        return Diagnostic::file(path, message);
    };
    let key = key_at(document, &span, &mut Vec::new());
    let message = if let Some(rest) = message.strip_prefix("unknown field ") {
        unknown_key(rest)
    } else {
        translate_expected(&message)
    };
    let diagnostic = Diagnostic::at(path, source, span, message);
    match key {
        Some(key) => diagnostic.with_key(key.join(".")),
        None => diagnostic,
    }
}

/// serde's "`x`, expected one of `a`, `b`" (after "unknown field ") in the file format's words.
fn unknown_key(rest: &str) -> String {
    let mut quoted = backticked(rest).into_iter();
    let Some(name) = quoted.next() else {
        return format!("unknown key {rest}");
    };
    let expected: Vec<&str> = quoted.filter(|k| !HIDDEN_KEYS.contains(k)).collect();
    let hint = suggestion(name, expected.iter().copied());
    let list = |keys: &[&str]| crate::diag::backticked(keys);
    let expected = match expected.as_slice() {
        [] => "this table takes no keys".to_string(),
        [one] => format!("expected `{one}`"),
        [a, b] => format!("expected `{a}` or `{b}`"),
        many => format!("expected one of {}", list(many)),
    };
    format!("unknown key `{name}`{hint}; {expected}")
}

/// Replaces the Rust type in "..., expected TYPE" with its name in TOML.
fn translate_expected(message: &str) -> String {
    let Some((head, expected)) = message.rsplit_once(", expected ") else {
        return message.to_string();
    };
    let expected = match expected {
        "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" | "isize"
        | "usize" => "an integer",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a map" => "a table",
        "a borrowed string" => "a string",
        other if other.starts_with("struct ") => "a table",
        other => other,
    };
    format!("{head}, expected {expected}")
}

/// The path of the innermost key whose key or value span contains `span`.
fn key_at(
    table: &DeTable<'_>,
    span: &Range<usize>,
    prefix: &mut Vec<String>,
) -> Option<Vec<String>> {
    for (key, value) in table.iter() {
        prefix.push(key.get_ref().to_string());
        if let Some(found) = key_at_value(value, span, prefix) {
            return Some(found);
        }
        let key_span = key.span();
        let value_span = value.span();
        if contains(&key_span, span) || contains(&value_span, span) {
            return Some(prefix.clone());
        }
        prefix.pop();
    }
    None
}

fn key_at_value(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    prefix: &mut Vec<String>,
) -> Option<Vec<String>> {
    match value.get_ref() {
        DeValue::Table(table) => key_at(table, span, prefix),
        // Inside an array, the array's key is the path (elements have no keys); arrays of tables
        // hold keys of their own.
        DeValue::Array(items) => items.iter().find_map(|item| match item.get_ref() {
            DeValue::Table(table) => key_at(table, span, prefix),
            _ => None,
        }),
        _ => None,
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// The key span of the entry at `path`, when the document has it.
fn find_key(table: &DeTable<'_>, path: &[String]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(k, _)| k.get_ref() == first)?;
    if rest.is_empty() {
        return Some(key.span());
    }
    match value.get_ref() {
        DeValue::Table(inner) => find_key(inner, rest),
        _ => None,
    }
}

/// The path of a table header line (`[nodes.topic]`), read by the TOML parser itself.
fn header_path(line: &str) -> Option<Vec<String>> {
    let document = DeTable::parse(line).ok()?;
    let mut path = Vec::new();
    let mut table = document.get_ref();
    loop {
        let mut entries = table.iter();
        let (key, value) = entries.next()?;
        if entries.next().is_some() {
            return None;
        }
        path.push(key.get_ref().to_string());
        match value.get_ref() {
            DeValue::Table(inner) if !inner.is_empty() => table = inner,
            DeValue::Array(items) => match items.last().map(Spanned::get_ref) {
                Some(DeValue::Table(inner)) if !inner.is_empty() => table = inner,
                _ => return Some(path),
            },
            _ => return Some(path),
        }
    }
}

/// The path of a (possibly dotted, possibly quoted) key as written: `"IT Support"`, `a.b`.
fn key_path(key_text: &str) -> Option<Vec<String>> {
    header_path(&format!("{key_text} = 0"))
}

/// The path of the last table header that starts before byte `before`.
fn last_header_before(source: &str, before: usize) -> Option<Vec<String>> {
    source[..before]
        .lines()
        .rev()
        .map(str::trim)
        .filter(|line| line.starts_with('['))
        .find_map(header_path)
}

/// The 1-based line of the first header whose path is `path`.
fn first_header_line(source: &str, path: &[String]) -> Option<usize> {
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with('['))
        .find(|(_, line)| header_path(line.trim()).as_deref() == Some(path))
        .map(|(index, _)| index + 1)
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// The strings between backticks in `text`, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A key as written, without its quotes.
fn unquote(key: &str) -> String {
    let key = key.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = key.strip_prefix(quote).and_then(|k| k.strip_suffix(quote)) {
            return inner.to_string();
        }
    }
    key.to_string()
}

fn lowercase_first(message: &str) -> String {
    let mut message = message.trim().replace('\n', " ");
    if let Some(first) = message.get(..1) {
        let lower = first.to_lowercase();
        message.replace_range(..1, &lower);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnose_str(source: &str) -> Diagnostic {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            rows: Option<i64>,
            seed: Option<i64>,
            api_key: Option<String>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Doc {
            dataset: Option<Inner>,
            list: Option<Vec<String>>,
        }
        let error = toml::from_str::<Doc>(source).unwrap_err();
        diagnose(Path::new("d.toml"), source, &error)
    }

    #[test]
    fn type_errors_name_the_key_and_the_toml_type() {
        let d = diagnose_str("[dataset]\nrows = \"five\"\n");
        assert_eq!(
            d.headline(),
            "d.toml:2:8: `dataset.rows`: invalid type: string \"five\", expected an integer"
        );
        let d = diagnose_str("list = 5\n");
        assert_eq!(
            d.headline(),
            "d.toml:1:8: `list`: invalid type: integer `5`, expected an array"
        );
        let d = diagnose_str("dataset = 1\n");
        assert_eq!(
            d.headline(),
            "d.toml:1:11: `dataset`: invalid type: integer `1`, expected a table"
        );
    }

    #[test]
    fn unknown_keys_suggest_and_list_without_hidden_keys() {
        let d = diagnose_str("[dataset]\nrwos = 1\n");
        assert_eq!(
            d.headline(),
            "d.toml:2:1: `dataset.rwos`: unknown key `rwos` (did you mean `rows`?); expected `rows` or `seed`"
        );
    }

    #[test]
    fn duplicate_keys_name_the_first_definition() {
        let d = diagnose_str("[dataset]\nrows = 1\nseed = 2\nrows = 3\n");
        assert_eq!(
            d.headline(),
            "d.toml:4:1: `dataset.rows`: duplicate key: `rows` is already defined on line 2"
        );
        let d = diagnose_str("[dataset]\nrows = 1\n\n[dataset]\nseed = 2\n");
        assert_eq!(
            d.headline(),
            "d.toml:4:2: `dataset`: duplicate key: `dataset` is already defined on line 1"
        );
    }

    #[test]
    fn a_missing_value_says_so() {
        let d = diagnose_str("[dataset]\nrows = \n");
        assert_eq!(d.headline(), "d.toml:2:8: expected a value after `=`");
    }

    #[test]
    fn lines_that_may_hold_a_key_are_not_printed() {
        let d = diagnose_str("[dataset]\napikey = \"sk-proj-abcdefghijklmnop1234567890\"\n");
        assert!(d.snippet.is_none(), "{d}");
        assert!(!d.to_string().contains("sk-proj"), "{d}");
        let d = diagnose_str("[dataset]\nrwos = 1\n");
        assert!(d.snippet.is_some());
    }
}
