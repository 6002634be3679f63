//! Build manifests: what the last builds were made of, kept in the cache.
//!
//! This module owns the record written after every build ([`Manifest`]): a hash of the build's inputs
//! (dataset.toml, prompts, profile, overrides, key schema), each node's fingerprint, the artifact key
//! of every (ticket, node) and the output files. It is what makes a no-op build instant (same inputs,
//! intact files: nothing to do), what `status` compares against to say *why* something would re-run,
//! and the roots `cache gc` keeps. Storage is the cache's [`ManifestStore`], which keeps a manifest as
//! the bytes encoded here; deciding what to rebuild is the engine's. The invariant: a manifest describes a build that finished writing its
//! files; a build that failed or was interrupted records none, so the next build never skips work.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, ManifestStore};
use crate::config::Config;
use crate::graph::Graph;
use crate::key::{ArtifactKey, KEY_VERSION};
use crate::provider::params_json;

/// The small part of a manifest: enough to decide a no-op build and to explain changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) created_unix_ms: u64,
    pub(crate) ticketbuild_version: String,
    pub(crate) key_version: u32,
    pub(crate) profile: Option<String>,
    /// BLAKE3 over everything a build reads: config bytes, prompt bytes, profile, overrides.
    pub(crate) inputs_hash: String,
    pub(crate) rows: u64,
    pub(crate) seed: u64,
    /// BLAKE3 over the languages and tables: what the ticket samples are drawn from.
    pub(crate) sample_hash: String,
    pub(crate) nodes: Vec<NodeFingerprint>,
    pub(crate) files: Vec<FileRecord>,
    /// Per node: artifacts the build ended with (reused + generated) and tickets skipped; lets a
    /// no-op build report what it holds without walking the tickets.
    pub(crate) node_totals: Vec<(String, u64, u64)>,
}

/// What a node was, as far as its requests are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeFingerprint {
    pub(crate) name: String,
    pub(crate) prompt: String,
    pub(crate) template_hash: String,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) base_url: Option<String>,
    pub(crate) params_json: String,
    pub(crate) output_kind: String,
    pub(crate) when: Option<String>,
}

/// An output file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    /// Modification time in nanoseconds since the epoch; with the size, it tells an intact file
    /// from an edited or replaced one without reading it.
    pub(crate) modified_ns: u128,
}

/// The artifact keys of one build: `keys[ticket * nodes + node]`, `None` for a node skipped by its
/// condition. Stored apart from the [`Manifest`] because it grows with rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ManifestKeys {
    pub(crate) nodes: usize,
    pub(crate) keys: Vec<Option<ArtifactKey>>,
}

impl ManifestKeys {
    pub(crate) fn get(&self, ticket: u64, node: usize) -> Option<ArtifactKey> {
        let index = usize::try_from(ticket).ok()? * self.nodes + node;
        self.keys.get(index).copied().flatten()
    }
}

impl Manifest {
    /// Describes a build of `config` and `graph` that wrote `files`.
    pub(crate) fn new(
        config: &Config,
        graph: &Graph,
        inputs_hash: String,
        files: &[PathBuf],
    ) -> Manifest {
        Manifest {
            created_unix_ms: now_ms(),
            ticketbuild_version: env!("CARGO_PKG_VERSION").to_string(),
            key_version: KEY_VERSION,
            profile: config.profile.clone(),
            inputs_hash,
            rows: config.rows,
            seed: config.seed,
            sample_hash: sample_hash(config),
            nodes: fingerprints(graph),
            files: files.iter().filter_map(|f| FileRecord::of(f)).collect(),
            node_totals: Vec::new(),
        }
    }

    /// The bytes the cache stores.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Invariant: a manifest holds only strings, numbers, paths and vectors, which bincode
        // always encodes.
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("a manifest is always encodable")
    }

    /// A manifest from the bytes the cache stores; `None` when they do not decode.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Manifest> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .ok()
            .map(|(manifest, _)| manifest)
    }

    /// The newest manifest in `store`, with its id; `None` when there is none or it does not
    /// decode (a cache that compares as "never built" is safe: the next build skips nothing).
    pub(crate) fn last(store: &dyn ManifestStore) -> Result<Option<(u64, Manifest)>, CacheError> {
        Ok(store
            .last_manifest()?
            .and_then(|(id, bytes)| Manifest::decode(&bytes).map(|m| (id, m))))
    }

    /// Whether every recorded output file is still exactly as written.
    pub(crate) fn files_intact(&self) -> bool {
        !self.files.is_empty()
            && self
                .files
                .iter()
                .all(|record| FileRecord::of(&record.path).as_ref() == Some(record))
    }
}

