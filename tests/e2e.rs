//! End-to-end: the release `.wasm` in a real Envoy, a test STS that each test controls, and an
//! echo upstream, all on 127.0.0.1. `make test` builds the module and installs Envoy first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::thread;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use support::{mint, start_echo, Envoy, EnvoySetup, StsCall, StsReply, TestSts, ACCESS_TOKEN_TYPE};

const SECRET: &str = "s3:cr+t% ü";

fn sts_config(extra: serde_json::Value) -> serde_json::Value {
    let config = json!({
        "sts": {
            "cluster": "sts",
            "authority": "sts.test",
            "token_path": "/oauth2/token",
            "timeout_ms": 500,
            "client_id": "edge proxy",
            "client_secret_env": "STS_SECRET"
        },
        "exchange": { "audience": ["default-api"], "scope": "read" }
    });
    support::merged(config, extra)
}

fn envoy(sts_port: u16, config: serde_json::Value, concurrency: u32) -> Envoy {
    envoy_with(sts_port, config, concurrency, &[])
}

fn envoy_with(
    sts_port: u16,
    config: serde_json::Value,
    concurrency: u32,
    clusters: &[(&str, u16)],
) -> Envoy {
    support::start_filter(
        sts_port,
        config,
        concurrency,
        clusters,
        &[("STS_SECRET", SECRET)],
    )
}

/// A GET written by hand (to send repeated headers); returns the whole response text.
fn raw_get(envoy: &Envoy, path: &str, headers: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Every header value the upstream received, flattened.
fn upstream_values(reply: &support::Reply) -> Vec<String> {
    reply.json()["headers"]
        .as_object()
        .map(|h| h.values().map(|v| v.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn exchange_happy_path_then_cache_hit() {
    let sts = TestSts::start(0, mint);
    let envoy = envoy(sts.port, sts_config(json!({})), 1);

    let first = envoy.get_with_token("/api", "alice-token");
    assert_eq!(first.status, 200, "{}", first.body);
    let minted = "Bearer minted-1-aud-default-api-for-alice-token";
    assert_eq!(first.upstream_header("authorization"), Some(json!(minted)));
    assert!(
        upstream_values(&first)
            .iter()
            .all(|v| !v.contains("alice-token\"") || v.contains("minted")),
        "the caller's token reached the upstream: {}",
        first.body
    );

    let calls = sts.calls();
    assert_eq!(calls.len(), 1);
    let call: &StsCall = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/oauth2/token");
    assert_eq!(call.header("host"), Some("sts.test"));
    assert_eq!(
        call.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: Vec<(&str, &str)> = call
        .form
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        form,
        vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", "default-api"),
            ("scope", "read"),
            ("subject_token", "alice-token"),
        ]
    );
    let basic = call
        .header("authorization")
        .expect("basic auth")
        .strip_prefix("Basic ")
        .expect("Basic");
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(basic)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decoded, "edge+proxy:s3%3Acr%2Bt%25+%C3%BC",
        "RFC 6749 §2.3.1 encoding"
    );

    // Two copies of Authorization are refused, not half-exchanged.
    let raw = raw_get(
        &envoy,
        "/api",
        &[
            "authorization: Bearer alice-token",
            "authorization: Bearer smuggled",
        ],
    );
    assert!(
        raw.starts_with("HTTP/1.1 401") && raw.contains("invalid_token"),
        "{raw}"
    );

    let second = envoy.get_with_token("/api", "alice-token");
    assert_eq!(second.upstream_header("authorization"), Some(json!(minted)));
    assert_eq!(sts.count(), 1, "second request served from the cache");

    assert_eq!(envoy.counter("requests"), 3);
    assert_eq!(envoy.counter("cache_misses"), 1);
    assert_eq!(envoy.counter("cache_hits"), 1);
    assert_eq!(envoy.counter("sts_calls"), 1);
    assert_eq!(envoy.counter("sts_errors"), 0);
    assert_eq!(envoy.counter("rejected"), 1);
}

#[test]
fn routes_pick_audiences_bypass_and_strip_spoofed_headers() {
    let sts = TestSts::start(0, mint);
    let config = sts_config(json!({
        "routes": [
            { "match": { "path_prefix": "/orders" }, "exchange": { "audience": ["orders-api"] } },
            { "match": { "path_prefix": "/healthz" }, "bypass": true }
        ],
        "output": { "original_token_header": "x-original-token" }
    }));
    let envoy = envoy(sts.port, config, 1);

    let orders = envoy.get(
        "/orders/1",
        &[
            ("authorization", "Bearer bob"),
            ("x-original-token", "spoofed"),
        ],
    );
    let other = envoy.get_with_token("/other", "bob");
    assert_eq!(
        orders.upstream_header("authorization"),
        Some(json!("Bearer minted-1-aud-orders-api-for-bob"))
    );
    assert_eq!(
        other.upstream_header("authorization"),
        Some(json!("Bearer minted-2-aud-default-api-for-bob"))
    );
    assert_eq!(
        orders.upstream_header("x-original-token"),
        Some(json!("bob")),
        "client copy replaced"
    );
    assert_eq!(sts.count(), 2, "two audiences, two exchanges");

    let health = envoy.get(
        "/healthz",
        &[
            ("authorization", "Bearer bob"),
            ("x-original-token", "spoofed"),
        ],
    );
    assert_eq!(health.status, 200);
    assert_eq!(
        health.upstream_header("authorization"),
        Some(json!("Bearer bob")),
        "bypass leaves the request alone"
    );
    assert_eq!(
        health.upstream_header("x-original-token"),
        None,
        "but never passes a spoofed copy"
    );
    assert_eq!(sts.count(), 2);
    assert_eq!(envoy.counter("bypassed"), 1);
}

/// Raw paths that start with `/healthz` but that a server resolves outside it (or that it could
/// read in more than one way).
const ESCAPING_PATHS: [&str; 14] = [
    "/healthz/../admin",
    "/healthz/%2e%2e/admin",
    "/healthz/.%2E/admin",
    "/healthz/..%2fadmin",
    "/healthz%2F..%2Fadmin",
    "/healthz/%2e%2e%2fadmin",
    "/healthz/..%5cadmin",
    "/healthz\\..\\admin",
    "/healthz/..;/admin",
    "/healthz//../admin",
    "/healthz/%252e%252e/admin",
    "/healthz/%c0%ae%c0%ae/admin",
    "/healthz-admin",
    "/healthzX",
];

/// Sends `path` raw with the caller's token and returns (status, the `authorization` the
/// upstream saw, the path it saw); no upstream view when Envoy or the filter answered itself.
fn probe(envoy: &Envoy, path: &str, token: &str) -> (u16, Option<(String, String)>) {
    let auth = format!("authorization: Bearer {token}");
    let text = raw_get(envoy, path, &[&auth]);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let upstream = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| body.find('{').map(|i| &body[i..]))
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json.trim()).ok())
        .filter(|j| j.get("headers").is_some())
        .map(|j| {
            (
                j["headers"]["authorization"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                j["path"].as_str().unwrap_or("").to_string(),
            )
        });
    (status, upstream)
}

