//! What a stored artifact records, and how it is encoded.
//!
//! This module owns [`Artifact`] (a response with its usage, cost, timing, upstream keys and the
//! request as sent), the [`ArtifactSummary`] a build decodes instead (everything but the request),
//! the bincode encoding both share, and [`TicketArtifacts`], one ticket's stored artifacts read in
//! one go and decoded only when asked for. The invariant: a record names the key it was stored
//! under, and a record that decodes under another key is a miss (corrupt), never a hit.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::{ArtifactStore, CacheError, Lookup, MissReason};
use crate::config::Params;
use crate::cost::{PriceEntry, Usage};
use crate::key::{ArtifactKey, KeyInput};
use crate::value::{NodeOutput, OutputKind};

/// One stored response and what is known about how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// The key this artifact was stored under; `verify` checks it matches.
    pub key: ArtifactKey,
    /// The node that produced it (trace metadata, not key material).
    pub node: String,
    pub output: NodeOutput,
    pub usage: Usage,
    /// What the call cost in USD, when known (zero for the offline model): the provider's own
    /// figure when it reports one, else the computed one.
    pub cost_usd: Option<f64>,
    /// The cost computed from usage and `price`, kept beside a provider-reported one.
    pub computed_cost_usd: Option<f64>,
    /// The price (USD per million tokens) the cost was computed with, and its source.
    pub price: Option<PriceEntry>,
    /// The model that answered, as the provider named it (may be a dated snapshot).
    pub served_model: String,
    /// Milliseconds since the Unix epoch when the response arrived. Trace only.
    pub created_unix_ms: u64,
    pub latency_ms: u64,
    /// Upstream nodes this output depended on, with their artifact keys. Trace only.
    pub upstream: Vec<(String, ArtifactKey)>,
    /// The request as it was sent, for `explain` and for diffs against what would be sent now.
    pub request: RecordedRequest,
    /// What the key covers that the recorded request does not show (see [`KeyFields`]). Encoded
    /// after the artifact (see [`encode`]), so it is absent from artifacts written before it was.
    #[serde(skip)]
    pub key_fields: Option<KeyFields>,
}

/// The key's inputs a [`RecordedRequest`] does not hold as they were hashed: the parameters typed
/// (the request shows them as JSON, which may round a float), the output kind (shown as a phrase),
/// the offline phrase bank's fingerprint and the draw. With them, the recorded request re-derives
/// its artifact's key, which is what `cache verify` checks: a request (a template's text, a value
/// that filled it) changed after the answer was stored no longer hashes to the key it is under.
/// The parameters are copied field by field rather than stored as `config::Params`: the stored
/// layout must not change when the config's type does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFields {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u64>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub response_format: Option<String>,
    /// The parameters' `extra` map as canonical JSON, the text the key hashes.
    pub extra_json: String,
    pub output: OutputKind,
    pub offline_bank: Option<String>,
    pub draw: u32,
}

/// The byte that starts the key fields after an artifact's encoding. Bytes after an artifact
/// were never written before it, and a reader that does not know them stops before them (bincode
/// decodes a prefix), so no cache schema changes.
const KEY_FIELDS_V1: u8 = 1;

/// A request as recorded with its artifact. Holds no secret: requests never carry one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub provider: String,
    pub base_url: Option<String>,
    pub model: String,
    /// The parameters that were sent, as canonical JSON (unset ones absent).
    pub params_json: String,
    pub output_kind: String,
    pub system: Option<String>,
    pub user: String,
    /// Offline only: the task and its structured inputs as canonical JSON.
    pub offline: Option<(String, String)>,
    pub sample_seed: u64,
    /// Where values filled the messages, when the request was just rendered: a ticket record
    /// stores the messages as their template's text once and these values (see `layout`). Not
    /// part of the encoding; a request read back has none.
    #[serde(skip)]
    pub layout: Option<RequestLayout>,
}

/// Where values filled a recorded request's messages: byte ranges into each, in order and not
/// overlapping (as `graph::Fills`). Only a request just rendered has one; a request read back from
/// a store has none, and is stored whole if put again. See `layout`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestLayout {
    pub system: Vec<(u32, u32)>,
    pub user: Vec<(u32, u32)>,
}

/// What a build reads of a stored artifact: all of it but the recorded request, which only
/// `explain` shows. Its fields are the leading fields of [`Artifact`], in the same order, so it
/// decodes from an artifact's bytes and stops before the request (the bulk of the bytes: the
/// rendered prompts) instead of allocating it for every ticket of every rebuild.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ArtifactSummary {
    pub(crate) key: ArtifactKey,
    pub(crate) node: String,
    pub(crate) output: NodeOutput,
    pub(crate) usage: Usage,
    pub(crate) cost_usd: Option<f64>,
    pub(crate) computed_cost_usd: Option<f64>,
    pub(crate) price: Option<PriceEntry>,
    pub(crate) served_model: String,
    pub(crate) created_unix_ms: u64,
    pub(crate) latency_ms: u64,
    pub(crate) upstream: Vec<(String, ArtifactKey)>,
}

