//! One page: the request a page reference turns into, the records a response
//! holds, the next page it points at, and cursor values (order, lookback).

use std::cmp::Ordering;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::HeaderMap;
use serde_json::value::RawValue;
use serde_json::Value;

use super::state::PageRef;
use crate::config::source::poll::{CURSOR, PAGE_TOKEN};
use crate::config::spec::{Ends, Paginate, PollSpec};
use crate::encode::pointer;

/// The keys a run has taken so far, each the SipHash of a record's primary
/// key values: already uniform, so the set uses them as its hashes instead
/// of hashing them again (a backfill inserts one per record).
pub type Seen = HashSet<u64, BuildHasherDefault<KeyHash>>;

/// The hasher of [`Seen`]: a key is its own hash.
#[derive(Default)]
pub struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed (`write_u64`); anything else still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// A request, before authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The URL, query included.
    pub url: url::Url,
    /// JSON body of a POST.
    pub body: Option<Vec<u8>>,
}

/// The request that fetches page `at` of a run whose lower bound is `lower`.
pub fn request(spec: &PollSpec, at: &PageRef, lower: Option<&Value>) -> Request {
    let cursor = lower.map(text);
    let token = match at {
        PageRef::Token(t) => Some(t.clone()),
        _ => None,
    };
    let values =
        |template: &str| -> Option<String> { fill(template, cursor.as_deref(), token.as_deref()) };
    // A next link is the whole request: it carries its own query (Shopify
    // rejects other parameters with page_info).
    if let PageRef::Url(next) = at {
        if let Ok(url) = spec.url.join(next) {
            return Request {
                url,
                body: spec
                    .body
                    .as_ref()
                    .map(|b| fill_json(b, lower, &values).to_string().into_bytes()),
            };
        }
    }
    let mut url = spec.url.clone();
    {
        let mut query = url.query_pairs_mut();
        for (name, template) in &spec.query {
            if let Some(value) = values(template) {
                query.append_pair(name, &value);
            }
        }
        if let (Some(c), Some(lower)) = (&spec.cursor, &cursor) {
            if let Some(param) = &c.param {
                query.append_pair(param, lower);
            }
        }
        match (&spec.paginate, at) {
            (
                Paginate::Cursor {
                    param: Some(param), ..
                },
                PageRef::Token(t),
            ) => {
                query.append_pair(param, t);
            }
            (
                Paginate::Offset {
                    limit,
                    limit_param,
                    offset_param,
                    ..
                },
                _,
            ) => {
                let offset = match at {
                    PageRef::Offset(o) => *o,
                    _ => 0,
                };
                query.append_pair(limit_param, &limit.to_string());
                query.append_pair(offset_param, &offset.to_string());
            }
            (
                Paginate::Page {
                    param,
                    start,
                    limit,
                    ..
                },
                _,
            ) => {
                let page = match at {
                    PageRef::Page(p) => *p,
                    _ => *start,
                };
                query.append_pair(param, &page.to_string());
                if let Some(limit) = limit {
                    query.append_pair(&limit.limit_param, &limit.limit.to_string());
                }
            }
            _ => {}
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Request {
        url,
        body: spec
            .body
            .as_ref()
            .map(|b| fill_json(b, lower, &values).to_string().into_bytes()),
    }
}

/// A template with its placeholders filled; `None` when the template is
/// exactly one placeholder that has no value (the parameter is left out).
fn fill(template: &str, cursor: Option<&str>, token: Option<&str>) -> Option<String> {
    if (template == CURSOR && cursor.is_none()) || (template == PAGE_TOKEN && token.is_none()) {
        return None;
    }
    Some(
        template
            .replace(CURSOR, cursor.unwrap_or(""))
            .replace(PAGE_TOKEN, token.unwrap_or("")),
    )
}

/// A JSON body template with every string filled; keys whose value is a
/// placeholder without a value are dropped. A string that is exactly
/// `{cursor}` takes the cursor's own JSON type (a number stays a number).
fn fill_json(
    template: &Value,
    cursor: Option<&Value>,
    values: &dyn Fn(&str) -> Option<String>,
) -> Value {
    match template {
        Value::String(s) if s == CURSOR && cursor.is_some() => cursor.cloned().unwrap_or_default(),
        Value::String(s) => values(s).map(Value::String).unwrap_or(Value::Null),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| fill_json(v, cursor, values)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !matches!(v, Value::String(s) if values(s).is_none()))
                .map(|(k, v)| (k.clone(), fill_json(v, cursor, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Why a response cannot be paged through.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// A next link to another origin.
    #[error("the next link points at {0}, another origin than source.url; tributary does not send the source's credentials there")]
    OtherOrigin(String),
    /// A next link that is not a URL.
    #[error("the next link \"{link}\" is not a URL ({source})")]
    NotUrl {
        /// The link as given.
        link: String,
        /// What the URL parser said.
        source: url::ParseError,
    },
    /// The next page is the page just fetched.
    #[error("the response points at the page just fetched as the next one; stopping so the run does not loop (check source.paginate)")]
    Loop,
    /// The body is not JSON.
    #[error("the response is not JSON ({source}); it starts with {start:?}")]
    NotJson {
        /// What serde said.
        source: serde_json::Error,
        /// The body's first 80 bytes.
        start: String,
    },
    /// Nothing at `records`.
    #[error("the response has nothing at records = \"{0}\"")]
    NoRecords(String),
    /// `records` is not an array.
    #[error("records = \"{0}\" is not an array in the response; point it at the list of records")]
    NotArray(String),
    /// The records array is not JSON.
    #[error("the response is not JSON: {0}")]
    BadArray(#[source] serde_json::Error),
}

/// Checks that a next link stays on the origin (scheme, host, port) of
/// `source.url`: the request carries the source's credentials.
pub fn same_origin(base: &url::Url, link: &str) -> Result<(), PageError> {
    match base.join(link) {
        Ok(next) if next.origin() == base.origin() => Ok(()),
        Ok(next) => Err(PageError::OtherOrigin(next.origin().ascii_serialization())),
        Err(source) => Err(PageError::NotUrl {
            link: link.to_string(),
            source,
        }),
    }
}

/// A cursor value as a query parameter carries it.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The records of one response, each as its original bytes.
pub struct Records {
    /// The records, in response order, duplicates removed.
    pub items: Vec<Bytes>,
    /// How many the response held (before duplicates were removed).
    pub fetched: usize,
    /// The largest cursor value among them.
    pub max_cursor: Option<Value>,
}

/// What a run needs to read its responses.
pub struct Reader {
    /// Tokens of `records`.
    pub records: Vec<String>,
    /// Tokens of `cursor.field`.
    pub cursor: Option<Vec<String>>,
    /// Tokens of each primary-key column (under `record_path`).
    pub primary_key: Vec<Vec<String>>,
    /// Tokens of the next-page token (`paginate.type = "cursor"`).
    pub next: Option<Vec<String>>,
    /// Tokens of `paginate.has_more`, `paginate.total` and `paginate.links`.
    pub has_more: Option<Vec<String>>,
    /// See `has_more`.
    pub total: Option<Vec<String>>,
    /// See `has_more`.
    pub links: Option<Vec<String>>,
}

impl Reader {
    /// The reader of `paginate`'s top-level values (records and cursor aside).
    pub fn signals_of(paginate: &Paginate) -> [Option<Vec<String>>; 4] {
        let tokens = |p: &Option<String>| p.as_deref().map(pointer::tokens);
        match paginate {
            Paginate::None => [None, None, None, None],
            Paginate::Cursor { next, ends, .. } => [
                Some(pointer::tokens(next)),
                tokens(&ends.has_more),
                None,
                None,
            ],
            Paginate::Link { links } => [None, None, None, tokens(links)],
            Paginate::Offset { ends, .. } | Paginate::Page { ends, .. } => {
                [None, tokens(&ends.has_more), tokens(&ends.total), None]
            }
        }
    }
}

/// What a response says about the next page, each as the JSON bytes at its
/// pointer (absent when the pointer is unset or finds nothing).
#[derive(Debug, Default, Clone, Copy)]
pub struct Signals<'a> {
    /// At `paginate.next`.
    pub token: Option<&'a [u8]>,
    /// At `paginate.has_more`.
    pub has_more: Option<&'a [u8]>,
    /// At `paginate.total`.
    pub total: Option<&'a [u8]>,
    /// At `paginate.links`.
    pub links: Option<&'a [u8]>,
}

impl Reader {
    /// The records array of a response, each element as its bytes, and what
    /// the response says about the next page. The response's top level is
    /// read once for all of them.
    pub fn list<'a>(&self, body: &'a [u8]) -> Result<(Vec<&'a RawValue>, Signals<'a>), PageError> {
        let optional = [&self.next, &self.has_more, &self.total, &self.links];
        let signals_at: Vec<Vec<String>> = optional.iter().filter_map(|p| (*p).clone()).collect();
        // The signals in `found`, in `optional`'s order.
        let signals = |found: &[Option<&'a [u8]>]| {
            let mut at = 0;
            let mut signal = |p: &Option<Vec<String>>| {
                p.as_ref().and_then(|_| {
                    at += 1;
                    found[at - 1]
                })
            };
            Signals {
                token: signal(&self.next),
                has_more: signal(&self.has_more),
                total: signal(&self.total),
                links: signal(&self.links),
            }
        };
        // Records under a top-level key (the usual case): split as the top
        // level is read, in one pass over the body.
        if let [key] = self.records.as_slice() {
            if let Some((list, found)) = pointer::values_and_list(body, key, &signals_at) {
                return Ok((list, signals(&found)));
            }
        }
        let mut pointers = vec![self.records.clone()];
        pointers.extend(signals_at);
        let found = pointer::values(body, &pointers);
        let signals = signals(&found[1..]);
        let array = match found[0] {
            Some(bytes) => bytes,
            // Say precisely why: invalid JSON, or nothing at the pointer.
            None => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(source) => {
                    let start = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
                    return Err(PageError::NotJson { source, start });
                }
                _ => return Err(PageError::NoRecords(join(&self.records))),
            },
        };
        if pointer::first_byte(array) != Some(b'[') {
            return Err(PageError::NotArray(join(&self.records)));
        }
        let list = serde_json::from_slice(array).map_err(PageError::BadArray)?;
        Ok((list, signals))
    }

    /// The records of `list` (elements of `body`); keys already in `seen` are
    /// skipped (and new ones added). Each record's top level is read once.
    pub fn records(&self, body: &Bytes, list: &[&RawValue], seen: &mut Seen) -> Records {
        let mut pointers = self.primary_key.clone();
        pointers.extend(self.cursor.clone());
        let mut out = Records {
            items: Vec::with_capacity(list.len()),
            fetched: list.len(),
            max_cursor: None,
        };
        let mut newest = Newest::default();
        seen.reserve(list.len());
        for item in list {
            let bytes = item.get().as_bytes();
            let found = if pointers.is_empty() {
                Vec::new()
            } else {
                pointer::values(bytes, &pointers)
            };
            let keys = &found[..self.primary_key.len().min(found.len())];
            // A record without its key is kept (the sink makes it a dead
            // letter if the schema requires the key), never merged with others.
            if !keys.is_empty() && keys.iter().all(|k| k.is_some_and(|k| k != b"null")) {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                for key in keys.iter().flatten() {
                    key.len().hash(&mut hasher);
                    key.hash(&mut hasher);
                }
                if !seen.insert(hasher.finish()) {
                    continue;
                }
            }
            if self.cursor.is_some() {
                if let Some(raw) = found.last().copied().flatten() {
                    newest.offer(raw);
                }
            }
            out.items.push(body.slice_ref(bytes));
        }
        out.max_cursor = newest.value();
        out
    }
}

/// The newest cursor value of a page. Values are compared as [`compare`]
/// does; two timestamps written `"YYYY-MM-DDTHH:MM:SSZ"` (the usual form) are
/// compared by their bytes, which orders them the same, without parsing.
#[derive(Default)]
struct Newest<'a> {
    raw: Option<&'a [u8]>,
    /// `raw` parsed, with its instant if it is a timestamp; filled when needed.
    parsed: Option<(Value, Option<DateTime<Utc>>)>,
}

impl<'a> Newest<'a> {
    fn offer(&mut self, raw: &'a [u8]) {
        if let Some(current) = self.raw {
            if utc_seconds(current) && utc_seconds(raw) {
                if raw > current {
                    (self.raw, self.parsed) = (Some(raw), None);
                }
                return;
            }
        }
        let Some(value) = serde_json::from_slice::<Value>(raw)
            .ok()
            .filter(|v| !v.is_null())
        else {
            return;
        };
        let instant = value.as_str().and_then(timestamp);
        let newer = match self.current() {
            None => true,
            Some((_, Some(t))) if instant.is_some() => instant.as_ref() > Some(t),
            Some((current, _)) => compare(&value, current) == Ordering::Greater,
        };
        if newer {
            (self.raw, self.parsed) = (Some(raw), Some((value, instant)));
        }
    }

    fn current(&mut self) -> Option<&(Value, Option<DateTime<Utc>>)> {
        if self.parsed.is_none() {
            let value = serde_json::from_slice::<Value>(self.raw?).ok()?;
            let instant = value.as_str().and_then(timestamp);
            self.parsed = Some((value, instant));
        }
        self.parsed.as_ref()
    }

    fn value(mut self) -> Option<Value> {
        self.current().map(|(v, _)| v.clone())
    }
}

/// Whether `raw` is a JSON string `"YYYY-MM-DDTHH:MM:SSZ"`.
fn utc_seconds(raw: &[u8]) -> bool {
    const PATTERN: &[u8; 22] = b"\"0000-00-00T00:00:00Z\"";
    raw.len() == PATTERN.len()
        && raw.iter().zip(PATTERN).all(|(b, p)| {
            if *p == b'0' {
                b.is_ascii_digit()
            } else {
                b == p
            }
        })
}

fn join(tokens: &[String]) -> String {
    tokens.iter().map(|t| format!("/{t}")).collect()
}

/// The next page after `at`, from the response (`None`: the run is done):
/// `signals` is what the response holds at the paginator's pointers (see
/// [`Reader::list`]).
pub fn next(
    paginate: &Paginate,
    at: &PageRef,
    signals: &Signals<'_>,
    headers: &HeaderMap,
    fetched: usize,
) -> Option<PageRef> {
    // A flag that is not `true` ends the run, whatever else the page says.
    let ended = |ends: &Ends| ends.has_more.is_some() && signals.has_more != Some(b"true");
    let total = || {
        serde_json::from_slice::<Value>(signals.total?)
            .ok()
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
    };
    match paginate {
        Paginate::None => None,
        Paginate::Cursor { ends, .. } if ended(ends) => None,
        Paginate::Cursor { .. } => match serde_json::from_slice::<Value>(signals.token?).ok()? {
            Value::String(s) if !s.is_empty() => Some(PageRef::Token(s)),
            Value::Number(n) => Some(PageRef::Token(n.to_string())),
            _ => None,
        },
        Paginate::Link { links: Some(_) } => {
            let links: Vec<Value> = serde_json::from_slice(signals.links?).ok()?;
            links.iter().find_map(|link| {
                let rel = link.get("rel")?.as_str()?;
                let is_next = rel
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"));
                let href = link.get("href")?.as_str()?;
                (is_next && !href.is_empty()).then(|| PageRef::Url(href.to_string()))
            })
        }
        Paginate::Link { links: None } => headers
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(link_next)
            .map(PageRef::Url),
        Paginate::Offset { ends, .. } | Paginate::Page { ends, .. } if ended(ends) => None,
        Paginate::Offset { limit, ends, .. } => {
            let offset = match at {
                PageRef::Offset(o) => *o,
                _ => 0,
            };
            let reached = offset + fetched as u64;
            let more = fetched as u64 >= *limit
                && !(ends.total.is_some() && total().is_none_or(|t| reached >= t));
            more.then_some(PageRef::Offset(reached))
        }
        Paginate::Page {
            start, limit, ends, ..
        } => {
            let page = match at {
                PageRef::Page(p) => *p,
                _ => *start,
            };
            let short = limit.as_ref().is_some_and(|l| (fetched as u64) < l.limit);
            // Magento answers a page past the last with the last page again:
            // the total is what ends its runs.
            let counted = match (limit, &ends.total) {
                (Some(l), Some(_)) => {
                    total().is_none_or(|t| (page + 1 - start).saturating_mul(l.limit) >= t)
                }
                _ => false,
            };
            (fetched > 0 && !short && !counted).then(|| PageRef::Page(page + 1))
        }
    }
}

/// The target of `rel="next"` in one `Link` header value (RFC 8288).
pub fn link_next(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let params_end = rest[close..].find('<').map_or(rest.len(), |i| close + i);
        let params = rest[close + 1..params_end].trim_end().trim_end_matches(',');
        let is_next = params.split(';').any(|p| {
            let Some((name, value)) = p.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = &rest[params_end..];
    }
    None
}

/// The larger of two cursor values (see [`compare`]).
pub fn max(current: Option<Value>, candidate: Value) -> Value {
    match current {
        Some(c) if compare(&c, &candidate) != Ordering::Less => c,
        _ => candidate,
    }
}

/// Orders cursor values: numbers by value, RFC 3339 timestamps by instant
/// (whatever their offsets), other strings by bytes.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => match (timestamp(x), timestamp(y)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x.cmp(y),
        },
        _ => text(a).cmp(&text(b)),
    }
}

