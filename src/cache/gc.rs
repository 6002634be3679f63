//! What a cache holds and what it can let go: `cache stats`, `cache gc` and `cache verify`.
//!
//! This module owns reachability: the roots are the last `keep` manifests and every pinned one, and
//! an artifact is reachable when one of their keys names it. A manifest counts only when the
//! caller can read it (`readable`, which `manifest` answers): one that does not decode is neither
//! a root nor deleted. It works through the store traits
//! and returns typed reports; printing them is the CLI's job. The invariants: gc never deletes an
//! artifact a root reaches, and verify never deletes a bad entry, it moves it to quarantine.

use std::collections::{BTreeMap, HashSet};

use super::artifact::decode;
use super::{Artifact, Cache, CacheError, Lookup, MissReason};
use crate::key::ArtifactKey;

/// The manifests gc keeps, and every key they reach.
pub(crate) struct Reachable {
    /// Manifest ids: the last `keep`, newest first, then the pinned ones not among them.
    pub(crate) roots: Vec<u64>,
    pub(crate) keys: HashSet<ArtifactKey>,
}

/// Whether a stored manifest's bytes are a manifest this ticketbuild reads.
pub(crate) type Readable<'a> = &'a dyn Fn(&[u8]) -> bool;

/// The ids of the stored manifests that are `readable`, oldest first.
fn manifest_ids(cache: &dyn Cache, readable: Readable<'_>) -> Result<Vec<u64>, CacheError> {
    Ok(cache
        .manifests()?
        .into_iter()
        .filter(|(_, bytes)| readable(bytes))
        .map(|(id, _)| id)
        .collect())
}

/// Keys reachable from the kept manifests: the last `keep` plus every pinned one.
pub(crate) fn reachable(
    cache: &dyn Cache,
    keep: usize,
    readable: Readable<'_>,
) -> Result<Reachable, CacheError> {
    let manifests = manifest_ids(cache, readable)?;
    let mut roots: Vec<u64> = manifests.iter().rev().take(keep).copied().collect();
    for (_, id) in cache.pins()? {
        if !roots.contains(&id) {
            roots.push(id);
        }
    }
    let mut keys = HashSet::new();
    for id in &roots {
        cache.manifest_keys(*id, &mut |_, chunk, _| {
            keys.extend(chunk.iter().flatten().copied())
        })?;
        cache.kept_keys(*id, &mut |kept| keys.extend(kept.iter().copied()))?;
    }
    Ok(Reachable { roots, keys })
}

/// What `cache stats` shows.
pub(crate) struct CacheStats {
    pub(crate) entries: u64,
    pub(crate) bytes_on_disk: u64,
    /// The encoded size of every entry.
    pub(crate) artifact_bytes: u64,
    /// Entries the kept manifests reach.
    pub(crate) reachable: u64,
    pub(crate) kept_manifests: usize,
    pub(crate) per_node: BTreeMap<String, u64>,
    /// Keyed `provider/served model`.
    pub(crate) per_model: BTreeMap<String, u64>,
}

/// Counts the entries of `cache`, and how many the last `keep` manifests (and the pinned) reach.
pub(crate) fn stats(
    cache: &dyn Cache,
    keep: usize,
    readable: Readable<'_>,
) -> Result<CacheStats, CacheError> {
    let reachable = reachable(cache, keep, readable)?;
    let mut stats = CacheStats {
        entries: 0,
        bytes_on_disk: cache.size_on_disk(),
        artifact_bytes: 0,
        reachable: 0,
        kept_manifests: reachable.roots.len(),
        per_node: BTreeMap::new(),
        per_model: BTreeMap::new(),
    };
    for entry in cache.entries() {
        let entry = entry?;
        stats.entries += 1;
        stats.artifact_bytes += entry.value.len() as u64;
        if reachable.keys.contains(&entry.key) {
            stats.reachable += 1;
        }
        if let Lookup::Hit(artifact) = decode::<Artifact>(&entry.key, &entry.value) {
            *stats.per_node.entry(artifact.node).or_default() += 1;
            let model = format!("{}/{}", artifact.request.provider, artifact.served_model);
            *stats.per_model.entry(model).or_default() += 1;
        }
    }
    Ok(stats)
}

