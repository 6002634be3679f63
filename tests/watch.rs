//! Watch mode (issue 6): `ticketbuild watch` on a temporary copy of the example project, edited the
//! way editors save (a temporary file renamed over the original), read line by line through a pipe.
//!
//! Every wait has a generous deadline (the machine may be loaded); "no rebuild" is asserted by
//! reading for a while well past the debounce window.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use crate::support::{Project, read_jsonl};

/// How long to wait for a line that should come.
const EXPECT: Duration = Duration::from_secs(30);
/// How long to listen for a rebuild that should not come: the debounce window (200 ms) and the
/// settling after it take about half a second; this leaves two seconds more.
const QUIET: Duration = Duration::from_millis(2500);

const ROWS: &str = "20";

enum Line {
    Out(String),
    Err(String),
}

/// A running `ticketbuild watch`, killed when dropped.
struct Watch {
    child: Child,
    lines: Receiver<Line>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

fn forward(
    reader: impl std::io::Read + Send + 'static,
    tx: Sender<Line>,
    wrap: fn(String) -> Line,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(wrap(line)).is_err() {
                break;
            }
        }
    });
}

impl Watch {
    /// Starts `watch --rows 20` (plus `extra`) and waits for its first build to end.
    fn start(project: &Project, extra: &[&str]) -> Watch {
        let mut watch = Watch::spawn(project, extra);
        watch.until("the end of the first build", |l| {
            l.starts_with("watch: built in ")
        });
        watch
    }

    /// Starts `watch --rows 20` (plus `extra`) and waits until it watches.
    fn spawn(project: &Project, extra: &[&str]) -> Watch {
        let mut args = vec!["watch", "--rows", ROWS];
        args.extend_from_slice(extra);
        let mut child = project
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ticketbuild watch");
        let (tx, lines) = channel();
        forward(child.stdout.take().unwrap(), tx.clone(), Line::Out);
        forward(child.stderr.take().unwrap(), tx, Line::Err);
        let mut watch = Watch {
            child,
            lines,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        watch.until("the watching line", |l| l.starts_with("watch: watching "));
        watch
    }

    /// Reads stdout until a line matches `done`; returns the lines read, that one included.
    fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + EXPECT;
        let mut lines = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Line::Out(line)) => {
                    self.stdout.push(line.clone());
                    lines.push(line);
                    if done(lines.last().unwrap()) {
                        return lines;
                    }
                }
                Ok(Line::Err(line)) => self.stderr.push(line),
                Err(_) => panic!("no {what} within {EXPECT:?}\n{}", self.transcript()),
            }
        }
    }

    /// Reads until the current rebuild ends; returns its lines.
    fn rebuild(&mut self) -> Vec<String> {
        self.until("end of a rebuild", |l| l.starts_with("watch: rebuilt in "))
    }

    /// The stdout lines printed during `duration`.
    fn listen(&mut self, duration: Duration) -> Vec<String> {
        let deadline = Instant::now() + duration;
        let mut lines = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Line::Out(line)) => {
                    self.stdout.push(line.clone());
                    lines.push(line);
                }
                Ok(Line::Err(line)) => self.stderr.push(line),
                Err(RecvTimeoutError::Timeout) => return lines,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("watch ended early\n{}", self.transcript())
                }
            }
        }
    }

    /// Asserts that nothing is rebuilt in the next few seconds.
    fn assert_no_rebuild(&mut self, after: &str) {
        let lines = self.listen(QUIET);
        assert!(
            !lines.iter().any(|l| l.starts_with("watch: rebuilding")),
            "{after} started a rebuild\n{}",
            self.transcript()
        );
    }

    /// Waits until stderr has a line containing `text`.
    fn stderr_contains(&mut self, text: &str) {
        let deadline = Instant::now() + EXPECT;
        while !self.stderr.iter().any(|l| l.contains(text)) {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Line::Out(line)) => self.stdout.push(line),
                Ok(Line::Err(line)) => self.stderr.push(line),
                Err(_) => panic!("no `{text}` on stderr\n{}", self.transcript()),
            }
        }
    }

    fn transcript(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Saves `contents` as an editor does: writes a temporary file beside the original, renames it over.
fn save(project: &Project, relative: &str, contents: &str) {
    let path = project.file(relative);
    let temporary = path.with_file_name(format!(
        ".{}.swp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, &path).unwrap();
}

/// Saves `relative` with `from` replaced by `to`.
fn save_edited(project: &Project, relative: &str, from: &str, to: &str) {
    let text = project.read(relative);
    assert!(text.contains(from), "`{from}` not found in {relative}");
    save(project, relative, &text.replacen(from, to, 1));
}

/// The `re-ran NODE: N generated` lines of a rebuild, as node -> generated.
fn reran(lines: &[String]) -> BTreeMap<String, u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("  re-ran "))
        .map(|rest| {
            let (node, counts) = rest.split_once(": ").unwrap();
            let generated = counts.split(' ').next().unwrap().parse().unwrap();
            (node.to_string(), generated)
        })
        .collect()
}

fn starts(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with("watch: rebuilding"))
        .collect()
}

