//! A fake REST API (axum, in the test process) that the poll source pages
//! through: thousands of records `{id, name, email, updated_at}`, sorted by
//! `updated_at` then `id`, filtered by `updated_after` (inclusive), with
//! switchable pagination, authentication, failures and slowness, and a log
//! of every request it answered.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::DateTime;

/// Seconds of the first record's `updated_at` (2024-01-01T00:00:00Z); record
/// `i` was updated `i` seconds later.
pub const BASE_TS: i64 = 1_704_067_200;

/// How the API pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `{"results": […], "paging": {"next": {"after": "…"}}}`, token in `after`.
    Cursor,
    /// `Link: <…>; rel="next"` with an opaque `page_info`.
    Link,
    /// `limit` + `offset`.
    Offset,
    /// `page` + `per_page` (1-based).
    Page,
    /// Everything in one response.
    None,
}

/// What the API demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Open,
    Bearer(String),
    Basic(String, String),
    HeaderKey(String, String),
    QueryKey(String, String),
    /// OAuth client credentials: `/oauth/token` issues tokens.
    OAuth2 {
        client_id: String,
        secret: String,
    },
}

/// One injected answer instead of the real one.
#[derive(Debug, Clone)]
pub enum Failure {
    /// This status, with `Retry-After` seconds if given.
    Status(u16, Option<u64>),
    /// The real answer, this much later.
    Slow(Duration),
}

/// What each record looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{id, name, email, updated_at}`.
    Plain,
    /// A HubSpot CRM contact: string `id`, `properties`, `updatedAt`.
    HubSpot,
    /// A Shopify product: `id`, `title`, `variants`, `updated_at`.
    Shopify,
}

#[derive(Debug, Clone)]
struct Record {
    id: u64,
    updated_at: i64,
    json: String,
}

