//! `ticketbuild batches`: the provider batches of this project, and cancelling them.
//!
//! The ledger and what a batch is are `cache::batches` and `engine::batch`; this asks the
//! providers for the state of the live ones (collecting those that ended, as a build would) and
//! prints one line per batch: its id, model, state, requests, answers, failures, when it was
//! submitted and what its answers cost at batch prices.

use super::args::{BatchesArgs, BatchesCommand};
use super::{CliError, Outcome, load, runtime, runtime_error, say};
use crate::cache::batches::BatchRecord;
use crate::provider::Secrets;

pub(super) fn run(args: BatchesArgs) -> Result<Outcome, CliError> {
    let (config, graph) = load(&args.project)?;
    // Holding the cache is holding the ledger: a build running meanwhile would edit it too.
    let _cache = super::open_cache(&config)?;
    let secrets = Secrets::load(&config.root).map_err(runtime_error)?;
    let runtime = runtime()?;
    match args.command {
        None => {
            let records = runtime
                .block_on(crate::engine::batch::refresh(&config, &graph, &secrets))
                .map_err(runtime_error)?;
            if args.json {
                super::out::json(&records)?;
                return Ok(Outcome::Success);
            }
            if records.is_empty() {
                say!("no batches: nothing was submitted in batch mode from this cache");
                return Ok(Outcome::Success);
            }
            say!(
                "{:<24} {:<12} {:<22} {:>8} {:>8} {:>7} {:<20} {:>10}",
                "batch",
                "model",
                "state",
                "requests",
                "answered",
                "failed",
                "submitted (UTC)",
                "cost"
            );
            for record in &records {
                say!("{}", line(record));
            }
            let live: Vec<&BatchRecord> = records.iter().filter(|r| r.state.is_running()).collect();
            if !live.is_empty() {
                let requests: usize = live.iter().map(|r| r.keys.len()).sum();
                say!(
                    "{} batches ({requests} requests) still running and billed; `ticketbuild build` collects them, `ticketbuild batches cancel --all` cancels them",
                    live.len()
                );
            }
        }
        Some(BatchesCommand::Cancel { id, all }) => {
            let which = if all { None } else { id.as_deref() };
            let cancelled = runtime
                .block_on(crate::engine::batch::cancel(
                    &config, &graph, &secrets, which,
                ))
                .map_err(runtime_error)?;
            if args.json {
                super::out::json(&cancelled)?;
                return Ok(Outcome::Success);
            }
            if cancelled.is_empty() {
                say!("no live batch to cancel");
            }
            for record in &cancelled {
                say!(
                    "cancelled {} ({} requests): answers given before the cancel are collected by the next build, which submits the others again",
                    record.id.as_deref().unwrap_or(&record.tag),
                    record.keys.len()
                );
            }
        }
    }
    Ok(Outcome::Success)
}

fn line(record: &BatchRecord) -> String {
    let submitted = chrono::DateTime::from_timestamp_millis(record.submitted_unix_ms as i64)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
    let state = if record.status.is_empty() || record.status == record.state.name() {
        record.state.name().to_string()
    } else {
        format!("{} ({})", record.state.name(), record.status)
    };
    format!(
        "{:<24} {:<12} {:<22} {:>8} {:>8} {:>7} {:<20} {:>10}",
        record.id.as_deref().unwrap_or(&record.tag),
        record.model,
        state,
        record.keys.len(),
        record.succeeded,
        record.failed,
        submitted,
        record
            .cost_usd
            .map_or_else(|| "-".to_string(), |c| format!("${c:.6}"))
    )
}
