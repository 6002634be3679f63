//! Model providers: one trait, one adapter per provider.
//!
//! This module owns the request as it is sent to a model ([`Request`], from which the artifact key is
//! derived), the normalised response ([`Response`]), the [`Provider`] trait that adapters implement
//! and [`for_model`], which picks the adapter for a model and hands it its API key. The adapters:
//! [`offline`] (the built-in model), [`openai`] (the chat-completions API of OpenAI, OpenRouter,
//! Together, Ollama and any OpenAI-compatible server) and [`anthropic`] (the Messages API), the last
//! two over the shared HTTP client, retry loop and rate limiter of [`http`] and [`limits`].
//! It knows nothing of the engine, the cache or the CLI: a provider turns one request into one
//! validated output or an error, nothing more. The invariant: a [`Response`] only ever carries an
//! output that passed validation against the node's declared kind, and a request carries no secret.

pub mod anthropic;
pub(crate) mod batch;
pub mod http;
pub(crate) mod limits;
pub(crate) mod offline;
pub mod openai;
pub(crate) mod ratelimit;
pub mod retry;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::cache::{KeyFields, RecordedRequest, RequestLayout};
use crate::config::{ModelConfig, Params};
use crate::cost::Usage;
use crate::key::{ArtifactKey, KeyInput, canonical_json_map};
use crate::value::{InvalidOutput, NodeOutput, OutputKind};

/// One model request, exactly as it will be sent. Its [`Request::key`] is the artifact key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub(crate) provider: String,
    pub(crate) base_url: Option<String>,
    pub(crate) model: String,
    pub(crate) params: Params,
    pub(crate) output: OutputKind,
    pub(crate) system: Option<String>,
    pub(crate) user: String,
    /// Offline model only: the task and the structured inputs it reads.
    pub(crate) offline: Option<OfflineInputs>,
    pub(crate) sample_seed: u64,
    /// Which answer to this request this is: 0 the first; later ones are asked for when checks
    /// reject the earlier (see [`Request::redraw`]).
    pub(crate) draw: u32,
    /// Where values filled `system` and `user` (not key material: the cache stores the messages
    /// by it, see `cache::layout`).
    pub(crate) layout: Option<RequestLayout>,
}

#[derive(Debug, Clone)]
pub(crate) struct OfflineInputs {
    pub(crate) task: String,
    /// The phrase bank's fingerprint: a bank edit changes what the offline model writes.
    pub(crate) bank: String,
    pub(crate) inputs: BTreeMap<String, serde_json::Value>,
    /// `inputs` as canonical JSON, written once: the key hashes it and the recorded request
    /// keeps it (they are read, never changed, once the request is made).
    canonical: std::sync::OnceLock<String>,
}

impl OfflineInputs {
    pub(crate) fn new(
        task: String,
        bank: String,
        inputs: BTreeMap<String, serde_json::Value>,
    ) -> OfflineInputs {
        OfflineInputs {
            task,
            bank,
            inputs,
            canonical: std::sync::OnceLock::new(),
        }
    }

    /// The inputs as canonical JSON (what the key hashes).
    pub(crate) fn canonical(&self) -> &str {
        self.canonical
            .get_or_init(|| canonical_json_map(&self.inputs))
    }
}

/// Equal when the task, the bank and the inputs are (the canonical text follows from them).
impl PartialEq for OfflineInputs {
    fn eq(&self, other: &OfflineInputs) -> bool {
        self.task == other.task && self.bank == other.bank && self.inputs == other.inputs
    }
}

