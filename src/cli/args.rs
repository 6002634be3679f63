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
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Write the dataset report: class balance, languages, lengths, tags, duplicates, quality,
    /// cost and examples, as one self-contained HTML file (or JSON), from the written files.
    Report(ReportArgs),
    /// Combine the shards built with `build --shard I/N` into the complete dataset, byte-identical
    /// to an unsharded build, after checking that every shard is there and was built from the same
    /// config and prompts.
    Merge(MergeArgs),
    /// List the provider batches of batch mode (state, requests, answers, cost), or cancel them.
    Batches(BatchesArgs),
    /// Inspect and maintain the artifact cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Args)]
pub(crate) struct BatchesArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Option<BatchesCommand>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BatchesCommand {
    /// Cancel a live batch (by its provider id), or every one with `--all`. Answers given before
    /// the cancel are kept; the next build submits the others again.
    Cancel {
        /// The batch's id, as `ticketbuild batches` lists it.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Cancel every live batch.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// The folder holding the shards' folders (`I-of-N/`); by default `shards/` in the output
    /// folder, where `build --shard` writes them.
    #[arg(long, value_name = "DIR")]
    pub(crate) from: Option<PathBuf>,
    /// Take the shards' manifests from the remote cache (`[cache.remote]`), where shard builds
    /// put them, and their answers through it, instead of from a folder.
    #[arg(long, conflicts_with = "from")]
    pub(crate) remote: bool,
    /// Print the build summary as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Never show the progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// After each rebuild, print the changed fields of the first N tickets.
    #[arg(long, value_name = "N")]
    pub(crate) preview: Option<usize>,
    /// Edits closer together than this many milliseconds make one rebuild.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub(crate) debounce_ms: u64,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// Print the estimate as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also show what the build would cost at the providers' batch-API prices (about half).
    #[arg(long)]
    pub(crate) batch: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CostArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// Print the report's figures as JSON instead of writing HTML.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write to FILE (default: NAME.report.html in the output folder; with --json, stdout).
    #[arg(short = 'o', long = "file", value_name = "FILE", id = "report_file")]
    pub(crate) file: Option<std::path::PathBuf>,
    /// Open the HTML report in the browser once written.
    #[arg(long)]
    pub(crate) open: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// Show what `build --force NODE` would regenerate (repeatable).
    #[arg(long, value_name = "NODE")]
    pub(crate) force: Vec<String>,
    /// Print the status as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// The ticket's `ticket_id`.
    pub(crate) ticket_id: u64,
    /// An output column (the nodes that fill it) or a node; all nodes when omitted.
    pub(crate) field: Option<String>,
    /// Read FIELD as a node name even when a column has the same name.
    #[arg(long)]
    pub(crate) node: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GraphArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) format: GraphFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// Entries, bytes on disk, entries per node and model, and how many the kept manifests reach.
    Stats(CacheArgs),
    /// Delete entries no kept manifest reaches. Roots: the last N manifests and every pinned one.
    Gc(GcArgs),
    /// Check that every entry decodes and is stored under its own key; quarantine the bad ones.
    Verify(CacheArgs),
    /// Keep the last build's artifacts through every gc, under a name.
    Pin(PinArgs),
    /// Upload every artifact of the local cache that the remote cache (`[cache.remote]`) does not
    /// have yet: answers paid for before the remote was set up, say.
    Push(CacheArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CacheArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// How many of the most recent manifests to keep as roots.
    #[arg(long, default_value_t = 5)]
    pub(crate) keep: usize,
    /// Report what would be deleted without deleting it.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PinArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// The name of the pin.
    pub(crate) name: String,
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    #[command(flatten)]
    pub(crate) project: ProjectArgs,
    /// Print the build summary as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// More output on stderr: -v lists failed tickets, -vv also each generated artifact (once it
    /// is durable in the cache, so a build with -vv waits for the offline model's answers too).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Never show the progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Build even when a model has no known price; its cost is shown as unknown.
    #[arg(long)]
    pub(crate) allow_unpriced: bool,
    /// Only estimate what the build would generate and cost (like `ticketbuild plan`).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Regenerate this node for every ticket even where it is cached (repeatable).
    #[arg(long, value_name = "NODE")]
    pub(crate) force: Vec<String>,
    /// Build only shard I of N (1 <= I <= N): the tickets whose stable hash of index falls in it.
    /// Writes the shard's part of the dataset, its artifacts and `shard.json` to
    /// `OUTPUT/shards/I-of-N/` (or `--shard-dir`), for `ticketbuild merge`.
    #[arg(long, value_name = "I/N", value_parser = crate::shard::Shard::parse)]
    pub(crate) shard: Option<crate::shard::Shard>,
    /// Where `--shard` writes its folder `I-of-N/` (default: `shards/` in the output folder).
    #[arg(long, value_name = "DIR", requires = "shard")]
    pub(crate) shard_dir: Option<PathBuf>,
    /// Ask every model that has a batch API through it (about half price, answers within hours),
    /// as `batch = true` in each `[models.NAME]` would.
    #[arg(long)]
    pub(crate) batch: bool,
    /// With batches: wait for them (polling the providers) and build until every answer is in,
    /// instead of submitting and exiting with code 75.
    #[arg(long)]
    pub(crate) wait: bool,
    /// With `--wait`: seconds between two polls of the providers.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub(crate) poll_secs: f64,
    /// Do not wait for the cache to reach the disk before counting a ticket done (faster, but a
    /// crash can lose paid responses). Meant for measuring what durability costs.
    #[arg(long, hide = true)]
    pub(crate) no_durable: bool,
}

/// Where the project is and how to read it; shared by every subcommand that reads dataset.toml.
#[derive(Debug, Args)]
pub(crate) struct ProjectArgs {
    /// The dataset definition.
    #[arg(long, short = 'c', default_value = "dataset.toml", value_name = "FILE")]
    pub(crate) config: PathBuf,
    /// Apply the overrides of [profile.NAME] (for example `dev` or `prod`).
    #[arg(long, short = 'p', value_name = "NAME")]
    pub(crate) profile: Option<String>,
    /// Build this many tickets instead of `dataset.rows`.
    #[arg(long, value_name = "N")]
    pub(crate) rows: Option<u64>,
    /// Use this cache folder instead of `dataset.cache`.
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
    /// Write the dataset to this folder instead of `dataset.output`.
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,
}

impl ProjectArgs {
    pub(crate) fn overrides(&self) -> Overrides {
        Overrides {
            profile: self.profile.clone(),
            rows: self.rows,
            cache_dir: self.cache.clone(),
            output_dir: self.output.clone(),
        }
    }

    /// Reads and checks the config alone (commands that need no prompts).
    pub(crate) fn config(&self) -> Result<Config, Diagnostics> {
        Config::load(&self.config, &self.overrides())
    }

    /// Reads and checks the config and its prompts.
    pub(crate) fn load(&self) -> Result<(Config, Graph), Diagnostics> {
        let config = Config::load(&self.config, &self.overrides())?;
        let graph = Graph::load(&config)?;
        Ok((config, graph))
    }
}
