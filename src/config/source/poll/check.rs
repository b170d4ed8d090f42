//! The poll source's checks: schedule, request, auth, pagination and
//! cursor, each problem named with its key and fix.

use std::str::FromStr;
use std::time::Duration;

use super::*;
use crate::config::check::{parse_duration, size, Errors};
use crate::config::source::SourceSpec;

/// Validates a poll source.
/// With `connections`, per-user secrets come from each connection, not the environment.
pub(in crate::config) fn source(
    raw: &RawPoll,
    connections: bool,
    e: &mut Errors<'_>,
) -> Option<SourceSpec> {
    let start = e.list.len();
    let schedule = schedule(raw, e);
    let jitter = duration(raw.jitter.as_deref(), "source.jitter", Duration::ZERO, e);
    let allow_http = raw.allow_http.unwrap_or(false);
    let mut url_template = None;
    let url = match raw.url.as_deref() {
        None => {
            e.push(
                "source.url",
                "missing",
                "add url = \"https://api.example.com/v1/items\"",
            );
            None
        }
        Some(text) if crate::connections::template::holds_placeholders(text) => {
            if !connections {
                e.push(
                    "source.url",
                    "{connection} and {params.NAME} are filled in per connection",
                    "add a [connections] table, or write the URL without them",
                );
                None
            } else {
                match crate::connections::template::check(text) {
                    Ok(example) => {
                        url_template = Some(text.to_string());
                        endpoint(&example, allow_http, "source.url", e)
                    }
                    Err(problem) => {
                        e.push("source.url", problem, "write {connection} or {params.NAME} with NAME of letters, digits and _");
                        None
                    }
                }
            }
        }
        Some(text) => endpoint(text, allow_http, "source.url", e),
    };
    let post = match raw
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("GET") => false,
        Some("POST") => true,
        Some(other) => {
            e.push(
                "source.method",
                format!("\"{other}\" is not supported"),
                "use \"GET\" or \"POST\"",
            );
            false
        }
    };
    let body = match &raw.body {
        Some(_) if !post => {
            e.push(
                "source.body",
                "a body is sent only with POST",
                "add method = \"POST\" or remove body",
            );
            None
        }
        Some(table) => Some(toml_to_json(&toml::Value::Table(table.clone()))),
        None => None,
    };
    let headers: Vec<(String, String)> = raw
        .headers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (name, value) in &headers {
        let key = format!("source.headers.{name}");
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            e.push(
                key,
                "is not a valid HTTP header",
                "use a token name and a printable ASCII value",
            );
        } else if name.eq_ignore_ascii_case("authorization") {
            e.push(
                key,
                "credentials do not belong in the file",
                "use auth = { type = \"bearer\", token_env = \"…\" } (or basic, api_key, oauth2, oauth1)",
            );
        }
    }
    let query: Vec<(String, String)> = raw.query.clone().unwrap_or_default().into_iter().collect();
    let uses = |placeholder: &str| {
        query.iter().any(|(_, v)| v.contains(placeholder))
            || body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(placeholder))
    };
    let (uses_cursor, uses_token) = (uses(CURSOR), uses(PAGE_TOKEN));
    let timeout = duration(raw.timeout.as_deref(), "source.timeout", DEFAULT_TIMEOUT, e);
    if timeout.is_zero() {
        e.push("source.timeout", "must be above zero", "set e.g. \"30s\"");
    }
    let max_response = match &raw.max_response {
        None => DEFAULT_MAX_RESPONSE,
        Some(s) => size(s, "source.max_response", e).unwrap_or(DEFAULT_MAX_RESPONSE),
    };
    if max_response == 0 {
        e.push(
            "source.max_response",
            "must be above zero",
            "set e.g. \"50MiB\"",
        );
    } else if max_response > crate::event::MAX_PAYLOAD_BYTES as u64 {
        e.push(
            "source.max_response",
            format!("{max_response} bytes is more than one log record holds"),
            "set at most \"1023MiB\"",
        );
    }
    let max_retries = raw.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if max_retries > 20 {
        e.push(
            "source.max_retries",
            format!("{max_retries} is too many"),
            "use 0 to 20; a failed run is retried at the next tick anyway",
        );
    }
    let max_pages = raw.max_pages.unwrap_or(DEFAULT_MAX_PAGES);
    if max_pages == 0 {
        e.push("source.max_pages", "must be above zero", "set e.g. 10000");
    }
    let auth = match &raw.auth {
        None => Some(AuthSpec::None),
        Some(a) => auth(a, allow_http, connections, e),
    };
    let records = raw.records.clone().unwrap_or_default();
    if !(records.is_empty() || records.starts_with('/')) {
        e.push(
            "source.records",
            format!("\"{records}\" is not a JSON pointer"),
            "start it with '/', e.g. \"/results\", or use \"\" when the response is the array",
        );
    }
    let cursor = raw.cursor.as_ref().and_then(|c| cursor(c, uses_cursor, e));
    // A query value that is exactly "{cursor}" is left out while there is no
    // cursor; anywhere else the first run would send an empty lower bound.
    let cursor_inside = query.iter().any(|(_, v)| v.contains(CURSOR) && v != CURSOR)
        || body
            .as_ref()
            .is_some_and(|b| b.to_string().contains(CURSOR));
    if cursor_inside && raw.cursor.as_ref().is_some_and(|c| c.start.is_none()) {
        e.push(
            "source.cursor.start",
            "{cursor} is used inside a template, and the first run has no cursor to put there",
            "set start = \"2024-01-01T00:00:00Z\" (or the API's oldest value)",
        );
    }
    if uses_cursor && raw.cursor.is_none() {
        e.push(
            "source.query",
            "{cursor} is used but no cursor is configured",
            "add cursor = { field = \"updated_at\", start = \"…\" }",
        );
    }
    let paginate = match &raw.paginate {
        None => Some(Paginate::None),
        Some(p) => paginate(p, uses_token, e),
    };
    if uses_token && !matches!(paginate, Some(Paginate::Cursor { .. })) {
        e.push(
            "source.paginate",
            "{page_token} is used, but only type = \"cursor\" pagination has a page token",
            "set paginate = { type = \"cursor\", next = \"/next\" } or remove {page_token}",
        );
    }
    if e.list.len() > start {
        return None;
    }
    Some(SourceSpec::Poll(Box::new(PollSpec {
        schedule: schedule?,
        jitter,
        url: url?,
        url_template,
        post,
        body,
        headers,
        query,
        timeout,
        max_response,
        max_retries,
        max_pages,
        auth: auth?,
        records,
        cursor,
        paginate: paginate?,
    })))
}

