//! dataset.toml: reading, profile overrides and validation.
//!
//! This module owns the file format (version 1) and turns what the user wrote into a checked
//! [`Config`]: every value has its type, range and references verified here, and every problem is
//! reported with file, line and key, all of them at once. Templates, the node graph and prompt files are
//! checked by `graph` and `prompt`. The invariant: a [`Config`] never holds a reference that does not
//! resolve (a model, a table, an output column), so later stages never fail on configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use crate::diag::{Diagnostic, Diagnostics, did_you_mean, suggestion};
use crate::language::Language;
use crate::sampling::{ID_SPACE, Table};
use crate::value::OutputKind;

mod toml_errors;

/// Names every template sees besides tables and nodes.
pub const BUILTIN_VARIABLES: [&str; 3] = ["ticket_id", "language", "language_name"];

/// Default output columns, in order; each is used when something of that name exists.
pub const DEFAULT_COLUMNS: [&str; 9] = [
    "ticket_id",
    "subject",
    "body",
    "language",
    "type",
    "queue",
    "priority",
    "tags",
    "first_response",
];

/// The offline provider's model name when none is given.
pub const OFFLINE_MODEL: &str = "ticketbuild-offline-1";

/// Providers a model can name. Only `offline` runs without network; the others speak HTTP.
pub const PROVIDERS: [&str; 7] = [
    "offline",
    "openai",
    "openrouter",
    "together",
    "anthropic",
    "ollama",
    "openai-compatible",
];

// ---------------------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------------------

/// A checked dataset definition with the chosen profile applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file as the user named it.
    pub path: PathBuf,
    /// The folder relative paths in the config are resolved against.
    pub root: PathBuf,
    /// The text of the config file, for diagnostics found later (prompts referenced from it).
    pub source: String,
    pub name: String,
    pub rows: u64,
    pub seed: u64,
    pub output_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub formats: Vec<Format>,
    pub languages: Vec<(Language, f64)>,
    pub tables: Vec<Table>,
    pub models: BTreeMap<String, ModelConfig>,
    pub nodes: Vec<NodeConfig>,
    pub columns: Vec<Column>,
    /// Write `NAME.lineage.parquet`: one row per (ticket, node) telling how it was made.
    pub lineage: bool,
    /// Prefix CSV cells that start with `=`, `+`, `-` or `@` with `'`, so spreadsheets show them
    /// as text instead of running them as formulas. Off by default: it changes the data.
    pub csv_formula_escape: bool,
    /// Tickets in flight at once.
    pub concurrency: usize,
    pub profile: Option<String>,
    /// Prices, limits and currencies.
    pub cost: CostConfig,
}

/// `[cost]`: limits in USD, currencies to show, and price and rate overrides.
#[derive(Debug, Clone, Default)]
pub struct CostConfig {
    /// USD per build: no call is issued that could take the build over it.
    pub budget: Option<f64>,
    /// USD per single call: a warning above it.
    pub warn_per_call: Option<f64>,
    /// USD per single call: the build stops issuing calls above it.
    pub error_per_call: Option<f64>,
    /// Currencies every cost summary shows; `["USD"]` by default.
    pub currencies: Vec<String>,
    /// Units per USD, overriding the built-in rates.
    pub rates: BTreeMap<String, f64>,
    /// USD per million tokens by model name, overriding or adding to the built-in table.
    pub prices: BTreeMap<String, crate::cost::Price>,
    /// Build even when some model has no known price (its cost is then shown as unknown).
    pub allow_unpriced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Parquet,
    Csv,
    Jsonl,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub provider: String,
    /// The model identifier sent to the provider.
    pub model: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub params: Params,
    /// Offline only: simulated latency per call, for trying progress and watch without a server.
    /// Not part of the key: it never changes an output.
    pub latency_ms: u64,
    /// How calls to this model are scheduled and retried. Not part of the key: none of it changes
    /// what is sent, only when and how often.
    pub limits: ModelLimits,
}

/// Per-model scheduling: concurrency, rate limits, retries and timeouts. One provider instance
/// serves every node of a model, so these hold for the model as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLimits {
    /// Requests in flight at once (lowered for a while when the server answers 429).
    pub max_concurrency: usize,
    /// Requests started in any 60-second window; `None` is unlimited.
    pub requests_per_minute: Option<u64>,
    /// Estimated tokens (prompt characters / 4 + max_tokens) in any 60-second window.
    pub tokens_per_minute: Option<u64>,
    /// Attempts per artifact on transient errors (429, 408, 409, 5xx, timeouts, connection errors).
    pub max_attempts: u32,
    /// Attempts per artifact whose reply is malformed, empty or does not validate.
    pub max_invalid_attempts: u32,
    /// Seconds one attempt may take.
    pub timeout_secs: u64,
    /// Seconds one artifact may take from its first attempt, backoff included.
    pub deadline_secs: u64,
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits {
            max_concurrency: 16,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_attempts: 6,
            max_invalid_attempts: 3,
            timeout_secs: 60,
            deadline_secs: 300,
        }
    }
}

/// Request parameters. `None` means "not sent", which is different from any value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u64>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    /// How `list` and `json` nodes ask for structured replies: `json_schema`, `json_object` or
    /// `text`. Unset lets the adapter choose for the node's output kind.
    pub response_format: Option<String>,
    /// Passed verbatim in the request body.
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// As written in the config (relative to `root`).
    pub prompt: PathBuf,
    pub model: String,
    pub output: OutputKind,
    /// Template expression; the node runs for a ticket only when it is true.
    pub when: Option<String>,
    /// The offline task this node asks for (defaults to the node name).
    pub task: String,
    /// USD this node may spend in one build.
    pub max_cost: Option<f64>,
    /// Where `prompt` and `when` sit in the config, for diagnostics about them.
    pub prompt_span: std::ops::Range<usize>,
    pub when_span: Option<std::ops::Range<usize>>,
}

