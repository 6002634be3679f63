//! A mock LLM server: OpenAI chat completions and Anthropic messages on 127.0.0.1.
//!
//! This module owns a small hyper server that answers `POST /v1/chat/completions` and
//! `POST /v1/messages` with valid outputs for any node (read from the request's JSON schema, or from
//! the instruction the Anthropic adapter puts in the system prompt), with configurable latency, fault
//! rates, token counts and a scripted fault sequence, and counts what it saw: requests in total and per
//! `x-ticketbuild-key`, successful answers per key, the most requests in flight at once, and a log of
//! every request. The integration tests start it in-process ([`MockServer::start`]); the example
//! `mock-llm` serves it for people trying ticketbuild without an account. It never blocks a worker:
//! latency is a tokio sleep. The invariant: a text answer differs for every artifact key, and a
//! structured answer always validates against the schema it was asked for.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[path = "rate_bucket.rs"]
pub mod bucket;

#[path = "mock_batches.rs"]
pub mod batches;

pub use batches::BatchConfig;

pub use bucket::{HeaderStyle, RateLimit};

/// How the mock answers.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Share of requests answered 429 (with `retry_after`), chosen at random.
    pub rate_429: f64,
    /// Share of requests answered 500, chosen at random.
    pub rate_500: f64,
    /// The `Retry-After` header of random 429s (seconds or an HTTP date); `None` sends none.
    pub retry_after: Option<String>,
    /// Fixed usage counts; unset ones are estimated from the text (characters / 4).
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Reported as OpenRouter's `usage.cost` when set.
    pub cost: Option<f64>,
    /// Appended to the requested model name to form the served model, like a dated snapshot.
    pub served_suffix: String,
    /// When set, requests with another key are answered 401 with a message that echoes the key
    /// they sent, as some providers do.
    pub api_key: Option<String>,
    /// Answers for the first requests, in arrival order, before the random faults apply.
    pub script: Vec<Fault>,
    /// Seed of the random faults.
    pub seed: u64,
    /// Decides the answer's text for some requests (bad answers for the quality tests); `None`
    /// from it, or no rewrite, gives the mock's own answer.
    pub rewrite: Option<Rewrite>,
    /// A latency tail: this share of requests (chosen by their key, so a retry of one is slow
    /// again) takes `slow_ms` instead of `latency_ms`.
    pub slow_share: f64,
    pub slow_ms: u64,
    /// Decides the latency of some requests (a call that hangs, in the tests).
    pub delay: Option<Delay>,
    /// A requests and tokens per minute limit, enforced with 429s and described in headers.
    pub rate_limit: Option<RateLimit>,
    /// How the batch APIs (`/v1/files`, `/v1/batches`, `/v1/messages/batches`) behave.
    pub batch: BatchConfig,
}

/// Decides how long a request waits before it is answered; `None` for the usual latency.
pub type DelayFn = dyn Fn(&Asking<'_>) -> Option<Duration> + Send + Sync;

/// A per-request latency.
#[derive(Clone)]
pub struct Delay(pub Arc<DelayFn>);

impl std::fmt::Debug for Delay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Delay(..)")
    }
}

/// A request as a [`Rewrite`] sees it.
pub struct Asking<'a> {
    /// Every message of the request, joined.
    pub text: &'a str,
    /// The artifact key the request was sent for.
    pub key: &'a str,
    /// The `seed` parameter sent, if any (a redraw sends the model's seed plus the draw).
    pub seed: Option<i64>,
}

/// Decides the text for a request, or `None` for the mock's own.
pub type RewriteFn = dyn Fn(&Asking<'_>) -> Option<String> + Send + Sync;

/// What answers a request instead of the mock's own text.
#[derive(Clone)]
pub struct Rewrite(pub Arc<RewriteFn>);

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rewrite(..)")
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency_ms: 0,
            rate_429: 0.0,
            rate_500: 0.0,
            retry_after: Some("1".to_string()),
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: 0,
            reasoning_tokens: 0,
            cost: None,
            served_suffix: "-mock-2025-01-01".to_string(),
            api_key: None,
            script: Vec::new(),
            seed: 1,
            rewrite: None,
            slow_share: 0.0,
            slow_ms: 0,
            delay: None,
            rate_limit: None,
            batch: BatchConfig::default(),
        }
    }
}

