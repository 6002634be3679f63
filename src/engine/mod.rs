//! The build: tickets streamed through the node graph, every artifact looked up before it is paid for.
//!
//! This module owns running a build. Its parts, each in its own file:
//! - here: the [`Engine`] (one build's shared, read-only state: config, graph, store, one provider
//!   per node, prices, the ledger), the planning entry points, and the [`BuildObserver`] through
//!   which a build says what happens (the engine prints nothing: the CLI draws a progress bar,
//!   `watch` and tests see nothing);
//! - [`ticket`]: one ticket through the graph (where a ticket is built); `context`: what its
//!   templates see; `tally`: what the build counts as tickets are written;
//! - [`spend`]: one paid call, from the budget reservation to the stored artifact;
//! - [`window`]: concurrency: tickets run as slots free, however slow one of them is;
//! - [`order`]: the build loop: tickets finish in any order, rows leave in ticket order;
//! - [`dedup`]: duplicate tickets resolved in ticket order;
//! - [`remote`]: the shared remote cache, asked after a local miss and fed after a durable put;
//! - [`batch`]: batch mode: answers asked for through providers' batch APIs, pass by pass;
//! - [`reassemble`]: the last build's files written again from its manifest's keys, when its
//!   inputs are unchanged and its files are gone;
//! - [`report`]: what a build reports, and the errors that stop it.
//!
//! It uses providers, the cache, the graph and the output writer; it knows nothing of the CLI.
//! The invariants: a ticket counts as done only after every paid artifact it generated is durable
//! (before anything uses it; the offline model's free answers are durable by the time the
//! manifest is stored, and before a ticket counts as done when the build reports them); an invalid or failed response is never stored; and
//! memory does not grow with rows (at most `concurrency` tickets are in flight, rows leave for the
//! writer as soon as they are next in order, and a ticket finished far ahead of its turn waits as
//! a few bytes, not as its row).

pub(crate) mod batch;
mod context;
mod dedup;
mod order;
pub(crate) mod reassemble;
pub(crate) mod remote;
pub(crate) mod report;
pub(crate) mod spend;
mod tally;
pub(crate) mod ticket;
mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::cache::{ArtifactStore, GroupCommit, KeyRecorder};
use crate::config::Config;
use crate::cost::{Ledger, PriceEntry};
use crate::graph::Graph;
use crate::key::ArtifactKey;
use crate::output::{DatasetWriter, OutputError, TicketRecord};
use crate::provider::{self, Provider, Request, Secrets};
use crate::sampling::Sampler;

pub(crate) use dedup::DuplicateReport;
pub(crate) use report::{BuildError, BuildReport, ModelTraffic, NodeStats, currencies};
pub(crate) use spend::{ExpensiveCall, WORST_CASE_OUTPUT_TOKENS};
use tally::Tally;
pub(crate) use ticket::{Mode, NodeState, TicketOutcome};
use window::TicketWindow;

/// What a build tells whoever runs it, as it happens. Every method does nothing by default.
pub(crate) trait BuildObserver: Send + Sync {
    /// The build is about to start `tickets` tickets.
    fn started(&self, _tickets: u64) {}
    /// An artifact was generated for `ticket_id` and is durable.
    fn generated(&self, _node: &str, _ticket_id: u64, _key: &ArtifactKey) {}
    /// Whether [`BuildObserver::generated`] tells anyone. Only then do tickets of reproducible
    /// answers (the offline model's, free and the same when asked again) wait for their flush
    /// before they count as done; otherwise they are made durable with the rest of the build,
    /// before its manifest is stored, and a cold offline build does not wait on the disk for
    /// every few tickets.
    fn reports_generated(&self) -> bool {
        false
    }
    /// A ticket is done (finished, to be written or reported failed in its turn).
    fn ticket_done(&self) {}
    /// Tickets running now, and the oldest of them (its id) with how long it has run. Told as
    /// tickets finish and every second, so a stuck call shows as such.
    fn in_flight(&self, _running: usize, _oldest: Option<(u64, std::time::Duration)>) {}
    /// A call cost more than `warn_per_call` or `error_per_call`.
    fn expensive_call(&self, _call: &ExpensiveCall) {}
    /// A provider has something to say, once (the server rejecting most attempts, say).
    fn notice(&self, _text: &str) {}
    /// No ticket is running any more.
    fn finished(&self) {}
}

