use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use firstboot_agent::cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    match Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            // The one place an error is printed: steps record theirs in
            // result.json but do not log them.
            eprintln!("firstboot-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
