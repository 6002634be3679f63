//! Spending: one paid call, from the budget reservation to the stored artifact.
//!
//! This module owns what happens when the engine decides to generate: reserve the call's worst
//! case in the ledger (so calls in flight together can never take the build past its budget),
//! call the provider, settle the reservation with what the call cost, apply the per-call limits,
//! and put the artifact in the store. The invariants: no call is issued without a reservation when
//! the model has a price; a failed call settles at zero; and an answer is put before it is
//! returned (its durability is the caller's to await).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::atomic::Ordering;

use super::Engine;
use super::batch::BatchAnswer;
use crate::cache::{Artifact, ArtifactSummary, CacheError};
use crate::cost::{PriceEntry, Refusal, Reservation};
use crate::graph::Node;
use crate::key::ArtifactKey;
use crate::provider::{ProviderError, Request};
use crate::sampling::TicketSample;

/// The output tokens assumed for a call's worst case when the model sets no `max_tokens`.
pub(crate) const WORST_CASE_OUTPUT_TOKENS: u64 = 4096;

/// Why a node was not generated.
pub(super) enum GenerateError {
    Provider(ProviderError),
    Cache(CacheError),
    /// A cost limit kept the call from being issued.
    Refused(Refusal),
    /// Batch mode: the answer is in a live batch or queued for the next; the ticket waits.
    Deferred,
}

/// What a node asks: its request, the request's key, and the upstream answers it depends on.
pub(super) struct Asked<'a> {
    pub(super) node: &'a Node,
    pub(super) request: &'a Request,
    pub(super) key: ArtifactKey,
    pub(super) upstream: Vec<(String, ArtifactKey)>,
}

/// A call that cost more than a per-call limit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExpensiveCall {
    pub(crate) node: String,
    pub(crate) ticket_id: u64,
    pub(crate) cost: f64,
    pub(crate) limit: f64,
    /// Over `error_per_call`: the build issues no further calls. Else over `warn_per_call`.
    pub(crate) stops_the_build: bool,
}

impl Engine {
    /// Generates `node`'s answer to `request` and stores it under `key` for the ticket, or, with
    /// `held`, leaves it there for the walk to put with the ticket's other reproducible answers.
    pub(super) async fn generate(
        &self,
        index: usize,
        asked: Asked<'_>,
        sample: &TicketSample,
        held: Option<&mut Vec<Artifact>>,
    ) -> Result<ArtifactSummary, GenerateError> {
        let Asked {
            node,
            request,
            key,
            upstream,
        } = asked;
        let price = self.prices[index].clone();
        let started = Instant::now();
        // Batch mode first: an answer collected from a batch is paid for already, so no budget
        // can refuse it; one in a live batch waits without reserving again.
        let batch = self
            .batches
            .as_ref()
            .map(|b| b.answer(index, request, &key));
        let mut needed = false;
        let collected = match batch {
            Some(BatchAnswer::Ready(answer)) => Some(answer),
            Some(BatchAnswer::Waiting) => return Err(GenerateError::Deferred),
            Some(BatchAnswer::Needed) => {
                needed = true;
                None
            }
            Some(BatchAnswer::Unbatched) | None => None,
        };
        let (answer, batch_priced) = match collected {
            Some(answer) => {
                if let Ok(response) = &answer {
                    let cost = price
                        .as_ref()
                        .map_or(0.0, |p| p.batch_cost(&response.usage));
                    self.ledger
                        .spend(index, response.reported_cost_usd.unwrap_or(cost));
                }
                (answer, true)
            }
            None => {
                // Reserve the call's worst case before issuing it, so calls in flight (or
                // requests queued for a batch) can never take the build past its budget together.
                let reservation = self.reserve(index, node, request, price.as_ref())?;
                if needed {
                    if let Some(batches) = &self.batches {
                        batches.queue(index, sample.index, request, &key);
                    }
                    // The reservation is not settled: it stays held for the rest of the pass,
                    // the worst case of what the pass submits.
                    return Err(GenerateError::Deferred);
                }
                let answer = self.providers[index].call(request).await;
                if let Some(reservation) = reservation {
                    let cost = match (&answer, &price) {
                        (Ok(response), Some(price)) => response
                            .reported_cost_usd
                            .unwrap_or_else(|| price.cost(&response.usage)),
                        _ => 0.0,
                    };
                    self.ledger.settle(reservation, cost);
                }
                (answer, false)
            }
        };
        let response = answer.map_err(GenerateError::Provider)?;
        let computed = price.as_ref().map(|p| {
            if batch_priced {
                p.batch_cost(&response.usage)
            } else {
                p.cost(&response.usage)
            }
        });
        // The provider's own figure wins (OpenRouter reports it); the computed one is kept beside.
        let cost_usd = response.reported_cost_usd.or(computed);
        if let Some(cost) = cost_usd {
            self.check_per_call(node, sample.ticket_id, cost);
        }
        let artifact = Artifact {
            key,
            node: node.name.clone(),
            output: response.output,
            usage: response.usage,
            cost_usd,
            computed_cost_usd: computed,
            price,
            served_model: response.served_model,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64,
            latency_ms: started.elapsed().as_millis() as u64,
            upstream,
            request: request.record(),
            key_fields: Some(request.key_fields()),
        };
        let summary = artifact.summary();
        if let Some(held) = held {
            held.push(artifact);
            return Ok(summary);
        }
        self.store
            .put(sample.index, &artifact)
            .map_err(GenerateError::Cache)?;
        // Queued for the remote cache now, uploaded once durable: a kill after the flush can
        // then not leave a paid answer that no build ever uploads.
        let forced = self.options.force.contains(&node.name);
        self.upload_generated(sample.index, &key, forced);
        Ok(summary)
    }

    /// Reserves the worst case of `request` for node `index` (nothing without a price).
    fn reserve(
        &self,
        index: usize,
        node: &Node,
        request: &Request,
        price: Option<&PriceEntry>,
    ) -> Result<Option<Reservation>, GenerateError> {
        let Some(price) = price else {
            return Ok(None);
        };
        let model = &node.model;
        let input = crate::tokens::count(
            model.provider,
            &model.model,
            &[request.system.as_deref().unwrap_or(""), &request.user],
        );
        let output = request
            .params
            .max_tokens
            .unwrap_or(WORST_CASE_OUTPUT_TOKENS);
        match self.ledger.reserve(index, price.worst_case(input, output)) {
            Ok(reservation) => Ok(Some(reservation)),
            Err(refusal) => {
                if matches!(refusal, Refusal::Budget { .. } | Refusal::PerCall { .. }) {
                    // Finish what is in flight, start nothing new.
                    self.cancelled.store(true, Ordering::Release);
                }
                Err(GenerateError::Refused(refusal))
            }
        }
    }

    /// Tells the observer about a call that cost more than a per-call limit; above
    /// `error_per_call`, also stops the build from issuing further calls.
    fn check_per_call(&self, node: &Node, ticket_id: u64, cost: f64) {
        let limits = &self.config.cost;
        let call = |limit: f64, stops_the_build: bool| ExpensiveCall {
            node: node.name.clone(),
            ticket_id,
            cost,
            limit,
            stops_the_build,
        };
        if let Some(limit) = limits.error_per_call.filter(|limit| cost > *limit) {
            self.options.observer.expensive_call(&call(limit, true));
            self.ledger.stop(Refusal::PerCall { cost, limit });
            self.cancelled.store(true, Ordering::Release);
            return;
        }
        if let Some(limit) = limits.warn_per_call.filter(|limit| cost > *limit) {
            self.options.observer.expensive_call(&call(limit, false));
        }
    }
}
