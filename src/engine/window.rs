//! The ticket window: tickets run concurrently and come out in ticket order.
//!
//! Up to `concurrency` tickets run at once, taken as soon as a slot frees (a ticket that is backing
//! off on a rate limit does not hold up the others), but never more than `window` tickets past the
//! oldest one not yet handed out, so the tickets waiting for their turn stay bounded: memory does
//! not grow with rows. The invariant: tickets are handed out in index order, each exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::task::JoinHandle;

use super::ticket::{Mode, TicketOutcome};
use super::{BuildError, Engine};

/// `None` when the ticket was not started because the build was cancelled.
pub(super) type TicketResult = Result<Option<TicketOutcome>, BuildError>;

pub(super) struct TicketWindow {
    engine: Arc<Engine>,
    mode: Mode,
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
    pub(super) fn new(engine: Arc<Engine>, mode: Mode) -> TicketWindow {
        let concurrency = engine.config.concurrency.max(1);
        TicketWindow {
            rows: engine.config.rows,
            engine,
            mode,
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
                let (index, mode) = (self.next, self.mode);
                self.in_flight.push(tokio::spawn(async move {
                    // A cancelled build starts no new ticket; a plan is never cancelled.
                    if mode == Mode::Build && engine.cancelled.load(Ordering::Acquire) {
                        return (index, Ok(None));
                    }
                    (index, engine.run_ticket(index, mode).await.map(Some))
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
