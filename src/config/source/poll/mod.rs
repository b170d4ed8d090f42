//! A poll source (`[source] type = "poll"`): raw form, spec and defaults;
//! its checks are in [`check`]. `check --explain` prints the spec through
//! `Serialize`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::config::check::RawSize;

/// `[source]` with `type = "poll"`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    /// Cron expression with seconds, e.g. `"0 */5 * * * *"`.
    pub schedule: Option<String>,
    /// A fixed interval instead of `schedule`, e.g. `"5m"`.
    pub every: Option<String>,
    /// Up to this much random delay before each run, e.g. `"30s"`.
    pub jitter: Option<String>,
    /// The list endpoint, `https://…`.
    pub url: Option<String>,
    /// `"GET"` (default) or `"POST"`.
    pub method: Option<String>,
    /// JSON body of a POST (a TOML table); strings may hold `{cursor}` and `{page_token}`.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub body: Option<toml::Table>,
    /// Extra request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Query parameters; values may hold `{cursor}` and `{page_token}`.
    pub query: Option<BTreeMap<String, String>>,
    /// Permit `http://` URLs (loopback and tests).
    pub allow_http: Option<bool>,
    /// Longest wait for one response, e.g. `"30s"`.
    pub timeout: Option<String>,
    /// Largest accepted response body, e.g. `"50MiB"`.
    pub max_response: Option<RawSize>,
    /// Retries of a failing request before the run fails (default 5).
    pub max_retries: Option<u32>,
    /// Most pages one run fetches (default 10000).
    pub max_pages: Option<u64>,
    /// How requests authenticate.
    pub auth: Option<RawAuth>,
    /// JSON pointer to the array of records in a response.
    pub records: Option<String>,
    /// The incremental cursor.
    pub cursor: Option<RawCursor>,
    /// How to reach the next page.
    pub paginate: Option<RawPaginate>,
}

/// `source.auth`, tagged by `type`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(RawBearer),
    /// HTTP basic auth.
    Basic(RawBasic),
    /// A key in a header or a query parameter.
    ApiKey(RawApiKey),
    /// OAuth 2 client credentials or refresh token.
    Oauth2(RawOauth2),
    /// OAuth 1.0a signed requests (NetSuite token-based auth, Magento).
    Oauth1(RawOauth1),
}

/// `auth.type = "oauth1"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOauth1 {
    /// Env var holding the consumer key.
    pub consumer_key_env: Option<String>,
    /// Env var holding the consumer secret.
    pub consumer_secret_env: Option<String>,
    /// Env var holding the access token.
    pub token_env: Option<String>,
    /// Env var holding the token secret.
    pub token_secret_env: Option<String>,
    /// `realm` of the header (NetSuite: the account id).
    pub realm: Option<String>,
    /// `"HMAC-SHA256"` (default) or `"HMAC-SHA1"`.
    pub signature_method: Option<String>,
}

/// `auth.type = "bearer"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBearer {
    /// Env var holding the token.
    pub token_env: Option<String>,
}

/// `auth.type = "basic"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBasic {
    /// The user name (not a secret).
    pub username: Option<String>,
    /// Or an env var holding it.
    pub username_env: Option<String>,
    /// Env var holding the password.
    pub password_env: Option<String>,
}

/// `auth.type = "api_key"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// Env var holding the key.
    pub key_env: Option<String>,
    /// Send it in this header…
    pub header: Option<String>,
    /// …or in this query parameter.
    pub query: Option<String>,
}

/// `auth.type = "oauth2"`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOauth2 {
    /// The token endpoint.
    pub token_url: Option<String>,
    /// Env var holding the client id.
    pub client_id_env: Option<String>,
    /// Env var holding the client secret.
    pub client_secret_env: Option<String>,
    /// Env var holding a refresh token (refresh-token grant; without it, client credentials).
    pub refresh_token_env: Option<String>,
    /// Scopes asked for.
    pub scopes: Option<Vec<String>>,
}

/// `source.cursor`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCursor {
    /// Record field (name or JSON pointer) whose largest value is the next lower bound.
    pub field: Option<String>,
    /// Query parameter that carries the lower bound.
    pub param: Option<String>,
    /// Lower bound of the first run.
    #[schemars(with = "Option<serde_json::Value>")]
    pub start: Option<toml::Value>,
    /// Go back this far from the lower bound, for late updates, e.g. `"5m"`.
    pub lookback: Option<String>,
}

/// `source.paginate`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPaginate {
    /// `"cursor"`, `"link"`, `"offset"`, `"page"` or `"none"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `cursor`: JSON pointer to the next page token.
    pub next: Option<String>,
    /// `cursor`: query parameter of the token; `page`: of the page number.
    pub param: Option<String>,
    /// `offset`/`page`: records per page.
    pub limit: Option<u64>,
    /// `offset`/`page`: query parameter of the page size.
    pub limit_param: Option<String>,
    /// `offset`: query parameter of the offset.
    pub offset_param: Option<String>,
    /// `page`: number of the first page (default 1).
    pub start: Option<u64>,
    /// `cursor`/`offset`/`page`: JSON pointer to a flag; the run ends when it is not `true`.
    pub has_more: Option<String>,
    /// `offset`/`page`: JSON pointer to the total record count; the run ends once it is reached.
    pub total: Option<String>,
    /// `link`: JSON pointer to an array of `{"rel", "href"}` links in the body (instead of the `Link` header).
    pub links: Option<String>,
}

