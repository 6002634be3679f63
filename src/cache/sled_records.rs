//! Artifacts in the sled store: one record per ticket, its dictionaries and request shapes, and
//! the migration from one entry per artifact.
//!
//! This module owns how [`SledStore`] files artifacts (the layout of `record`: a ticket's
//! artifacts in one compressed value under its index, each laid out as `layout` describes), reads
//! them back, lists and removes them for gc and verify, trains the cache's compression dictionary
//! on its first records, keeps the shapes of laid-out requests, and moves a cache written with one
//! entry per artifact (layout 2, before ticket records) into records once, when it is opened. A
//! put reads the ticket's record, adds the artifact and writes the record back as one
//! compare-and-swap, so puts of one ticket never lose each other's artifacts; a build puts the
//! free, reproducible answers of a ticket in one go (`put_ticket`).
//! The invariants: a record that does not decode is moved to the quarantine before anything
//! replaces it (nothing stored is silently dropped); the artifacts of a migrated cache are all in
//! records before the old entries are removed; a shape is durable before a record names it; and
//! a record never loses or replaces an artifact whose answer another of its artifacts quotes by
//! key without first writing that quote out in full.

use std::sync::{Arc, Mutex};

use super::layout::{self, Laying, Shape, ShapeId};
use super::record::{self, Entry, RecordError};
use super::sled_store::{
    DICTIONARY_TREE, QUARANTINE_TREE, SHAPE_TREE, SledStore, key_of_slot, slot,
};
use super::{
    Artifact, ArtifactSummary, CacheError, Lookup, MigrationProgress, MissReason, StoredEntry,
    TicketArtifacts,
};
use crate::cache::artifact::{EncodedBytes, decode};
use crate::key::ArtifactKey;
use crate::value::NodeOutput;

/// A dictionary's size: the templates' text and the records' repeated fields fit in it.
const DICTIONARY_BYTES: usize = 64 * 1024;

/// What a put adds to a record.
enum Incoming<'a> {
    /// An artifact, laid out against the record.
    Laid(Laying<'a>),
    /// An artifact in the artifact encoding, stored as it is (a migrated entry, a test's bytes).
    Whole(ArtifactKey, Vec<u8>),
}

impl Incoming<'_> {
    fn key(&self) -> ArtifactKey {
        match self {
            Incoming::Laid(laying) => laying.key(),
            Incoming::Whole(key, _) => *key,
        }
    }
}

/// The answer an entry holds (its summary's output), if it decodes.
fn answer_of(entry: &Entry) -> Option<NodeOutput> {
    match decode::<ArtifactSummary>(&entry.key, &entry.bytes) {
        Lookup::Hit(summary) => Some(summary.output),
        Lookup::Miss(_) => None,
    }
}

/// Writes out in full, in every laid-out entry of `entries`, the quotes of `key`'s answer
/// `output` (before that artifact leaves the record or is replaced).
fn inline_quotes(entries: &mut [Entry], key: &ArtifactKey, output: &NodeOutput) {
    for entry in entries.iter_mut().filter(|e| e.laid_out && e.key != *key) {
        // An entry that does not decode is left as it is: `verify` reports it.
        if let Ok(Some(bytes)) = layout::inline(&entry.bytes, key, output) {
            entry.bytes = bytes;
        }
    }
}

impl SledStore {
    fn record_error(&self, ticket: u64, e: &RecordError) -> CacheError {
        CacheError::Io {
            path: self.path.clone(),
            reason: format!("the record of ticket {ticket}: {e}"),
        }
    }

    /// The decoded artifacts of ticket `ticket`'s record (empty when it has none).
    fn read_record(&self, ticket: u64) -> Result<Result<record::Entries, RecordError>, CacheError> {
        match self
            .tickets
            .get(ticket.to_be_bytes())
            .map_err(|e| self.io(e))?
        {
            Some(bytes) => Ok(record::decode(&bytes, &self.dictionaries)),
            None => Ok(Ok(Vec::new())),
        }
    }

    /// The shape stored under `id`, if it is there and intact.
    fn shape(&self, id: &ShapeId) -> Option<Arc<Shape>> {
        if let Some(shape) = self.shapes.get(id) {
            return Some(shape);
        }
        let bytes = self.tree(SHAPE_TREE).ok()?.get(id).ok()??;
        let shape = Arc::new(layout::decode_shape(id, &bytes)?);
        self.shapes.hold(*id, shape.clone());
        Some(shape)
    }

