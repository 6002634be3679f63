//! Input rows (issue 14): the user's rows as the starting point of tickets; an edited row re-runs
//! only its ticket, the three formats give one dataset, and a large input is never held.

use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;

use crate::support::mock_llm::{MockConfig, MockServer};
use crate::support::{Project, build_measuring_memory, read_jsonl};

const ROWS: [(&str, &str); 3] = [
    ("My invoice shows the wrong VAT rate", "Billing Pro"),
    ("The app crashes when I upload a photo", "PhotoSync"),
    ("I cannot reset my password", "Account Center"),
];

/// A project of two nodes over `[input] path = "{file}"` against the mock.
fn project(mock: &MockServer, file: &str, extra: &str) -> Project {
    let p = Project::empty();
    p.write(
        "dataset.toml",
        &format!(
            r#"[dataset]
name = "rows"
seed = 9
formats = ["jsonl"]
{extra}
[input]
path = "{file}"

[models.default]
provider = "openai-compatible"
model = "mock"
base_url = "{}"

[cost.prices.mock]
input = 0.5
output = 1.5

[nodes.subject]
prompt = "prompts/subject.jinja"

[nodes.body]
prompt = "prompts/body.jinja"
"#,
            mock.base_url()
        ),
    );
    p.write(
        "prompts/subject.jinja",
        "Write a subject line for a ticket about {{ product }}: {{ issue }}",
    );
    p.write(
        "prompts/body.jinja",
        "Write the email about \"{{ subject }}\" ({{ issue }}).",
    );
    p
}

fn csv(rows: &[(&str, &str)]) -> String {
    let mut text = String::from("issue,product\n");
    for (issue, product) in rows {
        text.push_str(&format!("\"{issue}\",{product}\n"));
    }
    text
}

#[test]
fn issue_14_editing_one_input_row_reruns_only_its_ticket_and_appending_reruns_nothing_old() {
    let mock = MockServer::start(MockConfig::default());
    let p = project(&mock, "rows.csv", "");
    p.write("rows.csv", &csv(&ROWS));
    let first = p.build_json(&[]);
    assert_eq!(first["written"], 3, "one ticket per row: {first}");
    assert_eq!(mock.requests(), 6);
    let rows = read_jsonl(&p.file("out/rows.jsonl"));
    assert_eq!(
        rows[1]["issue"], ROWS[1].0,
        "input columns are output columns"
    );
    assert_eq!(rows[1]["product"], ROWS[1].1);

    // Row 3's product changes: its ticket re-runs (the body too, though its prompt does not show
    // the product: the row is part of what determines the ticket), no other.
    let mut edited = ROWS;
    edited[2].1 = "Account Hub";
    p.write("rows.csv", &csv(&edited));
    let second = p.build_json(&[]);
    assert_eq!(mock.requests(), 8, "{second}");
    let again = read_jsonl(&p.file("out/rows.jsonl"));
    assert_eq!(again[..2], rows[..2], "the other tickets are unchanged");
    assert_eq!(again[2]["product"], "Account Hub");

    let mut appended = edited.to_vec();
    appended.push(("Where is my parcel?", "Shipping"));
    p.write("rows.csv", &csv(&appended));
    let third = p.build_json(&[]);
    assert_eq!(third["written"], 4);
    assert_eq!(mock.requests(), 10, "only the new row's ticket: {third}");
}

#[test]
fn issue_14_csv_jsonl_and_parquet_inputs_give_the_same_dataset() {
    let mock = MockServer::start(MockConfig::default());
    let jsonl: String = ROWS
        .iter()
        .map(|(issue, product)| {
            format!(
                "{}\n",
                serde_json::json!({ "issue": issue, "product": product })
            )
        })
        .collect();
    let mut datasets = Vec::new();
    for file in ["rows.csv", "rows.jsonl", "rows.parquet"] {
        let p = project(&mock, file, "");
        match file {
            "rows.csv" => {
                p.write(file, &csv(&ROWS));
            }
            "rows.jsonl" => {
                p.write(file, &jsonl);
            }
            _ => write_parquet(&p.file(file)),
        }
        p.build_json(&[]);
        datasets.push(p.read("out/rows.jsonl"));
    }
    assert_eq!(datasets[0], datasets[1], "CSV and JSONL");
    assert_eq!(datasets[0], datasets[2], "CSV and Parquet");
}

fn write_parquet(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("issue", DataType::Utf8, false),
        Field::new("product", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(ROWS.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(ROWS.iter().map(|r| r.1))),
        ],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn issue_14_a_million_row_input_builds_its_first_tickets_without_holding_the_file() {
    let mock = MockServer::start(MockConfig::default());
    let p = project(&mock, "big.csv", "");
    let mut text = String::with_capacity(40_000_000);
    text.push_str("issue,product\n");
    for i in 0..1_000_000 {
        text.push_str(&format!(
            "\"Order {i} arrived damaged, the box was open\",Product {}\n",
            i % 97
        ));
    }
    p.write("big.csv", &text);
    drop(text);
    let build = ["build", "--json", "--no-progress", "--rows", "1000"];
    let (run, peak_kb) = build_measuring_memory(&p, &build);
    assert_eq!(run.code, 0, "{run:?}");
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["written"], 1000);
    let rows = read_jsonl(&p.file("out/rows.jsonl"));
    assert_eq!(
        rows[999]["issue"],
        "Order 999 arrived damaged, the box was open"
    );
    // The same 1,000 tickets from a 3-row input: what the 60 MB input itself costs.
    let small = project(&mock, "rows.csv", "");
    small.edit(
        "dataset.toml",
        "path = \"rows.csv\"",
        "path = \"rows.csv\"\nmode = \"draw\"\nreplace = true",
    );
    small.write("rows.csv", &csv(&ROWS));
    let (run, small_kb) = build_measuring_memory(&small, &build);
    assert_eq!(run.code, 0, "{run:?}");
    eprintln!(
        "peak {peak_kb} kB for 1,000 tickets of a 1,000,000-row input, {small_kb} kB of a 3-row one"
    );
    assert!(
        peak_kb < small_kb + 16 * 1024,
        "the input is not held: {peak_kb} kB against {small_kb} kB"
    );
}

#[test]
fn issue_14_drawing_rows_without_replacement_uses_each_row_at_most_once() {
    let mock = MockServer::start(MockConfig::default());
    let p = project(&mock, "rows.csv", "rows = 3\n");
    p.edit(
        "dataset.toml",
        "path = \"rows.csv\"",
        "path = \"rows.csv\"\nmode = \"draw\"",
    );
    p.write("rows.csv", &csv(&ROWS));
    p.build_json(&[]);
    let mut issues: Vec<String> = read_jsonl(&p.file("out/rows.jsonl"))
        .iter()
        .map(|r| r["issue"].as_str().unwrap().to_string())
        .collect();
    issues.sort();
    let mut expected: Vec<String> = ROWS.iter().map(|r| r.0.to_string()).collect();
    expected.sort();
    assert_eq!(issues, expected);
    p.edit("dataset.toml", "rows = 3", "rows = 4");
    let run = p.run(&["build"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("4 rows asked for, but `rows.csv` has 3 and its rows cannot repeat"),
        "{}",
        run.stderr
    );
}
