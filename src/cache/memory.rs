//! An in-memory store that counts what it is asked: the test double of the engine's tests.
//!
//! It files by key alone (the ticket only matters for locality on disk) and keeps encoded bytes,
//! so corruption can be simulated and decoding is exercised as with a real store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::artifact::{decode, encode};
use super::{Artifact, ArtifactStore, CacheError, Lookup, MissReason};
use crate::key::ArtifactKey;

/// An in-memory store that counts what it is asked; for tests.
#[derive(Default)]
pub(crate) struct MemoryStore {
    entries: Mutex<HashMap<ArtifactKey, Vec<u8>>>,
    pub(crate) gets: AtomicU64,
    pub(crate) puts: AtomicU64,
    pub(crate) flushes: AtomicU64,
}

impl MemoryStore {
    pub(crate) fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Overwrites an entry's bytes, to simulate corruption.
    pub(crate) fn corrupt(&self, key: &ArtifactKey, bytes: Vec<u8>) {
        self.lock().insert(*key, bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ArtifactKey, Vec<u8>>> {
        // A poisoned lock only means another test thread panicked; the map itself is still whole.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ArtifactStore for MemoryStore {
    /// The memory store files by key alone: the ticket only matters for locality on disk.
    fn get(&self, _ticket: u64, key: &ArtifactKey) -> Result<Lookup, CacheError> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        Ok(match self.lock().get(key) {
            Some(bytes) => decode(key, bytes),
            None => Lookup::Miss(MissReason::New),
        })
    }

    fn put(&self, _ticket: u64, artifact: &Artifact) -> Result<(), CacheError> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(artifact.key, encode(artifact));
        Ok(())
    }

    fn flush(&self) -> Result<(), CacheError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn size_on_disk(&self) -> u64 {
        self.lock().values().map(|v| v.len() as u64).sum()
    }

    fn location(&self) -> String {
        "memory".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::artifact::test_artifact as artifact;

    #[test]
    fn corrupt_entries_are_misses_with_a_reason() {
        let store = MemoryStore::new();
        store.corrupt(&ArtifactKey([3; 32]), vec![1, 2, 3]);
        assert!(matches!(
            store.get(0, &ArtifactKey([3; 32])).unwrap(),
            Lookup::Miss(MissReason::Corrupt(_))
        ));
        // An entry stored under the wrong key is corrupt too.
        store.corrupt(&ArtifactKey([4; 32]), encode(&artifact(5)));
        assert!(matches!(
            store.get(0, &ArtifactKey([4; 32])).unwrap(),
            Lookup::Miss(MissReason::Corrupt(_))
        ));
    }
}