/// The bypass of `/healthz` holds only for paths the upstream serves under `/healthz`: the
/// caller's token reaches it there and nowhere else.
fn assert_bypass_holds(envoy: &Envoy, what: &str) {
    let (status, seen) = probe(envoy, "/healthz", "caller-token");
    assert_eq!(status, 200, "{what}");
    assert_eq!(
        seen.map(|s| s.0).as_deref(),
        Some("Bearer caller-token"),
        "{what}: the bypass itself works (so this test can fail)"
    );
    for path in ESCAPING_PATHS {
        let (status, seen) = probe(envoy, path, "caller-token");
        if let Some((auth, served)) = seen {
            // What a lenient server could resolve differently: dot segments, encodings,
            // backslashes, empty segments, path parameters.
            let unambiguous = !["..", "%", "\\", "//", ";"]
                .iter()
                .any(|x| served.contains(x));
            let under = served == "/healthz" || served.starts_with("/healthz/");
            assert!(
                auth.starts_with("Bearer minted-") || (unambiguous && under),
                "{what}: {path:?} (served as {served:?}, status {status}) reached the upstream with {auth:?}\n{}",
                envoy.log_text()
            );
        }
    }
}

#[test]
fn a_bypass_never_leaks_the_token_to_a_path_outside_it() {
    let sts = TestSts::start(0, mint);
    let config = sts_config(json!({
        "routes": [{ "match": { "path_prefix": "/healthz" }, "bypass": true }]
    }));
    // The filter's own normalization alone: this connection manager normalizes nothing.
    let bare = envoy(sts.port, config, 1);
    assert_bypass_holds(&bare, "filter alone");
    drop(bare);
    // The shipped envoy.yaml, whose connection manager normalizes too.
    let shipped = Envoy::start_shipped(
        sts.port,
        start_echo(0),
        &[("STS_CLIENT_SECRET", "demo-secret")],
    );
    assert_bypass_holds(&shipped, "shipped envoy.yaml");
    let (status, seen) = probe(&shipped, "/orders/../orders/7", "caller-token");
    assert_eq!(status, 200);
    let (auth, served) = seen.unwrap();
    assert_eq!(served, "/orders/7", "Envoy serves the normalized path");
    assert!(
        auth.contains("aud-orders-api"),
        "route picked on it: {auth}"
    );
}

#[test]
fn hostile_headers_never_pass_a_token_on() {
    let sts = TestSts::start(0, mint);
    let config = sts_config(json!({
        "on_missing_token": "allow",
        "exchange": { "audience": ["default-api"], "actor": { "source": "header", "header": "x-actor" } }
    }));
    let envoy = envoy(sts.port, config, 1);
    // Odd case and surrounding white space in names and values: still the caller's bearer token.
    let text = raw_get(
        &envoy,
        "/api",
        &[
            "AUTHORIZATION:   bEaReR  odd-case-token  ",
            "X-Actor:  actor-1 ",
        ],
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("minted-1-aud-default-api-for-odd-case-token"),
        "{text}"
    );
    // Two actor headers: refused, never one picked at random.
    let text = raw_get(
        &envoy,
        "/api",
        &["authorization: Bearer t2", "x-actor: a", "x-actor: b"],
    );
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // A bearer credential gone wrong is refused, not passed on as "missing".
    let text = raw_get(&envoy, "/api", &["authorization: Bearer\ttabbed-token"]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("tabbed-token"), "{text}");
    assert_eq!(sts.count(), 1);
}

