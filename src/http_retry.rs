//! One retry policy for every outbound HTTP call (the poll client, the HTTPS
//! sink): what an answer means, how long to wait, and how to describe a
//! failure without leaking a URL.
//!
//! | answer | [`Class`] |
//! |---|---|
//! | 2xx | `Done` |
//! | 401 | `Unauthorized` (a caller with a renewable token retries once, else permanent) |
//! | 408, 429, 5xx | `Retry`, after `Retry-After` when the answer gives one |
//! | 410 | `Gone`: the other side says this will never work again |
//! | 3xx | `Redirect`: never followed, so credentials and signed bodies stay put |
//! | other 4xx | `Permanent` |
//!
//! A transport error (timeout, refused or reset connection) is always worth
//! a retry; its text comes from [`describe`].

use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;

/// What one HTTP answer means for the call that got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A 2xx.
    Done,
    /// Worth another try, after the server's `Retry-After` if it gave one.
    Retry {
        /// The wait the server asked for.
        after: Option<Duration>,
    },
    /// A 401: credentials were refused.
    Unauthorized,
    /// A 410: the endpoint is gone for good.
    Gone,
    /// A 3xx, not followed; where it pointed.
    Redirect {
        /// The `Location` header, if any.
        location: Option<String>,
    },
    /// Any other 4xx: the request itself is refused; retrying cannot help.
    Permanent,
}

/// Classifies an answer by its status and headers.
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Class {
    if status.is_success() {
        Class::Done
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Class::Retry {
            after: retry_after(headers),
        }
    } else if status == StatusCode::UNAUTHORIZED {
        Class::Unauthorized
    } else if status == StatusCode::GONE {
        Class::Gone
    } else if status.is_redirection() {
        Class::Redirect {
            location: headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    } else {
        Class::Permanent
    }
}

/// Full jitter: a wait drawn uniformly from zero to `base * 2^tries` (at most
/// `cap`), so clients failing together do not retry together.
pub fn full_jitter(tries: u32, base: Duration, cap: Duration) -> Duration {
    let step = base.saturating_mul(1 << tries.min(16)).min(cap);
    step.mul_f64(rand::rng().random::<f64>())
}

/// `Retry-After` as seconds or an HTTP date (a past date is zero).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now());
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// How much of a body an error message quotes: enough for a provider's error
/// code after its prose (NetSuite's `o:errorCode` follows ~250 bytes of it).
pub const EXCERPT_BYTES: usize = 600;

/// The start of a body, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_BYTES)]);
    let text = text.trim();
    if text.is_empty() {
        "empty body".into()
    } else {
        text.to_string()
    }
}

/// A reqwest error with its chain of causes, without its URL: a query
/// string may carry an API key, and these texts reach log lines.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn every_status_class_in_one_table() {
        let none = HeaderMap::new();
        let mut wait = HeaderMap::new();
        wait.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let mut moved = HeaderMap::new();
        moved.insert(
            LOCATION,
            HeaderValue::from_static("https://elsewhere.example/x"),
        );
        let retry = |after| Class::Retry { after };
        let table: [(u16, &HeaderMap, Class); 14] = [
            (200, &none, Class::Done),
            (202, &none, Class::Done),
            (204, &none, Class::Done),
            (408, &none, retry(None)),
            (429, &wait, retry(Some(Duration::from_secs(7)))),
            (500, &none, retry(None)),
            (503, &wait, retry(Some(Duration::from_secs(7)))),
            (504, &none, retry(None)),
            (401, &none, Class::Unauthorized),
            (410, &none, Class::Gone),
            (
                307,
                &moved,
                Class::Redirect {
                    location: Some("https://elsewhere.example/x".into()),
                },
            ),
            (301, &none, Class::Redirect { location: None }),
            (400, &none, Class::Permanent),
            (404, &wait, Class::Permanent),
        ];
        for (status, headers, want) in table {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(classify(status, headers), want, "{status}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_jitter_stays_under_its_step() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 12 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a past date");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        for tries in 0..20 {
            let wait = full_jitter(tries, Duration::from_millis(100), Duration::from_secs(5));
            assert!(wait <= Duration::from_millis(100 << tries.min(6)).min(Duration::from_secs(5)));
        }
        assert_eq!(excerpt(b"  "), "empty body");
        assert_eq!(excerpt(&[b'a'; 1000]).len(), EXCERPT_BYTES);
    }
}
