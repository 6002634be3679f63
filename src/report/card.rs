//! The Hugging Face dataset card: `README.md` in the output folder.
//!
//! A card is YAML front matter the Hub reads (languages, license, task categories, size category,
//! `configs` pointing `datasets.load_dataset` at the data file, the features and the row count),
//! then a Markdown body for people: how the data was made (nodes, models, prompt hashes, seed,
//! weights), what the quality gate did, what it cost, and how to load it. It is made from the
//! config and the build's report only, never from the clock or a path outside the output folder,
//! so two builds of the same inputs write the same bytes. Strings in the YAML are written as JSON
//! strings, which YAML reads as double-quoted scalars: no value can break the front matter.

use std::fmt::Write;

use super::{ColumnKind, column_kinds};
use crate::config::{Config, Format};
use crate::engine::BuildReport;
use crate::graph::Graph;
use crate::sampling::{ValueKind, Zone};

/// The card's file name in the output folder.
pub(crate) const CARD_FILE: &str = "README.md";

/// The Hub's size categories, by upper bound.
const SIZE_CATEGORIES: [(u64, &str); 10] = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
];

fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// The size category of a dataset of `rows` rows.
pub(crate) fn size_category(rows: u64) -> &'static str {
    SIZE_CATEGORIES
        .iter()
        .find(|(bound, _)| rows < *bound)
        .map_or("n>1T", |(_, name)| name)
}

/// The data file the card points at: Parquet when written, else JSONL, else CSV.
fn data_file(config: &Config) -> Option<(String, Format)> {
    [Format::Parquet, Format::Jsonl, Format::Csv]
        .into_iter()
        .find(|f| config.formats.contains(f))
        .map(|f| (format!("{}.{}", config.name, f.extension()), f))
}

/// The time zone of a column of moments (a `datetime` sampler), as Parquet stores it.
fn time_zone(config: &Config, column: &str) -> Option<String> {
    let column = config.columns.iter().find(|c| c.name == column)?;
    let Some(crate::config::Source::Sampler(name)) = column.sources.first() else {
        return None;
    };
    match &config.samplers.iter().find(|s| &s.name == name)?.kind {
        ValueKind::DateTime { zone, .. } => Some(match zone {
            Zone::Utc => "UTC".to_string(),
            Zone::Named(tz) => tz.name().to_string(),
        }),
        _ => None,
    }
}

/// The card of a build of `config` that wrote `report.written` rows.
pub(crate) fn render(config: &Config, graph: &Graph, report: &BuildReport) -> String {
    let mut card = String::from("---\n");
    front_matter(&mut card, config, graph, report);
    card.push_str("---\n\n");
    body(&mut card, config, graph, report);
    card
}

fn front_matter(card: &mut String, config: &Config, graph: &Graph, report: &BuildReport) {
    card.push_str("language:\n");
    for (language, weight) in &config.languages {
        if *weight > 0.0 {
            let _ = writeln!(card, "- {}", language.code().to_lowercase());
        }
    }
    let _ = writeln!(
        card,
        "license: {}",
        quoted(config.license.as_deref().unwrap_or("other"))
    );
    let _ = writeln!(card, "pretty_name: {}", quoted(&config.name));
    let kinds = column_kinds(config, graph);
    card.push_str("task_categories:\n- text-classification\n");
    if kinds.iter().any(|(name, _)| name == "first_response") {
        card.push_str("- text-generation\n");
    }
    card.push_str("tags:\n- synthetic\n- customer-support\n- ticketbuild\n");
    let _ = writeln!(
        card,
        "size_categories:\n- {}",
        size_category(report.written)
    );
    if let Some((file, _)) = data_file(config) {
        let _ = writeln!(
            card,
            "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {}",
            quoted(&file)
        );
    }
    card.push_str("dataset_info:\n  features:\n");
    for (name, kind) in &kinds {
        let _ = writeln!(card, "  - name: {}", quoted(name));
        match (kind, time_zone(config, name)) {
            (ColumnKind::List, _) => card.push_str("    sequence: string\n"),
            (_, Some(zone)) => {
                let _ = writeln!(
                    card,
                    "    dtype: {}",
                    quoted(&format!("timestamp[ms, tz={zone}]"))
                );
            }
            _ => card.push_str("    dtype: string\n"),
        }
    }
    let _ = writeln!(
        card,
        "  splits:\n  - name: train\n    num_examples: {}",
        report.written
    );
}

