//! Per-model scheduling: how many calls may be in flight, and how many may start per minute.
//!
//! This module owns the [`Limiter`] one HTTP provider instance holds for its model: a concurrency cap
//! that halves for a while when the server answers 429 and grows back one slot per round of
//! successes (additive increase, multiplicative decrease); two budgets over a sliding 60-second
//! window, one counting requests and one counting estimated tokens (the limits the user set); and
//! the server's own limits as its replies report them (`ratelimit`'s gauges), which refine those:
//! a request starts when every one of them has room. When most recent attempts are rejected
//! anyway, the whole model pauses (not each call on its own), and says so once. It knows nothing
//! of HTTP or of retries (that is `http`): callers take a [`Permit`] before each attempt and
//! report how it went, with what the reply said about the limits.
//! The invariants: at most `max_concurrency` permits are out at once; in any 60-second window the
//! permits handed out weigh at most `requests_per_minute` requests and `tokens_per_minute` tokens
//! (a single request heavier than the whole token budget is let through alone, on an empty window);
//! and starts are paced evenly within the minute instead of bursting it all at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::ratelimit::{Gauge, Reported, Window};

/// The window rate limits are counted over.
const WINDOW: Duration = Duration::from_secs(60);

/// After a 429 halves the concurrency, further 429s within this time do not halve it again: they
/// were most likely sent before the first cut took effect.
const CUT_COOLDOWN: Duration = Duration::from_secs(1);

/// The shortest wait when a budget is exhausted, so rounding never makes a waiter spin.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// The attempts whose outcome decides whether the server is rejecting most of them.
const RECENT: usize = 20;
/// Fewer recent attempts than this say nothing yet.
const RECENT_ENOUGH: usize = 10;
/// The first pause of the whole model; each pause in a row doubles it, up to `PAUSE_CAP`.
const PAUSE_BASE: Duration = Duration::from_secs(1);
const PAUSE_CAP: Duration = Duration::from_secs(60);

/// Concurrency and rate limits of one model.
pub(crate) struct Limiter {
    max: usize,
    semaphore: Semaphore,
    adaptive: Mutex<Adaptive>,
    /// Held across the wait, so waiters are served first come, first served.
    budgets: tokio::sync::Mutex<Budgets>,
    server: Mutex<Server>,
    waiting: Mutex<WaitClock>,
}

/// What the server has said, and what was sent since.
#[derive(Default)]
struct Server {
    requests: Option<Gauge>,
    tokens: Option<Gauge>,
    input_tokens: Option<Gauge>,
    output_tokens: Option<Gauge>,
    /// Permits out, by the order they were handed out, with their weights: what a reply to an
    /// earlier one cannot have counted yet.
    in_flight: BTreeMap<u64, Weight>,
    next_seq: u64,
    /// The last attempts' outcomes, `true` for a 429.
    recent: VecDeque<bool>,
    paused_until: Option<Instant>,
    /// Pauses in a row (without an answered attempt between them).
    pauses: u32,
    /// Said once, then taken by [`Limiter::take_notice`].
    notice: Option<String>,
    noticed: bool,
}

/// What one request weighs against the limits, in estimated tokens.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Weight {
    pub(crate) prompt: u64,
    pub(crate) output: u64,
}

impl Weight {
    fn total(&self) -> u64 {
        self.prompt + self.output
    }
}

/// The wall-clock time during which at least one call of the model waited for a rate limit.
#[derive(Default)]
struct WaitClock {
    waiting: usize,
    since: Option<Instant>,
    total: Duration,
}

/// Counts as waiting for the rate limit while held.
pub(crate) struct Waiting<'a>(&'a Limiter);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut clock = self.0.clock();
        clock.waiting -= 1;
        if clock.waiting == 0 {
            if let Some(since) = clock.since.take() {
                clock.total += since.elapsed();
            }
        }
    }
}

/// The server's limits as last reported, for the build summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ReportedLimits {
    pub(crate) requests_per_minute: Option<u64>,
    pub(crate) tokens_per_minute: Option<u64>,
}

