//! The built-in offline model: deterministic, multilingual ticket text from compiled-in phrase
//! banks, with no network, so that the default pipeline runs (and its tests pass) anywhere.
//!
//! The offline model serves the default pipeline's nodes by *task* name ([`TASKS`]). What a task
//! reads and what it must declare is in its [`TaskSpec`]; the engine validates node templates
//! against that at load time and then calls [`generate`] with the values the template references.
//! This module owns the tasks, their inputs and errors; `bank` owns the phrase and topic files,
//! `world` the random facts of a ticket, `compose` the text. Prompt rendering, caching and the
//! choice between the offline model and a real one are the engine's.
//!
//! Invariant: an output is a pure function of (task, inputs, sample seed). No clock, no shared
//! random state, no hash-map iteration order; every draw comes from a ChaCha8 stream keyed by
//! blake3 over the sample seed and a label such as the topic id and "subject".
//!
//! Why every task re-derives the ticket's world instead of receiving it: the engine caches each
//! node's output under a key made of exactly its task, inputs and sample seed, so a task may only
//! depend on those. Deriving the facts (product, error code, order number, date, customer and
//! agent name) from the seed and the topic id means the subject, body, paraphrase, translation
//! and first response of one ticket agree on them, whichever order the tasks run in and whichever
//! of them come from the cache. Likewise the paraphrase re-derives the draft's variant choices (to
//! differ from them), and the translation re-derives the paraphrase's (to render them in another
//! language), which is why the translation can only translate text this model wrote itself.

mod bank;
mod compose;
mod world;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use bank::{Bank, Lang, Topic, bank};
use compose::Ticket;
use world::Stream;

/// The blake3 key-derivation context of the offline model's random streams and of the bank's
/// fingerprint; changing it changes every offline output.
const CONTEXT: &str = "ticketbuild offline v1";

/// What a task needs from the node's template context.
#[derive(Debug)]
pub(crate) struct TaskSpec {
    /// Variables that must be referenced by the node's template (the engine checks at load time).
    pub(crate) required: &'static [&'static str],
    /// Variables read when the template references them.
    pub(crate) optional: &'static [&'static str],
    /// The output kind the node must declare.
    pub(crate) output: TaskOutput,
}

/// The output kind of a task; `Json` lists the keys of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskOutput {
    Text,
    List,
    Json(&'static [&'static str]),
}

/// Tasks the offline model can serve, by name, in pipeline order.
pub(crate) const TASKS: &[&str] = &[
    "topic",
    "subject",
    "body",
    "tags",
    "paraphrase",
    "translation",
    "first_response",
];

const SUBJECT_AND_BODY: &[&str] = &["subject", "body"];

// Some optional inputs are not read by the offline model (the draft for `paraphrase`, `subject`
// and `business_type` for `body`, `business_type` for `topic`): they are listed because the
// default templates, written for real models, reference them and must validate.

static SPECS: [(&str, TaskSpec); 7] = [
    (
        "topic",
        TaskSpec {
            required: &["queue"],
            optional: &["type", "priority", "business_type"],
            output: TaskOutput::Text,
        },
    ),
    (
        "subject",
        TaskSpec {
            required: &["topic"],
            optional: &["type", "priority"],
            output: TaskOutput::Text,
        },
    ),
    (
        "body",
        TaskSpec {
            required: &["topic"],
            optional: &[
                "subject",
                "type",
                "priority",
                "business_type",
                "customer_name",
            ],
            output: TaskOutput::Text,
        },
    ),
    (
        "tags",
        TaskSpec {
            required: &["topic"],
            optional: &["queue", "type", "priority"],
            output: TaskOutput::List,
        },
    ),
    (
        "paraphrase",
        TaskSpec {
            required: &["topic"],
            optional: &["subject", "body", "type", "priority", "customer_name"],
            output: TaskOutput::Json(SUBJECT_AND_BODY),
        },
    ),
    (
        "translation",
        TaskSpec {
            required: &["topic", "language", "paraphrase"],
            optional: &["type", "priority", "customer_name"],
            output: TaskOutput::Json(SUBJECT_AND_BODY),
        },
    ),
    (
        "first_response",
        TaskSpec {
            required: &["topic", "language"],
            optional: &["queue", "type", "priority", "customer_name", "agent_name"],
            output: TaskOutput::Text,
        },
    ),
];

