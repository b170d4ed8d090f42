//! `tributary register`: creates, finds or updates the provider's webhook
//! subscription for a webhook pipeline, chosen by its `verify` scheme —
//! GitHub (repository or organisation hooks, REST), Stripe (webhook
//! endpoints) and Shopify (Admin GraphQL webhook subscriptions).
//!
//! Idempotent: a subscription is the pipeline's when its URL is `--url` —
//! the same scheme, host, port and path, a trailing `/` aside (Stripe: also
//! when its `tributary_pipeline` metadata names the pipeline) — so a second
//! run finds it and changes nothing, and another integration's subscription
//! whose URL merely ends with the same path is never taken over. A run with a
//! new host creates a new subscription and names the old one. `--list` shows
//! every subscription whose URL ends with the pipeline's `path`. `--dry-run`
//! reads what exists and prints the writes it would make. Credentials come from the environment and never reach the
//! output; Stripe's signing secret, which it returns once, is printed once
//! with the env var to store it in and is not written to disk.
//!
//! For one connection of a `[connections]` pipeline (`--connection ID`) the
//! running server registers, with the connection's own `api_token` and
//! verify `secret` (credentials never leave the server): the URL ends with
//! `<path>/<id>`, and a signing secret Stripe returns is kept, sealed, in
//! the connection instead of being printed.

use std::fmt::Write as _;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::config::spec::{PipelineSpec, SourceSpec, VerifyScheme};
use crate::http_retry::{describe, excerpt};

/// What to register, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The public URL the provider will POST to.
    pub url: Option<String>,
    /// Event types (GitHub events, Stripe event types, Shopify topics).
    pub events: Vec<String>,
    /// GitHub: `owner/name`.
    pub repo: Option<String>,
    /// GitHub: an organisation.
    pub org: Option<String>,
    /// Shopify: `your-shop.myshopify.com`.
    pub shop: Option<String>,
    /// The provider's API base (GitHub Enterprise, tests).
    pub api: Option<String>,
    /// The env var holding the API credential (else the provider's usual one).
    pub token_env: Option<String>,
    /// Print the writes instead of making them.
    pub dry_run: bool,
    /// Only list the subscriptions that exist.
    pub list: bool,
    /// The API credential itself (a connection's), instead of an env var's.
    pub token: Option<String>,
    /// The verify secret itself (a connection's), instead of the pipeline's
    /// `secret_env`.
    pub secret: Option<String>,
    /// The connection registered for: its URL is `<path>/<id>`.
    pub connection: Option<String>,
}

/// What a registration did.
#[derive(Debug, Default)]
pub struct Registered {
    /// What it printed.
    pub out: String,
    /// A signing secret the provider made (Stripe's, returned once), when
    /// registering for a connection: the caller keeps it in the connection.
    pub signing_secret: Option<String>,
}

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The command line or the pipeline does not say enough.
    #[error("{0}")]
    Usage(String),
    /// An env var is not set.
    #[error("the env var {var} is not set; set it to {what}")]
    Env {
        /// The variable.
        var: String,
        /// What it should hold.
        what: &'static str,
    },
    /// The provider could not be reached.
    #[error("{provider}: {method} {path} failed: {why}")]
    Transport {
        /// Provider.
        provider: &'static str,
        /// Method.
        method: Method,
        /// Path (no query: it never holds secrets here, but stays short).
        path: String,
        /// Why.
        why: String,
    },
    /// The provider refused.
    #[error("{provider}: {method} {path} answered {status}: {body}")]
    Refused {
        /// Provider.
        provider: &'static str,
        /// Method.
        method: Method,
        /// Path.
        path: String,
        /// Status.
        status: StatusCode,
        /// The start of its body.
        body: String,
    },
}

/// The provider a pipeline registers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Github,
    Stripe,
    Shopify,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Github => "GitHub",
            Provider::Stripe => "Stripe",
            Provider::Shopify => "Shopify",
        }
    }

    fn token_env(self) -> &'static str {
        match self {
            Provider::Github => "GITHUB_TOKEN",
            Provider::Stripe => "STRIPE_API_KEY",
            Provider::Shopify => "SHOPIFY_ACCESS_TOKEN",
        }
    }
}

/// The Shopify Admin API version the requests use.
const SHOPIFY_API_VERSION: &str = "2024-10";

/// One HTTP client with the provider's credential.
struct Api {
    provider: Provider,
    http: reqwest::Client,
    base: String,
    token: String,
    dry_run: bool,
    out: String,
    /// Registering for a connection: a secret the provider returns is kept
    /// here, not printed.
    for_connection: bool,
    signing_secret: Option<String>,
}

