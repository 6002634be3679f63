//! A light scanner of template syntax: the tags of a template and the tokens inside them.
//!
//! minijinja compiles templates but exposes no syntax tree, and some mistakes (an unknown filter,
//! an attribute a json node does not have) only surface when a template is rendered. The checks
//! that catch them at load time (`graph`) need the tags of a template and the tokens inside them;
//! this scanner provides both. It follows minijinja's lexer where it matters: comments and
//! `{% raw %}` blocks are skipped, string literals may contain delimiters, and `-`/`+` whitespace
//! control is allowed. The invariant: it only runs on templates minijinja has already compiled, so
//! it never has to judge broken syntax.

use std::ops::Range;

/// A `{{ ... }}` or `{% ... %}` tag of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag {
    /// `{% %}` rather than `{{ }}`.
    pub(crate) block: bool,
    /// The whole tag, delimiters included, as a byte range of the template.
    pub(crate) span: Range<usize>,
    /// The code between the delimiters (without whitespace control), as a byte range.
    pub(crate) body: Range<usize>,
}

/// The tags of `text`, in order. The content of a `{% raw %}` block is text, so neither it nor its
/// `{% endraw %}` is listed.
pub(crate) fn tags(text: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(open) = text[search..].find('{').map(|i| search + i) {
        let (block, close) = match text[open + 1..].chars().next() {
            Some('{') => (false, "}}"),
            Some('%') => (true, "%}"),
            Some('#') => {
                search = text[open + 2..]
                    .find("#}")
                    .map_or(text.len(), |i| open + 2 + i + 2);
                continue;
            }
            _ => {
                search = open + 1;
                continue;
            }
        };
        let mut body_start = open + 2;
        if text[body_start..].starts_with(['-', '+']) {
            body_start += 1;
        }
        let (body_end, end) = match find_close(text, body_start, close) {
            Some(at) => {
                let body_end = if at > body_start && text[..at].ends_with(['-', '+']) {
                    at - 1
                } else {
                    at
                };
                (body_end, at + close.len())
            }
            None => (text.len(), text.len()),
        };
        let tag = Tag {
            block,
            span: open..end,
            body: body_start..body_end,
        };
        search = end;
        if block && first_word(&text[tag.body.clone()]) == Some("raw") {
            // Everything up to `{% endraw %}` is text.
            search = raw_end(text, end);
        }
        out.push(tag);
    }
    out
}

/// The offset of `close` after `from`, skipping string literals.
fn find_close(text: &str, from: usize, close: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // Bytes, not `str`: `i` may sit inside a multi-byte character here.
            _ if bytes[i..].starts_with(close.as_bytes()) => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The offset just after the `{% endraw %}` that closes a raw block whose opener ends at `from`.
fn raw_end(text: &str, from: usize) -> usize {
    let mut search = from;
    while let Some(open) = text[search..].find("{%").map(|i| search + i) {
        let body = text[open + 2..].trim_start_matches(['-', '+']).trim_start();
        if body.starts_with("endraw") {
            return text[open..].find("%}").map_or(text.len(), |i| open + i + 2);
        }
        search = open + 2;
    }
    text.len()
}

fn first_word(code: &str) -> Option<&str> {
    let code = code.trim_start();
    let end = code
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(code.len());
    (end > 0).then(|| &code[..end])
}

/// A token of template code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Ident(&'a str),
    /// A string literal's content, without quotes and with escapes left as written.
    Str(&'a str),
    Number,
    Punct(char),
}

/// The tokens of `code`, each with its byte range in `code`.
pub(crate) fn tokens(code: &str) -> Vec<(Range<usize>, Token<'_>)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' || c == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let end = i.min(bytes.len());
            i = (i + 1).min(bytes.len());
            out.push((start..i, Token::Str(&code[start + 1..end])));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start..i, Token::Ident(&code[start..i])));
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            // A fraction: `1.5`, but not the attribute dot of `x.0`.
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
            }
            out.push((start..i, Token::Number));
        } else {
            // Any other character, one at a time (multi-byte characters whole).
            let ch = code[i..].chars().next().unwrap_or('?');
            i += ch.len_utf8();
            out.push((start..i, Token::Punct(ch)));
        }
    }
    out
}

