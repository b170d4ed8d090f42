//! A fake multi-account REST API (axum, in the test process): every account
//! has its own contacts at `/accounts/{account}/contacts`, behind its own
//! bearer token, paged 5 at a time with an `after` token, filtered by
//! `updated_after` (exclusive). Tokens can be revoked, and records added.
//!
//! An OAuth2 account (`add_oauth`) is reached with access tokens from
//! `POST /oauth/token` (refresh-token grant, client `app-id`/`app-secret`),
//! which live one second and come with a new refresh token each time: the
//! old refresh token is spent once an access token issued with the new one
//! is used (until then a client that lost the new one may use the old one
//! again); a spent one answers `invalid_grant`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const PAGE: usize = 5;

#[derive(Default)]
struct Inner {
    /// Account → (token, record count).
    accounts: HashMap<String, (String, u64)>,
    /// Requests answered, per account.
    requests: HashMap<String, u64>,
    /// Refresh token → account, for OAuth accounts.
    refresh: HashMap<String, String>,
    /// Access token → (account, expiry, the refresh token it replaced).
    access: HashMap<String, (String, std::time::Instant, Option<String>)>,
    /// Tokens issued so far (for unique names).
    issued: u64,
    /// `invalid_grant` answers.
    spent: u64,
}

/// The running fake.
pub struct Accounts {
    address: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Accounts {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/accounts/{account}/contacts", get(contacts))
            .route("/oauth/token", axum::routing::post(token))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { address, inner }
    }

    /// The URL template a connections pipeline polls.
    pub fn url(&self) -> String {
        format!("http://{}/accounts/{{connection}}/contacts", self.address)
    }

    /// Adds `account` with `token` and `records` contacts.
    pub fn add(&self, account: &str, token: &str, records: u64) {
        self.inner
            .lock()
            .unwrap()
            .accounts
            .insert(account.to_string(), (token.to_string(), records));
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.address)
    }

    /// Adds OAuth account `account` whose first refresh token is `refresh`.
    pub fn add_oauth(&self, account: &str, refresh: &str, records: u64) {
        let mut inner = self.inner.lock().unwrap();
        inner
            .accounts
            .insert(account.to_string(), (String::new(), records));
        inner
            .refresh
            .insert(refresh.to_string(), account.to_string());
    }

    /// `invalid_grant` answers so far (a spent refresh token was used).
    pub fn spent_refused(&self) -> u64 {
        self.inner.lock().unwrap().spent
    }

    /// Refresh tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.inner.lock().unwrap().issued
    }

    /// Adds `n` newer contacts to `account`.
    pub fn grow(&self, account: &str, n: u64) {
        if let Some(a) = self.inner.lock().unwrap().accounts.get_mut(account) {
            a.1 += n;
        }
    }

    /// Requests answered for `account` so far.
    pub fn requests(&self, account: &str) -> u64 {
        *self
            .inner
            .lock()
            .unwrap()
            .requests
            .get(account)
            .unwrap_or(&0)
    }
}

async fn contacts(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut inner = inner.lock().unwrap();
    *inner.requests.entry(account.clone()).or_default() += 1;
    let Some((token, count)) = inner.accounts.get(&account).cloned() else {
        return (StatusCode::NOT_FOUND, "{\"message\":\"no such account\"}").into_response();
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bearer = sent.strip_prefix("Bearer ").unwrap_or("");
    let allowed = if token.is_empty() {
        // OAuth: a live access token of this account; its first use spends
        // the refresh token it replaced.
        match inner.access.get_mut(bearer) {
            Some((owner, expires, replaced))
                if *owner == account && *expires > std::time::Instant::now() =>
            {
                if let Some(old) = replaced.take() {
                    inner.refresh.remove(&old);
                }
                true
            }
            _ => false,
        }
    } else {
        bearer == token
    };
    if !allowed {
        return (
            StatusCode::UNAUTHORIZED,
            "{\"message\":\"invalid or revoked token\"}",
        )
            .into_response();
    }
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let after_ts: i64 = params
        .get("updated_after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let from: usize = params
        .get("after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Record i (1-based) was updated at i; newer ones come after.
    let matching: Vec<u64> = (1..=count).filter(|i| *i as i64 > after_ts).collect();
    let page: Vec<String> = matching
        .iter()
        .skip(from)
        .take(PAGE)
        .map(|i| format!("{{\"id\":{i},\"account\":\"{account}\",\"updated_at\":{i}}}"))
        .collect();
    let next = from + page.len();
    let paging = if next < matching.len() {
        format!(",\"paging\":{{\"next\":{{\"after\":\"{next}\"}}}}")
    } else {
        String::new()
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"results\":[{}]{paging}}}", page.join(",")),
    )
        .into_response()
}

async fn token(State(inner): State<Arc<Mutex<Inner>>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut inner = inner.lock().unwrap();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("client_id") != "app-id" || field("client_secret") != "app-secret" {
        return (StatusCode::UNAUTHORIZED, "{\"error\":\"invalid_client\"}").into_response();
    }
    let old = field("refresh_token").to_string();
    if field("grant_type") != "refresh_token" || !inner.refresh.contains_key(&old) {
        inner.spent += 1;
        return (StatusCode::BAD_REQUEST, "{\"error\":\"invalid_grant\"}").into_response();
    }
    let account = inner.refresh[&old].clone();
    inner.issued += 1;
    let n = inner.issued;
    let (refresh, access) = (
        format!("rt-{account}-{n}-s3cr3t"),
        format!("at-{account}-{n}-s3cr3t"),
    );
    inner.refresh.insert(refresh.clone(), account.clone());
    let expires = std::time::Instant::now() + std::time::Duration::from_secs(1);
    inner
        .access
        .insert(access.clone(), (account, expires, Some(old)));
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"access_token\":\"{access}\",\"expires_in\":1,\"refresh_token\":\"{refresh}\"}}"
        ),
    )
        .into_response()
}
