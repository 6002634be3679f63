//! The command line: flags in, a subcommand run, an exit code out.
//!
//! This module owns dispatch to one function per subcommand, each in its own file (`build`,
//! `watch`, `status`, `explain`, `graph`, `plan`, `cost`, `report`, `merge`, `batches`,
//! `cache`), what they print, and mapping
//! errors to exit codes: 2 for bad input (nothing was built), 1 for a build that failed or left
//! tickets incomplete, 75 for a build whose requests wait in provider batches (run it again to
//! collect), 130 for an interrupted build. Flags are in [`args`]. Commands only load,
//! call and print: a build is `build` (the crate module) and `engine`, reachability is
//! `cache::gc`, a status is `status`, a plan is `plan`. Everything goes to stdout through
//! [`out`], where a reader that has gone away (`ticketbuild status | head -1`) is not an error.

pub(crate) mod args;
mod batches;
mod build;
mod cache;
mod cost;
mod explain;
mod graph;
mod merge;
mod plan;
mod report;
mod status;
mod watch;

use std::io::Write;
use std::sync::Arc;

pub use args::Cli;
use args::Command;
use args::{CacheCommand, ProjectArgs};

use crate::cache::Cache;
use crate::config::Config;
use crate::diag::{Diagnostic, Diagnostics};
use crate::graph::Graph;

/// How a command ended.
#[derive(Debug)]
pub enum Outcome {
    Success,
    /// The build ran but some tickets failed; the summary says which.
    Incomplete,
    Interrupted,
    /// Batch mode: requests are in batches at the providers; a later build collects them.
    Submitted,
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
    /// Whoever read stdout has gone away: nothing more is printed, and that is not a failure.
    #[error("stdout was closed")]
    ClosedPipe,
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Input(_) => 2,
            CliError::Runtime(_) => 1,
            CliError::ClosedPipe => 0,
        }
    }
}

impl From<Diagnostics> for CliError {
    fn from(problems: Diagnostics) -> CliError {
        CliError::Input(problems)
    }
}

impl From<Diagnostic> for CliError {
    fn from(problem: Diagnostic) -> CliError {
        CliError::Input(problem.into())
    }
}

pub fn run(cli: Cli) -> Result<Outcome, CliError> {
    let result = match cli.command {
        Command::Build(args) => build::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Status(args) => status::run(args),
        Command::Cost(args) => cost::run(args),
        Command::Report(args) => report::run(args),
        Command::Plan(args) => plan::run(&args.project, args.json, args.batch),
        Command::Explain(args) => explain::run(args),
        Command::Graph(args) => graph::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Batches(args) => batches::run(args),
        Command::Cache(CacheCommand::Stats(args)) => cache::stats(args),
        Command::Cache(CacheCommand::Gc(args)) => cache::gc(args),
        Command::Cache(CacheCommand::Verify(args)) => cache::verify(args),
        Command::Cache(CacheCommand::Pin(args)) => cache::pin(args),
        Command::Cache(CacheCommand::Push(args)) => cache::push(args),
    };
    match result {
        Err(CliError::ClosedPipe) => Ok(Outcome::Success),
        other => other,
    }
}

/// Prints `error` on stderr, once: each input problem on its line and a count, or the error and
/// one `caused by:` line per cause. A closed stdout prints nothing.
pub fn report(error: &CliError) {
    match error {
        CliError::Input(problems) => {
            for problem in &problems.0 {
                eprintln!("error: {problem}");
            }
            let count = problems.len();
            let noun = if count == 1 { "problem" } else { "problems" };
            eprintln!("ticketbuild: {count} {noun} in the input; nothing was built");
        }
        CliError::Runtime(error) => {
            eprintln!("ticketbuild: error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
        }
        // Nobody reads stdout any more; there is nothing to say and nobody to say it to.
        CliError::ClosedPipe => {}
    }
}

fn runtime_error(error: impl Into<anyhow::Error>) -> CliError {
    CliError::Runtime(error.into())
}

fn open_cache(config: &Config) -> Result<Arc<dyn Cache>, CliError> {
    // A cache written by an older ticketbuild has its artifacts moved into ticket records once:
    // said, with a bar, since it takes a while on a large cache.
    let bar = std::cell::OnceCell::new();
    let progress = |tickets: u64, moved: u64, total: u64| {
        let bar = bar.get_or_init(|| {
            eprintln!(
                "ticketbuild: moving the {total} artifacts of `{}` into one record per ticket (once; nothing is paid again)",
                config.cache_dir.display()
            );
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::new(total)
            } else {
                indicatif::ProgressBar::hidden()
            }
        });
        bar.set_position(moved);
        bar.set_message(format!("{tickets} tickets"));
    };
    let cache =
        crate::cache::open_migrating(&config.cache_dir, &progress).map_err(runtime_error)?;
    if let Some(bar) = bar.get() {
        bar.finish_and_clear();
        eprintln!("ticketbuild: the cache now holds one record per ticket");
    }
    Ok(cache)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

/// Reads and checks the project's config and prompts.
fn load(project: &ProjectArgs) -> Result<(Config, Graph), CliError> {
    Ok(project.load()?)
}

/// Writing to stdout: one place that knows a closed pipe from a failure.
mod out {
    use super::*;

    /// Writes `text` and a newline to stdout. A closed pipe is [`CliError::ClosedPipe`], which
    /// ends the command quietly; any other failure is an error.
    pub(crate) fn line(text: std::fmt::Arguments<'_>) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::ClosedPipe,
            _ => runtime_error(anyhow::anyhow!("cannot write to stdout: {e}")),
        })
    }

    /// Writes `value` as pretty JSON, its fields in the order its type declares them.
    pub(crate) fn json(value: &impl serde::Serialize) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| runtime_error(anyhow::anyhow!("cannot print JSON: {e}")))?;
        line(format_args!("{text}"))
    }

    /// Writes `value` as pretty JSON with the keys of every object sorted (the format of
    /// `status --json` and `cost --json`).
    pub(crate) fn json_sorted(value: &impl serde::Serialize) -> Result<(), CliError> {
        let value = serde_json::to_value(value)
            .map_err(|e| runtime_error(anyhow::anyhow!("cannot print JSON: {e}")))?;
        json(&value)
    }
}

/// `say!("...", args)`: one line on stdout, `?`-propagating a closed pipe.
macro_rules! say {
    () => { $crate::cli::out::line(format_args!(""))? };
    ($($arg:tt)*) => { $crate::cli::out::line(format_args!($($arg)*))? };
}
use say;

/// `result`, with a closed stdout taken as success: for output printed after the work is done,
/// when the command's outcome must not depend on whether anyone read it.
fn unless_closed(result: Result<(), CliError>) -> Result<(), CliError> {
    match result {
        Err(CliError::ClosedPipe) => Ok(()),
        other => other,
    }
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
            return Err(Diagnostic::file(
                &config.path,
                format!("`--force {name}`: no node is called `{name}`{hint}"),
            )
            .into());
        }
    }
    Ok(())
}
