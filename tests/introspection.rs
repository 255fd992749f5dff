//! End to end, opaque tokens of trusted issuers (RFC 7662): the release `.wasm` in a real Envoy,
//! a test STS, and a test introspection endpoint of a partner IdP that each test controls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use support::{mint, start_echo, Envoy, EnvoySetup, Signer, StsCall, StsReply, TestSts};

const ISS: &str = "https://idp.test";
const PARTNER: &str = "https://partner.test";
const PARTNER_SECRET: &str = "p@ss:w ü";

fn partner_issuer(name: &str, cluster: &str) -> serde_json::Value {
    json!({ "issuer": name, "audiences": ["api://edge"],
            "introspection": { "cluster": cluster, "authority": "partner.test",
                               "path": "/oauth2/introspect", "client_id": "edge proxy",
                               "client_secret_env": "PARTNER_SECRET", "timeout_ms": 1000,
                               "cache_s": 60 } })
}

/// The partner's introspection endpoint: checks the proxy's Basic credentials (RFC 6749
/// §2.3.1 form-encoded), then answers by the token's name.
fn partner(call: &StsCall) -> StsReply {
    let id_secret = "edge+proxy:p%40ss%3Aw+%C3%BC";
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(id_secret)
    );
    if call.path != "/oauth2/introspect" || call.header("authorization") != Some(basic.as_str()) {
        return StsReply::error(401, "invalid_client");
    }
    let token = call.field("token").unwrap_or("");
    let exp = support::now_s() + 3600;
    let mut answer = json!({ "active": true, "iss": PARTNER, "aud": ["api://edge"],
                             "sub": "dora", "tenant": "acme", "scope": "orders:read", "exp": exp,
                             "client_id": "app-7" });
    match token {
        "revoked" => answer = json!({ "active": false }),
        "foreign" => answer["iss"] = json!("https://evil.test"),
        "elsewhere" => answer["aud"] = json!("api://other"),
        "weak" => answer["scope"] = json!("orders:write"),
        _ => {}
    }
    StsReply::json(200, answer)
}

fn start(
    sts: &TestSts,
    config: serde_json::Value,
    concurrency: u32,
    clusters: &[(&str, u16)],
) -> Envoy {
    let env = [("PARTNER_SECRET", PARTNER_SECRET)];
    support::start_filter(sts.port, config, concurrency, clusters, &env)
}

fn config(issuers: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let c = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/oauth2/token",
                 "timeout_ms": 1000, "client_id": "edge", "client_secret": "sts-secret" },
        "exchange": { "audience": ["default-api"] },
        "trusted_issuers": issuers
    });
    support::merged(c, extra)
}

#[test]
fn sixteen_concurrent_requests_make_one_introspection_and_one_exchange() {
    let sts = TestSts::start(0, mint);
    let idp = TestSts::start(0, |_, call| partner(call).after(Duration::from_millis(300)));
    let c = config(json!([partner_issuer(PARTNER, "partner")]), json!({}));
    let envoy = Arc::new(start(&sts, c, 1, &[("partner", idp.port)]));
    for r in envoy.concurrent_gets(16, "/", "hot") {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.upstream_header("authorization"),
            Some(json!("Bearer minted-1-aud-default-api-for-hot"))
        );
    }
    assert_eq!(idp.count(), 1, "one introspection for sixteen requests");
    assert_eq!(sts.count(), 1);
    assert_eq!(envoy.counter("introspections"), 1);
    assert_eq!(
        idp.calls()[0].field("token_type_hint"),
        Some("access_token")
    );
}

