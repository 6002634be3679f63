//! Money (issue 4): per-node costs to the cent, budgets that stop before they are crossed and
//! resume from the cache, and estimates before spending, all against the mock server with set
//! token counts and prices.

use crate::support::mock_llm::{MockConfig, MockServer};
use crate::support::{Project, Run, stat, total};

/// USD per million tokens in the test projects, and the mock's fixed token counts.
const INPUT_PRICE: f64 = 0.4;
const OUTPUT_PRICE: f64 = 8.0;
const PROMPT_TOKENS: u64 = 150;
const COMPLETION_TOKENS: u64 = 60;

fn per_call() -> f64 {
    (PROMPT_TOKENS as f64 * INPUT_PRICE + COMPLETION_TOKENS as f64 * OUTPUT_PRICE) / 1_000_000.0
}

/// The example dataset on the mock, with prices for its model and `extra` lines in [cost].
fn example_on(mock: &MockServer, rows: u64, cost: &str) -> Project {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", &format!("rows = {rows}"));
    p.edit(
        "dataset.toml",
        "[models.default]\nprovider = \"offline\"",
        &format!(
            "[cost]\ncurrencies = [\"USD\", \"EUR\"]\n{cost}\n\n[cost.prices.mock]\ninput = {INPUT_PRICE}\noutput = {OUTPUT_PRICE}\n\n\
             [models.default]\nprovider = \"openai-compatible\"\nmodel = \"mock\"\nmax_tokens = {COMPLETION_TOKENS}\nbase_url = \"{}\"",
            mock.base_url()
        ),
    );
    p
}

fn fixed_mock() -> MockServer {
    MockServer::start(MockConfig {
        prompt_tokens: Some(PROMPT_TOKENS),
        completion_tokens: Some(COMPLETION_TOKENS),
        ..MockConfig::default()
    })
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr))
}

