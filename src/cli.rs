//! The command line: flags in, a subcommand run, an exit code out.
//!
//! This module owns argument parsing (clap derive; the doc comments are the help text), dispatch to
//! one function per subcommand, printing summaries, and mapping errors to exit codes: 2 for bad input
//! (nothing was built), 1 for a build that failed or left tickets incomplete, 130 for an interrupted
//! build. It holds no build logic: that is `engine`, fed by `config` and `graph`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};

use crate::build::build_project;
use crate::cache::{Artifact, ArtifactStore, SledStore};
use crate::config::{Config, Overrides, Source};
use crate::diag::Diagnostics;
use crate::engine::{BuildOptions, BuildReport, Engine, NodeState, TicketOutcome};
use crate::graph::Graph;
use crate::key::ArtifactKey;
use crate::manifest::{self, Manifest};
use crate::status::StatusBuilder;

/// Build synthetic multilingual customer-support ticket datasets with LLMs, like a build tool:
/// every field is a cached artifact, so a rebuild only pays for what changed.
#[derive(Debug, Parser)]
#[command(name = "ticketbuild", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the dataset: generate what is missing, reuse what is cached, write the output files.
    Build(BuildArgs),
    /// Rebuild on every edit of dataset.toml or a prompt, paying only for what the edit changed.
    Watch(WatchArgs),
    /// Show, per node, what is up to date and what a build would generate, and why. Calls no model.
    Status(StatusArgs),
    /// Show how one field of one ticket was made: request, model, key, tokens, upstream fields.
    Explain(ExplainArgs),
    /// Print the node graph as text, Graphviz DOT or Mermaid.
    Graph(GraphArgs),
    /// Estimate what a build would generate and cost, without calling any model.
    Plan(PlanArgs),
    /// Print the cost report of the last build: per node, model and language, in every currency.
    Cost(CostArgs),
    /// Inspect and maintain the artifact cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// After each rebuild, print the changed fields of the first N tickets.
    #[arg(long, value_name = "N")]
    pub preview: Option<usize>,
    /// Edits closer together than this many milliseconds make one rebuild.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub debounce_ms: u64,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print the estimate as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CostArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Show what `build --force NODE` would regenerate (repeatable).
    #[arg(long, value_name = "NODE")]
    pub force: Vec<String>,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The ticket's `ticket_id`.
    pub ticket_id: u64,
    /// An output column (the nodes that fill it) or a node; all nodes when omitted.
    pub field: Option<String>,
    /// Read FIELD as a node name even when a column has the same name.
    #[arg(long)]
    pub node: bool,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entries, bytes on disk, entries per node and model, and how many the kept manifests reach.
    Stats(CacheArgs),
    /// Delete entries no kept manifest reaches. Roots: the last N manifests and every pinned one.
    Gc(GcArgs),
    /// Check that every entry decodes and is stored under its own key; quarantine the bad ones.
    Verify(CacheArgs),
    /// Keep the last build's artifacts through every gc, under a name.
    Pin(PinArgs),
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// How many of the most recent manifests to keep as roots.
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
    /// Report what would be deleted without deleting it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The name of the pin.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Print the build summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// More output on stderr: -v lists failed tickets, -vv also each generated artifact.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Never show the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Build even when a model has no known price; its cost is shown as unknown.
    #[arg(long)]
    pub allow_unpriced: bool,
    /// Only estimate what the build would generate and cost (like `ticketbuild plan`).
    #[arg(long)]
    pub dry_run: bool,
    /// Regenerate this node for every ticket even where it is cached (repeatable).
    #[arg(long, value_name = "NODE")]
    pub force: Vec<String>,
    /// Do not wait for the cache to reach the disk before counting a ticket done (faster, but a
    /// crash can lose paid responses). Meant for measuring what durability costs.
    #[arg(long, hide = true)]
    pub no_durable: bool,
}

/// Where the project is and how to read it; shared by every subcommand that reads dataset.toml.
#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// The dataset definition.
    #[arg(long, short = 'c', default_value = "dataset.toml", value_name = "FILE")]
    pub config: PathBuf,
    /// Apply the overrides of [profile.NAME] (for example `dev` or `prod`).
    #[arg(long, short = 'p', value_name = "NAME")]
    pub profile: Option<String>,
    /// Build this many tickets instead of `dataset.rows`.
    #[arg(long, value_name = "N")]
    pub rows: Option<u64>,
    /// Use this cache folder instead of `dataset.cache`.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Write the dataset to this folder instead of `dataset.output`.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

