//! The poll source's HTTP client: authentication (secrets read from the
//! environment at each run; OAuth 2 tokens cached and refreshed before expiry
//! and once on a 401; OAuth 1.0a signatures made per try), a cap on response size, and retries: 429 and 503 wait
//! as `Retry-After` says, other 5xx, timeouts and connection errors back off
//! exponentially with full jitter, any other 4xx fails the run at once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::oauth1;
use super::page::Request;
use super::PollError;
use crate::config::spec::{AuthSpec, KeyPlace, PollSpec, Secret};
use crate::http_retry::{classify, describe, excerpt, full_jitter, Class};

/// First step of the exponential backoff, and its ceiling.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The longest `Retry-After` honoured; a longer one fails the run (retried at the next tick).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);
/// A token is renewed this long before the expiry its endpoint announced.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// A response that arrived whole and within the size cap.
#[derive(Debug)]
pub struct Response {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// One try's outcome, as the retry loop sees it.
#[derive(Debug)]
pub enum Attempt {
    /// A response (any status).
    Answered(Response),
    /// Timeout, refused or reset connection, a body cut short: worth a retry.
    Failed(String),
}

/// What the retry loop does after one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done: a 2xx.
    Ok,
    /// Renew the OAuth token and try again (once per request).
    Reauthenticate,
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Give up: the run fails with this message.
    Fail(String),
    /// Give up: the API refused the request (a 4xx); retrying will not help.
    Reject(String),
}

/// Decides what follows try number `attempt` (0-based).
pub fn verdict(attempt: &Attempt, tries: u32, max_retries: u32, can_reauth: bool) -> Verdict {
    let retry = |wait: Duration, why: String| {
        if tries >= max_retries {
            Verdict::Fail(format!(
                "{why}; gave up after {} retries (source.max_retries)",
                max_retries
            ))
        } else {
            Verdict::RetryAfter(wait)
        }
    };
    let r = match attempt {
        Attempt::Failed(why) => return retry(backoff(tries), why.clone()),
        Attempt::Answered(r) => r,
    };
    let answer = || format!("{}: {}", r.status, excerpt(&r.body));
    match classify(r.status, &r.headers) {
        Class::Done => Verdict::Ok,
        Class::Unauthorized if can_reauth => Verdict::Reauthenticate,
        Class::Retry { after: Some(wait) } if wait > MAX_RETRY_AFTER => Verdict::Fail(format!(
            "{} with Retry-After of {} s, longer than the {} s tributary waits; the run is retried at the next tick",
            r.status,
            wait.as_secs(),
            MAX_RETRY_AFTER.as_secs()
        )),
        Class::Retry { after: Some(wait) } => retry(wait, answer()),
        Class::Retry { after: None } => retry(backoff(tries), answer()),
        Class::Redirect { location } => Verdict::Reject(format!(
            "{} to {} (redirects are not followed, so credentials never go elsewhere; set source.url to the final address)",
            r.status,
            location.as_deref().unwrap_or("no Location")
        )),
        Class::Unauthorized | Class::Gone | Class::Permanent => Verdict::Reject(answer()),
    }
}

/// Full jitter: a wait drawn uniformly from zero to the exponential step.
fn backoff(tries: u32) -> Duration {
    full_jitter(tries, BACKOFF_BASE, BACKOFF_CAP)
}

/// Runs `send` until [`verdict`] says stop; waits between tries (cut short by `stop`).
pub async fn with_retries<F, Fut>(
    max_retries: u32,
    can_reauth: bool,
    stop: &CancellationToken,
    mut send: F,
) -> Result<Response, PollError>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Result<Attempt, PollError>>,
{
    let (mut tries, mut reauthenticated) = (0, false);
    let mut renew = false;
    loop {
        let attempt = send(renew).await?;
        renew = false;
        match verdict(&attempt, tries, max_retries, can_reauth && !reauthenticated) {
            Verdict::Ok => match attempt {
                Attempt::Answered(r) => return Ok(r),
                Attempt::Failed(_) => unreachable!("only an answer is Ok"),
            },
            Verdict::Reauthenticate => {
                info!("The API answered 401; renewing the OAuth token once.");
                (renew, reauthenticated) = (true, true);
            }
            Verdict::RetryAfter(wait) => {
                let why = match &attempt {
                    Attempt::Answered(r) => r.status.to_string(),
                    Attempt::Failed(why) => why.clone(),
                };
                warn!(error = %why, retry_in_ms = wait.as_millis() as u64, retry = tries + 1, "Request failed; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return Err(PollError::Stopped),
                }
                tries += 1;
            }
            Verdict::Fail(why) => return Err(PollError::Request(why)),
            Verdict::Reject(why) => return Err(PollError::Rejected(why)),
        }
    }
}

