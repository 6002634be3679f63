//! The offline provider: the built-in phrase-bank model behind the [`Provider`] trait.
//!
//! This adapter owns turning a [`Request`] into a call of [`crate::offline::generate`] and its answer
//! into a validated [`Response`] with estimated token counts and zero cost. The text itself comes from
//! `crate::offline`. The invariant: the answer depends only on the request's task, structured inputs
//! and sample seed, all of which are in the artifact key.

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
            sample_seed: draw_seed(request.sample_seed, request.draw),
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
