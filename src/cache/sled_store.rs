//! The sled store: artifacts, manifests and pins in a cache folder.
//!
//! This module owns the on-disk layout (sled trees, the cache schema), opening a cache folder
//! safely (lock, write probe, free space, schema, moving an older layout's artifacts into ticket
//! records once) and the three store traits over it; how artifacts are filed is `sled_records`'s.
//! The invariant: a cache with a schema above [`CACHE_SCHEMA`] is refused, and every artifact an
//! older layout stored is found (moved into records, or read where it is).

use std::path::{Path, PathBuf};

use super::folder::{check_free_space, open_error};
use super::key_files::{ChunkKeys, KeyFile, KeyFileWriter, KeyFiles, encode_chunk};
use super::record::{Dictionaries, Trainer};
use super::{
    Artifact, ArtifactStore, CacheError, KeyChunks, KeyRecorder, Lookup, Maintenance,
    ManifestStore, StoredEntry, TicketArtifacts,
};
use crate::key::ArtifactKey;

/// The sled-backed store in a cache folder.
///
/// Artifacts are filed by ticket: one record per ticket (see `record`), under the ticket index
/// (big-endian, so sled's byte order is ticket order: a build appends at the end of the tree and a
/// rebuild reads it front to back). Before records, each artifact had an entry of its own under a
/// 40-byte slot (ticket index, then key; layout 2), and before that under its bare key (layout 1).
/// Opening a layout-2 cache moves its artifacts into records; bare keys name no ticket, so they
/// stay in the old tree and are still read (a miss in a record tries the bare key).
pub struct SledStore {
    pub(super) path: PathBuf,
    pub(super) db: ::sled::Db,
    /// Ticket records.
    pub(super) tickets: ::sled::Tree,
    /// The old tree of one entry per artifact: what a layout-1 cache holds under bare keys.
    pub(super) artifacts: ::sled::Tree,
    /// The old tree holds entries under bare keys, from before slots.
    pub(super) legacy_entries: bool,
    pub(super) dictionaries: Dictionaries,
    pub(super) trainer: std::sync::Mutex<Trainer>,
    pub(super) shapes: super::layout::Shapes,
}

/// How an artifact is named in `Maintenance` (and was filed in layout 2): ticket index, then key.
pub(super) fn slot(ticket: u64, key: &ArtifactKey) -> [u8; 40] {
    let mut slot = [0u8; 40];
    slot[..8].copy_from_slice(&ticket.to_be_bytes());
    slot[8..].copy_from_slice(&key.0);
    slot
}

/// The key of a stored entry, from its slot (or bare key, in a cache from before slots).
pub(super) fn key_of_slot(slot: &[u8]) -> Option<ArtifactKey> {
    let bytes = match slot.len() {
        40 => &slot[8..],
        32 => slot,
        _ => return None,
    };
    bytes.try_into().ok().map(ArtifactKey)
}

pub(super) const META_TREE: &str = "meta";
pub(super) const ARTIFACT_TREE: &str = "artifacts";
const TICKET_TREE: &str = "tickets";
/// Compression dictionaries of ticket records, by id: blake3 of the dictionary, then its bytes.
pub(super) const DICTIONARY_TREE: &str = "dictionaries";
/// The shapes of laid-out requests (see `layout`), by id: their parts, encoded.
pub(super) const SHAPE_TREE: &str = "request_shapes";
const MANIFEST_TREE: &str = "manifests";
const MANIFEST_KEYS_TREE: &str = "manifest_keys";
/// Keys a build paid for that no row uses (rejected draws), by (manifest id, chunk).
const MANIFEST_KEPT_TREE: &str = "manifest_kept_keys";
const PIN_TREE: &str = "pins";
pub(super) const QUARANTINE_TREE: &str = "quarantine";
pub(super) const SCHEMA_KEY: &str = "key_schema";
/// The cache schema this ticketbuild writes (under `key_schema` in the meta tree): 1, bare keys;
/// 2, artifacts filed by ticket (slots); 3, ticket records; 4, records with laid-out requests
/// (an older ticketbuild would take them for damaged records). A ticketbuild refuses a cache with a schema above its own,
/// so an older one never misses, and pays again for, what a newer one stored. Opening an older
/// cache raises its schema (its entries stay readable: see `legacy_entries`). Raise it with
/// `key::KEY_VERSION` too, and with any change to how artifacts are filed or encoded.
pub const CACHE_SCHEMA: u32 = 4;
const NEXT_MANIFEST_KEY: &str = "next_manifest";
/// How artifacts are filed: absent or 1, bare keys; 2, slots (ticket index, then key); 3, ticket
/// records (bare keys of a layout-1 cache may remain beside them).
pub(super) const LAYOUT_KEY: &str = "artifact_layout";
pub(super) const SLOT_LAYOUT: u8 = 2;
const RECORD_LAYOUT: u8 = 3;

