//! The `tributary` binary: parse the command line, set up logging, run the
//! command, print an error chain once, and exit with a meaningful code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use tributary::cli::{Cli, Command};
use tributary::config::{self, Config};
use tributary::shutdown::Shutdown;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // delta-rs logs every snapshot at info and a missing metric at every merge,
            // and its kernel logs an error for each table that does not exist yet;
            // their real failures reach us as errors.
            EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                EnvFilter::new(
                    "info,deltalake_core=warn,deltalake_core::operations::merge=error,buoyant_kernel=off,datafusion=warn",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Check(args) => match config::load(&args.paths()) {
            Ok(config) => {
                println!("ok: {} pipeline(s) valid", config.pipelines.len());
                for p in &config.pipelines {
                    println!(
                        "  {} ({}): {} sink(s)",
                        p.name,
                        p.file.display(),
                        p.sinks.len()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(errors) => print_config_errors(&errors),
        },
        Command::Run(args) => match config::load(&args.paths()) {
            Ok(config) => run(config),
            Err(errors) => print_config_errors(&errors),
        },
    }
}

fn print_config_errors(errors: &[config::ConfigError]) -> ExitCode {
    for e in errors {
        eprintln!("{e}");
    }
    eprintln!(
        "{} configuration error(s); nothing was started",
        errors.len()
    );
    ExitCode::from(2)
}

fn run(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tributary::pipeline::run(config, Shutdown::default())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
