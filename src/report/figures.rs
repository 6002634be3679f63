//! The report's figures, accumulated row by row in one pass over the dataset.
//!
//! Every accumulator keeps counts, not rows: categories per table and language, word counts per
//! (column, language) as a map from length to count (exact percentiles, and the map is bounded by
//! the longest text, not the rows), items per list column, and the duplicate index of the build's
//! quality gate (`quality::dedup`, the one part that grows with rows: about 250 bytes a ticket).
//! Languages are judged as the quality gate judges them (whichlang, then lingua when it doubts).

use std::collections::{BTreeMap, HashMap};

use super::read::Cell;
use super::{
    Balance, BalanceValue, Bin, Cluster, ColumnKind, Duplicates, EXAMPLE_CHARS,
    EXAMPLES_PER_LANGUAGE, Example, ExampleField, LanguageAgreement, LanguageCounts, LengthSummary,
    Lengths, TagCount, TagFigures,
};
use crate::config::Config;
use crate::language::Language;
use crate::quality::dedup::{DedupIndex, Prints};
use crate::quality::language::{LanguageVerdict, judge};

/// Texts shorter than this are not judged for their language (as the checks' default).
const LANGUAGE_MIN_CHARS: usize = 20;
/// Items a list column's figures name.
const TOP_TAGS: usize = 50;
/// Duplicate groups the report names, and ticket ids per group.
const CLUSTERS: usize = 20;
const CLUSTER_IDS: usize = 10;
/// Bins of a length histogram.
const BINS: u32 = 20;
/// Near-duplicate threshold when `[quality]` sets none.
const DEFAULT_SIMILARITY: f64 = 0.8;
/// The label of rows whose language column is missing or unknown.
const NO_LANGUAGE: &str = "?";

/// The figures the rows tell.
pub(super) struct Found {
    pub(super) languages: BTreeMap<String, u64>,
    pub(super) balance: Vec<Balance>,
    pub(super) agreement: Vec<LanguageAgreement>,
    pub(super) lengths: Vec<Lengths>,
    pub(super) tags: Vec<TagFigures>,
    pub(super) duplicates: Duplicates,
    pub(super) examples: Vec<Example>,
}

struct TableColumn {
    position: usize,
    name: String,
    categories: Vec<(String, f64)>,
    /// (category, language) -> rows.
    counts: BTreeMap<(String, String), u64>,
}

struct TextColumn {
    position: usize,
    name: String,
    agreement: BTreeMap<String, (LanguageCounts, u64, u64)>,
    /// language -> words -> rows.
    words: BTreeMap<String, BTreeMap<u32, u64>>,
}

struct ListColumn {
    position: usize,
    name: String,
    rows: u64,
    items: u64,
    /// item -> count per category of the spread column (last slot: rows without one).
    counts: HashMap<String, Vec<u64>>,
}

struct ClusterState {
    size: u64,
    exact: bool,
    similarity: f64,
    ids: Vec<u64>,
}

/// The accumulators of one pass.
pub(super) struct Figures {
    id: Option<usize>,
    language: Option<usize>,
    names: Vec<String>,
    tables: Vec<TableColumn>,
    texts: Vec<TextColumn>,
    lists: Vec<ListColumn>,
    /// The table column lists spread over, with its categories.
    spread: Option<(usize, String, Vec<String>)>,
    languages: BTreeMap<String, u64>,
    unique: Vec<usize>,
    similarity: f64,
    index: DedupIndex,
    /// The first error of the duplicate index's files, if any (then `finish` reports it).
    index_error: Option<std::io::Error>,
    /// Ticket id of each row, to name the first row of a duplicate group.
    ids: Vec<u64>,
    clusters: HashMap<u64, ClusterState>,
    exact: u64,
    near: u64,
    rows: u64,
    examples: BTreeMap<String, Vec<Example>>,
}

