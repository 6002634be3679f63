//! The remote cache tier as a build uses it: asked after a local miss, fed after a durable put.
//!
//! This module owns the engine's side of `[cache.remote]`: [`Engine::read_through`] (a local
//! miss asks the remote before the model is paid; a hit is stored locally and used like any
//! cached answer, never counted as generated), [`Engine::upload_generated`] (what a ticket pays
//! for is queued as it is put, and goes up once the local cache holds it durably) and the [`RemoteReport`] a build ends with.
//! Talking to the store, verifying objects and keeping owed uploads are the cache's
//! (`crate::cache::remote`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Engine;
use crate::cache::remote::upload::Uploads;
use crate::cache::remote::{Access, Fetched, RemoteCache, RemoteCounts};
use crate::cache::{ArtifactSummary, CacheError, MissReason};
use crate::key::ArtifactKey;

/// The remote cache of a build: the client, what the probe found, and the uploads (absent when
/// the remote is read-only).
pub(crate) struct RemoteTier {
    pub(crate) cache: Arc<RemoteCache>,
    pub(crate) access: Access,
    pub(crate) uploads: Option<Uploads>,
    /// Without uploads this build (the remote read-only for it), what earlier builds owe it.
    pub(crate) owed: u64,
}

/// What the remote cache did in a build (`build --json`: `remote`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RemoteReport {
    pub(crate) url: String,
    /// "read-write", "read-only" or "unreachable", and why when it is not what was configured.
    pub(crate) access: String,
    pub(crate) access_reason: Option<String>,
    #[serde(flatten)]
    pub(crate) counts: RemoteCounts,
    /// Uploads kept for the next build (they failed, or the remote was unreachable).
    pub(crate) deferred: u64,
    /// Uploads earlier builds owed that this one did (or tried).
    pub(crate) from_earlier: u64,
}

impl RemoteTier {
    /// Waits for the uploads and says what the remote did.
    pub(crate) async fn report(&self) -> Option<RemoteReport> {
        let (counts, deferred, from_earlier) = match &self.uploads {
            Some(uploads) => {
                let summary = uploads.finish().await;
                (summary.counts, summary.deferred, summary.from_earlier)
            }
            None => (self.cache.counts(), self.owed, 0),
        };
        let (access, access_reason) = match &self.access {
            Access::ReadWrite => ("read-write", None),
            Access::ReadOnly(reason) => ("read-only", reason.clone()),
            Access::Unreachable(reason) => ("unreachable", Some(reason.clone())),
        };
        Some(RemoteReport {
            url: self.cache.url().to_string(),
            access: access.to_string(),
            access_reason,
            counts,
            deferred,
            from_earlier,
        })
    }
}

impl Engine {
    /// Uses `tier` as this build's remote cache.
    pub(crate) fn use_remote(&mut self, tier: RemoteTier) {
        self.remote = Some(tier);
    }

    /// Asks the remote for `key` after a local miss of ticket `index` (not after `--force`). A hit is stored in the
    /// local cache (durable before the ticket counts as done, like a generated answer) and
    /// returned; anything else is `None` and the answer is generated.
    pub(super) async fn read_through(
        &self,
        index: u64,
        key: &ArtifactKey,
        local_miss: &MissReason,
    ) -> Result<Option<ArtifactSummary>, CacheError> {
        let Some(tier) = &self.remote else {
            return Ok(None);
        };
        // Forced means paid for again, whatever any cache holds.
        if *local_miss == MissReason::Forced {
            return Ok(None);
        }
        match tier.cache.fetch(key).await {
            Fetched::Hit(artifact) => {
                self.store.put(index, &artifact)?;
                Ok(Some(artifact.into_summary()))
            }
            Fetched::Miss | Fetched::Corrupt | Fetched::Unavailable => Ok(None),
        }
    }

    /// Hands an answer ticket `index` just paid for to the uploads (they wait for it to be durable
    /// locally before it goes up). An answer regenerated with `--force` replaces the remote's, so
    /// that what the user asked for anew is what everyone gets.
    pub(super) fn upload_generated(&self, index: u64, key: &ArtifactKey, forced: bool) {
        if let Some(uploads) = self.remote.as_ref().and_then(|t| t.uploads.as_ref()) {
            uploads.enqueue(index, *key, forced);
        }
    }

    /// Passes on what the remote has to say.
    pub(super) fn tell_remote_notices(&self) {
        if let Some(tier) = &self.remote {
            for text in tier.cache.take_notices() {
                self.options.observer.notice(&text);
            }
        }
    }

    /// Waits for the uploads and says what the remote did in this build.
    pub(super) async fn finish_remote(&self) -> Option<RemoteReport> {
        let report = self.remote.as_ref()?.report().await;
        self.tell_remote_notices();
        report
    }
}
