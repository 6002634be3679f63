//! Duplicate tickets: exact and near-duplicate values of the `[quality] unique` columns.
//!
//! A value is normalised (lower case, digits runs as one `0`, punctuation as space) so that two
//! tickets that differ only in an order number or a date count as the same. Exact duplicates are
//! found by a 64-bit hash of the normalised text. Near duplicates are found by MinHash over word
//! 3-shingles with locality-sensitive hashing: each value gets a signature of 32 min-hashes, cut
//! into bands; two values that share a band are candidates, and a candidate whose estimated
//! Jaccard similarity (the share of equal min-hashes) reaches the threshold is a near duplicate.
//! Every lookup touches a handful of buckets, never all earlier tickets, so 100,000 tickets cost
//! 100,000 lookups, not five billion comparisons.
//!
//! Bands of 4 min-hashes (8 bands) find a pair of similarity 0.8 with probability 98.5% and of
//! 0.9 with 99.998%; below a threshold of 0.75, bands of 2 (16 bands) are used instead (a pair of
//! 0.5 is then found with probability 99%). What one value costs in memory: its signature (32 x
//! 2 bytes), its exact hash and its band entries, about 250 bytes; [`DedupIndex::bytes`] reports
//! it. The invariant: a ticket is only ever compared with tickets inserted before it, and the
//! hashes are fixed functions of the text, so the verdicts depend on the order of insertion alone
//! (the engine inserts in ticket order), not on timing.

use std::collections::HashMap;

/// Min-hashes per signature.
const HASHES: usize = 32;
/// Words per shingle.
const SHINGLE_WORDS: usize = 3;

/// What an earlier ticket shares with the one looked up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Duplicate {
    /// The column (its position among the unique columns).
    pub(crate) column: usize,
    /// The earlier ticket's index in the dataset.
    pub(crate) of_index: u64,
    /// True when the normalised values are equal; else a near duplicate.
    pub(crate) exact: bool,
    /// The estimated similarity (1.0 for an exact duplicate).
    pub(crate) similarity: f64,
}

/// The index of one unique column.
#[derive(Default)]
struct ColumnIndex {
    /// Exact hash -> slot of the first ticket with it.
    exact: HashMap<u64, u32>,
    /// (band number, band hash) mixed into one key -> slot of the first ticket with it.
    bands: HashMap<u64, u32>,
    /// Signatures by slot.
    signatures: Vec<[u16; HASHES]>,
}

/// Every ticket inserted so far, by its unique columns.
pub(crate) struct DedupIndex {
    columns: Vec<ColumnIndex>,
    /// Ticket index of each slot (one slot per inserted ticket).
    tickets: Vec<u64>,
    similarity: f64,
    rows_per_band: usize,
}

impl DedupIndex {
    /// An empty index of `columns` unique columns with near-duplicate threshold `similarity`.
    pub(crate) fn new(columns: usize, similarity: f64) -> DedupIndex {
        DedupIndex {
            columns: (0..columns).map(|_| ColumnIndex::default()).collect(),
            tickets: Vec::new(),
            similarity,
            rows_per_band: if similarity >= 0.75 { 4 } else { 2 },
        }
    }

    /// The first duplicate of `values` (one per unique column; `None` for no value) among the
    /// tickets inserted so far, exact ones before near ones.
    pub(crate) fn find(&self, values: &[Option<&str>]) -> Option<Duplicate> {
        let prints: Vec<Option<Print>> = values.iter().map(|v| v.and_then(Print::of)).collect();
        for (column, print) in prints.iter().enumerate() {
            let Some(print) = print else { continue };
            if let Some(&slot) = self.columns[column].exact.get(&print.exact) {
                return Some(Duplicate {
                    column,
                    of_index: self.tickets[slot as usize],
                    exact: true,
                    similarity: 1.0,
                });
            }
        }
        if self.similarity >= 1.0 {
            return None;
        }
        for (column, print) in prints.iter().enumerate() {
            let Some(print) = print else { continue };
            let index = &self.columns[column];
            for key in print.band_keys(self.rows_per_band) {
                let Some(&slot) = index.bands.get(&key) else {
                    continue;
                };
                let similarity = estimate(&print.signature, &index.signatures[slot as usize]);
                if similarity >= self.similarity {
                    return Some(Duplicate {
                        column,
                        of_index: self.tickets[slot as usize],
                        exact: false,
                        similarity,
                    });
                }
            }
        }
        None
    }

    /// Adds ticket `index` with its `values`.
    pub(crate) fn insert(&mut self, index: u64, values: &[Option<&str>]) {
        let slot = u32::try_from(self.tickets.len()).unwrap_or(u32::MAX);
        self.tickets.push(index);
        for (column, value) in values.iter().enumerate() {
            let column_index = &mut self.columns[column];
            let print = value.and_then(Print::of);
            // Every ticket has a slot in every column, so slots line up across columns.
            column_index
                .signatures
                .push(print.as_ref().map_or([0; HASHES], |p| p.signature));
            let Some(print) = print else { continue };
            column_index.exact.entry(print.exact).or_insert(slot);
            for key in print.band_keys(self.rows_per_band) {
                column_index.bands.entry(key).or_insert(slot);
            }
        }
    }

