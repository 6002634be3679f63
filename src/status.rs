//! Why things would re-run: `status` causes and `explain` diffs.
//!
//! This module owns the comparison between what a build would do now (a plan from the engine, which
//! calls no model) and what the last build recorded (its manifest): for every artifact that would be
//! generated it names one cause, checked in a fixed order (new, forced, prompt changed, model or
//! parameter changed, upstream output changed, ticket set changed, not in the cache), and for a
//! single field it shows a structural diff between the recorded request and the one that would be
//! sent now. It prints nothing; the CLI does. The invariant: a cause is derived from recorded facts
//! (fingerprints and keys), never guessed from timestamps.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::cache::{Cache, KeyChunks, RecordedRequest};
use crate::config::Config;
use crate::engine::{BuildError, Engine, NodeState, TicketOutcome};
use crate::graph::Graph;
use crate::manifest::{self, Manifest, ManifestKeys, NodeFingerprint};

/// What `ticketbuild status` shows: per node, what is up to date and what a build would
/// generate, and why.
#[derive(Debug, Serialize)]
pub(crate) struct ProjectStatus {
    /// When the build compared with (the last complete one) ran; `None` when there was none.
    pub(crate) compared_with_build_at_unix_ms: Option<u64>,
    pub(crate) dataset: String,
    pub(crate) nodes: Vec<NodeStatus>,
    pub(crate) tickets: u64,
}

/// Plans every ticket of `config` (calling no model) and compares with the last build recorded
/// in `cache`. `force` names nodes to count as forced, as `build --force` would.
pub(crate) async fn of_project(
    config: Config,
    graph: Graph,
    cache: Arc<dyn Cache>,
    force: &[String],
) -> Result<ProjectStatus, BuildError> {
    let previous = Manifest::last(cache.as_ref())?;
    let keys = previous.as_ref().map(|(id, manifest)| {
        collect_keys(manifest.nodes.len(), manifest.rows, |each| {
            // A manifest whose keys cannot be read compares as "never built", which is safe.
            let _ = cache.manifest_keys(*id, each);
        })
    });
    let current = manifest::fingerprints(&graph);
    let sample = manifest::sample_hash(&config);
    let upstream: Vec<Vec<usize>> = graph.nodes.iter().map(|n| n.upstream.clone()).collect();
    let mut builder = StatusBuilder::new(
        &current,
        config.seed,
        &sample,
        previous.as_ref().map(|(_, m)| m).zip(keys.as_ref()),
    );
    builder.force(
        graph
            .nodes
            .iter()
            .map(|n| force.contains(&n.name))
            .collect(),
    );
    let (dataset, tickets) = (config.name.clone(), config.rows);
    let engine = Engine::for_planning(Arc::new(config), Arc::new(graph), cache, force.to_vec());
    Arc::new(engine)
        .plan(|outcome| builder.add(&outcome, &upstream))
        .await?;
    Ok(ProjectStatus {
        compared_with_build_at_unix_ms: previous.as_ref().map(|(_, m)| m.created_unix_ms),
        dataset,
        nodes: builder.finish(),
        tickets,
    })
}

/// Why an artifact would be generated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "cause", content = "detail", rename_all = "snake_case")]
pub(crate) enum Cause {
    /// Never built: no earlier build had this node or this ticket.
    New,
    /// The user asked for it.
    Forced,
    /// The node's prompt file changed (the file).
    PromptChanged(String),
    /// The model or a parameter changed (`field: old -> new`).
    ModelChanged(String),
    /// An upstream node's output changed or will be generated (the node).
    UpstreamChanged(String),
    /// The tickets are drawn differently (seed, tables or languages).
    TicketSetChanged(String),
    /// The cached answer fails the node's checks (the kind of check): a new draw is needed.
    Rejected(String),
    /// Same inputs as recorded, but the artifact is not in the cache (removed by `cache gc`).
    NotCached,
}

