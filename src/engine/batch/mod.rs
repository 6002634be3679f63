//! Batch mode: answers that are not cached are asked for through the provider's batch API.
//!
//! A build in batch mode is a series of passes. Each pass walks every ticket as usual; where a node
//! of a batch model needs an answer that is not cached, [`BatchMode::answer`] gives it from a
//! collected batch when there is one (the engine then stores it as any answer), says that it is in
//! a live batch, or queues its request, and the ticket waits (its row is not written). After the
//! walk, [`BatchMode::submit`] submits what was queued, each batch recorded in the ledger
//! (`cache::batches`) before it is created and again once the provider named it. The next pass
//! (the next `ticketbuild build`, or the same one with `--wait`) first brings the ledger up to date
//! ([`BatchMode::prepare`]): a batch whose creation was never recorded is found in the provider's
//! listing (by the tag in its metadata, or by its time and size where the API keeps none), ended
//! batches' results are written to the ledger before they count, and their answers serve the walk.
//! So a ticket's next node is asked for in the pass after its inputs were collected.
//!
//! The invariants: a key in a live batch is never submitted again; a request the provider did not
//! answer (expired, cancelled, failed) is submitted again alone; an answer that fails the node's
//! output rules is asked for again as the synchronous path would retry it (up to the model's
//! `max_invalid_attempts`); and every answer is in the ledger until it is in the artifact cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod manage;

pub(crate) use manage::{cancel, live, refresh, wait_for_one};

use super::BuildError;
use crate::cache::ArtifactStore;
use crate::cache::batches::{BatchLedger, BatchRecord, BatchState, ResultLine};
use crate::config::{Config, ModelConfig};
use crate::cost::PriceEntry;
use crate::graph::Graph;
use crate::key::ArtifactKey;
use crate::provider::batch::{BatchApi, BatchClient, ItemOutcome, RemoteBatch, names_input_of};
use crate::provider::{self, ProviderError, Request, Response, Secrets};

/// What a batch model has for a request now.
pub(crate) enum BatchAnswer {
    /// A collected answer, judged (or why there is none and will be none). Paid for already.
    Ready(Result<Response, ProviderError>),
    /// In a live batch (or already queued by this pass): the ticket waits.
    Waiting,
    /// To be asked for in the next batch: the engine reserves its worst case, then
    /// [`BatchMode::queue`]s it (or, refused by the budget, does not).
    Needed,
    /// Not a batch model's, nor in any batch: asked for one by one.
    Unbatched,
}

/// One batch model: its client and what its answers cost.
struct BatchModel {
    config: ModelConfig,
    client: BatchClient,
    price: Option<PriceEntry>,
}

/// What the ledger's ended batches answered, per key.
#[derive(Default)]
struct Collected {
    /// Every answer given for the key, oldest first (more than one: the earlier failed its rules).
    answers: Vec<Value>,
    /// Why the provider refused the request for good.
    refused: Option<String>,
    /// How many ended batches held the request without answering it (expired, cancelled, a
    /// failure worth another try), and the last reason.
    unanswered: u32,
    last_reason: String,
}

/// A request queued for the next batch.
struct Queued {
    ticket: u64,
    key: ArtifactKey,
    body: Value,
}

/// What a pass did with batches, for the report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct BatchSummary {
    /// Requests submitted by this pass, and the batches they went in.
    pub(crate) submitted_requests: u64,
    pub(crate) submitted_batches: u64,
    /// Batches still running at the provider after this pass (its own included), and their
    /// requests.
    pub(crate) live_batches: u64,
    pub(crate) live_requests: u64,
    /// Batches that ended since the last pass, collected into the ledger by this one.
    pub(crate) collected_batches: u64,
    /// What every batch of the ledger cost so far at batch prices, in USD.
    pub(crate) ledger_cost_usd: f64,
}

/// Batch mode for one pass of a build.
pub(crate) struct BatchMode {
    ledger: BatchLedger,
    /// By model name.
    models: BTreeMap<String, BatchModel>,
    /// Per graph node, the name of its model and whether that model is in batch mode.
    node_models: Vec<(String, bool)>,
    collected: HashMap<ArtifactKey, Collected>,
    live: HashSet<ArtifactKey>,
    queued: Mutex<BTreeMap<String, Vec<Queued>>>,
    queued_keys: Mutex<HashSet<ArtifactKey>>,
    summary: BatchSummary,
}

