//! The build: tickets streamed through the node graph, every artifact looked up before it is paid for.
//!
//! This module owns running a build: for each ticket (concurrently, bounded), it draws the sample, walks
//! the graph in dependency order, renders each node's request, derives its key, reuses the cached
//! artifact or calls the provider and stores the result, then hands the finished ticket, in ticket
//! order, to the output writer. It uses providers, the cache and the graph; it knows nothing of the
//! CLI. The invariants: a ticket counts as done only after every artifact it generated is durable (a
//! paid answer, before anything uses it); an invalid or failed response is never stored; and memory
//! does not grow with rows (at most `concurrency` tickets are in flight, and rows leave for the
//! writer as soon as they are next in order).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::cache::{
    Artifact, ArtifactStore, ArtifactSummary, CacheError, GroupCommit, KeyRecorder, Lookup,
    MissReason,
};
use crate::config::Config;
use crate::cost::{Ledger, PriceEntry, Refusal};
use crate::graph::{Graph, Node};
use crate::key::ArtifactKey;
use crate::output::{DatasetWriter, Failure, LineageEntry, OutputError, TicketRecord};
use crate::provider::{self, OfflineInputs, Provider, ProviderError, Request, Secrets};
use crate::sampling::{Sampler, TicketSample};
use crate::value::NodeOutput;

/// How a build runs, beyond what the config says.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Wait for group commits before counting a ticket done. Off only to measure what it costs.
    pub durable: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Print one line per generated artifact (after it is durable) on stderr.
    pub log_artifacts: bool,
    /// When the build is cancelled: write the complete tickets (`build` after Ctrl-C) or leave the
    /// previous files untouched (`watch`, where the last good dataset must stay until a build
    /// finishes).
    pub write_when_cancelled: bool,
    /// Nodes to regenerate even where the cache has their artifacts (`--force NODE`).
    pub force: Vec<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            durable: true,
            progress: false,
            log_artifacts: false,
            write_when_cancelled: true,
            force: Vec::new(),
        }
    }
}

/// What happened to one node across the build.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStats {
    /// Artifacts found in the cache.
    pub reused: u64,
    /// Artifacts produced by a model call in this build.
    pub generated: u64,
    /// Tickets for which the node's `when` condition was false.
    pub skipped: u64,
    /// Tickets for which the node failed (or an upstream node did).
    pub failed: u64,
    /// Cache entries that did not decode and were regenerated.
    pub corrupt: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Spent in this build, in USD.
    pub cost_usd: f64,
    /// What the artifacts reused from the cache cost when they were generated, in USD.
    pub reused_cost_usd: f64,
    /// What generating every artifact of this build again would cost at today's prices, in USD.
    pub regenerate_cost_usd: f64,
    /// Artifacts whose cost is unknown (a model without a price); not counted in the sums.
    pub unknown_cost: u64,
}

/// A node's name with its statistics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSummary {
    pub name: String,
    #[serde(flatten)]
    pub stats: NodeStats,
}

/// The outcome of a build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildReport {
    pub dataset: String,
    pub profile: Option<String>,
    pub tickets: u64,
    pub written: u64,
    pub failed: u64,
    /// Tickets never started because the build was interrupted.
    pub not_started: u64,
    pub interrupted: bool,
    /// True when the inputs matched the last build and its files were intact: nothing ran.
    pub up_to_date: bool,
    /// Spent in this build per model and per ticket language, in USD.
    pub cost_by_model: BTreeMap<String, f64>,
    pub cost_by_language: BTreeMap<String, f64>,
    /// Why the build stopped issuing calls early (a budget or a per-call limit), if it did.
    pub stopped_by: Option<String>,
    /// The currencies summaries show, and the rates used (units per USD).
    pub currencies: Vec<(String, f64)>,
    /// Per node, in graph order.
    pub nodes: Vec<NodeSummary>,
    pub files: Vec<String>,
    pub failures_file: Option<String>,
    pub wall_ms: u64,
}