/// One output column and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// Tried in order; the first that has a value (not a node skipped by `when`) wins.
    pub sources: Vec<Source>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    TicketId,
    Language,
    Table(String),
    Node(String),
    NodeField(String, String),
}

/// Overrides from the command line, applied after the profile.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub profile: Option<String>,
    pub rows: Option<u64>,
    pub cache_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<Spanned<i64>>,
    /// Required; optional here so that its absence is reported with the other problems.
    dataset: Option<Spanned<RawDataset>>,
    #[serde(default)]
    tables: OrderedMap<Spanned<OrderedMap<Spanned<f64>>>>,
    #[serde(default)]
    models: OrderedMap<Spanned<RawModel>>,
    #[serde(default)]
    nodes: OrderedMap<Spanned<RawNode>>,
    output: Option<Spanned<RawOutput>>,
    #[serde(default)]
    profile: OrderedMap<Spanned<RawProfile>>,
    cost: Option<Spanned<RawCost>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCost {
    budget: Option<Spanned<f64>>,
    warn_per_call: Option<Spanned<f64>>,
    error_per_call: Option<Spanned<f64>>,
    currencies: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    rates: OrderedMap<Spanned<f64>>,
    #[serde(default)]
    prices: OrderedMap<Spanned<crate::cost::Price>>,
    allow_unpriced: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    name: Option<String>,
    rows: Option<Spanned<i64>>,
    seed: Option<Spanned<i64>>,
    output: Option<String>,
    cache: Option<String>,
    formats: Option<Spanned<StringList>>,
    languages: Option<Spanned<OrderedMap<Spanned<f64>>>>,
    concurrency: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawModel {
    provider: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    /// Never accepted; present so the error can say what to do instead.
    api_key: Option<Spanned<toml::Value>>,
    temperature: Option<Spanned<f64>>,
    top_p: Option<Spanned<f64>>,
    max_tokens: Option<Spanned<i64>>,
    seed: Option<Spanned<i64>>,
    stop: Option<Spanned<StringList>>,
    response_format: Option<Spanned<String>>,
    extra: Option<toml::Table>,
    latency_ms: Option<Spanned<i64>>,
    max_concurrency: Option<Spanned<i64>>,
    requests_per_minute: Option<Spanned<i64>>,
    tokens_per_minute: Option<Spanned<i64>>,
    max_attempts: Option<Spanned<i64>>,
    max_invalid_attempts: Option<Spanned<i64>>,
    timeout_secs: Option<Spanned<i64>>,
    deadline_secs: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    prompt: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    min_items: Option<Spanned<i64>>,
    max_items: Option<Spanned<i64>>,
    fields: Option<Spanned<StringList>>,
    when: Option<Spanned<String>>,
    task: Option<Spanned<String>>,
    max_cost: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    columns: Option<OrderedMap<Spanned<toml::Value>>>,
    lineage: Option<bool>,
    csv_formula_escape: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    rows: Option<Spanned<i64>>,
    max_tokens: Option<Spanned<i64>>,
    concurrency: Option<Spanned<i64>>,
    #[serde(default)]
    models: OrderedMap<Spanned<RawModel>>,
}

/// An array of strings, each with its span. Its own type so that a wrong type is reported as
/// "expected an array of strings", not as serde's "expected a sequence".
#[derive(Debug, Clone, Default)]
struct StringList(Vec<Spanned<String>>);

impl StringList {
    fn strings(&self) -> Vec<String> {
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
struct OrderedMap<V>(Vec<(Spanned<String>, V)>);

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

// ---------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------

impl Config {
    /// Reads and checks `path`, applying the profile and command-line overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, Diagnostics> {
        let bytes = std::fs::read(path).map_err(|e| {
            Diagnostic::file(
                path,
                format!("cannot read the dataset file: {}", io_reason(&e)),
            )
        })?;
        let source = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            Diagnostic::invalid_utf8(path, e.as_bytes(), valid)
        })?;
        Config::parse(path, source, overrides)
    }

    /// Checks `source`, the text of the config file `path`.
    pub fn parse(
        path: &Path,
        source: String,
        overrides: &Overrides,
    ) -> Result<Config, Diagnostics> {
        let raw: RawFile =
            toml::from_str(&source).map_err(|e| toml_errors::diagnose(path, &source, &e))?;
        let root = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let mut checker = Checker {
            path,
            source: &source,
            problems: Diagnostics::default(),
            renamed: BTreeMap::new(),
        };
        let config = checker.check(raw, root, overrides);
        let problems = checker.problems;
        match config {
            Some(mut config) if problems.is_empty() => {
                config.source = source;
                Ok(config)
            }
            _ => Err(problems),
        }
    }

    pub fn model_of(&self, node: &NodeConfig) -> &ModelConfig {
        // Invariant: `check` verified that every node's model exists.
        &self.models[&node.model]
    }

    /// Resolves a config-relative path.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }
}

pub(crate) fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
    problems: Diagnostics,
    /// Keys whose value the profile set, and the key the user wrote it under
    /// (`dataset.rows` -> `profile.dev.rows`): problems are reported under the key written.
    renamed: BTreeMap<String, String>,
}

