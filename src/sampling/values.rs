//! Samplers: per-ticket values for prompts and columns (people, dates, numbers, ids, choices).
//!
//! A real model asked for a ticket writes "John Smith" and "order #12345" every time; handing it a
//! customer's name, a date and an order number makes each ticket concrete and different. Each
//! `[samplers.NAME]` value comes from its own ChaCha stream seeded by (dataset seed, ticket index,
//! sampler name), so adding, removing or editing one sampler changes no other draw, and a
//! ticket's values do not depend on other tickets. People come from embedded lists of first and
//! last names per ticket language (`names.toml`, 150 of each: 22,500 full names a language), picked
//! through a keyed permutation so that the first 22,500 tickets never repeat a full name.

use std::sync::OnceLock;

use chrono::{DateTime, TimeZone};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::mix;
use crate::hashing::DeriveKey;
use crate::language::Language;

const VALUE_CONTEXT: &str = "ticketbuild 2026-12-02 sampler value v1";
const PERSON_CONTEXT: &str = "ticketbuild 2026-12-02 person permutation v1";
/// Made once: each ticket's sampled values derive their generators from them.
static VALUE_HASHER: DeriveKey = DeriveKey::new(|| blake3::Hasher::new_derive_key(VALUE_CONTEXT));
static PERSON_HASHER: DeriveKey = DeriveKey::new(|| blake3::Hasher::new_derive_key(PERSON_CONTEXT));

/// A sampler as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSpec {
    pub name: String,
    pub kind: ValueKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// A first and last name of the ticket's language.
    Person,
    /// A moment between `from` and `to` (Unix seconds, inclusive), shown in `zone`.
    DateTime { from: i64, to: i64, zone: Zone },
    /// An integer between `min` and `max`, inclusive.
    Integer { min: i64, max: i64 },
    /// `format` with each `#` a random digit and each `?` a random capital letter.
    Id { format: String },
    /// One of `values`, each as likely.
    Choice { values: Vec<String> },
}

/// A time zone: a named IANA zone (daylight saving included) or UTC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Utc,
    Named(chrono_tz::Tz),
}

/// One sampled value: its text (what templates and text files see) and, for a moment, its
/// milliseconds since the epoch (what Parquet stores as a timestamp).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledValue {
    pub text: String,
    pub unix_ms: Option<i64>,
}

/// The value of `spec` for ticket `index` in `language`.
pub(super) fn sample_value(
    seed: u64,
    index: u64,
    language: Language,
    spec: &ValueSpec,
) -> SampledValue {
    let mut rng = value_rng(seed, index, &spec.name);
    let text = |text: String| SampledValue {
        text,
        unix_ms: None,
    };
    match &spec.kind {
        ValueKind::Person => text(person(seed, index, language, &spec.name)),
        ValueKind::DateTime { from, to, zone } => {
            let span = u64::try_from(to - from).unwrap_or(0);
            let at = from + i64::try_from(below(&mut rng, span + 1)).unwrap_or(0);
            SampledValue {
                text: format_moment(at, *zone),
                unix_ms: Some(at * 1000),
            }
        }
        ValueKind::Integer { min, max } => {
            let span = max.abs_diff(*min);
            let offset = if span == u64::MAX {
                rng.next_u64()
            } else {
                below(&mut rng, span + 1)
            };
            text((i128::from(*min) + i128::from(offset)).to_string())
        }
        ValueKind::Id { format } => text(
            format
                .chars()
                .map(|c| match c {
                    '#' => char::from(b'0' + below(&mut rng, 10) as u8),
                    '?' => char::from(b'A' + below(&mut rng, 26) as u8),
                    other => other,
                })
                .collect(),
        ),
        ValueKind::Choice { values } => {
            text(values[below(&mut rng, values.len() as u64) as usize].clone())
        }
    }
}

/// `at` (Unix seconds) in RFC 3339 with the zone's offset at that moment.
pub fn format_moment(at: i64, zone: Zone) -> String {
    let utc = DateTime::from_timestamp(at, 0).unwrap_or_default();
    match zone {
        Zone::Utc => utc.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Zone::Named(tz) => tz
            .from_utc_datetime(&utc.naive_utc())
            .format("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    }
}

fn value_rng(seed: u64, index: u64, name: &str) -> ChaCha8Rng {
    let mut hasher = VALUE_HASHER.hasher();
    hasher.update(&seed.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    hasher.update(name.as_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

/// A uniform integer in [0, n), without modulo bias (n > 0).
pub(super) fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let n = n.max(1);
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let value = rng.next_u64();
        if value < zone {
            return value % n;
        }
    }
}

/// First and last names per language.
struct Names {
    first: Vec<String>,
    last: Vec<String>,
}

fn names(language: Language) -> &'static Names {
    static ALL: OnceLock<Vec<(Language, Names)>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        #[derive(serde::Deserialize)]
        struct Entry {
            first: Vec<String>,
            last: Vec<String>,
        }
        // Invariant: names.toml is part of the binary and a test parses it; a broken edit fails
        // the tests before it can ship.
        let table: std::collections::BTreeMap<String, Entry> =
            toml::from_str(include_str!("names.toml")).expect("names.toml is valid");
        table
            .into_iter()
            .filter_map(|(code, entry)| {
                Some((
                    Language::from_code(&code)?,
                    Names {
                        first: entry.first,
                        last: entry.last,
                    },
                ))
            })
            .collect()
    });
    // A language without its own lists takes English names.
    all.iter()
        .find(|(l, _)| *l == language)
        .or_else(|| all.iter().find(|(l, _)| *l == Language::En))
        .map(|(_, names)| names)
        .expect("names.toml has every language")
}

