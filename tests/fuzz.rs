//! Fuzzing on stable Rust: proptest feeds arbitrary and mutated input to every parser that reads
//! what a user or a server wrote, and each must answer `Ok` or `Err`, never panic.
//!
//! Targets: dataset.toml (`Config::parse`), prompt files (`PromptFile::parse`), template compilation
//! and rendering (`Graph::load` on a temporary project, then `Graph::render`), node replies
//! (`OutputKind::parse` for each kind) and provider replies (the OpenAI and Anthropic reply and error
//! parsers, `Retry-After`).
//!
//! Each target runs 256 cases; `TICKETBUILD_FUZZ_CASES=N` runs N instead:
//!
//! ```sh
//! TICKETBUILD_FUZZ_CASES=20000 TICKETBUILD_PROPTEST_SEED=random \
//!     cargo test --release --test integration fuzz
//! ```
//!
//! The seed is fixed unless `TICKETBUILD_PROPTEST_SEED` says otherwise (see
//! `support::proptest_seed`), so the default run checks the same cases every time.
//!
//! A crash found here becomes a named test in the `regressions` module below.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Value, json};
use ticketbuild::config::{Config, Overrides};
use ticketbuild::graph::Graph;
use ticketbuild::prompt::PromptFile;
use ticketbuild::provider::{anthropic, openai, retry};
use ticketbuild::value::{NodeOutput, OutputKind};

use crate::support::{Project, repo_root};

fn fuzz_config() -> ProptestConfig {
    let cases = std::env::var("TICKETBUILD_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: crate::support::proptest_seed(),
        ..ProptestConfig::default()
    }
}

/// Any text: arbitrary Unicode, or arbitrary bytes read as UTF-8 the lossy way.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]
}

/// Text assembled from `pieces` (the tokens that matter to a parser) and some random text.
fn text_from(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(pieces).prop_map(str::to_string),
        1 => "[ -~]{0,8}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|pieces| pieces.concat())
}

// -------------------------------------------------------------------------------------------------
// dataset.toml
// -------------------------------------------------------------------------------------------------

/// Lines that reach the checks behind the TOML parser: odd values, names and tables.
const TOML_LINES: &[&str] = &[
    "rows = -1",
    "rows = 0",
    "rows = 9223372036854775807",
    "rows = 99999999999999999999",
    "seed = -9223372036854775808",
    "concurrency = 0",
    "concurrency = -3",
    "formats = []",
    "formats = [\"xlsx\", 1]",
    "[dataset.languages]",
    "XX = 1e308",
    "DE = nan",
    "EN = -inf",
    "[tables.\"a b\"]",
    "[tables.language]",
    "\"\" = 1",
    "\"\\u0000\" = 0.5",
    "[models.m]",
    "provider = \"openai\"",
    "provider = \"anthropic\"",
    "provider = \"openai-compatible\"",
    "provider = \"\"",
    "model = \"\"",
    "base_url = \"ftp://x\"",
    "api_key = 1",
    "api_key_env = \"\"",
    "temperature = nan",
    "temperature = 1e400",
    "top_p = inf",
    "max_tokens = -9223372036854775808",
    "latency_ms = -1",
    "max_attempts = 99999999999",
    "seed = 1",
    "stop = []",
    "extra = { a = { b = [] } }",
    "response_format = \"json_schema\"",
    "[nodes.x]",
    "[nodes.topic]",
    "[nodes.language]",
    "[nodes.\"\"]",
    "prompt = \"\"",
    "prompt = \"/\"",
    "prompt = \"prompts/topic.jinja\"",
    "model = \"m\"",
    "output = \"list\"",
    "output = \"json\"",
    "min_items = 0",
    "max_items = -1",
    "min_items = 9223372036854775807",
    "fields = []",
    "fields = [\"\", \"a\", \"a\"]",
    "when = \"{{\"",
    "when = \"language ==\"",
    "task = \"translation\"",
    "[output]",
    "lineage = true",
    "[output.columns]",
    "x = []",
    "x = [\"a\", 1]",
    "x = \"paraphrase.\"",
    "x = \".\"",
    "[profile.dev]",
    "[profile.dev.models.default]",
    "[profile.dev.models.new]",
    "[[nodes]]",
    "a.b.c = 1",
    "version = 0",
    "version = 1",
    "",
    "#",
    "[",
    "\"",
    "= 1",
];

