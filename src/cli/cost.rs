//! `ticketbuild cost`: the cost report of the last build, per node, model and language.

use super::args::CostArgs;
use super::{CliError, Outcome, name_width, runtime_error, say};
use crate::config::Config;
use crate::engine::BuildReport;

pub(super) fn run(args: CostArgs) -> Result<Outcome, CliError> {
    let config = args.project.config()?;
    let path = config.cache_dir.join(crate::build::LAST_REPORT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        runtime_error(anyhow::anyhow!(
            "no build is recorded in `{}` yet; run `ticketbuild build` first",
            config.cache_dir.display()
        ))
    })?;
    let report: BuildReport = serde_json::from_str(&text)
        .map_err(|e| runtime_error(anyhow::anyhow!("cannot read `{}`: {e}", path.display())))?;
    if args.json {
        super::out::json_sorted(&report.cost_report())?;
    } else {
        print_costs(&report, &config)?;
    }
    Ok(Outcome::Success)
}

/// The cost part of a summary: per node, then per model and language, in every currency.
fn print_costs(report: &BuildReport, config: &Config) -> Result<(), CliError> {
    let money = |usd: f64| {
        crate::cost::format_money(Some(usd), &config.cost.currencies, &config.cost.rates)
    };
    let profile = report.profile.as_deref().unwrap_or("(none)");
    say!(
        "cost of the last build of `{}` (profile {profile})",
        report.dataset
    );
    let width = name_width(report.nodes.iter().map(|n| n.name.as_str()));
    say!(
        "  {:<width$}  {:>16}  {:>16}  {:>16}",
        "node",
        "spent now",
        "reused (paid)",
        "regenerate all"
    );
    for node in &report.nodes {
        let s = &node.stats;
        let mut unknown = if s.unknown_cost > 0 {
            format!("  ({} unknown)", s.unknown_cost)
        } else {
            String::new()
        };
        if s.rejected > 0 {
            unknown.push_str(&format!(
                "  ({} draws rejected by its checks, ${:.6} of it)",
                s.rejected, s.rejected_cost_usd
            ));
        }
        say!(
            "  {:<width$}  {:>16}  {:>16}  {:>16}{unknown}",
            node.name,
            format!("${:.6}", s.cost_usd),
            format!("${:.6}", s.reused_cost_usd),
            format!("${:.6}", s.regenerate_cost_usd)
        );
    }
    let spent: f64 = report.nodes.iter().map(|n| n.stats.cost_usd).sum();
    let reused: f64 = report.nodes.iter().map(|n| n.stats.reused_cost_usd).sum();
    let regenerate: f64 = report
        .nodes
        .iter()
        .map(|n| n.stats.regenerate_cost_usd)
        .sum();
    say!("  spent in this build:        {}", money(spent));
    say!(
        "  reused from the cache:      {} (what it cost when generated)",
        money(reused)
    );
    say!(
        "  regenerating everything:    {} (at today's prices)",
        money(regenerate)
    );
    if !report.cost_by_model.is_empty() {
        say!("  spent per model:");
        for (model, usd) in &report.cost_by_model {
            say!("    {model:<20} {}", money(*usd));
        }
        say!("  spent per language:");
        for (language, usd) in &report.cost_by_language {
            say!("    {language:<20} {}", money(*usd));
        }
    }
    if let Some(reason) = &report.stopped_by {
        say!("  stopped: {reason}");
    }
    Ok(())
}
