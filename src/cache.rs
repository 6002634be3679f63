//! The artifact cache: paid responses, stored under their keys, durable before they count.
//!
//! This module owns how artifacts are stored ([`ArtifactStore`], with a sled implementation and an
//! in-memory double for tests), what a stored artifact records ([`Artifact`]), and *when* a stored
//! artifact is durable ([`GroupCommit`]). It does not decide keys (`key`) or when to call a model
//! (`engine`). The invariants: only valid outputs are ever put (failures are never values); a put is
//! not reported done until a flush that started after it has finished; and a cache written by a
//! newer ticketbuild (a higher [`CACHE_SCHEMA`]) is refused rather than misread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::cost::{PriceEntry, Usage};
use crate::key::ArtifactKey;
use crate::value::NodeOutput;

/// One stored response and what is known about how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// The key this artifact was stored under; `verify` checks it matches.
    pub key: ArtifactKey,
    /// The node that produced it (trace metadata, not key material).
    pub node: String,
    pub output: NodeOutput,
    pub usage: Usage,
    /// What the call cost in USD, when known (zero for the offline model): the provider's own
    /// figure when it reports one, else the computed one.
    pub cost_usd: Option<f64>,
    /// The cost computed from usage and `price`, kept beside a provider-reported one.
    pub computed_cost_usd: Option<f64>,
    /// The price (USD per million tokens) the cost was computed with, and its source.
    pub price: Option<PriceEntry>,
    /// The model that answered, as the provider named it (may be a dated snapshot).
    pub served_model: String,
    /// Milliseconds since the Unix epoch when the response arrived. Trace only.
    pub created_unix_ms: u64,
    pub latency_ms: u64,
    /// Upstream nodes this output depended on, with their artifact keys. Trace only.
    pub upstream: Vec<(String, ArtifactKey)>,
    /// The request as it was sent, for `explain` and for diffs against what would be sent now.
    pub request: RecordedRequest,
}

/// A request as recorded with its artifact. Holds no secret: requests never carry one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub provider: String,
    pub base_url: Option<String>,
    pub model: String,
    /// The parameters that were sent, as canonical JSON (unset ones absent).
    pub params_json: String,
    pub output_kind: String,
    pub system: Option<String>,
    pub user: String,
    /// Offline only: the task and its structured inputs as canonical JSON.
    pub offline: Option<(String, String)>,
    pub sample_seed: u64,
}

/// What a build reads of a stored artifact: all of it but the recorded request, which only
/// `explain` shows. Its fields are the leading fields of [`Artifact`], in the same order, so it
/// decodes from an artifact's bytes and stops before the request (the bulk of the bytes: the
/// rendered prompts) instead of allocating it for every ticket of every rebuild.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArtifactSummary {
    pub key: ArtifactKey,
    pub node: String,
    pub output: NodeOutput,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub computed_cost_usd: Option<f64>,
    pub price: Option<PriceEntry>,
    pub served_model: String,
    pub created_unix_ms: u64,
    pub latency_ms: u64,
    pub upstream: Vec<(String, ArtifactKey)>,
}

impl Artifact {
    /// The artifact without its recorded request.
    pub fn into_summary(self) -> ArtifactSummary {
        ArtifactSummary {
            key: self.key,
            node: self.node,
            output: self.output,
            usage: self.usage,
            cost_usd: self.cost_usd,
            computed_cost_usd: self.computed_cost_usd,
            price: self.price,
            served_model: self.served_model,
            created_unix_ms: self.created_unix_ms,
            latency_ms: self.latency_ms,
            upstream: self.upstream,
        }
    }
}

/// A stored record that names the key it was stored under (checked on every read).
trait Keyed: serde::de::DeserializeOwned {
    fn stored_key(&self) -> &ArtifactKey;
}

impl Keyed for Artifact {
    fn stored_key(&self) -> &ArtifactKey {
        &self.key
    }
}

