//! The command line: `tributary run | check | poll`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Paths;

/// Stream webhooks and polled REST APIs into Parquet and Delta Lake tables,
/// durably and exactly once.
///
/// tributary receives events over HTTP or pages through REST APIs on a
/// schedule, makes them durable in a local log before acknowledging them (or
/// moving the poll cursor), and writes them in batches as Parquet files or
/// Delta tables to local disk or S3-compatible storage. Pipelines are TOML
/// files in `pipelines/`; schemas are JSON Schema files.
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
    /// Run one poll of a pipeline now, in the foreground, with a progress
    /// bar; its sinks then flush what it fetched. For backfills and for
    /// trying a new pipeline. An interrupted run is resumed, not restarted.
    ///
    /// The pipeline's data directory is locked: stop `tributary run` first.
    Poll(PollArgs),
}

/// `tributary poll`.
#[derive(Debug, Clone, Args)]
pub struct PollArgs {
    /// The pipeline's name (its `name` key).
    pub pipeline: String,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
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
