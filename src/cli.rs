//! The command line: `tributary run | check | poll | status | replay | sql | register`.

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
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log shippers). Filter with RUST_LOG, e.g. RUST_LOG=tributary=debug.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start every pipeline and the HTTP server; stop with Ctrl-C or SIGTERM.
    ///
    /// Events are answered 202 only after they are fsynced to the log under
    /// `data_dir`; sinks then write them to `lake` (or each sink's `uri`).
    Run(RunArgs),
    /// Validate tributary.toml, every pipeline and every schema, printing all
    /// errors (file, key, problem, fix); exits non-zero if there is any.
    Check(CheckArgs),
    /// Print the effective configuration, every default filled in, as TOML
    /// (the same as `check --explain`).
    Explain(ConfigArgs),
    /// Run one poll of a pipeline now, in the foreground, with a progress
    /// bar; its sinks then flush what it fetched. For backfills and for
    /// trying a new pipeline. An interrupted run is resumed, not restarted.
    ///
    /// The pipeline's data directory is locked: stop `tributary run` first.
    Poll(PollArgs),
    /// Show each pipeline and sink of the running server: state, committed
    /// offset, lag, last commit, last error, dead letters. Finds the server
    /// through the configuration (`listen`, or `admin.listen`) like `run`.
    Status(StatusArgs),
    /// Re-feed a pipeline's dead letters through the running server, after
    /// fixing the schema (or the receiver) and restarting. Each dead letter
    /// goes back to the sink that dead-lettered it, with its `_event_id`;
    /// its file is removed once the re-append is durable.
    Replay(ReplayArgs),
    /// Query every table the pipelines write with SQL (DataFusion, built in):
    /// `<pipeline>` and `<pipeline>_<sink>` for each Parquet and Delta sink,
    /// `<pipeline>_<sink>_<table>` for routed tables, `<pipeline>_dead_letters`.
    /// Without a query, reads queries from standard input (one per `;`).
    /// Read-only: works while `tributary run` is running.
    Sql(SqlArgs),
    /// Subscribe a webhook pipeline with its provider (by its verify scheme:
    /// GitHub, Stripe or Shopify): creates the subscription, or finds it and
    /// changes nothing, or updates its URL. Credentials from the environment
    /// (GITHUB_TOKEN, STRIPE_API_KEY, SHOPIFY_ACCESS_TOKEN, or --token-env).
    Register(RegisterArgs),
    /// Manage the connections of a pipeline with `[connections]` (one per
    /// end-user account) through the running server's admin API, or print a
    /// new key to seal their credentials with (`keygen`). Credentials are read
    /// from a file or standard input, never from the command line.
    Connections(ConnectionsArgs),
    /// Print a pipeline's events as they are acknowledged, one JSON object
    /// per line (id, received time, connection, topic, body), until Ctrl-C.
    /// Reads through the running server's admin API; the pipeline does not
    /// wait for it.
    Tap(TapArgs),
    /// Print a shell completion script: `tributary completions bash >
    /// /etc/bash_completion.d/tributary`, `… zsh > "${fpath[1]}/_tributary"`,
    /// `… fish > ~/.config/fish/completions/tributary.fish`.
    Completions(CompletionsArgs),
    /// Print the man page (roff): `tributary man > /usr/local/share/man/man1/tributary.1`.
    Man,
    /// Print the JSON Schema (draft 2020-12) of a pipeline file or of
    /// tributary.toml, from the types that read them, for an editor: e.g.
    /// `tributary schema pipeline > pipeline.schema.json` and, for taplo
    /// (Even Better TOML), `#:schema ./pipeline.schema.json` atop each file.
    Schema(SchemaArgs),
}

/// `tributary schema`.
#[derive(Debug, Clone, Args)]
pub struct SchemaArgs {
    /// Which file's schema.
    #[arg(value_enum)]
    pub file: SchemaFile,
}

/// The files `tributary schema` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFile {
    /// A file in `pipelines/`.
    Pipeline,
    /// `tributary.toml`.
    Config,
}

/// `tributary run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Reload the configuration when tributary.toml, a pipeline file or a
    /// schema changes (SIGHUP always reloads it).
    #[arg(long)]
    pub watch: bool,
}

/// `tributary tap`.
#[derive(Debug, Clone, Args)]
pub struct TapArgs {
    /// The pipeline.
    pub pipeline: String,
    /// Print the pipeline's dead letters as its sinks write them (id,
    /// received time, sink, reason, connection, topic, the raw event)
    /// instead of its events.
    #[arg(long, conflicts_with = "sink")]
    pub dead_letters: bool,
    /// Print each event once this sink has written it (in its table,
    /// delivered, or one of its dead letters) instead of once it is
    /// acknowledged.
    #[arg(long, value_name = "NAME")]
    pub sink: Option<String>,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `tributary connections`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ConnectionsAction,
}

