//! `[tables.NAME]`: weighted categories, exact tables, and weights that depend on another table.
//!
//! This module owns checking a table as written into a [`Table`]: every entry that is a number is
//! a category and its weight (positive); `mode` (`"weighted"`, the default, or `"exact"`) and
//! `within` (`"language"`, exact tables only) are options; `by` gives weights per category of one
//! other table (`[tables.queue.by.business_type."Healthcare provider"]`): a row overrides the
//! weights it names (0 keeps a category away under that condition) and a parent category without
//! a row keeps the table's own weights. Unknown tables and categories, all-zero rows and cycles of
//! `by` are bad input, each reported where it is written.

use toml::Spanned;

use super::check::Checker;
use super::raw::{OrderedMap, RawConditions, RawTable, RawTableEntry};
use crate::sampling::{Condition, Table, TableMode};

impl Checker<'_> {
    pub(super) fn tables(&mut self, tables: &OrderedMap<Spanned<RawTable>>) -> Vec<Table> {
        let mut out = Vec::new();
        let mut conditions = Vec::new();
        for (name, entries) in &tables.0 {
            let key = format!("tables.{}", name.get_ref());
            self.identifier(name, &key);
            let mut table = Table::weighted(name.get_ref(), Vec::new());
            let mut within = None;
            for (entry_name, entry) in &entries.get_ref().0 {
                let entry_key = format!("{key}.{}", entry_name.get_ref());
                match (entry_name.get_ref().as_str(), entry.get_ref()) {
                    (_, RawTableEntry::Weight(weight)) => {
                        let weight = Spanned::new(entry.span(), *weight);
                        if self.weight(&weight, &entry_key) {
                            table
                                .categories
                                .push((entry_name.get_ref().clone(), *weight.get_ref()));
                        }
                    }
                    ("mode", RawTableEntry::Text(mode)) => match mode.as_str() {
                        "weighted" => table.mode = TableMode::Weighted,
                        "exact" => {
                            table.mode = TableMode::Exact {
                                within_language: false,
                            }
                        }
                        other => self.error(
                            entry.span(),
                            entry_key,
                            format!("`{other}` is not a mode; use \"weighted\" (a random draw per ticket, the default) or \"exact\" (counts in proportion to the weights)"),
                        ),
                    },
                    ("within", RawTableEntry::Text(within_value)) => {
                        if within_value == "language" {
                            within = Some(entry.span());
                        } else {
                            self.error(
                                entry.span(),
                                entry_key,
                                format!("`{within_value}` is not something a table can be balanced within; use \"language\""),
                            );
                        }
                    }
                    ("by", RawTableEntry::By(by)) => conditions.push((out.len(), by, key.clone())),
                    (_, RawTableEntry::Text(_)) => self.error(
                        entry.span(),
                        entry_key,
                        "a category's weight must be a number (text is only for `mode` and `within`)",
                    ),
                    (_, RawTableEntry::By(_)) => self.error(
                        entry.span(),
                        entry_key,
                        "a category's weight must be a number (a table is only for `by`)",
                    ),
                }
            }
            if let Some(span) = within {
                match &mut table.mode {
                    TableMode::Exact { within_language } => *within_language = true,
                    TableMode::Weighted => self.error(
                        span,
                        format!("{key}.within"),
                        "`within` applies to exact tables; add `mode = \"exact\"`",
                    ),
                }
            }
            if table.categories.is_empty() {
                self.error(
                    entries.span(),
                    key,
                    "a table needs at least one category with a weight",
                );
            }
            out.push(table);
        }
        for (position, by, key) in conditions {
            let condition = self.condition(&out, position, by, &key);
            out[position].by = condition;
        }
        self.refuse_cycles(&out, tables);
        out
    }

    /// The `by` of table `position`: one parent table, its categories, this table's categories.
    fn condition(
        &mut self,
        tables: &[Table],
        position: usize,
        by: &RawConditions,
        key: &str,
    ) -> Option<Condition> {
        let table = &tables[position];
        let mut parents = by.0.iter();
        let (parent_name, rows) = parents.next()?;
        for (extra, _) in parents {
            self.error(
                extra.span(),
                format!("{key}.by.{}", extra.get_ref()),
                "a table's weights can depend on one other table; remove all but one `by` table",
            );
        }
        let by_key = format!("{key}.by.{}", parent_name.get_ref());
        let Some(parent) = tables.iter().find(|t| &t.name == parent_name.get_ref()) else {
            let names = tables.iter().map(|t| t.name.as_str());
            let hint = crate::diag::suggestion(parent_name.get_ref(), names);
            self.error(
                parent_name.span(),
                by_key,
                format!("no table is called `{}`{hint}", parent_name.get_ref()),
            );
            return None;
        };
        if parent.name == table.name {
            self.error(
                parent_name.span(),
                by_key,
                "a table's weights cannot depend on the table itself",
            );
            return None;
        }
        let default: Vec<f64> = table.categories.iter().map(|(_, w)| *w).collect();
        let mut weights = vec![default.clone(); parent.categories.len()];
        let mut ok = true;
        for (value, row) in &rows.get_ref().0 {
            let row_key = format!("{by_key}.{}", value.get_ref());
            let Some(slot) = parent
                .categories
                .iter()
                .position(|(c, _)| c == value.get_ref())
            else {
                let hint = crate::diag::suggestion(
                    value.get_ref(),
                    parent.categories.iter().map(|(c, _)| c.as_str()),
                );
                self.error(
                    value.span(),
                    row_key,
                    format!(
                        "`{}` has no category `{}`{hint}",
                        parent.name,
                        value.get_ref()
                    ),
                );
                ok = false;
                continue;
            };
            for (category, weight) in &row.get_ref().0 {
                let weight_key = format!("{row_key}.{}", category.get_ref());
                let Some(c) = table
                    .categories
                    .iter()
                    .position(|(n, _)| n == category.get_ref())
                else {
                    let hint = crate::diag::suggestion(
                        category.get_ref(),
                        table.categories.iter().map(|(c, _)| c.as_str()),
                    );
                    self.error(
                        category.span(),
                        weight_key,
                        format!(
                            "`{}` has no category `{}`{hint}",
                            table.name,
                            category.get_ref()
                        ),
                    );
                    ok = false;
                    continue;
                };
                let value = *weight.get_ref();
                if !(value.is_finite() && value >= 0.0) {
                    self.error(
                        weight.span(),
                        weight_key,
                        format!(
                            "weights under a condition must be numbers of 0 or more, found {value}"
                        ),
                    );
                    ok = false;
                    continue;
                }
                weights[slot][c] = value;
            }
            if ok && weights[slot].iter().all(|w| *w == 0.0) {
                self.error(
                    row.span(),
                    row_key,
                    "every weight of this row is 0: a ticket with this category could not be given one",
                );
                ok = false;
            }
        }
        ok.then(|| Condition {
            parent: parent.name.clone(),
            weights,
        })
    }

    /// Refuses tables whose `by` go round in a circle (`a` by `b`, `b` by `a`).
    fn refuse_cycles(&mut self, tables: &[Table], raw: &OrderedMap<Spanned<RawTable>>) {
        // Each circle once, where its first table is written.
        let mut reported: Vec<String> = Vec::new();
        for (start, (name, entries)) in tables.iter().zip(&raw.0) {
            if reported.contains(&start.name) {
                continue;
            }
            let mut seen = vec![start.name.as_str()];
            let mut at = start;
            while let Some(condition) = &at.by {
                let Some(parent) = tables.iter().find(|t| t.name == condition.parent) else {
                    break;
                };
                if parent.name == start.name {
                    reported.extend(seen.iter().map(|n| n.to_string()));
                    seen.push(&parent.name);
                    self.error(
                        entries.span(),
                        format!("tables.{}.by", name.get_ref()),
                        format!(
                            "the tables' `by` go round in a circle ({}); one of them must not depend on the others",
                            seen.join(" -> ")
                        ),
                    );
                    break;
                }
                if seen.contains(&parent.name.as_str()) {
                    break;
                }
                seen.push(&parent.name);
                at = parent;
            }
        }
    }
}