impl FileRecord {
    pub(crate) fn of(path: &Path) -> Option<FileRecord> {
        let metadata = std::fs::metadata(path).ok()?;
        let modified_ns = metadata
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(FileRecord {
            path: path.to_path_buf(),
            size: metadata.len(),
            modified_ns,
        })
    }
}

pub(crate) fn fingerprints(graph: &Graph) -> Vec<NodeFingerprint> {
    graph
        .nodes
        .iter()
        .map(|node| NodeFingerprint {
            name: node.name.clone(),
            prompt: node.prompt_display.display().to_string(),
            template_hash: node.template_hash.clone(),
            provider: node.model.provider.name().to_string(),
            model: node.model.model.clone(),
            base_url: node.model.base_url.clone(),
            params_json: params_json(&node.model.params),
            output_kind: format!("{:?}", node.config.output),
            when: node.config.when.clone(),
        })
        .collect()
}

/// Hash of what ticket samples are drawn from (besides seed and rows).
pub(crate) fn sample_hash(config: &Config) -> String {
    let mut hasher = blake3::Hasher::new();
    for (language, weight) in &config.languages {
        hasher.update(language.code().as_bytes());
        hasher.update(&weight.to_bits().to_le_bytes());
    }
    for table in &config.tables {
        hasher.update(&(table.name.len() as u64).to_le_bytes());
        hasher.update(table.name.as_bytes());
        for (category, weight) in &table.categories {
            hasher.update(&(category.len() as u64).to_le_bytes());
            hasher.update(category.as_bytes());
            hasher.update(&weight.to_bits().to_le_bytes());
        }
        // Only what differs from a plain weighted table, so the hashes of such tables stay
        // what they were.
        if let crate::sampling::TableMode::Exact { within_language } = table.mode {
            hasher.update(
                if within_language {
                    "exact within language"
                } else {
                    "exact"
                }
                .as_bytes(),
            );
        }
        if let Some(condition) = &table.by {
            hasher.update(b"by");
            hasher.update(&(condition.parent.len() as u64).to_le_bytes());
            hasher.update(condition.parent.as_bytes());
            for weight in condition.weights.iter().flatten() {
                hasher.update(&weight.to_bits().to_le_bytes());
            }
        }
    }
    // Samplers only when there are some, so the hashes of datasets without them stay.
    for sampler in &config.samplers {
        hasher.update(format!("{sampler:?}").as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Hash of everything a build reads. Equal hashes and intact files mean there is nothing to do.
pub(crate) fn inputs_hash(config: &Config, graph: &Graph) -> String {
    hash_inputs(config, graph, true)
}

/// What makes a dataset what it is: [`inputs_hash`] without where the files go. Shards of one
/// dataset, built on different machines into different folders, agree on it.
pub(crate) fn dataset_hash(config: &Config, graph: &Graph) -> String {
    hash_inputs(config, graph, false)
}

fn hash_inputs(config: &Config, graph: &Graph, with_output_dir: bool) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("ticketbuild 2026-11-25 build inputs v1");
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(env!("CARGO_PKG_VERSION").as_bytes());
    field(&KEY_VERSION.to_le_bytes());
    field(config.source.as_bytes());
    field(config.profile.as_deref().unwrap_or("").as_bytes());
    field(&config.rows.to_le_bytes());
    if with_output_dir {
        field(config.output_dir.display().to_string().as_bytes());
    }
    for node in &graph.nodes {
        field(node.name.as_bytes());
        field(node.template_hash.as_bytes());
    }
    if let Some(input) = &config.input {
        field(input.rows.content_hash().as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-11-25 13:20:11 UTC` for a Unix time in milliseconds (proleptic Gregorian calendar).
pub(crate) fn format_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_795_612_696_385), "2026-11-25 13:18:16 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
