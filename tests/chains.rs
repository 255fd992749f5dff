//! End to end, token services, chains and agents: the release `.wasm` in a real Envoy with two
//! test token services (the home STS and a partner's), RFC 9728 metadata and a Txn-Token run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use support::{start_echo, Envoy, EnvoySetup, StsCall, StsReply, TestSts};

const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const TXN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
const PARTNER_SECRET: &str = "partner secret";

fn start(home: &TestSts, partner: &TestSts, config: serde_json::Value, concurrency: u32) -> Envoy {
    Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port: home.port,
        echo_port: start_echo(0),
        env: &[("PARTNER_SECRET", PARTNER_SECRET)],
        concurrency,
        clusters: &[("partner", partner.port)],
        ..EnvoySetup::default()
    })
}

fn basic(id: &str, secret: &str) -> String {
    let encoded = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encoded(id), encoded(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The home STS: checks its own credentials; for a `requested_token_type` of JWT, a short-lived
/// JWT grant (`N_A`); else an access token named after the call.
fn home(n: usize, call: &StsCall) -> StsReply {
    if call.header("authorization") != Some(basic("edge", "home-secret").as_str()) {
        return StsReply::error(401, "invalid_client");
    }
    let subject = call.field("subject_token").unwrap_or("none");
    if subject == "home-down" {
        return StsReply::error(503, "temporarily_unavailable");
    }
    match call.field("requested_token_type") {
        Some(JWT_TYPE) => StsReply::json(
            200,
            json!({ "access_token": format!("grant-{n}-for-{subject}"), "token_type": "N_A",
                    "issued_token_type": JWT_TYPE, "expires_in": 3 }),
        ),
        _ => StsReply::token(&format!("home-{n}-for-{subject}"), 3600),
    }
    .after(Duration::from_millis(200))
}

/// The partner's token endpoint: its own credentials; a JWT bearer grant redeems the home
/// STS's grant; an exchange mints a partner token.
fn partner(n: usize, call: &StsCall) -> StsReply {
    if call.header("authorization") != Some(basic("edge-at-partner", PARTNER_SECRET).as_str()) {
        return StsReply::error(401, "invalid_client");
    }
    let reply = match call.field("grant_type") {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let assertion = call.field("assertion").unwrap_or("");
            if assertion.contains("refused") {
                StsReply::error(400, "invalid_grant")
            } else {
                StsReply::token(&format!("partner-{n}-from-{assertion}"), 3600)
            }
        }
        _ => {
            let subject = call.field("subject_token").unwrap_or("none");
            StsReply::token(&format!("partner-{n}-for-{subject}"), 3600)
        }
    };
    reply.after(Duration::from_millis(200))
}

fn config(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "sts": { "cluster": "sts", "authority": "sts.home.test", "token_path": "/token",
                 "timeout_ms": 2000, "client_id": "edge", "client_secret": "home-secret" },
        "token_services": {
            "partner": { "cluster": "partner", "authority": "as.partner.test", "token_path": "/oauth2/token",
                         "timeout_ms": 2000, "client_id": "edge-at-partner",
                         "client_secret_env": "PARTNER_SECRET" } },
        "cache": { "expiry_skew_s": 0 },
        "routes": [
            { "match": { "path_prefix": "/partner" }, "exchange": { "sts": "partner", "audience": "api" } },
            { "match": { "path_prefix": "/home" }, "exchange": { "audience": "api" } },
            { "match": { "path_prefix": "/foreign" },
              "exchange": { "requested_token_type": JWT_TYPE, "audience": "https://as.partner.test",
                            "then": { "sts": "partner", "grant": "jwt_bearer", "scope": "read" } } }
        ]
    });
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

