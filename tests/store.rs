//! The store at scale (issue 17): caches written by earlier layouts (tests/fixtures/cache-v2, built
//! by ticketbuild 0.1 with one sled entry per artifact; tests/fixtures/cache-v3, ticket records
//! with whole requests, from before requests were laid out) are read without paying again, and
//! `explain` shows every request byte for byte as before, also for a request laid out as its
//! template's text and values; `cache verify` catches a tampered template or value.

use std::path::Path;

use crate::support::{Project, Run, explained_key, repo_root, total};

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
    fixture("cache-v2")
}

fn fixture(name: &str) -> Project {
    let p = Project::empty();
    copy_dir(&repo_root().join("tests/fixtures").join(name), p.path());
    p
}

fn pinned_explain() -> String {
    pinned("cache-v2")
}

fn pinned(fixture: &str) -> String {
    std::fs::read_to_string(
        repo_root().join(format!("tests/fixtures/{fixture}/explain-{TICKET}.txt")),
    )
    .unwrap()
}

/// `explain`'s text without the lines that say when each answer was made.
fn timeless(explain: &str) -> String {
    explain
        .lines()
        .filter(|l| !l.trim_start().starts_with("generated:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn issue_17_a_cache_of_whole_requests_is_read_without_paying_again_and_explains_the_same() {
    let p = fixture("cache-v3");
    let explain = p.run(&["explain", TICKET]);
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    assert_eq!(explain.stdout, pinned("cache-v3"), "explain, byte for byte");
    let build = p.build_json(&[]);
    assert_eq!(total(&build, "generated"), 0, "nothing paid again: {build}");
    assert_eq!(build["written"], 3);
    explains_as_pinned_and_verifies(&p);
    // Answers made again now are laid out beside the whole ones in the same records.
    let forced = p.build_json(&["--force", "first_response"]);
    assert_eq!(total(&forced, "generated"), 3, "{forced}");
    explains_as_pinned_and_verifies(&p);
}

/// `explain` shows the fixture's pinned requests byte for byte (only the times may differ), and
/// `cache verify` re-derives every key of the fixture's 20 artifacts.
fn explains_as_pinned_and_verifies(p: &Project) -> String {
    let explain = p.run(&["explain", TICKET]);
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    assert_eq!(timeless(&explain.stdout), timeless(&pinned("cache-v3")));
    let verify = p.run(&["cache", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("20 of them re-derive"),
        "{}",
        verify.stdout
    );
    explain.stdout
}

#[test]
fn issue_17_a_laid_out_request_explains_byte_for_byte_as_the_whole_one_did() {
    // The fixture's project without its cache: every answer made now, and laid out.
    let p = fixture("cache-v3");
    std::fs::remove_dir_all(p.file("cache")).unwrap();
    let cold = p.build_json(&[]);
    assert_eq!(total(&cold, "generated"), 20, "{cold}");
    // The same requests as the whole ones recorded, byte for byte; only the times differ.
    let explain = explains_as_pinned_and_verifies(&p);
    assert_ne!(
        explain,
        pinned("cache-v3"),
        "made now, not read from the fixture"
    );
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

/// Every file but the lineage file, which says "generated" where a cold build generated.
fn without_lineage(files: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    files
        .into_iter()
        .filter(|(path, _)| !path.contains("lineage"))
        .collect()
}

/// A summary without what differs from one build of the same dataset to the next.
fn steady(mut summary: serde_json::Value) -> serde_json::Value {
    for key in ["wall_ms", "manifest", "reassembled"] {
        summary.as_object_mut().unwrap().remove(key);
    }
    summary
}

#[test]
fn issue_17_deleted_files_are_reassembled_from_the_manifest_byte_for_byte() {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 3000");
    // A check that rejects a few of the offline model's subjects, so that the card has rejected
    // draws (and, at 3,000 tickets, a duplicate redrawn) to carry over.
    p.edit("dataset.toml", "max_words = 30", "max_words = 19");
    let toml = p.read("dataset.toml");
    p.write(
        "dataset.toml",
        &format!("{toml}\n[output]\nlineage = true\n"),
    );
    let cold = p.build_json(&[]);
    assert!(crate::support::stat(&cold, "subject", "rejected") > 0);
    assert!(cold["duplicates"]["redraws"].as_u64().unwrap() > 0);
    let files = p.snapshot("out");

    // Files deleted: written again from the manifest's keys, the same bytes (the card too).
    std::fs::remove_dir_all(p.file("out")).unwrap();
    let reassembled = p.build_json(&[]);
    assert_eq!(reassembled["reassembled"], true, "{reassembled}");
    assert_eq!(total(&reassembled, "generated"), 0);
    assert_eq!(without_lineage(p.snapshot("out")), without_lineage(files));
    let replayed = p.snapshot("out");
    assert!(
        p.build_json(&[])["up_to_date"] == true,
        "the manifest lists the new files"
    );

    // An edited file: the same again.
    p.write("out/tickets.csv", "edited\n");
    assert_eq!(p.build_json(&[])["reassembled"], true);
    assert_eq!(p.snapshot("out"), replayed);

    // The same build walking the graph (no report of the last build to carry figures from)
    // writes the same files, lineage included, and reports the same figures.
    std::fs::remove_dir_all(p.file("out")).unwrap();
    std::fs::remove_file(p.file("cache/last-report.json")).unwrap();
    let walked = p.build_json(&[]);
    assert!(walked.get("reassembled").is_none(), "{walked}");
    assert_eq!(p.snapshot("out"), replayed);
    assert_eq!(steady(walked), steady(reassembled));

    // A forced node walks (and its answers are made again).
    std::fs::remove_dir_all(p.file("out")).unwrap();
    let forced = p.build_json(&["--force", "tags"]);
    assert!(forced.get("reassembled").is_none(), "{forced}");
}

#[test]
fn issue_17_cache_verify_catches_a_tampered_template_or_value() {
    use ticketbuild::cache::{ArtifactStore, Lookup, SledStore};
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 20");
    let cold = p.build_json(&[]);
    let artifacts = total(&cold, "generated");
    let verify = p.run(&["cache", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains(&format!(
            "{artifacts} of them re-derive their key from the request they record"
        )),
        "every fresh artifact's request hashes to its key: {}",
        verify.stdout
    );

    // Two answers whose recorded requests are changed and stored again, checksums and all: one
    // in the template's text (the system message), one in a value that filled it (the body the
    // paraphrase prompt quotes, an upstream answer). Both still decode under their keys.
    let rows = crate::support::read_jsonl(&p.file("out/tickets.jsonl"));
    let first = rows[0]["ticket_id"].as_str().unwrap().to_string();
    let second = rows[1]["ticket_id"].as_str().unwrap().to_string();
    let (template_index, template_key) = explained_key(&p, &first, "first_response");
    let (value_index, value_key) = explained_key(&p, &second, "paraphrase");
    {
        let store = SledStore::open(&p.file("cache")).unwrap();
        let Lookup::Hit(mut artifact) = store.get(template_index, &template_key).unwrap() else {
            panic!("the first response is stored")
        };
        let system = artifact.request.system.clone().expect("a system message");
        artifact.request.system = Some(system.replacen(' ', "  ", 1));
        store.put(template_index, &artifact).unwrap();
        let Lookup::Hit(mut artifact) = store.get(value_index, &value_key).unwrap() else {
            panic!("the paraphrase is stored")
        };
        assert!(
            artifact.request.user.contains("Body:\n"),
            "{}",
            artifact.request.user
        );
        artifact.request.user = artifact.request.user.replace("Body:\n", "Body:\nP.S. ");
        store.put(value_index, &artifact).unwrap();
        store.flush().unwrap();
    }
    let verify = p.run_after_release(&["cache", "verify"]);
    assert_eq!(verify.code, 1, "{}{}", verify.stdout, verify.stderr);
    for key in [template_key, value_key] {
        let line = verify
            .stdout
            .lines()
            .find(|l| l.contains(&key.to_string()[..16]))
            .unwrap_or_else(|| panic!("{key} named: {}", verify.stdout));
        assert!(line.contains("recorded request hashes to"), "{line}");
    }
    assert!(verify.stdout.contains(": 2 bad"), "{}", verify.stdout);
    // Moved aside: the next build makes exactly those two answers again.
    assert_eq!(p.run(&["cache", "verify"]).code, 0);
    std::fs::remove_dir_all(p.file("out")).unwrap();
    let rebuilt = p.build_json(&[]);
    assert_eq!(total(&rebuilt, "generated"), 2, "{rebuilt}");
}

#[test]
fn issue_17_cache_verify_catches_a_tampered_template_text_shared_by_many_requests() {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 20");
    p.build_json(&[]);
    let rows = p.read("out/tickets.jsonl");
    // The topic prompt's user message, stored once for every ticket: one word of it changed (the
    // same length, so that it still decodes).
    {
        let db = sled::open(p.file("cache")).unwrap();
        let shapes = db.open_tree("request_shapes").unwrap();
        let needle = b"Name one concrete issue";
        let (id, value) = shapes
            .iter()
            .map(Result::unwrap)
            .find(|(_, v)| v.windows(needle.len()).any(|w| w == needle))
            .expect("the topic prompt's text is stored as a shape");
        let at = value
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let mut tampered = value.to_vec();
        tampered[at..at + needle.len()].copy_from_slice(b"Name one concreTe issue");
        shapes.insert(id, tampered).unwrap();
        db.flush().unwrap();
    }
    let verify = p.run_after_release(&["cache", "verify"]);
    assert_eq!(verify.code, 1, "{}{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("(a template's text) is damaged"),
        "{}",
        verify.stdout
    );
    let bad: Vec<&str> = verify
        .stdout
        .lines()
        .filter(|l| l.starts_with("bad entry"))
        .collect();
    assert!(bad.len() >= 20, "every topic's request: {}", verify.stdout);
    assert!(
        bad.iter().all(|l| l.contains("template text (shape")),
        "{}",
        verify.stdout
    );
    // Moved aside; the next build makes the topics again (the same answers: nothing downstream
    // changes) and stores the shape again.
    assert_eq!(p.run(&["cache", "verify"]).code, 0);
    let rebuilt = p.build_json(&["--force", "topic"]);
    assert_eq!(
        crate::support::stat(&rebuilt, "subject", "generated"),
        0,
        "{rebuilt}"
    );
    assert_eq!(p.read("out/tickets.jsonl"), rows);
    let verify = p.run(&["cache", "verify"]);
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
}
