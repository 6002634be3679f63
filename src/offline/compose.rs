//! Composing ticket text from the bank: which variant each part uses, and rendering it in a
//! language.
//!
//! This module owns the variant choices of the draft (subject, body), of the paraphrase, of the
//! first response and of the tag list, and the layout of each text. It leaves input handling and
//! errors to the module root and the facts to `world`.
//!
//! Invariant: a choice is a set of indices into the bank's parallel lists, drawn from streams
//! labelled by topic id and purpose. Rendering the same choice in another language is therefore
//! an exact parallel text, and re-deriving a choice in another task (the paraphrase re-derives the
//! draft's, the translation re-derives the paraphrase's) gives the same indices.

use super::bank::{Bank, Lang, Localized, Priority, TicketType, Topic};
use super::world::{Stream, World};

/// One ticket as the offline model sees it: its topic, its world and the type and priority that
/// select the variant lists.
pub(crate) struct Ticket<'b> {
    bank: &'b Bank,
    topic: &'b Topic,
    world: World,
    kind: TicketType,
    priority: Priority,
    sample_seed: u64,
}

/// Which variant each part of the customer's email uses (indices into the bank lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyChoice {
    greeting: usize,
    opening: usize,
    impact: usize,
    request: usize,
    closing: usize,
}

/// The subject pattern and body variants of one rendering of the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    pub(crate) subject: usize,
    pub(crate) body: BodyChoice,
}

