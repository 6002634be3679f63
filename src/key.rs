//! Artifact keys: the BLAKE3 hash of exactly what determines a node's output for one ticket.
//!
//! This module owns the list of key inputs ([`KeyInput`]), their canonical byte encoding and the hash.
//! It does not decide what the inputs are for a given node (the engine renders prompts and builds the
//! request) and it stores nothing (that is `cache`). The invariant, "the key is the truth": every input
//! that can change a response is encoded here, one by one, and nothing else is. In particular API keys,
//! file paths, node names, template file hashes and timestamps are *not* key material; an upstream
//! node's output enters only through the rendered prompt, so an unchanged upstream output leaves the
//! downstream key unchanged (early cutoff). Any change to the set of inputs or their encoding must bump
//! [`KEY_VERSION`] and change the derive-key context with it, so old and new keys can never collide.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::Params;
use crate::hashing::{DeriveKey, Gathered};
use crate::value::OutputKind;

/// Version of the key schema. Recorded in every build manifest (and hashed into a build's inputs);
/// raising it means raising `cache::CACHE_SCHEMA` too, so an older ticketbuild refuses the cache.
pub(crate) const KEY_VERSION: u32 = 1;

/// BLAKE3 derive-key context; carries the schema version (a separate literal: change both
/// together) so versions never share a key.
const KEY_CONTEXT: &str = "ticketbuild 2026-11-25 artifact key schema 1";
static KEY_HASHER: DeriveKey = DeriveKey::new(|| blake3::Hasher::new_derive_key(KEY_CONTEXT));

/// A 32-byte BLAKE3 hash naming one artifact.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ArtifactKey(pub [u8; 32]);

impl ArtifactKey {
    pub(crate) fn to_hex(self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 16 hex digits, enough to tell keys apart in messages.
    pub(crate) fn short(&self) -> String {
        self.to_hex()[..16].to_string()
    }

    pub fn from_hex(hex: &str) -> Option<ArtifactKey> {
        blake3::Hash::from_hex(hex)
            .ok()
            .map(|h| ArtifactKey(*h.as_bytes()))
    }
}

impl fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactKey({})", self.short())
    }
}

impl fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Everything that determines one response, as it would be sent.
///
/// Deliberately absent: the API key and any other credential (a secret never enters the cache, and
/// rotating a key must not re-run a dataset); the cache and project paths (moving a project keeps its
/// cache valid); the node's name and template file (only the *rendered* prompt matters, so a template
/// edit that renders the same text re-runs nothing); timestamps.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    /// 1. The provider (`openai`, `anthropic`, `offline`, ...): the same model name at two providers
    ///    can be two different models.
    pub provider: &'a str,
    /// 2. The base URL when the user set one: another server may serve another model.
    pub base_url: Option<&'a str>,
    /// 3. The model name as sent.
    pub model: &'a str,
    /// 4. Every request parameter; an unset one is encoded as unset, never as an assumed default.
    pub params: &'a Params,
    /// 5. The declared output kind: it decides the response format sent and which replies are
    ///    accepted, so a different kind can yield a different cached value.
    pub output: &'a OutputKind,
    /// 6. The rendered system message, if the template has one.
    pub system: Option<&'a str>,
    /// 7. The rendered user message.
    pub user: &'a str,
    /// 8. For the offline model only: its task, the fingerprint of its phrase bank, and the
    ///    structured inputs it reads. These are what the offline model is "sent", so they are request
    ///    fields like any other.
    pub offline: Option<(&'a str, &'a str, &'a BTreeMap<String, serde_json::Value>)>,
    /// 9. The ticket's sample seed: two tickets with identical prompts are still two samples.
    pub sample_seed: u64,
    /// 10. The draw: the node's answer asked for again after checks rejected the earlier ones (or
    ///     after its ticket was found a duplicate). Each draw is a sample of its own, paid once.
    ///     Draw 0 adds nothing to the encoding, so the first answer keeps the key it had before
    ///     draws existed and no cache is invalidated; a later draw adds a tagged field that no
    ///     draw-0 encoding has, so draws never share a key.
    pub draw: u32,
}

