//! Per-ticket sampling: language, table categories, ticket id and the ticket's sample seed.
//!
//! This module owns everything that is drawn at random for a ticket before any model runs. Each ticket
//! gets its own ChaCha stream seeded from (dataset seed, ticket index), so a ticket's draws do not
//! depend on how many tickets come before it, on concurrency, or on the order tickets finish: growing
//! `rows` from 200 to 300 keeps the first 200 tickets as they were. Ticket ids come from a keyed
//! permutation of the index, so ids are unique within a dataset by construction, with no set of seen
//! ids held in memory. Exact tables (`quota`) give their categories in proportion rather than at
//! random, which makes a ticket's category depend on the tickets before it (never after it). The
//! invariant: a ticket's sample is a pure function of (seed, index, languages, tables); changing that
//! function changes every dataset, so it is versioned by `SAMPLE_CONTEXT`.

mod quota;
mod values;

use std::sync::{Arc, Mutex, PoisonError};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::hashing::DeriveKey;
use crate::language::Language;
use quota::{ExactCounts, ExactCursor};
pub use values::{SampledValue, ValueKind, ValueSpec, Zone, format_moment};

/// Domain separation for the per-ticket random stream. Bump the version to change the sampler.
const SAMPLE_CONTEXT: &str = "ticketbuild 2026-11-25 ticket sample v1";
const ID_CONTEXT: &str = "ticketbuild 2026-11-25 ticket id permutation v1";
/// Made once: every ticket derives its generator from it.
static SAMPLE_HASHER: DeriveKey = DeriveKey::new(|| blake3::Hasher::new_derive_key(SAMPLE_CONTEXT));

/// Smallest ticket id: the first 12-digit number.
pub(crate) const ID_MIN: u64 = 100_000_000_000;
/// Number of distinct 12-13 digit ids: 10^11 .. 10^13.
pub(crate) const ID_SPACE: u64 = 10_000_000_000_000 - ID_MIN;

/// A weighted table of categories; one is drawn per ticket and becomes a column and a template variable.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub categories: Vec<(String, f64)>,
    pub mode: TableMode,
    /// Weights that depend on another table's category (`[tables.NAME.by.OTHER."value"]`).
    pub by: Option<Condition>,
}

impl Table {
    /// A table drawn at random by its weights, as most are.
    pub fn weighted(name: &str, categories: Vec<(String, f64)>) -> Table {
        Table {
            name: name.to_string(),
            categories,
            mode: TableMode::Weighted,
            by: None,
        }
    }
}

/// How a table gives its categories to tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMode {
    /// An independent weighted draw per ticket.
    Weighted,
    /// In proportion to the weights, ticket after ticket; per language when `within_language`.
    Exact { within_language: bool },
}

/// A table's weights by another table's category.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The table whose category decides.
    pub parent: String,
    /// Per category of the parent (in its order): this table's weights, in category order. A
    /// parent category the config gives no row has the table's own weights.
    pub weights: Vec<Vec<f64>>,
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
    /// One value per sampler (`[samplers.NAME]`), in the config's order.
    pub values: Vec<SampledValue>,
    /// The `[input]` row this ticket starts from: its number and values (one per column).
    pub input: Option<(u64, Vec<String>)>,
}

/// How tickets take `[input]` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// Ticket `i` is row `i`.
    Each,
    /// Each ticket draws a row, with repeats when `replace`, else each row at most once.
    Draw { replace: bool },
}

/// How one table is drawn.
#[derive(Debug, Clone)]
struct TableDraw {
    values: Vec<String>,
    weights: Vec<f64>,
    picker: WeightedIndex,
    mode: TableMode,
    /// The parent table's position, and per parent category the weights and their picker.
    by: Option<(usize, Vec<ConditionRow>)>,
}

/// The weights of a table under one category of its parent, and their picker.
type ConditionRow = (Vec<f64>, WeightedIndex);

