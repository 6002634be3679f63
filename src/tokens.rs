//! Token counts of prompt text, before a model sees it.
//!
//! This module owns the one estimator that `plan`, the budget reservation and the
//! `tokens_per_minute` limiter share: exact for
//! OpenAI-family models (tiktoken's o200k and cl100k encodings, by model name, also behind
//! OpenRouter's `openai/` prefix), about four characters per token for every other model. It
//! counts; pricing tokens is `cost`'s. The invariant: for a given model and text, everything that
//! estimates a prompt before the call gets the same figure.

use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::config::ProviderKind;

/// Tokens in the concatenation of `parts` (a request's system and user messages) for `model`.
pub(crate) fn count(provider: ProviderKind, model: &str, parts: &[&str]) -> u64 {
    match encoding(provider, model) {
        Some(Tokenizer::Cl100kBase) => parts
            .iter()
            .map(|part| {
                tiktoken_rs::cl100k_base_singleton()
                    .encode_ordinary(part)
                    .len() as u64
            })
            .sum(),
        Some(_) => parts
            .iter()
            .map(|part| {
                tiktoken_rs::o200k_base_singleton()
                    .encode_ordinary(part)
                    .len() as u64
            })
            .sum(),
        None => estimate(parts.iter().map(|part| part.len()).sum()),
    }
}

/// What [`count`] uses for `model`: the encoding's name, or the approximation.
pub(crate) fn tokenizer_name(provider: ProviderKind, model: &str) -> &'static str {
    match encoding(provider, model) {
        Some(Tokenizer::Cl100kBase) => "cl100k_base",
        Some(_) => "o200k_base",
        None => "approx (chars/4)",
    }
}

/// Tokens in text of `bytes` bytes when no tokenizer is known: about four per token.
pub(crate) fn estimate(bytes: usize) -> u64 {
    bytes.div_ceil(4) as u64
}

/// The encoding of an OpenAI-family model that tiktoken knows; `None` for every other model.
fn encoding(provider: ProviderKind, model: &str) -> Option<Tokenizer> {
    let name = model.strip_prefix("openai/");
    if provider != ProviderKind::OpenAi && name.is_none() {
        return None;
    }
    match get_tokenizer(name.unwrap_or(model))? {
        tokenizer @ (Tokenizer::O200kBase | Tokenizer::O200kHarmony | Tokenizer::Cl100kBase) => {
            Some(tokenizer)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_models_are_counted_exactly_and_others_estimated() {
        let text = "Write the email body for a customer who cannot log in.";
        let exact = count(ProviderKind::OpenAi, "gpt-4o-mini", &[text]);
        assert_eq!(exact, 12);
        assert_eq!(
            tokenizer_name(ProviderKind::OpenAi, "gpt-4o-mini"),
            "o200k_base"
        );
        assert_eq!(
            count(ProviderKind::OpenRouter, "openai/gpt-4o-mini", &[text]),
            exact
        );
        assert_eq!(tokenizer_name(ProviderKind::OpenAi, "gpt-4"), "cl100k_base");
        // Others: four bytes a token over the whole prompt, rounded up once.
        assert_eq!(count(ProviderKind::Anthropic, "claude", &["abc", "de"]), 2);
        assert_eq!(
            count(ProviderKind::Offline, "x", &[text]),
            estimate(text.len())
        );
    }
}
