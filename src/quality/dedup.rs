//! Duplicate tickets: exact and near-duplicate values of the `[quality] unique` columns.
//!
//! A value is normalised (lower case, digits runs as one `0`, punctuation as space) so that two
//! tickets that differ only in an order number or a date count as the same. Exact duplicates are
//! found by a 64-bit hash of the normalised words. Near duplicates are found by MinHash over word
//! 3-shingles (one-permutation hashing: 32 bins, each keeping the least hash of the shingles that
//! fall into it, empty bins filled from their neighbours) with locality-sensitive hashing: the
//! signature is cut into bands; two values that share a band are candidates, and a candidate whose estimated
//! Jaccard similarity (the share of equal min-hashes) reaches the threshold is a near duplicate.
//! Every lookup touches a handful of buckets, never all earlier tickets, so 100,000 tickets cost
//! 100,000 lookups, not five billion comparisons.
//!
//! Bands of 4 min-hashes (8 bands) find a pair of similarity 0.8 with probability 98.5% and of
//! 0.9 with 99.998%; below a threshold of 0.75, bands of 2 (16 bands) are used instead (a pair of
//! 0.5 is then found with probability 99%). What one value costs: its signature (32 x 2 bytes),
//! its exact hash and its band entries, about 350 bytes with the tables' room; the index keeps
//! them in files ([`super::on_disk`]), not in the heap, so a build's memory stays flat in
//! rows. [`DedupIndex::bytes`] reports their size. The invariant: a ticket is only ever compared with tickets inserted before it, and the
//! hashes are fixed functions of the text, so the verdicts depend on the order of insertion alone
//! (the engine inserts in ticket order), not on timing.

use std::io;
use std::path::Path;

use super::on_disk::{FirstSlots, Records};

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

/// The index of one unique column, in files (see [`super::on_disk`]).
struct ColumnIndex {
    /// Exact hash -> slot of the first ticket with it.
    exact: FirstSlots,
    /// (band number, band hash) mixed into one key -> slot of the first ticket with it.
    bands: FirstSlots,
    /// Signatures by slot, each min-hash in two little-endian bytes.
    signatures: Records<SIGNATURE_BYTES>,
}

const SIGNATURE_BYTES: usize = HASHES * 2;

/// Every ticket inserted so far, by its unique columns.
pub(crate) struct DedupIndex {
    columns: Vec<ColumnIndex>,
    /// Ticket index of each slot (one slot per inserted ticket), little-endian.
    tickets: Records<8>,
    similarity: f64,
    rows_per_band: usize,
}

