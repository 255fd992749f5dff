//! Named token services, two-hop chains, RFC 9728 metadata and transaction tokens.

use super::*;

const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const TXN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";

/// The test STS plus a `partner` service with credentials of its own, and `extra`.
fn with_partner(mut extra: serde_json::Value) -> Engine {
    extra["token_services"] = json!({
        "partner": { "cluster": "partner", "authority": "as.partner.example", "token_path": "/oauth2/token",
                     "client_id": "edge-at-partner", "client_secret": "partner-pw" }
    });
    engine(extra)
}

fn answer(body: serde_json::Value) -> HttpAnswer {
    HttpAnswer {
        status: Some(200),
        body: body.to_string().into_bytes(),
        too_large: false,
    }
}

fn header<'a>(call: &'a HttpCall, name: &str) -> Option<&'a str> {
    call.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn request(e: &mut Engine, h: &FakeHost, ctx: u32, path: &str, token: &str) -> Verdict {
    let auth = bearer(token);
    let req: &[(&str, &str)] = &[(":path", path), ("authorization", auth.as_str())];
    e.on_request(h, ctx, req)
}

fn answer_last(e: &mut Engine, h: &FakeHost, cluster: &str, a: &HttpAnswer) -> Vec<(u32, Verdict)> {
    let call = h.calls_to(cluster).last().expect("a call").0;
    e.on_http_answer(h, Some(1), call, a)
}

fn routes_at_two_services() -> Engine {
    with_partner(json!({
        "routes": [
            { "match": { "path_prefix": "/partner" }, "exchange": { "sts": "partner", "audience": "api" } },
            { "match": { "path_prefix": "/home" }, "exchange": { "audience": "api" } }
        ]
    }))
}

