//! Reassembly: the last build's files written again from its manifest, without walking the graph.
//!
//! When nothing a build reads has changed since the last complete build (same inputs hash) but
//! its files are gone or were edited, the answers every row needs are known: the manifest
//! recorded each (ticket, node) key, and the cache holds each answer under it. Walking the graph
//! again would render every prompt, hash every request, judge every answer and search for
//! duplicates only to arrive at those same keys; this module reads them instead, ticket by ticket,
//! and sends the rows to the same writer a build uses, so the files are byte for byte the walk's.
//!
//! What only a walk counts (rejected draws, language checks, duplicates) is a function of the
//! inputs and the cache, both unchanged, so it is carried over from the report of the build that
//! recorded the manifest. The figures of the answers used (reused, their cost, what regenerating
//! them would cost) are counted here as a walk counts them.
//!
//! The invariant: a reassembly either writes every row of the manifest or writes nothing. Any key
//! the cache cannot give back (collected by gc, damaged) abandons it, and the build walks the
//! graph as usual, which regenerates what is missing.

use std::sync::Arc;

use rayon::prelude::*;

use super::report::{BuildReport, NodeStats};
use super::tally::Tally;
use super::{BuildError, BuildObserver, RowWriter};
use crate::cache::{ArtifactStore, Cache, CacheError, Lookup};
use crate::config::Config;
use crate::cost::PriceEntry;
use crate::graph::Graph;
use crate::key::ArtifactKey;
use crate::output::{DatasetWriter, LineageEntry, TicketRecord};
use crate::sampling::Sampler;

/// Tickets read in parallel at once: enough to keep every core busy, few enough that what waits
/// for the writer stays a few megabytes.
const TICKETS_PER_ROUND: usize = 256;

/// The last complete build, as far as reassembling it is concerned.
pub(crate) struct LastBuild {
    /// Its manifest's id: where its keys are.
    pub(crate) manifest_id: u64,
    /// Its report, for what only a walk counts.
    pub(crate) report: BuildReport,
}

/// Writes the files of the build recorded as manifest `last.manifest_id` again, from the cache.
/// `Ok(None)` when the cache cannot give back every answer (nothing is written then).
pub(crate) fn reassemble(
    config: &Config,
    graph: &Graph,
    cache: &dyn Cache,
    last: &LastBuild,
    observer: &dyn BuildObserver,
) -> Result<Option<BuildReport>, BuildError> {
    let started = std::time::Instant::now();
    observer.started(config.rows);
    let writer = RowWriter::start(DatasetWriter::create(config, graph)?);
    let prices: Vec<Option<PriceEntry>> = graph
        .nodes
        .iter()
        .map(|n| n.model.price(&config.cost.prices))
        .collect();
    let reader = TicketReader {
        store: cache,
        sampler: config.sampler(),
        prices: &prices,
        observer,
    };
    let mut tally = Tally::new(graph.nodes.len());
    // Until a chunk fails: the next ticket expected, or why the reassembly stopped.
    let mut next: Result<Option<u64>, CacheError> = Ok(Some(0));
    cache.manifest_keys(last.manifest_id, &mut |first, keys, nodes| {
        let Ok(Some(expected)) = next else { return };
        // A graph without nodes has no keys to find rows by: such a build walks.
        if nodes == 0 || nodes != graph.nodes.len() || first != expected {
            next = Ok(None);
            return;
        }
        next = write_chunk(&reader, &writer, &mut tally, graph, first, keys, nodes)
            .map(|written| written.then_some(first + (keys.len() / nodes) as u64));
    })?;
    observer.finished();
    let dataset = writer.finish()?;
    let next = match next {
        Ok(next) => next,
        Err(e) => {
            dataset.abandon();
            return Err(e.into());
        }
    };
    if next != Some(config.rows) {
        dataset.abandon();
        return Ok(None);
    }
    let failures_file = dataset.write_failures(&[])?;
    let files = dataset.finish()?;
    let mut report = tally.into_report(config, graph);
    carry_over(&mut report, &last.report);
    report.failures_file = failures_file.map(|p| p.display().to_string());
    report.files = files.iter().map(|p| p.display().to_string()).collect();
    report.manifest = Some(last.manifest_id);
    report.reassembled = true;
    report.wall_ms = started.elapsed().as_millis() as u64;
    Ok(Some(report))
}