impl BatchMode {
    /// Batch mode for `graph`'s batch models, with the ledger in `config`'s cache brought up to
    /// date; `None` when no node's model is in batch mode and the ledger has nothing to collect.
    pub(crate) async fn prepare(
        config: &Config,
        graph: &Graph,
        secrets: &Secrets,
    ) -> Result<Option<BatchMode>, BuildError> {
        let ledger = BatchLedger::new(&config.cache_dir);
        let records = ledger.records()?;
        // A record whose model is gone cannot be collected, and its requests must not be paid
        // for again one by one.
        if let Some(record) = records
            .iter()
            .find(|r| r.state != BatchState::Done && !config.models.contains_key(&r.model))
        {
            return Err(BuildError::Task(format!(
                "batch {} was submitted for model `{}`, which dataset.toml no longer defines; put `[models.{}]` back to collect it (`ticketbuild batches` lists the batches)",
                record.id.as_deref().unwrap_or(&record.tag),
                record.model,
                record.model
            )));
        }
        let in_batch_mode = graph.nodes.iter().any(|n| n.model.batch);
        if !in_batch_mode && records.iter().all(|r| matches!(r.state, BatchState::Done)) {
            return Ok(None);
        }
        let mut mode = BatchMode::open(config, graph, &records, secrets)?;
        mode.summary.collected_batches = mode.update(records).await?;
        mode.load()?;
        Ok(Some(mode))
    }

    fn open(
        config: &Config,
        graph: &Graph,
        records: &[BatchRecord],
        secrets: &Secrets,
    ) -> Result<BatchMode, BuildError> {
        Ok(BatchMode {
            ledger: BatchLedger::new(&config.cache_dir),
            node_models: graph
                .nodes
                .iter()
                .map(|n| (n.model.name.clone(), n.model.batch))
                .collect(),
            models: batch_models(config, graph, records, secrets)?,
            collected: HashMap::new(),
            live: HashSet::new(),
            queued: Mutex::new(BTreeMap::new()),
            queued_keys: Mutex::new(HashSet::new()),
            summary: BatchSummary::default(),
        })
    }

    /// What node `node` gets for `request` (whose key is `key`) from batches.
    pub(crate) fn answer(&self, node: usize, request: &Request, key: &ArtifactKey) -> BatchAnswer {
        let (name, batched) = &self.node_models[node];
        // A model with answers in the ledger but out of batch mode now still takes them: they
        // are paid for.
        let Some(model) = self.models.get(name) else {
            return BatchAnswer::Unbatched;
        };
        if let Some(collected) = self.collected.get(key) {
            if let Some(body) = collected.answers.last() {
                match model.client.response(body, request) {
                    Ok(response) => return BatchAnswer::Ready(Ok(response)),
                    Err(e @ (ProviderError::Invalid(_) | ProviderError::Malformed(_)))
                        if collected.answers.len()
                            >= model.config.limits.max_invalid_attempts as usize =>
                    {
                        return BatchAnswer::Ready(Err(e));
                    }
                    // Asked for again, as the synchronous path retries an invalid reply.
                    Err(ProviderError::Invalid(_) | ProviderError::Malformed(_)) => {}
                    Err(e) => return BatchAnswer::Ready(Err(e)),
                }
            } else if let Some(reason) = &collected.refused {
                return BatchAnswer::Ready(Err(ProviderError::Fatal(format!(
                    "{} model `{}` refused the request in a batch: {reason}",
                    model.config.provider, model.config.model
                ))));
            } else if collected.unanswered >= model.config.limits.max_attempts {
                // As the synchronous path gives up after `max_attempts` failed attempts.
                return BatchAnswer::Ready(Err(ProviderError::Transient(format!(
                    "{} model `{}`: {} batches ended without answering the request (last: {}); gave up",
                    model.config.provider,
                    model.config.model,
                    collected.unanswered,
                    collected.last_reason
                ))));
            }
        }
        // In a live batch: paying for it again now would pay twice.
        if self.live.contains(key) || lock(&self.queued_keys).contains(key) {
            return BatchAnswer::Waiting;
        }
        if !batched {
            return BatchAnswer::Unbatched;
        }
        BatchAnswer::Needed
    }

    /// Queues `request` (node `node` of ticket `ticket`, key `key`) for the next batch.
    pub(crate) fn queue(&self, node: usize, ticket: u64, request: &Request, key: &ArtifactKey) {
        let (name, _) = &self.node_models[node];
        let Some(model) = self.models.get(name) else {
            return;
        };
        if lock(&self.queued_keys).insert(*key) {
            lock(&self.queued)
                .entry(name.clone())
                .or_default()
                .push(Queued {
                    ticket,
                    key: *key,
                    body: model.client.body(request),
                });
        }
    }

