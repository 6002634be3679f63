//! One build of a project, from a checked config to written files and a recorded manifest.
//!
//! This module owns the steps around the engine that make builds incremental across runs: the
//! no-op check against the last manifest (same inputs, intact files: nothing to do), setting up the
//! engine with its providers, recording the keys and the manifest of a complete build. `build` and
//! `watch` both call [`build_project`]; the CLI only parses flags and prints. The invariant: a
//! manifest is recorded only for a build that wrote every ticket, so a later no-op check can trust it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::cache::{ArtifactStore, SledStore};
use crate::config::Config;
use crate::engine::{BuildError, BuildOptions, BuildReport, Engine};
use crate::graph::Graph;
use crate::manifest::{self, Manifest};
use crate::provider::Secrets;

/// Builds `config` into its output folder using the cache `sled`. Setting `cancel` stops new
/// tickets from starting; tickets in flight finish and land in the cache.
pub async fn build_project(
    config: Config,
    graph: Graph,
    sled: Arc<SledStore>,
    options: BuildOptions,
    cancel: Option<Arc<AtomicBool>>,
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let inputs = manifest::inputs_hash(&config, &graph, &[]);

    // Nothing changed since the last complete build and its files are intact: nothing to do.
    if let Some((_, last)) = sled.last_manifest::<Manifest>()? {
        if last.inputs_hash == inputs && last.files_intact() {
            let mut report = BuildReport::up_to_date(&last, &config);
            report.wall_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
    }

    let store: Arc<dyn ArtifactStore> = sled.clone();
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
    let engine = Arc::new(engine);
    let manifest_id = sled.next_manifest_id()?;
    let recorder = sled.key_recorder(manifest_id, graph.nodes.len())?;
    let report = Arc::clone(&engine).build(Some(Box::new(recorder))).await?;
    if report.failed == 0 && !report.interrupted {
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
        sled.put_manifest(manifest_id, &manifest)?;
    }
    Ok(report)
}
