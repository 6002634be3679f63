//! Output into a pipe whose reader has gone (`ticketbuild status | head -1`): not an error.
//!
//! The reader's end of stdout is closed before the command writes its first line, so every write
//! meets a closed pipe (EPIPE). A command must then stop quietly with exit code 0, never panic.

use std::process::{Command, Stdio};

use crate::support::{Project, Run};

fn project() -> Project {
    let project = Project::example();
    project.edit("dataset.toml", "rows = 200", "rows = 20");
    project.build_json(&[]);
    project
}

/// Runs `command` with a stdout nobody reads.
fn into_closed_pipe(mut command: Command) -> Run {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ticketbuild");
    // The only read end of the pipe is ours: dropping it closes the pipe before the child writes.
    drop(child.stdout.take());
    Run::from(child.wait_with_output().expect("wait for ticketbuild"))
}

#[test]
fn issue_11_status_cost_and_graph_into_a_closed_pipe_exit_0_without_panic() {
    let project = project();
    let ticket = project
        .read("out/tickets.jsonl")
        .lines()
        .next()
        .and_then(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .and_then(|row| row["ticket_id"].as_str().map(str::to_string))
        .expect("a ticket id");
    let commands: [&[&str]; 9] = [
        &["status"],
        &["status", "--json"],
        &["cost"],
        &["cost", "--json"],
        &["graph"],
        &["graph", "--format", "dot"],
        &["plan"],
        &["explain", &ticket],
        &["cache", "stats"],
    ];
    for args in commands {
        let run = into_closed_pipe(project.command(args));
        assert_eq!(
            run.code,
            0,
            "`ticketbuild {}`: {}",
            args.join(" "),
            run.stderr
        );
        assert!(
            !run.stderr.contains("panicked"),
            "`ticketbuild {}` panicked: {}",
            args.join(" "),
            run.stderr
        );
    }
}

#[test]
fn issue_11_a_build_into_a_closed_pipe_still_builds_and_reports_its_outcome() {
    let project = Project::example();
    project.edit("dataset.toml", "rows = 200", "rows = 20");
    let run = into_closed_pipe(project.command(&["build"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(project.read("out/tickets.jsonl").lines().count(), 20);
}

#[test]
fn issue_11_head_1_of_each_command_exits_0() {
    let project = project();
    let binary = env!("CARGO_BIN_EXE_ticketbuild");
    for command in ["status", "cost", "graph"] {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; '{binary}' {command} | head -1"))
            .current_dir(project.path())
            .output()
            .expect("run bash");
        let run = Run::from(output);
        assert_eq!(run.code, 0, "`{command} | head -1`: {}", run.stderr);
        assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}