impl Artifact {
    /// The key the recorded request hashes to, when the artifact records every key input (see
    /// [`KeyFields`]); `None` for artifacts written before it did.
    pub(crate) fn derived_key(&self) -> Option<ArtifactKey> {
        /// Stands for the maps [`KeyInput::key_of_recorded`] is given as text instead.
        static NO_MAP: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let fields = self.key_fields.as_ref()?;
        let request = &self.request;
        let params = Params {
            temperature: fields.temperature,
            top_p: fields.top_p,
            max_tokens: fields.max_tokens,
            seed: fields.seed,
            stop: fields.stop.clone(),
            response_format: fields.response_format.clone(),
            extra: BTreeMap::new(),
        };
        let offline = request.offline.as_ref().zip(fields.offline_bank.as_ref());
        let input = KeyInput {
            provider: &request.provider,
            base_url: request.base_url.as_deref(),
            model: &request.model,
            params: &params,
            output: &fields.output,
            system: request.system.as_deref(),
            user: &request.user,
            offline: offline.map(|((task, _), bank)| (task.as_str(), bank.as_str(), &NO_MAP)),
            sample_seed: request.sample_seed,
            draw: fields.draw,
        };
        Some(input.key_of_recorded(
            &fields.extra_json,
            offline.map(|((_, inputs), _)| inputs.as_str()),
        ))
    }

    /// The artifact without its recorded request, copied (the artifact stays whole, to be
    /// stored): the request, most of an artifact's bytes, is not copied.
    pub(crate) fn summary(&self) -> ArtifactSummary {
        ArtifactSummary {
            key: self.key,
            node: self.node.clone(),
            output: self.output.clone(),
            usage: self.usage,
            cost_usd: self.cost_usd,
            computed_cost_usd: self.computed_cost_usd,
            price: self.price.clone(),
            served_model: self.served_model.clone(),
            created_unix_ms: self.created_unix_ms,
            latency_ms: self.latency_ms,
            upstream: self.upstream.clone(),
        }
    }

    /// The artifact without its recorded request.
    pub(crate) fn into_summary(self) -> ArtifactSummary {
        ArtifactSummary {
            key: self.key,
            node: self.node,
            output: self.output,
            usage: self.usage,
            cost_usd: self.cost_usd,
            computed_cost_usd: self.computed_cost_usd,
            price: self.price,
            served_model: self.served_model,
            created_unix_ms: self.created_unix_ms,
            latency_ms: self.latency_ms,
            upstream: self.upstream,
        }
    }
}

/// A stored record that names the key it was stored under (checked on every read).
pub(super) trait Keyed: serde::de::DeserializeOwned {
    fn stored_key(&self) -> &ArtifactKey;

