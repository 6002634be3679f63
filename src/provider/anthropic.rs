//! The Anthropic Messages API adapter.
//!
//! This module owns what a Messages request body holds for a [`Request`], the headers the API wants
//! (`x-api-key`, `anthropic-version`) and how a reply's text and usage are read. Sending, retrying and
//! limiting are `http`'s. The invariant: the body is a function of the request alone, so everything
//! that reaches the wire is in the artifact key. Two things on the wire are the adapter's own
//! constants rather than user settings, and that is sound because they are fixed for the provider
//! `anthropic`, which is key material: `max_tokens` is required by the API and defaults to
//! [`DEFAULT_MAX_TOKENS`] when the model sets none (changing that constant would change replies
//! without changing keys, so it must never change without bumping the key schema); and since the API
//! has no response format, `list` and `json` nodes get a fixed instruction appended to the system
//! prompt (omitted when the model's `response_format` is `text`).

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::Request;
use super::http::{Adapter, Reply, ReplyError, Secret, count};
use crate::cost::Usage;
use crate::value::OutputKind;

/// `max_tokens` when the model sets none. Part of the wire format of provider `anthropic`; see the
/// module comment before changing it.
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 1024;

/// The API version this adapter speaks.
pub(crate) const API_VERSION: &str = "2023-06-01";

pub(crate) struct Anthropic {
    endpoint: String,
}

impl Anthropic {
    /// `root` is the API root (`https://api.anthropic.com/v1`); requests go to `{root}/messages`.
    pub(crate) fn new(root: &str) -> Anthropic {
        Anthropic {
            endpoint: format!("{}/messages", root.trim_end_matches('/')),
        }
    }
}

/// What `list` and `json` nodes are told, since the API has no response format. The mock server
/// reads these sentences back, so keep them in step with tests/support/mock_llm.rs.
pub(crate) fn format_instruction(request: &Request) -> Option<String> {
    if request.params.response_format.as_deref() == Some("text") {
        return None;
    }
    match &request.output {
        OutputKind::Text => None,
        OutputKind::List { min, max } => Some(format!(
            "Reply with only a JSON array of {min} to {max} strings, and no other text."
        )),
        OutputKind::Json { fields } => {
            let names: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
            Some(format!(
                "Reply with only a JSON object whose string fields are {}, and no other text.",
                names.join(", ")
            ))
        }
    }
}

/// The request body.
pub(crate) fn body(request: &Request) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    let p = &request.params;
    body.insert(
        "max_tokens".into(),
        json!(p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    let system = match (&request.system, format_instruction(request)) {
        (Some(system), Some(instruction)) => Some(format!("{system}\n\n{instruction}")),
        (Some(system), None) => Some(system.clone()),
        (None, instruction) => instruction,
    };
    if let Some(system) = system {
        body.insert("system".into(), json!(system));
    }
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": request.user}]),
    );
    if let Some(t) = p.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(t) = p.top_p {
        body.insert("top_p".into(), json!(t));
    }
    if let Some(stop) = &p.stop {
        body.insert("stop_sequences".into(), json!(stop));
    }
    // `seed` is refused by `config` for this provider; `response_format` is handled above.
    for (k, v) in &p.extra {
        body.insert(k.clone(), v.clone());
    }
    Value::Object(body)
}

/// Reads a Messages reply.
pub fn parse_reply(body: &Value) -> Result<Reply, ReplyError> {
    if body["type"] == "error" {
        let message = error_message(body).unwrap_or_else(|| "unknown error".into());
        let status = match body["error"]["type"].as_str() {
            Some("rate_limit_error") => 429,
            Some("overloaded_error") => 529,
            Some("authentication_error") => 401,
            Some("permission_error") => 403,
            Some("not_found_error") => 404,
            Some("invalid_request_error") => 400,
            _ => 500,
        };
        return Err(ReplyError::Error { status, message });
    }
    let Some(content) = body.get("content").and_then(Value::as_array) else {
        return Err(ReplyError::Malformed("the reply has no `content`".into()));
    };
    let text: String = content
        .iter()
        .filter(|block| block["type"] == "text")
        .filter_map(|block| block["text"].as_str())
        .collect::<Vec<_>>()
        .join("");
    if text.trim().is_empty() {
        return Err(ReplyError::Empty);
    }
    let usage = &body["usage"];
    if !usage.is_object() {
        return Err(ReplyError::Malformed("the reply has no `usage`".into()));
    }
    let cache_read = count(&usage["cache_read_input_tokens"]);
    let usage = Usage {
        // Saturating: a server reporting counts near `u64::MAX` must not overflow the sum.
        input_tokens: count(&usage["input_tokens"])
            .saturating_add(cache_read)
            .saturating_add(count(&usage["cache_creation_input_tokens"])),
        cached_input_tokens: cache_read,
        output_tokens: count(&usage["output_tokens"]),
        reasoning_tokens: 0,
        estimated: false,
    };
    Ok(Reply {
        text,
        usage,
        served_model: body["model"].as_str().map(str::to_string),
        reported_cost_usd: None,
    })
}