impl Request {
    pub(crate) fn key(&self) -> ArtifactKey {
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
                .map(|o| (o.task.as_str(), o.bank.as_str(), &o.inputs)),
            sample_seed: self.sample_seed,
            draw: self.draw,
        }
        .key_of_recorded(
            &canonical_json_map(&self.params.extra),
            self.offline.as_ref().map(OfflineInputs::canonical),
        )
    }

    /// This request as draw `draw`: a new sample of the same request. A model that takes a seed
    /// gets the seed plus the draw, so it does not answer the same again; the offline model
    /// derives its own seed from the draw.
    pub(crate) fn redraw(&self, draw: u32) -> Request {
        let mut request = self.clone();
        request.draw = draw;
        if let Some(seed) = &mut request.params.seed {
            *seed = seed.wrapping_add(i64::from(draw));
        }
        request
    }

    /// The request as recorded with its artifact.
    pub(crate) fn record(&self) -> RecordedRequest {
        RecordedRequest {
            provider: self.provider.clone(),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            params_json: params_json(&self.params),
            output_kind: match &self.output {
                OutputKind::Text => "text".to_string(),
                OutputKind::List { min, max } => format!("list ({min} to {max} items)"),
                OutputKind::Json { fields } => format!("json ({})", fields.join(", ")),
            },
            system: self.system.clone(),
            user: self.user.clone(),
            offline: self
                .offline
                .as_ref()
                .map(|o| (o.task.clone(), o.canonical().to_string())),
            sample_seed: self.sample_seed,
            layout: self.layout.clone(),
        }
    }

    /// What the key covers that [`Request::record`] does not show as it was hashed.
    pub(crate) fn key_fields(&self) -> KeyFields {
        let params = &self.params;
        KeyFields {
            temperature: params.temperature,
            top_p: params.top_p,
            max_tokens: params.max_tokens,
            seed: params.seed,
            stop: params.stop.clone(),
            response_format: params.response_format.clone(),
            extra_json: canonical_json_map(&params.extra),
            output: self.output.clone(),
            offline_bank: self.offline.as_ref().map(|o| o.bank.clone()),
            draw: self.draw,
        }
    }

    /// Characters of prompt text, for token estimates.
    pub(crate) fn prompt_chars(&self) -> usize {
        self.system.as_ref().map_or(0, String::len) + self.user.len()
    }
}

/// The parameters that are set, as canonical JSON with sorted keys.
pub(crate) fn params_json(params: &Params) -> String {
    let mut map = BTreeMap::new();
    if let Some(v) = params.temperature {
        map.insert("temperature".to_string(), serde_json::json!(v));
    }
    if let Some(v) = params.top_p {
        map.insert("top_p".to_string(), serde_json::json!(v));
    }
    if let Some(v) = params.max_tokens {
        map.insert("max_tokens".to_string(), serde_json::json!(v));
    }
    if let Some(v) = params.seed {
        map.insert("seed".to_string(), serde_json::json!(v));
    }
    if let Some(v) = &params.stop {
        map.insert("stop".to_string(), serde_json::json!(v));
    }
    if let Some(v) = &params.response_format {
        map.insert("response_format".to_string(), serde_json::json!(v));
    }
    if !params.extra.is_empty() {
        map.insert(
            "extra".to_string(),
            serde_json::Value::Object(params.extra.clone().into_iter().collect()),
        );
    }
    canonical_json_map(&map)
}

/// A validated answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Response {
    pub(crate) output: NodeOutput,
    pub(crate) usage: Usage,
    pub(crate) served_model: String,
    /// The cost the provider itself reported (OpenRouter's `usage.cost`), in USD.
    pub(crate) reported_cost_usd: Option<f64>,
}

/// Why a call produced no output.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProviderError {
    /// The offline model cannot serve this request; retrying will not help.
    #[error("{0}")]
    Offline(String),
    /// The reply did not validate against the node's output kind.
    #[error("invalid output: {0}")]
    Invalid(#[from] InvalidOutput),
    /// A transport or server error that may succeed on a later attempt.
    #[error("{0}")]
    Transient(String),
    /// An error that retrying cannot fix (bad request, authentication, unknown model).
    #[error("{0}")]
    Fatal(String),
    /// The provider's reply was not the shape its API documents (not JSON, truncated, no
    /// completion), on every attempt allowed.
    #[error("malformed response: {0}")]
    Malformed(String),
}

pub(crate) type CallFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response, ProviderError>> + Send + 'a>>;

/// An adapter that answers requests. Implementations handle their own retries and rate limits, so
/// that a returned error is final for this build.
pub(crate) trait Provider: Send + Sync {
    fn call<'a>(&'a self, request: &'a Request) -> CallFuture<'a>;

    /// True when an answer costs nothing and the same request always gets the same answer, byte
    /// for byte (the offline model). Such an answer may be used before it is durable: were it
    /// lost in a crash, computing it again gives the same text, so nothing downstream is wasted.
    fn reproducible(&self) -> bool {
        false
    }