/// A scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A normal answer.
    Ok,
    /// This status, with a `Retry-After` header when given, and the API's error body.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// 200 with a body cut off in the middle of its JSON.
    Malformed,
    /// 200 with an empty completion.
    Empty,
    /// 200 with a completion that is not the JSON a structured node needs.
    Invalid,
    /// A normal answer after this many milliseconds (on top of the latency).
    Stall(u64),
    /// The connection is closed without any response, as when a network drops.
    Drop,
}

impl Fault {
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            retry_after: None,
        }
    }

    pub fn too_many(retry_after: &str) -> Fault {
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after.to_string()),
        }
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    /// The `x-ticketbuild-key` header.
    pub key: Option<String>,
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    pub anthropic_version: Option<String>,
    pub body: Value,
    /// When the request arrived.
    pub at: Instant,
    /// When the mock answered it (or would have, had the client not gone).
    pub answered: Instant,
    /// The status the mock answered with.
    pub status: u16,
}

/// What the mock has seen.
#[derive(Default)]
pub struct Counters {
    total: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    per_key: Mutex<HashMap<String, u64>>,
    successes: Mutex<HashMap<String, u64>>,
    log: Mutex<Vec<Logged>>,
    /// Every request as it arrives (before any latency): its key and body.
    arrivals: Mutex<Vec<(Option<String>, Value)>>,
}

struct State {
    buckets: Option<Mutex<bucket::Buckets>>,
    batches: Mutex<batches::Batches>,
    config: MockConfig,
    script: Mutex<VecDeque<Fault>>,
    counters: Counters,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running mock on its own runtime; stops when dropped.
pub struct MockServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockServer {
    /// Starts the mock on an ephemeral port of 127.0.0.1.
    pub fn start(config: MockConfig) -> MockServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("set the listener non-blocking");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let state = new_state(config);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let served = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("start the mock's runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("register the listener");
                tokio::select! {
                    _ = serve_state(listener, served) => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_background();
        });
        MockServer {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The API root to put in dataset.toml's `base_url`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub fn requests(&self) -> u64 {
        self.state.counters.total.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> u64 {
        self.state.counters.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests per `x-ticketbuild-key` (requests without one are counted under "").
    pub fn requests_per_key(&self) -> HashMap<String, u64> {
        lock(&self.state.counters.per_key).clone()
    }

    /// Successful (200, valid) answers per key.
    pub fn successes_per_key(&self) -> HashMap<String, u64> {
        lock(&self.state.counters.successes).clone()
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<Logged> {
        lock(&self.state.counters.log).clone()
    }

    /// Every request so far as it arrived (answered or still in flight): key and body.
    pub fn arrivals(&self) -> Vec<(Option<String>, Value)> {
        lock(&self.state.counters.arrivals).clone()
    }

    /// Changes the enforced rate limit from now on (the headers say so from the next answer).
    pub fn set_rate_limit(&self, requests_per_minute: Option<u64>, tokens_per_minute: Option<u64>) {
        if let Some(buckets) = &self.state.buckets {
            lock(buckets).set_limits(requests_per_minute, tokens_per_minute);
        }
    }

    /// How many times each custom id was submitted in a batch, across every batch.
    pub fn batch_submissions(&self) -> HashMap<String, u64> {
        lock(&self.state.batches).submitted()
    }

    /// How many batches were created.
    pub fn batches_created(&self) -> usize {
        lock(&self.state.batches).created()
    }

    /// Every request body so far, in arrival order.
    pub fn bodies(&self) -> Vec<Value> {
        self.log().into_iter().map(|l| l.body).collect()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn new_state(config: MockConfig) -> Arc<State> {
    Arc::new(State {
        buckets: config
            .rate_limit
            .as_ref()
            .map(|limit| Mutex::new(bucket::Buckets::new(limit))),
        script: Mutex::new(config.script.iter().cloned().collect()),
        batches: Mutex::new(batches::Batches::default()),
        config,
        counters: Counters::default(),
    })
}

/// Serves until the future is dropped; for the `mock-llm` example.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: MockConfig,
    report_every: Option<Duration>,
) {
    let state = new_state(config);
    if let Some(every) = report_every {
        let watched = Arc::clone(&state);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(every).await;
                let c = &watched.counters;
                let total = c.total.load(Ordering::SeqCst);
                if total != last {
                    last = total;
                    let (keys, most) = {
                        let per_key = lock(&c.per_key);
                        (per_key.len(), per_key.values().copied().max().unwrap_or(0))
                    };
                    let successes: u64 = lock(&c.successes).values().sum();
                    let duplicates = lock(&c.successes).values().filter(|n| **n > 1).count();
                    println!(
                        "{total} requests, {successes} answered, {keys} artifact keys, {duplicates} keys answered twice, at most {} in flight, at most {most} requests for one key",
                        c.max_in_flight.load(Ordering::SeqCst)
                    );
                }
            }
        });
    }
    serve_state(listener, state).await;
}

async fn serve_state(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&state), request));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Decrements the in-flight count however the handler ends.
struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// What the mock keeps of a request: the headers it logs, the path, and the body.
struct Received {
    /// The `x-ticketbuild-key` header.
    key: Option<String>,
    authorization: Option<String>,
    x_api_key: Option<String>,
    anthropic_version: Option<String>,
    path: String,
    query: String,
    method: String,
    is_post: bool,
    content_type: Option<String>,
    /// The body as sent (a file upload is not JSON).
    raw: Bytes,
    /// The JSON body, or `Null` when it is not JSON.
    body: Value,
}

