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
    match cli.command {
        // `--explain` shows the files' effective settings; a plain check also
        // names, as errors, the environment variables they need that are unset.
        Command::Check(args) => match if args.explain {
            config::load(&args.config.paths())
        } else {
            config::check(&args.config.paths())
        } {
            Ok(config) => {
                if args.explain {
                    print!("{}", config::explain::explain(&config));
                    return ExitCode::SUCCESS;
                }
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
                ExitCode::SUCCESS
            }
            Err(errors) => print_config_errors(&errors),
        },
        Command::Run(args) => match config::load(&args.paths()) {
            Ok(config) => run(config),
            Err(errors) => print_config_errors(&errors),
        },
        Command::Poll(args) => match config::load(&args.config.paths()) {
            Ok(config) => poll(config, &args.pipeline, args.connection.as_deref()),
            Err(errors) => print_config_errors(&errors),
        },
        Command::Status(args) => match config::load(&args.config.paths()) {
            Ok(config) => status(&config, args.json),
            Err(errors) => print_config_errors(&errors),
        },
        Command::Replay(args) => match config::load(&args.config.paths()) {
            Ok(config) => replay(&config, &args),
            Err(errors) => print_config_errors(&errors),
        },
        Command::Sql(args) => match config::load(&args.config.paths()) {
            Ok(config) => sql(&config, &args),
            Err(errors) => print_config_errors(&errors),
        },
        Command::Register(args) => match config::load(&args.config.paths()) {
            Ok(config) => register(&config, args),
            Err(errors) => print_config_errors(&errors),
        },
        Command::Connections(args) => connections(args.action),
    }
}

/// Each line of `text` indented by two spaces.
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `tributary register`.
fn register(config: &Config, args: tributary::cli::RegisterArgs) -> ExitCode {
    use tributary::register::{self, RegisterError};
    let pipelines: Vec<&tributary::config::PipelineSpec> = match &args.pipeline {
        Some(name) => match config.pipelines.iter().find(|p| &p.name == name) {
            Some(p) => vec![p],
            None => {
                let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
                eprintln!(
                    "error: no pipeline named {name} (there are: {})",
                    names.join(", ")
                );
                return ExitCode::from(2);
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
        return ExitCode::SUCCESS;
    }
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
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
                Ok(out) => print!("{}", indent(&out)),
                Err(e) => {
                    println!("  skipped: {e}");
                    failed |= !matches!(e, RegisterError::Usage(_) | RegisterError::Env { .. });
                }
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let pipeline = pipelines[0];
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
    };
    match runtime.block_on(register::register(pipeline, &request)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e @ (RegisterError::Usage(_) | RegisterError::Env { .. })) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tributary sql`: one query, or one per `;` (as SQL reads it) from standard input.
fn sql(config: &Config, args: &tributary::cli::SqlArgs) -> ExitCode {
    use std::io::{BufRead, Write};
    use tributary::sql;
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    if args.format == sql::Format::Parquet && args.output.is_none() {
        eprintln!("error: --format parquet writes a file: add --output FILE");
        return ExitCode::from(2);
    }
    runtime.block_on(async {
        let (ctx, tables) = match sql::session(config).await {
            Ok(session) => session,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut out: Box<dyn Write> = match &args.output {
            None => Box::new(std::io::stdout().lock()),
            Some(path) => match std::fs::File::create(path) {
                Ok(file) => Box::new(std::io::BufWriter::new(file)),
                Err(e) => {
                    eprintln!("error: cannot create {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            },
        };
        match &args.query {
            Some(query) => {
                if let Err(e) = sql::answer(&ctx, query, args.format, &mut out).await {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
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
                            eprintln!("error: {e}");
                            failed = true;
                        }
                    }
                    prompt(&text);
                }
                if !text.trim().is_empty() {
                    if let Err(e) = sql::answer(&ctx, text.trim(), args.format, &mut out).await {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
                if failed {
                    return ExitCode::FAILURE;
                }
            }
        }
        if let Err(e) = out.flush() {
            eprintln!("error: cannot write the result: {e}");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    })
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

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `tributary poll`: one run with a progress bar on stderr (a plain line per
/// page when stderr is not a terminal), then a summary on stdout.
fn poll(config: Config, pipeline: &str, connection: Option<&str>) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
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
    match result {
        Ok(run) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "polled {pipeline}: {} pages, {} records in {secs:.1} s ({:.0} records/s)",
                run.pages,
                run.records,
                run.records as f64 / secs.max(1e-3)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let served = runtime.block_on(async {
        // Before anything starts: a `systemctl reload` must not end the service.
        Shutdown::ignore_hangups();
        tributary::pipeline::run(config, Shutdown::default()).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

/// `tributary status`: the admin API's view as a table (or its JSON).
fn status(config: &Config, json: bool) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        tributary::admin_client::AdminClient::new(&config.global)?
            .pipelines()
            .await
    });
    match result {
        Ok(value) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(value) => {
            print!("{}", tributary::admin_client::table(&value));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tributary replay`: re-feeds dead letters through the running server,
/// with a progress bar on a terminal and a summary on stdout.
fn replay(config: &Config, args: &ReplayArgs) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let since_us = match args
        .since
        .as_deref()
        .map(tributary::admin_client::parse_since)
    {
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Some(Ok(us)) => Some(us),
        None => None,
    };
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
    match result {
        Ok(done) => {
            println!(
                "replayed {} dead letter(s) of {} from {} file(s); {} left in place",
                done["replayed"], args.pipeline, done["files"], done["kept"]
            );
            for problem in done["problems"].as_array().into_iter().flatten() {
                println!("  note: {}", problem.as_str().unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tributary connections`.
fn connections(action: tributary::cli::ConnectionsAction) -> ExitCode {
    use reqwest::Method;
    use serde_json::{json, Value};
    use tributary::cli::ConnectionsAction as A;
    let (config, method, path, body, json_out) = match action {
        A::Keygen => {
            return match tributary::connections::seal::Keys::generate() {
                Ok(key) => {
                    println!("{key}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
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
                            eprintln!("error: --credentials-file {}: not a JSON object of credential fields, e.g. {{\"token\": \"…\"}}", file.display());
                            return ExitCode::from(2);
                        }
                        Err(e) => {
                            eprintln!("error: --credentials-file {}: {e}", file.display());
                            return ExitCode::from(2);
                        }
                    }
                }
            };
            let mut params = serde_json::Map::new();
            for p in &a.params {
                let Some((name, value)) = p.split_once('=') else {
                    eprintln!("error: --param {p:?} is not NAME=VALUE");
                    return ExitCode::from(2);
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
    };
    let config = match config::load(&config.paths()) {
        Ok(config) => config,
        Err(errors) => return print_config_errors(&errors),
    };
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        let client = tributary::admin_client::AdminClient::new(&config.global)?;
        client.call(method, &path, body.as_ref()).await
    });
    match result {
        Ok(answer) if json_out => {
            println!("{answer:#}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
