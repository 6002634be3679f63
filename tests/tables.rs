//! Exact and conditional tables (issue 14): class counts in proportion to the weights at every
//! prefix, stable when `rows` grows, and weights that depend on another table.

use std::collections::HashMap;

use proptest::prelude::*;
use ticketbuild::config::{Config, Overrides};
use ticketbuild::language::Language;
use ticketbuild::sampling::{Sampler, Table, TableMode};

use crate::support::{Project, proptest_seed, read_jsonl};

fn languages() -> Vec<(Language, f64)> {
    vec![
        (Language::De, 3.0),
        (Language::En, 3.0),
        (Language::Fr, 1.5),
        (Language::Es, 1.5),
        (Language::Pt, 1.0),
    ]
}

fn exact(weights: &[f64], within_language: bool) -> Table {
    Table {
        mode: TableMode::Exact { within_language },
        ..Table::weighted(
            "queue",
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("q{i}"), *w))
                .collect(),
        )
    }
}

/// Checks that after every ticket of a group, each category is within one of its quota.
fn assert_within_quota(weights: &[f64], picks: &[usize]) {
    let total: f64 = weights.iter().sum();
    let mut counts = vec![0u64; weights.len()];
    for (n, &pick) in picks.iter().enumerate() {
        counts[pick] += 1;
        for (c, w) in weights.iter().enumerate() {
            let quota = w / total * (n + 1) as f64;
            assert!(
                (counts[c] as f64 - quota).abs() < 1.0,
                "weights {weights:?}: after {} tickets category {c} has {} (quota {quota:.2})",
                n + 1,
                counts[c]
            );
        }
    }
}

fn picks(sampler: &Sampler, rows: u64) -> Vec<(Language, usize)> {
    (0..rows)
        .map(|i| {
            let sample = sampler.sample(i);
            let category: usize = sample.categories[0][1..].parse().unwrap();
            (sample.language, category)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest_seed(), ..ProptestConfig::default() })]

    #[test]
    fn issue_14_every_prefix_of_an_exact_table_is_within_one_of_its_quota(
        weights in prop::collection::vec(
            prop_oneof![1u32..6, 1u32..100].prop_map(|w| f64::from(w) / 4.0),
            2..11
        ),
        rows in 1u64..500,
        seed in 0u64..1_000,
    ) {
        let sampler = Sampler::new(seed, &languages(), &[exact(&weights, false)]);
        let all: Vec<usize> = picks(&sampler, rows).into_iter().map(|(_, c)| c).collect();
        assert_within_quota(&weights, &all);
        // Per language, each language's tickets on their own.
        let sampler = Sampler::new(seed, &languages(), &[exact(&weights, true)]);
        let picked = picks(&sampler, rows);
        for language in Language::ALL {
            let mine: Vec<usize> = picked.iter().filter(|(l, _)| *l == language).map(|(_, c)| *c).collect();
            assert_within_quota(&weights, &mine);
        }
        // A lookup behind the build's position (explain, a retry) gives the same category.
        let again = Sampler::new(seed, &languages(), &[exact(&weights, true)]);
        let last = again.sample(rows - 1);
        prop_assert_eq!(&again.sample(rows / 2), &sampler.sample(rows / 2));
        prop_assert_eq!(last, sampler.sample(rows - 1));
    }
}

fn load(project: &Project) -> Config {
    Config::load(&project.file("dataset.toml"), &Overrides::default()).expect("a valid config")
}

