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

/// One upload: the ticket the artifact is filed under locally, its key, and whether it replaces
/// what the remote holds under that key (an answer regenerated with `--force`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    ticket: u64,
    key: ArtifactKey,
    replace: bool,
}

const RECORD: usize = 8 + 32 + 1;

impl Job {
    fn to_bytes(self) -> [u8; RECORD] {
        let mut bytes = [0; RECORD];
        bytes[..8].copy_from_slice(&self.ticket.to_le_bytes());
        bytes[8..40].copy_from_slice(&self.key.0);
        bytes[40] = u8::from(self.replace);
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Job> {
        Some(Job {
            ticket: u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?),
            key: ArtifactKey(bytes.get(8..40)?.try_into().ok()?),
            replace: *bytes.get(40)? == 1,
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
    let pending_path = dir.join(PENDING_FILE);
    let whole = records(&pending_path) * RECORD as u64;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&pending_path)?;
    // A torn record at the end (a crash during an earlier fold) would misalign all that follows.
    file.set_len(whole)?;
    let mut pending = BufWriter::new(file);
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
    /// flush has made it durable there); `replace` overwrites what the remote has under the key
    /// (an answer regenerated on purpose). It is owed (in the queue file) until the upload succeeds.
    pub(crate) fn enqueue(&self, ticket: u64, key: ArtifactKey, replace: bool) {
        let job = Job {
            ticket,
            key,
            replace,
        };
        if let Some(file) = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            // Unbuffered on purpose: the upload task reads the file behind it, and a crash must
            // not lose the record of an owed upload. Failing to write it only risks that upload,
            // never the answer (it is in the local cache); a part written is cut off, so the
            // records after it stay aligned.
            if file.write_all(&job.to_bytes()).is_err() {
                if let Ok(meta) = file.metadata() {
                    let _ = file.set_len(meta.len() / RECORD as u64 * RECORD as u64);
                }
            }
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
        let Some(worker) = worker else {
            // Finished already: nothing more to do, nothing to change.
            return UploadSummary {
                counts: self.remote.counts(),
                deferred: pending_count(&self.cache_dir),
                from_earlier: self.from_earlier,
            };
        };
        let outcome = worker.await.unwrap_or(Outcome {
            gave_up: true,
            ..Outcome::default()
        });
        let failed = self.dir.join(FAILED_FILE);
        let pending = self.dir.join(PENDING_FILE);
        let queue = self.dir.join(QUEUE_FILE);
        let deferred = if outcome.gave_up {
            // Every file stays, for the next build to fold in; owed is what did not settle.
            (records(&pending) + records(&queue)).saturating_sub(outcome.settled)
        } else {
            // Every queued key was tried: what failed is what is owed now.
            if outcome.failed > 0 {
                let _ = std::fs::rename(&failed, &pending);
            } else {
                let _ = std::fs::remove_file(&failed);
                let _ = std::fs::remove_file(&pending);
            }
            let _ = std::fs::remove_file(&queue);
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

impl Drop for Uploads {
    /// A build that ends without [`Uploads::finish`] (an error before its engine ran) lets the
    /// upload task end too; its files stay, and the next build folds them in.
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        self.more.notify_one();
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
    async fn run(self) -> Outcome {
        let Ok(file) = std::fs::File::create(self.dir.join(FAILED_FILE)) else {
            return Outcome {
                gave_up: true,
                ..Outcome::default()
            };
        };
        let mut tally = Tally {
            failed: BufWriter::new(file),
            outcome: Outcome::default(),
        };
        let mut in_flight = FuturesUnordered::new();
        'files: for name in [PENDING_FILE, QUEUE_FILE] {
            let Ok(file) = std::fs::File::open(self.dir.join(name)) else {
                continue;
            };
            let mut reader = Reader {
                file,
                tail: name == QUEUE_FILE,
                record: [0; RECORD],
                filled: 0,
                position: 0,
                durable_upto: 0,
            };
            loop {
                match self.next_job(&mut reader, &mut in_flight, &mut tally).await {
                    Next::Job(job) => {
                        if in_flight.len() >= self.remote.upload_concurrency {
                            if let Some(result) = in_flight.next().await {
                                tally.settle(result);
                            }
                        }
                        in_flight.push(upload_one(&self.remote, self.local.as_ref(), job));
                    }
                    Next::End => break,
                    Next::GiveUp => {
                        tally.outcome.gave_up = true;
                        break 'files;
                    }
                }
            }
        }
        while let Some(result) = in_flight.next().await {
            tally.settle(result);
        }
        match tally.failed.into_inner() {
            Ok(file) if file.sync_all().is_ok() => {}
            // A failure not recorded must not be forgotten: every file stays.
            _ => tally.outcome.gave_up = true,
        }
        tally.outcome
    }

    /// The next whole record of the file `reader` reads: at once when it is there (and, in the
    /// queue, covered by a flush of the local cache), else once more is queued; `End` at the end
    /// of `pending`, or of `queue` once the build is done queueing.
    async fn next_job<F>(
        &self,
        reader: &mut Reader,
        in_flight: &mut FuturesUnordered<F>,
        tally: &mut Tally,
    ) -> Next
    where
        F: std::future::Future<Output = Option<Job>>,
    {
        loop {
            // Register for a wake-up before looking, so a key queued meanwhile is not missed.
            let notified = self.more.notified();
            let done = self.done.load(Ordering::Acquire);
            let written = reader.file.metadata().map_or(0, |m| m.len());
            if reader.tail && reader.position >= reader.durable_upto && written > reader.position {
                let local = Arc::clone(&self.local);
                match tokio::task::spawn_blocking(move || local.flush()).await {
                    Ok(Ok(())) => reader.durable_upto = written,
                    // The local cache cannot flush (the build fails on it too): the rest of the
                    // queue stays owed, in its file.
                    _ => return Next::GiveUp,
                }
            }
            match reader.read() {
                Err(_) => return Next::GiveUp,
                Ok(Some(job)) => return Next::Job(job),
                Ok(None) if reader.position < written => continue,
                Ok(None) if !reader.tail || done => return Next::End,
                Ok(None) => {}
            }
            tokio::select! {
                () = notified => {}
                Some(result) = in_flight.next(), if !in_flight.is_empty() => tally.settle(result),
            }
        }
    }
}

/// Where the upload task is in one file of owed uploads.
struct Reader {
    file: std::fs::File,
    /// The queue, read behind the build and only as far as a flush has covered.
    tail: bool,
    record: [u8; RECORD],
    filled: usize,
    position: u64,
    durable_upto: u64,
}

impl Reader {
    /// The next whole record, if one can be read now.
    fn read(&mut self) -> std::io::Result<Option<Job>> {
        loop {
            let room = if self.tail {
                (self.durable_upto.saturating_sub(self.position) as usize).min(RECORD - self.filled)
            } else {
                RECORD - self.filled
            };
            if room == 0 {
                return Ok(None);
            }
            let read = self
                .file
                .read(&mut self.record[self.filled..self.filled + room])?;
            if read == 0 {
                return Ok(None);
            }
            self.filled += read;
            self.position += read as u64;
            if self.filled == RECORD {
                self.filled = 0;
                // Any 40 bytes decode; a record of a key no longer stored is skipped on upload.
                return Ok(Job::from_bytes(&self.record));
            }
        }
    }
}

enum Next {
    Job(Job),
    End,
    GiveUp,
}

/// What the upload task has settled, and the file of what failed.
struct Tally {
    failed: BufWriter<std::fs::File>,
    outcome: Outcome,
}

impl Tally {
    /// One upload's result: `Some` is a failure, recorded in `failed`.
    fn settle(&mut self, result: Option<Job>) {
        match result {
            None => self.outcome.settled += 1,
            Some(job) => {
                if self.failed.write_all(&job.to_bytes()).is_ok() {
                    self.outcome.failed += 1;
                } else {
                    self.outcome.gave_up = true;
                }
            }
        }
    }
}

/// What the upload task ended with.
#[derive(Default)]
struct Outcome {
    /// Uploads that failed, recorded in `failed`.
    failed: u64,
    /// Uploads that went up, were already there, or had nothing left to upload.
    settled: u64,
    /// The task stopped before the end of the queue, or could not record a failure: every file
    /// stays as it is, for the next build to fold in.
    gave_up: bool,
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
    remote
        .upload(&job.key, bytes, job.replace)
        .await
        .err()
        .map(|_| job)
}
