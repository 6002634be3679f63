//! `ticketbuild build`: build the dataset, show progress, print the summary.
//!
//! This command owns the build's terminal: the progress bar and the lines printed as the build
//! goes (a [`BuildObserver`]), Ctrl-C, and the summary. The build itself is
//! [`crate::build::build_project`].

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::args::BuildArgs;
use super::{
    CliError, Outcome, check_forced, load, name_width, open_cache, runtime, runtime_error, say,
};
use crate::build::build_project;
use crate::engine::{BuildObserver, BuildOptions, BuildReport, ExpensiveCall};
use crate::key::ArtifactKey;

pub(super) fn run(args: BuildArgs) -> Result<Outcome, CliError> {
    if args.dry_run {
        return super::plan::run(&args.project, args.json, false);
    }
    let (mut config, graph) = load(&args.project)?;
    config.cost.allow_unpriced |= args.allow_unpriced;
    if let Some(shard) = args.shard {
        let shards = args
            .shard_dir
            .clone()
            .unwrap_or_else(|| config.output_dir.join(crate::shard::SHARDS_DIR));
        config.output_dir = shards.join(shard.folder_name());
    }
    check_forced(&config, &graph, &args.force)?;
    check_force_without_batches(&config, &graph, &args)?;
    // Forced nodes run whatever the last build recorded.
    if args.force.is_empty() {
        if let Some(report) = crate::build::up_to_date(&config, &graph) {
            print_report(&report, args.json)?;
            return Ok(Outcome::Success);
        }
    }
    let cache = open_cache(&config)?;
    let progress = !args.no_progress && !args.json && std::io::stderr().is_terminal();
    let options = BuildOptions {
        durable: !args.no_durable,
        write_when_cancelled: true,
        force: args.force.clone(),
        observer: Arc::new(Terminal::new(progress, args.verbose >= 2)),
        shard: args.shard,
        batch: args.batch,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let report = runtime()?.block_on(async {
        let flag = Arc::clone(&cancel);
        let batch_config = config.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "ticketbuild: interrupted; finishing the calls in flight (they are paid for), then writing what is complete"
                );
                tell_live_batches(&batch_config);
                flag.store(true, Ordering::Release);
            }
        });
        if !args.wait {
            return build_project(config, graph, cache, options, Some(cancel)).await;
        }
        let secrets = crate::provider::Secrets::load(&config.root)?;
        let every = Duration::try_from_secs_f64(args.poll_secs.clamp(0.05, 3600.0))
            .unwrap_or(Duration::from_secs(30));
        loop {
            let report = build_project(
                config.clone(),
                graph.clone(),
                Arc::clone(&cache),
                options.clone(),
                Some(Arc::clone(&cancel)),
            )
            .await?;
            if report.awaiting_batch == 0 || cancel.load(Ordering::Acquire) {
                return Ok(report);
            }
            if let Some(batches) = &report.batches {
                say_batches(&report, batches, true);
            }
            let bar = waiting_bar(progress);
            let ended = crate::engine::batch::wait_for_one(
                &config,
                &graph,
                &secrets,
                every,
                &cancel,
                &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )
            .await?;
            bar.finish_and_clear();
            if !ended {
                return Ok(report);
            }
        }
    });
    let report = report.map_err(runtime_error)?;
    // The dataset is written: a reader of the summary that has gone away changes nothing.
    super::unless_closed(print_report(&report, args.json))?;
    if args.verbose >= 1 && report.failed > 0 {
        if let Some(text) = report
            .failures_file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
        {
            eprint!("{text}");
        }
    }
    if report.awaiting_batch > 0 {
        if let Some(batches) = &report.batches {
            if !args.json {
                say_batches(&report, batches, false);
            }
        }
    }
    Ok(if report.interrupted {
        Outcome::Interrupted
    } else if report.awaiting_batch > 0 {
        Outcome::Submitted
    } else if report.failed > 0 {
        Outcome::Incomplete
    } else {
        Outcome::Success
    })
}

