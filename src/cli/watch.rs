//! `ticketbuild watch`: rebuild on every edit of dataset.toml or a prompt, paying only for what the
//! edit changed.
//!
//! This command owns the watch session: reacting to a settled batch of file events, superseding a
//! running build when a newer edit arrives, the session's running cost, and the lines it prints.
//! Which files are watched and whether their content changed is [`crate::watch`]'s; one build
//! (no-op check, engine, manifest) is [`build_project`]; replacing output files atomically is
//! `output`'s.
//!
//! The invariant: a build starts only from a project that loaded without problems and only when the
//! watched files' contents differ from those last acted on. So a save that changes nothing never
//! rebuilds, a broken edit never replaces the last good dataset, and writes to the output folder or
//! the cache never trigger a rebuild. At most one build runs at a time: a newer valid edit sets the
//! running build's cancel flag and awaits its end (calls in flight finish and land in the cache,
//! they are paid for) before the next build starts, which then reuses from the cache everything
//! still wanted.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::{JoinError, JoinHandle};

use super::args::WatchArgs;
use super::build::Terminal;
use super::{CliError, Outcome, runtime, runtime_error};
use crate::build::build_project;
use crate::cache::Cache;
use crate::config::{Config, Format};
use crate::diag::Diagnostics;
use crate::engine::{BuildError, BuildOptions, BuildReport};
use crate::graph::Graph;
use crate::manifest::{self, Manifest};
use crate::watch::{Change, WatchedFiles, Watcher, file_watcher};

/// One row of the JSONL output, for `--preview`.
type Row = serde_json::Map<String, serde_json::Value>;

/// Characters of a field value shown by `--preview` before it is cut.
const PREVIEW_WIDTH: usize = 100;

/// What a build task hands back.
type BuildResult = Result<Result<BuildReport, BuildError>, JoinError>;

/// Runs `ticketbuild watch` until Ctrl-C.
pub(super) fn run(args: WatchArgs) -> Result<Outcome, CliError> {
    runtime()?.block_on(watch(args))
}

/// A build in progress.
struct Running {
    handle: JoinHandle<Result<BuildReport, BuildError>>,
    cancel: Arc<AtomicBool>,
    started: Instant,
    /// The first build of the session (printed as "built" rather than "rebuilt").
    first: bool,
    /// For `--preview`: the JSONL file and its first rows before this build.
    preview: Option<(PathBuf, Vec<Row>)>,
    /// What the rebuild is compared with to say why each node re-ran.
    why: Why,
}

/// The facts needed to name why nodes re-ran: the last manifest before this build and this
/// build's node fingerprints.
struct Why {
    previous: Option<Manifest>,
    current: Vec<manifest::NodeFingerprint>,
    seed: u64,
    sample_hash: String,
    upstream: Vec<Vec<usize>>,
}

async fn watch(args: WatchArgs) -> Result<Outcome, CliError> {
    // Edits closer together than `debounce` make one rebuild. The debouncer settles each path for
    // half of it; `settle` then joins batches that follow each other within `debounce` (plus one
    // debouncer tick), because the debouncer times each path on its own and may split a burst that
    // touches several files.
    let debounce = Duration::from_millis(args.debounce_ms.max(10));
    let per_path = debounce / 2;
    let tick = per_path / 4;
    let settle = debounce + tick;

    let (events_tx, mut events) = unbounded_channel();
    let watcher = file_watcher(per_path, tick, events_tx)
        .map_err(|e| runtime_error(anyhow::anyhow!("cannot start the file watcher: {e}")))?;
    let (ctrl_c_tx, mut ctrl_c) = unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if ctrl_c_tx.send(()).is_err() {
                break;
            }
        }
    });

    let mut session = Session::new(args, watcher)?;
    let mut running = session.first_build();
    loop {
        tokio::select! {
            Some(()) = ctrl_c.recv() => return Ok(session.stop(running, &mut ctrl_c).await),
            change = events.recv() => {
                let Some(mut change) = change else {
                    return Err(runtime_error(anyhow::anyhow!("the file watcher stopped")));
                };
                while let Ok(Some(more)) = tokio::time::timeout(settle, events.recv()).await {
                    change.merge(more);
                }
                session.on_change(change, &mut running).await;
            }
            result = finished(&mut running) => {
                if let Some(build) = running.take() {
                    session.report(build, result);
                }
            }
        }
    }
}

