//! Estimates before spending: what a build would generate and what it would cost.
//!
//! This module owns `ticketbuild plan` (and `build --dry-run`): from a plan walk of the engine (no
//! model is called), it counts per node the artifacts already cached and those to generate,
//! counts prompt tokens (with the model's real tokenizer for OpenAI-family models, tiktoken's
//! o200k/cl100k encodings; about four characters per token for others), estimates output tokens
//! (the median of the node's answers this build reuses; else of the answers an earlier build of
//! the cache made for the node, a `--profile dev` build say; else a stated prior by output kind,
//! never above `max_tokens`; the high figure assumes `max_tokens`), and prices it all with low /
//! expected / high figures. Prices come from `cost`. The invariant: an estimate never
//! reads as cheaper than it can be: unknown prices stay unknown, and a node whose prompt depends on
//! outputs not generated yet is flagged and estimated from its upstream nodes' expected outputs.

use std::sync::Arc;

use serde::Serialize;

use crate::cache::{ArtifactStore, Cache, Lookup};
use crate::config::Config;
use crate::cost::PriceEntry;
use crate::engine::{BuildError, Engine, NodeState, TicketOutcome, WORST_CASE_OUTPUT_TOKENS};
use crate::graph::Graph;

/// Output tokens assumed for an offline node with no cached outputs yet.
const OFFLINE_OUTPUT_TOKENS: u64 = 120;
/// Output tokens expected of a node when no answer of it has been seen: a paragraph of text, a
/// handful of tags, a small JSON object. A prior, said as such; `max_tokens` caps it.
const PRIOR_TEXT_TOKENS: u64 = 250;
const PRIOR_LIST_TOKENS: u64 = 40;
const PRIOR_JSON_TOKENS: u64 = 400;
/// Answers of an earlier build read per node to learn its typical output.
const OBSERVED_SAMPLE: u64 = 200;

/// Plans every ticket of the project (calling no model) and estimates what a build would cost.
pub(crate) async fn of_project(
    config: Arc<Config>,
    graph: Arc<Graph>,
    cache: Arc<dyn Cache>,
) -> Result<Plan, BuildError> {
    let mut planner = Planner::new(&config, &graph);
    planner.observed = observed_outputs(cache.as_ref(), &graph);
    let store: Arc<dyn ArtifactStore> = cache;
    let engine = Engine::for_planning(Arc::clone(&config), Arc::clone(&graph), store, Vec::new());
    Arc::new(engine)
        .plan(|outcome| planner.add(&outcome))
        .await?;
    Ok(planner.finish())
}

/// Output tokens of answers the cache holds for each node from the newest recorded build (any
/// profile, the first tickets): what a node none of whose answers this plan reuses is expected to
/// write.
fn observed_outputs(cache: &dyn Cache, graph: &Graph) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::new(); graph.nodes.len()];
    let Ok(Some((id, manifest))) = crate::manifest::Manifest::last(cache) else {
        return out;
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(position) = manifest.nodes.iter().position(|n| n.name == node.name) else {
            continue;
        };
        for ticket in 0..manifest.rows.min(OBSERVED_SAMPLE) {
            let Ok(Some(key)) = cache.manifest_key(id, ticket, position) else {
                continue;
            };
            if let Ok(Lookup::Hit(artifact)) = cache.get(ticket, &key) {
                out[i].push(artifact.usage.output_tokens);
            }
        }
    }
    out
}

/// The median of `values` (not empty).
fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
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
    /// The expected cost at the provider's batch-API prices (`batch_input`, `batch_output`);
    /// `None` when the model has none.
    pub(crate) batch_cost_expected: Option<f64>,
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
    /// The expected cost with every model that has batch prices at those prices (the others at
    /// their usual ones); `None` when a model has no price at all.
    pub(crate) batch_cost_expected: Option<f64>,
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
    /// Per node, output tokens of answers an earlier build made (see [`observed_outputs`]).
    observed: Vec<Vec<u64>>,
}

impl<'a> Planner<'a> {
    pub(crate) fn new(config: &'a Config, graph: &'a Graph) -> Planner<'a> {
        Planner {
            config,
            graph,
            acc: vec![Acc::default(); graph.nodes.len()],
            observed: vec![Vec::new(); graph.nodes.len()],
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

    /// Low, expected and high output tokens of one generated answer of node `i`, and what they
    /// rest on (see the module doc).
    fn output_estimate(&self, i: usize, max_tokens: u64) -> (u64, u64, u64, String) {
        let node = &self.graph.nodes[i];
        let acc = &self.acc[i];
        let model = &node.model;
        if acc.cached_output.is_empty() && model.provider.is_offline() {
            // The offline model writes a sentence or a short email; it is free either way.
            (
                OFFLINE_OUTPUT_TOKENS,
                OFFLINE_OUTPUT_TOKENS,
                OFFLINE_OUTPUT_TOKENS,
                "offline model".to_string(),
            )
        } else if acc.cached_output.is_empty() {
            let observed = &self.observed[i];
            if observed.is_empty() {
                let (prior, kind) = match &node.config.output {
                    crate::value::OutputKind::Text => (PRIOR_TEXT_TOKENS, "text"),
                    crate::value::OutputKind::List { .. } => (PRIOR_LIST_TOKENS, "list"),
                    crate::value::OutputKind::Json { .. } => (PRIOR_JSON_TOKENS, "json"),
                };
                let expected = prior.min(max_tokens);
                (
                    expected.min(max_tokens / 4),
                    expected,
                    max_tokens,
                    format!(
                        "prior for a {kind} node ({expected}; no answer seen yet: a small build first, such as --profile dev, makes it measured)"
                    ),
                )
            } else {
                let expected = median(observed).min(max_tokens);
                let min = observed.iter().copied().min().unwrap_or(expected);
                (
                    min.min(expected),
                    expected,
                    max_tokens.max(expected),
                    format!(
                        "median of {} answers of an earlier build of the cache",
                        observed.len()
                    ),
                )
            }
        } else {
            let n = acc.cached_output.len() as u64;
            let expected = median(&acc.cached_output);
            let min = acc.cached_output.iter().copied().min().unwrap_or(expected);
            let max = acc.cached_output.iter().copied().max().unwrap_or(expected);
            (
                min,
                expected,
                max.max(expected),
                format!("median of {n} cached outputs"),
            )
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
            let (low, expected, high, basis) = self.output_estimate(i, max_tokens);
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
            let batch_cost = price.as_ref().and_then(|p| {
                let (input, output) = (p.price.batch_input?, p.price.batch_output?);
                Some(
                    (input_tokens as f64 * input + (expected * to_generate) as f64 * output)
                        / 1_000_000.0,
                )
            });
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
                batch_cost_expected: batch_cost,
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
            batch_cost_expected: total(|n| n.batch_cost_expected.or(n.cost_expected)),
            budget: self.config.cost.budget,
            nodes,
        }
    }
}