impl BuildReport {
    /// The report of a build that found nothing to do: everything the last build made is reused.
    pub fn up_to_date(last: &crate::manifest::Manifest, config: &Config) -> BuildReport {
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
        }
    }

    pub fn generated(&self) -> u64 {
        self.nodes.iter().map(|n| n.stats.generated).sum()
    }
    pub fn reused(&self) -> u64 {
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
}

/// What became of one node for one ticket.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeState {
    /// The output, reused or generated, under its key.
    Done(NodeOutput, ArtifactKey),
    /// The node's `when` condition was false.
    Skipped,
    /// The node (or a node it depends on) failed.
    Failed,
    /// Planning only: not cached; this is the key it would be generated under.
    Missing(ArtifactKey),
    /// Planning only: an upstream node is missing, so the request cannot be rendered yet.
    Blocked,
}

impl NodeState {
    pub fn key(&self) -> Option<ArtifactKey> {
        match self {
            NodeState::Done(_, key) | NodeState::Missing(key) => Some(*key),
            _ => None,
        }
    }
}

/// One ticket after the build (or the plan) walked its nodes.
#[derive(Debug)]
pub struct TicketOutcome {
    pub sample: TicketSample,
    /// In graph order.
    pub states: Vec<NodeState>,
    pub failure: Option<Failure>,
    pub stats: Vec<NodeStats>,
    /// Nodes generated in this build, with their keys.
    pub generated: Vec<(usize, ArtifactKey)>,
    /// How each node's output was made, in graph order (`None` when it has no artifact).
    pub lineage: Vec<Option<LineageEntry>>,
    /// Planning only: the rendered request text (system and user) of each missing node.
    pub pending_prompts: Vec<Option<String>>,
}