/// An observer that ignores everything.
pub(crate) struct Silent;

impl BuildObserver for Silent {}

/// How a build runs, beyond what the config says.
#[derive(Clone)]
pub struct BuildOptions {
    /// Wait for group commits before counting a ticket done. Off only to measure what it costs.
    pub(crate) durable: bool,
    /// When the build is cancelled: write the complete tickets (`build` after Ctrl-C) or leave the
    /// previous files untouched (`watch`, where the last good dataset must stay until a build
    /// finishes).
    pub(crate) write_when_cancelled: bool,
    /// Nodes to regenerate even where the cache has their artifacts (`--force NODE`).
    pub(crate) force: Vec<String>,
    /// Told what happens as the build goes.
    pub(crate) observer: Arc<dyn BuildObserver>,
    /// Build only this shard's tickets (`build --shard I/N`).
    pub(crate) shard: Option<crate::shard::Shard>,
    /// Every model with a batch API asks through it (`build --batch`).
    pub(crate) batch: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            durable: true,
            write_when_cancelled: true,
            force: Vec::new(),
            observer: Arc::new(Silent),
            shard: None,
            batch: false,
        }
    }
}

impl std::fmt::Debug for BuildOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildOptions")
            .field("durable", &self.durable)
            .field("write_when_cancelled", &self.write_when_cancelled)
            .field("force", &self.force)
            .field("shard", &self.shard)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// Shared, read-only state of one build.
pub struct Engine {
    config: Arc<Config>,
    graph: Arc<Graph>,
    store: Arc<dyn ArtifactStore>,
    /// One per graph node; nodes of one model share it (concurrency and rate limits are per model).
    providers: Vec<Arc<dyn Provider>>,
    sampler: Sampler,
    commit: Arc<GroupCommit>,
    options: BuildOptions,
    /// Once set, no new ticket starts; tickets in flight finish.
    cancelled: Arc<AtomicBool>,
    /// Each node's price (by its model), `None` when unknown.
    prices: Vec<Option<PriceEntry>>,
    ledger: Ledger,
    /// The shared remote cache (`[cache.remote]`), when the build uses one.
    remote: Option<remote::RemoteTier>,
    /// Batch mode, when a node's model is in it (or the ledger has batches to collect).
    batches: Option<batch::BatchMode>,
}

impl Engine {
    /// Prepares a build. Every model's provider is set up here, before any call, so a missing API
    /// key is reported up front, with the nodes that need it.
    pub fn new(
        config: Arc<Config>,
        graph: Arc<Graph>,
        store: Arc<dyn ArtifactStore>,
        secrets: &Secrets,
        options: BuildOptions,
    ) -> Result<Engine, BuildError> {
        let providers = providers_for(&graph, secrets)?;
        Ok(Engine::with_providers(
            config, graph, store, providers, options,
        ))
    }