fn upstream_token(r: &support::Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.upstream_header("authorization")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn two_routes_at_two_services_use_their_own_credentials_and_never_share_a_token() {
    let (home_sts, partner_sts) = (TestSts::start(0, home), TestSts::start(0, partner));
    let envoy = start(&home_sts, &partner_sts, config(json!({})), 2);
    for _ in 0..3 {
        let at_partner = upstream_token(&envoy.get_with_token("/partner/x", "alice"));
        assert_eq!(at_partner, "Bearer partner-1-for-alice");
        let at_home = upstream_token(&envoy.get_with_token("/home/x", "alice"));
        assert_eq!(at_home, "Bearer home-1-for-alice");
    }
    // One call per service and worker at most; each with its own credentials (checked above
    // by the services, which refuse any other).
    assert!(
        (1..=2).contains(&partner_sts.count()),
        "{}",
        partner_sts.count()
    );
    assert!((1..=2).contains(&home_sts.count()), "{}", home_sts.count());
    let call = &partner_sts.calls()[0];
    assert_eq!(call.header("host"), Some("as.partner.test"));
    assert_eq!(call.path, "/oauth2/token");
    assert_eq!(
        envoy.counter("service.partner.calls") as usize,
        partner_sts.count()
    );
    assert_eq!(
        envoy.counter("service.sts.calls") as usize,
        home_sts.count()
    );
    assert_eq!(envoy.counter("service.partner.errors"), 0);
}

#[test]
fn a_chain_sends_the_second_hop_only_the_first_hops_token_once_for_sixteen_requests() {
    let (home_sts, partner_sts) = (TestSts::start(0, home), TestSts::start(0, partner));
    let envoy = Arc::new(start(&home_sts, &partner_sts, config(json!({})), 1));
    for r in envoy.concurrent_gets(16, "/foreign/tools", "bob") {
        assert_eq!(upstream_token(&r), "Bearer partner-1-from-grant-1-for-bob");
    }
    assert_eq!(home_sts.count(), 1, "one first hop");
    assert_eq!(partner_sts.count(), 1, "one second hop");
    let first = &home_sts.calls()[0];
    assert_eq!(first.field("subject_token"), Some("bob"));
    assert_eq!(first.field("requested_token_type"), Some(JWT_TYPE));
    let second = &partner_sts.calls()[0];
    assert_eq!(second.field("assertion"), Some("grant-1-for-bob"));
    assert_eq!(second.field("scope"), Some("read"));
    assert!(
        !second
            .form
            .iter()
            .any(|(_, v)| v.contains("bob") && !v.starts_with("grant-")),
        "the subject token never reaches the second service: {:?}",
        second.form
    );
    // Cached for the first hop's 3 s, not the second's hour.
    let again = upstream_token(&envoy.get_with_token("/foreign/tools", "bob"));
    assert_eq!(again, "Bearer partner-1-from-grant-1-for-bob");
    assert_eq!(home_sts.count(), 1);
    thread::sleep(Duration::from_millis(3_200));
    let later = upstream_token(&envoy.get_with_token("/foreign/tools", "bob"));
    assert_eq!(later, "Bearer partner-2-from-grant-2-for-bob");
    assert_eq!((home_sts.count(), partner_sts.count()), (2, 2));
}

#[test]
fn each_hops_failure_is_answered_by_the_error_table() {
    let (home_sts, partner_sts) = (TestSts::start(0, home), TestSts::start(0, partner));
    let envoy = start(&home_sts, &partner_sts, config(json!({})), 1);
    // The first hop is down: 503, no second hop.
    let r = envoy.get_with_token("/foreign/x", "home-down");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(partner_sts.count(), 0);
    // The second hop refuses the grant: 401 invalid_token, never the grant in the answer.
    let r = envoy.get_with_token("/foreign/x", "refused-user");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert!(!r.body.contains("grant-"), "{}", r.body);
    assert_eq!(partner_sts.count(), 1);
    // Remembered: the same token does not ask again.
    assert_eq!(
        envoy.get_with_token("/foreign/x", "refused-user").status,
        401
    );
    assert_eq!((home_sts.count(), partner_sts.count()), (2, 1));
}

#[test]
fn the_resource_metadata_is_served_and_named_in_401s_and_txn_tokens_go_in_their_header() {
    let (home_sts, partner_sts) = (
        TestSts::start(0, |n, call| {
            let txn = call.field("requested_token_type") == Some(TXN_TYPE);
            let body = json!({ "access_token": format!("txn-{n}"), "token_type": if txn { "N_A" } else { "Bearer" },
                               "issued_token_type": call.field("requested_token_type").unwrap_or(TXN_TYPE),
                               "expires_in": 60 });
            StsReply::json(200, body)
        }),
        TestSts::start(0, partner),
    );
    let c = json!({
        "sts": { "cluster": "sts", "authority": "sts.home.test", "token_path": "/token",
                 "client_id": "edge", "client_secret": "home-secret" },
        "exchange": { "requested_token_type": TXN_TYPE, "audience": "trust-domain.test", "scope": "orders" },
        "output": { "header": "txn-token", "prefix": "" },
        "protected_resource": { "resource": "https://mcp.test", "authorization_servers": ["https://idp.test"],
                                "scopes_supported": ["mcp:tools"] }
    });
    let envoy = start(&home_sts, &partner_sts, c, 1);
    let doc = envoy.get("/.well-known/oauth-protected-resource", &[]);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("content-type"), Some("application/json"));
    assert_eq!(
        doc.json(),
        json!({ "resource": "https://mcp.test", "authorization_servers": ["https://idp.test"],
                "scopes_supported": ["mcp:tools"], "bearer_methods_supported": ["header"] }),
        "answered by the filter, not the echo upstream"
    );
    let r = envoy.get("/api", &[]);
    assert_eq!(r.status, 401);
    let want = format!(
        "resource_metadata=\"http://127.0.0.1:{}/.well-known/oauth-protected-resource\"",
        envoy.port
    );
    assert!(
        r.header("www-authenticate").unwrap().ends_with(&want),
        "{:?}",
        r.header("www-authenticate")
    );
    // The transaction token run: its own header, no prefix, the caller's token gone.
    let r = envoy.get_with_token("/orders", "carol");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("txn-token"), Some(json!("txn-1")));
    assert_eq!(r.upstream_header("authorization"), None);
    let call = &home_sts.calls()[0];
    assert_eq!(call.field("requested_token_type"), Some(TXN_TYPE));
    assert_eq!(call.field("subject_token"), Some("carol"));
    assert_eq!(home_sts.count(), 1);
}
