//! One ticket through the graph: where a ticket is built.
//!
//! This module owns the walk of one ticket's nodes in dependency order: deciding a node's `when`,
//! rendering its request over the ticket's [`TicketContext`], looking its key up among the
//! ticket's stored artifacts, and either reusing the answer or generating it (`spend`). In
//! [`Mode::Plan`] nothing is generated: a miss is recorded as [`NodeState::Missing`] with the key
//! it would be generated under. In [`Mode::Replay`] nothing is generated either: a ticket that
//! finished far ahead of its turn is walked again from the cache, to the same outcome. The
//! invariants: a node runs only when its upstream nodes are done (a failed upstream fails it, a
//! skipped one is `none` in its template); a paid answer is durable before its text goes into a
//! downstream prompt; and the ticket's answers that may wait (the reproducible offline model's,
//! those read through from the remote cache) are durable before the ticket counts as done, the
//! offline model's only when the build reports them (see `generate_draw`).

pub(crate) use super::context::TicketContext;
use super::spend::{Asked, GenerateError};
use super::{BuildError, Engine, NodeStats};
use crate::cache::{Artifact, ArtifactSummary, Lookup, MissReason, RequestLayout, TicketArtifacts};
use crate::graph::Node;
use crate::key::ArtifactKey;
use crate::output::{Failure, LineageEntry};
use crate::provider::{OfflineInputs, Request};
use crate::quality::{Judged, Rejection};
use crate::sampling::TicketSample;
use crate::value::NodeOutput;

/// Whether a walk may call models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Reuse what is cached, generate what is not.
    Build,
    /// Reuse what is cached, record what is not: `plan`, `status` and `explain`. Calls nothing.
    Plan,
    /// Read back what this build stored for a ticket that finished far ahead of its turn to be
    /// written. Calls nothing; `--force` does not apply (the answers were just made), and a miss
    /// is an error (the answers were durable before the ticket counted as done). `generated` is
    /// the first walk's [`TicketOutcome::generated_lookups`]: those hits count as generated in
    /// this build, as the first walk counted them.
    Replay { generated: u64 },
}

/// What became of one node for one ticket.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeState {
    /// The output, reused or generated, under its key.
    Done(NodeOutput, ArtifactKey),
    /// The node's `when` condition was false.
    Skipped,
    /// The node (or a node it depends on) failed.
    Failed,
    /// Planning only: not cached; this is the key it would be generated under.
    Missing(ArtifactKey),
    /// Planning only: an upstream node is missing, so the request cannot be rendered yet.
    Blocked,
}

impl NodeState {
    pub(crate) fn key(&self) -> Option<ArtifactKey> {
        match self {
            NodeState::Done(_, key) | NodeState::Missing(key) => Some(*key),
            _ => None,
        }
    }
}

/// One ticket after the build (or the plan) walked its nodes.
#[derive(Debug)]
pub(crate) struct TicketOutcome {
    pub(crate) sample: TicketSample,
    /// In graph order.
    pub(crate) states: Vec<NodeState>,
    pub(crate) failure: Option<Failure>,
    pub(crate) stats: Vec<NodeStats>,
    /// Nodes generated in this build, with their keys.
    pub(crate) generated: Vec<(usize, ArtifactKey)>,
    /// How each node's output was made, in graph order (`None` when it has no artifact).
    pub(crate) lineage: Vec<Option<LineageEntry>>,
    /// Planning only: the rendered request text (system and user) of each missing node.
    pub(crate) pending_prompts: Vec<Option<String>>,
    /// Per node, the draws its checks rejected in this walk, with why.
    pub(crate) rejected: Vec<Vec<(u32, Rejection)>>,
    /// The keys of every rejected draw: paid for, kept from gc by the manifest.
    pub(crate) rejected_keys: Vec<ArtifactKey>,
    /// Draws looked up in this walk.
    pub(crate) lookups: u32,
    /// The lookups that generated, as a bit set over their numbers in walk order (the first
    /// 64): with it a replay of the ticket counts what this walk generated.
    pub(crate) generated_lookups: u64,
    /// A forced node stored its answer under a key this walk had already used (two nodes that
    /// send the same request): the cache no longer holds what the earlier node used, so a replay
    /// would differ.
    pub(crate) overwrote: bool,
}

