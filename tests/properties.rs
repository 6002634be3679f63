//! Property tests (proptest): artifact keys, rendering, ticket ids and the CSV and JSONL writers.
//!
//! Case counts are small on purpose: the tests that run the binary build a project per case, and the
//! machines that run the suite have two cores.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Value, json};
use ticketbuild::config::{Config, Overrides, Params};
use ticketbuild::graph::Graph;
use ticketbuild::key::{ArtifactKey, KeyInput};
use ticketbuild::language::Language;
use ticketbuild::sampling::Sampler;
use ticketbuild::sampling::Table;
use ticketbuild::value::{NodeOutput, OutputKind};

use crate::support::Project;

/// `cases` cases, no regression files written into the repository (found cases become named tests).
fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: crate::support::proptest_seed(),
        ..ProptestConfig::default()
    }
}

// -------------------------------------------------------------------------------------------------
// Artifact keys
// -------------------------------------------------------------------------------------------------

/// Everything a [`KeyInput`] borrows, owned, so tests can change one field at a time.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    provider: String,
    base_url: Option<String>,
    model: String,
    params: Params,
    output: OutputKind,
    system: Option<String>,
    user: String,
    offline: Option<(String, String, BTreeMap<String, Value>)>,
    sample_seed: u64,
}

impl Request {
    fn key(&self) -> ArtifactKey {
        KeyInput {
            provider: &self.provider,
            base_url: self.base_url.as_deref(),
            model: &self.model,
            params: &self.params,
            output: &self.output,
            system: self.system.as_deref(),
            user: &self.user,
            offline: self
                .offline
                .as_ref()
                .map(|(t, b, i)| (t.as_str(), b.as_str(), i)),
            sample_seed: self.sample_seed,
            draw: 0,
        }
        .key()
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6..1e6f64).prop_map(Value::from),
        "[a-z ]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys made of lowercase letters only, so a test can add `new_key` knowing it is new.
fn json_map() -> impl Strategy<Value = BTreeMap<String, Value>> {
    prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..4)
}

fn params() -> impl Strategy<Value = Params> {
    (
        prop::option::of(0.0..=2.0f64),
        prop::option::of(0.01..=1.0f64),
        prop::option::of(1..100_000u64),
        prop::option::of(any::<i64>()),
        prop::option::of(prop::collection::vec("[a-z#]{0,4}", 0..3)),
        prop::option::of(prop_oneof![
            Just("json_schema".to_string()),
            Just("json_object".to_string()),
            Just("text".to_string()),
        ]),
        json_map(),
    )
        .prop_map(
            |(temperature, top_p, max_tokens, seed, stop, response_format, extra)| Params {
                temperature,
                top_p,
                max_tokens,
                seed,
                stop,
                response_format,
                extra,
            },
        )
}