/// The message of an error body (`{"type": "error", "error": {"type": ..., "message": ...}}`).
pub fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let message = error.get("message").and_then(Value::as_str)?;
    Some(match error.get("type").and_then(Value::as_str) {
        Some(kind) => format!("{message} ({kind})"),
        None => message.to_string(),
    })
}

impl Adapter for Anthropic {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn headers(&self, secret: Option<&Secret>) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        if let Some(secret) = secret {
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                "the API key holds characters that cannot go in an HTTP header".to_string()
            })?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        Ok(headers)
    }

    fn body(&self, request: &Request) -> Value {
        body(request)
    }

    fn max_output_tokens(&self, request: &Request) -> u64 {
        request.params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
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
            provider: "anthropic".into(),
            base_url: None,
            model: "claude-sonnet-4-5".into(),
            params,
            output,
            system: Some("You label tickets.".into()),
            user: "Tag this.".into(),
            offline: None,
            sample_seed: 7,
            draw: 0,
            layout: None,
        }
    }

    #[test]
    fn a_text_node_gets_the_default_max_tokens_and_nothing_unset() {
        assert_eq!(
            body(&request(OutputKind::Text, Params::default())),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "system": "You label tickets.",
                "messages": [{"role": "user", "content": "Tag this."}]
            })
        );
    }

    #[test]
    fn params_map_to_the_messages_api() {
        let params = Params {
            temperature: Some(0.3),
            top_p: Some(0.8),
            max_tokens: Some(200),
            seed: None,
            stop: Some(vec!["###".into()]),
            response_format: None,
            extra: BTreeMap::from([("top_k".to_string(), json!(40))]),
        };
        let body = body(&request(OutputKind::Text, params));
        assert_eq!(body["max_tokens"], json!(200));
        assert_eq!(body["temperature"], json!(0.3));
        assert_eq!(body["top_p"], json!(0.8));
        assert_eq!(body["stop_sequences"], json!(["###"]));
        assert_eq!(body["top_k"], json!(40));
        assert!(
            body.get("stop").is_none()
                && body.get("seed").is_none()
                && body.get("response_format").is_none()
        );
    }

    #[test]
    fn structured_nodes_get_an_instruction_in_the_system_prompt() {
        let json_kind = OutputKind::Json {
            fields: vec!["subject".into(), "body".into()],
        };
        let body = body(&request(json_kind.clone(), Params::default()));
        assert_eq!(
            body["system"],
            json!(
                "You label tickets.\n\nReply with only a JSON object whose string fields are \"subject\", \"body\", and no other text."
            )
        );
        let mut list = request(OutputKind::List { min: 4, max: 8 }, Params::default());
        list.system = None;
        assert_eq!(
            super::body(&list)["system"],
            json!("Reply with only a JSON array of 4 to 8 strings, and no other text.")
        );
        let text = Params {
            response_format: Some("text".into()),
            ..Params::default()
        };
        assert_eq!(
            super::body(&request(json_kind, text))["system"],
            json!("You label tickets.")
        );
    }

    #[test]
    fn usage_counts_cache_reads_and_writes_as_input() {
        let reply = parse_reply(&json!({
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "[\"a\", "}, {"type": "text", "text": "\"b\"]"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 7}
        }))
        .unwrap();
        assert_eq!(reply.text, "[\"a\", \"b\"]");
        assert_eq!(
            reply.served_model.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 130,
                cached_input_tokens: 100,
                output_tokens: 7,
                reasoning_tokens: 0,
                estimated: false
            }
        );
    }

    #[test]
    fn bad_replies_are_classified() {
        assert_eq!(
            parse_reply(&json!({"type": "message", "content": [], "usage": {}})),
            Err(ReplyError::Empty)
        );
        assert!(matches!(
            parse_reply(&json!({"type": "message"})),
            Err(ReplyError::Malformed(_))
        ));
        assert_eq!(
            parse_reply(
                &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            ),
            Err(ReplyError::Error {
                status: 529,
                message: "Overloaded (overloaded_error)".into()
            })
        );
    }
}