/// `--force` on a node whose model asks through batches is refused: a forced answer asked for in
/// a batch would be forced again in every pass, and the old answer found by the pass that
/// collects it.
fn check_force_without_batches(
    config: &crate::config::Config,
    graph: &crate::graph::Graph,
    args: &BuildArgs,
) -> Result<(), CliError> {
    let batched = |name: &&String| {
        graph.node(name).is_some_and(|n| {
            n.model.batch || (args.batch && n.model.provider.no_batch_api().is_none())
        })
    };
    match args.force.iter().find(batched) {
        Some(node) => Err(crate::diag::Diagnostic::file(
            &config.path,
            format!(
                "`--force {node}`: its model asks through batches, and a forced answer cannot be collected from one; force it without batch mode (drop `--batch`, or `batch = true` from its model, for this build)"
            ),
        )
        .into()),
        None => Ok(()),
    }
}

/// What a pass of a build in batch mode submitted and what it waits for, on stderr.
fn say_batches(report: &BuildReport, batches: &crate::engine::batch::BatchSummary, waiting: bool) {
    let mut line = format!(
        "ticketbuild: {} requests in {} batches submitted; {} tickets wait for {} requests in {} live batches",
        batches.submitted_requests,
        batches.submitted_batches,
        report.awaiting_batch,
        batches.live_requests,
        batches.live_batches
    );
    if batches.collected_batches > 0 {
        line.push_str(&format!(
            " ({} batches collected)",
            batches.collected_batches
        ));
    }
    if waiting {
        line.push_str("; waiting for them");
    } else {
        line.push_str("; run `ticketbuild build` again to collect (or `ticketbuild build --wait`)");
    }
    eprintln!("{line}");
}

/// After Ctrl-C: batches keep running at their providers, and are billed; never silent.
fn tell_live_batches(config: &crate::config::Config) {
    if let Ok((batches, requests)) = crate::engine::batch::live(config) {
        if batches > 0 {
            eprintln!(
                "ticketbuild: {batches} batches ({requests} requests) are still running at the providers and will be billed; `ticketbuild build` collects them later, `ticketbuild batches cancel --all` cancels them"
            );
        }
    }
}

/// The bar shown while `--wait` waits for batches.
fn waiting_bar(progress: bool) -> indicatif::ProgressBar {
    let bar = if progress {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} batch requests answered",
    ) {
        bar.set_style(style);
    }
    bar
}

/// What a build shows on stderr as it goes: a progress bar (when stderr is a terminal), one line
/// per generated artifact with `-vv`, and calls over the per-call cost limits.
pub(super) struct Terminal {
    bar: indicatif::ProgressBar,
    log_artifacts: bool,
}

impl Terminal {
    pub(super) fn new(progress: bool, log_artifacts: bool) -> Terminal {
        let bar = if progress {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} tickets ({per_sec}, eta {eta}) {msg}",
        ) {
            bar.set_style(style);
        }
        Terminal { bar, log_artifacts }
    }
}

impl BuildObserver for Terminal {
    fn started(&self, tickets: u64) {
        self.bar.set_length(tickets);
    }

    fn generated(&self, node: &str, ticket_id: u64, key: &ArtifactKey) {
        if self.log_artifacts {
            self.bar
                .suspend(|| eprintln!("generated {node} {ticket_id} {}", key.to_hex()));
        }
    }

    fn reports_generated(&self) -> bool {
        self.log_artifacts
    }

    fn ticket_done(&self) {
        self.bar.inc(1);
    }

    fn notice(&self, text: &str) {
        self.bar.suspend(|| eprintln!("ticketbuild: note: {text}"));
    }

    fn in_flight(&self, running: usize, oldest: Option<(u64, Duration)>) {
        self.bar.set_message(in_flight_message(running, oldest));
    }

    fn expensive_call(&self, call: &ExpensiveCall) {
        let (level, limit, then) = if call.stops_the_build {
            ("error", "error_per_call", "; no further calls are issued")
        } else {
            ("warning", "warn_per_call", "")
        };
        self.bar.suspend(|| {
            eprintln!(
                "ticketbuild: {level}: node `{}`, ticket {}: a call cost ${:.6}, over {limit} (${:.6}){then}",
                call.node, call.ticket_id, call.cost, call.limit
            )
        });
    }

    fn finished(&self) {
        self.bar.finish_and_clear();
    }
}

/// How long a ticket runs before progress names it: longer than most replies take, shorter
/// than a user waits before wondering whether the build is stuck.
const LONG_RUNNING: Duration = Duration::from_secs(10);