#[test]
fn opaque_tokens_are_trusted_only_as_their_issuer_says_and_drive_policy_and_headers() {
    let sts = TestSts::start(0, mint);
    let idp = TestSts::start(0, |_, call| partner(call));
    let signer = Signer::new("k1");
    let issuers = json!([
        { "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } },
        partner_issuer(PARTNER, "partner")
    ]);
    let extra = json!({
        "require": [{ "scopes": ["orders:read"], "claims": { "tenant": ["acme"] } }],
        "output": { "claims_to_headers": [{ "claim": "sub", "header": "x-user" },
                                          { "claim": "client_id", "header": "x-client" }] }
    });
    let envoy = start(&sts, config(issuers, extra), 2, &[("partner", idp.port)]);
    // Active: exchanged once, then served on both workers from shared data, claims in headers.
    for _ in 0..10 {
        let r = envoy.get(
            "/orders",
            &[("authorization", "Bearer opaque-good"), ("x-user", "root")],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.upstream_header("authorization"),
            Some(json!("Bearer minted-1-aud-default-api-for-opaque-good")),
            "the caller's token never goes upstream"
        );
        assert_eq!(r.upstream_header("x-user"), Some(json!("dora")));
        assert_eq!(r.upstream_header("x-client"), Some(json!("app-7")));
    }
    assert_eq!(idp.count(), 1, "one introspection, shared by the workers");
    assert_eq!(sts.count(), 1);
    // The policy reads the answer: a scope missing is 403, and no exchange.
    let r = envoy.get_with_token("/orders", "weak");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("scope=\"orders:read\""));
    // Inactive: 401, remembered.
    for _ in 0..3 {
        let r = envoy.get_with_token("/orders", "revoked");
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"));
    }
    assert_eq!(envoy.counter("introspection_inactive"), 1);
    // Another issuer's answer, or another audience: 401.
    for t in ["foreign", "elsewhere"] {
        assert_eq!(envoy.get_with_token("/orders", t).status, 401, "{t}");
    }
    let before = idp.count();
    assert_eq!(
        before, 5,
        "good, weak, revoked once for three requests, foreign, elsewhere"
    );
    // A JWT is never introspected: verified by signature, then exchanged.
    let claims = json!({ "iss": ISS, "sub": "erin", "exp": support::now_s() + 600,
                         "scope": "orders:read", "tenant": "acme" });
    let jwt = signer.token(&claims, None);
    let r = envoy.get_with_token("/orders", &jwt);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-user"), Some(json!("erin")));
    assert_eq!(idp.count(), before);
    assert_eq!(sts.count(), 2, "refused tokens reached no STS");
    assert_eq!(envoy.counter("introspection_errors"), 0);
    assert_eq!(
        envoy.stat("cluster.echo.upstream_rq_total"),
        11,
        "nothing upstream for a refusal"
    );
    let log = envoy.log_text();
    assert!(!log.contains("opaque-good") && !log.contains(PARTNER_SECRET));
}

#[test]
fn two_introspecting_issuers_need_a_route_choice_and_each_sees_only_its_routes_tokens() {
    let sts = TestSts::start(0, mint);
    let a = TestSts::start(0, |_, call| partner(call));
    let b = TestSts::start(0, |_, call| partner(call));
    let issuers = json!([
        partner_issuer(PARTNER, "a"),
        partner_issuer("https://b.test", "b")
    ]);
    let log = Envoy::refused(EnvoySetup {
        filter_config: config(issuers.clone(), json!({})),
        sts_port: sts.port,
        echo_port: start_echo(0),
        env: &[("PARTNER_SECRET", PARTNER_SECRET)],
        concurrency: 1,
        clusters: &[("a", a.port), ("b", b.port)],
        ..EnvoySetup::default()
    });
    assert!(log.contains("introspect"), "{log}");
    let routes = json!({ "routes": [
        { "match": { "path_prefix": "/a" }, "introspect": PARTNER },
        { "match": { "path_prefix": "/b" }, "introspect": "https://b.test" }
    ] });
    let envoy = start(
        &sts,
        config(issuers, routes),
        1,
        &[("a", a.port), ("b", b.port)],
    );
    assert_eq!(envoy.get_with_token("/a/x", "tok-a").status, 200);
    assert_eq!((a.count(), b.count()), (1, 0));
    // b answers with the partner's issuer for every token: not its own, refused.
    assert_eq!(envoy.get_with_token("/b/x", "tok-b").status, 401);
    assert_eq!((a.count(), b.count()), (1, 1));
    assert_eq!(
        envoy.get_with_token("/elsewhere", "tok-c").status,
        401,
        "shown to nobody"
    );
    assert_eq!((a.count(), b.count()), (1, 1));
}