#[test]
fn issue_4_per_node_costs_equal_the_hand_computed_sums() {
    let mock = fixed_mock();
    let p = example_on(&mock, 12, "");
    let summary = p.build_json(&[]);
    let cost = p.run(&["cost", "--json"]);
    assert_eq!(cost.code, 0, "{}", cost.stderr);
    let cost = json(&cost);
    let mut total_usd = 0.0;
    for node in cost["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        let calls = stat(&summary, name, "generated") as f64;
        let expected = calls * per_call();
        let spent = node["spent_usd"].as_f64().unwrap();
        assert!(
            (spent - expected).abs() < 0.005,
            "{name}: {spent} != {expected}"
        );
        assert!(
            (spent - expected).abs() < 1e-9,
            "{name}: {spent} != {expected} (exact)"
        );
        total_usd += expected;
    }
    assert!((cost["spent_usd"].as_f64().unwrap() - total_usd).abs() < 1e-9);
    assert_eq!(mock.requests() as f64 * per_call(), total_usd);
    assert_eq!(cost["reused_usd"].as_f64().unwrap(), 0.0);
    let by_model = cost["by_model"]["default"].as_f64().unwrap();
    assert!((by_model - total_usd).abs() < 1e-9);
    let by_language: f64 = cost["by_language"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((by_language - total_usd).abs() < 1e-9);

    // A rebuild spends nothing; what it reuses is reported at what it cost.
    std::fs::remove_dir_all(p.file("out")).unwrap();
    p.build_json(&[]);
    let again = json(&p.run(&["cost", "--json"]));
    assert_eq!(again["spent_usd"].as_f64().unwrap(), 0.0);
    assert!((again["reused_usd"].as_f64().unwrap() - total_usd).abs() < 1e-9);
    assert!((again["regenerate_usd"].as_f64().unwrap() - total_usd).abs() < 1e-9);

    // The human report shows every configured currency.
    let text = p.run(&["cost"]);
    assert!(text.stdout.contains("EUR "), "{}", text.stdout);
}

#[test]
fn issue_4_a_budget_at_half_the_estimate_stops_below_it_and_resumes_without_repeats() {
    let mock = fixed_mock();
    let p = example_on(&mock, 16, "");
    let plan = json(&p.run(&["plan", "--json"]));
    let estimate = plan["cost_expected"].as_f64().unwrap();
    assert!(estimate > 0.0);
    let budget = estimate / 2.0;
    p.edit(
        "dataset.toml",
        "[cost]\n",
        &format!("[cost]\nbudget = {budget}\n"),
    );

    let run = p.run(&["build", "--json"]);
    assert_eq!(
        run.code, 1,
        "a build stopped by its budget fails: {}",
        run.stderr
    );
    let stopped = json(&run);
    assert!(
        stopped["stopped_by"].as_str().unwrap().contains("budget"),
        "{stopped}"
    );
    let paid = mock.requests() as f64 * per_call();
    assert!(
        paid <= budget + 1e-12,
        "paid {paid} over the budget {budget}"
    );
    assert!(paid > 0.0);
    let first_requests = mock.requests();
    assert!(stopped["written"].as_u64().unwrap() < 16);

    // A higher budget completes from where it stopped: no artifact is requested twice.
    p.edit(
        "dataset.toml",
        &format!("budget = {budget}\n"),
        &format!("budget = {}\n", estimate * 3.0),
    );
    let done = p.build_json(&[]);
    assert_eq!(done["written"], 16);
    assert!(total(&done, "reused") > 0);
    assert!(mock.requests() > first_requests);
    for (key, count) in mock.successes_per_key() {
        assert_eq!(count, 1, "artifact {key} was paid {count} times");
    }
}

#[test]
fn issue_4_plan_reports_nothing_to_do_on_a_cached_dataset() {
    let mock = fixed_mock();
    let p = example_on(&mock, 6, "");
    p.build_json(&[]);
    let plan = json(&p.run(&["plan", "--json"]));
    for node in plan["nodes"].as_array().unwrap() {
        assert_eq!(node["to_generate"], 0, "{node}");
    }
    assert_eq!(plan["cost_expected"].as_f64().unwrap(), 0.0);
    let dry = p.run(&["build", "--dry-run"]);
    assert!(
        dry.stdout.contains("expected cost: $0.000000"),
        "{}",
        dry.stdout
    );
}

#[test]
fn issue_4_plan_on_a_fresh_dataset_is_within_a_quarter_of_what_the_build_spends() {
    // Usage estimated from the text by the mock (characters / 4), as the plan does for models
    // without a tokenizer; outputs fixed at max_tokens.
    let mock = MockServer::start(MockConfig {
        completion_tokens: Some(COMPLETION_TOKENS),
        ..MockConfig::default()
    });
    let p = example_on(&mock, 20, "");
    let plan = json(&p.run(&["plan", "--json"]));
    let estimate = plan["cost_expected"].as_f64().unwrap();
    let requests: u64 = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["to_generate"].as_u64().unwrap())
        .sum();
    let summary = p.build_json(&[]);
    let spent: f64 = summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cost_usd"].as_f64().unwrap())
        .sum();
    assert_eq!(
        requests,
        total(&summary, "generated"),
        "the plan counts the calls exactly"
    );
    let error = (estimate - spent).abs() / spent;
    assert!(
        error < 0.25,
        "estimate {estimate} vs spent {spent}: {:.1}% off",
        error * 100.0
    );
}

