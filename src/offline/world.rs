//! Randomness and the per-ticket "world": the facts (product, error code, order number, date,
//! customer and agent name) that every task of one ticket must agree on.
//!
//! This module owns how random draws are derived and what the facts look like. It does not decide
//! which facts a text mentions; the patterns in the bank do that.
//!
//! Invariant: every draw comes from a [`Stream`] keyed by the sample seed plus a label path, never
//! from shared generator state. Two tasks that derive the same label get the same draw, whatever
//! ran before them, which is how tasks that run separately (and are cached separately) still
//! describe the same ticket.

use std::cell::RefCell;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::bank::{Lang, Names, Phrases, Topic};
use crate::hashing::DeriveKey;

/// A stream's hasher: a ticket's offline answers derive dozens of streams.
static STREAM_HASHER: DeriveKey = DeriveKey::new(|| blake3::Hasher::new_derive_key(super::CONTEXT));

/// An independent random stream for one purpose of one sample.
pub(crate) struct Stream(ChaCha8Rng);

impl Stream {
    /// The stream for `labels` under `sample_seed`. Labels are length-prefixed, so `["ab", "c"]`
    /// and `["a", "bc"]` are different streams.
    pub(crate) fn new(sample_seed: u64, labels: &[&str]) -> Stream {
        let mut hasher = STREAM_HASHER.gathered::<128>();
        hasher.update(&sample_seed.to_le_bytes());
        for label in labels {
            hasher.update(&(label.len() as u64).to_le_bytes());
            hasher.update(label.as_bytes());
        }
        Stream(ChaCha8Rng::from_seed(*hasher.finalize().as_bytes()))
    }

    /// A uniform index in `0..n` (Lemire's multiply-and-reject, so without modulo bias).
    /// `n` must be positive; callers draw from lists the bank check guarantees non-empty.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "cannot draw from an empty range");
        let n = n as u64;
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.0.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as usize;
            }
        }
    }

    /// A uniform index in `0..n` other than `avoid`, so a rewrite never repeats the draft's
    /// variant. With a single variant there is no other choice, and `avoid` is returned.
    pub(crate) fn below_except(&mut self, n: usize, avoid: usize) -> usize {
        if n < 2 {
            return self.below(n);
        }
        let index = self.below(n - 1);
        if index >= avoid { index + 1 } else { index }
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Fisher–Yates, driven by this stream.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for last in (1..items.len()).rev() {
            let other = self.below(last + 1);
            items.swap(last, other);
        }
    }
}

/// A calendar date in 2025–2026.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Date {
    pub(crate) year: u32,
    /// 1..=12
    pub(crate) month: u32,
    /// 1..=31
    pub(crate) day: u32,
}

impl Date {
    const FIRST_YEAR: u32 = 2025;
    const YEARS: u32 = 2;

    fn draw(stream: &mut Stream) -> Date {
        let days: u32 = (0..Self::YEARS)
            .map(|offset| days_in_year(Self::FIRST_YEAR + offset))
            .sum();
        Date::from_day_index(stream.below(days as usize) as u32)
    }

    /// Day 0 is 1 January of the first year.
    fn from_day_index(mut index: u32) -> Date {
        let mut year = Self::FIRST_YEAR;
        while index >= days_in_year(year) {
            index -= days_in_year(year);
            year += 1;
        }
        let mut month = 1;
        while index >= days_in_month(year, month) {
            index -= days_in_month(year, month);
            month += 1;
        }
        Date {
            year,
            month,
            day: index + 1,
        }
    }

    /// The date as a customer writing in `lang` would: "14. März 2026", "March 14, 2026",
    /// "14 mars 2026", "14 de marzo de 2026", "14 de março de 2026". French and Brazilian
    /// Portuguese write the first of a month as an ordinal ("1er mars", "1º de março").
    pub(crate) fn format(&self, lang: Lang, phrases: &Phrases) -> String {
        let month = &phrases.months.get(lang)[self.month as usize - 1];
        let (day, year) = (self.day, self.year);
        match lang {
            Lang::De => format!("{day}. {month} {year}"),
            Lang::En => format!("{month} {day}, {year}"),
            Lang::Fr if day == 1 => format!("1er {month} {year}"),
            Lang::Fr => format!("{day} {month} {year}"),
            Lang::Es => format!("{day} de {month} de {year}"),
            Lang::Pt if day == 1 => format!("1º de {month} de {year}"),
            Lang::Pt => format!("{day} de {month} de {year}"),
        }
    }
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_year(year: u32) -> u32 {
    if is_leap(year) { 366 } else { 365 }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The facts of one ticket. Language-neutral except the date, which is formatted on use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct World {
    pub(crate) product: String,
    pub(crate) error: String,
    pub(crate) order: String,
    pub(crate) date: Date,
    pub(crate) customer: String,
    pub(crate) agent: String,
}

impl World {
    /// The world of the ticket with this sample seed and topic. Each of a ticket's offline tasks
    /// derives it, one after another on the thread that walks the ticket, so the last one derived
    /// with the built-in bank is kept per thread and given back (deriving takes seven streams).
    /// Only the built-in bank's: it lives as long as the process, so a topic's address names that
    /// topic exactly.
    pub(crate) fn derive(sample_seed: u64, topic: &Topic, names: &Names) -> World {
        thread_local! {
            static LAST: RefCell<Option<(u64, usize, World)>> = const { RefCell::new(None) };
        }
        if !std::ptr::eq(names, &super::bank::bank().phrases.names) {
            return World::draw(sample_seed, topic, names);
        }
        let address = std::ptr::from_ref(topic) as usize;
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((seed, at, world)) if *seed == sample_seed && *at == address => world.clone(),
                _ => {
                    let world = World::draw(sample_seed, topic, names);
                    *last = Some((sample_seed, address, world.clone()));
                    world
                }
            }
        })
    }

    /// Draws the world: each fact has its own stream, so adding a fact later does not shift the
    /// others.
    fn draw(sample_seed: u64, topic: &Topic, names: &Names) -> World {
        let stream = |fact: &str| Stream::new(sample_seed, &[&topic.id, "world", fact]);
        let customer = person(&mut stream("customer"), names);
        let mut agent_stream = stream("agent");
        let mut agent = person(&mut agent_stream, names);
        // A reply signed with the customer's own name would look like a generator bug; a few
        // redraws make that practically impossible without an unbounded loop.
        for _ in 0..8 {
            if agent != customer {
                break;
            }
            agent = person(&mut agent_stream, names);
        }
        World {
            product: stream("product").pick(&topic.products).clone(),
            error: error_code(&mut stream("error")),
            order: order_number(&mut stream("order")),
            date: Date::draw(&mut stream("date")),
            customer,
            agent,
        }
    }
}

