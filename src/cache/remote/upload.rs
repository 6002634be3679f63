//! Write-behind: answers go up to the remote cache after they are durable locally, in the
//! background, a bounded number at a time; what cannot go up now goes up with a later build.
//!
//! The engine hands over the (ticket, key) of each answer it generated once the local cache has
//! made it durable; the [`Uploads`] task reads the artifact back from the local cache (what goes
//! up is exactly what is stored) and puts it if absent. Every handed-over key is first appended to
//! `remote/pending` in the cache folder; when the build ends, that file is rewritten with the
//! uploads that failed (or removed when none did). A crash, a remote that went away or a build
//! started while it was unreachable thus leaves its keys there, and the next build that reaches
//! the remote uploads them first. Put-if-absent makes a repeated upload harmless.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{RemoteCache, RemoteCounts, object};
use crate::cache::{ArtifactStore, Lookup};
use crate::key::ArtifactKey;

/// Where the remote tier keeps its own files inside the cache folder.
pub(crate) const REMOTE_DIR: &str = "remote";
const PENDING_FILE: &str = "pending";
const COUNTS_FILE: &str = "counts.json";

/// One upload: the ticket the artifact is filed under locally, and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    ticket: u64,
    key: ArtifactKey,
}

const RECORD: usize = 8 + 32;

impl Job {
    fn to_bytes(self) -> [u8; RECORD] {
        let mut bytes = [0; RECORD];
        bytes[..8].copy_from_slice(&self.ticket.to_le_bytes());
        bytes[8..].copy_from_slice(&self.key.0);
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Job> {
        Some(Job {
            ticket: u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?),
            key: ArtifactKey(bytes.get(8..RECORD)?.try_into().ok()?),
        })
    }
}