    /// Like [`Engine::new`] with the providers given, one per graph node (tests count calls this
    /// way, and planning passes providers that are never called).
    pub(crate) fn with_providers(
        config: Arc<Config>,
        graph: Arc<Graph>,
        store: Arc<dyn ArtifactStore>,
        providers: Vec<Arc<dyn Provider>>,
        options: BuildOptions,
    ) -> Engine {
        let sampler = config.sampler();
        let commit = GroupCommit::new(Arc::clone(&store), options.durable);
        let prices = graph
            .nodes
            .iter()
            .map(|n| n.model.price(&config.cost.prices))
            .collect();
        let ledger = Ledger::new(
            config.cost.budget,
            graph
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.config.max_cost))
                .collect(),
        );
        Engine {
            config,
            graph,
            store,
            providers,
            sampler,
            commit,
            options,
            cancelled: Arc::new(AtomicBool::new(false)),
            prices,
            ledger,
            remote: None,
            batches: None,
        }
    }

    /// An engine that walks tickets without calling any model (`plan`, `status`, `explain`), so
    /// none needs a key.
    pub(crate) fn for_planning(
        config: Arc<Config>,
        graph: Arc<Graph>,
        store: Arc<dyn ArtifactStore>,
        force: Vec<String>,
    ) -> Engine {
        let offline: Arc<dyn Provider> = Arc::new(provider::offline::OfflineProvider::new(0));
        let providers = graph.nodes.iter().map(|_| Arc::clone(&offline)).collect();
        let options = BuildOptions {
            force,
            ..BuildOptions::default()
        };
        Engine::with_providers(config, graph, store, providers, options)
    }

    /// Whether this build builds ticket `index` (all of them, unless it builds one shard).
    pub(crate) fn owns(&self, index: u64) -> bool {
        self.options.shard.is_none_or(|shard| shard.owns(index))
    }

    /// Asks for answers of batch models through `batches`.
    pub(crate) fn use_batches(&mut self, batches: batch::BatchMode) {
        self.batches = Some(batches);
    }

    /// Submits what this pass queued for batches (nothing without batch mode).
    pub(crate) async fn submit_batches(&self) -> Result<Option<batch::BatchSummary>, BuildError> {
        let Some(batches) = &self.batches else {
            return Ok(None);
        };
        batches.settle(self.store.as_ref())?;
        // Ctrl-C: nothing new is sent (a stop by the budget submits what it reserved for).
        let interrupted = self.cancelled.load(Ordering::Acquire) && self.ledger.stopped().is_none();
        batches.submit(!interrupted).await.map(Some)
    }

    /// Uses `flag` as the cancel flag (set by Ctrl-C, or by `watch` when an edit makes this build
    /// obsolete).
    pub(crate) fn use_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancelled = flag;
    }

    /// Runs the whole build and writes the output files; every ticket's keys go to `recorder`.
    pub async fn build(
        self: Arc<Self>,
        mut recorder: Option<Box<dyn KeyRecorder>>,
    ) -> Result<BuildReport, BuildError> {
        let started = Instant::now();
        let (stop_flusher, shutdown) = tokio::sync::oneshot::channel();
        let flusher = tokio::spawn(Arc::clone(&self.commit).run(shutdown));
        let writer = RowWriter::start(DatasetWriter::create(&self.config, &self.graph)?);
        let observer = Arc::clone(&self.options.observer);
        observer.started(match self.options.shard {
            Some(shard) => shard.tickets(self.config.rows),
            None => self.config.rows,
        });
        let mut tally = Tally::new(self.graph.nodes.len());
        let mut dedup =
            dedup::Deduplicator::new(self.config.quality.as_ref(), &self.config, &self.graph)?;
        let mut fatal = self
            .take_tickets(&mut tally, &writer, &mut recorder, dedup.as_mut())
            .await;
        // The answers no ticket waited for (the offline model's) are durable once the build is.
        if let Err(e) = self.commit.durable().await {
            fatal.get_or_insert(e.into());
        }
        self.tell_notices();
        observer.finished();
        let _ = stop_flusher.send(());
        let _ = flusher.await;
        let remote = self.finish_remote().await;
        let writer = writer.finish()?;
        if fatal.is_none() {
            if let Some(recorder) = recorder.as_mut() {
                fatal = recorder.finish().err().map(BuildError::from);
            }
        }
        if let Some(e) = fatal {
            writer.abandon();
            return Err(e);
        }
        let interrupted = self.cancelled.load(Ordering::Acquire);
        let stopped_by = self.ledger.stopped().map(|r| r.to_string());
        // A pass that left tickets waiting for batches writes nothing: the files come whole, in
        // the pass that has every answer.
        let awaiting = tally.awaiting_batch > 0;
        let (failures_file, files) =
            if awaiting || (interrupted && !self.options.write_when_cancelled) {
                writer.abandon();
                (None, Vec::new())
            } else {
                (writer.write_failures(&tally.failures)?, writer.finish()?)
            };
        let mut report = tally.into_report(&self.config, &self.graph);
        report.duplicates = dedup.map(|d| d.report());
        report.remote = remote;
        if let Some(shard) = self.options.shard {
            report.tickets = shard.tickets(self.config.rows);
        }
        report.models = self.traffic();
        report.interrupted = interrupted && stopped_by.is_none();
        report.stopped_by = stopped_by;
        report.files = files.iter().map(|p| p.display().to_string()).collect();
        report.failures_file = failures_file.map(|p| p.display().to_string());
        report.wall_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// One provider per model (nodes of one model share it), with the model's name.
    fn models(&self) -> Vec<(&str, &Arc<dyn Provider>)> {
        let mut seen = BTreeMap::new();
        for (node, provider) in self.graph.nodes.iter().zip(&self.providers) {
            seen.entry(node.model.name.as_str()).or_insert(provider);
        }
        seen.into_iter().collect()
    }

    /// What each model's requests took, for the models that send requests.
    fn traffic(&self) -> Vec<ModelTraffic> {
        self.models()
            .into_iter()
            .filter_map(|(model, provider)| {
                provider.traffic().map(|traffic| ModelTraffic {
                    model: model.to_string(),
                    traffic,
                })
            })
            .collect()
    }

    /// Passes on what providers have to say.
    fn tell_notices(&self) {
        self.tell_remote_notices();
        for (_, provider) in self.models() {
            if let Some(text) = provider.take_notice() {
                self.options.observer.notice(&text);
            }
        }
    }

    /// Walks every ticket without calling a model or writing a file: which artifacts are cached and
    /// which would be generated. Tickets reach `each` in ticket order.
    pub(crate) async fn plan(
        self: Arc<Self>,
        mut each: impl FnMut(TicketOutcome) + Send,
    ) -> Result<(), BuildError> {
        let mut tickets = TicketWindow::new(Arc::clone(&self));
        while let Some(next) = tickets.next().await {
            if let Some(outcome) = next? {
                each(outcome);
            }
        }
        Ok(())
    }

    /// The outcome of one ticket as planned now, by index.
    pub(crate) async fn plan_ticket(&self, index: u64) -> Result<TicketOutcome, BuildError> {
        self.run_ticket(index, Mode::Plan).await
    }

    /// The rendered request `node` would send for ticket `index` now, when its upstream outputs
    /// are all available (cached); `None` otherwise.
    pub(crate) async fn request_for(
        &self,
        index: u64,
        node: usize,
    ) -> Result<Option<Request>, BuildError> {
        let outcome = self.run_ticket(index, Mode::Plan).await?;
        if !matches!(
            outcome.states[node],
            NodeState::Done(..) | NodeState::Missing(_)
        ) {
            return Ok(None);
        }
        let context = self.context_for(&outcome);
        let template = context.template_value();
        let sample_seed = outcome.sample.sample_seed;
        Ok(self
            .request(&self.graph.nodes[node], &template, &context, sample_seed)
            .ok())
    }
}

