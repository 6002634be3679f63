//! Ticket records: every artifact of one ticket in one compressed sled value.
//!
//! This module owns how a ticket's artifacts are packed: the artifacts (each in the encoding of
//! `artifact`, which the remote cache ships too) one after another behind their keys, compressed
//! with zstd as one frame (its checksum on) against a dictionary. One value per ticket instead of
//! one per artifact is what keeps sled small: its memory and its insert cost grow with the number
//! of entries, not their bytes. Compressing a ticket whole is what keeps the disk small: a prompt
//! repeats the upstream answers of the same ticket, which the frame then holds once. And the
//! dictionary, trained on the first records a cache holds, holds what every ticket repeats (the
//! templates' text, the model and price records), once for the whole cache.
//!
//! A record: format byte (2), entry count (u16), dictionary id (u64, 0 for none), payload length
//! (u32), then the frame. A payload: per artifact, its key (32 bytes), its form (one byte: 0, the
//! artifact encoding; 1, laid out, see `layout`), its length (u32), its bytes. Records of format 1
//! (written before laid-out requests) have no form byte: every entry is in the artifact
//! encoding; they are read as they are, and written again in format 2. The invariants: a record decodes completely or is reported damaged (never half-read), and
//! the dictionary a record names is the one it was compressed with (dictionaries are never
//! replaced, only added under a new id; `cache verify` checks their hashes).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::key::ArtifactKey;

/// The first byte of every ticket record this ticketbuild writes.
const FORMAT: u8 = 2;
/// Records without a form byte per entry (all in the artifact encoding).
const FORMAT_WHOLE: u8 = 1;
const HEADER: usize = 1 + 2 + 8 + 4;
/// zstd's level: 3 is its default; 1 was measured about as small here and faster.
const LEVEL: i32 = 1;

/// One artifact of a record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: ArtifactKey,
    /// Laid out (see `layout`) rather than in the artifact encoding.
    pub(crate) laid_out: bool,
    pub(crate) bytes: Vec<u8>,
}

/// One ticket's artifacts, decoded from a record.
pub(crate) type Entries = Vec<Entry>;

/// Why a record cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("not a ticket record (format {0})")]
    Format(u8),
    #[error("the record is cut short")]
    Short,
    #[error("the record needs dictionary {0}, which the cache does not hold")]
    MissingDictionary(u64),
    #[error("the record does not decompress ({0})")]
    Damaged(String),
}

/// The dictionaries a cache holds, by id, ready to compress and decompress with.
#[derive(Default)]
pub(crate) struct Dictionaries {
    by_id: RwLock<HashMap<u64, Arc<Dictionary>>>,
    /// The dictionary new records are compressed with (0: none yet).
    active: std::sync::atomic::AtomicU64,
}

/// A dictionary and a fingerprint of its bytes (what a thread's loaded compressor is kept by:
/// two caches in one process may both have a dictionary 1).
pub(crate) struct Dictionary {
    fingerprint: u64,
    bytes: Vec<u8>,
}

