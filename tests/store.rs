//! The store at scale (issue 17): a cache written by the previous layout (tests/fixtures/cache-v2,
//! built by ticketbuild 0.1 with one sled entry per artifact) is read and migrated without paying
//! again, and `explain` shows every request byte for byte as before; `cache verify` catches a
//! tampered template or value.

use std::path::Path;

use crate::support::{Project, Run, repo_root, total};

const TICKET: &str = "9060608207711";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The fixture's project and its cache, in a temporary folder.
fn old_cache() -> Project {
    let p = Project::empty();
    copy_dir(&repo_root().join("tests/fixtures/cache-v2"), p.path());
    p
}

fn pinned_explain() -> String {
    std::fs::read_to_string(
        repo_root().join(format!("tests/fixtures/cache-v2/explain-{TICKET}.txt")),
    )
    .unwrap()
}

#[test]
fn issue_17_an_old_cache_is_read_without_paying_again_and_explains_the_same() {
    let p = old_cache();
    let explain = p.run(&["explain", TICKET]);
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    assert_eq!(explain.stdout, pinned_explain(), "explain, byte for byte");
    // Moved into ticket records once, and said so.
    assert!(
        explain
            .stderr
            .contains("into one record per ticket (once; nothing is paid again)"),
        "{}",
        explain.stderr
    );
    let build = p.run(&["build", "--json"]);
    assert_eq!(build.code, 0, "{}", build.stderr);
    let summary: serde_json::Value = serde_json::from_str(&build.stdout).unwrap();
    assert_eq!(total(&summary, "generated"), 0, "nothing paid again");
    assert_eq!(summary["written"], 3);
    assert!(
        !build.stderr.contains("record per ticket"),
        "once: {}",
        build.stderr
    );
    let again = p.run(&["explain", TICKET]);
    assert_eq!(again.stdout, pinned_explain());
    let verify: Run = p.run(&["cache", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
}