/// Draws ticket samples for one dataset.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    languages: WeightedIndex,
    language_values: Vec<Language>,
    tables: Vec<TableDraw>,
    /// Tables in drawing order: a table after the table its weights depend on.
    order: Vec<usize>,
    ids: IdPermutation,
    /// The counts of the exact tables, shared by clones; `None` without exact tables.
    exact: Option<Arc<Mutex<ExactCursor>>>,
    /// The samplers, in the config's order.
    values: Vec<ValueSpec>,
    /// The `[input]` rows, and how tickets take them.
    input: Option<(Arc<crate::input::InputRows>, InputMode)>,
}

impl Sampler {
    /// A sampler for `tables`; the config has checked that every `by` names an earlier-drawable
    /// table (no cycle), so `order` holds every table once.
    pub fn new(seed: u64, languages: &[(Language, f64)], tables: &[Table]) -> Sampler {
        let draws: Vec<TableDraw> = tables
            .iter()
            .map(|t| {
                let weights: Vec<f64> = t.categories.iter().map(|(_, w)| *w).collect();
                let by = t.by.as_ref().and_then(|condition| {
                    let parent = tables.iter().position(|p| p.name == condition.parent)?;
                    let rows = condition
                        .weights
                        .iter()
                        .map(|w| (w.clone(), WeightedIndex::new(w.iter().copied())))
                        .collect();
                    Some((parent, rows))
                });
                TableDraw {
                    values: t.categories.iter().map(|(c, _)| c.clone()).collect(),
                    picker: WeightedIndex::new(weights.iter().copied()),
                    weights,
                    mode: t.mode,
                    by,
                }
            })
            .collect();
        let exact = draws
            .iter()
            .any(|d| d.mode != TableMode::Weighted)
            .then(|| Arc::new(Mutex::new(ExactCursor::default())));
        Sampler {
            seed,
            languages: WeightedIndex::new(languages.iter().map(|(_, w)| *w)),
            language_values: languages.iter().map(|(l, _)| *l).collect(),
            order: drawing_order(&draws),
            tables: draws,
            ids: IdPermutation::new(seed),
            exact,
            values: Vec::new(),
            input: None,
        }
    }

    /// The same sampler, giving each ticket an `[input]` row.
    pub fn with_input(mut self, rows: Arc<crate::input::InputRows>, mode: InputMode) -> Sampler {
        self.input = Some((rows, mode));
        self
    }

    /// The input row of ticket `index` and its values; an unreadable row (the file changed
    /// since it was checked) gives empty values, and the build's inputs hash has changed too.
    fn input_row(&self, index: u64, rng: &mut ChaCha8Rng) -> Option<(u64, Vec<String>)> {
        let (rows, mode) = self.input.as_ref()?;
        let count = rows.len().max(1);
        let row = match mode {
            InputMode::Each => index,
            InputMode::Draw { replace: true } => values::below(rng, count),
            InputMode::Draw { replace: false } => {
                let key = blake3::derive_key(
                    "ticketbuild 2026-12-02 input draw v1",
                    &self.seed.to_le_bytes(),
                );
                values::permute(index % count, count, &key)
            }
        };
        let cells = rows
            .row(row)
            .unwrap_or_else(|_| vec![String::new(); rows.columns().len()]);
        Some((row, cells))
    }

    /// The same sampler, also drawing the values of `samplers` for every ticket.
    pub fn with_values(mut self, samplers: &[ValueSpec]) -> Sampler {
        self.values = samplers.to_vec();
        self
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
        let Some(exact) = &self.exact else {
            return self.draw(index, &mut ExactCounts::default());
        };
        // Only whole steps are taken under the lock: a panicking holder leaves usable counts.
        let mut cursor = exact.lock().unwrap_or_else(PoisonError::into_inner);
        if index < cursor.next {
            // Behind the cursor: walk from the checkpoint before it on a copy.
            let (mut at, mut counts) = cursor.checkpoint_before(index);
            drop(cursor);
            while at < index {
                self.draw(at, &mut counts);
                at += 1;
            }
            return self.draw(index, &mut counts);
        }
        // At or ahead of the cursor (`index >= cursor.next`): walk it forward to `index`.
        loop {
            cursor.mark();
            let at = cursor.next;
            let sample = self.draw(at, &mut cursor.counts);
            cursor.next += 1;
            if at == index {
                return sample;
            }
        }
    }