/// Keeps a rotated refresh token durably; the error says why it could not.
pub type KeepRefresh = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// An OAuth access token and when to renew it.
struct Token {
    value: String,
    renew_at: Instant,
}

/// The HTTP client of one poll source.
pub struct Client {
    http: reqwest::Client,
    /// A connection's credentials (by field name), which take the place of
    /// the auth's env vars; none outside a `[connections]` pipeline.
    credentials: Option<std::collections::BTreeMap<String, String>>,
    /// Keeps a refresh token the endpoint rotated (a connection's store,
    /// sealed and fsynced) before the access token that came with it is used.
    keep_refresh: Option<KeepRefresh>,
    /// Std mutexes: held for a copy, never across an await.
    token: Mutex<Option<Token>>,
    /// A refresh token the endpoint rotated (it replaces the env var's).
    refresh_token: Mutex<Option<String>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds; some endpoints send it as a string.
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
}

/// Why no token came: worth a retry (transport, 5xx, 429) or not.
enum TokenFailure {
    Retry(String),
    Fail(PollError),
}

impl From<PollError> for TokenFailure {
    fn from(e: PollError) -> Self {
        TokenFailure::Fail(e)
    }
}

impl Client {
    /// A client with the source's timeout.
    pub fn new(spec: &PollSpec) -> Result<Self, PollError> {
        Ok(Self::on(http(spec)?))
    }

    /// A client on `http` (one HTTP client, its connections and TLS roots
    /// shared by every connection of a pipeline).
    pub fn on(http: reqwest::Client) -> Self {
        Self {
            http,
            credentials: None,
            keep_refresh: None,
            token: Mutex::new(None),
            refresh_token: Mutex::new(None),
        }
    }

    /// This client with a connection's credentials: each secret comes from
    /// the field named like its auth key without `_env` (`token`,
    /// `password`, `client_id`, …) when the connection gives it, else from
    /// the pipeline's env var (app-level secrets).
    ///
    /// An OAuth 2 connection that gives its current `access_token` with
    /// `expires_at` (RFC 3339, or seconds since the epoch) uses it until
    /// shortly before then, instead of refreshing at its first run.
    pub fn with_credentials(
        mut self,
        credentials: std::collections::BTreeMap<String, String>,
    ) -> Self {
        if let (Some(token), Some(left)) = (
            credentials.get("access_token"),
            credentials
                .get("expires_at")
                .and_then(|at| seconds_left(at, chrono::Utc::now())),
        ) {
            let lifetime = Duration::from_secs(left);
            if lifetime > TOKEN_MARGIN {
                *self.token.get_mut().expect("token lock") = Some(Token {
                    value: token.clone(),
                    renew_at: Instant::now() + (lifetime - TOKEN_MARGIN),
                });
            }
        }
        self.credentials = Some(credentials);
        self
    }

    /// This client keeping each rotated refresh token with `keep` first.
    pub fn keeping_refresh_tokens(mut self, keep: KeepRefresh) -> Self {
        self.keep_refresh = Some(keep);
        self
    }

    /// The secret `field` of the connection, or from env var `name`.
    fn secret(&self, name: &str, field: &str) -> Result<String, PollError> {
        if let Some(credentials) = &self.credentials {
            if let Some(value) = credentials.get(field) {
                return Ok(value.clone());
            }
            if name.is_empty() {
                return Err(PollError::MissingCredential(field.to_string()));
            }
        }
        env(name)
    }

    /// Fetches `request` with authentication, the size cap and retries.
    pub async fn fetch(
        &self,
        spec: &PollSpec,
        request: &Request,
        stop: &CancellationToken,
    ) -> Result<Response, PollError> {
        let can_reauth = matches!(spec.auth, AuthSpec::Oauth2 { .. });
        with_retries(spec.max_retries, can_reauth, stop, |renew| {
            if renew {
                *self.token.lock().expect("token lock") = None;
            }
            self.send(spec, request)
        })
        .await
    }