impl ProjectArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            profile: self.profile.clone(),
            rows: self.rows,
            cache_dir: self.cache.clone(),
            output_dir: self.output.clone(),
        }
    }

    /// Reads and checks the config and its prompts.
    pub fn load(&self) -> Result<(Config, Graph), Diagnostics> {
        let config = Config::load(&self.config, &self.overrides())?;
        let graph = Graph::load(&config)?;
        Ok((config, graph))
    }
}

/// How a command ended.
#[derive(Debug)]
pub enum Outcome {
    Success,
    /// The build ran but some tickets failed; the summary says which.
    Incomplete,
    Interrupted,
}

/// Errors that end a command, by exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The input is wrong; nothing was built (exit 2).
    #[error("{0}")]
    Input(Diagnostics),
    /// Something failed while running (exit 1).
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Input(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

pub fn run(cli: Cli) -> Result<Outcome, CliError> {
    match cli.command {
        Command::Build(args) => build(args),
        Command::Watch(args) => crate::watch::run(args),
        Command::Status(args) => status(args),
        Command::Cost(args) => cost(args),
        Command::Plan(args) => plan(args.project, args.json),
        Command::Explain(args) => explain(args),
        Command::Graph(args) => graph(args),
        Command::Cache(CacheCommand::Stats(args)) => cache_stats(args),
        Command::Cache(CacheCommand::Gc(args)) => cache_gc(args),
        Command::Cache(CacheCommand::Verify(args)) => cache_verify(args),
        Command::Cache(CacheCommand::Pin(args)) => cache_pin(args),
    }
}

pub fn runtime_error(error: impl Into<anyhow::Error>) -> CliError {
    CliError::Runtime(error.into())
}

pub fn open_cache(config: &Config) -> Result<Arc<SledStore>, CliError> {
    SledStore::open(&config.cache_dir)
        .map(Arc::new)
        .map_err(runtime_error)
}

/// An engine for planning: no provider is ever called, so none needs a key.
fn planning_engine(
    config: Config,
    graph: Graph,
    store: Arc<SledStore>,
    force: Vec<String>,
) -> Arc<Engine> {
    let store: Arc<dyn ArtifactStore> = store;
    let providers = graph
        .nodes
        .iter()
        .map(|_| {
            Arc::new(crate::provider::offline::OfflineProvider::new(0))
                as Arc<dyn crate::provider::Provider>
        })
        .collect();
    Arc::new(Engine::with_providers(
        Arc::new(config),
        Arc::new(graph),
        store,
        providers,
        BuildOptions {
            force,
            ..BuildOptions::default()
        },
    ))
}

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

fn build(args: BuildArgs) -> Result<Outcome, CliError> {
    if args.dry_run {
        return plan(args.project, args.json);
    }
    let (mut config, graph) = args.project.load().map_err(CliError::Input)?;
    config.cost.allow_unpriced |= args.allow_unpriced;
    check_forced(&config, &graph, &args.force)?;
    if !args.force.is_empty() {
        // Forced nodes run whatever the last build recorded.
    } else if let Some(report) = crate::build::up_to_date(&config, &graph) {
        print_report(&report, args.json)?;
        return Ok(Outcome::Success);
    }
    let sled = open_cache(&config)?;
    let options = BuildOptions {
        durable: !args.no_durable,
        progress: !args.no_progress && !args.json && std::io::stderr().is_terminal(),
        log_artifacts: args.verbose >= 2,
        write_when_cancelled: true,
        force: args.force.clone(),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let runtime = runtime()?;
    let report = runtime.block_on(async {
        let flag = Arc::clone(&cancel);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("ticketbuild: interrupted; finishing the calls in flight (they are paid for), then writing what is complete");
                flag.store(true, Ordering::Release);
            }
        });
        build_project(config, graph, sled, options, Some(cancel)).await
    });
    let report = report.map_err(runtime_error)?;
    print_report(&report, args.json)?;
    if args.verbose >= 1 && report.failed > 0 {
        if let Some(path) = &report.failures_file {
            if let Ok(text) = std::fs::read_to_string(path) {
                eprint!("{text}");
            }
        }
    }
    Ok(if report.interrupted {
        Outcome::Interrupted
    } else if report.failed > 0 {
        Outcome::Incomplete
    } else {
        Outcome::Success
    })
}

pub fn print_report(report: &BuildReport, json: bool) -> Result<(), CliError> {
    if json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| runtime_error(anyhow::anyhow!("cannot print the summary: {e}")))?;
        println!("{text}");
    } else {
        print_summary(report);
    }
    Ok(())
}

