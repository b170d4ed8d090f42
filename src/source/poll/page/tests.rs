use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, LINK};
use serde_json::json;

use super::*;
use crate::config::spec::{AuthSpec, CursorSpec, Schedule};

fn spec(paginate: Paginate) -> PollSpec {
    PollSpec {
        schedule: Schedule::Every(Duration::from_secs(60)),
        jitter: Duration::ZERO,
        url: url::Url::parse("https://api.example.com/v1/items?fixed=1").unwrap(),
        post: false,
        body: None,
        headers: vec![],
        query: vec![("sort".into(), "updated_at".into())],
        timeout: Duration::from_secs(30),
        max_response: 1 << 20,
        max_retries: 5,
        max_pages: 100,
        auth: AuthSpec::None,
        records: "/items".into(),
        cursor: Some(CursorSpec {
            field: "/updated_at".into(),
            param: Some("updated_after".into()),
            start: None,
            lookback: Duration::ZERO,
        }),
        paginate,
    }
}

#[test]
fn requests_carry_the_cursor_and_the_page() {
    let lower = json!("2024-01-01T00:00:00Z");
    let cursor = spec(Paginate::Cursor {
        next: "/paging/next/after".into(),
        param: Some("after".into()),
    });
    assert_eq!(
        request(&cursor, &PageRef::First, Some(&lower)).url.as_str(),
        "https://api.example.com/v1/items?fixed=1&sort=updated_at&updated_after=2024-01-01T00%3A00%3A00Z"
    );
    assert_eq!(
        request(&cursor, &PageRef::Token("abc".into()), None)
            .url
            .as_str(),
        "https://api.example.com/v1/items?fixed=1&sort=updated_at&after=abc"
    );
    let offset = spec(Paginate::Offset {
        limit: 50,
        limit_param: "limit".into(),
        offset_param: "offset".into(),
    });
    assert!(request(&offset, &PageRef::Offset(100), None)
        .url
        .as_str()
        .ends_with("limit=50&offset=100"));
    let page = spec(Paginate::Page {
        param: "page".into(),
        start: 1,
        limit: Some(crate::config::spec::PageLimit {
            limit: 20,
            limit_param: "per_page".into(),
        }),
    });
    assert!(request(&page, &PageRef::First, None)
        .url
        .as_str()
        .ends_with("page=1&per_page=20"));
    // A next link replaces the whole URL, relative links resolve against the endpoint.
    let link = spec(Paginate::Link);
    assert_eq!(
        request(
            &link,
            &PageRef::Url("/v1/items?page_info=xyz".into()),
            Some(&lower)
        )
        .url
        .as_str(),
        "https://api.example.com/v1/items?page_info=xyz"
    );
}

#[test]
fn templates_fill_placeholders_and_drop_empty_ones() {
    let mut s = spec(Paginate::Cursor {
        next: "/next".into(),
        param: None,
    });
    s.cursor.as_mut().unwrap().param = None;
    s.query = vec![
        ("q".into(), "updated>{cursor}".into()),
        ("after".into(), "{page_token}".into()),
    ];
    s.post = true;
    s.body = Some(json!({"after": "{page_token}", "filter": {"gte": "{cursor}"}, "limit": 100}));
    let first = request(&s, &PageRef::First, Some(&json!(5)));
    assert!(
        first.url.as_str().ends_with("q=updated%3E5"),
        "{}",
        first.url
    );
    let body: Value = serde_json::from_slice(&first.body.unwrap()).unwrap();
    // Exactly "{cursor}" keeps the cursor's type; inside a longer string it is text.
    assert_eq!(body, json!({"filter": {"gte": 5}, "limit": 100}));
    let second = request(&s, &PageRef::Token("t2".into()), Some(&json!(5)));
    assert!(second.url.as_str().ends_with("q=updated%3E5&after=t2"));
    let body: Value = serde_json::from_slice(&second.body.unwrap()).unwrap();
    assert_eq!(body["after"], "t2");
}

