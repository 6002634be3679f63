//! `ticketbuild cache`: stats, gc, verify, pin and push. What they find is `cache::gc`'s; this prints it.

use super::args::{CacheArgs, GcArgs, PinArgs};
use super::{CliError, Outcome, open_cache, runtime_error, say};
use crate::cache::gc;
use crate::cache::remote::upload;
use crate::manifest::Manifest;

/// How many recent manifests `cache stats` counts as kept (gc's default `--keep`).
const STATS_KEEP: usize = 5;

pub(super) fn stats(args: CacheArgs) -> Result<Outcome, CliError> {
    let config = args.project.config()?;
    let cache = open_cache(&config)?;
    let stats = gc::stats(cache.as_ref(), STATS_KEEP, &readable).map_err(runtime_error)?;
    say!("cache {}", config.cache_dir.display());
    say!("  entries:           {}", stats.entries);
    say!(
        "  bytes on disk:     {} ({} per entry)",
        stats.bytes_on_disk,
        stats.bytes_on_disk.checked_div(stats.entries).unwrap_or(0)
    );
    // Stored, an entry is compressed with its ticket's others and its request laid out; this is
    // the size it is read back at, requests written out in full.
    say!(
        "  artifact bytes:    {} ({} per entry, written out in full as `explain` reads them)",
        stats.artifact_bytes,
        stats.artifact_bytes.checked_div(stats.entries).unwrap_or(0)
    );
    say!(
        "  reachable:         {} from {} kept manifests (the last {STATS_KEEP} and the pinned)",
        stats.reachable,
        stats.kept_manifests
    );
    say!("  per node:");
    for (node, count) in &stats.per_node {
        say!("    {node:<20} {count}");
    }
    say!("  per model:");
    for (model, count) in &stats.per_model {
        say!("    {model:<40} {count}");
    }
    if let Some(remote) = &config.remote {
        let total = upload::total_counts(&config.cache_dir).unwrap_or_default();
        say!("  remote cache {} (all builds of this cache):", remote.url);
        say!("    hits:              {}", total.hits);
        say!("    misses:            {}", total.misses);
        say!("    corrupt ignored:   {}", total.corrupt);
        say!("    failed lookups:    {}", total.errors);
        say!(
            "    uploads:           {} ({} already there)",
            total.uploaded,
            total.already_present
        );
        say!(
            "    owed uploads:      {}",
            upload::pending_count(&config.cache_dir)
        );
    }
    Ok(Outcome::Success)
}

pub(super) fn gc(args: GcArgs) -> Result<Outcome, CliError> {
    let config = args.project.config()?;
    let cache = open_cache(&config)?;
    // Answers collected from batches are in no manifest until the build's last pass: gc would
    // take them for garbage, and they would be paid for again.
    let in_progress = crate::cache::batches::BatchLedger::new(&config.cache_dir)
        .records()
        .map_err(runtime_error)?
        .iter()
        .filter(|r| r.state != crate::cache::batches::BatchState::Done)
        .count();
    if in_progress > 0 && !args.dry_run {
        return Err(runtime_error(anyhow::anyhow!(
            "{in_progress} provider batches of this cache are not collected into a finished build yet; gc would delete answers collected from them; finish the build (`ticketbuild build`) first, or see `ticketbuild batches`"
        )));
    }
    let report = gc::collect(cache.as_ref(), args.keep.max(1), args.dry_run, &readable)
        .map_err(runtime_error)?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    say!(
        "{verb} {} unreachable artifacts ({} bytes written out in full) and {} old manifests; kept {} artifacts reachable from {} manifests",
        report.deleted_artifacts,
        report.freed_bytes,
        report.deleted_manifests,
        report.kept_artifacts,
        report.kept_manifests
    );
    Ok(Outcome::Success)
}

pub(super) fn verify(args: CacheArgs) -> Result<Outcome, CliError> {
    let config = args.project.config()?;
    let cache = open_cache(&config)?;
    let report = gc::verify(cache.as_ref()).map_err(runtime_error)?;
    let print = || -> Result<(), CliError> {
        for problem in &report.shared_parts {
            say!("{problem}");
        }
        for (key, reason) in &report.bad {
            say!("bad entry {}: {reason:?}; moved to quarantine", key.short());
        }
        say!(
            "verified {} entries: {} bad",
            report.checked,
            report.bad.len()
        );
        // Artifacts written before they recorded every key input decode and match their key,
        // but their requests cannot be hashed again: say how many were.
        say!(
            "{} of them re-derive their key from the request they record",
            report.rehashed
        );
        Ok(())
    };
    // The entries are checked and moved: a reader of the lines that has gone away changes
    // nothing, and the exit code still says whether there were bad ones.
    super::unless_closed(print())?;
    Ok(if report.bad.is_empty() && report.shared_parts.is_empty() {
        Outcome::Success
    } else {
        Outcome::Incomplete
    })
}

/// Whether stored bytes are a manifest this ticketbuild reads.
fn readable(bytes: &[u8]) -> bool {
    Manifest::decode(bytes).is_some()
}

pub(super) fn pin(args: PinArgs) -> Result<Outcome, CliError> {
    let config = args.project.config()?;
    let cache = open_cache(&config)?;
    let Some((id, _)) = Manifest::last(cache.as_ref()).map_err(runtime_error)? else {
        return Err(runtime_error(anyhow::anyhow!(
            "nothing to pin: no complete build is recorded in `{}`",
            config.cache_dir.display()
        )));
    };
    cache.pin(&args.name, id).map_err(runtime_error)?;
    say!(
        "pinned the last build as `{}`; `cache gc` keeps its artifacts",
        args.name
    );
    Ok(Outcome::Success)
}

pub(super) fn push(args: CacheArgs) -> Result<Outcome, CliError> {
    let config = args.project.config()?;
    let cache = open_cache(&config)?;
    let summary = super::runtime()?
        .block_on(crate::build::push_cache(&config, cache))
        .map_err(|e| runtime_error(anyhow::anyhow!(e)))?;
    let c = &summary.counts;
    say!(
        "pushed to {}: {} uploaded, {} already there{}",
        config.remote.as_ref().map_or("", |r| r.url.as_str()),
        c.uploaded,
        c.already_present,
        if summary.deferred > 0 {
            format!(
                "; {} failed (kept; the next build or push retries them)",
                summary.deferred
            )
        } else {
            String::new()
        }
    );
    Ok(if summary.deferred > 0 {
        Outcome::Incomplete
    } else {
        Outcome::Success
    })
}