pub fn print_summary(report: &BuildReport) {
    let profile = report
        .profile
        .as_deref()
        .map_or_else(String::new, |p| format!(" (profile {p})"));
    if report.up_to_date {
        println!(
            "`{}`{profile} is up to date: {} tickets, nothing changed since the last build ({} ms)",
            report.dataset, report.written, report.wall_ms
        );
        for file in &report.files {
            println!("  {file}");
        }
        return;
    }
    println!(
        "built `{}`{profile}: {} of {} tickets written in {:.2} s",
        report.dataset,
        report.written,
        report.tickets,
        report.wall_ms as f64 / 1000.0
    );
    let width = name_width(report.nodes.iter().map(|n| n.name.as_str()));
    println!(
        "  {:<width$}  {:>9}  {:>9}  {:>8}  {:>7}  {:>10}  {:>10}",
        "node", "reused", "generated", "skipped", "failed", "tokens in", "tokens out"
    );
    for node in &report.nodes {
        let (name, s) = (&node.name, &node.stats);
        println!(
            "  {:<width$}  {:>9}  {:>9}  {:>8}  {:>7}  {:>10}  {:>10}",
            name, s.reused, s.generated, s.skipped, s.failed, s.input_tokens, s.output_tokens
        );
    }
    println!(
        "  {} artifacts generated, {} reused from the cache",
        report.generated(),
        report.reused()
    );
    for file in &report.files {
        println!("  wrote {file}");
    }
    let spent: f64 = report.nodes.iter().map(|n| n.stats.cost_usd).sum();
    let reused: f64 = report.nodes.iter().map(|n| n.stats.reused_cost_usd).sum();
    let currencies: Vec<String> = report.currencies.iter().map(|(c, _)| c.clone()).collect();
    let rates: std::collections::BTreeMap<String, f64> =
        report.currencies.iter().cloned().collect();
    println!(
        "  cost: {} spent now, {} reused from the cache",
        crate::cost::format_money(Some(spent), &currencies, &rates),
        crate::cost::format_money(Some(reused), &currencies, &rates)
    );
    if let Some(reason) = &report.stopped_by {
        println!(
            "  stopped early: {reason}; {} of {} tickets complete; build again (with a higher limit) to continue from the cache",
            report.written, report.tickets
        );
    }
    if let Some(failures) = &report.failures_file {
        println!(
            "  {} tickets failed; see {failures} (the next build retries only those)",
            report.failed
        );
    }
    if report.interrupted {
        println!(
            "  interrupted: {} tickets not started; build again to continue from the cache",
            report.not_started
        );
    }
}