impl DedupIndex {
    /// An empty index of `columns` unique columns with near-duplicate threshold `similarity`,
    /// sized for `tickets` tickets (it grows past them), its files in `dir` (the system's
    /// temporary folder when `None`).
    pub(crate) fn new(
        columns: usize,
        similarity: f64,
        tickets: usize,
        dir: Option<&Path>,
    ) -> io::Result<DedupIndex> {
        let rows_per_band = if similarity >= 0.75 { 4 } else { 2 };
        let bands = HASHES / rows_per_band;
        let columns = (0..columns)
            .map(|_| {
                Ok(ColumnIndex {
                    // A ticket adds one exact key and `bands` band keys: the exact table's
                    // batches are as many times smaller, for as many passes as the bands'.
                    exact: FirstSlots::new(dir, tickets, 1.0 / bands as f64)?,
                    bands: FirstSlots::new(dir, tickets * bands, 1.0)?,
                    signatures: Records::new(dir)?,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(DedupIndex {
            columns,
            tickets: Records::new(dir)?,
            similarity,
            rows_per_band,
        })
    }

    /// The first duplicate of a ticket (its [`Prints`]) among the tickets inserted so far, exact
    /// ones before near ones.
    pub(crate) fn find(&self, prints: &Prints) -> io::Result<Option<Duplicate>> {
        let prints = &prints.0;
        for (column, print) in prints.iter().enumerate() {
            let Some(print) = print else { continue };
            if let Some(slot) = self.columns[column].exact.get(print.exact)? {
                return Ok(Some(Duplicate {
                    column,
                    of_index: self.ticket(slot)?,
                    exact: true,
                    similarity: 1.0,
                }));
            }
        }
        if self.similarity >= 1.0 {
            return Ok(None);
        }
        for (column, print) in prints.iter().enumerate() {
            let Some(print) = print else { continue };
            let index = &self.columns[column];
            for key in print.band_keys(self.rows_per_band) {
                let Some(slot) = index.bands.get(key)? else {
                    continue;
                };
                let earlier = signature(&index.signatures.get(slot as usize)?);
                let similarity = estimate(&print.signature, &earlier);
                if similarity >= self.similarity {
                    return Ok(Some(Duplicate {
                        column,
                        of_index: self.ticket(slot)?,
                        exact: false,
                        similarity,
                    }));
                }
            }
        }
        Ok(None)
    }

    fn ticket(&self, slot: u32) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.tickets.get(slot as usize)?))
    }

    /// Adds ticket `index` with its [`Prints`].
    pub(crate) fn insert(&mut self, index: u64, prints: &Prints) -> io::Result<()> {
        let slot = u32::try_from(self.tickets.len()).unwrap_or(u32::MAX);
        self.tickets.push(&index.to_le_bytes())?;
        for (column, print) in prints.0.iter().enumerate() {
            let column_index = &mut self.columns[column];
            // Every ticket has a slot in every column, so slots line up across columns.
            let signature = print.as_ref().map_or([0; HASHES], |p| p.signature);
            let mut bytes = [0u8; SIGNATURE_BYTES];
            for (to, value) in bytes.chunks_exact_mut(2).zip(signature) {
                to.copy_from_slice(&value.to_le_bytes());
            }
            column_index.signatures.push(&bytes)?;
            let Some(print) = print else { continue };
            column_index.exact.insert_first(print.exact, slot)?;
            for key in print.band_keys(self.rows_per_band) {
                column_index.bands.insert_first(key, slot)?;
            }
        }
        Ok(())
    }

    /// How many bytes the index's files hold.
    pub(crate) fn bytes(&self) -> usize {
        self.tickets.bytes()
            + self
                .columns
                .iter()
                .map(|c| c.exact.bytes() + c.bands.bytes() + c.signatures.bytes())
                .sum::<usize>()
    }
}

/// A signature from its stored bytes.
fn signature(bytes: &[u8; SIGNATURE_BYTES]) -> [u16; HASHES] {
    let mut signature = [0u16; HASHES];
    for (value, from) in signature.iter_mut().zip(bytes.chunks_exact(2)) {
        *value = u16::from_le_bytes([from[0], from[1]]);
    }
    signature
}

/// The fingerprints of a ticket's unique columns, computed once for a lookup and an insert.
pub(crate) struct Prints(Vec<Option<Print>>);

impl Prints {
    /// One value per unique column; `None` for no value.
    pub(crate) fn of(values: &[Option<&str>]) -> Prints {
        Prints(values.iter().map(|v| v.and_then(Print::of)).collect())
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
        let words = word_hashes(value);
        if words.is_empty() {
            return None;
        }
        // One-permutation hashing: each shingle's hash falls into one of the bins and keeps the
        // bin's minimum, one operation a shingle instead of one per min-hash function.
        let mut signature = [EMPTY; HASHES];
        let mut add = |shingle: u64| {
            let bin = (shingle % HASHES as u64) as usize;
            let value = (shingle >> 48) as u16;
            signature[bin] = signature[bin].min(value);
        };
        if words.len() < SHINGLE_WORDS {
            add(combine(&words));
        } else {
            for shingle in words.windows(SHINGLE_WORDS) {
                add(combine(shingle));
            }
        }
        densify(&mut signature);
        Some(Print {
            exact: combine(&words),
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

/// An empty bin of a one-permutation signature (no shingle fell into it).
const EMPTY: u16 = u16::MAX;

/// Fills each empty bin from the next non-empty one (rotation densification, Shrivastava and Li
/// 2014), so short texts, with fewer shingles than bins, still compare bin by bin: two equal
/// shingle sets get equal signatures, and the share of equal bins still estimates similarity.
fn densify(signature: &mut [u16; HASHES]) {
    if signature.iter().all(|v| *v == EMPTY) {
        return;
    }
    for i in 0..HASHES {
        if signature[i] != EMPTY {
            continue;
        }
        let mut j = (i + 1) % HASHES;
        let mut step = 1u16;
        while signature[j] == EMPTY {
            j = (j + 1) % HASHES;
            step += 1;
        }
        // The offset keeps a filled bin from equalling the bin it was copied from.
        signature[i] = signature[j].wrapping_add(step.wrapping_mul(0x9e37));
    }
}

/// One hash of a sequence of word hashes, order included.
fn combine(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x243f_6a88_85a3_08d3, |h, w| mix(h.rotate_left(23) ^ w))
}

/// The share of equal min-hashes: an estimate of the Jaccard similarity of the shingle sets.
fn estimate(a: &[u16; HASHES], b: &[u16; HASHES]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / HASHES as f64
}

/// The hash of each word of `text`, normalised: lower case, each run of digits as one `0`,
/// anything but letters and digits a separator. One pass, no copy of the text.
fn word_hashes(text: &str) -> Vec<u64> {
    let mut words = Vec::with_capacity(text.len() / 5);
    let mut hash = FNV_OFFSET;
    let mut in_word = false;
    let mut in_digits = false;
    let feed = |hash: &mut u64, byte: u8| *hash = (*hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    for c in text.chars() {
        let (digit, letter) = if c.is_ascii() {
            (c.is_ascii_digit(), c.is_ascii_alphabetic())
        } else {
            (c.is_numeric(), c.is_alphanumeric())
        };
        if digit {
            if !in_digits {
                feed(&mut hash, b'0');
            }
            in_digits = true;
            in_word = true;
            continue;
        }
        in_digits = false;
        if letter {
            if c.is_ascii() {
                feed(&mut hash, c.to_ascii_lowercase() as u8);
            } else {
                let mut buffer = [0u8; 4];
                for lower in c.to_lowercase() {
                    lower
                        .encode_utf8(&mut buffer)
                        .bytes()
                        .for_each(|b| feed(&mut hash, b));
                }
            }
            in_word = true;
        } else if in_word {
            words.push(mix(hash));
            hash = FNV_OFFSET;
            in_word = false;
        }
    }
    if in_word {
        words.push(mix(hash));
    }
    words
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits (with [`mix`], the word hash): fixed across platforms and versions, so
/// verdicts are too.
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// splitmix64's finaliser: spreads a hash over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "We currently pay for Slack Pro every month and would like to switch to \
        annual billing to benefit from the discount. How does the changeover work, and will the \
        remaining days of this month be credited to our account?";

    #[test]
    fn numbers_case_and_punctuation_do_not_make_a_ticket_new() {
        let mut index = DedupIndex::new(1, 0.9, 4, None).unwrap();
        index
            .insert(
                0,
                &Prints::of(&[Some("Incident #656189: Switch to annual billing")]),
            )
            .unwrap();
        let found = index
            .find(&Prints::of(&[Some(
                "incident #12: switch to annual billing!",
            )]))
            .unwrap();
        assert_eq!(
            found,
            Some(Duplicate {
                column: 0,
                of_index: 0,
                exact: true,
                similarity: 1.0
            })
        );
        assert_eq!(
            index
                .find(&Prints::of(&[Some("Refund for a cancelled order")]))
                .unwrap(),
            None
        );
        assert_eq!(index.find(&Prints::of(&[None])).unwrap(), None);
    }

    #[test]
    fn a_near_copy_is_found_and_a_different_text_is_not() {
        let mut index = DedupIndex::new(1, 0.8, 4, None).unwrap();
        index.insert(7, &Prints::of(&[Some(BODY)])).unwrap();
        let near = BODY.replace("Slack Pro", "Slack Business");
        let found = index
            .find(&Prints::of(&[Some(&near)]))
            .unwrap()
            .expect("a near duplicate");
        assert!(
            !found.exact && found.of_index == 7 && found.similarity >= 0.8,
            "{found:?}"
        );
        let other = "Our printer in the second floor office shows a paper jam error although no \
            paper is stuck anywhere; we restarted it twice and cleaned the rollers.";
        assert_eq!(index.find(&Prints::of(&[Some(other)])).unwrap(), None);
    }

    #[test]
    fn the_first_ticket_with_a_value_is_the_one_named() {
        let mut index = DedupIndex::new(2, 0.9, 4, None).unwrap();
        index
            .insert(1, &Prints::of(&[Some("a b c d"), None]))
            .unwrap();
        index
            .insert(2, &Prints::of(&[Some("a b c d"), Some("x y z")]))
            .unwrap();
        assert_eq!(
            index
                .find(&Prints::of(&[Some("A B C D"), None]))
                .unwrap()
                .map(|d| d.of_index),
            Some(1)
        );
        assert_eq!(
            index
                .find(&Prints::of(&[None, Some("x y z")]))
                .unwrap()
                .map(|d| (d.column, d.of_index)),
            Some((1, 2))
        );
        assert!(index.bytes() > 0);
    }
}