/// What `cache gc` deleted (or would delete, with `dry_run`).
pub(crate) struct GcReport {
    pub(crate) deleted_artifacts: u64,
    pub(crate) freed_bytes: u64,
    pub(crate) deleted_manifests: u64,
    pub(crate) kept_artifacts: u64,
    pub(crate) kept_manifests: usize,
}

/// Deletes the artifacts no kept manifest reaches, the manifests that are not kept and the keys of
/// builds that never finished; with `dry_run`, only counts them.
pub(crate) fn collect(
    cache: &dyn Cache,
    keep: usize,
    dry_run: bool,
    readable: Readable<'_>,
) -> Result<GcReport, CacheError> {
    let reachable = reachable(cache, keep, readable)?;
    let mut doomed = Vec::new();
    let mut freed_bytes = 0u64;
    for entry in cache.entries() {
        let entry = entry?;
        if !reachable.keys.contains(&entry.key) {
            freed_bytes += entry.value.len() as u64;
            doomed.push(entry.slot);
        }
    }
    let old_manifests: Vec<u64> = manifest_ids(cache, readable)?
        .into_iter()
        .filter(|id| !reachable.roots.contains(id))
        .chain(cache.unfinished_manifest_ids()?)
        .collect();
    if !dry_run {
        for slot in &doomed {
            cache.remove(slot)?;
        }
        for id in &old_manifests {
            cache.remove_manifest(*id)?;
        }
        cache.flush()?;
    }
    Ok(GcReport {
        deleted_artifacts: doomed.len() as u64,
        freed_bytes,
        deleted_manifests: old_manifests.len() as u64,
        kept_artifacts: reachable.keys.len() as u64,
        kept_manifests: reachable.roots.len(),
    })
}

/// What `cache verify` found: entries checked, and the bad ones (now in quarantine).
pub(crate) struct VerifyReport {
    pub(crate) checked: u64,
    /// Entries whose recorded request was hashed again and gave their key.
    pub(crate) rehashed: u64,
    pub(crate) bad: Vec<(ArtifactKey, MissReason)>,
    /// Compression dictionaries and request shapes whose bytes changed, described.
    pub(crate) shared_parts: Vec<String>,
}