#[test]
fn a_route_at_a_named_service_calls_it_with_its_own_credentials() {
    let h = FakeHost::at(NOW);
    let mut e = routes_at_two_services();
    assert_eq!(
        request(&mut e, &h, 1, "/partner/x", "caller"),
        Verdict::Pause
    );
    let calls = h.calls_to("partner");
    assert_eq!(calls.len(), 1);
    let call = &calls[0].1;
    assert_eq!(header(call, ":authority"), Some("as.partner.example"));
    assert_eq!(header(call, ":path"), Some("/oauth2/token"));
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("edge-at-partner:partner-pw");
    assert_eq!(
        header(call, "authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(field(call, "subject_token").as_deref(), Some("caller"));
    assert!(h.calls_to("sts").is_empty(), "the default STS is not asked");
    let v = answer_last(&mut e, &h, "partner", &ok("from-partner", 600));
    assert_eq!(
        set_value(&v[0].1, "authorization").as_deref(),
        Some("Bearer from-partner")
    );
    assert_eq!(h.metric_value(Metric::ServiceCalls(1)), 1);
    assert_eq!(h.metric_value(Metric::ServiceCalls(0)), 0);
    assert_eq!(
        h.metric_value(Metric::StsCalls),
        1,
        "the totals count every service"
    );
    assert_eq!(
        e.counted_services(),
        vec!["sts".to_string(), "partner".to_string()]
    );
}

#[test]
fn two_routes_at_two_services_never_share_a_minted_token() {
    let h = FakeHost::at(NOW);
    let mut e = routes_at_two_services();
    request(&mut e, &h, 1, "/partner/x", "caller");
    answer_last(&mut e, &h, "partner", &ok("from-partner", 600));
    assert_eq!(
        request(&mut e, &h, 2, "/home/x", "caller"),
        Verdict::Pause,
        "same subject and audience, another service: another exchange"
    );
    let v = answer_last(&mut e, &h, "sts", &ok("from-home", 600));
    assert_eq!(
        set_value(&v[0].1, "authorization").as_deref(),
        Some("Bearer from-home")
    );
    for (ctx, path, want) in [
        (3, "/partner/y", "from-partner"),
        (4, "/home/y", "from-home"),
    ] {
        let v = request(&mut e, &h, ctx, path, "caller");
        assert_eq!(
            set_value(&v, "authorization").as_deref(),
            Some(format!("Bearer {want}").as_str())
        );
    }
    assert_eq!(h.calls.borrow().len(), 2);
    // A failure at one service is that service's.
    request(&mut e, &h, 5, "/partner/z", "other");
    let v = answer_last(&mut e, &h, "partner", &err(500, "server_error"));
    assert_eq!(status(&v[0].1), 503);
    assert_eq!(h.metric_value(Metric::ServiceErrors(1)), 1);
    assert_eq!(h.metric_value(Metric::ServiceErrors(0)), 0);
}

/// A chain: a JWT from the home STS, redeemed at the partner as a JWT bearer grant.
fn chain(extra_then: serde_json::Value) -> Engine {
    let mut then = json!({ "sts": "partner", "grant": "jwt_bearer", "scope": "read" });
    for (k, v) in extra_then.as_object().expect("an object") {
        then[k] = v.clone();
    }
    with_partner(json!({
        "cache": { "expiry_skew_s": 0 },
        "exchange": { "requested_token_type": JWT_TYPE, "audience": "https://as.partner.example", "then": then }
    }))
}

fn jwt_grant(token: &str, expires_in: u64) -> HttpAnswer {
    answer(
        json!({ "access_token": token, "token_type": "N_A", "issued_token_type": JWT_TYPE, "expires_in": expires_in }),
    )
}

#[test]
fn a_chains_second_hop_gets_exactly_the_first_hops_token_and_the_upstream_only_the_last() {
    let h = FakeHost::at(NOW);
    let mut e = chain(json!({}));
    for ctx in 1..=16 {
        assert_eq!(request(&mut e, &h, ctx, "/api", "caller"), Verdict::Pause);
    }
    assert_eq!(h.calls_to("sts").len(), 1, "one first hop for 16 requests");
    let first = &h.calls_to("sts")[0].1;
    assert_eq!(
        field(first, "requested_token_type").as_deref(),
        Some(JWT_TYPE)
    );
    assert!(
        answer_last(&mut e, &h, "sts", &jwt_grant("grant-jwt", 120)).is_empty(),
        "nobody is answered with the first hop's token"
    );
    let seconds = h.calls_to("partner");
    assert_eq!(seconds.len(), 1, "one second hop for 16 requests");
    let second = &seconds[0].1;
    assert_eq!(
        form_of(second),
        vec![
            ("grant_type".into(), crate::client::JWT_BEARER_GRANT.into()),
            ("scope".into(), "read".into()),
            ("assertion".into(), "grant-jwt".into()),
        ],
        "the subject token never reaches the second service"
    );
    let out = answer_last(&mut e, &h, "partner", &ok("partner-token", 3600));
    assert_eq!(out.len(), 16);
    for (_, v) in &out {
        assert_eq!(
            set_value(v, "authorization").as_deref(),
            Some("Bearer partner-token")
        );
    }
    // Cached for the shorter lifetime: the first hop's 120 s, not the second's hour.
    h.advance_ms(119_000);
    let v = request(&mut e, &h, 20, "/api", "caller");
    assert_eq!(
        set_value(&v, "authorization").as_deref(),
        Some("Bearer partner-token")
    );
    h.advance_ms(1_000);
    assert_eq!(request(&mut e, &h, 21, "/api", "caller"), Verdict::Pause);
    assert_eq!(
        h.calls_to("sts").len(),
        2,
        "the chain starts over at its first hop"
    );
}

#[test]
fn a_token_exchange_second_hop_names_the_first_hops_issued_type() {
    let h = FakeHost::at(NOW);
    let mut e =
        chain(json!({ "grant": "token_exchange", "audience": "partner-api", "scope": null }));
    request(&mut e, &h, 1, "/api", "caller");
    answer_last(&mut e, &h, "sts", &jwt_grant("grant-jwt", 120));
    let second = &h.calls_to("partner")[0].1;
    assert_eq!(field(second, "subject_token").as_deref(), Some("grant-jwt"));
    assert_eq!(
        field(second, "subject_token_type").as_deref(),
        Some(JWT_TYPE)
    );
    assert_eq!(field(second, "audience").as_deref(), Some("partner-api"));
    assert_eq!(field(second, "assertion"), None);
}

#[test]
fn each_hops_failure_maps_through_the_error_table() {
    // The first hop refused: no second hop.
    let h = FakeHost::at(NOW);
    let mut e = chain(json!({}));
    request(&mut e, &h, 1, "/api", "caller");
    let v = answer_last(&mut e, &h, "sts", &err(400, "invalid_grant"));
    assert_eq!(status(&v[0].1), 401);
    assert!(h.calls_to("partner").is_empty());
    // The second hop: each row of the table, and never the first hop's token.
    for (answer, want) in [
        (err(400, "invalid_grant"), 401),
        (err(400, "invalid_scope"), 403),
        (err(401, "invalid_client"), 502),
        (err(503, "temporarily_unavailable"), 503),
        (no_answer(), 503),
        (answer(json!({"token_type": "Bearer"})), 502),
    ] {
        let h = FakeHost::at(NOW);
        let mut e = chain(json!({}));
        request(&mut e, &h, 1, "/api", "caller");
        answer_last(&mut e, &h, "sts", &jwt_grant("grant-jwt", 120));
        let v = answer_last(&mut e, &h, "partner", &answer);
        assert_eq!(
            status(&v[0].1),
            want,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let Verdict::Respond(r) = &v[0].1 else {
            panic!()
        };
        assert!(!r.body.contains("grant-jwt"));
    }
    // The second service cannot be reached at all.
    let h = FakeHost::at(NOW);
    let mut e = chain(json!({}));
    request(&mut e, &h, 1, "/api", "caller");
    h.refuse_dispatch.set(true);
    let v = answer_last(&mut e, &h, "sts", &jwt_grant("grant-jwt", 120));
    assert_eq!(status(&v[0].1), 503);
}

#[test]
fn a_second_hop_lost_with_its_carrier_is_sent_again_with_the_first_hops_token() {
    let h = FakeHost::at(NOW);
    let mut e = chain(json!({}));
    request(&mut e, &h, 1, "/api", "caller");
    request(&mut e, &h, 2, "/api", "caller");
    answer_last(&mut e, &h, "sts", &jwt_grant("grant-jwt", 120));
    e.on_request_done(1);
    assert!(e.on_tick(&h).is_empty());
    let again = h.calls_to("partner");
    assert_eq!(again.len(), 2, "sent again by the root");
    assert_eq!(
        h.metric_value(Metric::ServiceCalls(1)),
        2,
        "each send of the second hop"
    );
    assert_eq!(h.metric_value(Metric::ServiceCalls(0)), 1);
    assert_eq!(
        field(&again[1].1, "assertion").as_deref(),
        Some("grant-jwt")
    );
    let out = e.on_http_answer(&h, None, again[1].0, &ok("partner-token", 600));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 2);
    assert_eq!(
        set_value(&out[0].1, "authorization").as_deref(),
        Some("Bearer partner-token")
    );
}

fn with_metadata() -> Engine {
    engine(json!({
        "protected_resource": { "resource": "https://mcp.example.com", "authorization_servers": ["https://idp.example.com"],
                                "scopes_supported": ["mcp:tools"] }
    }))
}

#[test]
fn the_metadata_is_answered_and_every_401_names_it() {
    let h = FakeHost::at(NOW);
    let mut e = with_metadata();
    let get: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/.well-known/oauth-protected-resource"),
    ];
    let Verdict::Respond(doc) = e.on_request(&h, 1, get) else {
        panic!("answered")
    };
    let doc: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    assert_eq!(
        doc,
        json!({"resource": "https://mcp.example.com", "authorization_servers": ["https://idp.example.com"],
               "scopes_supported": ["mcp:tools"], "bearer_methods_supported": ["header"]})
    );
    assert!(h.calls.borrow().is_empty());
    let url = "resource_metadata=\"http://localhost:10000/.well-known/oauth-protected-resource\"";
    let origin: [(&str, &str); 2] = [(":scheme", "http"), (":authority", "localhost:10000")];
    // At once: no token.
    let v = e.on_request(&h, 2, &origin[..]);
    assert_eq!(status(&v), 401);
    assert_eq!(
        challenge(&v),
        format!("Bearer realm=\"token-exchange\", {url}")
    );
    // Later: the STS rejects the token.
    let req = [origin[0], origin[1], ("authorization", "Bearer bad")];
    assert_eq!(e.on_request(&h, 3, &req[..]), Verdict::Pause);
    let out = e.on_http_answer(&h, None, h.last_call(), &err(400, "invalid_grant"));
    assert!(
        challenge(&out[0].1).ends_with(&format!(", {url}")),
        "{}",
        challenge(&out[0].1)
    );
    assert!(challenge(&out[0].1).contains("error=\"invalid_token\""));
    // A 403 names it too (MCP clients step their scopes up from it); a 503 names none.
    let req = [origin[0], origin[1], ("authorization", "Bearer other")];
    e.on_request(&h, 4, &req[..]);
    let out = e.on_http_answer(&h, None, h.last_call(), &err(400, "invalid_scope"));
    assert_eq!(status(&out[0].1), 403);
    assert!(challenge(&out[0].1).ends_with(&format!(", {url}")));
    let req = [origin[0], origin[1], ("authorization", "Bearer down")];
    e.on_request(&h, 6, &req[..]);
    let out = e.on_http_answer(&h, None, h.last_call(), &no_answer());
    assert_eq!(status(&out[0].1), 503);
    let Verdict::Respond(r) = &out[0].1 else {
        unreachable!()
    };
    assert!(!r
        .headers
        .iter()
        .any(|(_, v)| v.contains("resource_metadata")));
    // Without protected_resource, no challenge names one.
    let mut plain = engine(json!({}));
    assert_eq!(
        challenge(&plain.on_request(&h, 5, &origin[..])),
        "Bearer realm=\"token-exchange\""
    );
}

#[test]
fn a_transaction_token_goes_in_its_own_header_and_the_callers_token_is_gone() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "exchange": { "requested_token_type": TXN_TYPE, "audience": "trust-domain.example", "scope": "orders" },
        "output": { "header": "txn-token", "prefix": "" }
    }));
    let auth = bearer("caller");
    assert_eq!(
        e.on_request(&h, 1, &[("authorization", auth.as_str())][..]),
        Verdict::Pause
    );
    let call = &h.calls_to("sts")[0].1;
    assert_eq!(
        field(call, "requested_token_type").as_deref(),
        Some(TXN_TYPE)
    );
    let txn = answer(
        json!({"access_token": "txn.jwt.sig", "token_type": "N_A", "issued_token_type": TXN_TYPE, "expires_in": 60}),
    );
    let out = e.on_http_answer(&h, None, h.last_call(), &txn);
    let Verdict::Continue(ops) = &out[0].1 else {
        panic!("{:?}", out[0].1)
    };
    assert_eq!(
        ops,
        &vec![
            HeaderOp::Remove("authorization".into()),
            HeaderOp::Remove("txn-token".into()),
            HeaderOp::Set("txn-token".into(), "txn.jwt.sig".into()),
        ]
    );
}
