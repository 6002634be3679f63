//! `[nodes.NAME.checks]` and `[quality]`: what an answer must be to be used, and which columns
//! must not repeat across tickets.
//!
//! This module owns the checked form of both tables: patterns compiled (an invalid regex is an
//! input error, with file, line and key), languages resolved, bounds ordered. Judging an answer
//! against them is `quality`'s. The invariant: checks are never key material; editing them
//! re-judges cached answers and asks a model only for what now fails.

use regex::Regex;
use toml::Spanned;

use super::check::Checker;
use super::raw::{RawChecks, RawQuality, StringList};
use super::{Column, NodeConfig};
use crate::language::Language;
use crate::value::OutputKind;

/// Draws a node may take when checks reject its answers, unless `max_draws` says otherwise.
pub(crate) const DEFAULT_MAX_DRAWS: u32 = 3;

/// Characters below which the language check abstains: too little text to tell languages apart.
pub(crate) const DEFAULT_LANGUAGE_MIN_CHARS: usize = 20;

/// Near-duplicate threshold of `[quality]` when `similarity` is not given.
pub(crate) const DEFAULT_SIMILARITY: f64 = 0.9;

/// Redraw rounds `[quality]` takes for a duplicate ticket when `max_rounds` is not given.
pub(crate) const DEFAULT_MAX_ROUNDS: u32 = 3;

/// What the defaults of `reject` catch, each with its reason: placeholders a model left unfilled,
/// template syntax, a model speaking of itself, and the prompt's own scaffolding echoed back.
pub(crate) const DEFAULT_REJECT: [(&str, &str); 6] = [
    (
        r"(?i)\[\s*(?:your|my|the|customer'?s?|agent'?s?|company'?s?)?\s*(?:full\s+)?(?:name|e-?mail|company|phone|address|title|signature|position|date|number|product)\b[^\]\n]{0,30}\]",
        "a placeholder in brackets",
    ),
    (
        r"(?i)<\s*(?:your\s+)?(?:name|e-?mail|company|customer|agent|phone|address|signature)\s*>",
        "a placeholder in angle brackets",
    ),
    (r"\{\{|\}\}|\{%|%\}", "template syntax"),
    (
        r"(?i)\bas an ai\b|\bas a (?:large )?language model\b|\bi am an ai\b|\bi'm an ai\b",
        "the model speaking of itself",
    ),
    (
        r"(?i)\A\s*(?:subject|body|topic|tags|answer|response|output|reply)\s*:",
        "the prompt's scaffolding (`Subject:` and the like) at the start",
    ),
    (
        r#"\A\s*[\[{]\s*["'{\[]"#,
        "JSON or a list where text was asked for",
    ),
];

/// A pattern as written, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub(crate) source: String,
    pub(crate) regex: Regex,
    /// Why a match is a problem, for the default patterns; `None` for the user's own.
    pub(crate) reason: Option<&'static str>,
}

/// Which language a node's text must be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LanguageRule {
    /// The ticket's language.
    Ticket,
    Fixed(Language),
}

/// The checks of one node. Every bound is optional; an empty table checks nothing but the
/// default `reject` patterns.
#[derive(Debug, Clone)]
pub(crate) struct NodeChecks {
    pub(crate) language: Option<LanguageRule>,
    /// Texts shorter than this (in characters) are not judged for their language.
    pub(crate) language_min_chars: usize,
    pub(crate) min_words: Option<usize>,
    pub(crate) max_words: Option<usize>,
    pub(crate) min_chars: Option<usize>,
    pub(crate) max_chars: Option<usize>,
    /// No text (or list item) may match any of these: the defaults, then the user's.
    pub(crate) reject: Vec<Pattern>,

    /// Every text must match each of these (a list: at least one item must).
    pub(crate) require: Vec<Pattern>,
    /// Every item of a list must match this, whole.
    pub(crate) item_pattern: Option<Pattern>,
    /// No two items of a list may be equal (ignoring case and surrounding space).
    pub(crate) unique_items: bool,
    /// For json nodes: the fields checked (all when empty).
    pub(crate) fields: Vec<String>,
    /// Answers asked for before the ticket fails (the first one included).
    pub(crate) max_draws: u32,
}

/// `[quality]`: columns that must not repeat across tickets.
#[derive(Debug, Clone)]
pub(crate) struct QualityConfig {
    /// Output columns whose values must be unique (exactly) and not near-duplicates.
    pub(crate) unique: Vec<String>,
    /// Near-duplicate threshold: the estimated Jaccard similarity of word shingles at or above
    /// which two values are near-duplicates. 1.0 finds exact duplicates only.
    pub(crate) similarity: f64,
    /// The node a duplicate ticket redraws from; `None`: the first node its columns depend on.
    pub(crate) redraw_from: Option<String>,
    /// Redraw rounds per ticket before a duplicate is reported and left (or, exact, dropped).
    pub(crate) max_rounds: u32,
}