impl KeyInput<'_> {
    pub fn key(&self) -> ArtifactKey {
        let extra = canonical_json_map(&self.params.extra);
        let offline_inputs = self
            .offline
            .map(|(_, _, inputs)| canonical_json_map(inputs));
        self.hash(&extra, offline_inputs.as_deref())
    }

    /// The key of a request as its artifact records it, where the two JSON maps are already
    /// canonical text: `extra_json` stands for `params.extra`, `offline_inputs` for the offline
    /// inputs (the maps in `self` are not read). Canonical text hashes as the map it was written
    /// from, so this is [`KeyInput::key`] without parsing JSON back (which could round a float).
    pub(crate) fn key_of_recorded(
        &self,
        extra_json: &str,
        offline_inputs: Option<&str>,
    ) -> ArtifactKey {
        self.hash(extra_json, offline_inputs)
    }

    fn hash(&self, extra_json: &str, offline_inputs: Option<&str>) -> ArtifactKey {
        let mut encoder = Encoder(KEY_HASHER.gathered());
        encoder.str(1, self.provider);
        encoder.opt_str(2, self.base_url);
        encoder.str(3, self.model);
        let p = self.params;
        encoder.opt_f64(40, p.temperature);
        encoder.opt_f64(41, p.top_p);
        encoder.opt_u64(42, p.max_tokens);
        encoder.opt_u64(43, p.seed.map(|s| s as u64));
        match &p.stop {
            None => encoder.tag(44, 0),
            Some(stop) => {
                encoder.tag(44, 1);
                encoder.u64(stop.len() as u64);
                for s in stop {
                    encoder.bytes(s.as_bytes());
                }
            }
        }
        encoder.str(45, extra_json);
        encoder.opt_str(46, p.response_format.as_deref());
        match self.output {
            OutputKind::Text => encoder.tag(5, 0),
            OutputKind::List { min, max } => {
                encoder.tag(5, 1);
                encoder.u64(*min as u64);
                encoder.u64(*max as u64);
            }
            OutputKind::Json { fields } => {
                encoder.tag(5, 2);
                encoder.u64(fields.len() as u64);
                for f in fields {
                    encoder.bytes(f.as_bytes());
                }
            }
        }
        encoder.opt_str(6, self.system);
        encoder.str(7, self.user);
        match self.offline.zip(offline_inputs) {
            None => encoder.tag(8, 0),
            Some(((task, bank, _), inputs)) => {
                encoder.tag(8, 1);
                encoder.bytes(task.as_bytes());
                encoder.bytes(bank.as_bytes());
                encoder.bytes(inputs.as_bytes());
            }
        }
        encoder.tag(9, 1);
        encoder.u64(self.sample_seed);
        if self.draw > 0 {
            encoder.tag(10, 1);
            encoder.u64(u64::from(self.draw));
        }
        ArtifactKey(*encoder.0.finalize().as_bytes())
    }
}

/// Tagged, length-prefixed fields: no two different inputs share an encoding. Gathered: most
/// fields are a few bytes (the rendered prompts, larger, go to BLAKE3 directly).
struct Encoder(Gathered<1024>);

impl Encoder {
    fn tag(&mut self, field: u8, variant: u8) {
        self.0.update(&[field, variant]);
    }
    fn u64(&mut self, value: u64) {
        self.0.update(&value.to_le_bytes());
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.0.update(bytes);
    }
    fn str(&mut self, field: u8, value: &str) {
        self.tag(field, 1);
        self.bytes(value.as_bytes());
    }
    fn opt_str(&mut self, field: u8, value: Option<&str>) {
        match value {
            Some(v) => self.str(field, v),
            None => self.tag(field, 0),
        }
    }
    fn opt_u64(&mut self, field: u8, value: Option<u64>) {
        match value {
            Some(v) => {
                self.tag(field, 1);
                self.u64(v);
            }
            None => self.tag(field, 0),
        }
    }
    fn opt_f64(&mut self, field: u8, value: Option<f64>) {
        // The bit pattern, so 0.7 and 0.70000001 differ, as they do on the wire.
        self.opt_u64(field, value.map(f64::to_bits));
    }
}

/// JSON text with object keys sorted at every level, whatever map order serde_json was built with.
pub(crate) fn canonical_json_map(map: &BTreeMap<String, serde_json::Value>) -> String {
    let mut out = Vec::with_capacity(256);
    write_object(map.iter(), &mut out);
    // Invariant: serde_json writes UTF-8, and so do the brackets and commas around it.
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Writes the entries (already in key order) as a JSON object. Written straight into `out`, with
/// no copy of the values: this runs for every request of every build.
fn write_object<'a>(
    entries: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_scalar(k, out);
        out.push(b':');
        write_canonical(v, out);
    }
    out.push(b'}');
}

fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            write_object(entries.into_iter(), out);
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => write_scalar(other, out),
    }
}

