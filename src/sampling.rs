//! Per-ticket sampling: language, table categories, ticket id and the ticket's sample seed.
//!
//! This module owns everything that is drawn at random for a ticket before any model runs. Each ticket
//! gets its own ChaCha stream seeded from (dataset seed, ticket index), so a ticket's draws do not
//! depend on how many tickets come before it, on concurrency, or on the order tickets finish: growing
//! `rows` from 200 to 300 keeps the first 200 tickets as they were. Ticket ids come from a keyed
//! permutation of the index, so ids are unique within a dataset by construction, with no set of seen
//! ids held in memory. The invariant: a ticket's sample is a pure function of (seed, index, languages,
//! tables); changing that function changes every dataset, so it is versioned by `SAMPLE_CONTEXT`.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::language::Language;

/// Domain separation for the per-ticket random stream. Bump the version to change the sampler.
const SAMPLE_CONTEXT: &str = "ticketbuild 2026-11-25 ticket sample v1";
const ID_CONTEXT: &str = "ticketbuild 2026-11-25 ticket id permutation v1";

/// Smallest ticket id: the first 12-digit number.
pub(crate) const ID_MIN: u64 = 100_000_000_000;
/// Number of distinct 12-13 digit ids: 10^11 .. 10^13.
pub(crate) const ID_SPACE: u64 = 10_000_000_000_000 - ID_MIN;

/// A weighted table of categories; one is drawn per ticket and becomes a column and a template variable.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub categories: Vec<(String, f64)>,
}

/// Everything drawn for one ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketSample {
    pub index: u64,
    pub ticket_id: u64,
    pub language: Language,
    /// One category per table, in the config's table order.
    pub categories: Vec<String>,
    /// Enters every artifact key of this ticket, so two tickets with identical prompts still get
    /// their own responses (a model at temperature > 0 would answer them differently).
    pub sample_seed: u64,
}

/// Draws ticket samples for one dataset.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    languages: WeightedIndex,
    language_values: Vec<Language>,
    tables: Vec<(WeightedIndex, Vec<String>)>,
    ids: IdPermutation,
}

impl Sampler {
    pub fn new(seed: u64, languages: &[(Language, f64)], tables: &[Table]) -> Sampler {
        Sampler {
            seed,
            languages: WeightedIndex::new(languages.iter().map(|(_, w)| *w)),
            language_values: languages.iter().map(|(l, _)| *l).collect(),
            tables: tables
                .iter()
                .map(|t| {
                    (
                        WeightedIndex::new(t.categories.iter().map(|(_, w)| *w)),
                        t.categories.iter().map(|(c, _)| c.clone()).collect(),
                    )
                })
                .collect(),
            ids: IdPermutation::new(seed),
        }
    }

    /// The index of the ticket with `ticket_id`, if this dataset has one below `rows`.
    pub fn index_of(&self, ticket_id: u64, rows: u64) -> Option<u64> {
        let mut value = ticket_id.checked_sub(ID_MIN).filter(|v| *v < ID_SPACE)?;
        // Walk the cycle backwards: decrypt until the value falls in the domain again.
        loop {
            value = self.ids.decrypt(value);
            if value < ID_SPACE {
                return (value < rows).then_some(value);
            }
        }
    }

    pub fn sample(&self, index: u64) -> TicketSample {
        let mut rng = ticket_rng(self.seed, index);
        let language = self.language_values[self.languages.pick(&mut rng)];
        let categories = self
            .tables
            .iter()
            .map(|(weights, values)| values[weights.pick(&mut rng)].clone())
            .collect();
        TicketSample {
            index,
            ticket_id: self.ids.ticket_id(index),
            language,
            categories,
            sample_seed: rng.next_u64(),
        }
    }
}

