//! The `tributary` binary: parse the command line, set up logging, run the
//! command, print an error chain once, and exit with a meaningful code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use tributary::cli::{Cli, Command, LogFormat, ReplayArgs};
use tributary::config::{self, Config};
use tributary::shutdown::Shutdown;

/// mimalloc instead of glibc's malloc: the request path and the encoders
/// allocate per event, and glibc's arenas cost ~6% of the ingest's CPU here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits a whole arena at once on Linux by default
/// (`arena_eager_commit = 2`); then memory freed after a flush stays in the
/// RSS. Committed on demand instead, a sink writing a 10 M-event backlog
/// peaks at 179 MiB instead of 246 MiB, at the same rate (`scripts/bench
/// backlog`). This runs from `.init_array`, before the first allocation
/// reserves the first arena (a default set in `main` would come too late);
/// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still decides.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static ARENAS_COMMITTED_ON_DEMAND: extern "C" fn() = {
    extern "C" fn commit_on_demand() {
        /// `mi_option_arena_eager_commit` in mimalloc.h (v2 and v3 alike).
        const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
        unsafe extern "C" {
            /// Sets an option's value unless the environment set it.
            fn mi_option_set_default(option: std::ffi::c_int, value: std::ffi::c_long);
        }
        // SAFETY: a plain store into mimalloc's option table, which exists
        // from load time; nothing else runs yet.
        unsafe { mi_option_set_default(ARENA_EAGER_COMMIT, 0) }
    }
    commit_on_demand
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // delta-rs logs every snapshot at info and a missing metric at every merge,
    // and its kernel logs an error for each table that does not exist yet;
    // their real failures reach us as errors.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            "info,deltalake_core=warn,deltalake_core::operations::merge=error,buoyant_kernel=off,datafusion=warn",
        )
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // The one place an error is printed: its chain once, then the exit code.
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(Failure::Config(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{} configuration error(s); nothing was started",
                errors.len()
            );
            ExitCode::from(2)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("error: {}", tributary::error::chain(e.as_ref()));
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {}", tributary::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Why a command stopped, as the edge in [`main`] prints it.
enum Failure {
    /// The configuration files have errors, each with its fix (exit 2).
    Config(Vec<config::ConfigError>),
    /// The command line, or something it names, is wrong (exit 2).
    Usage(anyhow::Error),
    /// The command ran and failed (exit 1).
    Failed(anyhow::Error),
}

type Outcome = Result<ExitCode, Failure>;

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

fn failed(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Failed(e.into())
}

fn load(paths: &config::Paths) -> Result<Config, Failure> {
    config::load(paths).map_err(Failure::Config)
}

/// Writes `text` to standard output; a reader that went away (`| head`)
/// is not an error.
fn print_out(text: &str) -> Outcome {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(failed(e)),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// One function per command.
fn dispatch(command: Command) -> Outcome {
    match command {
        Command::Check(args) => check(&args),
        Command::Explain(config) => check(&tributary::cli::CheckArgs {
            explain: true,
            files: Vec::new(),
            config,
        }),
        Command::Run(args) => {
            let paths = args.config.paths();
            let reload = tributary::pipeline::Reload::new(paths.clone(), args.watch);
            run(load(&paths)?, reload)
        }
        Command::Poll(args) => poll(
            load(&args.config.paths())?,
            &args.pipeline,
            args.connection.as_deref(),
        ),
        Command::Status(args) if args.watch => status_watch(&load(&args.config.paths())?, &args),
        Command::Status(args) => status(&load(&args.config.paths())?, args.json),
        Command::Replay(args) => replay(&load(&args.config.paths())?, &args),
        Command::Sql(args) => sql(&load(&args.config.paths())?, &args),
        Command::Register(args) => register(&load(&args.config.paths())?, args),
        Command::Connections(args) => connections(args.action),
        Command::Tap(args) => {
            use tributary::admin_client::Tap;
            let what = match (&args.sink, args.dead_letters) {
                (_, true) => Tap::DeadLetters,
                (Some(sink), false) => Tap::Sink(sink),
                (None, false) => Tap::Events,
            };
            tap(&load(&args.config.paths())?, &args.pipeline, what)
        }
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                args.shell,
                &mut command,
                "tributary",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema(args) => {
            let schema = match args.file {
                tributary::cli::SchemaFile::Pipeline => config::pipeline_schema(),
                tributary::cli::SchemaFile::Config => config::config_schema(),
            };
            print_out(&format!("{schema:#}\n"))
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .map_err(|e| failed(anyhow::Error::from(e).context("cannot write the man page")))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tributary check`: `--explain` shows the files' effective settings; a
/// plain check also names, as errors, the environment variables they need
/// that are unset.
fn check(args: &tributary::cli::CheckArgs) -> Outcome {
    let mut paths = args.config.paths();
    for file in &args.files {
        if file.file_name().is_some_and(|n| n == config::GLOBAL_FILE) {
            paths.config = Some(file.clone());
        } else {
            paths.files.push(file.clone());
        }
    }
    if args.explain {
        return print_out(&config::explain::explain(&load(&paths)?));
    }
    let config = config::check(&paths).map_err(Failure::Config)?;
    println!("ok: {} pipeline(s) valid", config.pipelines.len());
    if config.global.server.admin_token_env.is_none() {
        println!("  note: no admin.token_env: /metrics, /api/… and /readyz's reasons answer only requests from this machine (loopback)");
    }
    for p in &config.pipelines {
        println!(
            "  {} ({}): {} sink(s)",
            p.name,
            p.file.display(),
            p.sinks.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Each line of `text` indented by two spaces.
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `tributary register`.
fn register(config: &Config, args: tributary::cli::RegisterArgs) -> Outcome {
    use tributary::register::{self, RegisterError};
    let pipelines: Vec<&tributary::config::PipelineSpec> = match &args.pipeline {
        Some(name) => match config.pipelines.iter().find(|p| &p.name == name) {
            Some(p) => vec![p],
            None => {
                let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
                return Err(usage(anyhow::anyhow!(
                    "no pipeline named {name} (there are: {})",
                    names.join(", ")
                )));
            }
        },
        None => config
            .pipelines
            .iter()
            .filter(|p| register::provider_of(p).is_some())
            .collect(),
    };
    if pipelines.is_empty() {
        println!("no webhook pipeline verifies with github, stripe or shopify: nothing to list");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = runtime()?;
    if args.pipeline.is_none() {
        // --list over every pipeline, one section each; a pipeline whose
        // provider needs a flag that is missing says so and the rest go on.
        let mut failed = false;
        for pipeline in pipelines {
            println!("{}:", pipeline.name);
            let request = register::Request {
                repo: args.repo.clone(),
                org: args.org.clone(),
                shop: args.shop.clone(),
                api: args.api.clone(),
                token_env: args.token_env.clone(),
                list: true,
                ..Default::default()
            };
            match runtime.block_on(register::register(pipeline, &request)) {
                Ok(registered) => print!("{}", indent(&registered.out)),
                Err(e) => {
                    println!("  skipped: {e}");
                    failed |= !matches!(e, RegisterError::Usage(_) | RegisterError::Env { .. });
                }
            }
        }
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let pipeline = pipelines[0];
    if let Some(id) = &args.connection {
        // The server holds the connection's credentials: it registers.
        let body = serde_json::json!({
            "url": args.url, "events": args.events, "repo": args.repo, "org": args.org,
            "shop": args.shop, "api": args.api, "dry_run": args.dry_run, "list": args.list,
        });
        let path = format!("/api/pipelines/{}/connections/{id}/register", pipeline.name);
        let answer = runtime
            .block_on(async {
                let client = tributary::admin_client::AdminClient::new(&config.global)?;
                client.call(reqwest::Method::POST, &path, Some(&body)).await
            })
            .map_err(failed)?;
        print!("{}", answer["output"].as_str().unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let request = register::Request {
        url: args.url,
        events: args.events,
        repo: args.repo,
        org: args.org,
        shop: args.shop,
        api: args.api,
        token_env: args.token_env,
        dry_run: args.dry_run,
        list: args.list,
        ..Default::default()
    };
    match runtime.block_on(register::register(pipeline, &request)) {
        Ok(registered) => {
            print!("{}", registered.out);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (RegisterError::Usage(_) | RegisterError::Env { .. })) => Err(usage(e)),
        Err(e) => Err(failed(e)),
    }
}

/// `tributary sql`: one query, or one per `;` (as SQL reads it) from standard input.
fn sql(config: &Config, args: &tributary::cli::SqlArgs) -> Outcome {
    use std::io::{BufRead, Write};
    use tributary::sql;
    let runtime = runtime()?;
    if args.format == sql::Format::Parquet && args.output.is_none() {
        return Err(usage(anyhow::anyhow!(
            "--format parquet writes a file: add --output FILE"
        )));
    }
    runtime.block_on(async {
        let (ctx, tables) = sql::session(config).await.map_err(failed)?;
        let mut out: Box<dyn Write> = match &args.output {
            None => Box::new(std::io::stdout().lock()),
            Some(path) => match std::fs::File::create(path) {
                Ok(file) => Box::new(std::io::BufWriter::new(file)),
                Err(e) => {
                    let e =
                        anyhow::Error::from(e).context(format!("cannot create {}", path.display()));
                    return Err(failed(e));
                }
            },
        };
        match &args.query {
            Some(query) => {
                sql::answer(&ctx, query, args.format, &mut out)
                    .await
                    .map_err(failed)?;
            }
            None => {
                // Each query runs as soon as its `;` is read; a failing one
                // is reported and the next still runs, as in a prompt.
                let interactive = std::io::stdin().is_terminal();
                if interactive {
                    eprintln!(
                        "tables: {}",
                        tables
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    eprintln!("end each query with ';', Ctrl-D to quit");
                }
                let mut failed = false;
                let mut text = String::new();
                let prompt = |text: &str| {
                    if interactive {
                        eprint!(
                            "{}",
                            if text.trim().is_empty() {
                                "sql> "
                            } else {
                                "  -> "
                            }
                        );
                    }
                };
                prompt(&text);
                for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                    text.push_str(&line);
                    text.push('\n');
                    // A `;` in a string or a comment ends nothing.
                    let (queries, rest) = sql::split(&text);
                    text = rest.to_string();
                    for query in queries {
                        if let Err(e) = sql::answer(&ctx, &query, args.format, &mut out).await {
                            // Reported as at a prompt; the next query still runs.
                            eprintln!("error: {}", tributary::error::chain(&e));
                            failed = true;
                        }
                    }
                    prompt(&text);
                }
                if !text.trim().is_empty() {
                    if let Err(e) = sql::answer(&ctx, text.trim(), args.format, &mut out).await {
                        eprintln!("error: {}", tributary::error::chain(&e));
                        failed = true;
                    }
                }
                if failed {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        out.flush()
            .map_err(|e| failed(anyhow::Error::from(e).context("cannot write the result")))?;
        Ok(ExitCode::SUCCESS)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(anyhow::Error::from(e).context("cannot start the async runtime")))
}

/// `tributary poll`: one run with a progress bar on stderr (a plain line per
/// page when stderr is not a terminal), then a summary on stdout.
fn poll(config: Config, pipeline: &str, connection: Option<&str>) -> Outcome {
    let runtime = runtime()?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("the template parses"),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = std::time::Instant::now();
    let mut progress = |run: &tributary::source::poll::state::RunState| {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{} pages, {} records, {:.0} records/s",
            run.pages,
            run.records,
            run.records as f64 / secs
        ));
        bar.tick();
    };
    let result = runtime.block_on(tributary::pipeline::poll_once(
        config,
        (pipeline, connection),
        Shutdown::default(),
        &mut progress,
    ));
    bar.finish_and_clear();
    let run = result.map_err(failed)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "polled {pipeline}: {} pages, {} records in {secs:.1} s ({:.0} records/s)",
        run.pages,
        run.records,
        run.records as f64 / secs.max(1e-3)
    );
    Ok(ExitCode::SUCCESS)
}

fn run(config: Config, reload: tributary::pipeline::Reload) -> Outcome {
    let runtime = runtime()?;
    runtime
        .block_on(tributary::pipeline::run(
            config,
            Some(reload),
            Shutdown::default(),
        ))
        .map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

/// `tributary status`: the admin API's view as a table (or its JSON).
fn status(config: &Config, json: bool) -> Outcome {
    let runtime = runtime()?;
    let value = runtime
        .block_on(async {
            tributary::admin_client::AdminClient::new(&config.global)?
                .pipelines()
                .await
        })
        .map_err(failed)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", tributary::admin_client::table(&value));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tributary status --watch`: the rates table, refreshed in place on a
/// terminal (one frame after another otherwise), until Ctrl-C or `--count`.
fn status_watch(config: &Config, args: &tributary::cli::StatusArgs) -> Outcome {
    use std::io::Write;
    let runtime = runtime()?;
    let client = tributary::admin_client::AdminClient::new(&config.global).map_err(failed)?;
    let interval = std::time::Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    let terminal = std::io::stdout().is_terminal();
    let mut before: Option<(std::time::Instant, serde_json::Value)> = None;
    let mut frames = 0u64;
    loop {
        let now = runtime.block_on(client.pipelines()).map_err(failed)?;
        let at = std::time::Instant::now();
        let table = tributary::admin_client::rates_table(
            before
                .as_ref()
                .map(|(then, value)| (value, at.duration_since(*then))),
            &now,
        );
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear: the frame replaces the last one.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        let _ = write!(out, "{table}");
        if !terminal {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        drop(out);
        frames += 1;
        if args.count.is_some_and(|n| frames >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        before = Some((at, now));
        std::thread::sleep(interval);
    }
}

/// `tributary replay`: re-feeds dead letters through the running server,
/// with a progress bar on a terminal and a summary on stdout.
fn replay(config: &Config, args: &ReplayArgs) -> Outcome {
    let runtime = runtime()?;
    let since_us = args
        .since
        .as_deref()
        .map(tributary::admin_client::parse_since)
        .transpose()
        .map_err(usage)?;
    let filter = tributary::replay::Filter {
        since_us,
        reason: args.reason.clone(),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}")
            .expect("the template parses"),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let result = runtime.block_on(async {
        let client = tributary::admin_client::AdminClient::new(&config.global)?;
        client
            .replay(&args.pipeline, &filter, &mut |p| {
                bar.set_length(p["files"].as_u64().unwrap_or(0));
                bar.set_position(p["files_done"].as_u64().unwrap_or(0));
                bar.set_message(format!("{} replayed", p["replayed"]));
            })
            .await
    });
    bar.finish_and_clear();
    let done = result.map_err(failed)?;
    println!(
        "replayed {} dead letter(s) of {} from {} file(s); {} left in place",
        done["replayed"], args.pipeline, done["files"], done["kept"]
    );
    for problem in done["problems"].as_array().into_iter().flatten() {
        println!("  note: {}", problem.as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

/// `tributary tap`: the admin API's tap, a line each, until Ctrl-C or the
/// server stops.
fn tap(config: &Config, pipeline: &str, what: tributary::admin_client::Tap) -> Outcome {
    use std::io::Write;
    let runtime = runtime()?;
    runtime
        .block_on(async {
            let client = tributary::admin_client::AdminClient::new(&config.global)?;
            let mut out = std::io::stdout();
            // Line by line, so `tap | jq` sees each event at once.
            let mut print = |line: &str| {
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            };
            let follow = client.tap(pipeline, what, &mut print);
            tokio::select! {
                result = follow => result,
                () = Shutdown::signal() => Ok(()),
            }
        })
        .map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

/// `tributary connections`.
fn connections(action: tributary::cli::ConnectionsAction) -> Outcome {
    use reqwest::Method;
    use serde_json::{json, Value};
    use tributary::cli::ConnectionsAction as A;
    let (config, method, path, body, json_out) = match action {
        A::Keygen => {
            let key = tributary::connections::seal::Keys::generate().map_err(failed)?;
            println!("{key}");
            return Ok(ExitCode::SUCCESS);
        }
        A::List(a) => (
            a.config,
            Method::GET,
            format!("/api/pipelines/{}/connections", a.pipeline),
            None,
            a.json,
        ),
        A::Add(a) => {
            let credentials: Value = match &a.credentials_file {
                None => json!({}),
                Some(file) => {
                    let text = if file.as_os_str() == "-" {
                        let mut text = String::new();
                        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                            .map(|_| text)
                    } else {
                        std::fs::read_to_string(file)
                    };
                    let parsed = text
                        .map_err(|e| e.to_string())
                        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
                    match parsed {
                        Ok(value) if value.is_object() => value,
                        // Never echo the file: it holds secrets.
                        Ok(_) => {
                            return Err(usage(anyhow::anyhow!("--credentials-file {}: not a JSON object of credential fields, e.g. {{\"token\": \"…\"}}", file.display())));
                        }
                        Err(e) => {
                            return Err(usage(anyhow::anyhow!(
                                "--credentials-file {}: {e}",
                                file.display()
                            )));
                        }
                    }
                }
            };
            let mut params = serde_json::Map::new();
            for p in &a.params {
                let Some((name, value)) = p.split_once('=') else {
                    return Err(usage(anyhow::anyhow!("--param {p:?} is not NAME=VALUE")));
                };
                params.insert(name.to_string(), json!(value));
            }
            (
                a.config,
                Method::POST,
                format!("/api/pipelines/{}/connections", a.pipeline),
                Some(json!({ "id": a.id, "credentials": credentials, "params": params })),
                true,
            )
        }
        A::Show(a) => (
            a.config,
            Method::GET,
            format!("/api/pipelines/{}/connections/{}", a.pipeline, a.id),
            None,
            true,
        ),
        A::Pause(a) => (
            a.config,
            Method::PATCH,
            format!("/api/pipelines/{}/connections/{}", a.pipeline, a.id),
            Some(json!({ "state": "paused" })),
            true,
        ),
        A::Resume(a) => (
            a.config,
            Method::PATCH,
            format!("/api/pipelines/{}/connections/{}", a.pipeline, a.id),
            Some(json!({ "state": "active" })),
            true,
        ),
        A::Remove(a) => (
            a.config,
            Method::DELETE,
            format!("/api/pipelines/{}/connections/{}", a.pipeline, a.id),
            None,
            true,
        ),
        A::Rekey(a) => (
            a.config,
            Method::POST,
            format!("/api/pipelines/{}/rekey", a.pipeline),
            None,
            true,
        ),
    };
    let config = load(&config.paths())?;
    let runtime = runtime()?;
    let answer = runtime
        .block_on(async {
            let client = tributary::admin_client::AdminClient::new(&config.global)?;
            client.call(method, &path, body.as_ref()).await
        })
        .map_err(failed)?;
    match answer {
        answer if json_out => println!("{answer:#}"),
        answer => {
            let list = answer["connections"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            println!(
                "{:<32} {:<13} {:<24} CREATED",
                "ID", "STATE", "CREDENTIAL FIELDS"
            );
            for c in list {
                let fields: Vec<&str> = c["credential_fields"]
                    .as_array()
                    .map(|f| f.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                println!(
                    "{:<32} {:<13} {:<24} {}",
                    c["id"].as_str().unwrap_or(""),
                    c["state"].as_str().unwrap_or(""),
                    fields.join(","),
                    c["created_at"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