/// A string, number, boolean or null, exactly as serde_json's compact writer (and so `to_string`)
/// writes it.
fn write_scalar<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Invariant: writing to a Vec cannot fail, and these values have no map keys to reject.
    serde_json::to_writer(&mut *out, value).expect("a JSON scalar always serializes");
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owned {
        params: Params,
        output: OutputKind,
        inputs: BTreeMap<String, serde_json::Value>,
    }

    fn owned() -> Owned {
        Owned {
            params: Params {
                temperature: Some(0.7),
                top_p: Some(0.9),
                max_tokens: Some(400),
                seed: Some(1),
                stop: Some(vec!["END".into()]),
                response_format: None,
                extra: BTreeMap::from([("presence_penalty".to_string(), serde_json::json!(0.1))]),
            },
            output: OutputKind::Text,
            inputs: BTreeMap::from([(
                "queue".to_string(),
                serde_json::json!("Billing and Payments"),
            )]),
        }
    }

    fn input(o: &Owned) -> KeyInput<'_> {
        KeyInput {
            provider: "openai",
            base_url: None,
            model: "gpt-4o-mini",
            params: &o.params,
            output: &o.output,
            system: Some("You are a customer."),
            user: "Write a ticket.",
            offline: Some(("topic", "bank-1", &o.inputs)),
            sample_seed: 99,
            draw: 0,
        }
    }

    #[test]
    fn equal_inputs_give_equal_keys() {
        let o = owned();
        assert_eq!(input(&o).key(), input(&o).key());
    }

    /// Every key input, owned, so a test can change one and derive the key again.
    #[derive(Clone)]
    struct Inputs {
        provider: String,
        base_url: Option<String>,
        model: String,
        params: Params,
        output: OutputKind,
        system: Option<String>,
        user: String,
        offline: Option<(String, String, BTreeMap<String, serde_json::Value>)>,
        sample_seed: u64,
        draw: u32,
    }

    impl Inputs {
        fn base() -> Inputs {
            let o = owned();
            Inputs {
                provider: "openai".into(),
                base_url: None,
                model: "gpt-4o-mini".into(),
                params: o.params,
                output: o.output,
                system: Some("You are a customer.".into()),
                user: "Write a ticket.".into(),
                offline: Some(("topic".into(), "bank-1".into(), o.inputs)),
                sample_seed: 99,
                draw: 0,
            }
        }

        fn key(&self) -> ArtifactKey {
            KeyInput {
                provider: &self.provider,
                base_url: self.base_url.as_deref(),
                model: &self.model,
                params: &self.params,
                output: &self.output,
                system: self.system.as_deref(),
                user: &self.user,
                offline: self
                    .offline
                    .as_ref()
                    .map(|(task, bank, inputs)| (task.as_str(), bank.as_str(), inputs)),
                sample_seed: self.sample_seed,
                draw: self.draw,
            }
            .key()
        }
    }

    /// A change of one key input, applied to the base inputs.
    type Change = fn(&mut Inputs);

    /// Each change of one input, applied alone to the base inputs, gives a key of its own: not
    /// the base key, and not the key of any other change listed.
    fn assert_each_changes_the_key(changes: &[(&str, Change)]) {
        let base = Inputs::base().key();
        let mut seen = vec![("(base)", base)];
        for (what, change) in changes {
            let mut inputs = Inputs::base();
            change(&mut inputs);
            let key = inputs.key();
            if let Some((other, _)) = seen.iter().find(|(_, k)| *k == key) {
                panic!("changing {what} gives the same key as {other}");
            }
            seen.push((what, key));
        }
    }

    #[test]
    fn the_provider_changes_the_key() {
        assert_each_changes_the_key(&[("the provider", |i| i.provider = "together".into())]);
    }

    #[test]
    fn the_base_url_changes_the_key() {
        assert_each_changes_the_key(&[
            ("a base url", |i| {
                i.base_url = Some("http://127.0.0.1:9/v1".into())
            }),
            ("another base url", |i| {
                i.base_url = Some("http://127.0.0.1:10/v1".into())
            }),
        ]);
    }

    #[test]
    fn the_model_changes_the_key() {
        assert_each_changes_the_key(&[("the model", |i| i.model = "gpt-4o".into())]);
    }

    #[test]
    fn the_temperature_changes_the_key() {
        assert_each_changes_the_key(&[
            ("the temperature", |i| i.params.temperature = Some(0.70001)),
            ("no temperature", |i| i.params.temperature = None),
        ]);
    }

    #[test]
    fn top_p_changes_the_key() {
        assert_each_changes_the_key(&[
            ("top_p", |i| i.params.top_p = Some(1.0)),
            ("no top_p", |i| i.params.top_p = None),
        ]);
    }

    #[test]
    fn max_tokens_changes_the_key() {
        assert_each_changes_the_key(&[
            ("max_tokens", |i| i.params.max_tokens = Some(401)),
            ("no max_tokens", |i| i.params.max_tokens = None),
        ]);
    }

    #[test]
    fn the_request_seed_changes_the_key() {
        assert_each_changes_the_key(&[
            ("the seed", |i| i.params.seed = Some(2)),
            ("no seed", |i| i.params.seed = None),
        ]);
    }

    #[test]
    fn stop_sequences_change_the_key() {
        assert_each_changes_the_key(&[
            ("no stop", |i| i.params.stop = None),
            ("another stop", |i| {
                i.params.stop = Some(vec!["END".into(), "STOP".into()])
            }),
            ("an empty stop list", |i| i.params.stop = Some(vec![])),
        ]);
    }

    #[test]
    fn extra_parameters_change_the_key() {
        assert_each_changes_the_key(&[
            ("an extra value", |i| {
                i.params
                    .extra
                    .insert("presence_penalty".into(), serde_json::json!(0.2));
            }),
            ("no extra", |i| i.params.extra.clear()),
        ]);
    }

    #[test]
    fn the_response_format_changes_the_key() {
        assert_each_changes_the_key(&[("the response format", |i| {
            i.params.response_format = Some("json_object".into())
        })]);
    }

    #[test]
    fn the_output_kind_changes_the_key() {
        assert_each_changes_the_key(&[
            ("a list", |i| i.output = OutputKind::List { min: 4, max: 8 }),
            ("a list of other bounds", |i| {
                i.output = OutputKind::List { min: 4, max: 7 }
            }),
            ("json", |i| {
                i.output = OutputKind::Json {
                    fields: vec!["subject".into()],
                }
            }),
        ]);
    }

    #[test]
    fn the_system_message_changes_the_key() {
        assert_each_changes_the_key(&[
            ("no system message", |i| i.system = None),
            ("another system message", |i| {
                i.system = Some("You are an agent.".into())
            }),
        ]);
    }

    #[test]
    fn the_user_message_changes_the_key() {
        assert_each_changes_the_key(&[("the user message", |i| i.user = "Write a ticket!".into())]);
    }

    #[test]
    fn the_offline_task_bank_and_inputs_change_the_key() {
        assert_each_changes_the_key(&[
            ("no offline inputs", |i| i.offline = None),
            ("the offline task", |i| {
                if let Some(offline) = &mut i.offline {
                    offline.0 = "subject".into();
                }
            }),
            ("the phrase bank", |i| {
                if let Some(offline) = &mut i.offline {
                    offline.1 = "bank-2".into();
                }
            }),
            ("an offline input", |i| {
                if let Some(offline) = &mut i.offline {
                    offline
                        .2
                        .insert("queue".into(), serde_json::json!("IT Support"));
                }
            }),
        ]);
    }

    #[test]
    fn the_sample_seed_changes_the_key() {
        assert_each_changes_the_key(&[("the sample seed", |i| i.sample_seed = 100)]);
    }

    #[test]
    fn the_draw_changes_the_key() {
        assert_each_changes_the_key(&[
            ("draw 1", |i| i.draw = 1),
            ("draw 2", |i| i.draw = 2),
            ("draw 1 of another ticket", |i| {
                i.draw = 1;
                i.sample_seed = 100;
            }),
        ]);
    }

    #[test]
    fn unset_differs_from_any_value() {
        let o = owned();
        let mut unset = o.params.clone();
        unset.seed = None;
        let mut zero = o.params.clone();
        zero.seed = Some(0);
        assert_ne!(
            KeyInput {
                params: &unset,
                ..input(&o)
            }
            .key(),
            KeyInput {
                params: &zero,
                ..input(&o)
            }
            .key()
        );
    }

    #[test]
    fn map_order_does_not_change_the_key() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 3}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#).unwrap();
        let ma = BTreeMap::from([("k".to_string(), a)]);
        let mb = BTreeMap::from([("k".to_string(), b)]);
        assert_eq!(canonical_json_map(&ma), canonical_json_map(&mb));
    }

    #[test]
    fn canonical_json_bytes_are_pinned() {
        // These bytes are key material: a change here changes every key of every cache.
        let value: serde_json::Value = serde_json::from_str(
            r#"{"z": [1, 2.5, -3, true, null, "é\"\n\u0001"], "a": {"y": {}, "x": []}, "ü": 1e3}"#,
        )
        .unwrap();
        let map = BTreeMap::from([("k\"ey".to_string(), value), ("a".to_string(), 7.into())]);
        assert_eq!(
            canonical_json_map(&map),
            r#"{"a":7,"k\"ey":{"a":{"x":[],"y":{}},"z":[1,2.5,-3,true,null,"é\"\n\u0001"],"ü":1000.0}}"#
        );
        assert_eq!(
            input(&owned()).key().to_hex(),
            "81118b4d3099036c0769657ff23072f2cce191035d9272b076fb4dda91bd7340"
        );
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let o = owned();
        let a = KeyInput {
            system: Some("ab"),
            user: "c",
            ..input(&o)
        }
        .key();
        let b = KeyInput {
            system: Some("a"),
            user: "bc",
            ..input(&o)
        }
        .key();
        assert_ne!(a, b);
    }

    #[test]
    fn hex_round_trips() {
        let o = owned();
        let key = input(&o).key();
        assert_eq!(ArtifactKey::from_hex(&key.to_hex()), Some(key));
    }
}