    /// Ticket `index`'s sample, counting its exact categories in `counts`.
    fn draw(&self, index: u64, counts: &mut ExactCounts) -> TicketSample {
        let mut rng = ticket_rng(self.seed, index);
        let language_index = self.languages.pick(&mut rng);
        // Its own stream, so that datasets without input draw as before.
        let input = self.input_row(index, &mut ticket_rng(self.seed ^ 0x1a2b_3c4d, index));
        let mut picked = vec![0usize; self.tables.len()];
        for &t in &self.order {
            let table = &self.tables[t];
            // One draw a table whatever its mode, so a table's mode changes no other draw.
            let unit = unit(&mut rng);
            let (weights, picker, parent) = match &table.by {
                Some((parent, rows)) => {
                    let (w, p) = &rows[picked[*parent]];
                    (w, p, picked[*parent] as u64 + 1)
                }
                None => (&table.weights, &table.picker, 0),
            };
            picked[t] = match table.mode {
                TableMode::Weighted => picker.pick_at(unit),
                TableMode::Exact { within_language } => {
                    let language = if within_language {
                        language_index as u64 + 1
                    } else {
                        0
                    };
                    counts.take(t, (language << 32) | parent, weights)
                }
            };
        }
        let language = self.language_values[language_index];
        TicketSample {
            index,
            ticket_id: self.ids.ticket_id(index),
            language,
            categories: self
                .tables
                .iter()
                .zip(&picked)
                .map(|(table, &p)| table.values[p].clone())
                .collect(),
            // A row's content is part of what determines its ticket: editing the row re-runs
            // the ticket, even nodes whose prompts do not show the edited column.
            sample_seed: match &input {
                None => rng.next_u64(),
                Some((_, cells)) => {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(&rng.next_u64().to_le_bytes());
                    for cell in cells {
                        hasher.update(&(cell.len() as u64).to_le_bytes());
                        hasher.update(cell.as_bytes());
                    }
                    let bytes = hasher.finalize();
                    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]))
                }
            },
            values: self
                .values
                .iter()
                .map(|spec| values::sample_value(self.seed, index, language, spec))
                .collect(),
            input,
        }
    }
}

/// Tables in an order where each comes after the table its weights depend on; config order
/// otherwise (the order of the draws of datasets without `by`).
fn drawing_order(tables: &[TableDraw]) -> Vec<usize> {
    let mut order = Vec::with_capacity(tables.len());
    let mut placed = vec![false; tables.len()];
    while order.len() < tables.len() {
        let before = order.len();
        for (t, table) in tables.iter().enumerate() {
            let ready = table.by.as_ref().is_none_or(|(parent, _)| placed[*parent]);
            if !placed[t] && ready {
                placed[t] = true;
                order.push(t);
            }
        }
        if order.len() == before {
            // A cycle (the config refuses them): draw the rest in config order.
            order.extend((0..tables.len()).filter(|t| !placed[*t]));
        }
    }
    order
}

fn ticket_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut hasher = SAMPLE_HASHER.hasher();
    hasher.update(&seed.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

/// A uniform float in [0, 1) from 53 random bits, independent of the platform.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
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
        self.pick_at(unit(rng))
    }

    /// The category at `unit` (in [0, 1)) of the cumulative weights.
    fn pick_at(&self, unit: f64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
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
        let tables = vec![Table::weighted(
            "type",
            vec![
                ("Incident".into(), 4.0),
                ("Request".into(), 3.0),
                ("Change".into(), 1.0),
            ],
        )];
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