#[test]
fn issue_14_growing_an_exact_dataset_keeps_its_first_tickets_and_balances_it() {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 300");
    p.edit(
        "dataset.toml",
        "[tables.queue]\n",
        "[tables.queue]\nmode = \"exact\"\n",
    );
    p.build_json(&[]);
    let first = p.read("out/tickets.jsonl");
    p.edit("dataset.toml", "rows = 300", "rows = 500");
    let grown = p.build_json(&[]);
    let rows = p.read("out/tickets.jsonl");
    assert!(
        rows.starts_with(&first),
        "the first 300 tickets are unchanged"
    );
    assert_eq!(grown["nodes"][0]["reused"], 300, "{grown}");
    let config = load(&p);
    let queue = config.tables.iter().find(|t| t.name == "queue").unwrap();
    let total: f64 = queue.categories.iter().map(|(_, w)| w).sum();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for row in read_jsonl(&p.file("out/tickets.jsonl")) {
        *counts
            .entry(row["queue"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for (category, weight) in &queue.categories {
        let quota = weight / total * 500.0;
        let count = counts.get(category).copied().unwrap_or(0) as f64;
        assert!(
            (count - quota).abs() < 1.0,
            "{category}: {count} of 500, quota {quota:.1}"
        );
    }
}

#[test]
fn issue_14_a_category_weighted_0_under_a_condition_never_appears_with_it() {
    let p = Project::example();
    p.edit("dataset.toml", "rows = 200", "rows = 10000");
    let config = p.read("dataset.toml");
    p.write(
        "dataset.toml",
        &format!(
            "{config}\n[tables.queue.by.business_type.\"Healthcare provider\"]\n\"Sales and Pre-Sales\" = 0\n\"Billing and Payments\" = 0\n\n\
             [tables.priority.by.queue.\"Service Outages and Maintenance\"]\nlow = 0\nhigh = 10\n"
        ),
    );
    let config = load(&p);
    let sampler = Sampler::new(config.seed, &config.languages, &config.tables);
    let column = |name: &str| config.tables.iter().position(|t| t.name == name).unwrap();
    let (queue, business, priority) =
        (column("queue"), column("business_type"), column("priority"));
    let mut healthcare = 0;
    let mut outages: HashMap<String, u64> = HashMap::new();
    let mut sales_elsewhere = 0;
    for i in 0..config.rows {
        let c = sampler.sample(i).categories;
        if c[business] == "Healthcare provider" {
            healthcare += 1;
            assert!(
                c[queue] != "Sales and Pre-Sales" && c[queue] != "Billing and Payments",
                "ticket {i}: {c:?}"
            );
        } else if c[queue] == "Sales and Pre-Sales" {
            sales_elsewhere += 1;
        }
        if c[queue] == "Service Outages and Maintenance" {
            *outages.entry(c[priority].clone()).or_default() += 1;
        }
    }
    assert!(
        healthcare > 500 && sales_elsewhere > 500,
        "{healthcare} {sales_elsewhere}"
    );
    assert_eq!(outages.get("low"), None, "{outages:?}");
    assert!(outages["high"] > outages["medium"] * 2, "{outages:?}");
    // The same draws in a build: the files carry what the sampler gave.
    p.edit("dataset.toml", "rows = 10000", "rows = 300");
    p.build_json(&[]);
    for row in read_jsonl(&p.file("out/tickets.jsonl")) {
        if row["business_type"] == "Healthcare provider" {
            assert_ne!(row["queue"], "Sales and Pre-Sales");
        }
    }
}

#[test]
fn issue_14_tables_without_the_new_keys_draw_as_before() {
    // Pinned: the first tickets of the example as the sampler drew them before exact tables and
    // conditions existed (a changed draw would re-run every cached dataset).
    let p = Project::example();
    let config = load(&p);
    let sampler = Sampler::new(config.seed, &config.languages, &config.tables);
    let first = sampler.sample(0);
    let again = Sampler::new(config.seed, &config.languages, &config.tables).sample(0);
    assert_eq!(first, again);
    assert_eq!(first.ticket_id, 9060608207711);
    assert_eq!(first.language, Language::En);
    assert_eq!(
        first.categories,
        [
            "Problem",
            "high",
            "Billing and Payments",
            "Financial services"
        ]
    );
}

#[test]
fn issue_14_sampled_people_are_varied_and_every_value_is_deterministic() {
    let p = Project::example();
    let config = load(&p);
    assert_eq!(config.samplers.len(), 4, "the example uses samplers");
    let english = [(Language::En, 1.0)];
    let sampler = Sampler::new(config.seed, &english, &config.tables).with_values(&config.samplers);
    let names: Vec<String> = (0..1000)
        .map(|i| sampler.sample(i).values[0].text.clone())
        .collect();
    let distinct: std::collections::HashSet<&String> = names.iter().collect();
    assert!(
        distinct.len() >= 950,
        "{} distinct customer names of 1,000",
        distinct.len()
    );
    let again = Sampler::new(config.seed, &english, &config.tables).with_values(&config.samplers);
    for i in [0, 1, 499, 999] {
        assert_eq!(again.sample(i), sampler.sample(i));
    }
    // The values reach the prompts and the columns.
    p.edit("dataset.toml", "rows = 200", "rows = 30");
    p.build_json(&[]);
    let rows = read_jsonl(&p.file("out/tickets.jsonl"));
    let full =
        Sampler::new(config.seed, &config.languages, &config.tables).with_values(&config.samplers);
    for (i, row) in rows.iter().enumerate() {
        let sample = full.sample(i as u64);
        assert_eq!(row["customer_name"], sample.values[0].text.as_str());
        let order = row["order_id"].as_str().unwrap();
        assert!(order.len() == 10 && order.starts_with("ORD-"), "{order}");
        // The offline model writes the customer and agent the prompts name.
        let customer = row["customer_name"].as_str().unwrap();
        assert!(row["body"].as_str().unwrap().contains(customer), "{row:?}");
        let reply = row["first_response"].as_str().unwrap();
        assert!(reply.contains(customer) && reply.contains(row["agent_name"].as_str().unwrap()));
        let at = row["created_at"].as_str().unwrap();
        assert!(
            at.starts_with("2025-") || at.starts_with("2026-"),
            "{at} is in the configured range"
        );
    }
    let explained = p.run(&[
        "explain",
        rows[0]["ticket_id"].as_str().unwrap(),
        "first_response",
    ]);
    assert!(
        explained
            .stdout
            .contains(rows[0]["customer_name"].as_str().unwrap()),
        "the reply's request names the customer: {}",
        explained.stdout
    );
}

#[test]
fn issue_14_italian_and_dutch_tickets_build_against_a_real_model_and_carry_their_codes() {
    use crate::support::mock_llm::{MockConfig, MockServer};
    let mock = MockServer::start(MockConfig::default());
    let p = Project::empty();
    p.write(
        "dataset.toml",
        &format!(
            "[dataset]\nname = \"desk\"\nrows = 40\nseed = 2\nformats = [\"jsonl\"]\n\n\
             [dataset.languages]\nit = 1\nNL = 1\n\n\
             [models.default]\nprovider = \"openai-compatible\"\nmodel = \"mock\"\nbase_url = \"{}\"\n\n\
             [cost.prices.mock]\ninput = 0.5\noutput = 1.5\n\n\
             [nodes.reply]\nprompt = \"prompts/reply.jinja\"\n",
            mock.base_url()
        ),
    );
    p.write(
        "prompts/reply.jinja",
        "Write a short support reply in {{ language_name }} (language code {{ language }}).",
    );
    p.build_json(&[]);
    let rows = read_jsonl(&p.file("out/desk.jsonl"));
    let mut codes: Vec<&str> = rows
        .iter()
        .map(|r| r["language"].as_str().unwrap())
        .collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes, ["IT", "NL"]);
    let prompts: String = mock.log().iter().map(|l| l.body.to_string()).collect();
    assert!(
        prompts.contains("in Italian (language code IT)")
            && prompts.contains("in Dutch (language code NL)"),
        "the prompts name the languages"
    );
    // The offline model writes five languages: it says which node cannot write which.
    let example = Project::example();
    example.edit("dataset.toml", "PT = 1\n", "PT = 1\nIT = 1\n");
    let run = example.run(&["build"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("`nodes.translation`: the offline model writes DE, EN, FR, ES and PT tickets, so it cannot write `translation` for IT tickets")
            && run.stderr.contains("cannot write `first_response` for IT tickets"),
        "{}",
        run.stderr
    );
}

#[test]
fn issue_14_the_worked_example_builds_offline_with_its_exact_and_conditional_classes() {
    let root = crate::support::repo_root().join("examples/helpdesk");
    let p = Project::empty();
    for file in [
        "dataset.toml",
        "issues.csv",
        "prompts/topic.jinja",
        "prompts/subject.jinja",
        "prompts/body.jinja",
        "prompts/first_response.jinja",
    ] {
        p.write(file, &std::fs::read_to_string(root.join(file)).unwrap());
    }
    let summary = p.build_json(&[]);
    assert_eq!(summary["written"], 120, "{summary}");
    let rows = read_jsonl(&p.file("out/helpdesk.jsonl"));
    let count = |column: &str, value: &str| rows.iter().filter(|r| r[column] == value).count();
    assert_eq!(
        [
            count("type", "Incident"),
            count("type", "Request"),
            count("type", "Problem"),
            count("type", "Change")
        ],
        [48, 36, 24, 12]
    );
    assert!(
        rows.iter()
            .all(|r| !(r["business_type"] == "Healthcare provider"
                && r["queue"] == "Sales and Pre-Sales"))
    );
    let issues = std::fs::read_to_string(root.join("issues.csv")).unwrap();
    assert!(
        rows.iter()
            .all(|r| issues.contains(r["issue"].as_str().unwrap()))
    );
}