#[test]
fn expired_entries_are_exchanged_again() {
    let sts = TestSts::start(0, |n, _| StsReply::token(&format!("short-{n}"), 2));
    let envoy = envoy(
        sts.port,
        sts_config(json!({ "cache": { "expiry_skew_s": 0 } })),
        1,
    );
    let a = envoy.get_with_token("/", "carol");
    let b = envoy.get_with_token("/", "carol");
    assert_eq!(
        a.upstream_header("authorization"),
        Some(json!("Bearer short-1"))
    );
    assert_eq!(
        b.upstream_header("authorization"),
        Some(json!("Bearer short-1"))
    );
    thread::sleep(Duration::from_millis(2100));
    let c = envoy.get_with_token("/", "carol");
    assert_eq!(
        c.upstream_header("authorization"),
        Some(json!("Bearer short-2"))
    );
    assert_eq!(sts.count(), 2);
}

#[test]
fn error_table_end_to_end() {
    let sts = TestSts::start(0, |n, call| {
        match call.field("subject_token").unwrap_or("") {
            "rejected" => StsReply::error(400, "invalid_grant"),
            "forbidden" => StsReply::error(400, "invalid_target"),
            "badclient" => StsReply::error(401, "invalid_client"),
            "boom" => StsReply::raw(500, "internal"),
            "slow" => StsReply::token("late", 60).after(Duration::from_millis(1500)),
            "garbage" => StsReply::raw(200, "<html>not json</html>"),
            "na" => StsReply::json(
                200,
                json!({"access_token": "x", "token_type": "N_A", "issued_token_type": ACCESS_TOKEN_TYPE}),
            ),
            _ => mint(n, call),
        }
    });
    let envoy = envoy(sts.port, sts_config(json!({})), 1);

    let missing = envoy.get("/", &[]);
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"token-exchange\"")
    );

    let malformed = envoy.get("/", &[("authorization", "Bearer a\"b")]);
    assert_eq!(malformed.status, 401);
    assert!(malformed
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));

    let cases = [
        ("rejected", 401, Some("error=\"invalid_token\"")),
        ("forbidden", 403, Some("error=\"insufficient_scope\"")),
        ("badclient", 502, None),
        ("boom", 503, None),
        ("slow", 503, None),
        ("garbage", 502, None),
        ("na", 502, None),
    ];
    for (token, status, challenge) in cases {
        let r = envoy.get_with_token("/", token);
        assert_eq!(r.status, status, "{token}: {}", r.body);
        assert_eq!(
            r.header("www-authenticate").is_some(),
            challenge.is_some(),
            "{token}"
        );
        if let Some(c) = challenge {
            assert!(r.header("www-authenticate").unwrap().contains(c), "{token}");
        }
        if status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"), "{token}");
        }
        let body = r.json();
        assert!(
            body["error"].is_string() && body["error_description"].is_string(),
            "{token}"
        );
        assert!(
            !r.body.contains(&format!("{token}\"")),
            "the token is echoed: {}",
            r.body
        );
    }
    assert_eq!(sts.count(), 7);

    // a rejected token is remembered (negative cache): no second STS call
    assert_eq!(envoy.get_with_token("/", "rejected").status, 401);
    assert_eq!(sts.count(), 7);

    assert_eq!(envoy.counter("requests"), 10);
    assert_eq!(
        envoy.counter("rejected"),
        5,
        "missing, malformed, rejected twice, forbidden"
    );
    assert_eq!(
        envoy.counter("sts_errors"),
        5,
        "badclient, boom, slow, garbage, na"
    );
    assert_eq!(envoy.counter("sts_calls"), 7);
    assert_eq!(envoy.counter("cache_hits"), 1);
}

#[test]
fn fail_open_passes_the_request_on_without_any_token() {
    // Nothing listens on the STS port: unreachable.
    let dead = support::free_port();
    let envoy = envoy(
        dead,
        sts_config(json!({ "on_sts_unavailable": "allow" })),
        1,
    );
    let r = envoy.get_with_token("/", "dave");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("authorization"), None);
    assert!(upstream_values(&r).iter().all(|v| !v.contains("dave")));
    assert_eq!(envoy.counter("sts_errors"), 1);
}

#[test]
fn concurrent_requests_with_one_new_token_make_one_sts_call() {
    let sts = TestSts::start(0, |n, call| mint(n, call).after(Duration::from_millis(400)));
    let envoy = std::sync::Arc::new(envoy(sts.port, sts_config(json!({})), 1));
    for r in envoy.concurrent_gets(20, "/", "erin") {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.upstream_header("authorization"),
            Some(json!("Bearer minted-1-aud-default-api-for-erin"))
        );
    }
    assert_eq!(sts.count(), 1);
    assert_eq!(envoy.counter("requests"), 20);
    assert_eq!(envoy.counter("sts_calls"), 1);
    let coalesced = envoy.counter("coalesced");
    let hits = envoy.counter("cache_hits");
    assert_eq!(
        coalesced + hits,
        19,
        "every other request waited on the call or hit the cache"
    );
    assert!(
        coalesced >= 10,
        "most requests arrived while the call was in flight: {coalesced}"
    );
}