/// One provider per model, shared by its nodes; every problem (a missing key, say) reported at
/// once, with the nodes that use the model.
fn providers_for(graph: &Graph, secrets: &Secrets) -> Result<Vec<Arc<dyn Provider>>, BuildError> {
    let mut by_model: BTreeMap<&str, Arc<dyn Provider>> = BTreeMap::new();
    let mut failed: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    for node in &graph.nodes {
        let name = node.model.name.as_str();
        if by_model.contains_key(name) || failed.contains(&name) {
            continue;
        }
        match provider::for_model(&node.model, secrets) {
            Ok(provider) => {
                by_model.insert(name, provider);
            }
            Err(e) => {
                failed.push(name);
                let users: Vec<String> = graph
                    .nodes
                    .iter()
                    .filter(|n| n.model.name == name)
                    .map(|n| format!("`{}`", n.name))
                    .collect();
                problems.push(format!("model `{name}` (nodes {}): {e}", users.join(", ")));
            }
        }
    }
    if !problems.is_empty() {
        return Err(BuildError::Providers(problems.join("; ")));
    }
    Ok(graph
        .nodes
        .iter()
        .map(|n| Arc::clone(&by_model[n.model.name.as_str()]))
        .collect())
}

/// The output writer on a thread of its own, fed rows through a bounded channel: encoding
/// Parquet must not hold up the async runtime, and the bound keeps memory flat.
struct RowWriter {
    rows: std::sync::mpsc::SyncSender<TicketRecord>,
    thread: std::thread::JoinHandle<Result<DatasetWriter, OutputError>>,
}