/// One change to the lines of a file.
#[derive(Debug, Clone)]
enum Edit {
    Remove(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Insert(prop::sample::Index, String),
    Replace(prop::sample::Index, String),
    Truncate(prop::sample::Index),
}

fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(TOML_LINES).prop_map(str::to_string),
        1 => "[ -~]{0,30}",
    ]
}

/// A few edits, mostly of whole known lines, so that most edited files still parse as TOML and reach
/// the checks behind the parser.
fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let known_line = || prop::sample::select(TOML_LINES).prop_map(str::to_string);
    let edit = prop_oneof![
        1 => any::<prop::sample::Index>().prop_map(Edit::Remove),
        1 => any::<prop::sample::Index>().prop_map(Edit::Duplicate),
        3 => (any::<prop::sample::Index>(), known_line()).prop_map(|(i, l)| Edit::Insert(i, l)),
        3 => (any::<prop::sample::Index>(), known_line()).prop_map(|(i, l)| Edit::Replace(i, l)),
        1 => (any::<prop::sample::Index>(), toml_line()).prop_map(|(i, l)| Edit::Insert(i, l)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..5)
}

/// `text` with `edits` applied, line by line.
fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for edit in edits {
        let len = lines.len().max(1);
        match edit {
            Edit::Remove(i) if !lines.is_empty() => {
                lines.remove(i.index(len));
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let line = lines[i.index(len)].clone();
                lines.insert(i.index(len), line);
            }
            Edit::Insert(i, line) => lines.insert(i.index(len + 1), line.clone()),
            Edit::Replace(i, line) if !lines.is_empty() => lines[i.index(len)] = line.clone(),
            Edit::Truncate(i) if !lines.is_empty() => {
                let line = &mut lines[i.index(len)];
                let cut = line
                    .char_indices()
                    .nth(line.chars().count() / 2)
                    .map_or(0, |(c, _)| c);
                line.truncate(cut);
            }
            _ => {}
        }
    }
    lines.join("\n")
}

fn example_dataset() -> String {
    std::fs::read_to_string(repo_root().join("dataset.toml")).unwrap()
}

fn overrides() -> impl Strategy<Value = Overrides> {
    (
        prop::option::of(prop_oneof![
            Just("dev".to_string()),
            Just("prod".to_string()),
            "[a-z]{0,4}"
        ]),
        prop::option::of(prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            any::<u64>(),
            1..100u64
        ]),
    )
        .prop_map(|(profile, rows)| Overrides {
            profile,
            rows,
            ..Overrides::default()
        })
}

/// Parses `text` as dataset.toml; the result does not matter, returning does.
fn parse_config(text: String, overrides: &Overrides) {
    let _ = Config::parse(Path::new("dataset.toml"), text, overrides);
}

// Generated datasets: valid TOML with every section, random keys and values, loaded up to the graph.

/// Keys of one kind of table, each with the values to choose from.
type Keys = &'static [(&'static str, &'static [&'static str])];

// Every value has the type its key takes: type errors stop loading before the checks, and the other
// targets produce plenty of them. The first value of each key is a valid one.
const INTEGERS: &[&str] = &["1", "0", "-1", "3", "9223372036854775807"];
const WEIGHTS: &[&str] = &["1", "0", "-2", "0.5", "nan", "inf", "1e308"];

