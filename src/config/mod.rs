//! dataset.toml: the checked configuration, read with its profile and overrides applied.
//!
//! This module owns the [`Config`] the rest of ticketbuild reads, and loading it. Its parts:
//! [`raw`] is the file as written (serde, with spans); `check` turns it into a [`Config`],
//! reporting every problem at once with file, line and key, helped by `models` (providers and
//! their rules: [`ProviderKind`]), `nodes` (nodes and output columns) and `profile`;
//! `toml_errors` explains what the TOML parser rejects. Templates and prompt files are checked by
//! `graph` and `prompt`. The invariant: a [`Config`] never holds a reference that does not resolve
//! (a model, a table, an output column), so later stages never fail on configuration.

mod check;
mod checks;
mod input;
mod models;
mod nodes;
mod profile;
mod raw;
mod remote;
pub(crate) use remote::{RemoteMode, RemoteSettings};
mod samplers;
mod tables;
mod toml_errors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Diagnostics};
use crate::language::Language;
use crate::sampling::Table;
use crate::value::OutputKind;

pub(crate) use checks::{LanguageRule, NodeChecks, Pattern, QualityConfig};
pub use models::{ModelConfig, ModelLimits, OFFLINE_MODEL, Params, ProviderKind};

/// Names every template sees besides tables and nodes.
pub(crate) const BUILTIN_VARIABLES: [&str; 3] = ["ticket_id", "language", "language_name"];

/// Default output columns, in order; each is used when something of that name exists.
pub(crate) const DEFAULT_COLUMNS: [&str; 9] = [
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

/// A checked dataset definition with the chosen profile applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file as the user named it.
    pub(crate) path: PathBuf,
    /// The folder relative paths in the config are resolved against.
    pub(crate) root: PathBuf,
    /// The text of the config file, for diagnostics found later (prompts referenced from it).
    pub(crate) source: String,
    pub(crate) name: String,
    pub rows: u64,
    pub seed: u64,
    pub(crate) output_dir: PathBuf,
    pub(crate) cache_dir: PathBuf,
    pub(crate) formats: Vec<Format>,
    pub languages: Vec<(Language, f64)>,
    pub tables: Vec<Table>,
    /// `[samplers.NAME]`: per-ticket values, in the file's order.
    pub samplers: Vec<crate::sampling::ValueSpec>,
    /// `[input]`: the user's rows, checked and indexed.
    pub input: Option<InputConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub(crate) nodes: Vec<NodeConfig>,
    pub(crate) columns: Vec<Column>,
    /// Write `NAME.lineage.parquet`: one row per (ticket, node) telling how it was made.
    pub(crate) lineage: bool,
    /// Prefix CSV cells that start with `=`, `+`, `-` or `@` with `'`, so spreadsheets show them
    /// as text instead of running them as formulas. Off by default: it changes the data.
    pub(crate) csv_formula_escape: bool,
    /// Write `NAME.report.html` after every build (`[output] report`).
    pub(crate) report: bool,
    /// Write the Hugging Face dataset card `README.md` after every build (`[output] card`).
    pub(crate) card: bool,
    /// The dataset's license as the Hub spells it (`[dataset] license`), for the card.
    pub(crate) license: Option<String>,
    /// Tickets in flight at once.
    pub(crate) concurrency: usize,
    pub(crate) profile: Option<String>,
    /// Prices, limits and currencies.
    pub(crate) cost: CostConfig,
    /// Columns that must not repeat across tickets (`[quality]`).
    pub(crate) quality: Option<QualityConfig>,
    /// `[cache.remote]`: the shared cache tier, when configured.
    pub(crate) remote: Option<RemoteSettings>,
}

impl Config {
    /// The sampler of this dataset: languages, tables, samplers and input rows.
    pub fn sampler(&self) -> crate::sampling::Sampler {
        let sampler = crate::sampling::Sampler::new(self.seed, &self.languages, &self.tables)
            .with_values(&self.samplers);
        match &self.input {
            Some(input) => sampler.with_input(std::sync::Arc::clone(&input.rows), input.mode),
            None => sampler,
        }
    }
}

/// `[input]`: the rows and how tickets take them.
#[derive(Debug, Clone)]
pub struct InputConfig {
    pub rows: std::sync::Arc<crate::input::InputRows>,
    pub mode: crate::sampling::InputMode,
    /// The path as written, for messages.
    pub(crate) display: String,
}

/// `[cost]`: limits in USD, currencies to show, and price and rate overrides.
#[derive(Debug, Clone, Default)]
pub(crate) struct CostConfig {
    /// USD per build: no call is issued that could take the build over it.
    pub(crate) budget: Option<f64>,
    /// USD per single call: a warning above it.
    pub(crate) warn_per_call: Option<f64>,
    /// USD per single call: the build stops issuing calls above it.
    pub(crate) error_per_call: Option<f64>,
    /// Currencies every cost summary shows; `["USD"]` by default.
    pub(crate) currencies: Vec<String>,
    /// Units per USD, overriding the built-in rates.
    pub(crate) rates: BTreeMap<String, f64>,
    /// USD per million tokens by model name, overriding or adding to the built-in table.
    pub(crate) prices: BTreeMap<String, crate::cost::Price>,
    /// Build even when some model has no known price (its cost is then shown as unknown).
    pub(crate) allow_unpriced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Format {
    Parquet,
    Csv,
    Jsonl,
}

impl Format {
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) name: String,
    /// As written in the config (relative to `root`).
    pub(crate) prompt: PathBuf,
    pub(crate) model: String,
    pub(crate) output: OutputKind,
    /// Template expression; the node runs for a ticket only when it is true.
    pub(crate) when: Option<String>,
    /// The offline task this node asks for (defaults to the node name).
    pub(crate) task: String,
    /// USD this node may spend in one build.
    pub(crate) max_cost: Option<f64>,
    /// Where `prompt` and `when` sit in the config, for diagnostics about them.
    pub(crate) prompt_span: std::ops::Range<usize>,
    pub(crate) when_span: Option<std::ops::Range<usize>>,
    /// What an answer must be to be used (`[nodes.NAME.checks]`); `None`: any valid answer.
    pub(crate) checks: Option<NodeChecks>,
}

/// One output column and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// Tried in order; the first that has a value (not a node skipped by `when`) wins.
    pub(crate) sources: Vec<Source>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    TicketId,
    Language,
    Table(String),
    /// A `[samplers.NAME]` value.
    Sampler(String),
    /// A column of the `[input]` file.
    Input(String),
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
        let raw: raw::RawFile =
            toml::from_str(&source).map_err(|e| toml_errors::diagnose(path, &source, &e))?;
        let root = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let mut checker = check::Checker {
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

    pub(crate) fn model_of(&self, node: &NodeConfig) -> &ModelConfig {
        // Invariant: `check` verified that every node's model exists.
        &self.models[&node.model]
    }

    /// Resolves a config-relative path.
    pub(crate) fn resolve(&self, relative: &Path) -> PathBuf {
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

pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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
                "d.toml:22:5: `output.columns.d`: `nothing.x` names no node, node field, table, sampler or built-in column",
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
