//! The `tidepool` binary: SQL over a warehouse, imports, sample data.

mod cli;
mod output;
mod progress;
mod repl;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    // The server logs its queries and logins; the other commands only warnings.
    let default_filter = match args.command {
        cli::Command::Serve(_) => "warn,tidepool_flight=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error for people: engine and DataFusion errors already say everything (their
/// causes would repeat it); other errors get their causes appended.
pub fn describe(e: &anyhow::Error) -> String {
    if e.downcast_ref::<tidepool_engine::EngineError>().is_some()
        || e.downcast_ref::<datafusion::error::DataFusionError>()
            .is_some()
    {
        e.to_string()
    } else {
        format!("{e:#}")
    }
}
