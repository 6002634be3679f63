//! What a build counts as tickets are written: per node, failures, cost by model and language.
//!
//! The build loop (`order`) adds each ticket in its turn; the report is made from the tally once
//! the last ticket is written.

use std::collections::BTreeMap;

use super::TicketOutcome;
use super::report::{self, BuildReport, NodeStats, NodeSummary};
use crate::config::Config;
use crate::graph::Graph;
use crate::output::Failure;

/// What the build loop counts as tickets come out of the window.
pub(super) struct Tally {
    pub(super) stats: Vec<NodeStats>,
    pub(super) failures: Vec<Failure>,
    pub(super) written: u64,
    pub(super) not_started: u64,
    /// Tickets waiting for a batch (batch mode): this pass writes no files.
    pub(super) awaiting_batch: u64,
    /// Tickets read back from the cache in their turn (see `order`).
    pub(super) read_back: u64,
    pub(super) cost_by_model: BTreeMap<String, f64>,
    pub(super) cost_by_language: BTreeMap<String, f64>,
    pub(super) reused_cost_by_model: BTreeMap<String, f64>,
    pub(super) reused_cost_by_language: BTreeMap<String, f64>,
}

impl Tally {
    pub(super) fn new(nodes: usize) -> Tally {
        Tally {
            stats: vec![NodeStats::default(); nodes],
            failures: Vec::new(),
            written: 0,
            not_started: 0,
            awaiting_batch: 0,
            read_back: 0,
            cost_by_model: BTreeMap::new(),
            cost_by_language: BTreeMap::new(),
            reused_cost_by_model: BTreeMap::new(),
            reused_cost_by_language: BTreeMap::new(),
        }
    }

    /// A superseded version of a ticket (redrawn as a duplicate): what it paid for counts, but
    /// for the nodes whose answer the final version uses too (counted with it).
    pub(super) fn add_superseded(
        &mut self,
        old: &TicketOutcome,
        last: &TicketOutcome,
        graph: &Graph,
    ) {
        let nodes = self.stats.iter_mut().zip(&old.stats).zip(&old.states);
        for (i, ((total, node), state)) in nodes.enumerate() {
            if state.key().is_some() && state.key() == last.states[i].key() {
                continue;
            }
            total.add_paid(node);
            if node.generated > 0 {
                *self
                    .cost_by_model
                    .entry(graph.nodes[i].model.name.clone())
                    .or_insert(0.0) += node.cost_usd;
                *self
                    .cost_by_language
                    .entry(old.sample.language.code().to_string())
                    .or_insert(0.0) += node.cost_usd;
            }
        }
    }

    pub(super) fn add(&mut self, outcome: &TicketOutcome, graph: &Graph) {
        self.add_counts(&outcome.stats, outcome.sample.language.code(), graph);
    }

    /// One ticket's figures, per node, for a ticket in `language`.
    pub(super) fn add_counts(&mut self, stats: &[NodeStats], language: &str, graph: &Graph) {
        for ((total, node), graph_node) in self.stats.iter_mut().zip(stats).zip(&graph.nodes) {
            total.add(node);
            if node.generated > 0 {
                *self
                    .cost_by_model
                    .entry(graph_node.model.name.clone())
                    .or_insert(0.0) += node.cost_usd;
                *self
                    .cost_by_language
                    .entry(language.to_string())
                    .or_insert(0.0) += node.cost_usd;
            }
            if node.reused > 0 {
                *self
                    .reused_cost_by_model
                    .entry(graph_node.model.name.clone())
                    .or_insert(0.0) += node.reused_cost_usd;
                *self
                    .reused_cost_by_language
                    .entry(language.to_string())
                    .or_insert(0.0) += node.reused_cost_usd;
            }
        }
    }

    /// The report, but for what only the end of the build knows (files, interruption, timing).
    pub(super) fn into_report(self, config: &Config, graph: &Graph) -> BuildReport {
        BuildReport {
            dataset: config.name.clone(),
            profile: config.profile.clone(),
            tickets: config.rows,
            written: self.written,
            failed: self.failures.len() as u64,
            not_started: self.not_started,
            awaiting_batch: self.awaiting_batch,
            interrupted: false,
            up_to_date: false,
            cost_by_model: self.cost_by_model,
            cost_by_language: self.cost_by_language,
            reused_cost_by_model: self.reused_cost_by_model,
            reused_cost_by_language: self.reused_cost_by_language,
            stopped_by: None,
            currencies: report::currencies(config),
            nodes: graph
                .nodes
                .iter()
                .zip(self.stats)
                .map(|(n, stats)| NodeSummary {
                    name: n.name.clone(),
                    stats,
                })
                .collect(),
            files: Vec::new(),
            failures_file: None,
            wall_ms: 0,
            read_back: self.read_back,
            models: Vec::new(),
            duplicates: None,
            batches: None,
            remote: None,
            manifest: None,
            reassembled: false,
        }
    }
}
