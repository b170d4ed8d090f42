//! The command line: `tributary run | check`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Paths;

/// Stream webhooks into Parquet tables, durably and exactly once.
///
/// tributary receives events over HTTP, makes them durable in a local log
/// before acknowledging them, and writes them in batches as Parquet files to
/// local disk or S3-compatible storage. Pipelines are TOML files in
/// `pipelines/`; schemas are JSON Schema files.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start every pipeline and the HTTP server; stop with Ctrl-C or SIGTERM.
    ///
    /// Events are answered 202 only after they are fsynced to the log under
    /// `data_dir`; sinks then write them to `lake` (or each sink's `uri`).
    Run(ConfigArgs),
    /// Validate tributary.toml, every pipeline and every schema, printing all
    /// errors (file, key, problem, fix); exits non-zero if there is any.
    Check(ConfigArgs),
}

/// Where the configuration is.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Global settings file [default: ./tributary.toml if present]. Relative
    /// paths in every file resolve against its directory.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of pipeline files [default: pipelines/ beside the config file].
    #[arg(long, value_name = "DIR")]
    pub pipelines: Option<PathBuf>,
}

impl ConfigArgs {
    /// The paths to load.
    pub fn paths(&self) -> Paths {
        Paths {
            config: self.config.clone(),
            pipelines: self.pipelines.clone(),
        }
    }
}