    async fn send(&self, spec: &PollSpec, request: &Request) -> Result<Attempt, PollError> {
        let mut url = request.url.clone();
        let mut builder_headers = HeaderMap::new();
        let mut basic = None;
        match &spec.auth {
            AuthSpec::None => {}
            AuthSpec::Bearer { token_env } => {
                let token = self.secret(token_env, "token")?;
                builder_headers.insert(
                    AUTHORIZATION,
                    header(&format!("Bearer {token}"), token_env)?,
                );
            }
            AuthSpec::Basic {
                username,
                password_env,
            } => {
                let user = match username {
                    Secret::Plain(u) => u.clone(),
                    Secret::Env(name) => self.secret(name, "username")?,
                };
                basic = Some((user, self.secret(password_env, "password")?));
            }
            AuthSpec::ApiKey { key_env, place } => {
                let key = self.secret(key_env, "key")?;
                match place {
                    KeyPlace::Header(name) => {
                        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                            .map_err(|e| PollError::Request(format!("header {name}: {e}")))?;
                        builder_headers.insert(name, header(&key, key_env)?);
                    }
                    KeyPlace::Query(param) => {
                        url.query_pairs_mut().append_pair(param, &key);
                    }
                }
            }
            AuthSpec::Oauth2 { .. } => {
                let token = match self.oauth_token(spec).await {
                    Ok(token) => token,
                    Err(TokenFailure::Retry(why)) => return Ok(Attempt::Failed(why)),
                    Err(TokenFailure::Fail(e)) => return Err(e),
                };
                builder_headers.insert(
                    AUTHORIZATION,
                    header(&format!("Bearer {token}"), "the OAuth token")?,
                );
            }
            AuthSpec::Oauth1 {
                consumer_key_env,
                consumer_secret_env,
                token_env,
                token_secret_env,
                realm,
                signature_method,
            } => {
                // Signed last, over the final URL; every try gets its own nonce.
                let (consumer_key, consumer_secret) = (
                    self.secret(consumer_key_env, "consumer_key")?,
                    self.secret(consumer_secret_env, "consumer_secret")?,
                );
                let (token, token_secret) = (
                    self.secret(token_env, "token")?,
                    self.secret(token_secret_env, "token_secret")?,
                );
                let creds = oauth1::Credentials {
                    consumer_key: &consumer_key,
                    consumer_secret: &consumer_secret,
                    token: &token,
                    token_secret: &token_secret,
                    realm: realm.as_deref(),
                    method: *signature_method,
                };
                let method = if spec.post { "POST" } else { "GET" };
                let value = oauth1::authorization(method, &url, &[], &creds, &oauth1::Once::now());
                builder_headers
                    .insert(AUTHORIZATION, header(&value, "the OAuth 1.0a credentials")?);
            }
        }
        let mut builder = if spec.post {
            self.http.post(url)
        } else {
            self.http.get(url)
        };
        for (name, value) in &spec.headers {
            builder = builder.header(name, value);
        }
        builder = builder.headers(builder_headers);
        if let Some((user, password)) = basic {
            builder = builder.basic_auth(user, Some(password));
        }
        if let Some(body) = &request.body {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let mut response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Failed(describe(e))),
        };
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        if response
            .content_length()
            .is_some_and(|n| n > spec.max_response)
        {
            return Err(too_large(spec));
        }
        // A declared length is reserved at once, so the body is not copied
        // as it grows.
        let declared = response.content_length().unwrap_or(0) as usize;
        let mut body = BytesMut::with_capacity(declared);
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > spec.max_response {
                        return Err(too_large(spec));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Ok(Attempt::Failed(describe(e))),
            }
        }
        Ok(Attempt::Answered(Response {
            status,
            headers,
            body: body.freeze(),
        }))
    }

    /// The cached access token, fetched anew when missing or about to expire.
    async fn oauth_token(&self, spec: &PollSpec) -> Result<String, TokenFailure> {
        if let Some(t) = &*self.token.lock().expect("token lock") {
            if Instant::now() < t.renew_at {
                return Ok(t.value.clone());
            }
        }
        let AuthSpec::Oauth2 {
            token_url,
            client_id_env,
            client_secret_env,
            refresh_token_env,
            scopes,
        } = &spec.auth
        else {
            unreachable!("called for oauth2 only");
        };
        let mut form = vec![
            ("client_id", self.secret(client_id_env, "client_id")?),
            (
                "client_secret",
                self.secret(client_secret_env, "client_secret")?,
            ),
        ];
        match refresh_token_env {
            Some(name) => {
                let rotated = self.refresh_token.lock().expect("token lock").clone();
                let refresh = match rotated {
                    Some(r) => r,
                    None => self.secret(name, "refresh_token")?,
                };
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", refresh));
            }
            None => form.push(("grant_type", "client_credentials".into())),
        }
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let why = |why: String| format!("OAuth token request to {token_url} failed: {why}");
        let response = self
            .http
            .post(token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| TokenFailure::Retry(why(describe(e))))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| TokenFailure::Retry(why(describe(e))))?;
        match classify(status, &reqwest::header::HeaderMap::new()) {
            Class::Done => {}
            Class::Retry { .. } => {
                return Err(TokenFailure::Retry(why(format!(
                    "{status}: {}",
                    excerpt(&bytes)
                ))))
            }
            Class::Redirect { .. } => {
                return Err(TokenFailure::Fail(PollError::Rejected(why(format!(
                    "{status} (redirects are not followed, so the client secret never goes elsewhere; set token_url to the final address)"
                )))))
            }
            Class::Unauthorized | Class::Gone | Class::Permanent => {
                return Err(TokenFailure::Fail(PollError::Rejected(why(format!(
                    "{status}: {}",
                    excerpt(&bytes)
                )))))
            }
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| {
            TokenFailure::Fail(PollError::Request(why(format!(
                "the answer has no access_token ({e})"
            ))))
        })?;
        let expires_in = answer.expires_in.as_ref().and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        });
        let lifetime = Duration::from_secs(expires_in.unwrap_or(3600));
        let renew_at = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2));
        if let Some(rotated) = &answer.refresh_token {
            // The old refresh token may be spent now: the new one is kept
            // durably before the access token is used, or the run fails
            // (and the next one retries with the old one, or the new one).
            if let Some(keep) = &self.keep_refresh {
                keep(rotated).map_err(|e| {
                    TokenFailure::Fail(PollError::Request(why(format!(
                        "the rotated refresh token could not be stored: {e}"
                    ))))
                })?;
            }
            *self.refresh_token.lock().expect("token lock") = answer.refresh_token;
        }
        *self.token.lock().expect("token lock") = Some(Token {
            value: answer.access_token.clone(),
            renew_at,
        });
        Ok(answer.access_token)
    }
}