impl Keyed for ArtifactSummary {
    fn stored_key(&self) -> &ArtifactKey {
        &self.key
    }
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

/// Where artifacts live. Small on purpose: tests swap in [`MemoryStore`] to count lookups, and the
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
        Ok(TicketArtifacts {
            ticket,
            entries: Vec::new(),
            generated: Vec::new(),
            complete: false,
        })
    }
    /// Stores a valid artifact of ticket `ticket`. Not durable until [`ArtifactStore::flush`]
    /// returns.
    fn put(&self, ticket: u64, artifact: &Artifact) -> Result<(), CacheError>;
    /// Makes every put that returned before this call durable.
    fn flush(&self) -> Result<(), CacheError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn size_on_disk(&self) -> u64;
    fn location(&self) -> String;
}

fn encode(artifact: &Artifact) -> Vec<u8> {
    // Invariant: an Artifact holds only strings, numbers and vectors, which bincode always encodes.
    bincode::serde::encode_to_vec(artifact, bincode::config::standard())
        .expect("an artifact is always encodable")
}

fn decode<T: Keyed>(key: &ArtifactKey, bytes: &[u8]) -> Lookup<T> {
    // A summary reads a prefix of the bytes; bincode leaves the rest (the request) untouched.
    match bincode::serde::decode_from_slice::<T, _>(bytes, bincode::config::standard()) {
        Ok((record, _)) if record.stored_key() == key => Lookup::Hit(Box::new(record)),
        Ok((record, _)) => Lookup::Miss(MissReason::Corrupt(format!(
            "entry records key {}",
            record.stored_key().short()
        ))),
        Err(e) => Lookup::Miss(MissReason::Corrupt(e.to_string())),
    }
}

/// The stored artifacts of one ticket (see [`ArtifactStore::ticket_artifacts`]), still encoded: only
/// the ones a lookup asks for are decoded.
pub struct TicketArtifacts {
    ticket: u64,
    entries: Vec<(ArtifactKey, sled::IVec)>,
    /// Artifacts generated for the ticket since the read: two nodes that send the same request
    /// share one artifact, and the second must find the first's answer, not pay for it again.
    generated: Vec<ArtifactSummary>,
    /// Every artifact of the ticket is listed; a key not among them is not stored.
    complete: bool,
}

impl TicketArtifacts {
    /// Looks `key` up among the ticket's artifacts, asking `store` only when the set is incomplete.
    pub fn get(
        &self,
        store: &dyn ArtifactStore,
        key: &ArtifactKey,
    ) -> Result<Lookup<ArtifactSummary>, CacheError> {
        if let Some(summary) = self.generated.iter().find(|s| s.key == *key) {
            return Ok(Lookup::Hit(Box::new(summary.clone())));
        }
        match self.entries.iter().find(|(k, _)| k == key) {
            Some((_, bytes)) => Ok(decode(key, bytes)),
            None if self.complete => Ok(Lookup::Miss(MissReason::New)),
            None => Ok(match store.get(self.ticket, key)? {
                Lookup::Hit(artifact) => Lookup::Hit(Box::new(artifact.into_summary())),
                Lookup::Miss(reason) => Lookup::Miss(reason),
            }),
        }
    }

    /// Records an artifact just generated (and put) for this ticket, so later lookups see it.
    pub fn add_generated(&mut self, summary: ArtifactSummary) {
        self.generated.push(summary);
    }
}

/// The sled-backed store in a cache folder.
///
/// Artifacts are filed under a 40-byte slot: the ticket index (big-endian, so sled's byte order is
/// ticket order) followed by the 32-byte key. With keys alone, every put and get landed on a random
/// leaf of the tree, and once the tree outgrew sled's page cache nearly every one read a page back
/// from disk: at 20,000 tickets, filing by ticket halved the time to reassemble a dataset from the
/// cache. Caches written before slots existed hold bare 32-byte keys; they are still read (a miss
/// under the slot tries the bare key), so no stored response is lost.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    artifacts: sled::Tree,
    /// The tree holds entries under bare keys, from before slots.
    legacy_entries: bool,
}

/// The bytes an artifact is filed under in sled: ticket index, then key.
fn slot(ticket: u64, key: &ArtifactKey) -> [u8; 40] {
    let mut slot = [0u8; 40];
    slot[..8].copy_from_slice(&ticket.to_be_bytes());
    slot[8..].copy_from_slice(&key.0);
    slot
}

