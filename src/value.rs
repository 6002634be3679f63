//! Node outputs: the three kinds a node can declare and the values they produce.
//!
//! This module owns what a node's output *is* (`text`, a `list` of strings, or a `json` object with
//! named string fields), how a model's raw reply is parsed and validated into one, and how an output is
//! seen by templates and by output columns. It does not call models or store anything. The invariant: a
//! value that fails validation never becomes a [`NodeOutput`], so it can never be cached.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The output kind a node declares in dataset.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    Text,
    List { min: usize, max: usize },
    Json { fields: Vec<String> },
}

impl OutputKind {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            OutputKind::Text => "text",
            OutputKind::List { .. } => "list",
            OutputKind::Json { .. } => "json",
        }
    }

    /// Parses and validates a model's reply. Lists accept a JSON array of strings, a JSON object
    /// holding one (`{"items": [...]}`, the shape HTTP providers are asked for with a JSON schema, or
    /// an object whose only value is an array), one item per line (leading `-`, `*` or numbering
    /// removed), or comma-separated items on one line; JSON objects may be wrapped in a Markdown code
    /// fence, as chat models often do.
    pub fn parse(&self, raw: &str) -> Result<NodeOutput, InvalidOutput> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidOutput::Empty);
        }
        match self {
            OutputKind::Text => Ok(NodeOutput::Text(trimmed.to_string())),
            OutputKind::List { min, max } => {
                let items = parse_list(trimmed);
                NodeOutput::List(items)
                    .validated(self)
                    .map_err(|_| InvalidOutput::ListLength {
                        found: parse_list(trimmed).len(),
                        min: *min,
                        max: *max,
                    })
            }
            OutputKind::Json { .. } => {
                let body = strip_code_fence(trimmed);
                let value: serde_json::Value = serde_json::from_str(body)
                    .map_err(|e| InvalidOutput::NotJson(e.to_string()))?;
                let serde_json::Value::Object(map) = value else {
                    return Err(InvalidOutput::NotJsonObject);
                };
                let fields = map
                    .into_iter()
                    .map(|(k, v)| {
                        let text = match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, text)
                    })
                    .collect();
                NodeOutput::Json(fields).validated(self)
            }
        }
    }
}

impl OutputKind {
    /// Like [`OutputKind::parse`], for replies to a request that asked for JSON (a response
    /// format or a JSON instruction): a `list` must then come as JSON, an array or an object
    /// holding one. Prose that merely contains commas ("I'm sorry, but I can't, ...") is refused
    /// instead of being split into "tags".
    pub(crate) fn parse_requested_json(&self, raw: &str) -> Result<NodeOutput, InvalidOutput> {
        if let OutputKind::List { .. } = self {
            let body = strip_code_fence(raw.trim());
            if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
                return Err(if body.is_empty() {
                    InvalidOutput::Empty
                } else {
                    InvalidOutput::NotJson(e.to_string())
                });
            }
        }
        self.parse(raw)
    }
}

/// Why a reply is not a valid output of its node. A failed attempt, never a cached value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOutput {
    #[error("the reply is empty")]
    Empty,
    #[error("expected {min} to {max} list items, got {found}")]
    ListLength {
        found: usize,
        min: usize,
        max: usize,
    },
    #[error("the reply is not JSON: {0}")]
    NotJson(String),
    #[error("the reply is not a JSON object")]
    NotJsonObject,
    #[error("the JSON reply lacks the field `{0}`")]
    MissingField(String),
    #[error("the field `{0}` is empty")]
    EmptyField(String),
    #[error("the output is a {found}, the node declares {expected}")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
    },
}

/// One node's output for one ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeOutput {
    Text(String),
    List(Vec<String>),
    /// Declared fields only, in name order.
    Json(BTreeMap<String, String>),
}

impl NodeOutput {
    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            NodeOutput::Text(_) => "text",
            NodeOutput::List(_) => "list",
            NodeOutput::Json(_) => "json",
        }
    }

    /// Checks the value against the declared kind, keeping only the declared JSON fields.
    pub(crate) fn validated(self, kind: &OutputKind) -> Result<NodeOutput, InvalidOutput> {
        match (self, kind) {
            (NodeOutput::Text(text), OutputKind::Text) => {
                if text.trim().is_empty() {
                    Err(InvalidOutput::Empty)
                } else {
                    Ok(NodeOutput::Text(text))
                }
            }
            (NodeOutput::List(items), OutputKind::List { min, max }) => {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if items.len() < *min || items.len() > *max {
                    Err(InvalidOutput::ListLength {
                        found: items.len(),
                        min: *min,
                        max: *max,
                    })
                } else {
                    Ok(NodeOutput::List(items))
                }
            }
            (NodeOutput::Json(mut map), OutputKind::Json { fields }) => {
                let mut kept = BTreeMap::new();
                for field in fields {
                    let value = map
                        .remove(field)
                        .ok_or_else(|| InvalidOutput::MissingField(field.clone()))?;
                    if value.trim().is_empty() {
                        return Err(InvalidOutput::EmptyField(field.clone()));
                    }
                    kept.insert(field.clone(), value.trim().to_string());
                }
                Ok(NodeOutput::Json(kept))
            }
            (value, kind) => Err(InvalidOutput::WrongKind {
                found: value.kind_name(),
                expected: kind.name(),
            }),
        }
    }

    /// The value as JSON: a string, an array of strings, or an object of strings.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            NodeOutput::Text(text) => serde_json::Value::String(text.clone()),
            NodeOutput::List(items) => items
                .iter()
                .cloned()
                .map(serde_json::Value::String)
                .collect(),
            NodeOutput::Json(map) => serde_json::Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ),
        }
    }

    /// The value as templates see it.
    pub fn to_template_value(&self) -> minijinja::Value {
        match self {
            NodeOutput::Text(text) => minijinja::Value::from(text.as_str()),
            NodeOutput::List(items) => minijinja::Value::from(items.clone()),
            NodeOutput::Json(map) => minijinja::Value::from(map.clone()),
        }
    }

    /// Number of characters, for token estimates.
    pub(crate) fn char_len(&self) -> usize {
        match self {
            NodeOutput::Text(text) => text.len(),
            NodeOutput::List(items) => items.iter().map(|s| s.len() + 2).sum(),
            NodeOutput::Json(map) => map.iter().map(|(k, v)| k.len() + v.len() + 6).sum(),
        }
    }
}