/// Shared, read-only state of one build.
pub struct Engine {
    config: Arc<Config>,
    graph: Arc<Graph>,
    store: Arc<dyn ArtifactStore>,
    providers: Vec<Arc<dyn Provider>>,
    sampler: Sampler,
    commit: Arc<GroupCommit>,
    options: BuildOptions,
    cancelled: Arc<AtomicBool>,
    /// Each node's price (by its model), `None` when unknown.
    prices: Vec<Option<PriceEntry>>,
    ledger: Ledger,
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
        // One provider per model, shared by its nodes: concurrency and rate limits are per model.
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
                    by_model.insert(&node.model.name, provider);
                }
                Err(e) => {
                    failed.push(name);
                    let users: Vec<String> = graph
                        .nodes
                        .iter()
                        .filter(|n| n.model.name == node.model.name)
                        .map(|n| format!("`{}`", n.name))
                        .collect();
                    problems.push(format!(
                        "model `{}` (nodes {}): {e}",
                        node.model.name,
                        users.join(", ")
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(BuildError::Providers(problems.join("; ")));
        }
        let providers = graph
            .nodes
            .iter()
            .map(|n| Arc::clone(&by_model[n.model.name.as_str()]))
            .collect();
        Ok(Engine::with_providers(
            config, graph, store, providers, options,
        ))
    }

    /// Like [`Engine::new`] with the providers given, one per graph node (tests count calls this way).
    pub fn with_providers(
        config: Arc<Config>,
        graph: Arc<Graph>,
        store: Arc<dyn ArtifactStore>,
        providers: Vec<Arc<dyn Provider>>,
        options: BuildOptions,
    ) -> Engine {
        let sampler = Sampler::new(config.seed, &config.languages, &config.tables);
        let commit = GroupCommit::new(Arc::clone(&store), options.durable);
        let prices = graph
            .nodes
            .iter()
            .map(|n| crate::cost::price_for(&n.model.provider, &n.model.model, &config.cost.prices))
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
        }
    }

    /// Uses `flag` as the cancel flag (set by Ctrl-C, or by `watch` when an edit makes this build
    /// obsolete).
    pub fn use_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancelled = flag;
    }

    /// A flag that, once set, stops new tickets from starting; tickets in flight finish.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancelled)
    }

    /// Runs the whole build and writes the output files; every ticket's keys go to `recorder`.
    pub async fn build(
        self: Arc<Self>,
        mut recorder: Option<Box<dyn KeyRecorder>>,
    ) -> Result<BuildReport, BuildError> {
        let started = Instant::now();
        let (stop_flusher, shutdown) = tokio::sync::oneshot::channel();
        let flusher = tokio::spawn(Arc::clone(&self.commit).run(shutdown));

        let writer = DatasetWriter::create(&self.config, &self.graph)?;
        let (rows_tx, rows_rx) = std::sync::mpsc::sync_channel::<TicketRecord>(256);
        let writer_thread = std::thread::spawn(move || -> Result<DatasetWriter, OutputError> {
            let mut writer = writer;
            for record in rows_rx {
                writer.write(&record)?;
            }
            Ok(writer)
        });

        let progress = progress_bar(self.options.progress, self.config.rows);
        let mut stats: Vec<NodeStats> = vec![NodeStats::default(); self.graph.nodes.len()];
        let mut failures = Vec::new();
        let mut written = 0u64;
        let mut not_started = 0u64;
        let mut cost_by_model: BTreeMap<String, f64> = BTreeMap::new();
        let mut cost_by_language: BTreeMap<String, f64> = BTreeMap::new();
        let concurrency = self.config.concurrency.max(1);
        let engine = Arc::clone(&self);
        let mut tickets = TicketWindow::new(engine, concurrency, false);
        let mut fatal = None;
        while let Some(next) = tickets.next().await {
            let outcome = match next {
                Ok(Some(outcome)) => outcome,
                Ok(None) => {
                    not_started += 1;
                    continue;
                }
                Err(e) => {
                    fatal = Some(e);
                    self.cancelled.store(true, Ordering::Release);
                    continue;
                }
            };
            for ((total, node), graph_node) in
                stats.iter_mut().zip(&outcome.stats).zip(&self.graph.nodes)
            {
                add_stats(total, node);
                if node.generated > 0 {
                    *cost_by_model
                        .entry(graph_node.model.name.clone())
                        .or_insert(0.0) += node.cost_usd;
                    *cost_by_language
                        .entry(outcome.sample.language.code().to_string())
                        .or_insert(0.0) += node.cost_usd;
                }
            }
            if self.options.log_artifacts {
                for (node, key) in &outcome.generated {
                    progress.suspend(|| {
                        eprintln!(
                            "generated {} {} {}",
                            self.graph.nodes[*node].name,
                            outcome.sample.ticket_id,
                            key.to_hex()
                        );
                    });
                }
            }
            progress.inc(1);
            if let Some(recorder) = recorder.as_mut() {
                let keys: Vec<Option<ArtifactKey>> =
                    outcome.states.iter().map(NodeState::key).collect();
                if let Err(e) = recorder.record(outcome.sample.index, &keys) {
                    fatal = Some(e.into());
                    self.cancelled.store(true, Ordering::Release);
                    continue;
                }
            }
            match outcome.failure {
                Some(failure) => failures.push(failure),
                None => {
                    written += 1;
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
                    if rows_tx.send(record).is_err() {
                        // The writer stopped early; its error is collected below.
                        break;
                    }
                }
            }
        }
        drop(tickets);
        drop(rows_tx);
        progress.finish_and_clear();
        let _ = stop_flusher.send(());
        let _ = flusher.await;
        let writer = writer_thread
            .join()
            .map_err(|_| BuildError::Task("the output writer panicked".to_string()))??;
        if fatal.is_none() {
            if let Some(recorder) = recorder.as_mut() {
                if let Err(e) = recorder.finish() {
                    fatal = Some(e.into());
                }
            }
        }
        if let Some(e) = fatal {
            writer.abandon();
            return Err(e);
        }
        let interrupted = self.cancelled.load(Ordering::Acquire);
        let stopped_by = self.ledger.stopped().map(|r| r.to_string());
        let (failures_file, files) = if interrupted && !self.options.write_when_cancelled {
            writer.abandon();
            (None, Vec::new())
        } else {
            (writer.write_failures(&failures)?, writer.finish()?)
        };
        Ok(BuildReport {
            dataset: self.config.name.clone(),
            profile: self.config.profile.clone(),
            tickets: self.config.rows,
            written,
            failed: failures.len() as u64,
            not_started,
            interrupted: interrupted && stopped_by.is_none(),
            up_to_date: false,
            cost_by_model,
            cost_by_language,
            stopped_by,
            currencies: currencies(&self.config),
            nodes: self
                .graph
                .nodes
                .iter()
                .zip(stats)
                .map(|(n, stats)| NodeSummary {
                    name: n.name.clone(),
                    stats,
                })
                .collect(),
            files: files.iter().map(|p| p.display().to_string()).collect(),
            failures_file: failures_file.map(|p| p.display().to_string()),
            wall_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Walks every ticket without calling a model or writing a file: which artifacts are cached and
    /// which would be generated. Tickets reach `each` in ticket order.
    pub async fn plan(
        self: Arc<Self>,
        mut each: impl FnMut(TicketOutcome) + Send,
    ) -> Result<(), BuildError> {
        let concurrency = self.config.concurrency.max(1);
        let mut tickets = TicketWindow::new(Arc::clone(&self), concurrency, true);
        while let Some(next) = tickets.next().await {
            if let Some(outcome) = next? {
                each(outcome);
            }
        }
        Ok(())
    }

    /// The outcome of one ticket as planned now, by index.
    pub async fn plan_ticket(&self, index: u64) -> Result<TicketOutcome, BuildError> {
        self.run_ticket(index, true).await
    }

    /// The rendered request `node` would send for ticket `index` now, when its upstream outputs
    /// are all available (cached); `None` otherwise.
    pub async fn request_for(
        &self,
        index: u64,
        node: usize,
    ) -> Result<Option<Request>, BuildError> {
        let outcome = self.run_ticket(index, true).await?;
        if !matches!(
            outcome.states[node],
            NodeState::Done(..) | NodeState::Missing(_)
        ) {
            return Ok(None);
        }
        let (template, json) = self.context_for(&outcome);
        let context = minijinja::Value::from(template);
        let sample_seed = outcome.sample.sample_seed;
        Ok(self
            .request(&self.graph.nodes[node], &context, &json, sample_seed)
            .ok())
    }

    /// Rebuilds the template and JSON contexts of a walked ticket (all nodes that are done).
    #[allow(clippy::type_complexity)]
    fn context_for(
        &self,
        outcome: &TicketOutcome,
    ) -> (
        BTreeMap<String, minijinja::Value>,
        BTreeMap<String, serde_json::Value>,
    ) {
        let (mut template, mut json) = self.base_context(&outcome.sample);
        for (node, state) in self.graph.nodes.iter().zip(&outcome.states) {
            match state {
                NodeState::Done(output, _) => {
                    template.insert(node.name.clone(), output.to_template_value());
                    json.insert(node.name.clone(), output.to_json());
                }
                NodeState::Skipped => {
                    template.insert(node.name.clone(), minijinja::Value::from(()));
                    json.insert(node.name.clone(), serde_json::Value::Null);
                }
                _ => {}
            }
        }
        (template, json)
    }

    /// The variables every template sees before any node runs: built-ins and table categories.
    #[allow(clippy::type_complexity)]
    fn base_context(
        &self,
        sample: &TicketSample,
    ) -> (
        BTreeMap<String, minijinja::Value>,
        BTreeMap<String, serde_json::Value>,
    ) {
        let mut json: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut template: BTreeMap<String, minijinja::Value> = BTreeMap::new();
        let builtins = [
            ("ticket_id", sample.ticket_id.to_string()),
            ("language", sample.language.code().to_string()),
            ("language_name", sample.language.name().to_string()),
        ];
        for (name, value) in builtins {
            template.insert(name.to_string(), minijinja::Value::from(value.as_str()));
            json.insert(name.to_string(), serde_json::Value::String(value));
        }
        for (table, category) in self.config.tables.iter().zip(&sample.categories) {
            template.insert(
                table.name.clone(),
                minijinja::Value::from(category.as_str()),
            );
            json.insert(
                table.name.clone(),
                serde_json::Value::String(category.clone()),
            );
        }
        (template, json)
    }

    /// Runs every node of one ticket. Errors returned here stop the build (the cache failed);
    /// node failures are part of the outcome. With `plan`, a cache miss is recorded as
    /// [`NodeState::Missing`] instead of calling the model.
    async fn run_ticket(&self, index: u64, plan: bool) -> Result<TicketOutcome, BuildError> {
        let sample = self.sampler.sample(index);
        let graph = &self.graph;
        let ticket_id = sample.ticket_id.to_string();
        let (mut template, mut json) = self.base_context(&sample);

        let mut states: Vec<NodeState> = Vec::with_capacity(graph.nodes.len());
        let mut stats = vec![NodeStats::default(); graph.nodes.len()];
        let mut failure: Option<Failure> = None;
        let mut generated = Vec::new();
        let mut lineage: Vec<Option<LineageEntry>> = vec![None; graph.nodes.len()];
        let mut pending_prompts: Vec<Option<String>> = vec![None; graph.nodes.len()];
        // Reproducible answers put but not yet known durable; one wait covers them all.
        let mut awaiting_commit = false;
        // Every node's lookup is answered from one read of the ticket's stored artifacts.
        let mut stored = self.store.ticket_artifacts(index)?;
        let fail = |node: &Node, reason: String| Failure {
            ticket_id: ticket_id.clone(),
            index,
            node: node.name.clone(),
            reason,
        };
        for (i, node) in graph.nodes.iter().enumerate() {
            // Nodes that do not depend on a failed node still run: their artifacts are cached for
            // the next build even though this ticket's row will not be written.
            if node
                .upstream
                .iter()
                .any(|u| matches!(states[*u], NodeState::Failed))
            {
                stats[i].failed += 1;
                states.push(NodeState::Failed);
                continue;
            }
            if node
                .upstream
                .iter()
                .any(|u| matches!(states[*u], NodeState::Missing(_) | NodeState::Blocked))
            {
                // A condition that does not read the missing outputs can still be decided now
                // (`language != 'EN'`), so the plan does not count skipped nodes as work.
                let context = minijinja::Value::from(template.clone());
                if let Ok(false) = graph.should_run(node, &context) {
                    stats[i].skipped += 1;
                    template.insert(node.name.clone(), minijinja::Value::from(()));
                    json.insert(node.name.clone(), serde_json::Value::Null);
                    states.push(NodeState::Skipped);
                    continue;
                }
                stats[i].generated += 1;
                states.push(NodeState::Blocked);
                continue;
            }
            let context = minijinja::Value::from(template.clone());
            let run = match graph.should_run(node, &context) {
                Ok(run) => run,
                Err(e) => {
                    failure.get_or_insert_with(|| {
                        fail(node, format!("`when` failed: {}", render_error(&e)))
                    });
                    stats[i].failed += 1;
                    states.push(NodeState::Failed);
                    continue;
                }
            };
            if !run {
                stats[i].skipped += 1;
                template.insert(node.name.clone(), minijinja::Value::from(()));
                json.insert(node.name.clone(), serde_json::Value::Null);
                states.push(NodeState::Skipped);
                continue;
            }
            let request = match self.request(node, &context, &json, sample.sample_seed) {
                Ok(request) => request,
                Err(e) => {
                    failure.get_or_insert_with(|| {
                        fail(
                            node,
                            format!(
                                "cannot render {}: {}",
                                node.prompt_display.display(),
                                render_error(&e)
                            ),
                        )
                    });
                    stats[i].failed += 1;
                    states.push(NodeState::Failed);
                    continue;
                }
            };
            let key = request.key();
            let lookup = if self.options.force.contains(&node.name) {
                Lookup::Miss(MissReason::Forced)
            } else {
                stored.get(self.store.as_ref(), &key)?
            };
            let output = match lookup {
                Lookup::Hit(artifact) => {
                    stats[i].reused += 1;
                    match artifact.cost_usd {
                        Some(cost) => stats[i].reused_cost_usd += cost,
                        None => stats[i].unknown_cost += 1,
                    }
                    if let Some(price) = &self.prices[i] {
                        stats[i].regenerate_cost_usd += price.cost(&artifact.usage);
                    }
                    lineage[i] = Some(LineageEntry::of(&artifact, false));
                    artifact.output
                }
                Lookup::Miss(reason) => {
                    if matches!(reason, MissReason::Corrupt(_)) {
                        stats[i].corrupt += 1;
                    }
                    if plan {
                        stats[i].generated += 1;
                        let mut text = request.system.clone().unwrap_or_default();
                        text.push('\n');
                        text.push_str(&request.user);
                        pending_prompts[i] = Some(text);
                        states.push(NodeState::Missing(key));
                        continue;
                    }
                    let upstream = node
                        .upstream
                        .iter()
                        .filter_map(|u| match &states[*u] {
                            NodeState::Done(_, key) => Some((graph.nodes[*u].name.clone(), *key)),
                            _ => None,
                        })
                        .collect();
                    match self
                        .generate(i, node, &request, key, upstream, &sample)
                        .await
                    {
                        Ok(artifact) => {
                            // A paid response is durable before anything uses it: before its text
                            // goes into a downstream prompt (a kill then would lose an answer
                            // already acted on) and before the ticket counts as done. Group commits
                            // make this one shared flush for many answers, not one each. A
                            // reproducible answer (the offline model) only has to be durable
                            // before the ticket counts as done: lost, it would come back the same.
                            if self.providers[i].reproducible() {
                                awaiting_commit = true;
                            } else {
                                self.commit.durable().await?;
                            }
                            stats[i].generated += 1;
                            stats[i].input_tokens += artifact.usage.input_tokens;
                            stats[i].output_tokens += artifact.usage.output_tokens;
                            match artifact.cost_usd {
                                Some(cost) => stats[i].cost_usd += cost,
                                None => stats[i].unknown_cost += 1,
                            }
                            if let Some(price) = &self.prices[i] {
                                stats[i].regenerate_cost_usd += price.cost(&artifact.usage);
                            }
                            generated.push((i, key));
                            lineage[i] = Some(LineageEntry::of(&artifact, true));
                            let output = artifact.output.clone();
                            stored.add_generated(artifact);
                            output
                        }
                        Err(GenerateError::Cache(e)) => return Err(e.into()),
                        Err(GenerateError::Refused(refusal)) => {
                            failure.get_or_insert_with(|| fail(node, refusal.to_string()));
                            stats[i].failed += 1;
                            states.push(NodeState::Failed);
                            continue;
                        }
                        Err(GenerateError::Provider(e)) => {
                            failure.get_or_insert_with(|| fail(node, e.to_string()));
                            stats[i].failed += 1;
                            states.push(NodeState::Failed);
                            continue;
                        }
                    }
                }
            };
            template.insert(node.name.clone(), output.to_template_value());
            json.insert(node.name.clone(), output.to_json());
            states.push(NodeState::Done(output, key));
        }
        if awaiting_commit {
            self.commit.durable().await?;
        }
        Ok(TicketOutcome {
            sample,
            states,
            failure,
            stats,
            generated,
            lineage,
            pending_prompts,
        })
    }

    fn request(
        &self,
        node: &Node,
        context: &minijinja::Value,
        json: &BTreeMap<String, serde_json::Value>,
        sample_seed: u64,
    ) -> Result<Request, minijinja::Error> {
        let (system, user) = self.graph.render(node, context)?;
        let model = &node.model;
        let offline = (model.provider == "offline").then(|| OfflineInputs {
            task: node.config.task.clone(),
            bank: crate::offline::bank_fingerprint().to_string(),
            inputs: node
                .offline_inputs
                .iter()
                .filter_map(|name| json.get(name).map(|v| (name.clone(), v.clone())))
                .collect(),
        });
        Ok(Request {
            provider: model.provider.clone(),
            base_url: model.base_url.clone(),
            model: model.model.clone(),
            params: model.params.clone(),
            output: node.config.output.clone(),
            system,
            user,
            offline,
            sample_seed,
        })
    }

    /// Warns about, or stops the build after, a call that cost more than the per-call limits.
    fn check_per_call(&self, node: &Node, ticket_id: &str, cost: f64) {
        let limits = &self.config.cost;
        if let Some(limit) = limits.error_per_call {
            if cost > limit {
                eprintln!(
                    "ticketbuild: error: node `{}`, ticket {ticket_id}: a call cost ${cost:.6}, over error_per_call (${limit:.6}); no further calls are issued",
                    node.name
                );
                self.ledger.stop(Refusal::PerCall { cost, limit });
                self.cancelled.store(true, Ordering::Release);
                return;
            }
        }
        if let Some(limit) = limits.warn_per_call {
            if cost > limit {
                eprintln!(
                    "ticketbuild: warning: node `{}`, ticket {ticket_id}: a call cost ${cost:.6}, over warn_per_call (${limit:.6})",
                    node.name
                );
            }
        }
    }

    async fn generate(
        &self,
        index: usize,
        node: &Node,
        request: &Request,
        key: ArtifactKey,
        upstream: Vec<(String, ArtifactKey)>,
        sample: &TicketSample,
    ) -> Result<ArtifactSummary, GenerateError> {
        let ticket_id = sample.ticket_id.to_string();
        let price = self.prices[index].clone();
        // Reserve the call's worst case before issuing it, so calls in flight can never take the
        // build past its budget together.
        let reservation = match &price {
            Some(price) => {
                let input = crate::provider::estimate_tokens(request.prompt_chars());
                let output = request
                    .params
                    .max_tokens
                    .unwrap_or(WORST_CASE_OUTPUT_TOKENS);
                match self.ledger.reserve(index, price.worst_case(input, output)) {
                    Ok(reservation) => Some(reservation),
                    Err(refusal) => {
                        if matches!(refusal, Refusal::Budget { .. } | Refusal::PerCall { .. }) {
                            // Finish what is in flight, start nothing new.
                            self.cancelled.store(true, Ordering::Release);
                        }
                        return Err(GenerateError::Refused(refusal));
                    }
                }
            }
            None => None,
        };
        let started = Instant::now();
        let response = match self.providers[index].call(request).await {
            Ok(response) => response,
            Err(e) => {
                if let Some(reservation) = reservation {
                    self.ledger.settle(reservation, 0.0);
                }
                return Err(GenerateError::Provider(e));
            }
        };
        let computed = price.as_ref().map(|p| p.cost(&response.usage));
        // The provider's own figure wins (OpenRouter reports it); the computed one is kept beside.
        let cost_usd = response.reported_cost_usd.or(computed);
        if let Some(reservation) = reservation {
            self.ledger.settle(reservation, cost_usd.unwrap_or(0.0));
        }
        if let Some(cost) = cost_usd {
            self.check_per_call(node, &ticket_id, cost);
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
        };
        self.store
            .put(sample.index, &artifact)
            .map_err(GenerateError::Cache)?;
        Ok(artifact.into_summary())
    }
}

/// Runs tickets concurrently and hands them out in ticket order.
///
/// Up to `concurrency` tickets run at once, taken as soon as a slot frees (a ticket that is backing
/// off on a rate limit does not hold up the others), but never more than `window` tickets past the
/// oldest one not yet handed out, so the tickets waiting for their turn stay bounded: memory does
/// not grow with rows.
struct TicketWindow {
    engine: Arc<Engine>,
    plan: bool,
    rows: u64,
    concurrency: usize,
    window: u64,
    next: u64,
    emit: u64,
    in_flight: futures_util::stream::FuturesUnordered<tokio::task::JoinHandle<(u64, TicketResult)>>,
    ready: BTreeMap<u64, TicketResult>,
}

/// `None` when the ticket was not started because the build was cancelled.
type TicketResult = Result<Option<TicketOutcome>, BuildError>;

impl TicketWindow {
    fn new(engine: Arc<Engine>, concurrency: usize, plan: bool) -> TicketWindow {
        TicketWindow {
            rows: engine.config.rows,
            engine,
            plan,
            concurrency,
            window: (concurrency as u64).saturating_mul(8).max(64),
            next: 0,
            emit: 0,
            in_flight: futures_util::stream::FuturesUnordered::new(),
            ready: BTreeMap::new(),
        }
    }

    async fn next(&mut self) -> Option<TicketResult> {
        loop {
            if let Some(result) = self.ready.remove(&self.emit) {
                self.emit += 1;
                return Some(result);
            }
            while self.in_flight.len() < self.concurrency
                && self.next < self.rows
                && self.next < self.emit + self.window
            {
                let engine = Arc::clone(&self.engine);
                let (index, plan) = (self.next, self.plan);
                self.in_flight.push(tokio::spawn(async move {
                    if !plan && engine.cancelled.load(Ordering::Acquire) {
                        return (index, Ok(None));
                    }
                    (index, engine.run_ticket(index, plan).await.map(Some))
                }));
                self.next += 1;
            }
            match self.in_flight.next().await? {
                Ok((index, result)) => {
                    self.ready.insert(index, result);
                }
                Err(e) => return Some(Err(BuildError::Task(e.to_string()))),
            }
        }
    }
}

/// The configured currencies with their rates.
fn currencies(config: &Config) -> Vec<(String, f64)> {
    config
        .cost
        .currencies
        .iter()
        .filter_map(|c| crate::cost::rate(c, &config.cost.rates).map(|r| (c.clone(), r)))
        .collect()
}

enum GenerateError {
    Provider(ProviderError),
    Cache(CacheError),
    /// A cost limit kept the call from being issued.
    Refused(Refusal),
}

/// The output tokens assumed for a call's worst case when the model sets no `max_tokens`.
pub const WORST_CASE_OUTPUT_TOKENS: u64 = 4096;

fn render_error(error: &minijinja::Error) -> String {
    let mut message = error
        .detail()
        .map_or_else(|| error.kind().to_string(), str::to_string);
    if let Some(line) = error.line() {
        message.push_str(&format!(" (template line {line})"));
    }
    message
}

fn add_stats(total: &mut NodeStats, node: &NodeStats) {
    total.reused += node.reused;
    total.generated += node.generated;
    total.skipped += node.skipped;
    total.failed += node.failed;
    total.corrupt += node.corrupt;
    total.input_tokens += node.input_tokens;
    total.output_tokens += node.output_tokens;
    total.cost_usd += node.cost_usd;
    total.reused_cost_usd += node.reused_cost_usd;
    total.regenerate_cost_usd += node.regenerate_cost_usd;
    total.unknown_cost += node.unknown_cost;
}

fn progress_bar(enabled: bool, rows: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(rows);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} tickets ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_calls_no_model_and_an_edit_calls_only_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new());
        let counter = Arc::new(Counting {
            inner: OfflineProvider::new(0),
            calls: AtomicU64::new(0),
        });
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
            "generated tickets waited for a flush"
        );
    }
}