impl Figures {
    pub(super) fn new(config: &Config, kinds: &[(String, ColumnKind)]) -> std::io::Result<Figures> {
        let position = |kind: ColumnKind| kinds.iter().position(|(_, k)| *k == kind);
        let mut tables = Vec::new();
        let mut texts = Vec::new();
        let mut lists = Vec::new();
        for (position, (name, kind)) in kinds.iter().enumerate() {
            match kind {
                ColumnKind::Table(table) => tables.push(TableColumn {
                    position,
                    name: name.clone(),
                    categories: config.tables[*table].categories.clone(),
                    counts: BTreeMap::new(),
                }),
                ColumnKind::Text => texts.push(TextColumn {
                    position,
                    name: name.clone(),
                    agreement: BTreeMap::new(),
                    words: BTreeMap::new(),
                }),
                ColumnKind::List => lists.push(ListColumn {
                    position,
                    name: name.clone(),
                    rows: 0,
                    items: 0,
                    counts: HashMap::new(),
                }),
                ColumnKind::TicketId | ColumnKind::Language | ColumnKind::Value => {}
            }
        }
        let spread = tables
            .iter()
            .find(|t| t.name == "queue")
            .or(tables.first())
            .map(|t| {
                let values = t.categories.iter().map(|(c, _)| c.clone()).collect();
                (t.position, t.name.clone(), values)
            });
        let unique = unique_columns(config, kinds);
        let similarity = config
            .quality
            .as_ref()
            .map_or(DEFAULT_SIMILARITY, |q| q.similarity);
        Ok(Figures {
            id: position(ColumnKind::TicketId),
            language: position(ColumnKind::Language),
            names: kinds.iter().map(|(n, _)| n.clone()).collect(),
            tables,
            texts,
            lists,
            spread,
            languages: BTreeMap::new(),
            index: DedupIndex::new(unique.len(), similarity, rows_hint(config), None)?,
            index_error: None,
            unique,
            similarity,
            ids: Vec::new(),
            clusters: HashMap::new(),
            exact: 0,
            near: 0,
            rows: 0,
            examples: BTreeMap::new(),
        })
    }

    /// Counts one row.
    pub(super) fn add(&mut self, cells: &[Cell]) {
        let code = self
            .language
            .and_then(|p| cells[p].text())
            .unwrap_or(NO_LANGUAGE)
            .to_string();
        let language = Language::from_code(&code);
        *self.languages.entry(code.clone()).or_default() += 1;
        for table in &mut self.tables {
            let value = cells[table.position].text().unwrap_or("").to_string();
            *table.counts.entry((value, code.clone())).or_default() += 1;
        }
        for text in &mut self.texts {
            let Some(value) = cells[text.position].text() else {
                continue;
            };
            let words = u32::try_from(value.split_whitespace().count()).unwrap_or(u32::MAX);
            *text
                .words
                .entry(code.clone())
                .or_default()
                .entry(words)
                .or_default() += 1;
            let entry = text.agreement.entry(code.clone()).or_default();
            match language.map(|l| judge(value, l, LANGUAGE_MIN_CHARS)) {
                Some(LanguageVerdict::Agrees) => {
                    entry.0.judged += 1;
                    entry.0.agree += 1;
                }
                Some(LanguageVerdict::Differs(_)) => {
                    entry.0.judged += 1;
                    entry.1 += 1;
                }
                Some(LanguageVerdict::Abstains) | None => entry.2 += 1,
            }
        }
        let spread_slot = self.spread.as_ref().map(|(position, _, values)| {
            let value = cells[*position].text().unwrap_or("");
            values
                .iter()
                .position(|v| v == value)
                .unwrap_or(values.len())
        });
        let slots = self.spread.as_ref().map_or(1, |(_, _, v)| v.len() + 1);
        for list in &mut self.lists {
            let Cell::List(items) = &cells[list.position] else {
                continue;
            };
            if items.is_empty() {
                continue;
            }
            list.rows += 1;
            for item in items {
                list.items += 1;
                let counts = list
                    .counts
                    .entry(item.clone())
                    .or_insert_with(|| vec![0; slots]);
                counts[spread_slot.unwrap_or(slots - 1)] += 1;
            }
        }
        self.add_duplicates(cells);
        self.add_example(cells, &code);
        self.rows += 1;
    }