fn timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// `YYYY-MM-DD HH:MM:SS`, the text of a MySQL `DATETIME` (UTC in Magento).
const SQL_DATETIME: &str = "%Y-%m-%d %H:%M:%S";

/// `value` moved back by `lookback`: timestamps (RFC 3339, or
/// `YYYY-MM-DD HH:MM:SS` kept in that form) by the duration, integers
/// as epoch seconds (or milliseconds, above 10^11); anything else unchanged.
pub fn minus(value: &Value, lookback: Duration) -> Value {
    if lookback.is_zero() {
        return value.clone();
    }
    match value {
        Value::String(s) => {
            let back = chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::zero());
            if let Some(t) = timestamp(s) {
                return Value::String((t - back).to_rfc3339_opts(SecondsFormat::AutoSi, true));
            }
            // MySQL's form, as Magento writes `updated_at`: kept in that form.
            match chrono::NaiveDateTime::parse_from_str(s, SQL_DATETIME) {
                Ok(t) => Value::String((t - back).format(SQL_DATETIME).to_string()),
                Err(_) => value.clone(),
            }
        }
        Value::Number(n) => match n.as_i64() {
            Some(i) if i.abs() >= 100_000_000_000 => Value::from(i - lookback.as_millis() as i64),
            Some(i) => Value::from(i - lookback.as_secs() as i64),
            None => value.clone(),
        },
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests;
