//! The build loop: tickets finish in any order, rows leave in ticket order.
//!
//! This module owns what happens to a ticket between finishing and reaching the output writer.
//! The [`TicketRunner`] keeps `concurrency` tickets running however far behind the slowest one
//! is, so tickets finish out of order; the files, the failures file, the manifest and duplicate
//! resolution all want them in order. A ticket that finishes ahead of its turn waits:
//! - whole, when its turn is near (within `8 x concurrency` tickets of the next to write), or
//!   when walking the cache again would not give it back exactly;
//! - as its counts, keys and failure (no outputs), when it failed (a failure is not in the cache
//!   to read back);
//! - otherwise as a bit set of the lookups it generated. Everything it used is durable in the
//!   cache before it counted as done, so in its turn it is walked again in
//!   [`Mode::Replay`]: answers read back, judged again, and counted as the
//!   first walk counted them.
//!
//! So a ticket stuck on a long reply costs a few dozen bytes per ticket finished behind it, never
//! a row, and what comes out is what an in-order build writes. Tickets start at most
//! `1024 x concurrency` past the next to write, which bounds that too. Progress counts a ticket
//! when it finishes; the report counts it when it is written (after duplicate resolution, which
//! only ticket order makes deterministic).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;

use super::dedup::Deduplicator;
use super::window::{TicketResult, TicketRunner};
use super::{BuildError, Engine, Mode, NodeState, NodeStats, RowWriter, Tally, TicketOutcome};
use crate::cache::KeyRecorder;
use crate::key::ArtifactKey;
use crate::output::{Failure, TicketRecord};

/// Tickets per unit of concurrency that wait whole for their turn; past that, they wait as a
/// replay. The ticket window of plans holds as many.
const NEAR_PER_SLOT: u64 = 8;

/// How far past the next ticket to write tickets may start, per unit of concurrency: far enough
/// that a ticket stuck for minutes holds nothing up, near enough that what waits stays small.
const AHEAD_PER_SLOT: u64 = 1024;

/// How often progress hears about the tickets in flight.
const IN_FLIGHT_EVERY: Duration = Duration::from_secs(1);

/// How many rows are written between two yields to the runtime: a long run of rows to write
/// (after a slow ticket) must let finished tickets be taken and new ones start.
const ROWS_PER_YIELD: u64 = 32;

/// A ticket finished ahead of its turn to be written.
enum Waiting {
    Whole(Box<TicketOutcome>),
    /// Failed: what its turn needs without its outputs.
    Failed(Box<FailedTicket>),
    /// To be read back from the cache: the lookups the ticket's walk generated.
    Replay(u64),
    /// Not started: the build was cancelled.
    NotStarted,
    /// Waiting for a batch (batch mode): no row in this pass.
    AwaitingBatch,
}

/// What the turn of a failed ticket needs: its counts, the keys the manifest records, the failure.
struct FailedTicket {
    stats: Vec<NodeStats>,
    keys: Vec<Option<ArtifactKey>>,
    rejected_keys: Vec<ArtifactKey>,
    failure: Failure,
}

/// What the build loop carries from ticket to ticket.
struct Reorder<'a> {
    engine: &'a Arc<Engine>,
    tally: &'a mut Tally,
    writer: &'a RowWriter,
    recorder: &'a mut Option<Box<dyn KeyRecorder>>,
    dedup: Option<&'a mut Deduplicator>,
    /// The error that stopped the build; after it, tickets in flight finish and are ignored.
    fatal: Option<BuildError>,
    /// The writer stopped (its error is collected when it is joined); tickets in flight finish.
    writer_stopped: bool,
    /// The next ticket to write.
    next_to_write: u64,
    waiting: BTreeMap<u64, Waiting>,
    /// Tickets up to `next_to_write + near` wait whole.
    near: u64,
    /// Tickets start before `next_to_write + ahead`.
    ahead: u64,
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
        let mut order = Reorder {
            engine: self,
            tally,
            writer,
            recorder,
            dedup,
            fatal: None,
            writer_stopped: false,
            next_to_write: 0,
            waiting: BTreeMap::new(),
            near: concurrency.saturating_mul(NEAR_PER_SLOT),
            ahead: concurrency.saturating_mul(AHEAD_PER_SLOT),
        };
        order.skip_other_shards();
        let mut runner = TicketRunner::new(Arc::clone(self));
        let mut every = tokio::time::interval(IN_FLIGHT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let finished = tokio::select! {
                finished = runner.next(order.start_before()) => finished,
                _ = every.tick() => {
                    self.tell_in_flight(&runner);
                    self.tell_notices();
                    continue;
                }
            };
            let Some((index, result)) = finished else {
                break;
            };
            order.on_finished(index, result);
            order.write_ready(&mut runner).await;
        }
        // Tickets never started: the build was cancelled (or stopped) before their turn.
        order.tally.not_started += (runner.started()..self.config.rows)
            .filter(|index| self.owns(*index))
            .count() as u64;
        order.fatal
    }

    fn tell_in_flight(&self, runner: &TicketRunner) {
        let oldest = runner
            .oldest()
            .map(|(index, age)| (self.sampler.sample(index).ticket_id, age));
        self.options.observer.in_flight(runner.running(), oldest);
    }
}

