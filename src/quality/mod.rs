//! Quality: judging an answer against its node's checks, and telling duplicate tickets apart.
//!
//! This module owns the verdicts, not the decisions: [`judge`] says whether one answer passes
//! `[nodes.NAME.checks]` (and why not), [`dedup`] says whether a ticket's unique columns repeat an
//! earlier ticket's. Asking again (a new draw) and redrawing a duplicate ticket are the engine's.
//! The invariants: a verdict depends only on the answer, the checks and the ticket's language, so
//! re-judging a cached answer gives the same verdict; and checks never touch a key.

pub(crate) mod dedup;
pub(crate) mod language;
mod on_disk;

use std::fmt;

use crate::config::{LanguageRule, NodeChecks, Pattern};
use crate::language::Language;
use crate::value::NodeOutput;
use language::LanguageVerdict;

/// What kind of check rejected an answer; the summary counts rejections by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RejectKind {
    /// Not in the language it must be in.
    Language,
    /// Too few or too many words or characters.
    Length,
    /// Matches a `reject` pattern (the defaults catch placeholders and the like).
    Pattern,
    /// Does not match a `require` pattern.
    Require,
    /// A list item does not match `item_pattern`.
    ItemPattern,
    /// A list item repeats another (`unique_items`).
    DuplicateItem,
}

impl RejectKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            RejectKind::Language => "language",
            RejectKind::Length => "length",
            RejectKind::Pattern => "reject pattern",
            RejectKind::Require => "require pattern",
            RejectKind::ItemPattern => "item pattern",
            RejectKind::DuplicateItem => "duplicate item",
        }
    }
}

/// Why an answer was rejected: its kind, and the detail a person needs to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) kind: RejectKind,
    pub(crate) detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

/// What judging an accepted answer found out about its language.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Judged {
    /// Texts whose language was judged (and found right).
    pub(crate) language_checked: u32,
    /// Texts too short (or too mixed) to tell.
    pub(crate) language_unsure: u32,
}

/// Judges `output` against `checks` for a ticket in `ticket_language`. The first problem found
/// is the one reported: patterns, then length, then language, then `require`.
pub(crate) fn judge(
    checks: &NodeChecks,
    output: &NodeOutput,
    ticket_language: Language,
) -> Result<Judged, Rejection> {
    let expected = checks.language.map(|rule| match rule {
        LanguageRule::Ticket => ticket_language,
        LanguageRule::Fixed(language) => language,
    });
    let mut judged = Judged::default();
    match output {
        NodeOutput::Text(text) => judge_text(checks, None, text, expected, &mut judged)?,
        NodeOutput::Json(fields) => {
            for (field, text) in fields {
                if checks.fields.is_empty() || checks.fields.contains(field) {
                    judge_text(checks, Some(field), text, expected, &mut judged)?;
                }
            }
        }
        NodeOutput::List(items) => judge_list(checks, items, expected, &mut judged)?,
    }
    Ok(judged)
}

fn reject(kind: RejectKind, detail: String) -> Result<(), Rejection> {
    Err(Rejection { kind, detail })
}

/// Judges the language of `text`; a verdict that it is wrong is the rejection `describe` words.
fn judge_language(
    text: &str,
    expected: Language,
    min_chars: usize,
    judged: &mut Judged,
    describe: impl FnOnce(&str) -> String,
) -> Result<(), Rejection> {
    match language::judge(text, expected, min_chars) {
        LanguageVerdict::Agrees => judged.language_checked += 1,
        LanguageVerdict::Abstains => judged.language_unsure += 1,
        LanguageVerdict::Differs(found) => {
            return reject(
                RejectKind::Language,
                format!("{} is in {found}, not {}", describe(found), expected.name()),
            );
        }
    }
    Ok(())
}

/// `the text` or `` field `body` ``, for messages.
fn what(field: Option<&str>) -> String {
    field.map_or_else(|| "the text".to_string(), |f| format!("field `{f}`"))
}

/// A short quote of what matched, on one line.
fn quote(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = one_line.chars().take(40).collect();
    if one_line.chars().count() > 40 {
        short.push('…');
    }
    format!("\"{short}\"")
}

