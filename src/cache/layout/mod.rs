//! Recorded requests stored as their template's text once and the values that filled it.
//!
//! A rendered prompt is mostly its template's text, and the values in it are often upstream
//! answers that the same ticket's record already holds. So a ticket record (see `record`) stores
//! an artifact "laid out": each message as the hash of its *shape* (the literal parts between its
//! values, kept once per cache under that hash) and the values in order, where a value that is an
//! upstream answer (a text node's output, or a field of a JSON node's) is its artifact's key
//! instead of a copy. `explain` and `cache verify` get the request back exactly as it was sent,
//! joined from those parts ([`expand`]); `verify` then hashes it and compares with the key, so a
//! changed shape or value shows.
//!
//! The invariants: joining the parts gives back the very bytes that were rendered (the split is
//! made from the rendered text, so any split joins back; see `graph::fills`); a value refers only
//! to an artifact in the same record, never to the artifact itself, and before a record loses or
//! replaces an artifact, the values that refer to it are written out in full ([`inline`]); a
//! shape is durable before any record names it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::artifact::RequestLayout;
use super::artifact::{Artifact, ArtifactSummary, RecordedRequest, encode};
use crate::cost::{PriceEntry, Usage};
use crate::hashing::DeriveKey;
use crate::key::ArtifactKey;
use crate::value::NodeOutput;

/// The hash a shape is stored under.
pub(crate) type ShapeId = [u8; 32];

/// The literal parts of a message around its values, one more than there are values.
pub(crate) type Shape = Vec<String>;

/// Values shorter than this are kept as text: a key is 32 bytes.
const SHORTEST_REFERENCE: usize = 40;

static SHAPE_HASHER: DeriveKey =
    DeriveKey::new(|| blake3::Hasher::new_derive_key("ticketbuild 2026-12-02 request shape 1"));

/// The id of the shape whose parts are `parts`.
pub(crate) fn shape_id<'a>(parts: impl IntoIterator<Item = &'a str>) -> ShapeId {
    let mut hasher = SHAPE_HASHER.gathered::<4096>();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    *hasher.finalize().as_bytes()
}

thread_local! {
    /// Shapes this thread hashed lately, with their ids. A template renders to a few shapes that
    /// come back ticket after ticket, and comparing parts costs a fraction of hashing them.
    static RECENT: std::cell::RefCell<Vec<(Shape, ShapeId)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// How many shapes [`RECENT`] keeps (a dataset's templates take a few dozen).
const RECENT_SHAPES: usize = 64;

/// [`shape_id`] of `parts`, from the recent shapes when it is one of them.
fn recent_shape_id(parts: &[&str]) -> ShapeId {
    RECENT.with_borrow_mut(|recent| {
        let same = |known: &Shape| {
            known.len() == parts.len() && known.iter().zip(parts).all(|(k, p)| k == p)
        };
        if let Some((_, id)) = recent.iter().find(|(known, _)| same(known)) {
            return *id;
        }
        let id = shape_id(parts.iter().copied());
        if recent.len() == RECENT_SHAPES {
            recent.remove(0);
        }
        recent.push((parts.iter().map(|p| (*p).to_string()).collect(), id));
        id
    })
}

/// A shape as stored: its parts, encoded.
pub(crate) fn encode_shape(parts: &[&str]) -> Vec<u8> {
    // Invariant: strings always encode.
    bincode::serde::encode_to_vec(parts, bincode::config::standard()).expect("strings encode")
}

/// A stored shape's parts, when its bytes decode and hash to `id`.
pub(crate) fn decode_shape(id: &ShapeId, bytes: &[u8]) -> Option<Shape> {
    let (parts, _): (Shape, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).ok()?;
    (shape_id(parts.iter().map(String::as_str)) == *id).then_some(parts)
}

/// Shapes already stored, by id, shared by every thread of a store. Bounded: a template whose
/// renderings take many shapes (a loop over a long list) only costs lookups once it is full.
#[derive(Default)]
pub(crate) struct Shapes {
    by_id: RwLock<HashMap<ShapeId, Arc<Shape>>>,
}

const SHAPES_HELD: usize = 4096;

impl Shapes {
    pub(crate) fn get(&self, id: &ShapeId) -> Option<Arc<Shape>> {
        self.by_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    pub(crate) fn hold(&self, id: ShapeId, shape: Arc<Shape>) {
        let mut by_id = self
            .by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if by_id.len() < SHAPES_HELD {
            by_id.insert(id, shape);
        }
    }
}

/// One value of a laid-out message (`S`: `String` as read, `&str` as written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Fill<S = String> {
    Text(S),
    /// A text node's answer.
    Upstream(ArtifactKey),
    /// One field of a JSON node's answer.
    UpstreamField(ArtifactKey, S),
}

/// A message laid out: its shape and values, or (no shape) the whole text as its one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LaidText<S = String> {
    shape: Option<ShapeId>,
    fills: Vec<Fill<S>>,
}