impl RowWriter {
    fn start(mut writer: DatasetWriter) -> RowWriter {
        let (rows, received) = std::sync::mpsc::sync_channel::<TicketRecord>(256);
        let thread = std::thread::spawn(move || -> Result<DatasetWriter, OutputError> {
            for record in received {
                writer.write(&record)?;
            }
            Ok(writer)
        });
        RowWriter { rows, thread }
    }

    /// False when the writer has stopped (on an error, which [`RowWriter::finish`] returns).
    fn send(&self, record: TicketRecord) -> bool {
        self.rows.send(record).is_ok()
    }

    /// Waits for every row sent to be written.
    fn finish(self) -> Result<DatasetWriter, BuildError> {
        drop(self.rows);
        let writer = self
            .thread
            .join()
            .map_err(|_| BuildError::Task("the output writer panicked".to_string()))??;
        Ok(writer)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryStore;
    use crate::config::Overrides;
    use crate::provider::CallFuture;
    use crate::provider::offline::OfflineProvider;
    use std::sync::atomic::AtomicU64;

    /// The offline model, counting its calls.
    struct Counting {
        inner: OfflineProvider,
        calls: AtomicU64,
    }

    impl Counting {
        fn offline() -> Arc<Counting> {
            Arc::new(Counting {
                inner: OfflineProvider::new(0),
                calls: AtomicU64::new(0),
            })
        }
    }

    impl Provider for Counting {
        fn call<'a>(&'a self, request: &'a Request) -> CallFuture<'a> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.call(request)
        }
    }