    fn add_duplicates(&mut self, cells: &[Cell]) {
        if self.unique.is_empty() {
            return;
        }
        let id = self
            .id
            .and_then(|p| cells[p].text())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let values: Vec<Option<&str>> = self.unique.iter().map(|&p| cells[p].text()).collect();
        let prints = Prints::of(&values);
        let found = match self.index.find(&prints) {
            Ok(found) => found,
            Err(e) => {
                self.index_error.get_or_insert(e);
                return;
            }
        };
        match found {
            Some(duplicate) => {
                if duplicate.exact {
                    self.exact += 1;
                } else {
                    self.near += 1;
                }
                let first = self.ids[duplicate.of_index as usize];
                let cluster =
                    self.clusters
                        .entry(duplicate.of_index)
                        .or_insert_with(|| ClusterState {
                            size: 1,
                            exact: true,
                            similarity: 1.0,
                            ids: vec![first],
                        });
                cluster.size += 1;
                cluster.exact &= duplicate.exact;
                cluster.similarity = cluster.similarity.min(duplicate.similarity);
                if cluster.ids.len() < CLUSTER_IDS {
                    cluster.ids.push(id);
                }
            }
            None => {
                if let Err(e) = self.index.insert(self.ids.len() as u64, &prints) {
                    self.index_error.get_or_insert(e);
                }
                self.ids.push(id);
            }
        }
    }

    fn add_example(&mut self, cells: &[Cell], language: &str) {
        let examples = self.examples.entry(language.to_string()).or_default();
        if examples.len() >= EXAMPLES_PER_LANGUAGE {
            return;
        }
        let fields = self
            .names
            .iter()
            .zip(cells)
            .map(|(name, cell)| {
                let text = match cell {
                    Cell::Null => String::new(),
                    Cell::Text(text) => text.clone(),
                    Cell::List(items) => items.join(", "),
                };
                let (value, cut) = match text.char_indices().nth(EXAMPLE_CHARS) {
                    Some((end, _)) => (text[..end].to_string(), true),
                    None => (text, false),
                };
                ExampleField {
                    column: name.clone(),
                    value,
                    cut,
                    node: None,
                    model: None,
                    key: None,
                }
            })
            .collect();
        let ticket_id = self
            .id
            .and_then(|p| cells[p].text())
            .unwrap_or("")
            .to_string();
        examples.push(Example {
            ticket_id,
            language: language.to_string(),
            fields,
        });
    }

    pub(super) fn finish(self) -> std::io::Result<Found> {
        if let Some(e) = self.index_error {
            return Err(e);
        }
        let rows = self.rows;
        let balance = self
            .tables
            .iter()
            .map(|table| balance(table, rows))
            .collect();
        let agreement = self.texts.iter().map(agreement).collect();
        let lengths = self.texts.iter().map(lengths).collect();
        let tags = self
            .lists
            .into_iter()
            .map(|list| tag_figures(list, self.spread.as_ref()))
            .collect();
        let mut clusters: Vec<Cluster> = self
            .clusters
            .into_values()
            .map(|c| Cluster {
                size: c.size,
                exact: c.exact,
                similarity: c.similarity,
                ticket_ids: c.ids.iter().map(u64::to_string).collect(),
            })
            .collect();
        clusters.sort_by(|a, b| {
            b.size
                .cmp(&a.size)
                .then_with(|| a.ticket_ids.cmp(&b.ticket_ids))
        });
        clusters.truncate(CLUSTERS);
        Ok(Found {
            languages: self.languages,
            balance,
            agreement,
            lengths,
            tags,
            duplicates: Duplicates {
                columns: self.unique.iter().map(|&p| self.names[p].clone()).collect(),
                similarity: self.similarity,
                exact: self.exact,
                near: self.near,
                clusters,
                build: None,
                index_bytes: self.index.bytes() as u64,
            },
            examples: self.examples.into_values().flatten().collect(),
        })
    }
}

