//! The dataset report: what a build produced, measured on the files the user got.
//!
//! This module owns [`DatasetReport`] (the figures: class balance, languages, lengths, tags,
//! duplicates, quality, cost, examples) and computing it in one streaming pass over the written
//! dataset (`read`, `figures`), its HTML rendering (`html`, with inline SVG charts from `svg`) and
//! the Hugging Face dataset card (`card`). `ticketbuild report` and builds with `[output] report`
//! write the HTML; every build writes the card unless `[output] card = false`.
//!
//! Figures come from three places, each the authority for its part: the dataset file (what is in
//! the rows), the build's report (what the build paid, reused and rejected, which the rows cannot
//! tell), and the cache (for the few example tickets, which artifact made each field). The
//! invariants: memory does not grow with rows except for the duplicate index (as in a build, about
//! 250 bytes a ticket) and per distinct tag; the HTML is bounded (top-N lists, a few examples, long
//! texts cut), whatever the rows; and the card holds nothing that changes from one build of the same
//! inputs to the next, so rebuilds stay byte-identical.

pub(crate) mod card;
mod figures;
mod html;
mod read;
mod svg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cache::{Cache, Lookup};
use crate::config::{Config, Source};
use crate::engine::{BuildReport, DuplicateReport};
use crate::graph::Graph;
use crate::value::{NodeOutput, OutputKind};

pub(crate) use html::render as render_html;
pub(crate) use read::DatasetFile;

/// Example tickets shown per language.
const EXAMPLES_PER_LANGUAGE: usize = 3;
/// Characters of a field an example shows; the rest is cut (the HTML must stay small).
const EXAMPLE_CHARS: usize = 1500;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error(
        "`{name}` has not been built yet: none of its files ({formats}) is in `{dir}`; run `ticketbuild build` first"
    )]
    NotBuilt {
        name: String,
        formats: String,
        dir: PathBuf,
    },
    #[error("cannot read `{path}`: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write `{path}`: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What a column holds, for the figures: decided by its first source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    TicketId,
    Language,
    /// A table's category (index into `config.tables`).
    Table(usize),
    /// Free text written by a node.
    Text,
    /// A list written by a `list` node.
    List,
    /// A sampler's value (`[samplers.NAME]`).
    Value,
}

impl ColumnKind {
    fn name(self) -> &'static str {
        match self {
            ColumnKind::TicketId => "id",
            ColumnKind::Language => "language",
            ColumnKind::Table(_) => "class",
            ColumnKind::Text => "text",
            ColumnKind::List => "list",
            ColumnKind::Value => "sampled",
        }
    }
}

/// The output columns with their kinds, in file order.
pub(crate) fn column_kinds(config: &Config, graph: &Graph) -> Vec<(String, ColumnKind)> {
    config
        .columns
        .iter()
        .map(|column| {
            let kind = match column.sources.first() {
                Some(Source::TicketId) => ColumnKind::TicketId,
                Some(Source::Language) => ColumnKind::Language,
                Some(Source::Table(table)) => config
                    .tables
                    .iter()
                    .position(|t| &t.name == table)
                    .map_or(ColumnKind::Text, ColumnKind::Table),
                Some(Source::Node(node)) => match graph.node(node).map(|n| &n.config.output) {
                    Some(OutputKind::List { .. }) => ColumnKind::List,
                    _ => ColumnKind::Text,
                },
                Some(Source::NodeField(..)) | None => ColumnKind::Text,
                Some(Source::Sampler(_) | Source::Input(_)) => ColumnKind::Value,
            };
            (column.name.clone(), kind)
        })
        .collect()
}