    /// Reads what follows the record's own encoding (nothing, for a record that stops before it).
    fn read_rest(&mut self, _rest: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

impl Keyed for Artifact {
    fn stored_key(&self) -> &ArtifactKey {
        &self.key
    }

    fn read_rest(&mut self, rest: &[u8]) -> Result<(), String> {
        self.key_fields = match rest.split_first() {
            Some((&KEY_FIELDS_V1, fields)) => Some(
                bincode::serde::decode_from_slice(fields, bincode::config::standard())
                    .map_err(|e| format!("its key fields do not decode ({e})"))?
                    .0,
            ),
            // Nothing (written before key fields were), or a later version's: none to read.
            _ => None,
        };
        Ok(())
    }
}

impl Keyed for ArtifactSummary {
    fn stored_key(&self) -> &ArtifactKey {
        &self.key
    }
}

pub(super) fn encode(artifact: &Artifact) -> Vec<u8> {
    let config = bincode::config::standard();
    // Invariant: an Artifact holds only strings, numbers and vectors, which bincode always encodes.
    let mut bytes =
        bincode::serde::encode_to_vec(artifact, config).expect("an artifact is always encodable");
    append_key_fields(&mut bytes, artifact.key_fields.as_ref());
    bytes
}

/// Writes `fields` (if any) after an artifact's encoding.
pub(super) fn append_key_fields(bytes: &mut Vec<u8>, fields: Option<&KeyFields>) {
    if let Some(fields) = fields {
        bytes.push(KEY_FIELDS_V1);
        // Invariant: strings, numbers and vectors, and a Vec takes every byte written to it.
        bincode::serde::encode_into_std_write(fields, bytes, bincode::config::standard())
            .expect("key fields are always encodable");
    }
}

pub(super) fn decode<T: Keyed>(key: &ArtifactKey, bytes: &[u8]) -> Lookup<T> {
    // A summary reads a prefix of the bytes; bincode leaves the rest (the request) untouched.
    match bincode::serde::decode_from_slice::<T, _>(bytes, bincode::config::standard()) {
        Ok((mut record, used)) if record.stored_key() == key => {
            match record.read_rest(&bytes[used..]) {
                Ok(()) => Lookup::Hit(Box::new(record)),
                Err(problem) => Lookup::Miss(MissReason::Corrupt(problem)),
            }
        }
        Ok((record, _)) => Lookup::Miss(MissReason::Corrupt(format!(
            "entry records key {}",
            record.stored_key().short()
        ))),
        Err(e) => Lookup::Miss(MissReason::Corrupt(e.to_string())),
    }
}

/// An artifact's bytes as a store holds them (a buffer of the store's own, not copied out).
pub(crate) type EncodedBytes = Box<dyn AsRef<[u8]> + Send + Sync>;

/// The stored artifacts of one ticket (see [`ArtifactStore::ticket_artifacts`]), still encoded: only
/// the ones a lookup asks for are decoded.
pub struct TicketArtifacts {
    ticket: u64,
    entries: Vec<(ArtifactKey, EncodedBytes)>,
    /// Artifacts generated for the ticket since the read: two nodes that send the same request
    /// share one artifact, and the second must find the first's answer, not pay for it again.
    generated: Vec<ArtifactSummary>,
    /// Every artifact of the ticket is listed; a key not among them is not stored.
    complete: bool,
}

impl TicketArtifacts {
    /// The artifacts of `ticket` as a store lists them; `complete` when no other is stored.
    pub(crate) fn listed(
        ticket: u64,
        entries: Vec<(ArtifactKey, EncodedBytes)>,
        complete: bool,
    ) -> Self {
        TicketArtifacts {
            ticket,
            entries,
            generated: Vec::new(),
            complete,
        }
    }

    /// A set for a store that cannot list a ticket's artifacts: every lookup asks the store.
    pub(crate) fn unlisted(ticket: u64) -> Self {
        TicketArtifacts::listed(ticket, Vec::new(), false)
    }

    /// Looks `key` up among the ticket's artifacts, asking `store` only when the set is incomplete.
    pub(crate) fn get(
        &self,
        store: &dyn ArtifactStore,
        key: &ArtifactKey,
    ) -> Result<Lookup<ArtifactSummary>, CacheError> {
        if let Some(summary) = self.generated.iter().find(|s| s.key == *key) {
            return Ok(Lookup::Hit(Box::new(summary.clone())));
        }
        match self.entries.iter().find(|(k, _)| k == key) {
            Some((_, bytes)) => Ok(decode(key, (**bytes).as_ref())),
            None if self.complete => Ok(Lookup::Miss(MissReason::New)),
            None => Ok(match store.get(self.ticket, key)? {
                Lookup::Hit(artifact) => Lookup::Hit(Box::new(artifact.into_summary())),
                Lookup::Miss(reason) => Lookup::Miss(reason),
            }),
        }
    }

    /// Records an artifact just generated (and put) for this ticket, so later lookups see it.
    pub(crate) fn add_generated(&mut self, summary: ArtifactSummary) {
        self.generated.push(summary);
    }
}

/// An artifact for tests, its key made of `byte`.
#[cfg(test)]
pub(crate) fn test_artifact(byte: u8) -> Artifact {
    Artifact {
        key: ArtifactKey([byte; 32]),
        node: "body".into(),
        output: NodeOutput::Text("hello".into()),
        usage: Usage::default(),
        cost_usd: Some(0.0),
        computed_cost_usd: Some(0.0),
        price: None,
        served_model: "m".into(),
        created_unix_ms: 1,
        latency_ms: 2,
        upstream: vec![("topic".into(), ArtifactKey([9; 32]))],
        request: RecordedRequest::default(),
        key_fields: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_decodes_from_an_artifacts_bytes() {
        let mut full = test_artifact(1);
        full.request.user = "a long rendered prompt".repeat(50);
        let bytes = encode(&full);
        match decode::<ArtifactSummary>(&full.key, &bytes) {
            Lookup::Hit(summary) => assert_eq!(*summary, full.clone().into_summary()),
            Lookup::Miss(reason) => panic!("expected a hit, got {reason:?}"),
        }
        // The key check holds for summaries too.
        assert!(matches!(
            decode::<ArtifactSummary>(&ArtifactKey([2; 32]), &bytes),
            Lookup::Miss(MissReason::Corrupt(_))
        ));
    }
}