/// Reads the request's headers, path and body.
async fn receive(request: Request<Incoming>) -> Received {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let key = header("x-ticketbuild-key");
    let authorization = header("authorization");
    let x_api_key = header("x-api-key");
    let anthropic_version = header("anthropic-version");
    let content_type = header("content-type");
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let method = request.method().as_str().to_string();
    let is_post = request.method() == hyper::Method::POST;
    let bytes = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Received {
        key,
        authorization,
        x_api_key,
        anthropic_version,
        path,
        query,
        method,
        is_post,
        content_type,
        raw: bytes,
        body,
    }
}

/// Counts a request as it arrives: in total, in flight and per key. Returns its number (from 0)
/// and the guard that takes it out of flight.
fn count_arrival<'a>(counters: &'a Counters, key: &Option<String>) -> (u64, InFlight<'a>) {
    let n = counters.total.fetch_add(1, Ordering::SeqCst);
    let now_in_flight = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters
        .max_in_flight
        .fetch_max(now_in_flight, Ordering::SeqCst);
    let in_flight = InFlight(counters);
    *lock(&counters.per_key)
        .entry(key.clone().unwrap_or_default())
        .or_default() += 1;
    (n, in_flight)
}

/// The API a path serves (only for POST).
fn api_of(path: &str, is_post: bool) -> Option<Api> {
    match path {
        "/v1/chat/completions" if is_post => Some(Api::OpenAi),
        "/v1/messages" if is_post => Some(Api::Anthropic),
        _ => None,
    }
}

/// The answer to request `n`: the next scripted one, or once the script is used up a random
/// fault at the configured rates.
fn next_fault(state: &State, n: u64) -> Fault {
    let config = &state.config;
    lock(&state.script).pop_front().unwrap_or_else(|| {
        let draw = unit(config.seed, n);
        if draw < config.rate_429 {
            Fault::Status {
                status: 429,
                retry_after: config.retry_after.clone(),
            }
        } else if draw < config.rate_429 + config.rate_500 {
            Fault::status(500)
        } else {
            Fault::Ok
        }
    })
}

/// The API key the request sent: `x-api-key` for Anthropic, the bearer token otherwise.
fn key_sent(api: Option<Api>, received: &Received) -> Option<String> {
    match api {
        Some(Api::Anthropic) => received.x_api_key.clone(),
        _ => received
            .authorization
            .as_deref()
            .map(|a| a.trim_start_matches("Bearer ").to_string()),
    }
}

/// The status, `Retry-After` and body to answer with: 404 off the routes, 400 for a body that is
/// not JSON, 401 (echoing the key) for a wrong key, and otherwise what `fault` says.
async fn reply(
    api: Option<Api>,
    config: &MockConfig,
    received: &Received,
    sent_key: Option<String>,
    fault: Fault,
) -> (u16, Option<String>, String) {
    let body = &received.body;
    match api {
        None => (
            404,
            None,
            error_body(Api::OpenAi, 404, &format!("no route for {}", received.path)),
        ),
        Some(api) if body.is_null() => (400, None, error_body(api, 400, "the body is not JSON")),
        Some(api) if config.api_key.is_some() && sent_key != config.api_key => {
            let message = format!(
                "Incorrect API key provided: {}.",
                sent_key.unwrap_or_default()
            );
            (401, None, error_body(api, 401, &message))
        }
        Some(api) => reply_with_fault(api, config, body, received.key.as_deref(), fault).await,
    }
}