#[test]
fn next_pages_for_every_style() {
    let none = HeaderMap::new();
    // `Reader::list` finds the token at `next` in the same pass as the records.
    let reader = Reader {
        records: pointer::tokens("/results"),
        cursor: None,
        primary_key: vec![],
        next: Some(pointer::tokens("/paging/next/after")),
    };
    let token = |body: &'static [u8]| reader.list(body).ok().and_then(|(_, t)| t);
    let cursor = Paginate::Cursor {
        next: "/paging/next/after".into(),
        param: Some("after".into()),
    };
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            token(br#"{"results":[1],"paging":{"next":{"after":"42"}}}"#),
            &none,
            10
        ),
        Some(PageRef::Token("42".into()))
    );
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            token(br#"{"paging":{"next":{"after":7}},"results":[]}"#),
            &none,
            10
        ),
        Some(PageRef::Token("7".into()))
    );
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            token(br#"{"results":[]}"#),
            &none,
            0
        ),
        None
    );
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            token(br#"{"results":[],"paging":{"next":{"after":""}}}"#),
            &none,
            0
        ),
        None
    );

    let mut links = HeaderMap::new();
    links.insert(
        LINK,
        HeaderValue::from_static(r#"<https://s.example/p?page_info=a>; rel="previous", <https://s.example/p?page_info=b>; rel="next""#),
    );
    assert_eq!(
        next(&Paginate::Link, &PageRef::First, None, &links, 5),
        Some(PageRef::Url("https://s.example/p?page_info=b".into()))
    );
    assert_eq!(next(&Paginate::Link, &PageRef::First, None, &none, 5), None);

    let offset = Paginate::Offset {
        limit: 10,
        limit_param: "limit".into(),
        offset_param: "offset".into(),
    };
    assert_eq!(
        next(&offset, &PageRef::Offset(20), None, &none, 10),
        Some(PageRef::Offset(30))
    );
    assert_eq!(next(&offset, &PageRef::Offset(20), None, &none, 9), None);

    let page = Paginate::Page {
        param: "page".into(),
        start: 1,
        limit: None,
    };
    assert_eq!(
        next(&page, &PageRef::First, None, &none, 3),
        Some(PageRef::Page(2))
    );
    assert_eq!(next(&page, &PageRef::Page(4), None, &none, 0), None);
    assert_eq!(next(&Paginate::None, &PageRef::First, None, &none, 3), None);
}

