//! `[input]`: the user's own rows as the starting point of tickets.
//!
//! This module owns checking `[input]` (`path`, `mode` = `"each"`: one ticket per row, the
//! default; or `"draw"`: `rows` tickets each drawing a row, `replace` = true to allow repeats) and
//! opening the file (`crate::input` checks and indexes every row). Every column whose name is a
//! valid identifier becomes a template variable and an output column source; a name that a table,
//! a node, a sampler or a built-in variable already has is refused, naming the file and column.

use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::check::Checker;
use super::raw::RawInput;
use super::{BUILTIN_VARIABLES, InputConfig, NodeConfig, is_identifier};
use crate::diag::Diagnostic;
use crate::input::InputRows;
use crate::sampling::{InputMode, Table, ValueSpec};

impl Checker<'_> {
    pub(super) fn input(
        &mut self,
        raw: Option<&Spanned<RawInput>>,
        root: &Path,
        names: (&[Table], &[NodeConfig], &[ValueSpec]),
    ) -> Option<InputConfig> {
        let raw = raw?;
        let Some(path) = &raw.get_ref().path else {
            self.error(
                raw.span(),
                "input",
                "[input] needs a `path` to a CSV, JSONL or Parquet file",
            );
            return None;
        };
        let mode = match raw
            .get_ref()
            .mode
            .as_ref()
            .map(|m| (m, m.get_ref().as_str()))
        {
            None | Some((_, "each")) => InputMode::Each,
            Some((_, "draw")) => InputMode::Draw {
                replace: raw.get_ref().replace.as_ref().is_some_and(|r| *r.get_ref()),
            },
            Some((mode, other)) => {
                self.error(
                    mode.span(),
                    "input.mode",
                    format!("`{other}` is not an input mode; use \"each\" (one ticket per row) or \"draw\" (`rows` tickets drawing rows)"),
                );
                return None;
            }
        };
        if let (InputMode::Each, Some(replace)) = (mode, &raw.get_ref().replace) {
            self.error(
                replace.span(),
                "input.replace",
                "`replace` applies to `mode = \"draw\"`",
            );
        }
        let file = root.join(path.get_ref());
        let rows = match InputRows::open(&file) {
            Ok(rows) => rows,
            Err(problems) => {
                if !file.exists() {
                    self.error(
                        path.span(),
                        "input.path",
                        format!("`{}` does not exist", path.get_ref()),
                    );
                    return None;
                }
                for problem in problems {
                    let mut diagnostic = Diagnostic::file(&problem.path, {
                        let mut at = String::new();
                        if let Some(row) = problem.row {
                            at.push_str(&format!("row {row}"));
                        }
                        if let Some(column) = &problem.column {
                            at.push_str(&format!(", column `{column}`"));
                        }
                        if at.is_empty() {
                            problem.reason.clone()
                        } else {
                            format!("{at}: {}", problem.reason)
                        }
                    });
                    diagnostic = diagnostic.without_secrets();
                    self.problems.push(diagnostic);
                }
                return None;
            }
        };
        let (tables, nodes, samplers) = names;
        for column in rows.columns() {
            let taken = if BUILTIN_VARIABLES.contains(&column.as_str()) {
                Some("a built-in variable")
            } else if tables.iter().any(|t| &t.name == column) {
                Some("a table")
            } else if nodes.iter().any(|n| &n.name == column) {
                Some("a node")
            } else if samplers.iter().any(|s| &s.name == column) {
                Some("a sampler")
            } else {
                None
            };
            if let Some(what) = taken.filter(|_| is_identifier(column)) {
                self.problems.push(Diagnostic::file(
                    &file,
                    format!("column `{column}` has the name of {what}; rename one of them"),
                ));
            }
        }
        Some(InputConfig {
            rows: Arc::new(rows),
            mode,
            display: path.get_ref().clone(),
        })
    }
}

impl Checker<'_> {
    /// The dataset's rows with `[input]`: each row once when `rows` is not given (`mode =
    /// "each"`); no more than the input has where rows cannot repeat.
    pub(super) fn input_rows(
        &mut self,
        rows: Option<u64>,
        given: bool,
        input: Option<&InputConfig>,
        written: Option<&Spanned<i64>>,
    ) -> Option<u64> {
        let Some(input) = input else { return rows };
        let available = input.rows.len();
        let repeats = matches!(input.mode, InputMode::Draw { replace: true });
        match rows {
            _ if input.mode == InputMode::Each && !given => Some(available),
            Some(rows) if rows > available && !repeats => {
                let message = format!(
                    "{rows} rows asked for, but `{}` has {available} and its rows cannot repeat{}",
                    input.display,
                    if input.mode == InputMode::Each {
                        " (one ticket per row)"
                    } else {
                        "; set `replace = true` under [input] to draw rows again"
                    }
                );
                match written.filter(|_| !self.renamed.contains_key("dataset.rows")) {
                    Some(span) => self.error(span.span(), "dataset.rows", message),
                    None => self.problems.push(Diagnostic::argument("--rows", message)),
                }
                None
            }
            other => other,
        }
    }
}