/// Everything the report shows; `report --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DatasetReport {
    pub(crate) dataset: String,
    /// The file the figures were computed from.
    pub(crate) file: String,
    pub(crate) overview: Overview,
    pub(crate) balance: Vec<Balance>,
    pub(crate) languages: Vec<LanguageAgreement>,
    pub(crate) lengths: Vec<Lengths>,
    pub(crate) tags: Vec<TagFigures>,
    pub(crate) duplicates: Duplicates,
    pub(crate) quality: Vec<NodeQuality>,
    pub(crate) cost: CostFigures,
    pub(crate) examples: Vec<Example>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Overview {
    /// Rows in the file.
    pub(crate) rows: u64,
    /// Rows the dataset asks for.
    pub(crate) expected_rows: u64,
    /// Tickets asked for but not in the file (failed, or never started).
    pub(crate) missing: u64,
    /// Tickets the last build could not complete (its failures file lists them).
    pub(crate) failed: u64,
    pub(crate) columns: Vec<ColumnInfo>,
    /// Rows per language.
    pub(crate) languages: BTreeMap<String, u64>,
    /// When the file was written (RFC 3339, UTC).
    pub(crate) written_at: Option<String>,
    pub(crate) seed: u64,
    pub(crate) profile: Option<String>,
    pub(crate) nodes: Vec<NodeModel>,
    /// What the artifacts of the dataset cost when they were made, spent and reused, in USD.
    pub(crate) cost_usd: f64,
    /// The same in every configured currency, as "CODE amount" (or "$amount").
    pub(crate) cost: String,
    /// Artifacts the last build reused from the cache, and generated.
    pub(crate) reused: u64,
    pub(crate) generated: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeModel {
    pub(crate) node: String,
    pub(crate) provider: String,
    pub(crate) model: String,
    pub(crate) output: &'static str,
    pub(crate) prompt: String,
    pub(crate) template_hash: String,
}

/// One table column: each category's configured weight against what the rows hold.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Balance {
    pub(crate) column: String,
    pub(crate) values: Vec<BalanceValue>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct BalanceValue {
    pub(crate) value: String,
    /// The configured weight (0 for a value the rows hold that the table does not name).
    pub(crate) weight: f64,
    /// The weight's share of all weights.
    pub(crate) expected_share: f64,
    pub(crate) count: u64,
    pub(crate) share: f64,
    pub(crate) by_language: BTreeMap<String, u64>,
}

/// A text column's detected language against the ticket's.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LanguageAgreement {
    pub(crate) column: String,
    /// Texts long enough to judge.
    pub(crate) judged: u64,
    pub(crate) agree: u64,
    pub(crate) differ: u64,
    /// Too short (under 20 characters) or too mixed to tell.
    pub(crate) unsure: u64,
    /// `agree / judged`.
    pub(crate) agreement: f64,
    pub(crate) by_language: BTreeMap<String, LanguageCounts>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LanguageCounts {
    pub(crate) judged: u64,
    pub(crate) agree: u64,
}

/// Word counts of a text column.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Lengths {
    pub(crate) column: String,
    pub(crate) by_language: Vec<LengthSummary>,
    /// Equal-width bins from 0 to the longest text; counts per language.
    pub(crate) histogram: Vec<Bin>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LengthSummary {
    pub(crate) language: String,
    pub(crate) count: u64,
    pub(crate) mean: f64,
    pub(crate) min: u32,
    pub(crate) p10: u32,
    pub(crate) median: u32,
    pub(crate) p90: u32,
    pub(crate) max: u32,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Bin {
    /// Words, inclusive.
    pub(crate) from: u32,
    /// Words, exclusive.
    pub(crate) to: u32,
    pub(crate) counts: BTreeMap<String, u64>,
}

/// A list column: its most frequent items and how they spread over a table's categories.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TagFigures {
    pub(crate) column: String,
    /// Rows with at least one item.
    pub(crate) rows: u64,
    pub(crate) items: u64,
    pub(crate) distinct: u64,
    /// The 50 most frequent items (ties by name).
    pub(crate) top: Vec<TagCount>,
    /// The table column the spread is over (`queue` when there is one).
    pub(crate) spread_by: Option<String>,
    /// The categories of `spread_by`, in table order.
    pub(crate) spread_values: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TagCount {
    pub(crate) tag: String,
    pub(crate) count: u64,
    /// Counts per category of `spread_by`, in `spread_values` order.
    pub(crate) spread: Vec<u64>,
}

/// Duplicates among the rows, and what the build's quality gate resolved before writing them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Duplicates {
    /// The columns compared (`[quality] unique`, else `subject` and `body`, else the text columns).
    pub(crate) columns: Vec<String>,
    pub(crate) similarity: f64,
    /// Rows whose value in a compared column normalises to an earlier row's.
    pub(crate) exact: u64,
    /// Rows at or above `similarity` to an earlier row (and not exact).
    pub(crate) near: u64,
    /// The largest groups (an earlier row and the rows that repeat it), at most 20.
    pub(crate) clusters: Vec<Cluster>,
    /// The quality gate's figures from the last build, when it compared duplicates.
    pub(crate) build: Option<DuplicateReport>,
    /// What the index held, in bytes.
    pub(crate) index_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Cluster {
    pub(crate) size: u64,
    pub(crate) exact: bool,
    /// The least similarity of a member to the first row.
    pub(crate) similarity: f64,
    /// The first row's ticket id, then the others' (at most 10).
    pub(crate) ticket_ids: Vec<String>,
}

/// What a node's checks rejected in the last build.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeQuality {
    pub(crate) node: String,
    pub(crate) checked: bool,
    pub(crate) rejected: u64,
    pub(crate) rejections: BTreeMap<String, u64>,
    pub(crate) rejected_cost_usd: f64,
    pub(crate) language_checked: u64,
    pub(crate) language_unsure: u64,
}

/// The ledger's figures: spent in the last build and reused from earlier ones, in USD.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CostFigures {
    /// Currencies shown, with their rates (units per USD).
    pub(crate) currencies: Vec<(String, f64)>,
    pub(crate) nodes: Vec<CostLine>,
    pub(crate) models: Vec<CostLine>,
    pub(crate) languages: Vec<CostLine>,
    pub(crate) spent_usd: f64,
    pub(crate) reused_usd: f64,
    /// What generating the whole dataset again would cost at today's prices.
    pub(crate) regenerate_usd: f64,
    /// Artifacts whose cost is unknown (a model without a price).
    pub(crate) unknown: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CostLine {
    pub(crate) name: String,
    pub(crate) spent_usd: f64,
    pub(crate) reused_usd: f64,
}

/// One example ticket, field by field.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Example {
    pub(crate) ticket_id: String,
    pub(crate) language: String,
    pub(crate) fields: Vec<ExampleField>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExampleField {
    pub(crate) column: String,
    pub(crate) value: String,
    /// True when `value` was cut at `EXAMPLE_CHARS` characters.
    pub(crate) cut: bool,
    /// The node that wrote it, the model that served it and the artifact's key, when a node did
    /// and the cache still has it.
    pub(crate) node: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) key: Option<String>,
}

