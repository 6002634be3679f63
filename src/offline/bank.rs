//! The compiled-in phrase bank: `phrases.toml` (everything written around a topic) and the two topic
//! files (`topics_1.toml`, `topics_2.toml`), parsed once into immutable data.
//!
//! This module owns the bank's shape, the language, ticket-type and priority keys it is indexed by,
//! and the look-ups the generator needs (queue by name, topics of a queue, topic by English title).
//! It does not choose or render anything; that is `world` (facts) and `compose` (text).
//!
//! Invariant: every list the generator draws from is non-empty, and every topic has at least one
//! product. [`Bank::check`] enforces this when the bank is first used, so the drawing code can index
//! without fallbacks; the unit tests run the same check, so a broken bank fails the tests rather
//! than a dataset build.

use std::sync::LazyLock;

use serde::Deserialize;

/// The five languages the offline model writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    De,
    En,
    Fr,
    Es,
    Pt,
}

impl Lang {
    pub(crate) const ALL: [Lang; 5] = [Lang::De, Lang::En, Lang::Fr, Lang::Es, Lang::Pt];

    pub(crate) fn code(self) -> &'static str {
        match self {
            Lang::De => "DE",
            Lang::En => "EN",
            Lang::Fr => "FR",
            Lang::Es => "ES",
            Lang::Pt => "PT",
        }
    }

    /// Accepts the language codes case-insensitively: table columns are typed by people.
    pub(crate) fn parse(code: &str) -> Option<Lang> {
        let code = code.trim();
        Lang::ALL
            .into_iter()
            .find(|lang| lang.code().eq_ignore_ascii_case(code))
    }
}

/// One value per language, as written in the TOML files (`EN = "..."`, `title.DE = "..."`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PerLang<T> {
    #[serde(rename = "DE")]
    de: T,
    #[serde(rename = "EN")]
    en: T,
    #[serde(rename = "FR")]
    fr: T,
    #[serde(rename = "ES")]
    es: T,
    #[serde(rename = "PT")]
    pt: T,
}

impl<T> PerLang<T> {
    pub(crate) fn get(&self, lang: Lang) -> &T {
        match lang {
            Lang::De => &self.de,
            Lang::En => &self.en,
            Lang::Fr => &self.fr,
            Lang::Es => &self.es,
            Lang::Pt => &self.pt,
        }
    }
}

/// A phrase (or pattern) in all five languages.
pub(crate) type Localized = PerLang<String>;

impl Localized {
    pub(crate) fn text(&self, lang: Lang) -> &str {
        self.get(lang)
    }
}

/// The ticket type as far as the bank distinguishes it; anything else uses the generic variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TicketType {
    Incident,
    Request,
    Problem,
    Change,
    Other,
}

impl TicketType {
    /// The types drawn when a ticket has none (never `Other`: a drawn type should be a real one).
    pub(crate) const KNOWN: [TicketType; 4] = [
        TicketType::Incident,
        TicketType::Request,
        TicketType::Problem,
        TicketType::Change,
    ];

    pub(crate) fn parse(value: &str) -> TicketType {
        let value = value.trim();
        TicketType::KNOWN
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(value))
            .unwrap_or(TicketType::Other)
    }

    fn name(self) -> &'static str {
        match self {
            TicketType::Incident => "Incident",
            TicketType::Request => "Request",
            TicketType::Problem => "Problem",
            TicketType::Change => "Change",
            TicketType::Other => "generic",
        }
    }
}

/// The ticket priority as far as the bank distinguishes it; anything else uses the generic variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    Low,
    Medium,
    High,
    Other,
}

impl Priority {
    /// The priorities drawn when a ticket has none.
    pub(crate) const KNOWN: [Priority; 3] = [Priority::Low, Priority::Medium, Priority::High];

    pub(crate) fn parse(value: &str) -> Priority {
        let value = value.trim();
        Priority::KNOWN
            .into_iter()
            .find(|priority| priority.name().eq_ignore_ascii_case(value))
            .unwrap_or(Priority::Other)
    }

    fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Other => "generic",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ByType<T> {
    incident: T,
    request: T,
    problem: T,
    change: T,
    generic: T,
}

impl<T> ByType<T> {
    pub(crate) fn get(&self, kind: TicketType) -> &T {
        match kind {
            TicketType::Incident => &self.incident,
            TicketType::Request => &self.request,
            TicketType::Problem => &self.problem,
            TicketType::Change => &self.change,
            TicketType::Other => &self.generic,
        }
    }

