//! Tests of the offline model through its public interface, plus checks of the compiled-in bank.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::bank::{Bank, Lang, Localized, bank};
use super::compose::fill;
use super::world::World;
use super::*;

const QUEUES: [&str; 10] = [
    "Technical Support",
    "Customer Service",
    "Billing and Payments",
    "Product Support",
    "IT Support",
    "Returns and Exchanges",
    "Sales and Pre-Sales",
    "Human Resources",
    "Service Outages and Maintenance",
    "General Inquiry",
];

const PLACEHOLDERS: [&str; 8] = [
    "product", "error", "order", "date", "title", "name", "agent", "queue",
];
const TOPIC_PLACEHOLDERS: [&str; 4] = ["product", "error", "order", "date"];

fn inputs(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect()
}

fn run(task: &str, pairs: &[(&str, Value)], seed: u64) -> Result<OfflineOutput, OfflineError> {
    run_draw(task, pairs, seed, 0)
}

/// Draw `draw` of a task (a later one is asked for when checks reject the earlier).
fn run_draw(
    task: &str,
    pairs: &[(&str, Value)],
    seed: u64,
    draw: u32,
) -> Result<OfflineOutput, OfflineError> {
    let inputs = inputs(pairs);
    generate(&OfflineRequest {
        task,
        inputs: &inputs,
        sample_seed: seed,
        draw,
    })
}

fn text(output: OfflineOutput) -> String {
    match output {
        OfflineOutput::Text(text) => text,
        other => panic!("expected text, got {other:?}"),
    }
}

fn list(output: OfflineOutput) -> Vec<String> {
    match output {
        OfflineOutput::List(items) => items,
        other => panic!("expected a list, got {other:?}"),
    }
}

fn object(output: OfflineOutput) -> BTreeMap<String, String> {
    match output {
        OfflineOutput::Json(object) => object,
        other => panic!("expected an object, got {other:?}"),
    }
}

fn to_value(object: &BTreeMap<String, String>) -> Value {
    serde_json::to_value(object).expect("a map of strings serializes")
}

/// The table columns of one sample, varied over the seed the way a real table would be
/// (including absent and unknown type/priority values).
struct Sample {
    seed: u64,
    queue: &'static str,
    topic: String,
    kind: Value,
    priority: Value,
}

impl Sample {
    fn new(seed: u64) -> Sample {
        const KINDS: [Option<&str>; 6] = [
            Some("Incident"),
            Some("Request"),
            Some("Problem"),
            Some("Change"),
            None,
            Some("Question"),
        ];
        const PRIORITIES: [Option<&str>; 5] = [
            Some("low"),
            Some("medium"),
            Some("High"),
            None,
            Some("urgent"),
        ];
        let queue = QUEUES[seed as usize % QUEUES.len()];
        let topic = text(run("topic", &[("queue", json!(queue))], seed).expect("topic"));
        let value = |option: Option<&str>| option.map_or(Value::Null, |v| json!(v));
        Sample {
            seed,
            queue,
            topic,
            kind: value(KINDS[(seed / 10) as usize % KINDS.len()]),
            priority: value(PRIORITIES[(seed / 7) as usize % PRIORITIES.len()]),
        }
    }

    fn run(&self, task: &str, extra: &[(&str, Value)]) -> Result<OfflineOutput, OfflineError> {
        self.run_draw(task, extra, 0)
    }

    fn run_draw(
        &self,
        task: &str,
        extra: &[(&str, Value)],
        draw: u32,
    ) -> Result<OfflineOutput, OfflineError> {
        let mut pairs = vec![
            ("topic", json!(self.topic)),
            ("type", self.kind.clone()),
            ("priority", self.priority.clone()),
        ];
        pairs.extend(extra.iter().cloned());
        run_draw(task, &pairs, self.seed, draw)
    }

    fn subject(&self) -> String {
        text(self.run("subject", &[]).expect("subject"))
    }

    fn body(&self) -> String {
        text(self.run("body", &[]).expect("body"))
    }

    fn paraphrase(&self) -> BTreeMap<String, String> {
        object(self.run("paraphrase", &[]).expect("paraphrase"))
    }

    fn translation(&self, lang: &str) -> BTreeMap<String, String> {
        let paraphrase = to_value(&self.paraphrase());
        let extra = [("language", json!(lang)), ("paraphrase", paraphrase)];
        object(self.run("translation", &extra).expect("translation"))
    }