impl Dictionaries {
    pub(crate) fn add(&self, id: u64, bytes: Vec<u8>) {
        let hash = blake3::hash(&bytes);
        let fingerprint = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default());
        self.by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                id,
                Arc::new(Dictionary {
                    fingerprint: fingerprint.max(1),
                    bytes,
                }),
            );
    }

    pub(crate) fn set_active(&self, id: u64) {
        self.active.store(id, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn active(&self) -> u64 {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }

    fn get(&self, id: u64) -> Option<Arc<Dictionary>> {
        self.by_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

/// Payloads a dictionary is trained on: the first records a cache writes (or migrates).
const TRAIN_SAMPLES: usize = 256;
/// Bytes of samples that are enough, whatever their number.
const TRAIN_BYTES: usize = 8 << 20;

/// What is collected to train a cache's dictionary, until it is trained.
#[derive(Default)]
pub(crate) struct Trainer {
    samples: Vec<Vec<u8>>,
    bytes: usize,
    /// Trained, or given up on (a cache that already has a dictionary never trains another).
    done: bool,
}

impl Trainer {
    pub(crate) fn finished() -> Trainer {
        Trainer {
            done: true,
            ..Trainer::default()
        }
    }

    /// Keeps `payload` to learn from; once there are enough, the samples to train on (once).
    pub(crate) fn learn(&mut self, payload: Vec<u8>) -> Option<Vec<Vec<u8>>> {
        if self.done {
            return None;
        }
        self.bytes += payload.len();
        self.samples.push(payload);
        if self.samples.len() < TRAIN_SAMPLES && self.bytes < TRAIN_BYTES {
            return None;
        }
        self.done = true;
        Some(std::mem::take(&mut self.samples))
    }
}

impl Dictionaries {
    /// The dictionaries as a cache stores them, (id, blake3 of the bytes then the bytes); the
    /// newest is the active one. Also whether there is any.
    pub(crate) fn stored<'a>(
        stored: impl Iterator<Item = (u64, &'a [u8])>,
    ) -> (Dictionaries, bool) {
        let dictionaries = Dictionaries::default();
        let mut newest = 0;
        for (id, value) in stored {
            if value.len() > 32 {
                dictionaries.add(id, value[32..].to_vec());
                newest = newest.max(id);
            }
        }
        dictionaries.set_active(newest);
        (dictionaries, newest != 0)
    }
}

/// The payload of `entries`, uncompressed.
pub(crate) fn payload(entries: &[Entry]) -> Vec<u8> {
    let size = entries.iter().map(|e| 37 + e.bytes.len()).sum();
    let mut out = Vec::with_capacity(size);
    for entry in entries {
        out.extend_from_slice(&entry.key.0);
        out.push(u8::from(entry.laid_out));
        out.extend_from_slice(&(entry.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&entry.bytes);
    }
    out
}

/// A record of `entries` compressed with the active dictionary.
pub(crate) fn encode(entries: &[Entry], dictionaries: &Dictionaries) -> Vec<u8> {
    let raw = payload(entries);
    let id = dictionaries.active();
    let dictionary = (id != 0).then(|| dictionaries.get(id)).flatten();
    let id = if dictionary.is_some() { id } else { 0 };
    let frame = compress(&raw, dictionary.as_deref());
    let mut record = Vec::with_capacity(HEADER + frame.len());
    record.push(FORMAT);
    record.extend_from_slice(&(entries.len().min(u16::MAX as usize) as u16).to_le_bytes());
    record.extend_from_slice(&id.to_le_bytes());
    record.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    record.extend_from_slice(&frame);
    record
}

/// How many artifacts a record holds, from its header alone.
pub(crate) fn count(record: &[u8]) -> usize {
    record
        .get(1..3)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize)
}

/// The entries of a record.
pub(crate) fn decode(record: &[u8], dictionaries: &Dictionaries) -> Result<Entries, RecordError> {
    let raw = decompress_payload(record, dictionaries)?;
    split(&raw, record[0] == FORMAT)
}

/// A record's payload, decompressed.
pub(crate) fn decompress_payload(
    record: &[u8],
    dictionaries: &Dictionaries,
) -> Result<Vec<u8>, RecordError> {
    if record.len() < HEADER {
        return Err(RecordError::Short);
    }
    if record[0] != FORMAT && record[0] != FORMAT_WHOLE {
        return Err(RecordError::Format(record[0]));
    }
    let id = u64::from_le_bytes(record[3..11].try_into().map_err(|_| RecordError::Short)?);
    let size = u32::from_le_bytes(record[11..15].try_into().map_err(|_| RecordError::Short)?);
    let dictionary = match id {
        0 => None,
        id => Some(
            dictionaries
                .get(id)
                .ok_or(RecordError::MissingDictionary(id))?,
        ),
    };
    let raw = decompress(&record[HEADER..], size as usize, dictionary.as_deref())
        .map_err(|e| RecordError::Damaged(e.to_string()))?;
    if raw.len() != size as usize {
        return Err(RecordError::Damaged(format!(
            "{} bytes where the header says {size}",
            raw.len()
        )));
    }
    Ok(raw)
}

/// The entries of a payload; `forms` when each has a form byte.
fn split(mut raw: &[u8], forms: bool) -> Result<Entries, RecordError> {
    let head = if forms { 37 } else { 36 };
    let mut entries = Vec::new();
    while !raw.is_empty() {
        if raw.len() < head {
            return Err(RecordError::Short);
        }
        let key = ArtifactKey(raw[..32].try_into().map_err(|_| RecordError::Short)?);
        let laid_out = match forms.then_some(raw[32]) {
            None | Some(0) => false,
            Some(1) => true,
            Some(other) => {
                return Err(RecordError::Damaged(format!(
                    "an entry of unknown form {other}"
                )));
            }
        };
        let len = u32::from_le_bytes(
            raw[head - 4..head]
                .try_into()
                .map_err(|_| RecordError::Short)?,
        );
        let end = head + len as usize;
        if raw.len() < end {
            return Err(RecordError::Short);
        }
        entries.push(Entry {
            key,
            laid_out,
            bytes: raw[head..end].to_vec(),
        });
        raw = &raw[end..];
    }
    Ok(entries)
}

thread_local! {
    /// A compressor per thread, kept with the fingerprint of the dictionary it has loaded
    /// (loading one takes longer than compressing a ticket).
    static COMPRESSOR: RefCell<Option<(u64, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<(u64, zstd::bulk::Decompressor<'static>)>> =
        const { RefCell::new(None) };
}

fn compress(raw: &[u8], dictionary: Option<&Dictionary>) -> Vec<u8> {
    let id = dictionary.map_or(0, |d| d.fingerprint);
    COMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.as_ref().is_none_or(|(loaded, _)| *loaded != id) {
                let made = match dictionary {
                    Some(dictionary) => {
                        zstd::bulk::Compressor::with_dictionary(LEVEL, &dictionary.bytes)
                    }
                    None => zstd::bulk::Compressor::new(LEVEL),
                };
                *cell = made.ok().map(|mut c| {
                    let _ = c.include_checksum(true);
                    let _ = c.include_contentsize(false);
                    (id, c)
                });
            }
            match cell.as_mut() {
                Some((_, compressor)) => compressor.compress(raw).ok(),
                None => None,
            }
        })
        // Invariant: zstd compresses any input into a buffer it sizes itself; a failure here would be
        // an allocation failure, which aborts anyway.
        .expect("zstd compresses")
}

fn decompress(
    frame: &[u8],
    size: usize,
    dictionary: Option<&Dictionary>,
) -> std::io::Result<Vec<u8>> {
    let id = dictionary.map_or(0, |d| d.fingerprint);
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(loaded, _)| *loaded != id) {
            let made = match dictionary {
                Some(dictionary) => zstd::bulk::Decompressor::with_dictionary(&dictionary.bytes),
                None => zstd::bulk::Decompressor::new(),
            }?;
            *cell = Some((id, made));
        }
        match cell.as_mut() {
            Some((_, decompressor)) => decompressor.decompress(frame, size),
            None => Err(std::io::Error::other("no decompressor")),
        }
    })
}