/// What computing a report reads besides the dataset file.
pub(crate) struct Sources<'a> {
    pub(crate) config: &'a Config,
    pub(crate) graph: &'a Graph,
    /// The last build's report (`None`: never recorded; the build figures are then empty).
    pub(crate) build: Option<&'a BuildReport>,
    /// The cache and the manifest id whose keys name each example field's artifact.
    pub(crate) cache: Option<(&'a dyn Cache, u64)>,
}

/// Computes the report of the dataset `sources.config` describes, from its written file.
pub(crate) fn compute(sources: &Sources<'_>) -> Result<DatasetReport, ReportError> {
    let config = sources.config;
    let file = DatasetFile::find(config).ok_or_else(|| ReportError::NotBuilt {
        name: config.name.clone(),
        formats: config
            .formats
            .iter()
            .map(|f| format!("{}.{}", config.name, f.extension()))
            .collect::<Vec<_>>()
            .join(", "),
        dir: config.output_dir.clone(),
    })?;
    let kinds = column_kinds(config, sources.graph);
    let index_error = |e: std::io::Error| ReportError::Write {
        path: std::env::temp_dir(),
        reason: format!("the duplicate index: {e}"),
    };
    let mut figures = figures::Figures::new(config, &kinds).map_err(index_error)?;
    let names: Vec<String> = kinds.iter().map(|(name, _)| name.clone()).collect();
    let lists: Vec<bool> = kinds
        .iter()
        .map(|(_, kind)| *kind == ColumnKind::List)
        .collect();
    let rows = file.for_each_row(&names, &lists, &mut |cells| figures.add(cells))?;
    let found = figures.finish().map_err(index_error)?;
    let build = sources.build;
    let mut examples = found.examples;
    if let Some((cache, manifest)) = sources.cache {
        for example in &mut examples {
            attribute(example, sources, cache, manifest);
        }
    }
    let cost = cost_figures(config, sources.graph, build);
    let overview = Overview {
        rows,
        expected_rows: config.rows,
        missing: config.rows.saturating_sub(rows),
        failed: build.map_or(0, |b| b.failed),
        columns: kinds
            .iter()
            .map(|(name, kind)| ColumnInfo {
                name: name.clone(),
                kind: kind.name(),
            })
            .collect(),
        languages: found.languages,
        written_at: written_at(&file.path),
        seed: config.seed,
        profile: config.profile.clone(),
        nodes: node_models(sources.graph),
        cost_usd: cost.spent_usd + cost.reused_usd,
        cost: crate::cost::format_money(
            Some(cost.spent_usd + cost.reused_usd),
            &config.cost.currencies,
            &config.cost.rates,
        ),
        reused: build.map_or(0, BuildReport::reused),
        generated: build.map_or(0, BuildReport::generated),
    };
    Ok(DatasetReport {
        dataset: config.name.clone(),
        file: file.path.display().to_string(),
        overview,
        balance: found.balance,
        languages: found.agreement,
        lengths: found.lengths,
        tags: found.tags,
        duplicates: Duplicates {
            build: build.and_then(|b| b.duplicates.clone()),
            ..found.duplicates
        },
        quality: quality_figures(sources.graph, build),
        cost,
        examples,
    })
}