impl Checker<'_> {
    fn pattern(&mut self, source: &Spanned<String>, key: &str, whole: bool) -> Option<Pattern> {
        let text = source.get_ref();
        let anchored = if whole {
            format!("^(?:{text})$")
        } else {
            text.clone()
        };
        match Regex::new(&anchored) {
            Ok(regex) => Some(Pattern {
                source: text.clone(),
                regex,
                reason: None,
            }),
            Err(e) => {
                // regex's message spans several lines with a caret of its own; its last line
                // says what is wrong.
                let why = e.to_string();
                let why = why.lines().last().unwrap_or("").trim().to_lowercase();
                let why = why.trim_start_matches("error: ");
                self.error(
                    source.span(),
                    key,
                    format!("`{text}` is not a valid regular expression: {why}"),
                );
                None
            }
        }
    }

    fn patterns(&mut self, list: Option<&Spanned<StringList>>, key: &str) -> Vec<Pattern> {
        list.map(|l| l.get_ref().0.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|source| self.pattern(source, key, false))
            .collect()
    }

    fn count(&mut self, value: &Option<Spanned<i64>>, key: &str) -> Option<usize> {
        let value = value.as_ref()?;
        match usize::try_from(*value.get_ref()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    value.span(),
                    key,
                    format!("must not be negative, found {}", value.get_ref()),
                );
                None
            }
        }
    }

    /// A min/max pair in order; the max is reported when it is below the min.
    fn bounds(
        &mut self,
        min: &Option<Spanned<i64>>,
        max: &Option<Spanned<i64>>,
        key: &str,
        unit: &str,
    ) -> (Option<usize>, Option<usize>) {
        let low = self.count(min, &format!("{key}.min_{unit}"));
        let high = self.count(max, &format!("{key}.max_{unit}"));
        if let (Some(low), Some(high), Some(span)) = (low, high, max.as_ref().map(Spanned::span)) {
            if high < low {
                self.error(
                    span,
                    format!("{key}.max_{unit}"),
                    format!("is smaller than min_{unit} ({high} < {low})"),
                );
            }
        }
        (low, high)
    }

    /// `[nodes.NAME.checks]` of a node whose output is `output`.
    pub(super) fn node_checks(
        &mut self,
        raw: &Spanned<RawChecks>,
        output: &OutputKind,
        key: &str,
    ) -> NodeChecks {
        let key = format!("{key}.checks");
        let raw = raw.get_ref();
        let language = raw
            .language
            .as_ref()
            .and_then(|l| self.language_rule(l, &key));
        let (min_words, max_words) = self.bounds(&raw.min_words, &raw.max_words, &key, "words");
        let (min_chars, max_chars) = self.bounds(&raw.min_chars, &raw.max_chars, &key, "chars");
        let mut reject: Vec<Pattern> = Vec::new();
        if raw.default_reject.unwrap_or(true) {
            reject.extend(default_reject());
        }
        reject.extend(self.patterns(raw.reject.as_ref(), &format!("{key}.reject")));
        let require = self.patterns(raw.require.as_ref(), &format!("{key}.require"));
        let item_pattern = raw
            .item_pattern
            .as_ref()
            .and_then(|p| self.pattern(p, &format!("{key}.item_pattern"), true));
        let fields = raw.fields.as_ref().map(|f| f.get_ref().strings());
        self.list_only(raw, output, &key);
        if let (Some(fields), OutputKind::Json { fields: declared }) = (&raw.fields, output) {
            for field in &fields.get_ref().0 {
                if !declared.contains(field.get_ref()) {
                    let hint = crate::diag::suggestion(
                        field.get_ref(),
                        declared.iter().map(String::as_str),
                    );
                    self.error(
                        field.span(),
                        format!("{key}.fields"),
                        format!("the node has no field `{}`{hint}", field.get_ref()),
                    );
                }
            }
        }
        let max_draws = match &raw.max_draws {
            Some(n) => self
                .positive(n, &format!("{key}.max_draws"))
                .map_or(DEFAULT_MAX_DRAWS, |n| n.min(1_000) as u32),
            None => DEFAULT_MAX_DRAWS,
        };
        NodeChecks {
            language,
            language_min_chars: self
                .count(
                    &raw.language_min_chars,
                    &format!("{key}.language_min_chars"),
                )
                .unwrap_or(DEFAULT_LANGUAGE_MIN_CHARS),
            min_words,
            max_words,
            min_chars,
            max_chars,
            reject,
            require,
            item_pattern,
            unique_items: raw.unique_items.unwrap_or(false),
            fields: fields.unwrap_or_default(),
            max_draws,
        }
    }

    fn language_rule(&mut self, value: &Spanned<String>, key: &str) -> Option<LanguageRule> {
        let text = value.get_ref();
        if text == "ticket" {
            return Some(LanguageRule::Ticket);
        }
        match Language::from_code(text) {
            Some(language) => Some(LanguageRule::Fixed(language)),
            None => {
                self.error(
                    value.span(),
                    format!("{key}.language"),
                    format!(
                        "unsupported language `{text}`; use \"ticket\" (the ticket's language) or an ISO 639-1 code such as EN"
                    ),
                );
                None
            }
        }
    }

    /// Keys that only mean something for the items of a list node, or the fields of a json node.
    fn list_only(&mut self, raw: &RawChecks, output: &OutputKind, key: &str) {
        let is_list = matches!(output, OutputKind::List { .. });
        if !is_list {
            if let Some(p) = &raw.item_pattern {
                self.error(
                    p.span(),
                    format!("{key}.item_pattern"),
                    "only `list` nodes have items",
                );
            }
            if raw.unique_items == Some(true) {
                self.problems.push(
                    crate::diag::Diagnostic::file(
                        self.path,
                        "`unique_items` only applies to `list` nodes",
                    )
                    .with_key(format!("{key}.unique_items")),
                );
            }
        }
        if let (Some(fields), false) = (&raw.fields, matches!(output, OutputKind::Json { .. })) {
            self.error(
                fields.span(),
                format!("{key}.fields"),
                "only `json` nodes have fields",
            );
        }
    }

    /// `[quality]`, once the output columns and nodes are known.
    pub(super) fn quality(
        &mut self,
        raw: Option<&Spanned<RawQuality>>,
        columns: &[Column],
        nodes: &[NodeConfig],
    ) -> Option<QualityConfig> {
        let raw = raw?.get_ref();
        let mut unique = Vec::new();
        for name in raw
            .unique
            .as_ref()
            .map(|u| u.get_ref().0.as_slice())
            .unwrap_or_default()
        {
            if columns.iter().any(|c| &c.name == name.get_ref()) {
                unique.push(name.get_ref().clone());
            } else {
                let hint = crate::diag::suggestion(
                    name.get_ref(),
                    columns.iter().map(|c| c.name.as_str()),
                );
                self.error(
                    name.span(),
                    "quality.unique",
                    format!("`{}` is not an output column{hint}", name.get_ref()),
                );
            }
        }
        let similarity = match &raw.similarity {
            Some(s) if !(*s.get_ref() > 0.0 && *s.get_ref() <= 1.0) => {
                self.error(
                    s.span(),
                    "quality.similarity",
                    format!("must be above 0 and at most 1, found {}", s.get_ref()),
                );
                DEFAULT_SIMILARITY
            }
            Some(s) => *s.get_ref(),
            None => DEFAULT_SIMILARITY,
        };
        let redraw_from = raw.redraw_from.as_ref().and_then(|node| {
            if nodes.iter().any(|n| &n.name == node.get_ref()) {
                return Some(node.get_ref().clone());
            }
            let hint =
                crate::diag::suggestion(node.get_ref(), nodes.iter().map(|n| n.name.as_str()));
            self.error(
                node.span(),
                "quality.redraw_from",
                format!("no node is called `{}`{hint}", node.get_ref()),
            );
            None
        });
        let max_rounds = match &raw.max_rounds {
            Some(n) => self
                .positive(n, "quality.max_rounds")
                .map_or(DEFAULT_MAX_ROUNDS, |n| n.min(100) as u32),
            None => DEFAULT_MAX_ROUNDS,
        };
        Some(QualityConfig {
            unique,
            similarity,
            redraw_from,
            max_rounds,
        })
    }
}