impl Checker<'_> {
    fn error(
        &mut self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let key = self.written_key(key.into());
        let diagnostic = Diagnostic::at(self.path, self.source, span, message)
            .with_key(key)
            .without_secrets();
        self.problems.push(diagnostic);
    }

    /// The key as the user wrote it: the profile's key when the profile set the value.
    fn written_key(&self, key: String) -> String {
        self.renamed.get(&key).cloned().unwrap_or(key)
    }

    fn check(&mut self, mut raw: RawFile, root: PathBuf, overrides: &Overrides) -> Option<Config> {
        if let Some(version) = &raw.version {
            if *version.get_ref() != 1 {
                self.error(
                    version.span(),
                    "version",
                    format!(
                        "unsupported version {}; this ticketbuild reads version 1",
                        version.get_ref()
                    ),
                );
            }
        }
        let mut dataset = match raw.dataset.take() {
            Some(dataset) => dataset.into_inner(),
            None => {
                self.problems.push(Diagnostic::file(
                    self.path,
                    "missing the [dataset] table; add `[dataset]` with the dataset's `name` and `rows`",
                ));
                RawDataset::default()
            }
        };
        let profile = self.apply_profile(&mut raw, &mut dataset, overrides.profile.as_deref());

        let name = dataset.name.unwrap_or_else(|| "dataset".to_string());
        let rows = match (overrides.rows, &dataset.rows) {
            (Some(0), _) => {
                self.problems.push(Diagnostic::argument(
                    "--rows",
                    "must be at least 1, found 0",
                ));
                None
            }
            (Some(rows), _) if rows > ID_SPACE => {
                self.problems.push(Diagnostic::argument(
                    "--rows",
                    format!("{rows} rows exceed the ticket id space of {ID_SPACE} 12-13 digit ids"),
                ));
                None
            }
            (Some(rows), _) => Some(rows),
            (None, Some(rows)) => match self.positive(rows, "dataset.rows") {
                Some(count) if count > ID_SPACE => {
                    self.error(
                        rows.span(),
                        "dataset.rows",
                        format!(
                            "{count} rows exceed the ticket id space of {ID_SPACE} 12-13 digit ids"
                        ),
                    );
                    None
                }
                valid => valid,
            },
            (None, None) => Some(200),
        };
        let seed = match &dataset.seed {
            Some(seed) => *seed.get_ref() as u64,
            None => 0,
        };
        let concurrency = match &dataset.concurrency {
            Some(c) => self.positive(c, "dataset.concurrency").unwrap_or(1) as usize,
            None => 64,
        };
        let formats = self.formats(dataset.formats.as_ref());
        let languages = self.languages(dataset.languages.as_ref());
        let tables = self.tables(&raw.tables);
        let models = self.models(&raw.models);
        let nodes = self.nodes(&raw.nodes, &models);
        self.check_names(&raw.tables, &raw.nodes);
        let columns = self.columns(raw.output.as_ref(), &tables, &nodes);
        let csv_formula_escape = raw
            .output
            .as_ref()
            .and_then(|o| o.get_ref().csv_formula_escape)
            .unwrap_or(false);
        let lineage = raw
            .output
            .as_ref()
            .and_then(|o| o.get_ref().lineage)
            .unwrap_or(false);

        let cost = self.cost(raw.cost.as_ref());
        let output_dir = overrides
            .output_dir
            .clone()
            .unwrap_or_else(|| root.join(dataset.output.as_deref().unwrap_or("out")));
        let cache_dir = overrides
            .cache_dir
            .clone()
            .unwrap_or_else(|| root.join(dataset.cache.as_deref().unwrap_or("cache")));
        Some(Config {
            path: self.path.to_path_buf(),
            root,
            source: String::new(),
            name,
            rows: rows?,
            seed,
            output_dir,
            cache_dir,
            formats,
            languages,
            tables,
            models,
            nodes,
            columns,
            lineage,
            csv_formula_escape,
            concurrency,
            profile,
            cost,
        })
    }

    /// A non-negative amount of money.
    fn money(&mut self, value: &Spanned<f64>, key: &str) -> Option<f64> {
        let amount = *value.get_ref();
        if amount.is_finite() && amount >= 0.0 {
            Some(amount)
        } else {
            self.error(
                value.span(),
                key,
                format!("must be a non-negative amount of USD, found {amount}"),
            );
            None
        }
    }

    fn cost(&mut self, raw: Option<&Spanned<RawCost>>) -> CostConfig {
        let Some(raw) = raw else {
            return CostConfig {
                currencies: vec!["USD".to_string()],
                ..CostConfig::default()
            };
        };
        let raw = raw.get_ref();
        let mut cost = CostConfig {
            budget: raw
                .budget
                .as_ref()
                .and_then(|b| self.money(b, "cost.budget")),
            warn_per_call: raw
                .warn_per_call
                .as_ref()
                .and_then(|b| self.money(b, "cost.warn_per_call")),
            error_per_call: raw
                .error_per_call
                .as_ref()
                .and_then(|b| self.money(b, "cost.error_per_call")),
            allow_unpriced: raw.allow_unpriced.unwrap_or(false),
            ..CostConfig::default()
        };
        for (code, rate) in &raw.rates.0 {
            let key = format!("cost.rates.{}", code.get_ref());
            if self.weight(rate, &key) {
                cost.rates.insert(code.get_ref().clone(), *rate.get_ref());
            }
        }
        for (model, price) in &raw.prices.0 {
            let p = price.get_ref();
            let all = [
                Some(p.input),
                p.cached_input,
                Some(p.output),
                p.batch_input,
                p.batch_output,
            ];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                self.error(
                    price.span(),
                    format!("cost.prices.{}", model.get_ref()),
                    "prices must be non-negative USD per million tokens",
                );
            }
            cost.prices.insert(model.get_ref().clone(), *p);
        }
        cost.currencies = match &raw.currencies {
            None => vec!["USD".to_string()],
            Some(list) => list
                .iter()
                .filter_map(|code| {
                    let known = crate::cost::rate(code.get_ref(), &cost.rates).is_some();
                    if !known {
                        let builtin = crate::cost::known_currencies().join(", ");
                        self.error(
                            code.span(),
                            "cost.currencies",
                            format!(
                                "no rate for `{}`; add it under [cost.rates] (units per USD) or use one of {builtin}",
                                code.get_ref()
                            ),
                        );
                    }
                    known.then(|| code.get_ref().clone())
                })
                .collect(),
        };
        cost
    }

    fn positive(&mut self, value: &Spanned<i64>, key: &str) -> Option<u64> {
        if *value.get_ref() < 1 {
            self.error(
                value.span(),
                key,
                format!("must be at least 1, found {}", value.get_ref()),
            );
            None
        } else {
            Some(*value.get_ref() as u64)
        }
    }

    /// Merges `[profile.NAME]` into the raw file, like Cargo profiles: only what the profile sets
    /// changes. The profile's own values are checked here, under the profile's keys; a value that
    /// fails is reported once and not applied (so it is not reported again for every model).
    fn apply_profile(
        &mut self,
        raw: &mut RawFile,
        dataset: &mut RawDataset,
        profile: Option<&str>,
    ) -> Option<String> {
        let name = profile?;
        let Some(index) = raw.profile.0.iter().position(|(k, _)| k.get_ref() == name) else {
            let known: Vec<&str> = raw
                .profile
                .0
                .iter()
                .map(|(k, _)| k.get_ref().as_str())
                .collect();
            let hint = match did_you_mean(name, known.iter().copied()) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None if known.is_empty() => "; the file defines no [profile.*] table".to_string(),
                None => format!("; defined: {}", known.join(", ")),
            };
            self.problems.push(Diagnostic::file(
                self.path,
                format!("unknown profile `{name}`{hint}"),
            ));
            return Some(name.to_string());
        };
        let prefix = format!("profile.{name}");
        let profile = &raw.profile.0[index].1;
        let profile = profile.get_ref();
        if let Some(rows) = &profile.rows {
            if self.positive(rows, &format!("{prefix}.rows")).is_some() {
                dataset.rows = Some(rows.clone());
                self.renamed
                    .insert("dataset.rows".to_string(), format!("{prefix}.rows"));
            }
        }
        if let Some(concurrency) = &profile.concurrency {
            if self
                .positive(concurrency, &format!("{prefix}.concurrency"))
                .is_some()
            {
                dataset.concurrency = Some(concurrency.clone());
                self.renamed.insert(
                    "dataset.concurrency".to_string(),
                    format!("{prefix}.concurrency"),
                );
            }
        }
        if let Some(max_tokens) = &profile.max_tokens {
            if self
                .positive(max_tokens, &format!("{prefix}.max_tokens"))
                .is_some()
            {
                for (model_name, model) in &mut raw.models.0 {
                    model.get_mut().max_tokens = Some(max_tokens.clone());
                    self.renamed.insert(
                        format!("models.{}.max_tokens", model_name.get_ref()),
                        format!("{prefix}.max_tokens"),
                    );
                }
            }
        }
        for (model_name, changes) in &profile.models.0 {
            let base = format!("models.{}", model_name.get_ref());
            let written = format!("{prefix}.models.{}", model_name.get_ref());
            let taken = match raw
                .models
                .0
                .iter_mut()
                .find(|(k, _)| k.get_ref() == model_name.get_ref())
            {
                Some((_, model)) => merge_model(model.get_mut(), changes.get_ref()),
                None => {
                    // The profile defines the model: every problem with it is in the profile.
                    raw.models.0.push((model_name.clone(), changes.clone()));
                    self.renamed.insert(base.clone(), written.clone());
                    MODEL_KEYS.to_vec()
                }
            };
            for field in taken {
                self.renamed
                    .insert(format!("{base}.{field}"), format!("{written}.{field}"));
            }
        }
        Some(name.to_string())
    }

    fn formats(&mut self, formats: Option<&Spanned<StringList>>) -> Vec<Format> {
        let Some(formats) = formats else {
            return vec![Format::Parquet, Format::Csv, Format::Jsonl];
        };
        let mut out = Vec::new();
        for format in &formats.get_ref().0 {
            match format.get_ref().as_str() {
                "parquet" => out.push(Format::Parquet),
                "csv" => out.push(Format::Csv),
                "jsonl" => out.push(Format::Jsonl),
                other => self.error(
                    format.span(),
                    "dataset.formats",
                    format!("unknown format `{other}`; use parquet, csv or jsonl"),
                ),
            }
        }
        if formats.get_ref().0.is_empty() {
            self.error(
                formats.span(),
                "dataset.formats",
                "name at least one format",
            );
        }
        out.sort();
        out.dedup();
        out
    }

    fn languages(
        &mut self,
        languages: Option<&Spanned<OrderedMap<Spanned<f64>>>>,
    ) -> Vec<(Language, f64)> {
        let Some(languages) = languages else {
            return Language::ALL.iter().map(|l| (*l, 1.0)).collect();
        };
        let mut out = Vec::new();
        for (code, weight) in &languages.get_ref().0 {
            let key = format!("dataset.languages.{}", code.get_ref());
            match Language::from_code(code.get_ref()) {
                Some(language) => {
                    if self.weight(weight, &key) {
                        out.push((language, *weight.get_ref()));
                    }
                }
                None => self.error(
                    code.span(),
                    key,
                    format!(
                        "unknown language code `{}`; use DE, EN, FR, ES or PT",
                        code.get_ref()
                    ),
                ),
            }
        }
        if languages.get_ref().0.is_empty() {
            self.error(
                languages.span(),
                "dataset.languages",
                "give at least one language a weight",
            );
        }
        out
    }

    fn weight(&mut self, weight: &Spanned<f64>, key: &str) -> bool {
        let value = *weight.get_ref();
        if value.is_finite() && value > 0.0 {
            true
        } else {
            self.error(
                weight.span(),
                key,
                format!("weights must be positive numbers, found {value}"),
            );
            false
        }
    }

    fn tables(&mut self, tables: &OrderedMap<Spanned<OrderedMap<Spanned<f64>>>>) -> Vec<Table> {
        let mut out = Vec::new();
        for (name, categories) in &tables.0 {
            let key = format!("tables.{}", name.get_ref());
            self.identifier(name, &key);
            let mut table = Table {
                name: name.get_ref().clone(),
                categories: Vec::new(),
            };
            for (category, weight) in &categories.get_ref().0 {
                if self.weight(weight, &format!("{key}.{}", category.get_ref())) {
                    table
                        .categories
                        .push((category.get_ref().clone(), *weight.get_ref()));
                }
            }
            if categories.get_ref().0.is_empty() {
                self.error(
                    categories.span(),
                    key,
                    "a table needs at least one category with a weight",
                );
            }
            out.push(table);
        }
        out
    }

    fn identifier(&mut self, name: &Spanned<String>, key: &str) -> bool {
        let ok = is_identifier(name.get_ref());
        if !ok {
            self.error(
                name.span(),
                key,
                format!(
                    "`{}` cannot be used as a template variable; use letters, digits and `_`, not starting with a digit",
                    name.get_ref()
                ),
            );
        }
        ok
    }

    fn models(&mut self, models: &OrderedMap<Spanned<RawModel>>) -> BTreeMap<String, ModelConfig> {
        let mut out = BTreeMap::new();
        let has_default = models.0.iter().any(|(k, _)| k.get_ref() == "default");
        if !has_default {
            out.insert("default".to_string(), offline_model("default"));
        }
        for (name, raw) in &models.0 {
            let key = format!("models.{}", name.get_ref());
            if let Some(model) = self.model(name.get_ref(), raw, &key) {
                out.insert(name.get_ref().clone(), model);
            }
        }
        out
    }

    fn model(&mut self, name: &str, raw: &Spanned<RawModel>, key: &str) -> Option<ModelConfig> {
        let span = raw.span();
        let raw = raw.get_ref();
        if let Some(api_key) = &raw.api_key {
            self.secret_error(
                api_key.span(),
                format!("{key}.api_key"),
                "API keys do not belong in dataset.toml; put the key in an environment variable (or .env) and name it with `api_key_env`",
            );
        }
        let Some(provider) = &raw.provider else {
            self.error(
                span,
                key,
                format!("missing `provider`; use one of {}", PROVIDERS.join(", ")),
            );
            return None;
        };
        if !PROVIDERS.contains(&provider.get_ref().as_str()) {
            let hint = did_you_mean(provider.get_ref(), PROVIDERS).map_or_else(
                || format!("; use one of {}", PROVIDERS.join(", ")),
                |s| format!(" (did you mean `{s}`?)"),
            );
            self.error(
                provider.span(),
                format!("{key}.provider"),
                format!("unknown provider `{}`{hint}", provider.get_ref()),
            );
            return None;
        }
        let provider_name = provider.get_ref().clone();
        let is_http = |url: &Spanned<String>| {
            ["http://", "https://"]
                .iter()
                .any(|p| url.get_ref().starts_with(p))
        };
        match &raw.base_url {
            Some(url) if !is_http(url) => self.error(
                url.span(),
                format!("{key}.base_url"),
                format!("`{}` is not an http:// or https:// URL", url.get_ref()),
            ),
            Some(url) if provider_name == "offline" => self.error(
                url.span(),
                format!("{key}.base_url"),
                "the offline model takes no `base_url`",
            ),
            None if provider_name == "openai-compatible" => self.error(
                span.clone(),
                format!("{key}.base_url"),
                "provider `openai-compatible` needs `base_url`, the server's OpenAI-style API root (for example \"http://localhost:8000/v1\")",
            ),
            _ => {}
        }
        if let Some(env) = &raw.api_key_env {
            let name = env.get_ref();
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.secret_error(
                    env.span(),
                    format!("{key}.api_key_env"),
                    // The value is not echoed: a key pasted here by mistake must not reach a log.
                    "is not an environment variable name (letters, digits and `_`); name the variable that holds the key, never the key itself",
                );
            }
        }
        if let Some(t) = raw
            .temperature
            .as_ref()
            .filter(|t| provider_name == "anthropic" && *t.get_ref() > 1.0)
        {
            self.error(
                t.span(),
                format!("{key}.temperature"),
                "must be between 0 and 1 for the Anthropic Messages API",
            );
        }
        if let Some(seed) = raw.seed.as_ref().filter(|_| provider_name == "anthropic") {
            self.error(
                seed.span(),
                format!("{key}.seed"),
                "the Anthropic Messages API takes no `seed`; remove it from this model",
            );
        }
        let model = match &raw.model {
            Some(model) => model.get_ref().clone(),
            None if provider_name == "offline" => OFFLINE_MODEL.to_string(),
            None => {
                self.error(
                    span.clone(),
                    key,
                    "missing `model` (the model name the provider knows)",
                );
                String::new()
            }
        };
        let mut params = Params::default();
        if let Some(t) = &raw.temperature {
            if !(0.0..=2.0).contains(t.get_ref()) {
                self.error(
                    t.span(),
                    format!("{key}.temperature"),
                    "must be between 0 and 2",
                );
            }
            params.temperature = Some(*t.get_ref());
        }
        if let Some(p) = &raw.top_p {
            if !(0.0..=1.0).contains(p.get_ref()) || *p.get_ref() == 0.0 {
                self.error(
                    p.span(),
                    format!("{key}.top_p"),
                    "must be greater than 0 and at most 1",
                );
            }
            params.top_p = Some(*p.get_ref());
        }
        if let Some(m) = &raw.max_tokens {
            params.max_tokens = self.positive(m, &format!("{key}.max_tokens"));
        }
        params.seed = raw.seed.as_ref().map(|seed| *seed.get_ref());
        params.stop = raw.stop.as_ref().map(|stop| stop.get_ref().strings());
        if let Some(format) = &raw.response_format {
            if !["json_schema", "json_object", "text"].contains(&format.get_ref().as_str()) {
                self.error(
                    format.span(),
                    format!("{key}.response_format"),
                    format!(
                        "unknown response format `{}`; use json_schema, json_object or text",
                        format.get_ref()
                    ),
                );
            }
            params.response_format = Some(format.get_ref().clone());
        }
        if let Some(extra) = &raw.extra {
            params.extra = extra
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect();
        }
        let latency_ms = match &raw.latency_ms {
            Some(l) if *l.get_ref() < 0 => {
                self.error(
                    l.span(),
                    format!("{key}.latency_ms"),
                    "must not be negative",
                );
                0
            }
            Some(l) => *l.get_ref() as u64,
            None => 0,
        };
        let limits = self.model_limits(raw, key);
        Some(ModelConfig {
            name: name.to_string(),
            provider: provider_name,
            model,
            base_url: raw.base_url.as_ref().map(|url| url.get_ref().clone()),
            api_key_env: raw.api_key_env.as_ref().map(|env| env.get_ref().clone()),
            params,
            latency_ms,
            limits,
        })
    }

    /// An error about a value that may be a secret: located, but without the source line, so the
    /// value never reaches the terminal or a log.
    fn secret_error(&mut self, span: std::ops::Range<usize>, key: String, message: &str) {
        let key = self.written_key(key);
        let mut diagnostic = Diagnostic::at(self.path, self.source, span, message).with_key(key);
        diagnostic.snippet = None;
        self.problems.push(diagnostic);
    }

    /// Scheduling settings of a model; each must be at least 1 when given.
    fn model_limits(&mut self, raw: &RawModel, key: &str) -> ModelLimits {
        let defaults = ModelLimits::default();
        let mut positive = |value: &Option<Spanned<i64>>, name: &str| {
            value
                .as_ref()
                .and_then(|v| self.positive(v, &format!("{key}.{name}")))
        };
        ModelLimits {
            max_concurrency: positive(&raw.max_concurrency, "max_concurrency")
                .map_or(defaults.max_concurrency, |v| v as usize),
            requests_per_minute: positive(&raw.requests_per_minute, "requests_per_minute"),
            tokens_per_minute: positive(&raw.tokens_per_minute, "tokens_per_minute"),
            max_attempts: positive(&raw.max_attempts, "max_attempts")
                .map_or(defaults.max_attempts, |v| v.min(u64::from(u32::MAX)) as u32),
            max_invalid_attempts: positive(&raw.max_invalid_attempts, "max_invalid_attempts")
                .map_or(defaults.max_invalid_attempts, |v| {
                    v.min(u64::from(u32::MAX)) as u32
                }),
            timeout_secs: positive(&raw.timeout_secs, "timeout_secs")
                .unwrap_or(defaults.timeout_secs),
            deadline_secs: positive(&raw.deadline_secs, "deadline_secs")
                .unwrap_or(defaults.deadline_secs),
        }
    }

    fn nodes(
        &mut self,
        nodes: &OrderedMap<Spanned<RawNode>>,
        models: &BTreeMap<String, ModelConfig>,
    ) -> Vec<NodeConfig> {
        let mut out = Vec::new();
        if nodes.0.is_empty() {
            self.problems.push(Diagnostic::file(
                self.path,
                "defines no nodes; add at least one [nodes.NAME] table with a `prompt`",
            ));
        }
        for (name, raw) in &nodes.0 {
            let key = format!("nodes.{}", name.get_ref());
            self.identifier(name, &key);
            let span = raw.span();
            let raw = raw.get_ref();
            let Some(prompt) = &raw.prompt else {
                self.error(
                    span,
                    &key,
                    "missing `prompt` (the template file of this node)",
                );
                continue;
            };
            let model = match &raw.model {
                Some(model) if !models.contains_key(model.get_ref()) => {
                    let hint = suggestion(model.get_ref(), models.keys().map(String::as_str));
                    self.error(
                        model.span(),
                        format!("{key}.model"),
                        format!(
                            "unknown model `{}`{hint}; define it under [models.{}]",
                            model.get_ref(),
                            model.get_ref()
                        ),
                    );
                    continue;
                }
                Some(model) => model.get_ref().clone(),
                None => "default".to_string(),
            };
            let Some(output) = self.output_kind(raw, &key) else {
                continue;
            };
            out.push(NodeConfig {
                name: name.get_ref().clone(),
                prompt: PathBuf::from(prompt.get_ref()),
                model,
                output,
                when: raw.when.as_ref().map(|w| w.get_ref().clone()),
                task: raw
                    .task
                    .as_ref()
                    .map_or_else(|| name.get_ref().clone(), |t| t.get_ref().clone()),
                prompt_span: prompt.span(),
                when_span: raw.when.as_ref().map(Spanned::span),
                max_cost: raw
                    .max_cost
                    .as_ref()
                    .and_then(|m| self.money(m, &format!("{key}.max_cost"))),
            });
        }
        out
    }

    fn output_kind(&mut self, raw: &RawNode, key: &str) -> Option<OutputKind> {
        let kind = raw.output.as_ref().map_or("text", |o| o.get_ref().as_str());
        let misplaced = |field: &Option<Spanned<i64>>| field.as_ref().map(Spanned::span);
        match kind {
            "text" | "list" | "json" => {}
            other => {
                let span = raw.output.as_ref().map(Spanned::span).unwrap_or_default();
                self.error(
                    span,
                    format!("{key}.output"),
                    format!("unknown output kind `{other}`; use text, list or json"),
                );
                return None;
            }
        }
        if kind != "list" {
            for (field, name) in [(&raw.min_items, "min_items"), (&raw.max_items, "max_items")] {
                if let Some(span) = misplaced(field) {
                    self.error(
                        span,
                        format!("{key}.{name}"),
                        "only `list` nodes take item counts",
                    );
                }
            }
        }
        if kind != "json" {
            if let Some(fields) = &raw.fields {
                self.error(
                    fields.span(),
                    format!("{key}.fields"),
                    "only `json` nodes take `fields`",
                );
            }
        }
        match kind {
            "text" => Some(OutputKind::Text),
            "list" => {
                let min = raw
                    .min_items
                    .as_ref()
                    .map_or(Some(1), |m| self.positive(m, &format!("{key}.min_items")))?;
                let max = raw.max_items.as_ref().map_or(Some(min.max(20)), |m| {
                    self.positive(m, &format!("{key}.max_items"))
                })?;
                if min > max {
                    let span = raw
                        .max_items
                        .as_ref()
                        .map(Spanned::span)
                        .unwrap_or_default();
                    self.error(
                        span,
                        format!("{key}.max_items"),
                        format!("is smaller than min_items ({max} < {min})"),
                    );
                    return None;
                }
                Some(OutputKind::List {
                    min: min as usize,
                    max: max as usize,
                })
            }
            _ => {
                let Some(fields) = &raw.fields else {
                    let span = raw.output.as_ref().map(Spanned::span).unwrap_or_default();
                    self.error(
                        span,
                        format!("{key}.fields"),
                        "a `json` node needs `fields = [\"...\"]`, the names of its string fields",
                    );
                    return None;
                };
                let mut seen = BTreeSet::new();
                let mut repeated = BTreeSet::new();
                for field in &fields.get_ref().0 {
                    let field = field.get_ref();
                    if !is_identifier(field) {
                        self.error(
                            fields.span(),
                            format!("{key}.fields"),
                            format!("field `{field}` is not a valid name; use letters, digits and `_`, not starting with a digit"),
                        );
                    } else if !seen.insert(field) && repeated.insert(field) {
                        self.error(
                            fields.span(),
                            format!("{key}.fields"),
                            format!("field `{field}` is listed twice"),
                        );
                    }
                }
                if fields.get_ref().0.is_empty() {
                    self.error(
                        fields.span(),
                        format!("{key}.fields"),
                        "name at least one field",
                    );
                }
                Some(OutputKind::Json {
                    fields: fields.get_ref().strings(),
                })
            }
        }
    }

    /// Tables, nodes and built-in variables share one namespace in templates.
    fn check_names(
        &mut self,
        tables: &OrderedMap<Spanned<OrderedMap<Spanned<f64>>>>,
        nodes: &OrderedMap<Spanned<RawNode>>,
    ) {
        for (name, _) in &nodes.0 {
            if BUILTIN_VARIABLES.contains(&name.get_ref().as_str()) {
                self.error(
                    name.span(),
                    format!("nodes.{}", name.get_ref()),
                    format!(
                        "`{}` is a built-in variable; rename the node",
                        name.get_ref()
                    ),
                );
            } else if tables.0.iter().any(|(t, _)| t.get_ref() == name.get_ref()) {
                self.error(
                    name.span(),
                    format!("nodes.{}", name.get_ref()),
                    format!(
                        "a table is also called `{}`; templates could not tell them apart",
                        name.get_ref()
                    ),
                );
            }
        }
        for (table, _) in &tables.0 {
            if BUILTIN_VARIABLES.contains(&table.get_ref().as_str()) {
                self.error(
                    table.span(),
                    format!("tables.{}", table.get_ref()),
                    format!(
                        "`{}` is a built-in variable; rename the table",
                        table.get_ref()
                    ),
                );
            }
        }
    }

    fn columns(
        &mut self,
        output: Option<&Spanned<RawOutput>>,
        tables: &[Table],
        nodes: &[NodeConfig],
    ) -> Vec<Column> {
        let resolve = |name: &str| -> Option<Source> { resolve_source(name, tables, nodes).ok() };
        let Some(columns) = output.and_then(|o| o.get_ref().columns.as_ref()) else {
            // The default: the standard columns that resolve, then every other table.
            let mut out: Vec<Column> = DEFAULT_COLUMNS
                .iter()
                .filter_map(|name| {
                    resolve(name).map(|source| Column {
                        name: name.to_string(),
                        sources: vec![source],
                    })
                })
                .collect();
            for table in tables {
                if !out.iter().any(|c| c.name == table.name) {
                    out.push(Column {
                        name: table.name.clone(),
                        sources: vec![Source::Table(table.name.clone())],
                    });
                }
            }
            return out;
        };
        let mut out = Vec::new();
        for (name, value) in &columns.0 {
            let key = format!("output.columns.{}", name.get_ref());
            let names: Vec<String> = match value.get_ref() {
                toml::Value::String(s) => vec![s.clone()],
                toml::Value::Array(items)
                    if !items.is_empty() && items.iter().all(|i| i.is_str()) =>
                {
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect()
                }
                _ => {
                    self.error(value.span(), key, "a column source is a name (\"node\", \"node.field\", a table, \"ticket_id\", \"language\") or a list of names to try in order");
                    continue;
                }
            };
            let mut sources = Vec::new();
            for source_name in names {
                match resolve_source(&source_name, tables, nodes) {
                    Ok(source) => sources.push(source),
                    Err(message) => self.error(value.span(), key.clone(), message),
                }
            }
            if !sources.is_empty() {
                out.push(Column {
                    name: name.get_ref().clone(),
                    sources,
                });
            }
        }
        out
    }
}

