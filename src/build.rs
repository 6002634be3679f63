//! One build of a project, from a checked config to written files and a recorded manifest.
//!
//! This module owns the steps around the engine that make builds incremental across runs: the
//! no-op check against the last manifest (same inputs, intact files: nothing to do), reassembly
//! (same inputs, files gone: written again from the manifest's keys), setting up the
//! engine with its providers, recording the keys and the manifest of a complete build. `build` and
//! `watch` both call [`build_project`]; the CLI only parses flags and prints. The invariant: a
//! manifest is recorded only for a build that wrote every ticket, so a later no-op check can trust it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::cache::batches::BatchLedger;
use crate::cache::remote::upload::{self, Uploads};
use crate::cache::remote::{Access, RemoteCache, RemoteMode};
use crate::cache::{ArtifactStore, Cache};
use crate::config::Config;
use crate::engine::batch::BatchMode;
use crate::engine::reassemble;
use crate::engine::remote::{RemoteReport, RemoteTier};
use crate::engine::{BuildError, BuildOptions, BuildReport, Engine};
use crate::graph::Graph;
use crate::manifest::{self, FileRecord, Manifest};
use crate::provider::Secrets;

/// The file next to the cache database that repeats the last manifest, so a no-op build can be
/// recognised without opening the database (opening a large sled database replays its log).
const LAST_BUILD_FILE: &str = "last-build.json";

/// The report of a build with nothing to do, when the last complete build had the same inputs and
/// its files are intact; read from the cache folder's `last-build.json` without opening the cache.
pub(crate) fn up_to_date(config: &Config, graph: &Graph) -> Option<BuildReport> {
    let started = Instant::now();
    if owes_uploads(config) {
        return None;
    }
    let text = std::fs::read(config.cache_dir.join(LAST_BUILD_FILE)).ok()?;
    let last: Manifest = serde_json::from_slice(&text).ok()?;
    if last.inputs_hash != manifest::inputs_hash(config, graph) || !last.files_intact() {
        return None;
    }
    let mut report = BuildReport::up_to_date(&last, config);
    report.wall_ms = started.elapsed().as_millis() as u64;
    Some(report)
}

/// Writes `last-build.json` atomically; it is only a shortcut, so failing to write it is harmless.
fn write_last_build(config: &Config, manifest: &Manifest) {
    let Ok(json) = serde_json::to_vec(manifest) else {
        return;
    };
    let path = config.cache_dir.join(LAST_BUILD_FILE);
    let temporary = config.cache_dir.join(format!(".{LAST_BUILD_FILE}.partial"));
    if std::fs::write(&temporary, json).is_ok() {
        let _ = std::fs::rename(&temporary, &path);
    }
}

/// The last build's report, kept next to the cache for `ticketbuild cost`.
pub(crate) const LAST_REPORT_FILE: &str = "last-report.json";

fn write_last_report(config: &Config, report: &BuildReport) {
    let Ok(json) = serde_json::to_vec_pretty(report) else {
        return;
    };
    let path = config.cache_dir.join(LAST_REPORT_FILE);
    let temporary = config
        .cache_dir
        .join(format!(".{LAST_REPORT_FILE}.partial"));
    if std::fs::write(&temporary, json).is_ok() {
        let _ = std::fs::rename(&temporary, &path);
    }
}

