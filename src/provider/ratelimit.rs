//! What a server says about its rate limits, and a gauge that follows it.
//!
//! This module owns reading the rate-limit headers providers send on every reply (success and
//! 429 alike): OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (also sent by
//! OpenRouter, Together, Groq, vLLM and LiteLLM; reset as a duration such as `200ms`, `6s` or
//! `1m2.5s`) and Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
//! {limit,remaining,reset}` (reset as an RFC 3339 time); and the [`Gauge`] that mirrors one of
//! the server's buckets between replies. The limiter (`limits`) decides with the gauges; this
//! module knows nothing of permits or HTTP clients.
//!
//! The model of a server behind the headers: a bucket that holds `limit` (a minute's worth) and
//! refills at `limit` per minute, of which `remaining` is left when the reply was made. That is
//! what OpenAI and Anthropic document; a fixed-window server is followed by it too, only more
//! cautiously (its burst at the window's start is not used).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use tokio::time::Instant;

/// One limit as a reply described it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Window {
    /// Per minute.
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
    /// Until the bucket is full again.
    pub(crate) reset: Option<Duration>,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// Every limit one reply described.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Reported {
    pub(crate) requests: Option<Window>,
    /// Prompt and output tokens together (OpenAI's `tokens`, Anthropic's `tokens`).
    pub(crate) tokens: Option<Window>,
    /// Anthropic's separate input and output token limits.
    pub(crate) input_tokens: Option<Window>,
    pub(crate) output_tokens: Option<Window>,
}

impl Reported {
    /// What `headers` say; `now` reads Anthropic's reset times.
    pub(crate) fn read(headers: &HeaderMap, now: SystemTime) -> Reported {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let number = |name: &str| text(name).and_then(|v| v.trim().parse::<u64>().ok());
        let openai = |kind: &str| Window {
            limit: number(&format!("x-ratelimit-limit-{kind}")),
            remaining: number(&format!("x-ratelimit-remaining-{kind}")),
            reset: text(&format!("x-ratelimit-reset-{kind}")).and_then(parse_duration),
        };
        let anthropic = |kind: &str| Window {
            limit: number(&format!("anthropic-ratelimit-{kind}-limit")),
            remaining: number(&format!("anthropic-ratelimit-{kind}-remaining")),
            reset: text(&format!("anthropic-ratelimit-{kind}-reset"))
                .and_then(|v| until_rfc3339(v, now)),
        };
        let either = |kind: &str| {
            let window = openai(kind);
            let window = if window.is_empty() {
                anthropic(kind)
            } else {
                window
            };
            (!window.is_empty()).then_some(window)
        };
        let only = |window: Window| (!window.is_empty()).then_some(window);
        Reported {
            requests: either("requests"),
            tokens: either("tokens"),
            input_tokens: only(anthropic("input-tokens")),
            output_tokens: only(anthropic("output-tokens")),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_none()
            && self.tokens.is_none()
            && self.input_tokens.is_none()
            && self.output_tokens.is_none()
    }
}

/// A duration as rate-limit headers write it: Go's notation (`200ms`, `6s`, `1m2.5s`, `1h0m0s`)
/// or a plain number of seconds (`6`, `0.5`).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit..];
    }
    seconds_to_duration(total)
}