/// Tickets per stored chunk of manifest keys: bounds the memory a build uses for its manifest.
const KEYS_PER_CHUNK: u64 = 4096;

impl SledStore {
    /// Opens (or creates) the cache at `path`; fails early, before any model call, if the folder is
    /// locked, unwritable or written by a newer key schema.
    /// The folder's manifest key files.
    fn key_files(&self) -> KeyFiles {
        KeyFiles::new(&self.path)
    }

    pub fn open(path: &Path) -> Result<SledStore, CacheError> {
        SledStore::open_migrating(path, &|_, _, _| {})
    }

    /// Like [`SledStore::open`], telling `progress` how the move of an older layout's artifacts
    /// into ticket records goes (it is called only when there is one to move).
    pub fn open_migrating(
        path: &Path,
        progress: super::MigrationProgress<'_>,
    ) -> Result<SledStore, CacheError> {
        std::fs::create_dir_all(path).map_err(|e| CacheError::NotWritable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let probe = path.join(".write-probe");
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| CacheError::NotWritable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        check_free_space(path)?;
        let db = sled::Config::new()
            .path(path)
            // Group commits give durability; this bounds what offline builds write between flushes.
            .flush_every_ms(Some(100))
            // sled caches up to 1 GiB by default; a build streams through its artifacts once,
            // so a small cache keeps memory flat without slowing it down.
            .cache_capacity(4 * 1024 * 1024)
            .open()
            .map_err(|e| open_error(path, e))?;
        let io = |e: sled::Error| CacheError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let meta = db.open_tree(META_TREE).map_err(io)?;
        match meta.get(SCHEMA_KEY).map_err(io)? {
            Some(bytes) => {
                let found = bytes
                    .as_ref()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .unwrap_or(u32::MAX);
                if found > CACHE_SCHEMA {
                    return Err(CacheError::NewerSchema {
                        path: path.to_path_buf(),
                        found,
                    });
                }
                if found < CACHE_SCHEMA {
                    meta.insert(SCHEMA_KEY, &CACHE_SCHEMA.to_le_bytes())
                        .map_err(io)?;
                }
            }
            None => {
                meta.insert(SCHEMA_KEY, &CACHE_SCHEMA.to_le_bytes())
                    .map_err(io)?;
            }
        }
        let artifacts = db.open_tree(ARTIFACT_TREE).map_err(io)?;
        let tickets = db.open_tree(TICKET_TREE).map_err(io)?;
        let layout = match meta.get(LAYOUT_KEY).map_err(io)? {
            Some(layout) => layout.first().copied().unwrap_or(1),
            // A cache without the mark was written before slots, unless it is empty.
            None if artifacts.is_empty() => RECORD_LAYOUT,
            None => 1,
        };
        // Bare keys live on beside records: layout 1, or a layout-1 cache migrated since
        // (the mark `3 1`).
        let legacy_entries = layout == 1
            || meta
                .get(LAYOUT_KEY)
                .map_err(io)?
                .is_some_and(|l| l.get(1) == Some(&1));
        let dictionary_tree = db.open_tree(DICTIONARY_TREE).map_err(io)?;
        let stored: Vec<(u64, sled::IVec)> = dictionary_tree
            .iter()
            .map(|item| {
                item.map(|(id, value)| {
                    (
                        id.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
                        value,
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map_err(io)?;
        let (dictionaries, trained) =
            Dictionaries::stored(stored.iter().map(|(id, value)| (*id, value.as_ref())));
        let store = SledStore {
            path: path.to_path_buf(),
            db,
            tickets,
            artifacts,
            legacy_entries,
            dictionaries,
            trainer: std::sync::Mutex::new(if trained {
                Trainer::finished()
            } else {
                Trainer::default()
            }),
            shapes: super::layout::Shapes::default(),
        };
        if layout != RECORD_LAYOUT {
            if layout == SLOT_LAYOUT
                || store
                    .artifacts
                    .iter()
                    .keys()
                    .any(|k| k.is_ok_and(|k| k.len() == 40))
            {
                store.migrate_slots(progress)?;
            }
            let mark: &[u8] = if legacy_entries {
                &[RECORD_LAYOUT, 1]
            } else {
                &[RECORD_LAYOUT]
            };
            meta.insert(LAYOUT_KEY, mark).map_err(io)?;
            store.db.flush().map_err(io)?;
        }
        Ok(store)
    }

    pub(super) fn io(&self, e: sled::Error) -> CacheError {
        CacheError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

impl ArtifactStore for SledStore {
    fn get(&self, ticket: u64, key: &ArtifactKey) -> Result<Lookup, CacheError> {
        self.get_artifact(ticket, key)
    }

    fn ticket_artifacts(&self, ticket: u64) -> Result<TicketArtifacts, CacheError> {
        self.read_ticket(ticket)
    }

    fn put(&self, ticket: u64, artifact: &Artifact) -> Result<(), CacheError> {
        self.put_artifacts(ticket, std::slice::from_ref(artifact))
    }

    fn put_ticket(&self, ticket: u64, artifacts: &[Artifact]) -> Result<(), CacheError> {
        self.put_artifacts(ticket, artifacts)
    }

    fn flush(&self) -> Result<(), CacheError> {
        self.db.flush().map_err(|e| self.io(e))?;
        Ok(())
    }

    fn len(&self) -> usize {
        self.count()
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

impl ManifestStore for SledStore {
    fn next_manifest_id(&self) -> Result<u64, CacheError> {
        let meta = self.tree(META_TREE)?;
        let next = meta
            .update_and_fetch(NEXT_MANIFEST_KEY, |old| {
                let current = old
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                Some((current + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.io(e))?
            .and_then(|b| b.as_ref().try_into().ok())
            .map_or(1, u64::from_be_bytes);
        Ok(next)
    }

    fn key_recorder(&self, id: u64, nodes: usize) -> Result<Box<dyn KeyRecorder>, CacheError> {
        Ok(Box::new(ManifestKeyWriter {
            files: self.key_files().writer(id)?,
            path: self.path.clone(),
            nodes,
            chunk: 0,
            keys: Vec::new(),
            kept: Vec::new(),
        }))
    }

    fn put_manifest(&self, id: u64, manifest: &[u8]) -> Result<(), CacheError> {
        self.tree(MANIFEST_TREE)?
            .insert(id.to_be_bytes(), manifest)
            .map_err(|e| self.io(e))?;
        ArtifactStore::flush(self)
    }

    fn manifests(&self) -> Result<Vec<(u64, Vec<u8>)>, CacheError> {
        let mut out = Vec::new();
        for entry in self.tree(MANIFEST_TREE)?.iter() {
            let (id, bytes) = entry.map_err(|e| self.io(e))?;
            if let Ok(id) = id.as_ref().try_into().map(u64::from_be_bytes) {
                out.push((id, bytes.to_vec()));
            }
        }
        Ok(out)
    }

    fn last_manifest(&self) -> Result<Option<(u64, Vec<u8>)>, CacheError> {
        let tree = self.tree(MANIFEST_TREE)?;
        let Some((id, bytes)) = tree.last().map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        let id = id.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
        Ok(Some((id, bytes.to_vec())))
    }

    fn manifest_keys(&self, id: u64, each: &mut KeyChunks<'_>) -> Result<(), CacheError> {
        let in_file = self
            .key_files()
            .frames(id, KeyFile::Used, &mut |chunk, bytes| {
                if let Ok((keys, _)) = bincode::serde::decode_from_slice::<ChunkKeys, _>(
                    bytes,
                    bincode::config::standard(),
                ) {
                    each(chunk * KEYS_PER_CHUNK, &keys.keys, keys.nodes);
                }
            })?;
        if in_file {
            return Ok(());
        }
        // A cache from before key files: the keys are in a tree.
        let tree = self.tree(MANIFEST_KEYS_TREE)?;
        for entry in tree.scan_prefix(id.to_be_bytes()) {
            let (key, bytes) = entry.map_err(|e| self.io(e))?;
            let chunk = key
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes);
            if let Ok((keys, _)) = bincode::serde::decode_from_slice::<ChunkKeys, _>(
                &bytes,
                bincode::config::standard(),
            ) {
                each(chunk * KEYS_PER_CHUNK, &keys.keys, keys.nodes);
            }
        }
        Ok(())
    }

    fn kept_keys(&self, id: u64, each: &mut dyn FnMut(&[ArtifactKey])) -> Result<(), CacheError> {
        let in_file = self
            .key_files()
            .frames(id, KeyFile::Kept, &mut |_, bytes| {
                if let Ok((keys, _)) = bincode::serde::decode_from_slice::<Vec<ArtifactKey>, _>(
                    bytes,
                    bincode::config::standard(),
                ) {
                    each(&keys);
                }
            })?;
        if in_file {
            return Ok(());
        }
        for entry in self.tree(MANIFEST_KEPT_TREE)?.scan_prefix(id.to_be_bytes()) {
            let (_, bytes) = entry.map_err(|e| self.io(e))?;
            if let Ok((keys, _)) = bincode::serde::decode_from_slice::<Vec<ArtifactKey>, _>(
                &bytes,
                bincode::config::standard(),
            ) {
                each(&keys);
            }
        }
        Ok(())
    }

    fn manifest_key(
        &self,
        id: u64,
        ticket: u64,
        node: usize,
    ) -> Result<Option<ArtifactKey>, CacheError> {
        let chunk = ticket / KEYS_PER_CHUNK;
        let bytes = match self.key_files().frame(id, chunk)? {
            Some(Some(bytes)) => bytes,
            Some(None) => return Ok(None),
            None => {
                let mut key = id.to_be_bytes().to_vec();
                key.extend_from_slice(&chunk.to_be_bytes());
                let tree = self.tree(MANIFEST_KEYS_TREE)?;
                let Some(bytes) = tree.get(key).map_err(|e| self.io(e))? else {
                    return Ok(None);
                };
                bytes.to_vec()
            }
        };
        let Ok((keys, _)) =
            bincode::serde::decode_from_slice::<ChunkKeys, _>(&bytes, bincode::config::standard())
        else {
            return Ok(None);
        };
        let index = (ticket - chunk * KEYS_PER_CHUNK) as usize * keys.nodes + node;
        Ok(keys.keys.get(index).copied().flatten())
    }

    fn pin(&self, name: &str, id: u64) -> Result<(), CacheError> {
        self.tree(PIN_TREE)?
            .insert(name, &id.to_be_bytes())
            .map_err(|e| self.io(e))?;
        self.flush()
    }

    fn pins(&self) -> Result<Vec<(String, u64)>, CacheError> {
        let mut out = Vec::new();
        for entry in self.tree(PIN_TREE)?.iter() {
            let (name, id) = entry.map_err(|e| self.io(e))?;
            if let Ok(id) = id.as_ref().try_into().map(u64::from_be_bytes) {
                out.push((String::from_utf8_lossy(&name).into_owned(), id));
            }
        }
        Ok(out)
    }

    fn remove_manifest(&self, id: u64) -> Result<(), CacheError> {
        self.tree(MANIFEST_TREE)?
            .remove(id.to_be_bytes())
            .map_err(|e| self.io(e))?;
        self.key_files().remove(id)?;
        for name in [MANIFEST_KEYS_TREE, MANIFEST_KEPT_TREE] {
            let keys = self.tree(name)?;
            for entry in keys.scan_prefix(id.to_be_bytes()) {
                let (key, _) = entry.map_err(|e| self.io(e))?;
                keys.remove(key).map_err(|e| self.io(e))?;
            }
        }
        Ok(())
    }

    fn unfinished_manifest_ids(&self) -> Result<Vec<u64>, CacheError> {
        let manifests = self.tree(MANIFEST_TREE)?;
        let mut ids = std::collections::BTreeSet::new();
        for id in self.key_files().ids()? {
            if !manifests
                .contains_key(id.to_be_bytes())
                .map_err(|e| self.io(e))?
            {
                ids.insert(id);
            }
        }
        for entry in self.tree(MANIFEST_KEYS_TREE)?.iter() {
            let (key, _) = entry.map_err(|e| self.io(e))?;
            if let Some(id) = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            {
                if !manifests
                    .contains_key(id.to_be_bytes())
                    .map_err(|e| self.io(e))?
                {
                    ids.insert(id);
                }
            }
        }
        Ok(ids.into_iter().collect())
    }
}

impl SledStore {
    pub(super) fn tree(&self, name: &str) -> Result<::sled::Tree, CacheError> {
        self.db.open_tree(name).map_err(|e| self.io(e))
    }

    #[cfg(test)]
    pub(crate) fn db_for_tests(&self) -> ::sled::Db {
        self.db.clone()
    }
}

impl Maintenance for SledStore {
    fn entries(&self) -> Box<dyn Iterator<Item = Result<StoredEntry, CacheError>> + '_> {
        self.all_entries()
    }

    fn remove(&self, slot: &[u8]) -> Result<(), CacheError> {
        self.remove_entry(slot)
    }

    fn quarantine(&self, slot: &[u8], bytes: &[u8]) -> Result<(), CacheError> {
        self.tree(QUARANTINE_TREE)?
            .insert(slot, bytes)
            .map_err(|e| self.io(e))?;
        self.remove(slot)
    }

    fn damaged_shared_parts(&self) -> Result<Vec<String>, CacheError> {
        self.damaged_shared_parts_found()
    }
}

/// Writes a build's keys to its key files in chunks as tickets finish, so memory stays flat in rows.
struct ManifestKeyWriter {
    files: KeyFileWriter,
    path: PathBuf,
    nodes: usize,
    chunk: u64,
    keys: Vec<Option<ArtifactKey>>,
    kept: Vec<ArtifactKey>,
}

impl ManifestKeyWriter {
    fn write_chunk(&mut self) -> Result<(), CacheError> {
        if !self.kept.is_empty() {
            let bytes = encode_chunk(&std::mem::take(&mut self.kept), &self.path)?;
            self.files.append(KeyFile::Kept, self.chunk, &bytes)?;
        }
        if self.keys.is_empty() {
            return Ok(());
        }
        let chunk = ChunkKeys {
            nodes: self.nodes,
            keys: std::mem::take(&mut self.keys),
        };
        let bytes = encode_chunk(&chunk, &self.path)?;
        self.files.append(KeyFile::Used, self.chunk, &bytes)
    }
}

impl KeyRecorder for ManifestKeyWriter {
    fn finish(&mut self) -> Result<(), CacheError> {
        self.write_chunk()?;
        self.files.sync()
    }

    fn record(
        &mut self,
        index: u64,
        keys: &[Option<ArtifactKey>],
        kept: &[ArtifactKey],
    ) -> Result<(), CacheError> {
        let chunk = index / KEYS_PER_CHUNK;
        if chunk != self.chunk {
            self.write_chunk()?;
            self.chunk = chunk;
        }
        self.keys.extend_from_slice(keys);
        self.kept.extend_from_slice(kept);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MissReason;
    use crate::cache::artifact::{encode, test_artifact as artifact};

    /// Opens a cache a dropped store had open. sled's background threads may still hold the
    /// folder's lock for a moment after the drop; a second process would see the same (and be
    /// told the cache is in use), but within one test it is a race, not a finding.
    fn reopen(path: &Path) -> SledStore {
        try_reopen(path).unwrap()
    }

    /// Opens the cache at `path`, waiting while a store just dropped (its own, or sled's in a
    /// test) still holds the folder's lock.
    fn try_reopen(path: &Path) -> Result<SledStore, CacheError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(path) {
                Err(CacheError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    #[test]
    fn sled_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert!(matches!(
                store.get(7, &ArtifactKey([1; 32])).unwrap(),
                Lookup::Miss(MissReason::New)
            ));
            store.put(7, &artifact(1)).unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        match store.get(7, &ArtifactKey([1; 32])).unwrap() {
            Lookup::Hit(a) => assert_eq!(*a, artifact(1)),
            other => panic!("expected a hit, got {other:?}"),
        }
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn artifacts_are_filed_in_ticket_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // Keys in the opposite order to their tickets: the entries still come back by ticket.
        for (ticket, byte) in [(2u64, 1u8), (1, 2), (0, 3)] {
            store.put(ticket, &artifact(byte)).unwrap();
        }
        let keys: Vec<u8> = store.entries().map(|e| e.unwrap().key.0[0]).collect();
        assert_eq!(keys, [3, 2, 1]);
        // The same key under another ticket is not the same entry.
        assert!(matches!(
            store.get(5, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Miss(MissReason::New)
        ));
        // A ticket's artifacts come in one read, and only they.
        let ticket = store.ticket_artifacts(1).unwrap();
        assert!(matches!(
            ticket.get(&store, &ArtifactKey([2; 32])).unwrap(),
            Lookup::Hit(_)
        ));
        let mut ticket = ticket;
        assert!(matches!(
            ticket.get(&store, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Miss(MissReason::New)
        ));
        // What the ticket generates after the read is found too (two nodes, one request).
        ticket.add_generated(artifact(1).into_summary());
        assert!(matches!(
            ticket.get(&store, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn a_cache_from_before_slots_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an older ticketbuild wrote: bare keys and no layout mark.
            let db = sled::open(dir.path()).unwrap();
            db.open_tree(ARTIFACT_TREE)
                .unwrap()
                .insert([1; 32], encode(&artifact(1)))
                .unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert!(matches!(
            store.get(4, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Hit(_)
        ));
        // Its schema is raised, so an older ticketbuild now refuses it instead of missing the
        // artifacts filed in records and paying for them again.
        let schema = store.tree(META_TREE).unwrap().get(SCHEMA_KEY).unwrap();
        assert_eq!(schema.as_deref(), Some(&CACHE_SCHEMA.to_le_bytes()[..]));
        let ticket = store.ticket_artifacts(4).unwrap();
        assert!(matches!(
            ticket.get(&store, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Hit(_)
        ));
        store.put(4, &artifact(2)).unwrap();
        let keys: Vec<ArtifactKey> = store.entries().map(|e| e.unwrap().key).collect();
        // Records come first, then what is under bare keys; both are listed.
        assert_eq!(keys, [ArtifactKey([2; 32]), ArtifactKey([1; 32])]);
        assert_eq!(store.len(), 2);
        drop(store);
        // The mark is kept: the old entries are still found after the cache has grown.
        let store = reopen(dir.path());
        assert!(matches!(
            store.get(4, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn a_second_opener_gets_a_locked_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        match SledStore::open(dir.path()) {
            Err(CacheError::Locked { path }) => assert_eq!(path, dir.path()),
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("expected Locked, got an open store"),
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let meta = db.open_tree(META_TREE).unwrap();
            meta.insert(SCHEMA_KEY, &(CACHE_SCHEMA + 1).to_le_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            try_reopen(dir.path()),
            Err(CacheError::NewerSchema { .. })
        ));
    }
}
