//! Which language a text is in, as far as a quality check needs to know.
//!
//! Two detectors, measured on 8,000 texts of the offline model (2,000 tickets: subjects, bodies,
//! first sentences of bodies, first responses; see the README's Quality section): whichlang is
//! right on 96.7% of subjects in about 4 µs a text, lingua on 99.5% in about 200-300 µs. So
//! whichlang answers first, and when it disagrees with the expected language lingua decides: a
//! right text costs microseconds, and a text is called wrong only when lingua says so too.
//! whatlang, measured the same way, was right on 92.3% of subjects.
//!
//! The invariant: a verdict of [`LanguageVerdict::Differs`] always comes from lingua, the more
//! accurate of the two; too short a text gets no verdict at all. lingua is built here with seven
//! languages (the five of the example, Italian and Dutch); a ticket in another language is judged
//! by whichlang alone (sixteen languages), which can agree but, without lingua, only abstains.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use lingua::{LanguageDetector, LanguageDetectorBuilder};

use crate::language::Language;

/// How much more sure lingua must be of another language than of the expected one to call a text
/// wrong. Measured on the offline model's subjects (40,000 tickets): texts in the right language
/// that lingua put in another one were within 0.1 of it in five cases of seven, while 5,994 of
/// 6,000 texts in a wrong language were further apart.
const MARGIN: f64 = 0.1;

/// The characters of a text whichlang reads: its cost grows with the text (about 1 µs per 100
/// characters), and two sentences tell a language as well as a whole email does. (A text it
/// misjudges on them goes to lingua, which reads more.)
const WHICHLANG_PREFIX_CHARS: usize = 100;

/// lingua's verdicts kept for texts seen again (a topic phrase, a repeated subject): lingua takes
/// about 200 µs a text. Bounded: cleared when full.
const VERDICT_CACHE_ENTRIES: usize = 16_384;

type VerdictCache = HashMap<(blake3::Hash, Language), LanguageVerdict>;

fn verdicts() -> &'static Mutex<VerdictCache> {
    static CACHE: OnceLock<Mutex<VerdictCache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock(cache: &Mutex<VerdictCache>) -> std::sync::MutexGuard<'_, VerdictCache> {
    // Only whole entries are ever inserted: a panicking holder leaves a usable map.
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The characters of a text lingua reads: enough to decide, bounded so a long body costs the same
/// as a paragraph.
const LINGUA_PREFIX_CHARS: usize = 400;

/// What a text's language is, against the one expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LanguageVerdict {
    Agrees,
    /// Detected as another language (its English name).
    Differs(&'static str),
    /// Too short, or too mixed (lingua nearly as sure of another language) to tell.
    Abstains,
}

/// Judges whether `text` is in `expected`; texts under `min_chars` characters are not judged.
pub(crate) fn judge(text: &str, expected: Language, min_chars: usize) -> LanguageVerdict {
    // Counted only as far as the bound: texts run to kilobytes.
    let min_chars = min_chars.max(1);
    if text.chars().take(min_chars).count() < min_chars {
        return LanguageVerdict::Abstains;
    }
    let guess = whichlang::detect_language(prefix(text, WHICHLANG_PREFIX_CHARS));
    if whichlang_iso(guess).eq_ignore_ascii_case(expected.code()) {
        return LanguageVerdict::Agrees;
    }
    let Some(expected_lingua) = to_lingua(expected) else {
        // No accurate detector for this language here: no verdict to pay a redraw for.
        return LanguageVerdict::Abstains;
    };
    let cache_key = (blake3::hash(text.as_bytes()), expected);
    if let Some(verdict) = lock(verdicts()).get(&cache_key) {
        return verdict.clone();
    }
    let verdict = lingua_verdict(prefix(text, LINGUA_PREFIX_CHARS), expected_lingua, guess);
    let mut cache = lock(verdicts());
    if cache.len() >= VERDICT_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(cache_key, verdict.clone());
    verdict
}