impl Cause {
    pub(crate) fn describe(&self) -> String {
        match self {
            Cause::New => "new (never built)".to_string(),
            Cause::Forced => "forced".to_string(),
            Cause::PromptChanged(file) => format!("prompt changed ({file})"),
            Cause::ModelChanged(detail) => format!("model or parameter changed ({detail})"),
            Cause::UpstreamChanged(node) => format!("upstream output changed (`{node}`)"),
            Cause::TicketSetChanged(detail) => format!("ticket set changed ({detail})"),
            Cause::Rejected(kind) => {
                format!("cached answer fails its checks ({kind}): drawn again")
            }
            Cause::NotCached => "not in the cache".to_string(),
        }
    }
}

/// One node's status across all tickets.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct NodeStatus {
    pub(crate) name: String,
    pub(crate) up_to_date: u64,
    pub(crate) to_generate: u64,
    pub(crate) skipped: u64,
    pub(crate) failed: u64,
    /// Counts per cause, in the fixed order of causes.
    pub(crate) causes: Vec<CauseCount>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CauseCount {
    #[serde(flatten)]
    pub(crate) cause: Cause,
    pub(crate) count: u64,
}

/// Per-node facts computed once: what changed in the node itself since the manifest.
struct NodeChange {
    old_index: Option<usize>,
    prompt: Option<String>,
    model: Option<String>,
}

/// Accumulates a plan into per-node statuses.
pub(crate) struct StatusBuilder<'a> {
    previous: Option<(&'a Manifest, &'a ManifestKeys)>,
    changes: Vec<NodeChange>,
    ticket_set: Option<String>,
    nodes: Vec<(NodeStatus, BTreeMap<Cause, u64>)>,
    names: Vec<String>,
    forced: Vec<bool>,
}

impl<'a> StatusBuilder<'a> {
    pub(crate) fn new(
        current: &[NodeFingerprint],
        seed: u64,
        sample_hash: &str,
        previous: Option<(&'a Manifest, &'a ManifestKeys)>,
    ) -> StatusBuilder<'a> {
        let changes = current
            .iter()
            .map(|now| {
                let old_index =
                    previous.and_then(|(m, _)| m.nodes.iter().position(|n| n.name == now.name));
                let old = old_index.and_then(|i| previous.map(|(m, _)| &m.nodes[i]));
                NodeChange {
                    old_index,
                    prompt: old
                        .filter(|old| old.template_hash != now.template_hash)
                        .map(|_| now.prompt.clone()),
                    model: old.and_then(|old| model_change(old, now)),
                }
            })
            .collect();
        let ticket_set = previous.and_then(|(m, _)| {
            if m.seed != seed {
                Some(format!("seed {} -> {seed}", m.seed))
            } else if m.sample_hash != sample_hash {
                Some("tables or languages changed".to_string())
            } else {
                None
            }
        });
        StatusBuilder {
            previous,
            changes,
            ticket_set,
            nodes: current
                .iter()
                .map(|n| {
                    (
                        NodeStatus {
                            name: n.name.clone(),
                            ..NodeStatus::default()
                        },
                        BTreeMap::new(),
                    )
                })
                .collect(),
            names: current.iter().map(|n| n.name.clone()).collect(),
            forced: vec![false; current.len()],
        }
    }

    /// Marks the nodes forced with `--force`, in graph order.
    pub(crate) fn force(&mut self, forced: Vec<bool>) {
        self.forced = forced;
    }

    /// Adds one planned ticket. `upstream[i]` lists node i's upstream nodes.
    pub(crate) fn add(&mut self, outcome: &TicketOutcome, upstream: &[Vec<usize>]) {
        let index = outcome.sample.index;
        for (i, state) in outcome.states.iter().enumerate() {
            let rejected = outcome.rejected[i].last().map(|(_, r)| r.kind.name());
            let cause = match (state, rejected) {
                (NodeState::Missing(_), Some(kind)) => Some(Cause::Rejected(kind.to_string())),
                (NodeState::Missing(_) | NodeState::Blocked, _) => {
                    Some(self.cause(index, i, &outcome.states, upstream))
                }
                _ => None,
            };
            let (status, causes) = &mut self.nodes[i];
            match state {
                NodeState::Done(..) => status.up_to_date += 1,
                NodeState::Skipped => status.skipped += 1,
                NodeState::Failed => status.failed += 1,
                NodeState::Missing(_) | NodeState::Blocked => status.to_generate += 1,
            }
            if let Some(cause) = cause {
                *causes.entry(cause).or_insert(0) += 1;
            }
        }
    }

    fn cause(
        &self,
        ticket: u64,
        node: usize,
        states: &[NodeState],
        upstream: &[Vec<usize>],
    ) -> Cause {
        let Some((manifest, keys)) = self.previous else {
            return Cause::New;
        };
        let change = &self.changes[node];
        let Some(old_node) = change.old_index else {
            return Cause::New;
        };
        if ticket >= manifest.rows && self.ticket_set.is_none() {
            return Cause::New;
        }
        if self.forced.get(node).copied().unwrap_or(false) {
            return Cause::Forced;
        }
        if let Some(file) = &change.prompt {
            return Cause::PromptChanged(file.clone());
        }
        if let Some(detail) = &change.model {
            return Cause::ModelChanged(detail.clone());
        }
        for &u in &upstream[node] {
            let changed = match &states[u] {
                NodeState::Missing(_) | NodeState::Blocked => true,
                NodeState::Done(_, key) => {
                    let old_u = self.changes[u].old_index;
                    old_u.is_none_or(|old_u| keys.get(ticket, old_u) != Some(*key))
                }
                _ => false,
            };
            if changed {
                return Cause::UpstreamChanged(self.names[u].clone());
            }
        }
        if let Some(detail) = &self.ticket_set {
            return Cause::TicketSetChanged(detail.clone());
        }
        if keys.get(ticket, old_node).is_none() {
            return Cause::New;
        }
        Cause::NotCached
    }

    pub(crate) fn finish(self) -> Vec<NodeStatus> {
        self.nodes
            .into_iter()
            .map(|(mut status, causes)| {
                status.causes = causes
                    .into_iter()
                    .map(|(cause, count)| CauseCount { cause, count })
                    .collect();
                status
            })
            .collect()
    }
}