impl Reorder<'_> {
    /// Moves past another shard's tickets, which are not this build's to write: the next ticket
    /// to write is always one of this build's, so tickets start up to `ahead` past one it owns
    /// (however few of the first tickets a shard has).
    fn skip_other_shards(&mut self) {
        while self.next_to_write < self.engine.config.rows && !self.engine.owns(self.next_to_write)
        {
            self.next_to_write += 1;
        }
    }

    fn start_before(&self) -> u64 {
        self.next_to_write.saturating_add(self.ahead)
    }

    /// Where tickets may start while rows are being written. When the next row is a ticket that
    /// waits whole, the build loop itself is behind (it has rows to write, no ticket holds it up),
    /// and tickets started far ahead would finish past the near window, to be walked a second
    /// time in their turn: the loop would then fall further behind with every row, and a large
    /// build would walk nearly half its tickets twice. So they start only up to half the near
    /// window. After a slow ticket, the rows behind it that wait to be read back keep the slots
    /// busy as before.
    fn start_while_writing(&self) -> u64 {
        match self.waiting.get(&self.next_to_write) {
            Some(Waiting::Whole(_) | Waiting::Failed(_)) => {
                self.next_to_write.saturating_add(self.near / 2)
            }
            _ => self.start_before(),
        }
    }

    /// A ticket finished: progress hears of it, and it waits for its turn.
    fn on_finished(&mut self, index: u64, result: TicketResult) {
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
        let waits = if outcome.awaits_batch() {
            Waiting::AwaitingBatch
        } else if index - self.next_to_write < self.near {
            Waiting::Whole(Box::new(outcome))
        } else if let Some(failure) = outcome.failure {
            Waiting::Failed(Box::new(FailedTicket {
                keys: outcome.states.iter().map(NodeState::key).collect(),
                stats: outcome.stats,
                rejected_keys: outcome.rejected_keys,
                failure,
            }))
        } else if outcome.replayable() {
            Waiting::Replay(outcome.generated_lookups)
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
        loop {
            self.skip_other_shards();
            let Some(waiting) = self.waiting.remove(&self.next_to_write) else {
                break;
            };
            let index = self.next_to_write;
            self.next_to_write += 1;
            if self.fatal.is_some() || self.writer_stopped {
                continue;
            }
            match waiting {
                Waiting::Whole(outcome) => self.write(*outcome).await,
                Waiting::Failed(failed) => self.write_failed(index, *failed),
                Waiting::Replay(generated) => {
                    match self
                        .engine
                        .run_ticket(index, Mode::Replay { generated })
                        .await
                    {
                        Ok(outcome) => {
                            self.tally.read_back += 1;
                            self.write(outcome).await;
                        }
                        Err(e) => self.stop(e),
                    }
                }
                Waiting::NotStarted => self.tally.not_started += 1,
                Waiting::AwaitingBatch => self.tally.awaiting_batch += 1,
            }
            if index % ROWS_PER_YIELD == 0 {
                // Reading back and judging never wait, so without this the runtime's budget
                // would run out and `now_or_never` would stop seeing finished tickets.
                tokio::task::yield_now().await;
            }
            while let Some(Some((index, result))) =
                runner.next(self.start_while_writing()).now_or_never()
            {
                self.on_finished(index, result);
            }
        }
    }

    /// One ticket in its turn: duplicates resolved, counted, keys recorded, row sent.
    async fn write(&mut self, outcome: TicketOutcome) {
        let engine = self.engine;
        if outcome.awaits_batch() {
            self.tally.awaiting_batch += 1;
            return;
        }
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
        // A duplicate redrawn in batch mode may wait for its new answer.
        if outcome.awaits_batch() {
            self.tally.awaiting_batch += 1;
            return;
        }
        self.tally.add(&outcome, &engine.graph);
        let keys: Vec<Option<ArtifactKey>> = outcome.states.iter().map(NodeState::key).collect();
        if !self.record(outcome.sample.index, &keys, &outcome.rejected_keys) {
            return;
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
            // Its error is collected when it is joined; the tickets in flight finish first.
            self.writer_stopped = true;
            self.engine.cancelled.store(true, Ordering::Release);
        }
    }

    /// A failed ticket in its turn, from what was kept of it (duplicate resolution passes
    /// failed tickets by).
    fn write_failed(&mut self, index: u64, failed: FailedTicket) {
        let language = self.engine.sampler.sample(index).language;
        self.tally
            .add_counts(&failed.stats, language.code(), &self.engine.graph);
        if self.record(index, &failed.keys, &failed.rejected_keys) {
            self.tally.failures.push(failed.failure);
        }
    }

    /// Records a ticket's keys in the manifest; false when that failed (the build stops).
    fn record(&mut self, index: u64, keys: &[Option<ArtifactKey>], kept: &[ArtifactKey]) -> bool {
        let Some(recorder) = self.recorder.as_mut() else {
            return true;
        };
        match recorder.record(index, keys, kept) {
            Ok(()) => true,
            Err(e) => {
                self.stop(e.into());
                false
            }
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
max_words = 6
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
        build_told(dir, out, slow, BuildOptions::default()).await
    }

    async fn build_told(
        dir: &std::path::Path,
        out: &str,
        slow: &[u64],
        options: BuildOptions,
    ) -> BuildReport {
        let (config, graph) = project(dir, out);
        let sampler = config.sampler();
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
            options,
        );
        Arc::new(engine).build(None).await.unwrap()
    }

    /// Takes its time over every finished ticket, as a build loop does that has more to do per
    /// row than the tickets have (duplicates to resolve, a slow disk).
    struct SlowLoop;

    impl super::super::BuildObserver for SlowLoop {
        fn ticket_done(&self) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A build loop slower than its tickets: they finish ahead of their turn, but never so far
    /// that one of them has to be walked a second time (before, tickets kept starting far ahead,
    /// and most of a large offline build was read back).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_build_loop_slower_than_its_tickets_reads_none_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = BuildOptions {
            observer: Arc::new(SlowLoop),
            ..BuildOptions::default()
        };
        let slow = build_told(dir.path(), "slow-loop", &[], options).await;
        assert_eq!(slow.read_back, 0, "tickets were walked twice");
        let in_order = build(dir.path(), "in-order", &[]).await;
        let read = |out: &str| std::fs::read(dir.path().join(out).join("dataset.jsonl")).unwrap();
        assert!(read("slow-loop") == read("in-order"), "the rows differ");
        assert_eq!(slow.failed, in_order.failed);
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

    /// Two nodes that send the same request share its cache entry; forcing the second one
    /// replaces the answer the first one used, so the ticket cannot be read back as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forced_answer_that_replaces_one_the_ticket_used_is_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("p/same.jinja"), "Topic for {{ queue }}").unwrap();
        let toml = r#"
[dataset]
rows = 3
formats = ["jsonl"]
[tables.queue]
"IT Support" = 1
[nodes.topic]
prompt = "p/same.jinja"
[nodes.topic_again]
prompt = "p/same.jinja"
task = "topic"
"#;
        let path = dir.path().join("dataset.toml");
        std::fs::write(&path, toml).unwrap();
        let mut config = Config::parse(&path, toml.to_string(), &Overrides::default()).unwrap();
        config.output_dir = dir.path().join("out");
        let graph = Arc::new(Graph::load(&config).unwrap());
        let config = Arc::new(config);
        let store = Arc::new(MemoryStore::new());
        let engine = |force: &[&str]| {
            let options = BuildOptions {
                force: force.iter().map(|s| s.to_string()).collect(),
                // Walked outside a build, a ticket has no group commit to wait for.
                durable: false,
                ..BuildOptions::default()
            };
            let offline: Arc<dyn Provider> = Arc::new(OfflineProvider::new(0));
            let providers = graph.nodes.iter().map(|_| Arc::clone(&offline)).collect();
            Arc::new(Engine::with_providers(
                Arc::clone(&config),
                Arc::clone(&graph),
                store.clone(),
                providers,
                options,
            ))
        };
        engine(&[]).build(None).await.unwrap();
        let walked = |force: &'static [&'static str]| {
            let engine = engine(force);
            async move { engine.run_ticket(0, Mode::Build).await.unwrap() }
        };
        let unforced = walked(&[]).await;
        assert_eq!(unforced.states[0].key(), unforced.states[1].key());
        assert!(unforced.replayable());
        assert!(
            walked(&["topic"]).await.replayable(),
            "nothing used before it"
        );
        let forced = walked(&["topic_again"]).await;
        assert!(forced.overwrote);
        assert!(!forced.replayable());
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