/// The key of a stored entry, from its slot (or bare key, in a cache from before slots).
fn key_of_slot(slot: &[u8]) -> Option<ArtifactKey> {
    let bytes = match slot.len() {
        40 => &slot[8..],
        32 => slot,
        _ => return None,
    };
    bytes.try_into().ok().map(ArtifactKey)
}

/// One stored artifact entry, as `entries` lists it.
pub struct StoredEntry {
    /// Where it is filed (pass it to `remove` or `quarantine`).
    pub slot: Vec<u8>,
    pub key: ArtifactKey,
    pub value: Vec<u8>,
}

const META_TREE: &str = "meta";
const ARTIFACT_TREE: &str = "artifacts";
const MANIFEST_TREE: &str = "manifests";
const MANIFEST_KEYS_TREE: &str = "manifest_keys";
const PIN_TREE: &str = "pins";
const QUARANTINE_TREE: &str = "quarantine";
const SCHEMA_KEY: &str = "key_schema";
/// The cache schema this ticketbuild writes (under `key_schema` in the meta tree): 1, bare keys;
/// 2, artifacts filed by ticket (slots). A ticketbuild refuses a cache with a schema above its own,
/// so an older one never misses, and pays again for, what a newer one stored. Opening an older
/// cache raises its schema (its entries stay readable: see `legacy_entries`). Raise it with
/// `key::KEY_VERSION` too, and with any change to how artifacts are filed or encoded.
pub const CACHE_SCHEMA: u32 = 2;
const NEXT_MANIFEST_KEY: &str = "next_manifest";
/// How artifacts are filed: absent or 1, bare keys; 2, slots (ticket index, then key).
const LAYOUT_KEY: &str = "artifact_layout";
const SLOT_LAYOUT: u8 = 2;

/// Tickets per stored chunk of manifest keys: bounds the memory a build uses for its manifest.
const KEYS_PER_CHUNK: u64 = 4096;

impl SledStore {
    /// Opens (or creates) the cache at `path`; fails early, before any model call, if the folder is
    /// locked, unwritable or written by a newer key schema.
    pub fn open(path: &Path) -> Result<SledStore, CacheError> {
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
            // Durability comes from explicit group commits; the background flush only adds safety.
            .flush_every_ms(Some(500))
            // sled caches up to 1 GiB by default; a build streams through its artifacts once,
            // so a small cache keeps memory flat without slowing it down.
            .cache_capacity(64 * 1024 * 1024)
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
        let legacy_entries = match meta.get(LAYOUT_KEY).map_err(io)? {
            Some(layout) => layout.as_ref() != [SLOT_LAYOUT],
            None => {
                // A cache without the mark was written before slots, unless it is empty.
                let legacy = !artifacts.is_empty();
                let layout = if legacy { 1 } else { SLOT_LAYOUT };
                meta.insert(LAYOUT_KEY, &[layout]).map_err(io)?;
                legacy
            }
        };
        Ok(SledStore {
            path: path.to_path_buf(),
            db,
            artifacts,
            legacy_entries,
        })
    }

    fn io(&self, e: sled::Error) -> CacheError {
        CacheError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// Free space a cache folder must have before a build starts (MB); `TICKETBUILD_CACHE_MIN_FREE_MB`
/// overrides it. A build that cannot store what it pays for would pay twice, so a nearly full disk
/// is refused before the first call rather than discovered after it.
pub const MIN_FREE_MB: u64 = 64;

fn check_free_space(path: &Path) -> Result<(), CacheError> {
    let needed_mb = std::env::var("TICKETBUILD_CACHE_MIN_FREE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_FREE_MB);
    // A file system that cannot report its free space is not refused for that.
    let Ok(free) = fs2::available_space(path) else {
        return Ok(());
    };
    let free_mb = free / (1024 * 1024);
    if free_mb < needed_mb {
        return Err(CacheError::Full {
            path: path.to_path_buf(),
            free_mb,
            needed_mb,
        });
    }
    Ok(())
}

fn open_error(path: &Path, error: sled::Error) -> CacheError {
    // The full path: "cache" alone does not say which project's cache is busy.
    let path = &path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let reason = error.to_string();
    let locked = match &error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock || reason.contains("lock")
        }
        _ => false,
    };
    if locked {
        CacheError::Locked {
            path: path.to_path_buf(),
        }
    } else {
        CacheError::Open {
            path: path.to_path_buf(),
            reason,
        }
    }
}

impl ArtifactStore for SledStore {
    fn get(&self, ticket: u64, key: &ArtifactKey) -> Result<Lookup, CacheError> {
        let mut found = self
            .artifacts
            .get(slot(ticket, key))
            .map_err(|e| self.io(e))?;
        if found.is_none() && self.legacy_entries {
            found = self.artifacts.get(key.0).map_err(|e| self.io(e))?;
        }
        match found {
            Some(bytes) => Ok(decode(key, &bytes)),
            None => Ok(Lookup::Miss(MissReason::New)),
        }
    }

