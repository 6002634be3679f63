//! Per-model scheduling: how many calls may be in flight, and how many may start per minute.
//!
//! This module owns the [`Limiter`] one HTTP provider instance holds for its model: a concurrency cap
//! that halves for a while when the server answers 429 and grows back one slot per round of
//! successes (additive increase, multiplicative decrease), and two budgets over a sliding 60-second
//! window, one counting requests and one counting estimated tokens. It knows nothing of HTTP or of
//! retries (that is `http`): callers take a [`Permit`] before each attempt and report how it went.
//! The invariants: at most `max_concurrency` permits are out at once; in any 60-second window the
//! permits handed out weigh at most `requests_per_minute` requests and `tokens_per_minute` tokens
//! (a single request heavier than the whole token budget is let through alone, on an empty window);
//! and starts are paced evenly within the minute instead of bursting it all at once.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// The window rate limits are counted over.
const WINDOW: Duration = Duration::from_secs(60);

/// After a 429 halves the concurrency, further 429s within this time do not halve it again: they
/// were most likely sent before the first cut took effect.
const CUT_COOLDOWN: Duration = Duration::from_secs(1);

/// The shortest wait when a budget is exhausted, so rounding never makes a waiter spin.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Concurrency and rate limits of one model.
pub(crate) struct Limiter {
    max: usize,
    semaphore: Semaphore,
    adaptive: Mutex<Adaptive>,
    /// Held across the wait, so waiters are served first come, first served.
    budgets: tokio::sync::Mutex<Budgets>,
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
        }
    }

    /// Waits for a concurrency slot, then for room in the request and token budgets.
    pub(crate) async fn acquire(&self, tokens: u64) -> Permit<'_> {
        // The semaphore is never closed, so `acquire` cannot fail; if it ever did, the call would
        // still be bounded by the budgets below.
        let permit = self.semaphore.acquire().await.ok();
        let mut budgets = self.budgets.lock().await;
        loop {
            let now = Instant::now();
            let wait = budgets.wait(now, tokens);
            if wait.is_zero() {
                budgets.take(now, tokens);
                break;
            }
            tokio::time::sleep(wait).await;
        }
        drop(budgets);
        Permit {
            limiter: self,
            permit,
        }
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

    /// The server answered 429: halve the concurrency (once per cooldown).
    fn throttled(&self) {
        let mut state = self.adaptive();
        state.successes = 0;
        let now = Instant::now();
        if state
            .last_cut
            .is_some_and(|at| now.duration_since(at) < CUT_COOLDOWN)
        {
            return;
        }
        state.last_cut = Some(now);
        let target = (state.effective / 2).max(1);
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
    /// The attempt was answered 429 (too many requests).
    pub(crate) fn throttled(self) {
        self.limiter.throttled();
    }

    /// The server answered (whatever the content) without asking us to slow down.
    pub(crate) fn answered(self) {
        self.limiter.succeeded();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let mut state = self.limiter.adaptive();
            if state.debt > 0 {
                state.debt -= 1;
                permit.forget();
            }
        }
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

    /// Start times of `n` acquisitions made as fast as the limiter allows.
    async fn starts(limiter: Arc<Limiter>, n: usize, tokens: u64) -> Vec<Duration> {
        let origin = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let limiter = Arc::clone(&limiter);
            tasks.push(tokio::spawn(async move {
                let permit = limiter.acquire(tokens).await;
                let at = origin.elapsed();
                permit.answered();
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
        limiter.acquire(1).await.throttled();
        assert_eq!(limiter.effective_concurrency(), 8);
        // A second 429 right after the first is part of the same burst.
        limiter.acquire(1).await.throttled();
        assert_eq!(limiter.effective_concurrency(), 8);
        tokio::time::advance(CUT_COOLDOWN).await;
        limiter.acquire(1).await.throttled();
        assert_eq!(limiter.effective_concurrency(), 4);
        // Only 4 permits can be out now.
        let held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..4).map(|_| limiter.acquire(1))).await;
        assert!(
            tokio::time::timeout(Duration::from_secs(1), limiter.acquire(1))
                .await
                .is_err()
        );
        drop(held);
        for _ in 0..200 {
            limiter.acquire(1).await.answered();
        }
        assert_eq!(limiter.effective_concurrency(), 16);
        let held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..16).map(|_| limiter.acquire(1))).await;
        assert_eq!(held.len(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_while_permits_are_out_is_collected_as_they_return() {
        let limiter = Limiter::new(4, None, None);
        let mut held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..4).map(|_| limiter.acquire(1))).await;
        if let Some(permit) = held.pop() {
            permit.throttled();
        }
        assert_eq!(limiter.effective_concurrency(), 2);
        drop(held);
        let held: Vec<Permit<'_>> =
            futures_util::future::join_all((0..2).map(|_| limiter.acquire(1))).await;
        assert!(
            tokio::time::timeout(Duration::from_secs(1), limiter.acquire(1))
                .await
                .is_err()
        );
        drop(held);
    }
}