fn schedule(raw: &RawPoll, e: &mut Errors<'_>) -> Option<Schedule> {
    match (&raw.schedule, &raw.every) {
        (Some(_), Some(_)) => {
            e.push(
                "source.every",
                "both schedule and every are set",
                "keep one of them",
            );
            None
        }
        (None, None) => {
            e.push(
                "source.schedule",
                "missing",
                "add schedule = \"0 */5 * * * *\" (cron with seconds) or every = \"5m\"",
            );
            None
        }
        (Some(text), None) => {
            match cron::Schedule::from_str(text) {
                Ok(s) => Some(Schedule::Cron(Box::new(s))),
                Err(err) => {
                    e.push("source.schedule", format!("\"{text}\" is not a cron expression ({err})"), "write six fields, seconds first: \"0 */5 * * * *\" runs every five minutes");
                    None
                }
            }
        }
        (None, Some(text)) => match parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) => Some(Schedule::Every(d)),
            Ok(_) => {
                e.push("source.every", "is below one second", "set e.g. \"5m\"");
                None
            }
            Err(problem) => {
                e.push("source.every", problem.to_string(), "");
                None
            }
        },
    }
}

fn duration(text: Option<&str>, key: &str, default: Duration, e: &mut Errors<'_>) -> Duration {
    match text.map(parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(problem)) => {
            e.push(key, problem.to_string(), "");
            default
        }
    }
}