/// What progress says of the tickets in flight: how many, and the oldest when it has been
/// running long (a stuck call shows as one ticket waiting, not as a frozen bar).
fn in_flight_message(running: usize, oldest: Option<(u64, Duration)>) -> String {
    match oldest {
        Some((ticket_id, age)) if age >= LONG_RUNNING => format!(
            "{running} in flight; oldest: ticket {ticket_id}, {}s",
            age.as_secs()
        ),
        _ => format!("{running} in flight"),
    }
}

/// The build's report as JSON (`--json`) or as the human summary.
pub(super) fn print_report(report: &BuildReport, json: bool) -> Result<(), CliError> {
    if json {
        super::out::json(report)
    } else {
        print_summary(report)
    }
}

/// The human summary of a build.
fn print_summary(report: &BuildReport) -> Result<(), CliError> {
    let profile = report
        .profile
        .as_deref()
        .map_or_else(String::new, |p| format!(" (profile {p})"));
    if report.up_to_date {
        say!(
            "`{}`{profile} is up to date: {} tickets, nothing changed since the last build ({} ms)",
            report.dataset,
            report.written,
            report.wall_ms
        );
        for file in &report.files {
            say!("  {file}");
        }
        return print_remote(report);
    }
    if report.awaiting_batch > 0 {
        // A pass of batch mode: nothing is written until every answer is in.
        say!(
            "`{}`{profile}: {} of {} tickets wait for answers in provider batches; no file written yet ({:.2} s)",
            report.dataset,
            report.awaiting_batch,
            report.tickets,
            report.wall_ms as f64 / 1000.0
        );
        if let Some(reason) = &report.stopped_by {
            say!("  stopped early: {reason}; what was asked for before is in the batches");
        }
        return print_remote(report);
    }
    say!(
        "built `{}`{profile}: {} of {} tickets written in {:.2} s",
        report.dataset,
        report.written,
        report.tickets,
        report.wall_ms as f64 / 1000.0
    );
    let width = name_width(report.nodes.iter().map(|n| n.name.as_str()));
    say!(
        "  {:<width$}  {:>9}  {:>9}  {:>8}  {:>7}  {:>10}  {:>10}",
        "node",
        "reused",
        "generated",
        "skipped",
        "failed",
        "tokens in",
        "tokens out"
    );
    for node in &report.nodes {
        let (name, s) = (&node.name, &node.stats);
        say!(
            "  {:<width$}  {:>9}  {:>9}  {:>8}  {:>7}  {:>10}  {:>10}",
            name,
            s.reused,
            s.generated,
            s.skipped,
            s.failed,
            s.input_tokens,
            s.output_tokens
        );
    }
    say!(
        "  {} artifacts generated, {} reused from the cache",
        report.generated(),
        report.reused()
    );
    print_quality(report)?;
    print_traffic(report)?;
    print_remote(report)?;
    for file in &report.files {
        say!("  wrote {file}");
    }
    let spent: f64 = report.nodes.iter().map(|n| n.stats.cost_usd).sum();
    let reused: f64 = report.nodes.iter().map(|n| n.stats.reused_cost_usd).sum();
    let currencies: Vec<String> = report.currencies.iter().map(|(c, _)| c.clone()).collect();
    let rates: std::collections::BTreeMap<String, f64> =
        report.currencies.iter().cloned().collect();
    say!(
        "  cost: {} spent now, {} reused from the cache",
        crate::cost::format_money(Some(spent), &currencies, &rates),
        crate::cost::format_money(Some(reused), &currencies, &rates)
    );
    if let Some(batches) = &report.batches {
        say!(
            "  batches: {} at batch prices over every batch of this cache (`ticketbuild batches` lists them)",
            crate::cost::format_money(Some(batches.ledger_cost_usd), &currencies, &rates)
        );
    }
    if let Some(reason) = &report.stopped_by {
        say!(
            "  stopped early: {reason}; {} of {} tickets complete; build again (with a higher limit) to continue from the cache",
            report.written,
            report.tickets
        );
    }
    if let Some(failures) = &report.failures_file {
        say!(
            "  {} tickets failed; see {failures} (the next build retries only those)",
            report.failed
        );
    }
    if report.interrupted {
        say!(
            "  interrupted: {} tickets not started; build again to continue from the cache",
            report.not_started
        );
    }
    Ok(())
}

