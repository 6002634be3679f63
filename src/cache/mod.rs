//! The artifact cache: paid responses, stored under their keys, durable before they count.
//!
//! This module owns how artifacts are stored and what a cache folder holds besides them. Its
//! parts, each in its own file:
//! - [`artifact`]: what a stored artifact records ([`Artifact`], the [`RecordedRequest`]) and
//!   its encoding; a build reads only an [`ArtifactSummary`].
//! - the traits here: [`ArtifactStore`] (what the engine needs: get, put, flush),
//!   [`ManifestStore`] (the keys and manifests of builds, pins) and [`Maintenance`] (listing,
//!   removing and quarantining entries); [`Cache`] is all three, what [`open`] returns.
//! - [`sled_store`]: the sled implementation in a cache folder (its artifacts in one compressed
//!   [`record`] per ticket, `sled_records`); `memory`: an in-memory double for tests.
//! - [`commit`]: *when* a stored artifact is durable ([`GroupCommit`]).
//! - [`gc`]: what `cache stats`, `cache gc` and `cache verify` find and do.
//! - [`remote`]: the shared remote tier on object storage (read-through, write-behind).
//!
//! It does not decide keys (`key`), when to call a model (`engine`) or what a manifest says
//! (`manifest`: the store keeps manifests as bytes). The invariants: only valid outputs are ever
//! put (failures are never values); a put is not reported done until a flush that started after
//! it has finished; and a cache written by a newer ticketbuild (a higher [`CACHE_SCHEMA`]) is
//! refused rather than misread.

pub(crate) mod artifact;
pub(crate) mod batches;
pub(crate) mod commit;
mod folder;
pub(crate) mod gc;
mod key_files;
pub(crate) mod layout;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod record;
pub(crate) mod remote;
mod sled_records;
pub(crate) mod sled_store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::key::ArtifactKey;

pub use artifact::{
    Artifact, ArtifactSummary, KeyFields, RecordedRequest, RequestLayout, TicketArtifacts,
};
pub(crate) use commit::GroupCommit;
#[cfg(test)]
pub(crate) use memory::MemoryStore;
pub use sled_store::{CACHE_SCHEMA, SledStore};

/// Opens (or creates) the cache folder at `path`; fails early, before any model call, if the
/// folder is locked, unwritable, nearly full or written by a newer ticketbuild.
pub(crate) fn open(path: &Path) -> Result<Arc<dyn Cache>, CacheError> {
    Ok(Arc::new(SledStore::open(path)?))
}

/// How far the move of an older cache's artifacts into ticket records is: (tickets moved,
/// artifacts moved, artifacts in all).
pub type MigrationProgress<'a> = &'a dyn Fn(u64, u64, u64);

/// Like [`open`], telling `progress` (tickets, artifacts moved, artifacts in all) how the one-time
/// move of an older cache's artifacts into ticket records goes, when there is one.
pub(crate) fn open_migrating(
    path: &Path,
    progress: MigrationProgress<'_>,
) -> Result<Arc<dyn Cache>, CacheError> {
    Ok(Arc::new(SledStore::open_migrating(path, progress)?))
}

