//! Sharded builds: which tickets a shard builds, what it leaves for `merge`, and what `merge`
//! checks before it combines the shards.
//!
//! `build --shard I/N` builds the tickets whose stable hash of index falls in shard I of N
//! ([`Shard::owns`]: the hash of the index alone, so growing `rows` never moves a ticket to
//! another shard) and writes, in its own folder (`out/shards/I-of-N/` by default):
//! - the shard's part of the dataset, in the configured formats, for a look;
//! - `artifacts.bin`: every artifact its tickets used or paid for (rejected draws and duplicate
//!   redraws included), each as the remote cache stores it (key and checksum in front);
//! - `shard.json` ([`ShardManifest`]): which shard, the dataset hash (config, prompts, rows, seed,
//!   input file: everything but where files go) and each node's prompt fingerprint.
//!
//! `merge` checks that every shard 1..N is there and was built from the same inputs as the
//! project it runs in (naming the shard and the prompt that differs), imports the artifacts into
//! the local cache, then builds the whole dataset from them: the same build an unsharded run
//! makes, so the files are byte-identical to it, duplicates across shards are resolved in ticket
//! order as `[quality]` asks, and a ticket no shard could build is retried. The invariant: merge
//! never mixes shards of different inputs, and imports only artifacts whose checksum and key hold.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::remote::{RemoteCache, object};
use crate::cache::{Cache, CacheError};
use crate::config::Config;
use crate::graph::Graph;
use crate::key::ArtifactKey;
use crate::manifest::{self, NodeFingerprint};

/// The folder of shard folders inside the output folder.
pub(crate) const SHARDS_DIR: &str = "shards";
/// The file a shard describes itself in.
pub(crate) const SHARD_FILE: &str = "shard.json";
/// The file of a shard's artifacts.
pub(crate) const ARTIFACTS_FILE: &str = "artifacts.bin";
const ARTIFACTS_MAGIC: &[u8; 8] = b"TBSHARD1";

/// One shard of N: tickets whose index hashes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    /// 1-based, as `--shard 1/4` writes it.
    pub(crate) index: u32,
    pub(crate) count: u32,
}

impl Shard {
    /// Reads `I/N` (1 <= I <= N); the error says what is expected.
    pub(crate) fn parse(text: &str) -> Result<Shard, String> {
        let expected = || {
            format!(
                "`{text}` is not a shard; write I/N with 1 <= I <= N, such as `--shard 1/4` (a Kubernetes Indexed Job passes `$((JOB_COMPLETION_INDEX + 1))/N`)"
            )
        };
        let (index, count) = text.split_once('/').ok_or_else(expected)?;
        let index: u32 = index.trim().parse().map_err(|_| expected())?;
        let count: u32 = count.trim().parse().map_err(|_| expected())?;
        if index == 0 || count == 0 || index > count {
            return Err(expected());
        }
        Ok(Shard { index, count })
    }

    /// Whether ticket `ticket` (its index in the dataset) is this shard's.
    pub(crate) fn owns(&self, ticket: u64) -> bool {
        shard_of(ticket, self.count) == self.index
    }

    /// How many of the tickets `0..rows` are this shard's.
    pub(crate) fn tickets(&self, rows: u64) -> u64 {
        (0..rows).filter(|t| self.owns(*t)).count() as u64
    }

    /// The folder name of the shard's files: `I-of-N`.
    pub(crate) fn folder_name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} of {}", self.index, self.count)
    }
}

/// The shard (1-based) ticket `ticket` belongs to among `count`: a keyed hash of the index only,
/// so the assignment never depends on `rows`, the seed or the order tickets finish in.
fn shard_of(ticket: u64, count: u32) -> u32 {
    let hash = blake3::Hasher::new_derive_key("ticketbuild 2026-12-02 shard assignment v1")
        .update(&ticket.to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) % u64::from(count)) as u32 + 1
}

/// What a shard build leaves in its folder for `merge` (`shard.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShardManifest {
    pub(crate) dataset: String,
    pub(crate) shard: u32,
    pub(crate) of: u32,
    /// [`manifest::dataset_hash`]: every shard of one dataset has the same.
    pub(crate) dataset_hash: String,
    pub(crate) rows: u64,
    pub(crate) seed: u64,
    pub(crate) profile: Option<String>,
    pub(crate) ticketbuild_version: String,
    pub(crate) nodes: Vec<NodeFingerprint>,
    /// The shard's tickets, those written, those that failed.
    pub(crate) tickets: u64,
    pub(crate) written: u64,
    pub(crate) failed: u64,
    /// Artifacts in `artifacts.bin`.
    pub(crate) artifacts: u64,
    /// Answers the shard could not upload to the remote cache (they are in its local cache and
    /// `artifacts.bin`; its next build uploads them).
    #[serde(default)]
    pub(crate) owed_uploads: u64,
}

