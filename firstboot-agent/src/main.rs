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
        .with_target(false)
        .without_time()
        .init();
    match Cli::parse().run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("firstboot-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
