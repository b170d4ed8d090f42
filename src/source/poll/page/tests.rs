use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, LINK};
use serde_json::json;

use super::*;
use crate::config::spec::{AuthSpec, CursorSpec, Ends, Schedule};

fn spec(paginate: Paginate) -> PollSpec {
    PollSpec {
        schedule: Schedule::Every(Duration::from_secs(60)),
        jitter: Duration::ZERO,
        url: url::Url::parse("https://api.example.com/v1/items?fixed=1").unwrap(),
        url_template: None,
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
        ends: Ends::default(),
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
        ends: Ends::default(),
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
        ends: Ends::default(),
    });
    assert!(request(&page, &PageRef::First, None)
        .url
        .as_str()
        .ends_with("page=1&per_page=20"));
    // A next link replaces the whole URL, relative links resolve against the endpoint.
    let link = spec(Paginate::Link { links: None });
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
        ends: Ends::default(),
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
        has_more: None,
        total: None,
        links: None,
    };
    let token = |body: &'static [u8]| reader.list(body).map(|(_, s)| s).unwrap_or_default();
    let cursor = Paginate::Cursor {
        next: "/paging/next/after".into(),
        param: Some("after".into()),
        ends: Ends::default(),
    };
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            &token(br#"{"results":[1],"paging":{"next":{"after":"42"}}}"#),
            &none,
            10
        ),
        Some(PageRef::Token("42".into()))
    );
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            &token(br#"{"paging":{"next":{"after":7}},"results":[]}"#),
            &none,
            10
        ),
        Some(PageRef::Token("7".into()))
    );
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            &token(br#"{"results":[]}"#),
            &none,
            0
        ),
        None
    );
    assert_eq!(
        next(
            &cursor,
            &PageRef::First,
            &token(br#"{"results":[],"paging":{"next":{"after":""}}}"#),
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
        next(
            &Paginate::Link { links: None },
            &PageRef::First,
            &Signals::default(),
            &links,
            5
        ),
        Some(PageRef::Url("https://s.example/p?page_info=b".into()))
    );
    assert_eq!(
        next(
            &Paginate::Link { links: None },
            &PageRef::First,
            &Signals::default(),
            &none,
            5
        ),
        None
    );

    let offset = Paginate::Offset {
        limit: 10,
        limit_param: "limit".into(),
        offset_param: "offset".into(),
        ends: Ends::default(),
    };
    assert_eq!(
        next(
            &offset,
            &PageRef::Offset(20),
            &Signals::default(),
            &none,
            10
        ),
        Some(PageRef::Offset(30))
    );
    assert_eq!(
        next(&offset, &PageRef::Offset(20), &Signals::default(), &none, 9),
        None
    );

    let page = Paginate::Page {
        param: "page".into(),
        start: 1,
        limit: None,
        ends: Ends::default(),
    };
    assert_eq!(
        next(&page, &PageRef::First, &Signals::default(), &none, 3),
        Some(PageRef::Page(2))
    );
    assert_eq!(
        next(&page, &PageRef::Page(4), &Signals::default(), &none, 0),
        None
    );
    assert_eq!(
        next(
            &Paginate::None,
            &PageRef::First,
            &Signals::default(),
            &none,
            3
        ),
        None
    );
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
        has_more: None,
        total: None,
        links: None,
    };
    let body = Bytes::from_static(
        br#"{"items": [{"id": 1, "updated_at": "2024-01-02T00:00:00+02:00"}, {"id":2,"updated_at":"2024-01-01T23:00:00Z"}, {"id": 1, "updated_at": "x"}]}"#,
    );
    let mut seen = Seen::default();
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
            .records(&mixed, &mixed_list, &mut Seen::default())
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
            .records(&keyless, &list, &mut Seen::default())
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
        minus(&json!("2024-01-01 00:01:00"), Duration::from_secs(120)),
        json!("2023-12-31 23:59:00"),
        "Magento's updated_at keeps its form"
    );
    assert_eq!(
        minus(&json!("2024-01-01T00:05:00Z"), Duration::ZERO),
        json!("2024-01-01T00:05:00Z")
    );
}

/// NetSuite's SuiteQL (`hasMore`, a `links` array) and Magento's search
/// (`total_count`, which answers a page past the last with the last page).
#[test]
fn a_flag_a_total_or_a_links_array_ends_or_continues_a_run() {
    let none = HeaderMap::new();
    let reader = Reader {
        records: pointer::tokens("/items"),
        cursor: None,
        primary_key: vec![],
        next: None,
        has_more: Some(pointer::tokens("/hasMore")),
        total: Some(pointer::tokens("/total_count")),
        links: Some(pointer::tokens("/links")),
    };
    let signals = |body: &'static [u8]| reader.list(body).map(|(_, s)| s).unwrap();
    let ends = |has_more: bool, total: bool| Ends {
        has_more: has_more.then(|| "/hasMore".into()),
        total: total.then(|| "/total_count".into()),
    };
    let offset = Paginate::Offset {
        limit: 2,
        limit_param: "limit".into(),
        offset_param: "offset".into(),
        ends: ends(true, false),
    };
    let more = signals(
        br#"{"links":[],"count":2,"hasMore":true,"items":[1,2],"offset":0,"totalResults":5}"#,
    );
    assert_eq!(
        next(&offset, &PageRef::First, &more, &none, 2),
        Some(PageRef::Offset(2))
    );
    let last = signals(
        br#"{"links":[],"count":2,"hasMore":false,"items":[1,2],"offset":2,"totalResults":4}"#,
    );
    assert_eq!(
        next(&offset, &PageRef::Offset(2), &last, &none, 2),
        None,
        "hasMore false ends a full page"
    );
    let missing = signals(br#"{"items":[1,2]}"#);
    assert_eq!(
        next(&offset, &PageRef::First, &missing, &none, 2),
        None,
        "no flag: the run ends"
    );

    let page = Paginate::Page {
        param: "searchCriteria[currentPage]".into(),
        start: 1,
        limit: Some(crate::config::spec::PageLimit {
            limit: 2,
            limit_param: "searchCriteria[pageSize]".into(),
        }),
        ends: ends(false, true),
    };
    let of = |total: &'static [u8]| signals(total);
    let five = of(br#"{"items":[1,2],"search_criteria":{},"total_count":5}"#);
    assert_eq!(
        next(&page, &PageRef::First, &five, &none, 2),
        Some(PageRef::Page(2))
    );
    assert_eq!(
        next(&page, &PageRef::Page(2), &five, &none, 2),
        Some(PageRef::Page(3))
    );
    assert_eq!(next(&page, &PageRef::Page(3), &five, &none, 1), None);
    let four = of(br#"{"items":[3,4],"total_count":"4"}"#);
    assert_eq!(
        next(&page, &PageRef::Page(2), &four, &none, 2),
        None,
        "a full last page ends by the total"
    );

    let linked = Paginate::Link {
        links: Some("/links".into()),
    };
    let body = br#"{"links":[{"rel":"previous","href":"https://x.example/q?offset=0"},{"rel":"next","href":"https://x.example/q?limit=2&offset=4"},{"rel":"self","href":"https://x.example/q?offset=2"}],"items":[1,2]}"#;
    assert_eq!(
        next(&linked, &PageRef::First, &signals(body), &none, 2),
        Some(PageRef::Url("https://x.example/q?limit=2&offset=4".into()))
    );
    let end = br#"{"links":[{"rel":"self","href":"https://x.example/q"}],"items":[1]}"#;
    assert_eq!(
        next(&linked, &PageRef::First, &signals(end), &none, 1),
        None
    );
}
