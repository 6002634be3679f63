//! The chat-completions adapter: OpenAI, OpenRouter, Together, Ollama and OpenAI-compatible servers.
//!
//! This module owns what a chat-completions request body holds for a [`Request`] and how a reply's
//! text, usage, served model and reported cost are read. Sending, retrying and limiting are `http`'s.
//! The invariant: the body is a function of the request alone (with the provider name and API root,
//! both key material), and it carries exactly the parameters the user set, so that everything that
//! reaches the wire is in the artifact key. The adapter's own choices are constants per provider:
//! the name of the max-tokens field (`max_completion_tokens` for OpenAI, which no longer accepts
//! `max_tokens` for its reasoning models; `max_tokens` elsewhere) and the default response format.

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::Request;
use super::http::{Adapter, Reply, ReplyError, Secret, count};
use crate::config::ProviderKind;
use crate::cost::Usage;
use crate::value::OutputKind;

/// Estimated output tokens when the request sets no `max_tokens`, for rate-limit estimates only.
const UNSET_MAX_TOKENS_ESTIMATE: u64 = 1024;

pub(crate) struct OpenAi {
    provider: ProviderKind,
    endpoint: String,
}

impl OpenAi {
    /// `root` is the API root (`https://api.openai.com/v1`); requests go to `{root}/chat/completions`.
    pub(crate) fn new(provider: ProviderKind, root: &str) -> OpenAi {
        OpenAi {
            provider,
            endpoint: format!("{}/chat/completions", root.trim_end_matches('/')),
        }
    }
}

/// The request body for `provider`.
pub(crate) fn body(provider: ProviderKind, request: &Request) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": request.user}));
    body.insert("messages".into(), Value::Array(messages));
    let p = &request.params;
    if let Some(t) = p.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = p.top_p {
        body.insert("top_p".into(), json!(t));
    }
    if let Some(m) = p.max_tokens {
        let field = if provider == ProviderKind::OpenAi {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(field.into(), json!(m));
    }
    if let Some(seed) = p.seed {
        body.insert("seed".into(), json!(seed));
    }
    if let Some(stop) = &p.stop {
        body.insert("stop".into(), json!(stop));
    }
    if let Some(format) = response_format(request) {
        body.insert("response_format".into(), format);
    }
    // `extra` last and verbatim: what the user wrote there wins over what the adapter chose.
    for (k, v) in &p.extra {
        body.insert(k.clone(), v.clone());
    }
    Value::Object(body)
}

/// The `response_format` for a node: a strict JSON schema for `list` and `json` nodes unless the
/// model's `response_format` says `json_object` or `text`; nothing for `text` nodes.
pub(crate) fn response_format(request: &Request) -> Option<Value> {
    if request.output == OutputKind::Text {
        return None;
    }
    match request.params.response_format.as_deref() {
        Some("text") => None,
        Some("json_object") => Some(json!({"type": "json_object"})),
        _ => schema(&request.output).map(|schema| {
            json!({
                "type": "json_schema",
                "json_schema": {"name": "ticketbuild_output", "strict": true, "schema": schema}
            })
        }),
    }
}

/// The JSON schema of a node's reply: its fields as required strings, or `{"items": [...]}`.
pub(crate) fn schema(kind: &OutputKind) -> Option<Value> {
    match kind {
        OutputKind::Text => None,
        OutputKind::List { min, max } => Some(json!({
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"type": "string"}, "minItems": min, "maxItems": max}
            },
            "required": ["items"],
            "additionalProperties": false
        })),
        OutputKind::Json { fields } => {
            let properties: Map<String, Value> = fields
                .iter()
                .map(|f| (f.clone(), json!({"type": "string"})))
                .collect();
            Some(json!({
                "type": "object",
                "properties": properties,
                "required": fields,
                "additionalProperties": false
            }))
        }
    }
}