impl<'b> Ticket<'b> {
    /// `kind` and `priority` are the raw inputs; when absent they are drawn from the ticket's own
    /// streams, so every task that lacks them draws the same value.
    pub(crate) fn new(
        bank: &'b Bank,
        topic: &'b Topic,
        sample_seed: u64,
        kind: Option<&str>,
        priority: Option<&str>,
    ) -> Ticket<'b> {
        Ticket {
            bank,
            topic,
            world: World::derive(sample_seed, topic, &bank.phrases.names),
            kind: resolve_type(kind, sample_seed, topic),
            priority: resolve_priority(priority, sample_seed, topic),
            sample_seed,
        }
    }

    /// The same ticket with the customer and the agent the prompts name (`customer_name`,
    /// `agent_name` from samplers), instead of the ones it would draw.
    pub(crate) fn with_people(mut self, customer: Option<&str>, agent: Option<&str>) -> Ticket<'b> {
        if let Some(customer) = customer {
            self.world.customer = customer.to_string();
        }
        if let Some(agent) = agent {
            self.world.agent = agent.to_string();
        }
        self
    }

    pub(crate) fn kind(&self) -> TicketType {
        self.kind
    }

    pub(crate) fn priority(&self) -> Priority {
        self.priority
    }

    fn stream(&self, purpose: &str) -> Stream {
        Stream::new(self.sample_seed, &[&self.topic.id, purpose])
    }

    /// The choice of the `subject` and `body` tasks (each from its own stream, as they are
    /// separate tasks).
    pub(crate) fn draft_choice(&self) -> Choice {
        let phrases = &self.bank.phrases;
        let subjects = phrases.subject.get(self.kind).len();
        let body = &phrases.body;
        let mut stream = self.stream("body");
        Choice {
            subject: self.stream("subject").below(subjects),
            body: BodyChoice {
                greeting: stream.below(body.greeting.len()),
                opening: stream.below(body.opening.get(self.kind).len()),
                impact: stream.below(body.impact.get(self.priority).len()),
                request: stream.below(body.request.get(self.kind).len()),
                closing: stream.below(body.closing.len()),
            },
        }
    }

    /// The paraphrase's choice: every part differs from the draft's, which guarantees a different
    /// subject and body as long as each list has two distinct variants (a bank test checks that).
    pub(crate) fn paraphrase_choice(&self) -> Choice {
        self.choice_other_than(&self.draft_choice(), "paraphrase")
    }

    /// Other phrases for the paraphrase's facts, for draw `draw` of a translation: every part
    /// drawn anew from a stream of its own, none the paraphrase's.
    pub(crate) fn rephrase_choice(&self, draw: u32) -> Choice {
        self.choice_other_than(&self.paraphrase_choice(), &format!("translation {draw}"))
    }

    /// A choice whose every part differs from `said`'s (where its list has another), drawn from
    /// the stream named `purpose`.
    fn choice_other_than(&self, said: &Choice, purpose: &str) -> Choice {
        let phrases = &self.bank.phrases;
        let body = &phrases.body;
        let mut stream = self.stream(purpose);
        let mut other = |len: usize, avoid: usize| stream.below_except(len, avoid);
        Choice {
            subject: other(phrases.subject.get(self.kind).len(), said.subject),
            body: BodyChoice {
                greeting: other(body.greeting.len(), said.body.greeting),
                opening: other(body.opening.get(self.kind).len(), said.body.opening),
                impact: other(body.impact.get(self.priority).len(), said.body.impact),
                request: other(body.request.get(self.kind).len(), said.body.request),
                closing: other(body.closing.len(), said.body.closing),
            },
        }
    }

    pub(crate) fn subject(&self, choice: &Choice, lang: Lang) -> String {
        let pattern = &self.bank.phrases.subject.get(self.kind)[choice.subject];
        self.render(pattern, lang, None)
    }

    /// The customer's email: greeting, opening and detail, impact and request, closing, name.
    pub(crate) fn body(&self, choice: &Choice, lang: Lang) -> String {
        let body = &self.bank.phrases.body;
        let pick = choice.body;
        let part = |list: &[Localized], index: usize| self.render(&list[index], lang, None);
        let greeting = part(&body.greeting, pick.greeting);
        let opening = part(body.opening.get(self.kind), pick.opening);
        let detail = self.render(&self.topic.detail, lang, None);
        let impact = part(body.impact.get(self.priority), pick.impact);
        let request = part(body.request.get(self.kind), pick.request);
        let closing = part(&body.closing, pick.closing);
        let name = &self.world.customer;
        format!("{greeting}\n\n{opening} {detail}\n\n{impact} {request}\n\n{closing}\n{name}")
    }

    /// The agent's reply in `lang`, signed with the agent's name and the localized queue name.
    /// `queue` is the queue input; without one the topic's own queue signs.
    pub(crate) fn first_response(&self, lang: Lang, queue: Option<&str>) -> String {
        let reply = &self.bank.phrases.reply;
        let queue_name = self.queue_name(queue, lang);
        let mut stream = self.stream("first_response");
        let mut part = |list: &[Localized]| {
            let index = stream.below(list.len());
            self.render(&list[index], lang, Some(&queue_name))
        };
        let greeting = part(&reply.greeting);
        let ack = part(&reply.ack);
        let promise = part(reply.promise.get(self.priority));
        let closing = part(&reply.closing);
        let step = self.render(&self.topic.step, lang, Some(&queue_name));
        format!("{greeting}\n\n{ack} {step}\n\n{promise}\n\n{closing}")
    }

    /// 4 to 8 lowercase English tags: the topic's own tags (most specific, so first), the type
    /// tag, then the queue's tags in a per-ticket order; deduplicated, cut at a drawn count.
    pub(crate) fn tags(&self, queue: Option<&str>) -> Vec<String> {
        let phrases = &self.bank.phrases;
        let mut stream = self.stream("tags");
        let count = 4 + stream.below(5);
        let mut queue_tags: Vec<&String> = phrases
            .queue(queue.unwrap_or(&self.topic.queue))
            .map(|known| known.tags.iter().collect())
            .unwrap_or_default();
        stream.shuffle(&mut queue_tags);
        let candidates = self
            .topic
            .tags
            .iter()
            .chain([phrases.type_tags.get(self.kind)])
            .chain(queue_tags);
        let mut tags: Vec<String> = Vec::new();
        for tag in candidates.map(|tag| normalize_tag(tag)) {
            if !tag.is_empty() && !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        tags.truncate(count);
        tags
    }

    /// The localized name of a bank queue; a queue the bank does not know keeps the name it was
    /// given (it is the user's own queue), and no queue at all means the topic's queue.
    fn queue_name(&self, queue: Option<&str>, lang: Lang) -> String {
        let name = queue.unwrap_or(&self.topic.queue);
        match self.bank.phrases.queue(name) {
            Some(known) => known.name.text(lang).to_owned(),
            None => name.trim().to_owned(),
        }
    }

    fn render(&self, pattern: &Localized, lang: Lang, queue: Option<&str>) -> String {
        // Formatted only for a pattern that names the date (most do not).
        let date = std::cell::OnceCell::new();
        let value = |name: &str| -> Option<&str> {
            Some(match name {
                "title" => self.topic.title.text(lang),
                "product" => &self.world.product,
                "error" => &self.world.error,
                "order" => &self.world.order,
                "date" => date.get_or_init(|| self.world.date.format(lang, &self.bank.phrases)),
                "name" => &self.world.customer,
                "agent" => &self.world.agent,
                "queue" => queue?,
                _ => return None,
            })
        };
        fill(pattern.text(lang), value)
    }
}

/// Replaces `{placeholder}`s with their values. An unknown placeholder stays as written, so that
/// the bank test that looks for leftover braces catches it.
pub(crate) fn fill<'v>(pattern: &str, value: impl Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| Some((close, value(&after[..close])?)))
        {
            Some((close, filled)) => {
                out.push_str(filled);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn normalize_tag(tag: &str) -> String {
    tag.split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .to_lowercase()
}

fn resolve_type(input: Option<&str>, sample_seed: u64, topic: &Topic) -> TicketType {
    match input {
        Some(value) => TicketType::parse(value),
        None => *Stream::new(sample_seed, &[&topic.id, "type"]).pick(&TicketType::KNOWN),
    }
}

fn resolve_priority(input: Option<&str>, sample_seed: u64, topic: &Topic) -> Priority {
    match input {
        Some(value) => Priority::parse(value),
        None => *Stream::new(sample_seed, &[&topic.id, "priority"]).pick(&Priority::KNOWN),
    }
}