/// The last build's report as `write_last_report` kept it; `None` when no build recorded one.
pub(crate) fn last_report(config: &Config) -> Option<BuildReport> {
    let text = std::fs::read(config.cache_dir.join(LAST_REPORT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes the dataset card (`[output] card`, on by default) and the HTML report (`[output]
/// report`) next to the files just written, and lists them with the build's files, so that the
/// next no-op check finds them intact or rebuilds them.
fn write_card_and_report(
    config: &Config,
    graph: &Graph,
    report: &mut BuildReport,
    cache: &dyn Cache,
    manifest_id: u64,
) -> Result<(), BuildError> {
    let output_error = |error: crate::report::ReportError| {
        BuildError::Output(crate::output::OutputError::Write {
            path: config.output_dir.clone(),
            reason: error.to_string(),
        })
    };
    if config.card {
        let path = config.output_dir.join(crate::report::card::CARD_FILE);
        let card = crate::report::card::render(config, graph, report);
        crate::report::write_atomically(&path, &card).map_err(output_error)?;
        report.files.push(path.display().to_string());
    }
    if config.report {
        let dataset = crate::report::compute(&crate::report::Sources {
            config,
            graph,
            build: Some(report),
            cache: Some((cache, manifest_id)),
        })
        .map_err(output_error)?;
        let path = crate::report::html_path(config);
        crate::report::write_atomically(&path, &crate::report::render_html(&dataset))
            .map_err(output_error)?;
        report.files.push(path.display().to_string());
    }
    Ok(())
}

/// Refuses, before any call, a build with a model whose price is unknown, unless allowed.
pub(crate) fn check_prices(config: &Config, graph: &Graph) -> Result<(), BuildError> {
    if config.cost.allow_unpriced {
        return Ok(());
    }
    let mut unpriced: Vec<String> = Vec::new();
    for node in &graph.nodes {
        let model = &node.model;
        if model.price(&config.cost.prices).is_none() {
            let entry = format!(
                "model `{}` ({}/{})",
                model.name, model.provider, model.model
            );
            if !unpriced.contains(&entry) {
                unpriced.push(entry);
            }
        }
    }
    if unpriced.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Unpriced(unpriced.join(", ")))
    }
}

/// Builds `config` into its output folder using `cache`. Setting `cancel` stops new
/// tickets from starting; tickets in flight finish and land in the cache.
pub(crate) async fn build_project(
    config: Config,
    graph: Graph,
    cache: Arc<dyn Cache>,
    options: BuildOptions,
    cancel: Option<Arc<AtomicBool>>,
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let inputs = manifest::inputs_hash(&config, &graph);

    // Nothing changed since the last complete build and its files are intact: nothing to do
    // (but the uploads earlier builds owe the remote cache).
    if let Some((_, last)) = Manifest::last(cache.as_ref())? {
        if options.force.is_empty() && last.inputs_hash == inputs && last.files_intact() {
            let mut report = BuildReport::up_to_date(&last, &config);
            if owes_uploads(&config) {
                report.remote = upload_owed(&config, cache.clone(), &options).await?;
            }
            report.wall_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
    }

    if let Some(report) = reassemble_last(&config, &graph, &cache, &options, &inputs).await? {
        return Ok(report);
    }
    check_prices(&config, &graph)?;
    let mut graph = graph;
    if options.batch {
        // `build --batch`: every model with a batch API uses it for this build.
        for node in &mut graph.nodes {
            node.model.batch |= node.model.provider.no_batch_api().is_none();
        }
    }
    let shard = options.shard;
    let observer = Arc::clone(&options.observer);
    let store: Arc<dyn ArtifactStore> = cache.clone();
    let remote = remote_tier(&config, Arc::clone(&store), &options).await?;
    let secrets = Secrets::load(&config.root)?;
    let config = Arc::new(config);
    let graph = Arc::new(graph);
    let mut engine = Engine::new(
        Arc::clone(&config),
        Arc::clone(&graph),
        store,
        &secrets,
        options,
    )?;
    if let Some(cancel) = cancel {
        engine.use_cancel_flag(cancel);
    }
    if let Some(batches) = BatchMode::prepare(&config, &graph, &secrets).await? {
        engine.use_batches(batches);
    }
    let remote_cache = remote.as_ref().map(|tier| Arc::clone(&tier.cache));
    if let Some(remote) = remote {
        engine.use_remote(remote);
    }
    let engine = Arc::new(engine);
    let manifest_id = cache.next_manifest_id()?;
    let recorder = cache.key_recorder(manifest_id, graph.nodes.len())?;
    let mut report = Arc::clone(&engine).build(Some(recorder)).await?;
    report.batches = engine.submit_batches().await?;
    if !report.files.is_empty() {
        write_card_and_report(&config, &graph, &mut report, cache.as_ref(), manifest_id)?;
        if let Some(shard) = shard {
            let manifest = write_shard(&config, &graph, &mut report, cache.as_ref(), shard)?;
            if let Some(remote) = remote_cache.filter(|r| r.writable()) {
                share_shard(&remote, &manifest, shard, observer.as_ref()).await;
            }
        }
    }
    let complete = report.failed == 0 && !report.interrupted && report.awaiting_batch == 0;
    if complete {
        report.manifest = Some(manifest_id);
    }
    write_last_report(&config, &report);
    if complete {
        let files: Vec<PathBuf> = report.files.iter().map(PathBuf::from).collect();
        let mut manifest = Manifest::new(&config, &graph, inputs, &files);
        manifest.node_totals = report
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.stats.reused + n.stats.generated,
                    n.stats.skipped,
                )
            })
            .collect();
        cache.put_manifest(manifest_id, &manifest.encode())?;
        write_last_build(&config, &manifest);
    }
    Ok(report)
}

