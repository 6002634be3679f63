//! `[models.NAME]`: which provider serves a model, what is sent to it, and how it is scheduled.
//!
//! This module owns [`ProviderKind`], the one place provider names, their defaults (API root, key
//! variable) and their rules (what each API accepts) live, and the checks of a model table. Talking
//! to a provider is `provider`'s. The invariant: a checked [`ModelConfig`] can be sent as is: its
//! provider exists, it has the `base_url` it needs, and no parameter is out of the API's range.

use std::collections::BTreeMap;

use toml::Spanned;

use super::check::Checker;
use super::raw::{OrderedMap, RawModel, toml_to_json};
use crate::cost::PriceEntry;
use crate::diag::did_you_mean;

/// The offline provider's model name when none is given.
pub const OFFLINE_MODEL: &str = "ticketbuild-offline-1";

/// A provider a model can name. Only `offline` runs without network; the others speak HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProviderKind {
    Offline,
    OpenAi,
    OpenRouter,
    Together,
    Anthropic,
    Ollama,
    OpenAiCompatible,
}

impl ProviderKind {
    /// Every provider, in the order messages list them.
    pub(crate) const ALL: [ProviderKind; 7] = [
        ProviderKind::Offline,
        ProviderKind::OpenAi,
        ProviderKind::OpenRouter,
        ProviderKind::Together,
        ProviderKind::Anthropic,
        ProviderKind::Ollama,
        ProviderKind::OpenAiCompatible,
    ];

    /// The name dataset.toml uses, which is also what requests and keys record.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Offline => "offline",
            ProviderKind::OpenAi => "openai",
            ProviderKind::OpenRouter => "openrouter",
            ProviderKind::Together => "together",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Ollama => "ollama",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    pub(crate) fn is_offline(self) -> bool {
        self == ProviderKind::Offline
    }

    /// The API root used when the model sets no `base_url`; `None` when there is none (the
    /// offline model, and an OpenAI-compatible server, which must name its own).
    pub(crate) fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::OpenRouter => Some("https://openrouter.ai/api/v1"),
            ProviderKind::Together => Some("https://api.together.xyz/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Ollama => Some("http://localhost:11434/v1"),
            ProviderKind::Offline | ProviderKind::OpenAiCompatible => None,
        }
    }

    /// The environment variable the API key is read from when the model sets no
    /// `api_key_env`; `None` when no key is needed.
    pub(crate) fn default_key_env(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("OPENAI_API_KEY"),
            ProviderKind::OpenRouter => Some("OPENROUTER_API_KEY"),
            ProviderKind::Together => Some("TOGETHER_API_KEY"),
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::Offline | ProviderKind::Ollama | ProviderKind::OpenAiCompatible => None,
        }
    }

    /// True for the providers that speak Anthropic's Messages API; the others (but offline)
    /// speak OpenAI's chat completions.
    pub(crate) fn speaks_messages_api(self) -> bool {
        self == ProviderKind::Anthropic
    }

    /// Why `batch = true` cannot be used with this provider; `None` where it can (OpenAI's Files
    /// and Batches API, which OpenAI-compatible servers such as LiteLLM's proxy also serve,
    /// Together's, OpenRouter's and Anthropic's Message Batches).
    pub(crate) fn no_batch_api(self) -> Option<&'static str> {
        match self {
            ProviderKind::Offline => {
                Some("the offline model answers at once and for free; it has no batch API")
            }
            ProviderKind::Ollama => Some("Ollama has no batch API; remove `batch` from this model"),
            ProviderKind::OpenRouter
            | ProviderKind::OpenAi
            | ProviderKind::Together
            | ProviderKind::Anthropic
            | ProviderKind::OpenAiCompatible => None,
        }
    }

    /// `a, b or c`: every provider name, for messages.
    fn list() -> String {
        let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
        names.join(", ")
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub(crate) name: String,
    pub provider: ProviderKind,
    /// The model identifier sent to the provider.
    pub model: String,
    pub base_url: Option<String>,
    pub(crate) api_key_env: Option<String>,
    pub params: Params,
    /// Offline only: simulated latency per call, for trying progress and watch without a server.
    /// Not part of the key: it never changes an output.
    pub(crate) latency_ms: u64,
    /// How calls to this model are scheduled and retried. Not part of the key: none of it changes
    /// what is sent, only when and how often.
    pub(crate) limits: ModelLimits,
    /// Requests not cached go through the provider's batch API (`batch = true`, or
    /// `build --batch`). Not part of the key: the transport never changes what is asked.
    pub(crate) batch: bool,
}

