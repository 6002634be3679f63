//! Estimates before spending: what a build would generate and what it would cost.
//!
//! This module owns `ticketbuild plan` (and `build --dry-run`): from a plan walk of the engine (no
//! model is called), it counts per node the artifacts already cached and those to generate,
//! counts prompt tokens (with the model's real tokenizer for OpenAI-family models, tiktoken's
//! o200k/cl100k encodings; about four characters per token for others), estimates output tokens
//! (from the node's cached outputs when there are any, else from `max_tokens`), and prices it all
//! with low / expected / high figures. Prices come from `cost`. The invariant: an estimate never
//! reads as cheaper than it can be: unknown prices stay unknown, and a node whose prompt depends on
//! outputs not generated yet is flagged and estimated from its upstream nodes' expected outputs.

use std::sync::Arc;

use serde::Serialize;

use crate::cache::ArtifactStore;
use crate::config::Config;
use crate::cost::PriceEntry;
use crate::engine::{BuildError, Engine, NodeState, TicketOutcome, WORST_CASE_OUTPUT_TOKENS};
use crate::graph::Graph;

/// Output tokens assumed for an offline node with no cached outputs yet.
const OFFLINE_OUTPUT_TOKENS: u64 = 120;

/// Plans every ticket of the project (calling no model) and estimates what a build would cost.
pub(crate) async fn of_project(
    config: Arc<Config>,
    graph: Arc<Graph>,
    store: Arc<dyn ArtifactStore>,
) -> Result<Plan, BuildError> {
    let mut planner = Planner::new(&config, &graph);
    let engine = Engine::for_planning(Arc::clone(&config), Arc::clone(&graph), store, Vec::new());
    Arc::new(engine)
        .plan(|outcome| planner.add(&outcome))
        .await?;
    Ok(planner.finish())
}

/// One node's estimate.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodePlan {
    pub(crate) name: String,
    pub(crate) model: String,
    pub(crate) tokenizer: &'static str,
    pub(crate) cached: u64,
    pub(crate) to_generate: u64,
    pub(crate) skipped: u64,
    /// Estimated input tokens of everything to generate.
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens_low: u64,
    pub(crate) output_tokens_expected: u64,
    pub(crate) output_tokens_high: u64,
    /// USD; `None` when the model has no known price.
    pub(crate) cost_low: Option<f64>,
    pub(crate) cost_expected: Option<f64>,
    pub(crate) cost_high: Option<f64>,
    /// Some prompts depend on outputs not generated yet; their size is estimated.
    pub(crate) depends_on_pending: bool,
    /// Where the output estimate comes from: `cached outputs` or `max_tokens`.
    pub(crate) output_basis: String,
}

/// The whole estimate.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub(crate) dataset: String,
    pub(crate) tickets: u64,
    pub(crate) nodes: Vec<NodePlan>,
    pub(crate) cost_low: Option<f64>,
    pub(crate) cost_expected: Option<f64>,
    pub(crate) cost_high: Option<f64>,
    pub(crate) budget: Option<f64>,
}

#[derive(Default, Clone)]
struct Acc {
    cached: u64,
    missing: u64,
    blocked: u64,
    skipped: u64,
    missing_input: u64,
    cached_input: Vec<u64>,
    cached_output: Vec<u64>,
    blocked_examples: u64,
}

/// Accumulates planned tickets into a [`Plan`].
pub(crate) struct Planner<'a> {
    config: &'a Config,
    graph: &'a Graph,
    acc: Vec<Acc>,
}