struct Adaptive {
    /// Permits that may be out now (at most `max`).
    effective: usize,
    /// Permits still to be withdrawn as they come back (a cut larger than the permits free then).
    debt: usize,
    /// Successes since the last change of `effective`.
    successes: usize,
    last_cut: Option<Instant>,
}

struct Budgets {
    requests: Option<Budget>,
    tokens: Option<Budget>,
}

/// Leave to make one attempt; give it back by dropping it.
pub(crate) struct Permit<'a> {
    limiter: &'a Limiter,
    permit: Option<SemaphorePermit<'a>>,
    /// Its place in the order permits were handed out.
    seq: u64,
}

impl Limiter {
    pub(crate) fn new(
        max_concurrency: usize,
        requests_per_minute: Option<u64>,
        tokens_per_minute: Option<u64>,
    ) -> Limiter {
        let max = max_concurrency.max(1);
        let now = Instant::now();
        Limiter {
            max,
            semaphore: Semaphore::new(max),
            adaptive: Mutex::new(Adaptive {
                effective: max,
                debt: 0,
                successes: 0,
                last_cut: None,
            }),
            budgets: tokio::sync::Mutex::new(Budgets {
                requests: requests_per_minute.map(|limit| Budget::new(limit, now)),
                tokens: tokens_per_minute.map(|limit| Budget::new(limit, now)),
            }),
            server: Mutex::new(Server::default()),
            waiting: Mutex::new(WaitClock::default()),
        }
    }