fn endpoint(text: &str, allow_http: bool, key: &str, e: &mut Errors<'_>) -> Option<url::Url> {
    match url::Url::parse(text) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && allow_http) => Some(u),
        Ok(u) if u.scheme() == "http" => {
            e.push(key, format!("\"{text}\" is not https"), "use https://, or set allow_http = true in [source] (for loopback and tests only: credentials travel in clear)");
            None
        }
        Ok(_) | Err(_) => {
            e.push(
                key,
                format!("\"{text}\" is not an http(s) URL"),
                "write a full URL such as \"https://api.example.com/v1/items\"",
            );
            None
        }
    }
}

fn env_name(value: &Option<String>, key: &str, e: &mut Errors<'_>) -> Option<String> {
    match value.as_deref() {
        Some(name) if !name.is_empty() && !name.contains(['=', '\0']) => Some(name.to_string()),
        Some(name) => {
            e.push(
                key,
                format!("\"{name}\" is not an env var name"),
                "name the env var that holds the secret, e.g. \"CRM_TOKEN\"",
            );
            None
        }
        None => {
            e.push(
                key,
                "missing",
                "name the env var that holds the secret; secrets are never written in TOML",
            );
            None
        }
    }
}

fn auth(
    raw: &RawAuth,
    allow_http: bool,
    connections: bool,
    e: &mut Errors<'_>,
) -> Option<AuthSpec> {
    // A per-user secret: from the env var the key names, or in a
    // connections pipeline from each connection (the key must be absent).
    let user = |value: &Option<String>, key: &str, e: &mut Errors<'_>| {
        if !connections {
            return env_name(value, key, e);
        }
        if value.is_some() {
            let field = key
                .rsplit('.')
                .next()
                .unwrap_or(key)
                .trim_end_matches("_env");
            e.push(
                key,
                "a connections pipeline takes this secret from each connection",
                format!("remove {key}; each connection gives \"{field}\" in its credentials"),
            );
            return None;
        }
        Some(String::new())
    };
    match raw {
        RawAuth::Bearer(b) => Some(AuthSpec::Bearer {
            token_env: user(&b.token_env, "source.auth.token_env", e)?,
        }),
        RawAuth::Basic(b) => {
            let username = match (&b.username, &b.username_env) {
                (None, None) if connections => Some(Secret::Env(String::new())),
                (_, Some(_)) if connections => {
                    user(&b.username_env, "source.auth.username_env", e).map(Secret::Env)
                }
                (Some(u), None) => Some(Secret::Plain(u.clone())),
                (None, Some(_)) => {
                    env_name(&b.username_env, "source.auth.username_env", e).map(Secret::Env)
                }
                _ => {
                    e.push(
                        "source.auth.username",
                        "set exactly one of username and username_env",
                        "add username = \"…\" (or username_env = \"…\")",
                    );
                    None
                }
            };
            let password_env = user(&b.password_env, "source.auth.password_env", e);
            Some(AuthSpec::Basic {
                username: username?,
                password_env: password_env?,
            })
        }
        RawAuth::ApiKey(k) => {
            let key_env = user(&k.key_env, "source.auth.key_env", e);
            let place = match (&k.header, &k.query) {
                (Some(h), None)
                    if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_ok() =>
                {
                    Some(KeyPlace::Header(h.clone()))
                }
                (None, Some(q)) if !q.is_empty() => Some(KeyPlace::Query(q.clone())),
                _ => {
                    e.push(
                        "source.auth.header",
                        "set exactly one of header and query",
                        "add header = \"X-API-Key\" (or query = \"api_key\")",
                    );
                    None
                }
            };
            Some(AuthSpec::ApiKey {
                key_env: key_env?,
                place: place?,
            })
        }
        RawAuth::Oauth2(o) => {
            let token_url = match o.token_url.as_deref() {
                None => {
                    e.push(
                        "source.auth.token_url",
                        "missing",
                        "add token_url = \"https://…/oauth/token\"",
                    );
                    None
                }
                Some(text) => endpoint(text, allow_http, "source.auth.token_url", e),
            };
            let client_id_env = env_name(&o.client_id_env, "source.auth.client_id_env", e);
            let client_secret_env =
                env_name(&o.client_secret_env, "source.auth.client_secret_env", e);
            let refresh_token_env = match &o.refresh_token_env {
                None if connections => Some(String::new()),
                Some(_) if connections => {
                    user(&o.refresh_token_env, "source.auth.refresh_token_env", e)?;
                    None
                }
                None => None,
                Some(_) => Some(env_name(
                    &o.refresh_token_env,
                    "source.auth.refresh_token_env",
                    e,
                )?),
            };
            Some(AuthSpec::Oauth2 {
                token_url: token_url?,
                client_id_env: client_id_env?,
                client_secret_env: client_secret_env?,
                refresh_token_env,
                scopes: o.scopes.clone().unwrap_or_default(),
            })
        }
        RawAuth::Oauth1(o) => {
            let consumer_key_env = env_name(&o.consumer_key_env, "source.auth.consumer_key_env", e);
            let consumer_secret_env =
                env_name(&o.consumer_secret_env, "source.auth.consumer_secret_env", e);
            let token_env = user(&o.token_env, "source.auth.token_env", e);
            let token_secret_env = user(&o.token_secret_env, "source.auth.token_secret_env", e);
            let signature_method = match o.signature_method.as_deref() {
                None => Some(SignatureMethod::HmacSha256),
                Some(m) if m.eq_ignore_ascii_case("HMAC-SHA256") => {
                    Some(SignatureMethod::HmacSha256)
                }
                Some(m) if m.eq_ignore_ascii_case("HMAC-SHA1") => Some(SignatureMethod::HmacSha1),
                Some(other) => {
                    e.push(
                        "source.auth.signature_method",
                        format!("unknown signature method \"{other}\""),
                        "use \"HMAC-SHA256\" (NetSuite) or \"HMAC-SHA1\" (Magento)",
                    );
                    None
                }
            };
            if o.realm.as_deref().is_some_and(|r| r.trim().is_empty()) {
                e.push(
                    "source.auth.realm",
                    "is empty",
                    "set it to the account id (NetSuite: e.g. \"1234567_SB1\") or remove it",
                );
            }
            Some(AuthSpec::Oauth1 {
                consumer_key_env: consumer_key_env?,
                consumer_secret_env: consumer_secret_env?,
                token_env: token_env?,
                token_secret_env: token_secret_env?,
                realm: o.realm.clone().filter(|r| !r.trim().is_empty()),
                signature_method: signature_method?,
            })
        }
    }
}