    /// Submits what the pass queued, each batch recorded before and after its creation. Returns
    /// the pass's summary.
    /// With `send` false (the build was interrupted) nothing is submitted: the next pass queues
    /// the same requests again.
    pub(crate) async fn submit(&self, send: bool) -> Result<BatchSummary, BuildError> {
        let mut queued = std::mem::take(&mut *lock(&self.queued));
        if !send {
            queued.clear();
        }
        let mut summary = self.summary.clone();
        let mut problems = Vec::new();
        for (name, requests) in queued {
            let model = &self.models[&name];
            let (most, bytes) = model.client.capacity();
            for chunk in chunks(&requests, most, bytes) {
                match self.submit_one(&name, model, chunk).await {
                    Ok(()) => {
                        summary.submitted_batches += 1;
                        summary.submitted_requests += chunk.len() as u64;
                    }
                    Err(e) => problems.push(e),
                }
            }
        }
        for record in self.ledger.records()? {
            if matches!(record.state, BatchState::Live | BatchState::Submitting) {
                summary.live_batches += 1;
                summary.live_requests += record.keys.len() as u64;
            }
            summary.ledger_cost_usd += record.cost_usd.unwrap_or(0.0);
        }
        if !problems.is_empty() {
            return Err(BuildError::Task(format!(
                "cannot submit a batch: {}",
                problems.join("; ")
            )));
        }
        Ok(summary)
    }

    /// Marks `done` every ended batch whose requests all have their answer in `store` (from it
    /// or a later batch), and forgets its results. A batch with a request still unanswered stays
    /// `ended`: its results count the attempts, and say why a request was refused.
    pub(crate) fn settle(&self, store: &dyn ArtifactStore) -> Result<(), BuildError> {
        for mut record in self.ledger.records()? {
            if record.state != BatchState::Ended || record.tickets.len() != record.keys.len() {
                continue;
            }
            let mut all_stored = true;
            for (key, ticket) in record.keys.iter().zip(&record.tickets) {
                let stored = match ArtifactKey::from_hex(key) {
                    Some(key) => matches!(store.get(*ticket, &key)?, crate::cache::Lookup::Hit(_)),
                    None => false,
                };
                if !stored {
                    all_stored = false;
                    break;
                }
            }
            if all_stored {
                record.state = BatchState::Done;
                self.ledger.write(&record)?;
                self.ledger.drop_results(&record.tag)?;
            }
        }
        Ok(())
    }

    async fn submit_one(
        &self,
        name: &str,
        model: &BatchModel,
        chunk: &[Queued],
    ) -> Result<(), String> {
        let now = now_ms();
        let mut hasher = blake3::Hasher::new();
        hasher.update(name.as_bytes());
        hasher.update(&now.to_le_bytes());
        for queued in chunk {
            hasher.update(&queued.key.0);
        }
        let tag = hasher.finalize().to_hex()[..24].to_string();
        let mut record = BatchRecord {
            tag: tag.clone(),
            model: name.to_string(),
            provider: model.config.provider.name().to_string(),
            id: None,
            keys: chunk.iter().map(|q| q.key.to_hex()).collect(),
            tickets: chunk.iter().map(|q| q.ticket).collect(),
            submitted_unix_ms: now,
            state: BatchState::Submitting,
            status: "submitting".to_string(),
            succeeded: 0,
            failed: 0,
            cost_usd: None,
        };
        // Recorded before it exists: a crash after the provider created it is then recovered
        // from the listing, never submitted twice.
        self.ledger.write(&record).map_err(|e| e.to_string())?;
        let items: Vec<(String, Value)> = chunk
            .iter()
            .map(|q| (q.key.to_hex(), q.body.clone()))
            .collect();
        let created = model
            .client
            .create(&tag, &items)
            .await
            .map_err(|e| e.to_string())?;
        record.id = Some(created.id.clone());
        record.state = BatchState::Live;
        record.status = created.status;
        self.ledger.write(&record).map_err(|e| e.to_string())
    }