/// What the shared remote cache did: lookups it answered, uploads, and what is owed to it.
fn print_remote(report: &BuildReport) -> Result<(), CliError> {
    let Some(remote) = &report.remote else {
        return Ok(());
    };
    let c = &remote.counts;
    let access = match &remote.access_reason {
        Some(reason) => format!("{} ({reason})", remote.access),
        None => remote.access.clone(),
    };
    say!("  remote cache {}: {access}", remote.url);
    say!(
        "    lookups: {} hits, {} misses, {} corrupt objects ignored, {} failed",
        c.hits,
        c.misses,
        c.corrupt,
        c.errors
    );
    say!(
        "    uploads: {} uploaded, {} already there{}{}",
        c.uploaded,
        c.already_present,
        if remote.from_earlier > 0 {
            format!(", {} owed by earlier builds", remote.from_earlier)
        } else {
            String::new()
        },
        if remote.deferred > 0 {
            format!(
                "; {} not uploaded (kept in the local cache; the next build uploads them)",
                remote.deferred
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Per model that sent requests: attempts, 429s, other retries, and how long rate limits held
/// it, with the limits the server reported (so a user sees when their tier is the bottleneck).
fn print_traffic(report: &BuildReport) -> Result<(), CliError> {
    for m in report.models.iter().filter(|m| m.traffic.attempts > 0) {
        let t = &m.traffic;
        let reported: Vec<String> = [
            t.reported_requests_per_minute
                .map(|n| format!("{n} requests")),
            t.reported_tokens_per_minute.map(|n| format!("{n} tokens")),
        ]
        .into_iter()
        .flatten()
        .collect();
        let reported = if reported.is_empty() {
            String::new()
        } else {
            format!(" (the server allows {} a minute)", reported.join(" and "))
        };
        say!(
            "  model {}: {} requests, {} answered 429, {} other retries; {:.1} s waiting for rate limits{reported}",
            m.model,
            t.attempts,
            t.throttled,
            t.other_retries,
            t.rate_limit_wait_ms as f64 / 1000.0
        );
    }
    Ok(())
}

/// What the checks and duplicate resolution did: rejected draws per node with their commonest
/// reasons, the language of the answers used, and duplicates.
fn print_quality(report: &BuildReport) -> Result<(), CliError> {
    for node in report.nodes.iter().filter(|n| n.stats.rejected > 0) {
        let mut reasons: Vec<(&String, &u64)> = node.stats.rejections.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reasons: Vec<String> = reasons
            .iter()
            .take(3)
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        say!(
            "  {}: {} draws rejected by its checks ({}); ${:.6} of them paid in this build",
            node.name,
            node.stats.rejected,
            reasons.join(", "),
            node.stats.rejected_cost_usd
        );
    }
    for node in report.nodes.iter() {
        let s = &node.stats;
        let wrong = s.rejections.get("language").copied().unwrap_or(0);
        let judged = s.language_checked + wrong;
        if judged == 0 {
            continue;
        }
        say!(
            "  {}: language right in {:.1}% of the answers judged ({} of {}; {} drawn again; {} too short or mixed to tell)",
            node.name,
            100.0 * s.language_checked as f64 / judged as f64,
            s.language_checked,
            judged,
            wrong,
            s.language_unsure
        );
    }
    if let Some(d) = &report.duplicates {
        say!(
            "  duplicates in {}: {} exact and {} near resolved by {} redraws{}; {} exact dropped, {} near remaining",
            d.columns.join(", "),
            d.exact_resolved,
            d.near_resolved,
            d.redraws,
            d.redraw_from
                .as_ref()
                .map_or_else(String::new, |n| format!(" from `{n}`")),
            d.exact_dropped,
            d.near_remaining
        );
        for pair in &d.examples {
            say!(
                "    ticket {} is {:.0}% like ticket {} in `{}`",
                pair.ticket_id,
                pair.similarity * 100.0,
                pair.of_ticket_id,
                pair.column
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_names_the_oldest_ticket_only_when_it_runs_long() {
        assert_eq!(in_flight_message(0, None), "0 in flight");
        let young = Some((123_456_789_012, Duration::from_secs(3)));
        assert_eq!(in_flight_message(100, young), "100 in flight");
        let stuck = Some((123_456_789_012, Duration::from_millis(42_700)));
        assert_eq!(
            in_flight_message(100, stuck),
            "100 in flight; oldest: ticket 123456789012, 42s"
        );
    }
}
