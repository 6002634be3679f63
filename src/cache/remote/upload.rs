//! Write-behind: answers go up to the remote cache after they are durable locally, in the
//! background, a bounded number at a time; what cannot go up now goes up with a later build.
//!
//! The engine hands over the (ticket, key) of each answer it generated once the local cache has
//! made it durable; the upload task reads the artifact back from the local cache (what goes up is
//! exactly what is stored) and puts it if absent. The queue is a file, not memory: a build can
//! generate answers far faster than a bucket takes them (the offline model makes thousands a
//! second), and memory must not grow with rows. In the cache folder's `remote/`:
//! - `pending`: uploads earlier builds owe, read first;
//! - `queue`: every key this build hands over, appended unbuffered, read behind the build;
//! - `failed`: the uploads of this build that failed (or that the remote, unreachable, never saw).
//!
//! When the build ends, `failed` becomes the new `pending` (or nothing, when every upload went
//! up). After a crash, the next build first folds all three into `pending`, so a key is owed
//! until an upload of it has succeeded; put-if-absent makes a repeated upload harmless.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{RemoteCache, RemoteCounts, object};
use crate::cache::{ArtifactStore, Lookup};
use crate::key::ArtifactKey;

/// Where the remote tier keeps its own files inside the cache folder.
pub(crate) const REMOTE_DIR: &str = "remote";
const PENDING_FILE: &str = "pending";
const QUEUE_FILE: &str = "queue";
const FAILED_FILE: &str = "failed";
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

/// How many whole records a file of owed uploads holds (a torn last record from a crash is
/// ignored).
fn records(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / RECORD as u64)
}

/// Folds what a build that did not finish left (`queue`, `failed`) into `pending`, streaming.
fn fold_leftovers(dir: &Path) -> std::io::Result<()> {
    let leftovers: Vec<PathBuf> = [QUEUE_FILE, FAILED_FILE]
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| records(path) > 0)
        .collect();
    if leftovers.is_empty() {
        return Ok(());
    }
    let mut pending = BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(PENDING_FILE))?,
    );
    for path in &leftovers {
        let whole = records(path) * RECORD as u64;
        let mut reader = BufReader::new(std::fs::File::open(path)?).take(whole);
        std::io::copy(&mut reader, &mut pending)?;
    }
    pending
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    for path in leftovers {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Whether the cache folder `cache_dir` holds uploads not yet done (a build must then reach the
/// remote even when there is nothing to build).
pub(crate) fn has_pending(cache_dir: &Path) -> bool {
    pending_count(cache_dir) > 0
}

/// How many uploads the cache folder owes the remote.
pub(crate) fn pending_count(cache_dir: &Path) -> u64 {
    let dir = cache_dir.join(REMOTE_DIR);
    [PENDING_FILE, QUEUE_FILE, FAILED_FILE]
        .iter()
        .map(|name| records(&dir.join(name)))
        .sum()
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
    dir: PathBuf,
    cache_dir: PathBuf,
    queue: Mutex<Option<std::fs::File>>,
    /// Told when a key is queued, and when the build is done queueing.
    more: Arc<Notify>,
    done: Arc<AtomicBool>,
    worker: Mutex<Option<JoinHandle<Outcome>>>,
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
        fold_leftovers(&dir)?;
        let from_earlier = records(&dir.join(PENDING_FILE));
        let queue = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.join(QUEUE_FILE))?;
        let more = Arc::new(Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        let worker = tokio::spawn(
            Worker {
                remote: Arc::clone(&remote),
                local,
                dir: dir.clone(),
                more: Arc::clone(&more),
                done: Arc::clone(&done),
            }
            .run(),
        );
        Ok(Uploads {
            remote,
            dir,
            cache_dir: cache_dir.to_path_buf(),
            queue: Mutex::new(Some(queue)),
            more,
            done,
            worker: Mutex::new(Some(worker)),
            from_earlier,
        })
    }

    /// Uploads the artifact `key` of `ticket`, just put in the local cache (it goes up once a
    /// flush has made it durable there). It is owed (in the queue file) until the upload succeeds.
    pub(crate) fn enqueue(&self, ticket: u64, key: ArtifactKey) {
        let job = Job { ticket, key };
        if let Some(file) = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            // Unbuffered on purpose: the upload task reads the file behind it, and a crash must
            // not lose the record of an owed upload. Failing to write it only risks that upload,
            // never the answer (it is in the local cache).
            let _ = file.write_all(&job.to_bytes());
        }
        self.more.notify_one();
    }

    /// Waits for every upload handed over, keeps the failed ones for the next build, and adds the
    /// build's counts to the cache folder's totals.
    pub(crate) async fn finish(&self) -> UploadSummary {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.done.store(true, Ordering::Release);
        self.more.notify_one();
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outcome = match worker {
            Some(worker) => worker.await.unwrap_or(Outcome {
                failed: 0,
                gave_up: true,
            }),
            None => Outcome::default(),
        };
        let failed = self.dir.join(FAILED_FILE);
        let pending = self.dir.join(PENDING_FILE);
        let deferred = if outcome.gave_up {
            pending_count(&self.cache_dir)
        } else {
            // Every queued key was tried: what failed is what is owed now.
            if outcome.failed > 0 {
                let _ = std::fs::rename(&failed, &pending);
            } else {
                let _ = std::fs::remove_file(&failed);
                let _ = std::fs::remove_file(&pending);
            }
            let _ = std::fs::remove_file(self.dir.join(QUEUE_FILE));
            outcome.failed
        };
        self.remote.count_upload_failed(deferred);
        let counts = self.remote.counts();
        add_to_totals(&self.cache_dir, &counts);
        UploadSummary {
            counts,
            deferred,
            from_earlier: self.from_earlier,
        }
    }
}