    /// What this provider's calls took so far (attempts, 429s, time held by rate limits, the
    /// limits the server reported); `None` for one that sends no requests (the offline model).
    fn traffic(&self) -> Option<Traffic> {
        None
    }

    /// Something to tell the user, once (the server rejecting most attempts, say).
    fn take_notice(&self) -> Option<String> {
        None
    }
}

/// What one model's HTTP traffic took in a build.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Traffic {
    /// Requests sent (every attempt of every call).
    pub(crate) attempts: u64,
    /// Attempts answered 429 (too many requests).
    pub(crate) throttled: u64,
    /// Attempts tried again for another reason: a server error, a timeout, a connection error, a
    /// malformed or invalid reply.
    pub(crate) other_retries: u64,
    /// Wall-clock time during which at least one call waited for a rate limit (the configured
    /// ones, the server's, or a 429's pause), in milliseconds.
    pub(crate) rate_limit_wait_ms: u64,
    /// The limits the server last reported in its headers, per minute.
    pub(crate) reported_requests_per_minute: Option<u64>,
    pub(crate) reported_tokens_per_minute: Option<u64>,
}

/// Where API keys come from: the process environment, then an optional `.env` file next to
/// dataset.toml. Values are only ever handed to adapters, never stored, logged or hashed.
#[derive(Default)]
pub struct Secrets {
    dotenv: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read `{path}`: {reason}")]
pub struct SecretsError {
    pub(crate) path: std::path::PathBuf,
    pub(crate) reason: String,
}

impl Secrets {
    /// Reads `.env` in `root` when there is one (dotenvy's format: `NAME=value`, `export`,
    /// quotes, comments). A line that does not parse is reported by its number, never its text,
    /// which may hold a key.
    pub(crate) fn load(root: &std::path::Path) -> Result<Secrets, SecretsError> {
        let path = root.join(".env");
        if !path.exists() {
            return Ok(Secrets::default());
        }
        let error = |reason: String| SecretsError {
            path: path.clone(),
            reason,
        };
        let entries = dotenvy::from_path_iter(&path).map_err(|e| error(e.to_string()))?;
        let mut dotenv = BTreeMap::new();
        for entry in entries {
            match entry {
                Ok((name, value)) => {
                    dotenv.insert(name, value);
                }
                Err(dotenvy::Error::LineParse(line, _)) => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let first = line.lines().next().unwrap_or_default().trim();
                    let number = text
                        .lines()
                        .position(|l| l.trim() == first)
                        .map_or_else(String::new, |i| format!(" {}", i + 1));
                    return Err(error(format!(
                        "line{number} is not `NAME=value` (its text is not shown: it may hold a key)"
                    )));
                }
                Err(e) => return Err(error(e.to_string())),
            }
        }
        Ok(Secrets { dotenv })
    }

