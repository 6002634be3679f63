//! Bad input: one located line per problem, exit code 2, no panic, nothing written.

use crate::support::Project;

const DATASET: &str = r#"version = 1

[dataset]
name = "mini"
rows = 5
seed = 1
formats = ["csv"]

[dataset.languages]
EN = 1
DE = 2

[tables.queue]
"IT Support" = 2
"Billing and Payments" = 1

[models.default]
provider = "offline"

[nodes.topic]
prompt = "prompts/topic.jinja"

[nodes.subject]
prompt = "prompts/subject.jinja"
"#;

const TOPIC: &str = "--- user\nName an issue for the {{ queue }} queue.\n";
const SUBJECT: &str =
    "--- system\nYou are a customer.\n--- user\nWrite a subject about {{ topic }}.\n";

fn project() -> Project {
    let project = Project::empty();
    project
        .write("dataset.toml", DATASET)
        .write("prompts/topic.jinja", TOPIC)
        .write("prompts/subject.jinja", SUBJECT);
    project
}

/// Runs `build` and checks the failure contract; returns the error lines (without the caret
/// snippets and the closing count line).
fn fails(project: &Project) -> Vec<String> {
    let run = project.run(&["build"]);
    assert_eq!(
        run.code, 2,
        "expected exit code 2\nstdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        !project.file("out").exists(),
        "the output folder was created"
    );
    assert!(
        !project.file("cache").exists(),
        "the cache folder was created"
    );
    assert!(
        run.stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .ends_with("nothing was built"),
        "{}",
        run.stderr
    );
    run.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .map(str::to_string)
        .collect()
}

fn fails_with(project: &Project, expected: &[&str]) {
    let errors = fails(project);
    assert_eq!(errors, expected, "full stderr lines differ");
}