/// The columns compared for duplicates: `[quality] unique`, else `subject` and `body`, else every
/// text column.
fn unique_columns(config: &Config, kinds: &[(String, ColumnKind)]) -> Vec<usize> {
    let position = |name: &str| kinds.iter().position(|(n, _)| n == name);
    if let Some(quality) = &config.quality {
        return quality.unique.iter().filter_map(|n| position(n)).collect();
    }
    let named: Vec<usize> = ["subject", "body"]
        .iter()
        .filter_map(|n| position(n))
        .collect();
    if !named.is_empty() {
        return named;
    }
    kinds
        .iter()
        .enumerate()
        .filter(|(_, (_, kind))| *kind == ColumnKind::Text)
        .map(|(i, _)| i)
        .collect()
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn balance(table: &TableColumn, rows: u64) -> Balance {
    let total_weight: f64 = table.categories.iter().map(|(_, w)| w).sum();
    let mut values: Vec<BalanceValue> = table
        .categories
        .iter()
        .map(|(value, weight)| BalanceValue {
            value: value.clone(),
            weight: *weight,
            expected_share: if total_weight > 0.0 {
                weight / total_weight
            } else {
                0.0
            },
            count: 0,
            share: 0.0,
            by_language: BTreeMap::new(),
        })
        .collect();
    for ((value, language), count) in &table.counts {
        let slot = match values.iter().position(|v| &v.value == value) {
            Some(slot) => slot,
            None => {
                values.push(BalanceValue {
                    value: value.clone(),
                    weight: 0.0,
                    expected_share: 0.0,
                    count: 0,
                    share: 0.0,
                    by_language: BTreeMap::new(),
                });
                values.len() - 1
            }
        };
        values[slot].count += count;
        *values[slot]
            .by_language
            .entry(language.clone())
            .or_default() += count;
    }
    for value in &mut values {
        value.share = share(value.count, rows);
    }
    Balance {
        column: table.name.clone(),
        values,
    }
}

fn agreement(text: &TextColumn) -> LanguageAgreement {
    let mut figures = LanguageAgreement {
        column: text.name.clone(),
        judged: 0,
        agree: 0,
        differ: 0,
        unsure: 0,
        agreement: 0.0,
        by_language: BTreeMap::new(),
    };
    for (language, (counts, differ, unsure)) in &text.agreement {
        figures.judged += counts.judged;
        figures.agree += counts.agree;
        figures.differ += differ;
        figures.unsure += unsure;
        figures.by_language.insert(language.clone(), counts.clone());
    }
    figures.agreement = share(figures.agree, figures.judged);
    figures
}

/// The smallest length with at least `fraction` of the texts at or below it.
fn percentile(words: &BTreeMap<u32, u64>, count: u64, fraction: f64) -> u32 {
    let rank = ((count as f64 * fraction).ceil() as u64).max(1);
    let mut seen = 0;
    for (&length, &n) in words {
        seen += n;
        if seen >= rank {
            return length;
        }
    }
    0
}

fn lengths(text: &TextColumn) -> Lengths {
    let by_language = text
        .words
        .iter()
        .map(|(language, words)| {
            let count: u64 = words.values().sum();
            let total: u64 = words.iter().map(|(l, n)| u64::from(*l) * n).sum();
            LengthSummary {
                language: language.clone(),
                count,
                mean: share(total, count),
                min: words.keys().next().copied().unwrap_or(0),
                p10: percentile(words, count, 0.1),
                median: percentile(words, count, 0.5),
                p90: percentile(words, count, 0.9),
                max: words.keys().next_back().copied().unwrap_or(0),
            }
        })
        .collect();
    let longest = text
        .words
        .values()
        .filter_map(|w| w.keys().next_back())
        .max()
        .copied()
        .unwrap_or(0);
    let width = (longest / BINS + 1).max(1);
    let mut histogram: Vec<Bin> = (0..=longest / width)
        .map(|i| Bin {
            from: i * width,
            to: (i + 1) * width,
            counts: BTreeMap::new(),
        })
        .collect();
    for (language, words) in &text.words {
        for (&length, &n) in words {
            let bin = &mut histogram[(length / width) as usize];
            *bin.counts.entry(language.clone()).or_default() += n;
        }
    }
    Lengths {
        column: text.name.clone(),
        by_language,
        histogram,
    }
}

fn tag_figures(list: ListColumn, spread: Option<&(usize, String, Vec<String>)>) -> TagFigures {
    let distinct = list.counts.len() as u64;
    let mut top: Vec<TagCount> = list
        .counts
        .into_iter()
        .map(|(tag, counts)| TagCount {
            count: counts.iter().sum(),
            spread: counts[..counts.len() - 1].to_vec(),
            tag,
        })
        .collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.tag.cmp(&b.tag)));
    top.truncate(TOP_TAGS);
    TagFigures {
        column: list.name,
        rows: list.rows,
        items: list.items,
        distinct,
        top,
        spread_by: spread.map(|(_, name, _)| name.clone()),
        spread_values: spread
            .map(|(_, _, values)| values.clone())
            .unwrap_or_default(),
    }
}

/// The rows to size the duplicate index for: the dataset's (growing it as it fills would copy it
/// over and over), bounded so a huge `rows` with a small file does not reserve gigabytes.
fn rows_hint(config: &Config) -> usize {
    usize::try_from(config.rows.min(1_000_000)).unwrap_or(1_000_000)
}
