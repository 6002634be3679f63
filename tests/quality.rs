//! The quality gate (issue 12): bad answers are redrawn, duplicate tickets resolved, nothing that
//! fails a check is written, and the cache keeps every paid draw.
//!
//! The example dataset (checks on every node) runs against the mock LLM, whose answers a
//! [`Rewrite`] makes bad for chosen requests: a reply in the wrong language, a placeholder, tags
//! that are not tags, a copy of another ticket's reply.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::mock_llm::{Asking, MockConfig, MockServer, Rewrite};
use crate::support::{Project, example_on, read_jsonl, stat};

/// The example's nodes, each with a phrase only its prompt holds.
const NODES: [(&str, &str); 7] = [
    ("topic", "Name one concrete issue"),
    ("subject", "subject line"),
    ("body", "Write the body of a support email"),
    ("tags", "lowercase English tags"),
    ("paraphrase", "Rewrite this support email"),
    ("translation", "Translate this support email"),
    ("first_response", "Write the first response"),
];

fn node_of(text: &str) -> &'static str {
    NODES
        .iter()
        .find(|(_, marker)| text.contains(marker))
        .map_or("?", |(node, _)| node)
}

/// The language code a first response is asked for in.
fn language_of(text: &str) -> &str {
    text.split("(language code ")
        .nth(1)
        .and_then(|rest| rest.get(..2))
        .unwrap_or("EN")
}

fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

const ENGLISH_REPLY: &str = "Hello, thank you for your message about the problem with your account. \
    We have looked into the invoice and the order you mentioned, and we will send you an update \
    within two working days. Please keep your order number ready when you reply. Best regards, \
    the support team";
const PLACEHOLDER_BODY: &str = "Hello team, since the last update our invoice export stops with \
    an error and we cannot send any invoices to our customers this week. Could you please look \
    into it and tell us what to do next? Best regards, [Your Name]";
const BAD_TAGS: &str = r#"{"items": ["Subject:", "billing", "Refund Request", "invoice"]}"#;
const COPIED_REPLY: &str = "Hello, many thanks for getting in touch with us about this issue. We \
    have forwarded your request to the responsible team, who will check the details and contact \
    you again by tomorrow afternoon at the latest. Kind regards, Jordan from the support team";

/// Replies must be unique, and a duplicate is redrawn from the reply itself.
fn unique_replies(p: &Project) {
    p.edit(
        "dataset.toml",
        "unique = [\"body\"]",
        "unique = [\"first_response\"]\nredraw_from = \"first_response\"",
    );
}

/// Bad answers for the first request of chosen prompts, counted per node.
#[derive(Default)]
struct BadAnswers {
    seen: HashSet<u64>,
    given: BTreeMap<&'static str, u64>,
    copies: u64,
    /// The prompt whose every answer is bad (its ticket fails).
    always: Option<u64>,
}

impl BadAnswers {
    fn rewrite(&mut self, asking: &Asking<'_>) -> Option<String> {
        let node = node_of(asking.text);
        let prompt = hash(asking.text);
        let first = self.seen.insert(prompt);
        if node == "body" && *self.always.get_or_insert(prompt) == prompt {
            *self.given.entry(node).or_default() += 1;
            return Some(PLACEHOLDER_BODY.to_string());
        }
        if !first {
            return None;
        }
        let answer = match node {
            "body" if prompt % 5 == 0 => PLACEHOLDER_BODY,
            "tags" if prompt % 5 == 0 => BAD_TAGS,
            "first_response" if language_of(asking.text) != "EN" && prompt % 4 == 0 => {
                ENGLISH_REPLY
            }
            "first_response" if language_of(asking.text) == "EN" && prompt % 3 == 0 => {
                self.copies += 1;
                return Some(COPIED_REPLY.to_string());
            }
            _ => return None,
        };
        *self.given.entry(node).or_default() += 1;
        Some(answer.to_string())
    }
}

fn rewriting(bad: &Arc<Mutex<BadAnswers>>) -> Rewrite {
    let bad = Arc::clone(bad);
    Rewrite(Arc::new(move |asking| bad.lock().unwrap().rewrite(asking)))
}

/// Mock requests per node.
fn requests_per_node(mock: &MockServer) -> BTreeMap<&'static str, u64> {
    let mut per = BTreeMap::new();
    for logged in mock.log() {
        let text = logged.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["content"].as_str())
                    .collect::<String>()
            })
            .unwrap_or_default();
        *per.entry(node_of(&text)).or_default() += 1;
    }
    per
}

