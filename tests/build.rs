//! `ticketbuild build` on the example dataset: a complete dataset, no-op rebuilds, targeted
//! rebuilds after a prompt edit, and no artifact generated twice across a crash.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::support::{Project, read_jsonl, stat, total};

const NODES: [&str; 7] = [
    "topic",
    "subject",
    "body",
    "tags",
    "paraphrase",
    "translation",
    "first_response",
];
const COLUMNS: [&str; 14] = [
    "ticket_id",
    "subject",
    "body",
    "language",
    "type",
    "queue",
    "priority",
    "tags",
    "first_response",
    "business_type",
    "customer_name",
    "agent_name",
    "created_at",
    "order_id",
];

fn expected_language(code: &str) -> whatlang::Lang {
    match code {
        "DE" => whatlang::Lang::Deu,
        "EN" => whatlang::Lang::Eng,
        "FR" => whatlang::Lang::Fra,
        "ES" => whatlang::Lang::Spa,
        "PT" => whatlang::Lang::Por,
        other => panic!("unexpected language {other}"),
    }
}

#[test]
fn issue_2_example_builds_a_complete_multilingual_dataset() {
    let project = Project::example();
    let run = project.run(&["build"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("200 of 200 tickets written"),
        "{}",
        run.stdout
    );

    let rows = read_jsonl(&project.file("out/tickets.jsonl"));
    assert_eq!(rows.len(), 200);
    let mut ids = HashSet::new();
    let mut subjects = HashSet::new();
    let mut bodies = HashSet::new();
    let mut languages = BTreeSet::new();
    let mut wrong_language = Vec::new();
    for row in &rows {
        let keys: Vec<&str> = row.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), COLUMNS.len());
        for column in COLUMNS {
            let value = &row[column];
            let filled = match value {
                serde_json::Value::String(s) => !s.trim().is_empty(),
                serde_json::Value::Array(items) => !items.is_empty(),
                _ => false,
            };
            assert!(filled, "column {column} is empty in {row:?}");
        }
        let id = row["ticket_id"].as_str().unwrap();
        assert!(
            (12..=13).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()),
            "{id}"
        );
        assert!(ids.insert(id.to_string()), "duplicate id {id}");
        let tags = row["tags"].as_array().unwrap();
        assert!((4..=8).contains(&tags.len()), "{} tags", tags.len());
        let subject = row["subject"].as_str().unwrap();
        let body = row["body"].as_str().unwrap();
        assert!(
            subjects.insert(subject.to_string()),
            "duplicate subject {subject}"
        );
        assert!(bodies.insert(body.to_string()), "duplicate body {body}");
        let language = row["language"].as_str().unwrap();
        languages.insert(language.to_string());
        let want = expected_language(language);
        for (field, text) in [
            ("body", body),
            ("first_response", row["first_response"].as_str().unwrap()),
        ] {
            let found = whatlang::detect_lang(text);
            if found != Some(want) {
                wrong_language.push(format!(
                    "{id} {field}: expected {want:?}, found {found:?}: {text}"
                ));
            }
        }
    }
    assert_eq!(languages.len(), 5, "{languages:?}");
    assert!(wrong_language.is_empty(), "{}", wrong_language.join("\n"));

    // CSV: same rows, tags joined with commas as in the original generator's example.
    let mut csv = csv::Reader::from_path(project.file("out/tickets.csv")).unwrap();
    let headers: Vec<String> = csv.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(headers, COLUMNS);
    let records: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 200);
    for (record, row) in records.iter().zip(&rows) {
        assert_eq!(&record[0], row["ticket_id"].as_str().unwrap());
        assert_eq!(&record[1], row["subject"].as_str().unwrap());
        let tags: Vec<&str> = row["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(&record[7], tags.join(","));
    }

    // Parquet: tags stay a list of strings.
    let file = std::fs::File::open(project.file("out/tickets.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut count = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMNS);
        assert!(matches!(
            schema.field(7).data_type(),
            arrow_schema::DataType::List(_)
        ));
        count += batch.num_rows();
    }
    assert_eq!(count, 200);
}

#[test]
fn issue_2_second_build_makes_no_calls_and_identical_files() {
    let project = Project::example();
    let first = project.build_json(&[]);
    assert_eq!(total(&first, "reused"), 0);
    assert!(total(&first, "generated") > 0);
    let before = project.snapshot("out");
    assert_eq!(before.len(), 4, "three dataset files and the card");

    let second = project.build_json(&[]);
    assert_eq!(total(&second, "generated"), 0);
    assert_eq!(total(&second, "reused"), total(&first, "generated"));
    assert_eq!(project.snapshot("out"), before, "output files changed");
}

#[test]
fn issue_2_editing_the_first_response_prompt_reruns_only_that_node() {
    let project = Project::example().write_rows(100);
    project.build_json(&[]);
    project.edit(
        "prompts/first_response.jinja",
        "say when they will hear from you",
        "say when they will hear from you, and keep it under 120 words",
    );
    let summary = project.build_json(&[]);
    for node in NODES {
        let generated = stat(&summary, node, "generated");
        if node == "first_response" {
            assert_eq!(
                generated, 100,
                "first_response must re-run for every ticket"
            );
        } else {
            assert_eq!(generated, 0, "{node} re-ran");
        }
    }
}

#[test]
fn issue_2_template_edit_that_renders_the_same_text_reruns_nothing() {
    let project = Project::example().write_rows(30);
    project.build_json(&[]);
    project.edit(
        "prompts/body.jinja",
        "--- system",
        "{# a comment changes the file, not the rendered prompt #}\n--- system",
    );
    let summary = project.build_json(&[]);
    assert_eq!(total(&summary, "generated"), 0);
}

#[test]
fn issue_2_upstream_edit_reruns_downstream_only_where_the_prompt_changed() {
    let project = Project::example().write_rows(40);
    let first = project.build_json(&[]);
    // Changing the topic prompt re-runs topic for every ticket; the offline model's topic depends
    // only on the queue and the seed, so topics come out the same and nothing downstream re-runs.
    project.edit(
        "prompts/topic.jinja",
        "nothing else.",
        "nothing else, no quotes.",
    );
    let summary = project.build_json(&[]);
    assert_eq!(stat(&summary, "topic", "generated"), 40);
    for node in &NODES[1..] {
        assert_eq!(
            stat(&summary, node, "generated"),
            0,
            "{node} re-ran although its prompt is unchanged"
        );
    }
    assert_eq!(
        stat(&first, "translation", "skipped"),
        stat(&summary, "translation", "skipped")
    );
}

#[test]
fn issue_2_growing_rows_keeps_the_existing_tickets() {
    let project = Project::example().write_rows(20);
    project.build_json(&[]);
    let before = read_jsonl(&project.file("out/tickets.jsonl"));
    let summary = project.build_json(&["--rows", "30"]);
    let after = read_jsonl(&project.file("out/tickets.jsonl"));
    assert_eq!(&after[..20], &before[..]);
    assert_eq!(stat(&summary, "topic", "generated"), 10);
}

#[test]
fn issue_2_sigkill_then_rebuild_generates_no_artifact_twice() {
    let project = Project::example().write_rows(300);
    // Slow the offline model down so the build is still running when it is killed.
    project.edit(
        "dataset.toml",
        "provider = \"offline\"",
        "provider = \"offline\"\nlatency_ms = 4",
    );
    project.edit("dataset.toml", "concurrency = 64", "concurrency = 8");
    let mut child = project
        .command(&["build", "-vv", "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut durable_before_kill = BTreeSet::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(key) = line
            .strip_prefix("generated ")
            .and_then(|l| l.split_whitespace().nth(2))
        {
            durable_before_kill.insert(key.to_string());
        }
        if durable_before_kill.len() >= 400 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(
        durable_before_kill.len() >= 400,
        "the build finished before it could be killed"
    );

    let run = project.run(&["build", "-vv", "--no-progress", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let regenerated: BTreeSet<String> = run
        .stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("generated ")
                .and_then(|l| l.split_whitespace().nth(2))
        })
        .map(str::to_string)
        .collect();
    let twice: Vec<&String> = durable_before_kill.intersection(&regenerated).collect();
    assert!(
        twice.is_empty(),
        "{} artifacts generated twice, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(total(&summary, "reused") >= durable_before_kill.len() as u64);
    assert_eq!(summary["written"], 300);

    // And the result equals an uninterrupted build of the same dataset.
    let clean = Project::example().write_rows(300);
    clean.build_json(&[]);
    assert_eq!(project.snapshot("out"), clean.snapshot("out"));
    let third = project.build_json(&[]);
    assert_eq!(total(&third, "generated"), 0);
}

#[test]
fn issue_2_profiles_override_rows() {
    let project = Project::example();
    let summary = project.build_json(&["--profile", "dev"]);
    assert_eq!(summary["tickets"], 20);
    assert_eq!(summary["profile"], "dev");
    let counts: BTreeMap<String, u64> = NODES
        .iter()
        .map(|n| (n.to_string(), stat(&summary, n, "generated")))
        .collect();
    assert_eq!(counts["topic"], 20);
}

trait Rows {
    fn write_rows(self, rows: u64) -> Self;
}

impl Rows for Project {
    /// Sets `dataset.rows` in the copied example.
    fn write_rows(self, rows: u64) -> Project {
        self.edit("dataset.toml", "rows = 200", &format!("rows = {rows}"));
        self
    }
}

#[test]
fn issue_8_csv_formula_escape_is_opt_in_and_only_touches_csv() {
    let project = Project::example().write_rows(30);
    project.edit(
        "dataset.toml",
        "\"Software company\" = 3",
        "\"=HYPERLINK(\\\"http://x\\\")\" = 300\n\"Software company\" = 3",
    );
    project.build_json(&[]);
    let plain = project.read("out/tickets.csv");
    assert!(
        plain.contains("\"=HYPERLINK(\"\"http://x\"\")\""),
        "{plain}"
    );
    assert!(!plain.contains("'=HYPERLINK"));

    project.edit(
        "dataset.toml",
        "[output.columns]",
        "[output]\ncsv_formula_escape = true\n\n[output.columns]",
    );
    project.build_json(&[]);
    let escaped = project.read("out/tickets.csv");
    assert!(escaped.contains("'=HYPERLINK("), "{escaped}");
    // The JSONL keeps the data as it is.
    let rows = read_jsonl(&project.file("out/tickets.jsonl"));
    assert!(
        rows.iter()
            .any(|r| r["business_type"] == "=HYPERLINK(\"http://x\")")
    );
}

/// Rows reach the Parquet writer a quarter of a row group at a time (what keeps a row group's
/// cells, arrays and encoding from all being in memory at once); the file still has row groups of
/// 4,096 rows, in the rows' order.
#[test]
fn parquet_row_groups_hold_4096_rows_in_order() {
    let project = Project::example().write_rows(4_500);
    let summary = project.build_json(&[]);
    let written = summary["written"].as_u64().unwrap() as usize;
    assert!(written > 4_096, "{summary}");
    let file = std::fs::File::open(project.file("out/tickets.parquet")).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let groups: Vec<i64> = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert_eq!(groups, [4_096, written as i64 - 4_096]);
    let mut ids = Vec::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .clone();
        ids.extend(column.iter().map(|id| id.unwrap().to_string()));
    }
    let in_jsonl: Vec<String> = read_jsonl(&project.file("out/tickets.jsonl"))
        .iter()
        .map(|row| row["ticket_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, in_jsonl);
}