/// `type = "poll"`.
#[derive(Debug, Clone, Serialize)]
pub struct PollSpec {
    /// When runs start.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Up to this much random delay before each scheduled run.
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub jitter: Duration,
    /// The endpoint.
    #[serde(serialize_with = "crate::config::check::shown::display")]
    pub url: url::Url,
    /// In a `[connections]` pipeline, the URL as written when it holds
    /// `{connection}` or `{params.NAME}` (filled in per connection; `url`
    /// then holds it with placeholders for checking only).
    #[serde(skip)]
    pub url_template: Option<String>,
    /// POST with `body` instead of GET.
    #[serde(rename = "method", serialize_with = "method")]
    pub post: bool,
    /// JSON body template of a POST (not shown: it may hold secrets' templates).
    #[serde(skip)]
    pub body: Option<serde_json::Value>,
    /// Extra headers (only their names are shown).
    #[serde(rename = "header_names", serialize_with = "names")]
    pub headers: Vec<(String, String)>,
    /// Query parameters (templates; not shown).
    #[serde(skip)]
    pub query: Vec<(String, String)>,
    /// Longest wait for one response.
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub timeout: Duration,
    /// Largest accepted response body in bytes.
    #[serde(serialize_with = "crate::config::check::shown::size")]
    pub max_response: u64,
    /// Retries of a failing request before the run fails.
    pub max_retries: u32,
    /// Most pages in one run.
    pub max_pages: u64,
    /// How requests authenticate.
    pub auth: AuthSpec,
    /// JSON pointer to the records array.
    pub records: String,
    /// The incremental cursor, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<CursorSpec>,
    /// How to reach the next page.
    pub paginate: Paginate,
}

impl PollSpec {
    /// The env vars this source reads its secrets from.
    pub fn secret_envs(&self) -> Vec<&str> {
        // Empty: a connections pipeline's per-user secret, from each connection.
        let mut envs = match &self.auth {
            AuthSpec::None => vec![],
            AuthSpec::Bearer { token_env } => vec![token_env.as_str()],
            AuthSpec::Basic {
                username,
                password_env,
            } => match username {
                Secret::Env(name) => vec![name.as_str(), password_env.as_str()],
                Secret::Plain(_) => vec![password_env.as_str()],
            },
            AuthSpec::ApiKey { key_env, .. } => vec![key_env.as_str()],
            AuthSpec::Oauth2 {
                client_id_env,
                client_secret_env,
                refresh_token_env,
                ..
            } => {
                let mut envs = vec![client_id_env.as_str(), client_secret_env.as_str()];
                envs.extend(refresh_token_env.as_deref());
                envs
            }
            AuthSpec::Oauth1 {
                consumer_key_env,
                consumer_secret_env,
                token_env,
                token_secret_env,
                ..
            } => vec![
                consumer_key_env.as_str(),
                consumer_secret_env.as_str(),
                token_env.as_str(),
                token_secret_env.as_str(),
            ],
        };
        envs.retain(|name| !name.is_empty());
        envs
    }
}

/// When poll runs start.
#[derive(Debug, Clone, Serialize)]
pub enum Schedule {
    /// A cron expression with seconds.
    #[serde(
        rename = "schedule",
        serialize_with = "crate::config::check::shown::display"
    )]
    Cron(Box<cron::Schedule>),
    /// A fixed interval.
    #[serde(
        rename = "every",
        serialize_with = "crate::config::check::shown::duration"
    )]
    Every(Duration),
}

/// How poll requests authenticate; secrets are env var names, read at each run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthSpec {
    /// No authentication.
    None,
    /// `Authorization: Bearer $token_env`.
    Bearer {
        /// Env var of the token.
        token_env: String,
    },
    /// HTTP basic.
    Basic {
        /// The user name, or `$env` of it.
        #[serde(flatten)]
        username: Secret,
        /// Env var of the password.
        password_env: String,
    },
    /// A key in a header or query parameter.
    ApiKey {
        /// Env var of the key.
        key_env: String,
        /// Where it goes.
        #[serde(flatten)]
        place: KeyPlace,
    },
    /// OAuth 2 token endpoint.
    Oauth2 {
        /// The token endpoint.
        #[serde(serialize_with = "crate::config::check::shown::display")]
        token_url: url::Url,
        /// Env var of the client id.
        client_id_env: String,
        /// Env var of the client secret.
        client_secret_env: String,
        /// Env var of a refresh token: refresh-token grant; none: client credentials.
        #[serde(skip_serializing_if = "Option::is_none")]
        refresh_token_env: Option<String>,
        /// Scopes.
        scopes: Vec<String>,
    },
    /// OAuth 1.0a: each request signed (RFC 5849) in its `Authorization` header.
    Oauth1 {
        /// Env var of the consumer key.
        consumer_key_env: String,
        /// Env var of the consumer secret.
        consumer_secret_env: String,
        /// Env var of the access token.
        token_env: String,
        /// Env var of the token secret.
        token_secret_env: String,
        /// `realm` in the header (not signed).
        #[serde(skip_serializing_if = "Option::is_none")]
        realm: Option<String>,
        /// HMAC-SHA256 or HMAC-SHA1.
        signature_method: SignatureMethod,
    },
}

