//! Batch mode against the mock's batch APIs (OpenAI Files + Batches, Anthropic Message Batches)
//! on 127.0.0.1: the dataset equals the synchronous build's at the batch price, no custom id is
//! submitted twice unless the provider did not answer it, a batch created by a build killed before
//! it recorded the batch is found again, and expired, cancelled and failed requests, errors files
//! and results in any order are handled, with the requests counted.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::mock_llm::{BatchConfig, MockConfig, MockServer};
use crate::support::{Project, Run, example_on};

const KEY_ENV: &str = "TB_BATCH_TEST_KEY";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Api {
    OpenAi,
    Together,
    OpenRouter,
    Anthropic,
}

const EVERY_API: [Api; 4] = [Api::OpenAi, Api::Together, Api::OpenRouter, Api::Anthropic];

fn mock(batch: BatchConfig) -> MockServer {
    MockServer::start(MockConfig {
        batch,
        ..MockConfig::default()
    })
}

/// A mock whose batch APIs speak `api`'s dialect.
fn mock_for(api: Api, batch: BatchConfig) -> MockServer {
    mock(BatchConfig {
        together: api == Api::Together,
        ..batch
    })
}

/// The example on `mock` with `rows` tickets, its model at half price in batches.
fn project(mock: &MockServer, rows: u64, api: Api, batch: bool) -> Project {
    let p = example_on(mock, rows, 16, if batch { "batch = true" } else { "" });
    p.edit(
        "dataset.toml",
        "[cost.prices.mock]\ninput = 0.5\noutput = 1.5",
        "[cost.prices.mock]\ninput = 0.5\noutput = 1.5\nbatch_input = 0.25\nbatch_output = 0.75",
    );
    let provider = match api {
        Api::OpenAi => return p,
        Api::Together => "together",
        Api::OpenRouter => "openrouter",
        Api::Anthropic => "anthropic",
    };
    p.edit(
        "dataset.toml",
        "provider = \"openai-compatible\"",
        &format!("provider = \"{provider}\"\napi_key_env = \"{KEY_ENV}\""),
    );
    p
}

fn run(p: &Project, args: &[&str]) -> Run {
    Run::from(
        p.command(args)
            .env(KEY_ENV, "sk-batch-test")
            .output()
            .unwrap(),
    )
}

