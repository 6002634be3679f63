//! The command line as typed: clap-derive structs whose doc comments are the help text.
//!
//! This module owns flags and their defaults, nothing else: turning [`ProjectArgs`] into a checked
//! config is `config`'s, running a command is its file's in `cli`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::diag::Diagnostics;
use crate::graph::Graph;

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

    /// Reads and checks the config alone (commands that need no prompts).
    pub fn config(&self) -> Result<Config, Diagnostics> {
        Config::load(&self.config, &self.overrides())
    }

    /// Reads and checks the config and its prompts.
    pub fn load(&self) -> Result<(Config, Graph), Diagnostics> {
        let config = Config::load(&self.config, &self.overrides())?;
        let graph = Graph::load(&config)?;
        Ok((config, graph))
    }
}