#[test]
fn waiters_are_served_when_the_request_carrying_the_call_goes_away() {
    use std::io::Write;
    let sts = TestSts::start(0, |n, call| mint(n, call).after(Duration::from_millis(400)));
    let envoy = std::sync::Arc::new(envoy(sts.port, sts_config(json!({})), 1));

    // The first request dispatches the STS call, then its client hangs up.
    let mut quitter = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    write!(
        quitter,
        "GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer frank\r\n\r\n"
    )
    .unwrap();
    thread::sleep(Duration::from_millis(100));
    let waiter = {
        let envoy = envoy.clone();
        thread::spawn(move || envoy.get_with_token("/", "frank"))
    };
    thread::sleep(Duration::from_millis(100));
    drop(quitter);

    let r = waiter.join().unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, envoy.log_text());
    assert!(
        r.upstream_header("authorization")
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("Bearer minted-"),
        "{}",
        r.body
    );
    assert_eq!(envoy.counter("coalesced"), 1);
    assert_eq!(sts.count(), 2, "the root dispatched the lost call again");
}

const ISS: &str = "https://idp.test";

fn issuer_config(refresh_s: u64) -> serde_json::Value {
    sts_config(json!({
        "trusted_issuers": [{
            "issuer": ISS,
            "algorithms": ["ES256"],
            "audiences": ["api://edge"],
            "jwks_uri": { "cluster": "idp", "authority": "idp.test", "path": "/jwks", "refresh_s": refresh_s }
        }]
    }))
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "iss": ISS, "sub": sub, "aud": "api://edge", "exp": support::now_s() + 600 })
}

/// Sends `token` until the answer is not 503 (the keys may not have arrived yet).
fn when_keys_arrive(envoy: &Envoy, token: &str) -> support::Reply {
    for _ in 0..100 {
        let r = envoy.get_with_token("/", token);
        if r.status != 503 {
            return r;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("keys never arrived:\n{}", envoy.log_text());
}

#[test]
fn trusted_issuer_tokens_are_verified_rotated_and_floods_rate_limited() {
    let k1 = support::Signer::new("k1");
    let k2 = support::Signer::new("k2");
    let stranger = support::Signer::new("k1");
    let idp = support::TestIdp::start(0, &json!({ "keys": [k1.jwk()] }));
    let sts = TestSts::start(0, mint);
    let envoy = envoy_with(sts.port, issuer_config(300), 1, &[("idp", idp.port)]);

    let alice = k1.token(&claims("alice"), None);
    let ok = when_keys_arrive(&envoy, &alice);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(sts.calls()[0].field("subject_token"), Some(alice.as_str()));
    assert_eq!(idp.fetches(), 1);

    // Forged with another key under the same kid, wrong audience, untrusted issuer: 401, no STS.
    let forged = stranger.token(&claims("alice"), None);
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = "api://other".into();
    let mut untrusted = claims("alice");
    untrusted["iss"] = "https://evil.test".into();
    for (t, reason) in [
        (forged, "token signature is invalid"),
        (k1.token(&wrong_aud, None), "token audience not accepted"),
        (k1.token(&untrusted, None), "token issuer is not trusted"),
        ("not-a-jwt".to_string(), "token is not a well-formed JWT"),
    ] {
        let r = envoy.get_with_token("/", &t);
        assert_eq!(r.status, 401, "{reason}");
        assert!(
            r.header("www-authenticate").unwrap().contains(reason),
            "{reason}"
        );
    }
    assert_eq!(sts.count(), 1);
    assert_eq!(envoy.counter("rejected_signature"), 1);
    assert_eq!(envoy.counter("rejected_audience"), 1);

    // Rotation: the IdP switches keys; a token under the new kid is accepted after one early
    // refresh (allowed 10 s after the last fetch), the old key's tokens are refused.
    thread::sleep(Duration::from_millis(10_200));
    idp.set_jwks(&json!({ "keys": [k2.jwk()] }));
    let bob = k2.token(&claims("bob"), None);
    let r = envoy.get_with_token("/", &bob);
    assert_eq!(r.status, 200, "{}\n{}", r.body, envoy.log_text());
    assert_eq!(idp.fetches(), 2);
    let old = envoy.get_with_token("/", &alice);
    assert_eq!(
        old.status, 401,
        "a cached exchange is not served once the key is gone"
    );

    // A flood of unknown kids right after: no further fetch inside 10 s.
    let unknown = k2.token(&claims("carol"), Some("k9"));
    flood(&envoy, &unknown, 200);
    assert_eq!(idp.fetches(), 2);

    // And once 10 s have passed, a flood costs at most one fetch.
    thread::sleep(Duration::from_millis(10_200));
    flood(&envoy, &unknown, 200);
    assert_eq!(idp.fetches(), 3, "one early refresh for 200 requests");
    assert_eq!(envoy.counter("jwks_fetches"), 3);
    assert_eq!(envoy.counter("rejected_unknown_key"), 401);
}

/// Sends `n` requests with `token` from 20 threads; every one must be refused with 401.
fn flood(envoy: &Envoy, token: &str, n: usize) {
    thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| {
                for _ in 0..n / 20 {
                    let r = envoy.get_with_token("/", token);
                    assert_eq!(r.status, 401, "{}", r.body);
                }
            });
        }
    });
}