impl Api {
    /// Sends one request; a write in a dry run is printed instead (`None`).
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Body>,
    ) -> Result<Option<Value>, RegisterError> {
        let write = method != Method::GET && !is_read(&body);
        if write && self.dry_run {
            let shown = match &body {
                Some(Body::Json(v)) => redact(v).to_string(),
                Some(Body::Form(pairs)) => pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&"),
                None => String::new(),
            };
            let _ = writeln!(
                self.out,
                "dry run: would send {method} {}{path} {shown}",
                self.base
            );
            return Ok(None);
        }
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        request = match self.provider {
            Provider::Github => request
                .header(AUTHORIZATION, format!("Bearer {}", self.token))
                .header(ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            Provider::Stripe => request.header(AUTHORIZATION, format!("Bearer {}", self.token)),
            Provider::Shopify => request.header("X-Shopify-Access-Token", &self.token),
        };
        request = match body {
            Some(Body::Json(v)) => request
                .header(CONTENT_TYPE, "application/json")
                .body(v.to_string()),
            Some(Body::Form(pairs)) => request
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(
                    url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(pairs)
                        .finish(),
                ),
            None => request,
        };
        let path_only = path.split('?').next().unwrap_or(path).to_string();
        let response = request.send().await.map_err(|e| RegisterError::Transport {
            provider: self.provider.name(),
            method: method.clone(),
            path: path_only.clone(),
            why: describe(e),
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RegisterError::Transport {
                provider: self.provider.name(),
                method: method.clone(),
                path: path_only.clone(),
                why: describe(e),
            })?;
        if !status.is_success() {
            return Err(RegisterError::Refused {
                provider: self.provider.name(),
                method,
                path: path_only,
                status,
                body: excerpt(&bytes),
            });
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        // GraphQL reports errors with a 200.
        if let Some(errors) = value.get("errors").filter(|e| !e.is_null()) {
            return Err(RegisterError::Refused {
                provider: self.provider.name(),
                method,
                path: path_only,
                status,
                body: errors.to_string(),
            });
        }
        Ok(Some(value))
    }
}

/// A request body.
enum Body {
    Json(Value),
    Form(Vec<(String, String)>),
}

/// A GraphQL query (not a mutation) is a read, though it is a POST.
fn is_read(body: &Option<Body>) -> bool {
    matches!(body, Some(Body::Json(v)) if v["query"].as_str().is_some_and(|q| q.trim_start().starts_with("query")))
}

/// A JSON body with secrets masked, for a dry run's output.
fn redact(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if k == "secret" {
                        json!("********")
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// The provider `register` subscribes `pipeline` with, from its verify scheme.
pub fn provider_of(pipeline: &PipelineSpec) -> Option<&'static str> {
    let SourceSpec::Webhook(webhook) = &pipeline.source else {
        return None;
    };
    match webhook.verify.as_ref()?.scheme {
        VerifyScheme::Github => Some("GitHub"),
        VerifyScheme::Stripe => Some("Stripe"),
        VerifyScheme::Shopify => Some("Shopify"),
        _ => None,
    }
}

/// Whether `url`'s path ends with the pipeline's `path`: a subscription that
/// may deliver to the pipeline (behind a proxy that adds a prefix, or at an
/// address it had before), or another integration's with a path like it.
fn ends_with_path(url: &str, path: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.path()
            .trim_end_matches('/')
            .ends_with(path.trim_end_matches('/'))
    })
}

/// Whether two URLs are one address: the same scheme, host and port (a
/// default port written or not) and path (a trailing `/` aside). Query,
/// fragment and user info do not choose where tributary answers.
fn same_address(a: &str, b: &str) -> bool {
    fn address(url: &str) -> Option<(String, String, Option<u16>, String)> {
        let u = url::Url::parse(url).ok()?;
        Some((
            u.scheme().to_string(),
            u.host_str()?.to_string(),
            u.port_or_known_default(),
            u.path().trim_end_matches('/').to_string(),
        ))
    }
    matches!((address(a), address(b)), (Some(a), Some(b)) if a == b)
}

/// The subscriptions of `all` (`url_of` reads one's URL) for a pipeline
/// served at `path`, sorted out: with `url`, `mine` holds those at that
/// address (the pipeline's own, which `register` may update) and `others`
/// those whose URL only ends with `path` (another integration's, or an
/// address the pipeline had before), which it never changes; without `url`
/// (`--list`), `mine` holds every one whose URL ends with `path`.
fn sort_out<'a>(
    all: &'a [Value],
    url_of: impl Fn(&Value) -> Option<&str>,
    path: &str,
    url: Option<&str>,
) -> Sorted<'a> {
    let mut sorted = Sorted::default();
    for subscription in all {
        let Some(at) = url_of(subscription) else {
            continue;
        };
        match url {
            Some(url) if same_address(at, url) => sorted.mine.push(subscription),
            _ if !ends_with_path(at, path) => {}
            Some(_) => sorted.others.push(subscription),
            None => sorted.mine.push(subscription),
        }
    }
    sorted
}

