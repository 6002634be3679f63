//! Integration tests: the real `ticketbuild` binary on temporary projects.
//!
//! One test binary (see `[[test]]` in Cargo.toml), one module per feature; `support` holds the
//! project builder and helpers shared by all of them.

// Test support is `pub` for the test modules, not for a library.
#![allow(unreachable_pub)]

mod architecture;
mod bad_inputs;
mod batch;
mod build;
mod cost;
mod errors;
mod fuzz;
mod http;
mod incremental;
mod input;
mod interop;
mod latency;
mod mock_batches;
mod pipes;
mod properties;
mod quality;
mod ratelimit;
mod reliability;
mod remote;
mod report;
mod store;
mod support;
mod tables;
mod watch;