const DATASET_KEYS: Keys = &[
    ("name", &["\"tickets\"", "\"\"", "\"a/b\""]),
    (
        "rows",
        &["1", "2", "0", "-1", "9900000000000", "9900000000001"],
    ),
    ("seed", &["0", "-1", "9223372036854775807"]),
    ("output", &["\"out\"", "\"\"", "\"/\""]),
    ("cache", &["\"cache\"", "\"\""]),
    (
        "formats",
        &["[\"csv\"]", "[]", "[\"csv\", \"csv\"]", "[\"xlsx\"]"],
    ),
    ("concurrency", INTEGERS),
];

const LANGUAGE_KEYS: Keys = &[
    ("DE", WEIGHTS),
    ("EN", WEIGHTS),
    ("PT", WEIGHTS),
    ("XX", WEIGHTS),
    ("de", WEIGHTS),
    ("\"\"", WEIGHTS),
];

const CATEGORY_KEYS: Keys = &[
    ("A", WEIGHTS),
    ("\"IT Support\"", WEIGHTS),
    ("\"\"", WEIGHTS),
    ("\"\\u0000\"", WEIGHTS),
];

const MODEL_KEYS: Keys = &[
    (
        "provider",
        &[
            "\"offline\"",
            "\"openai\"",
            "\"anthropic\"",
            "\"openai-compatible\"",
            "\"ollama\"",
            "\"x\"",
        ],
    ),
    ("model", &["\"gpt-4o-mini\"", "\"\""]),
    (
        "base_url",
        &["\"http://localhost:1/v1\"", "\"ftp://x\"", "\"\""],
    ),
    ("api_key_env", &["\"KEY\"", "\"\"", "\"sk-1\""]),
    ("api_key", &["\"sk-secret\"", "1"]),
    ("temperature", &["0", "2", "2.5", "-1", "nan"]),
    ("top_p", &["1", "0", "0.5", "1.5", "inf"]),
    ("max_tokens", INTEGERS),
    ("seed", &["1", "-1"]),
    ("stop", &["[]", "[\"END\"]"]),
    (
        "response_format",
        &["\"json_schema\"", "\"text\"", "\"yaml\""],
    ),
    (
        "extra",
        &["{}", "{ a = { b = [1, 2.5, \"c\"] } }", "{ n = nan }"],
    ),
    ("latency_ms", INTEGERS),
    ("max_concurrency", INTEGERS),
    ("requests_per_minute", INTEGERS),
    ("max_attempts", INTEGERS),
    ("timeout_secs", INTEGERS),
];

const NODE_KEYS: Keys = &[
    (
        "prompt",
        &[
            "\"prompts/a.jinja\"",
            "\"prompts/b.jinja\"",
            "\"prompts/c.jinja\"",
            "\"\"",
            "\"prompts\"",
            "\"../a.jinja\"",
            "\"missing.jinja\"",
        ],
    ),
    ("model", &["\"default\"", "\"m\"", "\"nope\""]),
    ("output", &["\"text\"", "\"list\"", "\"json\"", "\"csv\""]),
    ("min_items", INTEGERS),
    ("max_items", INTEGERS),
    (
        "fields",
        &[
            "[]",
            "[\"subject\", \"body\"]",
            "[\"a\", \"a\"]",
            "[\"a b\"]",
        ],
    ),
    (
        "when",
        &[
            "\"language != 'EN'\"",
            "\"topic\"",
            "\"nope\"",
            "\"language ==\"",
            "\"\"",
            "\"{{\"",
        ],
    ),
    (
        "task",
        &["\"topic\"", "\"subject\"", "\"translation\"", "\"nope\""],
    ),
];

const COLUMN_KEYS: Keys = &[
    ("ticket_id", &["\"ticket_id\"", "\"language\""]),
    (
        "subject",
        &[
            "\"subject\"",
            "[\"x.subject\", \"subject\"]",
            "\"x.nope\"",
            "[]",
            "1",
        ],
    ),
    ("queue", &["\"queue\"", "\"nope\""]),
    ("tags", &["\"tags\"", "[\"tags\", 1]"]),
];