/// Names the node, model and key behind each field of an example, from the manifest's keys.
fn attribute(example: &mut Example, sources: &Sources<'_>, cache: &dyn Cache, manifest: u64) {
    let config = sources.config;
    let sampler = crate::sampling::Sampler::new(config.seed, &config.languages, &config.tables);
    let Some(index) = example
        .ticket_id
        .parse()
        .ok()
        .and_then(|id| sampler.index_of(id, config.rows))
    else {
        return;
    };
    for field in &mut example.fields {
        let Some(column) = config.columns.iter().find(|c| c.name == field.column) else {
            continue;
        };
        for source in &column.sources {
            let node = match source {
                Source::Node(node) | Source::NodeField(node, _) => node,
                _ => continue,
            };
            let Some(position) = sources.graph.nodes.iter().position(|n| &n.name == node) else {
                continue;
            };
            let Ok(Some(key)) = cache.manifest_key(manifest, index, position) else {
                continue;
            };
            // The keys of another build of this cache (another profile, say) would name
            // another answer: only an artifact that holds this very value is named.
            let Ok(Lookup::Hit(artifact)) = cache.get(index, &key) else {
                continue;
            };
            let holds = match (&artifact.output, source) {
                (NodeOutput::Text(text), Source::Node(_)) => {
                    field.value.starts_with(text.as_str()) || text.starts_with(field.value.as_str())
                }
                (NodeOutput::Json(fields), Source::NodeField(_, name)) => fields
                    .get(name)
                    .is_some_and(|text| text.starts_with(field.value.as_str())),
                (NodeOutput::List(_), _) => true,
                _ => false,
            };
            if artifact.node != *node || !holds {
                continue;
            }
            field.node = Some(node.clone());
            field.key = Some(key.to_string());
            field.model = Some(artifact.served_model.clone());
            break;
        }
    }
}

