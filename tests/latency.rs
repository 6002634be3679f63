//! One slow reply holds nothing up (issue 19): tickets finish in any order, rows are written in
//! ticket order, and a ticket stuck on a call costs the others neither time nor memory, and the
//! files not a byte.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::mock_llm::{Delay, MockConfig, MockServer};
use crate::support::{Project, build_measuring_memory, read_jsonl};

const BUILD: &[&str] = &["build", "--json", "--no-progress"];

const TICKETS: u64 = 5_000;

/// Three nodes per ticket on the mock; the body's prompt names its ticket, so a test can pick
/// one ticket's call.
fn project(mock: &MockServer, timeout_secs: u64) -> Project {
    let p = Project::empty();
    p.write(
        "dataset.toml",
        &format!(
            r#"[dataset]
name = "tickets"
rows = {TICKETS}
seed = 7
formats = ["parquet", "csv", "jsonl"]
concurrency = 64

[tables.queue]
"IT Support" = 1
"Billing and Payments" = 1

[models.default]
provider = "openai-compatible"
model = "mock"
base_url = "{}"
max_concurrency = 64
timeout_secs = {timeout_secs}

[cost.prices.mock]
input = 0.15
output = 0.60

[output]
lineage = true

[nodes.topic]
prompt = "prompts/topic.jinja"

[nodes.subject]
prompt = "prompts/subject.jinja"

[nodes.body]
prompt = "prompts/body.jinja"
"#,
            mock.base_url()
        ),
    );
    p.write(
        "prompts/topic.jinja",
        "Name one issue a customer raises with the {{ queue }} team.",
    );
    p.write(
        "prompts/subject.jinja",
        "Write a subject line about: {{ topic }}",
    );
    p.write(
        "prompts/body.jinja",
        "Write the email body of ticket {{ ticket_id }} about \"{{ subject }}\" ({{ topic }}).",
    );
    p
}

/// Every file of an output folder by name; the lineage file as its rows without the time each
/// artifact was made (two builds on two caches make them at different times).
fn outputs(p: &Project) -> Vec<(String, Vec<u8>)> {
    p.snapshot("out")
        .into_iter()
        .map(|(name, bytes)| match name.as_str() {
            "tickets.lineage.parquet" => (
                name,
                lineage_without_times(&p.file("out").join("tickets.lineage.parquet")),
            ),
            _ => (name, bytes),
        })
        .collect()
}

fn lineage_without_times(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut text = String::new();
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        for row in 0..batch.num_rows() {
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                if field.name() != "created_unix_ms" {
                    text.push_str(&format!("{:?}|", column.slice(row, 1)));
                }
            }
            text.push('\n');
        }
    }
    text.into_bytes()
}

/// The call that hangs: the body of the ticket named, the first time it is asked for.
struct Hang {
    marker: Mutex<Option<String>>,
    hung: AtomicBool,
    /// The key of the request that hung.
    key: Mutex<Option<String>>,
    length: Mutex<Duration>,
}

#[test]
fn issue_19_a_hung_call_holds_up_no_other_ticket_nor_memory_nor_a_byte() {
    let hang = Arc::new(Hang {
        marker: Mutex::new(None),
        hung: AtomicBool::new(false),
        key: Mutex::new(None),
        length: Mutex::new(Duration::ZERO),
    });
    let delay = {
        let hang = Arc::clone(&hang);
        Delay(Arc::new(move |asking| {
            let marker = hang.marker.lock().unwrap().clone()?;
            if !asking.text.contains(&marker) || hang.hung.swap(true, Ordering::AcqRel) {
                return None;
            }
            *hang.key.lock().unwrap() = Some(asking.key.to_string());
            Some(*hang.length.lock().unwrap())
        }))
    };
    // Both builds on one mock: its address is part of every request, so of every key.
    let mock = MockServer::start(MockConfig {
        latency_ms: 5,
        delay: Some(delay),
        ..MockConfig::default()
    });

    let steady = project(&mock, 60);
    let started = Instant::now();
    let (run, steady_peak_kb) = build_measuring_memory(&steady, BUILD);
    let steady_wall = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let steady_requests = mock.log().len();

    // The body of the 11th ticket hangs until its deadline, set well past the time every other
    // ticket needs; its retry is answered at once.
    let rows = read_jsonl(&steady.file("out/tickets.jsonl"));
    let ticket_id = rows[10]["ticket_id"].as_str().unwrap().to_string();
    let deadline = (steady_wall * 3).max(Duration::from_secs(5));
    *hang.marker.lock().unwrap() = Some(format!("email body of ticket {ticket_id} "));
    *hang.length.lock().unwrap() = deadline * 4;
    let stuck = project(&mock, deadline.as_secs() + 1);
    let (run, stuck_peak_kb) = build_measuring_memory(&stuck, BUILD);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["written"], TICKETS);

    // Every other request was answered before the hung ticket's body was.
    let hung_key = hang.key.lock().unwrap().clone().expect("the call hung");
    let log = mock.log();
    let stuck_log = &log[steady_requests..];
    let answered_hung: Vec<Instant> = stuck_log
        .iter()
        .filter(|r| r.key.as_deref() == Some(hung_key.as_str()))
        .map(|r| r.answered)
        .collect();
    assert_eq!(
        answered_hung.len(),
        1,
        "the hung attempt is still hanging; its retry was answered"
    );
    let others: Vec<Instant> = stuck_log
        .iter()
        .filter(|r| r.key.as_deref() != Some(hung_key.as_str()))
        .map(|r| r.answered)
        .collect();
    assert_eq!(others.len() as u64, 3 * TICKETS - 1);
    let last_other = others.iter().max().unwrap();
    assert!(
        *last_other < answered_hung[0],
        "a request was answered {:?} after the hung one",
        last_other.duration_since(answered_hung[0])
    );
    assert!(
        summary["read_back"].as_u64().unwrap() > TICKETS / 2,
        "the tickets behind the hung one waited whole: {}",
        summary["read_back"]
    );

    eprintln!(
        "without the hang: {steady_wall:?}, peak {steady_peak_kb} kB; with it: peak {stuck_peak_kb} kB, {} tickets read back",
        summary["read_back"]
    );
    // Memory stays flat, and what is written is what an unhindered build writes.
    assert!(
        stuck_peak_kb as f64 <= steady_peak_kb as f64 * 1.10,
        "peak memory {stuck_peak_kb} kB with the hang, {steady_peak_kb} kB without"
    );
    let written = outputs(&stuck);
    assert_eq!(
        written
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        [
            "README.md",
            "tickets.csv",
            "tickets.jsonl",
            "tickets.lineage.parquet",
            "tickets.parquet"
        ]
    );
    assert!(written == outputs(&steady), "the files differ");
}
