//! Provider batch APIs: many requests submitted at once, answered within hours at about half price.
//!
//! This module owns the HTTP side of batches for one model: [`BatchClient`] creates a batch from
//! (custom id, body) pairs, reads its state, lists and cancels batches, and reads its results back
//! as one [`ItemOutcome`] per custom id. Four dialects ([`BatchApi`]):
//! - OpenAI's Files + Batches (`POST /files` multipart with a JSONL of `/v1/chat/completions`
//!   requests, then `POST /batches`; output and error files matched by `custom_id`), which
//!   OpenAI-compatible servers such as LiteLLM's proxy serve too. ticketbuild attaches
//!   `metadata.ticketbuild_tag`, so a batch whose creation was never recorded (a crash between the
//!   two) is found again in the listing by its tag.
//! - Together's variant of it: the file is uploaded through a redirect (`POST /files` answers 302
//!   with where to `PUT` the bytes), lines carry no `method`/`url`, the created batch comes wrapped
//!   in `job`, states are upper case and the listing is a bare array. No metadata: a batch is found
//!   again through its input file, named after the tag.
//! - OpenRouter's batches: requests inline, one batch-level model (its `:batch` variant, the
//!   bodies then name none), results read page by page; no cancel.
//! - Anthropic's Message Batches (inline requests; results JSONL in any order).
//!
//! OpenRouter and Anthropic batches carry no metadata either: such a batch is found again by its
//! creation time and request count.
//!
//! Each body is exactly what the synchronous path sends (the adapter's), and each answer is judged
//! as a synchronous reply is (`http::judge`), so a cached answer serves both modes. What a batch
//! means for the build (the ledger, what is resubmitted) is the engine's; this module only talks.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

mod lines;

use lines::{files_line, messages_line};

use super::http::{Adapter, Secret, judge};
use super::retry::Attempt;
use super::{ProviderError, Request, Response};
use crate::config::ProviderKind;

/// The endpoint every OpenAI-style batch line is sent to.
const CHAT_ENDPOINT: &str = "/v1/chat/completions";

/// The metadata field that names a batch's ticketbuild tag.
pub(crate) const TAG_FIELD: &str = "ticketbuild_tag";

/// How often a batch request (create, status, results) is tried before it is an error.
const ATTEMPTS: u32 = 4;

/// Which batch API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchApi {
    /// OpenAI's Files + Batches (also LiteLLM's proxy and other compatible servers).
    OpenAi,
    /// Together's Files + Batches.
    Together,
    /// OpenRouter's inline batches.
    OpenRouter,
    /// Anthropic's Message Batches.
    Anthropic,
}

impl BatchApi {
    fn of(provider: ProviderKind) -> BatchApi {
        match provider {
            ProviderKind::Anthropic => BatchApi::Anthropic,
            ProviderKind::Together => BatchApi::Together,
            ProviderKind::OpenRouter => BatchApi::OpenRouter,
            _ => BatchApi::OpenAi,
        }
    }
}

/// A batch as the provider describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteBatch {
    pub(crate) id: String,
    /// The provider's own word for its state (`in_progress`, `completed`, `expired`, `ended`...).
    pub(crate) status: String,
    /// Whether it will change no more: its results can be read.
    pub(crate) ended: bool,
    pub(crate) total: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) created_unix: Option<u64>,
    /// The tag ticketbuild attached, when the API keeps metadata.
    pub(crate) tag: Option<String>,
    /// Percent done, where the API reports no counts (Together).
    pub(crate) progress: Option<f64>,
    input_file: Option<String>,
    output_file: Option<String>,
    error_file: Option<String>,
}

/// What became of one request of an ended batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ItemOutcome {
    /// The reply body, as the synchronous endpoint answers.
    Answered(Value),
    /// No answer: expired, cancelled or failed. `retry`: whether submitting it again can help
    /// (not for a request the provider rejected as invalid).
    Unanswered { reason: String, retry: bool },
}

/// A batch request that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BatchError(pub(crate) String);

/// The batch API of one model.
pub(crate) struct BatchClient {
    api: BatchApi,
    provider: ProviderKind,
    /// The model as configured (OpenRouter's batch-level model is its `:batch` variant).
    model: String,
    root: String,
    client: reqwest::Client,
    adapter: Box<dyn Adapter>,
    secret: Option<Secret>,
}

