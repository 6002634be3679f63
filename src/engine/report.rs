//! What a build reports: per node, per model and language, and why it stopped.
//!
//! This module owns the report types ([`BuildReport`], [`NodeStats`]) and the errors that stop a
//! build ([`BuildError`]). A ticket's failure is not an error: it is counted here and written to the
//! failures file. The report is what `build --json` prints and what `cost` reads back from
//! `last-report.json`, so its field names are a format others read: rename none.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cache::{ArtifactSummary, CacheError};
use crate::config::Config;
use crate::cost::PriceEntry;
use crate::manifest::Manifest;
use crate::output::OutputError;

/// What happened to one node across the build.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct NodeStats {
    /// Artifacts found in the cache and used.
    pub(crate) reused: u64,
    /// Artifacts produced by a model call in this build (rejected draws included: they were
    /// paid for).
    pub(crate) generated: u64,
    /// Answers that passed their checks and are used by the tickets (reused or generated; not
    /// those of a ticket's versions superseded as duplicates, nor rejected draws).
    pub(crate) used: u64,
    /// Tickets for which the node's `when` condition was false.
    pub(crate) skipped: u64,
    /// Tickets for which the node failed (or an upstream node did).
    pub(crate) failed: u64,
    /// Cache entries that did not decode and were regenerated.
    pub(crate) corrupt: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    /// Spent in this build, in USD.
    pub(crate) cost_usd: f64,
    /// What the artifacts reused from the cache cost when they were generated, in USD.
    pub(crate) reused_cost_usd: f64,
    /// What generating every artifact of this build again would cost at today's prices, in USD.
    pub(crate) regenerate_cost_usd: f64,
    /// Artifacts whose cost is unknown (a model without a price); not counted in the sums.
    pub(crate) unknown_cost: u64,
    /// Draws the node's checks rejected, cached or generated in this build.
    pub(crate) rejected: u64,
    /// What the rejected draws generated in this build cost, in USD (part of `cost_usd`).
    pub(crate) rejected_cost_usd: f64,
    /// Rejected draws by the kind of check that rejected them (`language`, `length`, ...).
    pub(crate) rejections: BTreeMap<String, u64>,
    /// Texts of the answers used whose language was checked (and right).
    pub(crate) language_checked: u64,
    /// Texts of the answers used too short (or too mixed) to tell their language.
    pub(crate) language_unsure: u64,
}

impl NodeStats {
    /// Adds what a superseded version of a ticket paid for: its generated draws, their tokens
    /// and cost, and its rejections; not what it reused, skipped or failed.
    pub(crate) fn add_paid(&mut self, ticket: &NodeStats) {
        self.generated += ticket.generated;
        self.input_tokens += ticket.input_tokens;
        self.output_tokens += ticket.output_tokens;
        self.cost_usd += ticket.cost_usd;
        self.unknown_cost += ticket.unknown_cost;
        self.rejected += ticket.rejected;
        self.rejected_cost_usd += ticket.rejected_cost_usd;
        for (kind, count) in &ticket.rejections {
            *self.rejections.entry(kind.clone()).or_default() += count;
        }
    }

    /// Counts an answer that passed its checks and is used: generated in this build (paid now)
    /// or reused from the cache (paid when it was made); `price` is the node's, when known.
    pub(crate) fn count_used(
        &mut self,
        artifact: &ArtifactSummary,
        generated: bool,
        price: Option<&PriceEntry>,
    ) {
        self.used += 1;
        if generated {
            self.generated += 1;
            self.input_tokens += artifact.usage.input_tokens;
            self.output_tokens += artifact.usage.output_tokens;
            match artifact.cost_usd {
                Some(cost) => self.cost_usd += cost,
                None => self.unknown_cost += 1,
            }
        } else {
            self.reused += 1;
            match artifact.cost_usd {
                Some(cost) => self.reused_cost_usd += cost,
                None => self.unknown_cost += 1,
            }
        }
        if let Some(price) = price {
            self.regenerate_cost_usd += price.cost(&artifact.usage);
        }
    }

