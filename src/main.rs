//! The `ticketbuild` binary: parse flags, run, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use ticketbuild::{Cli, CliError, Outcome};

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
        Err(error) => {
            report(&error);
            ExitCode::from(error.exit_code() as u8)
        }
    }
}

fn report(error: &CliError) {
    match error {
        CliError::Input(problems) => {
            for problem in &problems.0 {
                eprintln!("error: {problem}");
            }
            let count = problems.len();
            let noun = if count == 1 { "problem" } else { "problems" };
            eprintln!("ticketbuild: {count} {noun} in the input; nothing was built");
        }
        CliError::Runtime(error) => {
            eprintln!("ticketbuild: error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
        }
        // Nobody reads stdout any more; there is nothing to say and nobody to say it to.
        CliError::ClosedPipe => {}
    }
}