/// Nothing changed since the last complete build but its files (deleted or edited): writes them
/// again from its manifest's keys ([`reassemble`]) instead of walking the graph. `None` when that
/// does not apply (a forced node, a shard, batch mode, another build since) or the cache cannot
/// give every answer back; the build then walks as usual.
async fn reassemble_last(
    config: &Config,
    graph: &Graph,
    cache: &Arc<dyn Cache>,
    options: &BuildOptions,
    inputs: &str,
) -> Result<Option<BuildReport>, BuildError> {
    let batches = options.batch
        || graph.nodes.iter().any(|n| n.model.batch)
        || !BatchLedger::new(&config.cache_dir).records()?.is_empty();
    if !options.force.is_empty() || options.shard.is_some() || batches {
        return Ok(None);
    }
    let Some((id, mut manifest)) = Manifest::last(cache.as_ref())? else {
        return Ok(None);
    };
    if manifest.inputs_hash != inputs {
        return Ok(None);
    }
    let Some(last) = reassemble::last_build(graph, id, last_report(config)) else {
        return Ok(None);
    };
    let (owned_config, owned_graph) = (config.clone(), graph.clone());
    let (store, observer) = (Arc::clone(cache), Arc::clone(&options.observer));
    let report = tokio::task::spawn_blocking(move || {
        reassemble::reassemble(
            &owned_config,
            &owned_graph,
            store.as_ref(),
            &last,
            observer.as_ref(),
        )
    })
    .await
    .map_err(|e| BuildError::Task(format!("reassembly: {e}")))??;
    let Some(mut report) = report else {
        return Ok(None);
    };
    write_card_and_report(config, graph, &mut report, cache.as_ref(), id)?;
    if owes_uploads(config) {
        report.remote = upload_owed(config, cache.clone(), options).await?;
    }
    write_last_report(config, &report);
    // The same build, its files written anew: the manifest now describes these.
    manifest.files = report
        .files
        .iter()
        .filter_map(|f| FileRecord::of(Path::new(f)))
        .collect();
    cache.put_manifest(id, &manifest.encode())?;
    write_last_build(config, &manifest);
    Ok(Some(report))
}

/// Whether the cache folder owes the configured remote cache uploads from earlier builds.
fn owes_uploads(config: &Config) -> bool {
    config
        .remote
        .as_ref()
        .is_some_and(|r| r.mode == RemoteMode::ReadWrite)
        && upload::has_pending(&config.cache_dir)
}

/// The remote cache of a build, probed: read-write, read-only (configured, or the probe could not
/// write) or unreachable (the build goes on without it, and owes it its uploads). A remote that
/// cannot even be set up (an unknown URL form, a bad credential variable) stops the build before
/// any call.
async fn remote_tier(
    config: &Config,
    local: Arc<dyn ArtifactStore>,
    options: &BuildOptions,
) -> Result<Option<RemoteTier>, BuildError> {
    let Some(settings) = &config.remote else {
        return Ok(None);
    };
    let cache = Arc::new(RemoteCache::open(settings)?);
    let access = cache.probe().await;
    match &access {
        Access::ReadWrite | Access::ReadOnly(None) => {}
        Access::ReadOnly(Some(reason)) => options.observer.notice(&format!(
            "remote cache {}: read-only for this build ({reason})",
            settings.url
        )),
        Access::Unreachable(reason) => options.observer.notice(&format!(
            "remote cache {} is unreachable ({reason}); building with the local cache and the model{}",
            settings.url,
            if settings.mode == RemoteMode::ReadWrite {
                ", and the next build that reaches it uploads what this one generates"
            } else {
                ""
            }
        )),
    }
    // Read-only (configured, or the probe could not write): nothing goes up, nothing is owed.
    // Unreachable: what this build pays for is owed, for a build that reaches the remote.
    let uploads = match (settings.mode, &access) {
        (RemoteMode::ReadOnly, _) | (_, Access::ReadOnly(_)) => None,
        (RemoteMode::ReadWrite, _) => {
            match Uploads::start(Arc::clone(&cache), local, &config.cache_dir) {
                Ok(uploads) => Some(uploads),
                Err(e) => {
                    options.observer.notice(&format!(
                    "remote cache {}: cannot keep track of uploads in `{}` ({e}); nothing is uploaded by this build",
                    settings.url,
                    config.cache_dir.display()
                ));
                    None
                }
            }
        }
    };
    let owed = match &uploads {
        None if settings.mode == RemoteMode::ReadWrite => upload::pending_count(&config.cache_dir),
        _ => 0,
    };
    Ok(Some(RemoteTier {
        cache,
        access,
        uploads,
        owed,
    }))
}

