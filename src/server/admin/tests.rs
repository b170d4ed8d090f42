use super::*;

fn admin(token: Option<&str>) -> Admin {
    Admin {
        token: token.map(str::to_string),
        pipelines: crate::server::Swap::new(Vec::new()),
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        config: crate::server::Swap::new(None),
    }
}

fn peer(addr: &str) -> Peer {
    Peer(addr.parse().unwrap())
}

/// Headers of a request naming `host`, with `extra` ones.
fn headers(host: &str, extra: &[(header::HeaderName, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
    for (name, value) in extra {
        headers.insert(name.clone(), HeaderValue::from_static(*value));
    }
    headers
}

#[test]
fn without_a_token_only_loopback_peers_are_answered() {
    let (open, local_host) = (admin(None), headers("127.0.0.1:8080", &[]));
    for local in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
        assert!(
            refusal(&open, &Method::GET, &local_host, Some(&peer(local))).is_none(),
            "{local}"
        );
    }
    for remote in ["10.1.2.3:5000", "[2001:db8::1]:5000", "192.168.1.9:80"] {
        let refused = refusal(&open, &Method::GET, &local_host, Some(&peer(remote))).expect(remote);
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let metrics = metrics_refusal(&open, &local_host, Some(&peer(remote))).expect(remote);
        assert_eq!(metrics.status(), StatusCode::FORBIDDEN);
    }
    assert!(
        refusal(&open, &Method::GET, &local_host, None).is_some(),
        "no peer known: refused"
    );
    // With a token, the token decides, wherever the request comes from and
    // whatever it names.
    let closed = admin(Some("t0k3n"));
    let local = peer("127.0.0.1:5000");
    let refused = refusal(&closed, &Method::GET, &local_host, Some(&local)).unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let with = headers(
        "tributary.example.com",
        &[(header::AUTHORIZATION, "Bearer t0k3n")],
    );
    assert!(refusal(&closed, &Method::GET, &with, Some(&peer("10.1.2.3:5000"))).is_none());
    let posted = headers(
        "tributary.example.com",
        &[
            (header::AUTHORIZATION, "Bearer t0k3n"),
            (header::ORIGIN, "https://elsewhere.example"),
        ],
    );
    assert!(refusal(&closed, &Method::POST, &posted, Some(&local)).is_none());
}

#[test]
fn without_a_token_a_request_must_name_a_loopback_host() {
    let open = admin(None);
    let local = peer("127.0.0.1:5000");
    for host in [
        "127.0.0.1:8080",
        "127.0.0.1",
        "127.1.2.3:80",
        "localhost",
        "LocalHost:9090",
        "localhost.:9090",
        "[::1]",
        "[::1]:8080",
        "[::ffff:127.0.0.1]:8080",
    ] {
        assert!(
            refusal(&open, &Method::GET, &headers(host, &[]), Some(&local)).is_none(),
            "{host}"
        );
    }
    // DNS rebinding (a page's own name), a reverse proxy's name, the host's
    // addresses, and names that only look local.
    for host in [
        "attacker.example",
        "attacker.example:8080",
        "tributary.internal",
        "10.0.0.5:8080",
        "0.0.0.0:8080",
        "[2001:db8::1]:8080",
        "127.0.0.1.nip.io",
        "localhost.attacker.example",
        "::1",
        "[::1]x",
        "127.0.0.1:80:80",
        "127.0.0.1:port",
        "user@127.0.0.1",
        "",
    ] {
        let refused = refusal(&open, &Method::GET, &headers(host, &[]), Some(&local))
            .unwrap_or_else(|| panic!("{host:?} was answered"));
        assert_eq!(
            refused.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "{host:?}"
        );
    }
    let refused = refusal(&open, &Method::GET, &HeaderMap::new(), Some(&local)).unwrap();
    assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST, "no Host");
    // /metrics: a scraper on this machine may use any name.
    assert!(metrics_refusal(&open, &headers("scrape-me.internal", &[]), Some(&local)).is_none());
}

#[test]
fn without_a_token_a_state_change_from_another_sites_page_is_refused() {
    let open = admin(None);
    let local = peer("127.0.0.1:5000");
    let from = |origin: &'static str| headers("127.0.0.1:8080", &[(header::ORIGIN, origin)]);
    for origin in [
        "https://attacker.example",
        "http://127.0.0.1.nip.io:8080",
        "null",
        "http://10.0.0.5:8080",
    ] {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let refused = refusal(&open, &method, &from(origin), Some(&local))
                .unwrap_or_else(|| panic!("{method} from {origin} was taken"));
            assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{origin}");
        }
        // Reading is the Host check's to guard (a cross-site page cannot read
        // the answer to a request naming 127.0.0.1).
        assert!(refusal(&open, &Method::GET, &from(origin), Some(&local)).is_none());
    }
    for origin in [
        "http://127.0.0.1:8080",
        "http://localhost:3000",
        "http://[::1]:8080",
    ] {
        assert!(
            refusal(&open, &Method::POST, &from(origin), Some(&local)).is_none(),
            "{origin}"
        );
    }
    // No Origin: a tool such as `tributary replay` or curl.
    assert!(refusal(
        &open,
        &Method::POST,
        &headers("localhost:8080", &[]),
        Some(&local)
    )
    .is_none());
}
