//! How one call retries: which failures are worth another attempt, how long to wait before it,
//! and when to give up.
//!
//! [`Attempt`] is how one HTTP attempt ended; [`classify`] maps an error status onto it (a 429
//! that says "insufficient_quota" is fatal: waiting does not buy credit). [`AttemptCounts`] keeps
//! the failures of one call against their bounds: transport errors, retryable statuses and 429s
//! share `max_attempts` (so a server that keeps rejecting a call fails its ticket rather than being
//! hammered), invalid replies have `max_invalid_attempts`. The pause before the next attempt is the
//! server's `Retry-After` when it sent one, else full-jitter exponential backoff, so callers that
//! failed together do not retry together. Pacing the whole model to the server's limits is
//! `limits`' job; this module only decides about one call.

use std::time::{Duration, SystemTime};

use super::Response;
use crate::config::ModelLimits;
use crate::value::InvalidOutput;

/// First backoff step; attempt `n` waits a random time up to `BACKOFF_BASE * 2^(n-1)`.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff between two attempts (a server's `Retry-After` may ask for more).
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// The longest `Retry-After` taken as given: a day. Any deadline is shorter, so a larger value
/// changes nothing except that it could not be represented (or added to an `Instant`).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The failed attempts of one call so far, by the bound each kind counts against.
#[derive(Default)]
pub(super) struct AttemptCounts {
    /// Transport errors, timeouts and retryable statuses other than 429.
    transient: u32,
    /// 429s. With the transient ones, bounded by `max_attempts`: pacing to the server's limits
    /// makes them rare, and a call that keeps being rejected should fail its ticket (the next
    /// build retries it) rather than hammer the server.
    throttles: u32,
    /// Malformed or invalid replies: bounded by `max_invalid_attempts`.
    invalid: u32,
    /// The last failure was a 429.
    pub(super) last_was_throttle: bool,
}

impl AttemptCounts {
    pub(super) fn total(&self) -> u32 {
        self.transient + self.throttles + self.invalid
    }

    /// Counts a retryable failure; whether its bound is reached, and the pause before the next
    /// attempt (the server's `Retry-After` when it sent one, plus a little jitter).
    pub(super) fn retry(
        &mut self,
        throttled: bool,
        retry_after: Option<Duration>,
        limits: &ModelLimits,
    ) -> (bool, Duration) {
        self.last_was_throttle = throttled;
        let step = if throttled {
            self.throttles += 1;
            self.throttles
        } else {
            self.transient += 1;
            self.transient
        };
        let delay = match retry_after {
            Some(wait) => wait + jitter(Duration::from_millis(100) + wait / 10),
            None => backoff(step),
        };
        (
            self.transient + self.throttles >= limits.max_attempts,
            delay,
        )
    }

    /// Counts a reply that did not validate; whether its bound is reached, and the pause.
    pub(super) fn invalid(&mut self, limits: &ModelLimits) -> (bool, Duration) {
        self.invalid += 1;
        (
            self.invalid >= limits.max_invalid_attempts,
            backoff(self.invalid),
        )
    }
}

/// How one attempt ended.
pub(super) enum Attempt {
    Done(Response),
    /// Worth another attempt after a pause (429, 408, 409, 5xx, timeout, connection error).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        throttled: bool,
    },
    /// The server answered, but not with a usable reply.
    Malformed(String),
    /// The reply's output did not validate against the node's kind.
    Invalid(InvalidOutput),
    /// Retrying cannot help.
    Fatal {
        message: String,
        sticky: bool,
    },
}

/// What an HTTP error status means for the call.
pub(super) fn classify(status: u16, message: String, retry_after: Option<Duration>) -> Attempt {
    let reason = format!("HTTP {status}: {message}");
    if status == 429 && message.contains("insufficient_quota") {
        // OpenAI's "out of credit" arrives as a 429, but waiting does not fix it.
        return Attempt::Fatal {
            message: reason,
            sticky: true,
        };
    }
    match status {
        429 | 408 | 409 | 500..=599 => Attempt::Retry {
            reason,
            retry_after,
            throttled: status == 429,
        },
        401..=404 => Attempt::Fatal {
            message: reason,
            sticky: true,
        },
        _ => Attempt::Fatal {
            message: reason,
            sticky: false,
        },
    }
}

/// `Retry-After` as seconds (`120`) or an HTTP date; a date in the past means now. Capped at
/// `MAX_RETRY_AFTER`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        // Clamped before the conversion: `Duration::from_secs_f64` panics on values a Duration
        // cannot hold (`1e30`).
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Full-jitter exponential backoff before retry `n` (1-based).
fn backoff(n: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    jitter(ceiling)
}

/// A random duration up to `ceiling`, so that callers that failed together do not retry
/// together. fastrand's generator is seeded per thread from the OS: no two processes share it.
fn jitter(ceiling: Duration) -> Duration {
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        for n in 1..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (n - 1).min(16))
                .min(BACKOFF_CAP);
            for _ in 0..20 {
                assert!(backoff(n) <= ceiling);
            }
        }
        let samples: Vec<Duration> = (0..50).map(|_| backoff(4)).collect();
        assert!(samples.iter().any(|d| *d != samples[0]), "jitter varies");
    }

    #[test]
    fn statuses_are_classified() {
        let retry = |s| matches!(classify(s, String::new(), None), Attempt::Retry { .. });
        for status in [429, 408, 409, 500, 502, 503, 529] {
            assert!(retry(status), "{status}");
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(
                matches!(classify(status, String::new(), None), Attempt::Fatal { .. }),
                "{status}"
            );
        }
        assert!(matches!(
            classify(401, String::new(), None),
            Attempt::Fatal { sticky: true, .. }
        ));
        assert!(matches!(
            classify(400, String::new(), None),
            Attempt::Fatal { sticky: false, .. }
        ));
        let quota = "You exceeded your current quota (insufficient_quota)".to_string();
        assert!(matches!(
            classify(429, quota, None),
            Attempt::Fatal { sticky: true, .. }
        ));
    }
}