    /// Waits for a concurrency slot, then for room in the request and token budgets and in the
    /// server's reported limits, and for the end of a pause of the whole model.
    pub(crate) async fn acquire(&self, weight: Weight) -> Permit<'_> {
        // The semaphore is never closed, so `acquire` cannot fail; if it ever did, the call would
        // still be bounded by the budgets below.
        let permit = self.semaphore.acquire().await.ok();
        let mut budgets = self.budgets.lock().await;
        let mut waiting = None;
        let seq = loop {
            let now = Instant::now();
            let wait = {
                let mut server = self.server();
                let wait = budgets
                    .wait(now, weight.total())
                    .max(server.wait(now, weight));
                if wait.is_zero() {
                    budgets.take(now, weight.total());
                    break server.take(weight);
                }
                wait
            };
            waiting.get_or_insert_with(|| self.wait_for_limit());
            tokio::time::sleep(wait).await;
        };
        drop(waiting);
        drop(budgets);
        Permit {
            limiter: self,
            permit,
            seq,
        }
    }

    /// Counts as waiting for the rate limit until dropped (a 429's pause is such a wait too).
    pub(crate) fn wait_for_limit(&self) -> Waiting<'_> {
        let mut clock = self.clock();
        clock.waiting += 1;
        clock.since.get_or_insert_with(Instant::now);
        Waiting(self)
    }

    /// The wall-clock time so far during which a call waited for a rate limit.
    pub(crate) fn time_waited(&self) -> Duration {
        let clock = self.clock();
        clock.total + clock.since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// The server's limits as last reported.
    pub(crate) fn reported_limits(&self) -> ReportedLimits {
        let server = self.server();
        ReportedLimits {
            requests_per_minute: server.requests.as_ref().map(Gauge::per_minute),
            tokens_per_minute: server
                .tokens
                .as_ref()
                .or(server.input_tokens.as_ref())
                .map(Gauge::per_minute),
        }
    }

    /// What the limiter has to say once (the server rejecting most attempts), if not yet taken.
    pub(crate) fn take_notice(&self) -> Option<String> {
        self.server().notice.take()
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Server> {
        // Consistent even if a holder panicked: every update is a few assignments.
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, WaitClock> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Permits that may be out at once right now (what the tests watch adapt).
    #[cfg(test)]
    pub(crate) fn effective_concurrency(&self) -> usize {
        self.adaptive().effective
    }

    fn adaptive(&self) -> std::sync::MutexGuard<'_, Adaptive> {
        // The state stays consistent even if a holder panicked: every update is a few assignments.
        self.adaptive.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server answered 429: halve the concurrency (once per cooldown), or bring it down to
    /// one when the whole model pauses (it then grows back as calls succeed, a slow start).
    fn throttled(&self, pausing: bool) {
        let mut state = self.adaptive();
        state.successes = 0;
        let now = Instant::now();
        if !pausing
            && state
                .last_cut
                .is_some_and(|at| now.duration_since(at) < CUT_COOLDOWN)
        {
            return;
        }
        state.last_cut = Some(now);
        let target = if pausing {
            1
        } else {
            (state.effective / 2).max(1)
        };
        let cut = state.effective - target;
        state.effective = target;
        let withdrawn = self.semaphore.forget_permits(cut);
        state.debt += cut - withdrawn;
    }

    /// An attempt got an answer that was not a 429: after a full round of those, allow one more.
    fn succeeded(&self) {
        let mut state = self.adaptive();
        state.successes += 1;
        if state.successes >= state.effective && state.effective < self.max {
            state.successes = 0;
            state.effective += 1;
            if state.debt > 0 {
                state.debt -= 1;
            } else {
                self.semaphore.add_permits(1);
            }
        }
    }
}

impl Permit<'_> {
    /// The attempt was answered 429 (too many requests); `retry_after` is the server's wait,
    /// `model` names the model in the notice a pause of the whole model gives.
    pub(crate) fn throttled(self, reported: &Reported, retry_after: Option<Duration>, model: &str) {
        let pausing = {
            let mut server = self.limiter.server();
            server.follow(self.seq, reported);
            server.outcome(true);
            server.maybe_pause(retry_after, model)
        };
        self.limiter.throttled(pausing);
    }

    /// The server answered (whatever the content) without asking us to slow down.
    pub(crate) fn answered(self, reported: &Reported) {
        self.limiter.succeeded();
        let mut server = self.limiter.server();
        server.follow(self.seq, reported);
        server.outcome(false);
        server.pauses = 0;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.server().in_flight.remove(&self.seq);
        if let Some(permit) = self.permit.take() {
            let mut state = self.limiter.adaptive();
            if state.debt > 0 {
                state.debt -= 1;
                permit.forget();
            }
        }
    }
}

impl Server {
    /// How long until a request of `weight` may start: the pause, and each reported limit.
    fn wait(&mut self, now: Instant, weight: Weight) -> Duration {
        let paused = self
            .paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let gauges = [
            (&mut self.requests, 1),
            (&mut self.tokens, weight.total()),
            (&mut self.input_tokens, weight.prompt),
            (&mut self.output_tokens, weight.output),
        ];
        gauges
            .into_iter()
            .filter_map(|(gauge, w)| gauge.as_mut().map(|g| g.wait(now, w)))
            .fold(paused, Duration::max)
    }

    /// Takes a request's weight from every gauge; its place in the order of permits.
    fn take(&mut self, weight: Weight) -> u64 {
        for (gauge, w) in [
            (&mut self.requests, 1),
            (&mut self.tokens, weight.total()),
            (&mut self.input_tokens, weight.prompt),
            (&mut self.output_tokens, weight.output),
        ] {
            if let Some(gauge) = gauge {
                gauge.take(w);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.insert(seq, weight);
        seq
    }

    /// The reply to permit `seq` described the limits: the gauges follow it, less what was sent
    /// after that request (which the server may not have counted).
    fn follow(&mut self, seq: u64, reported: &Reported) {
        self.in_flight.remove(&seq);
        if reported.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut since = Weight::default();
        let mut requests_since = 0;
        for weight in self.in_flight.range(seq + 1..).map(|(_, w)| w) {
            requests_since += 1;
            since.prompt += weight.prompt;
            since.output += weight.output;
        }
        let updates = [
            (&mut self.requests, reported.requests, requests_since),
            (&mut self.tokens, reported.tokens, since.total()),
            (&mut self.input_tokens, reported.input_tokens, since.prompt),
            (
                &mut self.output_tokens,
                reported.output_tokens,
                since.output,
            ),
        ];
        for (gauge, window, sent_since) in updates {
            if let Some(Window {
                limit: Some(limit),
                remaining: Some(remaining),
                ..
            }) = window
            {
                match gauge {
                    Some(gauge) => gauge.follow(limit, remaining, sent_since, now),
                    None => *gauge = Some(Gauge::new(limit, remaining, sent_since, now)),
                }
            }
        }
    }

    fn outcome(&mut self, rejected: bool) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(rejected);
    }

    /// When most recent attempts were rejected, the whole model pauses: for the server's
    /// `Retry-After` if it is longer, else for a wait that doubles with each pause in a row.
    /// Whether it paused now.
    fn maybe_pause(&mut self, retry_after: Option<Duration>, model: &str) -> bool {
        let rejected = self.recent.iter().filter(|r| **r).count();
        if self.recent.len() < RECENT_ENOUGH || rejected * 2 <= self.recent.len() {
            return false;
        }
        let now = Instant::now();
        if self.paused_until.is_some_and(|until| until > now) {
            return false;
        }
        let doubling = PAUSE_BASE
            .saturating_mul(1 << self.pauses.min(6))
            .min(PAUSE_CAP);
        let pause = retry_after.unwrap_or_default().max(doubling);
        self.pauses += 1;
        self.paused_until = Some(now + pause);
        if !self.noticed {
            self.noticed = true;
            let limits = match (&self.requests, &self.tokens.as_ref().or(self.input_tokens.as_ref())) {
                (None, None) => "the server reports no limits; set `requests_per_minute` or `tokens_per_minute` for this model".to_string(),
                (requests, tokens) => {
                    let mut parts = Vec::new();
                    if let Some(g) = requests {
                        parts.push(format!("{} requests a minute", g.per_minute()));
                    }
                    if let Some(g) = tokens {
                        parts.push(format!("{} tokens a minute", g.per_minute()));
                    }
                    format!("the server reports {}", parts.join(" and "))
                }
            };
            self.notice = Some(format!(
                "{model}: the server rejected {rejected} of the last {} attempts (429); every call of the model pauses for {:.1} s, then goes at the pace the limits allow ({limits})",
                self.recent.len(),
                pause.as_secs_f64()
            ));
        }
        self.recent.clear();
        true
    }
}

impl Budgets {
    fn wait(&mut self, now: Instant, tokens: u64) -> Duration {
        let requests = self
            .requests
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait(now, 1));
        let tokens = self
            .tokens
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait(now, tokens));
        requests.max(tokens)
    }

    fn take(&mut self, now: Instant, tokens: u64) {
        if let Some(budget) = &mut self.requests {
            budget.take(now, 1);
        }
        if let Some(budget) = &mut self.tokens {
            budget.take(now, tokens);
        }
    }
}