impl TicketOutcome {
    /// Whether a built ticket waits for a batch: a node's answer is in a live batch or queued
    /// for the next (batch mode), so the ticket has no row yet.
    pub(crate) fn awaits_batch(&self) -> bool {
        self.failure.is_none()
            && self
                .states
                .iter()
                .any(|s| matches!(s, NodeState::Missing(_)))
    }

    /// Whether a walk in [`Mode::Replay`] gives this outcome back from the cache alone, the same
    /// in every field: every answer it used or rejected is cached (a failed ticket's failure
    /// is not), none was found corrupt (a replay would find it regenerated) or replaced by a
    /// forced node ([`TicketOutcome::overwrote`]), and its lookups fit the bit set.
    pub(crate) fn replayable(&self) -> bool {
        self.failure.is_none()
            && !self.awaits_batch()
            && !self.overwrote
            && self.lookups <= u64::BITS
            && self.stats.iter().all(|s| s.corrupt == 0)
    }
}

/// A ticket walked again because it duplicated an earlier one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Redraw<'a> {
    /// The node that draws anew.
    pub(crate) node: usize,
    /// The round (1 for the first redraw): the node's draws follow those of earlier rounds.
    pub(crate) round: u32,
    /// What earlier versions of the ticket generated in this build.
    pub(crate) generated_before: &'a [ArtifactKey],
}

/// One ticket's walk in progress: its context and what each node came to.
struct Walk {
    sample: TicketSample,
    mode: Mode,
    context: TicketContext,
    states: Vec<NodeState>,
    stats: Vec<NodeStats>,
    failure: Option<Failure>,
    generated: Vec<(usize, ArtifactKey)>,
    lineage: Vec<Option<LineageEntry>>,
    pending_prompts: Vec<Option<String>>,
    /// Every node's lookup is answered from one read of the ticket's stored artifacts.
    stored: TicketArtifacts,
    /// Answers put that must be durable before the ticket counts as done (read through from the
    /// remote cache, or reproducible ones the build reports); one wait covers them all.
    awaiting_commit: bool,
    /// Reproducible answers generated in this walk, put together when it ends.
    held: Vec<Artifact>,
    /// Per node, the draws the checks rejected in this walk, with why.
    rejected: Vec<Vec<(u32, Rejection)>>,
    /// The keys of those draws: paid for, so the manifest keeps them from gc.
    rejected_keys: Vec<ArtifactKey>,
    /// A duplicate ticket's redraw: the node that draws anew, and the round.
    redraw: Option<(usize, u32)>,
    /// Keys generated in this build by earlier versions of this ticket (before it was found a
    /// duplicate): found in the cache now, but paid for in this build, and counted so.
    generated_before: Vec<ArtifactKey>,
    /// Lookups made so far (one per draw looked up).
    lookups: u32,
    /// The lookups of this walk that generated, as a bit set (the first 64).
    generated_lookups: u64,
    /// See [`TicketOutcome::overwrote`].
    overwrote: bool,
}

impl Walk {
    /// Records the ticket's first failure (the one its row is reported with) and fails the node.
    fn fail(&mut self, i: usize, node: &Node, reason: impl FnOnce() -> String) -> NodeState {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                ticket_id: self.sample.ticket_id.to_string(),
                index: self.sample.index,
                node: node.name.clone(),
                reason: reason(),
            });
        }
        self.stats[i].failed += 1;
        NodeState::Failed
    }

    /// Whether lookup `number`, a hit on `key`, was generated in this build by an earlier walk
    /// of the ticket: then it counts as generated, as that walk counted it.
    fn generated_earlier(&self, number: u32, key: &ArtifactKey) -> bool {
        let replayed = match self.mode {
            Mode::Replay { generated } => number < u64::BITS && generated & (1 << number) != 0,
            _ => false,
        };
        replayed || self.generated_before.contains(key)
    }

    fn skip(&mut self, i: usize, node: &Node) -> NodeState {
        self.stats[i].skipped += 1;
        self.context.set_skipped(&node.name);
        NodeState::Skipped
    }
}