/// A full name for ticket `index`: a keyed permutation of the (first, last) pairs, a fresh one
/// for each block of as many tickets as there are pairs, so no pair repeats within a block.
fn person(seed: u64, index: u64, language: Language, sampler: &str) -> String {
    let names = names(language);
    let pairs = (names.first.len() * names.last.len()) as u64;
    let block = index / pairs;
    let mut hasher = PERSON_HASHER.hasher();
    hasher.update(&seed.to_le_bytes());
    hasher.update(&block.to_le_bytes());
    hasher.update(sampler.as_bytes());
    let key = hasher.finalize();
    let pair = permute(index % pairs, pairs, key.as_bytes());
    let first = &names.first[(pair % names.first.len() as u64) as usize];
    let last = &names.last[(pair / names.first.len() as u64) as usize];
    format!("{first} {last}")
}

/// A keyed bijection of [0, n): a 4-round Feistel network on the next even power of two, walked
/// until the value falls in range.
pub(super) fn permute(value: u64, n: u64, key: &[u8; 32]) -> u64 {
    let bits = (64 - (n.max(2) - 1).leading_zeros()).div_ceil(2).max(1);
    let mask = (1u64 << bits) - 1;
    let round_keys: Vec<u64> = key
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let mut x = value;
    loop {
        let (mut left, mut right) = (x >> bits, x & mask);
        for k in &round_keys {
            let next = left ^ (mix(right ^ k) & mask);
            left = right;
            right = next;
        }
        x = (left << bits) | right;
        if x < n {
            return x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn spec(kind: ValueKind) -> ValueSpec {
        ValueSpec {
            name: "v".into(),
            kind,
        }
    }

    #[test]
    fn every_language_has_its_names() {
        for language in Language::ALL {
            let names = names(language);
            assert!(names.first.len() >= 150 && names.last.len() >= 150);
        }
        assert!(person(1, 0, Language::De, "c").contains(' '));
    }

    #[test]
    fn people_do_not_repeat_within_a_block() {
        let mut seen = HashSet::new();
        for index in 0..22_500 {
            assert!(seen.insert(person(7, index, Language::Fr, "customer_name")));
        }
        assert_ne!(
            person(7, 5, Language::Fr, "customer_name"),
            person(7, 5, Language::Fr, "agent_name")
        );
    }

    #[test]
    fn the_permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 100, 3600, 4097] {
            let key = [9u8; 32];
            let image: HashSet<u64> = (0..n).map(|v| permute(v, n, &key)).collect();
            assert_eq!(image.len() as u64, n);
            assert!(image.iter().all(|v| *v < n));
        }
    }

    #[test]
    fn values_stay_in_their_ranges_and_formats() {
        let integer = spec(ValueKind::Integer { min: -3, max: 4 });
        let id = spec(ValueKind::Id {
            format: "ORD-####-??".into(),
        });
        let berlin = spec(ValueKind::DateTime {
            from: 1_735_689_600, // 2025-01-01T00:00:00Z
            to: 1_751_327_999,   // 2025-06-30T23:59:59Z
            zone: Zone::Named(chrono_tz::Europe::Berlin),
        });
        for index in 0..500 {
            let n: i64 = sample_value(1, index, Language::En, &integer)
                .text
                .parse()
                .unwrap();
            assert!((-3..=4).contains(&n));
            let id = sample_value(1, index, Language::En, &id).text;
            assert!(id.len() == 11 && id.starts_with("ORD-"), "{id}");
            let at = sample_value(1, index, Language::En, &berlin);
            let ms = at.unix_ms.unwrap();
            assert!((1_735_689_600_000..=1_751_327_999_000).contains(&ms));
            assert!(
                at.text.ends_with("+01:00") || at.text.ends_with("+02:00"),
                "{}",
                at.text
            );
        }
        assert_eq!(format_moment(0, Zone::Utc), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_moment(1_751_000_000, Zone::Named(chrono_tz::Europe::Berlin)),
            "2025-06-27T06:53:20+02:00"
        );
    }
}