fn written_at(path: &Path) -> Option<String> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let ms = modified
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    let at = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn node_models(graph: &Graph) -> Vec<NodeModel> {
    graph
        .nodes
        .iter()
        .map(|node| NodeModel {
            node: node.name.clone(),
            provider: node.model.provider.name().to_string(),
            model: node.model.model.clone(),
            output: node.config.output.name(),
            prompt: node.prompt_display.display().to_string(),
            template_hash: node.template_hash.clone(),
        })
        .collect()
}

fn quality_figures(graph: &Graph, build: Option<&BuildReport>) -> Vec<NodeQuality> {
    graph
        .nodes
        .iter()
        .map(|node| {
            let stats = build
                .and_then(|b| b.nodes.iter().find(|n| n.name == node.name))
                .map(|n| n.stats.clone())
                .unwrap_or_default();
            NodeQuality {
                node: node.name.clone(),
                checked: node.config.checks.is_some(),
                rejected: stats.rejected,
                rejections: stats.rejections,
                rejected_cost_usd: stats.rejected_cost_usd,
                language_checked: stats.language_checked,
                language_unsure: stats.language_unsure,
            }
        })
        .collect()
}

fn cost_figures(config: &Config, graph: &Graph, build: Option<&BuildReport>) -> CostFigures {
    let line = |name: &str, spent: f64, reused: f64| CostLine {
        name: name.to_string(),
        spent_usd: spent,
        reused_usd: reused,
    };
    let mut figures = CostFigures {
        currencies: build.map(|b| b.currencies.clone()).unwrap_or_default(),
        nodes: Vec::new(),
        models: Vec::new(),
        languages: Vec::new(),
        spent_usd: 0.0,
        reused_usd: 0.0,
        regenerate_usd: 0.0,
        unknown: 0,
    };
    let Some(build) = build else {
        return figures;
    };
    for node in &graph.nodes {
        let Some(summary) = build.nodes.iter().find(|n| n.name == node.name) else {
            continue;
        };
        let stats = &summary.stats;
        figures
            .nodes
            .push(line(&node.name, stats.cost_usd, stats.reused_cost_usd));
        figures.spent_usd += stats.cost_usd;
        figures.reused_usd += stats.reused_cost_usd;
        figures.regenerate_usd += stats.regenerate_cost_usd;
        figures.unknown += stats.unknown_cost;
    }
    let merged = |spent: &BTreeMap<String, f64>, reused: &BTreeMap<String, f64>| {
        let mut names: Vec<&String> = spent.keys().chain(reused.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                line(
                    name,
                    spent.get(name).copied().unwrap_or(0.0),
                    reused.get(name).copied().unwrap_or(0.0),
                )
            })
            .collect::<Vec<_>>()
    };
    figures.models = merged(&build.cost_by_model, &build.reused_cost_by_model);
    figures.languages = merged(&build.cost_by_language, &build.reused_cost_by_language);
    if figures.currencies.is_empty() {
        figures.currencies = crate::engine::currencies(config);
    }
    figures
}

/// Where the HTML report goes unless told otherwise: `NAME.report.html` in the output folder.
pub(crate) fn html_path(config: &Config) -> PathBuf {
    config
        .output_dir
        .join(format!("{}.report.html", config.name))
}

/// The manifest whose keys name the artifacts of the rows on disk: the newest build that
/// recorded keys, finished or not (a build that failed part-way wrote its rows and keys too).
pub(crate) fn keys_manifest(cache: &dyn Cache) -> Option<u64> {
    let finished = cache.last_manifest().ok().flatten().map(|(id, _)| id);
    let unfinished = cache
        .unfinished_manifest_ids()
        .ok()
        .and_then(|ids| ids.into_iter().max());
    finished.max(unfinished)
}

/// Writes `text` to `path` atomically (a temporary file in the same folder, then a rename).
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), ReportError> {
    let error = |e: std::io::Error| ReportError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(error)?;
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let temporary = dir.join(format!(".{name}.partial"));
    std::fs::write(&temporary, text).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}