    fn all(&self) -> [&T; 5] {
        [
            &self.incident,
            &self.request,
            &self.problem,
            &self.change,
            &self.generic,
        ]
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ByPriority<T> {
    low: T,
    medium: T,
    high: T,
    generic: T,
}

impl<T> ByPriority<T> {
    pub(crate) fn get(&self, priority: Priority) -> &T {
        match priority {
            Priority::Low => &self.low,
            Priority::Medium => &self.medium,
            Priority::High => &self.high,
            Priority::Other => &self.generic,
        }
    }

    fn all(&self) -> [&T; 4] {
        [&self.low, &self.medium, &self.high, &self.generic]
    }
}

/// A topic from `topics_1.toml` / `topics_2.toml`. Unknown keys are tolerated there (the topic
/// writers own those files); missing languages are not.
#[derive(Debug, Deserialize)]
pub(crate) struct Topic {
    pub(crate) queue: String,
    pub(crate) id: String,
    pub(crate) tags: Vec<String>,
    pub(crate) products: Vec<String>,
    pub(crate) title: Localized,
    pub(crate) detail: Localized,
    pub(crate) step: Localized,
}

#[derive(Debug, Deserialize)]
struct TopicFile {
    // An empty file is a valid (if useless) topic file, so that half-written banks still load.
    #[serde(default)]
    topic: Vec<Topic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Queue {
    /// The English queue name, exactly as tables and topic files spell it.
    pub(crate) id: String,
    pub(crate) tags: Vec<String>,
    pub(crate) name: Localized,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Names {
    pub(crate) first: Vec<String>,
    pub(crate) last: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodyPhrases {
    pub(crate) greeting: Vec<Localized>,
    pub(crate) opening: ByType<Vec<Localized>>,
    pub(crate) impact: ByPriority<Vec<Localized>>,
    pub(crate) request: ByType<Vec<Localized>>,
    pub(crate) closing: Vec<Localized>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplyPhrases {
    pub(crate) greeting: Vec<Localized>,
    pub(crate) ack: Vec<Localized>,
    pub(crate) promise: ByPriority<Vec<Localized>>,
    pub(crate) closing: Vec<Localized>,
}

/// Everything in `phrases.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Phrases {
    pub(crate) months: PerLang<Vec<String>>,
    pub(crate) names: Names,
    pub(crate) type_tags: ByType<String>,
    pub(crate) queue: Vec<Queue>,
    pub(crate) subject: ByType<Vec<Localized>>,
    pub(crate) body: BodyPhrases,
    pub(crate) reply: ReplyPhrases,
}

impl Phrases {
    /// Every variant list, each with a name for error messages (and for the bank tests).
    pub(crate) fn variant_lists(&self) -> Vec<(String, &[Localized])> {
        const TYPES: [&str; 5] = ["incident", "request", "problem", "change", "generic"];
        const PRIORITIES: [&str; 4] = ["low", "medium", "high", "generic"];
        let mut lists: Vec<(String, &[Localized])> = Vec::new();
        for (name, list) in TYPES.iter().zip(self.subject.all()) {
            lists.push((format!("subject.{name}"), list));
        }
        lists.push(("body.greeting".into(), &self.body.greeting));
        for (name, list) in TYPES.iter().zip(self.body.opening.all()) {
            lists.push((format!("body.opening.{name}"), list));
        }
        for (name, list) in PRIORITIES.iter().zip(self.body.impact.all()) {
            lists.push((format!("body.impact.{name}"), list));
        }
        for (name, list) in TYPES.iter().zip(self.body.request.all()) {
            lists.push((format!("body.request.{name}"), list));
        }
        lists.push(("body.closing".into(), &self.body.closing));
        lists.push(("reply.greeting".into(), &self.reply.greeting));
        lists.push(("reply.ack".into(), &self.reply.ack));
        for (name, list) in PRIORITIES.iter().zip(self.reply.promise.all()) {
            lists.push((format!("reply.promise.{name}"), list));
        }
        lists.push(("reply.closing".into(), &self.reply.closing));
        lists
    }

    pub(crate) fn queue(&self, name: &str) -> Option<&Queue> {
        let name = name.trim();
        self.queue
            .iter()
            .find(|queue| queue.id.eq_ignore_ascii_case(name))
    }
}

/// The whole bank: phrases plus all topics in file order (file order is the draw order, so it
/// must not come from a hash map).
#[derive(Debug)]
pub(crate) struct Bank {
    pub(crate) phrases: Phrases,
    pub(crate) topics: Vec<Topic>,
}

const PHRASES_TOML: &str = include_str!("phrases.toml");
const TOPIC_FILES: [(&str, &str); 2] = [
    ("topics_1.toml", include_str!("topics_1.toml")),
    ("topics_2.toml", include_str!("topics_2.toml")),
];

/// BLAKE3 of everything the offline model's text comes from: the bank files and the world's
/// derive-key context. It goes into every offline artifact key, so editing the bank re-runs what it
/// changes instead of serving text the new bank would not write.
pub(crate) fn fingerprint() -> &'static str {
    static FINGERPRINT: LazyLock<String> = LazyLock::new(|| {
        let mut hasher = blake3::Hasher::new();
        for text in std::iter::once(PHRASES_TOML)
            .chain(TOPIC_FILES.iter().map(|(_, text)| *text))
            .chain(std::iter::once(super::CONTEXT))
        {
            hasher.update(&(text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    });
    &FINGERPRINT
}

/// The bank, parsed on first use. Immutable, so sharing it is not "global state" that could make
/// outputs depend on call order.
pub(crate) fn bank() -> &'static Bank {
    static BANK: LazyLock<Bank> = LazyLock::new(|| {
        // The bank is compiled in and `bank_loads_and_passes_its_checks` covers exactly this
        // call, so a failure here is a build defect, not a runtime condition.
        Bank::load().unwrap_or_else(|error| panic!("the offline phrase bank is broken: {error}"))
    });
    &BANK
}

impl Bank {
    pub(crate) fn load() -> Result<Bank, String> {
        let phrases: Phrases =
            toml::from_str(PHRASES_TOML).map_err(|error| format!("`phrases.toml`: {error}"))?;
        let mut topics = Vec::new();
        for (file, text) in TOPIC_FILES {
            let parsed: TopicFile =
                toml::from_str(text).map_err(|error| format!("`{file}`: {error}"))?;
            topics.extend(parsed.topic);
        }
        let bank = Bank { phrases, topics };
        bank.check()?;
        Ok(bank)
    }

    /// The invariant the drawing code relies on (see the module doc).
    pub(crate) fn check(&self) -> Result<(), String> {
        let phrases = &self.phrases;
        for (name, list) in phrases.variant_lists() {
            if list.is_empty() {
                return Err(format!("`{name}` has no variants"));
            }
        }
        if phrases.names.first.is_empty() || phrases.names.last.is_empty() {
            return Err("`names` needs first and last names".into());
        }
        for lang in Lang::ALL {
            if phrases.months.get(lang).len() != 12 {
                return Err(format!("`months.{}` needs 12 names", lang.code()));
            }
        }
        if self.topics.is_empty() {
            return Err("there are no topics".into());
        }
        if let Some(topic) = self.topics.iter().find(|t| t.products.is_empty()) {
            return Err(format!("topic `{}` has no products", topic.id));
        }
        Ok(())
    }

    /// The topics of a bank queue, or all topics when `queue` is not one of the bank's queues.
    pub(crate) fn topics_for_queue(&self, queue: &str) -> Vec<&Topic> {
        match self.phrases.queue(queue) {
            Some(known) => {
                let of_queue: Vec<&Topic> = self
                    .topics
                    .iter()
                    .filter(|topic| topic.queue.eq_ignore_ascii_case(&known.id))
                    .collect();
                // A bank queue without topics (topic files still being written) behaves like
                // an unknown queue rather than failing.
                if of_queue.is_empty() {
                    self.topics.iter().collect()
                } else {
                    of_queue
                }
            }
            None => self.topics.iter().collect(),
        }
    }

    /// Maps an English title (the `topic` task's output) back to its topic. Exact match first;
    /// a case- and whitespace-insensitive match tolerates a hand-edited table column.
    pub(crate) fn topic_by_title(&self, title: &str) -> Option<&Topic> {
        let title = title.trim();
        self.topics
            .iter()
            .find(|topic| topic.title.text(Lang::En) == title)
            .or_else(|| {
                self.topics
                    .iter()
                    .find(|topic| topic.title.text(Lang::En).eq_ignore_ascii_case(title))
            })
    }
}
