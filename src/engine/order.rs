//! The build loop: tickets finish in any order, rows leave in ticket order.
//!
//! This module owns what happens to a ticket between finishing and reaching the output writer.
//! The [`TicketRunner`] keeps `concurrency` tickets running however far behind the slowest one
//! is, so tickets finish out of order; the files, the failures file, the manifest and duplicate
//! resolution all want them in order. A ticket that finishes ahead of its turn waits in one of
//! two forms:
//! - whole, when its turn is near (within `8 x concurrency` tickets of the next to write), when
//!   it failed (a failure is not in the cache to read back), or when a walk of the cache would
//!   not give it back exactly;
//! - otherwise as eight bytes: which of its lookups it paid for. Everything it used is durable
//!   in the cache before it counted as done, so when its turn comes it is walked again in
//!   [`Mode::Replay`](super::Mode::Replay): answers read back, judged again, and counted as the
//!   first walk counted them.
//!
//! So a ticket stuck on a long reply for the whole build costs a few dozen bytes per ticket
//! finished behind it, never a row, and what comes out is what an in-order build writes. Progress
//! counts a ticket when it finishes; the report counts it when it is written (after duplicate
//! resolution, which only ticket order makes deterministic).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;

use super::dedup::Deduplicator;
use super::window::{TicketResult, TicketRunner};
use super::{BuildError, Engine, NodeState, RowWriter, Tally, TicketOutcome};
use crate::cache::KeyRecorder;
use crate::key::ArtifactKey;
use crate::output::TicketRecord;

/// Tickets per unit of concurrency that wait whole for their turn; past that, they wait as a
/// replay. The same bound as the ticket window plans use, so a build without a slow ticket keeps
/// what it kept before.
const NEAR_PER_SLOT: u64 = 8;

/// How often progress hears about the tickets in flight when none finishes.
const IN_FLIGHT_EVERY: Duration = Duration::from_secs(1);

/// A ticket finished ahead of its turn to be written.
enum Waiting {
    Whole(Box<TicketOutcome>),
    /// To be read back from the cache: the lookups the ticket's walk paid for.
    Replay(u64),
    /// Not started: the build was cancelled.
    NotStarted,
}

/// What the build loop carries from ticket to ticket.
struct InOrder<'a> {
    engine: &'a Arc<Engine>,
    tally: &'a mut Tally,
    writer: &'a RowWriter,
    recorder: &'a mut Option<Box<dyn KeyRecorder>>,
    dedup: Option<&'a mut Deduplicator>,
    /// The error that stopped the build; after it, tickets in flight finish and are ignored.
    fatal: Option<BuildError>,
    /// The writer stopped (its error is collected when it is joined).
    writer_stopped: bool,
    /// The next ticket to write.
    next: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Tickets up to `next + near` wait whole.
    near: u64,
}