/// The spec of a task the offline model can serve, or `None` for any other name.
/// Identifies the phrase bank and generator this binary carries; part of every offline key.
pub(crate) fn bank_fingerprint() -> &'static str {
    bank::fingerprint()
}

pub(crate) fn task_spec(task: &str) -> Option<&'static TaskSpec> {
    SPECS
        .iter()
        .find(|(name, _)| *name == task)
        .map(|(_, spec)| spec)
}

/// One call of the offline model.
#[derive(Debug, Clone, Copy)]
pub struct OfflineRequest<'a> {
    pub task: &'a str,
    /// Values of the variables the template references, restricted to required+optional of the task.
    /// Strings for table columns, text nodes, `language` ("DE","EN","FR","ES","PT") and `ticket_id`;
    /// arrays of strings for list nodes; objects of strings for json nodes; Null for a node skipped by its
    /// `when` condition.
    pub inputs: &'a BTreeMap<String, Value>,
    /// The ticket's sample seed.
    pub sample_seed: u64,
    /// Which answer to the request this is: 0 the first; a later one (asked for when checks
    /// rejected the earlier) is written with the seed mixed with the draw.
    pub draw: u32,
}

/// The output, in the kind the task's [`TaskSpec::output`] declares.
#[derive(Debug, Clone, PartialEq)]
pub enum OfflineOutput {
    Text(String),
    List(Vec<String>),
    Json(BTreeMap<String, String>),
}

/// Why a task could not run. Messages are lowercase and name tasks and inputs in backticks.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("the offline model has no task `{task}` (it serves: {})", TASKS.join(", "))]
    UnknownTask { task: String },
    #[error(
        "task `{task}` needs the input `{name}`: reference it in the node's template \
         (or its node was skipped by its `when` condition)"
    )]
    MissingInput {
        task: &'static str,
        name: &'static str,
    },
    #[error("input `{name}` of task `{task}` must be {expected}")]
    InvalidInput {
        task: &'static str,
        name: &'static str,
        expected: &'static str,
    },
    #[error(
        "`{title}` is not a topic of the offline model; the offline tasks need a topic written \
         by the offline `topic` task"
    )]
    UnknownTopic { title: String },
    #[error(
        "task `{task}`: the offline model can only translate text it wrote itself; \
         set a real model for this node"
    )]
    ForeignText { task: &'static str },
    #[error("unknown language `{language}`: the offline model writes DE, EN, FR, ES and PT")]
    UnknownLanguage { language: String },
}

/// Runs one task of the offline model. Pure: the same request always gives the same output.
pub fn generate(req: &OfflineRequest<'_>) -> Result<OfflineOutput, OfflineError> {
    let Some(task) = TASKS.iter().copied().find(|&name| name == req.task) else {
        return Err(OfflineError::UnknownTask {
            task: req.task.to_owned(),
        });
    };
    let inputs = Inputs {
        task,
        values: req.inputs,
    };
    let seed = draw_seed(req.sample_seed, req.draw);
    let bank = bank();
    if task == "topic" {
        return topic(bank, &inputs, seed);
    }
    let topic = inputs.topic(bank)?;
    let kind = inputs.optional("type")?;
    let priority = inputs.optional("priority")?;
    // People the prompts name (samplers) replace the ones the ticket would draw.
    let customer = inputs.optional("customer_name")?;
    let agent = inputs.optional("agent_name")?;
    let ticket = || {
        Ticket::new(bank, topic, seed, kind.as_deref(), priority.as_deref())
            .with_people(customer.as_deref(), agent.as_deref())
    };
    match task {
        "subject" => {
            let ticket = ticket();
            Ok(OfflineOutput::Text(
                ticket.subject(&ticket.draft_choice(), Lang::En),
            ))
        }
        "body" => {
            let ticket = ticket();
            Ok(OfflineOutput::Text(
                ticket.body(&ticket.draft_choice(), Lang::En),
            ))
        }
        "tags" => {
            let queue = inputs.optional("queue")?;
            Ok(OfflineOutput::List(ticket().tags(queue.as_deref())))
        }
        "paraphrase" => Ok(json_subject_and_body(paraphrase(&ticket(), Lang::En))),
        "translation" => translation(bank, topic, &inputs, req, customer.as_deref()),
        "first_response" => {
            let lang = inputs.language()?;
            let queue = inputs.optional("queue")?;
            Ok(OfflineOutput::Text(
                ticket().first_response(lang, queue.as_deref()),
            ))
        }
        // Every entry of TASKS has an arm; a forgotten one fails
        // `every_task_generates_the_declared_output_kind`.
        _ => Err(OfflineError::UnknownTask {
            task: task.to_owned(),
        }),
    }
}