/// `tributary connections …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ConnectionsAction {
    /// Print a new key for TRIBUTARY_SECRET_KEY (base64 of 32 random bytes).
    Keygen,
    /// List a pipeline's connections (no credential values).
    List(ConnectionsPipeline),
    /// Add a connection: `--credentials-file FILE` (or `-` for standard
    /// input) holds a JSON object of its credential fields.
    Add(ConnectionsAdd),
    /// Show one connection.
    Show(ConnectionsOne),
    /// Pause a connection: no runs until it is resumed.
    Pause(ConnectionsOne),
    /// Resume a paused connection.
    Resume(ConnectionsOne),
    /// Remove a connection: its credentials are deleted; its webhook URL answers 410.
    Remove(ConnectionsOne),
    /// Seal every connection's credentials again under the current
    /// TRIBUTARY_SECRET_KEY (after a rotation: run the server with the new
    /// key, the old one in TRIBUTARY_SECRET_KEY_OLD, then rekey; the old
    /// key can then go).
    Rekey(ConnectionsPipeline),
}

/// A pipeline of the running server.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsPipeline {
    /// The pipeline's name.
    pub pipeline: String,
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// One connection of a pipeline.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsOne {
    /// The pipeline's name.
    pub pipeline: String,
    /// The connection's id.
    pub id: String,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary connections add`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionsAdd {
    /// The pipeline's name.
    pub pipeline: String,
    /// The connection's id (1 to 128 letters, digits, `.`, `_`, `-`).
    pub id: String,
    /// A JSON object of the credential fields, e.g. {"token": "…"}; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// A param the pipeline's URL, query or headers use (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary register`.
#[derive(Debug, Clone, Args)]
pub struct RegisterArgs {
    /// The pipeline's name (with --list and no name: every webhook pipeline
    /// whose provider register knows).
    #[arg(required_unless_present = "list")]
    pub pipeline: Option<String>,
    /// The public https:// URL the provider will POST to; its path ends with
    /// the pipeline's `path`.
    #[arg(long, value_name = "URL", required_unless_present = "list")]
    pub url: Option<String>,
    /// Event types, comma-separated: GitHub events and Stripe event types
    /// (default: all, `*`), Shopify topics such as orders/create (required).
    #[arg(long, value_name = "EVENTS", value_delimiter = ',')]
    pub events: Vec<String>,
    /// GitHub: the repository, OWNER/NAME.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: Option<String>,
    /// GitHub: an organisation (instead of --repo).
    #[arg(long, value_name = "ORG", conflicts_with = "repo")]
    pub org: Option<String>,
    /// Shopify: the shop's domain, your-shop.myshopify.com.
    #[arg(long, value_name = "DOMAIN")]
    pub shop: Option<String>,
    /// The provider's API base URL (GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// The env var holding the provider API credential.
    #[arg(long, value_name = "VAR", conflicts_with = "connection")]
    pub token_env: Option<String>,
    /// Register for this connection of a `[connections]` pipeline: the
    /// running server subscribes with the connection's own `api_token` (and
    /// verify `secret`), at --url ending with `<path>/<ID>`.
    #[arg(long, value_name = "ID", requires = "pipeline")]
    pub connection: Option<String>,
    /// Read what exists and print the writes, without making them.
    #[arg(long)]
    pub dry_run: bool,
    /// Only list the subscriptions that deliver to this pipeline.
    #[arg(long)]
    pub list: bool,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary sql`.
#[derive(Debug, Clone, Args)]
pub struct SqlArgs {
    /// The query; without one, queries are read from standard input.
    pub query: Option<String>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = crate::sql::Format::Table)]
    pub format: crate::sql::Format,
    /// Write the result to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Also print the effective configuration, every default filled in
    /// (limits, timeouts, batch settings), as TOML.
    #[arg(long)]
    pub explain: bool,
    /// Check only these files: pipeline files, and `tributary.toml` (any
    /// file of that name is taken as the global settings) [default: every
    /// file of --pipelines].
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print the admin API's JSON instead of a table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Refresh in place, like top: events in and out per second of each
    /// pipeline and sink, lags, dead letters and errors, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: seconds between refreshes.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        requires = "watch"
    )]
    pub interval: f64,
    /// With --watch: stop after this many refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The pipeline's name.
    pub pipeline: String,
    /// Only dead letters of events received since then: an RFC 3339 time
    /// (2026-11-28T10:00:00Z) or a duration back from now (2h, 30m).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only dead letters whose reason contains this text.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Replay dead letters (the default and only kind; accepted so that
    /// `tributary replay PIPELINE --dead-letters` reads as documented).
    #[arg(long)]
    pub dead_letters: bool,
    /// Where the configuration is.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `tributary poll`.
#[derive(Debug, Clone, Args)]
pub struct PollArgs {
    /// The pipeline's name (its `name` key).
    pub pipeline: String,
    /// In a pipeline with `[connections]`: poll this connection only (by
    /// default every active one, one after another).
    #[arg(long, value_name = "ID")]
    pub connection: Option<String>,
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
            files: Vec::new(),
        }
    }
}
