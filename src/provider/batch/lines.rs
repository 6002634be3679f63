//! The result lines of batch APIs, read into one [`ItemOutcome`] per custom id: OpenAI's and
//! Together's output and error files, OpenRouter's result rows (the same shape), and Anthropic's
//! results. What can be retried is decided here: a request the provider refused as invalid cannot.

use serde_json::Value;

use super::{BatchError, ItemOutcome, parse_json, quote};

/// One line of an OpenAI or Together output or error file, or one row of OpenRouter's results.
pub(super) fn files_line(line: &Value) -> Result<(String, ItemOutcome), BatchError> {
    let Some(custom_id) = line["custom_id"].as_str() else {
        return Err(BatchError(format!(
            "a result line without custom_id: {}",
            quote(&line.to_string())
        )));
    };
    let response = &line["response"];
    let status = response["status_code"].as_u64();
    let outcome = match status {
        Some(200..=299) => ItemOutcome::Answered(response["body"].clone()),
        Some(status) => {
            let message = crate::provider::openai::error_message(&response["body"])
                .unwrap_or_else(|| quote(&response["body"].to_string()));
            ItemOutcome::Unanswered {
                reason: format!("HTTP {status}: {message}"),
                retry: status == 429 || status >= 500 || status == 408,
            }
        }
        None => {
            let code = line["error"]["code"]
                .as_str()
                .or(line["error"]["type"].as_str())
                .unwrap_or("error");
            let message = line["error"]["message"].as_str().unwrap_or("");
            ItemOutcome::Unanswered {
                reason: format!("{code}: {message}")
                    .trim_end_matches(": ")
                    .to_string(),
                retry: true,
            }
        }
    };
    Ok((custom_id.to_string(), outcome))
}

/// One line of Anthropic's batch results.
pub(super) fn messages_line(line: &str) -> Result<(String, ItemOutcome), BatchError> {
    let line = parse_json(line)?;
    let Some(custom_id) = line["custom_id"].as_str() else {
        return Err(BatchError(format!(
            "a result line without custom_id: {}",
            quote(&line.to_string())
        )));
    };
    let result = &line["result"];
    let outcome = match result["type"].as_str() {
        Some("succeeded") => ItemOutcome::Answered(result["message"].clone()),
        Some("errored") => {
            let kind = result["error"]["error"]["type"]
                .as_str()
                .or(result["error"]["type"].as_str())
                .unwrap_or("error");
            let message =
                crate::provider::anthropic::error_message(&result["error"]).unwrap_or_default();
            ItemOutcome::Unanswered {
                reason: format!("{kind}: {message}")
                    .trim_end_matches(": ")
                    .to_string(),
                retry: kind != "invalid_request_error",
            }
        }
        Some(other) => ItemOutcome::Unanswered {
            reason: other.to_string(),
            retry: true,
        },
        None => {
            return Err(BatchError(format!(
                "a result line without result.type: {}",
                quote(&line.to_string())
            )));
        }
    };
    Ok((custom_id.to_string(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn result_lines_of_both_apis_are_read() {
        let files_line = |text: &str| files_line(&parse_json(text)?);
        let (id, outcome) = files_line(
            r#"{"custom_id":"k1","response":{"status_code":200,"body":{"choices":[]}},"error":null}"#,
        )
        .unwrap();
        assert_eq!(id, "k1");
        assert_eq!(outcome, ItemOutcome::Answered(json!({"choices": []})));
        let (_, outcome) = files_line(
            r#"{"custom_id":"k2","response":{"status_code":400,"body":{"error":{"message":"bad"}}}}"#,
        )
        .unwrap();
        assert!(matches!(
            outcome,
            ItemOutcome::Unanswered { retry: false, .. }
        ));
        let (_, outcome) = files_line(
            r#"{"custom_id":"k3","response":null,"error":{"code":"batch_expired","message":"not run"}}"#,
        )
        .unwrap();
        assert_eq!(
            outcome,
            ItemOutcome::Unanswered {
                reason: "batch_expired: not run".into(),
                retry: true
            }
        );
        let (_, outcome) =
            messages_line(r#"{"custom_id":"k4","result":{"type":"expired"}}"#).unwrap();
        assert!(matches!(
            outcome,
            ItemOutcome::Unanswered { retry: true, .. }
        ));
        let (_, outcome) = messages_line(
            r#"{"custom_id":"k5","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"no"}}}}"#,
        )
        .unwrap();
        assert!(matches!(
            outcome,
            ItemOutcome::Unanswered { retry: false, .. }
        ));
        assert!(files_line("{}").is_err());
    }
}