    /// Stores the shapes of `laying` that are not stored yet, durably (before a record names them).
    fn store_shapes(&self, laying: &Laying<'_>) -> Result<(), CacheError> {
        for (id, parts) in laying.shapes() {
            if self.shapes.get(&id).is_some() {
                continue;
            }
            let tree = self.tree(SHAPE_TREE)?;
            let stored = tree.get(id).map_err(|e| self.io(e))?;
            // A damaged copy (which `verify` would remove) is written again.
            if stored.is_none_or(|bytes| layout::decode_shape(&id, &bytes).is_none()) {
                tree.insert(id, layout::encode_shape(parts))
                    .map_err(|e| self.io(e))?;
                tree.flush().map_err(|e| self.io(e))?;
            }
            let owned: Shape = parts.iter().map(|p| (*p).to_string()).collect();
            self.shapes.hold(id, Arc::new(owned));
        }
        Ok(())
    }

    /// `entry` in the artifact encoding: joined from its parts when it is laid out (its quotes
    /// found among `siblings`, the entries of its record).
    fn whole(&self, entry: &Entry, siblings: &[Entry]) -> Result<Vec<u8>, layout::LayoutError> {
        if !entry.laid_out {
            return Ok(entry.bytes.clone());
        }
        layout::expand(
            &entry.bytes,
            |id| self.shape(id),
            |key| {
                siblings
                    .iter()
                    .find(|e| e.key == *key && e.key != entry.key)
                    .and_then(answer_of)
            },
        )
    }

    pub(super) fn get_artifact(
        &self,
        ticket: u64,
        key: &ArtifactKey,
    ) -> Result<Lookup, CacheError> {
        match self.read_record(ticket)? {
            Ok(entries) => {
                if let Some(entry) = entries.iter().find(|e| e.key == *key) {
                    return Ok(match self.whole(entry, &entries) {
                        Ok(bytes) => decode(key, &bytes),
                        Err(e) => Lookup::Miss(MissReason::Corrupt(e.to_string())),
                    });
                }
            }
            Err(e) => return Ok(Lookup::Miss(MissReason::Corrupt(e.to_string()))),
        }
        if self.legacy_entries {
            if let Some(bytes) = self.artifacts.get(key.0).map_err(|e| self.io(e))? {
                return Ok(decode(key, &bytes));
            }
        }
        Ok(Lookup::Miss(MissReason::New))
    }

    pub(super) fn read_ticket(&self, ticket: u64) -> Result<TicketArtifacts, CacheError> {
        // Summaries are read from either form: a laid-out entry starts as the artifact encoding.
        let entries = match self.read_record(ticket)? {
            Ok(entries) => entries
                .into_iter()
                .map(|e| (e.key, Box::new(e.bytes) as EncodedBytes))
                .collect(),
            // Lookups then go to `get`, which reports the damage: the answers are made again.
            Err(_) => return Ok(TicketArtifacts::unlisted(ticket)),
        };
        // A cache from before slots may hold the ticket's artifacts under bare keys.
        Ok(TicketArtifacts::listed(
            ticket,
            entries,
            !self.legacy_entries,
        ))
    }

