//! `tributary register` against fakes of the providers' subscription APIs
//! (`support/provider_fake.py`): creates once, a second run changes nothing,
//! new events update the subscription in place, a new host gets a new one
//! (Stripe's, tagged with the pipeline, moves), another integration's
//! subscription is never taken, `--dry-run` writes nothing.

use std::process::{Child, Command, Stdio};

use crate::support::*;

const TOKEN: &str = "provider-api-token-1";

/// A running `provider_fake.py`.
struct Fake {
    child: Child,
    api: String,
    log: std::path::PathBuf,
}

impl Fake {
    async fn start(dir: &std::path::Path) -> Self {
        let port = free_port();
        let log = dir.join("provider-requests.jsonl");
        let python = crate::support::python();
        let child = Command::new(python)
            .args([
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/it/support/provider_fake.py"
                ),
                &port.to_string(),
                TOKEN,
                log.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("provider_fake.py");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "provider_fake.py did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self {
            child,
            api: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// The writes (anything but a GET or a GraphQL query) so far.
    fn writes(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| {
                r["method"] != "GET"
                    && !r["body"]
                        .as_str()
                        .unwrap()
                        .contains("\"query { webhookSubscriptions")
            })
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn webhook_pipeline(project: &Project, name: &str, scheme: &str, secret_env: &str) {
    project.write(
        &format!("pipelines/{name}.toml"),
        &format!(
            r#"name = "{name}"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/{name}"
verify = {{ scheme = "{scheme}", secret_env = "{secret_env}" }}

[[sink]]
type = "parquet"
"#
        ),
    );
}

/// Runs `tributary register` with the provider token (and `env`); returns
/// (exit code, stdout, stderr).
fn register(project: &Project, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut all = vec!["register"];
    all.extend_from_slice(args);
    let mut vars = vec![
        ("GITHUB_TOKEN", TOKEN),
        ("STRIPE_API_KEY", TOKEN),
        ("SHOPIFY_ACCESS_TOKEN", TOKEN),
    ];
    vars.extend_from_slice(env);
    let out = project.command_with_env(&all, &vars);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_hooks_are_created_once_found_again_and_updated_at_their_url() {
    let project = Project::new();
    let fake = Fake::start(project.path()).await;
    webhook_pipeline(&project, "gh", "github", "GH_SECRET");
    let env = [("GH_SECRET", "gh-webhook-secret")];
    let base = ["gh", "--repo", "octo/hello", "--api", &fake.api];
    let with = |url: &str, extra: &[&str]| {
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        args.extend(["--url".to_string(), url.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        register(&project, &refs, &env)
    };

    let (code, out, err) = run(with(
        "https://a.example/hooks/gh",
        &["--events", "push,pull_request"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created: GitHub hook"), "{out}");
    let writes = fake.writes();
    assert_eq!(writes.len(), 1);
    let body: serde_json::Value =
        serde_json::from_str(writes[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["config"]["secret"], "gh-webhook-secret",
        "the pipeline's verify secret"
    );
    assert_eq!(body["config"]["content_type"], "json");
    assert_eq!(body["events"], serde_json::json!(["push", "pull_request"]));

    let (code, out, _) = run(with(
        "https://a.example/hooks/gh",
        &["--events", "pull_request,push"],
    ));
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged:"), "{out}");
    assert_eq!(fake.writes().len(), 1, "a second run changes nothing");

    let (code, out, _) = run(with(
        "https://a.example/hooks/gh",
        &["--events", "push", "--dry-run"],
    ));
    assert_eq!(code, 0);
    assert!(
        out.contains("dry run: would send PATCH") && out.contains("********"),
        "{out}"
    );
    assert!(
        !out.contains("gh-webhook-secret"),
        "no secret in the output: {out}"
    );
    assert_eq!(fake.writes().len(), 1, "a dry run writes nothing");

    let (code, out, _) = run(with("https://a.example/hooks/gh", &["--events", "push"]));
    assert_eq!(code, 0);
    assert!(
        out.starts_with("updated: GitHub hook")
            && out.contains(": https://a.example/hooks/gh (events push)"),
        "{out}"
    );
    let writes = fake.writes();
    assert_eq!(
        (writes.len(), writes[1]["method"].as_str()),
        (2, Some("PATCH"))
    );

    // A new host is a new hook; the old one is named, not changed.
    let (code, out, _) = run(with("https://b.example/hooks/gh", &["--events", "push"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("created: GitHub hook"), "{out}");
    assert!(
        out.contains("note: GitHub hook")
            && out.contains("delivers to https://a.example/hooks/gh,"),
        "{out}"
    );
    let writes = fake.writes();
    assert_eq!(
        (writes.len(), writes[2]["method"].as_str()),
        (3, Some("POST"))
    );

    let (code, out, _) = register(
        &project,
        &["gh", "--list", "--repo", "octo/hello", "--api", &fake.api],
        &env,
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "two hooks: {out}");
    assert!(
        out.contains("https://a.example/hooks/gh") && out.contains("https://b.example/hooks/gh"),
        "{out}"
    );

    // Mistakes are named.
    let (code, _, err) = run(with("http://a.example/hooks/gh", &[]));
    assert_eq!(code, 2);
    assert!(err.contains("is not https"), "{err}");
    let (code, _, err) = run(with("https://a.example/elsewhere", &[]));
    assert!(
        code == 2 && err.contains("does not end with the pipeline's path /hooks/gh"),
        "{err}"
    );
    let (code, _, err) = register(
        &project,
        &[
            "gh",
            "--url",
            "https://a.example/hooks/gh",
            "--api",
            &fake.api,
        ],
        &env,
    );
    assert!(code == 2 && err.contains("--repo OWNER/NAME"), "{err}");
    let (code, _, err) = register(
        &project,
        &[
            "gh",
            "--url",
            "https://a.example/hooks/gh",
            "--repo",
            "octo/hello",
            "--api",
            &fake.api,
            "--token-env",
            "NOPE",
        ],
        &env,
    );
    assert!(
        code == 2 && err.contains("the env var NOPE is not set"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_endpoint_is_created_once_with_its_secret_shown_once_then_updated() {
    let project = Project::new();
    let fake = Fake::start(project.path()).await;
    webhook_pipeline(&project, "payments", "stripe", "STRIPE_WEBHOOK_SECRET");
    let args = |url: &'static str| {
        vec![
            "payments",
            "--url",
            url,
            "--api",
            fake.api.as_str(),
            "--events",
            "charge.succeeded,invoice.paid",
        ]
    };

    let (code, out, err) = register(&project, &args("https://a.example/hooks/payments"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created: Stripe endpoint we_"), "{out}");
    assert!(
        out.contains("STRIPE_WEBHOOK_SECRET=whsec_"),
        "the secret and its env var: {out}"
    );
    assert!(
        !walk(project.path()).iter().any(|f| std::fs::read(f)
            .is_ok_and(|b| String::from_utf8_lossy(&b).contains("whsec_")
                && !f.ends_with("provider-requests.jsonl"))),
        "the signing secret is written nowhere"
    );
    let (code, out, _) = register(&project, &args("https://a.example/hooks/payments"), &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged: Stripe endpoint"), "{out}");
    assert!(!out.contains("whsec_"), "shown only at creation");
    assert_eq!(fake.writes().len(), 1);

    let (code, out, _) = register(&project, &args("https://b.example/hooks/payments"), &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("updated: Stripe endpoint"), "{out}");
    let writes = fake.writes();
    assert_eq!(writes.len(), 2);
    assert!(
        writes[1]["path"]
            .as_str()
            .unwrap()
            .starts_with("/v1/webhook_endpoints/we_"),
        "{:?}",
        writes[1]
    );
    assert!(writes[1]["body"]
        .as_str()
        .unwrap()
        .contains("metadata%5Btributary_pipeline%5D=payments"));
    let (_, out, _) = register(&project, &["payments", "--list", "--api", &fake.api], &[]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("https://b.example/hooks/payments"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shopify_subscriptions_are_made_per_topic_and_moved_together() {
    let project = Project::new();
    let fake = Fake::start(project.path()).await;
    webhook_pipeline(&project, "orders", "shopify", "SHOPIFY_SECRET");
    let args = |url: &'static str| {
        vec![
            "orders",
            "--url",
            url,
            "--api",
            fake.api.as_str(),
            "--events",
            "orders/create,orders/updated",
        ]
    };

    let (code, out, err) = register(&project, &args("https://a.example/hooks/orders"), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.matches("created: Shopify subscription gid://shopify/WebhookSubscription/")
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("(ORDERS_CREATE)") && out.contains("(ORDERS_UPDATED)"),
        "{out}"
    );
    let (_, out, _) = register(&project, &args("https://a.example/hooks/orders"), &[]);
    assert_eq!(out.matches("unchanged:").count(), 2, "{out}");
    assert_eq!(fake.writes().len(), 2);
    // A new host: new subscriptions; the old ones are named, not changed.
    let (_, out, _) = register(&project, &args("https://b.example/hooks/orders"), &[]);
    assert_eq!(
        out.matches("created: Shopify subscription").count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("note: Shopify subscription").count(),
        2,
        "{out}"
    );
    assert_eq!(fake.writes().len(), 4);
    assert!(fake.writes()[2..].iter().all(|w| w["body"]
        .as_str()
        .unwrap()
        .contains("webhookSubscriptionCreate")));
    // The same address with a trailing `/` is the same subscriptions, updated.
    let (_, out, _) = register(&project, &args("https://b.example/hooks/orders/"), &[]);
    assert_eq!(
        out.matches("updated: Shopify subscription").count(),
        2,
        "{out}"
    );
    assert_eq!(fake.writes().len(), 6);
    assert!(fake.writes()[4..].iter().all(|w| w["body"]
        .as_str()
        .unwrap()
        .contains("webhookSubscriptionUpdate")));
    let (_, out, _) = register(&project, &["orders", "--list", "--api", &fake.api], &[]);
    assert_eq!(
        out.matches("https://b.example/hooks/orders/").count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("https://a.example/hooks/orders").count(),
        2,
        "{out}"
    );

    // Shopify needs the topics; a topic it does not know is its own error.
    let (code, _, err) = register(
        &project,
        &[
            "orders",
            "--url",
            "https://a.example/hooks/orders",
            "--api",
            &fake.api,
        ],
        &[],
    );
    assert!(
        code == 2 && err.contains("add --events orders/create"),
        "{err}"
    );
    let (code, _, err) = register(
        &project,
        &[
            "orders",
            "--url",
            "https://a.example/hooks/orders",
            "--api",
            &fake.api,
            "--events",
            "orders/teleported",
        ],
        &[],
    );
    assert!(
        code == 1 && err.contains("WebhookSubscriptionTopic"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_of_another_integration_whose_path_ends_the_same_is_left_alone() {
    let project = Project::new();
    let fake = Fake::start(project.path()).await;
    for (name, path) in [("other", "/x/github"), ("gh", "/github")] {
        project.write(
            &format!("pipelines/{name}.toml"),
            &format!(
                r#"name = "{name}"
schema = "infer"

[source]
type = "webhook"
path = "{path}"
verify = {{ scheme = "github", secret_env = "GH_SECRET" }}

[[sink]]
type = "parquet"
"#
            ),
        );
    }
    let env = [("GH_SECRET", "gh-webhook-secret")];
    let run = |pipeline: &str, url: &str| {
        register(
            &project,
            &[
                pipeline,
                "--url",
                url,
                "--repo",
                "octo/hello",
                "--api",
                &fake.api,
            ],
            &env,
        )
    };
    let (code, out, err) = run("other", "https://other.example/x/github");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created: GitHub hook"), "{out}");

    let (code, out, err) = run("gh", "https://me.example/github");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created: GitHub hook"), "{out}");
    assert!(
        out.contains("delivers to https://other.example/x/github,")
            && out.contains("left as it is"),
        "{out}"
    );
    let methods: Vec<String> = fake
        .writes()
        .iter()
        .map(|w| w["method"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(methods, ["POST", "POST"], "the other hook was not changed");
    let (code, out, _) = register(
        &project,
        &[
            "other",
            "--list",
            "--repo",
            "octo/hello",
            "--api",
            &fake.api,
        ],
        &env,
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("https://other.example/x/github") && !out.contains("me.example"),
        "{out}"
    );
    let (_, out, _) = run("gh", "https://me.example/github");
    assert!(out.starts_with("unchanged: GitHub hook"), "{out}");
    assert_eq!(fake.writes().len(), 2);
}

#[test]
fn pipelines_register_cannot_serve_are_told_so() {
    let project = Project::new();
    webhook_pipeline(&project, "slack", "slack", "SLACK_SECRET");
    let (code, _, err) = register(
        &project,
        &["slack", "--url", "https://a.example/hooks/slack"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("register knows github, stripe and shopify"),
        "{err}"
    );
    let (code, _, err) = register(
        &project,
        &["nope", "--url", "https://a.example/hooks/x"],
        &[],
    );
    assert!(code == 2 && err.contains("no pipeline named nope"), "{err}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_without_a_pipeline_shows_every_registrable_pipeline() {
    let project = Project::new();
    let fake = Fake::start(project.path()).await;
    webhook_pipeline(&project, "gh", "github", "GH_SECRET");
    webhook_pipeline(&project, "payments", "stripe", "STRIPE_WEBHOOK_SECRET");
    webhook_pipeline(&project, "slack", "slack", "SLACK_SECRET");
    let env = [("GH_SECRET", "s")];
    let (code, _, err) = register(
        &project,
        &[
            "gh",
            "--url",
            "https://a.example/hooks/gh",
            "--repo",
            "octo/hello",
            "--api",
            &fake.api,
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = register(
        &project,
        &["--list", "--repo", "octo/hello", "--api", &fake.api],
        &env,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("gh:\n  GitHub hook") && out.contains("https://a.example/hooks/gh"),
        "{out}"
    );
    assert!(
        out.contains("payments:\n  no Stripe subscription delivers to this pipeline yet"),
        "{out}"
    );
    assert!(
        !out.contains("slack"),
        "register does not know slack's API: {out}"
    );
    let (code, out, _) = register(&project, &["--list", "--api", &fake.api], &env);
    assert_eq!(code, 0);
    assert!(
        out.contains("gh:\n  skipped: GitHub: add --repo OWNER/NAME"),
        "{out}"
    );
}

/// A connections pipeline whose customers each registered their own
/// repository hook: the server subscribes each connection with its own
/// `api_token` and `secret`, at the connection's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_registers_with_its_own_token_and_secret_through_the_server() {
    use serde_json::json;
    let project = Project::new();
    let fake = Fake::start(project.path()).await;
    project.write(
        "pipelines/repos.toml",
        r#"name = "repos"
schema = "infer"

[source]
type = "webhook"
path = "/hooks/repos"
verify = { scheme = "github" }

[connections]

[[sink]]
type = "parquet"
"#,
    );
    let key = project.command(&["connections", "keygen"]);
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    // No provider token in the environment: each connection brings its own.
    let env = [("TRIBUTARY_SECRET_KEY", key.as_str())];
    let _server = project.start_with_env(&env).await;
    let client = reqwest::Client::new();
    for (id, credentials) in [
        (
            "acme",
            json!({"secret": "acme-hook-s3cr3t", "api_token": TOKEN}),
        ),
        (
            "globex",
            json!({"secret": "globex-hook-s3cr3t", "api_token": "not-the-token-s3cr3t"}),
        ),
    ] {
        let added = client
            .post(project.url("/api/pipelines/repos/connections"))
            .header("content-type", "application/json")
            .body(json!({"id": id, "credentials": credentials}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 201);
    }
    let run = |id: &str, url: &str| {
        let out = project.command(&[
            "register",
            "repos",
            "--connection",
            id,
            "--url",
            url,
            "--repo",
            "octo/hello",
            "--api",
            &fake.api,
            "--events",
            "push",
        ]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run("acme", "https://hooks.example/hooks/repos/acme");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created: GitHub hook"), "{out}");
    let writes = fake.writes();
    assert_eq!(writes.len(), 1);
    let body: serde_json::Value =
        serde_json::from_str(writes[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["config"]["url"],
        "https://hooks.example/hooks/repos/acme"
    );
    assert_eq!(
        body["config"]["secret"], "acme-hook-s3cr3t",
        "the connection's own secret"
    );
    let (code, out, _) = run("acme", "https://hooks.example/hooks/repos/acme");
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged:"), "{out}");
    // Another connection's URL, or the pipeline's own: refused, naming it.
    let (code, _, err) = run("acme", "https://hooks.example/hooks/repos");
    assert_ne!(code, 0);
    assert!(err.contains("/hooks/repos/acme"), "{err}");
    // A token the provider refuses: its answer, never the token.
    let (code, _, err) = run("globex", "https://hooks.example/hooks/repos/globex");
    assert_ne!(code, 0);
    assert!(err.contains("401") && !err.contains("s3cr3t"), "{err}");
    assert_eq!(fake.writes().len(), 1, "nothing written for globex");
    let log = project.log();
    assert!(!log.contains("s3cr3t") && !log.contains(TOKEN), "{log}");
}
