//! Batches outside a build's pass: listing them up to date (`ticketbuild batches`), cancelling
//! them, counting the live ones (after Ctrl-C), and waiting for one to end (`build --wait`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{BatchMode, batch_models, task};
use crate::cache::batches::{BatchLedger, BatchRecord, BatchState};
use crate::config::Config;
use crate::engine::BuildError;
use crate::graph::Graph;
use crate::provider::Secrets;

/// Every batch of the ledger, brought up to date with its provider first (ended ones collected
/// into the ledger), oldest first (`ticketbuild batches`).
pub(crate) async fn refresh(
    config: &Config,
    graph: &Graph,
    secrets: &Secrets,
) -> Result<Vec<BatchRecord>, BuildError> {
    let ledger = BatchLedger::new(&config.cache_dir);
    let records = ledger.records()?;
    let mode = BatchMode::open(config, graph, &records, secrets)?;
    mode.update(records).await?;
    Ok(ledger.records()?)
}

/// Cancels the live batch `which` (its provider id or tag), or every live batch (`None`);
/// the batches cancelled, as the provider then describes them. Answers given before the cancel
/// are collected by the next build, which submits the rest again.
pub(crate) async fn cancel(
    config: &Config,
    graph: &Graph,
    secrets: &Secrets,
    which: Option<&str>,
) -> Result<Vec<BatchRecord>, BuildError> {
    let records = refresh(config, graph, secrets).await?;
    let ledger = BatchLedger::new(&config.cache_dir);
    let models = batch_models(config, graph, &records, secrets)?;
    let mut cancelled = Vec::new();
    let wanted = |r: &BatchRecord| which.is_none_or(|w| r.id.as_deref() == Some(w) || r.tag == w);
    if let Some(which) = which {
        if !records.iter().any(wanted) {
            return Err(BuildError::Task(format!(
                "no batch `{which}` in the ledger; `ticketbuild batches` lists them"
            )));
        }
    }
    for mut record in records.into_iter().filter(wanted) {
        if record.state != BatchState::Live {
            continue;
        }
        let (Some(id), Some(model)) = (record.id.clone(), models.get(&record.model)) else {
            continue;
        };
        let batch = model.client.cancel(&id).await.map_err(task)?;
        record.status = batch.status;
        ledger.write(&record)?;
        cancelled.push(record);
    }
    Ok(cancelled)
}

/// The batches still running at their providers, as the ledger knows them: (batches, requests).
pub(crate) fn live(config: &Config) -> Result<(u64, u64), BuildError> {
    let records = BatchLedger::new(&config.cache_dir).records()?;
    Ok(records
        .iter()
        .filter(|r| matches!(r.state, BatchState::Live | BatchState::Submitting))
        .fold((0, 0), |(b, n), r| (b + 1, n + r.keys.len() as u64)))
}

/// Waits until a live batch of the ledger has ended (then the next pass collects it), asking
/// the providers every `every`; `progress(done, total)` hears the requests answered so far over
/// the live batches. Returns `false` when `stop` was set first.
pub(crate) async fn wait_for_one(
    config: &Config,
    graph: &Graph,
    secrets: &Secrets,
    every: Duration,
    stop: &AtomicBool,
    progress: &dyn Fn(u64, u64),
) -> Result<bool, BuildError> {
    let ledger = BatchLedger::new(&config.cache_dir);
    let records = ledger.records()?;
    let models = batch_models(config, graph, &records, secrets)?;
    loop {
        let (mut done, mut total) = (0, 0);
        for record in ledger.records()? {
            if record.state == BatchState::Submitting {
                return Ok(true);
            }
            let (Some(id), Some(model)) = (&record.id, models.get(&record.model)) else {
                continue;
            };
            if record.state != BatchState::Live {
                continue;
            }
            let batch = model.client.get(id).await.map_err(task)?;
            if batch.ended {
                return Ok(true);
            }
            let requests = record.keys.len() as u64;
            done += match batch.progress {
                // Together reports a percentage, not counts.
                Some(percent) if batch.succeeded + batch.failed == 0 => {
                    (percent / 100.0 * requests as f64) as u64
                }
                _ => batch.succeeded + batch.failed,
            };
            total += requests;
        }
        if total == 0 {
            return Ok(true);
        }
        progress(done, total);
        let mut slept = Duration::ZERO;
        while slept < every {
            if stop.load(Ordering::Acquire) {
                return Ok(false);
            }
            let step = (every - slept).min(Duration::from_millis(100));
            tokio::time::sleep(step).await;
            slept += step;
        }
    }
}
