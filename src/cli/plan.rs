//! `ticketbuild plan` (and `build --dry-run`): what a build would generate and cost. Calls no model.

use std::sync::Arc;

use super::args::ProjectArgs;
use super::{CliError, Outcome, load, name_width, open_cache, runtime, runtime_error, say};

pub(super) fn run(project: &ProjectArgs, json: bool, batch: bool) -> Result<Outcome, CliError> {
    let (config, graph) = load(project)?;
    let cache = open_cache(&config)?;
    let config = Arc::new(config);
    let plan = runtime()?
        .block_on(crate::plan::of_project(
            Arc::clone(&config),
            Arc::new(graph),
            cache,
        ))
        .map_err(runtime_error)?;
    if json {
        super::out::json(&plan)?;
        return Ok(Outcome::Success);
    }
    let money = |usd: Option<f64>| {
        crate::cost::format_money(usd, &config.cost.currencies, &config.cost.rates)
    };
    say!(
        "plan for `{}`: {} tickets (prices of {}; no model is called)",
        plan.dataset,
        plan.tickets,
        crate::cost::prices_taken()
    );
    let width = name_width(plan.nodes.iter().map(|n| n.name.as_str()));
    say!(
        "  {:<width$}  {:>7}  {:>11}  {:>10}  {:>11}  {:>12}  {:>12}  {:>12}",
        "node",
        "cached",
        "to generate",
        "tokens in",
        "tokens out",
        "low",
        "expected",
        "high"
    );
    for node in &plan.nodes {
        let usd = |v: Option<f64>| v.map_or_else(|| "unknown".to_string(), |v| format!("${v:.4}"));
        let note = if node.depends_on_pending { "  *" } else { "" };
        say!(
            "  {:<width$}  {:>7}  {:>11}  {:>10}  {:>11}  {:>12}  {:>12}  {:>12}{note}",
            node.name,
            node.cached,
            node.to_generate,
            node.input_tokens,
            node.output_tokens_expected,
            usd(node.cost_low),
            usd(node.cost_expected),
            usd(node.cost_high),
        );
    }
    if plan.nodes.iter().any(|n| n.depends_on_pending) {
        say!(
            "  * prompts depend on outputs not generated yet; their size is estimated from the upstream nodes"
        );
    }
    say!(
        "  expected cost: {} (low {}, high {})",
        money(plan.cost_expected),
        money(plan.cost_low),
        money(plan.cost_high)
    );
    if batch {
        let usd =
            |v: Option<f64>| v.map_or_else(|| "no batch price".to_string(), |v| format!("${v:.4}"));
        say!("  at batch-API prices (expected output):");
        for node in &plan.nodes {
            say!(
                "    {:<width$}  {:>14}",
                node.name,
                usd(node.batch_cost_expected)
            );
        }
        let with = plan
            .nodes
            .iter()
            .filter(|n| n.batch_cost_expected.is_some())
            .count();
        say!(
            "  expected cost in batch mode: {} against {} ({with} of {} nodes at batch prices, the others at their usual ones)",
            money(plan.batch_cost_expected),
            money(plan.cost_expected),
            plan.nodes.len()
        );
    }
    if let Some(remote) = &config.remote {
        say!(
            "  `cached` counts the local cache only: a build first looks up what is missing here in the remote cache {} and pays only for what it lacks",
            remote.url
        );
    }
    if let Some(budget) = plan.budget {
        let verdict = match plan.cost_high {
            Some(high) if high <= budget => "the whole build fits",
            _ => "the build may stop at the budget; it continues from the cache next time",
        };
        say!("  budget: {}: {verdict}", money(Some(budget)));
    }
    Ok(Outcome::Success)
}
