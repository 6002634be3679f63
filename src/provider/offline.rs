//! The offline provider: the built-in phrase-bank model behind the [`Provider`] trait.
//!
//! This adapter owns turning a [`Request`] into a call of [`crate::offline::generate`] and its answer
//! into a validated [`Response`] with estimated token counts and zero cost. The text itself comes from
//! `crate::offline`. The invariant: the answer depends only on the request's task, structured inputs,
//! sample seed and draw, all of which are in the artifact key.

use std::time::Duration;

use super::{CallFuture, Provider, ProviderError, Request, Response};
use crate::config::OFFLINE_MODEL;
use crate::cost::Usage;
use crate::offline::{self, OfflineOutput, OfflineRequest};
use crate::value::NodeOutput;

pub(crate) struct OfflineProvider {
    latency: Duration,
}

impl OfflineProvider {
    pub(crate) fn new(latency_ms: u64) -> OfflineProvider {
        OfflineProvider {
            latency: Duration::from_millis(latency_ms),
        }
    }

    fn answer(request: &Request) -> Result<Response, ProviderError> {
        let Some(inputs) = &request.offline else {
            return Err(ProviderError::Fatal(
                "the offline model needs a task; this request has none".to_string(),
            ));
        };
        let output = offline::generate(&OfflineRequest {
            task: &inputs.task,
            inputs: &inputs.inputs,
            sample_seed: request.sample_seed,
            draw: request.draw,
        })
        .map_err(|e| ProviderError::Offline(e.to_string()))?;
        let output = match output {
            OfflineOutput::Text(text) => NodeOutput::Text(text),
            OfflineOutput::List(items) => NodeOutput::List(items),
            OfflineOutput::Json(map) => NodeOutput::Json(map),
        }
        .validated(&request.output)?;
        let usage = Usage {
            input_tokens: crate::tokens::estimate(request.prompt_chars()),
            cached_input_tokens: 0,
            output_tokens: crate::tokens::estimate(output.char_len()),
            reasoning_tokens: 0,
            estimated: true,
        };
        Ok(Response {
            output,
            usage,
            served_model: if request.model.is_empty() {
                OFFLINE_MODEL.to_string()
            } else {
                request.model.clone()
            },
            reported_cost_usd: Some(0.0),
        })
    }
}

impl Provider for OfflineProvider {
    fn call<'a>(&'a self, request: &'a Request) -> CallFuture<'a> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            OfflineProvider::answer(request)
        })
    }

    fn reproducible(&self) -> bool {
        true
    }
}