impl Engine {
    /// Runs every node of one ticket. Errors returned here stop the build (the cache failed);
    /// node failures are part of the outcome.
    pub(super) async fn run_ticket(
        &self,
        index: u64,
        mode: Mode,
    ) -> Result<TicketOutcome, BuildError> {
        self.walk_ticket(index, mode, None).await
    }

    /// Like [`Engine::run_ticket`], for a ticket redrawn because it duplicated an earlier one:
    /// `redraw` names the node that draws anew and the round (its draws follow the earlier
    /// rounds'); the nodes downstream of it follow from their new prompts.
    pub(super) async fn run_ticket_redrawn(
        &self,
        index: u64,
        mode: Mode,
        redraw: Option<Redraw<'_>>,
    ) -> Result<TicketOutcome, BuildError> {
        self.walk_ticket(index, mode, redraw).await
    }

    async fn walk_ticket(
        &self,
        index: u64,
        mode: Mode,
        redraw: Option<Redraw<'_>>,
    ) -> Result<TicketOutcome, BuildError> {
        let sample = self.sampler.sample(index);
        let nodes = self.graph.nodes.len();
        let mut walk = Walk {
            context: TicketContext::new(&self.config, &sample),
            stored: self.store.ticket_artifacts(index)?,
            sample,
            mode,
            states: Vec::with_capacity(nodes),
            stats: vec![NodeStats::default(); nodes],
            failure: None,
            generated: Vec::new(),
            lineage: vec![None; nodes],
            pending_prompts: vec![None; nodes],
            awaiting_commit: false,
            held: Vec::new(),
            rejected: vec![Vec::new(); nodes],
            rejected_keys: Vec::new(),
            redraw: redraw.map(|r| (r.node, r.round)),
            generated_before: redraw
                .map(|r| r.generated_before.to_vec())
                .unwrap_or_default(),
            lookups: 0,
            generated_lookups: 0,
            overwrote: false,
        };
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let state = self.run_node(&mut walk, i, node).await?;
            if let NodeState::Done(output, _) = &state {
                walk.context.set_output(&node.name, output);
            }
            walk.states.push(state);
        }
        if !walk.held.is_empty() {
            self.store.put_ticket(index, &walk.held)?;
            for artifact in &walk.held {
                let forced = self.options.force.contains(&artifact.node);
                self.upload_generated(index, &artifact.key, forced);
            }
        }
        if walk.awaiting_commit {
            self.commit.durable().await?;
        }
        Ok(TicketOutcome {
            sample: walk.sample,
            states: walk.states,
            failure: walk.failure,
            stats: walk.stats,
            generated: walk.generated,
            lineage: walk.lineage,
            pending_prompts: walk.pending_prompts,
            rejected: walk.rejected,
            rejected_keys: walk.rejected_keys,
            lookups: walk.lookups,
            generated_lookups: walk.generated_lookups,
            overwrote: walk.overwrote,
        })
    }

    /// One node of a walk: decided, rendered, then reused, generated or (planning) recorded.
    async fn run_node(
        &self,
        walk: &mut Walk,
        i: usize,
        node: &Node,
    ) -> Result<NodeState, BuildError> {
        let upstream =
            |pick: fn(&NodeState) -> bool| node.upstream.iter().any(|u| pick(&walk.states[*u]));
        // Nodes that do not depend on a failed node still run: their artifacts are cached for the
        // next build even though this ticket's row will not be written.
        if upstream(|s| matches!(s, NodeState::Failed)) {
            walk.stats[i].failed += 1;
            return Ok(NodeState::Failed);
        }
        let context = walk.context.template_value();
        if upstream(|s| matches!(s, NodeState::Missing(_) | NodeState::Blocked)) {
            // A condition that does not read the missing outputs can still be decided now
            // (`language != 'EN'`), so the plan does not count skipped nodes as work.
            if let Ok(false) = self.graph.should_run(node, &context) {
                return Ok(walk.skip(i, node));
            }
            walk.stats[i].generated += 1;
            return Ok(NodeState::Blocked);
        }
        match self.graph.should_run(node, &context) {
            Ok(true) => {}
            Ok(false) => return Ok(walk.skip(i, node)),
            Err(e) => {
                return Ok(walk.fail(i, node, || format!("`when` failed: {}", render_error(&e))));
            }
        }
        let request = match self.request(node, &context, &walk.context, walk.sample.sample_seed) {
            Ok(request) => request,
            Err(e) => {
                return Ok(walk.fail(i, node, || {
                    format!(
                        "cannot render {}: {}",
                        node.prompt_display.display(),
                        render_error(&e)
                    )
                }));
            }
        };
        self.draw(walk, i, node, &request).await
    }

    /// Asks for `node`'s answer draw after draw until one passes the node's checks: each draw is
    /// looked up first and generated (paid, made durable) only when it is not cached; a rejected
    /// draw stays in the cache, so a rebuild judges it again instead of paying for it again.
    async fn draw(
        &self,
        walk: &mut Walk,
        i: usize,
        node: &Node,
        request: &Request,
    ) -> Result<NodeState, BuildError> {
        let checks = node.config.checks.as_ref();
        let draws = checks.map_or(1, |c| c.max_draws);
        // A ticket redrawn for being a duplicate starts this node's draws after the ones its
        // earlier rounds used.
        let first = match walk.redraw {
            Some((node, round)) if node == i => round * draws,
            _ => 0,
        };
        let mut rejected: Vec<(u32, Rejection)> = Vec::new();
        for number in first..first + draws {
            let redrawn;
            let request = if number == 0 {
                request
            } else {
                redrawn = request.redraw(number);
                &redrawn
            };
            let key = request.key();
            let forced = !matches!(walk.mode, Mode::Replay { .. })
                && self.options.force.contains(&node.name);
            let lookup = if forced {
                walk.overwrote |= walk.states.iter().any(|s| s.key() == Some(key))
                    || walk.rejected_keys.contains(&key);
                Lookup::Miss(MissReason::Forced)
            } else {
                walk.stored.get(self.store.as_ref(), &key)?
            };
            let lookup_number = walk.lookups;
            walk.lookups += 1;
            let (artifact, generated) = match lookup {
                Lookup::Hit(artifact) => {
                    let generated = walk.generated_earlier(lookup_number, &artifact.key);
                    // A replay gives back the first walk's list of what it generated; a
                    // duplicate's redraw lists only what it generated itself (the earlier
                    // versions' answers are listed with them).
                    if generated && matches!(walk.mode, Mode::Replay { .. }) {
                        walk.generated.push((i, key));
                    }
                    (*artifact, generated)
                }
                Lookup::Miss(reason) => {
                    if matches!(reason, MissReason::Corrupt(_)) {
                        walk.stats[i].corrupt += 1;
                    }
                    match walk.mode {
                        Mode::Plan => return Ok(record_missing(walk, i, request, key, rejected)),
                        Mode::Replay { .. } => {
                            return Err(BuildError::Task(format!(
                                "ticket {}: the answer of `{}` stored earlier in this build can no longer be read from the cache ({}); `ticketbuild cache verify` checks every entry",
                                walk.sample.ticket_id,
                                node.name,
                                describe(&reason)
                            )));
                        }
                        Mode::Build => {}
                    }
                    if let Some(artifact) =
                        self.read_through(walk.sample.index, &key, &reason).await?
                    {
                        walk.awaiting_commit = true;
                        walk.stored.add_generated(artifact.clone());
                        (artifact, false)
                    } else {
                        match self.generate_draw(walk, i, node, request, key).await? {
                            Ok(artifact) => (artifact, true),
                            Err(failed) => return Ok(failed),
                        }
                    }
                }
            };
            if generated && lookup_number < u64::BITS {
                walk.generated_lookups |= 1 << lookup_number;
            }
            let verdict = match checks {
                Some(checks) => {
                    crate::quality::judge(checks, &artifact.output, walk.sample.language)
                }
                None => Ok(Judged::default()),
            };
            match verdict {
                Ok(judged) => {
                    walk.rejected[i] = rejected;
                    walk.stats[i].language_checked += u64::from(judged.language_checked);
                    walk.stats[i].language_unsure += u64::from(judged.language_unsure);
                    return Ok(self.accept(walk, i, artifact, generated));
                }
                Err(rejection) => {
                    self.count_rejected(walk, i, &artifact, generated, &rejection);
                    rejected.push((number, rejection));
                    if generated {
                        walk.stored.add_generated(artifact);
                    }
                }
            }
        }
        let reason = rejected_reason(&rejected);
        walk.rejected[i] = rejected;
        Ok(walk.fail(i, node, || reason))
    }

    /// An answer that passed its checks, reused or just generated: counted, and the node's state.
    fn accept(
        &self,
        walk: &mut Walk,
        i: usize,
        artifact: ArtifactSummary,
        generated: bool,
    ) -> NodeState {
        walk.stats[i].count_used(&artifact, generated, self.prices[i].as_ref());
        walk.lineage[i] = Some(LineageEntry::of(&artifact, generated));
        if !generated {
            return NodeState::Done(artifact.output, artifact.key);
        }
        // Later nodes of the ticket that send the same request find it, instead of paying again.
        let state = NodeState::Done(artifact.output.clone(), artifact.key);
        walk.stored.add_generated(artifact);
        state
    }

    /// A draw the checks rejected: paid for (now or in an earlier build), so counted as spent,
    /// and kept by the manifest so that gc does not throw away what was paid for.
    fn count_rejected(
        &self,
        walk: &mut Walk,
        i: usize,
        artifact: &ArtifactSummary,
        generated: bool,
        rejection: &Rejection,
    ) {
        let stats = &mut walk.stats[i];
        stats.rejected += 1;
        *stats
            .rejections
            .entry(rejection.kind.name().to_string())
            .or_default() += 1;
        if generated {
            stats.generated += 1;
            stats.input_tokens += artifact.usage.input_tokens;
            stats.output_tokens += artifact.usage.output_tokens;
            match artifact.cost_usd {
                Some(cost) => {
                    stats.cost_usd += cost;
                    stats.rejected_cost_usd += cost;
                }
                None => stats.unknown_cost += 1,
            }
        }
        walk.rejected_keys.push(artifact.key);
    }

    /// Generates one draw and makes it durable as its use requires. The outer error stops the
    /// build (the cache failed); the inner one is the node's failure.
    async fn generate_draw(
        &self,
        walk: &mut Walk,
        i: usize,
        node: &Node,
        request: &Request,
        key: ArtifactKey,
    ) -> Result<Result<ArtifactSummary, NodeState>, BuildError> {
        let upstream = node
            .upstream
            .iter()
            .filter_map(|u| match &walk.states[*u] {
                NodeState::Done(_, key) => Some((self.graph.nodes[*u].name.clone(), *key)),
                _ => None,
            })
            .collect();
        // A reproducible answer waits in the walk and is put with the ticket's others: one
        // write of the ticket's record instead of one per answer.
        let held = self.providers[i].reproducible().then_some(&mut walk.held);
        let artifact = match self
            .generate(
                i,
                Asked {
                    node,
                    request,
                    key,
                    upstream,
                },
                &walk.sample,
                held,
            )
            .await
        {
            Ok(artifact) => artifact,
            Err(GenerateError::Cache(e)) => return Err(e.into()),
            Err(GenerateError::Refused(refusal)) => {
                return Ok(Err(walk.fail(i, node, || refusal.to_string())));
            }
            Err(GenerateError::Provider(e)) => {
                return Ok(Err(walk.fail(i, node, || e.to_string())));
            }
            // Asked for in a batch: the node is missing until it is collected.
            Err(GenerateError::Deferred) => return Ok(Err(NodeState::Missing(key))),
        };
        // A paid response is durable before anything uses it: before its text goes into a
        // downstream prompt (a kill then would lose an answer already acted on), before a
        // rejected draw is followed by the next (a kill then would pay for it again) and before
        // the ticket counts as done. Group commits make this one shared flush for many answers,
        // not one each. A reproducible answer (the offline model) costs nothing and, lost, would
        // come back the same: it waits, once per ticket, only when the build reports what it
        // generated (`-vv`: a reported answer is durable, never to be asked for again); otherwise
        // the flush before the manifest is stored makes it durable with the rest.
        if self.providers[i].reproducible() {
            walk.awaiting_commit |= self.options.observer.reports_generated();
        } else {
            self.commit.durable().await?;
        }
        walk.generated.push((i, key));
        Ok(Ok(artifact))
    }

    /// The request `node` sends for a ticket in `context`.
    pub(super) fn request(
        &self,
        node: &Node,
        template: &minijinja::Value,
        context: &TicketContext,
        sample_seed: u64,
    ) -> Result<Request, minijinja::Error> {
        let rendered = self.graph.render(node, template)?;
        let (system, system_fills) = match rendered.system {
            Some((text, fills)) => (Some(text), fills),
            None => (None, Vec::new()),
        };
        let (user, user_fills) = rendered.user;
        let model = &node.model;
        let offline = model.provider.is_offline().then(|| {
            OfflineInputs::new(
                node.config.task.clone(),
                crate::offline::bank_fingerprint().to_string(),
                node.offline_inputs
                    .iter()
                    .filter_map(|name| context.json(name).map(|v| (name.clone(), v.clone())))
                    .collect(),
            )
        });
        Ok(Request {
            provider: model.provider.name().to_string(),
            base_url: model.base_url.clone(),
            model: model.model.clone(),
            params: model.params.clone(),
            output: node.config.output.clone(),
            system,
            user,
            offline,
            sample_seed,
            draw: 0,
            layout: Some(RequestLayout {
                system: system_fills,
                user: user_fills,
            }),
        })
    }

    /// The context of a walked ticket with every node that is done (or skipped) in it.
    pub(super) fn context_for(&self, outcome: &TicketOutcome) -> TicketContext {
        let mut context = TicketContext::new(&self.config, &outcome.sample);
        for (node, state) in self.graph.nodes.iter().zip(&outcome.states) {
            match state {
                NodeState::Done(output, _) => context.set_output(&node.name, output),
                NodeState::Skipped => context.set_skipped(&node.name),
                _ => {}
            }
        }
        context
    }
}