impl<'a> Planner<'a> {
    pub(crate) fn new(config: &'a Config, graph: &'a Graph) -> Planner<'a> {
        Planner {
            config,
            graph,
            acc: vec![Acc::default(); graph.nodes.len()],
        }
    }

    pub(crate) fn add(&mut self, outcome: &TicketOutcome) {
        for (i, state) in outcome.states.iter().enumerate() {
            let acc = &mut self.acc[i];
            let model = &self.graph.nodes[i].model;
            match state {
                NodeState::Done(..) => {
                    acc.cached += 1;
                    if let Some(entry) = &outcome.lineage[i] {
                        acc.cached_input.push(entry.input_tokens);
                        acc.cached_output.push(entry.output_tokens);
                    }
                }
                NodeState::Missing(_) => {
                    acc.missing += 1;
                    if let Some(text) = &outcome.pending_prompts[i] {
                        acc.missing_input +=
                            crate::tokens::count(model.provider, &model.model, &[text]);
                    }
                }
                NodeState::Blocked => {
                    acc.blocked += 1;
                    acc.blocked_examples += 1;
                }
                NodeState::Skipped => acc.skipped += 1,
                NodeState::Failed => {}
            }
        }
    }

    pub(crate) fn finish(self) -> Plan {
        let mut nodes: Vec<NodePlan> = Vec::new();
        // Expected output tokens per node, used for the prompts of downstream nodes.
        let mut expected_output: Vec<u64> = Vec::new();
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let acc = &self.acc[i];
            let model = &node.model;
            let max_tokens = model.params.max_tokens.unwrap_or(WORST_CASE_OUTPUT_TOKENS);
            let (low, expected, high, basis) =
                if acc.cached_output.is_empty() && model.provider.is_offline() {
                    // The offline model writes a sentence or a short email; it is free either way.
                    (
                        OFFLINE_OUTPUT_TOKENS,
                        OFFLINE_OUTPUT_TOKENS,
                        OFFLINE_OUTPUT_TOKENS,
                        "offline model".to_string(),
                    )
                } else if acc.cached_output.is_empty() {
                    (
                        max_tokens / 4,
                        max_tokens,
                        max_tokens,
                        "max_tokens".to_string(),
                    )
                } else {
                    let n = acc.cached_output.len() as u64;
                    let mean = acc.cached_output.iter().sum::<u64>().div_ceil(n);
                    let min = acc.cached_output.iter().copied().min().unwrap_or(mean);
                    let max = acc.cached_output.iter().copied().max().unwrap_or(mean);
                    (min, mean, max.max(mean), format!("{n} cached outputs"))
                };
            expected_output.push(expected);
            // Blocked prompts: the node's typical prompt (from rendered or cached ones), else the
            // template's own text plus the expected outputs of its upstream nodes.
            let typical_input = if acc.missing > 0 {
                acc.missing_input.div_ceil(acc.missing)
            } else if !acc.cached_input.is_empty() {
                acc.cached_input
                    .iter()
                    .sum::<u64>()
                    .div_ceil(acc.cached_input.len() as u64)
            } else {
                let template = std::fs::read_to_string(self.config.resolve(&node.config.prompt))
                    .unwrap_or_default();
                crate::tokens::count(model.provider, &model.model, &[&template])
                    + node
                        .upstream
                        .iter()
                        .map(|u| expected_output[*u])
                        .sum::<u64>()
            };
            let to_generate = acc.missing + acc.blocked;
            let input_tokens = acc.missing_input + acc.blocked * typical_input;
            let price: Option<PriceEntry> = model.price(&self.config.cost.prices);
            let cost = |output: u64| {
                price.as_ref().map(|p| {
                    (input_tokens as f64 * p.price.input
                        + (output * to_generate) as f64 * p.price.output)
                        / 1_000_000.0
                })
            };
            nodes.push(NodePlan {
                name: node.name.clone(),
                model: format!("{}/{}", model.provider, model.model),
                tokenizer: crate::tokens::tokenizer_name(model.provider, &model.model),
                cached: acc.cached,
                to_generate,
                skipped: acc.skipped,
                input_tokens,
                output_tokens_low: low * to_generate,
                output_tokens_expected: expected * to_generate,
                output_tokens_high: high * to_generate,
                cost_low: cost(low),
                cost_expected: cost(expected),
                cost_high: cost(high),
                depends_on_pending: acc.blocked > 0,
                output_basis: basis,
            });
        }
        let total = |pick: fn(&NodePlan) -> Option<f64>| -> Option<f64> {
            nodes
                .iter()
                .map(pick)
                .try_fold(0.0, |sum, c| c.map(|c| sum + c))
        };
        Plan {
            dataset: self.config.name.clone(),
            tickets: self.config.rows,
            cost_low: total(|n| n.cost_low),
            cost_expected: total(|n| n.cost_expected),
            cost_high: total(|n| n.cost_high),
            budget: self.config.cost.budget,
            nodes,
        }
    }
}