/// Seconds from `now` until `at` (RFC 3339, or seconds since the epoch);
/// `None` if it is neither, or past.
fn seconds_left(at: &str, now: chrono::DateTime<chrono::Utc>) -> Option<u64> {
    let at = match at.trim().parse::<i64>() {
        Ok(seconds) => chrono::DateTime::from_timestamp(seconds, 0)?,
        Err(_) => chrono::DateTime::parse_from_rfc3339(at.trim())
            .ok()?
            .with_timezone(&chrono::Utc),
    };
    u64::try_from((at - now).num_seconds()).ok()
}

fn too_large(spec: &PollSpec) -> PollError {
    PollError::Request(format!(
        "the response is larger than source.max_response ({}); ask for smaller pages or raise max_response",
        crate::config::units::format_size(spec.max_response)
    ))
}

/// The HTTP client of `spec`'s requests. Redirects are not followed: a 3xx
/// could send the credentials (an API key header, a query key, a token
/// request's client secret) to another host or over plain HTTP.
pub fn http(spec: &PollSpec) -> Result<reqwest::Client, PollError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(spec.timeout)
        .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| PollError::Request(format!("cannot build the HTTP client: {e}")))
}

/// A secret from the environment.
fn env(name: &str) -> Result<String, PollError> {
    std::env::var(name).map_err(|_| PollError::Secret(name.to_string()))
}

fn header(value: &str, what: &str) -> Result<HeaderValue, PollError> {
    HeaderValue::from_str(value)
        .map_err(|_| PollError::Request(format!("{what} holds characters a header cannot carry")))
}

#[cfg(test)]
mod tests;
