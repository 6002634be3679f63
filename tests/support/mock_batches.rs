//! The mock's batch APIs: OpenAI's Files and Batches, and Anthropic's Message Batches.
//!
//! This module owns what a batch is in the mock and how it evolves: a batch answers its requests
//! over `complete_after_ms` (the first k of them done after k/n of that time), then ends
//! `completed` / `ended`, or `expired` with a share of them done ([`BatchConfig::expire_done_share`]),
//! or `cancelled` / `canceled` with those done before the cancel. A share of requests fails on its
//! own ([`BatchConfig::error_share`], chosen by custom id), and results can come in a random order.
//! Each request is answered exactly as the synchronous endpoint would answer it (the custom id
//! takes the place of the `x-ticketbuild-key` header), so a batch build and a synchronous build of
//! the same dataset get the same texts. The mock counts every custom id submitted, across batches,
//! so a test can assert that none was submitted twice.
//!
//! Routes: `POST /v1/files` (multipart: `purpose`, `file`), `GET /v1/files/{id}[/content]`,
//! `POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST /v1/batches/{id}/cancel`;
//! with [`BatchConfig::together`], Together's dialect of them (the upload answers 302 to
//! `PUT /v1/uploads/{id}`, a created batch comes wrapped in `job`, states in upper case, progress
//! instead of counts, the listing a bare array); OpenRouter's inline batches (`POST /v1/batches`
//! with `requests`, whose model must be a `:batch` variant; `GET /v1/batches/{id}/results`, paged);
//! `POST /v1/messages/batches`, `GET /v1/messages/batches[/{id}[/results]]`,
//! `POST /v1/messages/batches/{id}/cancel`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{Api, MockConfig, answer, error_body, unit};

/// How batches behave.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Time from creation until every request of a batch is answered.
    pub complete_after_ms: u64,
    /// Share of requests that fail on their own (a 500 in their result), chosen by custom id; a
    /// request fails so only the first time its custom id is submitted (a resubmission succeeds).
    pub error_share: f64,
    /// When set, batches expire at the end instead of completing, with this share of requests done.
    pub expire_done_share: Option<f64>,
    /// Results in a random order instead of submission order.
    pub shuffle: bool,
    /// How long the reply to a batch creation is held after the batch exists.
    pub create_reply_delay_ms: u64,
    /// Files and batches speak Together's dialect instead of OpenAI's.
    pub together: bool,
    /// Requests that fail on their own fail every time they are submitted, not only the first.
    pub errors_persist: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            complete_after_ms: 200,
            error_share: 0.0,
            expire_done_share: None,
            shuffle: false,
            create_reply_delay_ms: 0,
            together: false,
            errors_persist: false,
        }
    }
}

/// Which API a batch was submitted through.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Dialect {
    OpenAi,
    Together,
    OpenRouter,
    Anthropic,
}

/// One submitted batch.
struct Batch {
    id: String,
    api: Api,
    dialect: Dialect,
    created: Instant,
    created_unix: u64,
    /// (custom id, request body) in submission order.
    requests: Vec<(String, Value)>,
    metadata: Value,
    input_file_id: Option<String>,
    cancelled: Option<Instant>,
    /// Custom ids submitted before, in an earlier batch: they do not fail on their own again.
    resubmitted: std::collections::HashSet<String>,
}

/// Where a batch is, at one moment.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Running,
    Completed,
    Expired,
    Cancelled,
}

/// The mock's files and batches.
#[derive(Default)]
pub struct Batches {
    files: HashMap<String, Vec<u8>>,
    /// Each file's name, as uploaded.
    file_names: HashMap<String, String>,
    batches: Vec<Batch>,
    next: u64,
    /// How many times each custom id was submitted, across every batch.
    submitted: HashMap<String, u64>,
}

impl Batches {
    /// How many times each custom id was submitted.
    pub fn submitted(&self) -> HashMap<String, u64> {
        self.submitted.clone()
    }