fn body(card: &mut String, config: &Config, graph: &Graph, report: &BuildReport) {
    let _ = writeln!(
        card,
        "# {}\n\nA synthetic, multilingual customer-support ticket dataset of {} tickets, generated \
         with ticketbuild by a graph of model calls. Every \
         field of every ticket is the answer to a request whose inputs are recorded, so the same \
         configuration, prompts and cache rebuild this exact file.\n",
        config.name, report.written
    );
    if report.written < config.rows {
        let _ = writeln!(
            card,
            "**Incomplete:** {} of the {} tickets asked for could not be made in the last build.\n",
            config.rows - report.written,
            config.rows
        );
    }
    card.push_str("## How it was made\n\n| node | output | provider | model | prompt | template hash |\n|---|---|---|---|---|---|\n");
    for node in &graph.nodes {
        let _ = writeln!(
            card,
            "| {} | {} | {} | `{}` | `{}` | `{}` |",
            node.name,
            node.config.output.name(),
            node.model.provider.name(),
            node.model.model,
            node.prompt_display.display(),
            node.template_hash.get(..16).unwrap_or(&node.template_hash)
        );
    }
    let languages: Vec<String> = config
        .languages
        .iter()
        .map(|(l, w)| format!("{} {w}", l.code()))
        .collect();
    let _ = writeln!(
        card,
        "\nSeed {}; languages drawn with weights {}.",
        config.seed,
        languages.join(", ")
    );
    for table in &config.tables {
        let weights: Vec<String> = table
            .categories
            .iter()
            .map(|(c, w)| format!("{c} {w}"))
            .collect();
        let _ = writeln!(
            card,
            "`{}` drawn with weights {}.",
            table.name,
            weights.join(", ")
        );
    }
    card.push_str("\n## Columns\n\n");
    for (name, kind) in column_kinds(config, graph) {
        let what = match kind {
            ColumnKind::TicketId => "ticket id (12-13 digits, as text)",
            ColumnKind::Language => "the ticket's language code",
            ColumnKind::Table(_) => "a class drawn from its weighted table",
            ColumnKind::Text => "text written by a model",
            ColumnKind::List => "a list of strings written by a model",
            ColumnKind::Value => "a value drawn per ticket by a sampler",
        };
        let _ = writeln!(card, "- `{name}`: {what}");
    }
    quality(card, report);
    let regenerate: f64 = report
        .nodes
        .iter()
        .map(|n| n.stats.regenerate_cost_usd)
        .sum();
    let _ = writeln!(
        card,
        "\n## Cost\n\nGenerating the whole dataset from an empty cache costs about ${regenerate:.4} \
         at the prices ticketbuild knows today ({} answers used, {} draws rejected by checks).",
        report.nodes.iter().map(|n| n.stats.used).sum::<u64>(),
        report.nodes.iter().map(|n| n.stats.rejected).sum::<u64>(),
    );
    loading(card, config);
}

fn quality(card: &mut String, report: &BuildReport) {
    card.push_str("\n## Quality\n\n");
    let rejected: Vec<String> = report
        .nodes
        .iter()
        .filter(|n| n.stats.rejected > 0)
        .map(|n| {
            let why: Vec<String> = n
                .stats
                .rejections
                .iter()
                .map(|(k, c)| format!("{k} {c}"))
                .collect();
            format!("`{}` {} ({})", n.name, n.stats.rejected, why.join(", "))
        })
        .collect();
    if rejected.is_empty() {
        card.push_str("No answer was rejected by the nodes' checks.\n");
    } else {
        let _ = writeln!(
            card,
            "Answers rejected by the nodes' checks and drawn again: {}.",
            rejected.join("; ")
        );
    }
    if let Some(d) = &report.duplicates {
        let _ = writeln!(
            card,
            "Duplicates of {}: {} exact and {} near duplicates redrawn, {} exact duplicates \
             dropped, {} near duplicates left.",
            d.columns.join(", "),
            d.exact_resolved,
            d.near_resolved,
            d.exact_dropped,
            d.near_remaining
        );
    }
}

fn loading(card: &mut String, config: &Config) {
    let Some((file, format)) = data_file(config) else {
        return;
    };
    let (pandas, polars, duckdb) = match format {
        Format::Parquet => (
            format!("pd.read_parquet(\"{file}\")"),
            format!("pl.read_parquet(\"{file}\")"),
            format!("'{file}'"),
        ),
        Format::Jsonl => (
            format!("pd.read_json(\"{file}\", lines=True)"),
            format!("pl.read_ndjson(\"{file}\")"),
            format!("read_json_auto('{file}')"),
        ),
        Format::Csv => (
            format!("pd.read_csv(\"{file}\", dtype=str)"),
            format!("pl.read_csv(\"{file}\", infer_schema=False)"),
            format!("read_csv_auto('{file}', all_varchar=true)"),
        ),
    };
    let _ = writeln!(
        card,
        "\n## Loading\n\nFrom this folder (or from the Hub once it is uploaded as a dataset \
         repository):\n\n```python\nfrom datasets import load_dataset\n\nds = \
         load_dataset(\"path/to/this/folder\")  # or \"user/{name}\" on the Hub\nprint(ds[\"train\"][0])\n```\n\n\
         ```python\nimport pandas as pd\n\ndf = {pandas}\n```\n\n```python\nimport polars as pl\n\ndf = \
         {polars}\n```\n\n```python\nimport duckdb\n\nduckdb.sql(\"SELECT language, count(*) FROM \
         {duckdb} GROUP BY language\").show()\n```",
        name = config.name
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_categories_follow_the_hub() {
        assert_eq!(size_category(0), "n<1K");
        assert_eq!(size_category(999), "n<1K");
        assert_eq!(size_category(1_000), "1K<n<10K");
        assert_eq!(size_category(100_000), "100K<n<1M");
        assert_eq!(size_category(5_000_000_000), "1B<n<10B");
    }

    #[test]
    fn yaml_strings_cannot_break_the_front_matter() {
        assert_eq!(quoted("a: b\n---"), r#""a: b\n---""#);
    }
}