/// The status, `Retry-After` and body of a routed, authorised request answered as `fault` says.
async fn reply_with_fault(
    api: Api,
    config: &MockConfig,
    body: &Value,
    key: Option<&str>,
    fault: Fault,
) -> (u16, Option<String>, String) {
    match fault {
        Fault::Status {
            status,
            retry_after,
        } => (
            status,
            retry_after,
            error_body(api, status, "the mock was told to fail this request"),
        ),
        Fault::Malformed => {
            let full = answer(api, config, body, key.unwrap_or(""), None).to_string();
            let cut: String = full.chars().take(full.chars().count() / 2).collect();
            (200, None, cut)
        }
        Fault::Empty => (
            200,
            None,
            answer(api, config, body, "", Some(String::new())).to_string(),
        ),
        Fault::Invalid => (
            200,
            None,
            answer(
                api,
                config,
                body,
                "",
                Some("I am not sure what you mean.".into()),
            )
            .to_string(),
        ),
        Fault::Stall(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (
                200,
                None,
                answer(api, config, body, key.unwrap_or(""), None).to_string(),
            )
        }
        Fault::Ok => (
            200,
            None,
            answer(api, config, body, key.unwrap_or(""), None).to_string(),
        ),
        // Status 0 in the log: no response was sent at all.
        Fault::Drop => (0, None, String::new()),
    }
}