    fn ticket_artifacts(&self, ticket: u64) -> Result<TicketArtifacts, CacheError> {
        let mut entries = Vec::new();
        for entry in self.artifacts.scan_prefix(ticket.to_be_bytes()) {
            let (slot, bytes) = entry.map_err(|e| self.io(e))?;
            if let Some(key) = key_of_slot(&slot) {
                entries.push((key, bytes));
            }
        }
        Ok(TicketArtifacts {
            ticket,
            entries,
            generated: Vec::new(),
            // A cache from before slots may hold the ticket's artifacts under bare keys.
            complete: !self.legacy_entries,
        })
    }

    fn put(&self, ticket: u64, artifact: &Artifact) -> Result<(), CacheError> {
        self.artifacts
            .insert(slot(ticket, &artifact.key), encode(artifact))
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    fn flush(&self) -> Result<(), CacheError> {
        self.db.flush().map_err(|e| self.io(e))?;
        Ok(())
    }

    fn len(&self) -> usize {
        self.artifacts.len()
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Manifests, pins and maintenance: sled-specific, used by the CLI, not by the engine.
impl SledStore {
    fn tree(&self, name: &str) -> Result<sled::Tree, CacheError> {
        self.db.open_tree(name).map_err(|e| self.io(e))
    }

    /// Reserves the id of the next manifest; its keys are written under it as the build goes.
    pub fn next_manifest_id(&self) -> Result<u64, CacheError> {
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

    /// A recorder that stores a build's keys in chunks under manifest `id`.
    pub fn key_recorder(&self, id: u64, nodes: usize) -> Result<ManifestKeyWriter, CacheError> {
        Ok(ManifestKeyWriter {
            tree: self.tree(MANIFEST_KEYS_TREE)?,
            path: self.path.clone(),
            id,
            nodes,
            chunk: 0,
            keys: Vec::new(),
        })
    }

    /// Stores the manifest of a finished build, durably.
    pub fn put_manifest<M: Serialize>(&self, id: u64, manifest: &M) -> Result<(), CacheError> {
        let bytes =
            bincode::serde::encode_to_vec(manifest, bincode::config::standard()).map_err(|e| {
                CacheError::Io {
                    path: self.path.clone(),
                    reason: e.to_string(),
                }
            })?;
        self.tree(MANIFEST_TREE)?
            .insert(id.to_be_bytes(), bytes)
            .map_err(|e| self.io(e))?;
        self.flush()
    }

    /// Every stored manifest, oldest first.
    pub fn manifests<M: serde::de::DeserializeOwned>(&self) -> Result<Vec<(u64, M)>, CacheError> {
        let mut out = Vec::new();
        for entry in self.tree(MANIFEST_TREE)?.iter() {
            let (id, bytes) = entry.map_err(|e| self.io(e))?;
            let Ok(id) = id.as_ref().try_into().map(u64::from_be_bytes) else {
                continue;
            };
            if let Ok((manifest, _)) =
                bincode::serde::decode_from_slice::<M, _>(&bytes, bincode::config::standard())
            {
                out.push((id, manifest));
            }
        }
        Ok(out)
    }

    pub fn last_manifest<M: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Option<(u64, M)>, CacheError> {
        let tree = self.tree(MANIFEST_TREE)?;
        let Some((id, bytes)) = tree.last().map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        let id = id.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
        Ok(
            bincode::serde::decode_from_slice::<M, _>(&bytes, bincode::config::standard())
                .ok()
                .map(|(m, _)| (id, m)),
        )
    }

    /// The keys of manifest `id` for tickets `from..to`, chunk by chunk.
    pub fn manifest_keys(
        &self,
        id: u64,
        mut each: impl FnMut(u64, &[Option<ArtifactKey>], usize),
    ) -> Result<(), CacheError> {
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

    /// The recorded key of (ticket, node) in manifest `id`.
    pub fn manifest_key(
        &self,
        id: u64,
        ticket: u64,
        node: usize,
    ) -> Result<Option<ArtifactKey>, CacheError> {
        let tree = self.tree(MANIFEST_KEYS_TREE)?;
        let chunk = ticket / KEYS_PER_CHUNK;
        let mut key = id.to_be_bytes().to_vec();
        key.extend_from_slice(&chunk.to_be_bytes());
        let Some(bytes) = tree.get(key).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        let Ok((keys, _)) =
            bincode::serde::decode_from_slice::<ChunkKeys, _>(&bytes, bincode::config::standard())
        else {
            return Ok(None);
        };
        let index = (ticket - chunk * KEYS_PER_CHUNK) as usize * keys.nodes + node;
        Ok(keys.keys.get(index).copied().flatten())
    }

    pub fn pin(&self, name: &str, id: u64) -> Result<(), CacheError> {
        self.tree(PIN_TREE)?
            .insert(name, &id.to_be_bytes())
            .map_err(|e| self.io(e))?;
        self.flush()
    }

    pub fn pins(&self) -> Result<Vec<(String, u64)>, CacheError> {
        let mut out = Vec::new();
        for entry in self.tree(PIN_TREE)?.iter() {
            let (name, id) = entry.map_err(|e| self.io(e))?;
            if let Ok(id) = id.as_ref().try_into().map(u64::from_be_bytes) {
                out.push((String::from_utf8_lossy(&name).into_owned(), id));
            }
        }
        Ok(out)
    }

    /// Removes manifest `id` and its keys.
    pub fn remove_manifest(&self, id: u64) -> Result<(), CacheError> {
        self.tree(MANIFEST_TREE)?
            .remove(id.to_be_bytes())
            .map_err(|e| self.io(e))?;
        let keys = self.tree(MANIFEST_KEYS_TREE)?;
        for entry in keys.scan_prefix(id.to_be_bytes()) {
            let (key, _) = entry.map_err(|e| self.io(e))?;
            keys.remove(key).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Manifest ids that have keys but no manifest: builds that did not finish.
    pub fn unfinished_manifest_ids(&self) -> Result<Vec<u64>, CacheError> {
        let manifests = self.tree(MANIFEST_TREE)?;
        let mut ids = std::collections::BTreeSet::new();
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

    /// Every artifact entry, in ticket order. An entry filed under bytes that are neither a slot
    /// nor a key (which ticketbuild never writes) is listed under the all-zero key, so that
    /// `verify` reports it.
    pub fn entries(&self) -> impl Iterator<Item = Result<StoredEntry, CacheError>> + '_ {
        self.artifacts.iter().map(|entry| {
            let (slot, value) = entry.map_err(|e| self.io(e))?;
            Ok(StoredEntry {
                key: key_of_slot(&slot).unwrap_or(ArtifactKey([0; 32])),
                slot: slot.to_vec(),
                value: value.to_vec(),
            })
        })
    }

    /// Decodes an entry as `get` would.
    pub fn decode_entry(key: &ArtifactKey, bytes: &[u8]) -> Lookup {
        decode(key, bytes)
    }

    /// Removes the entry filed under `slot` (from [`StoredEntry::slot`]).
    pub fn remove(&self, slot: &[u8]) -> Result<(), CacheError> {
        self.artifacts.remove(slot).map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Moves a bad entry aside (kept for inspection, never served).
    pub fn quarantine(&self, slot: &[u8], bytes: &[u8]) -> Result<(), CacheError> {
        self.tree(QUARANTINE_TREE)?
            .insert(slot, bytes)
            .map_err(|e| self.io(e))?;
        self.remove(slot)
    }

    /// Test helper and `verify` fixture: stores raw bytes for ticket `ticket` under `key`.
    pub fn put_raw(&self, ticket: u64, key: &ArtifactKey, bytes: &[u8]) -> Result<(), CacheError> {
        self.artifacts
            .insert(slot(ticket, key), bytes)
            .map_err(|e| self.io(e))?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct ChunkKeys {
    nodes: usize,
    keys: Vec<Option<ArtifactKey>>,
}

/// Writes a build's keys to the cache in chunks as tickets finish, so memory stays flat in rows.
pub struct ManifestKeyWriter {
    tree: sled::Tree,
    path: PathBuf,
    id: u64,
    nodes: usize,
    chunk: u64,
    keys: Vec<Option<ArtifactKey>>,
}

impl ManifestKeyWriter {
    fn write_chunk(&mut self) -> Result<(), CacheError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let chunk = ChunkKeys {
            nodes: self.nodes,
            keys: std::mem::take(&mut self.keys),
        };
        let bytes =
            bincode::serde::encode_to_vec(&chunk, bincode::config::standard()).map_err(|e| {
                CacheError::Io {
                    path: self.path.clone(),
                    reason: e.to_string(),
                }
            })?;
        let mut key = self.id.to_be_bytes().to_vec();
        key.extend_from_slice(&self.chunk.to_be_bytes());
        self.tree.insert(key, bytes).map_err(|e| CacheError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// Receives every ticket's artifact keys, in ticket order, during a build: the manifest's keys.
pub trait KeyRecorder: Send {
    fn record(&mut self, index: u64, keys: &[Option<ArtifactKey>]) -> Result<(), CacheError>;
    /// Writes what is buffered; called once after the last ticket.
    fn finish(&mut self) -> Result<(), CacheError>;
}

impl KeyRecorder for ManifestKeyWriter {
    fn finish(&mut self) -> Result<(), CacheError> {
        self.write_chunk()
    }

    fn record(&mut self, index: u64, keys: &[Option<ArtifactKey>]) -> Result<(), CacheError> {
        let chunk = index / KEYS_PER_CHUNK;
        if chunk != self.chunk {
            self.write_chunk()?;
            self.chunk = chunk;
        }
        self.keys.extend_from_slice(keys);
        Ok(())
    }
}

/// An in-memory store that counts what it is asked; for tests.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<ArtifactKey, Vec<u8>>>,
    pub gets: AtomicU64,
    pub puts: AtomicU64,
    pub flushes: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Overwrites an entry's bytes, to simulate corruption.
    pub fn corrupt(&self, key: &ArtifactKey, bytes: Vec<u8>) {
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

/// Group commits: many puts, one flush. A caller that has put its artifacts awaits [`durable`], which
/// returns once a flush that began after the call has completed; while one flush runs, the next
/// batch gathers. One flush per response would make the disk, not the model, the bottleneck.
///
/// [`durable`]: GroupCommit::durable
pub struct GroupCommit {
    store: Arc<dyn ArtifactStore>,
    requested: AtomicU64,
    wake: tokio::sync::Notify,
    flushed: tokio::sync::watch::Sender<Result<u64, String>>,
    /// False only for benchmarks that measure what durability costs.
    enabled: bool,
}

impl GroupCommit {
    pub fn new(store: Arc<dyn ArtifactStore>, enabled: bool) -> Arc<GroupCommit> {
        let (flushed, _) = tokio::sync::watch::channel(Ok(0));
        Arc::new(GroupCommit {
            store,
            requested: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            flushed,
            enabled,
        })
    }

    /// Runs the flusher until `shutdown` is dropped or fires. Spawn it on the runtime.
    pub async fn run(self: Arc<GroupCommit>, mut shutdown: tokio::sync::oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = &mut shutdown => return,
            }
            let target = self.requested.load(Ordering::Acquire);
            let store = Arc::clone(&self.store);
            let result = tokio::task::spawn_blocking(move || store.flush()).await;
            let outcome = match result {
                Ok(Ok(())) => Ok(target),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the flush task failed: {e}")),
            };
            // The previous state is of no interest; waiters compare against the new one.
            let _previous = self.flushed.send_replace(outcome);
        }
    }

    /// Waits until everything put before this call is durable.
    pub async fn durable(&self) -> Result<(), CacheError> {
        if !self.enabled {
            return Ok(());
        }
        let mine = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut receiver = self.flushed.subscribe();
        self.wake.notify_one();
        let outcome = receiver
            .wait_for(|state| match state {
                Ok(done) => *done >= mine,
                Err(_) => true,
            })
            .await;
        match outcome.as_deref() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(CacheError::Io {
                path: PathBuf::from(self.store.location()),
                reason: reason.clone(),
            }),
            Err(_) => Err(CacheError::Io {
                path: PathBuf::from(self.store.location()),
                reason: "the cache flusher stopped".to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(byte: u8) -> Artifact {
        Artifact {
            key: ArtifactKey([byte; 32]),
            node: "body".into(),
            output: NodeOutput::Text("hello".into()),
            usage: Usage::default(),
            cost_usd: Some(0.0),
            computed_cost_usd: Some(0.0),
            price: None,
            served_model: "m".into(),
            created_unix_ms: 1,
            latency_ms: 2,
            upstream: vec![("topic".into(), ArtifactKey([9; 32]))],
            request: RecordedRequest::default(),
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
        let store = SledStore::open(dir.path()).unwrap();
        match store.get(7, &ArtifactKey([1; 32])).unwrap() {
            Lookup::Hit(a) => assert_eq!(*a, artifact(1)),
            other => panic!("expected a hit, got {other:?}"),
        }
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_summary_decodes_from_an_artifacts_bytes() {
        let mut full = artifact(1);
        full.request.user = "a long rendered prompt".repeat(50);
        let bytes = encode(&full);
        match decode::<ArtifactSummary>(&full.key, &bytes) {
            Lookup::Hit(summary) => assert_eq!(*summary, full.clone().into_summary()),
            Lookup::Miss(reason) => panic!("expected a hit, got {reason:?}"),
        }
        // The key check holds for summaries too.
        assert!(matches!(
            decode::<ArtifactSummary>(&ArtifactKey([2; 32]), &bytes),
            Lookup::Miss(MissReason::Corrupt(_))
        ));
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
        let store = SledStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.get(4, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Hit(_)
        ));
        // Its schema is raised, so an older ticketbuild now refuses it instead of missing the
        // entries filed by ticket and paying for them again.
        let schema = store.tree(META_TREE).unwrap().get(SCHEMA_KEY).unwrap();
        assert_eq!(schema.as_deref(), Some(&CACHE_SCHEMA.to_le_bytes()[..]));
        let ticket = store.ticket_artifacts(4).unwrap();
        assert!(matches!(
            ticket.get(&store, &ArtifactKey([1; 32])).unwrap(),
            Lookup::Hit(_)
        ));
        store.put(4, &artifact(2)).unwrap();
        let keys: Vec<ArtifactKey> = store.entries().map(|e| e.unwrap().key).collect();
        // Slots sort before bare keys (ticket indices start with zero bytes); both are listed.
        assert_eq!(keys, [ArtifactKey([2; 32]), ArtifactKey([1; 32])]);
        drop(store);
        // The mark is kept: the old entries are still found after the cache has grown.
        let store = SledStore::open(dir.path()).unwrap();
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
            SledStore::open(dir.path()),
            Err(CacheError::NewerSchema { .. })
        ));
    }

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_batches_flushes() {
        let store = Arc::new(MemoryStore::new());
        let commit = GroupCommit::new(store.clone(), true);
        let mut waiters = Vec::new();
        for i in 0..200u8 {
            let commit = Arc::clone(&commit);
            let store = store.clone();
            waiters.push(tokio::spawn(async move {
                store.put(u64::from(i), &artifact(i)).unwrap();
                commit.durable().await.unwrap();
            }));
        }
        // All 200 wait before the flusher starts, so one flush must release them all.
        while commit.requested.load(Ordering::Acquire) < 200 {
            tokio::task::yield_now().await;
        }
        let (stop, shutdown) = tokio::sync::oneshot::channel();
        let flusher = tokio::spawn(Arc::clone(&commit).run(shutdown));
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(store.flushes.load(Ordering::Relaxed), 1);
        drop(stop);
        flusher.await.unwrap();
    }
}