/// Reads a chat-completions reply.
pub fn parse_reply(body: &Value) -> Result<Reply, ReplyError> {
    let Some(choices) = body.get("choices").and_then(Value::as_array) else {
        if let Some(message) = error_message(body) {
            // OpenRouter and some gateways report upstream errors in a 200 body.
            let status = body["error"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (400..600).contains(c))
                .unwrap_or(502);
            return Err(ReplyError::Error { status, message });
        }
        return Err(ReplyError::Malformed("the reply has no `choices`".into()));
    };
    let Some(choice) = choices.first() else {
        return Err(ReplyError::Malformed(
            "the reply has an empty `choices`".into(),
        ));
    };
    let Some(message) = choice.get("message").filter(|m| m.is_object()) else {
        return Err(ReplyError::Malformed(
            "the first choice has no `message`".into(),
        ));
    };
    let text = match &message["content"] {
        Value::String(s) => s.clone(),
        // Some servers send content parts.
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        _ => {
            return Err(ReplyError::Malformed(
                "the message `content` is not text".into(),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(ReplyError::Empty);
    }
    let usage = &body["usage"];
    let (usage, cost) = if usage.is_object() {
        let parsed = Usage {
            input_tokens: count(&usage["prompt_tokens"]),
            cached_input_tokens: count(&usage["prompt_tokens_details"]["cached_tokens"]),
            output_tokens: count(&usage["completion_tokens"]),
            reasoning_tokens: count(&usage["completion_tokens_details"]["reasoning_tokens"]),
            estimated: false,
        };
        (parsed, usage["cost"].as_f64())
    } else {
        // A server that reports no usage: estimate from the text, and say so.
        let parsed = Usage {
            output_tokens: crate::tokens::estimate(text.len()),
            estimated: true,
            ..Usage::default()
        };
        (parsed, None)
    };
    Ok(Reply {
        text,
        usage,
        served_model: body["model"].as_str().map(str::to_string),
        reported_cost_usd: cost,
    })
}

/// The message of an error body (`{"error": {"message": ...}}`, or `{"error": "..."}`).
pub fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let message = match error {
        Value::String(s) => s.clone(),
        Value::Object(map) => {
            let mut message = map.get("message").and_then(Value::as_str)?.to_string();
            // The machine-readable code says what the words may not (`insufficient_quota`).
            let code = map.get("code").or_else(|| map.get("type"));
            if let Some(code) = code.and_then(Value::as_str) {
                message.push_str(&format!(" ({code})"));
            }
            // OpenRouter puts the upstream provider's own words under metadata.raw.
            if let Some(raw) = map
                .get("metadata")
                .and_then(|m| m.get("raw"))
                .and_then(Value::as_str)
            {
                message.push_str(&format!(" ({raw})"));
            }
            message
        }
        _ => return None,
    };
    Some(message)
}

impl Adapter for OpenAi {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn headers(&self, secret: Option<&Secret>) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        if let Some(secret) = secret {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
                    "the API key holds characters that cannot go in an HTTP header".to_string()
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if self.provider == ProviderKind::OpenRouter {
            // OpenRouter's optional attribution header.
            headers.insert(
                HeaderName::from_static("x-title"),
                HeaderValue::from_static("ticketbuild"),
            );
        }
        Ok(headers)
    }

    fn body(&self, request: &Request) -> Value {
        body(self.provider, request)
    }

    fn max_output_tokens(&self, request: &Request) -> u64 {
        request
            .params
            .max_tokens
            .unwrap_or(UNSET_MAX_TOKENS_ESTIMATE)
    }

    fn parse_reply(&self, body: &Value) -> Result<Reply, ReplyError> {
        parse_reply(body)
    }

    fn error_message(&self, body: &Value) -> Option<String> {
        error_message(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Params;
    use std::collections::BTreeMap;

    fn request(output: OutputKind, params: Params) -> Request {
        Request {
            provider: "openai".into(),
            base_url: None,
            model: "gpt-4o-mini".into(),
            params,
            output,
            system: Some("You are a customer.".into()),
            user: "Write a subject.".into(),
            offline: None,
            sample_seed: 7,
            draw: 0,
            layout: None,
        }
    }

    #[test]
    fn a_text_node_with_no_params_sends_model_and_messages_only() {
        let body = body(
            ProviderKind::OpenAi,
            &request(OutputKind::Text, Params::default()),
        );
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You are a customer."},
                    {"role": "user", "content": "Write a subject."}
                ]
            })
        );
        let mut no_system = request(OutputKind::Text, Params::default());
        no_system.system = None;
        assert_eq!(
            super::body(ProviderKind::Together, &no_system)["messages"],
            json!([{"role": "user", "content": "Write a subject."}])
        );
    }

    #[test]
    fn every_set_param_is_sent_and_extra_is_merged_verbatim() {
        let params = Params {
            temperature: Some(0.7),
            top_p: Some(0.9),
            max_tokens: Some(300),
            seed: Some(-5),
            stop: Some(vec!["END".into()]),
            response_format: None,
            extra: BTreeMap::from([
                ("presence_penalty".to_string(), json!(0.5)),
                ("provider".to_string(), json!({"order": ["a", "b"]})),
            ]),
        };
        let body = body(
            ProviderKind::OpenRouter,
            &request(OutputKind::Text, params.clone()),
        );
        let object = body.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "max_tokens",
                "messages",
                "model",
                "presence_penalty",
                "provider",
                "seed",
                "stop",
                "temperature",
                "top_p"
            ]
        );
        assert_eq!(body["temperature"], json!(0.7));
        assert_eq!(body["top_p"], json!(0.9));
        assert_eq!(body["max_tokens"], json!(300));
        assert_eq!(body["seed"], json!(-5));
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["provider"], json!({"order": ["a", "b"]}));
        // OpenAI itself takes max_completion_tokens.
        let openai = super::body(ProviderKind::OpenAi, &request(OutputKind::Text, params));
        assert_eq!(openai["max_completion_tokens"], json!(300));
        assert!(openai.get("max_tokens").is_none());
    }

    #[test]
    fn extra_wins_over_adapter_fields() {
        let params = Params {
            max_tokens: Some(300),
            extra: BTreeMap::from([("max_tokens".to_string(), json!(50))]),
            ..Params::default()
        };
        assert_eq!(
            body(ProviderKind::Together, &request(OutputKind::Text, params))["max_tokens"],
            json!(50)
        );
    }

    #[test]
    fn structured_nodes_send_a_strict_schema_unless_told_otherwise() {
        let json_kind = OutputKind::Json {
            fields: vec!["subject".into(), "body".into()],
        };
        let body = body(
            ProviderKind::OpenAi,
            &request(json_kind.clone(), Params::default()),
        );
        assert_eq!(
            body["response_format"],
            json!({
                "type": "json_schema",
                "json_schema": {
                    "name": "ticketbuild_output",
                    "strict": true,
                    "schema": {
                        "type": "object",
                        "properties": {"subject": {"type": "string"}, "body": {"type": "string"}},
                        "required": ["subject", "body"],
                        "additionalProperties": false
                    }
                }
            })
        );
        let list = super::body(
            ProviderKind::OpenAi,
            &request(OutputKind::List { min: 4, max: 8 }, Params::default()),
        );
        assert_eq!(
            list["response_format"]["json_schema"]["schema"]["properties"]["items"],
            json!({"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 8})
        );
        let object = Params {
            response_format: Some("json_object".into()),
            ..Params::default()
        };
        assert_eq!(
            super::body(
                ProviderKind::OpenAi,
                &request(json_kind.clone(), object.clone())
            )["response_format"],
            json!({"type": "json_object"})
        );
        let text = Params {
            response_format: Some("text".into()),
            ..Params::default()
        };
        assert!(
            super::body(ProviderKind::OpenAi, &request(json_kind, text))
                .get("response_format")
                .is_none()
        );
        // Text nodes never send one, whatever the model says.
        assert!(
            super::body(ProviderKind::OpenAi, &request(OutputKind::Text, object))
                .get("response_format")
                .is_none()
        );
    }

    #[test]
    fn usage_is_read_with_cached_and_reasoning_tokens_and_cost() {
        let reply = parse_reply(&json!({
            "id": "x",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": 120,
                "completion_tokens": 30,
                "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 12},
                "cost": 0.00042
            }
        }))
        .unwrap();
        assert_eq!(reply.text, "Hello");
        assert_eq!(
            reply.served_model.as_deref(),
            Some("gpt-4o-mini-2024-07-18")
        );
        assert_eq!(reply.reported_cost_usd, Some(0.00042));
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 120,
                cached_input_tokens: 64,
                output_tokens: 30,
                reasoning_tokens: 12,
                estimated: false
            }
        );
        let plain = parse_reply(&json!({
            "choices": [{"message": {"content": "Hi"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}
        }))
        .unwrap();
        assert_eq!(plain.usage.cached_input_tokens, 0);
        assert_eq!(plain.reported_cost_usd, None);
        assert_eq!(plain.served_model, None);
    }

    #[test]
    fn bad_replies_are_classified() {
        assert_eq!(
            parse_reply(&json!({"choices": [{"message": {"content": "  "}}]})),
            Err(ReplyError::Empty)
        );
        assert_eq!(
            parse_reply(&json!({"choices": [{"message": {"content": null, "refusal": "no"}}]})),
            Err(ReplyError::Empty)
        );
        assert!(matches!(
            parse_reply(&json!({"object": "chat.completion"})),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(&json!({"choices": []})),
            Err(ReplyError::Malformed(_))
        ));
        assert_eq!(
            parse_reply(&json!({"error": {"message": "Rate limit exceeded", "code": 429}})),
            Err(ReplyError::Error {
                status: 429,
                message: "Rate limit exceeded".into()
            })
        );
        assert_eq!(
            error_message(
                &json!({"error": {"message": "Invalid key", "type": "invalid_request_error"}})
            ),
            Some("Invalid key (invalid_request_error)".into())
        );
        assert_eq!(
            error_message(
                &json!({"error": {"message": "Quota", "type": "x", "code": "insufficient_quota"}})
            ),
            Some("Quota (insufficient_quota)".into())
        );
        assert_eq!(
            error_message(&json!({"error": "model not found"})),
            Some("model not found".into())
        );
        assert_eq!(error_message(&json!({"detail": "x"})), None);
    }
}