/// Why each node re-ran in a build, at node level, from the manifest of the build before it: the
/// node's own change if it has one, else the first upstream node that re-ran, else a changed ticket
/// set, else new tickets. `reran[i]` says whether node i generated anything. For `watch`, which
/// reports every rebuild without a per-artifact walk.
pub(crate) fn node_causes(
    previous: Option<&Manifest>,
    current: &[NodeFingerprint],
    seed: u64,
    sample_hash: &str,
    upstream: &[Vec<usize>],
    reran: &[bool],
) -> Vec<Option<Cause>> {
    let mut causes: Vec<Option<Cause>> = Vec::with_capacity(current.len());
    for (i, now) in current.iter().enumerate() {
        if !reran[i] {
            causes.push(None);
            continue;
        }
        let old = previous.and_then(|m| m.nodes.iter().find(|n| n.name == now.name));
        let cause = match (previous, old) {
            (None, _) | (_, None) => Cause::New,
            (Some(manifest), Some(old)) => {
                if old.template_hash != now.template_hash {
                    Cause::PromptChanged(now.prompt.clone())
                } else if let Some(detail) = model_change(old, now) {
                    Cause::ModelChanged(detail)
                } else if let Some(&u) = upstream[i].iter().find(|u| reran[**u]) {
                    Cause::UpstreamChanged(current[u].name.clone())
                } else if manifest.seed != seed {
                    Cause::TicketSetChanged(format!("seed {} -> {seed}", manifest.seed))
                } else if manifest.sample_hash != sample_hash {
                    Cause::TicketSetChanged("tables or languages changed".to_string())
                } else {
                    Cause::New
                }
            }
        };
        causes.push(Some(cause));
    }
    causes
}