const FIRST_RESPONSE: &str = "prompts/first_response.jinja";
const SIGN_OFF: &str = "sign with your name and team.";

#[test]
fn an_atomic_save_of_one_prompt_rebuilds_only_that_node() {
    let project = Project::example();
    let mut watch = Watch::start(&project, &[]);

    save_edited(
        &project,
        FIRST_RESPONSE,
        SIGN_OFF,
        "sign with your name and team. Keep it short.",
    );
    let lines = watch.rebuild();
    assert_eq!(
        starts(&lines),
        ["watch: rebuilding (prompts/first_response.jinja changed)"],
        "{}",
        watch.transcript()
    );
    assert_eq!(
        reran(&lines),
        BTreeMap::from([("first_response".to_string(), 20)]),
        "{}",
        watch.transcript()
    );
    assert!(
        lines.contains(&"  re-ran first_response: 20 generated, 0 reused: prompt changed (prompts/first_response.jinja)".to_string()),
        "the rebuild names its cause:\n{}",
        watch.transcript()
    );
    let end = lines.last().unwrap();
    assert!(
        end.contains(": 20 generated, ") && end.contains("$0.000000 (session $0.000000)"),
        "{end}"
    );
    assert_eq!(read_jsonl(&project.file("out/tickets.jsonl")).len(), 20);
    watch.assert_no_rebuild("a rebuild (its writes to out/ and cache/)");
}

#[test]
fn a_burst_of_three_edits_gives_one_rebuild() {
    let project = Project::example();
    let mut watch = Watch::start(&project, &[]);

    save_edited(
        &project,
        "prompts/subject.jinja",
        "Answer with the subject line only.",
        "Answer with the subject line only, in at most ten words.",
    );
    save_edited(
        &project,
        "prompts/tags.jinja",
        "for this ticket",
        "for this support ticket",
    );
    save_edited(
        &project,
        FIRST_RESPONSE,
        SIGN_OFF,
        "sign with your name and team. Be warm.",
    );
    let lines = watch.rebuild();
    assert_eq!(
        starts(&lines),
        [
            "watch: rebuilding (prompts/first_response.jinja, prompts/subject.jinja, prompts/tags.jinja changed)"
        ],
        "{}",
        watch.transcript()
    );
    let nodes = reran(&lines);
    for node in ["subject", "tags", "first_response"] {
        assert_eq!(nodes.get(node), Some(&20), "{}", watch.transcript());
    }
    watch.assert_no_rebuild("the end of the burst");
}

#[test]
fn a_broken_edit_keeps_the_outputs_and_the_watcher_and_a_fix_resumes() {
    let project = Project::example();
    let mut watch = Watch::start(&project, &[]);
    let before = project.snapshot("out");
    assert!(!before.is_empty());

    save_edited(
        &project,
        FIRST_RESPONSE,
        SIGN_OFF,
        "sign with {{ no_such_variable }}.",
    );
    let lines = watch.until("the problem report", |l| l.contains("in the input"));
    let report = lines.last().unwrap();
    assert!(
        report.starts_with("watch: prompts/first_response.jinja changed: 1 problem in the input")
            && report.contains("last good dataset stays"),
        "{report}"
    );
    watch.stderr_contains("unknown variable `no_such_variable`");
    assert!(
        watch
            .stderr
            .iter()
            .any(|l| l.starts_with("error: ") && l.contains("prompts/first_response.jinja:")),
        "{}",
        watch.transcript()
    );
    watch.assert_no_rebuild("a broken edit");
    assert!(project.snapshot("out") == before, "out/ changed");
    assert!(watch.child.try_wait().unwrap().is_none(), "watch exited");

    // A valid edit resumes: only the edited node is generated again.
    save_edited(
        &project,
        FIRST_RESPONSE,
        "sign with {{ no_such_variable }}.",
        "sign with your name, team and {{ queue }}.",
    );
    let lines = watch.rebuild();
    assert_eq!(
        starts(&lines),
        ["watch: rebuilding (prompts/first_response.jinja changed)"]
    );
    assert_eq!(
        reran(&lines),
        BTreeMap::from([("first_response".to_string(), 20)]),
        "{}",
        watch.transcript()
    );
}