fn status(args: StatusArgs) -> Result<Outcome, CliError> {
    let (config, graph) = args.project.load().map_err(CliError::Input)?;
    check_forced(&config, &graph, &args.force)?;
    let sled = open_cache(&config)?;
    let previous = sled.last_manifest::<Manifest>().map_err(runtime_error)?;
    let keys = previous.as_ref().map(|(id, manifest)| {
        crate::status::collect_keys(manifest.nodes.len(), manifest.rows, |each| {
            // A manifest whose keys cannot be read compares as "never built", which is safe.
            let _ = sled.manifest_keys(*id, |first, chunk, nodes| each(first, chunk, nodes));
        })
    });
    let current = manifest::fingerprints(&graph);
    let sample = manifest::sample_hash(&config);
    let upstream: Vec<Vec<usize>> = graph.nodes.iter().map(|n| n.upstream.clone()).collect();
    let mut builder = StatusBuilder::new(
        &current,
        config.seed,
        &sample,
        previous.as_ref().map(|(_, m)| m).zip(keys.as_ref()),
    );
    builder.force(
        graph
            .nodes
            .iter()
            .map(|n| args.force.contains(&n.name))
            .collect(),
    );
    let name = config.name.clone();
    let rows = config.rows;
    let engine = planning_engine(config, graph, Arc::clone(&sled), args.force.clone());
    runtime()?
        .block_on(engine.plan(|outcome| builder.add(&outcome, &upstream)))
        .map_err(runtime_error)?;
    let nodes = builder.finish();
    if args.json {
        let value = serde_json::json!({
            "dataset": name,
            "tickets": rows,
            "compared_with_build_at_unix_ms": previous.as_ref().map(|(_, m)| m.created_unix_ms),
            "nodes": nodes,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(Outcome::Success);
    }
    match &previous {
        Some((_, m)) => println!(
            "`{name}`: {rows} tickets, compared with the build of {}",
            manifest::format_utc(m.created_unix_ms)
        ),
        None => println!("`{name}`: {rows} tickets, never built with this cache"),
    }
    let width = name_width(nodes.iter().map(|n| n.name.as_str()));
    println!(
        "  {:<width$}  {:>10}  {:>11}  {:>7}  why",
        "node", "up to date", "to generate", "skipped"
    );
    for node in &nodes {
        let why: Vec<String> = node
            .causes
            .iter()
            .map(|c| format!("{} {}", c.count, c.cause.describe()))
            .collect();
        println!(
            "  {:<width$}  {:>10}  {:>11}  {:>7}  {}",
            node.name,
            node.up_to_date,
            node.to_generate,
            node.skipped,
            why.join("; ")
        );
    }
    let total: u64 = nodes.iter().map(|n| n.to_generate).sum();
    if total == 0 {
        println!("  everything is up to date");
    } else {
        println!("  {total} artifacts would be generated by `ticketbuild build`");
    }
    Ok(Outcome::Success)
}

fn explain(args: ExplainArgs) -> Result<Outcome, CliError> {
    let (config, graph) = args.project.load().map_err(CliError::Input)?;
    let sampler = crate::sampling::Sampler::new(config.seed, &config.languages, &config.tables);
    let Some(index) = sampler.index_of(args.ticket_id, config.rows) else {
        return Err(CliError::Input(
            crate::diag::Diagnostic::file(
                &config.path,
                format!(
                    "no ticket has the id {} in this dataset ({} rows, seed {})",
                    args.ticket_id, config.rows, config.seed
                ),
            )
            .into(),
        ));
    };
    let nodes: Vec<usize> = match &args.field {
        None => (0..graph.nodes.len()).collect(),
        Some(field) => {
            match explain_targets(&config, &graph, field, args.node) {
                Some(nodes) => nodes,
                None => {
                    let known: Vec<&str> = graph
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .chain(config.columns.iter().map(|c| c.name.as_str()))
                        .collect();
                    let hint = crate::diag::suggestion(field, known.iter().copied());
                    return Err(CliError::Input(
                    crate::diag::Diagnostic::file(
                        &config.path,
                        format!("`{field}` is neither a node nor an output column made by a node{hint}"),
                    )
                    .into(),
                ));
                }
            }
        }
    };
    let sled = open_cache(&config)?;
    let previous = sled.last_manifest::<Manifest>().map_err(runtime_error)?;
    let names: Vec<String> = graph.nodes.iter().map(|n| n.name.clone()).collect();
    let upstream: Vec<Vec<usize>> = graph.nodes.iter().map(|n| n.upstream.clone()).collect();
    let engine = planning_engine(config, graph, Arc::clone(&sled), Vec::new());
    let runtime = runtime()?;
    let outcome = runtime
        .block_on(engine.plan_ticket(index))
        .map_err(runtime_error)?;
    let sample = &outcome.sample;
    println!(
        "ticket {} (index {}, language {}, sample seed {})",
        sample.ticket_id, sample.index, sample.language, sample.sample_seed
    );
    for node in nodes {
        println!();
        let name = &names[node];
        match &outcome.states[node] {
            NodeState::Done(_, key) => {
                let artifact = match sled.get(sample.index, key).map_err(runtime_error)? {
                    crate::cache::Lookup::Hit(artifact) => artifact,
                    crate::cache::Lookup::Miss(_) => continue,
                };
                println!("{name}: up to date");
                print_artifact(&artifact, &outcome, &names, &upstream[node]);
            }
            NodeState::Skipped => {
                println!("{name}: skipped for this ticket (its `when` condition is false)")
            }
            NodeState::Failed => println!(
                "{name}: cannot be rendered for this ticket (it or an upstream node fails)"
            ),
            NodeState::Missing(key) => {
                println!("{name}: would be generated by the next build, under key {key}");
                let now = runtime
                    .block_on(engine.request_for(index, node))
                    .map_err(runtime_error)?;
                explain_previous(
                    &sled,
                    previous.as_ref(),
                    index,
                    name,
                    now.map(|r| r.record()),
                )?;
            }
            NodeState::Blocked => {
                println!(
                    "{name}: would be generated after its upstream nodes (the request depends on outputs not generated yet)"
                );
                explain_previous(&sled, previous.as_ref(), index, name, None)?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// The nodes behind an output column or a node name. A column wins: `body` in the dataset is
/// the column, whichever nodes fill it.
fn explain_targets(config: &Config, graph: &Graph, field: &str, node: bool) -> Option<Vec<usize>> {
    if let Some(column) = config.columns.iter().find(|c| c.name == field && !node) {
        let nodes: Vec<usize> = column
            .sources
            .iter()
            .filter_map(|s| match s {
                Source::Node(n) | Source::NodeField(n, _) => {
                    graph.nodes.iter().position(|x| &x.name == n)
                }
                _ => None,
            })
            .collect();
        if !nodes.is_empty() {
            return Some(nodes);
        }
    }
    graph
        .nodes
        .iter()
        .position(|n| n.name == field)
        .map(|i| vec![i])
}

fn print_artifact(
    artifact: &Artifact,
    outcome: &TicketOutcome,
    names: &[String],
    upstream: &[usize],
) {
    let request = &artifact.request;
    println!("  key:          {}", artifact.key);
    println!("  model asked:  {} ({})", request.model, request.provider);
    println!("  model served: {}", artifact.served_model);
    if let Some(base_url) = &request.base_url {
        println!("  base url:     {base_url}");
    }
    println!("  parameters:   {}", request.params_json);
    println!("  output:       {}", request.output_kind);
    let estimated = if artifact.usage.estimated {
        " (estimated)"
    } else {
        ""
    };
    println!(
        "  tokens:       {} in ({} cached), {} out{estimated}",
        artifact.usage.input_tokens,
        artifact.usage.cached_input_tokens,
        artifact.usage.output_tokens
    );
    match artifact.cost_usd {
        Some(cost) => println!("  cost:         ${cost:.6}"),
        None => println!("  cost:         unknown"),
    }
    println!(
        "  generated:    {}, in {} ms",
        manifest::format_utc(artifact.created_unix_ms),
        artifact.latency_ms
    );
    if !upstream.is_empty() {
        println!("  upstream:");
        for &u in upstream {
            let key = outcome.states[u]
                .key()
                .map_or_else(|| "(none: skipped)".to_string(), |k| k.to_hex());
            println!("    {:<16} {key}", names[u]);
        }
    }
    if let Some(system) = &request.system {
        println!("  system message:");
        for line in system.lines() {
            println!("    | {line}");
        }
    }
    println!("  user message:");
    for line in request.user.lines() {
        println!("    | {line}");
    }
    println!("  output value:");
    let value = match &artifact.output {
        crate::value::NodeOutput::Text(text) => text.clone(),
        other => other.to_json().to_string(),
    };
    for line in value.lines() {
        println!("    | {line}");
    }
}

/// For a field that would be rebuilt: what the last build used, and the diff to what would be sent.
fn explain_previous(
    sled: &SledStore,
    previous: Option<&(u64, Manifest)>,
    index: u64,
    name: &str,
    now: Option<crate::cache::RecordedRequest>,
) -> Result<(), CliError> {
    let Some((id, manifest)) = previous else {
        println!("  no earlier build recorded in this cache");
        return Ok(());
    };
    let Some(old_node) = manifest.nodes.iter().position(|n| n.name == name) else {
        println!("  the last build had no node `{name}`");
        return Ok(());
    };
    let Some(old_key) = sled
        .manifest_key(*id, index, old_node)
        .map_err(runtime_error)?
    else {
        println!("  the last build did not build this field for this ticket");
        return Ok(());
    };
    let crate::cache::Lookup::Hit(old) = sled.get(index, &old_key).map_err(runtime_error)? else {
        println!("  the last build used key {old_key}, which is no longer in the cache");
        return Ok(());
    };
    println!("  last built under key {old_key}");
    match now {
        Some(now) => {
            let diff = crate::status::request_diff(&old.request, &now);
            if diff.is_empty() {
                println!("  the request is unchanged");
            } else {
                println!("  changes from the recorded request to the one that would be sent now:");
                for line in diff {
                    println!("    {line}");
                }
            }
        }
        None => println!(
            "  (the new request cannot be rendered until its upstream nodes are generated)"
        ),
    }
    Ok(())
}

fn graph(args: GraphArgs) -> Result<Outcome, CliError> {
    let (_config, graph) = args.project.load().map_err(CliError::Input)?;
    let describe = |n: &crate::graph::Node| {
        let kind = match &n.config.output {
            crate::value::OutputKind::Text => "text".to_string(),
            crate::value::OutputKind::List { min, max } => format!("list {min}-{max}"),
            crate::value::OutputKind::Json { fields } => format!("json {}", fields.join(",")),
        };
        format!(
            "{} ({}/{}, {kind})",
            n.name, n.model.provider, n.model.model
        )
    };
    match args.format {
        GraphFormat::Text => {
            for node in &graph.nodes {
                let from: Vec<&str> = node
                    .upstream
                    .iter()
                    .map(|u| graph.nodes[*u].name.as_str())
                    .collect();
                let when = node
                    .config
                    .when
                    .as_ref()
                    .map_or_else(String::new, |w| format!(" when {w}"));
                if from.is_empty() {
                    println!("{}{when}", describe(node));
                } else {
                    println!("{}{when} <- {}", describe(node), from.join(", "));
                }
            }
        }
        GraphFormat::Dot => {
            println!("digraph ticketbuild {{");
            println!("  rankdir=LR;");
            for node in &graph.nodes {
                println!(
                    "  \"{}\" [shape=box, label=\"{}\"];",
                    node.name,
                    describe(node).replace('"', "'")
                );
            }
            for node in &graph.nodes {
                for u in &node.upstream {
                    println!("  \"{}\" -> \"{}\";", graph.nodes[*u].name, node.name);
                }
            }
            println!("}}");
        }
        GraphFormat::Mermaid => {
            println!("flowchart LR");
            for node in &graph.nodes {
                println!("  {}[\"{}\"]", node.name, describe(node).replace('"', "'"));
            }
            for node in &graph.nodes {
                for u in &node.upstream {
                    println!("  {} --> {}", graph.nodes[*u].name, node.name);
                }
            }
        }
    }
    Ok(Outcome::Success)
}

/// Keys reachable from the kept manifests: the last `keep` plus every pinned one.
fn reachable(
    sled: &SledStore,
    keep: usize,
) -> Result<(std::collections::HashSet<ArtifactKey>, Vec<u64>), CliError> {
    let manifests: Vec<(u64, Manifest)> = sled.manifests().map_err(runtime_error)?;
    let mut roots: Vec<u64> = manifests
        .iter()
        .rev()
        .take(keep)
        .map(|(id, _)| *id)
        .collect();
    for (_, id) in sled.pins().map_err(runtime_error)? {
        if !roots.contains(&id) {
            roots.push(id);
        }
    }
    let mut keys = std::collections::HashSet::new();
    for id in &roots {
        sled.manifest_keys(*id, |_, chunk, _| {
            keys.extend(chunk.iter().flatten().copied())
        })
        .map_err(runtime_error)?;
    }
    Ok((keys, roots))
}

fn cache_stats(args: CacheArgs) -> Result<Outcome, CliError> {
    let config =
        Config::load(&args.project.config, &args.project.overrides()).map_err(CliError::Input)?;
    let sled = open_cache(&config)?;
    let (reachable, roots) = reachable(&sled, 5)?;
    let mut per_node: std::collections::BTreeMap<String, u64> = Default::default();
    let mut per_model: std::collections::BTreeMap<String, u64> = Default::default();
    let mut entries = 0u64;
    let mut reached = 0u64;
    let mut bytes = 0u64;
    for entry in sled.entries() {
        let entry = entry.map_err(runtime_error)?;
        entries += 1;
        bytes += entry.value.len() as u64;
        if reachable.contains(&entry.key) {
            reached += 1;
        }
        if let crate::cache::Lookup::Hit(artifact) =
            SledStore::decode_entry(&entry.key, &entry.value)
        {
            *per_node.entry(artifact.node).or_default() += 1;
            *per_model
                .entry(format!(
                    "{}/{}",
                    artifact.request.provider, artifact.served_model
                ))
                .or_default() += 1;
        }
    }
    println!("cache {}", config.cache_dir.display());
    println!("  entries:           {entries}");
    println!("  bytes on disk:     {}", sled.size_on_disk());
    println!(
        "  artifact bytes:    {bytes} ({} per entry)",
        bytes.checked_div(entries).unwrap_or(0)
    );
    println!(
        "  reachable:         {reached} from {} kept manifests (the last 5 and the pinned)",
        roots.len()
    );
    println!("  per node:");
    for (node, count) in per_node {
        println!("    {node:<20} {count}");
    }
    println!("  per model:");
    for (model, count) in per_model {
        println!("    {model:<40} {count}");
    }
    Ok(Outcome::Success)
}

fn cache_gc(args: GcArgs) -> Result<Outcome, CliError> {
    let config =
        Config::load(&args.project.config, &args.project.overrides()).map_err(CliError::Input)?;
    let sled = open_cache(&config)?;
    let (reachable, roots) = reachable(&sled, args.keep.max(1))?;
    let mut doomed = Vec::new();
    let mut freed = 0u64;
    for entry in sled.entries() {
        let entry = entry.map_err(runtime_error)?;
        if !reachable.contains(&entry.key) {
            freed += entry.value.len() as u64;
            doomed.push(entry.slot);
        }
    }
    let old_manifests: Vec<u64> = sled
        .manifests::<Manifest>()
        .map_err(runtime_error)?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !roots.contains(id))
        .chain(sled.unfinished_manifest_ids().map_err(runtime_error)?)
        .collect();
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    if !args.dry_run {
        for slot in &doomed {
            sled.remove(slot).map_err(runtime_error)?;
        }
        for id in &old_manifests {
            sled.remove_manifest(*id).map_err(runtime_error)?;
        }
        sled.flush().map_err(runtime_error)?;
    }
    println!(
        "{verb} {} unreachable artifacts ({freed} bytes) and {} old manifests; kept {} artifacts reachable from {} manifests",
        doomed.len(),
        old_manifests.len(),
        reachable.len(),
        roots.len()
    );
    Ok(Outcome::Success)
}

fn cache_verify(args: CacheArgs) -> Result<Outcome, CliError> {
    let config =
        Config::load(&args.project.config, &args.project.overrides()).map_err(CliError::Input)?;
    let sled = open_cache(&config)?;
    let mut checked = 0u64;
    let mut bad = Vec::new();
    for entry in sled.entries() {
        let entry = entry.map_err(runtime_error)?;
        checked += 1;
        if let crate::cache::Lookup::Miss(reason) =
            SledStore::decode_entry(&entry.key, &entry.value)
        {
            bad.push((entry, reason));
        }
    }
    for (entry, reason) in &bad {
        println!(
            "bad entry {}: {reason:?}; moved to quarantine",
            entry.key.short()
        );
        sled.quarantine(&entry.slot, &entry.value)
            .map_err(runtime_error)?;
    }
    sled.flush().map_err(runtime_error)?;
    println!("verified {checked} entries: {} bad", bad.len());
    Ok(if bad.is_empty() {
        Outcome::Success
    } else {
        Outcome::Incomplete
    })
}

fn cache_pin(args: PinArgs) -> Result<Outcome, CliError> {
    let config =
        Config::load(&args.project.config, &args.project.overrides()).map_err(CliError::Input)?;
    let sled = open_cache(&config)?;
    let Some((id, _)) = sled.last_manifest::<Manifest>().map_err(runtime_error)? else {
        return Err(runtime_error(anyhow::anyhow!(
            "nothing to pin: no complete build is recorded in `{}`",
            config.cache_dir.display()
        )));
    };
    sled.pin(&args.name, id).map_err(runtime_error)?;
    println!(
        "pinned the last build as `{}`; `cache gc` keeps its artifacts",
        args.name
    );
    Ok(Outcome::Success)
}

fn cost(args: CostArgs) -> Result<Outcome, CliError> {
    let config =
        Config::load(&args.project.config, &args.project.overrides()).map_err(CliError::Input)?;
    let path = config.cache_dir.join(crate::build::LAST_REPORT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        runtime_error(anyhow::anyhow!(
            "no build is recorded in `{}` yet; run `ticketbuild build` first",
            config.cache_dir.display()
        ))
    })?;
    let report: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| runtime_error(anyhow::anyhow!("cannot read `{}`: {e}", path.display())))?;
    if args.json {
        let nodes: Vec<serde_json::Value> = report["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|n| {
                serde_json::json!({
                    "name": n["name"],
                    "spent_usd": n["cost_usd"],
                    "reused_usd": n["reused_cost_usd"],
                    "regenerate_usd": n["regenerate_cost_usd"],
                    "unknown_cost_artifacts": n["unknown_cost"],
                    "generated": n["generated"],
                    "reused": n["reused"],
                    "input_tokens": n["input_tokens"],
                    "output_tokens": n["output_tokens"],
                })
            })
            .collect();
        let sum = |field: &str| -> f64 {
            report["nodes"]
                .as_array()
                .map_or(0.0, |n| n.iter().filter_map(|x| x[field].as_f64()).sum())
        };
        let value = serde_json::json!({
            "dataset": report["dataset"],
            "profile": report["profile"],
            "currency": "USD",
            "spent_usd": sum("cost_usd"),
            "reused_usd": sum("reused_cost_usd"),
            "regenerate_usd": sum("regenerate_cost_usd"),
            "nodes": nodes,
            "by_model": report["cost_by_model"],
            "by_language": report["cost_by_language"],
            "currencies": report["currencies"],
            "stopped_by": report["stopped_by"],
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(Outcome::Success);
    }
    let report: BuildReport = serde_json::from_value(report)
        .map_err(|e| runtime_error(anyhow::anyhow!("cannot read `{}`: {e}", path.display())))?;
    print_costs(&report, &config);
    Ok(Outcome::Success)
}

/// The cost part of a summary: per node, then per model and language, in every currency.
fn print_costs(report: &BuildReport, config: &Config) {
    let money = |usd: f64| {
        crate::cost::format_money(Some(usd), &config.cost.currencies, &config.cost.rates)
    };
    let profile = report.profile.as_deref().unwrap_or("(none)");
    println!(
        "cost of the last build of `{}` (profile {profile})",
        report.dataset
    );
    let width = name_width(report.nodes.iter().map(|n| n.name.as_str()));
    println!(
        "  {:<width$}  {:>16}  {:>16}  {:>16}",
        "node", "spent now", "reused (paid)", "regenerate all"
    );
    for node in &report.nodes {
        let s = &node.stats;
        let unknown = if s.unknown_cost > 0 {
            format!("  ({} unknown)", s.unknown_cost)
        } else {
            String::new()
        };
        println!(
            "  {:<width$}  {:>16}  {:>16}  {:>16}{unknown}",
            node.name,
            format!("${:.6}", s.cost_usd),
            format!("${:.6}", s.reused_cost_usd),
            format!("${:.6}", s.regenerate_cost_usd)
        );
    }
    let spent: f64 = report.nodes.iter().map(|n| n.stats.cost_usd).sum();
    let reused: f64 = report.nodes.iter().map(|n| n.stats.reused_cost_usd).sum();
    let regenerate: f64 = report
        .nodes
        .iter()
        .map(|n| n.stats.regenerate_cost_usd)
        .sum();
    println!("  spent in this build:        {}", money(spent));
    println!(
        "  reused from the cache:      {} (what it cost when generated)",
        money(reused)
    );
    println!(
        "  regenerating everything:    {} (at today's prices)",
        money(regenerate)
    );
    if !report.cost_by_model.is_empty() {
        println!("  spent per model:");
        for (model, usd) in &report.cost_by_model {
            println!("    {model:<20} {}", money(*usd));
        }
        println!("  spent per language:");
        for (language, usd) in &report.cost_by_language {
            println!("    {language:<20} {}", money(*usd));
        }
    }
    if let Some(reason) = &report.stopped_by {
        println!("  stopped: {reason}");
    }
}

fn plan(project: ProjectArgs, json: bool) -> Result<Outcome, CliError> {
    let (config, graph) = project.load().map_err(CliError::Input)?;
    let sled = open_cache(&config)?;
    let plan = {
        let mut planner = crate::plan::Planner::new(&config, &graph);
        let engine = planning_engine(
            config.clone(),
            clone_graph(&project)?,
            Arc::clone(&sled),
            Vec::new(),
        );
        runtime()?
            .block_on(engine.plan(|outcome| planner.add(&outcome)))
            .map_err(runtime_error)?;
        planner.finish()
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
        return Ok(Outcome::Success);
    }
    let money = |usd: Option<f64>| {
        crate::cost::format_money(usd, &config.cost.currencies, &config.cost.rates)
    };
    println!(
        "plan for `{}`: {} tickets (prices of {}; no model is called)",
        plan.dataset,
        plan.tickets,
        crate::cost::prices_taken()
    );
    let width = name_width(plan.nodes.iter().map(|n| n.name.as_str()));
    println!(
        "  {:<width$}  {:>7}  {:>11}  {:>10}  {:>11}  {:>12}  {:>12}  {:>12}",
        "node", "cached", "to generate", "tokens in", "tokens out", "low", "expected", "high"
    );
    for node in &plan.nodes {
        let usd = |v: Option<f64>| v.map_or_else(|| "unknown".to_string(), |v| format!("${v:.4}"));
        let note = if node.depends_on_pending { "  *" } else { "" };
        println!(
            "  {:<width$}  {:>7}  {:>11}  {:>10}  {:>11}  {:>12}  {:>12}  {:>12}{note}",
            node.name,
            node.cached,
            node.to_generate,
            node.input_tokens,
            node.output_tokens_expected,
            usd(node.cost_low),
            usd(node.cost_expected),
            usd(node.cost_high),
        );
    }
    if plan.nodes.iter().any(|n| n.depends_on_pending) {
        println!(
            "  * prompts depend on outputs not generated yet; their size is estimated from the upstream nodes"
        );
    }
    println!(
        "  expected cost: {} (low {}, high {})",
        money(plan.cost_expected),
        money(plan.cost_low),
        money(plan.cost_high)
    );
    if let Some(budget) = plan.budget {
        let verdict = match plan.cost_high {
            Some(high) if high <= budget => "the whole build fits",
            _ => "the build may stop at the budget; it continues from the cache next time",
        };
        println!("  budget: {}: {verdict}", money(Some(budget)));
    }
    Ok(Outcome::Success)
}

/// A second copy of the project's graph (the plan walk owns one, the planner reads the other).
fn clone_graph(project: &ProjectArgs) -> Result<Graph, CliError> {
    project
        .load()
        .map(|(_, graph)| graph)
        .map_err(CliError::Input)
}

/// The width of the node-name column of a table: the longest name, at least "node".
fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(str::len).max().unwrap_or(0).max(4)
}

/// Every `--force` name must be a node.
fn check_forced(config: &Config, graph: &Graph, force: &[String]) -> Result<(), CliError> {
    for name in force {
        if graph.node(name).is_none() {
            let hint = crate::diag::suggestion(name, graph.nodes.iter().map(|n| n.name.as_str()));
            return Err(CliError::Input(
                crate::diag::Diagnostic::file(
                    &config.path,
                    format!("`--force {name}`: no node is called `{name}`{hint}"),
                )
                .into(),
            ));
        }
    }
    Ok(())
}
