//! Duplicate tickets resolved in ticket order, so the same dataset comes out at any concurrency.
//!
//! This module owns what `[quality] unique` does during a build: each ticket, when it is next to
//! be written, is compared with every ticket written before it (the index of `quality::dedup`);
//! a duplicate is redrawn from the `redraw_from` node (its draws for that round follow the earlier
//! rounds', so every round is a new, cached, deterministic sample) and compared again, up to
//! `max_rounds`. What is still an exact duplicate then is dropped (a failed ticket, with the
//! reason); a near duplicate is written and counted as remaining. The invariant: decisions are
//! taken in ticket order against tickets already decided, so neither timing nor concurrency can
//! change them, and a rebuild from the cache repeats them without calling a model.

use serde::{Deserialize, Serialize};

use super::ticket::Redraw;
use super::{BuildError, Engine, Mode, NodeState, TicketOutcome};
use crate::config::{QualityConfig, Source};
use crate::graph::Graph;
use crate::key::ArtifactKey;
use crate::output::{Cell, Failure, RowBuilder, TicketRecord};
use crate::quality::dedup::{DedupIndex, Duplicate, Prints};

/// How many remaining near-duplicate pairs a report names.
const EXAMPLES: usize = 10;

/// What duplicate resolution did in a build (the `duplicates` part of the build report).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct DuplicateReport {
    /// The unique columns.
    pub(crate) columns: Vec<String>,
    /// The node duplicates are redrawn from; `None` when the columns depend on no node.
    pub(crate) redraw_from: Option<String>,
    /// Tickets found exactly duplicate, then redrawn into a unique one.
    pub(crate) exact_resolved: u64,
    /// Tickets found near duplicate, then redrawn into a unique one.
    pub(crate) near_resolved: u64,
    /// Redraws made (a ticket may take several rounds).
    pub(crate) redraws: u64,
    /// Exact duplicates left after every round: not written.
    pub(crate) exact_dropped: u64,
    /// Near duplicates left after every round: written, and named here.
    pub(crate) near_remaining: u64,
    /// Some of the remaining near duplicates.
    pub(crate) examples: Vec<DuplicatePair>,
    /// What the duplicate index held at the end, in bytes.
    pub(crate) index_bytes: u64,
}

/// A ticket and the earlier ticket it repeats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct DuplicatePair {
    pub(crate) ticket_id: String,
    pub(crate) of_ticket_id: String,
    pub(crate) column: String,
    pub(crate) similarity: f64,
}

/// The state of duplicate resolution across a build.
pub(crate) struct Deduplicator {
    index: DedupIndex,
    rows: RowBuilder,
    /// Positions of the unique columns among the output columns.
    columns: Vec<usize>,
    redraw_from: Option<usize>,
    max_rounds: u32,
    report: DuplicateReport,
    /// Where the index's files are (the cache folder), for error messages.
    dir: std::path::PathBuf,
}

impl Deduplicator {
    /// `None` when the dataset has no unique columns. The index's files go in the cache folder
    /// (the system's temporary folder when it does not exist yet).
    pub(crate) fn new(
        quality: Option<&QualityConfig>,
        config: &crate::config::Config,
        graph: &Graph,
    ) -> Result<Option<Deduplicator>, BuildError> {
        let Some(quality) = quality.filter(|q| !q.unique.is_empty()) else {
            return Ok(None);
        };
        let dir = config.cache_dir.clone();
        let rows = RowBuilder::new(config, graph);
        let columns: Vec<usize> = quality
            .unique
            .iter()
            .filter_map(|name| rows.position(name))
            .collect();
        let redraw_from = match &quality.redraw_from {
            Some(name) => graph.nodes.iter().position(|n| &n.name == name),
            None => first_node_upstream(config, graph, &quality.unique),
        };
        // Capped: a huge `rows` should not reserve disk before any ticket exists.
        let index = DedupIndex::new(
            columns.len(),
            quality.similarity,
            usize::try_from(config.rows.min(1 << 22)).unwrap_or(1 << 22),
            dir.is_dir().then_some(dir.as_path()),
        )
        .map_err(|e| index_error(&dir, &e))?;
        Ok(Some(Deduplicator {
            index,
            rows,
            columns,
            redraw_from,
            max_rounds: quality.max_rounds,
            report: DuplicateReport {
                columns: quality.unique.clone(),
                redraw_from: redraw_from.map(|i| graph.nodes[i].name.clone()),
                ..DuplicateReport::default()
            },
            dir,
        }))
    }

    /// The report so far, with the index's size.
    pub(crate) fn report(&self) -> DuplicateReport {
        let mut report = self.report.clone();
        report.index_bytes = self.index.bytes() as u64;
        report
    }

    /// The unique columns' values of a ticket.
    fn values(&self, outcome: &TicketOutcome) -> Vec<Option<String>> {
        let record = TicketRecord {
            sample: outcome.sample.clone(),
            outputs: outcome
                .states
                .iter()
                .map(|s| match s {
                    NodeState::Done(output, _) => Some(output.clone()),
                    _ => None,
                })
                .collect(),
            lineage: Vec::new(),
        };
        self.columns
            .iter()
            .map(|&column| match self.rows.cell(column, &record) {
                Cell::Null => None,
                Cell::Str(text) | Cell::Time(text, _) => Some(text),
                Cell::List(items) => Some(items.join(", ")),
            })
            .collect()
    }

