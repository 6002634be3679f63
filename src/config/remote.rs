//! `[cache.remote]`: the shared cache tier on object storage.
//!
//! This module owns checking `[cache.remote]` (`url`, `mode`, `endpoint`, `region`,
//! `upload_concurrency`) into [`RemoteSettings`], which the cache's remote tier is opened with. Credentials are never read from
//! dataset.toml: they come from each provider's standard environment variables
//! (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_KEY`, ...), so
//! a URL that carries one is refused (without quoting it) with where to put it instead.

use toml::Spanned;

use super::check::Checker;
use super::raw::{RawCache, RawRemote};
use crate::diag::Diagnostic;

/// The URL schemes `[cache.remote] url` accepts.
const SCHEMES: &[&str] = &[
    "s3", "s3a", "gs", "az", "azure", "azblob", "abfs", "abfss", "file",
];

/// `[cache.remote]` as checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteSettings {
    pub(crate) url: String,
    pub(crate) mode: RemoteMode,
    /// A custom endpoint (MinIO, R2, a test server); else `AWS_ENDPOINT_URL` or the provider's.
    pub(crate) endpoint: Option<String>,
    pub(crate) region: Option<String>,
    /// Uploads in flight at once.
    pub(crate) upload_concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoteMode {
    ReadWrite,
    ReadOnly,
}

impl Checker<'_> {
    pub(super) fn remote(&mut self, raw: Option<&Spanned<RawCache>>) -> Option<RemoteSettings> {
        let raw = raw?.get_ref().remote.as_ref()?;
        let remote = raw.get_ref();
        let url = match &remote.url {
            Some(url) => self.remote_url(url),
            None => {
                self.error(
                    raw.span(),
                    "cache.remote",
                    "[cache.remote] needs a `url`, such as \"s3://bucket/prefix\", \"gs://bucket/prefix\", \"az://container/prefix\" or \"file:///shared/folder\"",
                );
                None
            }
        };
        let mode = self.remote_mode(remote);
        if let Some(endpoint) = &remote.endpoint {
            if url::Url::parse(endpoint.get_ref()).is_err() {
                self.error(
                    endpoint.span(),
                    "cache.remote.endpoint",
                    format!(
                        "`{}` is not a URL; write it as \"https://host:port\"",
                        endpoint.get_ref()
                    ),
                );
                return None;
            }
        }
        let upload_concurrency = match &remote.upload_concurrency {
            Some(n) => self.positive(n, "cache.remote.upload_concurrency")? as usize,
            None => 16,
        };
        Some(RemoteSettings {
            url: url?,
            mode: mode?,
            endpoint: remote.endpoint.as_ref().map(|e| e.get_ref().clone()),
            region: remote.region.as_ref().map(|r| r.get_ref().clone()),
            upload_concurrency,
        })
    }

    fn remote_url(&mut self, url: &Spanned<String>) -> Option<String> {
        let parsed = match url::Url::parse(url.get_ref()) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.error(
                    url.span(),
                    "cache.remote.url",
                    format!("`{}` is not a URL: {e}", url.get_ref()),
                );
                return None;
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // The line is not quoted: it holds a credential.
            let diagnostic = Diagnostic::at(self.path, self.source, url.span(), "credentials do not belong in dataset.toml; set the storage's own environment variables instead (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS, AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY for Azure)")
                .with_key("cache.remote.url")
                .without_snippet();
            self.problems.push(diagnostic);
            return None;
        }
        if !SCHEMES.contains(&parsed.scheme()) {
            let schemes: Vec<String> = SCHEMES.iter().map(|s| format!("{s}://")).collect();
            self.error(
                url.span(),
                "cache.remote.url",
                format!(
                    "`{}://` is not a remote cache scheme; use one of {}",
                    parsed.scheme(),
                    schemes.join(", ")
                ),
            );
            return None;
        }
        Some(url.get_ref().clone())
    }

    fn remote_mode(&mut self, remote: &RawRemote) -> Option<RemoteMode> {
        match remote.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
            None | Some((_, "read-write")) => Some(RemoteMode::ReadWrite),
            Some((_, "read-only")) => Some(RemoteMode::ReadOnly),
            Some((mode, other)) => {
                self.error(
                    mode.span(),
                    "cache.remote.mode",
                    format!(
                        "`{other}` is not a remote cache mode; use \"read-write\" or \"read-only\""
                    ),
                );
                None
            }
        }
    }
}