    /// Brings every record up to date with its provider: recovers batches whose creation was
    /// not recorded, reads the state of live ones and collects those that ended. Returns how
    /// many were collected.
    async fn update(&self, records: Vec<BatchRecord>) -> Result<u64, BuildError> {
        let mut collected = 0;
        let known: HashSet<String> = records.iter().filter_map(|r| r.id.clone()).collect();
        let mut claimed = known.clone();
        for mut record in records {
            let Some(model) = self.models.get(&record.model) else {
                continue;
            };
            if record.state == BatchState::Submitting {
                match recover(&model.client, &record, &claimed).await? {
                    Some(found) => {
                        claimed.insert(found.id.clone());
                        record.id = Some(found.id);
                        record.state = BatchState::Live;
                        self.ledger.write(&record)?;
                    }
                    None => {
                        // Never created: its requests are queued again by this pass's walk.
                        self.ledger.remove(&record.tag)?;
                        continue;
                    }
                }
            }
            if record.state != BatchState::Live {
                continue;
            }
            let Some(id) = record.id.clone() else {
                continue;
            };
            let batch = model.client.get(&id).await.map_err(task)?;
            record.status = batch.status.clone();
            record.succeeded = batch.succeeded;
            record.failed = batch.failed;
            if batch.ended {
                self.collect(model, &mut record, &batch).await?;
                collected += 1;
            }
            self.ledger.write(&record)?;
        }
        Ok(collected)
    }

    /// Reads an ended batch's results into the ledger (durably, before its record says ended).
    async fn collect(
        &self,
        model: &BatchModel,
        record: &mut BatchRecord,
        batch: &RemoteBatch,
    ) -> Result<(), BuildError> {
        let results = model.client.results(batch).await.map_err(task)?;
        let ours: HashSet<&str> = record.keys.iter().map(String::as_str).collect();
        let price = &model.price;
        let mut lines = Vec::with_capacity(record.keys.len());
        let mut seen = HashSet::new();
        let mut cost = 0.0;
        let (mut succeeded, mut failed) = (0, 0);
        let results_were_foreign = !results.is_empty();
        for (custom_id, outcome) in results {
            // A custom id that is not ours, or a second result for one: not trusted.
            if !ours.contains(custom_id.as_str()) || !seen.insert(custom_id.clone()) {
                continue;
            }
            lines.push(match outcome {
                ItemOutcome::Answered(body) => {
                    succeeded += 1;
                    if let (Some(price), Some(usage)) = (price, model.client.usage(&body)) {
                        cost += price.batch_cost(&usage);
                    }
                    ResultLine {
                        key: custom_id,
                        answer: Some(body),
                        unanswered: None,
                        retry: false,
                    }
                }
                ItemOutcome::Unanswered { reason, retry } => {
                    failed += 1;
                    ResultLine {
                        key: custom_id,
                        answer: None,
                        unanswered: Some(reason),
                        retry,
                    }
                }
            });
        }
        if seen.is_empty() && !record.keys.is_empty() && results_were_foreign {
            return Err(BuildError::Task(format!(
                "batch {} at the provider holds none of the requests ticketbuild recorded for it (batch {} of model `{}`); it is another build's: remove `{}` from cache/batches/ and build again",
                batch.id, record.tag, record.model, record.tag
            )));
        }
        for key in &record.keys {
            if !seen.contains(key) {
                failed += 1;
                lines.push(ResultLine {
                    key: key.clone(),
                    answer: None,
                    unanswered: Some("no result for this request".to_string()),
                    retry: true,
                });
            }
        }
        self.ledger.write_results(&record.tag, &lines)?;
        record.state = BatchState::Ended;
        record.succeeded = succeeded;
        record.failed = failed;
        record.cost_usd = Some(cost);
        Ok(())
    }

    /// Reads the ledger's live keys and collected answers.
    fn load(&mut self) -> Result<(), BuildError> {
        for record in self.ledger.records()? {
            match record.state {
                BatchState::Live | BatchState::Submitting => {
                    self.live
                        .extend(record.keys.iter().filter_map(|k| ArtifactKey::from_hex(k)));
                }
                BatchState::Ended => {
                    for line in self.ledger.results(&record.tag)? {
                        let Some(key) = ArtifactKey::from_hex(&line.key) else {
                            continue;
                        };
                        let collected = self.collected.entry(key).or_default();
                        match (line.answer, line.unanswered) {
                            (Some(body), _) => collected.answers.push(body),
                            (None, Some(reason)) if !line.retry => {
                                collected.refused = Some(reason);
                            }
                            (None, Some(reason)) => {
                                collected.unanswered += 1;
                                collected.last_reason = reason;
                            }
                            (None, None) => {}
                        }
                    }
                }
                BatchState::Done => {}
            }
        }
        Ok(())
    }
}