const PROFILE_KEYS: Keys = &[
    ("rows", INTEGERS),
    ("max_tokens", INTEGERS),
    ("concurrency", INTEGERS),
];

/// Keys and names that are always wrong where they appear; each is chosen rarely, so that most
/// generated files get past the checker and reach the graph.
const RARE: &[&str] = &[
    "XX",
    "de",
    "\"\"",
    "\"a b\"",
    "language",
    "api_key",
    "base_url",
    "min_items",
    "max_items",
    "fields",
    "\"subject\"",
    "\"queue\"",
];

/// Keys that a table of their kind needs; each is left out rarely.
const NEEDED: &[&str] = &["provider", "prompt", "queue", "topic"];

/// Which of `names` to use: each with probability 1/2, a rare one with 1/10, a needed one with 9/10.
fn some_of(names: Vec<&'static str>) -> impl Strategy<Value = Vec<&'static str>> {
    let coins: Vec<_> = names
        .iter()
        .map(|name| prop::bool::weighted(chance(name)))
        .collect();
    coins.prop_map(move |coins| {
        names
            .iter()
            .zip(coins)
            .filter_map(|(name, coin)| coin.then_some(*name))
            .collect()
    })
}

fn chance(name: &str) -> f64 {
    if RARE.contains(&name) {
        0.1
    } else if NEEDED.contains(&name) {
        0.9
    } else {
        0.5
    }
}

/// Some of `keys`, each with one of its values (mostly the first, a valid one), as `key = value`
/// lines.
fn key_lines(keys: Keys) -> impl Strategy<Value = String> {
    let pick = prop_oneof![7 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)];
    (
        some_of(keys.iter().map(|(key, _)| *key).collect()),
        prop::collection::vec(pick, keys.len()),
    )
        .prop_map(move |(chosen, picks)| {
            keys.iter()
                .zip(picks)
                .filter(|((key, _), _)| chosen.contains(key))
                .map(|((key, values), pick)| {
                    let value = pick.map_or(values[0], |i| values[i.index(values.len())]);
                    format!("{key} = {value}\n")
                })
                .collect()
        })
}

/// `[PREFIX.NAME]` tables for some of `names`, each with some of `keys`.
fn named_tables(
    prefix: &'static str,
    names: &'static [&'static str],
    keys: Keys,
) -> impl Strategy<Value = String> {
    (
        some_of(names.to_vec()),
        prop::collection::vec(key_lines(keys), names.len()),
    )
        .prop_map(move |(chosen, bodies)| {
            chosen
                .iter()
                .zip(bodies)
                .map(|(name, body)| format!("[{prefix}.{name}]\n{body}\n"))
                .collect()
        })
}

fn generated_dataset() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop_oneof![9 => Just("version = 1\n"), 1 => Just("version = 2\n")]),
        key_lines(DATASET_KEYS),
        prop::option::of(key_lines(LANGUAGE_KEYS)),
        named_tables(
            "tables",
            &["queue", "type", "language", "\"a b\"", "\"subject\""],
            CATEGORY_KEYS,
        ),
        named_tables("models", &["default", "m"], MODEL_KEYS),
        named_tables(
            "nodes",
            &[
                "topic",
                "subject",
                "tags",
                "x",
                "language",
                "\"queue\"",
                "\"\"",
            ],
            NODE_KEYS,
        ),
        prop::option::of(key_lines(COLUMN_KEYS)),
        prop::option::of((key_lines(PROFILE_KEYS), key_lines(MODEL_KEYS))),
    )
        .prop_map(
            |(version, dataset, languages, tables, models, nodes, columns, profile)| {
                let mut text = version.unwrap_or("").to_string();
                text.push_str(&format!("[dataset]\n{dataset}\n"));
                if let Some(languages) = languages {
                    text.push_str(&format!("[dataset.languages]\n{languages}\n"));
                }
                text.push_str(&tables);
                text.push_str(&models);
                text.push_str(&nodes);
                if let Some(columns) = columns {
                    text.push_str(&format!("[output.columns]\n{columns}\n"));
                }
                if let Some((profile, model)) = profile {
                    text.push_str(&format!(
                        "[profile.dev]\n{profile}\n[profile.dev.models.m]\n{model}\n"
                    ));
                }
                text
            },
        )
}