/// An OAuth 1.0a signature method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SignatureMethod {
    /// HMAC-SHA256 (NetSuite requires it).
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
    /// HMAC-SHA1 (RFC 5849's own; Magento's default).
    #[serde(rename = "HMAC-SHA1")]
    HmacSha1,
}

impl SignatureMethod {
    /// The name `oauth_signature_method` carries.
    pub fn name(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha256 => "HMAC-SHA256",
            SignatureMethod::HmacSha1 => "HMAC-SHA1",
        }
    }
}

/// A value written in TOML or read from an env var (a basic-auth user name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Secret {
    /// Written in the file.
    #[serde(rename = "username")]
    Plain(String),
    /// The name of the env var that holds it.
    #[serde(rename = "username_env")]
    Env(String),
}

/// Where an API key goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPlace {
    /// A request header.
    Header(String),
    /// A query parameter.
    Query(String),
}

/// The incremental cursor.
#[derive(Debug, Clone, Serialize)]
pub struct CursorSpec {
    /// JSON pointer to the cursor field in a record.
    pub field: String,
    /// Query parameter carrying the lower bound (unless `{cursor}` is used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Lower bound of the first run.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "json_text")]
    pub start: Option<serde_json::Value>,
    /// How far back from the lower bound each run starts.
    #[serde(serialize_with = "crate::config::check::shown::duration")]
    pub lookback: Duration,
}

/// How a run reaches the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Paginate {
    /// One request per run.
    None,
    /// A next-page token in the body, sent back as a query parameter.
    Cursor {
        /// JSON pointer to the token.
        next: String,
        /// Query parameter (unless `{page_token}` is used).
        #[serde(skip_serializing_if = "Option::is_none")]
        param: Option<String>,
        /// Where the response says the run is over.
        #[serde(flatten)]
        ends: Ends,
    },
    /// `Link: <…>; rel="next"` (RFC 8288), or the `rel = "next"` entry of a
    /// links array in the body.
    Link {
        /// JSON pointer to the links array; none: the `Link` header.
        #[serde(skip_serializing_if = "Option::is_none")]
        links: Option<String>,
    },
    /// `limit` + `offset`, stopping on a short page.
    Offset {
        /// Page size.
        limit: u64,
        /// Query parameter of the page size.
        limit_param: String,
        /// Query parameter of the offset.
        offset_param: String,
        /// Where the response says the run is over.
        #[serde(flatten)]
        ends: Ends,
    },
    /// Page numbers, stopping on an empty (or short) page.
    Page {
        /// Query parameter of the page number.
        param: String,
        /// First page number.
        start: u64,
        /// Page size and its parameter, if sent.
        #[serde(flatten)]
        limit: Option<PageLimit>,
        /// Where the response says the run is over.
        #[serde(flatten)]
        ends: Ends,
    },
}

/// Stop conditions a response carries, besides a short or empty page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ends {
    /// JSON pointer to a flag (`hasMore`); the run ends when it is not `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<String>,
    /// JSON pointer to the total number of records (`total_count`); the run
    /// ends once the pages so far reach it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
}

/// The page size a page-number paginator sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageLimit {
    /// Page size.
    pub limit: u64,
    /// Its query parameter.
    pub limit_param: String,
}

fn method<S: Serializer>(post: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *post { "POST" } else { "GET" })
}

fn names<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(pairs.iter().map(|(k, _)| k))
}

fn json_text<S: Serializer>(value: &Option<serde_json::Value>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(serde_json::Value::String(text)) => s.serialize_str(text),
        Some(other) => s.collect_str(other),
        None => s.serialize_none(),
    }
}

/// Default `timeout` of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `max_response`: 50 MiB, far above any API's page.
pub const DEFAULT_MAX_RESPONSE: u64 = 50 << 20;
/// Default `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default `max_pages` per run.
pub const DEFAULT_MAX_PAGES: u64 = 10_000;
/// The placeholders a template may hold.
pub const CURSOR: &str = "{cursor}";
/// See [`CURSOR`].
pub const PAGE_TOKEN: &str = "{page_token}";

mod check;
pub(in crate::config) use check::source;

impl crate::config::source::SourceKind for PollSpec {
    fn type_tag(&self) -> &'static str {
        "poll"
    }
    fn label(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        format!("poll:{url}")
    }
    fn secret_envs(&self) -> Vec<(String, &str)> {
        PollSpec::secret_envs(self)
            .into_iter()
            .map(|var| ("auth".to_string(), var))
            .collect()
    }
    fn needs_leader(&self) -> bool {
        true
    }
    fn explain(&self) -> toml::Value {
        crate::config::check::shown::explained("poll", self)
    }
}
