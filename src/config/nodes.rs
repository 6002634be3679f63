//! `[nodes.NAME]` and `[output.columns]`: what is generated, and where each column comes from.
//!
//! This module owns the checks of nodes (prompt, model, output kind and its options, condition)
//! and of output columns, and the shared template namespace (tables, nodes and built-in
//! variables must not collide). The invariant: every column source resolves to a table, a node, a
//! json node's field or a built-in column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use toml::Spanned;

use super::check::Checker;
use super::raw::{OrderedMap, RawNode, RawOutput};
use super::{
    BUILTIN_VARIABLES, Column, DEFAULT_COLUMNS, ModelConfig, NodeConfig, Source, is_identifier,
};
use crate::diag::{Diagnostic, suggestion};
use crate::sampling::{Table, ValueSpec};
use crate::value::OutputKind;

impl Checker<'_> {
    pub(super) fn nodes(
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
            let checks = raw
                .checks
                .as_ref()
                .map(|checks| self.node_checks(checks, &output, &key));
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
                checks,
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
    pub(super) fn check_names(
        &mut self,
        tables: &OrderedMap<Spanned<super::raw::RawTable>>,
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

    pub(super) fn columns(
        &mut self,
        output: Option<&Spanned<RawOutput>>,
        tables: &[Table],
        nodes: &[NodeConfig],
        samplers: &[ValueSpec],
        input: &[String],
    ) -> Vec<Column> {
        let resolve = |name: &str| -> Option<Source> {
            resolve_source(name, tables, nodes, samplers, input).ok()
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
            for sampler in samplers {
                if !out.iter().any(|c| c.name == sampler.name) {
                    out.push(Column {
                        name: sampler.name.clone(),
                        sources: vec![Source::Sampler(sampler.name.clone())],
                    });
                }
            }
            for column in input {
                if !out.iter().any(|c| &c.name == column) {
                    out.push(Column {
                        name: column.clone(),
                        sources: vec![Source::Input(column.clone())],
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
                match resolve_source(&source_name, tables, nodes, samplers, input) {
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
fn resolve_source(
    name: &str,
    tables: &[Table],
    nodes: &[NodeConfig],
    samplers: &[ValueSpec],
    input: &[String],
) -> Result<Source, String> {
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
                    let list = crate::diag::backticked(fields);
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
    } else if samplers.iter().any(|v| v.name == name) {
        return Ok(Source::Sampler(name.to_string()));
    } else if input.iter().any(|c| c == name) {
        return Ok(Source::Input(name.to_string()));
    }
    let mut known: Vec<String> = vec!["ticket_id".into(), "language".into()];
    known.extend(tables.iter().map(|t| t.name.clone()));
    known.extend(samplers.iter().map(|v| v.name.clone()));
    known.extend(input.iter().cloned());
    for node in nodes {
        known.push(node.name.clone());
        if let OutputKind::Json { fields } = &node.output {
            known.extend(fields.iter().map(|f| format!("{}.{f}", node.name)));
        }
    }
    let hint = suggestion(name, known.iter().map(String::as_str));
    Err(format!(
        "`{name}` names no node, node field, table, sampler or built-in column{hint}"
    ))
}