fn person(stream: &mut Stream, names: &Names) -> String {
    let first = stream.pick(&names.first);
    let last = stream.pick(&names.last);
    format!("{first} {last}")
}

/// One of three common styles: a Windows HRESULT ("0x8007045D"), a vendor code ("ERR-4021") or a
/// short code ("E-217").
fn error_code(stream: &mut Stream) -> String {
    match stream.below(3) {
        0 => format!("0x8007{:04X}", stream.below(0x1_0000)),
        1 => format!("ERR-{}", 1000 + stream.below(9000)),
        _ => format!("E-{}", 100 + stream.below(900)),
    }
}

/// "#" and six or seven digits, without a leading zero.
fn order_number(stream: &mut Stream) -> String {
    let number = if stream.below(2) == 0 {
        100_000 + stream.below(900_000)
    } else {
        1_000_000 + stream.below(9_000_000)
    };
    format!("#{number}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::bank::bank;

    #[test]
    fn streams_depend_on_seed_and_labels_only() {
        let draw = |seed, labels: &[&str]| Stream::new(seed, labels).below(1 << 40);
        assert_eq!(draw(7, &["a", "b"]), draw(7, &["a", "b"]));
        assert_ne!(draw(7, &["a", "b"]), draw(8, &["a", "b"]));
        assert_ne!(draw(7, &["ab", "c"]), draw(7, &["a", "bc"]));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut stream = Stream::new(1, &["test"]);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[stream.below(7)] += 1;
        }
        assert!(
            seen.iter().all(|&count| (800..1200).contains(&count)),
            "{seen:?}"
        );
    }

    #[test]
    fn below_except_never_returns_the_avoided_index() {
        let mut stream = Stream::new(2, &["test"]);
        for avoid in 0..5 {
            for _ in 0..200 {
                let index = stream.below_except(5, avoid);
                assert!(index < 5 && index != avoid);
            }
        }
        assert_eq!(stream.below_except(1, 0), 0);
    }

    #[test]
    fn dates_cover_both_years_and_format_per_language() {
        assert_eq!(
            Date::from_day_index(0),
            Date {
                year: 2025,
                month: 1,
                day: 1
            }
        );
        assert_eq!(
            Date::from_day_index(365 + 31 + 28 + 13),
            Date {
                year: 2026,
                month: 3,
                day: 14
            }
        );
        assert_eq!(
            Date::from_day_index(729),
            Date {
                year: 2026,
                month: 12,
                day: 31
            }
        );
        let phrases = &bank().phrases;
        let date = Date {
            year: 2026,
            month: 3,
            day: 14,
        };
        let formatted: Vec<String> = Lang::ALL.iter().map(|&l| date.format(l, phrases)).collect();
        assert_eq!(
            formatted,
            [
                "14. März 2026",
                "March 14, 2026",
                "14 mars 2026",
                "14 de marzo de 2026",
                "14 de março de 2026"
            ]
        );
        let first = Date {
            year: 2025,
            month: 8,
            day: 1,
        };
        assert_eq!(first.format(Lang::Fr, phrases), "1er août 2025");
        assert_eq!(first.format(Lang::Pt, phrases), "1º de agosto de 2025");
    }

    #[test]
    fn facts_have_the_documented_shapes() {
        let bank = bank();
        let topic = &bank.topics[0];
        let mut styles = [false; 3];
        for seed in 0..300 {
            let world = World::derive(seed, topic, &bank.phrases.names);
            assert!(topic.products.contains(&world.product));
            let error = &world.error;
            let hex = error
                .strip_prefix("0x8007")
                .is_some_and(|rest| rest.len() == 4 && rest.chars().all(|c| c.is_ascii_hexdigit()));
            let digits =
                |rest: &str, len| rest.len() == len && rest.bytes().all(|b| b.is_ascii_digit());
            let vendor = error
                .strip_prefix("ERR-")
                .is_some_and(|rest| digits(rest, 4));
            let short = error.strip_prefix("E-").is_some_and(|rest| digits(rest, 3));
            assert!(hex || vendor || short, "{error}");
            for (seen, matched) in styles.iter_mut().zip([hex, vendor, short]) {
                *seen |= matched;
            }
            let order = world.order.strip_prefix('#').expect("order starts with #");
            assert!(
                (6..=7).contains(&order.len()) && !order.starts_with('0'),
                "{order}"
            );
            assert!((2025..=2026).contains(&world.date.year));
            assert_ne!(world.customer, world.agent);
        }
        assert_eq!(styles, [true; 3]);
    }
}
