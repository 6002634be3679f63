//! The shared remote cache: a tier of content-addressed objects under the local sled cache.
//!
//! This module owns talking to object storage (S3 and anything that speaks its API, Google Cloud
//! Storage, Azure Blob, a shared folder) through `object_store`: the start-up probe that decides
//! read-write or read-only, read-through lookups ([`RemoteCache::fetch`]), write-behind uploads
//! ([`upload`]) and the counts `build` and `cache stats` show. The engine decides *when* to ask
//! (after a local miss, before paying) and *what* to upload (what it generated, once durable
//! locally). The invariants: a remote object is served only after [`object::decode`] has checked
//! its key and checksum; the remote never fails a build (an unreachable or failing store is
//! reported and the build goes on with the local cache and the model); credentials come only
//! from the environment, never from dataset.toml.

pub(crate) mod object;
pub(crate) mod upload;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::cache::Artifact;
pub(crate) use crate::config::{RemoteMode, RemoteSettings};
use crate::key::ArtifactKey;

/// Consecutive failed requests after which the remote is taken as down for the rest of the
/// build: lookups stop asking it (each would wait for a timeout) and uploads are kept for later.
const FAILURES_UNTIL_DOWN: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the remote cache `{url}` cannot be set up: {reason}")]
    Setup { url: String, reason: String },
}

/// What the probe found the remote able to do, for this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    ReadWrite,
    /// Configured read-only, or the probe could not write: the reason.
    ReadOnly(Option<String>),
    /// Not reachable at all: the reason. Lookups skip it; uploads wait for a later build.
    Unreachable(String),
}

/// The outcome of a remote lookup.
#[derive(Debug)]
pub(crate) enum Fetched {
    Hit(Box<Artifact>),
    Miss,
    /// An object exists but cannot be used (reported as a notice). It is replaced once the answer
    /// is paid for again.
    Corrupt,
    /// The remote did not answer (or is down for this build).
    Unavailable,
}

/// What the remote did during one build (and, summed over builds, what `cache stats` shows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RemoteCounts {
    /// Lookups answered by the remote (local misses that cost no model call).
    pub(crate) hits: u64,
    /// Lookups the remote did not have either.
    pub(crate) misses: u64,
    /// Objects found damaged or under the wrong key: ignored, reported, replaced.
    pub(crate) corrupt: u64,
    /// Lookups that failed (the remote unreachable or erroring).
    pub(crate) errors: u64,
    /// Answers uploaded.
    pub(crate) uploaded: u64,
    /// Uploads the remote already had (another build put the same answer first).
    pub(crate) already_present: u64,
    /// Uploads that failed and are kept for the next build to retry.
    pub(crate) upload_failed: u64,
}

impl RemoteCounts {
    pub(crate) fn add(&mut self, other: &RemoteCounts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.corrupt += other.corrupt;
        self.errors += other.errors;
        self.uploaded += other.uploaded;
        self.already_present += other.already_present;
        self.upload_failed += other.upload_failed;
    }
}

#[derive(Default)]
struct AtomicCounts {
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    uploaded: AtomicU64,
    already_present: AtomicU64,
    upload_failed: AtomicU64,
}

