//! See the dataset (issue 13): the HTML report in a real browser, the dataset card read by Hugging
//! Face's own libraries, and the report's figures recomputed with pandas.

use std::path::Path;

use serde_json::Value;

use crate::support::browser::Page;
use crate::support::mock_llm::{MockConfig, MockServer};
use crate::support::python::readers;
use crate::support::{Project, example_on, read_jsonl, repo_root};

/// The sections the report must have, by id.
const SECTIONS: [&str; 9] = [
    "overview",
    "balance",
    "languages",
    "lengths",
    "tags",
    "duplicates",
    "quality",
    "cost",
    "examples",
];

/// The example dataset with `rows` tickets and `[output] report = true`.
fn example_with_report(rows: u64) -> Project {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", &format!("rows = {rows}"));
    let config = p.read("dataset.toml");
    p.write(
        "dataset.toml",
        &format!("{config}\n[output]\nreport = true\n"),
    );
    p
}

fn python(script: &str, args: &[&Path]) -> String {
    let home = tempfile::tempdir().expect("a folder for the Hugging Face cache");
    let output = readers()
        .python()
        .arg(repo_root().join("tests/interop").join(script))
        .args(args)
        .env("HF_HOME", home.path())
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn issue_13_the_report_opens_offline_in_chromium_with_every_section_drawn() {
    let p = example_with_report(150);
    let summary = p.build_json(&[]);
    let html = p.file("out/tickets.report.html");
    assert!(
        summary["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("tickets.report.html")),
        "the build lists the report: {summary}"
    );
    let page = Page::open(&html);
    assert_eq!(page.console_errors(), Vec::<String>::new());
    assert_eq!(page.requests(), Vec::<String>::new(), "no network request");
    for id in SECTIONS {
        let filled = page.eval(&format!(
            "const s = document.getElementById('{id}'); \
             return s ? s.querySelectorAll('svg.chart rect.bar, table td, .example').length : -1;"
        ));
        assert!(
            filled.as_i64().unwrap() > 0,
            "section `{id}` is missing or empty ({filled})"
        );
    }
    // One bar per queue, in the table's order, with the rows' counts.
    let queues: Vec<Value> = page
        .eval(
            "return [...document.querySelectorAll('svg.balance-queue rect.bar')] \
             .map(r => r.getAttribute('data-label'));",
        )
        .as_array()
        .unwrap()
        .clone();
    let dataset = std::fs::read_to_string(repo_root().join("dataset.toml")).unwrap();
    let configured: Vec<&str> = dataset
        .split("[tables.queue]")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(queues.len(), 10);
    assert_eq!(
        queues
            .iter()
            .map(|q| q.as_str().unwrap())
            .collect::<Vec<_>>(),
        configured
    );
    // The length histograms, tag bars and examples are drawn from the rows.
    let counts = page.eval(
        "return { lengths: document.querySelectorAll('#lengths svg.chart rect.bar').length, \
                  tags: document.querySelectorAll('#tags svg.tags-tags rect.bar').length, \
                  examples: document.querySelectorAll('#examples .example').length, \
                  keys: [...document.querySelectorAll('#examples .made code')].length, \
                  rows: document.querySelector('[data-figure=rows]').textContent };",
    );
    assert!(counts["lengths"].as_i64().unwrap() > 10, "{counts}");
    assert!(counts["tags"].as_i64().unwrap() > 10, "{counts}");
    assert_eq!(
        counts["examples"], 15,
        "three tickets per language: {counts}"
    );
    assert_eq!(
        counts["keys"],
        15 * 4,
        "each model-written field (subject, body, tags, first_response) names its key: {counts}"
    );
    assert_eq!(counts["rows"], "150");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    page.screenshot(&shot);
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    let pdf = page.print_pdf();
    assert!(pdf.starts_with(b"%PDF") && pdf.len() > 10_000, "it prints");
}

#[test]
fn issue_13_the_card_parses_with_huggingface_hub_and_loads_with_datasets() {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 80");
    p.edit(
        "dataset.toml",
        "name = \"tickets\"",
        "name = \"tickets\"\nlicense = \"cc-by-4.0\"",
    );
    p.build_json(&[]);
    let card = p.read("out/README.md");
    assert!(card.contains("license: \"cc-by-4.0\""), "{card}");
    let found = python(
        "check_card.py",
        &[
            &p.file("out"),
            Path::new("80"),
            Path::new("de,en,fr,es,pt"),
            Path::new("n<1K"),
        ],
    );
    assert!(found.contains("\"rows\": 80"), "{found}");
}

#[test]
fn issue_13_report_figures_match_pandas_on_the_same_file() {
    let p = example_with_report(300);
    p.build_json(&[]);
    // Plant duplicates of the compared column (`[quality] unique = ["body"]` in the example) the
    // report must count: rows 5, 9 and 12 repeat row 1's body, with other punctuation, in lower
    // case (both normalised away) and as is.
    let path = p.file("out/tickets.jsonl");
    let mut rows = read_jsonl(&path);
    let body = rows[1]["body"].as_str().unwrap().to_string();
    rows[5].insert("body".into(), Value::String(body.replace('.', " ;")));
    rows[9].insert("body".into(), Value::String(body.to_lowercase()));
    rows[12].insert("body".into(), Value::String(body));
    let text: String = rows
        .iter()
        .map(|r| format!("{}\n", serde_json::to_string(r).unwrap()))
        .collect();
    std::fs::write(&path, text).unwrap();
    let run = p.run(&["report", "--json", "-o", "report.json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report: Value = serde_json::from_str(&p.read("report.json")).unwrap();
    assert!(
        report["duplicates"]["exact"].as_u64().unwrap() >= 3,
        "{}",
        report["duplicates"]
    );
    let cluster = &report["duplicates"]["clusters"][0];
    let first = rows[1]["ticket_id"].as_str().unwrap();
    assert!(
        report["duplicates"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["ticket_ids"][0] == first && c["size"] == 4 && c["exact"] == true),
        "row 1 heads a group of four: {cluster}"
    );
    let compared = python("report_figures.py", &[&path, &p.file("report.json")]);
    assert!(compared.contains("\"compared\""), "{compared}");
}

#[test]
fn issue_13_language_agreement_counts_the_texts_in_another_language() {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 200");
    p.build_json(&[]);
    // Replace the body of every tenth German ticket by an English one.
    let path = p.file("out/tickets.jsonl");
    let mut rows = read_jsonl(&path);
    let english = rows.iter().find(|r| r["language"] == "EN").unwrap()["body"].clone();
    let mut planted = 0;
    let german: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i]["language"] == "DE")
        .collect();
    for &i in german.iter().step_by(10) {
        rows[i].insert("body".into(), english.clone());
        planted += 1;
    }
    let text: String = rows
        .iter()
        .map(|r| format!("{}\n", serde_json::to_string(r).unwrap()))
        .collect();
    std::fs::write(&path, text).unwrap();
    let run = p.run(&["report", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let body = report["languages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["column"] == "body")
        .unwrap();
    assert_eq!(body["differ"], planted, "{body}");
    let de = &body["by_language"]["DE"];
    assert_eq!(
        de["judged"].as_u64().unwrap() - de["agree"].as_u64().unwrap(),
        planted,
        "{body}"
    );
    assert_eq!(
        body["by_language"]["EN"]["agree"],
        body["by_language"]["EN"]["judged"]
    );
}

#[test]
fn issue_13_a_project_never_built_says_so_and_exits_1() {
    let p = Project::example();
    let run = p.run(&["report"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("`tickets` has not been built yet")
            && run.stderr.contains("run `ticketbuild build` first"),
        "{}",
        run.stderr
    );
    assert!(!p.file("out/tickets.report.html").exists());
}

#[test]
fn issue_13_a_build_that_failed_part_way_reports_what_was_written_and_what_is_missing() {
    let mock = MockServer::start(MockConfig {
        rate_500: 0.3,
        seed: 3,
        ..MockConfig::default()
    });
    let p = example_on(&mock, 60, 8, "max_attempts = 1\nmax_invalid_attempts = 1");
    let build = p.run(&["build", "--json"]);
    assert_eq!(build.code, 1, "some tickets fail: {build:?}");
    let failed = serde_json::from_str::<Value>(&build.stdout).unwrap()["failed"]
        .as_u64()
        .unwrap();
    assert!(failed > 0);
    let run = p.run(&["report"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "{failed} of the 60 tickets asked for are missing ({failed} failed in the last build)"
        )),
        "{}",
        run.stdout
    );
    let json: Value = serde_json::from_str(&p.run(&["report", "--json"]).stdout).unwrap();
    assert_eq!(json["overview"]["rows"], 60 - failed);
    assert_eq!(json["overview"]["missing"], failed);
    let html = p.read("out/tickets.report.html");
    assert!(html.contains(&format!("{failed} of 60 tickets are missing from the file")));
}

#[test]
fn issue_13_the_card_is_written_on_every_build_byte_identical_and_can_be_turned_off() {
    let mock = MockServer::start(MockConfig::default());
    let p = example_on(&mock, 40, 8, "");
    p.build_json(&[]);
    let first = p.read("out/README.md");
    assert!(first.contains("num_examples: 40"), "{first}");
    assert!(
        first.contains("| topic | text | openai-compatible | `mock` |"),
        "{first}"
    );
    // Everything again from the cache, into an empty folder: the same card, byte for byte.
    std::fs::remove_dir_all(p.file("out")).unwrap();
    let again = p.build_json(&[]);
    assert_eq!(again["nodes"][0]["generated"], 0, "{again}");
    assert_eq!(p.read("out/README.md"), first);
    // A deleted card is a damaged build: the next build writes it again without a call.
    std::fs::remove_file(p.file("out/README.md")).unwrap();
    p.build_json(&[]);
    assert_eq!(p.read("out/README.md"), first);
    let config = p.read("dataset.toml");
    p.write(
        "dataset.toml",
        &format!("{config}\n[output]\ncard = false\n"),
    );
    std::fs::remove_file(p.file("out/README.md")).unwrap();
    p.build_json(&[]);
    assert!(!p.file("out/README.md").exists());
}

#[test]
fn issue_13_a_license_the_hub_cannot_read_is_refused_with_its_line() {
    let p = Project::example();
    p.edit(
        "dataset.toml",
        "name = \"tickets\"",
        "name = \"tickets\"\nlicense = \"CC BY 4.0\"",
    );
    let run = p.run(&["build"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("dataset.toml:7:")
            && run.stderr.contains("`dataset.license`")
            && run.stderr.contains("`CC BY 4.0` is not a license id"),
        "{}",
        run.stderr
    );
    assert!(!p.file("out").exists());
}

#[test]
fn issue_13_the_report_reads_parquet_or_csv_alike_when_there_is_no_jsonl() {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 120");
    p.build_json(&[]);
    let figures = |p: &Project| {
        let run = p.run(&["report", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        let file = report["file"].as_str().unwrap().to_string();
        // What the rows tell; the rest comes from the build (which reused everything here).
        let d = &report["duplicates"];
        let o = &report["overview"];
        let figures = serde_json::json!({
            "rows": [o["rows"], o["languages"], o["missing"]],
            "balance": report["balance"],
            "languages": report["languages"],
            "lengths": report["lengths"],
            "tags": report["tags"],
            "duplicates": [d["exact"], d["near"], d["clusters"]],
            "examples": report["examples"],
        });
        (file, figures)
    };
    let (file, from_jsonl) = figures(&p);
    assert!(file.ends_with("tickets.jsonl"), "{file}");
    for format in ["parquet", "csv"] {
        p.edit(
            "dataset.toml",
            p.read("dataset.toml")
                .lines()
                .find(|l| l.starts_with("formats = "))
                .unwrap(),
            &format!("formats = [\"{format}\"]"),
        );
        std::fs::remove_dir_all(p.file("out")).unwrap();
        p.build_json(&[]);
        let (file, report) = figures(&p);
        assert!(file.ends_with(&format!("tickets.{format}")), "{file}");
        for (part, value) in from_jsonl.as_object().unwrap() {
            assert_eq!(&report[part], value, "`{part}` read from {format}");
        }
    }
}