/// [`RecordedRequest`] with its messages laid out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LaidRequest<S = String> {
    provider: S,
    base_url: Option<S>,
    model: S,
    params_json: S,
    output_kind: S,
    system: Option<LaidText<S>>,
    user: LaidText<S>,
    offline: Option<(S, S)>,
    sample_seed: u64,
}

/// The leading fields of an [`Artifact`], borrowed, encoded as [`ArtifactSummary`] decodes them:
/// a laid-out artifact starts with the same bytes, so a build reads its summary as it reads any
/// other's.
#[derive(Serialize)]
struct SummaryRef<'a> {
    key: &'a ArtifactKey,
    node: &'a str,
    output: &'a NodeOutput,
    usage: &'a Usage,
    cost_usd: &'a Option<f64>,
    computed_cost_usd: &'a Option<f64>,
    price: &'a Option<PriceEntry>,
    served_model: &'a str,
    created_unix_ms: u64,
    latency_ms: u64,
    upstream: &'a [(String, ArtifactKey)],
}

/// One message split at its values: the literal parts (borrowed from the message) and the
/// values.
struct Split<'a> {
    shape: Option<ShapeId>,
    parts: Vec<&'a str>,
    values: Vec<&'a str>,
}

impl<'a> Split<'a> {
    fn of(text: &'a str, fills: Option<&[(u32, u32)]>) -> Split<'a> {
        let fills = fills.filter(|fills| well_formed(text, fills));
        let Some(fills) = fills else {
            return Split {
                shape: None,
                parts: Vec::new(),
                values: vec![text],
            };
        };
        let mut parts = Vec::with_capacity(fills.len() + 1);
        let mut values = Vec::with_capacity(fills.len());
        let mut at = 0;
        for &(start, end) in fills {
            parts.push(&text[at..start as usize]);
            values.push(&text[start as usize..end as usize]);
            at = end as usize;
        }
        parts.push(&text[at..]);
        Split {
            shape: Some(recent_shape_id(&parts)),
            parts,
            values,
        }
    }
}

/// Whether `fills` are ranges of `text`, in order, not overlapping, on character boundaries.
fn well_formed(text: &str, fills: &[(u32, u32)]) -> bool {
    let mut at = 0;
    fills.iter().all(|&(start, end)| {
        let ok = at <= start
            && start <= end
            && (end as usize) <= text.len()
            && text.is_char_boundary(start as usize)
            && text.is_char_boundary(end as usize);
        at = end;
        ok
    })
}

/// An artifact split for storing: what does not depend on the record it goes into (its shapes,
/// which are stored first), made once; then [`Laying::encode`] against the record.
pub(crate) struct Laying<'a> {
    artifact: &'a Artifact,
    system: Option<Split<'a>>,
    user: Split<'a>,
}

impl<'a> Laying<'a> {
    pub(crate) fn of(artifact: &'a Artifact) -> Laying<'a> {
        let request = &artifact.request;
        let layout = request.layout.as_ref();
        Laying {
            artifact,
            system: request
                .system
                .as_deref()
                .map(|text| Split::of(text, layout.map(|l| l.system.as_slice()))),
            user: Split::of(&request.user, layout.map(|l| l.user.as_slice())),
        }
    }

    pub(crate) fn key(&self) -> ArtifactKey {
        self.artifact.key
    }

    pub(crate) fn artifact(&self) -> &'a Artifact {
        self.artifact
    }