/// A per-minute budget: a strict sliding-window count, plus a token bucket that paces starts at
/// `limit / 60` per second with a burst of two seconds' worth.
struct Budget {
    limit: u64,
    /// Refill per second.
    rate: f64,
    burst: f64,
    level: f64,
    refilled: Instant,
    /// Starts within the last minute with their weights, oldest first.
    log: VecDeque<(Instant, u64)>,
    used: u64,
}

impl Budget {
    fn new(limit: u64, now: Instant) -> Budget {
        let limit = limit.max(1);
        let burst = (limit as f64 / 30.0).max(1.0);
        Budget {
            limit,
            rate: limit as f64 / 60.0,
            burst,
            level: burst,
            refilled: now,
            log: VecDeque::new(),
            used: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        while let Some(&(at, weight)) = self.log.front() {
            if at + WINDOW > now {
                break;
            }
            self.used -= weight;
            self.log.pop_front();
        }
    }

    /// How long until `weight` may start; zero when it may start now.
    fn wait(&mut self, now: Instant, weight: u64) -> Duration {
        self.refill(now);
        let need = (weight as f64).min(self.burst);
        let pace = if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.rate).max(MIN_WAIT)
        };
        let window = if self.used == 0 || self.used + weight <= self.limit {
            Duration::ZERO
        } else {
            // Wait for the oldest starts to leave the window until this one fits (or the window
            // is empty, for a request heavier than the whole budget).
            let mut left = self.used;
            let mut until = now;
            for &(at, w) in &self.log {
                left -= w;
                until = at + WINDOW;
                if left == 0 || left + weight <= self.limit {
                    break;
                }
            }
            until.saturating_duration_since(now).max(MIN_WAIT)
        };
        pace.max(window)
    }

    fn take(&mut self, now: Instant, weight: u64) {
        self.level -= weight as f64;
        self.log.push_back((now, weight));
        self.used += weight;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn weight(tokens: u64) -> Weight {
        Weight {
            prompt: tokens,
            output: 0,
        }
    }

    /// Start times of `n` acquisitions made as fast as the limiter allows.
    async fn starts(limiter: Arc<Limiter>, n: usize, tokens: u64) -> Vec<Duration> {
        let origin = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let limiter = Arc::clone(&limiter);
            tasks.push(tokio::spawn(async move {
                let permit = limiter.acquire(weight(tokens)).await;
                let at = origin.elapsed();
                permit.answered(&Reported::default());
                at
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out.sort();
        out
    }

    fn max_in_window(starts: &[Duration], weights: impl Fn(usize) -> u64) -> u64 {
        (0..starts.len())
            .map(|i| {
                (i..starts.len())
                    .take_while(|&j| starts[j] < starts[i] + WINDOW)
                    .map(&weights)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_holds_in_every_window() {
        let limiter = Arc::new(Limiter::new(1000, Some(60), None));
        let paced = starts(limiter, 200, 10).await;
        assert!(max_in_window(&paced, |_| 1) <= 60, "{paced:?}");
        // Paced, not bursting: the first minute's 60 starts are spread over it.
        assert!(paced[10] >= Duration::from_secs(8), "{:?}", &paced[..12]);
        // And not slower than the limit needs: 200 starts fit in a little over three minutes.
        assert!(paced[199] <= Duration::from_secs(205), "{:?}", paced[199]);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_per_minute_holds_and_lets_a_huge_request_through_alone() {
        let limiter = Arc::new(Limiter::new(1000, None, Some(6000)));
        let paced = starts(Arc::clone(&limiter), 30, 1000).await;
        assert!(max_in_window(&paced, |_| 1000) <= 6000, "{paced:?}");
        assert!(paced[29] >= Duration::from_secs(240), "{paced:?}");

        let limiter = Arc::new(Limiter::new(1000, None, Some(500)));
        let huge = starts(limiter, 3, 2000).await;
        assert!(
            huge[1] >= huge[0] + WINDOW && huge[2] >= huge[1] + WINDOW,
            "{huge:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_halves_on_429_and_grows_back() {
        let limiter = Limiter::new(16, None, None);
        limiter
            .acquire(weight(1))
            .await
            .throttled(&Reported::default(), None, "m");
        assert_eq!(limiter.effective_concurrency(), 8);
        // A second 429 right after the first is part of the same burst.
        limiter
            .acquire(weight(1))
            .await
            .throttled(&Reported::default(), None, "m");
        assert_eq!(limiter.effective_concurrency(), 8);
        tokio::time::advance(CUT_COOLDOWN).await;
        limiter
            .acquire(weight(1))
            .await
            .throttled(&Reported::default(), None, "m");
        assert_eq!(limiter.effective_concurrency(), 4);
        // Only 4 permits can be out now.
        let held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..4).map(|_| limiter.acquire(weight(1)))).await;
        assert!(
            tokio::time::timeout(Duration::from_secs(1), limiter.acquire(weight(1)))
                .await
                .is_err()
        );
        drop(held);
        for _ in 0..200 {
            limiter
                .acquire(weight(1))
                .await
                .answered(&Reported::default());
        }
        assert_eq!(limiter.effective_concurrency(), 16);
        let held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..16).map(|_| limiter.acquire(weight(1)))).await;
        assert_eq!(held.len(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_while_permits_are_out_is_collected_as_they_return() {
        let limiter = Limiter::new(4, None, None);
        let mut held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..4).map(|_| limiter.acquire(weight(1)))).await;
        if let Some(permit) = held.pop() {
            permit.throttled(&Reported::default(), None, "m");
        }
        assert_eq!(limiter.effective_concurrency(), 2);
        drop(held);
        let held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..2).map(|_| limiter.acquire(weight(1)))).await;
        assert!(
            tokio::time::timeout(Duration::from_secs(1), limiter.acquire(weight(1)))
                .await
                .is_err()
        );
        drop(held);
    }
}