#[test]
fn link_headers_as_github_and_shopify_send_them() {
    assert_eq!(
        link_next(
            r#"<https://api.github.com/repositories/1/issues?page=2>; rel="next", <https://api.github.com/repositories/1/issues?page=5>; rel="last""#
        ),
        Some("https://api.github.com/repositories/1/issues?page=2".into())
    );
    assert_eq!(
        link_next(r#"<https://x/a>; rel="prev next""#),
        Some("https://x/a".into())
    );
    assert_eq!(
        link_next(r#"<https://x/a>; rel=next; title="n""#),
        Some("https://x/a".into())
    );
    assert_eq!(link_next(r#"<https://x/a>; rel="last""#), None);
    assert_eq!(link_next("garbage"), None);
}

#[test]
fn records_are_the_original_bytes_deduplicated_with_the_largest_cursor() {
    let reader = Reader {
        records: pointer::tokens("/items"),
        cursor: Some(pointer::tokens("/updated_at")),
        primary_key: vec![pointer::tokens("/id")],
        next: None,
    };
    let body = Bytes::from_static(
        br#"{"items": [{"id": 1, "updated_at": "2024-01-02T00:00:00+02:00"}, {"id":2,"updated_at":"2024-01-01T23:00:00Z"}, {"id": 1, "updated_at": "x"}]}"#,
    );
    let mut seen = HashSet::new();
    let (list, _) = reader.list(&body).unwrap();
    let records = reader.records(&body, &list, &mut seen);
    assert_eq!(records.fetched, 3);
    assert_eq!(records.items.len(), 2);
    assert_eq!(
        &records.items[1][..],
        br#"{"id":2,"updated_at":"2024-01-01T23:00:00Z"}"#
    );
    // 23:00Z is later than 00:00+02:00 (= 22:00Z): instants, not strings, are compared.
    assert_eq!(records.max_cursor, Some(json!("2024-01-01T23:00:00Z")));
    // The usual form is compared by its bytes, mixed forms by instant.
    let mixed = Bytes::from_static(
        br#"{"items": [{"updated_at": "2024-01-01T10:00:00Z"}, {"updated_at": "2024-01-01T12:00:00Z"}, {"updated_at": "2024-01-01T11:00:00Z"}, {"updated_at": "2024-01-01T13:30:00+02:00"}, {"updated_at": null}]}"#,
    );
    let plain = Reader {
        primary_key: vec![],
        ..reader
    };
    let (mixed_list, _) = plain.list(&mixed).unwrap();
    assert_eq!(
        plain
            .records(&mixed, &mixed_list, &mut HashSet::new())
            .max_cursor,
        Some(json!("2024-01-01T12:00:00Z")),
        "13:30+02:00 is 11:30Z"
    );
    let reader = Reader {
        primary_key: vec![pointer::tokens("/id")],
        ..plain
    };
    // Seen keys stay seen for the rest of the run.
    assert_eq!(reader.records(&body, &list, &mut seen).items.len(), 0);

    let err = |body: &'static [u8]| reader.list(body).err().unwrap().to_string();
    assert!(err(br#"{"items": {"id": 1}}"#).contains("is not an array"));
    assert!(err(br#"{"results": []}"#).contains("nothing at records"));
    assert!(
        err(b"<html><body>Login</body></html>").contains("not JSON"),
        "{}",
        err(b"<html>")
    );
    // Records without their key are all kept; a null key counts as none.
    let keyless =
        Bytes::from_static(br#"{"items": [{"n": 1}, {"n": 2}, {"id": null}, {"id": null}]}"#);
    let (list, _) = reader.list(&keyless).unwrap();
    assert_eq!(
        reader
            .records(&keyless, &list, &mut HashSet::new())
            .items
            .len(),
        4
    );
}

#[test]
fn next_links_stay_on_the_source_origin() {
    let base = url::Url::parse("https://shop.example.com/admin/products.json").unwrap();
    assert!(same_origin(
        &base,
        "https://shop.example.com/admin/products.json?page_info=x"
    )
    .is_ok());
    assert!(same_origin(&base, "/admin/products.json?page_info=x").is_ok());
    assert!(
        same_origin(&base, "http://shop.example.com/admin/products.json")
            .unwrap_err()
            .to_string()
            .contains("another origin")
    );
    assert!(same_origin(&base, "https://evil.example/steal")
        .unwrap_err()
        .to_string()
        .contains("https://evil.example"));
}

#[test]
fn cursor_values_order_and_look_back() {
    assert_eq!(compare(&json!(9), &json!(10)), Ordering::Less);
    assert_eq!(compare(&json!("b"), &json!("a")), Ordering::Greater);
    assert_eq!(max(Some(json!(3)), json!(2)), json!(3));
    assert_eq!(
        minus(&json!("2024-01-01T00:05:00Z"), Duration::from_secs(300)),
        json!("2024-01-01T00:00:00Z")
    );
    assert_eq!(
        minus(&json!(1_700_000_000), Duration::from_secs(60)),
        json!(1_699_999_940)
    );
    assert_eq!(
        minus(&json!(1_700_000_000_000i64), Duration::from_secs(1)),
        json!(1_699_999_999_000i64)
    );
    assert_eq!(minus(&json!("abc"), Duration::from_secs(1)), json!("abc"));
    assert_eq!(
        minus(&json!("2024-01-01T00:05:00Z"), Duration::ZERO),
        json!("2024-01-01T00:05:00Z")
    );
}