    /// Adds one ticket's figures for the node to the build's.
    pub(crate) fn add(&mut self, ticket: &NodeStats) {
        self.reused += ticket.reused;
        self.used += ticket.used;
        self.generated += ticket.generated;
        self.skipped += ticket.skipped;
        self.failed += ticket.failed;
        self.corrupt += ticket.corrupt;
        self.input_tokens += ticket.input_tokens;
        self.output_tokens += ticket.output_tokens;
        self.cost_usd += ticket.cost_usd;
        self.reused_cost_usd += ticket.reused_cost_usd;
        self.regenerate_cost_usd += ticket.regenerate_cost_usd;
        self.unknown_cost += ticket.unknown_cost;
        self.language_checked += ticket.language_checked;
        self.language_unsure += ticket.language_unsure;
        self.rejected += ticket.rejected;
        self.rejected_cost_usd += ticket.rejected_cost_usd;
        for (kind, count) in &ticket.rejections {
            *self.rejections.entry(kind.clone()).or_default() += count;
        }
    }
}

/// A node's name with its statistics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct NodeSummary {
    pub(crate) name: String,
    #[serde(flatten)]
    pub(crate) stats: NodeStats,
}

/// The outcome of a build.
/// Fields a report read back lacks (`last-report.json` of an older ticketbuild) take their
/// defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildReport {
    pub(crate) dataset: String,
    pub(crate) profile: Option<String>,
    pub(crate) tickets: u64,
    pub(crate) written: u64,
    pub(crate) failed: u64,
    /// Tickets never started because the build was interrupted.
    pub(crate) not_started: u64,
    pub(crate) interrupted: bool,
    /// True when the inputs matched the last build and its files were intact: nothing ran.
    pub(crate) up_to_date: bool,
    /// Spent in this build per model and per ticket language, in USD.
    pub(crate) cost_by_model: BTreeMap<String, f64>,
    pub(crate) cost_by_language: BTreeMap<String, f64>,
    /// What the artifacts reused from the cache cost when they were made, per model and per
    /// ticket language, in USD.
    pub(crate) reused_cost_by_model: BTreeMap<String, f64>,
    pub(crate) reused_cost_by_language: BTreeMap<String, f64>,
    /// Why the build stopped issuing calls early (a budget or a per-call limit), if it did.
    pub(crate) stopped_by: Option<String>,
    /// The currencies summaries show, and the rates used (units per USD).
    pub(crate) currencies: Vec<(String, f64)>,
    /// Per node, in graph order.
    pub(crate) nodes: Vec<NodeSummary>,
    pub(crate) files: Vec<String>,
    pub(crate) failures_file: Option<String>,
    pub(crate) wall_ms: u64,
    /// Tickets that finished far ahead of their turn to be written (behind a slow one) and were
    /// read back from the cache in their turn instead of waiting whole in memory. It depends on
    /// timing, so two builds of the same dataset may differ here and nowhere else.
    pub(crate) read_back: u64,
    /// Per model that sends requests: attempts, 429s, other retries, time held by rate limits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) models: Vec<ModelTraffic>,
    /// What `[quality] unique` found and did; absent without unique columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duplicates: Option<super::dedup::DuplicateReport>,
    /// What the shared remote cache did; absent without `[cache.remote]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) remote: Option<super::remote::RemoteReport>,
    /// Tickets waiting for a batch (batch mode): while any does, no file is written.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) awaiting_batch: u64,
    /// The manifest this build recorded (a complete build records one): what a later build
    /// reassembles the files from when nothing changed but the files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) manifest: Option<u64>,
    /// True when the files were written again from the last build's manifest (its inputs
    /// unchanged, its files gone) without walking the graph.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) reassembled: bool,
    /// What batch mode did; absent without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) batches: Option<super::batch::BatchSummary>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One model's requests in a build.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct ModelTraffic {
    pub(crate) model: String,
    #[serde(flatten)]
    pub(crate) traffic: crate::provider::Traffic,
}

impl BuildReport {
    /// The report of a build that found nothing to do: everything the last build made is reused.
    pub(crate) fn up_to_date(last: &Manifest, config: &Config) -> BuildReport {
        BuildReport {
            dataset: config.name.clone(),
            profile: config.profile.clone(),
            tickets: config.rows,
            written: config.rows,
            failed: 0,
            not_started: 0,
            interrupted: false,
            up_to_date: true,
            cost_by_model: BTreeMap::new(),
            cost_by_language: BTreeMap::new(),
            reused_cost_by_model: BTreeMap::new(),
            reused_cost_by_language: BTreeMap::new(),
            stopped_by: None,
            currencies: currencies(config),
            nodes: last
                .node_totals
                .iter()
                .map(|(name, done, skipped)| NodeSummary {
                    name: name.clone(),
                    stats: NodeStats {
                        reused: *done,
                        skipped: *skipped,
                        ..NodeStats::default()
                    },
                })
                .collect(),
            files: last
                .files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect(),
            failures_file: None,
            wall_ms: 0,
            read_back: 0,
            models: Vec::new(),
            duplicates: None,
            remote: None,
            awaiting_batch: 0,
            batches: None,
            manifest: None,
            reassembled: false,
        }
    }

