//! The mock's rate limit: a requests-per-minute and a tokens-per-minute token bucket, and the
//! headers real providers send about them.
//!
//! Each bucket holds at most a minute's worth (or `burst`), refills continuously at the limit
//! per minute, and starts full (a fresh key) or empty. A request takes one request and its
//! tokens (the prompt's characters / 4 plus `max_tokens`, 1,024 when unset, as providers
//! reserve) from both; when either is short it is answered 429 with `Retry-After`. Every answer,
//! 429s included, carries the buckets' state in the chosen header style: OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as a duration such as `1m2.5s`)
//! or Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (reset as an
//! RFC 3339 time), or none.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Which headers describe the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    OpenAi,
    Anthropic,
    /// The limits are enforced but not described (only `Retry-After` on a 429).
    None,
}

/// A rate limit the mock enforces.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub headers: HeaderStyle,
    /// Buckets start full (as for a key that has been idle) rather than empty.
    pub full_at_start: bool,
    /// Most requests the requests bucket holds (default: a minute's worth).
    pub burst: Option<u64>,
}

impl RateLimit {
    /// OpenAI-style headers, full at start.
    pub fn requests_per_minute(limit: u64) -> RateLimit {
        RateLimit {
            requests_per_minute: Some(limit),
            tokens_per_minute: None,
            headers: HeaderStyle::OpenAi,
            full_at_start: true,
            burst: None,
        }
    }
}

/// One bucket.
#[derive(Debug)]
struct Bucket {
    per_minute: u64,
    capacity: f64,
    level: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(per_minute: u64, capacity: Option<u64>, full: bool, now: Instant) -> Bucket {
        let capacity = capacity.unwrap_or(per_minute).max(1) as f64;
        Bucket {
            per_minute,
            capacity,
            level: if full { capacity } else { 0.0 },
            refilled: now,
        }
    }

    fn rate(&self) -> f64 {
        self.per_minute as f64 / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.level = (self.level + elapsed * self.rate()).min(self.capacity);
        self.refilled = now;
    }

    /// How long until `weight` is in the bucket.
    fn short_by(&self, weight: f64) -> Option<Duration> {
        let missing = weight.min(self.capacity) - self.level;
        (missing > 0.0).then(|| Duration::from_secs_f64(missing / self.rate()))
    }

    fn until_full(&self) -> Duration {
        Duration::from_secs_f64((self.capacity - self.level).max(0.0) / self.rate())
    }
}

/// The buckets of one mock, and the headers their state gives.
#[derive(Debug)]
pub struct Buckets {
    style: HeaderStyle,
    burst: Option<u64>,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// What the buckets said to one request.
pub struct Verdict {
    /// `None`: go ahead; `Some(wait)`: answer 429, to be retried after `wait`.
    pub rejected: Option<Duration>,
    pub headers: Vec<(String, String)>,
}

impl Buckets {
    pub fn new(limit: &RateLimit) -> Buckets {
        let now = Instant::now();
        Buckets {
            style: limit.headers,
            burst: limit.burst,
            requests: limit
                .requests_per_minute
                .map(|l| Bucket::new(l, limit.burst, limit.full_at_start, now)),
            tokens: limit
                .tokens_per_minute
                .map(|l| Bucket::new(l, None, limit.full_at_start, now)),
        }
    }

    /// Changes the limits from now on (a plan changed, a shared key got busier); what the buckets
    /// hold is kept, up to the new capacity.
    pub fn set_limits(&mut self, requests_per_minute: Option<u64>, tokens_per_minute: Option<u64>) {
        let now = Instant::now();
        let burst = self.burst;
        let change = |bucket: &mut Option<Bucket>, limit: Option<u64>, capacity: Option<u64>| {
            if let Some(b) = bucket.as_mut() {
                b.refill(now);
            }
            *bucket = limit.map(|l| {
                let level = bucket.as_ref().map_or(0.0, |b| b.level);
                let mut fresh = Bucket::new(l, capacity, false, now);
                fresh.level = level.min(fresh.capacity);
                fresh
            });
        };
        change(&mut self.requests, requests_per_minute, burst);
        change(&mut self.tokens, tokens_per_minute, None);
    }

    /// Takes one request of `tokens` from the buckets, or says how long to wait.
    pub fn take(&mut self, tokens: u64) -> Verdict {
        let now = Instant::now();
        for bucket in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            bucket.refill(now);
        }
        let weight = tokens as f64;
        let wait = [
            self.requests.as_ref().and_then(|b| b.short_by(1.0)),
            self.tokens.as_ref().and_then(|b| b.short_by(weight)),
        ]
        .into_iter()
        .flatten()
        .max();
        if wait.is_none() {
            if let Some(b) = &mut self.requests {
                b.level -= 1.0;
            }
            if let Some(b) = &mut self.tokens {
                b.level -= weight.min(b.capacity);
            }
        }
        Verdict {
            rejected: wait,
            headers: self.headers(),
        }
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        for (name, bucket) in [("requests", &self.requests), ("tokens", &self.tokens)] {
            let Some(bucket) = bucket else { continue };
            let remaining = bucket.level.max(0.0).floor() as u64;
            let reset = bucket.until_full();
            match self.style {
                HeaderStyle::OpenAi => {
                    headers.push((
                        format!("x-ratelimit-limit-{name}"),
                        bucket.per_minute.to_string(),
                    ));
                    headers.push((
                        format!("x-ratelimit-remaining-{name}"),
                        remaining.to_string(),
                    ));
                    headers.push((format!("x-ratelimit-reset-{name}"), go_duration(reset)));
                }
                HeaderStyle::Anthropic => {
                    let at = chrono::DateTime::<chrono::Utc>::from(SystemTime::now() + reset);
                    let prefix = format!("anthropic-ratelimit-{name}");
                    headers.push((format!("{prefix}-limit"), bucket.per_minute.to_string()));
                    headers.push((format!("{prefix}-remaining"), remaining.to_string()));
                    headers.push((
                        format!("{prefix}-reset"),
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ));
                }
                HeaderStyle::None => {}
            }
        }
        headers
    }
}

/// The tokens a request reserves: its text's characters / 4 plus its `max_tokens`.
pub fn reserved_tokens(body: &Value, text: &str) -> u64 {
    let max_tokens = body["max_tokens"]
        .as_u64()
        .or_else(|| body["max_completion_tokens"].as_u64())
        .unwrap_or(1024);
    (text.chars().count() as u64).div_ceil(4) + max_tokens
}

/// A duration as OpenAI writes it: `250ms`, `6s`, `1m2.5s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let seconds = (ms % 60_000) as f64 / 1000.0;
    let seconds = format!("{seconds:.3}");
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}
