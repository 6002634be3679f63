//! The batch ledger: every provider batch a build submitted, durable before the build goes on.
//!
//! This module owns `cache/batches/`: one JSON record per batch (`<tag>.json`: provider, model,
//! the provider's id, the artifact keys it holds, when it was submitted, its state and counts, and
//! once collected what it cost) and, once it has ended, its results (`<tag>.results.jsonl`: per
//! key, the reply body as the provider gave it, or why there is none). A record is written before
//! the batch is created (state `submitting`), again once the provider named it (`live`), and the
//! results are on disk before the record says `ended`; every write is a new file synced and renamed
//! over the old, so a crash leaves the previous record whole. The results stay until every answer
//! in them is in the artifact cache (then the record says `done`): a paid answer is never lost
//! between the provider and the cache. What a record means for a build is the engine's
//! (`engine::batch`); this module only keeps them.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::CacheError;

/// Where a batch is in its life, as the ledger knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BatchState {
    /// Recorded before the provider was asked to create it; it may or may not exist there.
    Submitting,
    /// Created at the provider, not ended yet.
    Live,
    /// Ended; its results are in the ledger, some not yet in the artifact cache.
    Ended,
    /// Ended and every answer is in the artifact cache.
    Done,
}

impl BatchState {
    /// Whether the provider may still be working on it (and billing it).
    pub(crate) fn is_running(self) -> bool {
        matches!(self, BatchState::Submitting | BatchState::Live)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            BatchState::Submitting => "submitting",
            BatchState::Live => "live",
            BatchState::Ended => "ended",
            BatchState::Done => "done",
        }
    }
}

/// One submitted batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchRecord {
    /// ticketbuild's name for it (hex of a hash of its keys and submission time); the file name,
    /// and the metadata attached where the API keeps metadata.
    pub(crate) tag: String,
    /// The `[models.NAME]` it was submitted for.
    pub(crate) model: String,
    pub(crate) provider: String,
    /// The provider's id, once it named one.
    pub(crate) id: Option<String>,
    /// The artifact keys of its requests (hex), in submission order.
    pub(crate) keys: Vec<String>,
    /// The ticket (index) of each key, where the artifact cache files its answer.
    #[serde(default)]
    pub(crate) tickets: Vec<u64>,
    pub(crate) submitted_unix_ms: u64,
    pub(crate) state: BatchState,
    /// The provider's own word for the batch's state when last asked.
    pub(crate) status: String,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    /// What its answers cost at the model's batch prices, in USD, once collected.
    pub(crate) cost_usd: Option<f64>,
}

/// One line of a batch's results: the reply body of key `key`, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResultLine {
    pub(crate) key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) answer: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unanswered: Option<String>,
    /// For an unanswered request: whether submitting it again can help.
    #[serde(default)]
    pub(crate) retry: bool,
}

/// The ledger of one cache folder.
#[derive(Debug, Clone)]
pub(crate) struct BatchLedger {
    dir: PathBuf,
}

impl BatchLedger {
    pub(crate) fn new(cache_dir: &Path) -> BatchLedger {
        BatchLedger {
            dir: cache_dir.join("batches"),
        }
    }

    /// Every record, oldest submission first.
    pub(crate) fn records(&self) -> Result<Vec<BatchRecord>, CacheError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&self.dir, e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| self.io(&self.dir, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let text = std::fs::read(&path).map_err(|e| self.io(&path, e))?;
            let record: BatchRecord =
                serde_json::from_slice(&text).map_err(|e| CacheError::Io {
                    path: path.clone(),
                    reason: format!("not a batch record ({e}); move it away to go on"),
                })?;
            records.push(record);
        }
        records.sort_by(|a, b| (a.submitted_unix_ms, &a.tag).cmp(&(b.submitted_unix_ms, &b.tag)));
        Ok(records)
    }

    /// Writes `record`, durably, over its previous version.
    pub(crate) fn write(&self, record: &BatchRecord) -> Result<(), CacheError> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| CacheError::Io {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        self.write_file(&format!("{}.json", record.tag), &json)
    }

    /// Writes batch `tag`'s results, durably (before its record says it ended).
    pub(crate) fn write_results(&self, tag: &str, lines: &[ResultLine]) -> Result<(), CacheError> {
        let mut text = Vec::new();
        for line in lines {
            // Invariant: a ResultLine is plain JSON data, which always serializes.
            serde_json::to_writer(&mut text, line).expect("a result line serializes");
            text.push(b'\n');
        }
        self.write_file(&format!("{tag}.results.jsonl"), &text)
    }

    /// Batch `tag`'s results; empty when there are none (any more).
    pub(crate) fn results(&self, tag: &str) -> Result<Vec<ResultLine>, CacheError> {
        let path = self.dir.join(format!("{tag}.results.jsonl"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(&path, e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| CacheError::Io {
                    path: path.clone(),
                    reason: format!("a damaged result line ({e})"),
                })
            })
            .collect()
    }

    /// Forgets batch `tag`'s results (every answer is in the artifact cache).
    pub(crate) fn drop_results(&self, tag: &str) -> Result<(), CacheError> {
        let path = self.dir.join(format!("{tag}.results.jsonl"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&path, e)),
        }
    }

    /// Forgets a record whose batch was never created.
    pub(crate) fn remove(&self, tag: &str) -> Result<(), CacheError> {
        self.drop_results(tag)?;
        let path = self.dir.join(format!("{tag}.json"));
        std::fs::remove_file(&path).map_err(|e| self.io(&path, e))
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        let path = self.dir.join(name);
        let partial = self.dir.join(format!(".{name}.partial"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)?;
            // The rename is durable once the folder is.
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| self.io(&path, e))
    }

    fn io(&self, path: &Path, e: std::io::Error) -> CacheError {
        CacheError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_results_round_trip_and_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = BatchLedger::new(dir.path());
        assert!(ledger.records().unwrap().is_empty());
        let mut record = BatchRecord {
            tag: "t1".into(),
            model: "m".into(),
            provider: "openai".into(),
            id: None,
            keys: vec!["aa".into()],
            tickets: vec![0],
            submitted_unix_ms: 5,
            state: BatchState::Submitting,
            status: String::new(),
            succeeded: 0,
            failed: 0,
            cost_usd: None,
        };
        ledger.write(&record).unwrap();
        record.id = Some("batch_1".into());
        record.state = BatchState::Live;
        ledger.write(&record).unwrap();
        assert_eq!(ledger.records().unwrap(), vec![record.clone()]);
        let lines = vec![
            ResultLine {
                key: "aa".into(),
                answer: Some(serde_json::json!({"x": 1})),
                unanswered: None,
                retry: false,
            },
            ResultLine {
                key: "bb".into(),
                answer: None,
                unanswered: Some("batch_expired".into()),
                retry: true,
            },
        ];
        ledger.write_results("t1", &lines).unwrap();
        assert_eq!(ledger.results("t1").unwrap(), lines);
        ledger.drop_results("t1").unwrap();
        assert!(ledger.results("t1").unwrap().is_empty());
        ledger.remove("t1").unwrap();
        assert!(ledger.records().unwrap().is_empty());
    }
}