impl ModelConfig {
    /// The built-in offline model under `name`: what `default` is when the file defines none.
    pub(crate) fn offline(name: &str) -> ModelConfig {
        ModelConfig {
            name: name.to_string(),
            provider: ProviderKind::Offline,
            model: OFFLINE_MODEL.to_string(),
            base_url: None,
            api_key_env: None,
            params: Params::default(),
            latency_ms: 0,
            limits: ModelLimits::default(),
            batch: false,
        }
    }

    /// What this model's tokens cost: free offline, else the price `overrides` or the built-in
    /// table give; `None` when unknown.
    pub(crate) fn price(
        &self,
        overrides: &BTreeMap<String, crate::cost::Price>,
    ) -> Option<PriceEntry> {
        if self.provider.is_offline() {
            return Some(PriceEntry::free());
        }
        crate::cost::price_for(self.provider.name(), &self.model, overrides)
    }
}

/// Per-model scheduling: concurrency, rate limits, retries and timeouts. One provider instance
/// serves every node of a model, so these hold for the model as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLimits {
    /// Requests in flight at once (lowered for a while when the server answers 429).
    pub(crate) max_concurrency: usize,
    /// Requests started in any 60-second window; `None` is unlimited.
    pub(crate) requests_per_minute: Option<u64>,
    /// Estimated tokens (the prompt's tokens as `plan` counts them, plus max_tokens) in any
    /// 60-second window.
    pub(crate) tokens_per_minute: Option<u64>,
    /// Attempts per call on 429s and transient errors (408, 409, 5xx, timeouts, connection
    /// errors), together.
    pub(crate) max_attempts: u32,
    /// Attempts per artifact whose reply is malformed, empty or does not validate.
    pub(crate) max_invalid_attempts: u32,
    /// Seconds one attempt may take.
    pub(crate) timeout_secs: u64,
    /// Seconds one artifact may take from its first attempt, backoff included.
    pub(crate) deadline_secs: u64,
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits {
            max_concurrency: 16,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_attempts: 8,
            max_invalid_attempts: 3,
            timeout_secs: 60,
            deadline_secs: 300,
        }
    }
}