#[test]
fn a_save_with_unchanged_content_does_not_rebuild() {
    let project = Project::example();
    let mut watch = Watch::start(&project, &[]);

    save(&project, FIRST_RESPONSE, &project.read(FIRST_RESPONSE));
    std::fs::write(
        project.file("dataset.toml"),
        project.read("dataset.toml").as_bytes(),
    )
    .unwrap();
    watch.assert_no_rebuild("saves that changed nothing");

    // The watcher was listening all along: a real edit still rebuilds.
    save_edited(
        &project,
        FIRST_RESPONSE,
        SIGN_OFF,
        "sign with your name and team. Keep it short.",
    );
    let lines = watch.rebuild();
    assert_eq!(starts(&lines).len(), 1, "{}", watch.transcript());
}

#[test]
fn an_edit_during_a_build_stops_it_and_the_next_build_reuses_what_landed() {
    let project = Project::example();
    // Slow calls and few tickets at a time: the first build takes seconds.
    project.edit(
        "dataset.toml",
        "provider = \"offline\"",
        "provider = \"offline\"\nlatency_ms = 50",
    );
    project.edit("dataset.toml", "concurrency = 64", "concurrency = 2");
    let mut watch = Watch::spawn(&project, &[]);
    watch.until("the start of the first build", |l| {
        l.starts_with("watch: building ")
    });

    save_edited(
        &project,
        FIRST_RESPONSE,
        SIGN_OFF,
        "sign with your name and team. Keep it short.",
    );
    let lines = watch.rebuild();
    let stopping = lines
        .iter()
        .position(|l| {
            l == "watch: prompts/first_response.jinja changed during the build; stopping it once the calls in flight have landed"
        })
        .unwrap_or_else(|| panic!("the build was not stopped\n{}", watch.transcript()));
    let stopped = lines
        .iter()
        .position(|l| l.starts_with("watch: build stopped after "))
        .unwrap_or_else(|| panic!("no stop summary\n{}", watch.transcript()));
    assert!(stopping < stopped, "{}", watch.transcript());
    assert!(
        lines[stopped].contains(" not started, "),
        "{}",
        watch.transcript()
    );
    assert_eq!(
        starts(&lines),
        ["watch: rebuilding (prompts/first_response.jinja changed)"],
        "{}",
        watch.transcript()
    );
    // The tickets that were in flight landed in the cache and are reused.
    let end = lines.last().unwrap();
    let reused: u64 = end
        .split(" generated, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reused count in `{end}`"));
    assert!(reused > 0, "{}", watch.transcript());
    assert_eq!(read_jsonl(&project.file("out/tickets.jsonl")).len(), 20);
}

#[test]
fn files_that_are_not_inputs_do_not_rebuild() {
    let project = Project::example();
    let mut watch = Watch::start(&project, &[]);

    project.write("notes.md", "not an input\n");
    project.write("prompts/README.md", "not a prompt of any node\n");
    project.write("out/tickets.jsonl", "{}\n");
    watch.assert_no_rebuild("files outside the inputs");
}

#[test]
fn preview_prints_the_changed_fields() {
    let project = Project::example();
    let mut watch = Watch::start(&project, &["--preview", "2"]);

    save_edited(&project, "dataset.toml", "seed = 42", "seed = 43");
    let lines = watch.rebuild();
    assert_eq!(
        starts(&lines),
        ["watch: rebuilding (dataset.toml changed)"],
        "{}",
        watch.transcript()
    );
    let tickets = lines
        .iter()
        .filter(|l| l.starts_with("  preview: ticket "))
        .count();
    assert_eq!(tickets, 2, "{}", watch.transcript());
    assert!(
        lines.iter().any(|l| l.starts_with("    ticket_id - "))
            && lines.iter().any(|l| l.starts_with("    ticket_id + ")),
        "{}",
        watch.transcript()
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_session_cleanly() {
    let project = Project::example();
    let mut watch = Watch::start(&project, &[]);

    let status = std::process::Command::new("kill")
        .args(["-INT", &watch.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    watch.until("the stop line", |l| l == "watch: stopped");
    let deadline = Instant::now() + EXPECT;
    let code = loop {
        if let Some(status) = watch.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "watch did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "{}", watch.transcript());
}

/// mimalloc asks the kernel for transparent huge pages, which padded a build's resident memory by
/// 30-50 MB of mostly unused 2 MiB pages; the binary turns them off for its process first thing
/// (`src/main.rs`). A long-running ticketbuild shows it.
#[cfg(target_os = "linux")]
#[test]
fn a_running_ticketbuild_has_transparent_huge_pages_off() {
    let project = Project::example();
    let watch = Watch::spawn(&project, &[]);

    let status = std::fs::read_to_string(format!("/proc/{}/status", watch.child.id()))
        .expect("read the process's status");
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line (Linux 5.0 and later show one)\n{status}"));
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}