/// The outcome of a lookup: a whole [`Artifact`], or an [`ArtifactSummary`] where a build only
/// needs that.
#[derive(Debug)]
pub enum Lookup<T = Artifact> {
    /// Boxed: an artifact is large next to a miss reason.
    Hit(Box<T>),
    Miss(MissReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissReason {
    /// Nothing is stored under the key.
    New,
    /// Something is stored but does not decode or names another key; it will be replaced.
    Corrupt(String),
    /// The user asked to regenerate this node (`--force`), whatever is stored.
    Forced,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "the cache `{path}` is in use by another ticketbuild process; wait for it to finish or use another cache folder with `--cache`"
    )]
    Locked { path: PathBuf },
    #[error(
        "cannot open the cache `{path}`: {reason}; to start fresh, move it away (`mv {path} {path}.broken`) and build again"
    )]
    Open { path: PathBuf, reason: String },
    #[error("cannot write to the cache folder `{path}`: {reason}")]
    NotWritable { path: PathBuf, reason: String },
    #[error(
        "the cache folder `{path}` has only {free_mb} MB free; ticketbuild needs at least {needed_mb} MB to store responses before it pays for them; free some space or use another folder with `--cache`"
    )]
    Full {
        path: PathBuf,
        free_mb: u64,
        needed_mb: u64,
    },
    #[error(
        "the cache `{path}` was written by a newer ticketbuild (cache schema {found}; this one reads up to {CACHE_SCHEMA}); upgrade ticketbuild or use another cache folder"
    )]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("cache I/O error in `{path}`: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// Where artifacts live. Small on purpose: tests swap in `MemoryStore` (cfg(test)) to count lookups, and the
/// backend can be replaced without touching the engine.
///
/// Lookups name the ticket (its index in the dataset) beside the key. The ticket is not key
/// material, since the key already covers it through the sample seed; it tells the store where to
/// file the artifact. A build visits tickets in index order, so filing by ticket first turns
/// uniformly random keys into puts that append at the end of the tree and rebuilds that read it
/// front to back (see [`SledStore`]).
pub trait ArtifactStore: Send + Sync {
    fn get(&self, ticket: u64, key: &ArtifactKey) -> Result<Lookup, CacheError>;
    /// What is stored for ticket `ticket`, read in one go: a build looks up every node of a
    /// ticket, and a store that files by ticket keeps them side by side. A store that cannot list
    /// a ticket's artifacts returns an empty, incomplete set, and lookups fall back to `get`.
    fn ticket_artifacts(&self, ticket: u64) -> Result<TicketArtifacts, CacheError> {
        Ok(TicketArtifacts::unlisted(ticket))
    }
    /// Stores a valid artifact of ticket `ticket`. Not durable until [`ArtifactStore::flush`]
    /// returns.
    fn put(&self, ticket: u64, artifact: &Artifact) -> Result<(), CacheError>;
    /// Stores several artifacts of ticket `ticket` at once (a ticket's free, reproducible answers,
    /// put together when the ticket is done). Not durable until [`ArtifactStore::flush`] returns.
    fn put_ticket(&self, ticket: u64, artifacts: &[Artifact]) -> Result<(), CacheError> {
        artifacts.iter().try_for_each(|a| self.put(ticket, a))
    }
    /// Makes every put that returned before this call durable.
    fn flush(&self) -> Result<(), CacheError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn size_on_disk(&self) -> u64;
    fn location(&self) -> String;
}

/// The keys and manifests of builds, and pins. A manifest is stored as the bytes `manifest`
/// encodes; the store does not read it.
///
/// A build reserves a manifest id before it starts, records every ticket's keys under it as
/// tickets finish (chunk by chunk, so memory stays flat in rows), and stores the manifest itself
/// only once every ticket is written: keys without a manifest are an unfinished build.
pub(crate) trait ManifestStore: Send + Sync {
    /// Reserves the id of the next manifest; its keys are written under it as the build goes.
    fn next_manifest_id(&self) -> Result<u64, CacheError>;
    /// A recorder that stores a build's keys in chunks under manifest `id`.
    fn key_recorder(&self, id: u64, nodes: usize) -> Result<Box<dyn KeyRecorder>, CacheError>;
    /// Stores the manifest of a finished build, durably.
    fn put_manifest(&self, id: u64, manifest: &[u8]) -> Result<(), CacheError>;
    /// Every stored manifest, oldest first.
    fn manifests(&self) -> Result<Vec<(u64, Vec<u8>)>, CacheError>;
    /// The newest stored manifest.
    fn last_manifest(&self) -> Result<Option<(u64, Vec<u8>)>, CacheError>;
    /// The keys of manifest `id`, chunk by chunk: `each(first ticket, keys, nodes per ticket)`.
    fn manifest_keys(&self, id: u64, each: &mut KeyChunks<'_>) -> Result<(), CacheError>;
    /// The keys manifest `id` keeps though no row of its build uses them (rejected draws: paid
    /// for, so gc keeps them as long as the manifest).
    fn kept_keys(&self, id: u64, each: &mut dyn FnMut(&[ArtifactKey])) -> Result<(), CacheError>;
    /// The recorded key of (ticket, node) in manifest `id`.
    fn manifest_key(
        &self,
        id: u64,
        ticket: u64,
        node: usize,
    ) -> Result<Option<ArtifactKey>, CacheError>;
    /// Names manifest `id`, so that gc keeps what it reaches.
    fn pin(&self, name: &str, id: u64) -> Result<(), CacheError>;
    fn pins(&self) -> Result<Vec<(String, u64)>, CacheError>;
    /// Removes manifest `id` and its keys.
    fn remove_manifest(&self, id: u64) -> Result<(), CacheError>;
    /// Manifest ids that have keys but no manifest: builds that did not finish.
    fn unfinished_manifest_ids(&self) -> Result<Vec<u64>, CacheError>;
}

/// Receives a manifest's keys chunk by chunk: (first ticket of the chunk, its keys in ticket then
/// node order, nodes per ticket).
pub(crate) type KeyChunks<'a> = dyn FnMut(u64, &[Option<ArtifactKey>], usize) + 'a;

/// Receives every ticket's artifact keys, in ticket order, during a build: the manifest's keys.
pub trait KeyRecorder: Send {
    /// Ticket `index`'s keys, one per node (`None` where no artifact was used), and the keys the
    /// ticket paid for without using (`kept`: rejected draws, superseded duplicates).
    fn record(
        &mut self,
        index: u64,
        keys: &[Option<ArtifactKey>],
        kept: &[ArtifactKey],
    ) -> Result<(), CacheError>;
    /// Writes what is buffered; called once after the last ticket.
    fn finish(&mut self) -> Result<(), CacheError>;
}

/// One stored artifact entry, as [`Maintenance::entries`] lists it.
pub(crate) struct StoredEntry {
    /// Where it is filed (pass it to `remove` or `quarantine`).
    pub(crate) slot: Vec<u8>,
    /// The ticket it is filed under (`None` in a cache from before tickets filed artifacts).
    pub(crate) ticket: Option<u64>,
    pub(crate) key: ArtifactKey,
    /// The artifact in its encoding (see `artifact::encode`).
    pub(crate) value: Vec<u8>,
    /// Why the entry cannot be read as an artifact, when the store knows (then `value` is the
    /// bytes as stored, for the quarantine).
    pub(crate) damage: Option<String>,
}

/// What gc, verify and stats need beyond lookups: every entry, and removing one.
pub(crate) trait Maintenance: Send + Sync {
    /// Every artifact entry, in ticket order.
    fn entries(&self) -> Box<dyn Iterator<Item = Result<StoredEntry, CacheError>> + '_>;
    /// Removes the entry filed under `slot` (from [`StoredEntry::slot`]).
    fn remove(&self, slot: &[u8]) -> Result<(), CacheError>;
    /// Moves a bad entry aside (kept for inspection, never served).
    fn quarantine(&self, slot: &[u8], bytes: &[u8]) -> Result<(), CacheError>;
    /// What records share (compression dictionaries, request shapes) whose bytes are not what
    /// was stored, each described; a store removes what it can make again (a request shape: the
    /// artifacts laid out with it are then bad entries, and the next build writes it again).
    fn damaged_shared_parts(&self) -> Result<Vec<String>, CacheError> {
        Ok(Vec::new())
    }
}

/// A whole cache folder: artifacts, manifests and maintenance.
pub(crate) trait Cache: ArtifactStore + ManifestStore + Maintenance {}

impl<T: ArtifactStore + ManifestStore + Maintenance> Cache for T {}
