//! The `ticketbuild` binary: parse flags, run, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use ticketbuild::{Cli, Outcome};

/// mimalloc instead of the system allocator: profiles of builds show a quarter of the time in
/// glibc malloc/free (sled pages, decoded artifacts, rendered prompts). Its v2 (the `v2` feature in
/// Cargo.toml): v3 holds freed memory for a second, which costs peak memory and was not faster.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match ticketbuild::run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Incomplete) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        // EX_TEMPFAIL: nothing failed; the answers are not in yet.
        Ok(Outcome::Submitted) => ExitCode::from(75),
        Err(error) => {
            ticketbuild::report(&error);
            ExitCode::from(error.exit_code() as u8)
        }
    }
}