impl Engine {
    /// Runs every ticket, counts it, records its keys and sends its row to the writer, in ticket
    /// order. Returns the error that stopped the build, if one did (the build is then cancelled:
    /// tickets in flight finish, none starts).
    pub(super) async fn take_tickets(
        self: &Arc<Self>,
        tally: &mut Tally,
        writer: &RowWriter,
        recorder: &mut Option<Box<dyn KeyRecorder>>,
        dedup: Option<&mut Deduplicator>,
    ) -> Option<BuildError> {
        let concurrency = self.config.concurrency.max(1) as u64;
        let mut order = InOrder {
            engine: self,
            tally,
            writer,
            recorder,
            dedup,
            fatal: None,
            writer_stopped: false,
            next: 0,
            waiting: BTreeMap::new(),
            near: concurrency.saturating_mul(NEAR_PER_SLOT),
        };
        let mut runner = TicketRunner::new(Arc::clone(self));
        let mut every = tokio::time::interval(IN_FLIGHT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !order.writer_stopped {
            let finished = tokio::select! {
                finished = runner.next() => finished,
                _ = every.tick() => {
                    self.tell_in_flight(&runner);
                    continue;
                }
            };
            let Some((index, result)) = finished else {
                break;
            };
            order.finished(index, result);
            self.tell_in_flight(&runner);
            order.write_ready(&mut runner).await;
        }
        // Tickets never started: the build was cancelled (or stopped) before their turn.
        order.tally.not_started += self.config.rows - runner.started();
        order.fatal
    }

    fn tell_in_flight(&self, runner: &TicketRunner) {
        let oldest = runner
            .oldest()
            .map(|(index, age)| (self.sampler.sample(index).ticket_id, age));
        self.options.observer.in_flight(runner.running(), oldest);
    }
}

impl InOrder<'_> {
    /// A ticket finished: progress hears of it, and it waits for its turn.
    fn finished(&mut self, index: u64, result: TicketResult) {
        if self.fatal.is_some() {
            return;
        }
        let outcome = match result {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                self.waiting.insert(index, Waiting::NotStarted);
                return;
            }
            Err(e) => return self.stop(e),
        };
        let observer = &self.engine.options.observer;
        for (node, key) in &outcome.generated {
            let name = &self.engine.graph.nodes[*node].name;
            observer.generated(name, outcome.sample.ticket_id, key);
        }
        observer.ticket_done();
        let waits = if index - self.next >= self.near && outcome.replayable() {
            Waiting::Replay(outcome.paid_lookups)
        } else {
            Waiting::Whole(Box::new(outcome))
        };
        self.waiting.insert(index, waits);
    }

    /// Stops the build on `error`: no ticket starts, the ones in flight finish.
    fn stop(&mut self, error: BuildError) {
        self.fatal.get_or_insert(error);
        self.engine.cancelled.store(true, Ordering::Release);
    }

    /// Writes every ticket whose turn has come. Between rows, tickets that have finished meanwhile
    /// are taken from `runner`, so a long run of rows to write (after a slow ticket) does not
    /// leave slots idle.
    async fn write_ready(&mut self, runner: &mut TicketRunner) {
        while let Some(waiting) = self.waiting.remove(&self.next) {
            let index = self.next;
            self.next += 1;
            if self.fatal.is_some() || self.writer_stopped {
                continue;
            }
            let outcome = match waiting {
                Waiting::Whole(outcome) => *outcome,
                Waiting::Replay(paid) => match self.engine.replay_ticket(index, paid).await {
                    Ok(outcome) => {
                        self.tally.read_back += 1;
                        outcome
                    }
                    Err(e) => {
                        self.stop(e);
                        continue;
                    }
                },
                Waiting::NotStarted => {
                    self.tally.not_started += 1;
                    continue;
                }
            };
            self.write(outcome).await;
            while let Some(Some((index, result))) = runner.next().now_or_never() {
                self.finished(index, result);
            }
        }
    }

    /// One ticket in its turn: duplicates resolved, counted, keys recorded, row sent.
    async fn write(&mut self, outcome: TicketOutcome) {
        let engine = self.engine;
        let outcome = match self.dedup.as_deref_mut() {
            Some(dedup) => match engine.deduplicate(dedup, outcome).await {
                Ok((outcome, superseded)) => {
                    self.count_redrawn(&outcome, &superseded);
                    outcome
                }
                Err(e) => return self.stop(e),
            },
            None => outcome,
        };
        self.tally.add(&outcome, &engine.graph);
        if let Some(recorder) = self.recorder.as_mut() {
            let keys: Vec<Option<ArtifactKey>> =
                outcome.states.iter().map(NodeState::key).collect();
            if let Err(e) = recorder.record(outcome.sample.index, &keys, &outcome.rejected_keys) {
                return self.stop(e.into());
            }
        }
        if let Some(failure) = outcome.failure {
            self.tally.failures.push(failure);
            return;
        }
        self.tally.written += 1;
        let outputs = outcome
            .states
            .into_iter()
            .map(|s| match s {
                NodeState::Done(output, _) => Some(output),
                _ => None,
            })
            .collect();
        let record = TicketRecord {
            sample: outcome.sample,
            outputs,
            lineage: outcome.lineage,
        };
        if !self.writer.send(record) {
            self.writer_stopped = true;
        }
    }

    /// A ticket redrawn as a duplicate: what its superseded versions paid for counts (the
    /// first version's generated answers were reported when it finished; the redraws' now).
    fn count_redrawn(&mut self, last: &TicketOutcome, superseded: &[TicketOutcome]) {
        let engine = self.engine;
        for old in superseded {
            self.tally.add_superseded(old, last, &engine.graph);
        }
        let redraws = superseded
            .iter()
            .skip(1)
            .chain(superseded.first().map(|_| last));
        for version in redraws {
            for (node, key) in &version.generated {
                let name = &engine.graph.nodes[*node].name;
                engine
                    .options
                    .observer
                    .generated(name, version.sample.ticket_id, key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BuildOptions, BuildReport};
    use super::*;
    use crate::cache::MemoryStore;
    use crate::config::{Config, Overrides};
    use crate::graph::Graph;
    use crate::provider::offline::OfflineProvider;
    use crate::provider::{CallFuture, Provider, Request};
    use crate::sampling::Sampler;

    /// The offline model, but slow for the calls of chosen tickets.
    struct SlowFor {
        inner: OfflineProvider,
        /// Sample seeds of the slow tickets.
        slow: Vec<u64>,
        delay: Duration,
    }

    impl Provider for SlowFor {
        fn call<'a>(&'a self, request: &'a Request) -> CallFuture<'a> {
            Box::pin(async move {
                if self.slow.contains(&request.sample_seed) {
                    tokio::time::sleep(self.delay).await;
                }
                self.inner.call(request).await
            })
        }
    }

    /// Checks that reject some draws, and unique replies that redraw (and drop) duplicates:
    /// every path a ticket takes to its row.
    fn project(dir: &std::path::Path, out: &str) -> (Config, Graph) {
        std::fs::create_dir_all(dir.join("p")).unwrap();
        std::fs::write(dir.join("p/topic.jinja"), "Topic for {{ queue }}").unwrap();
        std::fs::write(
            dir.join("p/reply.jinja"),
            "Reply in {{ language }} about {{ topic }}.",
        )
        .unwrap();
        let toml = String::from(
            r#"
[dataset]
rows = 300
seed = 3
formats = ["jsonl"]
concurrency = 4
[tables.queue]
"IT Support" = 1
"Billing and Payments" = 1
[output]
lineage = true
[output.columns]
ticket_id = "ticket_id"
language = "language"
queue = "queue"
topic = "topic"
first_response = "first_response"
[nodes.topic]
prompt = "p/topic.jinja"
[nodes.topic.checks]
max_words = 7
[nodes.first_response]
prompt = "p/reply.jinja"
[quality]
unique = ["topic"]
"#,
        );
        let path = dir.join("dataset.toml");
        std::fs::write(&path, &toml).unwrap();
        let mut config = Config::parse(&path, toml, &Overrides::default()).unwrap();
        config.output_dir = dir.join(out);
        let graph = Graph::load(&config).unwrap();
        (config, graph)
    }

    async fn build(dir: &std::path::Path, out: &str, slow: &[u64]) -> BuildReport {
        let (config, graph) = project(dir, out);
        let sampler = Sampler::new(config.seed, &config.languages, &config.tables);
        let provider: Arc<dyn Provider> = Arc::new(SlowFor {
            inner: OfflineProvider::new(0),
            slow: slow
                .iter()
                .map(|i| sampler.sample(*i).sample_seed)
                .collect(),
            delay: Duration::from_millis(1000),
        });
        let providers = graph.nodes.iter().map(|_| Arc::clone(&provider)).collect();
        let engine = Engine::with_providers(
            Arc::new(config),
            Arc::new(graph),
            Arc::new(MemoryStore::new()),
            providers,
            BuildOptions::default(),
        );
        Arc::new(engine).build(None).await.unwrap()
    }

    /// The same build twice on empty caches: once in order, once with an early ticket slow
    /// enough for the rest to finish far ahead of them. Same rows, failures, lineage and report.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tickets_read_back_behind_a_slow_one_come_out_as_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut in_order = build(dir.path(), "in-order", &[]).await;
        let mut behind = build(dir.path(), "behind", &[1]).await;
        assert!(
            behind.read_back > 100,
            "the slow tickets held up too little to test anything: {} read back",
            behind.read_back
        );
        let rejected: u64 = in_order.nodes.iter().map(|n| n.stats.rejected).sum();
        let duplicates = in_order.duplicates.clone().unwrap_or_default();
        assert!(rejected > 0, "no draw was rejected");
        assert!(duplicates.redraws > 0, "no duplicate was redrawn");
        assert!(in_order.failed > 0, "no ticket failed");

        for file in ["dataset.jsonl", "dataset.failures.jsonl"] {
            let read = |out: &str| std::fs::read(dir.path().join(out).join(file)).unwrap();
            assert!(read("in-order") == read("behind"), "{file} differs");
        }
        let lineage = |out: &str| lineage_without_times(&dir.path().join(out));
        assert_eq!(lineage("in-order"), lineage("behind"));
        in_order.read_back = behind.read_back;
        for report in [&mut in_order, &mut behind] {
            report.wall_ms = 0;
            report.files.clear();
            report.failures_file = None;
        }
        assert_eq!(
            serde_json::to_value(&in_order).unwrap(),
            serde_json::to_value(&behind).unwrap()
        );
    }

    /// The lineage file's rows, but for when each artifact was made.
    fn lineage_without_times(out: &std::path::Path) -> Vec<String> {
        let file = std::fs::File::open(out.join("dataset.lineage.parquet")).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let columns: Vec<_> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|name| name != "created_unix_ms")
                .collect();
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|name| {
                        let column = batch.column_by_name(name).unwrap();
                        format!("{:?}", column.slice(row, 1))
                    })
                    .collect();
                rows.push(cells.join("|"));
            }
        }
        rows
    }
}
