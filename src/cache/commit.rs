//! Group commits: when a stored artifact is durable.
//!
//! This module owns the flusher that makes many puts durable with one flush, and the wait a
//! caller makes for its puts. The invariant: [`GroupCommit::durable`] returns only after a flush
//! that began after the call has completed, so everything put before the call is on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ArtifactStore, CacheError};

/// Group commits: many puts, one flush. A caller that has put its artifacts awaits [`durable`], which
/// returns once a flush that began after the call has completed; while one flush runs, the next
/// batch gathers. One flush per response would make the disk, not the model, the bottleneck.
///
/// [`durable`]: GroupCommit::durable
pub(crate) struct GroupCommit {
    store: Arc<dyn ArtifactStore>,
    requested: AtomicU64,
    wake: tokio::sync::Notify,
    flushed: tokio::sync::watch::Sender<Result<u64, String>>,
    /// False only for benchmarks that measure what durability costs.
    enabled: bool,
}

impl GroupCommit {
    pub(crate) fn new(store: Arc<dyn ArtifactStore>, enabled: bool) -> Arc<GroupCommit> {
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
    pub(crate) async fn run(
        self: Arc<GroupCommit>,
        mut shutdown: tokio::sync::oneshot::Receiver<()>,
    ) {
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
    pub(crate) async fn durable(&self) -> Result<(), CacheError> {
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
    use crate::cache::MemoryStore;
    use crate::cache::artifact::test_artifact as artifact;

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
