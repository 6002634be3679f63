//! `ticketbuild merge`: the shards of a sharded build combined into the complete dataset.
//!
//! What a shard is, what merge checks and how it imports are `crate::shard`'s; the build that
//! follows is the ordinary one ([`build_project`]), so the files are those an unsharded build
//! writes. This prints what was merged and the build's summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::args::MergeArgs;
use super::build::{Terminal, print_report};
use super::{CliError, Outcome, load, open_cache, runtime, runtime_error, say};
use crate::build::build_project;
use crate::diag::{Diagnostic, Diagnostics};
use crate::engine::BuildOptions;
use crate::shard::{self, ShardManifest};

pub(super) fn run(args: MergeArgs) -> Result<Outcome, CliError> {
    let (config, graph) = load(&args.project)?;
    let runtime = runtime()?;
    let (place, shards) = if args.remote {
        let place = config
            .remote
            .as_ref()
            .map_or_else(|| config.path.clone(), |r| PathBuf::from(&r.url));
        let found = runtime.block_on(async {
            match crate::build::open_remote(&config).await {
                Ok(remote) => Ok(shard::remote_manifests(&remote, &config.name).await),
                Err(problem) => Err(vec![problem]),
            }
        });
        let checked = found.and_then(|(found, problems)| {
            let within = format!("{}/{}/{}/", place.display(), shard::SHARDS_DIR, config.name);
            shard::check_manifests(found, problems, &within, &config, &graph)
        });
        (place.clone(), checked.map_err(|p| problems_at(&place, p))?)
    } else {
        let folder = args
            .from
            .clone()
            .unwrap_or_else(|| config.output_dir.join(shard::SHARDS_DIR));
        let checked = shard::check_shards(&folder, &config, &graph);
        (
            folder.clone(),
            checked.map_err(|p| problems_at(&folder, p))?,
        )
    };
    let cache = open_cache(&config)?;
    let mut message = format!("merging {} shards from {}", shards.len(), place.display());
    if args.remote {
        // The answers come through the remote cache as the build looks them up.
        let owed: u64 = shards.iter().map(|(_, s)| s.owed_uploads).sum();
        if owed > 0 {
            message.push_str(&format!(
                "; {owed} answers the shards could not upload are paid for again unless their shards build once more first"
            ));
        }
    } else {
        message.push_str(&import(&shards, cache.as_ref())?);
    }
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
    let report = runtime
        .block_on(build_project(config, graph, cache, options, None))
        .map_err(runtime_error)?;
    super::unless_closed(print_report(&report, args.json))?;
    Ok(if report.failed > 0 {
        Outcome::Incomplete
    } else {
        Outcome::Success
    })
}

/// Every shard folder's artifacts into the local cache; what that came to, for the message.
fn import(
    shards: &[(PathBuf, ShardManifest)],
    cache: &dyn crate::cache::Cache,
) -> Result<String, CliError> {
    let mut imported = shard::Imported::default();
    for (dir, _) in shards {
        let one = shard::import_artifacts(dir, cache).map_err(runtime_error)?;
        imported.artifacts += one.artifacts;
        imported.corrupt += one.corrupt;
    }
    let mut text = format!(": {} artifacts imported", imported.artifacts);
    if imported.corrupt > 0 {
        text.push_str(&format!(
            ", {} damaged records skipped (their answers are looked up elsewhere or paid for again)",
            imported.corrupt
        ));
    }
    Ok(text)
}

/// Merge's problems, one line each, as input errors (exit 2, nothing written).
fn problems_at(place: &Path, problems: Vec<String>) -> CliError {
    CliError::Input(Diagnostics(
        problems
            .into_iter()
            .map(|p| Diagnostic::file(place, p))
            .collect(),
    ))
}