#[test]
fn issue_4_unpriced_models_are_refused_before_any_call_unless_allowed() {
    let mock = fixed_mock();
    let p = example_on(&mock, 3, "");
    p.edit("dataset.toml", "[cost.prices.mock]", "[cost.prices.other]");
    let run = p.run(&["build"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("no price is known for model `default` (openai-compatible/mock)"),
        "{}",
        run.stderr
    );
    assert_eq!(mock.requests(), 0);
    let run = p.run(&["build", "--allow-unpriced", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = json(&run);
    assert!(total(&summary, "unknown_cost") > 0);
}

#[test]
fn issue_4_per_call_limits_warn_and_stop() {
    let mock = fixed_mock();
    let p = example_on(&mock, 4, &format!("warn_per_call = {}", per_call() / 2.0));
    let run = p.run(&["build", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("over warn_per_call"), "{}", run.stderr);
    let q = example_on(&mock, 4, &format!("error_per_call = {}", per_call() / 2.0));
    let before = mock.requests();
    let run = q.run(&["build", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("over error_per_call"), "{}", run.stderr);
    // Calls in flight when the limit tripped may land; nothing after them is issued.
    assert!(
        mock.requests() - before <= 64,
        "{}",
        mock.requests() - before
    );
    assert!(
        json(&run)["stopped_by"]
            .as_str()
            .unwrap()
            .contains("error_per_call")
    );
}

#[test]
fn issue_15_after_a_small_build_the_plan_expects_what_the_full_build_spends() {
    use crate::support::mock_llm::{MockConfig, MockServer};
    let mock = MockServer::start(MockConfig::default());
    let p = crate::support::example_on(&mock, 1000, 32, "");
    // Before any build the plan says it uses a prior, and expects less than the worst case.
    let before: serde_json::Value =
        serde_json::from_str(&p.run(&["plan", "--json"]).stdout).unwrap();
    assert!(
        before["nodes"][1]["output_basis"]
            .as_str()
            .unwrap()
            .starts_with("prior for a text node"),
        "{before}"
    );
    assert!(before["cost_expected"].as_f64() < before["cost_high"].as_f64());
    // A dev build (20 tickets, max_tokens 300: other keys) teaches it what each node writes.
    p.build_json(&["--profile", "dev"]);
    let plan = p.run(&["plan", "--json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    for node in plan["nodes"].as_array().unwrap() {
        assert_eq!(node["cached"], 0, "{node}");
        assert!(
            node["output_basis"]
                .as_str()
                .unwrap()
                .contains("answers of an earlier build"),
            "{node}"
        );
    }
    let expected = plan["cost_expected"].as_f64().unwrap();
    let built = p.build_json(&[]);
    let spent: f64 = built["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cost_usd"].as_f64().unwrap())
        .sum();
    let error = (expected - spent).abs() / spent;
    eprintln!(
        "expected ${expected:.4}, high ${:.4}, spent ${spent:.4} ({:.1}% off)",
        plan["cost_high"].as_f64().unwrap(),
        error * 100.0
    );
    assert!(
        error <= 0.15,
        "the plan expected ${expected:.4}, the build spent ${spent:.4}"
    );
}

#[test]
fn issue_15_plan_batch_shows_the_batch_prices_beside_the_usual_ones() {
    let mock = fixed_mock();
    let p = example_on(&mock, 30, "");
    p.edit(
        "dataset.toml",
        &format!("output = {OUTPUT_PRICE}\n"),
        &format!(
            "output = {OUTPUT_PRICE}\nbatch_input = {}\nbatch_output = {}\n",
            INPUT_PRICE / 2.0,
            OUTPUT_PRICE / 2.0
        ),
    );
    let plan = json(&p.run(&["plan", "--json"]));
    let expected = plan["cost_expected"].as_f64().unwrap();
    let batch = plan["batch_cost_expected"].as_f64().unwrap();
    assert!(expected > 0.0);
    assert!(
        (batch - expected / 2.0).abs() < 1e-9,
        "{batch} vs {expected}"
    );
    for node in plan["nodes"].as_array().unwrap() {
        let usual = node["cost_expected"].as_f64().unwrap();
        let at_batch = node["batch_cost_expected"].as_f64().unwrap();
        assert!((at_batch - usual / 2.0).abs() < 1e-9, "{node}");
    }
    let text = p.run(&["plan", "--batch"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("expected cost in batch mode:")
            && text.stdout.contains("7 of 7 nodes at batch prices"),
        "{}",
        text.stdout
    );
    // Without batch prices: said so, and the usual price stands in.
    let q = example_on(&mock, 30, "");
    let plan = json(&q.run(&["plan", "--json"]));
    assert!(plan["nodes"][0]["batch_cost_expected"].is_null());
    assert_eq!(plan["batch_cost_expected"], plan["cost_expected"]);
    let text = q.run(&["plan", "--batch"]);
    assert!(text.stdout.contains("no batch price"), "{}", text.stdout);
}