impl AtomicCounts {
    fn snapshot(&self) -> RemoteCounts {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        RemoteCounts {
            hits: get(&self.hits),
            misses: get(&self.misses),
            corrupt: get(&self.corrupt),
            errors: get(&self.errors),
            uploaded: get(&self.uploaded),
            already_present: get(&self.already_present),
            upload_failed: get(&self.upload_failed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One remote cache, for one build.
pub(crate) struct RemoteCache {
    url: String,
    mode: RemoteMode,
    upload_concurrency: usize,
    store: Arc<dyn ObjectStore>,
    /// Lookups and uploads stop asking once this is set (see [`FAILURES_UNTIL_DOWN`]).
    down: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Uploads are allowed (read-write and the probe wrote).
    writable: AtomicBool,
    counts: AtomicCounts,
    /// Keys whose remote object was found corrupt: their upload overwrites it.
    corrupt_keys: Mutex<Vec<ArtifactKey>>,
    /// What the build should be told, once each.
    notices: Mutex<Vec<String>>,
}

impl RemoteCache {
    /// Sets up the client for `settings` (no request is made yet: see [`RemoteCache::probe`]).
    pub(crate) fn open(settings: &RemoteSettings) -> Result<RemoteCache, RemoteError> {
        let setup = |reason: String| RemoteError::Setup {
            url: settings.url.clone(),
            reason,
        };
        crate::tls::install_crypto_provider();
        let store = build_store(settings).map_err(setup)?;
        Ok(RemoteCache {
            url: settings.url.clone(),
            mode: settings.mode,
            upload_concurrency: settings.upload_concurrency.max(1),
            store,
            down: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            writable: AtomicBool::new(false),
            counts: AtomicCounts::default(),
            corrupt_keys: Mutex::new(Vec::new()),
            notices: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Finds out what the remote can do, the way sccache does: write a small probe object and
    /// read it back. A failed write means read-only (reported, not an error); a store that
    /// answers nothing is skipped for this build.
    pub(crate) async fn probe(&self) -> Access {
        let probe = ObjectPath::from(format!("{}/.probe", object::FORMAT_PREFIX));
        let access = match self.mode {
            RemoteMode::ReadOnly => match self.readable().await {
                Ok(()) => Access::ReadOnly(None),
                Err(reason) => Access::Unreachable(reason),
            },
            RemoteMode::ReadWrite => {
                let payload = PutPayload::from_static(b"ticketbuild remote cache probe\n");
                match self.store.put(&probe, payload).await {
                    Ok(_) => match self.store.get(&probe).await {
                        Ok(_) => Access::ReadWrite,
                        Err(e) => Access::Unreachable(describe(&e)),
                    },
                    Err(write) => match self.readable().await {
                        Ok(()) => Access::ReadOnly(Some(format!(
                            "writing a probe object failed: {}",
                            describe(&write)
                        ))),
                        Err(reason) => Access::Unreachable(reason),
                    },
                }
            }
        };
        self.writable
            .store(access == Access::ReadWrite, Ordering::Release);
        self.down
            .store(matches!(access, Access::Unreachable(_)), Ordering::Release);
        access
    }

    /// Whether the remote can be read: one listing of the object folder (a HEAD cannot tell a
    /// missing object from a missing bucket; a listing can).
    async fn readable(&self) -> Result<(), String> {
        match self
            .store
            .list_with_delimiter(Some(&ObjectPath::from(object::FORMAT_PREFIX)))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let reason = describe(&e);
                Err(if bucket_missing(&reason) {
                    format!("the bucket does not exist ({reason})")
                } else {
                    reason
                })
            }
        }
    }

    /// Whether answers go up to the remote (read-write, and the probe could write).
    pub(crate) fn writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Looks `key` up in the remote. Never fails: an error counts, is reported once, and is a
    /// miss to the build.
    pub(crate) async fn fetch(&self, key: &ArtifactKey) -> Fetched {
        if self.down.load(Ordering::Acquire) {
            return Fetched::Unavailable;
        }
        let path = object::object_path(key);
        let bytes = match self.store.get(&path).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        match bytes {
            Ok(bytes) => {
                self.succeeded();
                match object::decode(key, &bytes) {
                    Ok(artifact) => {
                        bump(&self.counts.hits);
                        Fetched::Hit(Box::new(artifact))
                    }
                    Err(reason) => {
                        bump(&self.counts.corrupt);
                        self.corrupt_keys
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(*key);
                        self.notice(format!(
                            "remote cache: the object for {} ({path}) is corrupt and was not used: {reason}; the answer is paid for again and the object replaced",
                            key.short()
                        ));
                        Fetched::Corrupt
                    }
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.succeeded();
                bump(&self.counts.misses);
                Fetched::Miss
            }
            Err(e) => {
                bump(&self.counts.errors);
                self.failed(&e);
                Fetched::Unavailable
            }
        }
    }

    /// Whether the upload of `key` must replace a corrupt object rather than leave what is there.
    pub(crate) fn replaces(&self, key: &ArtifactKey) -> bool {
        self.corrupt_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Uploads `object` under `key`: put-if-absent, or overwriting a corrupt object. `Ok(true)`
    /// when uploaded, `Ok(false)` when the remote already had it.
    pub(crate) async fn upload(
        &self,
        key: &ArtifactKey,
        object: Vec<u8>,
        replace: bool,
    ) -> Result<bool, String> {
        if self.down.load(Ordering::Acquire) {
            return Err("the remote cache is unreachable".into());
        }
        let mode = if replace || self.replaces(key) {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        match self
            .store
            .put_opts(&object::object_path(key), object.into(), mode.into())
            .await
        {
            Ok(_) => {
                self.succeeded();
                bump(&self.counts.uploaded);
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                self.succeeded();
                bump(&self.counts.already_present);
                Ok(false)
            }
            Err(e) => {
                self.failed(&e);
                Err(describe(&e))
            }
        }
    }

    /// Writes (or replaces) the small file `path` beside the artifacts (a shard's manifest).
    pub(crate) async fn put_file(&self, path: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.store
            .put(&ObjectPath::from(path), bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    /// The files under `prefix` (not artifacts: see [`RemoteCache::put_file`]), with their bytes.
    pub(crate) async fn files(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        use futures_util::TryStreamExt;
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&ObjectPath::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| describe(&e))?;
        let mut files = Vec::with_capacity(listed.len());
        for meta in listed {
            let bytes = match self.store.get(&meta.location).await {
                Ok(result) => result.bytes().await.map_err(|e| describe(&e))?,
                Err(e) => return Err(describe(&e)),
            };
            files.push((meta.location.to_string(), bytes.to_vec()));
        }
        files.sort();
        Ok(files)
    }

    fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self, error: &object_store::Error) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= FAILURES_UNTIL_DOWN && !self.down.swap(true, Ordering::AcqRel) {
            self.notice(format!(
                "remote cache {} stopped answering ({}); the build goes on with the local cache and the model, and what it could not upload is uploaded by the next build",
                self.url,
                describe(error)
            ));
        }
    }

    pub(crate) fn notice(&self, text: String) {
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text);
    }

    /// What the build has not been told yet.
    pub(crate) fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn counts(&self) -> RemoteCounts {
        self.counts.snapshot()
    }

    fn count_upload_failed(&self, n: u64) {
        self.counts.upload_failed.fetch_add(n, Ordering::Relaxed);
    }
}

/// One line for an object store error: its message without the chain of sources repeated.
fn describe(error: &object_store::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    condense_xml(&text)
}

/// A storage error body in XML (S3's, Azure's) shortened to its code and message, on one line.
fn condense_xml(text: &str) -> String {
    let Some(start) = text.find("<?xml").or_else(|| text.find("<Error>")) else {
        return text.replace('\n', " ");
    };
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let from = text.find(&open)? + open.len();
        let to = text[from..].find('<')? + from;
        Some(text[from..to].to_string())
    };
    let mut short = text[..start].trim_end().to_string();
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => short.push_str(&format!(" {code}: {message}")),
        (Some(code), None) => short.push_str(&format!(" {code}")),
        _ => {}
    }
    short.replace('\n', " ")
}

/// Whether an error says the bucket (or container) itself is missing.
fn bucket_missing(text: &str) -> bool {
    ["NoSuchBucket", "ContainerNotFound", "bucket does not exist"]
        .iter()
        .any(|sign| text.contains(sign))
}

/// How long a request may take, and how it is retried: short, since a remote that does not
/// answer must not hold a build up (the model and the local cache are always there).
fn client_options(url: &url::Url, endpoint: Option<&str>) -> (ClientOptions, RetryConfig) {
    let plain_http = endpoint.is_some_and(|e| e.starts_with("http://")) || url.scheme() == "http";
    let options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(60))
        .with_allow_http(plain_http);
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    (options, retry)
}

/// The object store for `settings`, rooted at the URL's path.
fn build_store(settings: &RemoteSettings) -> Result<Arc<dyn ObjectStore>, String> {
    let url = url::Url::parse(&settings.url).map_err(|e| e.to_string())?;
    let endpoint = settings
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    let (options, retry) = client_options(&url, endpoint.as_deref());
    let prefix = url.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_url(settings.url.as_str())
                .with_client_options(options)
                .with_retry(retry);
            if let Some(endpoint) = &endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &settings.region {
                builder = builder.with_region(region);
            }
            Arc::new(builder.build().map_err(|e| describe(&e))?)
        }
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(settings.url.as_str())
                .with_client_options(options)
                .with_retry(retry)
                .build()
                .map_err(|e| describe(&e))?,
        ),
        "az" | "azure" | "azblob" | "abfs" | "abfss" => {
            // `azblob://container/prefix` (OpenDAL's spelling) is `az://container/prefix`.
            let url = match url.scheme() {
                "azblob" => settings.url.replacen("azblob://", "az://", 1),
                _ => settings.url.clone(),
            };
            let mut builder = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(endpoint) = &endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            Arc::new(builder.build().map_err(|e| describe(&e))?)
        }
        "file" => {
            let folder = url
                .to_file_path()
                .map_err(|()| format!("`{}` is not a local folder", settings.url))?;
            std::fs::create_dir_all(&folder)
                .map_err(|e| format!("cannot create `{}`: {e}", folder.display()))?;
            return Ok(Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&folder)
                    .map_err(|e| describe(&e))?,
            ));
        }
        other => return Err(format!("`{other}://` is not supported")),
    };
    Ok(if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RemoteSettings {
        RemoteSettings {
            url: url.to_string(),
            mode: RemoteMode::ReadWrite,
            endpoint: None,
            region: Some("eu-central-1".into()),
            upload_concurrency: 4,
        }
    }

    #[test]
    fn every_documented_scheme_sets_up_without_a_request() {
        // Setting up reads configuration only; credentials are looked for when a request is made.
        for url in [
            "s3://bucket/prefix",
            "s3a://bucket",
            "gs://bucket/prefix",
            "abfss://container@account.dfs.core.windows.net/prefix",
        ] {
            if let Err(e) = RemoteCache::open(&settings(url)) {
                panic!("{url}: {e}");
            }
        }
        // Azure needs its account (AZURE_STORAGE_ACCOUNT_NAME, or in the URL): said at set-up.
        let Err(e) = RemoteCache::open(&settings("azblob://container/prefix")) else {
            panic!("an Azure container without an account was accepted");
        };
        assert!(e.to_string().contains("Account must be specified"), "{e}");
    }

    #[test]
    fn storage_errors_are_one_line_with_their_code() {
        let text = "Error performing PUT http://h/b/x in 3ms - 404 Not Found: <?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><RequestId>1</RequestId></Error>";
        let short = condense_xml(text);
        assert_eq!(
            short,
            "Error performing PUT http://h/b/x in 3ms - 404 Not Found: NoSuchBucket: The specified bucket does not exist"
        );
        assert!(bucket_missing(&short));
        assert_eq!(condense_xml("a\nb"), "a b");
    }
}