impl Record {
    fn new(id: u64, updated_at: i64, shape: Shape) -> Self {
        let at = DateTime::from_timestamp(updated_at, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ");
        let json = match shape {
            Shape::Plain => format!(
                r#"{{"id":{id},"name":"Record {id}","email":"r{id}@example.com","updated_at":"{at}"}}"#
            ),
            Shape::HubSpot => format!(
                r#"{{"id":"{id}","properties":{{"email":"c{id}@example.com","firstname":"Ada","lastname":"L{id}","hs_lastmodifieddate":"{at}"}},"createdAt":"2023-06-01T00:00:00Z","updatedAt":"{at}","archived":false}}"#
            ),
            Shape::Shopify => format!(
                r#"{{"id":{id},"title":"Product {id}","vendor":"Acme","status":"active","tags":"","created_at":"2023-06-01T00:00:00-04:00","updated_at":"{at}","variants":[{{"id":{v},"sku":"SKU-{id}","price":"9.99","inventory_quantity":3}}]}}"#,
                v = id * 10
            ),
        };
        Self {
            id,
            updated_at,
            json,
        }
    }
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub path_and_query: String,
    pub status: u16,
}

struct Inner {
    records: Vec<Record>,
    shape: Shape,
    style: Style,
    page_size: usize,
    auth: Auth,
    tokens: HashSet<String>,
    issued: u64,
    failures: VecDeque<Failure>,
    delay: Duration,
    log: Vec<Logged>,
}

/// The running fake API.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl FakeApi {
    /// Serves records `1..=count` on a free loopback port.
    pub async fn start(count: u64, style: Style) -> Self {
        let records = (1..=count)
            .map(|id| Record::new(id, BASE_TS + id as i64, Shape::Plain))
            .collect();
        let inner = Arc::new(Mutex::new(Inner {
            records,
            shape: Shape::Plain,
            style,
            page_size: 100,
            auth: Auth::Open,
            tokens: HashSet::new(),
            issued: 0,
            failures: VecDeque::new(),
            delay: Duration::ZERO,
            log: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/records", get(list).post(list))
            .route("/oauth/token", post(token))
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/records", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    pub fn set_page_size(&self, n: usize) {
        self.inner.lock().unwrap().page_size = n;
    }

    /// Serves records of this shape from now on.
    pub fn set_shape(&self, shape: Shape) {
        let mut inner = self.inner.lock().unwrap();
        inner.shape = shape;
        for r in inner.records.iter_mut() {
            *r = Record::new(r.id, r.updated_at, shape);
        }
    }

    pub fn set_auth(&self, auth: Auth) {
        self.inner.lock().unwrap().auth = auth;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    /// The next requests to `/records` get these answers, in order.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        self.inner.lock().unwrap().failures.extend(failures);
    }

    /// Every OAuth token issued so far stops working (the next request gets 401).
    pub fn revoke_tokens(&self) {
        self.inner.lock().unwrap().tokens.clear();
    }

    /// Tokens issued by `/oauth/token`.
    pub fn tokens_issued(&self) -> u64 {
        self.inner.lock().unwrap().issued
    }

    /// Gives `ids` a new `updated_at`, `later` seconds after the newest record.
    pub fn touch(&self, ids: &[u64], later: i64) {
        let mut inner = self.inner.lock().unwrap();
        let shape = inner.shape;
        let newest = inner
            .records
            .iter()
            .map(|r| r.updated_at)
            .max()
            .unwrap_or(BASE_TS);
        for r in inner.records.iter_mut().filter(|r| ids.contains(&r.id)) {
            *r = Record::new(r.id, newest + later, shape);
        }
        inner.records.sort_by_key(|r| (r.updated_at, r.id));
    }

    /// `updated_at` of record `id`, as the API writes it.
    pub fn updated_at(&self, id: u64) -> i64 {
        let inner = self.inner.lock().unwrap();
        inner
            .records
            .iter()
            .find(|r| r.id == id)
            .unwrap()
            .updated_at
    }

    /// The requests answered so far.
    pub fn log(&self) -> Vec<Logged> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.inner.lock().unwrap().log.clear();
    }
}

type Params = Vec<(String, String)>;

/// A HubSpot-style search body: `after`, and the first filter's value as the
/// lower bound, turned into parameters.
fn search_body(body: &str) -> Params {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return Params::new();
    };
    let mut params = Params::new();
    if let Some(after) = json["after"].as_str() {
        params.push(("after".into(), after.into()));
    }
    if let Some(value) = json["filterGroups"][0]["filters"][0]["value"].as_str() {
        params.push(("updated_after".into(), value.into()));
    }
    params
}

fn parse_form(text: &str) -> Params {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn authorised(auth: &Auth, tokens: &HashSet<String>, headers: &HeaderMap, params: &Params) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    match auth {
        Auth::Open => true,
        Auth::Bearer(t) => header("authorization") == format!("Bearer {t}"),
        Auth::Basic(user, password) => {
            let expected = format!("{user}:{password}");
            header("authorization")
                .strip_prefix("Basic ")
                .and_then(decode_base64)
                .is_some_and(|d| d == expected.as_bytes())
        }
        Auth::HeaderKey(name, key) => header(name) == key,
        Auth::QueryKey(name, key) => param(params, name) == Some(key.as_str()),
        Auth::OAuth2 { .. } => header("authorization")
            .strip_prefix("Bearer ")
            .is_some_and(|t| tokens.contains(t)),
    }
}

/// Base64 decoding for the basic-auth check (the API is a test double; the
/// client side uses reqwest's encoder).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = bits << 6 | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

async fn list(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: String,
) -> Response {
    let mut params = parse_form(uri.query().unwrap_or(""));
    params.extend(search_body(&body));
    let (mut delay, slow) = {
        let mut inner = inner.lock().unwrap();
        match inner.failures.front() {
            Some(Failure::Slow(d)) => {
                let d = *d;
                inner.failures.pop_front();
                (inner.delay, d)
            }
            _ => (inner.delay, Duration::ZERO),
        }
    };
    delay += slow;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = inner.lock().unwrap();
    let response = answer(&mut inner, &params, &headers);
    let logged = Logged {
        at: Instant::now(),
        path_and_query: uri.to_string(),
        status: response.status().as_u16(),
    };
    inner.log.push(logged);
    response
}

fn answer(inner: &mut Inner, params: &Params, headers: &HeaderMap) -> Response {
    if let Some(Failure::Status(status, retry_after)) = inner.failures.front().cloned() {
        inner.failures.pop_front();
        let mut response = (
            StatusCode::from_u16(status).unwrap(),
            "{\"message\":\"injected failure\"}",
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
        }
        return response;
    }
    if !authorised(&inner.auth, &inner.tokens, headers, params) {
        return (
            StatusCode::UNAUTHORIZED,
            "{\"message\":\"bad credentials\"}",
        )
            .into_response();
    }
    let lower = match param(params, "updated_after").or(param(params, "updated_at_min")) {
        None => i64::MIN,
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.timestamp(),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    "{\"message\":\"updated_after is not a timestamp\"}",
                )
                    .into_response()
            }
        },
    };
    // Position of the first record at or after the lower bound.
    let from = inner.records.partition_point(|r| r.updated_at < lower);
    let size = inner.page_size;
    let number = |name: &str| param(params, name).and_then(|v| v.parse::<usize>().ok());
    let (start, size) = match inner.style {
        Style::Cursor => (number("after").unwrap_or(from), size),
        Style::Link => match param(params, "page_info") {
            Some(info) => match info.split_once('-') {
                Some((pos, _)) => (pos.parse().unwrap_or(usize::MAX), size),
                None => {
                    return (StatusCode::BAD_REQUEST, "{\"message\":\"bad page_info\"}")
                        .into_response()
                }
            },
            None => (from, size),
        },
        Style::Offset => (
            from + number("offset").unwrap_or(0),
            number("limit").unwrap_or(size),
        ),
        Style::Page => {
            let per = number("per_page").unwrap_or(size);
            (from + (number("page").unwrap_or(1).max(1) - 1) * per, per)
        }
        Style::None => (from, usize::MAX),
    };
    let start = start.min(inner.records.len());
    let end = start.saturating_add(size).min(inner.records.len());
    let mut body = String::with_capacity(64 + (end - start) * 96);
    body.push_str("{\"results\":[");
    for (i, r) in inner.records[start..end].iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&r.json);
    }
    body.push(']');
    let more = end < inner.records.len();
    if inner.style == Style::Cursor && more {
        body.push_str(&format!(",\"paging\":{{\"next\":{{\"after\":\"{end}\"}}}}"));
    }
    body.push('}');
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if inner.style == Style::Link && more {
        let link = format!("</records?page_info={end}-opaque&limit={size}>; rel=\"next\"");
        response
            .headers_mut()
            .insert(header::LINK, link.parse().unwrap());
    }
    response
}

async fn token(State(inner): State<Arc<Mutex<Inner>>>, body: String) -> Response {
    let form = parse_form(&body);
    let mut inner = inner.lock().unwrap();
    let Auth::OAuth2 { client_id, secret } = inner.auth.clone() else {
        return (StatusCode::NOT_FOUND, "no oauth").into_response();
    };
    if param(&form, "grant_type") != Some("client_credentials")
        || param(&form, "client_id") != Some(client_id.as_str())
        || param(&form, "client_secret") != Some(secret.as_str())
    {
        return (StatusCode::UNAUTHORIZED, "{\"error\":\"invalid_client\"}").into_response();
    }
    inner.issued += 1;
    let token = format!("tok-{}", inner.issued);
    inner.tokens.insert(token.clone());
    let body =
        format!("{{\"access_token\":\"{token}\",\"token_type\":\"bearer\",\"expires_in\":3600}}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