impl BatchClient {
    pub(crate) fn new(
        provider: ProviderKind,
        model: &str,
        root: &str,
        adapter: Box<dyn Adapter>,
        secret: Option<Secret>,
    ) -> Result<BatchClient, ProviderError> {
        let redact = |text: String| match &secret {
            Some(secret) => secret.redact(&text),
            None => text,
        };
        let headers = adapter
            .headers(secret.as_ref())
            .map_err(|e| ProviderError::Fatal(redact(e)))?;
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("ticketbuild/", env!("CARGO_PKG_VERSION")))
            .gzip(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            // Together's upload answers 302 with where to put the file: followed by hand.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Fatal(redact(format!("cannot set up HTTP: {e}"))))?;
        Ok(BatchClient {
            api: BatchApi::of(provider),
            provider,
            model: model.to_string(),
            root: root.trim_end_matches('/').to_string(),
            client,
            adapter,
            secret,
        })
    }

    pub(crate) fn api(&self) -> BatchApi {
        self.api
    }

    /// The most requests, and bytes of requests, one batch may hold.
    pub(crate) fn capacity(&self) -> (usize, usize) {
        match (self.api, self.provider) {
            (BatchApi::Anthropic, _) => (100_000, 256 << 20),
            (BatchApi::OpenRouter, _) => (5_000, 200 << 20),
            (BatchApi::OpenAi, ProviderKind::OpenAi) => (50_000, 200 << 20),
            (BatchApi::OpenAi | BatchApi::Together, _) => (50_000, 100 << 20),
        }
    }

    /// The body the synchronous path would send for `request`.
    pub(crate) fn body(&self, request: &Request) -> Value {
        self.adapter.body(request)
    }

    /// The usage a reply body reports, for the ledger's cost (`None` when it does not parse).
    pub(crate) fn usage(&self, body: &Value) -> Option<crate::cost::Usage> {
        self.adapter.parse_reply(body).ok().map(|reply| reply.usage)
    }

    /// One batch line's answer judged as a synchronous reply is.
    pub(crate) fn response(
        &self,
        body: &Value,
        request: &Request,
    ) -> Result<Response, ProviderError> {
        match judge(self.adapter.as_ref(), body, request, None) {
            Attempt::Done(response) => Ok(response),
            Attempt::Invalid(e) => Err(ProviderError::Invalid(e)),
            Attempt::Malformed(reason) => Err(ProviderError::Malformed(reason)),
            Attempt::Retry { reason, .. } => Err(ProviderError::Transient(reason)),
            Attempt::Fatal { message, .. } => Err(ProviderError::Fatal(message)),
        }
    }

    /// Creates a batch of `items` (custom id, body), tagged `tag`.
    pub(crate) async fn create(
        &self,
        tag: &str,
        items: &[(String, Value)],
    ) -> Result<RemoteBatch, BatchError> {
        let batch = match self.api {
            BatchApi::OpenAi | BatchApi::Together => {
                let together = self.api == BatchApi::Together;
                let mut jsonl = String::new();
                for (custom_id, body) in items {
                    let line = if together {
                        json!({"custom_id": custom_id, "body": body})
                    } else {
                        json!({"custom_id": custom_id, "method": "POST",
                            "url": CHAT_ENDPOINT, "body": body})
                    };
                    jsonl.push_str(&line.to_string());
                    jsonl.push('\n');
                }
                let name = input_file_name(tag);
                let file_id = if together {
                    self.upload_by_redirect(&name, jsonl).await?
                } else {
                    let file = self.upload(&name, jsonl).await?;
                    match file["id"].as_str() {
                        Some(id) => id.to_string(),
                        None => {
                            return Err(BatchError(format!(
                                "the file upload answered without an id: {}",
                                quote(&file.to_string())
                            )));
                        }
                    }
                };
                let mut body = json!({"input_file_id": file_id, "endpoint": CHAT_ENDPOINT,
                    "completion_window": "24h"});
                if !together {
                    body["metadata"] = json!({TAG_FIELD: tag});
                }
                self.create_once("batches", &body).await?
            }
            BatchApi::OpenRouter => {
                // One batch-level model, its batch variant; the bodies then name none (the
                // API wants them to agree).
                let model = if self.model.ends_with(":batch") {
                    self.model.clone()
                } else {
                    format!("{}:batch", self.model)
                };
                let requests: Vec<Value> = items
                    .iter()
                    .map(|(custom_id, body)| {
                        let mut body = body.clone();
                        if let Some(fields) = body.as_object_mut() {
                            fields.remove("model");
                        }
                        json!({"custom_id": custom_id, "body": body})
                    })
                    .collect();
                // Keys in sorted order: `endpoint` and `model` before `requests`, as the API,
                // which reads the body as a stream, requires.
                let body = json!({"completion_window": "24h", "endpoint": CHAT_ENDPOINT,
                    "model": model, "requests": requests});
                self.create_once("batches", &body).await?
            }
            BatchApi::Anthropic => {
                let requests: Vec<Value> = items
                    .iter()
                    .map(|(custom_id, body)| json!({"custom_id": custom_id, "params": body}))
                    .collect();
                let body = json!({ "requests": requests });
                self.create_once("messages/batches", &body).await?
            }
        };
        self.describe(&batch)
    }