/// The upload task: reads `pending`, then `queue` behind the build, `upload_concurrency` uploads
/// at a time, and appends what fails to `failed`.
struct Worker {
    remote: Arc<RemoteCache>,
    local: Arc<dyn ArtifactStore>,
    dir: PathBuf,
    more: Arc<Notify>,
    done: Arc<AtomicBool>,
}

impl Worker {
    /// How many uploads failed (written to `failed`), and whether the queue was left unread.
    async fn run(self) -> Outcome {
        let mut failed = match std::fs::File::create(self.dir.join(FAILED_FILE)) {
            Ok(file) => BufWriter::new(file),
            Err(_) => {
                return Outcome {
                    failed: 0,
                    gave_up: true,
                };
            }
        };
        let mut count = 0u64;
        let mut gave_up = false;
        let mut in_flight = FuturesUnordered::new();
        let limit = self.remote.upload_concurrency;
        for name in [PENDING_FILE, QUEUE_FILE] {
            let Ok(mut file) = std::fs::File::open(self.dir.join(name)) else {
                continue;
            };
            let tail = name == QUEUE_FILE;
            let mut record = [0u8; RECORD];
            let mut filled = 0;
            // Keys are queued as they are put, before the local cache has made them durable:
            // the queue is read only up to what a flush has covered (`durable_upto` bytes), so
            // nothing goes up before it is safe locally.
            let mut position = 0u64;
            let mut durable_upto = 0u64;
            loop {
                if tail && position >= durable_upto {
                    let written = file.metadata().map_or(0, |m| m.len());
                    if written > position {
                        let local = Arc::clone(&self.local);
                        let flushed = tokio::task::spawn_blocking(move || local.flush()).await;
                        if !matches!(flushed, Ok(Ok(()))) {
                            // The local cache cannot flush (the build fails on it too): the rest
                            // of the queue stays owed, in its file, for the next build.
                            gave_up = true;
                            break;
                        }
                        durable_upto = written;
                    }
                }
                // Register for a wake-up before looking, so a key queued meanwhile is not missed.
                let notified = self.more.notified();
                let done = self.done.load(Ordering::Acquire);
                let room = if tail {
                    // Not past what is durable.
                    (durable_upto.saturating_sub(position) as usize).min(RECORD - filled)
                } else {
                    RECORD - filled
                };
                let read = if room == 0 {
                    0
                } else {
                    file.read(&mut record[filled..filled + room]).unwrap_or(0)
                };
                filled += read;
                position += read as u64;
                if filled == RECORD {
                    filled = 0;
                    if let Some(job) = Job::from_bytes(&record) {
                        if in_flight.len() >= limit {
                            if let Some(Some(job)) = in_flight.next().await {
                                count += write_failed(&mut failed, job);
                            }
                        }
                        in_flight.push(upload_one(&self.remote, self.local.as_ref(), job));
                    }
                    continue;
                }
                if read > 0 {
                    continue;
                }
                // At the end of what is written: `pending` is done; `queue` waits for more,
                // and once the build is done, ends where the file ends.
                if !tail {
                    break;
                }
                if file.metadata().map_or(0, |m| m.len()) > position {
                    // More is written than was known durable: the flush at the top covers it.
                    continue;
                }
                if done {
                    break;
                }
                tokio::select! {
                    () = notified => {}
                    Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                        if let Some(job) = result {
                            count += write_failed(&mut failed, job);
                        }
                    }
                }
            }
        }
        while let Some(result) = in_flight.next().await {
            if let Some(job) = result {
                count += write_failed(&mut failed, job);
            }
        }
        if let Ok(file) = failed.into_inner() {
            let _ = file.sync_all();
        }
        Outcome {
            failed: count,
            gave_up,
        }
    }
}

/// What the upload task ended with.
#[derive(Default)]
struct Outcome {
    failed: u64,
    /// The queue was not read to its end: every file stays, for the next build to fold in.
    gave_up: bool,
}

/// Records a failed upload; 1 when it was written (a failure to write it leaves the key in the
/// queue file, which the next build folds in after a crash anyway).
fn write_failed(failed: &mut BufWriter<std::fs::File>, job: Job) -> u64 {
    u64::from(failed.write_all(&job.to_bytes()).is_ok())
}

/// One upload; the job back when it must be tried again later.
async fn upload_one(remote: &RemoteCache, local: &dyn ArtifactStore, job: Job) -> Option<Job> {
    if !remote.writable() {
        // Configured read-write but unreachable since the start: kept for a later build.
        return Some(job);
    }
    let artifact = match local.get(job.ticket, &job.key) {
        Ok(Lookup::Hit(artifact)) => artifact,
        // Gone from the local cache (collected by `cache gc`) or unreadable: nothing to upload.
        Ok(Lookup::Miss(_)) => return None,
        Err(_) => return Some(job),
    };
    let bytes = object::encode(&artifact);
    remote.upload(&job.key, bytes).await.err().map(|_| job)
}