/// Reads and writes one chunk of recorded keys (tickets `first..`), round by round: the tickets
/// of a round are read in parallel, then sent to the writer in ticket order. False when a key
/// is not in the cache (or the writer stopped).
fn write_chunk(
    reader: &TicketReader<'_>,
    writer: &RowWriter,
    tally: &mut Tally,
    graph: &Graph,
    first: u64,
    keys: &[Option<ArtifactKey>],
    nodes: usize,
) -> Result<bool, CacheError> {
    for (round, keys) in keys.chunks(TICKETS_PER_ROUND * nodes).enumerate() {
        let first = first + (round * TICKETS_PER_ROUND) as u64;
        let rows: Vec<Result<Option<ReadTicket>, CacheError>> = keys
            .par_chunks(nodes)
            .enumerate()
            .map(|(i, keys)| reader.read(first + i as u64, keys))
            .collect();
        for row in rows {
            let Some(ticket) = row? else {
                return Ok(false);
            };
            tally.add_counts(&ticket.stats, ticket.record.sample.language.code(), graph);
            tally.written += 1;
            if !writer.send(ticket.record) {
                return Ok(false);
            }
            reader.observer.ticket_done();
        }
    }
    Ok(true)
}

/// One ticket read back: its row and its figures.
struct ReadTicket {
    record: TicketRecord,
    stats: Vec<NodeStats>,
}

/// Reads tickets' answers by their recorded keys.
struct TicketReader<'a> {
    store: &'a dyn ArtifactStore,
    sampler: Sampler,
    prices: &'a [Option<PriceEntry>],
    observer: &'a dyn BuildObserver,
}

impl TicketReader<'_> {
    /// Ticket `index` with the answers under `keys` (one per node, `None` where the node was
    /// skipped); `None` when one of them is not in the cache.
    fn read(
        &self,
        index: u64,
        keys: &[Option<ArtifactKey>],
    ) -> Result<Option<ReadTicket>, CacheError> {
        let stored = self.store.ticket_artifacts(index)?;
        let mut outputs = Vec::with_capacity(keys.len());
        let mut lineage = Vec::with_capacity(keys.len());
        let mut stats = vec![NodeStats::default(); keys.len()];
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key else {
                stats[i].skipped += 1;
                outputs.push(None);
                lineage.push(None);
                continue;
            };
            let Lookup::Hit(artifact) = stored.get(self.store, key)? else {
                return Ok(None);
            };
            stats[i].count_used(&artifact, false, self.prices[i].as_ref());
            lineage.push(Some(LineageEntry::of(&artifact, false)));
            outputs.push(Some(artifact.output));
        }
        let record = TicketRecord {
            sample: self.sampler.sample(index),
            outputs,
            lineage,
        };
        Ok(Some(ReadTicket { record, stats }))
    }
}

/// Takes over what only a walk counts from the report of the build that recorded the manifest:
/// rejected draws and why, language checks, duplicates.
fn carry_over(report: &mut BuildReport, last: &BuildReport) {
    for (node, before) in report.nodes.iter_mut().zip(&last.nodes) {
        if node.name != before.name {
            continue;
        }
        node.stats.rejected = before.stats.rejected;
        node.stats.rejections = before.stats.rejections.clone();
        node.stats.language_checked = before.stats.language_checked;
        node.stats.language_unsure = before.stats.language_unsure;
    }
    report.duplicates = last.duplicates.clone();
}

/// Whether the last complete build can be reassembled: `report` (last-report.json) is the report
/// of the build that recorded manifest `manifest_id` and lists the same nodes as `graph`.
pub(crate) fn last_build(
    graph: &Graph,
    manifest_id: u64,
    report: Option<BuildReport>,
) -> Option<Arc<LastBuild>> {
    let report = report?;
    let same_nodes = report.nodes.len() == graph.nodes.len()
        && report
            .nodes
            .iter()
            .zip(&graph.nodes)
            .all(|(a, b)| a.name == b.name);
    (report.manifest == Some(manifest_id) && same_nodes).then(|| {
        Arc::new(LastBuild {
            manifest_id,
            report,
        })
    })
}
