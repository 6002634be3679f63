//! `ticketbuild merge`: the shards of a sharded build combined into the complete dataset.
//!
//! What a shard is, what merge checks and how it imports are `crate::shard`'s; the build that
//! follows is the ordinary one ([`build_project`]), so the files are those an unsharded build
//! writes. This prints what was merged and the build's summary.

use std::io::IsTerminal;
use std::sync::Arc;

use super::args::MergeArgs;
use super::build::{Terminal, print_report};
use super::{CliError, Outcome, load, open_cache, runtime, runtime_error, say};
use crate::build::build_project;
use crate::diag::{Diagnostic, Diagnostics};
use crate::engine::BuildOptions;
use crate::shard;

pub(super) fn run(args: MergeArgs) -> Result<Outcome, CliError> {
    let (config, graph) = load(&args.project)?;
    let folder = args
        .from
        .clone()
        .unwrap_or_else(|| config.output_dir.join(shard::SHARDS_DIR));
    let shards = shard::check_shards(&folder, &config, &graph).map_err(|problems| {
        CliError::Input(Diagnostics(
            problems
                .into_iter()
                .map(|p| Diagnostic::file(&folder, p))
                .collect(),
        ))
    })?;
    let cache = open_cache(&config)?;
    let mut imported = shard::Imported::default();
    for (dir, _) in &shards {
        let one = shard::import_artifacts(dir, cache.as_ref()).map_err(runtime_error)?;
        imported.artifacts += one.artifacts;
        imported.corrupt += one.corrupt;
    }
    let count = shards.len();
    let message = format!(
        "merging {count} shards from {}: {} artifacts imported{}",
        folder.display(),
        imported.artifacts,
        if imported.corrupt > 0 {
            format!(
                ", {} damaged records skipped (their answers are looked up elsewhere or paid for again)",
                imported.corrupt
            )
        } else {
            String::new()
        }
    );
    if args.json {
        eprintln!("{message}");
    } else {
        say!("{message}");
    }
    let progress = !args.no_progress && !args.json && std::io::stderr().is_terminal();
    let options = BuildOptions {
        observer: Arc::new(Terminal::new(progress, false)),
        ..BuildOptions::default()
    };
    let report = runtime()?
        .block_on(build_project(config, graph, cache, options, None))
        .map_err(runtime_error)?;
    super::unless_closed(print_report(&report, args.json))?;
    Ok(if report.failed > 0 {
        Outcome::Incomplete
    } else {
        Outcome::Success
    })
}
