use super::*;

fn admin(token: Option<&str>) -> Admin {
    Admin {
        token: token.map(str::to_string),
        pipelines: Vec::new(),
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        config: None,
    }
}

fn peer(addr: &str) -> Peer {
    Peer(addr.parse().unwrap())
}

#[test]
fn without_a_token_only_loopback_peers_are_answered() {
    let (open, headers) = (admin(None), HeaderMap::new());
    for local in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
        assert!(
            refusal(&open, &headers, Some(&peer(local))).is_none(),
            "{local}"
        );
    }
    for remote in ["10.1.2.3:5000", "[2001:db8::1]:5000", "192.168.1.9:80"] {
        let refused = refusal(&open, &headers, Some(&peer(remote))).expect(remote);
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    assert!(
        refusal(&open, &headers, None).is_some(),
        "no peer known: refused"
    );
    // With a token, the token decides, wherever the request comes from.
    let closed = admin(Some("t0k3n"));
    let local = peer("127.0.0.1:5000");
    let refused = refusal(&closed, &headers, Some(&local)).unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let mut with = HeaderMap::new();
    with.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer t0k3n"),
    );
    assert!(refusal(&closed, &with, Some(&peer("10.1.2.3:5000"))).is_none());
}