/// What about a node's model changed, as `field: old -> new`, or `None`.
fn model_change(old: &NodeFingerprint, now: &NodeFingerprint) -> Option<String> {
    let mut changes = Vec::new();
    let mut compare = |field: &str, a: &str, b: &str| {
        if a != b {
            changes.push(format!("{field}: {a} -> {b}"));
        }
    };
    compare("provider", &old.provider, &now.provider);
    compare("model", &old.model, &now.model);
    compare(
        "base_url",
        old.base_url.as_deref().unwrap_or("(unset)"),
        now.base_url.as_deref().unwrap_or("(unset)"),
    );
    compare("output", &old.output_kind, &now.output_kind);
    changes.extend(param_changes(&old.params_json, &now.params_json));
    (!changes.is_empty()).then(|| changes.join(", "))
}

/// Parameter differences between two canonical JSON parameter sets.
pub(crate) fn param_changes(old: &str, now: &str) -> Vec<String> {
    let parse = |text: &str| -> BTreeMap<String, serde_json::Value> {
        serde_json::from_str(text).unwrap_or_default()
    };
    let (old, now) = (parse(old), parse(now));
    let mut names: Vec<&String> = old.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let show = |v: Option<&serde_json::Value>| {
                v.map_or_else(|| "(unset)".to_string(), |v| v.to_string())
            };
            let (a, b) = (old.get(name), now.get(name));
            (a != b).then(|| format!("{name}: {} -> {}", show(a), show(b)))
        })
        .collect()
}

/// A structural diff between a recorded request and the one that would be sent now: one line per
/// changed scalar field, and a line diff (`-`/`+`) of changed messages.
pub(crate) fn request_diff(old: &RecordedRequest, now: &RecordedRequest) -> Vec<String> {
    let mut out = Vec::new();
    let mut scalar = |field: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{field}: {a} -> {b}"));
        }
    };
    scalar("provider", old.provider.clone(), now.provider.clone());
    scalar("model", old.model.clone(), now.model.clone());
    scalar(
        "base_url",
        old.base_url.clone().unwrap_or_else(|| "(unset)".into()),
        now.base_url.clone().unwrap_or_else(|| "(unset)".into()),
    );
    scalar("output", old.output_kind.clone(), now.output_kind.clone());
    scalar(
        "sample_seed",
        old.sample_seed.to_string(),
        now.sample_seed.to_string(),
    );
    out.extend(
        param_changes(&old.params_json, &now.params_json)
            .into_iter()
            .map(|c| format!("param {c}")),
    );
    let messages = [
        (
            "system",
            old.system.clone().unwrap_or_default(),
            now.system.clone().unwrap_or_default(),
        ),
        ("user", old.user.clone(), now.user.clone()),
        (
            "offline inputs",
            old.offline
                .as_ref()
                .map(|o| o.1.clone())
                .unwrap_or_default(),
            now.offline
                .as_ref()
                .map(|o| o.1.clone())
                .unwrap_or_default(),
        ),
    ];
    for (name, a, b) in messages {
        if a == b {
            continue;
        }
        out.push(format!("{name} message:"));
        let diff = similar::TextDiff::from_lines(&a, &b);
        for change in diff.iter_all_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => "-",
                similar::ChangeTag::Insert => "+",
                similar::ChangeTag::Equal => continue,
            };
            out.push(format!(
                "  {sign} {}",
                change.value().trim_end_matches('\n')
            ));
        }
    }
    out
}

/// Loads every key of a manifest into memory (for `status`, not for builds).
fn collect_keys(nodes: usize, rows: u64, chunks: impl FnOnce(&mut KeyChunks<'_>)) -> ManifestKeys {
    let mut keys = vec![None; rows as usize * nodes];
    chunks(&mut |first, chunk, chunk_nodes| {
        if chunk_nodes != nodes {
            return;
        }
        let start = first as usize * nodes;
        for (offset, key) in chunk.iter().enumerate() {
            if let Some(slot) = keys.get_mut(start + offset) {
                *slot = *key;
            }
        }
    });
    ManifestKeys { nodes, keys }
}