/// Statements that open a block closed by `end<name>`.
const BLOCK_STATEMENTS: [&str; 9] = [
    "if",
    "for",
    "macro",
    "call",
    "filter",
    "with",
    "block",
    "autoescape",
    "set",
];

/// The block tag of `text` that is opened but never closed (the innermost one), if any: the tag
/// `{% if %}` of `{% if x %}...` without `{% endif %}`, with the statement's name.
pub(crate) fn unclosed_block(text: &str) -> Option<(Tag, &'static str)> {
    let mut open: Vec<(Tag, &'static str)> = Vec::new();
    for tag in tags(text).into_iter().filter(|t| t.block) {
        let code = &text[tag.body.clone()];
        let Some(word) = first_word(code) else {
            continue;
        };
        if let Some(name) = word.strip_prefix("end") {
            if open.last().is_some_and(|(_, opened)| *opened == name) {
                open.pop();
            }
            continue;
        }
        let Some(statement) = BLOCK_STATEMENTS.iter().find(|s| **s == word) else {
            continue;
        };
        // `{% set x = 1 %}` is complete; only `{% set x %}...{% endset %}` opens a block.
        let assigns = tokens(code)
            .iter()
            .any(|(_, token)| *token == Token::Punct('='));
        if *statement == "set" && assigns {
            continue;
        }
        open.push((tag, statement));
    }
    open.pop()
}

pub(super) fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{#") {
        out.push_str(&rest[..start]);
        match rest[start..].find("#}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => return out + &rest[start..],
        }
    }
    out + rest
}

/// Byte offset of `name` as a whole identifier in `code`, skipping string literals and attributes
/// (`x.name` is an attribute, not the variable `name`).
pub(super) fn find_identifier(code: &str, name: &str) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let after_dot = code[..start].trim_end().ends_with('.');
            if &code[start..i] == name && !after_dot {
                return Some(start);
            }
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::{PromptFile, find_variable};
    use std::path::Path;

    fn bodies(text: &str) -> Vec<&str> {
        tags(text).into_iter().map(|t| &text[t.body]).collect()
    }

    #[test]
    fn tags_skip_comments_raw_blocks_and_delimiters_in_strings() {
        let text = "a {# {{ no }} #} {{- x ~ '}}' -}} {% raw %}{{ no }}{% endraw %} {%+ if y %}";
        // The content of a raw block, up to and including `{% endraw %}`, is text.
        assert_eq!(bodies(text), [" x ~ '}}' ", " raw ", " if y "]);
        // An unclosed tag runs to the end; multi-byte text is never split.
        assert_eq!(bodies("é {{ 'ü }} 😀"), [" 'ü }} 😀"]);
    }

    #[test]
    fn tokens_of_code() {
        let tokens: Vec<Token> = tokens("x.y | join(', ') is not none 1.5")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            tokens,
            [
                Token::Ident("x"),
                Token::Punct('.'),
                Token::Ident("y"),
                Token::Punct('|'),
                Token::Ident("join"),
                Token::Punct('('),
                Token::Str(", "),
                Token::Punct(')'),
                Token::Ident("is"),
                Token::Ident("not"),
                Token::Ident("none"),
                Token::Number,
            ]
        );
    }

    #[test]
    fn the_innermost_unclosed_block_is_found() {
        let text = "{% set a = 1 %}{% if x %}{% for y in z %}{% endfor %}{% set b %}b{% endset %}";
        let (tag, statement) = unclosed_block(text).unwrap();
        assert_eq!((&text[tag.span], statement), ("{% if x %}", "if"));
        assert!(unclosed_block("{% if x %}{% endif %}").is_none());
    }

    #[test]
    fn positions_count_from_the_file() {
        let file = PromptFile::parse(
            Path::new("p.jinja"),
            "--- user\n   Hello {{ topic }}\n".to_string(),
        )
        .unwrap();
        let at = find_variable(&file.user.text, "topic").unwrap();
        // The part's text starts at `Hello`; columns still count the indentation.
        assert_eq!(file.position(&file.user, at), (2, 13));
    }
}
