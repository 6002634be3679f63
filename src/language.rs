//! The five ticket languages.
//!
//! This module owns the closed set of languages a ticket can be written in and their codes as they
//! appear in dataset.toml, templates and output files (`DE`, `EN`, `FR`, `ES`, `PT`). Weights and
//! sampling live in `config` and `sampling`. The invariant: the code strings never change, because they
//! are part of rendered prompts and therefore of artifact keys.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Language {
    De,
    En,
    Fr,
    Es,
    Pt,
}

impl Language {
    pub const ALL: [Language; 5] = [
        Language::De,
        Language::En,
        Language::Fr,
        Language::Es,
        Language::Pt,
    ];

    /// The code used in config, templates and outputs.
    pub fn code(self) -> &'static str {
        match self {
            Language::De => "DE",
            Language::En => "EN",
            Language::Fr => "FR",
            Language::Es => "ES",
            Language::Pt => "PT",
        }
    }

    /// The English name, for prompts such as "translate into {{ language_name }}".
    pub fn name(self) -> &'static str {
        match self {
            Language::De => "German",
            Language::En => "English",
            Language::Fr => "French",
            Language::Es => "Spanish",
            Language::Pt => "Portuguese",
        }
    }

    /// Parses a code; case-sensitive, because outputs use the upper-case form.
    pub(crate) fn from_code(code: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.code() == code)
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