/// What an output column's source name refers to, or why it refers to nothing.
fn resolve_source(name: &str, tables: &[Table], nodes: &[NodeConfig]) -> Result<Source, String> {
    match name {
        "ticket_id" => return Ok(Source::TicketId),
        "language" => return Ok(Source::Language),
        _ => {}
    }
    if let Some((owner, field)) = name.split_once('.') {
        if let Some(node) = nodes.iter().find(|n| n.name == owner) {
            return match &node.output {
                OutputKind::Json { fields } if fields.iter().any(|f| f == field) => {
                    Ok(Source::NodeField(owner.to_string(), field.to_string()))
                }
                OutputKind::Json { fields } => {
                    let hint = suggestion(field, fields.iter().map(String::as_str));
                    let list = fields
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let noun = if fields.len() == 1 {
                        "field is"
                    } else {
                        "fields are"
                    };
                    Err(format!(
                        "`{name}`: the json node `{owner}` has no field `{field}`{hint}; its {noun} {list}"
                    ))
                }
                other => Err(format!(
                    "`{name}`: `{owner}` is a {} node; only json nodes have fields",
                    other.name()
                )),
            };
        }
        if tables.iter().any(|t| t.name == owner) {
            return Err(format!(
                "`{name}`: `{owner}` is a table; only json nodes have fields"
            ));
        }
    } else if tables.iter().any(|t| t.name == name) {
        return Ok(Source::Table(name.to_string()));
    } else if nodes.iter().any(|n| n.name == name) {
        return Ok(Source::Node(name.to_string()));
    }
    let mut known: Vec<String> = vec!["ticket_id".into(), "language".into()];
    known.extend(tables.iter().map(|t| t.name.clone()));
    for node in nodes {
        known.push(node.name.clone());
        if let OutputKind::Json { fields } = &node.output {
            known.extend(fields.iter().map(|f| format!("{}.{f}", node.name)));
        }
    }
    let hint = suggestion(name, known.iter().map(String::as_str));
    Err(format!(
        "`{name}` names no node, node field, table or built-in column{hint}"
    ))
}