fn cursor(raw: &RawCursor, uses_cursor: bool, e: &mut Errors<'_>) -> Option<CursorSpec> {
    let field = match raw.field.as_deref() {
        None | Some("") => {
            e.push(
                "source.cursor.field",
                "missing",
                "name the record field that grows with each change, e.g. field = \"updated_at\"",
            );
            None
        }
        Some(f) if f.starts_with('/') => Some(f.to_string()),
        Some(f) => Some(format!("/{}", f.replace('~', "~0").replace('/', "~1"))),
    };
    if raw.param.is_none() && !uses_cursor {
        e.push("source.cursor.param", "the lower bound is never sent", "add param = \"updated_after\" (the query parameter the API filters on), or use \"{cursor}\" in query or body");
    }
    let start = match &raw.start {
        None => None,
        Some(toml::Value::String(s)) => Some(serde_json::Value::from(s.clone())),
        Some(toml::Value::Integer(i)) => Some(serde_json::Value::from(*i)),
        Some(toml::Value::Datetime(d)) => Some(serde_json::Value::from(d.to_string())),
        Some(other) => {
            e.push(
                "source.cursor.start",
                format!("a {} cannot be a cursor", other.type_str()),
                "write a string such as \"2024-01-01T00:00:00Z\" or an integer",
            );
            None
        }
    };
    let lookback = duration(
        raw.lookback.as_deref(),
        "source.cursor.lookback",
        Duration::ZERO,
        e,
    );
    Some(CursorSpec {
        field: field?,
        param: raw.param.clone(),
        start,
        lookback,
    })
}