    /// The first duplicate of `outcome` among the tickets decided so far, with the ticket's
    /// fingerprints (to insert it with, when it is kept).
    fn find(&self, outcome: &TicketOutcome) -> Result<(Prints, Option<Duplicate>), BuildError> {
        let values = self.values(outcome);
        let refs: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        let prints = Prints::of(&refs);
        let duplicate = self
            .index
            .find(&prints)
            .map_err(|e| index_error(&self.dir, &e))?;
        Ok((prints, duplicate))
    }

    fn insert(&mut self, index: u64, prints: &Prints) -> Result<(), BuildError> {
        self.index
            .insert(index, prints)
            .map_err(|e| index_error(&self.dir, &e))
    }

    fn column_name(&self, duplicate: &Duplicate) -> String {
        self.report
            .columns
            .get(duplicate.column)
            .cloned()
            .unwrap_or_default()
    }
}

impl Engine {
    /// Decides ticket `outcome` (next in ticket order) against the tickets before it: redraws it
    /// while it duplicates one, up to the bound. Returns the version of the ticket to write (or
    /// to report failed) and the superseded versions, whose paid work still counts.
    pub(super) async fn deduplicate(
        &self,
        dedup: &mut Deduplicator,
        mut outcome: TicketOutcome,
    ) -> Result<(TicketOutcome, Vec<TicketOutcome>), BuildError> {
        let mut superseded = Vec::new();
        let mut first_found: Option<bool> = None;
        for round in 1..=dedup.max_rounds + 1 {
            if outcome.failure.is_some() {
                break;
            }
            let (prints, duplicate) = dedup.find(&outcome)?;
            let Some(duplicate) = duplicate else {
                dedup.insert(outcome.sample.index, &prints)?;
                match first_found {
                    Some(true) => dedup.report.exact_resolved += 1,
                    Some(false) => dedup.report.near_resolved += 1,
                    None => {}
                }
                break;
            };
            first_found.get_or_insert(duplicate.exact);
            let redraw_from = dedup.redraw_from.filter(|_| round <= dedup.max_rounds);
            let Some(node) = redraw_from else {
                self.leave_duplicate(dedup, &mut outcome, &prints, &duplicate)?;
                break;
            };
            dedup.report.redraws += 1;
            let index = outcome.sample.index;
            let generated_before: Vec<ArtifactKey> = superseded
                .iter()
                .chain([&outcome])
                .flat_map(|old: &TicketOutcome| old.generated.iter().map(|(_, key)| *key))
                .collect();
            let redraw = Redraw {
                node,
                round,
                generated_before: &generated_before,
            };
            let next = self
                .run_ticket_redrawn(index, Mode::Build, Some(redraw))
                .await?;
            superseded.push(std::mem::replace(&mut outcome, next));
        }
        // What the superseded versions paid for stays reachable from the manifest.
        for old in &superseded {
            let keys = old.states.iter().filter_map(NodeState::key);
            let kept: Vec<_> = keys.chain(old.rejected_keys.iter().copied()).collect();
            outcome.rejected_keys.extend(kept);
        }
        Ok((outcome, superseded))
    }

    /// A duplicate no redraw resolved: an exact one becomes a failed ticket, a near one stays.
    fn leave_duplicate(
        &self,
        dedup: &mut Deduplicator,
        outcome: &mut TicketOutcome,
        prints: &Prints,
        duplicate: &Duplicate,
    ) -> Result<(), BuildError> {
        let column = dedup.column_name(duplicate);
        let of_ticket_id = self
            .sampler
            .sample(duplicate.of_index)
            .ticket_id
            .to_string();
        let ticket_id = outcome.sample.ticket_id.to_string();
        if duplicate.exact {
            dedup.report.exact_dropped += 1;
            let redraws = match &dedup.report.redraw_from {
                Some(node) => format!("after {} redraws from `{node}`", dedup.max_rounds),
                None => "and no node to redraw it from".to_string(),
            };
            outcome.failure = Some(Failure {
                ticket_id,
                index: outcome.sample.index,
                node: column.clone(),
                reason: format!(
                    "`{column}` repeats ticket {of_ticket_id} exactly, {redraws}; not written"
                ),
            });
            return Ok(());
        }
        dedup.report.near_remaining += 1;
        if dedup.report.examples.len() < EXAMPLES {
            dedup.report.examples.push(DuplicatePair {
                ticket_id,
                of_ticket_id,
                column,
                similarity: duplicate.similarity,
            });
        }
        dedup.insert(outcome.sample.index, prints)
    }
}

/// A failure of the duplicate index's files, as the cache error it is (they live in its folder).
fn index_error(dir: &std::path::Path, error: &std::io::Error) -> BuildError {
    BuildError::Cache(crate::cache::CacheError::Io {
        path: dir.to_path_buf(),
        reason: format!("the duplicate index: {error}"),
    })
}

/// The first node, in graph order, that the `columns` depend on (their own nodes included).
fn first_node_upstream(
    config: &crate::config::Config,
    graph: &Graph,
    columns: &[String],
) -> Option<usize> {
    let mut wanted = vec![false; graph.nodes.len()];
    let mut stack: Vec<usize> = config
        .columns
        .iter()
        .filter(|c| columns.contains(&c.name))
        .flat_map(|c| &c.sources)
        .filter_map(|source| match source {
            Source::Node(n) | Source::NodeField(n, _) => {
                graph.nodes.iter().position(|node| &node.name == n)
            }
            _ => None,
        })
        .collect();
    while let Some(i) = stack.pop() {
        if !wanted[i] {
            wanted[i] = true;
            stack.extend(graph.nodes[i].upstream.iter().copied());
        }
    }
    wanted.iter().position(|w| *w)
}