    pub(crate) fn generated(&self) -> u64 {
        self.nodes.iter().map(|n| n.stats.generated).sum()
    }
    pub(crate) fn reused(&self) -> u64 {
        self.nodes.iter().map(|n| n.stats.reused).sum()
    }
}

/// Errors that stop a build; per-ticket failures are not errors, they are reported.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("cannot prepare the providers: {0}")]
    Providers(String),
    #[error("a build task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Secrets(#[from] crate::provider::SecretsError),
    #[error(
        "no price is known for {0}; add one under [cost.prices.\"MODEL\"] (input, output, cached_input in USD per million tokens), or build anyway with `--allow-unpriced` (costs are then shown as unknown)"
    )]
    Unpriced(String),
    #[error(transparent)]
    Remote(#[from] crate::cache::remote::RemoteError),
}

/// The configured currencies with their rates.
pub(crate) fn currencies(config: &Config) -> Vec<(String, f64)> {
    config
        .cost
        .currencies
        .iter()
        .filter_map(|c| crate::cost::rate(c, &config.cost.rates).map(|r| (c.clone(), r)))
        .collect()
}

/// What `ticketbuild cost --json` prints: the money side of a build report, per node, model and
/// language, in USD.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CostReport {
    pub(crate) dataset: String,
    pub(crate) profile: Option<String>,
    /// The currency of every `_usd` figure.
    pub(crate) currency: &'static str,
    pub(crate) spent_usd: f64,
    pub(crate) reused_usd: f64,
    pub(crate) regenerate_usd: f64,
    pub(crate) nodes: Vec<NodeCost>,
    pub(crate) by_model: BTreeMap<String, f64>,
    pub(crate) by_language: BTreeMap<String, f64>,
    pub(crate) currencies: Vec<(String, f64)>,
    pub(crate) stopped_by: Option<String>,
}

/// One node's line of a [`CostReport`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeCost {
    pub(crate) name: String,
    pub(crate) spent_usd: f64,
    pub(crate) reused_usd: f64,
    pub(crate) regenerate_usd: f64,
    /// Artifacts whose cost is unknown (a model without a price); not in the sums.
    pub(crate) unknown_cost_artifacts: u64,
    /// What draws its checks rejected cost in this build (part of `spent_usd`).
    pub(crate) rejected_usd: f64,
    /// Draws its checks rejected.
    pub(crate) rejected_draws: u64,
    pub(crate) generated: u64,
    pub(crate) reused: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
}

impl BuildReport {
    /// The money side of this report.
    pub(crate) fn cost_report(&self) -> CostReport {
        let sum = |figure: fn(&NodeStats) -> f64| self.nodes.iter().map(|n| figure(&n.stats)).sum();
        CostReport {
            dataset: self.dataset.clone(),
            profile: self.profile.clone(),
            currency: "USD",
            spent_usd: sum(|s| s.cost_usd),
            reused_usd: sum(|s| s.reused_cost_usd),
            regenerate_usd: sum(|s| s.regenerate_cost_usd),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeCost {
                    name: n.name.clone(),
                    spent_usd: n.stats.cost_usd,
                    reused_usd: n.stats.reused_cost_usd,
                    regenerate_usd: n.stats.regenerate_cost_usd,
                    unknown_cost_artifacts: n.stats.unknown_cost,
                    rejected_usd: n.stats.rejected_cost_usd,
                    rejected_draws: n.stats.rejected,
                    generated: n.stats.generated,
                    reused: n.stats.reused,
                    input_tokens: n.stats.input_tokens,
                    output_tokens: n.stats.output_tokens,
                })
                .collect(),
            by_model: self.cost_by_model.clone(),
            by_language: self.cost_by_language.clone(),
            currencies: self.currencies.clone(),
            stopped_by: self.stopped_by.clone(),
        }
    }
}
