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
use serde::de::{Deserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::language::Language;
use crate::sampling::ID_SPACE;
use crate::value::OutputKind;

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

/// A weighted table of categories; one is drawn per ticket and becomes a column and a template variable.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub categories: Vec<(String, f64)>,
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
    dataset: Spanned<RawDataset>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    name: Option<String>,
    rows: Option<Spanned<i64>>,
    seed: Option<Spanned<i64>>,
    output: Option<String>,
    cache: Option<String>,
    formats: Option<Spanned<Vec<Spanned<String>>>>,
    languages: Option<Spanned<OrderedMap<Spanned<f64>>>>,
    concurrency: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawModel {
    provider: Option<Spanned<String>>,
    model: Option<String>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    /// Never accepted; present so the error can say what to do instead.
    api_key: Option<Spanned<toml::Value>>,
    temperature: Option<Spanned<f64>>,
    top_p: Option<Spanned<f64>>,
    max_tokens: Option<Spanned<i64>>,
    seed: Option<i64>,
    stop: Option<Vec<String>>,
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
    fields: Option<Spanned<Vec<String>>>,
    when: Option<Spanned<String>>,
    task: Option<Spanned<String>>,
    max_cost: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    columns: Option<OrderedMap<Spanned<toml::Value>>>,
    lineage: Option<bool>,
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
        let source = String::from_utf8(bytes)
            .map_err(|e| Diagnostic::file(path, format!("is not valid UTF-8 ({e})")))?;
        Config::parse(path, source, overrides)
    }

    /// Checks `source`, the text of the config file `path`.
    pub fn parse(
        path: &Path,
        source: String,
        overrides: &Overrides,
    ) -> Result<Config, Diagnostics> {
        let raw: RawFile = toml::from_str(&source).map_err(|e| {
            let message = toml_message(e.message());
            match e.span() {
                Some(span) => Diagnostic::at(path, &source, span, message),
                None => Diagnostic::file(path, message),
            }
        })?;
        let root = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let mut checker = Checker {
            path,
            source: &source,
            problems: Diagnostics::default(),
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

/// Removes the trailing position toml adds to some messages; ours comes from the span.
fn toml_message(message: &str) -> String {
    let message = message.trim();
    let mut message = message.to_string();
    if let Some(first) = message.get(..1) {
        let lower = first.to_lowercase();
        message.replace_range(..1, &lower);
    }
    message.replace('\n', " ")
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
}

impl Checker<'_> {
    fn error(
        &mut self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let diagnostic = Diagnostic::at(self.path, self.source, span, message).with_key(key);
        self.problems.push(diagnostic);
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
        let profile = self.apply_profile(&mut raw, overrides.profile.as_deref());
        let dataset_span = raw.dataset.span();
        let dataset = raw.dataset.into_inner();

        let name = dataset.name.unwrap_or_else(|| "dataset".to_string());
        let rows = match (overrides.rows, &dataset.rows) {
            (Some(rows), _) => Some(rows),
            (None, Some(rows)) => self.positive(rows, "dataset.rows"),
            (None, None) => Some(200),
        };
        if let Some(rows) = rows {
            if rows == 0 {
                self.problems
                    .push(Diagnostic::file(self.path, "`--rows` must be at least 1"));
            } else if rows > ID_SPACE {
                let span = dataset
                    .rows
                    .as_ref()
                    .map_or(dataset_span.clone(), Spanned::span);
                self.error(
                    span,
                    "dataset.rows",
                    format!("{rows} rows exceed the ticket id space of {ID_SPACE} 12-13 digit ids"),
                );
            }
        }
        let seed = match &dataset.seed {
            Some(seed) => *seed.get_ref() as u64,
            None => 0,
        };
        let concurrency = match &dataset.concurrency {
            Some(c) => self.positive(c, "dataset.concurrency").unwrap_or(1) as usize,
            None => 64,
        };
        let concurrency =
            raw_profile_concurrency(&raw.profile, profile.as_deref()).unwrap_or(concurrency);
        let formats = self.formats(dataset.formats.as_ref());
        let languages = self.languages(dataset.languages.as_ref());
        let tables = self.tables(&raw.tables);
        let models = self.models(&raw.models);
        let nodes = self.nodes(&raw.nodes, &models);
        self.check_names(&tables, &raw.nodes);
        let columns = self.columns(raw.output.as_ref(), &tables, &nodes);
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

    /// Merges `[profile.NAME]` into the raw file, like Cargo profiles: only what the profile sets changes.
    fn apply_profile(&mut self, raw: &mut RawFile, profile: Option<&str>) -> Option<String> {
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
        let profile = &raw.profile.0[index].1;
        let profile = profile.get_ref();
        if let Some(rows) = &profile.rows {
            raw.dataset.get_mut().rows = Some(rows.clone());
        }
        if let Some(max_tokens) = &profile.max_tokens {
            for (_, model) in &mut raw.models.0 {
                model.get_mut().max_tokens = Some(max_tokens.clone());
            }
        }
        for (model_name, changes) in &profile.models.0 {
            match raw
                .models
                .0
                .iter_mut()
                .find(|(k, _)| k.get_ref() == model_name.get_ref())
            {
                Some((_, model)) => merge_model(model.get_mut(), changes.get_ref()),
                None => raw.models.0.push((model_name.clone(), changes.clone())),
            }
        }
        Some(name.to_string())
    }

    fn formats(&mut self, formats: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<Format> {
        let Some(formats) = formats else {
            return vec![Format::Parquet, Format::Csv, Format::Jsonl];
        };
        let mut out = Vec::new();
        for format in formats.get_ref() {
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
        if formats.get_ref().is_empty() {
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
        if provider_name != "offline" && !crate::provider::http_available() {
            self.error(
                provider.span(),
                format!("{key}.provider"),
                format!("provider `{provider_name}` is not available in this build; use `offline`"),
            );
        }
        match &raw.base_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => self.error(
                span.clone(),
                format!("{key}.base_url"),
                format!("`{url}` is not an http:// or https:// URL"),
            ),
            Some(_) if provider_name == "offline" => self.error(
                span.clone(),
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
            let valid =
                !env.is_empty() && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.secret_error(
                    span.clone(),
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
        if provider_name == "anthropic" && raw.seed.is_some() {
            self.error(
                span.clone(),
                format!("{key}.seed"),
                "the Anthropic Messages API takes no `seed`; remove it from this model",
            );
        }
        let model = match &raw.model {
            Some(model) => model.clone(),
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
        params.seed = raw.seed;
        params.stop = raw.stop.clone();
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
            base_url: raw.base_url.clone(),
            api_key_env: raw.api_key_env.clone(),
            params,
            latency_ms,
            limits,
        })
    }

    /// An error about a value that may be a secret: located, but without the source line, so the
    /// value never reaches the terminal or a log.
    fn secret_error(&mut self, span: std::ops::Range<usize>, key: String, message: &str) {
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
                    let hint = did_you_mean(model.get_ref(), models.keys().map(String::as_str))
                        .map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"));
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
                for field in fields.get_ref() {
                    if !is_identifier(field) || !seen.insert(field) {
                        self.error(
                            fields.span(),
                            format!("{key}.fields"),
                            format!("field `{field}` is repeated or not a valid name"),
                        );
                    }
                }
                if fields.get_ref().is_empty() {
                    self.error(
                        fields.span(),
                        format!("{key}.fields"),
                        "name at least one field",
                    );
                }
                Some(OutputKind::Json {
                    fields: fields.get_ref().clone(),
                })
            }
        }
    }

    /// Tables, nodes and built-in variables share one namespace in templates.
    fn check_names(&mut self, tables: &[Table], nodes: &OrderedMap<Spanned<RawNode>>) {
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
            } else if tables.iter().any(|t| &t.name == name.get_ref()) {
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
        for table in tables {
            if BUILTIN_VARIABLES.contains(&table.name.as_str()) {
                self.problems.push(
                    Diagnostic::file(
                        self.path,
                        format!("`{}` is a built-in variable; rename the table", table.name),
                    )
                    .with_key(format!("tables.{}", table.name)),
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
        let resolve = |name: &str| -> Option<Source> {
            match name {
                "ticket_id" => Some(Source::TicketId),
                "language" => Some(Source::Language),
                _ => {
                    if let Some((node, field)) = name.split_once('.') {
                        let n = nodes.iter().find(|n| n.name == node)?;
                        match &n.output {
                            OutputKind::Json { fields } if fields.iter().any(|f| f == field) => {
                                Some(Source::NodeField(node.to_string(), field.to_string()))
                            }
                            _ => None,
                        }
                    } else if tables.iter().any(|t| t.name == name) {
                        Some(Source::Table(name.to_string()))
                    } else if nodes.iter().any(|n| n.name == name) {
                        Some(Source::Node(name.to_string()))
                    } else {
                        None
                    }
                }
            }
        };
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
        let mut known: Vec<String> = vec!["ticket_id".into(), "language".into()];
        known.extend(tables.iter().map(|t| t.name.clone()));
        for node in nodes {
            known.push(node.name.clone());
            if let OutputKind::Json { fields } = &node.output {
                known.extend(fields.iter().map(|f| format!("{}.{f}", node.name)));
            }
        }
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
                match resolve(&source_name) {
                    Some(source) => sources.push(source),
                    None => {
                        let hint = did_you_mean(&source_name, known.iter().map(String::as_str))
                            .map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"));
                        self.error(
                            value.span(),
                            key.clone(),
                            format!("`{source_name}` names no node, node field, table or built-in column{hint}"),
                        );
                    }
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

fn raw_profile_concurrency(
    profiles: &OrderedMap<Spanned<RawProfile>>,
    profile: Option<&str>,
) -> Option<usize> {
    let profile = profile?;
    let (_, p) = profiles.0.iter().find(|(k, _)| k.get_ref() == profile)?;
    p.get_ref()
        .concurrency
        .as_ref()
        .map(|c| (*c.get_ref()).max(1) as usize)
}

fn merge_model(base: &mut RawModel, changes: &RawModel) {
    macro_rules! take {
        ($($field:ident),*) => { $( if changes.$field.is_some() { base.$field = changes.$field.clone(); } )* };
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