/// Subscriptions as [`sort_out`] sorts them.
#[derive(Default)]
struct Sorted<'a> {
    /// The pipeline's own.
    mine: Vec<&'a Value>,
    /// Those `register` leaves alone.
    others: Vec<&'a Value>,
}

/// Registers (or lists) `pipeline`'s subscription (or its connection's).
pub async fn register(pipeline: &PipelineSpec, req: &Request) -> Result<Registered, RegisterError> {
    let SourceSpec::Webhook(webhook) = &pipeline.source else {
        return Err(RegisterError::Usage(format!(
            "pipeline {} polls; only webhook pipelines subscribe with a provider",
            pipeline.name
        )));
    };
    let Some(verify) = &webhook.verify else {
        return Err(RegisterError::Usage(format!(
            "pipeline {} has no source.verify, so its provider is unknown; register knows scheme = \"github\", \"stripe\" and \"shopify\"",
            pipeline.name
        )));
    };
    let provider = match provider_of(pipeline) {
        Some("GitHub") => Provider::Github,
        Some("Stripe") => Provider::Stripe,
        Some("Shopify") => Provider::Shopify,
        _ => {
            return Err(RegisterError::Usage(format!(
                "pipeline {} verifies another provider's scheme; register knows github, stripe and shopify: subscribe {} in the provider's console",
                pipeline.name, webhook.path
            )))
        }
    };
    let url = match (&req.url, req.list) {
        (Some(url), _) => {
            let parsed = url::Url::parse(url)
                .map_err(|e| RegisterError::Usage(format!("--url {url} is not a URL ({e})")))?;
            if parsed.scheme() != "https" {
                return Err(RegisterError::Usage(format!(
                    "--url {url} is not https; providers deliver to public https:// addresses"
                )));
            }
            // A connection's own URL, unless webhooks name theirs otherwise.
            let attributed = pipeline
                .connections
                .as_ref()
                .is_some_and(|c| c.attribute_header.is_some() || c.attribute_pointer.is_some());
            let path = match &req.connection {
                Some(id) if !attributed => format!("{}/{id}", webhook.path.trim_end_matches('/')),
                _ => webhook.path.clone(),
            };
            if !ends_with_path(url, &path) {
                let whose = match &req.connection {
                    Some(id) if !attributed => format!("connection {id}'s path"),
                    _ => "the pipeline's path".to_string(),
                };
                return Err(RegisterError::Usage(format!(
                    "--url {url} does not end with {whose} {path}; tributary answers only there (add the path to the URL)"
                )));
            }
            Some(url.clone())
        }
        (None, true) => None,
        (None, false) => {
            return Err(RegisterError::Usage(format!(
                "add --url https://<public host>{} (the address the provider will POST to)",
                webhook.path
            )))
        }
    };
    let token_env = req
        .token_env
        .clone()
        .unwrap_or_else(|| provider.token_env().to_string());
    let token = req
        .token
        .clone()
        .or_else(|| std::env::var(&token_env).ok())
        .filter(|t| !t.is_empty())
        .ok_or(RegisterError::Env {
        var: token_env,
        what: match provider {
            Provider::Github => {
                "a GitHub token that may administer the repository's (or organisation's) webhooks"
            }
            Provider::Stripe => {
                "a Stripe secret key (sk_…) or a restricted key with webhook endpoint write access"
            }
            Provider::Shopify => {
                "the Admin API access token of an app with the topics' read scopes"
            }
        },
    })?;
    let base = match (provider, &req.api, &req.shop) {
        (_, Some(api), _) => {
            let parsed = url::Url::parse(api)
                .map_err(|e| RegisterError::Usage(format!("--api {api} is not a URL ({e})")))?;
            let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
            if parsed.scheme() != "https" && !loopback {
                return Err(RegisterError::Usage(format!(
                    "--api {api} is not https; the API credential goes only over https (plain http only to this machine)"
                )));
            }
            api.trim_end_matches('/').to_string()
        }
        (Provider::Github, None, _) => "https://api.github.com".into(),
        (Provider::Stripe, None, _) => "https://api.stripe.com".into(),
        (Provider::Shopify, None, Some(shop)) => format!("https://{shop}"),
        (Provider::Shopify, None, None) => {
            return Err(RegisterError::Usage(
                "Shopify: add --shop your-shop.myshopify.com".into(),
            ))
        }
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RegisterError::Usage(format!("cannot build the HTTP client: {e}")))?;
    let mut api = Api {
        provider,
        http,
        base,
        token,
        dry_run: req.dry_run,
        out: String::new(),
        for_connection: req.connection.is_some(),
        signing_secret: None,
    };
    let secret_env = verify.secret_envs.first().cloned().unwrap_or_default();
    match provider {
        Provider::Github => {
            github::github(
                &mut api,
                pipeline,
                &webhook.path,
                url.as_deref(),
                req,
                &secret_env,
            )
            .await?
        }
        Provider::Stripe => {
            stripe::stripe(
                &mut api,
                pipeline,
                &webhook.path,
                url.as_deref(),
                req,
                &secret_env,
            )
            .await?
        }
        Provider::Shopify => shopify::shopify(&mut api, &webhook.path, url.as_deref(), req).await?,
    }
    Ok(Registered {
        out: api.out,
        signing_secret: api.signing_secret,
    })
}