fn output_kind() -> impl Strategy<Value = OutputKind> {
    prop_oneof![
        Just(OutputKind::Text),
        (1..10usize, 0..10usize).prop_map(|(min, extra)| OutputKind::List {
            min,
            max: min + extra
        }),
        prop::collection::vec("[a-z]{1,6}", 1..4).prop_map(|fields| OutputKind::Json { fields }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![
            Just("offline"),
            Just("openai"),
            Just("anthropic"),
            Just("ollama")
        ],
        prop::option::of("https://[a-z]{1,8}\\.example/v1"),
        "[a-z0-9.-]{1,12}",
        params(),
        output_kind(),
        prop::option::of(".{0,40}"),
        ".{1,80}",
        prop::option::of(("[a-z_]{1,10}", "[0-9a-f]{8}", json_map())),
        any::<u64>(),
    )
        .prop_map(
            |(provider, base_url, model, params, output, system, user, offline, sample_seed)| {
                Request {
                    provider: provider.to_string(),
                    base_url,
                    model,
                    params,
                    output,
                    system,
                    user,
                    offline,
                    sample_seed,
                }
            },
        )
}

/// A value that differs from `value`: `None` becomes `on_none`, `Some` becomes `None`.
fn toggled<T>(value: &Option<T>, on_none: T) -> Option<T> {
    match value {
        Some(_) => None,
        None => Some(on_none),
    }
}

/// A change of one field, named by the field.
type Change = (&'static str, Box<dyn Fn(&mut Request)>);

/// Every single-field change of `base`, named by the field it changes.
fn single_field_changes(base: &Request) -> Vec<(&'static str, Request)> {
    let changes: Vec<Change> = [
        destination_changes(),
        sampling_param_changes(),
        other_param_changes(),
        prompt_changes(),
        offline_and_seed_changes(),
    ]
    .into_iter()
    .flatten()
    .collect();
    changes
        .into_iter()
        .map(|(name, change)| {
            let mut changed = base.clone();
            change(&mut changed);
            (name, changed)
        })
        .collect()
}

/// Changes of where the request goes: provider, base_url and model.
fn destination_changes() -> Vec<Change> {
    vec![
        ("provider", Box::new(|r| r.provider.push('x'))),
        (
            "base_url",
            Box::new(|r| r.base_url = toggled(&r.base_url, "http://localhost:1".into())),
        ),
        ("model", Box::new(|r| r.model.push('x'))),
    ]
}

/// Changes of the sampling parameters: temperature, top_p, max_tokens and seed.
fn sampling_param_changes() -> Vec<Change> {
    vec![
        (
            "temperature set/unset",
            Box::new(|r| r.params.temperature = toggled(&r.params.temperature, 0.5)),
        ),
        (
            "temperature value",
            Box::new(|r| {
                r.params.temperature = Some(r.params.temperature.map_or(1.0, |t| t + 0.25))
            }),
        ),
        (
            "top_p",
            Box::new(|r| r.params.top_p = toggled(&r.params.top_p, 0.5)),
        ),
        (
            "max_tokens set/unset",
            Box::new(|r| r.params.max_tokens = toggled(&r.params.max_tokens, 7)),
        ),
        (
            "max_tokens value",
            Box::new(|r| {
                r.params.max_tokens = Some(r.params.max_tokens.map_or(100_001, |m| m + 1))
            }),
        ),
        (
            "seed value",
            Box::new(|r| r.params.seed = Some(r.params.seed.map_or(1, |s| s.wrapping_add(1)))),
        ),
        (
            "seed set/unset",
            Box::new(|r| r.params.seed = toggled(&r.params.seed, 0)),
        ),
    ]
}

/// Changes of the other parameters: stop, response_format and the extra ones.
fn other_param_changes() -> Vec<Change> {
    vec![
        (
            "stop set/unset",
            Box::new(|r| r.params.stop = toggled(&r.params.stop, Vec::new())),
        ),
        (
            "stop items",
            Box::new(|r| {
                r.params
                    .stop
                    .get_or_insert_with(Vec::new)
                    .push("END".into())
            }),
        ),
        (
            "response_format",
            Box::new(|r| {
                r.params.response_format = toggled(&r.params.response_format, "text".into())
            }),
        ),
        (
            "extra new key",
            Box::new(|r| {
                r.params.extra.insert("new_key".into(), json!(1));
            }),
        ),
        (
            "extra value",
            Box::new(|r| match r.params.extra.values_mut().next() {
                Some(value) => *value = json!([value.clone()]),
                None => {
                    r.params.extra.insert("other_key".into(), json!("1"));
                }
            }),
        ),
    ]
}

/// Changes of the prompt: the output kind, the system and user messages.
fn prompt_changes() -> Vec<Change> {
    vec![
        (
            "output kind",
            Box::new(|r| {
                r.output = match &r.output {
                    OutputKind::Text => OutputKind::List { min: 1, max: 20 },
                    OutputKind::List { min, max } => OutputKind::List {
                        min: *min,
                        max: max + 1,
                    },
                    OutputKind::Json { fields } => OutputKind::Json {
                        fields: [fields.clone(), vec!["new_field".into()]].concat(),
                    },
                }
            }),
        ),
        (
            "system set/unset",
            Box::new(|r| r.system = toggled(&r.system, String::new())),
        ),
        (
            "system text",
            Box::new(|r| r.system.get_or_insert_with(String::new).push('x')),
        ),
        ("user", Box::new(|r| r.user.push(' '))),
    ]
}

/// Changes of the offline generator's inputs and of the sample seed.
fn offline_and_seed_changes() -> Vec<Change> {
    vec![
        (
            "offline set/unset",
            Box::new(|r| {
                r.offline = toggled(&r.offline, ("topic".into(), "bank".into(), BTreeMap::new()))
            }),
        ),
        (
            "offline task",
            Box::new(|r| r.offline.get_or_insert_with(Default::default).0.push('x')),
        ),
        (
            "offline bank",
            Box::new(|r| r.offline.get_or_insert_with(Default::default).1.push('0')),
        ),
        (
            "offline inputs",
            Box::new(|r| {
                r.offline
                    .get_or_insert_with(Default::default)
                    .2
                    .insert("new_key".into(), json!(null));
            }),
        ),
        (
            "sample_seed",
            Box::new(|r| r.sample_seed = r.sample_seed.wrapping_add(1)),
        ),
    ]
}

/// `entries` as a JSON object, inserted in the given order.
fn object_in_order(entries: &[(String, Value)]) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in entries {
        map.insert(k.clone(), v.clone());
    }
    Value::Object(map)
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn key_changes_when_any_single_request_field_changes(base in request()) {
        let changes = single_field_changes(&base);
        let base_key = base.key();
        let mut seen: Vec<(&str, &Request, ArtifactKey)> = Vec::new();
        for (field, changed) in &changes {
            prop_assert_ne!(changed, &base, "the change of `{}` changed nothing", field);
            let key = changed.key();
            prop_assert_ne!(key, base_key, "changing `{}` kept the key", field);
            for (other, other_request, other_key) in &seen {
                // Two changes that happen to make the same request must share a key; any two
                // different requests must not.
                prop_assert_eq!(
                    changed == *other_request,
                    key == *other_key,
                    "changing `{}` and changing `{}`", field, other
                );
            }
            seen.push((field, changed, key));
        }
    }

    #[test]
    fn key_is_the_same_for_the_same_request(request in request()) {
        prop_assert_eq!(request.key(), request.clone().key());
    }

    #[test]
    fn moving_text_between_neighbouring_fields_changes_the_key(
        text in ".{2,30}",
        cut in any::<prop::sample::Index>(),
        base in request(),
    ) {
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        let cut = boundaries[cut.index(boundaries.len())];
        let (left, right) = text.split_at(cut);
        let mut whole_user = base.clone();
        whole_user.system = Some(String::new());
        whole_user.user = text.clone();
        let mut split = base.clone();
        split.system = Some(left.to_string());
        split.user = right.to_string();
        prop_assert_ne!(whole_user.key(), split.key());

        let mut one_stop = base.clone();
        one_stop.params.stop = Some(vec![text.clone()]);
        let mut two_stops = base.clone();
        two_stops.params.stop = Some(vec![left.to_string(), right.to_string()]);
        prop_assert_ne!(one_stop.key(), two_stops.key());

        let mut provider_model = base.clone();
        provider_model.provider = left.to_string();
        provider_model.model = right.to_string();
        let mut shifted = base;
        shifted.provider = text.clone();
        shifted.model = String::new();
        prop_assert_ne!(provider_model.key(), shifted.key());
    }

    #[test]
    fn key_does_not_depend_on_map_insertion_order(
        base in request(),
        entries in prop::collection::btree_map("[a-z]{1,6}", json_value(), 1..6),
    ) {
        let forward: Vec<(String, Value)> = entries.into_iter().collect();
        let backward: Vec<(String, Value)> = forward.iter().rev().cloned().collect();
        let mut a = base.clone();
        let mut b = base;
        // The top-level maps are filled in opposite orders...
        for (k, v) in &forward {
            a.params.extra.insert(k.clone(), v.clone());
        }
        for (k, v) in &backward {
            b.params.extra.insert(k.clone(), v.clone());
        }
        // ...and so are nested objects, as a model's `extra` table or offline inputs may hold them.
        a.params.extra.insert("nested".into(), object_in_order(&forward));
        b.params.extra.insert("nested".into(), object_in_order(&backward));
        a.offline = Some(("topic".into(), "bank".into(), forward.iter().cloned().collect()));
        b.offline = Some(("topic".into(), "bank".into(), backward.iter().cloned().collect()));
        prop_assert_eq!(a.key(), b.key());
    }
}

/// A dataset.toml whose `[models.default]` holds `model_lines`, in that order.
fn dataset_with_model(model_lines: &[String]) -> String {
    format!(
        "[dataset]\nrows = 1\n\n[models.default]\n{}\n\n[nodes.topic]\nprompt = \"prompts/topic.jinja\"\n",
        model_lines.join("\n")
    )
}

fn parse(text: &str) -> Config {
    Config::parse(
        Path::new("dataset.toml"),
        text.to_string(),
        &Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn model_key(config: &Config) -> ArtifactKey {
    let model = &config.models["default"];
    KeyInput {
        provider: model.provider.name(),
        base_url: model.base_url.as_deref(),
        model: &model.model,
        params: &model.params,
        output: &OutputKind::Text,
        system: None,
        user: "hello",
        offline: None,
        sample_seed: 1,
        draw: 0,
    }
    .key()
}

proptest! {
    #![proptest_config(cases(32))]

    #[test]
    fn key_does_not_depend_on_the_order_of_keys_in_dataset_toml(
        lines in Just(vec![
            "provider = \"openai\"".to_string(),
            "model = \"gpt-4o-mini\"".to_string(),
            "temperature = 0.7".to_string(),
            "top_p = 0.9".to_string(),
            "max_tokens = 300".to_string(),
            "seed = 7".to_string(),
            "stop = [\"END\", \"STOP\"]".to_string(),
            "response_format = \"json_object\"".to_string(),
        ]).prop_shuffle(),
        extra in Just(vec!["a = 1", "b = { y = 2, x = [1, 2] }", "c = \"three\"", "d = true"]).prop_shuffle(),
    ) {
        let mut shuffled = lines.clone();
        shuffled.push(format!("extra = {{ {} }}", extra.join(", ")));
        let mut sorted = lines;
        sorted.sort();
        sorted.push("extra = { a = 1, b = { x = [1, 2], y = 2 }, c = \"three\", d = true }".to_string());
        let a = parse(&dataset_with_model(&shuffled));
        let b = parse(&dataset_with_model(&sorted));
        prop_assert_eq!(&a.models["default"].params, &b.models["default"].params);
        prop_assert_eq!(model_key(&a), model_key(&b));
    }
}

// -------------------------------------------------------------------------------------------------
// Rendering
// -------------------------------------------------------------------------------------------------

const RENDER_DATASET: &str = r#"[dataset]
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

[nodes.reply]
prompt = "prompts/reply.jinja"
when = "language != 'EN' or queue == 'IT Support'"
"#;

/// Loops, filters, object iteration, conditions and whitespace control: what could make a
/// rendering depend on anything but its context.
const REPLY_TEMPLATE: &str = r#"{# the answer to one ticket #}
--- system
You answer {{ language_name }} tickets ({{ language }}) in the {{ queue }} queue.
--- user
Ticket {{ ticket_id }} about {{ topic | upper }}.
{% for tag in tags %}
- {{ loop.index }}. {{ tag | trim }}
{% endfor %}
{% for field, value in paraphrase | items %}
{{ field }}: {{ value | replace("\n", " ") }}
{% endfor %}
{% if language != 'EN' %}Answer in {{ language_name }}.{% endif %}
Tags: {{ tags | join(", ") }} ({{ tags | length }}), subject length {{ paraphrase.subject | length }}
"#;

fn render_project() -> Project {
    let project = Project::empty();
    project
        .write("dataset.toml", RENDER_DATASET)
        .write("prompts/topic.jinja", "Name an issue for {{ queue }}.")
        .write("prompts/tags.jinja", "Tags for {{ topic }}.")
        .write("prompts/paraphrase.jinja", "Rewrite {{ topic }}.")
        .write("prompts/reply.jinja", REPLY_TEMPLATE);
    project
}

fn load_graph(project: &Project) -> (Config, Graph) {
    let config = Config::load(&project.file("dataset.toml"), &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let graph = Graph::load(&config).unwrap_or_else(|e| panic!("{e}"));
    (config, graph)
}

/// The template context of one ticket, built as the engine builds it.
fn ticket_context(
    ticket_id: u64,
    language: Language,
    queue: &str,
    topic: &str,
    tags: &[String],
    paraphrase: &BTreeMap<String, String>,
) -> minijinja::Value {
    let mut context: BTreeMap<String, minijinja::Value> = BTreeMap::new();
    context.insert("ticket_id".into(), ticket_id.to_string().into());
    context.insert("language".into(), language.code().into());
    context.insert("language_name".into(), language.name().into());
    context.insert("queue".into(), queue.into());
    let outputs = [
        ("topic", NodeOutput::Text(topic.to_string())),
        ("tags", NodeOutput::List(tags.to_vec())),
        ("paraphrase", NodeOutput::Json(paraphrase.clone())),
    ];
    for (name, output) in outputs {
        context.insert(name.into(), output.to_template_value());
    }
    minijinja::Value::from(context)
}

fn language() -> impl Strategy<Value = Language> {
    prop::sample::select(Language::ALL.to_vec())
}

proptest! {
    #![proptest_config(cases(32))]

    #[test]
    fn rendering_the_same_context_twice_gives_the_same_prompt(
        ticket_id in 100_000_000_000..10_000_000_000_000u64,
        language in language(),
        queue in ".{1,20}",
        topic in ".{1,40}",
        tags in prop::collection::vec(".{1,12}", 1..8),
        subject in ".{1,30}",
        body in "(.|\n){1,60}",
    ) {
        let project = render_project();
        let (_, graph) = load_graph(&project);
        let (_, graph_again) = load_graph(&project);
        let paraphrase = BTreeMap::from([("subject".to_string(), subject), ("body".to_string(), body)]);
        let context = ticket_context(ticket_id, language, &queue, &topic, &tags, &paraphrase);
        let same_context = ticket_context(ticket_id, language, &queue, &topic, &tags, &paraphrase);
        let reply = graph.node("reply").unwrap();
        let first = graph.render(reply, &context).unwrap();
        prop_assert_eq!(&first, &graph.render(reply, &context).unwrap());
        prop_assert_eq!(&first, &graph.render(reply, &same_context).unwrap());
        let reply_again = graph_again.node("reply").unwrap();
        prop_assert_eq!(&first, &graph_again.render(reply_again, &same_context).unwrap());
        prop_assert_eq!(
            graph.should_run(reply, &context).unwrap(),
            graph_again.should_run(reply_again, &same_context).unwrap()
        );
    }
}

/// The example dataset with `seed`, built into its own folder; returns the output files' bytes.
fn build_example(seed: u64, rows: u64) -> Vec<(String, Vec<u8>)> {
    let project = Project::example();
    let text = project.read("dataset.toml");
    let seed_line = text
        .lines()
        .find(|line| line.starts_with("seed = "))
        .expect("the example sets a seed")
        .to_string();
    project.edit("dataset.toml", &seed_line, &format!("seed = {seed}"));
    let run = project.run(&["build", "--rows", &rows.to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    project.snapshot("out")
}

proptest! {
    #![proptest_config(cases(6))]

    #[test]
    fn two_builds_with_the_same_seed_write_identical_files(
        seed in 0..i64::MAX as u64,
        rows in 1..12u64,
    ) {
        let first = build_example(seed, rows);
        let second = build_example(seed, rows);
        prop_assert!(!first.is_empty());
        prop_assert_eq!(first, second);
    }
}

// -------------------------------------------------------------------------------------------------
// Ticket ids
// -------------------------------------------------------------------------------------------------

fn one_table() -> Vec<Table> {
    vec![Table::weighted(
        "queue",
        vec![("IT Support".into(), 1.0), ("Billing".into(), 2.0)],
    )]
}

fn all_languages() -> Vec<(Language, f64)> {
    Language::ALL.iter().map(|l| (*l, 1.0)).collect()
}

proptest! {
    #![proptest_config(cases(16))]

    #[test]
    fn ticket_ids_are_unique_and_have_12_or_13_digits(seed in any::<u64>()) {
        let sampler = Sampler::new(seed, &all_languages(), &one_table());
        let mut seen = HashSet::new();
        for index in 0..10_000u64 {
            let id = sampler.sample(index).ticket_id;
            let digits = id.to_string().len();
            prop_assert!(digits == 12 || digits == 13, "ticket {} has id {}", index, id);
            prop_assert!(seen.insert(id), "ticket {} repeats id {}", index, id);
        }
    }

    #[test]
    fn a_ticket_id_leads_back_to_its_index(seed in any::<u64>(), index in 0..1_000_000u64) {
        let sampler = Sampler::new(seed, &all_languages(), &one_table());
        let id = sampler.sample(index).ticket_id;
        prop_assert_eq!(sampler.index_of(id, 1_000_000), Some(index));
    }
}

// -------------------------------------------------------------------------------------------------
// CSV and JSONL round trips
// -------------------------------------------------------------------------------------------------

/// Strings that break naive writers: quotes, separators, line breaks, NUL, RTL text, emoji,
/// combining marks, and anything else Unicode holds.
fn awkward_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\"".to_string()),
        Just("\"\"".to_string()),
        Just(",".to_string()),
        Just(";".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\r".to_string()),
        Just("\t".to_string()),
        Just("\0".to_string()),
        Just("\\".to_string()),
        Just("'".to_string()),
        Just(" ".to_string()),
        Just("é".to_string()),
        Just("e\u{301}".to_string()),
        Just("😀".to_string()),
        Just("👩‍💻".to_string()),
        Just("שלום".to_string()),
        Just("مرحبا".to_string()),
        Just("\u{202e}".to_string()),
        Just("漢字".to_string()),
        Just("=1+1".to_string()),
        "[a-zA-Z0-9]{1,6}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 1..6).prop_map(|pieces| pieces.concat())
}

/// `text` as a TOML basic string: quotes, backslashes and control characters escaped.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn round_trip_dataset(seed: u64, rows: usize, categories: &BTreeSet<String>) -> String {
    let mut text = format!(
        "[dataset]\nname = \"roundtrip\"\nrows = {rows}\nseed = {seed}\nformats = [\"csv\", \"jsonl\"]\n\n[tables.queue]\n\"IT Support\" = 1\n\n[tables.text]\n"
    );
    for category in categories {
        text.push_str(&format!("{} = 1\n", toml_string(category)));
    }
    text.push_str("\n[nodes.topic]\nprompt = \"prompts/topic.jinja\"\n\n[output.columns]\nticket_id = \"ticket_id\"\ntext = \"text\"\n");
    text
}

/// The `text` category the sampler draws for each ticket, with the ticket's id.
fn drawn_categories(config: &Config) -> Vec<(String, String)> {
    let sampler = Sampler::new(config.seed, &config.languages, &config.tables);
    let column = config.tables.iter().position(|t| t.name == "text").unwrap();
    (0..config.rows)
        .map(|i| {
            let sample = sampler.sample(i);
            (
                sample.ticket_id.to_string(),
                sample.categories[column].clone(),
            )
        })
        .collect()
}

fn read_csv(path: &Path) -> Vec<(String, String)> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    assert_eq!(headers.iter().collect::<Vec<_>>(), ["ticket_id", "text"]);
    reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            (record[0].to_string(), record[1].to_string())
        })
        .collect()
}

fn read_jsonl(path: &Path) -> Vec<(String, String)> {
    crate::support::read_jsonl(path)
        .into_iter()
        .map(|row| {
            let field = |name: &str| {
                row[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: {row:?}"))
                    .to_string()
            };
            (field("ticket_id"), field("text"))
        })
        .collect()
}

fn out_file(project: &Project, extension: &str) -> PathBuf {
    project.file(&format!("out/roundtrip.{extension}"))
}

proptest! {
    #![proptest_config(cases(12))]

    #[test]
    fn csv_and_jsonl_round_trip_any_category_string(
        categories in prop::collection::btree_set(awkward_string(), 1..6),
        seed in 0..1_000_000u64,
    ) {
        let rows = categories.len() * 3;
        let dataset = round_trip_dataset(seed, rows, &categories);
        let project = Project::empty();
        project
            .write("dataset.toml", &dataset)
            .write("prompts/topic.jinja", "Name an issue for the {{ queue }} queue.");
        let run = project.run(&["build"]);
        prop_assert_eq!(run.code, 0, "{}\n{}", run.stderr, dataset);

        let config = parse(&dataset);
        let expected = drawn_categories(&config);
        prop_assert_eq!(read_csv(&out_file(&project, "csv")), expected.clone(), "CSV");
        prop_assert_eq!(read_jsonl(&out_file(&project, "jsonl")), expected, "JSONL");
    }
}