fn paginate(raw: &RawPaginate, uses_token: bool, e: &mut Errors<'_>) -> Option<Paginate> {
    let kind = raw.kind.as_deref().unwrap_or("none");
    let allowed: &[&str] = match kind {
        "none" => &[],
        "link" => &["links"],
        "cursor" => &["next", "param", "has_more"],
        "offset" => &["limit", "limit_param", "offset_param", "has_more", "total"],
        "page" => &[
            "param",
            "start",
            "limit",
            "limit_param",
            "has_more",
            "total",
        ],
        other => {
            e.push(
                "source.paginate.type",
                format!("unknown pagination \"{other}\""),
                "use \"cursor\", \"link\", \"offset\", \"page\" or \"none\"",
            );
            return None;
        }
    };
    let given = [
        ("next", raw.next.is_some()),
        ("param", raw.param.is_some()),
        ("limit", raw.limit.is_some()),
        ("limit_param", raw.limit_param.is_some()),
        ("offset_param", raw.offset_param.is_some()),
        ("start", raw.start.is_some()),
        ("has_more", raw.has_more.is_some()),
        ("total", raw.total.is_some()),
        ("links", raw.links.is_some()),
    ];
    let start = e.list.len();
    for (key, set) in given {
        if set && !allowed.contains(&key) {
            e.push(
                format!("source.paginate.{key}"),
                format!("is not used by type = \"{kind}\""),
                "remove it, or pick the pagination type it belongs to",
            );
        }
    }
    if raw.limit == Some(0) {
        e.push(
            "source.paginate.limit",
            "must be above zero",
            "set the page size the API allows, e.g. 100",
        );
    }
    for (key, value, example) in [
        ("has_more", &raw.has_more, "has_more = \"/hasMore\""),
        ("total", &raw.total, "total = \"/total_count\""),
        ("links", &raw.links, "links = \"/links\""),
    ] {
        if value.as_deref().is_some_and(|p| !p.starts_with('/')) {
            e.push(
                format!("source.paginate.{key}"),
                "is not a JSON pointer",
                format!("start it with /, e.g. {example}"),
            );
        }
    }
    if kind == "page" && raw.total.is_some() && raw.limit.is_none() {
        e.push(
            "source.paginate.total",
            "needs the page size to count pages against the total",
            "add limit = 100 and limit_param = \"…\" (the page size the API is asked for)",
        );
    }
    let ends = Ends {
        has_more: raw.has_more.clone(),
        total: raw.total.clone(),
    };
    let paginate = match kind {
        "none" => Paginate::None,
        "link" => Paginate::Link {
            links: raw.links.clone(),
        },
        "cursor" => {
            let next = match raw.next.as_deref() {
                Some(p) if p.starts_with('/') => p.to_string(),
                _ => {
                    e.push(
                        "source.paginate.next",
                        "missing or not a JSON pointer",
                        "point at the next-page token, e.g. next = \"/paging/next/after\"",
                    );
                    return None;
                }
            };
            if raw.param.is_none() && !uses_token {
                e.push(
                    "source.paginate.param",
                    "the page token is never sent",
                    "add param = \"after\", or use \"{page_token}\" in query or body",
                );
            }
            Paginate::Cursor {
                next,
                param: raw.param.clone(),
                ends,
            }
        }
        "offset" => {
            let Some(limit) = raw.limit else {
                e.push(
                    "source.paginate.limit",
                    "missing",
                    "add limit = 100 (records per page; a shorter page ends the run)",
                );
                return None;
            };
            Paginate::Offset {
                limit,
                limit_param: raw.limit_param.clone().unwrap_or_else(|| "limit".into()),
                offset_param: raw.offset_param.clone().unwrap_or_else(|| "offset".into()),
                ends,
            }
        }
        _ => Paginate::Page {
            param: raw.param.clone().unwrap_or_else(|| "page".into()),
            start: raw.start.unwrap_or(1),
            limit: raw.limit.map(|limit| PageLimit {
                limit,
                limit_param: raw.limit_param.clone().unwrap_or_else(|| "per_page".into()),
            }),
            ends,
        },
    };
    (e.list.len() == start).then_some(paginate)
}

/// A TOML value as JSON; datetimes become their RFC 3339 text.
fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}