    /// The shapes this artifact's messages have, with their parts.
    pub(crate) fn shapes(&self) -> impl Iterator<Item = (ShapeId, &[&'a str])> {
        self.system
            .iter()
            .chain(std::iter::once(&self.user))
            .filter_map(|split| split.shape.map(|id| (id, split.parts.as_slice())))
    }

    /// The artifact laid out, its values that are upstream answers found by `answer` (the
    /// answers of the record it goes into) referred to by key.
    pub(crate) fn encode<'o>(
        &self,
        answer: impl Fn(&ArtifactKey) -> Option<&'o NodeOutput>,
    ) -> Vec<u8> {
        let a = self.artifact;
        let lay = |split: &Split<'a>| LaidText {
            shape: split.shape,
            fills: split
                .values
                .iter()
                .map(|value| refer(value, a, &answer))
                .collect(),
        };
        let request = &a.request;
        let laid: LaidRequest<&str> = LaidRequest {
            provider: &request.provider,
            base_url: request.base_url.as_deref(),
            model: &request.model,
            params_json: &request.params_json,
            output_kind: &request.output_kind,
            system: self.system.as_ref().map(lay),
            user: lay(&self.user),
            offline: request
                .offline
                .as_ref()
                .map(|(task, inputs)| (task.as_str(), inputs.as_str())),
            sample_seed: request.sample_seed,
        };
        let summary = SummaryRef {
            key: &a.key,
            node: &a.node,
            output: &a.output,
            usage: &a.usage,
            cost_usd: &a.cost_usd,
            computed_cost_usd: &a.computed_cost_usd,
            price: &a.price,
            served_model: &a.served_model,
            created_unix_ms: a.created_unix_ms,
            latency_ms: a.latency_ms,
            upstream: &a.upstream,
        };
        let config = bincode::config::standard();
        // Invariant: strings, numbers and vectors, which bincode always encodes.
        let mut bytes =
            bincode::serde::encode_to_vec((summary, laid), config).expect("always encodable");
        super::artifact::append_key_fields(&mut bytes, a.key_fields.as_ref());
        bytes
    }
}

/// `value` as a fill: a reference when it is an upstream answer of `artifact` found by `answer`.
fn refer<'a, 'o: 'a>(
    value: &'a str,
    artifact: &Artifact,
    answer: &impl Fn(&ArtifactKey) -> Option<&'o NodeOutput>,
) -> Fill<&'a str> {
    if value.len() >= SHORTEST_REFERENCE {
        for (_, key) in &artifact.upstream {
            if *key == artifact.key {
                continue;
            }
            match answer(key) {
                Some(NodeOutput::Text(text)) if text == value => return Fill::Upstream(*key),
                Some(NodeOutput::Json(fields)) => {
                    if let Some((field, _)) = fields.iter().find(|(_, v)| *v == value) {
                        return Fill::UpstreamField(*key, field.as_str());
                    }
                }
                _ => {}
            }
        }
    }
    Fill::Text(value)
}

/// Why a laid-out artifact cannot be joined back into its request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum LayoutError {
    #[error("its laid-out request does not decode ({0})")]
    Decode(String),
    #[error("its request's template text (shape {0}) is missing or damaged")]
    Shape(String),
    #[error("its request quotes the answer of {0}, which its record does not hold")]
    Answer(String),
    #[error("its request's shape {0} has {1} parts for {2} values")]
    Parts(String, usize, usize),
}

/// A laid-out entry's parts: its summary, the bytes that encode it, its request, and what follows
/// (its key fields).
struct Decoded<'b> {
    summary: ArtifactSummary,
    summary_bytes: &'b [u8],
    laid: LaidRequest,
    rest: &'b [u8],
}

fn decode_laid(bytes: &[u8]) -> Result<Decoded<'_>, LayoutError> {
    let config = bincode::config::standard();
    let decode_error = |e: bincode::error::DecodeError| LayoutError::Decode(e.to_string());
    let (summary, used): (ArtifactSummary, usize) =
        bincode::serde::decode_from_slice(bytes, config).map_err(decode_error)?;
    let (laid, more): (LaidRequest, usize) =
        bincode::serde::decode_from_slice(&bytes[used..], config).map_err(decode_error)?;
    Ok(Decoded {
        summary,
        summary_bytes: &bytes[..used],
        laid,
        rest: &bytes[used + more..],
    })
}

