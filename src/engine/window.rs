//! Running tickets concurrently: as they finish ([`TicketRunner`], for builds), or in ticket
//! order ([`TicketWindow`], for plans).
//!
//! A build keeps `concurrency` tickets running no matter how far behind the slowest one is: a
//! ticket stuck on a long reply or a backoff does not stop new tickets from starting. Putting rows
//! back in order is the build loop's (it keeps only a small record of a ticket finished ahead of
//! its turn: every answer is in the cache). A plan, which calls nothing and so never waits long,
//! uses the window: tickets in order, never more than `window` past the oldest not yet handed out.
//! The invariant of both: every ticket is started once, in index order, and handed out once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;

use super::ticket::{Mode, TicketOutcome};
use super::{BuildError, Engine};

/// `None` when the ticket was not started because the build was cancelled.
pub(super) type TicketResult = Result<Option<TicketOutcome>, BuildError>;

/// Tickets of a plan, handed out in index order.
pub(super) struct TicketWindow {
    engine: Arc<Engine>,
    rows: u64,
    concurrency: usize,
    window: u64,
    /// The next ticket to start.
    next: u64,
    /// The next ticket to hand out.
    emit: u64,
    in_flight: FuturesUnordered<JoinHandle<(u64, TicketResult)>>,
    ready: BTreeMap<u64, TicketResult>,
}

impl TicketWindow {
    pub(super) fn new(engine: Arc<Engine>) -> TicketWindow {
        let concurrency = engine.config.concurrency.max(1);
        TicketWindow {
            rows: engine.config.rows,
            engine,
            concurrency,
            window: (concurrency as u64).saturating_mul(8).max(64),
            next: 0,
            emit: 0,
            in_flight: FuturesUnordered::new(),
            ready: BTreeMap::new(),
        }
    }

    /// The next ticket in index order; `None` after the last.
    pub(super) async fn next(&mut self) -> Option<TicketResult> {
        loop {
            if let Some(result) = self.ready.remove(&self.emit) {
                self.emit += 1;
                return Some(result);
            }
            while self.in_flight.len() < self.concurrency
                && self.next < self.rows
                && self.next < self.emit + self.window
            {
                let engine = Arc::clone(&self.engine);
                let index = self.next;
                self.in_flight.push(tokio::spawn(async move {
                    (index, engine.run_ticket(index, Mode::Plan).await.map(Some))
                }));
                self.next += 1;
            }
            match self.in_flight.next().await? {
                Ok((index, result)) => {
                    self.ready.insert(index, result);
                }
                Err(e) => return Some(Err(BuildError::Task(e.to_string()))),
            }
        }
    }
}

/// A running ticket: its index beside what its task returns, so that even a task that panicked
/// is known by its ticket.
type Running = BoxFuture<'static, (u64, Result<TicketResult, tokio::task::JoinError>)>;

/// Keeps `concurrency` tickets of a build running and hands each out when it finishes.
pub(super) struct TicketRunner {
    engine: Arc<Engine>,
    rows: u64,
    concurrency: usize,
    /// The next ticket to start: every ticket before it was started.
    next_to_start: u64,
    in_flight: FuturesUnordered<Running>,
    /// When each running ticket started.
    running_since: BTreeMap<u64, Instant>,
}

impl TicketRunner {
    pub(super) fn new(engine: Arc<Engine>) -> TicketRunner {
        TicketRunner {
            rows: engine.config.rows,
            concurrency: engine.config.concurrency.max(1),
            engine,
            next_to_start: 0,
            in_flight: FuturesUnordered::new(),
            running_since: BTreeMap::new(),
        }
    }

    /// The next ticket to finish, with its index; `None` once every ticket started has
    /// finished and no more will start (all started, or the build was cancelled). Tickets start
    /// as slots free, up to (not including) ticket `start_before`. A task that panicked is
    /// reported as the build error it is.
    ///
    /// Cancel safe: dropped before it returns, it loses no ticket (the tickets started stay in
    /// flight, and the next call hands them out).
    pub(super) async fn next(&mut self, start_before: u64) -> Option<(u64, TicketResult)> {
        // A cancelled build starts no new ticket.
        while !self.engine.cancelled.load(Ordering::Acquire)
            && self.in_flight.len() < self.concurrency
            && self.next_to_start < self.rows.min(start_before)
        {
            let index = self.next_to_start;
            if !self.engine.owns(index) {
                // Another shard's ticket: never started here.
                self.next_to_start += 1;
                continue;
            }
            let engine = Arc::clone(&self.engine);
            self.running_since.insert(index, Instant::now());
            let task = tokio::spawn(async move {
                // Cancelled between being started here and running: not started after all.
                if engine.cancelled.load(Ordering::Acquire) {
                    return Ok(None);
                }
                engine.run_ticket(index, Mode::Build).await.map(Some)
            });
            self.in_flight
                .push(task.map(move |joined| (index, joined)).boxed());
            self.next_to_start += 1;
        }
        let (index, joined) = self.in_flight.next().await?;
        self.running_since.remove(&index);
        let result = joined.unwrap_or_else(|e| {
            Err(BuildError::Task(format!(
                "ticket {}: {e}",
                self.engine.sampler.sample(index).ticket_id
            )))
        });
        Some((index, result))
    }

    /// How many tickets were started (tickets `0..started()`).
    pub(super) fn started(&self) -> u64 {
        self.next_to_start
    }

    /// Tickets running now.
    pub(super) fn running(&self) -> usize {
        self.running_since.len()
    }

    /// The oldest running ticket (its index) and how long it has been running.
    pub(super) fn oldest(&self) -> Option<(u64, Duration)> {
        self.running_since
            .iter()
            .next()
            .map(|(index, at)| (*index, at.elapsed()))
    }
}
