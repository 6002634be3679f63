//! Ticket languages: ISO 639-1 codes.
//!
//! This module owns what a ticket language is: a two-letter ISO 639-1 code, in upper case as it
//! appears in dataset.toml, templates and output files (`DE`, `EN`, `IT`, `JA`), and its English
//! name for prompts (`{{ language_name }}`), from isolang's ISO 639 table. The five languages of
//! the original generator ([`Language::ALL`]) are the ones the offline model writes and the person
//! sampler has names for; weights and sampling live in `config` and `sampling`. The invariant: a
//! code's string and name never change, because they are part of rendered prompts and therefore
//! of artifact keys (the five keep the names they had before any other language was accepted).

use std::fmt;

/// A ticket language: an ISO 639-1 code, upper case ASCII.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Language([u8; 2]);

#[allow(non_upper_case_globals)]
impl Language {
    pub const De: Language = Language(*b"DE");
    pub const En: Language = Language(*b"EN");
    pub const Fr: Language = Language(*b"FR");
    pub const Es: Language = Language(*b"ES");
    pub const Pt: Language = Language(*b"PT");

    /// The five languages of the original generator, in their usual order: the default of
    /// `[dataset.languages]` and what the offline model writes.
    pub const ALL: [Language; 5] = [
        Language::De,
        Language::En,
        Language::Fr,
        Language::Es,
        Language::Pt,
    ];

    /// The code used in config, templates and outputs.
    pub fn code(&self) -> &str {
        // Invariant: `from_code` only builds codes of two ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The English name, for prompts such as "translate into {{ language_name }}".
    pub fn name(self) -> &'static str {
        match self {
            Language::De => "German",
            Language::En => "English",
            Language::Fr => "French",
            Language::Es => "Spanish",
            Language::Pt => "Portuguese",
            other => {
                let lower = other.code().to_ascii_lowercase();
                isolang::Language::from_639_1(&lower)
                    .map(|l| short_name(l.to_name()))
                    .unwrap_or("an unknown language")
            }
        }
    }

    /// One of the five the offline model writes.
    pub fn is_built_in(self) -> bool {
        Language::ALL.contains(&self)
    }

    /// Parses an ISO 639-1 code, in either case (`"it"`, `"IT"`); `None` for anything else.
    pub(crate) fn from_code(code: &str) -> Option<Language> {
        let bytes = code.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        isolang::Language::from_639_1(&code.to_ascii_lowercase())?;
        Some(Language([
            bytes[0].to_ascii_uppercase(),
            bytes[1].to_ascii_uppercase(),
        ]))
    }
}

/// The first name of an ISO entry ("Dutch; Flemish" -> "Dutch").
fn short_name(name: &'static str) -> &'static str {
    name.split([';', ',', '(']).next().map_or(name, str::trim)
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_in_either_case_and_name_their_language() {
        assert_eq!(Language::from_code("de"), Some(Language::De));
        assert_eq!(
            Language::from_code("IT").map(Language::name),
            Some("Italian")
        );
        assert_eq!(Language::from_code("nl").map(Language::name), Some("Dutch"));
        assert_eq!(
            Language::from_code("ja").map(|l| l.code().to_string()),
            Some("JA".into())
        );
        assert_eq!(Language::from_code("xx"), None);
        assert_eq!(Language::from_code("deu"), None);
        assert_eq!(Language::Es.name(), "Spanish");
        assert!(Language::Pt.is_built_in() && !Language::from_code("it").unwrap().is_built_in());
    }
}
