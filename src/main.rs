//! The `ticketbuild` binary: parse flags, run, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use ticketbuild::{Cli, Outcome};

/// mimalloc instead of the system allocator: profiles of builds show a quarter of the time in
/// glibc malloc/free (sled pages, decoded artifacts, rendered prompts). Its v2 (the `v2` feature in
/// Cargo.toml): v3 holds freed memory for a second, which costs peak memory and was not faster.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for the process (Linux), before the build's threads start.
/// mimalloc asks for huge pages on the memory it reserves (`madvise(MADV_HUGEPAGE)`), and the
/// kernel then backs every 2 MiB range a thread touches with a whole huge page; a build's
/// allocations are small and spread over its threads, so up to 51 MB of its resident memory were
/// huge pages mostly unused (`AnonHugePages` in `/proc/PID/smaps_rollup`). Without them a build
/// peaks 30-50 MB lower at every size and is no slower (README, "Huge pages"). A kernel that
/// refuses changes nothing but memory, so its error is ignored.
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn main() -> ExitCode {
    without_transparent_huge_pages();
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
