//! dataset.toml as written: a serde copy of the file format, before any check.
//!
//! This module owns the file's shape (version 1): every table and key, with the span each value
//! was read from so that a problem found later points at it. `deny_unknown_fields` everywhere: a
//! misspelt key is an error, never silently ignored. What the values must be is `check`'s.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) version: Option<Spanned<i64>>,
    /// Required; optional here so that its absence is reported with the other problems.
    pub(super) dataset: Option<Spanned<RawDataset>>,
    #[serde(default)]
    pub(super) tables: OrderedMap<Spanned<RawTable>>,
    #[serde(default)]
    pub(super) models: OrderedMap<Spanned<RawModel>>,
    #[serde(default)]
    pub(super) nodes: OrderedMap<Spanned<RawNode>>,
    pub(super) output: Option<Spanned<RawOutput>>,
    #[serde(default)]
    pub(super) profile: OrderedMap<Spanned<RawProfile>>,
    pub(super) cost: Option<Spanned<RawCost>>,
    pub(super) quality: Option<Spanned<RawQuality>>,
    #[serde(default)]
    pub(super) samplers: OrderedMap<Spanned<RawSampler>>,
    pub(super) input: Option<Spanned<RawInput>>,
    pub(super) cache: Option<Spanned<RawCache>>,
}

/// `[cache]` as written: only the remote tier is configured here (the local folder is
/// `[dataset] cache`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) remote: Option<Spanned<RawRemote>>,
}

/// `[cache.remote]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    pub(super) url: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) upload_concurrency: Option<Spanned<i64>>,
}

/// `[input]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    pub(super) path: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) replace: Option<Spanned<bool>>,
}

/// A `[samplers.NAME]` table as written; which keys apply depends on `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSampler {
    pub(super) kind: Option<Spanned<String>>,
    pub(super) from: Option<Spanned<toml::Value>>,
    pub(super) to: Option<Spanned<toml::Value>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) min: Option<Spanned<i64>>,
    pub(super) max: Option<Spanned<i64>>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) values: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCost {
    pub(super) budget: Option<Spanned<f64>>,
    pub(super) warn_per_call: Option<Spanned<f64>>,
    pub(super) error_per_call: Option<Spanned<f64>>,
    pub(super) currencies: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) rates: OrderedMap<Spanned<f64>>,
    #[serde(default)]
    pub(super) prices: OrderedMap<Spanned<crate::cost::Price>>,
    pub(super) allow_unpriced: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataset {
    pub(super) name: Option<String>,
    pub(super) rows: Option<Spanned<i64>>,
    pub(super) seed: Option<Spanned<i64>>,
    pub(super) output: Option<String>,
    pub(super) cache: Option<String>,
    pub(super) formats: Option<Spanned<StringList>>,
    pub(super) languages: Option<Spanned<OrderedMap<Spanned<f64>>>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) license: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) provider: Option<Spanned<String>>,
    pub(super) model: Option<Spanned<String>>,
    pub(super) base_url: Option<Spanned<String>>,
    pub(super) api_key_env: Option<Spanned<String>>,
    /// Never accepted; present so the error can say what to do instead.
    pub(super) api_key: Option<Spanned<toml::Value>>,
    pub(super) temperature: Option<Spanned<f64>>,
    pub(super) top_p: Option<Spanned<f64>>,
    pub(super) max_tokens: Option<Spanned<i64>>,
    pub(super) seed: Option<Spanned<i64>>,
    pub(super) stop: Option<Spanned<StringList>>,
    pub(super) response_format: Option<Spanned<String>>,
    pub(super) extra: Option<toml::Table>,
    pub(super) latency_ms: Option<Spanned<i64>>,
    pub(super) max_concurrency: Option<Spanned<i64>>,
    pub(super) requests_per_minute: Option<Spanned<i64>>,
    pub(super) tokens_per_minute: Option<Spanned<i64>>,
    pub(super) max_attempts: Option<Spanned<i64>>,
    pub(super) max_invalid_attempts: Option<Spanned<i64>>,
    pub(super) timeout_secs: Option<Spanned<i64>>,
    pub(super) deadline_secs: Option<Spanned<i64>>,
    pub(super) batch: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) prompt: Option<Spanned<String>>,
    pub(super) model: Option<Spanned<String>>,
    pub(super) output: Option<Spanned<String>>,
    pub(super) min_items: Option<Spanned<i64>>,
    pub(super) max_items: Option<Spanned<i64>>,
    pub(super) fields: Option<Spanned<StringList>>,
    pub(super) when: Option<Spanned<String>>,
    pub(super) task: Option<Spanned<String>>,
    pub(super) max_cost: Option<Spanned<f64>>,
    pub(super) checks: Option<Spanned<RawChecks>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChecks {
    pub(super) language: Option<Spanned<String>>,
    pub(super) language_min_chars: Option<Spanned<i64>>,
    pub(super) min_words: Option<Spanned<i64>>,
    pub(super) max_words: Option<Spanned<i64>>,
    pub(super) min_chars: Option<Spanned<i64>>,
    pub(super) max_chars: Option<Spanned<i64>>,
    pub(super) reject: Option<Spanned<StringList>>,
    pub(super) default_reject: Option<bool>,
    pub(super) require: Option<Spanned<StringList>>,
    pub(super) item_pattern: Option<Spanned<String>>,
    pub(super) unique_items: Option<bool>,
    pub(super) fields: Option<Spanned<StringList>>,
    pub(super) max_draws: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuality {
    pub(super) unique: Option<Spanned<StringList>>,
    pub(super) similarity: Option<Spanned<f64>>,
    pub(super) redraw_from: Option<Spanned<String>>,
    pub(super) max_rounds: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    pub(super) columns: Option<OrderedMap<Spanned<toml::Value>>>,
    pub(super) lineage: Option<bool>,
    pub(super) csv_formula_escape: Option<bool>,
    pub(super) report: Option<bool>,
    pub(super) card: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) rows: Option<Spanned<i64>>,
    pub(super) max_tokens: Option<Spanned<i64>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) models: OrderedMap<Spanned<RawModel>>,
}