/// The batch models of a build: every node model in batch mode, and the model of every ledger
/// record still to collect (a model taken out of batch mode still gets its paid answers).
fn batch_models(
    settings: &Config,
    graph: &Graph,
    records: &[BatchRecord],
    secrets: &Secrets,
) -> Result<BTreeMap<String, BatchModel>, BuildError> {
    let mut wanted: BTreeMap<String, ModelConfig> = BTreeMap::new();
    for node in graph.nodes.iter().filter(|n| n.model.batch) {
        wanted.insert(node.model.name.clone(), node.model.clone());
    }
    for record in records.iter().filter(|r| r.state != BatchState::Done) {
        if let Some(model) = settings.models.get(&record.model) {
            let mut model = model.clone();
            model.batch = true;
            wanted.entry(record.model.clone()).or_insert(model);
        }
    }
    let mut models = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, config) in wanted {
        match provider::batch_client(&config, secrets) {
            Ok(Some(client)) => {
                let price = config.price(&settings.cost.prices);
                models.insert(
                    name,
                    BatchModel {
                        config,
                        client,
                        price,
                    },
                );
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("model `{name}`: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(BuildError::Providers(problems.join("; ")));
    }
    Ok(models)
}

/// The provider's batch that `record` (created, but never recorded as such) is, if it exists.
async fn recover(
    client: &BatchClient,
    record: &BatchRecord,
    claimed: &HashSet<String>,
) -> Result<Option<RemoteBatch>, BuildError> {
    // The batch was created after the record was written and before its creation's request
    // timed out (a little slack either way for clocks that differ).
    let written = record.submitted_unix_ms / 1000;
    let listed = client
        .list(written.saturating_sub(CLOCK_SLACK_SECS))
        .await
        .map_err(task)?;
    let in_window = |b: &RemoteBatch| {
        b.created_unix.is_some_and(|at| {
            at + CLOCK_SLACK_SECS >= written
                && at <= written + CREATE_TIMEOUT_SECS + CLOCK_SLACK_SECS
        })
    };
    let mut unclaimed: Vec<RemoteBatch> = listed
        .into_iter()
        .filter(|b| !claimed.contains(&b.id))
        .collect();
    unclaimed.sort_by_key(|b| b.created_unix);
    let candidates: Vec<RemoteBatch> = match client.api() {
        BatchApi::OpenAi => unclaimed
            .into_iter()
            .filter(|b| b.tag.as_deref() == Some(record.tag.as_str()))
            .collect(),
        // No metadata: the input file's name carries the tag.
        BatchApi::Together => {
            let mut found = Vec::new();
            for batch in unclaimed.into_iter().filter(in_window) {
                let name = client.input_file_name(&batch).await.map_err(task)?;
                if name.is_some_and(|n| names_input_of(&n, &record.tag)) {
                    found.push(batch);
                }
            }
            found
        }
        // No metadata and no file: a batch of the same size created in the window.
        BatchApi::OpenRouter | BatchApi::Anthropic => unclaimed
            .into_iter()
            .filter(|b| b.total == record.keys.len() as u64 && in_window(b))
            .collect(),
    };
    match candidates.len() {
        0 | 1 => Ok(candidates.into_iter().next()),
        // Guessing could collect another build's batch and pay again for this one's.
        n => Err(BuildError::Task(format!(
            "batch {} of model `{}` was created but not recorded (a build stopped in between), and {n} batches at the provider could be it; cancel the wrong ones or remove `{}` from cache/batches/ once you know which is which",
            record.tag, record.model, record.tag
        ))),
    }
}

/// Seconds two clocks (this machine's, the provider's) may disagree by.
const CLOCK_SLACK_SECS: u64 = 120;
/// The longest a batch's creation request may take (the client's timeout).
const CREATE_TIMEOUT_SECS: u64 = 600;

/// `requests` in runs of at most `most` requests and `bytes` bytes of bodies.
fn chunks(requests: &[Queued], most: usize, bytes: usize) -> Vec<&[Queued]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, queued) in requests.iter().enumerate() {
        // A line is its body plus the custom id and envelope, under 200 bytes.
        let line = queued.body.to_string().len() + 200;
        if i > start && (i - start >= most || size + line > bytes) {
            out.push(&requests[start..i]);
            (start, size) = (i, 0);
        }
        size += line;
    }
    if start < requests.len() {
        out.push(&requests[start..]);
    }
    out
}

fn task(e: impl std::fmt::Display) -> BuildError {
    BuildError::Task(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain collections: a panic mid-update leaves nothing half-done that matters here.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
