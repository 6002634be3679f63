//! Checking dataset.toml: from the file as written to a [`Config`].
//!
//! This module owns the [`Checker`], which collects every problem of a file (one line per problem,
//! naming file, line and key) instead of stopping at the first, and the checks of the `[dataset]`,
//! `[tables]` and `[cost]` tables. Models, nodes and columns, and profiles, are checked by the
//! [`Checker`] methods in `models`, `nodes` and `profile`. The invariant: a problem is reported
//! under the key the user wrote, which is the profile's key when the profile set the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{OrderedMap, RawCost, RawDataset, RawFile, StringList};
use super::{Config, CostConfig, Format, Overrides, is_identifier};
use crate::diag::{Diagnostic, Diagnostics};
use crate::language::Language;
use crate::sampling::ID_SPACE;

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) source: &'a str,
    pub(super) problems: Diagnostics,
    /// Keys whose value the profile set, and the key the user wrote it under
    /// (`dataset.rows` -> `profile.dev.rows`): problems are reported under the key written.
    pub(super) renamed: BTreeMap<String, String>,
}

impl Checker<'_> {
    pub(super) fn error(
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
    pub(super) fn written_key(&self, key: String) -> String {
        self.renamed.get(&key).cloned().unwrap_or(key)
    }

    pub(super) fn check(
        &mut self,
        mut raw: RawFile,
        root: PathBuf,
        overrides: &Overrides,
    ) -> Option<Config> {
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
        let rows = self.rows(overrides.rows, dataset.rows.as_ref());
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
        let samplers = self.samplers(&raw.samplers, &tables, &nodes);
        let input = self.input(raw.input.as_ref(), &root, (&tables, &nodes, &samplers));
        let rows_given = overrides.rows.is_some() || dataset.rows.is_some();
        let rows = self.input_rows(rows, rows_given, input.as_ref(), dataset.rows.as_ref());
        let input_columns: Vec<String> = input
            .as_ref()
            .map(|i| i.rows.columns().to_vec())
            .unwrap_or_default();
        let columns = self.columns(
            raw.output.as_ref(),
            &tables,
            &nodes,
            &samplers,
            &input_columns,
        );
        let quality = self.quality(raw.quality.as_ref(), &columns, &nodes);
        // `[output]` switches, each with its default.
        let output = raw.output.as_ref().map(|o| o.get_ref());
        let switch = |get: fn(&super::raw::RawOutput) -> Option<bool>, default: bool| {
            output.and_then(get).unwrap_or(default)
        };
        let csv_formula_escape = switch(|o| o.csv_formula_escape, false);
        let lineage = switch(|o| o.lineage, false);
        let report = switch(|o| o.report, false);
        let card = switch(|o| o.card, true);
        let license = self.license(dataset.license.as_ref());

        let cost = self.cost(raw.cost.as_ref());
        let remote = self.remote(raw.cache.as_ref());
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
            samplers,
            input,
            models,
            nodes,
            columns,
            lineage,
            csv_formula_escape,
            report,
            card,
            license,
            concurrency,
            profile,
            cost,
            quality,
            remote,
        })
    }

    /// `[dataset] license`: an id as the Hugging Face Hub spells licenses (`cc-by-4.0`, `mit`).
    fn license(&mut self, license: Option<&Spanned<String>>) -> Option<String> {
        let license = license?;
        let id = license.get_ref();
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
        if !valid {
            self.error(
                license.span(),
                "dataset.license",
                format!(
                    "`{id}` is not a license id as the Hugging Face Hub spells them: lower-case \
                     letters, digits, `.` and `-`, such as `cc-by-4.0`, `mit`, `apache-2.0` or `other`"
                ),
            );
            return None;
        }
        Some(id.clone())
    }

    /// An error about a value that may be a secret: located, but without the source line, so the
    /// value never reaches the terminal or a log.
    pub(super) fn secret_error(
        &mut self,
        span: std::ops::Range<usize>,
        key: String,
        message: &str,
    ) {
        let key = self.written_key(key);
        let mut diagnostic = Diagnostic::at(self.path, self.source, span, message).with_key(key);
        diagnostic.snippet = None;
        self.problems.push(diagnostic);
    }

    /// `dataset.rows`, or `--rows`: at least 1 and within the ticket id space; 200 when unset.
    fn rows(&mut self, overrides_rows: Option<u64>, rows: Option<&Spanned<i64>>) -> Option<u64> {
        match (overrides_rows, rows) {
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
        }
    }

    /// A non-negative amount of money.
    pub(super) fn money(&mut self, value: &Spanned<f64>, key: &str) -> Option<f64> {
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

    pub(super) fn positive(&mut self, value: &Spanned<i64>, key: &str) -> Option<u64> {
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
        let mut out: Vec<(Language, f64)> = Vec::new();
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
                        "`{}` is not an ISO 639-1 language code; use two letters such as DE, EN, FR, ES, PT, IT, NL, PL, SV or JA",
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

    pub(super) fn weight(&mut self, weight: &Spanned<f64>, key: &str) -> bool {
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

    pub(super) fn identifier(&mut self, name: &Spanned<String>, key: &str) -> bool {
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
}
