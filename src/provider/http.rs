//! The shared HTTP machinery of the remote providers: client, retries, errors and secrets.
//!
//! This module owns [`HttpProvider`], which turns an [`Adapter`] (what one API's bodies, headers and
//! replies look like: `openai`, `anthropic`) into a [`Provider`]: one reqwest client per model
//! (connection reuse, gzip, HTTP/2 where the server offers it, rustls with the ring crypto provider),
//! the retry loop (its policy, backoff and the classification of failures, is `retry`), per-attempt
//! timeouts and the per-call deadline, the rate-limit headers of every reply handed to `limits`, and
//! the scrubbing of API keys from every message. Scheduling (concurrency and pacing) is `limits`;
//! what a body holds is the adapter's. The invariants: every request carries `x-ticketbuild-key` with the artifact key, and
//! the same body on every attempt; a call returns `Ok` only with an output that `request.output.parse`
//! accepted; and no error message contains the API key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tokio::time::Instant;

use super::limits::{Limiter, Weight};
use super::ratelimit::Reported;
use super::retry::{Attempt, AttemptCounts, classify, parse_retry_after};
use super::{CallFuture, Provider, ProviderError, Request, Response, Traffic};
use crate::config::{ModelConfig, ModelLimits, ProviderKind};
use crate::cost::Usage;
use crate::value::InvalidOutput;

/// The header that names the artifact a request is for.
pub(crate) const KEY_HEADER: &str = "x-ticketbuild-key";

/// Longest time to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error body is quoted when it has no message field.
const QUOTE_LIMIT: usize = 300;
/// An API key. Never printed: `Debug` hides it and [`Secret::redact`] removes it from text.
#[derive(Clone)]
pub(crate) struct Secret(Arc<str>);

impl Secret {
    pub(crate) fn new(value: String) -> Secret {
        Secret(Arc::from(value.trim()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with the key, and any word holding eight or more of its characters in a row (providers
    /// echo keys partly masked, as `sk-abc***wxyz`), replaced by `[redacted]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let key = self.expose();
        if key.is_empty() {
            return text.to_string();
        }
        let text = text.replace(key, "[redacted]");
        let window = key.len().min(8);
        let pieces: Vec<&str> = (0..=key.len() - window)
            .filter_map(|i| key.get(i..i + window))
            .collect();
        let mut out = String::with_capacity(text.len());
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String| {
            if pieces.iter().any(|p| word.contains(p)) {
                out.push_str("[redacted]");
            } else {
                out.push_str(word);
            }
            word.clear();
        };
        for c in text.chars() {
            if c.is_whitespace() || c == '"' || c == '\'' || c == ',' {
                flush(&mut word, &mut out);
                out.push(c);
            } else {
                word.push(c);
            }
        }
        flush(&mut word, &mut out);
        out
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// What an [`HttpProvider`] needs besides its adapter.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The provider as configured (`openai`, `anthropic`, ...).
    pub(crate) provider: ProviderKind,
    /// The model name as sent, for messages.
    pub(crate) model: String,
    pub(crate) limits: ModelLimits,
    pub(crate) secret: Option<Secret>,
}

impl Settings {
    pub(crate) fn new(model: &ModelConfig, secret: Option<Secret>) -> Settings {
        Settings {
            provider: model.provider,
            model: model.model.clone(),
            limits: model.limits.clone(),
            secret,
        }
    }
}

/// A reply in the provider's success shape, before the output is validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub(crate) text: String,
    pub(crate) usage: Usage,
    /// The model that answered, when the reply names it.
    pub(crate) served_model: Option<String>,
    pub(crate) reported_cost_usd: Option<f64>,
}

/// Why a 2xx body is no usable reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyError {
    /// Not the documented shape (a field missing, the wrong type).
    Malformed(String),
    /// The shape is right but there is no text (a refusal, a content filter, an empty message).
    Empty,
    /// The body is an error object, as some gateways send with status 200.
    Error { status: u16, message: String },
}

/// One API: its endpoint, headers, request bodies and reply shapes. Pure functions of their
/// arguments, so they are unit-tested without a server.
pub(crate) trait Adapter: Send + Sync + 'static {
    /// The URL requests are posted to.
    fn endpoint(&self) -> &str;
    /// Headers sent on every request besides the content type and [`KEY_HEADER`] (authentication,
    /// API version). Values holding the key must be marked sensitive.
    fn headers(&self, secret: Option<&Secret>) -> Result<HeaderMap, String>;
    /// The request body.
    fn body(&self, request: &Request) -> serde_json::Value;
    /// The most output tokens the request may produce, for rate-limit estimates.
    fn max_output_tokens(&self, request: &Request) -> u64;
    /// Reads a 2xx body.
    fn parse_reply(&self, body: &serde_json::Value) -> Result<Reply, ReplyError>;
    /// The provider's own message in an error body.
    fn error_message(&self, body: &serde_json::Value) -> Option<String>;
}

/// A provider over HTTP: an adapter plus the client, limiter and retry policy of one model.
pub(crate) struct HttpProvider<A> {
    adapter: A,
    /// The adapter's endpoint, parsed once: parsing it for every request was 4% of a build's CPU.
    endpoint: reqwest::Url,
    client: reqwest::Client,
    limiter: Limiter,
    settings: Settings,
    /// Set by a 401, 402, 403 or 404: the key, the account or the model is wrong, for every later
    /// call of this build too, so they fail at once without a request.
    sticky: Mutex<Option<String>>,
    counters: Counters,
}

/// What the build summary reports of a model's requests.
#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    throttled: AtomicU64,
    other_retries: AtomicU64,
}