fn join(
    text: LaidText,
    shape: &impl Fn(&ShapeId) -> Option<Arc<Shape>>,
    answer: &impl Fn(&ArtifactKey) -> Option<NodeOutput>,
) -> Result<String, LayoutError> {
    let value = |fill: Fill| -> Result<String, LayoutError> {
        match fill {
            Fill::Text(text) => Ok(text),
            Fill::Upstream(key) => match answer(&key) {
                Some(NodeOutput::Text(text)) => Ok(text),
                _ => Err(LayoutError::Answer(key.short())),
            },
            Fill::UpstreamField(key, field) => match answer(&key) {
                Some(NodeOutput::Json(mut fields)) => fields
                    .remove(&field)
                    .ok_or_else(|| LayoutError::Answer(format!("{} (field {field})", key.short()))),
                _ => Err(LayoutError::Answer(key.short())),
            },
        }
    };
    let Some(id) = text.shape else {
        let mut joined = String::new();
        for fill in text.fills {
            joined.push_str(&value(fill)?);
        }
        return Ok(joined);
    };
    let short = || blake3::Hash::from_bytes(id).to_hex()[..16].to_string();
    let parts = shape(&id).ok_or_else(|| LayoutError::Shape(short()))?;
    if parts.len() != text.fills.len() + 1 {
        return Err(LayoutError::Parts(short(), parts.len(), text.fills.len()));
    }
    let mut joined = String::with_capacity(parts.iter().map(String::len).sum::<usize>() * 2);
    for (part, fill) in parts.iter().zip(text.fills) {
        joined.push_str(part);
        joined.push_str(&value(fill)?);
    }
    joined.push_str(&parts[parts.len() - 1]);
    Ok(joined)
}

/// The artifact a laid-out entry holds, in the artifact encoding (`artifact::encode`), its request
/// joined from its shapes (found by `shape`) and values, answers quoted found by `answer`.
pub(crate) fn expand(
    bytes: &[u8],
    shape: impl Fn(&ShapeId) -> Option<Arc<Shape>>,
    answer: impl Fn(&ArtifactKey) -> Option<NodeOutput>,
) -> Result<Vec<u8>, LayoutError> {
    let Decoded {
        summary: s,
        laid,
        rest: key_fields,
        ..
    } = decode_laid(bytes)?;
    let request = RecordedRequest {
        provider: laid.provider,
        base_url: laid.base_url,
        model: laid.model,
        params_json: laid.params_json,
        output_kind: laid.output_kind,
        system: laid
            .system
            .map(|text| join(text, &shape, &answer))
            .transpose()?,
        user: join(laid.user, &shape, &answer)?,
        offline: laid.offline,
        sample_seed: laid.sample_seed,
        layout: None,
    };
    let artifact = Artifact {
        key: s.key,
        node: s.node,
        output: s.output,
        usage: s.usage,
        cost_usd: s.cost_usd,
        computed_cost_usd: s.computed_cost_usd,
        price: s.price,
        served_model: s.served_model,
        created_unix_ms: s.created_unix_ms,
        latency_ms: s.latency_ms,
        upstream: s.upstream,
        request,
        key_fields: None,
    };
    let mut expanded = encode(&artifact);
    // What follows the artifact (its key fields) is carried over as it was stored.
    expanded.extend_from_slice(key_fields);
    Ok(expanded)
}

/// The laid-out entry `bytes` with every value that quotes `key`'s answer (`output`) written out
/// in full; `None` when none does.
pub(crate) fn inline(
    bytes: &[u8],
    key: &ArtifactKey,
    output: &NodeOutput,
) -> Result<Option<Vec<u8>>, LayoutError> {
    let Decoded {
        summary_bytes,
        mut laid,
        rest: key_fields,
        ..
    } = decode_laid(bytes)?;
    let mut changed = false;
    for text in laid
        .system
        .iter_mut()
        .chain(std::iter::once(&mut laid.user))
    {
        for fill in &mut text.fills {
            let quoted = match (&*fill, output) {
                (Fill::Upstream(k), NodeOutput::Text(text)) if k == key => Some(text.clone()),
                (Fill::UpstreamField(k, field), NodeOutput::Json(fields)) if k == key => {
                    fields.get(field).cloned()
                }
                _ => None,
            };
            if let Some(text) = quoted {
                *fill = Fill::Text(text);
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = summary_bytes.to_vec();
    // Invariant: as in `Laying::encode`.
    bincode::serde::encode_into_std_write(&laid, &mut out, bincode::config::standard())
        .expect("always encodable");
    out.extend_from_slice(key_fields);
    Ok(Some(out))
}

#[cfg(test)]
mod tests;

/// Artifacts for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::cache::RequestLayout;

    /// `topic` answering a long phrase, and `body` whose user message quotes it, rendered.
    pub(crate) fn quoting(mut topic: Artifact, mut body: Artifact) -> (Artifact, Artifact) {
        let phrase = "a topic long enough to be quoted by its key";
        topic.output = NodeOutput::Text(phrase.into());
        topic.upstream = Vec::new();
        body.upstream = vec![("topic".into(), topic.key)];
        body.request.user = format!("About: {phrase}\nWrite the body.");
        body.request.layout = Some(RequestLayout {
            system: Vec::new(),
            user: vec![(7, 7 + phrase.len() as u32)],
        });
        (topic, body)
    }
}