    /// The value of `name`: the environment wins over `.env`.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.dotenv.get(name).cloned())
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values are secrets.
        f.debug_struct("Secrets")
            .field("dotenv", &self.dotenv.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds the adapter for a model. Fails before any call when a needed key is missing, naming the
/// environment variable (never a value).
pub(crate) fn for_model(
    model: &ModelConfig,
    secrets: &Secrets,
) -> Result<Arc<dyn Provider>, ProviderError> {
    if model.provider.is_offline() {
        return Ok(Arc::new(offline::OfflineProvider::new(model.latency_ms)));
    }
    let (root, secret) = reach(model, secrets)?;
    crate::tls::install_crypto_provider();
    let settings = http::Settings::new(model, secret);
    let provider: Arc<dyn Provider> = if model.provider.speaks_messages_api() {
        Arc::new(http::HttpProvider::new(
            anthropic::Anthropic::new(root),
            settings,
        )?)
    } else {
        Arc::new(http::HttpProvider::new(
            openai::OpenAi::new(model.provider, root),
            settings,
        )?)
    };
    Ok(provider)
}

/// The batch API client of a model in batch mode; `None` for a model that is not, or the offline
/// model (free and immediate, it has no batches).
pub(crate) fn batch_client(
    model: &ModelConfig,
    secrets: &Secrets,
) -> Result<Option<batch::BatchClient>, ProviderError> {
    if !model.batch || model.provider.no_batch_api().is_some() {
        return Ok(None);
    }
    let (root, secret) = reach(model, secrets)?;
    crate::tls::install_crypto_provider();
    let adapter: Box<dyn http::Adapter> = if model.provider.speaks_messages_api() {
        Box::new(anthropic::Anthropic::new(root))
    } else {
        Box::new(openai::OpenAi::new(model.provider, root))
    };
    batch::BatchClient::new(model.provider, &model.model, root, adapter, secret).map(Some)
}

/// Where a model is reached and the key it is reached with. Fails when a needed key is missing,
/// naming the environment variable (never a value).
fn reach<'a>(
    model: &'a ModelConfig,
    secrets: &Secrets,
) -> Result<(&'a str, Option<http::Secret>), ProviderError> {
    // `config` requires `base_url` where a provider has no default root.
    let Some(root) = model
        .base_url
        .as_deref()
        .or(model.provider.default_base_url())
    else {
        return Err(ProviderError::Fatal(format!(
            "provider `{}` needs `base_url`",
            model.provider
        )));
    };
    let env = model
        .api_key_env
        .as_deref()
        .or(model.provider.default_key_env());
    let secret = match env {
        None => None,
        Some(name) => match secrets.get(name) {
            Some(value) => Some(http::Secret::new(value)),
            None => {
                return Err(ProviderError::Fatal(format!(
                    "the API key is missing: set the environment variable {name} (or put {name}=... in a .env file next to dataset.toml)"
                )));
            }
        },
    };
    Ok((root, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_values_lose_quotes_and_comments_and_bad_lines_are_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env"),
            "# keys\nexport A_KEY=\"sk-1\"\nB_KEY=plain # a comment\nC_KEY='it''s'\n",
        )
        .unwrap();
        let secrets = Secrets::load(dir.path()).unwrap();
        assert_eq!(
            secrets.dotenv.get("A_KEY").map(String::as_str),
            Some("sk-1")
        );
        assert_eq!(
            secrets.dotenv.get("B_KEY").map(String::as_str),
            Some("plain")
        );
        std::fs::write(dir.path().join(".env"), "OK=1\nsk-secret-value-1234\n").unwrap();
        let error = Secrets::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("line 2 is not `NAME=value`"), "{error}");
        assert!(!error.contains("sk-secret"), "{error}");
    }

    #[test]
    fn a_recorded_request_and_its_key_fields_re_derive_the_key() {
        let request = Request {
            provider: "openai".into(),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            model: "gpt-4o-mini".into(),
            params: Params {
                // Floats that JSON text would not give back bit for bit are kept typed.
                temperature: Some(0.1 + 0.2),
                top_p: Some(0.9),
                max_tokens: Some(300),
                seed: Some(7),
                stop: Some(vec!["\n\n".into()]),
                response_format: Some("json_object".into()),
                extra: BTreeMap::from([
                    (
                        "z".to_string(),
                        serde_json::json!({"b": 1.5e-7, "a": [1, 2]}),
                    ),
                    ("presence_penalty".to_string(), serde_json::json!(0.1)),
                ]),
            },
            output: OutputKind::Json {
                fields: vec!["subject".into(), "body".into()],
            },
            system: Some("You write tickets.".into()),
            user: "Write one about {\"billing\"}.".into(),
            offline: Some(OfflineInputs::new(
                "topic".into(),
                "bank-1".into(),
                BTreeMap::from([("queue".to_string(), serde_json::json!("Billing"))]),
            )),
            sample_seed: 99,
            draw: 0,
            layout: None,
        };
        for request in [request.clone(), request.redraw(3)] {
            let mut artifact = crate::cache::Artifact {
                key: request.key(),
                node: "subject".into(),
                output: crate::value::NodeOutput::Text("x".into()),
                usage: Usage::default(),
                cost_usd: None,
                computed_cost_usd: None,
                price: None,
                served_model: "m".into(),
                created_unix_ms: 0,
                latency_ms: 0,
                upstream: Vec::new(),
                request: request.record(),
                key_fields: Some(request.key_fields()),
            };
            assert_eq!(artifact.derived_key(), Some(request.key()));
            artifact.request.user.push(' ');
            assert_ne!(
                artifact.derived_key(),
                Some(request.key()),
                "a changed value"
            );
        }
    }
}
