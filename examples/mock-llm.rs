//! `cargo run --example mock-llm -- --latency-ms 100 --port 8089`: a mock LLM server to try the HTTP
//! providers without an account.
//!
//! It serves the OpenAI chat-completions API (`POST /v1/chat/completions`) and the Anthropic Messages
//! API (`POST /v1/messages`) on 127.0.0.1, answering every node of the example pipeline with a valid
//! output, with the latency and fault rates given here; and their batch APIs (OpenAI's `/v1/files`
//! and `/v1/batches`, Anthropic's `/v1/messages/batches`) with a completion delay, per-request
//! errors, expiry with partial output, cancellation and results in random order. The server itself is the one the integration
//! tests use (tests/support/mock_llm.rs); this file only reads flags and prints where it listens.

// The shared mock (tests/support) is `pub` for the tests, not for a library.
#![allow(unreachable_pub)]

#[path = "../tests/support/mock_llm.rs"]
mod mock_llm;

use std::time::Duration;

use clap::Parser;

/// A mock OpenAI / Anthropic server for trying ticketbuild without an account.
#[derive(Debug, Parser)]
#[command(name = "mock-llm")]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Milliseconds added to every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests answered 429 Too Many Requests (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    rate_429: f64,
    /// Share of requests answered 500 Internal Server Error (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    rate_500: f64,
    /// The Retry-After header of the 429 answers, in seconds ("none" sends none).
    #[arg(long, default_value = "1")]
    retry_after: String,
    /// Report these prompt tokens on every answer (default: characters / 4).
    #[arg(long)]
    prompt_tokens: Option<u64>,
    /// Report these completion tokens on every answer (default: characters / 4).
    #[arg(long)]
    completion_tokens: Option<u64>,
    /// Report this cost in USD on every answer, as OpenRouter's `usage.cost`.
    #[arg(long)]
    cost: Option<f64>,
    /// Answer 401 unless requests carry this API key.
    #[arg(long)]
    api_key: Option<String>,
    /// Seed of the random faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of requests (by key) answered after `--slow-ms` instead of `--latency-ms`: a
    /// latency tail (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    /// Milliseconds the slow share of requests takes.
    #[arg(long, default_value_t = 30_000)]
    slow_ms: u64,
    /// Enforce this many requests per minute (a token bucket, full at start), answering 429 with
    /// Retry-After when it is empty.
    #[arg(long)]
    rpm: Option<u64>,
    /// Enforce this many tokens per minute (the prompt's characters / 4 plus max_tokens).
    #[arg(long)]
    tpm: Option<u64>,
    /// Which headers describe the limits: openai, anthropic or none.
    #[arg(long, default_value = "openai")]
    limit_headers: String,
    /// Batch APIs: milliseconds from creation until a batch has answered every request.
    #[arg(long, default_value_t = 200)]
    batch_complete_after_ms: u64,
    /// Batch APIs: share of requests that fail on their own (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    batch_error_share: f64,
    /// Batch APIs: batches expire at the end with this share of requests done (0 to 1).
    #[arg(long)]
    batch_expire_done_share: Option<f64>,
    /// Batch APIs: results in a random order.
    #[arg(long)]
    batch_shuffle: bool,
    /// Batch APIs: files and batches speak Together's dialect instead of OpenAI's.
    #[arg(long)]
    batch_together: bool,
}

/// The rate limit the flags ask for, if any.
fn rate_limit(args: &Args) -> std::io::Result<Option<mock_llm::RateLimit>> {
    if args.rpm.is_none() && args.tpm.is_none() {
        return Ok(None);
    }
    let headers = match args.limit_headers.as_str() {
        "openai" => mock_llm::HeaderStyle::OpenAi,
        "anthropic" => mock_llm::HeaderStyle::Anthropic,
        "none" => mock_llm::HeaderStyle::None,
        other => {
            return Err(std::io::Error::other(format!(
                "--limit-headers: `{other}` is not one of openai, anthropic, none"
            )));
        }
    };
    Ok(Some(mock_llm::RateLimit {
        requests_per_minute: args.rpm,
        tokens_per_minute: args.tpm,
        headers,
        full_at_start: true,
        burst: None,
    }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let rate_limit = rate_limit(&args)?;
    let config = mock_llm::MockConfig {
        latency_ms: args.latency_ms,
        rate_429: args.rate_429,
        rate_500: args.rate_500,
        retry_after: (args.retry_after != "none").then_some(args.retry_after),
        prompt_tokens: args.prompt_tokens,
        completion_tokens: args.completion_tokens,
        cost: args.cost,
        api_key: args.api_key,
        seed: args.seed,
        slow_share: args.slow_share,
        slow_ms: args.slow_ms,
        rate_limit,
        batch: mock_llm::BatchConfig {
            complete_after_ms: args.batch_complete_after_ms,
            error_share: args.batch_error_share,
            expire_done_share: args.batch_expire_done_share,
            shuffle: args.batch_shuffle,
            create_reply_delay_ms: 0,
            together: args.batch_together,
            errors_persist: false,
        },
        ..mock_llm::MockConfig::default()
    };
    println!("mock LLM server listening on {url}");
    println!("point dataset.toml at it with:");
    println!();
    println!("  [models.default]");
    println!("  provider = \"openai-compatible\"   # or \"anthropic\" with the same base_url");
    println!("  model = \"mock\"");
    println!("  base_url = \"{url}/v1\"");
    println!();
    println!("Ctrl-C stops it.");
    tokio::select! {
        _ = mock_llm::serve(listener, config, Some(Duration::from_secs(5))) => {}
        _ = tokio::signal::ctrl_c() => println!("stopped"),
    }
    Ok(())
}