/// What of `text` a `reject` pattern matches, with why it is rejected.
fn matched(checks: &NodeChecks, text: &str) -> Option<(String, &'static str)> {
    // Each pattern alone: regex finds their literal parts (`[`, `{{`, `as an ai`) with fast
    // searches, which a set of them would lose.
    checks.reject.iter().find_map(|p: &Pattern| {
        p.regex.find(text).map(|m| {
            let why = p.reason.unwrap_or("a `reject` pattern");
            (quote(m.as_str()), why)
        })
    })
}

fn judge_text(
    checks: &NodeChecks,
    field: Option<&str>,
    text: &str,
    expected: Option<Language>,
    judged: &mut Judged,
) -> Result<(), Rejection> {
    if let Some((found, why)) = matched(checks, text) {
        return reject(
            RejectKind::Pattern,
            format!("{} holds {found} ({why})", what(field)),
        );
    }
    judge_length(checks, || what(field), text)?;
    if let Some(expected) = expected {
        judge_language(text, expected, checks.language_min_chars, judged, |_| {
            what(field)
        })?;
    }
    for pattern in &checks.require {
        if !pattern.regex.is_match(text) {
            return reject(
                RejectKind::Require,
                format!("{} does not match `{}`", what(field), pattern.source),
            );
        }
    }
    Ok(())
}