#[test]
fn idp_down_at_start_answers_503_then_recovers() {
    let idp_port = support::free_port();
    let signer = support::Signer::new("k1");
    let sts = TestSts::start(0, mint);
    let envoy = envoy_with(sts.port, issuer_config(300), 1, &[("idp", idp_port)]);
    let token = signer.token(&claims("dora"), None);
    let r = envoy.get_with_token("/", &token);
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    thread::sleep(Duration::from_millis(300));
    assert!(envoy.counter("jwks_fetch_failures") >= 1);

    let idp = support::TestIdp::start(idp_port, &json!({ "keys": [signer.jwk()] }));
    let r = when_keys_arrive(&envoy, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(idp.fetches(), 1);
    assert_eq!(sts.count(), 1);
}

/// A test STS that mints ES256 JWTs: `sub` from the subject (or assertion, or the client for
/// client credentials), `act.sub` from the actor token; actor tokens live `actor_ttl` seconds.
/// With `client_key`, every call must carry a client assertion that verifies with it.
fn jwt_sts(
    minter: std::sync::Arc<support::Signer>,
    actor_ttl: u64,
    client_key: Option<p256::ecdsa::VerifyingKey>,
) -> TestSts {
    TestSts::start(0, move |n, call| {
        if let Some(key) = &client_key {
            use jwt_compact::AlgorithmExt;
            let ok = call.field("client_assertion_type")
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && call
                    .field("client_assertion")
                    .and_then(|a| jwt_compact::UntrustedToken::new(a).ok())
                    .is_some_and(|t| {
                        jwt_compact::alg::Es256
                            .validator::<serde_json::Value>(key)
                            .validate(&t)
                            .is_ok()
                    });
            if !ok {
                return StsReply::error(401, "invalid_client");
            }
        }
        let sub_of = |t: Option<&str>| {
            t.and_then(support::claims_of)
                .and_then(|c| c["sub"].as_str().map(String::from))
                .or_else(|| t.map(String::from))
                .unwrap_or_default()
        };
        let now = support::now_s();
        let (claims, ttl, issued) = match call.field("grant_type").unwrap_or("") {
            "client_credentials" => (
                json!({ "sub": "edge-actor", "n": n, "exp": now + actor_ttl }),
                actor_ttl,
                None,
            ),
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => (
                json!({ "sub": sub_of(call.field("assertion")), "n": n, "exp": now + 600 }),
                600,
                None,
            ),
            _ => {
                let mut c =
                    json!({ "sub": sub_of(call.field("subject_token")), "n": n, "exp": now + 600 });
                if let Some(actor) = call.field("actor_token") {
                    c["act"] = json!({ "sub": sub_of(Some(actor)) });
                }
                (c, 600, Some(ACCESS_TOKEN_TYPE))
            }
        };
        let mut body = json!({ "access_token": minter.token(&claims, None), "token_type": "Bearer", "expires_in": ttl });
        if let Some(t) = issued {
            body["issued_token_type"] = t.into();
        }
        StsReply::json(200, body)
    })
}

/// The claims of the token the upstream received.
fn upstream_claims(r: &support::Reply) -> serde_json::Value {
    let auth = r
        .upstream_header("authorization")
        .unwrap_or_else(|| panic!("no token upstream: {}", r.body));
    let token = auth
        .as_str()
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("bearer");
    support::claims_of(token).expect("a JWT upstream")
}

#[test]
fn delegation_impersonation_and_header_actors_by_route() {
    let minter = std::sync::Arc::new(support::Signer::new("sts"));
    let sts = jwt_sts(minter.clone(), 32, None);
    let config = sts_config(json!({
        "exchange": { "audience": ["orders-api"], "actor": { "source": "client_credentials", "scope": "actor" }, "expect_act": true },
        "routes": [
            { "match": { "path_prefix": "/impersonate" }, "exchange": { "actor": null, "expect_act": false } },
            { "match": { "path_prefix": "/agent" }, "exchange": { "actor": { "source": "header", "header": "x-actor-token" } } }
        ],
        "cache": { "expiry_skew_s": 30 }
    }));
    let envoy = envoy(sts.port, config, 1);
    let user =
        |sub: &str| minter.token(&json!({ "sub": sub, "exp": support::now_s() + 600 }), None);

    // Delegation with the filter's own actor token: fetched once for many users.
    for name in ["alice", "bob", "carol"] {
        let r = envoy.get_with_token("/orders", &user(name));
        assert_eq!(r.status, 200, "{}", r.body);
        let c = upstream_claims(&r);
        assert_eq!(c["sub"], name);
        assert_eq!(c["act"]["sub"], "edge-actor");
    }
    let grants = |sts: &TestSts| {
        sts.calls()
            .iter()
            .map(|c| c.field("grant_type").unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        grants(&sts)
            .iter()
            .filter(|g| *g == "client_credentials")
            .count(),
        1
    );
    let exchange = &sts.calls()[1];
    assert_eq!(exchange.field("actor_token_type"), Some(ACCESS_TOKEN_TYPE));
    assert!(exchange.field("actor_token").is_some());

    // Impersonation on another route: no actor, no act.
    let r = envoy.get_with_token("/impersonate", &user("alice"));
    let c = upstream_claims(&r);
    assert_eq!(c["sub"], "alice");
    assert!(c.get("act").is_none(), "{c}");
    assert!(sts.calls().last().unwrap().field("actor_token").is_none());

    // Header actor: required, sent as actor_token, never forwarded upstream.
    let missing = envoy.get_with_token("/agent", &user("dave"));
    assert_eq!(missing.status, 401);
    let agent = user("agent-7");
    let r = envoy.get(
        "/agent",
        &[
            ("authorization", &format!("Bearer {}", user("dave"))),
            ("x-actor-token", &agent),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let c = upstream_claims(&r);
    assert_eq!(
        (c["sub"].as_str(), c["act"]["sub"].as_str()),
        (Some("dave"), Some("agent-7"))
    );
    assert_eq!(r.upstream_header("x-actor-token"), None);

    // The actor token (32 s, 30 s skew: 2 s in the cache) is fetched again once it expires.
    thread::sleep(Duration::from_millis(2100));
    let r = envoy.get_with_token("/orders", &user("erin"));
    assert_eq!(upstream_claims(&r)["act"]["sub"], "edge-actor");
    assert_eq!(
        grants(&sts)
            .iter()
            .filter(|g| *g == "client_credentials")
            .count(),
        2
    );
}

#[test]
fn jwt_bearer_grant_with_private_key_jwt_client_auth() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let client_key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let pem = client_key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let minter = std::sync::Arc::new(support::Signer::new("sts"));
    let sts = jwt_sts(minter.clone(), 600, Some(*client_key.verifying_key()));
    let mut config =
        sts_config(json!({ "exchange": { "grant": "jwt_bearer", "scope": "orders" } }));
    config["sts"] = json!({
        "cluster": "sts", "authority": "sts.test", "token_path": "/oauth2/token", "client_id": "edge proxy",
        "client_auth": "private_key_jwt", "private_key": { "pem_env": "CLIENT_KEY", "alg": "ES256", "kid": "edge-1" }
    });
    let envoy = Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port: sts.port,
        echo_port: start_echo(0),
        env: &[("CLIENT_KEY", &pem)],
        concurrency: 1,
        clusters: &[],
        ..EnvoySetup::default()
    });
    let assertion = minter.token(
        &json!({ "sub": "frank", "exp": support::now_s() + 600 }),
        None,
    );
    let r = envoy.get_with_token("/", &assertion);
    assert_eq!(r.status, 200, "{}\n{}", r.body, envoy.log_text());
    assert_eq!(upstream_claims(&r)["sub"], "frank");
    let call = &sts.calls()[0];
    assert_eq!(
        call.field("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(
        call.field("assertion"),
        Some(assertion.as_str()),
        "the assertion reaches the STS unchanged"
    );
    assert_eq!(call.field("scope"), Some("orders"));
    assert_eq!(call.header("authorization"), None);
    let client_assertion = support::claims_of(call.field("client_assertion").unwrap()).unwrap();
    assert_eq!(client_assertion["iss"], "edge proxy");
    assert_eq!(client_assertion["aud"], "https://sts.test/oauth2/token");
}

#[test]
fn the_dashboard_queries_only_metrics_envoy_exports() {
    let sts = TestSts::start(0, mint);
    let envoy = envoy(sts.port, sts_config(json!({})), 1);
    assert_eq!(envoy.get_with_token("/api", "dash-token").status, 200);
    let wanted = support::dashboard_metrics();
    assert!(wanted.len() >= 15, "{wanted:?}");
    // Histograms reach /stats/prometheus only after Envoy's stats flush (5 s by default).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = ureq::get(&format!(
            "http://127.0.0.1:{}/stats/prometheus",
            envoy.admin
        ))
        .call()
        .expect("prometheus stats")
        .into_string()
        .expect("text");
        // The native module's stats carry Envoy's prefix for dynamic modules (the docs give
        // the relabeling that strips it).
        let exported: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(|name| {
                name.strip_prefix("envoy_dynamicmodulescustom_")
                    .unwrap_or(name)
            })
            .collect();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|w| !exported.contains(&w.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard queries {missing:?}, which Envoy does not export:\n{}",
            text.lines()
                .filter(|l| l.contains("token_exchange"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn an_answer_without_issued_token_type_is_taken_as_an_access_token() {
    // A widely used server library never sends issued_token_type.
    let sts = TestSts::start(0, |n, _| {
        StsReply::json(
            200,
            json!({"access_token": format!("plain-{n}"), "token_type": "Bearer", "expires_in": 60}),
        )
    });
    let config = sts_config(json!({
        "routes": [{ "match": { "path_prefix": "/jwt" },
                     "exchange": { "requested_token_type": "urn:ietf:params:oauth:token-type:jwt" } }]
    }));
    let envoy = envoy(sts.port, config, 1);
    let r = envoy.get_with_token("/", "alice");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("authorization").unwrap(),
        "Bearer plain-1"
    );
    // With a type asked for, the answer must say what it issued.
    let r = envoy.get_with_token("/jwt", "alice");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(sts.count(), 2);
}

#[test]
fn a_down_idp_is_fetched_with_backoff_never_more_than_once_a_second() {
    // Nothing listens on the IdP's port: every key fetch fails.
    let idp_port = support::free_port();
    let sts = TestSts::start(0, mint);
    let envoy = envoy_with(sts.port, issuer_config(300), 2, &[("idp", idp_port)]);
    let token = support::Signer::new("k1").token(&claims("erin"), None);
    for _ in 0..14 {
        assert_eq!(envoy.get_with_token("/", &token).status, 503);
        thread::sleep(Duration::from_millis(500));
    }
    // Seven seconds, two workers: fetches at about 0, 1, 3 and 7 s (1, 2, 4 s apart, less
    // jitter), one across workers; a fixed one-second retry would have made seven or more.
    let fetches = envoy.counter("jwks_fetches");
    assert!((2..=5).contains(&fetches), "{fetches} fetches");
    assert_eq!(envoy.counter("jwks_fetch_failures"), fetches);
    assert_eq!(
        sts.count(),
        0,
        "never passed on while trust cannot be established"
    );
}

#[test]
fn a_forward_issuers_token_reaches_the_upstream_unchanged() {
    let sts = TestSts::start(0, mint);
    let signer = support::Signer::new("k1");
    let keys = json!({ "keys": [signer.jwk()] });
    let ours = "https://sts.test";
    let config = sts_config(json!({ "trusted_issuers": [
        { "issuer": ISS, "algorithms": ["ES256"], "jwks": keys },
        { "issuer": ours, "algorithms": ["ES256"], "jwks": keys, "action": "forward" }
    ] }));
    let envoy = envoy(sts.port, config, 1);
    let token = signer.token(
        &json!({ "iss": ours, "sub": "svc", "exp": support::now_s() + 600 }),
        None,
    );
    let r = envoy.get_with_token("/", &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("authorization").unwrap(),
        format!("Bearer {token}").as_str()
    );
    // The old IdP's token is exchanged.
    let old = signer.token(&claims("dora"), None);
    let r = envoy.get_with_token("/", &old);
    assert!(r
        .upstream_header("authorization")
        .unwrap()
        .as_str()
        .unwrap()
        .starts_with("Bearer minted-"));
    assert_eq!(sts.count(), 1);
    assert_eq!(envoy.counter("forwarded"), 1);
}

#[test]
fn discovery_finds_the_keys_and_a_foreign_issuer_is_refused() {
    use support::{RawReply, RawServer};
    let signer = support::Signer::new("k1");
    let jwks = json!({ "keys": [signer.jwk()] }).to_string();
    let serve = move |issuer: &'static str, jwks_uri: &'static str| {
        let jwks = jwks.clone();
        RawServer::start(move |_, path| match path {
            "/.well-known/openid-configuration" => RawReply::Json(
                200,
                json!({ "issuer": issuer, "jwks_uri": jwks_uri }).to_string(),
            ),
            "/oauth2/keys" => RawReply::Json(200, jwks.clone()),
            _ => RawReply::Json(404, "{}".into()),
        })
    };
    let config = sts_config(
        json!({ "trusted_issuers": [{ "issuer": ISS, "algorithms": ["ES256"],
        "discovery": { "cluster": "idp", "authority": "idp.test" } }] }),
    );
    let token = signer.token(&claims("dora"), None);
    let sts = TestSts::start(0, mint);
    let idp = serve(ISS, "https://idp.test/oauth2/keys");
    let envoy = envoy_with(sts.port, config.clone(), 1, &[("idp", idp.port)]);
    let r = when_keys_arrive(&envoy, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(idp.count("/oauth2/keys"), 1);
    // A document that names another issuer, or a key set at another authority: those keys are
    // never fetched, nothing is trusted.
    for (issuer, jwks_uri) in [
        ("https://someone-else.test", "https://idp.test/oauth2/keys"),
        (ISS, "https://attacker.test/oauth2/keys"),
    ] {
        let foreign = serve(issuer, jwks_uri);
        let envoy = envoy_with(sts.port, config.clone(), 1, &[("idp", foreign.port)]);
        for _ in 0..6 {
            assert_eq!(envoy.get_with_token("/", &token).status, 503);
            thread::sleep(Duration::from_millis(300));
        }
        assert!(foreign.count("/.well-known/openid-configuration") >= 1);
        assert_eq!(foreign.count("/oauth2/keys"), 0, "{jwks_uri}");
        assert!(envoy.counter("jwks_fetch_failures") >= 1);
    }
    assert_eq!(sts.count(), 1);
}

#[test]
fn a_policy_refuses_before_the_sts_and_verified_claims_reach_headers() {
    let sts = TestSts::start(0, mint);
    let signer = support::Signer::new("k1");
    let config = sts_config(json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } }],
        "require": [{ "scopes": ["orders:read"] }],
        "routes": [{ "match": { "path_prefix": "/admin" }, "require": [{ "claims": { "groups": ["admins"] } }] }],
        "output": { "claims_to_headers": [
            { "claim": "sub", "header": "x-user" },
            { "claim": "groups", "header": "x-groups" },
            { "claim": "tenant", "header": "x-tenant" }
        ] }
    }));
    let envoy = envoy(sts.port, config, 1);
    let with = |extra: serde_json::Value| {
        let mut c = claims("dora");
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signer.token(&c, None)
    };
    let weak = with(json!({ "scope": "orders:write" }));
    let r = envoy.get_with_token("/orders", &weak);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"token-exchange\", error=\"insufficient_scope\", scope=\"orders:read\""
        )
    );
    let strong = with(json!({ "scope": "openid orders:read", "groups": ["users", "admins"] }));
    let spoofed = [
        ("authorization", format!("Bearer {strong}")),
        ("x-user", "root".to_string()),
        ("x-tenant", "evil".to_string()),
    ];
    let headers: Vec<(&str, &str)> = spoofed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..2 {
        // The second is a cache hit: the same headers, from the remembered verification.
        let r = envoy.get("/orders", &headers);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.upstream_header("x-user"), Some(json!("dora")));
        assert_eq!(r.upstream_header("x-groups"), Some(json!("users,admins")));
        assert_eq!(
            r.upstream_header("x-tenant"),
            None,
            "the client's copy is gone"
        );
        let auth = r.upstream_header("authorization").unwrap();
        assert!(auth.as_str().unwrap().starts_with("Bearer minted-"));
    }
    // Two client copies of a claim header, in odd case: both gone, the verified value alone.
    let raw = raw_get(
        &envoy,
        "/orders",
        &[
            &format!("authorization: Bearer {strong}"),
            "X-User: root",
            "x-user: root2",
        ],
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.contains("\"x-user\":\"dora\"") && !raw.contains("root"),
        "{raw}"
    );
    // The route's policy replaces the default one.
    assert_eq!(envoy.get_with_token("/admin", &weak).status, 403);
    assert_eq!(envoy.get("/admin", &headers).status, 200);
    assert_eq!(sts.count(), 1, "no STS call for a refused token");
    assert_eq!(envoy.counter("policy_denied"), 2);
    assert_eq!(
        envoy.stat("cluster.echo.upstream_rq_total"),
        4,
        "nothing upstream for a 403"
    );
}