    /// About how many bytes the index holds: what one more ticket costs, times the tickets.
    pub(crate) fn bytes(&self) -> usize {
        let entry = |map: &HashMap<u64, u32>| map.capacity() * (8 + 4 + 1);
        self.tickets.capacity() * 8
            + self
                .columns
                .iter()
                .map(|c| entry(&c.exact) + entry(&c.bands) + c.signatures.capacity() * HASHES * 2)
                .sum::<usize>()
    }
}

/// A value's fingerprints.
struct Print {
    exact: u64,
    signature: [u16; HASHES],
}

impl Print {
    /// `None` for a value with no words.
    fn of(value: &str) -> Option<Print> {
        let normal = normalise(value);
        let words: Vec<&str> = normal.split(' ').filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            return None;
        }
        let mut signature = [u16::MAX; HASHES];
        let mut add = |shingle: &[&str]| {
            let h = fnv(shingle.iter().flat_map(|w| w.bytes().chain([b' '])));
            for (i, slot) in signature.iter_mut().enumerate() {
                let v = (mix(h ^ SEEDS[i]) >> 48) as u16;
                *slot = (*slot).min(v);
            }
        };
        if words.len() < SHINGLE_WORDS {
            add(&words);
        } else {
            for shingle in words.windows(SHINGLE_WORDS) {
                add(shingle);
            }
        }
        Some(Print {
            exact: fnv(words.join(" ").bytes()),
            signature,
        })
    }

    /// One key per band: the band's number and its min-hashes, hashed together.
    fn band_keys(&self, rows: usize) -> impl Iterator<Item = u64> + '_ {
        self.signature
            .chunks(rows)
            .enumerate()
            .map(|(band, values)| {
                let bytes = values.iter().flat_map(|v| v.to_le_bytes());
                mix(fnv(bytes) ^ (band as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            })
    }
}

/// The share of equal min-hashes: an estimate of the Jaccard similarity of the shingle sets.
fn estimate(a: &[u16; HASHES], b: &[u16; HASHES]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / HASHES as f64
}

/// Lower case; runs of digits become one `0`; anything not a letter or digit separates words.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_digits = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_numeric() {
            if !in_digits {
                out.push('0');
            }
            in_digits = true;
            continue;
        }
        in_digits = false;
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    out
}

/// FNV-1a, 64 bits: fixed across platforms and versions, so verdicts are too.
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads a hash over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One seed per min-hash function.
const SEEDS: [u64; HASHES] = {
    let mut seeds = [0u64; HASHES];
    let mut i = 0;
    let mut x: u64 = 0x7469_636b_6574_6275;
    while i < HASHES {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        seeds[i] = x;
        i += 1;
    }
    seeds
};

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "We currently pay for Slack Pro every month and would like to switch to \
        annual billing to benefit from the discount. How does the changeover work, and will the \
        remaining days of this month be credited to our account?";

    #[test]
    fn numbers_case_and_punctuation_do_not_make_a_ticket_new() {
        let mut index = DedupIndex::new(1, 0.9);
        index.insert(0, &[Some("Incident #656189: Switch to annual billing")]);
        let found = index.find(&[Some("incident #12: switch to annual billing!")]);
        assert_eq!(
            found,
            Some(Duplicate {
                column: 0,
                of_index: 0,
                exact: true,
                similarity: 1.0
            })
        );
        assert_eq!(index.find(&[Some("Refund for a cancelled order")]), None);
        assert_eq!(index.find(&[None]), None);
    }

    #[test]
    fn a_near_copy_is_found_and_a_different_text_is_not() {
        let mut index = DedupIndex::new(1, 0.8);
        index.insert(7, &[Some(BODY)]);
        let near = BODY.replace("Slack Pro", "Slack Business");
        let found = index.find(&[Some(&near)]).expect("a near duplicate");
        assert!(
            !found.exact && found.of_index == 7 && found.similarity >= 0.8,
            "{found:?}"
        );
        let other = "Our printer in the second floor office shows a paper jam error although no \
            paper is stuck anywhere; we restarted it twice and cleaned the rollers.";
        assert_eq!(index.find(&[Some(other)]), None);
    }

    #[test]
    fn the_first_ticket_with_a_value_is_the_one_named() {
        let mut index = DedupIndex::new(2, 0.9);
        index.insert(1, &[Some("a b c d"), None]);
        index.insert(2, &[Some("a b c d"), Some("x y z")]);
        assert_eq!(
            index.find(&[Some("A B C D"), None]).map(|d| d.of_index),
            Some(1)
        );
        assert_eq!(
            index
                .find(&[None, Some("x y z")])
                .map(|d| (d.column, d.of_index)),
            Some((1, 2))
        );
        assert!(index.bytes() > 0);
    }
}