/// A failed attempt that may be retried, by the bound it counts against.
enum Failed {
    Transient(String),
    Malformed(String),
    Invalid(InvalidOutput),
}

impl<A: Adapter> HttpProvider<A> {
    pub(crate) fn new(adapter: A, settings: Settings) -> Result<HttpProvider<A>, ProviderError> {
        let mut headers = adapter
            .headers(settings.secret.as_ref())
            .map_err(|e| ProviderError::Fatal(redact(&settings, &e)))?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let endpoint = reqwest::Url::parse(adapter.endpoint()).map_err(|e| {
            ProviderError::Fatal(redact(
                &settings,
                &format!("`{}` is not a URL: {e}", adapter.endpoint()),
            ))
        })?;
        let limits = &settings.limits;
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("ticketbuild/", env!("CARGO_PKG_VERSION")))
            .gzip(true)
            .connect_timeout(CONNECT_TIMEOUT.min(Duration::from_secs(limits.timeout_secs)))
            .pool_max_idle_per_host(limits.max_concurrency)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                ProviderError::Fatal(redact(
                    &settings,
                    &format!("cannot set up the HTTP client: {e}"),
                ))
            })?;
        let limiter = Limiter::new(
            limits.max_concurrency,
            limits.requests_per_minute,
            limits.tokens_per_minute,
        );
        Ok(HttpProvider {
            adapter,
            endpoint,
            client,
            limiter,
            settings,
            sticky: Mutex::new(None),
            counters: Counters::default(),
        })
    }

    fn label(&self) -> String {
        format!("{} model `{}`", self.settings.provider, self.settings.model)
    }

    fn sticky(&self) -> Option<String> {
        self.sticky
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_sticky(&self, message: &str) {
        self.sticky
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| message.to_string());
    }

    async fn call_with_retries(&self, request: &Request) -> Result<Response, ProviderError> {
        self.retry_loop(request).await.map_err(|e| match e {
            ProviderError::Transient(m) => ProviderError::Transient(redact(&self.settings, &m)),
            ProviderError::Fatal(m) => ProviderError::Fatal(redact(&self.settings, &m)),
            ProviderError::Malformed(m) => ProviderError::Malformed(redact(&self.settings, &m)),
            other => other,
        })
    }

    async fn retry_loop(&self, request: &Request) -> Result<Response, ProviderError> {
        if let Some(message) = self.sticky() {
            return Err(ProviderError::Fatal(message));
        }
        let key = request.key().to_hex();
        let body = serde_json::to_vec(&self.adapter.body(request))
            .map_err(|e| ProviderError::Fatal(format!("cannot encode the request body: {e}")))?;
        // The same estimate of the prompt the budget reserves for.
        let prompt = [
            request.system.as_deref().unwrap_or(""),
            request.user.as_str(),
        ];
        let weight = Weight {
            prompt: crate::tokens::count(self.settings.provider, &self.settings.model, &prompt),
            output: self.adapter.max_output_tokens(request),
        };
        let limits = &self.settings.limits;
        let deadline = Duration::from_secs(limits.deadline_secs);
        let per_attempt = Duration::from_secs(limits.timeout_secs);
        let mut first: Option<Instant> = None;
        let mut counts = AttemptCounts::default();
        loop {
            let permit = self.limiter.acquire(weight).await;
            if let Some(message) = self.sticky() {
                return Err(ProviderError::Fatal(message));
            }
            let started = *first.get_or_insert_with(Instant::now);
            let remaining = deadline.saturating_sub(started.elapsed());
            let timeout = per_attempt.min(remaining);
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let (outcome, reported) =
                match tokio::time::timeout(timeout, self.attempt(&key, &body, request)).await {
                    Ok(answered) => answered,
                    Err(_) => (
                        Attempt::Retry {
                            reason: format!("no response within {} s", timeout.as_secs_f64()),
                            retry_after: None,
                            throttled: false,
                        },
                        Reported::default(),
                    ),
                };
            let attempts = counts.total() + 1;
            // What went wrong, whether the bound for its kind is reached, and the pause before the
            // next attempt.
            let (failure, exhausted, delay) = match outcome {
                Attempt::Done(response) => {
                    permit.answered(&reported);
                    return Ok(response);
                }
                Attempt::Fatal { message, sticky } => {
                    drop(permit);
                    let message = format!("{}: {message}", self.label());
                    if sticky {
                        self.set_sticky(&message);
                    }
                    return Err(ProviderError::Fatal(message));
                }
                Attempt::Retry {
                    reason,
                    retry_after,
                    throttled,
                } => {
                    if throttled {
                        self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                        permit.throttled(&reported, retry_after, &self.label());
                    } else if reported.is_empty() {
                        drop(permit);
                    } else {
                        // A server error that still describes the limits: follow them.
                        permit.answered(&reported);
                    }
                    let (exhausted, delay) = counts.retry(throttled, retry_after, limits);
                    (Failed::Transient(reason), exhausted, delay)
                }
                Attempt::Malformed(reason) => {
                    permit.answered(&reported);
                    let (exhausted, delay) = counts.invalid(limits);
                    (Failed::Malformed(reason), exhausted, delay)
                }
                Attempt::Invalid(e) => {
                    permit.answered(&reported);
                    let (exhausted, delay) = counts.invalid(limits);
                    (Failed::Invalid(e), exhausted, delay)
                }
            };
            let throttled = matches!(failure, Failed::Transient(_)) && counts.last_was_throttle;
            let why = if exhausted {
                format!("gave up after {attempts} attempts")
            } else if started.elapsed() + delay >= deadline {
                format!(
                    "gave up after {attempts} attempts: another would pass the {}-second deadline",
                    limits.deadline_secs
                )
            } else {
                if throttled {
                    // A 429's pause is time spent waiting for the rate limit.
                    let _waiting = self.limiter.wait_for_limit();
                    tokio::time::sleep(delay).await;
                } else {
                    self.counters.other_retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                }
                continue;
            };
            return Err(match failure {
                Failed::Transient(reason) => {
                    ProviderError::Transient(format!("{}: {reason}; {why}", self.label()))
                }
                Failed::Malformed(reason) => {
                    ProviderError::Malformed(format!("{}: {reason}; {why}", self.label()))
                }
                Failed::Invalid(e) => ProviderError::Invalid(e),
            });
        }
    }

    /// One attempt, and what its reply said about the rate limits.
    async fn attempt(&self, key: &str, body: &[u8], request: &Request) -> (Attempt, Reported) {
        let sent = self
            .client
            .post(self.endpoint.clone())
            .header(KEY_HEADER, key)
            .body(body.to_vec())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let failed = Attempt::Retry {
                    reason: transport_reason(&e),
                    retry_after: None,
                    throttled: false,
                };
                return (failed, Reported::default());
            }
        };
        let reported = Reported::read(response.headers(), SystemTime::now());
        (self.read_reply(response, request).await, reported)
    }

    /// What a reply means for the call.
    async fn read_reply(&self, response: reqwest::Response, request: &Request) -> Attempt {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if (200..300).contains(&status) => {
                return Attempt::Malformed(format!(
                    "the response body was cut off ({})",
                    transport_reason(&e)
                ));
            }
            Err(e) => {
                return Attempt::Retry {
                    reason: format!(
                        "HTTP {status}, and the body was cut off ({})",
                        transport_reason(&e)
                    ),
                    retry_after,
                    throttled: status == 429,
                };
            }
        };
        let json = serde_json::from_slice::<serde_json::Value>(&bytes);
        if !(200..300).contains(&status) {
            let message = json
                .ok()
                .and_then(|json| self.adapter.error_message(&json))
                .unwrap_or_else(|| quote(&bytes));
            return classify(status, message, retry_after);
        }
        let json = match json {
            Ok(json) => json,
            Err(e) => return Attempt::Malformed(format!("the response body is not JSON ({e})")),
        };
        judge(&self.adapter, &json, request, retry_after)
    }
}