/// The default `reject` patterns, compiled.
fn default_reject() -> Vec<Pattern> {
    DEFAULT_REJECT
        .iter()
        .map(|(source, reason)| Pattern {
            source: (*source).to_string(),
            // Invariant: the default patterns are constants that compile (a unit test checks).
            regex: Regex::new(source).expect("a default reject pattern compiles"),
            reason: Some(reason),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_patterns_compile_and_catch_what_they_say() {
        let patterns = default_reject();
        let caught = |text: &str| {
            patterns
                .iter()
                .find(|p| p.regex.is_match(text))
                .and_then(|p| p.reason)
        };
        assert_eq!(
            caught("Best regards,\n[Your Name]"),
            Some("a placeholder in brackets")
        );
        assert_eq!(caught("***[Your Email]"), Some("a placeholder in brackets"));
        assert_eq!(
            caught("Dear <name>,"),
            Some("a placeholder in angle brackets")
        );
        assert_eq!(caught("'s_body', and body:}}"), Some("template syntax"));
        assert_eq!(caught("{json:{}}}]"), Some("template syntax"));
        assert_eq!(
            caught("As an AI, I cannot"),
            Some("the model speaking of itself")
        );
        assert_eq!(
            caught("Subject: Login fails"),
            Some("the prompt's scaffolding (`Subject:` and the like) at the start")
        );
        assert_eq!(
            caught(r#"{"subject": "x"}"#),
            Some("JSON or a list where text was asked for")
        );
        // What real tickets hold is not caught.
        for fine in [
            "Request for a return shipping label [#2974983]",
            "Incident #656189: Switch from monthly to annual billing",
            "Dear Yuki Virtanen,\n\nThank you for contacting us about “Switch”.",
            "The subject: billing. Our invoice {ref 12} is wrong.",
        ] {
            assert_eq!(caught(fine), None, "{fine}");
        }
    }
}