/// Checks that every entry decodes, is stored under its own key and, when it records every key
/// input, that its request hashes to that key; moves the bad ones to quarantine.
pub(crate) fn verify(cache: &dyn Cache) -> Result<VerifyReport, CacheError> {
    let shared_parts = cache.damaged_shared_parts()?;
    let mut checked = 0u64;
    let mut rehashed = 0u64;
    let mut bad = Vec::new();
    for entry in cache.entries() {
        let entry = entry?;
        checked += 1;
        if let Some(damage) = entry.damage.clone() {
            bad.push((entry, MissReason::Corrupt(damage)));
            continue;
        }
        match decode::<Artifact>(&entry.key, &entry.value) {
            Lookup::Miss(reason) => bad.push((entry, reason)),
            Lookup::Hit(artifact) => match artifact.derived_key() {
                Some(derived) if derived != entry.key => {
                    let reason = MissReason::Corrupt(format!(
                        "its recorded request hashes to {}, not to its key",
                        derived.short()
                    ));
                    bad.push((entry, reason));
                }
                Some(_) => rehashed += 1,
                None => {}
            },
        }
    }
    for (entry, _) in &bad {
        cache.quarantine(&entry.slot, &entry.value)?;
    }
    cache.flush()?;
    Ok(VerifyReport {
        checked,
        rehashed,
        bad: bad
            .into_iter()
            .map(|(entry, reason)| (entry.key, reason))
            .collect(),
        shared_parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::artifact::test_artifact as artifact;
    use crate::cache::{ArtifactStore, Maintenance, ManifestStore, SledStore};

    #[test]
    fn gc_keeps_what_the_kept_and_pinned_manifests_reach() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // Three builds, each reaching one artifact of its own.
        for byte in 1..=3u8 {
            store.put(0, &artifact(byte)).unwrap();
            let id = store.next_manifest_id().unwrap();
            let mut recorder = store.key_recorder(id, 1).unwrap();
            recorder
                .record(0, &[Some(ArtifactKey([byte; 32]))], &[])
                .unwrap();
            recorder.finish().unwrap();
            store.put_manifest(id, b"manifest").unwrap();
            if byte == 1 {
                store.pin("first", id).unwrap();
            }
        }
        let any: Readable<'_> = &|_| true;
        let dry = collect(&store, 1, true, any).unwrap();
        assert_eq!((dry.deleted_artifacts, dry.deleted_manifests), (1, 1));
        assert_eq!(store.len(), 3, "a dry run deletes nothing");
        let report = collect(&store, 1, false, any).unwrap();
        assert_eq!(report.kept_manifests, 2, "the last one and the pinned one");
        assert_eq!(report.kept_artifacts, 2);
        let left: Vec<u8> = store.entries().map(|e| e.unwrap().key.0[0]).collect();
        assert_eq!(left, [1, 3]);
    }

    #[test]
    fn verify_names_a_tampered_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for ticket in 0..300u64 {
            let mut a = artifact(1);
            a.request.user = format!("The template's text, ticket {ticket}. ").repeat(8);
            store.put(ticket, &a).unwrap();
        }
        assert!(verify(&store).unwrap().shared_parts.is_empty());
        let tree = sled::Db::open_tree(&store.db_for_tests(), "dictionaries").unwrap();
        let (id, value) = tree.iter().next().unwrap().unwrap();
        let mut tampered = value.to_vec();
        tampered[40] ^= 0xff;
        tree.insert(id, tampered).unwrap();
        let report = verify(&store).unwrap();
        assert_eq!(report.shared_parts.len(), 1, "{:?}", report.shared_parts);
    }

    #[test]
    fn verify_quarantines_what_does_not_decode_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put(0, &artifact(1)).unwrap();
        store.put_raw(1, &ArtifactKey([2; 32]), b"garbage").unwrap();
        let report = verify(&store).unwrap();
        assert_eq!(report.checked, 2);
        assert_eq!(report.bad.len(), 1);
        assert_eq!(report.bad[0].0, ArtifactKey([2; 32]));
        assert_eq!(verify(&store).unwrap().bad.len(), 0, "moved aside");
    }

    #[test]
    fn a_manifest_that_does_not_decode_is_neither_a_root_nor_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for (byte, bytes) in [(1u8, &b"good"[..]), (2, b"unreadable")] {
            store.put(0, &artifact(byte)).unwrap();
            let id = store.next_manifest_id().unwrap();
            let mut recorder = store.key_recorder(id, 1).unwrap();
            recorder
                .record(0, &[Some(ArtifactKey([byte; 32]))], &[])
                .unwrap();
            recorder.finish().unwrap();
            store.put_manifest(id, bytes).unwrap();
        }
        let good: Readable<'_> = &|bytes| bytes == b"good";
        let report = collect(&store, 1, false, good).unwrap();
        assert_eq!((report.kept_manifests, report.deleted_manifests), (1, 0));
        assert_eq!(
            store.manifests().unwrap().len(),
            2,
            "the unreadable one is left alone"
        );
        let left: Vec<u8> = store.entries().map(|e| e.unwrap().key.0[0]).collect();
        assert_eq!(left, [1]);
    }

    #[test]
    fn rejected_draws_a_manifest_keeps_survive_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for byte in [1u8, 2, 3] {
            store.put(0, &artifact(byte)).unwrap();
        }
        let id = store.next_manifest_id().unwrap();
        let mut recorder = store.key_recorder(id, 1).unwrap();
        let rejected = [ArtifactKey([2; 32])];
        recorder
            .record(0, &[Some(ArtifactKey([1; 32]))], &rejected)
            .unwrap();
        recorder.finish().unwrap();
        store.put_manifest(id, b"m").unwrap();
        let report = collect(&store, 1, false, &|_| true).unwrap();
        assert_eq!(report.deleted_artifacts, 1);
        let left: Vec<u8> = store.entries().map(|e| e.unwrap().key.0[0]).collect();
        assert_eq!(left, [1, 2], "the rejected draw is kept with the manifest");
        store.remove_manifest(id).unwrap();
        let mut kept = 0;
        store.kept_keys(id, &mut |k| kept += k.len()).unwrap();
        assert_eq!(kept, 0, "removing the manifest removes its kept keys");
    }
}
