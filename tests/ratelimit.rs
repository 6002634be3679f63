//! Polite at full speed (issue 18): a build paces itself to the rate limit the server reports in
//! its headers, instead of finding it with 429s.
//!
//! The mock enforces a requests- or tokens-per-minute token bucket (full at start, like a key
//! that has been idle) and describes it in OpenAI's or Anthropic's headers. Each test builds 600
//! calls (200 tickets of three nodes, 16 in flight) and reads from the mock's log how long the
//! build took against the least the bucket allows, how many attempts were rejected, and how often
//! one call was tried.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::mock_llm::{
    HeaderStyle, Logged, MockConfig, MockServer, RateLimit, reserved_tokens,
};
use crate::support::{Project, Run};

const TICKETS: u64 = 200;
const KEY_ENV: &str = "TB_RATELIMIT_TEST_KEY";

/// Three nodes per ticket against the mock; `model` completes `[models.default]`.
fn project(mock: &MockServer, model: &str) -> Project {
    let p = Project::empty();
    p.write(
        "dataset.toml",
        &format!(
            r#"[dataset]
name = "paced"
rows = {TICKETS}
seed = 5
formats = ["jsonl"]
concurrency = 64

[tables.queue]
"IT Support" = 1
"Billing and Payments" = 1

[models.default]
model = "mock"
base_url = "{}"
api_key_env = "{KEY_ENV}"
max_concurrency = 16
{model}

[cost.prices.mock]
input = 0.15
output = 0.60

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
        "Name one issue a customer of ticket {{ ticket_id }} raises with the {{ queue }} team.",
    );
    p.write(
        "prompts/subject.jinja",
        "Write a subject line about: {{ topic }}",
    );
    p.write(
        "prompts/body.jinja",
        "Write the email body for \"{{ subject }}\" about {{ topic }}.",
    );
    p
}

/// What a paced build did, from the build's summary and the mock's log.
struct Paced {
    summary: Value,
    wall: Duration,
    attempts: usize,
    rejected: usize,
    most_attempts_of_one_call: u64,
    log: Vec<Logged>,
}

fn build(p: &Project, mock: &MockServer) -> Paced {
    let started = Instant::now();
    let run = Run::from(
        p.command(&["build", "--json", "--no-progress"])
            .env(KEY_ENV, "sk-ratelimit-test")
            .output()
            .expect("run ticketbuild"),
    );
    let wall = started.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout).expect("the summary is JSON");
    assert_eq!(summary["written"], summary["tickets"]);
    let log = mock.log();
    let mut per_key: HashMap<String, u64> = HashMap::new();
    for request in &log {
        *per_key
            .entry(request.key.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let paced = Paced {
        wall,
        attempts: log.len(),
        rejected: log.iter().filter(|r| r.status == 429).count(),
        most_attempts_of_one_call: per_key.values().copied().max().unwrap_or(0),
        summary,
        log,
    };
    eprintln!(
        "{} attempts, {} answered 429, at most {} for one call, {:.1} s",
        paced.attempts,
        paced.rejected,
        paced.most_attempts_of_one_call,
        paced.wall.as_secs_f64()
    );
    paced
}

/// The done-when bounds: within 10% of the bucket's minimum, at most 5% of attempts rejected,
/// no call tried more than five times; and the summary counts what the mock saw.
fn assert_polite(paced: &Paced, minimum: Duration) {
    assert!(
        paced.wall.as_secs_f64() <= minimum.as_secs_f64() * 1.10,
        "{:.1} s against a minimum of {:.1} s",
        paced.wall.as_secs_f64(),
        minimum.as_secs_f64()
    );
    assert!(
        paced.rejected * 20 <= paced.attempts,
        "{} of {} attempts answered 429",
        paced.rejected,
        paced.attempts
    );
    assert!(paced.most_attempts_of_one_call <= 5);
    let model = &paced.summary["models"][0];
    assert_eq!(model["attempts"], paced.attempts as u64, "{model}");
    assert_eq!(model["throttled"], paced.rejected as u64, "{model}");
}

#[test]
fn issue_18_600_calls_against_a_300_rpm_bucket_run_at_its_pace_without_a_retry_storm() {
    let mock = MockServer::start(MockConfig {
        rate_limit: Some(RateLimit::requests_per_minute(300)),
        ..MockConfig::default()
    });
    let p = project(&mock, "provider = \"openai-compatible\"");
    let paced = build(&p, &mock);
    assert_eq!(paced.attempts - paced.rejected, 3 * TICKETS as usize);
    // 300 at once from the full bucket, then the other 300 at 5 a second.
    assert_polite(&paced, Duration::from_secs(60));
    let model = &paced.summary["models"][0];
    assert_eq!(model["reported_requests_per_minute"], 300, "{model}");
    assert!(
        model["rate_limit_wait_ms"].as_u64().unwrap() > 30_000,
        "{model}"
    );
}

#[test]
fn issue_18_a_tokens_per_minute_bucket_with_anthropic_headers_is_followed_too() {
    // About 260 tokens a call (max_tokens 200 and the prompt), so 78,000 tokens hold about half
    // of the calls and the rest come at 1,300 tokens a second.
    let tokens_per_minute = 78_000;
    let mock = MockServer::start(MockConfig {
        rate_limit: Some(RateLimit {
            requests_per_minute: None,
            tokens_per_minute: Some(tokens_per_minute),
            headers: HeaderStyle::Anthropic,
            full_at_start: true,
            burst: None,
        }),
        ..MockConfig::default()
    });
    let p = project(&mock, "provider = \"anthropic\"\nmax_tokens = 200");
    let paced = build(&p, &mock);
    let reserved: u64 = paced
        .log
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| reserved_tokens(&r.body))
        .sum();
    let minimum = Duration::from_secs_f64(
        reserved.saturating_sub(tokens_per_minute) as f64 / (tokens_per_minute as f64 / 60.0),
    );
    assert!(
        minimum > Duration::from_secs(30),
        "{minimum:?}: the bucket hardly binds"
    );
    assert_polite(&paced, minimum);
    let model = &paced.summary["models"][0];
    assert_eq!(
        model["reported_tokens_per_minute"], tokens_per_minute,
        "{model}"
    );
}

#[test]
fn issue_18_a_limit_that_drops_mid_build_is_followed_within_seconds() {
    // 600 requests a minute with room for 10 at once, then 240 a minute from the 5th second.
    let mock = MockServer::start(MockConfig {
        rate_limit: Some(RateLimit {
            burst: Some(10),
            ..RateLimit::requests_per_minute(600)
        }),
        ..MockConfig::default()
    });
    let p = project(&mock, "provider = \"openai-compatible\"");
    p.edit("dataset.toml", &format!("rows = {TICKETS}"), "rows = 60");
    let started = Instant::now();
    let dropped = std::thread::scope(|scope| {
        let build = scope.spawn(|| {
            Run::from(
                p.command(&["build", "--json", "--no-progress"])
                    .env(KEY_ENV, "sk-ratelimit-test")
                    .output()
                    .expect("run ticketbuild"),
            )
        });
        std::thread::sleep(Duration::from_secs(5));
        mock.set_rate_limit(Some(240), None);
        let dropped = Instant::now();
        let run = build.join().unwrap();
        assert_eq!(run.code, 0, "{}", run.stderr);
        dropped
    });
    let log = mock.log();
    let before = log.iter().filter(|r| r.at < dropped).count();
    assert!(before >= 30, "only {before} requests before the drop");
    // From three seconds after the drop, no five-second stretch holds more than the new limit
    // allows (4 a second, plus the one the bucket may hold).
    let settled = dropped + Duration::from_secs(3);
    let after: Vec<Instant> = log
        .iter()
        .map(|r| r.at)
        .filter(|at| *at >= settled)
        .collect();
    assert!(after.len() >= 40, "{} requests after the drop", after.len());
    for (i, start) in after.iter().enumerate() {
        let within = after[i..]
            .iter()
            .take_while(|at| **at < *start + Duration::from_secs(5))
            .count();
        assert!(
            within <= 22,
            "{within} requests in 5 s after the limit fell to 4 a second"
        );
    }
    let rejected = log.iter().filter(|r| r.status == 429).count();
    assert!(
        rejected * 20 <= log.len(),
        "{rejected} of {} answered 429",
        log.len()
    );
    eprintln!(
        "limit drop: {} requests, {rejected} answered 429, {:.1} s",
        log.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn issue_18_a_server_without_headers_still_completes_with_the_configured_limits() {
    // 300 a minute with room for 10 at once, and not a word about it but Retry-After.
    let mock = MockServer::start(MockConfig {
        rate_limit: Some(RateLimit {
            headers: HeaderStyle::None,
            burst: Some(10),
            ..RateLimit::requests_per_minute(300)
        }),
        ..MockConfig::default()
    });
    let p = project(
        &mock,
        "provider = \"openai-compatible\"\nrequests_per_minute = 300",
    );
    p.edit("dataset.toml", &format!("rows = {TICKETS}"), "rows = 20");
    let paced = build(&p, &mock);
    assert_eq!(paced.summary["written"], 20);
    assert!(
        paced.rejected * 20 <= paced.attempts,
        "{} of {} attempts answered 429",
        paced.rejected,
        paced.attempts
    );
    let model = &paced.summary["models"][0];
    assert!(model["reported_requests_per_minute"].is_null(), "{model}");
}

#[test]
fn issue_18_a_server_that_rejects_most_attempts_pauses_the_model_once_said() {
    // 120 a minute with room for 5, nothing said but Retry-After, and no limit configured: the
    // first attempts mostly bounce, and the model pauses as a whole instead of every call
    // retrying on its own.
    let mock = MockServer::start(MockConfig {
        rate_limit: Some(RateLimit {
            headers: HeaderStyle::None,
            burst: Some(5),
            ..RateLimit::requests_per_minute(120)
        }),
        ..MockConfig::default()
    });
    let p = project(&mock, "provider = \"openai-compatible\"");
    p.edit("dataset.toml", &format!("rows = {TICKETS}"), "rows = 10");
    let run = Run::from(
        p.command(&["build", "--json", "--no-progress"])
            .env(KEY_ENV, "sk-ratelimit-test")
            .output()
            .expect("run ticketbuild"),
    );
    assert!(run.code == 0 || run.code == 1, "{}", run.stderr);
    let said = run
        .stderr
        .matches("model `mock`: the server rejected")
        .count();
    assert_eq!(said, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("set `requests_per_minute` or `tokens_per_minute`"),
        "{}",
        run.stderr
    );
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    let model = &summary["models"][0];
    let log = mock.log();
    assert_eq!(model["attempts"], log.len() as u64);
    eprintln!("rejecting server: {model}; written {}", summary["written"]);
}