/// Records an answered request: one more success for its key when it succeeded, and its log entry.
fn record(counters: &Counters, received: Received, at: Instant, status: u16, success: bool) {
    if success {
        *lock(&counters.successes)
            .entry(received.key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    lock(&counters.log).push(Logged {
        path: received.path,
        key: received.key,
        authorization: received.authorization,
        x_api_key: received.x_api_key,
        anthropic_version: received.anthropic_version,
        body: received.body,
        at,
        answered: Instant::now(),
        status,
    });
}

/// The HTTP response: `status`, a JSON content type, `Retry-After` when given, and `answer`.
fn http_response(
    status: u16,
    retry_after: Option<String>,
    answer: String,
    extra: Vec<(String, String)>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(value) = retry_after.and_then(|v| hyper::header::HeaderValue::from_str(&v).ok()) {
        headers.insert("retry-after", value);
    }
    for (name, value) in extra {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let counters = &state.counters;
    let at = Instant::now();
    let received = receive(request).await;
    if batches::is_batch_route(&received.path) {
        // Batch traffic is not a model call: it is counted apart (`batch_submissions`).
        let (status, body, headers) = batches::handle(
            &mut lock(&state.batches),
            &state.config,
            &batches::BatchRequest {
                method: &received.method,
                path: &received.path,
                query: &received.query,
                content_type: received.content_type.as_deref(),
                raw: &received.raw,
            },
        );
        let creates = received.is_post
            && (received.path.ends_with("/batches")
                || received.path.ends_with("/messages/batches"));
        let hold = state.config.batch.create_reply_delay_ms;
        if creates && hold > 0 {
            // The batch exists; its creator hears of it only later (a crash in between loses
            // the id, and must not lose the batch).
            tokio::time::sleep(std::time::Duration::from_millis(hold)).await;
        }
        return Ok(http_response(status, None, body, headers));
    }
    let (n, _in_flight) = count_arrival(counters, &received.key);
    lock(&counters.arrivals).push((received.key.clone(), received.body.clone()));

    let config = &state.config;
    let mut limit_headers = Vec::new();
    if let Some(buckets) = &state.buckets {
        let verdict = lock(buckets).take(reserved_tokens(&received.body));
        limit_headers = verdict.headers;
        if let Some(wait) = verdict.rejected {
            let api = api_of(&received.path, received.is_post).unwrap_or(Api::OpenAi);
            let body = error_body(api, 429, "Rate limit reached; please try again later.");
            record(counters, received, at, 429, false);
            let retry_after = Some(wait.as_secs_f64().ceil().max(1.0).to_string());
            return Ok(http_response(429, retry_after, body, limit_headers));
        }
    }
    let latency = latency_of(config, &received);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let api = api_of(&received.path, received.is_post);
    let fault = next_fault(&state, n);
    let answers_normally = matches!(fault, Fault::Ok | Fault::Stall(_));
    let sent_key = key_sent(api, &received);
    let (status, retry_after, answer) = reply(api, config, &received, sent_key, fault).await;
    let success = status == 200 && api.is_some() && answers_normally;
    record(counters, received, at, status, success);
    if status == 0 {
        // An error from the service makes hyper close the connection without a response.
        return Err(std::io::Error::other(
            "the mock was told to drop this connection",
        ));
    }
    Ok(http_response(status, retry_after, answer, limit_headers))
}

/// The tokens a request reserves against a tokens-per-minute limit: its text's characters / 4
/// plus its `max_tokens` (1,024 when unset), as providers count before answering.
pub fn reserved_tokens(body: &Value) -> u64 {
    let mut text = messages_text(body);
    text.push_str(body["system"].as_str().unwrap_or(""));
    bucket::reserved_tokens(body, &text)
}

/// How long `received` waits: the delay hook's answer, the tail's latency for the slow share of
/// keys, or the usual latency.
fn latency_of(config: &MockConfig, received: &Received) -> Duration {
    let key = received.key.as_deref().unwrap_or("");
    if let Some(delay) = &config.delay {
        let mut text = messages_text(&received.body);
        text.push('\n');
        text.push_str(received.body["system"].as_str().unwrap_or(""));
        let asking = Asking {
            text: &text,
            key,
            seed: received.body["seed"].as_i64(),
        };
        if let Some(wait) = (delay.0)(&asking) {
            return wait;
        }
    }
    let draw = (splitmix(hash(key) ^ config.seed) >> 11) as f64 / (1u64 << 53) as f64;
    let slow = config.slow_share > 0.0 && draw < config.slow_share;
    Duration::from_millis(if slow {
        config.slow_ms
    } else {
        config.latency_ms
    })
}

fn error_body(api: Api, status: u16, message: &str) -> String {
    match api {
        Api::OpenAi => json!({"error": {"message": message, "type": "mock_error", "code": status}}),
        Api::Anthropic => {
            let kind = match status {
                401 => "authentication_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    }
    .to_string()
}

/// What the request asks for.
enum Wanted {
    Text,
    /// `bare`: a JSON array (what the Anthropic instruction asks for), else `{"items": [...]}`.
    List {
        min: usize,
        max: usize,
        bare: bool,
    },
    Fields(Vec<String>),
}

fn wanted(api: Api, body: &Value) -> Wanted {
    match api {
        Api::OpenAi => {
            let format = &body["response_format"];
            match format["type"].as_str() {
                Some("json_schema") => {
                    let schema = &format["json_schema"]["schema"];
                    let items = &schema["properties"]["items"];
                    if items["type"] == "array" {
                        Wanted::List {
                            min: items["minItems"].as_u64().unwrap_or(4) as usize,
                            max: items["maxItems"].as_u64().unwrap_or(8) as usize,
                            bare: false,
                        }
                    } else {
                        let fields = schema["properties"]
                            .as_object()
                            .map(|p| p.keys().cloned().collect())
                            .unwrap_or_default();
                        Wanted::Fields(fields)
                    }
                }
                Some("json_object") => {
                    let text = messages_text(body);
                    let fields = quoted_after(&text, "with the fields ");
                    if fields.is_empty() {
                        Wanted::List {
                            min: 4,
                            max: 8,
                            bare: false,
                        }
                    } else {
                        Wanted::Fields(fields)
                    }
                }
                _ => Wanted::Text,
            }
        }
        Api::Anthropic => {
            let system = body["system"].as_str().unwrap_or("");
            if let Some(rest) = system.split("Reply with only a JSON array of ").nth(1) {
                let numbers: Vec<usize> = rest
                    .split_whitespace()
                    .filter_map(|w| w.trim_end_matches(',').parse().ok())
                    .take(2)
                    .collect();
                match numbers[..] {
                    [min, max] => Wanted::List {
                        min,
                        max,
                        bare: true,
                    },
                    _ => Wanted::List {
                        min: 4,
                        max: 8,
                        bare: true,
                    },
                }
            } else if system.contains("Reply with only a JSON object whose string fields are ") {
                Wanted::Fields(quoted_after(system, "string fields are "))
            } else {
                Wanted::Text
            }
        }
    }
}

fn messages_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The quoted words in the sentence after `marker`.
fn quoted_after(text: &str, marker: &str) -> Vec<String> {
    let Some(rest) = text.split(marker).nth(1) else {
        return Vec::new();
    };
    let sentence = rest.split(['.', '\n']).next().unwrap_or("");
    sentence
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// A full success body: the generated completion, or `text` when given.
fn answer(api: Api, config: &MockConfig, body: &Value, key: &str, text: Option<String>) -> Value {
    let rewritten = || {
        let rewrite = config.rewrite.as_ref()?;
        let mut all = messages_text(body);
        all.push('\n');
        all.push_str(body["system"].as_str().unwrap_or(""));
        (rewrite.0)(&Asking {
            text: &all,
            key,
            seed: body["seed"].as_i64(),
        })
    };
    let text = text
        .or_else(rewritten)
        .unwrap_or_else(|| completion(&wanted(api, body), key, &asked(api, body)));
    let model = format!(
        "{}{}",
        body["model"].as_str().unwrap_or("mock"),
        config.served_suffix
    );
    let prompt_chars = match api {
        Api::OpenAi => messages_text(body).len(),
        Api::Anthropic => messages_text(body).len() + body["system"].as_str().map_or(0, str::len),
    };
    let prompt_tokens = config
        .prompt_tokens
        .unwrap_or(prompt_chars.div_ceil(4) as u64);
    let completion_tokens = config
        .completion_tokens
        .unwrap_or(text.len().div_ceil(4) as u64);
    match api {
        Api::OpenAi => {
            let mut usage = json!({
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": config.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": config.reasoning_tokens}
            });
            if let Some(cost) = config.cost {
                usage["cost"] = json!(cost);
            }
            json!({
                "id": format!("chatcmpl-{}", &key.get(..12).unwrap_or("mock")),
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop"
                }],
                "usage": usage
            })
        }
        Api::Anthropic => json!({
            "id": format!("msg_{}", &key.get(..12).unwrap_or("mock")),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": prompt_tokens.saturating_sub(config.cached_tokens),
                "cache_read_input_tokens": config.cached_tokens,
                "cache_creation_input_tokens": 0,
                "output_tokens": completion_tokens
            }
        }),
    }
}

/// What a request asks for beyond its output kind: the language to write in (from "in German",
/// "into French (FR)", "language code ES"; English when none is named) and whether a short
/// answer is wanted (a topic phrase or a subject line).
struct Asked {
    language: &'static Phrases,
    short: bool,
}

fn asked(api: Api, body: &Value) -> Asked {
    let mut text = messages_text(body);
    if api == Api::Anthropic {
        text.push('\n');
        text.push_str(body["system"].as_str().unwrap_or(""));
    }
    let named = |code: &str, name: &str| {
        text.contains(&format!("language code {code}"))
            || text.contains(&format!("({code})"))
            || text.contains(&format!("in {name}"))
            || text.contains(&format!("into {name}"))
    };
    let language = PHRASES
        .iter()
        .skip(1)
        .find(|p| named(p.code, p.name))
        .unwrap_or(&PHRASES[0]);
    let short = text.contains("subject line") || text.contains("short English phrase");
    Asked { language, short }
}

/// The sentences the mock writes, in one language.
struct Phrases {
    code: &'static str,
    name: &'static str,
    openings: [&'static str; 8],
    problems: [&'static str; 8],
    requests: [&'static str; 6],
    /// The word before the request's reference, the same in every language: tests look for it.
    reference: &'static str,
    greeting: &'static str,
    closing: &'static str,
}

const PHRASES: [Phrases; 5] = [
    Phrases {
        code: "EN",
        name: "English",
        openings: [
            "The customer portal",
            "Our billing dashboard",
            "The mobile app",
            "The order tracking page",
            "The VPN client",
            "The invoice export",
            "The shared calendar",
            "The checkout form",
        ],
        problems: [
            "stopped loading after the last update",
            "shows error 0x80070005 on every attempt",
            "charged the same order twice",
            "keeps logging me out after a few minutes",
            "no longer syncs with the warehouse",
            "rejects a valid discount code",
            "sends the confirmation to the wrong address",
            "times out when I upload a document",
        ],
        requests: [
            "Could you look into it and tell me the next step?",
            "Please advise how to fix this before Friday.",
            "I would appreciate a quick call to sort this out.",
            "Can you confirm whether this is a known issue?",
            "Please escalate this, it blocks our team.",
            "Let me know which details you need from me.",
        ],
        reference: "reference",
        greeting: "Hello team,",
        closing: "Best regards, Alex",
    },
    Phrases {
        code: "DE",
        name: "German",
        openings: [
            "Das Kundenportal",
            "Unser Abrechnungsportal",
            "Die mobile App",
            "Die Seite zur Sendungsverfolgung",
            "Der VPN-Client",
            "Der Export der Rechnungen",
            "Der gemeinsame Kalender",
            "Das Bestellformular",
        ],
        problems: [
            "lädt seit dem letzten Update nicht mehr",
            "zeigt bei jedem Versuch den Fehler 0x80070005",
            "hat dieselbe Bestellung zweimal abgebucht",
            "meldet mich nach wenigen Minuten immer wieder ab",
            "wird nicht mehr mit dem Lager abgeglichen",
            "lehnt einen gültigen Rabattcode ab",
            "schickt die Bestätigung an die falsche Adresse",
            "bricht beim Hochladen eines Dokuments ab",
        ],
        requests: [
            "Könnten Sie sich das ansehen und mir den nächsten Schritt nennen?",
            "Bitte sagen Sie mir, wie ich das bis Freitag beheben kann.",
            "Ein kurzer Anruf, um das zu klären, wäre sehr hilfreich.",
            "Können Sie bestätigen, ob das ein bekanntes Problem ist?",
            "Bitte geben Sie das weiter, es blockiert unser ganzes Team.",
            "Teilen Sie mir bitte mit, welche Angaben Sie von mir brauchen.",
        ],
        reference: "reference",
        greeting: "Guten Tag,",
        closing: "Mit freundlichen Grüßen, Alex",
    },
    Phrases {
        code: "FR",
        name: "French",
        openings: [
            "Le portail client",
            "Notre tableau de facturation",
            "L'application mobile",
            "La page de suivi des commandes",
            "Le client VPN",
            "L'export des factures",
            "Le calendrier partagé",
            "Le formulaire de commande",
        ],
        problems: [
            "ne se charge plus depuis la dernière mise à jour",
            "affiche l'erreur 0x80070005 à chaque tentative",
            "a débité deux fois la même commande",
            "me déconnecte sans cesse au bout de quelques minutes",
            "ne se synchronise plus avec l'entrepôt",
            "refuse un code de réduction pourtant valable",
            "envoie la confirmation à une mauvaise adresse",
            "s'interrompt quand je télécharge un document",
        ],
        requests: [
            "Pourriez-vous regarder cela et m'indiquer la marche à suivre ?",
            "Merci de me dire comment corriger cela avant vendredi.",
            "Un court appel pour régler cela me serait très utile.",
            "Pouvez-vous confirmer s'il s'agit d'un problème connu ?",
            "Merci de transmettre ma demande, elle bloque toute notre équipe.",
            "Dites-moi quelles informations vous faut-il de ma part.",
        ],
        reference: "reference",
        greeting: "Bonjour,",
        closing: "Cordialement, Alex",
    },
    Phrases {
        code: "ES",
        name: "Spanish",
        openings: [
            "El portal de clientes",
            "Nuestro panel de facturación",
            "La aplicación móvil",
            "La página de seguimiento de pedidos",
            "El cliente VPN",
            "La exportación de facturas",
            "El calendario compartido",
            "El formulario de pedido",
        ],
        problems: [
            "ya no carga desde la última actualización",
            "muestra el error 0x80070005 en cada intento",
            "ha cobrado dos veces el mismo pedido",
            "me desconecta una y otra vez al cabo de unos minutos",
            "ya no se sincroniza con el almacén",
            "rechaza un código de descuento que es válido",
            "envía la confirmación a una dirección equivocada",
            "se interrumpe cuando subo un documento",
        ],
        requests: [
            "¿Podrían revisarlo y decirme cuál es el siguiente paso?",
            "Les ruego que me indiquen cómo solucionarlo antes del viernes.",
            "Les agradecería una llamada breve para aclararlo.",
            "¿Pueden confirmarme si se trata de un problema conocido?",
            "Por favor, escálenlo, porque bloquea a todo nuestro equipo.",
            "Díganme qué datos necesitan de mi parte.",
        ],
        reference: "reference",
        greeting: "Buenos días:",
        closing: "Un saludo cordial, Alex",
    },
    Phrases {
        code: "PT",
        name: "Portuguese",
        openings: [
            "O portal do cliente",
            "O nosso painel de faturação",
            "O aplicativo para celular",
            "A página de rastreamento dos pedidos",
            "O cliente de VPN",
            "A exportação das faturas",
            "A agenda compartilhada",
            "O formulário de pedido",
        ],
        problems: [
            "não carrega mais desde a última atualização",
            "mostra o erro 0x80070005 em todas as tentativas",
            "cobrou o mesmo pedido duas vezes",
            "me desconecta de novo depois de poucos minutos",
            "não sincroniza mais com o estoque",
            "recusa um código de desconto que é válido",
            "envia a confirmação para o endereço errado",
            "para de funcionar quando eu envio um documento",
        ],
        requests: [
            "Vocês poderiam verificar isso e me dizer qual é o próximo passo?",
            "Por favor, me digam como resolver isso até sexta-feira.",
            "Uma ligação rápida para esclarecer isso seria muito útil.",
            "Vocês podem confirmar se este é um problema conhecido?",
            "Por favor, encaminhem isso, porque bloqueia toda a nossa equipe.",
            "Me avisem quais informações vocês precisam de mim.",
        ],
        reference: "reference",
        greeting: "Olá,",
        closing: "Atenciosamente, Alex",
    },
];
const TAGS: [&str; 16] = [
    "billing",
    "login",
    "mobile-app",
    "vpn",
    "outage",
    "refund",
    "invoice",
    "performance",
    "security",
    "account",
    "sync",
    "upload",
    "checkout",
    "network",
    "bug-report",
    "feature-request",
];

fn completion(wanted: &Wanted, key: &str, asked: &Asked) -> String {
    let h = hash(key);
    let reference = key.get(..10).unwrap_or("0000000000").to_uppercase();
    let p = asked.language;
    let sentence = |salt: u64| {
        let h = splitmix(h ^ salt);
        format!(
            "{} {} ({} {reference}).",
            p.openings[(h % 8) as usize],
            p.problems[((h >> 8) % 8) as usize],
            p.reference
        )
    };
    let request = p.requests[((h >> 16) % 6) as usize];
    // A letter: long enough to pass the example's checks on bodies and replies.
    let letter = |salt: u64| {
        format!(
            "{} {} {} {request} {}",
            p.greeting,
            sentence(salt),
            sentence(salt + 1),
            p.closing
        )
    };
    match wanted {
        Wanted::Text if asked.short => sentence(1).trim_end_matches('.').to_string(),
        Wanted::Text => letter(1),
        Wanted::List { min, max, bare } => {
            let n = (4 + (h >> 24) as usize % 5).clamp(*min, (*max).max(*min));
            let start = (h >> 32) as usize % TAGS.len();
            let items: Vec<String> = (0..n)
                .map(|i| {
                    let tag = TAGS[(start + i) % TAGS.len()];
                    if i < TAGS.len() {
                        tag.to_string()
                    } else {
                        format!("{tag}-{i}")
                    }
                })
                .collect();
            if *bare {
                json!(items).to_string()
            } else {
                json!({"items": items}).to_string()
            }
        }
        Wanted::Fields(fields) => {
            let object: serde_json::Map<String, Value> = fields
                .iter()
                .enumerate()
                .map(|(i, field)| {
                    let value = if field.contains("subject") || field.contains("title") {
                        sentence(10 + i as u64).trim_end_matches('.').to_string()
                    } else {
                        letter(20 + 10 * i as u64)
                    };
                    (field.clone(), Value::String(value))
                })
                .collect();
            Value::Object(object).to_string()
        }
    }
}

fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform draw in [0, 1) for request `n`.
fn unit(seed: u64, n: u64) -> f64 {
    (splitmix(seed ^ splitmix(n)) >> 11) as f64 / (1u64 << 53) as f64
}