/// Request parameters. `None` means "not sent", which is different from any value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u64>,
    pub seed: Option<i64>,
    pub stop: Option<Vec<String>>,
    /// How `list` and `json` nodes ask for structured replies: `json_schema`, `json_object` or
    /// `text`. Unset lets the adapter choose for the node's output kind.
    pub response_format: Option<String>,
    /// Passed verbatim in the request body.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Checker<'_> {
    pub(super) fn models(
        &mut self,
        models: &OrderedMap<Spanned<RawModel>>,
    ) -> BTreeMap<String, ModelConfig> {
        let mut out = BTreeMap::new();
        let has_default = models.0.iter().any(|(k, _)| k.get_ref() == "default");
        if !has_default {
            out.insert("default".to_string(), ModelConfig::offline("default"));
        }
        for (name, raw) in &models.0 {
            let key = format!("models.{}", name.get_ref());
            if let Some(model) = self.model(name.get_ref(), raw, &key) {
                out.insert(name.get_ref().clone(), model);
            }
        }
        out
    }

    /// One model table. Problems are reported in the order of the keys' meaning: the key that
    /// must not be there, the provider, where it is reached, what is sent, how it is scheduled.
    fn model(&mut self, name: &str, raw: &Spanned<RawModel>, key: &str) -> Option<ModelConfig> {
        let span = raw.span();
        let raw = raw.get_ref();
        if let Some(api_key) = &raw.api_key {
            self.secret_error(
                api_key.span(),
                format!("{key}.api_key"),
                "API keys do not belong in dataset.toml; put the key in an environment variable (or .env) and name it with `api_key_env`",
            );
        }
        let provider = self.provider(raw, span.clone(), key)?;
        self.endpoint(raw, provider, span.clone(), key);
        self.provider_rules(raw, provider, key);
        let model = match &raw.model {
            Some(model) => model.get_ref().clone(),
            None if provider.is_offline() => OFFLINE_MODEL.to_string(),
            None => {
                self.error(
                    span,
                    key,
                    "missing `model` (the model name the provider knows)",
                );
                String::new()
            }
        };
        let params = self.params(raw, key);
        let latency_ms = match &raw.latency_ms {
            Some(l) if *l.get_ref() < 0 => {
                self.error(
                    l.span(),
                    format!("{key}.latency_ms"),
                    "must not be negative",
                );
                0
            }
            Some(l) => *l.get_ref() as u64,
            None => 0,
        };
        let limits = self.model_limits(raw, key);
        let batch = self.batch(raw, provider, key);
        Some(ModelConfig {
            name: name.to_string(),
            provider,
            model,
            base_url: raw.base_url.as_ref().map(|url| url.get_ref().clone()),
            api_key_env: raw.api_key_env.as_ref().map(|env| env.get_ref().clone()),
            params,
            latency_ms,
            limits,
            batch,
        })
    }

    /// `batch = true`, where the provider has a batch API ticketbuild speaks.
    fn batch(&mut self, raw: &RawModel, provider: ProviderKind, key: &str) -> bool {
        let Some(batch) = raw.batch.as_ref().filter(|b| *b.get_ref()) else {
            return false;
        };
        if let Some(why) = provider.no_batch_api() {
            self.error(batch.span(), format!("{key}.batch"), why);
            return false;
        }
        true
    }

    /// The model's provider; `None` (reported) when missing or unknown.
    fn provider(
        &mut self,
        raw: &RawModel,
        span: std::ops::Range<usize>,
        key: &str,
    ) -> Option<ProviderKind> {
        let Some(provider) = &raw.provider else {
            self.error(
                span,
                key,
                format!("missing `provider`; use one of {}", ProviderKind::list()),
            );
            return None;
        };
        let kind = ProviderKind::from_name(provider.get_ref());
        if kind.is_none() {
            let names = ProviderKind::ALL.map(ProviderKind::name);
            let hint = did_you_mean(provider.get_ref(), names).map_or_else(
                || format!("; use one of {}", ProviderKind::list()),
                |s| format!(" (did you mean `{s}`?)"),
            );
            self.error(
                provider.span(),
                format!("{key}.provider"),
                format!("unknown provider `{}`{hint}", provider.get_ref()),
            );
        }
        kind
    }

    /// `base_url` and `api_key_env`: where the model is reached, and with which key.
    fn endpoint(
        &mut self,
        raw: &RawModel,
        provider: ProviderKind,
        span: std::ops::Range<usize>,
        key: &str,
    ) {
        let is_http = |url: &Spanned<String>| {
            ["http://", "https://"]
                .iter()
                .any(|p| url.get_ref().starts_with(p))
        };
        match &raw.base_url {
            Some(url) if !is_http(url) => self.error(
                url.span(),
                format!("{key}.base_url"),
                format!("`{}` is not an http:// or https:// URL", url.get_ref()),
            ),
            Some(url) if provider.is_offline() => self.error(
                url.span(),
                format!("{key}.base_url"),
                "the offline model takes no `base_url`",
            ),
            None if provider == ProviderKind::OpenAiCompatible => self.error(
                span,
                format!("{key}.base_url"),
                "provider `openai-compatible` needs `base_url`, the server's OpenAI-style API root (for example \"http://localhost:8000/v1\")",
            ),
            _ => {}
        }
        if let Some(env) = &raw.api_key_env {
            let name = env.get_ref();
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.secret_error(
                    env.span(),
                    format!("{key}.api_key_env"),
                    // The value is not echoed: a key pasted here by mistake must not reach a log.
                    "is not an environment variable name (letters, digits and `_`); name the variable that holds the key, never the key itself",
                );
            }
        }
    }

    /// What a provider's API refuses that another accepts.
    fn provider_rules(&mut self, raw: &RawModel, provider: ProviderKind, key: &str) {
        if !provider.speaks_messages_api() {
            return;
        }
        if let Some(t) = raw.temperature.as_ref().filter(|t| *t.get_ref() > 1.0) {
            self.error(
                t.span(),
                format!("{key}.temperature"),
                "must be between 0 and 1 for the Anthropic Messages API",
            );
        }
        if let Some(seed) = &raw.seed {
            self.error(
                seed.span(),
                format!("{key}.seed"),
                "the Anthropic Messages API takes no `seed`; remove it from this model",
            );
        }
    }

    /// The request parameters, each in its range.
    fn params(&mut self, raw: &RawModel, key: &str) -> Params {
        let mut params = Params::default();
        if let Some(t) = &raw.temperature {
            if !(0.0..=2.0).contains(t.get_ref()) {
                self.error(
                    t.span(),
                    format!("{key}.temperature"),
                    "must be between 0 and 2",
                );
            }
            params.temperature = Some(*t.get_ref());
        }
        if let Some(p) = &raw.top_p {
            if !(0.0..=1.0).contains(p.get_ref()) || *p.get_ref() == 0.0 {
                self.error(
                    p.span(),
                    format!("{key}.top_p"),
                    "must be greater than 0 and at most 1",
                );
            }
            params.top_p = Some(*p.get_ref());
        }
        if let Some(m) = &raw.max_tokens {
            params.max_tokens = self.positive(m, &format!("{key}.max_tokens"));
        }
        params.seed = raw.seed.as_ref().map(|seed| *seed.get_ref());
        params.stop = raw.stop.as_ref().map(|stop| stop.get_ref().strings());
        if let Some(format) = &raw.response_format {
            if !["json_schema", "json_object", "text"].contains(&format.get_ref().as_str()) {
                self.error(
                    format.span(),
                    format!("{key}.response_format"),
                    format!(
                        "unknown response format `{}`; use json_schema, json_object or text",
                        format.get_ref()
                    ),
                );
            }
            params.response_format = Some(format.get_ref().clone());
        }
        if let Some(extra) = &raw.extra {
            params.extra = extra
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect();
        }
        params
    }

    /// Scheduling settings of a model; each must be at least 1 when given.
    fn model_limits(&mut self, raw: &RawModel, key: &str) -> ModelLimits {
        let defaults = ModelLimits::default();
        let mut positive = |value: &Option<Spanned<i64>>, name: &str| {
            value
                .as_ref()
                .and_then(|v| self.positive(v, &format!("{key}.{name}")))
        };
        ModelLimits {
            max_concurrency: positive(&raw.max_concurrency, "max_concurrency")
                .map_or(defaults.max_concurrency, |v| v as usize),
            requests_per_minute: positive(&raw.requests_per_minute, "requests_per_minute"),
            tokens_per_minute: positive(&raw.tokens_per_minute, "tokens_per_minute"),
            max_attempts: positive(&raw.max_attempts, "max_attempts")
                .map_or(defaults.max_attempts, |v| v.min(u64::from(u32::MAX)) as u32),
            max_invalid_attempts: positive(&raw.max_invalid_attempts, "max_invalid_attempts")
                .map_or(defaults.max_invalid_attempts, |v| {
                    v.min(u64::from(u32::MAX)) as u32
                }),
            timeout_secs: positive(&raw.timeout_secs, "timeout_secs")
                .unwrap_or(defaults.timeout_secs),
            deadline_secs: positive(&raw.deadline_secs, "deadline_secs")
                .unwrap_or(defaults.deadline_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip_and_only_offline_is_free() {
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ProviderKind::from_name("openai-compat"), None);
        let mut model = ModelConfig::offline("default");
        model.model = "x".to_string();
        assert_eq!(model.price(&BTreeMap::new()), Some(PriceEntry::free()));
        model.provider = ProviderKind::OpenAiCompatible;
        assert_eq!(model.price(&BTreeMap::new()), None);
    }
}