/// Uploads still owed from earlier builds, as the pending file lists them (a torn last record
/// from a crash is ignored).
fn read_pending(path: &Path) -> BTreeSet<Job> {
    std::fs::read(path)
        .map(|bytes| {
            bytes
                .chunks_exact(RECORD)
                .filter_map(Job::from_bytes)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the cache folder `cache_dir` holds uploads not yet done (a build must then reach the
/// remote even when there is nothing to build).
pub(crate) fn has_pending(cache_dir: &Path) -> bool {
    std::fs::metadata(cache_dir.join(REMOTE_DIR).join(PENDING_FILE))
        .is_ok_and(|m| m.len() >= RECORD as u64)
}

/// How many uploads the cache folder owes the remote.
pub(crate) fn pending_count(cache_dir: &Path) -> u64 {
    read_pending(&cache_dir.join(REMOTE_DIR).join(PENDING_FILE)).len() as u64
}

/// The remote counts summed over every build of the cache folder (`cache stats`).
pub(crate) fn total_counts(cache_dir: &Path) -> Option<RemoteCounts> {
    let text = std::fs::read(cache_dir.join(REMOTE_DIR).join(COUNTS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Adds one build's counts to the folder's totals (a counter file only: failing is harmless).
fn add_to_totals(cache_dir: &Path, counts: &RemoteCounts) {
    let mut total = total_counts(cache_dir).unwrap_or_default();
    total.add(counts);
    let dir = cache_dir.join(REMOTE_DIR);
    let temporary = dir.join(format!(".{COUNTS_FILE}.partial"));
    if let Ok(json) = serde_json::to_vec_pretty(&total) {
        if std::fs::write(&temporary, json).is_ok() {
            let _ = std::fs::rename(&temporary, dir.join(COUNTS_FILE));
        }
    }
}

/// What a build's uploads came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UploadSummary {
    pub(crate) counts: RemoteCounts,
    /// Uploads kept for a later build (failed, or the remote unreachable).
    pub(crate) deferred: u64,
    /// Uploads owed by earlier builds that this one did.
    pub(crate) from_earlier: u64,
}

/// The uploads of one build.
pub(crate) struct Uploads {
    remote: Arc<RemoteCache>,
    cache_dir: PathBuf,
    pending: Mutex<Option<std::fs::File>>,
    sender: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    worker: Mutex<Option<JoinHandle<Vec<Job>>>>,
    from_earlier: u64,
}

impl Uploads {
    /// Starts the upload task of a build, with the uploads earlier builds left first. Needs a
    /// Tokio runtime.
    pub(crate) fn start(
        remote: Arc<RemoteCache>,
        local: Arc<dyn ArtifactStore>,
        cache_dir: &Path,
    ) -> std::io::Result<Uploads> {
        let dir = cache_dir.join(REMOTE_DIR);
        std::fs::create_dir_all(&dir)?;
        let pending_path = dir.join(PENDING_FILE);
        let earlier = read_pending(&pending_path);
        let pending = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pending_path)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let from_earlier = earlier.len() as u64;
        for job in earlier {
            let _ = sender.send(job);
        }
        let worker = tokio::spawn(run(Arc::clone(&remote), local, receiver));
        Ok(Uploads {
            remote,
            cache_dir: cache_dir.to_path_buf(),
            pending: Mutex::new(Some(pending)),
            sender: Mutex::new(Some(sender)),
            worker: Mutex::new(Some(worker)),
            from_earlier,
        })
    }

    /// Uploads the artifact `key` of `ticket`, which the local cache holds durably. It is owed
    /// (in the pending file) until the upload succeeds.
    pub(crate) fn enqueue(&self, ticket: u64, key: ArtifactKey) {
        let job = Job { ticket, key };
        if let Some(file) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            // Unbuffered on purpose: a crash must not lose the record of an owed upload. Failing
            // to write it only risks that upload, never the answer (it is in the local cache).
            let _ = file.write_all(&job.to_bytes());
        }
        if let Some(sender) = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = sender.send(job);
        }
    }

    /// Waits for every upload handed over, keeps the failed ones for the next build, and adds the
    /// build's counts to the cache folder's totals.
    pub(crate) async fn finish(&self) -> UploadSummary {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        let failed = match worker {
            Some(worker) => worker.await.unwrap_or_default(),
            None => Vec::new(),
        };
        drop(
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let dir = self.cache_dir.join(REMOTE_DIR);
        let path = dir.join(PENDING_FILE);
        let owed: BTreeSet<Job> = failed.into_iter().collect();
        if owed.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            let temporary = dir.join(format!(".{PENDING_FILE}.partial"));
            let bytes: Vec<u8> = owed.iter().flat_map(|job| job.to_bytes()).collect();
            if std::fs::write(&temporary, bytes).is_ok() {
                let _ = std::fs::rename(&temporary, &path);
            }
        }
        self.remote.count_upload_failed(owed.len() as u64);
        let counts = self.remote.counts();
        add_to_totals(&self.cache_dir, &counts);
        UploadSummary {
            counts,
            deferred: owed.len() as u64,
            from_earlier: self.from_earlier,
        }
    }
}

/// The upload task: `upload_concurrency` uploads at a time; returns the jobs that failed.
async fn run(
    remote: Arc<RemoteCache>,
    local: Arc<dyn ArtifactStore>,
    receiver: mpsc::UnboundedReceiver<Job>,
) -> Vec<Job> {
    let concurrency = remote.upload_concurrency;
    let jobs = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|job| (job, receiver))
    });
    let mut seen = BTreeSet::new();
    let results = jobs
        .filter(move |job| std::future::ready(seen.insert(*job)))
        .map(|job| {
            let remote = Arc::clone(&remote);
            let local = Arc::clone(&local);
            async move { upload_one(&remote, local.as_ref(), job).await.err() }
        })
        .buffer_unordered(concurrency);
    let mut results = std::pin::pin!(results);
    let mut failed = Vec::new();
    while let Some(result) = results.next().await {
        failed.extend(result);
    }
    failed
}

/// One upload; the job back when it must be tried again later.
async fn upload_one(remote: &RemoteCache, local: &dyn ArtifactStore, job: Job) -> Result<(), Job> {
    if !remote.writable() {
        // Configured read-write but unreachable since the start: kept for a later build.
        return Err(job);
    }
    let artifact = match local.get(job.ticket, &job.key) {
        Ok(Lookup::Hit(artifact)) => artifact,
        // Gone from the local cache (collected by `cache gc`) or unreadable: nothing to upload.
        Ok(Lookup::Miss(_)) => return Ok(()),
        Err(_) => return Err(job),
    };
    let bytes = object::encode(&artifact);
    remote
        .upload(&job.key, bytes)
        .await
        .map(|_| ())
        .map_err(|_| job)
}