/// The remote cache of `config`, probed (`merge --remote`, `cache push`).
pub(crate) async fn open_remote(config: &Config) -> Result<Arc<RemoteCache>, String> {
    let Some(settings) = &config.remote else {
        return Err(format!(
            "`{}` has no [cache.remote] (docs/remote-cache.md)",
            config.path.display()
        ));
    };
    let cache = Arc::new(RemoteCache::open(settings).map_err(|e| e.to_string())?);
    match cache.probe().await {
        Access::Unreachable(reason) => Err(format!(
            "the remote cache {} is unreachable: {reason}",
            settings.url
        )),
        _ => Ok(cache),
    }
}

/// A build with nothing to build that owes the remote cache uploads: does them.
async fn upload_owed(
    config: &Config,
    cache: Arc<dyn Cache>,
    options: &BuildOptions,
) -> Result<Option<RemoteReport>, BuildError> {
    let store: Arc<dyn ArtifactStore> = cache;
    let Some(tier) = remote_tier(config, store, options).await? else {
        return Ok(None);
    };
    Ok(tier.report().await)
}

/// A shard build's files for `merge`: its artifacts and `shard.json`, listed with the build's
/// files (so a no-op check finds them intact or builds again).
fn write_shard(
    config: &Config,
    graph: &Graph,
    report: &mut BuildReport,
    cache: &dyn Cache,
    shard: crate::shard::Shard,
) -> Result<crate::shard::ShardManifest, BuildError> {
    let mut manifest = crate::shard::ShardManifest::new(config, graph, shard);
    manifest.written = report.written;
    manifest.failed = report.failed;
    manifest.owed_uploads = report.remote.as_ref().map_or(0, |r| r.deferred);
    let manifest = crate::shard::write_shard_files(&config.output_dir, cache, shard, manifest)
        .map_err(|e| {
            BuildError::Output(crate::output::OutputError::Write {
                path: config.output_dir.clone(),
                reason: e.to_string(),
            })
        })?;
    for file in [crate::shard::ARTIFACTS_FILE, crate::shard::SHARD_FILE] {
        report
            .files
            .push(config.output_dir.join(file).display().to_string());
    }
    Ok(manifest)
}

/// Puts a shard's manifest in the remote cache, for `merge --remote` on another machine; failing
/// is reported, not an error (the shard's folder holds it too).
async fn share_shard(
    remote: &RemoteCache,
    manifest: &crate::shard::ShardManifest,
    shard: crate::shard::Shard,
    observer: &dyn crate::engine::BuildObserver,
) {
    let path = crate::shard::remote_manifest_path(&manifest.dataset, shard);
    let result = match serde_json::to_vec_pretty(manifest) {
        Ok(json) => remote.put_file(&path, json).await,
        Err(e) => Err(e.to_string()),
    };
    if let Err(reason) = result {
        observer.notice(&format!(
            "remote cache {}: cannot store {shard}'s manifest `{path}` ({reason}); merge it from its folder",
            remote.url()
        ));
    }
}

/// Uploads every artifact of the local cache that the remote lacks (`cache push`): a remote set
/// up after answers were paid for gets them too. Put-if-absent, through the same queue and task
/// as a build's uploads.
pub(crate) async fn push_cache(
    config: &Config,
    cache: Arc<dyn Cache>,
) -> Result<crate::cache::remote::upload::UploadSummary, String> {
    let remote = open_remote(config).await?;
    if !remote.writable() {
        return Err(format!(
            "the remote cache {} is read-only here (configured so, or it refused the probe write)",
            remote.url()
        ));
    }
    let store: Arc<dyn ArtifactStore> = cache.clone();
    let uploads = Uploads::start(remote, store, &config.cache_dir).map_err(|e| {
        format!(
            "cannot queue uploads in `{}`: {e}",
            config.cache_dir.display()
        )
    })?;
    for entry in cache.entries() {
        let entry = entry.map_err(|e| e.to_string())?;
        if let Some(ticket) = entry.ticket {
            uploads.enqueue(ticket, entry.key, false);
        }
    }
    Ok(uploads.finish().await)
}