/// Picks a topic of the queue (any topic when the queue is not a bank queue) and returns its
/// English title, which the later tasks map back to the topic. Type and priority are accepted
/// but do not steer the pick: topics are not typed in the bank.
fn topic(bank: &Bank, inputs: &Inputs<'_>, seed: u64) -> Result<OfflineOutput, OfflineError> {
    let queue = inputs.required_text("queue")?;
    let topics = bank.topics_for_queue(queue);
    // Key the draw by the canonical queue name, so "it support" and "IT Support" agree.
    let label = bank
        .phrases
        .queue(queue)
        .map_or(queue.trim(), |known| &known.id);
    let topic = Stream::new(seed, &["topic", label]).pick(&topics);
    Ok(OfflineOutput::Text(topic.title.text(Lang::En).to_owned()))
}

/// The seed the offline model writes draw `draw` of a ticket's answer with: the ticket's own for
/// the first draw, a mix of it and the draw for the others.
fn draw_seed(sample_seed: u64, draw: u32) -> u64 {
    if draw == 0 {
        return sample_seed;
    }
    let mut z = sample_seed ^ u64::from(draw).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many draws of the paraphrase a translation looks through to recognize it.
const PARAPHRASE_DRAWS: u32 = 64;

/// The paraphrase's subject and body in `lang` (English for the `paraphrase` task itself).
fn paraphrase(ticket: &Ticket<'_>, lang: Lang) -> (String, String) {
    let choice = ticket.paraphrase_choice();
    (ticket.subject(&choice, lang), ticket.body(&choice, lang))
}

fn json_subject_and_body((subject, body): (String, String)) -> OfflineOutput {
    OfflineOutput::Json(BTreeMap::from([
        ("subject".to_owned(), subject),
        ("body".to_owned(), body),
    ]))
}

/// Renders the paraphrase in the target language, after checking that the paraphrase is exactly
/// what the offline `paraphrase` task wrote for this topic and seed (also for EN, which is then
/// returned unchanged), because only then are its variant choices known.
///
/// The paraphrase node may not have seen the same `type`/`priority` as this node (a template
/// that references them and one that does not), so both the given values and the drawn ones are
/// tried; the world does not depend on them, and at most four renderings are compared. Nor is
/// the paraphrase's draw an input (checks may have rejected its first answers), so the seeds of
/// its draws are tried, this request's own draw first (where the first draws of both meet).
///
/// The first draw, or a draw that is the paraphrase's own, says the paraphrase in `lang`; a later
/// draw (asked for when checks rejected an earlier translation) says the same facts in other
/// phrases, so that it is not the rejected text again.
fn translation(
    bank: &Bank,
    topic: &Topic,
    inputs: &Inputs<'_>,
    req: &OfflineRequest<'_>,
    customer: Option<&str>,
) -> Result<OfflineOutput, OfflineError> {
    let lang = inputs.language()?;
    let (subject, body) = inputs.paraphrase()?;
    let kind = inputs.optional("type")?;
    let priority = inputs.optional("priority")?;
    let draws = std::iter::once(req.draw).chain((0..PARAPHRASE_DRAWS).filter(|&d| d != req.draw));
    let mut tried = Vec::new();
    for paraphrase_draw in draws {
        let seed = draw_seed(req.sample_seed, paraphrase_draw);
        tried.clear();
        for kind in alternatives(kind.as_deref()) {
            for priority in alternatives(priority.as_deref()) {
                let ticket =
                    Ticket::new(bank, topic, seed, kind, priority).with_people(customer, None);
                let key = (ticket.kind(), ticket.priority());
                if tried.contains(&key) {
                    continue;
                }
                tried.push(key);
                let (english_subject, english_body) = paraphrase(&ticket, Lang::En);
                if english_subject == subject && english_body == body {
                    let choice = if req.draw == 0 || req.draw == paraphrase_draw {
                        ticket.paraphrase_choice()
                    } else {
                        ticket.rephrase_choice(req.draw)
                    };
                    return Ok(json_subject_and_body((
                        ticket.subject(&choice, lang),
                        ticket.body(&choice, lang),
                    )));
                }
            }
        }
    }
    Err(OfflineError::ForeignText { task: inputs.task })
}

/// The given value first, then "absent" (drawn from the seed).
fn alternatives(given: Option<&str>) -> Vec<Option<&str>> {
    match given {
        Some(value) => vec![Some(value), None],
        None => vec![None],
    }
}

/// Typed access to a request's inputs, with errors that name the task and the input.
struct Inputs<'a> {
    task: &'static str,
    values: &'a BTreeMap<String, Value>,
}

