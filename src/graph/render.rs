//! The graph drawn for people: text, Graphviz DOT or Mermaid, one line at a time.
//!
//! This module owns how nodes and their edges are described (`graph --format`). It returns lines
//! and prints nothing. The invariant: every node appears once and every edge goes from an upstream
//! node to the node that reads it.

use super::{Graph, Node};
use crate::value::OutputKind;

/// The lines of `graph` as text: one node per line, with its condition and upstream nodes.
pub(crate) fn text(graph: &Graph) -> Vec<String> {
    graph
        .nodes
        .iter()
        .map(|node| {
            let from: Vec<&str> = node
                .upstream
                .iter()
                .map(|u| graph.nodes[*u].name.as_str())
                .collect();
            let when = node
                .config
                .when
                .as_ref()
                .map_or_else(String::new, |w| format!(" when {w}"));
            if from.is_empty() {
                format!("{}{when}", describe(node))
            } else {
                format!("{}{when} <- {}", describe(node), from.join(", "))
            }
        })
        .collect()
}

/// The lines of `graph` as a Graphviz digraph.
pub(crate) fn dot(graph: &Graph) -> Vec<String> {
    let mut lines = vec![
        "digraph ticketbuild {".to_string(),
        "  rankdir=LR;".to_string(),
    ];
    for node in &graph.nodes {
        lines.push(format!(
            "  \"{}\" [shape=box, label=\"{}\"];",
            node.name,
            describe(node).replace('"', "'")
        ));
    }
    lines.extend(edges(graph, |from, to| {
        format!("  \"{from}\" -> \"{to}\";")
    }));
    lines.push("}".to_string());
    lines
}

/// The lines of `graph` as a Mermaid flowchart.
pub(crate) fn mermaid(graph: &Graph) -> Vec<String> {
    let mut lines = vec!["flowchart LR".to_string()];
    for node in &graph.nodes {
        lines.push(format!(
            "  {}[\"{}\"]",
            node.name,
            describe(node).replace('"', "'")
        ));
    }
    lines.extend(edges(graph, |from, to| format!("  {from} --> {to}")));
    lines
}

/// Every edge, from upstream to reader, in graph order, as `line` writes it.
fn edges(graph: &Graph, line: impl Fn(&str, &str) -> String) -> Vec<String> {
    let mut lines = Vec::new();
    for node in &graph.nodes {
        for u in &node.upstream {
            lines.push(line(&graph.nodes[*u].name, &node.name));
        }
    }
    lines
}

/// `body (openai/gpt-4o-mini, text)`.
fn describe(node: &Node) -> String {
    let kind = match &node.config.output {
        OutputKind::Text => "text".to_string(),
        OutputKind::List { min, max } => format!("list {min}-{max}"),
        OutputKind::Json { fields } => format!("json {}", fields.join(",")),
    };
    format!(
        "{} ({}/{}, {kind})",
        node.name, node.model.provider, node.model.model
    )
}