impl ShardManifest {
    pub(crate) fn new(config: &Config, graph: &Graph, shard: Shard) -> ShardManifest {
        ShardManifest {
            dataset: config.name.clone(),
            shard: shard.index,
            of: shard.count,
            dataset_hash: manifest::dataset_hash(config, graph),
            rows: config.rows,
            seed: config.seed,
            profile: config.profile.clone(),
            ticketbuild_version: env!("CARGO_PKG_VERSION").to_string(),
            nodes: manifest::fingerprints(graph),
            tickets: shard.tickets(config.rows),
            written: 0,
            failed: 0,
            artifacts: 0,
            owed_uploads: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ShardError {
    #[error("cannot write `{path}`: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot read `{path}`: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

fn write_error(path: &Path) -> impl Fn(std::io::Error) -> ShardError + '_ {
    move |e| ShardError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes the shard's `artifacts.bin` (every artifact the cache files under the shard's tickets:
/// what its rows used, rejected draws and duplicate redraws) and `shard.json` into `folder`.
/// Written under temporary names and renamed, so `merge` never reads a half-written shard.
pub(crate) fn write_shard_files(
    folder: &Path,
    cache: &dyn Cache,
    shard: Shard,
    mut shard_manifest: ShardManifest,
) -> Result<ShardManifest, ShardError> {
    std::fs::create_dir_all(folder).map_err(write_error(folder))?;
    let path = folder.join(ARTIFACTS_FILE);
    let partial = folder.join(format!(".{ARTIFACTS_FILE}.partial"));
    let file = std::fs::File::create(&partial).map_err(write_error(&partial))?;
    let mut out = BufWriter::new(file);
    out.write_all(ARTIFACTS_MAGIC)
        .map_err(write_error(&partial))?;
    let mut written = 0u64;
    for entry in cache.entries() {
        let entry = entry?;
        let Some(ticket) = entry.ticket.filter(|t| shard.owns(*t)) else {
            continue;
        };
        if entry.damage.is_some() {
            // Not an artifact to ship: `cache verify` reports it.
            continue;
        }
        let bytes = object::encode_payload(&entry.key, &entry.value);
        out.write_all(&ticket.to_le_bytes())
            .and_then(|()| out.write_all(&(bytes.len() as u64).to_le_bytes()))
            .and_then(|()| out.write_all(&bytes))
            .map_err(write_error(&partial))?;
        written += 1;
    }
    let file = out
        .into_inner()
        .map_err(|e| write_error(&partial)(e.into_error()))?;
    file.sync_all().map_err(write_error(&partial))?;
    std::fs::rename(&partial, &path).map_err(write_error(&path))?;
    shard_manifest.artifacts = written;
    let json_path = folder.join(SHARD_FILE);
    let json_partial = folder.join(format!(".{SHARD_FILE}.partial"));
    let json = serde_json::to_vec_pretty(&shard_manifest).map_err(|e| ShardError::Write {
        path: json_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&json_partial, json).map_err(write_error(&json_partial))?;
    std::fs::rename(&json_partial, &json_path).map_err(write_error(&json_path))?;
    Ok(shard_manifest)
}

/// What importing a shard's artifacts came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Imported {
    pub(crate) artifacts: u64,
    /// Records whose checksum or key did not hold: skipped (the merge pays for them again only
    /// if no other source has them).
    pub(crate) corrupt: u64,
}

/// Puts every artifact of the shard folder `folder` into `cache`, checking each.
pub(crate) fn import_artifacts(folder: &Path, cache: &dyn Cache) -> Result<Imported, ShardError> {
    let path = folder.join(ARTIFACTS_FILE);
    let read_error = |reason: String| ShardError::Read {
        path: path.clone(),
        reason,
    };
    let file = std::fs::File::open(&path).map_err(|e| read_error(e.to_string()))?;
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|e| read_error(e.to_string()))?;
    if &magic != ARTIFACTS_MAGIC {
        return Err(read_error("not a ticketbuild shard artifacts file".into()));
    }
    let mut imported = Imported::default();
    let size = input
        .get_ref()
        .metadata()
        .map_err(|e| read_error(e.to_string()))?
        .len();
    let mut position = ARTIFACTS_MAGIC.len() as u64;
    let mut head = [0u8; 16];
    while position < size {
        input
            .read_exact(&mut head)
            .map_err(|e| read_error(format!("truncated: {e}")))?;
        let ticket = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let len = u64::from_le_bytes(head[8..].try_into().unwrap_or_default());
        position += 16;
        // The length is not covered by a checksum: it must fit in what is left of the file.
        if len > size - position {
            return Err(read_error(format!(
                "a record at byte {} says it is {len} bytes long, more than the file holds",
                position - 16
            )));
        }
        position += len;
        let mut bytes = vec![0u8; len as usize];
        input
            .read_exact(&mut bytes)
            .map_err(|e| read_error(format!("truncated: {e}")))?;
        let Some(key) = bytes
            .get(8..40)
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .map(ArtifactKey)
        else {
            imported.corrupt += 1;
            continue;
        };
        match object::decode(&key, &bytes) {
            Ok(artifact) => {
                cache.put(ticket, &artifact)?;
                imported.artifacts += 1;
            }
            Err(_) => imported.corrupt += 1,
        }
    }
    cache.flush()?;
    Ok(imported)
}

/// The shards found in `folder` (`*/shard.json`), or one line per problem: a shard missing, two
/// shard counts, a shard built from other inputs (naming what differs).
pub(crate) fn check_shards(
    folder: &Path,
    config: &Config,
    graph: &Graph,
) -> Result<Vec<(PathBuf, ShardManifest)>, Vec<String>> {
    let mut found: Vec<(PathBuf, ShardManifest)> = Vec::new();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) => {
            return Err(vec![format!(
                "cannot read the shards folder `{}`: {e}; build the shards with `ticketbuild build --shard I/N` first",
                folder.display()
            )]);
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(SHARD_FILE).is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let file = dir.join(SHARD_FILE);
        match std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<ShardManifest>(&b).map_err(|e| e.to_string()))
        {
            Ok(shard) => found.push((dir, shard)),
            Err(e) => problems.push(format!("`{}` cannot be read: {e}", file.display())),
        }
    }
    check_manifests(
        found,
        problems,
        &format!("`{}` (no */{SHARD_FILE})", folder.display()),
        config,
        graph,
    )
}

/// The shards found (each with where it was found), checked: every shard 1..N there once, all of
/// one N, all built from this project's inputs. `place` says where none was found.
pub(crate) fn check_manifests(
    mut found: Vec<(PathBuf, ShardManifest)>,
    mut problems: Vec<String>,
    place: &str,
    config: &Config,
    graph: &Graph,
) -> Result<Vec<(PathBuf, ShardManifest)>, Vec<String>> {
    if found.is_empty() && problems.is_empty() {
        return Err(vec![format!(
            "no shard in {place}; build the shards with `ticketbuild build --shard I/N` first"
        )]);
    }
    problems.extend(compare(&found, config, graph));
    if problems.is_empty() {
        found.sort_by_key(|(_, s)| s.shard);
        Ok(found)
    } else {
        Err(problems)
    }
}

/// Where a shard build puts its `shard.json` in the remote cache, for `merge --remote`.
pub(crate) fn remote_manifest_path(dataset: &str, shard: Shard) -> String {
    format!("{}/{dataset}/{}.json", SHARDS_DIR, shard.folder_name())
}

/// The shard manifests of `dataset` in the remote cache, each named by where it is, and those
/// that cannot be read.
pub(crate) async fn remote_manifests(
    remote: &RemoteCache,
    dataset: &str,
) -> (Vec<(PathBuf, ShardManifest)>, Vec<String>) {
    let prefix = format!("{SHARDS_DIR}/{dataset}");
    let mut found = Vec::new();
    let mut problems = Vec::new();
    match remote.files(&prefix).await {
        Ok(files) => {
            for (path, bytes) in files {
                let name = PathBuf::from(format!("{}/{path}", remote.url().trim_end_matches('/')));
                match serde_json::from_slice::<ShardManifest>(&bytes) {
                    Ok(manifest) => found.push((name, manifest)),
                    Err(e) => problems.push(format!("`{}` cannot be read: {e}", name.display())),
                }
            }
        }
        Err(reason) => problems.push(format!(
            "cannot list the shards in the remote cache {} ({reason})",
            remote.url()
        )),
    }
    (found, problems)
}

/// Problems with a set of shards against the project merging them.
fn compare(found: &[(PathBuf, ShardManifest)], config: &Config, graph: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    let expected = manifest::dataset_hash(config, graph);
    // N is that of the shards built from this project's inputs (the most of them, if shards of
    // two N are there); manifests of another N left from an earlier split are not this merge's.
    let mut counts: Vec<u32> = found
        .iter()
        .filter(|(_, s)| s.dataset_hash == expected)
        .map(|(_, s)| s.of)
        .collect();
    counts.sort_unstable();
    let Some(count) = counts
        .chunk_by(|a, b| a == b)
        .max_by_key(|run| run.len())
        .map(|run| run[0])
        .or_else(|| found.iter().map(|(_, s)| s.of).max())
    else {
        return problems;
    };
    let found: Vec<&(PathBuf, ShardManifest)> =
        found.iter().filter(|(_, s)| s.of == count).collect();
    for index in 1..=count {
        let copies = found
            .iter()
            .filter(|(_, s)| s.shard == index && s.of == count);
        match copies.count() {
            0 => problems.push(format!(
                "shard {index} of {count} is missing; build it with `ticketbuild build --shard {index}/{count}`"
            )),
            1 => {}
            n => problems.push(format!("shard {index} of {count} is there {n} times")),
        }
    }
    let here = manifest::fingerprints(graph);
    for (dir, shard) in &found {
        if shard.dataset_hash == expected && shard.written + shard.failed < shard.tickets {
            problems.push(format!(
                "shard {} of {} (`{}`) did not finish: {} of its {} tickets were built; build it again with `ticketbuild build --shard {}/{}`",
                shard.shard,
                shard.of,
                dir.display(),
                shard.written + shard.failed,
                shard.tickets,
                shard.shard,
                shard.of
            ));
        }
    }
    for (dir, shard) in found {
        if shard.dataset_hash == expected {
            continue;
        }
        problems.push(format!(
            "shard {} of {} (`{}`) was built from other inputs than this project: {}",
            shard.shard,
            shard.of,
            dir.display(),
            what_differs(shard, config, &here)
        ));
    }
    problems
}

/// What makes a shard's inputs differ from the project's, as precisely as the manifest tells.
fn what_differs(shard: &ShardManifest, config: &Config, here: &[NodeFingerprint]) -> String {
    let mut differences = Vec::new();
    for node in here {
        match shard.nodes.iter().find(|n| n.name == node.name) {
            None => differences.push(format!("it has no node `{}`", node.name)),
            Some(theirs) if theirs.template_hash != node.template_hash => differences.push(
                format!("prompt `{}` (node `{}`) differs", node.prompt, node.name),
            ),
            Some(theirs) if theirs != node => {
                differences.push(format!("the model of node `{}` differs", node.name))
            }
            Some(_) => {}
        }
    }
    if shard.rows != config.rows {
        differences.push(format!("rows {} here, {} there", config.rows, shard.rows));
    }
    if shard.profile != config.profile {
        differences.push(format!(
            "profile {} here, {} there",
            config.profile.as_deref().unwrap_or("(none)"),
            shard.profile.as_deref().unwrap_or("(none)")
        ));
    }
    if differences.is_empty() {
        differences.push("dataset.toml (or the input file) differs".into());
    }
    differences.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ticket_has_exactly_one_shard_whatever_the_rows() {
        for count in [1u32, 2, 3, 4, 7] {
            let shards: Vec<Shard> = (1..=count).map(|index| Shard { index, count }).collect();
            for ticket in 0..2_000u64 {
                assert_eq!(shards.iter().filter(|s| s.owns(ticket)).count(), 1);
            }
            // Balanced within a few percent.
            for shard in &shards {
                let share = shard.tickets(20_000) as f64 / 20_000.0;
                assert!(
                    (share - 1.0 / f64::from(count)).abs() < 0.02,
                    "{shard}: {share}"
                );
            }
        }
    }

    #[test]
    fn shards_parse_as_written_and_refuse_the_rest() {
        assert_eq!(Shard::parse("1/4"), Ok(Shard { index: 1, count: 4 }));
        assert_eq!(Shard::parse("4/4"), Ok(Shard { index: 4, count: 4 }));
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "1/4/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