    /// Adds (or replaces) `new` in ticket `ticket`'s record.
    fn merge_into_record(&self, ticket: u64, new: &[Incoming<'_>]) -> Result<(), CacheError> {
        for incoming in new {
            if let Incoming::Laid(laying) = incoming {
                self.store_shapes(laying)?;
            }
        }
        let name = ticket.to_be_bytes();
        let mut damaged: Option<Vec<u8>> = None;
        let mut sample: Option<Vec<u8>> = None;
        self.tickets
            .fetch_and_update(name, |old| {
                let mut entries = match old.map(|bytes| record::decode(bytes, &self.dictionaries)) {
                    Some(Ok(entries)) => entries,
                    Some(Err(_)) => {
                        damaged = old.map(<[u8]>::to_vec);
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                merge(&mut entries, new);
                if self.dictionaries.active() == 0 {
                    sample = Some(record::payload(&entries));
                }
                Some(record::encode(&entries, &self.dictionaries))
            })
            .map_err(|e| self.io(e))?;
        if let Some(bytes) = damaged {
            // Kept for inspection: what replaced it holds only the new answers.
            self.tree(QUARANTINE_TREE)?
                .insert(name, bytes)
                .map_err(|e| self.io(e))?;
        }
        if let Some(sample) = sample {
            self.learn(sample)?;
        }
        Ok(())
    }

    pub(super) fn put_artifacts(
        &self,
        ticket: u64,
        artifacts: &[Artifact],
    ) -> Result<(), CacheError> {
        let new: Vec<Incoming<'_>> = artifacts
            .iter()
            .map(|a| Incoming::Laid(Laying::of(a)))
            .collect();
        self.merge_into_record(ticket, &new)
    }

    /// Test helper and `verify` fixture: stores raw bytes for ticket `ticket` under `key`, as
    /// they are (read as the artifact encoding).
    pub fn put_raw(&self, ticket: u64, key: &ArtifactKey, bytes: &[u8]) -> Result<(), CacheError> {
        self.merge_into_record(ticket, &[Incoming::Whole(*key, bytes.to_vec())])
    }

    /// Collects `payload` to train the dictionary on; trains it once there are enough.
    fn learn(&self, payload: Vec<u8>) -> Result<(), CacheError> {
        let samples = {
            match lock(&self.trainer).learn(payload) {
                Some(samples) => samples,
                None => return Ok(()),
            }
        };
        let Some(dictionary) = record::train(&samples, DICTIONARY_BYTES) else {
            return Ok(());
        };
        let dictionaries = self.tree(DICTIONARY_TREE)?;
        let id = dictionaries
            .last()
            .map_err(|e| self.io(e))?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
            + 1;
        let mut value = blake3::hash(&dictionary).as_bytes().to_vec();
        value.extend_from_slice(&dictionary);
        dictionaries
            .insert(id.to_be_bytes(), value)
            .map_err(|e| self.io(e))?;
        // Durable before any record names it.
        dictionaries.flush().map_err(|e| self.io(e))?;
        self.dictionaries.add(id, dictionary);
        self.dictionaries.set_active(id);
        Ok(())
    }

    /// Every artifact, in ticket order, in the artifact encoding (a laid-out one joined back); an
    /// entry that cannot be joined back is listed with its damage, and a record that does not
    /// decode is one entry under the all-zero key (filed under the ticket alone), so that
    /// `verify` reports and quarantines them.
    pub(super) fn all_entries(
        &self,
    ) -> Box<dyn Iterator<Item = Result<StoredEntry, CacheError>> + '_> {
        let records = self.tickets.iter().flat_map(move |item| {
            let listed: Vec<Result<StoredEntry, CacheError>> = match item {
                Err(e) => vec![Err(self.io(e))],
                Ok((name, bytes)) => {
                    let ticket = name.as_ref().try_into().ok().map(u64::from_be_bytes);
                    match record::decode(&bytes, &self.dictionaries) {
                        Ok(entries) => entries
                            .iter()
                            .map(|entry| {
                                let (value, damage) = match self.whole(entry, &entries) {
                                    Ok(value) => (value, None),
                                    Err(e) => (entry.bytes.clone(), Some(e.to_string())),
                                };
                                Ok(StoredEntry {
                                    slot: slot(ticket.unwrap_or(0), &entry.key).to_vec(),
                                    ticket,
                                    key: entry.key,
                                    value,
                                    damage,
                                })
                            })
                            .collect(),
                        Err(e) => vec![Ok(StoredEntry {
                            slot: name.to_vec(),
                            ticket,
                            key: ArtifactKey([0; 32]),
                            value: bytes.to_vec(),
                            damage: Some(format!("the record of the ticket: {e}")),
                        })],
                    }
                }
            };
            listed
        });
        // What a cache from before slots holds under bare keys.
        let legacy = self.artifacts.iter().map(move |entry| {
            let (name, value) = entry.map_err(|e| self.io(e))?;
            Ok(StoredEntry {
                key: key_of_slot(&name).unwrap_or(ArtifactKey([0; 32])),
                ticket: None,
                slot: name.to_vec(),
                value: value.to_vec(),
                damage: None,
            })
        });
        Box::new(records.chain(legacy))
    }

    /// Removes what `slot` names: one artifact of a record (ticket and key), a whole record
    /// (ticket alone), or an entry under a bare key.
    pub(super) fn remove_entry(&self, slot: &[u8]) -> Result<(), CacheError> {
        match slot.len() {
            40 => {
                let name: [u8; 8] = slot[..8].try_into().unwrap_or_default();
                let ticket = u64::from_be_bytes(name);
                let Some(key) = key_of_slot(slot) else {
                    return Ok(());
                };
                let mut failed = None;
                self.tickets
                    .fetch_and_update(name, |old| {
                        let bytes = old?;
                        match record::decode(bytes, &self.dictionaries) {
                            Ok(mut entries) => {
                                let removed = entries.iter().find(|e| e.key == key);
                                if let Some(answer) = removed.and_then(answer_of) {
                                    inline_quotes(&mut entries, &key, &answer);
                                }
                                entries.retain(|e| e.key != key);
                                if entries.is_empty() {
                                    return None;
                                }
                                Some(record::encode(&entries, &self.dictionaries))
                            }
                            Err(e) => {
                                failed = Some(e);
                                Some(bytes.to_vec())
                            }
                        }
                    })
                    .map_err(|e| self.io(e))?;
                match failed {
                    Some(e) => Err(self.record_error(ticket, &e)),
                    None => Ok(()),
                }
            }
            8 => {
                self.tickets.remove(slot).map_err(|e| self.io(e))?;
                Ok(())
            }
            _ => {
                self.artifacts.remove(slot).map_err(|e| self.io(e))?;
                Ok(())
            }
        }
    }

    /// How many artifacts the cache holds (records' headers, and entries under bare keys).
    pub(super) fn count(&self) -> usize {
        let in_records: usize = self
            .tickets
            .iter()
            .values()
            .filter_map(Result::ok)
            .map(|bytes| record::count(&bytes))
            .sum();
        in_records + self.artifacts.len()
    }

    /// Dictionaries and request shapes whose bytes no longer hash to what they are stored under,
    /// described; the damaged shapes are removed (the requests laid out with them then cannot be
    /// joined back, and `verify` moves their artifacts to quarantine like any bad entry).
    pub(super) fn damaged_shared_parts_found(&self) -> Result<Vec<String>, CacheError> {
        let mut damaged = Vec::new();
        for item in self.tree(DICTIONARY_TREE)?.iter() {
            let (id, value) = item.map_err(|e| self.io(e))?;
            let id = id.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            let intact = value.len() > 32 && blake3::hash(&value[32..]).as_bytes() == &value[..32];
            if !intact {
                damaged.push(format!(
                    "compression dictionary {id} is damaged: the records compressed with it cannot be trusted"
                ));
            }
        }
        let shapes = self.tree(SHAPE_TREE)?;
        for item in shapes.iter() {
            let (id, value) = item.map_err(|e| self.io(e))?;
            let intact = <[u8; 32]>::try_from(id.as_ref())
                .is_ok_and(|id| layout::decode_shape(&id, &value).is_some());
            if !intact {
                let hex: String = id.iter().take(8).map(|b| format!("{b:02x}")).collect();
                damaged.push(format!(
                    "request shape {hex} (a template's text) is damaged: removed, and the artifacts whose requests it laid out are bad"
                ));
                shapes.remove(&id).map_err(|e| self.io(e))?;
            }
        }
        Ok(damaged)
    }

    /// Moves every artifact filed under a slot (layout 2: one entry per artifact) into ticket
    /// records, then removes the old entries. Entries under bare keys (layout 1) stay where they
    /// are: they name no ticket, and are still read.
    pub(super) fn migrate_slots(&self, progress: MigrationProgress<'_>) -> Result<(), CacheError> {
        let total = self.artifacts.len() as u64;
        let (mut tickets, mut moved) = (0u64, 0u64);
        let mut current: Option<u64> = None;
        let mut batch: Vec<Incoming<'_>> = Vec::new();
        for item in self.artifacts.iter() {
            let (name, value) = item.map_err(|e| self.io(e))?;
            if name.len() != 40 {
                continue;
            }
            let ticket = u64::from_be_bytes(name[..8].try_into().unwrap_or_default());
            let Some(key) = key_of_slot(&name) else {
                continue;
            };
            if current.is_some_and(|c| c != ticket) && !batch.is_empty() {
                self.merge_into_record(current.unwrap_or(0), &batch)?;
                moved += batch.len() as u64;
                tickets += 1;
                batch.clear();
                if tickets % 1024 == 0 {
                    progress(tickets, moved, total);
                }
            }
            current = Some(ticket);
            batch.push(Incoming::Whole(key, value.to_vec()));
        }
        if let Some(ticket) = current.filter(|_| !batch.is_empty()) {
            self.merge_into_record(ticket, &batch)?;
            moved += batch.len() as u64;
            tickets += 1;
        }
        self.db.flush().map_err(|e| self.io(e))?;
        // Only once every answer is in a record, durably.
        let slots: Vec<sled::IVec> = self
            .artifacts
            .iter()
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.len() == 40)
            .collect();
        for name in slots {
            self.artifacts.remove(name).map_err(|e| self.io(e))?;
        }
        progress(tickets, moved, total);
        Ok(())
    }
}

/// `new` added to a record's `entries`, replacing the entries of the same keys.
fn merge(entries: &mut Vec<Entry>, new: &[Incoming<'_>]) {
    // A replaced artifact whose answer changes: the quotes of the old answer are written out.
    for incoming in new {
        let key = incoming.key();
        let Some(old) = entries.iter().find(|e| e.key == key).and_then(answer_of) else {
            continue;
        };
        let same = match incoming {
            Incoming::Laid(laying) => laying.artifact().output == old,
            Incoming::Whole(..) => false,
        };
        if !same {
            inline_quotes(entries, &key, &old);
        }
    }
    // The answers a new artifact's request may quote: the other new ones, and the record's.
    let in_record: Vec<(ArtifactKey, NodeOutput)> = new
        .iter()
        .filter_map(|incoming| match incoming {
            Incoming::Laid(laying) => Some(laying.artifact()),
            Incoming::Whole(..) => None,
        })
        .flat_map(|a| a.upstream.iter().map(|(_, key)| *key))
        .filter(|key| new.iter().all(|n| n.key() != *key))
        .filter_map(|key| {
            let entry = entries.iter().find(|e| e.key == key)?;
            Some((key, answer_of(entry)?))
        })
        .collect();
    let answer = |key: &ArtifactKey| -> Option<&NodeOutput> {
        new.iter()
            .find_map(|incoming| match incoming {
                Incoming::Laid(laying) if laying.key() == *key => Some(&laying.artifact().output),
                _ => None,
            })
            .or_else(|| in_record.iter().find(|(k, _)| k == key).map(|(_, o)| o))
    };
    for incoming in new {
        let entry = match incoming {
            Incoming::Laid(laying) => Entry {
                key: laying.key(),
                laid_out: true,
                bytes: laying.encode(answer),
            },
            Incoming::Whole(key, bytes) => Entry {
                key: *key,
                laid_out: false,
                bytes: bytes.clone(),
            },
        };
        match entries.iter_mut().find(|e| e.key == entry.key) {
            Some(old) => *old = entry,
            None => entries.push(entry),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A trainer's samples are plain bytes: a panic mid-push leaves nothing inconsistent.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::artifact::encode;
    use crate::cache::artifact::test_artifact as artifact;
    use crate::cache::sled_store::{ARTIFACT_TREE, LAYOUT_KEY, META_TREE, SCHEMA_KEY, SLOT_LAYOUT};
    use crate::cache::{ArtifactStore, MigrationProgress};

    #[test]
    fn a_cache_of_one_entry_per_artifact_is_moved_into_records_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Layout 2: each artifact under its slot, three tickets.
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree(ARTIFACT_TREE).unwrap();
            for (ticket, byte) in [(0u64, 1u8), (0, 2), (1, 3), (7, 4)] {
                tree.insert(
                    slot(ticket, &ArtifactKey([byte; 32])),
                    encode(&artifact(byte)),
                )
                .unwrap();
            }
            let meta = db.open_tree(META_TREE).unwrap();
            meta.insert(LAYOUT_KEY, &[SLOT_LAYOUT]).unwrap();
            meta.insert(SCHEMA_KEY, &2u32.to_le_bytes()).unwrap();
            db.flush().unwrap();
        }
        let calls = std::cell::Cell::new((0, 0, 0));
        let store = open_once_released(dir.path(), &|t, m, n| calls.set((t, m, n)));
        assert_eq!(calls.get(), (3, 4, 4), "tickets, moved, in all");
        assert!(store.artifacts.is_empty(), "the old entries are gone");
        assert_eq!(store.tickets.len(), 3);
        for (ticket, byte) in [(0u64, 1u8), (0, 2), (1, 3), (7, 4)] {
            match store.get(ticket, &ArtifactKey([byte; 32])).unwrap() {
                Lookup::Hit(found) => assert_eq!(*found, artifact(byte)),
                other => panic!("{ticket}/{byte}: {other:?}"),
            }
        }
        drop(store);
        // Once: a second open moves nothing.
        let calls = std::cell::Cell::new((0, 0, 0));
        let store = open_once_released(dir.path(), &|t, m, n| calls.set((t, m, n)));
        assert_eq!(calls.get(), (0, 0, 0));
        assert_eq!(store.len(), 4);
    }

    /// Opens the store at `path` once the database dropped before it lets go of its folder:
    /// sled's flusher thread holds the lock for a moment after the drop returns (within one
    /// test a race, not a finding).
    fn open_once_released(path: &std::path::Path, progress: MigrationProgress<'_>) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open_migrating(path, progress) {
                Err(CacheError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
    }

    #[test]
    fn the_dictionary_is_trained_on_the_first_records_and_checked_by_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for ticket in 0..300u64 {
            let mut a = artifact(1);
            a.key = ArtifactKey([(ticket % 251) as u8; 32]);
            a.request.user =
                format!("Write the body of ticket {ticket} about a refund. ").repeat(10);
            store.put(ticket, &a).unwrap();
        }
        assert_ne!(store.dictionaries.active(), 0, "trained");
        assert!(store.damaged_shared_parts_found().unwrap().is_empty());
        // Every record reads back, those written before the dictionary and after.
        for ticket in [0u64, 299] {
            let key = ArtifactKey([(ticket % 251) as u8; 32]);
            assert!(matches!(store.get(ticket, &key).unwrap(), Lookup::Hit(_)));
        }
        // A tampered dictionary is named.
        let tree = store.tree(DICTIONARY_TREE).unwrap();
        let (id, value) = tree.iter().next().unwrap().unwrap();
        let mut bad = value.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        tree.insert(id, bad).unwrap();
        assert_eq!(store.damaged_shared_parts_found().unwrap().len(), 1);
    }

    #[test]
    fn a_quoted_answer_is_written_out_before_it_is_replaced_or_removed() {
        use crate::cache::RequestLayout;
        use crate::cache::layout::tests_support::quoting;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (topic, body) = quoting(artifact(1), artifact(2));
        store.put_ticket(5, &[topic.clone(), body.clone()]).unwrap();
        let mut expected = body.clone();
        expected.request.layout = None::<RequestLayout>;
        let stored = |key: &ArtifactKey| {
            let entries = store.read_record(5).unwrap().unwrap();
            entries.into_iter().find(|e| e.key == *key).unwrap()
        };
        let quoted = |entry: &Entry| {
            let text = String::from_utf8_lossy(&entry.bytes).into_owned();
            text.contains("quoted by its key")
        };
        assert!(stored(&body.key).laid_out);
        assert!(!quoted(&stored(&body.key)), "the topic is quoted by key");
        let read = |key| match store.get(5, key).unwrap() {
            Lookup::Hit(found) => *found,
            other => panic!("{other:?}"),
        };
        assert_eq!(read(&body.key), expected);
        // Another answer stored under the topic's key: the body still records what it was sent.
        let mut other = topic.clone();
        other.output = NodeOutput::Text("another answer".into());
        store.put(5, &other).unwrap();
        assert!(quoted(&stored(&body.key)), "written out");
        assert_eq!(read(&body.key), expected);
        // Put back, quoted again by a new body; then removed: written out again.
        store.put(5, &topic).unwrap();
        store.put(5, &body).unwrap();
        assert!(!quoted(&stored(&body.key)));
        store.remove_entry(&slot(5, &topic.key)).unwrap();
        assert!(quoted(&stored(&body.key)));
        assert_eq!(read(&body.key), expected);
        assert_eq!(store.count(), 1);
    }
}