/// Loads a generated dataset as `build` would: config, then prompts and graph.
fn load_generated(dataset: &str, overrides: &Overrides) {
    let project = Project::empty();
    project
        .write("dataset.toml", dataset)
        .write("a.jinja", "Outside: {{ queue }}")
        .write(
            "prompts/a.jinja",
            "Name an issue for the {{ queue }} queue.",
        )
        .write(
            "prompts/b.jinja",
            "--- system\nYou write {{ language_name }}.\n--- user\nA subject about {{ topic }}.",
        )
        .write(
            "prompts/c.jinja",
            "Tags for {{ subject }}: {{ x.subject }} {{ tags | join(', ') }}",
        );
    if let Ok(config) = Config::load(&project.file("dataset.toml"), overrides) {
        let _ = Graph::load(&config);
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn config_parse_survives_arbitrary_text(text in any_text(), overrides in overrides()) {
        parse_config(text, &overrides);
    }

    #[test]
    fn config_parse_survives_edits_of_the_example(edits in edits(), overrides in overrides()) {
        parse_config(apply(&example_dataset(), &edits), &overrides);
    }

    #[test]
    fn config_parse_survives_files_of_odd_lines(
        lines in prop::collection::vec(toml_line(), 0..30),
        overrides in overrides(),
    ) {
        parse_config(lines.join("\n"), &overrides);
    }

    #[test]
    fn generated_datasets_load_or_are_refused(
        dataset in generated_dataset(),
        overrides in prop::option::weighted(0.2, overrides()),
    ) {
        load_generated(&dataset, &overrides.unwrap_or_default());
    }
}

// -------------------------------------------------------------------------------------------------
// Prompt files
// -------------------------------------------------------------------------------------------------

const PROMPT_PIECES: &[&str] = &[
    "--- system",
    "--- user",
    "--- system\n",
    "--- user\n",
    "--- user \r\n",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "{#",
    "#}",
    "{# note #}\n",
    "{{",
    "}}",
    "{%",
    "%}",
    "topic",
    "x.topic",
    "'topic'",
    "\"",
    "é",
    "😀",
    "\u{0}",
];

fn prompt_text() -> impl Strategy<Value = String> {
    prop_oneof![any_text(), text_from(PROMPT_PIECES, 40)]
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn prompt_parse_survives_any_text(source in prompt_text()) {
        let lines = source.split('\n').count();
        if let Ok(prompt) = PromptFile::parse(Path::new("prompts/x.jinja"), source) {
            prop_assert!(!prompt.user.text.is_empty());
            for (_, part) in prompt.parts() {
                prop_assert!(part.first_line >= 1 && part.first_line <= lines, "{:?}", part.first_line);
            }
        }
    }

    #[test]
    fn locating_a_variable_survives_any_text(source in prompt_text(), variable in "[a-z_]{1,6}") {
        if let Ok(prompt) = PromptFile::parse(Path::new("prompts/x.jinja"), source) {
            for (_, part) in prompt.parts() {
                let _ = PromptFile::locate_variable(part, &variable);
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Templates: compilation through Graph::load, then rendering
// -------------------------------------------------------------------------------------------------

const TEMPLATE_PIECES: &[&str] = &[
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{%- ",
    " -%}",
    "{# ",
    " #}",
    "{{ topic }}",
    "{{ queue }}",
    "{{ tags | join(', ') }}",
    "{{ paraphrase.subject }}",
    "{{ paraphrase['body'] }}",
    "{{ ticket_id }}",
    "{{ language_name }}",
    "{% if language == 'DE' %}",
    "{% else %}",
    "{% endif %}",
    "{% for tag in tags %}",
    "{% endfor %}",
    "{{ loop.index }}",
    "{% set x = topic %}",
    "{{ x }}",
    "{% macro m(a) %}{{ a }}{% endmacro %}",
    "{{ m(topic) }}",
    "{% raw %}",
    "{% endraw %}",
    "{% filter upper %}",
    "{% endfilter %}",
    "{% with y = 1 %}",
    "{% endwith %}",
    "{% include 'x/user' %}",
    "{% include 'topic/user' %}",
    "{% extends 'topic/user' %}",
    "{% block b %}",
    "{% endblock %}",
    "{{ topic[0] }}",
    "{{ topic[1:3] }}",
    "{{ tags[99] }}",
    "{{ 1 / 0 }}",
    "{{ 9223372036854775807 + 1 }}",
    "{{ -9223372036854775808 // -1 }}",
    "{{ 'a' * 3 }}",
    "{{ topic | upper | lower | title | trim }}",
    "{{ tags | first }}",
    "{{ tags | last }}",
    "{{ paraphrase | items }}",
    "{{ none }}",
    "{{ undefined_thing }}",
    "{{ topic.nope }}",
    "{{ paraphrase.nope }}",
    "{{ tags | batch(0) }}",
    "{{ topic | indent(-1) }}",
    "{{ range(3) | list }}",
    "{{ dict(a=1) }}",
    "{{ namespace() }}",
    "{{ debug() }}",
    "{{ topic ~ queue }}",
    "{{ topic is defined }}",
    "{{ (",
    ")",
    "[",
    "]",
    "'",
    "\"",
    "|",
    ".",
    "--- system\n",
    "--- user\n",
    "\n",
    " ",
    "x",
];

const WHEN_PIECES: &[&str] = &[
    "language",
    "queue",
    "topic",
    "tags",
    "paraphrase",
    "==",
    "!=",
    "and",
    "or",
    "not",
    "(",
    ")",
    "'EN'",
    "\"DE\"",
    "1",
    "none",
    "true",
    "in",
    "|",
    "length",
    ">",
    "%}",
    "{%",
    "}}",
    "{{",
    "'",
    " ",
    "endif",
    "if",
    ".",
    "[",
    "]",
];

const TEMPLATE_DATASET: &str = r#"[dataset]
rows = 1

[tables.queue]
"IT Support" = 1

[models.default]
provider = "openai"
model = "gpt-4o-mini"

[nodes.topic]
prompt = "prompts/topic.jinja"

[nodes.tags]
prompt = "prompts/tags.jinja"
output = "list"

[nodes.paraphrase]
prompt = "prompts/paraphrase.jinja"
output = "json"
fields = ["subject", "body"]

[nodes.x]
prompt = "prompts/x.jinja"
"#;

/// A project whose node `x` has the prompt `template` and the condition `when`.
fn template_project(template: &str, when: Option<&str>) -> Project {
    let mut dataset = TEMPLATE_DATASET.to_string();
    if let Some(when) = when {
        dataset.push_str(&format!("when = {}\n", toml::Value::from(when)));
    }
    let project = Project::empty();
    project
        .write("dataset.toml", &dataset)
        .write("prompts/topic.jinja", "Name an issue for {{ queue }}.")
        .write("prompts/tags.jinja", "Tags for {{ topic }}.")
        .write("prompts/paraphrase.jinja", "Rewrite {{ topic }}.")
        .write("prompts/x.jinja", template);
    project
}

/// The context of a ticket whose upstream nodes all have outputs.
fn context(topic: &str) -> minijinja::Value {
    let outputs = [
        ("topic", NodeOutput::Text(topic.to_string())),
        (
            "tags",
            NodeOutput::List(vec!["a".into(), topic.to_string()]),
        ),
        (
            "paraphrase",
            NodeOutput::Json(
                [("subject", topic), ("body", "b")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            ),
        ),
    ];
    let mut values: BTreeMap<String, minijinja::Value> = outputs
        .into_iter()
        .map(|(name, output)| (name.to_string(), output.to_template_value()))
        .collect();
    for (name, value) in [
        ("queue", "IT Support"),
        ("ticket_id", "123456789012"),
        ("language", "DE"),
        ("language_name", "German"),
    ] {
        values.insert(name.to_string(), value.into());
    }
    minijinja::Value::from(values)
}

/// Loads the project and, when it loads, renders node `x`; neither may panic.
fn compile_and_render(template: &str, when: Option<&str>, topic: &str) {
    let project = template_project(template, when);
    let Ok(config) = Config::load(&project.file("dataset.toml"), &Overrides::default()) else {
        return;
    };
    let Ok(graph) = Graph::load(&config) else {
        return;
    };
    let node = graph.node("x").expect("node x is in the graph");
    let context = context(topic);
    if let Ok(true) = graph.should_run(node, &context) {
        let _ = graph.render(node, &context);
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn templates_compile_and_render_without_panicking(
        template in prop_oneof![text_from(TEMPLATE_PIECES, 24), any_text()],
        when in prop::option::of(text_from(WHEN_PIECES, 8)),
        topic in prop_oneof![Just(String::new()), ".{0,20}"],
    ) {
        compile_and_render(&template, when.as_deref(), &topic);
    }
}

// -------------------------------------------------------------------------------------------------
// Node replies: OutputKind::parse
// -------------------------------------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("items"),
            Just("subject"),
            Just("body"),
            Just(""),
            Just(" ")
        ]
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("items".to_string()),
                    Just("subject".to_string()),
                    Just("body".to_string()),
                    ".{0,6}"
                ],
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const REPLY_PIECES: &[&str] = &[
    "```",
    "```json\n",
    "\n```",
    "- ",
    "* ",
    "1. ",
    "2) ",
    ", ",
    ",",
    "\n",
    "\r\n",
    "[",
    "]",
    "{",
    "}",
    "\"",
    ":",
    "\"items\"",
    "\"subject\"",
    "\"body\"",
    "null",
    "\\u0000",
    "\\ud800",
    "😀",
    " ",
];

/// What a model might answer: anything, JSON of any shape (maybe fenced), or list-like lines.
fn reply_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any_text(),
        json_value().prop_map(|v| v.to_string()),
        json_value().prop_map(|v| format!("```json\n{v}\n```")),
        text_from(REPLY_PIECES, 30),
    ]
}

fn output_kind() -> impl Strategy<Value = OutputKind> {
    prop_oneof![
        Just(OutputKind::Text),
        (0..6usize, 0..6usize).prop_map(|(min, extra)| OutputKind::List {
            min,
            max: min + extra
        }),
        prop::collection::vec(
            prop_oneof![
                Just("subject".to_string()),
                Just("body".to_string()),
                "[a-z]{1,4}"
            ],
            0..4
        )
        .prop_map(|fields| OutputKind::Json { fields }),
    ]
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn node_replies_parse_or_are_refused(kind in output_kind(), reply in reply_text()) {
        if let Ok(output) = kind.parse(&reply) {
            match (&kind, &output) {
                (OutputKind::Text, NodeOutput::Text(text)) => prop_assert!(!text.trim().is_empty()),
                (OutputKind::List { min, max }, NodeOutput::List(items)) => {
                    prop_assert!((*min..=*max).contains(&items.len()), "{} items", items.len());
                }
                (OutputKind::Json { fields }, NodeOutput::Json(map)) => {
                    let mut expected = fields.clone();
                    expected.sort();
                    expected.dedup();
                    prop_assert_eq!(map.keys().cloned().collect::<Vec<_>>(), expected);
                }
                (kind, output) => prop_assert!(false, "{:?} parsed into {:?}", kind, output),
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Provider replies
// -------------------------------------------------------------------------------------------------

/// Reply bodies shaped like the APIs' own, with any value in any place.
fn provider_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        (json_value(), json_value(), json_value()).prop_map(|(content, usage, model)| json!({
            "choices": [{"message": {"role": "assistant", "content": content}}],
            "usage": usage,
            "model": model,
        })),
        (json_value(), json_value()).prop_map(|(content, usage)| json!({
            "type": "message",
            "content": [{"type": "text", "text": content}],
            "usage": usage,
        })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c)| json!({
            "choices": [{"message": {"content": "hi"}}],
            "content": [{"type": "text", "text": "hi"}],
            "usage": {
                "prompt_tokens": a, "completion_tokens": b,
                "input_tokens": a, "output_tokens": b,
                "cache_read_input_tokens": c, "cache_creation_input_tokens": c,
            },
        })),
        (json_value(), json_value()).prop_map(|(error, code)| json!({
            "type": "error",
            "error": {"message": error, "type": code, "code": code, "metadata": {"raw": "x"}},
        })),
    ]
}

const RETRY_AFTER: &[&str] = &[
    "0",
    "-1",
    "1.5",
    "1e30",
    "1e400",
    "NaN",
    "inf",
    "-0",
    "18446744073709551616",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "",
    " ",
];

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn openai_replies_parse_or_are_refused(body in provider_body()) {
        let _ = openai::parse_reply(&body);
        let _ = openai::error_message(&body);
    }

    #[test]
    fn anthropic_replies_parse_or_are_refused(body in provider_body()) {
        let _ = anthropic::parse_reply(&body);
        let _ = anthropic::error_message(&body);
    }

    #[test]
    fn retry_after_parses_or_is_ignored(
        value in prop_oneof![
            prop::sample::select(RETRY_AFTER).prop_map(str::to_string),
            any::<f64>().prop_map(|f| f.to_string()),
            any::<String>(),
        ],
    ) {
        let _ = retry::parse_retry_after(&value, now());
    }
}

/// Crashes the fuzzer found, one test each, named after what crashed.
mod regressions {
    use super::*;

    /// A server's `Retry-After: 1e30` made `Duration::from_secs_f64` panic (the value overflows a
    /// Duration); it must be capped or ignored instead.
    #[test]
    fn retry_after_with_more_seconds_than_a_duration_holds_does_not_panic() {
        let _ = retry::parse_retry_after("1e30", now());
    }

    /// Anthropic token counts near `u64::MAX` overflowed the sum of input and cache tokens (a panic
    /// in debug builds, a wrapped count in release builds).
    #[test]
    fn anthropic_reply_with_huge_token_counts_does_not_panic() {
        let body = json!({
            "content": [{"type": "text", "text": "hi"}],
            "usage": {
                "input_tokens": u64::MAX,
                "output_tokens": 1,
                "cache_read_input_tokens": 1,
                "cache_creation_input_tokens": 1,
            },
        });
        let _ = anthropic::parse_reply(&body);
    }

    /// A template whose unknown variable followed multi-byte characters on its line: the column
    /// (counted in characters) was used as a byte offset and sliced inside a character.
    #[test]
    fn unknown_variable_after_multibyte_characters_does_not_panic() {
        compile_and_render("¡𐀀{{ m(topic) }}", None, "");
        compile_and_render("򟨥򚾇{{ undefined_thing }}@1&b6{{ 'a' * 3 }}", None, "");
    }

    /// A `when` of `}} `: minijinja's expression lexer panics on anything after `}}`, whitespace
    /// included, and the guard in front of it only looked for a further token.
    #[test]
    fn when_with_double_brace_then_whitespace_does_not_panic() {
        compile_and_render("{{ ", Some("}} "), "");
        compile_and_render("{{ topic }}", Some("language == 'EN' }}\n"), "");
    }
}