impl<'a> Inputs<'a> {
    fn present(&self, name: &str) -> Option<&'a Value> {
        self.values.get(name).filter(|value| !value.is_null())
    }

    fn required(&self, name: &'static str) -> Result<&'a Value, OfflineError> {
        self.present(name).ok_or(OfflineError::MissingInput {
            task: self.task,
            name,
        })
    }

    fn required_text(&self, name: &'static str) -> Result<&'a str, OfflineError> {
        self.required(name)?
            .as_str()
            .ok_or(OfflineError::InvalidInput {
                task: self.task,
                name,
                expected: "a string",
            })
    }

    /// An optional scalar: absent, null or blank means "not given" (an empty table cell), and
    /// numbers or booleans are read as their text (a JSON table may type a column).
    fn optional(&self, name: &'static str) -> Result<Option<Cow<'a, str>>, OfflineError> {
        let text = match self.present(name) {
            None => return Ok(None),
            Some(Value::String(text)) => Cow::Borrowed(text.as_str()),
            Some(Value::Number(number)) => Cow::Owned(number.to_string()),
            Some(Value::Bool(flag)) => Cow::Owned(flag.to_string()),
            Some(_) => {
                return Err(OfflineError::InvalidInput {
                    task: self.task,
                    name,
                    expected: "a string",
                });
            }
        };
        Ok(Some(text).filter(|text| !text.trim().is_empty()))
    }

    fn topic(&self, bank: &'static Bank) -> Result<&'static Topic, OfflineError> {
        let title = self.required_text("topic")?;
        bank.topic_by_title(title)
            .ok_or_else(|| OfflineError::UnknownTopic {
                title: title.to_owned(),
            })
    }

    fn language(&self) -> Result<Lang, OfflineError> {
        let code = self.required_text("language")?;
        Lang::parse(code).ok_or_else(|| OfflineError::UnknownLanguage {
            language: code.to_owned(),
        })
    }

    /// The paraphrase object's subject and body. Anything that is an object but lacks them
    /// cannot be the offline paraphrase, which is reported as foreign text.
    fn paraphrase(&self) -> Result<(&'a str, &'a str), OfflineError> {
        let Value::Object(object) = self.required("paraphrase")? else {
            return Err(OfflineError::InvalidInput {
                task: self.task,
                name: "paraphrase",
                expected: "an object with `subject` and `body`",
            });
        };
        let field = |key: &str| object.get(key).and_then(Value::as_str);
        match (field("subject"), field("body")) {
            (Some(subject), Some(body)) => Ok((subject, body)),
            _ => Err(OfflineError::ForeignText { task: self.task }),
        }
    }
}