    /// How many batches were created.
    pub fn created(&self) -> usize {
        self.batches.len()
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:06}", self.next)
    }
}

/// Whether `path` is one of the batch routes.
pub fn is_batch_route(path: &str) -> bool {
    path.starts_with("/v1/files")
        || path.starts_with("/v1/uploads")
        || path.starts_with("/v1/batches")
        || path.starts_with("/v1/messages/batches")
}

/// One request to a batch route.
pub struct BatchRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub raw: &'a [u8],
}

/// Answers a batch route: the status, the body (JSON, or JSONL for results and file content) and
/// any headers.
pub fn handle(
    batches: &mut Batches,
    config: &MockConfig,
    request: &BatchRequest<'_>,
) -> (u16, String, Vec<(String, String)>) {
    let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let together = config.batch.together;
    let plain = |(status, body): (u16, String)| (status, body, Vec::new());
    match (request.method, parts.as_slice()) {
        ("POST", ["v1", "files"]) if together => together_upload(batches, request.raw),
        ("PUT", ["v1", "uploads", id]) => match batches.files.get_mut(*id) {
            Some(file) => {
                *file = request.raw.to_vec();
                plain((200, "{}".to_string()))
            }
            None => plain((404, error_body(Api::OpenAi, 404, "no such upload"))),
        },
        ("POST", ["v1", "files"]) => plain(upload_file(batches, request.content_type, request.raw)),
        ("GET", ["v1", "files", id]) => plain(match batches.file_names.get(*id) {
            Some(name) => (
                200,
                json!({"id": id, "object": "file", "filename": name}).to_string(),
            ),
            None => (404, error_body(Api::OpenAi, 404, &format!("no file {id}"))),
        }),
        ("GET", ["v1", "files", id, "content"]) => plain(match batches.files.get(*id) {
            Some(bytes) => (200, String::from_utf8_lossy(bytes).into_owned()),
            None => file_content(batches, config, id),
        }),
        ("POST", ["v1", "batches"]) => {
            let body: Value = serde_json::from_slice(request.raw).unwrap_or(Value::Null);
            plain(if body["requests"].is_array() {
                create_openrouter(batches, &body)
            } else {
                create_openai(batches, request.raw, together)
            })
        }
        ("GET", ["v1", "batches"]) => {
            let data: Vec<Value> = batches
                .batches
                .iter()
                .rev()
                .filter(|b| b.api == Api::OpenAi)
                .map(|b| openai_object(b, config))
                .collect();
            plain((
                200,
                if together {
                    Value::Array(data).to_string()
                } else {
                    json!({"object": "list", "data": data, "has_more": false}).to_string()
                },
            ))
        }
        ("GET", ["v1", "batches", id]) => plain(with_batch(batches, id, Api::OpenAi, |b| {
            (200, openai_object(b, config).to_string())
        })),
        ("GET", ["v1", "batches", id, "results"]) => {
            plain(with_batch(batches, id, Api::OpenAi, |b| {
                openrouter_results(b, config, request.query)
            }))
        }
        ("POST", ["v1", "batches", id, "cancel"]) => {
            plain(cancel(batches, id, Api::OpenAi, config))
        }
        ("POST", ["v1", "messages", "batches"]) => plain(create_anthropic(batches, request.raw)),
        ("GET", ["v1", "messages", "batches"]) => {
            let data: Vec<Value> = batches
                .batches
                .iter()
                .rev()
                .filter(|b| b.api == Api::Anthropic)
                .map(|b| anthropic_object(b, config))
                .collect();
            plain((200, json!({"data": data, "has_more": false}).to_string()))
        }
        ("GET", ["v1", "messages", "batches", id]) => {
            plain(with_batch(batches, id, Api::Anthropic, |b| {
                (200, anthropic_object(b, config).to_string())
            }))
        }
        ("GET", ["v1", "messages", "batches", id, "results"]) => {
            plain(with_batch(batches, id, Api::Anthropic, |b| {
                if phase(b, config).0 == Phase::Running {
                    (
                        400,
                        error_body(Api::Anthropic, 400, "the batch has not ended"),
                    )
                } else {
                    (200, anthropic_results(b, config))
                }
            }))
        }
        ("POST", ["v1", "messages", "batches", id, "cancel"]) => {
            plain(cancel(batches, id, Api::Anthropic, config))
        }
        _ => plain((
            404,
            error_body(
                Api::OpenAi,
                404,
                &format!("no route for {} {}", request.method, request.path),
            ),
        )),
    }
}