    fn first_response(&self, lang: &str) -> String {
        let extra = [("language", json!(lang)), ("queue", json!(self.queue))];
        text(self.run("first_response", &extra).expect("first_response"))
    }

    fn tags(&self) -> Vec<String> {
        list(
            self.run("tags", &[("queue", json!(self.queue))])
                .expect("tags"),
        )
    }
}

fn every_pattern(bank: &Bank) -> Vec<(String, &Localized)> {
    let mut patterns: Vec<(String, &Localized)> = Vec::new();
    for (name, list) in bank.phrases.variant_lists() {
        for (index, pattern) in list.iter().enumerate() {
            patterns.push((format!("{name}[{index}]"), pattern));
        }
    }
    for queue in &bank.phrases.queue {
        patterns.push((format!("queue `{}` name", queue.id), &queue.name));
    }
    for topic in &bank.topics {
        patterns.push((format!("topic `{}` title", topic.id), &topic.title));
        patterns.push((format!("topic `{}` detail", topic.id), &topic.detail));
        patterns.push((format!("topic `{}` step", topic.id), &topic.step));
    }
    patterns
}

/// The names between braces in `text` (an unclosed brace yields the rest of the text).
fn placeholders(text: &str) -> Vec<&str> {
    text.split('{')
        .skip(1)
        .map(|rest| rest.split('}').next().unwrap_or(rest))
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Interface

#[test]
fn task_specs_cover_exactly_the_tasks() {
    for task in TASKS {
        assert!(task_spec(task).is_some(), "no spec for `{task}`");
    }
    assert_eq!(SPECS.len(), TASKS.len());
    assert!(task_spec("summary").is_none());
    let translation = task_spec("translation").expect("translation spec");
    assert_eq!(translation.required, ["topic", "language", "paraphrase"]);
    assert_eq!(translation.output, TaskOutput::Json(&["subject", "body"]));
    assert_eq!(
        task_spec("tags").expect("tags spec").output,
        TaskOutput::List
    );
}

#[test]
fn every_task_generates_the_declared_output_kind() {
    let sample = Sample::new(42);
    let paraphrase = to_value(&sample.paraphrase());
    for task in TASKS {
        let output = match *task {
            "topic" => run(task, &[("queue", json!("IT Support"))], 42),
            _ => sample.run(
                task,
                &[
                    ("queue", json!("IT Support")),
                    ("language", json!("FR")),
                    ("paraphrase", paraphrase.clone()),
                ],
            ),
        }
        .unwrap_or_else(|error| panic!("`{task}` failed: {error}"));
        match (task_spec(task).expect("spec").output, output) {
            (TaskOutput::Text, OfflineOutput::Text(text)) => assert!(!text.is_empty()),
            (TaskOutput::List, OfflineOutput::List(items)) => assert!(!items.is_empty()),
            (TaskOutput::Json(keys), OfflineOutput::Json(object)) => {
                let mut expected = keys.to_vec();
                expected.sort_unstable();
                assert!(object.keys().map(String::as_str).eq(expected));
            }
            (declared, output) => panic!("`{task}` declares {declared:?}, gave {output:?}"),
        }
    }
}

#[test]
fn same_request_gives_the_same_output() {
    for seed in [0, 1, 99, u64::MAX] {
        let a = Sample::new(seed);
        let b = Sample::new(seed);
        assert_eq!(a.topic, b.topic);
        assert_eq!(a.subject(), b.subject());
        assert_eq!(a.body(), b.body());
        assert_eq!(a.tags(), b.tags());
        assert_eq!(a.translation("DE"), b.translation("DE"));
        assert_eq!(a.first_response("PT"), b.first_response("PT"));
    }
}

#[test]
fn different_seeds_give_different_outputs() {
    // Same topic and columns, only the seed differs.
    let topic = Sample::new(3).topic;
    let outputs: Vec<(String, String, String)> = (0..20)
        .map(|seed| {
            let pairs = [("topic", json!(topic)), ("language", json!("ES"))];
            let subject = text(run("subject", &pairs, seed).expect("subject"));
            let body = text(run("body", &pairs, seed).expect("body"));
            let reply = text(run("first_response", &pairs, seed).expect("reply"));
            (subject, body, reply)
        })
        .collect();
    for (i, a) in outputs.iter().enumerate() {
        for b in &outputs[i + 1..] {
            assert_ne!(a.0, b.0);
            assert_ne!(a.1, b.1);
            assert_ne!(a.2, b.2);
        }
    }
}

#[test]
fn outputs_do_not_depend_on_unrelated_inputs_or_call_order() {
    let sample = Sample::new(5);
    let body_first = sample.body();
    let subject_after = sample.subject();
    let subject_first = Sample::new(5).subject();
    assert_eq!(subject_after, subject_first);
    // Extra keys the task does not read change nothing.
    let extra = sample
        .run(
            "body",
            &[("ticket_id", json!("T-1")), ("queue", json!("x"))],
        )
        .expect("body");
    assert_eq!(text(extra), body_first);
}

// ------------------------------------------------------------------------------------------------
// Quality bar

#[test]
fn drafts_and_translations_are_unique_across_2000_seeds() {
    let mut subjects = HashSet::new();
    let mut bodies = HashSet::new();
    let mut translated: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    for seed in 0..2000 {
        let sample = Sample::new(seed);
        let subject = sample.subject();
        assert!(
            subjects.insert(subject.clone()),
            "seed {seed}: repeated subject {subject:?}"
        );
        let body = sample.body();
        assert!(
            bodies.insert(body.clone()),
            "seed {seed}: repeated body {body:?}"
        );
        for lang in ["DE", "EN", "FR", "ES", "PT"] {
            let body = sample.translation(lang).remove("body").expect("body");
            let seen = translated.entry(lang).or_default();
            assert!(
                seen.insert(body.clone()),
                "seed {seed}: repeated {lang} body {body:?}"
            );
        }
    }
}

#[test]
fn paraphrase_rewrites_the_draft_with_the_same_facts() {
    let bank = bank();
    for seed in 0..500 {
        let sample = Sample::new(seed);
        let (subject, body) = (sample.subject(), sample.body());
        let paraphrase = sample.paraphrase();
        assert_ne!(paraphrase["subject"], subject, "seed {seed}");
        assert_ne!(paraphrase["body"], body, "seed {seed}");
        // Both carry the topic's detail with the same facts, and the customer's name.
        let topic = bank.topic_by_title(&sample.topic).expect("topic");
        let world = World::derive(seed, topic, &bank.phrases.names);
        let date = world.date.format(Lang::En, &bank.phrases);
        let detail = fill(topic.detail.text(Lang::En), |key| match key {
            "product" => Some(world.product.as_str()),
            "error" => Some(world.error.as_str()),
            "order" => Some(world.order.as_str()),
            "date" => Some(date.as_str()),
            _ => None,
        });
        for text in [&body, &paraphrase["body"]] {
            assert!(
                text.contains(&detail),
                "seed {seed}: {detail:?} not in {text:?}"
            );
            assert!(text.ends_with(&format!("\n{}", world.customer)), "{text}");
        }
    }
}

#[test]
fn translation_is_a_parallel_text_with_the_same_facts() {
    let bank = bank();
    for seed in 0..200 {
        let sample = Sample::new(seed);
        let english = sample.paraphrase();
        assert_eq!(
            sample.translation("EN"),
            english,
            "EN returns the paraphrase unchanged"
        );
        let topic = bank.topic_by_title(&sample.topic).expect("topic");
        let name = english["body"].lines().last().expect("name").to_owned();
        for lang in [Lang::De, Lang::Fr, Lang::Es, Lang::Pt] {
            let translated = sample.translation(lang.code());
            let (subject, body) = (&translated["subject"], &translated["body"]);
            assert!(subject.contains(topic.title.text(lang)), "{subject}");
            assert!(body.ends_with(&format!("\n{name}")), "{body}");
            assert_eq!(
                body.matches("\n\n").count(),
                english["body"].matches("\n\n").count()
            );
            assert_ne!(body, &english["body"]);
            // Codes and order numbers are language-neutral and carried over verbatim.
            for token in english["subject"].split([' ', '(', ')', '[', ']', ',', ':']) {
                if token.starts_with('#') || token.starts_with("0x") || token.starts_with("ERR-") {
                    assert!(subject.contains(token), "{token} missing in {subject}");
                }
            }
        }
    }
}

/// Checks may reject a paraphrase or a translation and ask for another draw. A translation finds
/// the paraphrase whichever of its draws wrote it; its first draw (or the paraphrase's own) says
/// the paraphrase in the language, a later one the same facts in other phrases, still in the
/// language (a redrawn translation used to fail: it looked for the paraphrase under its own seed).
#[test]
fn redrawn_paraphrases_and_translations_are_translated() {
    use whatlang::Lang as Detected;
    let bank = bank();
    let mut misdetected = Vec::new();
    for seed in 0..100 {
        let sample = Sample::new(seed);
        let topic = bank.topic_by_title(&sample.topic).expect("topic");
        let translate = |paraphrase: &BTreeMap<String, String>, lang: &str, draw: u32| {
            let extra = [
                ("language", json!(lang)),
                ("paraphrase", to_value(paraphrase)),
            ];
            object(
                sample
                    .run_draw("translation", &extra, draw)
                    .unwrap_or_else(|e| panic!("seed {seed} {lang} draw {draw}: {e}")),
            )
        };
        let first = sample.paraphrase();
        let second = object(sample.run_draw("paraphrase", &[], 1).expect("paraphrase"));
        assert_ne!(first, second, "a redrawn paraphrase differs");
        // The second paraphrase's translation: its first draw and its own draw agree.
        assert_eq!(translate(&second, "DE", 0), translate(&second, "DE", 1));
        let name = first["body"].lines().last().expect("name").to_owned();
        for (code, lang, detected) in [
            ("DE", Lang::De, Detected::Deu),
            ("FR", Lang::Fr, Detected::Fra),
            ("ES", Lang::Es, Detected::Spa),
            ("PT", Lang::Pt, Detected::Por),
        ] {
            let said = translate(&first, code, 0);
            let again = translate(&first, code, 1);
            assert_ne!(
                again, said,
                "seed {seed} {code}: a redraw says it otherwise"
            );
            assert!(
                again["subject"].contains(topic.title.text(lang)),
                "{again:?}"
            );
            assert!(again["body"].ends_with(&format!("\n{name}")), "{again:?}");
            assert_eq!(translate(&first, code, 1), again, "deterministic");
            if whatlang::detect_lang(&again["body"]) != Some(detected) {
                misdetected.push(format!("seed {seed} {code}: {}", again["body"]));
            }
        }
    }
    assert!(misdetected.is_empty(), "{}", misdetected.join("\n---\n"));
}

#[test]
fn translation_of_foreign_text_is_refused() {
    let sample = Sample::new(11);
    let own = sample.paraphrase();
    let translate = |paraphrase: Value, lang: &str| {
        sample.run(
            "translation",
            &[("language", json!(lang)), ("paraphrase", paraphrase)],
        )
    };
    let written_elsewhere = json!({
        "subject": "Printer on floor 3 is jammed again",
        "body": "Hello, the printer on floor 3 keeps jamming. Please send someone. Thanks, Sam",
    });
    let mut edited = own.clone();
    edited.insert("body".into(), format!("{} ", own["body"]));
    let mut no_body = own.clone();
    no_body.remove("body");
    for foreign in [written_elsewhere, to_value(&edited), to_value(&no_body)] {
        for lang in ["DE", "EN"] {
            let error = translate(foreign.clone(), lang).expect_err("foreign text");
            assert!(matches!(
                error,
                OfflineError::ForeignText {
                    task: "translation"
                }
            ));
            assert!(error.to_string().contains("set a real model for this node"));
        }
    }
    // Another seed's paraphrase of the same topic is foreign too: its world differs.
    let other = Sample {
        seed: 12,
        ..Sample::new(11)
    };
    let error = translate(to_value(&other.paraphrase()), "FR").expect_err("other seed");
    assert!(matches!(error, OfflineError::ForeignText { .. }));
    let error = translate(json!("just a string"), "FR").expect_err("not an object");
    assert!(matches!(
        error,
        OfflineError::InvalidInput {
            name: "paraphrase",
            ..
        }
    ));
}

#[test]
fn translation_accepts_a_paraphrase_made_without_type_or_priority() {
    for seed in 0..50 {
        let sample = Sample::new(seed);
        let plain = [("topic", json!(sample.topic))];
        let paraphrase = object(run("paraphrase", &plain, seed).expect("paraphrase"));
        let translated = sample
            .run(
                "translation",
                &[
                    ("language", json!("DE")),
                    ("paraphrase", to_value(&paraphrase)),
                ],
            )
            .expect("translation with type and priority given");
        let expected = run(
            "translation",
            &[
                ("topic", json!(sample.topic)),
                ("language", json!("DE")),
                ("paraphrase", to_value(&paraphrase)),
            ],
            seed,
        )
        .expect("translation without");
        assert_eq!(translated, expected);
    }
}

#[test]
fn whatlang_detects_the_language_of_translations_and_replies() {
    use whatlang::Lang as Detected;
    let expected = [
        ("DE", Detected::Deu),
        ("EN", Detected::Eng),
        ("FR", Detected::Fra),
        ("ES", Detected::Spa),
        ("PT", Detected::Por),
    ];
    let mut failures = Vec::new();
    for seed in 0..300 {
        let sample = Sample::new(seed);
        for (code, lang) in expected {
            let body = sample.translation(code).remove("body").expect("body");
            let reply = sample.first_response(code);
            for (what, text) in [("body", body), ("first_response", reply)] {
                let detected = whatlang::detect_lang(&text);
                if detected != Some(lang) {
                    failures.push(format!("seed {seed} {code} {what}: {detected:?}\n{text}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} misdetected:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}

#[test]
fn tags_are_four_to_eight_unique_lowercase_english_words() {
    let mut counts = BTreeMap::new();
    for seed in 0..1000 {
        let sample = Sample::new(seed);
        let mut variants = vec![sample.tags()];
        // Without a queue input the topic's own queue contributes its tags.
        variants.push(list(sample.run("tags", &[]).expect("tags")));
        for tags in variants {
            assert!((4..=8).contains(&tags.len()), "{tags:?}");
            let unique: HashSet<&String> = tags.iter().collect();
            assert_eq!(unique.len(), tags.len(), "{tags:?}");
            for tag in &tags {
                assert_eq!(tag, &tag.to_lowercase());
                assert!(
                    !tag.is_empty() && !tag.contains(char::is_whitespace),
                    "{tag:?}"
                );
                assert!(tag.is_ascii(), "{tag:?}");
            }
            *counts.entry(tags.len()).or_insert(0) += 1;
        }
    }
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), [4, 5, 6, 7, 8]);
}

#[test]
fn first_response_greets_quotes_the_title_and_signs() {
    let bank = bank();
    for seed in 0..100 {
        let sample = Sample::new(seed);
        let topic = bank.topic_by_title(&sample.topic).expect("topic");
        let queue = bank.phrases.queue(sample.queue).expect("bank queue");
        let name = sample.body().lines().last().expect("name").to_owned();
        for lang in Lang::ALL {
            let reply = sample.first_response(lang.code());
            assert!(
                reply.lines().next().expect("greeting").contains(&name),
                "{reply}"
            );
            assert!(reply.contains(topic.title.text(lang)), "{reply}");
            assert!(
                reply.ends_with(&format!("\n{}", queue.name.text(lang))),
                "{reply}"
            );
            let agent = reply.lines().rev().nth(1).expect("agent");
            assert_ne!(agent, name);
        }
    }
    // A queue the bank does not know signs with the given name.
    let sample = Sample::new(1);
    let reply = text(
        sample
            .run(
                "first_response",
                &[("language", json!("EN")), ("queue", json!("Night Shift"))],
            )
            .expect("reply"),
    );
    assert!(reply.ends_with("\nNight Shift"), "{reply}");
}

#[test]
fn no_output_contains_braces() {
    for seed in 0..300 {
        let sample = Sample::new(seed);
        let mut texts = vec![sample.subject(), sample.body()];
        for lang in ["DE", "EN", "FR", "ES", "PT"] {
            texts.extend(sample.translation(lang).into_values());
            texts.push(sample.first_response(lang));
        }
        for text in texts {
            assert!(!text.contains(['{', '}']), "{text}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Inputs and errors

#[test]
fn topic_picks_from_the_queue_or_from_all_topics() {
    let bank = bank();
    for seed in 0..200 {
        for queue in QUEUES {
            let title = text(run("topic", &[("queue", json!(queue))], seed).expect("topic"));
            let topic = bank.topic_by_title(&title).expect("known title");
            if bank.topics.iter().any(|t| t.queue == queue) {
                assert_eq!(topic.queue, queue);
            }
        }
    }
    let picked: HashSet<String> = (0..2000)
        .map(|seed| text(run("topic", &[("queue", json!("Legal"))], seed).expect("topic")))
        .collect();
    let queues: HashSet<&str> = picked
        .iter()
        .map(|title| bank.topic_by_title(title).expect("known").queue.as_str())
        .collect();
    assert!(queues.len() > 1, "an unknown queue picks among all topics");
}

#[test]
fn type_and_priority_are_case_insensitive_and_fall_back() {
    let sample = Sample::new(8);
    let with = |kind: &str, priority: &str| {
        let pairs = [
            ("topic", json!(sample.topic)),
            ("type", json!(kind)),
            ("priority", json!(priority)),
        ];
        text(run("body", &pairs, 8).expect("body"))
    };
    assert_eq!(with("Incident", "high"), with("incident", "HIGH"));
    assert_eq!(with(" Change ", "Low"), with("change", "low"));
    // Unknown values use the generic variants, which differ from every typed one.
    let generic = with("Question", "whenever");
    for kind in ["Incident", "Request", "Problem", "Change"] {
        assert_ne!(with(kind, "whenever"), generic);
    }
    // Blank means absent: the value is drawn from the seed, like a missing column.
    let blank = [
        ("topic", json!(sample.topic)),
        ("type", json!("  ")),
        ("priority", Value::Null),
    ];
    let absent = [("topic", json!(sample.topic))];
    assert_eq!(
        run("body", &blank, 8).expect("blank"),
        run("body", &absent, 8).expect("absent")
    );
}

#[test]
fn errors_name_the_task_and_the_input() {
    let error = run("summary", &[], 1).expect_err("unknown task");
    assert!(matches!(error, OfflineError::UnknownTask { .. }));
    assert!(error.to_string().contains("`summary`"));

    let error = run("subject", &[], 1).expect_err("no topic");
    assert!(matches!(
        error,
        OfflineError::MissingInput {
            task: "subject",
            name: "topic"
        }
    ));
    let error = run("subject", &[("topic", Value::Null)], 1).expect_err("skipped topic");
    assert!(matches!(
        error,
        OfflineError::MissingInput { name: "topic", .. }
    ));
    let error = run("topic", &[("queue", json!(["a"]))], 1).expect_err("list queue");
    assert!(matches!(
        error,
        OfflineError::InvalidInput { name: "queue", .. }
    ));

    let error = run("body", &[("topic", json!("Kettle is broken"))], 1).expect_err("foreign");
    assert!(matches!(&error, OfflineError::UnknownTopic { title } if title == "Kettle is broken"));

    let topic = Sample::new(1).topic;
    let pairs = [("topic", json!(topic)), ("language", json!("IT"))];
    let error = run("first_response", &pairs, 1).expect_err("italian");
    assert!(matches!(&error, OfflineError::UnknownLanguage { language } if language == "IT"));
    let pairs = [("topic", json!(topic))];
    let error = run("first_response", &pairs, 1).expect_err("no language");
    assert!(matches!(
        error,
        OfflineError::MissingInput {
            name: "language",
            ..
        }
    ));
    let pairs = [("topic", json!(topic)), ("type", json!({"a": "b"}))];
    let error = run("subject", &pairs, 1).expect_err("object type");
    assert!(matches!(
        error,
        OfflineError::InvalidInput { name: "type", .. }
    ));

    for error in [
        run("summary", &[], 1).expect_err("e"),
        run("subject", &[], 1).expect_err("e"),
    ] {
        let message = error.to_string();
        assert!(message.starts_with(char::is_lowercase), "{message}");
    }
}

#[test]
fn language_codes_are_case_insensitive() {
    let sample = Sample::new(4);
    assert_eq!(sample.first_response("fr"), sample.first_response("FR"));
    assert_eq!(sample.translation("pt"), sample.translation("PT"));
}

// ------------------------------------------------------------------------------------------------
// The bank

#[test]
fn bank_loads_and_passes_its_checks() {
    let bank = Bank::load().expect("bank loads");
    assert!(bank.check().is_ok());
    assert_eq!(bank.phrases.queue.len(), QUEUES.len());
    for queue in QUEUES {
        assert!(
            bank.phrases.queue(queue).is_some(),
            "queue `{queue}` missing"
        );
    }
}

#[test]
fn every_placeholder_is_known_and_every_pattern_renders_completely() {
    let bank = bank();
    for (name, pattern) in every_pattern(bank) {
        for lang in Lang::ALL {
            let text = pattern.text(lang);
            assert!(
                !text.trim().is_empty(),
                "{name} is empty in {}",
                lang.code()
            );
            for placeholder in placeholders(text) {
                assert!(
                    PLACEHOLDERS.contains(&placeholder),
                    "{name} ({}) uses unknown placeholder `{{{placeholder}}}`",
                    lang.code()
                );
            }
            let rendered = fill(text, |key| PLACEHOLDERS.contains(&key).then_some("x"));
            assert!(
                !rendered.contains(['{', '}']),
                "{name} ({}): {rendered}",
                lang.code()
            );
        }
    }
}

#[test]
fn variant_lists_offer_distinct_alternatives() {
    for (name, list) in bank().phrases.variant_lists() {
        assert!(
            list.len() >= 2,
            "`{name}` needs two variants for the paraphrase"
        );
        // The paraphrase guarantee needs distinct English variants; the other languages should
        // at least use the same placeholders as English, so a translation keeps every fact.
        let english: HashSet<&str> = list.iter().map(|p| p.text(Lang::En)).collect();
        assert_eq!(
            english.len(),
            list.len(),
            "`{name}` repeats an English variant"
        );
        for pattern in list {
            let mut expected = placeholders(pattern.text(Lang::En));
            expected.sort_unstable();
            for lang in Lang::ALL {
                let mut found = placeholders(pattern.text(lang));
                found.sort_unstable();
                assert_eq!(
                    found,
                    expected,
                    "`{name}` {}: {}",
                    lang.code(),
                    pattern.text(lang)
                );
            }
        }
    }
}

#[test]
fn subject_patterns_make_subjects_practically_unique() {
    for (name, list) in bank().phrases.variant_lists() {
        if name.starts_with("subject.") {
            for pattern in list {
                let text = pattern.text(Lang::En);
                assert!(text.contains("{title}"), "`{name}`: {text}");
                assert!(
                    text.contains("{error}") || text.contains("{order}"),
                    "`{name}`: {text} needs an error code or order number"
                );
            }
        }
    }
}

#[test]
fn topics_are_complete_and_consistent() {
    let bank = bank();
    let mut ids = HashSet::new();
    let mut titles = HashSet::new();
    for topic in &bank.topics {
        assert!(ids.insert(&topic.id), "duplicate topic id `{}`", topic.id);
        let title = topic.title.text(Lang::En);
        assert!(titles.insert(title), "duplicate EN title `{title}`");
        assert!(
            bank.phrases.queue(&topic.queue).is_some(),
            "`{}`: queue `{}`",
            topic.id,
            topic.queue
        );
        assert!(
            !topic.tags.is_empty() && !topic.products.is_empty(),
            "`{}`",
            topic.id
        );
        for lang in Lang::ALL {
            let code = lang.code();
            assert!(
                placeholders(topic.title.text(lang)).is_empty(),
                "`{}` title {code}",
                topic.id
            );
            for (field, text) in [("detail", &topic.detail), ("step", &topic.step)] {
                for placeholder in placeholders(text.text(lang)) {
                    assert!(
                        TOPIC_PLACEHOLDERS.contains(&placeholder),
                        "`{}` {field}.{code} uses `{{{placeholder}}}`",
                        topic.id
                    );
                }
            }
        }
    }
}

#[test]
fn every_queue_has_at_least_ten_topics() {
    // Passes once the topic writers have filled topics_1.toml and topics_2.toml.
    let bank = bank();
    let short: Vec<String> = QUEUES
        .iter()
        .map(|queue| {
            (
                queue,
                bank.topics.iter().filter(|t| t.queue == *queue).count(),
            )
        })
        .filter(|(_, count)| *count < 10)
        .map(|(queue, count)| format!("{queue}: {count}"))
        .collect();
    assert!(
        short.is_empty(),
        "queues with fewer than 10 topics: {short:?}"
    );
}