fn strip_code_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.split_once('\n').map_or("", |(_, body)| body);
    rest.trim_end().strip_suffix("```").unwrap_or(rest).trim()
}

fn parse_list(text: &str) -> Vec<String> {
    let body = strip_code_fence(text);
    let array = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) => Some(items),
        Ok(serde_json::Value::Object(mut map)) => match map.remove("items") {
            Some(serde_json::Value::Array(items)) => Some(items),
            Some(_) => Some(Vec::new()),
            None if map.len() == 1 => match map.into_iter().next() {
                Some((_, serde_json::Value::Array(items))) => Some(items),
                _ => Some(Vec::new()),
            },
            // An object that holds no list is no list, not one item per line of its JSON.
            None => Some(Vec::new()),
        },
        _ => None,
    };
    if let Some(items) = array {
        return items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect();
    }
    let lines: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let parts: Vec<&str> = if lines.len() == 1 {
        lines[0].split(',').collect()
    } else {
        lines
    };
    parts
        .into_iter()
        .map(|item| {
            item.trim()
                .trim_start_matches(['-', '*', '•'])
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start_matches(['.', ')'])
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_from_json_lines_and_commas() {
        let kind = OutputKind::List { min: 2, max: 4 };
        let expected = NodeOutput::List(vec!["vpn".into(), "network".into()]);
        assert_eq!(kind.parse(r#"["vpn", "network"]"#), Ok(expected.clone()));
        assert_eq!(kind.parse("- vpn\n- network\n"), Ok(expected.clone()));
        assert_eq!(kind.parse("1. vpn\n2. network"), Ok(expected.clone()));
        assert_eq!(kind.parse("vpn, network"), Ok(expected));
        assert!(matches!(
            kind.parse("vpn"),
            Err(InvalidOutput::ListLength { found: 1, .. })
        ));
    }

    #[test]
    fn json_keeps_declared_fields_and_rejects_missing_ones() {
        let kind = OutputKind::Json {
            fields: vec!["subject".into(), "body".into()],
        };
        let parsed = kind
            .parse("```json\n{\"subject\": \"A\", \"body\": \"B\", \"extra\": 1}\n```")
            .unwrap();
        assert_eq!(
            parsed,
            NodeOutput::Json(BTreeMap::from([
                ("body".to_string(), "B".to_string()),
                ("subject".to_string(), "A".to_string())
            ]))
        );
        assert_eq!(
            kind.parse(r#"{"subject": "A"}"#),
            Err(InvalidOutput::MissingField("body".into()))
        );
        assert!(matches!(
            kind.parse("{not json"),
            Err(InvalidOutput::NotJson(_))
        ));
    }

    #[test]
    fn lists_parse_from_objects_holding_an_array() {
        let kind = OutputKind::List { min: 2, max: 4 };
        let expected = NodeOutput::List(vec!["vpn".into(), "network".into()]);
        assert_eq!(
            kind.parse(r#"{"items": ["vpn", "network"]}"#),
            Ok(expected.clone())
        );
        assert_eq!(kind.parse(r#"{"tags": ["vpn", "network"]}"#), Ok(expected));
        assert!(matches!(
            kind.parse(r#"{"a": ["vpn", "network"], "b": 1}"#),
            Err(InvalidOutput::ListLength { found: 0, .. })
        ));
    }

    #[test]
    fn a_list_requested_as_json_refuses_prose() {
        let kind = OutputKind::List { min: 2, max: 8 };
        let prose = "I'm sorry, but I can't help with that, as it is, well, unclear.";
        assert!(kind.parse(prose).is_ok(), "plain parsing splits on commas");
        assert!(matches!(
            kind.parse_requested_json(prose),
            Err(InvalidOutput::NotJson(_))
        ));
        assert_eq!(
            kind.parse_requested_json(r#"{"items": ["vpn", "network"]}"#),
            Ok(NodeOutput::List(vec!["vpn".into(), "network".into()]))
        );
    }

    #[test]
    fn empty_replies_are_invalid() {
        assert_eq!(OutputKind::Text.parse("  \n"), Err(InvalidOutput::Empty));
    }
}