/// `subject` names what is measured in messages: `the text`, `` field `body` ``, an item (made
/// only when the text fails).
fn judge_length(
    checks: &NodeChecks,
    subject: impl Fn() -> String,
    text: &str,
) -> Result<(), Rejection> {
    let words = if checks.min_words.is_some() || checks.max_words.is_some() {
        count_words(text)
    } else {
        0
    };
    let chars = if checks.min_chars.is_some() || checks.max_chars.is_some() {
        text.chars().count()
    } else {
        0
    };
    let bounds = [
        (checks.min_words, words, "words", true),
        (checks.max_words, words, "words", false),
        (checks.min_chars, chars, "characters", true),
        (checks.max_chars, chars, "characters", false),
    ];
    for (bound, count, unit, is_min) in bounds {
        match bound {
            Some(min) if is_min && count < min => {
                return reject(
                    RejectKind::Length,
                    format!("{} has {count} {unit}, fewer than {min}", subject()),
                );
            }
            Some(max) if !is_min && count > max => {
                return reject(
                    RejectKind::Length,
                    format!("{} has {count} {unit}, more than {max}", subject()),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Words separated by whitespace, as `split_whitespace` counts them; ASCII is read byte by byte.
fn count_words(text: &str) -> usize {
    let mut words = 0;
    let mut in_word = false;
    for c in text.chars() {
        let space = if c.is_ascii() {
            c.is_ascii_whitespace() || c == '\u{0b}'
        } else {
            c.is_whitespace()
        };
        if !space && !in_word {
            words += 1;
        }
        in_word = !space;
    }
    words
}

/// A list: every item against the patterns and length bounds, items unique when asked, each
/// `require` pattern matched by some item, and the items together in the expected language.
fn judge_list(
    checks: &NodeChecks,
    items: &[String],
    expected: Option<Language>,
    judged: &mut Judged,
) -> Result<(), Rejection> {
    let mut seen = std::collections::HashSet::new();
    for item in items {
        // Named only when something is wrong with it: most items pass.
        let field = || format!("item {}", quote(item));
        if let Some((found, why)) = matched(checks, item) {
            return reject(
                RejectKind::Pattern,
                format!("{} holds {found} ({why})", field()),
            );
        }
        if let Some(pattern) = &checks.item_pattern {
            if !pattern.regex.is_match(item) {
                return reject(
                    RejectKind::ItemPattern,
                    format!("{} does not match `{}`", field(), pattern.source),
                );
            }
        }
        judge_length(checks, field, item)?;
        if checks.unique_items && !seen.insert(item.trim().to_lowercase()) {
            return reject(
                RejectKind::DuplicateItem,
                format!("{} is listed twice", field()),
            );
        }
    }
    for pattern in &checks.require {
        if !items.iter().any(|item| pattern.regex.is_match(item)) {
            return reject(
                RejectKind::Require,
                format!("no item matches `{}`", pattern.source),
            );
        }
    }
    if let Some(expected) = expected {
        let joined = items.join(", ");
        judge_language(&joined, expected, checks.language_min_chars, judged, |_| {
            "the items".to_string()
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    /// The checks of node `n` in a config with `checks` under `[nodes.n.checks]`.
    fn checks(output: &str, checks: &str) -> NodeChecks {
        let toml = format!(
            "[dataset]\nrows = 1\n[nodes.n]\nprompt = \"p.jinja\"\n{output}\n[nodes.n.checks]\n{checks}\n"
        );
        let config = Config::parse(std::path::Path::new("d.toml"), toml, &Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        config.nodes[0].checks.clone().expect("checks")
    }

    fn text(s: &str) -> NodeOutput {
        NodeOutput::Text(s.to_string())
    }

    #[test]
    fn placeholders_lengths_and_languages_are_caught_in_that_order() {
        let c = checks("", "language = \"ticket\"\nmin_words = 3\nmax_chars = 80");
        let de = Language::De;
        assert_eq!(
            judge(&c, &text("Anmeldung schlägt seit dem Update fehl"), de),
            Ok(Judged {
                language_checked: 1,
                language_unsure: 0
            })
        );
        let r = judge(&c, &text("Hallo [Your Name]"), de).unwrap_err();
        assert_eq!(r.kind, RejectKind::Pattern);
        assert_eq!(
            r.to_string(),
            "reject pattern: the text holds \"[Your Name]\" (a placeholder in brackets)"
        );
        let r = judge(&c, &text("Anmeldung fehlgeschlagen"), de).unwrap_err();
        assert_eq!(r.to_string(), "length: the text has 2 words, fewer than 3");
        let r = judge(&c, &text("Login fails since the last update"), de).unwrap_err();
        assert_eq!(
            r.to_string(),
            "language: the text is in English, not German"
        );
    }

    #[test]
    fn words_are_counted_as_split_whitespace_counts_them() {
        for text in [
            "",
            " a  b\tc\n",
            "élan\u{a0}vital ",
            "x\u{0b}y",
            "one",
            "\u{3000}東京\u{3000}大阪\u{2029}ça\u{85}va 👍🏽 ok\u{202f}\r\n",
            "ü\u{2009}ö\u{200b}ä",
        ] {
            assert_eq!(
                count_words(text),
                text.split_whitespace().count(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn json_fields_are_each_judged_and_can_be_chosen() {
        let output = NodeOutput::Json(
            [
                (
                    "body".to_string(),
                    "Seit dem Update funktioniert die Anmeldung nicht mehr.".to_string(),
                ),
                ("subject".to_string(), "x".to_string()),
            ]
            .into(),
        );
        let all = checks(
            "output = \"json\"\nfields = [\"subject\", \"body\"]",
            "min_words = 2",
        );
        assert_eq!(
            judge(&all, &output, Language::De).unwrap_err().to_string(),
            "length: field `subject` has 1 words, fewer than 2"
        );
        let body = checks(
            "output = \"json\"\nfields = [\"subject\", \"body\"]",
            "min_words = 2\nfields = [\"body\"]",
        );
        assert!(judge(&body, &output, Language::De).is_ok());
    }

    #[test]
    fn list_items_match_the_pattern_and_are_unique() {
        let c = checks(
            "output = \"list\"",
            "item_pattern = \"[a-z0-9]+(-[a-z0-9]+)*\"\nunique_items = true",
        );
        let list = |items: &[&str]| NodeOutput::List(items.iter().map(|s| s.to_string()).collect());
        assert!(judge(&c, &list(&["billing", "late-fee"]), Language::En).is_ok());
        assert_eq!(
            judge(&c, &list(&["billing", "Subject:"]), Language::En)
                .unwrap_err()
                .to_string(),
            "reject pattern: item \"Subject:\" holds \"Subject:\" (the prompt's scaffolding (`Subject:` and the like) at the start)"
        );
        assert_eq!(
            judge(&c, &list(&["billing", "Late Fee"]), Language::En)
                .unwrap_err()
                .kind,
            RejectKind::ItemPattern
        );
        assert_eq!(
            judge(&c, &list(&["billing", "billing"]), Language::En)
                .unwrap_err()
                .kind,
            RejectKind::DuplicateItem
        );
    }
}
