use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// <https://no-color.org>: a non-empty NO_COLOR turns colour off.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

fn main() {
    let cli = imgbuild::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal, and never with NO_COLOR set (clap's
        // own help and errors follow the same rules through anstream).
        .with_ansi(std::io::stderr().is_terminal() && !no_color())
        .with_target(false)
        .without_time()
        .init();
    if let Err(e) = cli.run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