    fn project(dir: &std::path::Path, response_prompt: &str) -> (Config, Graph) {
        std::fs::create_dir_all(dir.join("p")).unwrap();
        std::fs::write(dir.join("p/topic.jinja"), "Topic for {{ queue }}").unwrap();
        std::fs::write(dir.join("p/reply.jinja"), response_prompt).unwrap();
        let toml = r#"
[dataset]
rows = 30
seed = 3
formats = ["jsonl"]
[tables.queue]
"IT Support" = 1
"Billing and Payments" = 1
[nodes.topic]
prompt = "p/topic.jinja"
[nodes.first_response]
prompt = "p/reply.jinja"
"#;
        let path = dir.join("dataset.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::parse(&path, toml.to_string(), &Overrides::default()).unwrap();
        let graph = Graph::load(&config).unwrap();
        (config, graph)
    }

    async fn run(
        config: Config,
        graph: Graph,
        store: Arc<MemoryStore>,
        counter: Arc<Counting>,
    ) -> BuildReport {
        let providers: Vec<Arc<dyn Provider>> = graph
            .nodes
            .iter()
            .map(|_| counter.clone() as Arc<dyn Provider>)
            .collect();
        let engine = Engine::with_providers(
            Arc::new(config),
            Arc::new(graph),
            store,
            providers,
            BuildOptions::default(),
        );
        Arc::new(engine).build(None).await.unwrap()
    }

    /// Counts the generated answers it is told of; reports them when `reports` is set.
    struct Told {
        reports: bool,
        generated: AtomicU64,
    }

    impl BuildObserver for Told {
        fn generated(&self, _node: &str, _ticket_id: u64, _key: &ArtifactKey) {
            self.generated.fetch_add(1, Ordering::Relaxed);
        }
        fn reports_generated(&self) -> bool {
            self.reports
        }
    }

    /// The offline model's answers: when nobody is told what was generated, no ticket waits for
    /// a flush and the build makes them durable with one flush at its end; when the build reports
    /// them (`-vv`), tickets wait for theirs, so a reported answer is durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offline_answers_wait_for_a_flush_only_when_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut flushes = Vec::new();
        for reports in [false, true] {
            let (config, graph) = project(dir.path(), "Reply in {{ language }} about {{ topic }}.");
            let offline: Arc<dyn Provider> = Arc::new(OfflineProvider::new(0));
            assert!(offline.reproducible());
            let providers = graph.nodes.iter().map(|_| Arc::clone(&offline)).collect();
            let store = Arc::new(MemoryStore::new());
            let told = Arc::new(Told {
                reports,
                generated: AtomicU64::new(0),
            });
            let options = BuildOptions {
                observer: told.clone(),
                ..BuildOptions::default()
            };
            let engine = Engine::with_providers(
                Arc::new(config),
                Arc::new(graph),
                store.clone(),
                providers,
                options,
            );
            let report = Arc::new(engine).build(None).await.unwrap();
            assert_eq!(report.written, 30);
            assert_eq!(told.generated.load(Ordering::Relaxed), 60);
            assert_eq!(store.puts.load(Ordering::Relaxed), 60);
            flushes.push(store.flushes.load(Ordering::Relaxed));
        }
        assert_eq!(flushes[0], 1, "untold, only the build's last flush");
        assert!(
            flushes[1] >= 2,
            "told, tickets waited: {} flushes",
            flushes[1]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_calls_no_model_and_an_edit_calls_only_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let counter = Counting::offline();
        let reply = "Reply in {{ language }} about {{ topic }}.";
        let (config, graph) = project(dir.path(), reply);
        let first = run(config, graph, store.clone(), counter.clone()).await;
        assert_eq!(counter.calls.load(Ordering::Relaxed), 60);
        assert_eq!(first.written, 30);
        assert_eq!(store.puts.load(Ordering::Relaxed), 60);

        let (config, graph) = project(dir.path(), reply);
        let second = run(config, graph, store.clone(), counter.clone()).await;
        assert_eq!(
            counter.calls.load(Ordering::Relaxed),
            60,
            "a rebuild called a model"
        );
        assert_eq!(second.reused(), 60);

        let (config, graph) = project(dir.path(), "Answer in {{ language }} about {{ topic }}.");
        let third = run(config, graph, store.clone(), counter.clone()).await;
        assert_eq!(
            counter.calls.load(Ordering::Relaxed),
            90,
            "only first_response re-runs"
        );
        assert_eq!(third.nodes[1].stats.generated, 30);
        assert_eq!(third.nodes[0].stats.reused, 30);
        assert!(
            store.flushes.load(Ordering::Relaxed) >= 1,
            "the build made its answers durable"
        );
    }

    /// What may not change a key: credentials, where files live, how calls are scheduled. A
    /// project changed in all of those at once rebuilds without calling any model.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_paths_and_scheduling_change_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let counter = Counting::offline();
        let reply = "Reply in {{ language }} about {{ topic }}.";
        let (config, graph) = project(dir.path(), reply);
        run(config, graph, store.clone(), counter.clone()).await;
        assert_eq!(counter.calls.load(Ordering::Relaxed), 60);

        let (mut config, graph) = project(dir.path(), reply);
        let moved = dir.path().join("elsewhere");
        config.cache_dir = moved.join("cache");
        config.output_dir = moved.join("out");
        config.concurrency = 3;
        let mut graph = graph;
        for node in &mut graph.nodes {
            let model = &mut node.model;
            model.api_key_env = Some("ANOTHER_KEY".to_string());
            model.latency_ms = 5;
            model.limits.max_concurrency = 2;
            model.limits.requests_per_minute = Some(10_000);
            model.limits.max_attempts = 1;
            model.limits.timeout_secs = 1;
        }
        let again = run(config, graph, store.clone(), counter.clone()).await;
        assert_eq!(
            counter.calls.load(Ordering::Relaxed),
            60,
            "a change that is not key material called a model"
        );
        assert_eq!(again.reused(), 60);
    }
}