/// Every key of a model table, as written.
const MODEL_KEYS: [&str; 20] = [
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
];

/// Overwrites the keys of `base` that `changes` sets; returns their names.
fn merge_model(base: &mut RawModel, changes: &RawModel) -> Vec<&'static str> {
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
        deadline_secs
    );
    taken
}

fn offline_model(name: &str) -> ModelConfig {
    ModelConfig {
        name: name.to_string(),
        provider: "offline".to_string(),
        model: OFFLINE_MODEL.to_string(),
        base_url: None,
        api_key_env: None,
        params: Params::default(),
        latency_ms: 0,
        limits: ModelLimits::default(),
    }
}

pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn toml_to_json(value: &toml::Value) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"[dataset]
rows = 3

[models.default]
provider = "offline"

[nodes.topic]
prompt = "prompts/topic.jinja"

[nodes.paraphrase]
prompt = "prompts/paraphrase.jinja"
output = "json"
fields = ["subject", "body"]
"#;

    /// The headlines of the problems in `BASE` followed by `extra`, with `profile` chosen.
    fn problems(extra: &str, profile: Option<&str>) -> Vec<String> {
        let overrides = Overrides {
            profile: profile.map(str::to_string),
            ..Overrides::default()
        };
        match Config::parse(Path::new("d.toml"), format!("{BASE}{extra}"), &overrides) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.0.iter().map(Diagnostic::headline).collect(),
        }
    }

    #[test]
    fn profile_values_are_reported_under_the_profile_key() {
        let extra = "\n[profile.dev]\nrows = 0\nmax_tokens = 0\n\n[profile.dev.models.default]\ntemperature = 5.0\n\n[profile.dev.models.cheap]\nprovider = \"openai\"\n";
        assert_eq!(
            problems(extra, Some("dev")),
            [
                "d.toml:16:8: `profile.dev.rows`: must be at least 1, found 0",
                "d.toml:17:14: `profile.dev.max_tokens`: must be at least 1, found 0",
                "d.toml:20:15: `profile.dev.models.default.temperature`: must be between 0 and 2",
                "d.toml:22:1: `profile.dev.models.cheap`: missing `model` (the model name the provider knows)",
            ]
        );
        // Without the profile, nothing of it applies.
        assert_eq!(problems(extra, None), Vec::<String>::new());
    }

    #[test]
    fn columns_say_why_a_field_does_not_resolve() {
        let extra = "\n[tables.queue]\nBilling = 1\n\n[output.columns]\na = \"topic.x\"\nb = \"queue.x\"\nc = \"paraphrase.bdoy\"\nd = \"nothing.x\"\n";
        assert_eq!(
            problems(extra, None),
            [
                "d.toml:19:5: `output.columns.a`: `topic.x`: `topic` is a text node; only json nodes have fields",
                "d.toml:20:5: `output.columns.b`: `queue.x`: `queue` is a table; only json nodes have fields",
                "d.toml:21:5: `output.columns.c`: `paraphrase.bdoy`: the json node `paraphrase` has no field `bdoy` (did you mean `body`?); its fields are `subject`, `body`",
                "d.toml:22:5: `output.columns.d`: `nothing.x` names no node, node field, table or built-in column",
            ]
        );
    }

    #[test]
    fn a_missing_dataset_table_is_reported_with_the_other_problems() {
        let source = "[models.default]\nprovider = \"offlin\"\n";
        let problems = Config::parse(
            Path::new("d.toml"),
            source.to_string(),
            &Overrides::default(),
        )
        .unwrap_err();
        let headlines: Vec<String> = problems.0.iter().map(Diagnostic::headline).collect();
        assert_eq!(
            headlines,
            [
                "d.toml: missing the [dataset] table; add `[dataset]` with the dataset's `name` and `rows`",
                "d.toml:2:12: `models.default.provider`: unknown provider `offlin` (did you mean `offline`?)",
                "d.toml: defines no nodes; add at least one [nodes.NAME] table with a `prompt`",
            ]
        );
    }
}