/// Why a lookup missed, for a message.
fn describe(reason: &MissReason) -> String {
    match reason {
        MissReason::New => "nothing is stored under its key".to_string(),
        MissReason::Corrupt(why) => format!("the entry does not decode: {why}"),
        MissReason::Forced => "regenerated by --force".to_string(),
    }
}

/// Planning: the key a missing node would be generated under, and the prompt it would send.
fn record_missing(
    walk: &mut Walk,
    i: usize,
    request: &Request,
    key: ArtifactKey,
    rejected: Vec<(u32, Rejection)>,
) -> NodeState {
    walk.rejected[i] = rejected;
    walk.stats[i].generated += 1;
    let mut text = request.system.clone().unwrap_or_default();
    text.push('\n');
    text.push_str(&request.user);
    walk.pending_prompts[i] = Some(text);
    NodeState::Missing(key)
}

/// Why a node failed when every draw was rejected: each draw with its reason.
fn rejected_reason(rejected: &[(u32, Rejection)]) -> String {
    let each: Vec<String> = rejected
        .iter()
        .map(|(number, rejection)| format!("draw {number}: {rejection}"))
        .collect();
    format!(
        "all {} draws rejected by the checks: {}",
        rejected.len(),
        each.join("; ")
    )
}

/// A template error as one line: what went wrong and where in the template.
fn render_error(error: &minijinja::Error) -> String {
    let mut message = error
        .detail()
        .map_or_else(|| error.kind().to_string(), str::to_string);
    if let Some(line) = error.line() {
        message.push_str(&format!(" (template line {line})"));
    }
    message
}