/// `build --wait`, polling every 50 ms; its JSON summary.
fn build_waiting(p: &Project) -> Value {
    let run = run(p, &["build", "--wait", "--poll-secs", "0.05", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

/// The ledger's batches, oldest first.
fn ledger(p: &Project) -> Vec<Value> {
    let run = run(p, &["batches", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str::<Vec<Value>>(&run.stdout).unwrap()
}

fn keys(record: &Value) -> BTreeSet<String> {
    record["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// The dataset's files (not the card and report, which tell how the build went).
fn dataset(p: &Project) -> Vec<(String, Vec<u8>)> {
    p.snapshot("out")
        .into_iter()
        .filter(|(name, _)| name.starts_with("tickets."))
        .collect()
}

fn spent(summary: &Value) -> f64 {
    summary["cost_by_model"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum()
}

fn waits_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn issue_15_a_batch_build_equals_the_synchronous_one_at_half_the_cost() {
    let mock = mock(BatchConfig {
        complete_after_ms: 100,
        ..BatchConfig::default()
    });
    let sync = project(&mock, 1000, Api::OpenAi, false);
    let run_sync = run(&sync, &["build", "--json"]);
    assert_eq!(run_sync.code, 0, "{}", run_sync.stderr);
    let sync_summary: Value = serde_json::from_str(&run_sync.stdout).unwrap();
    let sync_requests = mock.requests();

    let batched = project(&mock, 1000, Api::OpenAi, true);
    // Without --wait: the first level is submitted, and the build says so with exit code 75.
    let first = run(&batched, &["build"]);
    assert_eq!(first.code, 75, "{}", first.stderr);
    assert!(
        first.stderr.contains("batches submitted")
            && first.stderr.contains("run `ticketbuild build` again"),
        "{}",
        first.stderr
    );
    assert!(
        !batched.file("out/tickets.jsonl").exists(),
        "nothing half-written"
    );
    let summary = build_waiting(&batched);
    assert_eq!(mock.requests(), sync_requests, "no synchronous call");
    assert_eq!(summary["written"], 1000);
    assert_eq!(dataset(&batched), dataset(&sync), "byte-identical files");

    let submitted = mock.batch_submissions();
    let twice: Vec<_> = submitted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "submitted twice: {twice:?}");
    let records = ledger(&batched);
    let in_ledger: usize = records.iter().map(|r| keys(r).len()).sum();
    assert_eq!(in_ledger, submitted.len());
    assert!(records.iter().all(|r| r["state"] == "done"), "{records:?}");
    let ledger_cost: f64 = records
        .iter()
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    let sync_cost = spent(&sync_summary);
    assert!(sync_cost > 0.0);
    assert!(
        (ledger_cost - sync_cost / 2.0).abs() < 1e-9 * sync_cost,
        "batch {ledger_cost} vs synchronous {sync_cost}"
    );
    // The answers' own records are priced at batch rates too.
    let cost_run = run(&batched, &["cost", "--json"]);
    assert_eq!(cost_run.code, 0, "{}", cost_run.stderr);
}

#[test]
fn issue_15_errors_in_results_and_random_order_are_handled_for_every_api() {
    for api in EVERY_API {
        let mock = mock_for(
            api,
            BatchConfig {
                complete_after_ms: 50,
                error_share: 0.2,
                shuffle: true,
                ..BatchConfig::default()
            },
        );
        let sync = project(&mock, 60, api, false);
        let run_sync = run(&sync, &["build"]);
        assert_eq!(run_sync.code, 0, "{api:?}: {}", run_sync.stderr);
        let batched = project(&mock, 60, api, true);
        build_waiting(&batched);
        assert_eq!(dataset(&batched), dataset(&sync), "{api:?}");
        let submitted = mock.batch_submissions();
        let failed_once = submitted.values().filter(|n| **n == 2).count();
        assert!(
            failed_once > 0,
            "{api:?}: the mock failed some requests the first time"
        );
        assert!(
            submitted.values().all(|n| *n <= 2),
            "{api:?}: {submitted:?}"
        );
        // Every failure is in the ledger's counts, and was submitted again exactly once.
        let records = ledger(&batched);
        let failed: u64 = records.iter().map(|r| r["failed"].as_u64().unwrap()).sum();
        assert_eq!(failed as usize, failed_once, "{api:?}");
        let answered: u64 = records
            .iter()
            .map(|r| r["succeeded"].as_u64().unwrap())
            .sum();
        assert_eq!(answered as usize, submitted.len(), "{api:?}");
    }
}

#[test]
fn issue_15_an_expired_batch_is_collected_and_only_the_rest_resubmitted() {
    // The batch runs for 2 s: long enough that the second build finds it running even on a
    // loaded machine (with 400 ms, a slow start-up found it done and collected it).
    let mock = mock(BatchConfig {
        complete_after_ms: 2000,
        expire_done_share: Some(0.6),
        ..BatchConfig::default()
    });
    let p = project(&mock, 40, Api::OpenAi, true);
    assert_eq!(run(&p, &["build"]).code, 75);
    // While the batch runs, a build submits nothing again.
    let again = run(&p, &["build"]);
    assert_eq!(again.code, 75, "{}", again.stderr);
    assert!(
        again.stderr.contains("0 requests in 0 batches submitted"),
        "{}",
        again.stderr
    );
    assert_eq!(mock.batches_created(), 1);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(run(&p, &["build"]).code, 75);
    let records = ledger(&p);
    assert_eq!(records.len(), 2, "{records:?}");
    let first = keys(&records[0]);
    let answered = (first.len() as f64 * 0.6).round() as usize;
    assert_eq!(records[0]["succeeded"], answered as u64);
    assert_eq!(records[0]["failed"], (first.len() - answered) as u64);
    let resubmitted: BTreeSet<String> = keys(&records[1]).intersection(&first).cloned().collect();
    assert_eq!(
        resubmitted.len(),
        first.len() - answered,
        "only the other 40%"
    );
    let submitted = mock.batch_submissions();
    for key in &first {
        let expected = if resubmitted.contains(key) { 2 } else { 1 };
        assert_eq!(submitted[key], expected, "{key}");
    }
}

#[test]
fn issue_15_a_cancelled_batch_keeps_its_answers_and_the_rest_is_resubmitted() {
    let mock = mock(BatchConfig {
        complete_after_ms: 2000,
        ..BatchConfig::default()
    });
    let p = project(&mock, 30, Api::Anthropic, true);
    assert_eq!(run(&p, &["build"]).code, 75);
    std::thread::sleep(Duration::from_millis(700));
    let cancel = run(&p, &["batches", "cancel", "--all"]);
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    assert!(
        cancel.stdout.contains("cancelled msgbatch_"),
        "{}",
        cancel.stdout
    );
    let listed = run(&p, &["batches"]);
    assert!(
        listed.stdout.contains("canceling") || listed.stdout.contains("ended"),
        "{}",
        listed.stdout
    );
    assert_eq!(run(&p, &["build"]).code, 75);
    let records = ledger(&p);
    assert_eq!(records.len(), 2, "{records:?}");
    let first = keys(&records[0]);
    let answered = records[0]["succeeded"].as_u64().unwrap() as usize;
    assert!(
        answered > 0 && answered < first.len(),
        "part answered: {answered}"
    );
    let second = keys(&records[1]);
    let resubmitted = second.intersection(&first).count();
    assert_eq!(resubmitted, first.len() - answered);
    let submitted: HashMap<String, u64> = mock.batch_submissions();
    assert!(first.iter().all(|k| submitted[k] <= 2));
    assert_eq!(
        first.iter().filter(|k| submitted[*k] == 1).count(),
        answered
    );
}

#[test]
fn issue_15_a_batch_created_by_a_killed_build_is_found_and_not_submitted_again() {
    for api in EVERY_API {
        let mock = mock_for(
            api,
            BatchConfig {
                complete_after_ms: 100,
                create_reply_delay_ms: 1500,
                ..BatchConfig::default()
            },
        );
        let p = project(&mock, 12, api, true);
        let mut child = p
            .command(&["build"])
            .env(KEY_ENV, "sk-batch-test")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The batch exists at the provider; the build has not heard back yet.
        waits_until("the batch", || mock.batches_created() == 1);
        child.kill().unwrap();
        child.wait().unwrap();
        // The next build finds the batch in the provider's listing (collecting it, as it ended)
        // and submits none of its requests again: only the next node's.
        let again = run(&p, &["build"]);
        assert_eq!(again.code, 75, "{api:?}: {}", again.stderr);
        let records = ledger(&p);
        assert_eq!(records.len(), 2, "{api:?}: {records:?}");
        assert!(records[0]["id"].is_string(), "{api:?}: {records:?}");
        assert_eq!(records[0]["succeeded"], 12, "{api:?}: {records:?}");
        assert!(keys(&records[0]).is_disjoint(&keys(&records[1])), "{api:?}");
        assert_eq!(mock.batches_created(), 2, "{api:?}");
        build_waiting(&p);
        let submitted = mock.batch_submissions();
        assert!(
            submitted.values().all(|n| *n == 1),
            "{api:?}: {submitted:?}"
        );
        assert_eq!(
            crate::support::read_jsonl(&p.file("out/tickets.jsonl")).len(),
            12
        );
    }
}

#[test]
fn issue_15_answers_of_a_model_taken_out_of_batch_mode_are_used_not_paid_again() {
    let mock = mock(BatchConfig {
        complete_after_ms: 100,
        ..BatchConfig::default()
    });
    let p = project(&mock, 20, Api::OpenAi, true);
    assert_eq!(run(&p, &["build"]).code, 75);
    let first = keys(&ledger(&p)[0]);
    std::thread::sleep(Duration::from_millis(300));
    p.edit("dataset.toml", "batch = true", "");
    let sync = run(&p, &["build"]);
    assert_eq!(sync.code, 0, "{}", sync.stderr);
    let asked: BTreeSet<String> = mock.requests_per_key().into_keys().collect();
    assert!(!asked.is_empty());
    assert!(
        asked.is_disjoint(&first),
        "an answer collected from a batch was asked for again"
    );
    assert_eq!(ledger(&p)[0]["state"], "done");
}

#[test]
fn issue_15_the_budget_holds_the_worst_case_of_what_a_pass_submits() {
    let mock = mock(BatchConfig::default());
    let p = project(&mock, 30, Api::OpenAi, true);
    p.edit(
        "dataset.toml",
        "[cost.prices.mock]",
        "[cost]\nbudget = 0.05\n\n[cost.prices.mock]",
    );
    let run = run(&p, &["build"]);
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert!(run.stdout.contains("stopped early"), "{}", run.stdout);
    let records = ledger(&p);
    assert_eq!(records.len(), 1);
    let submitted = keys(&records[0]).len();
    // Each request's worst case: its prompt at $0.5 and 4,096 output tokens at $1.5 per million.
    let worst = 4096.0 * 1.5 / 1e6;
    assert!(submitted > 0 && submitted < 30, "{submitted}");
    assert!(submitted as f64 * worst <= 0.05, "{submitted}");
}

#[test]
fn issue_15_a_request_no_batch_answers_fails_its_ticket_after_max_attempts() {
    let mock = mock(BatchConfig {
        complete_after_ms: 50,
        error_share: 0.1,
        errors_persist: true,
        ..BatchConfig::default()
    });
    let p = project(&mock, 20, Api::OpenAi, true);
    p.edit(
        "dataset.toml",
        "batch = true",
        "batch = true\nmax_attempts = 2",
    );
    let run = run(&p, &["build", "--wait", "--poll-secs", "0.05", "--json"]);
    assert_eq!(run.code, 1, "some tickets fail: {}", run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(summary["failed"].as_u64().unwrap() > 0);
    let submitted = mock.batch_submissions();
    let failing: Vec<_> = submitted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(!failing.is_empty());
    assert!(
        failing.iter().all(|(_, n)| **n == 2),
        "each failing request submitted max_attempts times: {failing:?}"
    );
    let failures = std::fs::read_to_string(p.file("out/tickets.failures.jsonl")).unwrap();
    assert!(
        failures.contains("batches ended without answering"),
        "{failures}"
    );
}

#[test]
fn issue_15_gc_and_force_are_refused_while_they_would_lose_or_repay_batch_answers() {
    let mock = mock(BatchConfig {
        complete_after_ms: 5000,
        ..BatchConfig::default()
    });
    let p = project(&mock, 5, Api::OpenAi, true);
    assert_eq!(run(&p, &["build"]).code, 75);
    let gc = run(&p, &["cache", "gc"]);
    assert_eq!(gc.code, 1, "{}", gc.stderr);
    assert!(gc.stderr.contains("not collected"), "{}", gc.stderr);
    let forced = run(&p, &["build", "--force", "topic"]);
    assert_eq!(forced.code, 2, "{}", forced.stderr);
    assert!(
        forced.stderr.contains("asks through batches"),
        "{}",
        forced.stderr
    );
    assert_eq!(mock.batches_created(), 1);
}