/// An array of strings, each with its span. Its own type so that a wrong type is reported as
/// "expected an array of strings", not as serde's "expected a sequence".
#[derive(Debug, Clone, Default)]
pub(super) struct StringList(pub(super) Vec<Spanned<String>>);

impl StringList {
    pub(super) fn strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.get_ref().clone()).collect()
    }
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(StringList(items))
            }
        }
        deserializer.deserialize_seq(ListVisitor)
    }
}

/// A TOML table read in document order, keys with their spans. (A `BTreeMap` would sort the keys, and
/// output columns must keep the order the user wrote.)
#[derive(Debug)]
pub(super) struct OrderedMap<V>(pub(super) Vec<(Spanned<String>, V)>);

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<Spanned<String>, V>()? {
                    entries.push((key, value));
                }
                Ok(OrderedMap(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(PhantomData))
    }
}

/// A `[tables.NAME]` table as written: categories with weights, and the options.
pub(super) type RawTable = OrderedMap<Spanned<RawTableEntry>>;

/// Weights of a table's categories by a parent category: parent table -> parent category ->
/// category -> weight.
pub(super) type RawConditions = OrderedMap<Spanned<OrderedMap<Spanned<OrderedMap<Spanned<f64>>>>>>;

/// One entry of a `[tables.NAME]` table: a category's weight (a number), an option (`mode`,
/// `within`: text), or `by` (a table). Read by type, without buffering, so the spans of the
/// nested values survive for diagnostics.
#[derive(Debug)]
pub(super) enum RawTableEntry {
    Weight(f64),
    Text(String),
    By(RawConditions),
}

impl<'de> Deserialize<'de> for RawTableEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = RawTableEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a weight (a number), `mode` or `within` (text), or a `by` table")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTableEntry::Weight(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTableEntry::Weight(v as f64))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTableEntry::Weight(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTableEntry::Text(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(RawTableEntry::By(OrderedMap(entries)))
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// Every key of a model table, as written.
pub(super) const MODEL_KEYS: [&str; 21] = [
    "provider",
    "model",
    "base_url",
    "api_key_env",
    "api_key",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "response_format",
    "extra",
    "latency_ms",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "max_attempts",
    "max_invalid_attempts",
    "timeout_secs",
    "deadline_secs",
    "batch",
];

/// Overwrites the keys of `base` that `changes` sets; returns their names.
pub(super) fn merge_model(base: &mut RawModel, changes: &RawModel) -> Vec<&'static str> {
    let mut taken = Vec::new();
    macro_rules! take {
        ($($field:ident),*) => { $( if changes.$field.is_some() {
            base.$field = changes.$field.clone();
            taken.push(stringify!($field));
        } )* };
    }
    take!(
        provider,
        model,
        base_url,
        api_key_env,
        api_key,
        temperature,
        top_p,
        max_tokens,
        seed,
        stop,
        response_format,
        extra,
        latency_ms
    );
    take!(
        max_concurrency,
        requests_per_minute,
        tokens_per_minute,
        max_attempts,
        max_invalid_attempts,
        timeout_secs,
        deadline_secs,
        batch
    );
    taken
}

pub(super) fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(items) => items.iter().map(toml_to_json).collect(),
        toml::Value::Table(table) => serde_json::Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}
