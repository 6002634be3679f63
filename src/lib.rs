//! ticketbuild builds synthetic, multilingual customer-support ticket datasets with LLMs, the way a
//! build tool builds software: every field of every ticket is an artifact whose key is the BLAKE3 hash
//! of exactly what determines it, responses are cached, and a rebuild calls a model only where
//! something changed.
//!
//! The modules, in the order data flows through them (each uses only those before it; the
//! README's "Where things live" has a line per module):
//! - [`config`] reads and checks dataset.toml; [`prompt`] reads prompt files; [`graph`] compiles
//!   templates and orders the nodes.
//! - [`sampling`] draws each ticket's language, categories, id and seed.
//! - [`key`] derives artifact keys; [`cache`] stores artifacts durably; [`cost`] prices them.
//! - [`provider`] talks to models (the built-in [`offline`] model among them).
//! - `quality` judges answers against their checks and finds duplicate tickets.
//! - [`engine`] runs a build; `output` writes Parquet, CSV and JSONL; `build` records it;
//!   `shard` splits a build across machines and checks the parts `merge` combines.
//! - `status` and `plan` say what a build would do; `watch` tells edits apart.
//! - `cli` is the command line; `diag` formats input errors.

mod build;
pub mod cache;
mod cli;
pub mod config;
pub mod cost;
mod diag;
pub mod engine;
pub mod graph;
mod hashing;
pub mod input;
pub mod key;
pub mod language;
mod manifest;
pub mod offline;
mod output;
mod plan;
pub mod prompt;
pub mod provider;
mod quality;
mod report;
pub mod sampling;
mod shard;
mod status;
mod tls;
mod tokens;
pub mod value;
mod watch;

pub use cli::{Cli, CliError, Outcome, report, run};