#[test]
fn the_minimal_project_builds() {
    let project = project();
    let run = project.run(&["build"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn malformed_toml() {
    let p = project();
    p.edit("dataset.toml", "rows = 5", "rows = ");
    fails_with(&p, &["dataset.toml:5:8: expected a value after `=`"]);
}

#[test]
fn unknown_key_is_rejected() {
    let p = project();
    p.edit("dataset.toml", "rows = 5", "rows = 5\nrwos = 6");
    fails_with(
        &p,
        &[
            "dataset.toml:6:1: `dataset.rwos`: unknown key `rwos` (did you mean `rows`?); expected one of `name`, `rows`, `seed`, `output`, `cache`, `formats`, `languages`, `concurrency`, `license`",
        ],
    );
}

#[test]
fn wrong_type() {
    let p = project();
    p.edit("dataset.toml", "rows = 5", "rows = \"five\"");
    fails_with(
        &p,
        &["dataset.toml:5:8: `dataset.rows`: invalid type: string \"five\", expected an integer"],
    );
}

#[test]
fn missing_prompt_file() {
    let p = project();
    std::fs::remove_file(p.file("prompts/subject.jinja")).unwrap();
    fails_with(
        &p,
        &[
            "dataset.toml:24:10: `nodes.subject.prompt`: cannot read the prompt file `prompts/subject.jinja`: no such file",
        ],
    );
}

#[test]
fn unknown_model_reference() {
    let p = project();
    p.edit(
        "dataset.toml",
        "prompt = \"prompts/subject.jinja\"",
        "prompt = \"prompts/subject.jinja\"\nmodel = \"defualt\"",
    );
    fails_with(
        &p,
        &[
            "dataset.toml:25:9: `nodes.subject.model`: unknown model `defualt` (did you mean `default`?); define it under [models.defualt]",
        ],
    );
}

#[test]
fn unknown_template_variable() {
    let p = project();
    p.write(
        "prompts/subject.jinja",
        "--- system\nYou are a customer.\n--- user\nWrite a subject about {{ topc }}.\n",
    );
    fails_with(
        &p,
        &[
            "prompts/subject.jinja:4:26: unknown variable `topc` (did you mean `topic`?); templates see the tables, the samplers, the nodes and `ticket_id`, `language`, `language_name`",
        ],
    );
}

#[test]
fn cycle_names_its_nodes() {
    let p = project();
    p.write(
        "prompts/topic.jinja",
        "Name an issue about {{ subject }} for {{ queue }}.",
    );
    fails_with(
        &p,
        &[
            "dataset.toml:21:10: `nodes.topic`: the nodes `topic`, `subject` form a cycle: topic -> subject -> topic (each uses the next)",
        ],
    );
}

#[test]
fn zero_rows() {
    let p = project();
    p.edit("dataset.toml", "rows = 5", "rows = 0");
    fails_with(
        &p,
        &["dataset.toml:5:8: `dataset.rows`: must be at least 1, found 0"],
    );
}

#[test]
fn weights_must_be_positive_numbers() {
    let p = project();
    p.edit("dataset.toml", "\"IT Support\" = 2", "\"IT Support\" = -2");
    p.edit("dataset.toml", "DE = 2", "DE = 0");
    fails_with(
        &p,
        &[
            "dataset.toml:11:6: `dataset.languages.DE`: weights must be positive numbers, found 0",
            "dataset.toml:14:16: `tables.queue.IT Support`: weights must be positive numbers, found -2",
        ],
    );
}

#[test]
fn weight_that_is_not_a_number() {
    let p = project();
    p.edit(
        "dataset.toml",
        "\"IT Support\" = 2",
        "\"IT Support\" = \"lots\"",
    );
    fails_with(
        &p,
        &[
            "dataset.toml:14:16: `tables.queue.IT Support`: a category's weight must be a number (text is only for `mode` and `within`)",
        ],
    );
}

#[test]
fn unknown_language_code() {
    let p = project();
    p.edit("dataset.toml", "DE = 2", "XX = 2");
    fails_with(
        &p,
        &[
            "dataset.toml:11:1: `dataset.languages.XX`: `XX` is not an ISO 639-1 language code; use two letters such as DE, EN, FR, ES, PT, IT, NL, PL, SV or JA",
        ],
    );
}

#[test]
fn output_column_that_names_nothing() {
    let p = project();
    p.write(
        "dataset.toml",
        &format!("{DATASET}\n[output.columns]\nticket_id = \"ticket_id\"\nsubject = \"subjetc\"\n"),
    );
    fails_with(
        &p,
        &[
            "dataset.toml:28:11: `output.columns.subject`: `subjetc` names no node, node field, table, sampler or built-in column (did you mean `subject`?)",
        ],
    );
}

#[test]
fn several_problems_are_reported_together() {
    let p = project();
    p.edit("dataset.toml", "rows = 5", "rows = 0");
    p.edit("dataset.toml", "DE = 2", "XX = 2");
    let errors = fails(&p);
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn unknown_profile() {
    let p = project();
    let run = p.run(&["build", "--profile", "prod"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with(
            "error: dataset.toml: unknown profile `prod`; the file defines no [profile.*] table"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_config_file() {
    let p = Project::empty();
    let run = p.run(&["build"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("error: dataset.toml: cannot read the dataset file: no such file"),
        "{}",
        run.stderr
    );
}

#[test]
fn offline_model_cannot_serve_custom_nodes() {
    let p = project();
    p.write(
        "dataset.toml",
        &format!("{DATASET}\n[nodes.sentiment]\nprompt = \"prompts/sentiment.jinja\"\n"),
    );
    p.write(
        "prompts/sentiment.jinja",
        "Rate the sentiment of {{ subject }}.",
    );
    fails_with(
        &p,
        &[
            "dataset.toml:27:10: `nodes.sentiment`: the offline model cannot write `sentiment`: it only serves the default pipeline (topic, subject, body, tags, paraphrase, translation, first_response); set a real model for this node with `model = \"...\"` and a [models.NAME] table",
        ],
    );
}

#[test]
fn literal_api_key_is_refused() {
    let p = project();
    p.edit(
        "dataset.toml",
        "provider = \"offline\"",
        "provider = \"offline\"\napi_key = \"sk-live-1234\"",
    );
    let errors = fails(&p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "dataset.toml:19:11: `models.default.api_key`: API keys do not belong in dataset.toml"
        ),
        "{}",
        errors[0]
    );
    assert!(!errors[0].contains("sk-live-1234"));
}

#[test]
fn when_that_does_not_parse() {
    let p = project();
    p.edit(
        "dataset.toml",
        "prompt = \"prompts/subject.jinja\"",
        "prompt = \"prompts/subject.jinja\"\nwhen = \"language ==\"",
    );
    let errors = fails(&p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("dataset.toml:25:8: `nodes.subject.when`: `when` does not parse"),
        "{}",
        errors[0]
    );
}

#[test]
fn prompt_outside_the_project() {
    let p = project();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "Hello {{ queue }}").unwrap();
    p.edit(
        "dataset.toml",
        "prompt = \"prompts/topic.jinja\"",
        &format!("prompt = \"{}\"", outside.path().display()),
    );
    let errors = fails(&p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("lies outside the project folder"),
        "{}",
        errors[0]
    );
}

#[test]
fn empty_prompt() {
    let p = project();
    p.write(
        "prompts/subject.jinja",
        "--- system\nYou are a customer.\n--- user\n\n",
    );
    fails_with(
        &p,
        &[
            "prompts/subject.jinja:3:1: the user part of this prompt is empty; write the instruction for the model",
        ],
    );
}

#[test]
fn invalid_utf8_prompt() {
    let p = project();
    std::fs::write(
        p.file("prompts/subject.jinja"),
        b"--- user\nWrite about {{ topic }} \xff\xfe.\n",
    )
    .unwrap();
    fails_with(&p, &["prompts/subject.jinja:2:25: is not valid UTF-8"]);
}

#[test]
fn unknown_provider() {
    let p = project();
    p.edit(
        "dataset.toml",
        "provider = \"offline\"",
        "provider = \"opneai\"",
    );
    fails_with(
        &p,
        &[
            "dataset.toml:18:12: `models.default.provider`: unknown provider `opneai` (did you mean `openai`?)",
        ],
    );
}
