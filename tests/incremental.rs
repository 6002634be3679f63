//! Incremental builds you can see: no-op builds, status causes, explain, lineage, graph and cache
//! maintenance (issue 5).

use crate::support::{Project, stat, total};

fn example(rows: u64) -> Project {
    let project = Project::example();
    project.edit("dataset.toml", "rows = 200", &format!("rows = {rows}"));
    project
}

fn status_json(project: &Project) -> serde_json::Value {
    let run = project.run(&["status", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// The causes reported for `node`, as (cause, detail, count).
fn causes(status: &serde_json::Value, node: &str) -> Vec<(String, String, u64)> {
    let node = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap();
    node["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cause"].as_str().unwrap().to_string(),
                c["detail"]
                    .as_str()
                    .map_or_else(String::new, str::to_string),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn issue_5_noop_build_finishes_without_work_and_rewrites_deleted_files_from_cache() {
    let project = example(30);
    project.build_json(&[]);
    let run = project.run(&["build"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("`tickets` is up to date: 30 tickets"),
        "{}",
        run.stdout
    );
    let noop = project.build_json(&[]);
    assert_eq!(noop["up_to_date"], true);
    assert_eq!(total(&noop, "generated"), 0);

    let before = project.snapshot("out");
    std::fs::remove_file(project.file("out/tickets.csv")).unwrap();
    let rebuilt = project.build_json(&[]);
    assert_eq!(
        rebuilt["up_to_date"], false,
        "a deleted output must be rewritten"
    );
    assert_eq!(
        total(&rebuilt, "generated"),
        0,
        "rewriting from the cache calls no model"
    );
    assert_eq!(project.snapshot("out"), before);

    // An edited output file is noticed too.
    let csv = project.read("out/tickets.csv");
    project.write("out/tickets.csv", &csv.replace("Incident", "Incidnet"));
    let rebuilt = project.build_json(&[]);
    assert_eq!(rebuilt["up_to_date"], false);
    assert_eq!(project.snapshot("out"), before);
}

#[test]
fn issue_5_status_reports_each_cause() {
    let project = example(20);
    let fresh = status_json(&project);
    assert_eq!(
        causes(&fresh, "topic"),
        vec![("new".into(), String::new(), 20)]
    );
    project.build_json(&[]);
    let clean = status_json(&project);
    for node in clean["nodes"].as_array().unwrap() {
        assert_eq!(node["to_generate"], 0, "{node}");
    }

    // The prompt of `subject` changes: subject re-runs, and what reads it waits for it.
    project.edit(
        "prompts/subject.jinja",
        "Answer with the subject line only.",
        "Answer with the subject line only, please.",
    );
    let status = status_json(&project);
    assert_eq!(
        causes(&status, "subject"),
        vec![("prompt_changed".into(), "prompts/subject.jinja".into(), 20)]
    );
    assert_eq!(
        causes(&status, "body"),
        vec![("upstream_changed".into(), "subject".into(), 20)]
    );
    assert!(causes(&status, "topic").is_empty());
    project.edit(
        "prompts/subject.jinja",
        "Answer with the subject line only, please.",
        "Answer with the subject line only.",
    );

    // A parameter of the model changes: every node re-runs, naming the parameter.
    project.edit(
        "dataset.toml",
        "provider = \"offline\"",
        "provider = \"offline\"\ntemperature = 0.5",
    );
    let status = status_json(&project);
    assert_eq!(
        causes(&status, "topic"),
        vec![(
            "model_changed".into(),
            "temperature: (unset) -> 0.5".into(),
            20
        )]
    );
    project.edit(
        "dataset.toml",
        "provider = \"offline\"\ntemperature = 0.5",
        "provider = \"offline\"",
    );

    // The seed changes: other tickets are drawn.
    project.edit("dataset.toml", "seed = 42", "seed = 43");
    let status = status_json(&project);
    assert_eq!(
        causes(&status, "topic"),
        vec![("ticket_set_changed".into(), "seed 42 -> 43".into(), 20)]
    );
    project.edit("dataset.toml", "seed = 43", "seed = 42");

    // More rows: the new tickets are new.
    project.edit("dataset.toml", "rows = 20", "rows = 25");
    let status = status_json(&project);
    assert_eq!(
        causes(&status, "topic"),
        vec![("new".into(), String::new(), 5)]
    );

    // The human form names the cause too.
    project.edit(
        "prompts/first_response.jinja",
        "sign with your name",
        "sign with your full name",
    );
    let run = project.run(&["status"]);
    assert!(
        run.stdout
            .contains("prompt changed (prompts/first_response.jinja)"),
        "{}",
        run.stdout
    );
}

#[test]
fn issue_5_change_then_revert_reruns_nothing() {
    let project = example(25);
    project.build_json(&[]);
    project.edit("prompts/body.jinja", "80 to 160 words", "60 to 120 words");
    let changed = project.build_json(&[]);
    assert_eq!(stat(&changed, "body", "generated"), 25);
    project.edit("prompts/body.jinja", "60 to 120 words", "80 to 160 words");
    let reverted = project.build_json(&[]);
    assert_eq!(
        total(&reverted, "generated"),
        0,
        "the undo must come from the cache"
    );
}

#[test]
fn issue_5_explain_shows_provenance_and_the_diff_of_a_pending_field() {
    let project = example(10);
    project.build_json(&[]);
    let rows = crate::support::read_jsonl(&project.file("out/tickets.jsonl"));
    let id = rows[3]["ticket_id"].as_str().unwrap().to_string();

    let run = project.run(&["explain", &id, "body"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = &run.stdout;
    for expected in [
        "paraphrase: up to date",
        "model served: ticketbuild-offline-1",
        "key:",
        "upstream:",
        "user message:",
        "tokens:",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    // `body` is a column filled by translation or paraphrase; both are explained.
    assert!(out.contains("translation: "), "{out}");

    project.edit(
        "prompts/paraphrase.jinja",
        "different wording and structure",
        "fresh wording and a new structure",
    );
    let run = project.run(&["explain", &id, "paraphrase"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("paraphrase: would be generated by the next build"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("- Rewrite this support email"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("+ Rewrite this support email"),
        "{}",
        run.stdout
    );

    let run = project.run(&["explain", "123", "body"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no ticket has the id 123"),
        "{}",
        run.stderr
    );
}

#[test]
fn issue_5_gc_frees_exactly_the_unreachable_entries_and_keeps_pins() {
    let project = example(15);
    project.build_json(&[]);
    project.edit(
        "prompts/first_response.jinja",
        "sign with your name",
        "sign with your first name",
    );
    project.build_json(&[]);
    // The old first responses are reachable from the older manifest while it is kept...
    let run = project.run(&["cache", "gc", "--keep", "2", "--dry-run"]);
    assert!(
        run.stdout
            .starts_with("would delete 0 unreachable artifacts"),
        "{}",
        run.stdout
    );
    // ...and unreachable once only the last build is a root.
    let run = project.run(&["cache", "gc", "--keep", "1", "--dry-run"]);
    assert!(
        run.stdout
            .starts_with("would delete 15 unreachable artifacts"),
        "{}",
        run.stdout
    );
    let run = project.run(&["cache", "pin", "release-1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = project.run(&["cache", "gc", "--keep", "1"]);
    assert!(
        run.stdout.starts_with("deleted 15 unreachable artifacts"),
        "{}",
        run.stdout
    );
    let run = project.run(&["cache", "gc", "--keep", "1"]);
    assert!(
        run.stdout.starts_with("deleted 0 unreachable artifacts"),
        "{}",
        run.stdout
    );

    // The collected responses are gone: reverting now costs a rebuild of that node only.
    project.edit(
        "prompts/first_response.jinja",
        "sign with your first name",
        "sign with your name",
    );
    let summary = project.build_json(&[]);
    assert_eq!(stat(&summary, "first_response", "generated"), 15);
    assert_eq!(total(&summary, "generated"), 15);
    let stats = project.run(&["cache", "stats"]);
    assert!(stats.stdout.contains("entries:"), "{}", stats.stdout);
    assert!(stats.stdout.contains("first_response"), "{}", stats.stdout);
    // What a user compares with the disk target: bytes on disk per entry, beside the size
    // entries are read back at.
    let on_disk = stats
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("bytes on disk:"))
        .unwrap_or_else(|| panic!("{}", stats.stdout));
    assert!(on_disk.ends_with(" per entry)"), "{on_disk}");
}

#[test]
fn issue_5_verify_finds_and_quarantines_a_corrupted_entry() {
    let project = example(5);
    project.build_json(&[]);
    let rows = crate::support::read_jsonl(&project.file("out/tickets.jsonl"));
    let id = rows[0]["ticket_id"].as_str().unwrap().to_string();
    let (index, key) = crate::support::explained_key(&project, &id, "tags");
    {
        let store = ticketbuild::cache::SledStore::open(&project.file("cache")).unwrap();
        store.put_raw(index, &key, b"\x00garbage").unwrap();
        ticketbuild::cache::ArtifactStore::flush(&store).unwrap();
    }
    let run = project.run_after_release(&["cache", "verify"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("verified"), "{}", run.stdout);
    assert!(run.stdout.contains(": 1 bad"), "{}", run.stdout);
    let run = project.run(&["cache", "verify"]);
    assert_eq!(run.code, 0, "the bad entry was quarantined: {}", run.stdout);
    // The next build regenerates exactly that artifact.
    std::fs::remove_dir_all(project.file("out")).unwrap();
    let summary = project.build_json(&[]);
    assert_eq!(total(&summary, "generated"), 1);
    assert_eq!(stat(&summary, "tags", "generated"), 1);
}

#[test]
fn issue_5_lineage_file_has_a_row_per_ticket_and_node() {
    let project = example(12);
    project.edit(
        "dataset.toml",
        "[output.columns]",
        "[output]\nlineage = true\n\n[output.columns]",
    );
    project.build_json(&[]);
    let file = std::fs::File::open(project.file("out/tickets.lineage.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = 0;
    let mut generated = 0;
    for batch in reader {
        let batch = batch.unwrap();
        rows += batch.num_rows();
        let flags = batch
            .column_by_name("generated")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::BooleanArray>()
            .unwrap();
        generated += flags.true_count();
        assert!(batch.column_by_name("artifact_key").is_some());
        assert!(batch.column_by_name("model_served").is_some());
    }
    // 7 nodes per ticket, minus the translations skipped for English tickets.
    let summary = project.build_json(&["--rows", "12"]);
    let expected = 12 * 7 - stat(&summary, "translation", "skipped") as usize;
    assert_eq!(rows, expected);
    assert_eq!(
        generated, expected,
        "the first build generated every artifact"
    );
}

#[test]
fn issue_5_graph_in_three_formats() {
    let project = example(5);
    let text = project.run(&["graph"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout
            .contains("first_response (offline/ticketbuild-offline-1, text) <- "),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("translation (offline/ticketbuild-offline-1, json subject,body) when language != 'EN' <- "), "{}", text.stdout);
    let dot = project.run(&["graph", "--format", "dot"]);
    assert!(
        dot.stdout.starts_with("digraph ticketbuild {"),
        "{}",
        dot.stdout
    );
    assert!(
        dot.stdout.contains("\"paraphrase\" -> \"translation\";"),
        "{}",
        dot.stdout
    );
    let mermaid = project.run(&["graph", "--format", "mermaid"]);
    assert!(
        mermaid.stdout.starts_with("flowchart LR"),
        "{}",
        mermaid.stdout
    );
    assert!(mermaid.stdout.contains("  tags[\""), "{}", mermaid.stdout);
    assert!(
        mermaid.stdout.contains("  topic --> subject"),
        "{}",
        mermaid.stdout
    );
}

#[test]
fn issue_5_second_process_on_one_cache_gets_a_clear_error() {
    let project = example(5);
    let _held = ticketbuild::cache::SledStore::open(&project.file("cache")).unwrap();
    let run = project.run(&["build"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("is in use by another ticketbuild process"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&project.file("cache").display().to_string()),
        "{}",
        run.stderr
    );
    assert!(!project.file("out").exists());
}

#[test]
fn issue_5_forced_nodes_are_reported_and_regenerated() {
    let project = example(8);
    project.build_json(&[]);
    let run = project.run(&["status", "--json", "--force", "tags"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        causes(&status, "tags"),
        vec![("forced".into(), String::new(), 8)]
    );
    assert!(causes(&status, "topic").is_empty());
    let summary = project.build_json(&["--force", "tags"]);
    assert_eq!(stat(&summary, "tags", "generated"), 8);
    assert_eq!(total(&summary, "generated"), 8, "only the forced node runs");
    let run = project.run(&["build", "--force", "tagz"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("no node is called `tagz` (did you mean `tags`?)"),
        "{}",
        run.stderr
    );
}