/// The result of the build in `running`; never resolves when there is none.
async fn finished(running: &mut Option<Running>) -> BuildResult {
    match running {
        Some(build) => (&mut build.handle).await,
        None => std::future::pending().await,
    }
}

/// Writes one line to stdout and flushes it, so a reader on a pipe sees it at once. A closed
/// stdout is not a reason to stop rebuilding.
fn tell(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn print_problems(problems: &Diagnostics) {
    for problem in &problems.0 {
        eprintln!("error: {problem}");
    }
}

fn print_error(error: &anyhow::Error) {
    eprintln!("ticketbuild: error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("caused by: {cause}");
    }
}

fn dollars(usd: f64) -> String {
    format!("${usd:.6}")
}

/// The watch session's state between events.
struct Session {
    args: WatchArgs,
    files: WatchedFiles,
    /// The cache, open for the whole session (sled locks its folder), with its absolute folder.
    store: Option<(PathBuf, Arc<dyn Cache>)>,
    /// Spent by every build of the session, in USD.
    session_usd: f64,
    preview_refused: bool,
}

impl Session {
    fn new(args: WatchArgs, watcher: Watcher) -> Result<Session, CliError> {
        let config_path = std::path::absolute(&args.project.config).map_err(|e| {
            runtime_error(anyhow::anyhow!(
                "cannot resolve `{}`: {e}",
                args.project.config.display()
            ))
        })?;
        // Learn the prompt files before arming and hashing, so an edit made while the first build
        // loads the project is seen. Problems are reported by the first build's load.
        let config = args.project.config().ok();
        let files = WatchedFiles::new(watcher, config_path, config.as_ref());
        let mut session = Session {
            args,
            files,
            store: None,
            session_usd: 0.0,
            preview_refused: false,
        };
        session.warn();
        tell(format_args!(
            "watch: watching {} files; Ctrl-C to stop",
            session.files.existing()
        ));
        Ok(session)
    }

    /// Shows the problems met arming the file watcher.
    fn warn(&mut self) {
        for warning in self.files.take_warnings() {
            eprintln!("watch: warning: {warning}");
        }
    }

    /// Reads and checks the project, and watches the files it now names.
    fn load(&mut self) -> Result<(Config, Graph), Diagnostics> {
        let config = self.args.project.config()?;
        self.files.track(&config);
        self.warn();
        let graph = Graph::load(&config)?;
        Ok((config, graph))
    }

    /// The first build of the session, or `None` when the project does not load.
    fn first_build(&mut self) -> Option<Running> {
        match self.load() {
            Ok((config, graph)) => {
                tell(format_args!(
                    "watch: building `{}` ({} tickets)",
                    config.name, config.rows
                ));
                self.start(config, graph, true)
            }
            Err(problems) => {
                print_problems(&problems);
                tell(format_args!(
                    "watch: {} in the input; nothing built; fix it and save to build",
                    count(problems.len() as u64, "problem")
                ));
                None
            }
        }
    }

    /// Handles one settled batch of events: re-arms, re-hashes, and rebuilds when the content of a
    /// watched file changed and the project loads.
    async fn on_change(&mut self, change: Change, running: &mut Option<Running>) {
        for error in &change.errors {
            eprintln!("watch: warning: the file watcher reported: {error}");
        }
        let changed = self.files.changed(change);
        self.warn();
        if changed.is_empty() {
            return;
        }
        let why = self.files.describe(&changed);
        match self.load() {
            Err(problems) => {
                print_problems(&problems);
                let keep = if running.is_some() {
                    "the build in progress goes on and the last good dataset stays"
                } else {
                    "the last good dataset stays"
                };
                tell(format_args!(
                    "watch: {why} changed: {} in the input; not rebuilding; {keep}; fix it and save to rebuild",
                    count(problems.len() as u64, "problem")
                ));
            }
            Ok((config, graph)) => {
                if let Some(mut build) = running.take() {
                    tell(format_args!(
                        "watch: {why} changed during the build; stopping it once the calls in flight have landed"
                    ));
                    build.cancel.store(true, Ordering::Release);
                    let result = (&mut build.handle).await;
                    self.report(build, result);
                }
                tell(format_args!("watch: rebuilding ({why} changed)"));
                *running = self.start(config, graph, false);
            }
        }
    }

    /// Starts a build of `config`; `None` (with the error printed) when the cache cannot be opened.
    fn start(&mut self, config: Config, mut graph: Graph, first: bool) -> Option<Running> {
        // Tuning a prompt wants its answers now: watch asks batch models one request at a time
        // (a cached answer serves both ways; `build` uses their batches).
        if first && graph.nodes.iter().any(|n| n.model.batch) {
            tell(
                "watch: models with `batch = true` are asked one request at a time here; `ticketbuild build` uses their batches",
            );
        }
        for node in &mut graph.nodes {
            node.model.batch = false;
        }
        let store = match self.store_for(&config) {
            Ok(store) => store,
            Err(error) => {
                print_error(&error);
                tell("watch: cannot open the cache; not building; fix it and save to retry");
                return None;
            }
        };
        let preview = self.preview_before(&config);
        let why = Why {
            // No manifest to compare with only means causes read "new".
            previous: Manifest::last(store.as_ref())
                .ok()
                .flatten()
                .map(|(_, m)| m),
            current: manifest::fingerprints(&graph),
            seed: config.seed,
            sample_hash: manifest::sample_hash(&config),
            upstream: graph.nodes.iter().map(|n| n.upstream.clone()).collect(),
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let options = BuildOptions {
            durable: true,
            // An edit that stops a build must not replace the last good dataset with part of one.
            write_when_cancelled: false,
            force: Vec::new(),
            observer: Arc::new(Terminal::new(false, false)),
            shard: None,
            batch: false,
        };
        let handle = tokio::spawn(build_project(
            config,
            graph,
            store,
            options,
            Some(Arc::clone(&cancel)),
        ));
        Some(Running {
            handle,
            cancel,
            started: Instant::now(),
            first,
            preview,
            why,
        })
    }

    /// The session's cache; reopened only when an edit moved the cache folder.
    fn store_for(&mut self, config: &Config) -> anyhow::Result<Arc<dyn Cache>> {
        let dir = std::path::absolute(&config.cache_dir)?;
        if let Some((open, store)) = &self.store {
            if *open == dir {
                return Ok(Arc::clone(store));
            }
        }
        // Close the old cache first: no build is running, so this was its last handle.
        self.store = None;
        let store = crate::cache::open(&config.cache_dir)?;
        self.store = Some((dir, Arc::clone(&store)));
        Ok(store)
    }

    /// For `--preview`: the JSONL file and its first rows as they are before the build.
    fn preview_before(&mut self, config: &Config) -> Option<(PathBuf, Vec<Row>)> {
        let n = self.args.preview?;
        if !config.formats.contains(&Format::Jsonl) {
            if !self.preview_refused {
                tell(
                    "watch: --preview reads the JSONL output; add \"jsonl\" to `dataset.formats` to see it",
                );
                self.preview_refused = true;
            }
            return None;
        }
        let path = config.output_dir.join(format!("{}.jsonl", config.name));
        let rows = first_rows(&path, n);
        Some((path, rows))
    }

    /// Prints how a build ended: the nodes that re-ran, the preview, then one closing line.
    fn report(&mut self, build: Running, result: BuildResult) {
        let seconds = build.started.elapsed().as_secs_f64();
        let report = match result {
            Ok(Ok(report)) => report,
            Ok(Err(error)) => {
                print_error(&anyhow::Error::new(error));
                tell(format_args!(
                    "watch: build failed after {seconds:.2} s; the last good dataset stays; watching for changes"
                ));
                return;
            }
            Err(error) => {
                eprintln!("ticketbuild: error: the build task stopped: {error}");
                tell(format_args!(
                    "watch: build failed after {seconds:.2} s; watching for changes"
                ));
                return;
            }
        };
        let cost: f64 = report.nodes.iter().map(|n| n.stats.cost_usd).sum();
        self.session_usd += cost;
        let reran: Vec<bool> = report.nodes.iter().map(|n| n.stats.generated > 0).collect();
        let why = &build.why;
        let causes = if reran.len() == why.current.len() {
            crate::status::node_causes(
                why.previous.as_ref(),
                &why.current,
                why.seed,
                &why.sample_hash,
                &why.upstream,
                &reran,
            )
        } else {
            vec![None; reran.len()]
        };
        for (node, cause) in report.nodes.iter().zip(causes) {
            let s = &node.stats;
            if s.generated > 0 || s.failed > 0 {
                let failed = if s.failed > 0 {
                    format!(", {} failed", s.failed)
                } else {
                    String::new()
                };
                let because = cause.map_or_else(String::new, |c| format!(": {}", c.describe()));
                tell(format_args!(
                    "  re-ran {}: {} generated, {} reused{failed}{because}",
                    node.name, s.generated, s.reused
                ));
            }
        }
        if let Some(failures) = &report.failures_file {
            tell(format_args!(
                "  {} failed; see {failures} (the next build retries only those)",
                count(report.failed, "ticket")
            ));
        }
        if let (Some((path, before)), false) = (&build.preview, report.interrupted) {
            let after = first_rows(path, self.args.preview.unwrap_or(0));
            print_preview(before, &after);
        }
        let money = format!("{} (session {})", dollars(cost), dollars(self.session_usd));
        if report.interrupted {
            tell(format_args!(
                "watch: build stopped after {seconds:.2} s: {} generated (kept in the cache), {} reused, {} not started, {money}",
                report.generated(),
                report.reused(),
                count(report.not_started, "ticket"),
            ));
            return;
        }
        let verb = if build.first { "built" } else { "rebuilt" };
        let note = if report.up_to_date {
            "; up to date, nothing to generate"
        } else {
            ""
        };
        tell(format_args!(
            "watch: {verb} in {seconds:.2} s: {} generated, {} reused, {money}{note}",
            report.generated(),
            report.reused(),
        ));
    }

    /// Ctrl-C: lets a running build finish its calls in flight, then ends the session. A second
    /// Ctrl-C ends it without waiting.
    async fn stop(
        &mut self,
        running: Option<Running>,
        ctrl_c: &mut UnboundedReceiver<()>,
    ) -> Outcome {
        let Some(mut build) = running else {
            tell("watch: stopped");
            return Outcome::Success;
        };
        tell(
            "watch: Ctrl-C: finishing the calls in flight (they are paid for), then stopping; Ctrl-C again to stop at once",
        );
        build.cancel.store(true, Ordering::Release);
        tokio::select! {
            result = &mut build.handle => {
                let interrupted = !matches!(&result, Ok(Ok(report)) if !report.interrupted);
                self.report(build, result);
                tell("watch: stopped");
                if interrupted { Outcome::Interrupted } else { Outcome::Success }
            }
            _ = ctrl_c.recv() => {
                tell("watch: stopped without waiting for the calls in flight");
                Outcome::Interrupted
            }
        }
    }
}

/// `1 problem`, `3 problems`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The first `n` rows of a JSONL file; fewer (or none) when it is shorter, missing or unreadable.
fn first_rows(path: &Path, n: usize) -> Vec<Row> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .take(n)
        .map_while(Result::ok)
        .filter_map(|line| match serde_json::from_str(&line) {
            Ok(serde_json::Value::Object(row)) => Some(row),
            _ => None,
        })
        .collect()
}

/// Prints, per ticket, the fields that differ between `before` and `after` (row by row).
fn print_preview(before: &[Row], after: &[Row]) {
    let mut any = false;
    for (index, row) in after.iter().enumerate() {
        let old = before.get(index);
        let changed: Vec<(&String, &serde_json::Value)> = row
            .iter()
            .filter(|(field, value)| old.and_then(|o| o.get(*field)) != Some(*value))
            .collect();
        if changed.is_empty() {
            continue;
        }
        any = true;
        let id = row.get("ticket_id").map_or_else(
            || format!("#{}", index + 1),
            |id| match id {
                serde_json::Value::String(id) => id.clone(),
                other => other.to_string(),
            },
        );
        tell(format_args!("  preview: ticket {id}"));
        for (field, value) in changed {
            if let Some(previous) = old.and_then(|o| o.get(field)) {
                tell(format_args!("    {field} - {}", cut(&shown(previous))));
            }
            tell(format_args!("    {field} + {}", cut(&shown(value))));
        }
    }
    if !any {
        tell(format_args!(
            "  preview: no field changed in the first {}",
            count(after.len() as u64, "ticket")
        ));
    }
}

/// A value on one line: strings as JSON strings (quoted, newlines escaped), the rest as JSON.
fn shown(value: &serde_json::Value) -> String {
    value.to_string()
}

fn cut(text: &str) -> String {
    if text.chars().count() <= PREVIEW_WIDTH {
        return text.to_string();
    }
    let mut short: String = text.chars().take(PREVIEW_WIDTH).collect();
    short.push('…');
    short
}