    /// The batch `id` now.
    pub(crate) async fn get(&self, id: &str) -> Result<RemoteBatch, BatchError> {
        let batch = self
            .send(false, &format!("{}/{id}", self.batches()), None)
            .await?;
        self.describe(&batch)
    }

    /// The provider's batches created since `since` (unix seconds), newest first, page by page
    /// (Together's listing has no pages).
    pub(crate) async fn list(&self, since: u64) -> Result<Vec<RemoteBatch>, BatchError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = match self.api {
                BatchApi::Together => self.batches().to_string(),
                _ => format!("{}?limit=100", self.batches()),
            };
            if let Some(after) = &after {
                let name = if self.api == BatchApi::Anthropic {
                    "after_id"
                } else {
                    "after"
                };
                path.push_str(&format!("&{name}={after}"));
            }
            let list = self.send(false, &path, None).await?;
            // Together answers a bare array; the others `{"data": [...]}`.
            let Some(data) = list.as_array().or(list["data"].as_array()) else {
                return Err(BatchError(format!(
                    "the batch listing has no `data`: {}",
                    quote(&list.to_string())
                )));
            };
            let page: Vec<RemoteBatch> = data
                .iter()
                .map(|b| self.describe(b))
                .collect::<Result<_, _>>()?;
            let older = page
                .iter()
                .any(|b| b.created_unix.is_some_and(|at| at < since));
            let last = page.last().map(|b| b.id.clone());
            found.extend(page);
            let more = list["has_more"] == json!(true);
            match (more && !older, last) {
                (true, Some(last)) => {
                    after = Some(list["last_id"].as_str().map_or(last, str::to_string))
                }
                _ => break,
            }
        }
        Ok(found)
    }

    /// The name of the input file of batch `batch` (Together keeps no metadata: the file's name
    /// carries the tag).
    pub(crate) async fn input_file_name(
        &self,
        batch: &RemoteBatch,
    ) -> Result<Option<String>, BatchError> {
        let Some(file) = &batch.input_file else {
            return Ok(None);
        };
        let object = self.send(false, &format!("files/{file}"), None).await?;
        Ok(object["filename"].as_str().map(str::to_string))
    }

    /// Asks the provider to cancel batch `id` (requests already answered stay answered).
    pub(crate) async fn cancel(&self, id: &str) -> Result<RemoteBatch, BatchError> {
        if self.api == BatchApi::OpenRouter {
            return Err(self.error(
                "OpenRouter batches cannot be cancelled; it ends within its 24-hour window"
                    .to_string(),
            ));
        }
        let batch = self
            .send(true, &format!("{}/{id}/cancel", self.batches()), None)
            .await?;
        self.describe(&batch)
    }

    /// Every result of an ended batch, by custom id (in the provider's order, which is any).
    pub(crate) async fn results(
        &self,
        batch: &RemoteBatch,
    ) -> Result<Vec<(String, ItemOutcome)>, BatchError> {
        let mut out = Vec::new();
        match self.api {
            BatchApi::OpenAi | BatchApi::Together => {
                for file in [&batch.output_file, &batch.error_file]
                    .into_iter()
                    .flatten()
                {
                    let text = self.text(&format!("files/{file}/content")).await?;
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        out.push(files_line(&parse_json(line)?)?);
                    }
                }
            }
            BatchApi::OpenRouter => {
                let mut cursor: Option<String> = None;
                loop {
                    let mut path = format!("batches/{}/results?limit=1000", batch.id);
                    if let Some(cursor) = &cursor {
                        let cursor: String =
                            url::form_urlencoded::byte_serialize(cursor.as_bytes()).collect();
                        path.push_str(&format!("&cursor={cursor}"));
                    }
                    let page = self.send(false, &path, None).await?;
                    for row in page["data"].as_array().into_iter().flatten() {
                        out.push(files_line(row)?);
                    }
                    cursor = page["next_cursor"].as_str().map(str::to_string);
                    if cursor.is_none() || page["has_more"] == json!(false) {
                        break;
                    }
                }
            }
            BatchApi::Anthropic => {
                let text = self
                    .text(&format!("messages/batches/{}/results", batch.id))
                    .await?;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    out.push(messages_line(line)?);
                }
            }
        }
        Ok(out)
    }

    fn batches(&self) -> &'static str {
        match self.api {
            BatchApi::Anthropic => "messages/batches",
            _ => "batches",
        }
    }

    /// A batch object in the provider's shape, read.
    fn describe(&self, batch: &Value) -> Result<RemoteBatch, BatchError> {
        // Together wraps a created batch in `job`.
        let batch = if batch["job"].is_object() {
            &batch["job"]
        } else {
            batch
        };
        let Some(id) = batch["id"].as_str() else {
            return Err(BatchError(format!(
                "a batch without an id: {}",
                quote(&batch.to_string())
            )));
        };
        let count = |field: &str| batch["request_counts"][field].as_u64().unwrap_or(0);
        let created_unix = batch["created_at"].as_u64().or_else(|| {
            let text = batch["created_at"].as_str()?;
            let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
            u64::try_from(time.timestamp()).ok()
        });
        let text = |field: &str| batch[field].as_str().map(str::to_string);
        if self.api == BatchApi::Anthropic {
            let status = text("processing_status").unwrap_or_else(|| "unknown".to_string());
            let failed = count("errored") + count("canceled") + count("expired");
            return Ok(RemoteBatch {
                id: id.to_string(),
                ended: status == "ended",
                total: count("processing") + count("succeeded") + failed,
                succeeded: count("succeeded"),
                failed,
                created_unix,
                tag: None,
                progress: None,
                input_file: None,
                output_file: None,
                error_file: None,
                status,
            });
        }
        // Together writes states in upper case.
        let status = text("status")
            .unwrap_or_else(|| "unknown".to_string())
            .to_lowercase();
        Ok(RemoteBatch {
            id: id.to_string(),
            ended: matches!(
                status.as_str(),
                "completed" | "expired" | "cancelled" | "failed"
            ),
            total: count("total"),
            succeeded: count("completed"),
            failed: count("failed"),
            created_unix,
            tag: batch["metadata"][TAG_FIELD].as_str().map(str::to_string),
            progress: batch["progress"].as_f64(),
            input_file: text("input_file_id"),
            output_file: text("output_file_id"),
            error_file: text("error_file_id"),
            status,
        })
    }

    /// Uploads `jsonl` the way Together's clients do: `POST /files` (a form) answers 302 with
    /// where to `PUT` the bytes and the file's id; the id.
    async fn upload_by_redirect(&self, name: &str, jsonl: String) -> Result<String, BatchError> {
        let url = format!("{}/files", self.root);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("purpose", "batch-api")
            .append_pair("file_name", name)
            .append_pair("file_type", "jsonl")
            .finish();
        let response = self
            .client
            .post(&url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| self.error(format!("no answer to the upload ({e})")))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (Some(location), Some(file_id)) = (header("location"), header("x-together-file-id"))
        else {
            let text = response.text().await.unwrap_or_default();
            return Err(self.error(format!(
                "the upload answered HTTP {status} without a place to put the file: {}",
                quote(&text)
            )));
        };
        // The place may be relative to the API.
        let target = reqwest::Url::parse(&url)
            .and_then(|base| base.join(&location))
            .map_err(|e| self.error(format!("the upload named no usable place ({e})")))?;
        let bytes = jsonl.into_bytes();
        self.request(|| {
            self.client
                .put(target.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(bytes.clone())
        })
        .await?;
        Ok(file_id)
    }

    /// Uploads `jsonl` as a batch input file (multipart: `purpose`, `file`); the file object.
    async fn upload(&self, name: &str, jsonl: String) -> Result<Value, BatchError> {
        let boundary = format!("ticketbuild-{}", blake3::hash(jsonl.as_bytes()).to_hex());
        let mut body = Vec::with_capacity(jsonl.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(jsonl.as_bytes());
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type =
            HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
                .map_err(|e| BatchError(e.to_string()))?;
        let url = format!("{}/files", self.root);
        let text = self
            .request(|| {
                self.client
                    .post(&url)
                    .header(CONTENT_TYPE, content_type.clone())
                    .body(body.clone())
            })
            .await?;
        parse_json(&text)
    }

    /// A JSON request to `{root}/{path}`; the JSON answer.
    async fn send(
        &self,
        post: bool,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, BatchError> {
        let url = format!("{}/{path}", self.root);
        let text = self
            .request(|| {
                let builder = if post {
                    self.client.post(&url)
                } else {
                    self.client.get(&url)
                };
                match body {
                    Some(body) => builder.json(body),
                    None if post => builder.header(CONTENT_TYPE, "application/json"),
                    None => builder,
                }
            })
            .await?;
        parse_json(&text)
    }

    /// Creates a batch: one attempt only. Trying again after a timeout or a lost answer could
    /// create a second batch, paid for and never collected; a failure leaves the ledger's record
    /// `submitting`, and the next build looks for the batch in the provider's listing.
    async fn create_once(&self, path: &str, body: &Value) -> Result<Value, BatchError> {
        let url = format!("{}/{path}", self.root);
        let response = self
            .client
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(|e| self.error(format!("no answer to the batch's creation ({e})")))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|json| self.adapter.error_message(&json))
                .unwrap_or_else(|| quote(&text));
            return Err(self.error(format!("HTTP {status}: {message}")));
        }
        parse_json(&text)
    }

    /// The text at `{root}/{path}` (a results or output file).
    async fn text(&self, path: &str) -> Result<String, BatchError> {
        let url = format!("{}/{path}", self.root);
        self.request(|| self.client.get(&url)).await
    }

    /// Sends what `build` makes, again after a pause on a transport error, a 429 or a 5xx; the
    /// body of a 2xx answer.
    async fn request(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<String, BatchError> {
        let mut pause = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let failure = match build().send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        return Ok(text);
                    }
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|json| self.adapter.error_message(&json))
                        .unwrap_or_else(|| quote(&text));
                    let failure = format!("HTTP {status}: {message}");
                    if status != 429 && status < 500 {
                        return Err(self.error(failure));
                    }
                    failure
                }
                Err(e) => format!("no answer ({e})"),
            };
            if attempt >= ATTEMPTS {
                return Err(self.error(format!("{failure}; gave up after {attempt} attempts")));
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
            attempt += 1;
        }
    }

    fn error(&self, message: String) -> BatchError {
        let message = format!("{} batch API: {message}", self.provider);
        BatchError(match &self.secret {
            Some(secret) => secret.redact(&message),
            None => message,
        })
    }
}

/// The name of a batch's input file: it carries the tag, for APIs without metadata.
fn input_file_name(tag: &str) -> String {
    format!("ticketbuild-{tag}.jsonl")
}

/// Whether `name` is the input file of the batch tagged `tag`.
pub(crate) fn names_input_of(name: &str, tag: &str) -> bool {
    name == input_file_name(tag)
}

fn parse_json(text: &str) -> Result<Value, BatchError> {
    serde_json::from_str(text).map_err(|e| BatchError(format!("not JSON ({e}): {}", quote(text))))
}

/// At most 300 characters of `text`, for messages.
fn quote(text: &str) -> String {
    let mut quoted: String = text.chars().take(300).collect();
    if quoted.len() < text.len() {
        quoted.push_str("...");
    }
    quoted
}