/// Together's upload, step one: a form naming the file; the answer says where to put it.
fn together_upload(batches: &mut Batches, raw: &[u8]) -> (u16, String, Vec<(String, String)>) {
    let form: HashMap<String, String> = url::form_urlencoded::parse(raw).into_owned().collect();
    if form.get("purpose").map(String::as_str) != Some("batch-api") {
        let body = error_body(Api::OpenAi, 400, "`purpose` must be `batch-api`");
        return (400, body, Vec::new());
    }
    let id = batches.id("file-");
    batches.files.insert(id.clone(), Vec::new());
    batches.file_names.insert(
        id.clone(),
        form.get("file_name").cloned().unwrap_or_default(),
    );
    let headers = vec![
        ("location".to_string(), format!("/v1/uploads/{id}")),
        ("x-together-file-id".to_string(), id),
    ];
    (302, String::new(), headers)
}

fn with_batch(
    batches: &Batches,
    id: &str,
    api: Api,
    then: impl FnOnce(&Batch) -> (u16, String),
) -> (u16, String) {
    match batches.batches.iter().find(|b| b.id == id && b.api == api) {
        Some(batch) => then(batch),
        None => (404, error_body(api, 404, &format!("no batch {id}"))),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/files`: a multipart form with `purpose` and `file`.
fn upload_file(batches: &mut Batches, content_type: Option<&str>, raw: &[u8]) -> (u16, String) {
    let Some(boundary) = content_type
        .and_then(|c| c.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
    else {
        return (
            400,
            error_body(Api::OpenAi, 400, "expected multipart/form-data"),
        );
    };
    let mut purpose = None;
    let mut file = None;
    let mut file_name = String::new();
    for (name, content, filename) in multipart_parts(raw, &boundary) {
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&content).into_owned()),
            "file" => {
                file = Some(content);
                file_name = filename;
            }
            _ => {}
        }
    }
    let (Some(purpose), Some(file)) = (purpose, file) else {
        return (
            400,
            error_body(Api::OpenAi, 400, "a file upload needs `purpose` and `file`"),
        );
    };
    let id = batches.id("file-");
    let object = json!({
        "id": id, "object": "file", "bytes": file.len(), "created_at": now_unix(),
        "filename": file_name, "purpose": purpose,
    });
    batches.file_names.insert(id.clone(), file_name);
    batches.files.insert(id, file);
    (200, object.to_string())
}

/// The parts of a multipart body: (field name, content, file name).
fn multipart_parts(raw: &[u8], boundary: &str) -> Vec<(String, Vec<u8>, String)> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = raw;
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let body = &rest[head_end + 4..];
        let end = find(body, format!("\r\n{delimiter}").as_bytes()).unwrap_or(body.len());
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
            .unwrap_or("")
            .to_string();
        let filename = head
            .split("filename=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
            .unwrap_or("")
            .to_string();
        parts.push((name, body[..end].to_vec(), filename));
        rest = &body[end..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Counts the custom ids of a new batch; a repeated id within it is refused, as providers do.
fn count_submitted(
    batches: &mut Batches,
    requests: &[(String, Value)],
) -> Result<std::collections::HashSet<String>, String> {
    let mut seen = std::collections::HashSet::new();
    for (id, _) in requests {
        if !seen.insert(id) {
            return Err(format!("custom_id {id} appears twice in the batch"));
        }
    }
    let mut resubmitted = std::collections::HashSet::new();
    for (id, _) in requests {
        let count = batches.submitted.entry(id.clone()).or_default();
        *count += 1;
        if *count > 1 {
            resubmitted.insert(id.clone());
        }
    }
    Ok(resubmitted)
}

/// A new batch of `requests`, its custom ids counted (a repeated one within it refused).
fn new_batch(
    batches: &mut Batches,
    (api, dialect): (Api, Dialect),
    requests: Vec<(String, Value)>,
    metadata: Value,
    input_file_id: Option<String>,
) -> Result<Batch, (u16, String)> {
    let resubmitted = count_submitted(batches, &requests)
        .map_err(|message| (400, error_body(api, 400, &message)))?;
    let prefix = if api == Api::Anthropic {
        "msgbatch_"
    } else {
        "batch_"
    };
    Ok(Batch {
        id: batches.id(prefix),
        api,
        dialect,
        created: Instant::now(),
        created_unix: now_unix(),
        requests,
        metadata,
        input_file_id,
        cancelled: None,
        resubmitted,
    })
}

/// `POST /v1/batches`: the requests are the lines of the input file.
fn create_openai(batches: &mut Batches, raw: &[u8], together: bool) -> (u16, String) {
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let Some(file_id) = body["input_file_id"].as_str() else {
        return (
            400,
            error_body(Api::OpenAi, 400, "`input_file_id` is required"),
        );
    };
    let Some(file) = batches.files.get(file_id) else {
        return (
            404,
            error_body(Api::OpenAi, 404, &format!("no file {file_id}")),
        );
    };
    let mut requests = Vec::new();
    for line in String::from_utf8_lossy(file)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let line: Value = match serde_json::from_str(line) {
            Ok(line) => line,
            Err(e) => return (400, error_body(Api::OpenAi, 400, &format!("bad line: {e}"))),
        };
        let Some(custom_id) = line["custom_id"].as_str() else {
            return (
                400,
                error_body(Api::OpenAi, 400, "a line without custom_id"),
            );
        };
        requests.push((custom_id.to_string(), line["body"].clone()));
    }
    let dialect = if together {
        Dialect::Together
    } else {
        Dialect::OpenAi
    };
    let metadata = body["metadata"].clone();
    let batch = match new_batch(
        batches,
        (Api::OpenAi, dialect),
        requests,
        metadata,
        Some(file_id.to_string()),
    ) {
        Ok(batch) => batch,
        Err(refused) => return refused,
    };
    let object = if together {
        json!({"job": {"id": batch.id, "status": "VALIDATING", "input_file_id": file_id,
            "progress": 0.0}, "warning": ""})
    } else {
        json!({"id": batch.id, "object": "batch", "status": "validating",
            "input_file_id": file_id, "metadata": batch.metadata})
    };
    batches.batches.push(batch);
    (if together { 201 } else { 200 }, object.to_string())
}

/// `POST /v1/batches` with inline `requests` (OpenRouter): one batch-level model, its `:batch`
/// variant, which the requests' bodies must not contradict.
fn create_openrouter(batches: &mut Batches, body: &Value) -> (u16, String) {
    let model = body["model"].as_str().unwrap_or("");
    if !model.ends_with(":batch") || body["endpoint"] != json!("/v1/chat/completions") {
        let message = "`endpoint` must be /v1/chat/completions and `model` a `:batch` variant";
        return (400, error_body(Api::OpenAi, 400, message));
    }
    let mut requests = Vec::new();
    for request in body["requests"].as_array().into_iter().flatten() {
        let Some(custom_id) = request["custom_id"].as_str() else {
            return (
                400,
                error_body(Api::OpenAi, 400, "a request without custom_id"),
            );
        };
        let asked = &request["body"];
        if asked["model"].as_str().is_some_and(|m| m != model) {
            return (
                400,
                error_body(Api::OpenAi, 400, "a request names another model"),
            );
        }
        requests.push((custom_id.to_string(), asked.clone()));
    }
    let batch = match new_batch(
        batches,
        (Api::OpenAi, Dialect::OpenRouter),
        requests,
        Value::Null,
        None,
    ) {
        Ok(batch) => batch,
        Err(refused) => return refused,
    };
    let object = json!({"id": batch.id, "object": "batch", "status": "validating",
        "model": model, "request_counts": {"total": batch.requests.len(), "completed": 0,
        "failed": 0}, "created_at": batch.created_unix, "results": null});
    batches.batches.push(batch);
    (202, object.to_string())
}

/// `GET /v1/batches/{id}/results?limit=N&cursor=C` (OpenRouter): a page of result rows.
fn openrouter_results(batch: &Batch, config: &MockConfig, query: &str) -> (u16, String) {
    let (phase, _) = phase(batch, config);
    if phase == Phase::Running {
        return (
            400,
            error_body(Api::OpenAi, 400, "the batch has not finished"),
        );
    }
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100);
    // Small pages, whatever was asked, so that paging is exercised.
    let limit = limit.clamp(1, 7);
    let from: usize = params
        .get("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let all = outcomes(batch, config);
    let rows: Vec<Value> = all
        .iter()
        .skip(from)
        .take(limit)
        .enumerate()
        .map(|(n, (custom_id, body, done))| {
            let id = format!("batch_req_{}_{}", batch.id, from + n);
            if !done {
                let what = if phase == Phase::Cancelled { "cancelled" } else { "expired" };
                json!({"id": id, "custom_id": custom_id, "response": null,
                    "error": {"message": format!("the request was not run: batch {what}")}})
            } else if errs(config, batch, custom_id) {
                json!({"id": id, "custom_id": custom_id, "error": null,
                    "response": {"status_code": 500, "request_id": id,
                        "body": serde_json::from_str::<Value>(&error_body(Api::OpenAi, 500, "the mock failed this request")).unwrap_or(Value::Null)}})
            } else {
                json!({"id": id, "custom_id": custom_id, "error": null,
                    "response": {"status_code": 200, "request_id": id,
                        "body": answer(Api::OpenAi, config, body, custom_id, None)}})
            }
        })
        .collect();
    let next = from + rows.len();
    let more = next < all.len();
    let page = json!({"object": "list", "data": rows, "has_more": more,
        "next_cursor": more.then(|| next.to_string())});
    (200, page.to_string())
}

/// `POST /v1/messages/batches`: the requests are inline.
fn create_anthropic(batches: &mut Batches, raw: &[u8]) -> (u16, String) {
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let Some(list) = body["requests"].as_array() else {
        return (
            400,
            error_body(Api::Anthropic, 400, "`requests` is required"),
        );
    };
    let mut requests = Vec::new();
    for request in list {
        let Some(custom_id) = request["custom_id"].as_str() else {
            return (
                400,
                error_body(Api::Anthropic, 400, "a request without custom_id"),
            );
        };
        requests.push((custom_id.to_string(), request["params"].clone()));
    }
    let batch = match new_batch(
        batches,
        (Api::Anthropic, Dialect::Anthropic),
        requests,
        Value::Null,
        None,
    ) {
        Ok(batch) => batch,
        Err(refused) => return refused,
    };
    let config_free = json!({"id": batch.id, "type": "message_batch",
        "processing_status": "in_progress"});
    batches.batches.push(batch);
    (200, config_free.to_string())
}

fn cancel(batches: &mut Batches, id: &str, api: Api, config: &MockConfig) -> (u16, String) {
    let Some(batch) = batches
        .batches
        .iter_mut()
        .find(|b| b.id == id && b.api == api)
    else {
        return (404, error_body(api, 404, &format!("no batch {id}")));
    };
    if phase(batch, config).0 == Phase::Running {
        batch.cancelled = Some(Instant::now());
    }
    let object = match api {
        Api::OpenAi => openai_object(batch, config),
        Api::Anthropic => anthropic_object(batch, config),
    };
    (200, object.to_string())
}

/// The batch's phase now, and how many of its requests (the first ones) are done.
fn phase(batch: &Batch, config: &MockConfig) -> (Phase, usize) {
    let total = batch.requests.len();
    let window = Duration::from_millis(config.batch.complete_after_ms);
    let done_by = |at: Instant| -> usize {
        let elapsed = at.saturating_duration_since(batch.created);
        if window.is_zero() || elapsed >= window {
            total
        } else {
            (total as f64 * elapsed.as_secs_f64() / window.as_secs_f64()).floor() as usize
        }
    };
    if let Some(at) = batch.cancelled {
        return (Phase::Cancelled, done_by(at));
    }
    let now = Instant::now();
    if now.saturating_duration_since(batch.created) < window {
        return (Phase::Running, done_by(now));
    }
    match config.batch.expire_done_share {
        Some(share) => (
            Phase::Expired,
            ((total as f64 * share).round() as usize).min(total),
        ),
        None => (Phase::Completed, total),
    }
}

/// Whether request `custom_id` fails on its own.
fn errs(config: &MockConfig, batch: &Batch, custom_id: &str) -> bool {
    if batch.resubmitted.contains(custom_id) && !config.batch.errors_persist {
        return false;
    }
    let hash = custom_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    unit(config.seed, hash) < config.batch.error_share
}

/// The outcome of each request of an ended batch, in result order: (custom id, body, done).
fn outcomes<'a>(batch: &'a Batch, config: &MockConfig) -> Vec<(&'a str, &'a Value, bool)> {
    let (_, done) = phase(batch, config);
    let mut all: Vec<(&str, &Value, bool)> = batch
        .requests
        .iter()
        .enumerate()
        .map(|(i, (id, body))| (id.as_str(), body, i < done))
        .collect();
    if config.batch.shuffle {
        // A seeded shuffle (Fisher-Yates over `unit`): random order, the same on every read.
        for i in (1..all.len()).rev() {
            let j = (unit(config.seed ^ 0x5eed, i as u64) * (i + 1) as f64) as usize;
            all.swap(i, j.min(i));
        }
    }
    all
}

fn openai_object(batch: &Batch, config: &MockConfig) -> Value {
    let (phase, done) = phase(batch, config);
    let failed_done = batch.requests[..done]
        .iter()
        .filter(|(id, _)| errs(config, batch, id))
        .count();
    let status = match phase {
        Phase::Running => "in_progress",
        Phase::Completed => "completed",
        Phase::Expired => "expired",
        Phase::Cancelled => "cancelled",
    };
    let ended = phase != Phase::Running;
    let failed = if ended {
        failed_done + (batch.requests.len() - done)
    } else {
        failed_done
    };
    match batch.dialect {
        Dialect::Together => json!({
            "id": batch.id, "endpoint": "/v1/chat/completions",
            "input_file_id": batch.input_file_id, "status": status.to_uppercase(),
            "created_at": chrono::DateTime::from_timestamp(batch.created_unix as i64, 0)
                .map(|t| t.to_rfc3339()),
            "progress": 100.0 * done as f64 / batch.requests.len().max(1) as f64,
            "output_file_id": ended.then(|| format!("file-out-{}", batch.id)),
            "error_file_id": ended.then(|| format!("file-err-{}", batch.id)),
        }),
        Dialect::OpenRouter => json!({
            "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "status": status, "created_at": batch.created_unix,
            "request_counts": {"total": batch.requests.len(), "completed": done - failed_done,
                "failed": failed},
            "results": null,
        }),
        Dialect::OpenAi | Dialect::Anthropic => json!({
            "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
            "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
            "created_at": batch.created_unix, "metadata": batch.metadata,
            "output_file_id": ended.then(|| format!("file-out-{}", batch.id)),
            "error_file_id": ended.then(|| format!("file-err-{}", batch.id)),
            "request_counts": {"total": batch.requests.len(), "completed": done - failed_done,
                "failed": failed},
        }),
    }
}

/// The content of an ended OpenAI batch's output (`file-out-ID`) or error (`file-err-ID`) file.
fn file_content(batches: &Batches, config: &MockConfig, file_id: &str) -> (u16, String) {
    let (errors, batch_id) = match (
        file_id.strip_prefix("file-out-"),
        file_id.strip_prefix("file-err-"),
    ) {
        (Some(id), _) => (false, id),
        (_, Some(id)) => (true, id),
        _ => {
            return (
                404,
                error_body(Api::OpenAi, 404, &format!("no file {file_id}")),
            );
        }
    };
    let Some(batch) = batches.batches.iter().find(|b| b.id == batch_id) else {
        return (
            404,
            error_body(Api::OpenAi, 404, &format!("no file {file_id}")),
        );
    };
    let (phase, _) = phase(batch, config);
    if phase == Phase::Running {
        return (
            404,
            error_body(Api::OpenAi, 404, &format!("no file {file_id} yet")),
        );
    }
    let mut lines = Vec::new();
    for (n, (custom_id, body, done)) in outcomes(batch, config).into_iter().enumerate() {
        let id = format!("batch_req_{}_{n}", batch.id);
        let line = if !done {
            let code = if phase == Phase::Cancelled {
                "batch_cancelled"
            } else {
                "batch_expired"
            };
            errors.then(|| {
                json!({"id": id, "custom_id": custom_id, "response": null,
                "error": {"code": code, "message": "This request was not executed."}})
            })
        } else if errs(config, batch, custom_id) {
            errors.then(|| json!({"id": id, "custom_id": custom_id, "error": null,
                "response": {"status_code": 500, "request_id": id,
                    "body": serde_json::from_str::<Value>(&error_body(Api::OpenAi, 500, "the mock failed this request")).unwrap_or(Value::Null)}}))
        } else {
            (!errors).then(|| {
                json!({"id": id, "custom_id": custom_id, "error": null,
                "response": {"status_code": 200, "request_id": id,
                    "body": answer(Api::OpenAi, config, body, custom_id, None)}})
            })
        };
        lines.extend(line.map(|l| l.to_string()));
    }
    (200, lines.iter().map(|l| format!("{l}\n")).collect())
}

fn anthropic_object(batch: &Batch, config: &MockConfig) -> Value {
    let (phase, done) = phase(batch, config);
    let errored = batch.requests[..done]
        .iter()
        .filter(|(id, _)| errs(config, batch, id))
        .count();
    let rest = batch.requests.len() - done;
    let (processing, canceled, expired) = match phase {
        Phase::Running => (rest, 0, 0),
        Phase::Completed => (0, 0, 0),
        Phase::Expired => (0, 0, rest),
        Phase::Cancelled => (0, rest, 0),
    };
    let ended = phase != Phase::Running;
    json!({
        "id": batch.id, "type": "message_batch",
        "processing_status": if ended { "ended" } else { "in_progress" },
        "request_counts": {"processing": processing, "succeeded": done - errored,
            "errored": errored, "canceled": canceled, "expired": expired},
        "created_at": batch.created_unix,
        "results_url": ended.then(|| format!("/v1/messages/batches/{}/results", batch.id)),
    })
}

fn anthropic_results(batch: &Batch, config: &MockConfig) -> String {
    let (phase, _) = phase(batch, config);
    let mut text = String::new();
    for (custom_id, body, done) in outcomes(batch, config) {
        let result = if !done {
            json!({"type": if phase == Phase::Cancelled { "canceled" } else { "expired" }})
        } else if errs(config, batch, custom_id) {
            json!({"type": "errored", "error": serde_json::from_str::<Value>(&error_body(Api::Anthropic, 500, "the mock failed this request")).unwrap_or(Value::Null)})
        } else {
            json!({"type": "succeeded", "message": answer(Api::Anthropic, config, body, custom_id, None)})
        };
        text.push_str(&json!({"custom_id": custom_id, "result": result}).to_string());
        text.push('\n');
    }
    text
}
