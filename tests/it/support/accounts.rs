//! A fake multi-account REST API (axum, in the test process): every account
//! has its own contacts at `/accounts/{account}/contacts`, behind its own
//! bearer token, paged 5 at a time with an `after` token, filtered by
//! `updated_after` (exclusive). Tokens can be revoked, and records added.

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
        .and_then(|v| v.to_str().ok());
    if sent != Some(format!("Bearer {token}").as_str()) {
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