/// A dictionary trained on `samples` (uncompressed payloads), at most `size` bytes; `None` when
/// zstd finds too little to learn from.
pub(crate) fn train(samples: &[Vec<u8>], size: usize) -> Option<Vec<u8>> {
    zstd::dict::from_samples(samples, size).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        (0..5u8)
            .map(|i| {
                let text = format!("You are a support agent. Ticket {i}. ").repeat(20);
                Entry {
                    key: ArtifactKey([i; 32]),
                    laid_out: i % 2 == 0,
                    bytes: text.into_bytes(),
                }
            })
            .collect()
    }

    #[test]
    fn records_round_trip_with_and_without_a_dictionary_and_damage_is_caught() {
        let dictionaries = Dictionaries::default();
        let entries = entries();
        let plain = encode(&entries, &dictionaries);
        assert_eq!(count(&plain), 5);
        assert_eq!(decode(&plain, &dictionaries).unwrap(), entries);

        let samples: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                let mut e = entries.clone();
                e[0].bytes
                    .extend_from_slice(format!("sample {i}").as_bytes());
                payload(&e)
            })
            .collect();
        let dictionary = train(&samples, 16 * 1024).expect("a dictionary");
        dictionaries.add(7, dictionary.clone());
        dictionaries.set_active(7);
        let small = encode(&entries, &dictionaries);
        assert!(
            small.len() < plain.len(),
            "{} vs {}",
            small.len(),
            plain.len()
        );
        assert_eq!(decode(&small, &dictionaries).unwrap(), entries);

        // No flipped byte of the frame is misread: it is caught (zstd's checksum), or it was one
        // that does not change the content (a window size in the frame's header).
        for i in HEADER..small.len() {
            let mut bad = small.clone();
            bad[i] ^= 0x40;
            match decode(&bad, &dictionaries) {
                Err(_) => {}
                Ok(read) => assert_eq!(read, entries, "byte {i} misread"),
            }
        }
        // So is a tampered dictionary.
        let tampered: Vec<u8> = dictionary.iter().map(|b| b ^ 0x20).collect();
        let other = Dictionaries::default();
        other.add(7, tampered);
        assert!(decode(&small, &other).is_err());
        // And a missing one is named.
        assert_eq!(
            decode(&small, &Dictionaries::default()),
            Err(RecordError::MissingDictionary(7))
        );
    }

    #[test]
    fn a_record_of_format_1_is_read_as_entries_in_the_artifact_encoding() {
        let entries = entries();
        let mut raw = Vec::new();
        for entry in &entries {
            raw.extend_from_slice(&entry.key.0);
            raw.extend_from_slice(&(entry.bytes.len() as u32).to_le_bytes());
            raw.extend_from_slice(&entry.bytes);
        }
        let mut record = vec![FORMAT_WHOLE];
        record.extend_from_slice(&5u16.to_le_bytes());
        record.extend_from_slice(&0u64.to_le_bytes());
        record.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        record.extend_from_slice(&compress(&raw, None));
        let read = decode(&record, &Dictionaries::default()).unwrap();
        let whole: Vec<Entry> = entries
            .into_iter()
            .map(|e| Entry {
                laid_out: false,
                ..e
            })
            .collect();
        assert_eq!(read, whole);
    }
}