/// A day at most: a longer reset changes nothing a build would do differently.
fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// How long from `now` until an RFC 3339 time (zero when it is past).
fn until_rfc3339(text: &str, now: SystemTime) -> Option<Duration> {
    let at: SystemTime = chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()?
        .with_timezone(&chrono::Utc)
        .into();
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

/// A mirror of one of the server's buckets: what the last reply said was left, refilled at the
/// reported rate since, less what was sent since.
#[derive(Debug, Clone)]
pub(crate) struct Gauge {
    per_minute: u64,
    level: f64,
    refilled: Instant,
}

impl Gauge {
    /// A gauge from a reply's limit and remaining; `sent_since` is what was sent after the
    /// request that reply answers (the server may not have counted it yet).
    pub(crate) fn new(per_minute: u64, remaining: u64, sent_since: u64, now: Instant) -> Gauge {
        Gauge {
            per_minute: per_minute.max(1),
            level: remaining as f64 - sent_since as f64,
            refilled: now,
        }
    }

    pub(crate) fn per_minute(&self) -> u64 {
        self.per_minute
    }

    fn rate(&self) -> f64 {
        self.per_minute as f64 / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.level = (self.level + elapsed * self.rate()).min(self.per_minute as f64);
        self.refilled = now;
    }

    /// A later reply: its limit holds from now, and its remaining caps what the gauge thinks is
    /// left (never raises it: what was sent since may not be counted in it yet).
    pub(crate) fn follow(
        &mut self,
        per_minute: u64,
        remaining: u64,
        sent_since: u64,
        now: Instant,
    ) {
        self.refill(now);
        self.per_minute = per_minute.max(1);
        let reported = remaining as f64 - sent_since as f64;
        self.level = self.level.min(reported).min(self.per_minute as f64);
    }

    /// How long until `weight` fits (a weight over the whole bucket waits for a full bucket).
    pub(crate) fn wait(&mut self, now: Instant, weight: u64) -> Duration {
        self.refill(now);
        let need = (weight as f64).min(self.per_minute as f64);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.rate())
        }
    }

    pub(crate) fn take(&mut self, weight: u64) {
        self.level -= (weight as f64).min(self.per_minute as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn durations_in_go_notation_and_plain_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("200ms"), Some(ms(200)));
        assert_eq!(parse_duration("6s"), Some(ms(6000)));
        assert_eq!(parse_duration("1m2.5s"), Some(ms(62_500)));
        assert_eq!(parse_duration("1h0m0s"), Some(ms(3_600_000)));
        assert_eq!(parse_duration("0.5"), Some(ms(500)));
        assert_eq!(parse_duration(" 7 "), Some(ms(7000)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("-1"), None);
    }

    #[test]
    fn openai_headers_are_read() {
        let reported = Reported::read(
            &headers(&[
                ("x-ratelimit-limit-requests", "300"),
                ("x-ratelimit-remaining-requests", "298"),
                ("x-ratelimit-reset-requests", "400ms"),
                ("x-ratelimit-limit-tokens", "40000"),
                ("x-ratelimit-remaining-tokens", "39000"),
                ("x-ratelimit-reset-tokens", "1m2.5s"),
            ]),
            SystemTime::now(),
        );
        assert_eq!(
            reported.requests,
            Some(Window {
                limit: Some(300),
                remaining: Some(298),
                reset: Some(Duration::from_millis(400)),
            })
        );
        assert_eq!(reported.tokens.unwrap().limit, Some(40_000));
        assert_eq!(
            reported.tokens.unwrap().reset,
            Some(Duration::from_millis(62_500))
        );
        assert!(reported.input_tokens.is_none());
        assert!(Reported::read(&HeaderMap::new(), SystemTime::now()).is_empty());
    }

    #[test]
    fn anthropic_headers_are_read_with_reset_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_30s = chrono::DateTime::<chrono::Utc>::from(now + Duration::from_secs(30))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let reported = Reported::read(
            &headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "49"),
                ("anthropic-ratelimit-requests-reset", &in_30s),
                ("anthropic-ratelimit-input-tokens-limit", "20000"),
                ("anthropic-ratelimit-input-tokens-remaining", "19000"),
                ("anthropic-ratelimit-output-tokens-limit", "4000"),
                ("anthropic-ratelimit-output-tokens-remaining", "3900"),
                ("anthropic-ratelimit-tokens-reset", "2020-01-01T00:00:00Z"),
            ]),
            now,
        );
        let requests = reported.requests.unwrap();
        assert_eq!(requests.limit, Some(50));
        assert_eq!(requests.reset, Some(Duration::from_secs(30)));
        assert_eq!(reported.input_tokens.unwrap().limit, Some(20_000));
        assert_eq!(reported.output_tokens.unwrap().remaining, Some(3900));
        assert_eq!(
            reported.tokens.unwrap().reset,
            Some(Duration::ZERO),
            "a past time is now"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_gauge_refills_at_the_reported_rate_and_follows_lower_news() {
        let now = Instant::now();
        let mut gauge = Gauge::new(300, 2, 0, now);
        assert_eq!(gauge.wait(now, 1), Duration::ZERO);
        gauge.take(1);
        gauge.take(1);
        // Empty: the next one in a fifth of a second (300 a minute).
        assert_eq!(gauge.wait(now, 1), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(gauge.wait(Instant::now(), 1), Duration::ZERO);
        // A reply says less is left than the gauge thinks, with 3 sent since: that wins.
        let mut gauge = Gauge::new(300, 100, 0, Instant::now());
        gauge.follow(120, 5, 3, Instant::now());
        assert_eq!(gauge.per_minute(), 120);
        assert_eq!(gauge.wait(Instant::now(), 3), Duration::from_millis(500));
        // More left than the gauge thinks does not raise it.
        gauge.follow(120, 100, 0, Instant::now());
        assert_eq!(gauge.wait(Instant::now(), 3), Duration::from_millis(500));
    }
}