/// What a 2xx body means for a call: a validated [`Response`], or why not. Shared by the
/// synchronous path and batch results, whose lines carry the same bodies.
pub(super) fn judge(
    adapter: &dyn Adapter,
    json: &serde_json::Value,
    request: &Request,
    retry_after: Option<Duration>,
) -> Attempt {
    match adapter.parse_reply(json) {
        // Unless the model is told `response_format = "text"`, list and json nodes ask for JSON
        // (a schema, JSON mode, or Anthropic's instruction), so the reply must be JSON.
        Ok(reply) => match if request.params.response_format.as_deref() == Some("text") {
            request.output.parse(&reply.text)
        } else {
            request.output.parse_requested_json(&reply.text)
        } {
            Ok(output) => Attempt::Done(Response {
                output,
                usage: reply.usage,
                served_model: reply.served_model.unwrap_or_else(|| request.model.clone()),
                reported_cost_usd: reply.reported_cost_usd,
            }),
            Err(e) => Attempt::Invalid(e),
        },
        Err(ReplyError::Empty) => Attempt::Invalid(InvalidOutput::Empty),
        Err(ReplyError::Malformed(reason)) => Attempt::Malformed(reason),
        Err(ReplyError::Error { status, message }) => classify(status, message, retry_after),
    }
}

