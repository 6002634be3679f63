//! `ticketbuild graph`: the node graph as text, Graphviz DOT or Mermaid.

use super::args::{GraphArgs, GraphFormat};
use super::{CliError, Outcome, load, say};
use crate::graph::render;

pub(super) fn run(args: GraphArgs) -> Result<Outcome, CliError> {
    let (_config, graph) = load(&args.project)?;
    let lines = match args.format {
        GraphFormat::Text => render::text(&graph),
        GraphFormat::Dot => render::dot(&graph),
        GraphFormat::Mermaid => render::mermaid(&graph),
    };
    for line in lines {
        say!("{line}");
    }
    Ok(Outcome::Success)
}
