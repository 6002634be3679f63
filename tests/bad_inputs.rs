//! The bad-input corpus: every folder under `tests/fixtures/bad/` is a broken project that `build`
//! must refuse with exit code 2 and exactly the stderr in its `expected` file, with no panic, no
//! stack trace, nothing on stdout and no file or folder created (no `out/`, no `cache/`).
//!
//! A case folder holds the project files (`dataset.toml`, `prompts/...`) and these files, which are
//! not copied into the project:
//! - `expected`: the exact stderr; `@TMP@` stands for the temporary folder that holds the project.
//! - `args` (optional): extra arguments after `build`, one per line.
//! - `env` (optional): `VAR=value` lines set for the run.
//! - `generate` (optional): `PATH BYTES` lines; a prompt file of that many bytes is written into the
//!   project at run time (a 50 MB prompt is too big to commit).
//! - `secret` (optional): text that must appear neither in stdout nor in stderr.
//!
//! The project is copied to `@TMP@/project`, and `@TMP@/outside.jinja` is a valid prompt just outside
//! it, so a case can point at it with `../outside.jinja`. Every run has `RUST_BACKTRACE=1`, so a
//! panic would show its backtrace. All cases run, then the test fails once with every mismatch.
//!
//! After changing a message on purpose, `TICKETBUILD_BLESS=1 cargo test --test integration bad_inputs`
//! rewrites the `expected` files from the actual stderr; read the diff before committing it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files of a case folder that describe the case instead of being part of the project.
const CASE_FILES: [&str; 5] = ["expected", "args", "env", "generate", "secret"];

const TMP_PLACEHOLDER: &str = "@TMP@";

#[test]
fn every_bad_input_is_refused_with_its_exact_message() {
    let cases = case_folders();
    assert!(
        cases.len() >= 45,
        "expected at least 45 cases in tests/fixtures/bad, found {}",
        cases.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let problems = check_case(case);
            (!problems.is_empty())
                .then(|| format!("## {}\n{}", case_name(case), problems.join("\n")))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

fn case_folders() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("tests/fixtures/bad exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    cases
}

fn case_name(case: &Path) -> String {
    case.file_name().unwrap().to_string_lossy().into_owned()
}

/// Runs one case; returns what is wrong with the result (empty when the case passes).
fn check_case(case: &Path) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("create a temp dir");
    let tmp_path = tmp.path().canonicalize().unwrap();
    let project = tmp_path.join("project");
    copy_project(case, &project);
    std::fs::write(
        tmp_path.join("outside.jinja"),
        "--- user\nWrite about {{ topic }}.\n",
    )
    .unwrap();
    generate_files(case, &project);

    let before = listing(&tmp_path);
    let output = Command::new(env!("CARGO_BIN_EXE_ticketbuild"))
        .arg("build")
        .args(lines(case, "args"))
        .current_dir(&project)
        .env("RUST_BACKTRACE", "1")
        .envs(env_vars(case))
        .output()
        .expect("run ticketbuild");
    let after = listing(&tmp_path);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr)
        .replace(&*tmp_path.to_string_lossy(), TMP_PLACEHOLDER);
    let mut problems = Vec::new();
    if output.status.code() != Some(2) {
        problems.push(format!("exit code {:?}, expected 2", output.status.code()));
    }
    if stderr.contains("panicked") || stderr.contains("stack backtrace") {
        problems.push("it panicked or printed a stack trace".to_string());
    }
    if !stdout.is_empty() {
        problems.push(format!(
            "stdout is not empty:\n{}",
            indent(&stdout, "  stdout | ")
        ));
    }
    if before != after {
        let created: Vec<&String> = after.difference(&before).collect();
        let removed: Vec<&String> = before.difference(&after).collect();
        problems.push(format!(
            "files changed: created {created:?}, removed {removed:?}"
        ));
    }
    if let Some(secret) = read_case_file(case, "secret") {
        let secret = secret.trim();
        if stderr.contains(secret) || stdout.contains(secret) {
            problems.push(format!("the secret `{secret}` was printed"));
        }
    }
    problems.extend(compare_stderr(case, &stderr));
    problems
}

/// Compares stderr with `expected`, or rewrites `expected` in bless mode.
fn compare_stderr(case: &Path, stderr: &str) -> Option<String> {
    let expected = read_case_file(case, "expected").unwrap_or_default();
    if stderr == expected {
        return None;
    }
    if std::env::var_os("TICKETBUILD_BLESS").is_some() {
        std::fs::write(case.join("expected"), stderr).unwrap();
        return None;
    }
    Some(format!(
        "stderr differs\n{}\n{}",
        indent(&expected, "  expected | "),
        indent(stderr, "  actual   | ")
    ))
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|line| format!("{prefix}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_case_file(case: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(case.join(name)).ok()
}

/// The non-empty lines of an optional case file.
fn lines(case: &Path, name: &str) -> Vec<String> {
    read_case_file(case, name)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn env_vars(case: &Path) -> Vec<(String, String)> {
    lines(case, "env")
        .iter()
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: `env` line without `=`: {line}", case_name(case)));
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// Copies the case folder into `project`, leaving out the files that describe the case.
fn copy_project(case: &Path, project: &Path) {
    copy_dir(case, project, &|name| !CASE_FILES.contains(&name));
}

fn copy_dir(from: &Path, to: &Path, keep: &dyn Fn(&str) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            continue;
        }
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to.join(&name), &|_| true);
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// Writes each `PATH BYTES` file of `generate`: a valid prompt padded to exactly BYTES bytes.
fn generate_files(case: &Path, project: &Path) {
    for line in lines(case, "generate") {
        let (path, size) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("{}: `generate` line is not `PATH BYTES`", case_name(case)));
        let size: usize = size.trim().parse().expect("BYTES is a number");
        let mut text = String::from("--- user\n");
        let filler = "Write about {{ topic }}.\n";
        text.push_str(&filler.repeat(size / filler.len() + 1));
        text.truncate(size);
        let path = project.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// Every file and folder under `root`, as relative paths.
fn listing(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            found.insert(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}