#[test]
fn refusals_and_failures_are_logged_in_the_readme_words() {
    let sts = TestSts::start(0, mint);
    let mut wrong = sts_config(json!({}));
    wrong["sts"]["timeout_ms"] = json!("2000");
    let log = Envoy::refused(EnvoySetup {
        filter_config: wrong,
        sts_port: sts.port,
        echo_port: start_echo(0),
        env: &[("STS_SECRET", SECRET)],
        concurrency: 1,
        ..EnvoySetup::default()
    });
    assert!(
        log.contains(
            "invalid configuration: sts.timeout_ms: must be a whole number from 1 to 60000"
        ),
        "{log}"
    );
    assert!(!log.contains("u64"), "{log}");

    let mut lost = sts_config(json!({}));
    lost["sts"]["cluster"] = json!("nowhere");
    let envoy = envoy(sts.port, lost, 1);
    let r = envoy.get_with_token("/", "some-token");
    assert_eq!(r.status, 503, "{}", r.body);
    let log = envoy.log_text();
    assert!(log.contains("Envoy has no cluster named nowhere"), "{log}");
    assert!(
        log.contains("on_missing_token=reject on_sts_unavailable=deny"),
        "{log}"
    );
    assert!(!log.contains("some-token"), "{log}");
}

/// The Envoy Gateway manifest as Envoy gets it: the filter with the policy's `config` and the
/// clusters the EnvoyPatchPolicy adds pass `envoy --mode validate` (which resolves no name).
#[test]
fn envoy_gateway_manifest_loads_in_envoy() {
    use serde::Deserialize;
    let text =
        std::fs::read_to_string(support::repo().join("deploy/envoy-gateway/token-exchange.yaml"))
            .unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap();
    let config =
        serde_json::to_value(&kind("EnvoyExtensionPolicy")["spec"]["wasm"][0]["config"]).unwrap();
    let clusters: Vec<serde_json::Value> = kind("EnvoyPatchPolicy")["spec"]["jsonPatches"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| serde_json::to_value(&p["operation"]["value"]).unwrap())
        .collect();
    // The secret as the policy's `env.hostKeys` hands it to the VM.
    let env = [("STS_CLIENT_SECRET", "validate")];
    let setup = EnvoySetup {
        filter_config: config,
        env: &env,
        concurrency: 1,
        ..EnvoySetup::default()
    };
    let dir = support::TempDir::new("gateway");
    let yaml = support::envoy_yaml(
        &setup,
        support::free_port(),
        support::free_port(),
        &dir.0.join("access.log"),
    );
    let mut doc: serde_json::Value = serde_json::from_str(&yaml).unwrap();
    doc["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .extend(clusters);
    let file = dir.0.join("gateway.yaml");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new(support::envoy_binary())
        .args(["--mode", "validate", "-l", "warn", "-c"])
        .arg(&file)
        // The native module reads the secret from Envoy's environment.
        .env("STS_CLIENT_SECRET", "validate")
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", support::native_dir())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