fn list(api: &mut Api, lines: impl Iterator<Item = String>) {
    let mut any = false;
    for line in lines {
        any = true;
        let _ = writeln!(api.out, "{line}");
    }
    if !any {
        let _ = writeln!(
            api.out,
            "no {} subscription delivers to this pipeline yet",
            api.provider.name()
        );
    }
}

/// Whether two lists of event names hold the same names, in any order.
fn same_set(have: &[&str], want: &[String]) -> bool {
    let mut have = have.to_vec();
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    have.sort_unstable();
    want.sort_unstable();
    have == want
}

mod github;
mod shopify;
mod stripe;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_is_the_pipelines_by_its_whole_url_and_topics_map_to_shopifys_enum() {
        assert!(ends_with_path(
            "https://b.example/prefix/hooks/github/",
            "/hooks/github"
        ));
        assert!(!ends_with_path(
            "https://a.example/hooks/stripe",
            "/hooks/github"
        ));
        assert!(!ends_with_path("not a url", "/hooks/github"));
        for same in [
            "https://me.example/github",
            "https://me.example/github/",
            "HTTPS://ME.example:443/github",
            "https://me.example/github?x=1",
        ] {
            assert!(same_address(same, "https://me.example/github"), "{same}");
        }
        for other in [
            "http://me.example/github",
            "https://me.example:8443/github",
            "https://other.example/github",
            "https://me.example/x/github",
            "https://me.example/GitHub",
            "not a url",
        ] {
            assert!(!same_address(other, "https://me.example/github"), "{other}");
        }
        assert_eq!(shopify::shopify_topic("orders/create"), "ORDERS_CREATE");
        assert_eq!(shopify::shopify_topic("app/uninstalled"), "APP_UNINSTALLED");
        let masked = redact(&json!({"config": {"url": "u", "secret": "s3cret"}}));
        assert_eq!(masked["config"]["secret"], "********");
    }

    #[test]
    fn another_integrations_hook_whose_path_ends_like_the_pipelines_is_not_taken() {
        let hooks = vec![
            json!({"id": 1, "config": {"url": "https://other.example/x/github"}}),
            json!({"id": 2, "config": {"url": "https://me.example/github/"}}),
            json!({"id": 3, "config": {"url": "https://old.example/github"}}),
            json!({"id": 4, "config": {"url": "https://me.example/gitlab"}}),
            json!({"id": 5, "config": {}}),
        ];
        let ids = |found: &[&Value]| {
            found
                .iter()
                .map(|h| h["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        };
        let sorted = sort_out(
            &hooks,
            github::hook_url,
            "/github",
            Some("https://me.example/github"),
        );
        assert_eq!(ids(&sorted.mine), [2]);
        assert_eq!(ids(&sorted.others), [1, 3], "left alone");
        let sorted = sort_out(
            &hooks,
            github::hook_url,
            "/github",
            Some("https://new.example/github"),
        );
        assert!(sorted.mine.is_empty(), "a new hook is created");
        assert_eq!(ids(&sorted.others), [1, 2, 3]);
        let listed = sort_out(&hooks, github::hook_url, "/github", None);
        assert_eq!(ids(&listed.mine), [1, 2, 3], "--list shows each");
    }
}