#[test]
fn issue_12_bad_answers_are_redrawn_exactly_and_none_is_written() {
    let bad = Arc::new(Mutex::new(BadAnswers::default()));
    let mock = MockServer::start(MockConfig {
        rewrite: Some(rewriting(&bad)),
        ..MockConfig::default()
    });
    // One ticket at a time: the mock's "always bad" body is the first to arrive, so which ticket
    // fails (and so which answers are asked for at all) must not depend on timing.
    let p = example_on(&mock, 40, 1, "");
    unique_replies(&p);
    let run = p.run(&["build", "--json"]);
    assert_eq!(run.code, 1, "one ticket fails: {}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let bad = bad.lock().unwrap();

    // No draw was paid twice, and each node was asked exactly for its answers and redraws.
    let per_key = mock.requests_per_key();
    assert!(per_key.values().all(|n| *n == 1), "a key was asked twice");
    let asked = requests_per_node(&mock);
    for (node, _) in NODES {
        let generated = stat(&summary, node, "generated");
        assert_eq!(asked.get(node).copied().unwrap_or(0), generated, "{node}");
        let rejected = stat(&summary, node, "rejected");
        let given = bad.given.get(node).copied().unwrap_or(0);
        assert_eq!(
            rejected, given,
            "{node}: every bad answer, and only they, rejected"
        );
    }
    assert!(bad.given["body"] >= 3 && bad.given.contains_key("tags"));
    assert!(bad.given.contains_key("first_response") && bad.copies >= 2);
    // The cost report counts the rejected draws as spent, per node.
    let cost: serde_json::Value = serde_json::from_str(&p.run(&["cost", "--json"]).stdout).unwrap();
    for node in cost["nodes"].as_array().unwrap() {
        let given = bad
            .given
            .get(node["name"].as_str().unwrap())
            .copied()
            .unwrap_or(0);
        assert_eq!(node["rejected_draws"], given, "{node}");
        assert_eq!(
            node["rejected_usd"].as_f64().unwrap() > 0.0,
            given > 0,
            "{node}"
        );
    }
    let duplicates = &summary["duplicates"];
    assert_eq!(duplicates["exact_resolved"], bad.copies - 1);
    assert_eq!(duplicates["exact_dropped"], 0);

    // The dataset holds none of the bad answers.
    let rows = read_jsonl(&p.file("out/tickets.jsonl"));
    assert_eq!(rows.len(), 39);
    let mut replies = HashSet::new();
    for row in &rows {
        let text = |column: &str| row[column].to_string();
        assert!(!text("body").contains("[Your Name]"), "{}", text("body"));
        assert!(!text("tags").contains("Subject:"), "{}", text("tags"));
        if row["language"] != "EN" {
            assert!(!text("first_response").contains("We have looked into the invoice"));
        }
        assert!(
            replies.insert(text("first_response")),
            "a copied reply was written"
        );
    }
    // The failed ticket is in the failures file with each draw's reason, and the summary says why.
    let failures = p.read("out/tickets.failures.jsonl");
    assert_eq!(failures.lines().count(), 1, "{failures}");
    assert!(failures.contains("\"node\":\"body\""), "{failures}");
    assert!(failures.contains("all 3 draws rejected"), "{failures}");
    assert!(failures.contains("draw 2: reject pattern"), "{failures}");
    let text = p.run(&["build"]).stdout;
    assert!(text.contains("body: "), "{text}");
    assert!(
        text.contains("draws rejected by its checks (reject pattern"),
        "{text}"
    );

    // A rebuild asks nothing and writes the same bytes (the failed ticket fails again from the
    // cache: its three draws are judged, not paid for again).
    let before = p.snapshot("out");
    let requests = mock.requests();
    let again = p.run(&["build", "--json"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert_eq!(mock.requests(), requests, "the rebuild called the model");
    assert_eq!(p.snapshot("out"), before);
}

#[test]
fn issue_12_a_stricter_check_rejudges_the_cache_and_asks_only_for_what_now_fails() {
    let mock = MockServer::start(MockConfig::default());
    let p = example_on(&mock, 30, 8, "");
    assert_eq!(p.run(&["build"]).code, 0);
    let rows = read_jsonl(&p.file("out/tickets.jsonl"));
    let words = |row: &serde_json::Map<String, serde_json::Value>| {
        row["first_response"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count()
    };
    let mut counts: Vec<usize> = rows.iter().map(words).collect();
    counts.sort_unstable();
    let limit = counts[counts.len() / 2];
    let failing: HashSet<String> = rows
        .iter()
        .filter(|row| words(row) > limit)
        .map(|row| row["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(!failing.is_empty() && failing.len() < rows.len());

    let requests = mock.requests();
    p.edit(
        "dataset.toml",
        "[nodes.first_response.checks]\nlanguage = \"ticket\"\nmin_words = 30\nmax_words = 400",
        &format!("[nodes.first_response.checks]\nlanguage = \"ticket\"\nmin_words = 30\nmax_words = {limit}"),
    );
    let run = p.run(&["build", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    for (node, _) in NODES.iter().filter(|(n, _)| *n != "first_response") {
        assert_eq!(stat(&summary, node, "generated"), 0, "{node}");
    }
    // Every new request is a first response of a ticket whose cached one is now too long.
    let new: Vec<String> = mock.log()[requests as usize..]
        .iter()
        .map(|l| l.body["messages"].to_string())
        .collect();
    assert!(
        new.len() >= failing.len(),
        "{} < {}",
        new.len(),
        failing.len()
    );
    for request in &new {
        assert_eq!(node_of(request), "first_response");
        assert!(
            failing
                .iter()
                .any(|subject| request.contains(&json_escaped(subject))),
            "a request for a ticket that passes: {request}"
        );
    }
    assert!(stat(&summary, "first_response", "rejected") >= failing.len() as u64);
}

/// `text` as it appears inside a JSON string.
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap();
    quoted[1..quoted.len() - 1].to_string()
}

#[test]
fn issue_12_a_kill_between_a_rejected_draw_and_its_redraw_loses_and_repays_nothing() {
    // Every reply's first draw has a placeholder; answers take a while, so the build is killed
    // with the redraw in flight.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let rewrite = {
        let seen = Arc::clone(&seen);
        Rewrite(Arc::new(move |asking: &Asking<'_>| {
            let first = seen.lock().unwrap().insert(hash(asking.text));
            (node_of(asking.text) == "first_response" && first)
                .then(|| ENGLISH_REPLY.replace("the support team", "[Your Name]"))
        }))
    };
    let mock = MockServer::start(MockConfig {
        latency_ms: 200,
        rewrite: Some(rewrite),
        ..MockConfig::default()
    });
    let p = example_on(&mock, 6, 6, "");
    let mut child = p
        .command(&["build", "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a redraw to arrive: the build asks for it only once the rejected draw it
    // replaces is durable. Then kill the build with the redraw in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rejected_first_draws: Vec<String> = loop {
        let mut first_keys: BTreeMap<u64, String> = BTreeMap::new();
        let mut redrawn = Vec::new();
        for (key, body) in mock.arrivals() {
            let text = body["messages"].to_string();
            if node_of(&text) != "first_response" {
                continue;
            }
            let key = key.unwrap_or_default();
            match first_keys.get(&hash(&text)) {
                Some(first) => redrawn.push(first.clone()),
                None => {
                    first_keys.insert(hash(&text), key);
                }
            }
        }
        if !redrawn.is_empty() {
            break redrawn;
        }
        assert!(Instant::now() < deadline, "no redraw was asked for");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let before = mock.requests();

    let run = p.run(&["build", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The rejected draws whose redraws were in flight were kept: judged again, not asked again.
    let asked_again: Vec<String> = mock.arrivals()[before as usize..]
        .iter()
        .filter_map(|(key, _)| key.clone())
        .filter(|key| rejected_first_draws.contains(key))
        .collect();
    assert!(asked_again.is_empty(), "paid again: {asked_again:?}");
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rejected = stat(&summary, "first_response", "rejected");
    assert!(rejected >= rejected_first_draws.len() as u64, "{rejected}");
    let rows = read_jsonl(&p.file("out/tickets.jsonl"));
    assert!(
        rows.iter()
            .all(|r| !r["first_response"].to_string().contains("[Your Name]"))
    );
}

#[test]
fn issue_12_identical_answers_for_a_queue_converge_to_one_dataset_at_any_concurrency() {
    // Every reply of the billing queue is the same (per language) for the first three draws of
    // a ticket; later draws (the model's seed plus the draw) are the mock's own.
    let rewrite = Rewrite(Arc::new(|asking: &Asking<'_>| {
        let billing = asking.text.contains("in the Billing and Payments team");
        let early = asking.seed.is_some_and(|seed| seed < 4);
        (node_of(asking.text) == "first_response" && billing && early)
            .then(|| COPIED_REPLY.to_string())
    }));
    // One mock for both builds: its address is part of every key.
    let mock = MockServer::start(MockConfig {
        rewrite: Some(rewrite),
        ..MockConfig::default()
    });
    let build = |concurrency: u64| {
        let p = example_on(&mock, 40, concurrency, "seed = 1");
        unique_replies(&p);
        // The reply is in English whatever the ticket's language: check only what dedup is about.
        p.edit(
            "dataset.toml",
            "[nodes.first_response.checks]\nlanguage = \"ticket\"",
            "[nodes.first_response.checks]",
        );
        let run = p.run(&["build", "--json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        (p.snapshot("out"), summary["duplicates"].clone())
    };
    let (one, duplicates) = build(1);
    let (many, again) = build(64);
    assert!(one == many, "concurrency changed the dataset");
    assert_eq!(duplicates, again);
    assert!(
        duplicates["exact_resolved"].as_u64().unwrap() >= 2,
        "{duplicates}"
    );
    assert_eq!(duplicates["exact_dropped"], 0, "{duplicates}");
    assert_eq!(duplicates["near_remaining"], 0, "{duplicates}");
}

/// A value as duplicate detection compares it: lower case, digit runs as `0`, words only.
fn normalised(text: &str) -> String {
    let mut out = String::new();
    let mut digits = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_numeric() {
            if !digits {
                out.push('0');
            }
            digits = true;
            continue;
        }
        digits = false;
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    out.trim().to_string()
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 4,
        failure_persistence: None,
        rng_seed: crate::support::proptest_seed(),
        ..proptest::test_runner::Config::default()
    })]

    /// Whatever share of a mock's answers is bad, a build with checks on writes no exact
    /// duplicate in a unique column, and every answer it used passes its node's checks (`status`
    /// re-judges them all and finds nothing to redraw).
    #[test]
    fn a_written_dataset_has_no_duplicate_and_no_value_failing_its_checks(
        seed in 0u64..1_000,
        bad_percent in 0u64..60,
    ) {
        let rewrite = Rewrite(Arc::new(move |asking: &Asking<'_>| {
            if hash(asking.key) % 100 >= bad_percent {
                return None;
            }
            let answer = match node_of(asking.text) {
                "subject" => "Subject: invoice problem",
                "body" => PLACEHOLDER_BODY,
                "tags" => BAD_TAGS,
                "first_response" if language_of(asking.text) == "EN" => COPIED_REPLY,
                "first_response" => ENGLISH_REPLY,
                _ => return None,
            };
            Some(answer.to_string())
        }));
        let mock = MockServer::start(MockConfig { rewrite: Some(rewrite), ..MockConfig::default() });
        let p = example_on(&mock, 25, 8, "");
        p.edit("dataset.toml", "seed = 42", &format!("seed = {seed}"));
        unique_replies(&p);
        let run = p.run(&["build"]);
        proptest::prop_assert!(run.code == 0 || run.code == 1, "{}", run.stderr);

        let mut seen = HashSet::new();
        for row in read_jsonl(&p.file("out/tickets.jsonl")) {
            let reply = normalised(row["first_response"].as_str().unwrap());
            proptest::prop_assert!(seen.insert(reply.clone()), "a duplicate reply: {reply}");
        }
        let status = p.run(&["status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        for node in status["nodes"].as_array().unwrap() {
            proptest::prop_assert_eq!(&node["to_generate"], 0, "{}", node);
        }
    }
}

/// The offline model redraws like any model: a paraphrase its length check rejects is drawn
/// again, and the translation still recognizes (and translates) the paraphrase that passed,
/// whichever draw wrote it. (It looked under its own seed only: those tickets failed.)
#[test]
fn an_offline_paraphrase_drawn_again_is_still_translated() {
    let p = Project::example();
    p.edit(
        "dataset.toml",
        "language = \"EN\"\nmin_words = 30\nmax_words = 400",
        "language = \"EN\"\nmin_words = 30\nmax_words = 95",
    );
    let summary = p.build_json(&[]);
    assert!(stat(&summary, "paraphrase", "rejected") > 0, "{summary}");
    assert_eq!(stat(&summary, "translation", "failed"), 0, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["written"], 200, "{summary}");
}