impl<A: Adapter> Provider for HttpProvider<A> {
    fn call<'a>(&'a self, request: &'a Request) -> CallFuture<'a> {
        Box::pin(self.call_with_retries(request))
    }

    fn traffic(&self) -> Option<Traffic> {
        let reported = self.limiter.reported_limits();
        Some(Traffic {
            attempts: self.counters.attempts.load(Ordering::Relaxed),
            throttled: self.counters.throttled.load(Ordering::Relaxed),
            other_retries: self.counters.other_retries.load(Ordering::Relaxed),
            rate_limit_wait_ms: self.limiter.time_waited().as_millis() as u64,
            reported_requests_per_minute: reported.requests_per_minute,
            reported_tokens_per_minute: reported.tokens_per_minute,
        })
    }

    fn take_notice(&self) -> Option<String> {
        self.limiter
            .take_notice()
            .map(|notice| redact(&self.settings, &notice))
    }
}

fn redact(settings: &Settings, text: &str) -> String {
    match &settings.secret {
        Some(secret) => secret.redact(text),
        None => text.to_string(),
    }
}

/// A transport error in a few words. reqwest's messages name the URL, which holds no secret.
fn transport_reason(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "the body could not be read"
    } else {
        "the request failed"
    };
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    format!("{kind}: {detail}")
}

/// The start of an error body that is not the provider's JSON, on one line.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// A JSON number as `u64`, zero when absent.
pub(crate) fn count(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_whole_and_partly_masked() {
        let secret = Secret::new("sk-test-0123456789abcdef".to_string());
        assert_eq!(
            secret.redact("bad key sk-test-0123456789abcdef!"),
            "bad key [redacted]!"
        );
        assert_eq!(
            secret.redact("Incorrect API key provided: sk-test-***********cdef. See docs."),
            "Incorrect API key provided: [redacted] See docs."
        );
        assert_eq!(
            secret.redact("\"key\": \"sk-test-01234\""),
            "\"key\": \"[redacted]\""
        );
        assert_eq!(secret.redact("nothing to hide"), "nothing to hide");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    }
}