fn ticket_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new_derive_key(SAMPLE_CONTEXT);
    hasher.update(&seed.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

/// Cumulative weights; picks by a uniform draw in [0, total).
#[derive(Debug, Clone)]
struct WeightedIndex {
    cumulative: Vec<f64>,
}

impl WeightedIndex {
    fn new(weights: impl Iterator<Item = f64>) -> WeightedIndex {
        let mut total = 0.0;
        let cumulative = weights
            .map(|w| {
                total += w;
                total
            })
            .collect();
        WeightedIndex { cumulative }
    }

    fn pick(&self, rng: &mut ChaCha8Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        // 53 random bits give a uniform float in [0, 1), independent of the platform.
        let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let target = unit * total;
        self.cumulative
            .iter()
            .position(|c| target < *c)
            .unwrap_or(self.cumulative.len().saturating_sub(1))
    }
}

/// A keyed bijection of [0, ID_SPACE): a Feistel network on 44 bits with cycle walking.
///
/// Within one dataset, distinct indices give distinct ids, with no memory. Across two datasets built
/// with different seeds the permutations are independent, so for datasets of n1 and n2 tickets the
/// chance that any id appears in both is at most n1 * n2 / ID_SPACE (about 1e-5 for two datasets of
/// 10,000 tickets, 1e-3 for 100,000 each).
#[derive(Debug, Clone)]
struct IdPermutation {
    round_keys: [u64; ROUNDS],
}

const HALF_BITS: u32 = 22;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;
const ROUNDS: usize = 8;

impl IdPermutation {
    fn new(seed: u64) -> IdPermutation {
        let mut hasher = blake3::Hasher::new_derive_key(ID_CONTEXT);
        hasher.update(&seed.to_le_bytes());
        let mut reader = hasher.finalize_xof();
        let mut round_keys = [0u64; ROUNDS];
        for key in &mut round_keys {
            let mut bytes = [0u8; 8];
            reader.fill(&mut bytes);
            *key = u64::from_le_bytes(bytes);
        }
        IdPermutation { round_keys }
    }

    fn ticket_id(&self, index: u64) -> u64 {
        // Invariant: config rejects rows > ID_SPACE, so index < ID_SPACE and cycle walking ends.
        let mut value = index % ID_SPACE;
        loop {
            value = self.encrypt(value);
            if value < ID_SPACE {
                return ID_MIN + value;
            }
        }
    }

    fn decrypt(&self, value: u64) -> u64 {
        let mut left = value >> HALF_BITS;
        let mut right = value & HALF_MASK;
        for key in self.round_keys.iter().rev() {
            let previous = right ^ (mix(left ^ key) & HALF_MASK);
            right = left;
            left = previous;
        }
        (left << HALF_BITS) | right
    }

    fn encrypt(&self, value: u64) -> u64 {
        let mut left = value >> HALF_BITS;
        let mut right = value & HALF_MASK;
        for key in self.round_keys {
            let next = left ^ (mix(right ^ key) & HALF_MASK);
            left = right;
            right = next;
        }
        (left << HALF_BITS) | right
    }
}

/// SplitMix64's finaliser: a fast, well-distributed round function.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn sampler(seed: u64) -> Sampler {
        let tables = vec![Table {
            name: "type".into(),
            categories: vec![
                ("Incident".into(), 4.0),
                ("Request".into(), 3.0),
                ("Change".into(), 1.0),
            ],
        }];
        let languages: Vec<(Language, f64)> = Language::ALL.iter().map(|l| (*l, 1.0)).collect();
        Sampler::new(seed, &languages, &tables)
    }

    #[test]
    fn million_ids_are_unique_and_twelve_or_thirteen_digits() {
        let ids = IdPermutation::new(7);
        let mut seen = HashSet::with_capacity(1_000_000);
        for index in 0..1_000_000 {
            let id = ids.ticket_id(index);
            let digits = id.to_string().len();
            assert!((12..=13).contains(&digits), "{id} has {digits} digits");
            assert!(seen.insert(id), "duplicate id {id} at index {index}");
        }
    }

    #[test]
    fn ids_map_back_to_their_index() {
        let s = sampler(5);
        for index in [0, 1, 2, 999, 123_456] {
            let id = s.sample(index).ticket_id;
            assert_eq!(s.index_of(id, 1_000_000), Some(index));
        }
        assert_eq!(s.index_of(s.sample(500).ticket_id, 100), None);
        assert_eq!(s.index_of(42, 100), None);
    }

    #[test]
    fn samples_are_stable_and_independent_of_rows() {
        let a = sampler(42);
        let b = sampler(42);
        assert_eq!(a.sample(17), b.sample(17));
        assert_ne!(a.sample(17).sample_seed, a.sample(18).sample_seed);
        assert_ne!(sampler(43).sample(17).ticket_id, a.sample(17).ticket_id);
    }

    #[test]
    fn weights_shape_the_distribution() {
        let s = sampler(1);
        let mut counts = [0usize; 3];
        for i in 0..8000 {
            let sample = s.sample(i);
            let idx = ["Incident", "Request", "Change"]
                .iter()
                .position(|c| *c == sample.categories[0])
                .unwrap();
            counts[idx] += 1;
        }
        // Expected 4000 / 3000 / 1000; allow generous sampling noise.
        assert!((3700..4300).contains(&counts[0]), "{counts:?}");
        assert!((2700..3300).contains(&counts[1]), "{counts:?}");
        assert!((850..1150).contains(&counts[2]), "{counts:?}");
    }
}