/// The first `chars` characters of `text`.
fn prefix(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// lingua's verdict on `text`, which whichlang did not find in `expected` (but in `guess`).
fn lingua_verdict(
    text: &str,
    expected: lingua::Language,
    guess: whichlang::Lang,
) -> LanguageVerdict {
    let confidences = detector_for(expected, guess).compute_language_confidence_values(text);
    let Some(&(found, top)) = confidences.first() else {
        return LanguageVerdict::Abstains;
    };
    if found == expected {
        return LanguageVerdict::Agrees;
    }
    let expected_confidence = confidences
        .iter()
        .find(|(language, _)| *language == expected)
        .map_or(0.0, |(_, confidence)| *confidence);
    if top - expected_confidence < MARGIN {
        // Two languages nearly tied: a short text with names from another language ("DATEV
        // Unternehmen online – SEPA direct debit failed"). Not a verdict to pay a redraw for.
        return LanguageVerdict::Abstains;
    }
    LanguageVerdict::Differs(lingua_name(found))
}

/// The detector that settles between the expected language and whichlang's guess: lingua
/// weighing two languages is three times as fast as weighing seven (its models are shared by all
/// detectors). A guess outside the seven gets the detector of all seven.
fn detector_for(expected: lingua::Language, guess: whichlang::Lang) -> &'static LanguageDetector {
    type Detectors =
        HashMap<(lingua::Language, Option<lingua::Language>), &'static LanguageDetector>;
    static DETECTORS: OnceLock<Mutex<Detectors>> = OnceLock::new();
    let guess = whichlang_lingua(guess).filter(|g| *g != expected);
    let mut detectors = DETECTORS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    detectors.entry((expected, guess)).or_insert_with(|| {
        let languages = match guess {
            Some(guess) => vec![expected, guess],
            None => SEVEN.to_vec(),
        };
        // At most 7 x 7 detectors, each a handful of bytes (the models are global): kept for
        // the life of the process.
        Box::leak(Box::new(
            LanguageDetectorBuilder::from_languages(&languages).build(),
        ))
    })
}

/// The languages lingua knows here: a ticket's five, and the two most often confused with them.
const SEVEN: [lingua::Language; 7] = [
    lingua::Language::German,
    lingua::Language::English,
    lingua::Language::French,
    lingua::Language::Spanish,
    lingua::Language::Portuguese,
    lingua::Language::Italian,
    lingua::Language::Dutch,
];

/// lingua's language for a ticket language, among the seven built in.
fn to_lingua(language: Language) -> Option<lingua::Language> {
    SEVEN.into_iter().find(|l| {
        l.iso_code_639_1()
            .to_string()
            .eq_ignore_ascii_case(language.code())
    })
}

fn whichlang_lingua(lang: whichlang::Lang) -> Option<lingua::Language> {
    whichlang_code(lang).and_then(to_lingua)
}

/// The ticket language whichlang detected.
fn whichlang_code(lang: whichlang::Lang) -> Option<Language> {
    Language::from_code(whichlang_iso(lang))
}

/// whichlang's sixteen languages by ISO 639-1 code.
fn whichlang_iso(lang: whichlang::Lang) -> &'static str {
    use whichlang::Lang as W;
    match lang {
        W::Ara => "ar",
        W::Cmn => "zh",
        W::Deu => "de",
        W::Eng => "en",
        W::Fra => "fr",
        W::Hin => "hi",
        W::Ita => "it",
        W::Jpn => "ja",
        W::Kor => "ko",
        W::Nld => "nl",
        W::Por => "pt",
        W::Rus => "ru",
        W::Spa => "es",
        W::Swe => "sv",
        W::Tur => "tr",
        W::Vie => "vi",
    }
}

/// The English name of a language lingua found.
fn lingua_name(lang: lingua::Language) -> &'static str {
    Language::from_code(&lang.iso_code_639_1().to_string())
        .map_or("another language", Language::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_texts_agree_wrong_ones_differ_short_ones_abstain() {
        let de = "Seit dem Update kann ich mich nicht mehr in mein Konto einloggen.";
        assert_eq!(judge(de, Language::De, 20), LanguageVerdict::Agrees);
        assert_eq!(
            judge(de, Language::En, 20),
            LanguageVerdict::Differs("German")
        );
        let it = "Non riesco più ad accedere al mio account dopo l'aggiornamento.";
        assert_eq!(
            judge(it, Language::Es, 20),
            LanguageVerdict::Differs("Italian")
        );
        assert_eq!(
            judge("Login fails", Language::De, 20),
            LanguageVerdict::Abstains
        );
        // A subject with product names that whichlang gets wrong: lingua settles it.
        let subject = "Payment reminder despite paid invoice since July 21, 2026 (ref. #7912814)";
        assert_eq!(judge(subject, Language::En, 20), LanguageVerdict::Agrees);
    }
}
