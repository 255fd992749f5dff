//! End to end, step-up and the token service's challenges: a policy that asks for a strong and
//! recent authentication answers RFC 9470's 401, every 401 and 403 names the resource's
//! metadata, and Microsoft Entra's on-behalf-of flow (the JWT bearer grant, as the recipe
//! configures it) against a stand-in that speaks Entra's form and answers, including its
//! `interaction_required` with a claims challenge. The release `.wasm` in a real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use support::{now_s, Signer, StsCall, StsReply, TestSts};

const ISS: &str = "https://login.example.com/tenant/v2.0";
const METADATA: &str = "resource_metadata=\"http://127.0.0.1";

fn issuer(signer: &Signer) -> Value {
    json!([{ "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } }])
}

/// A user's token with `scope`, `acr` and an `auth_time` `age_s` ago.
fn user_token(signer: &Signer, scope: &str, acr: &str, age_s: u64) -> String {
    let claims = json!({ "iss": ISS, "sub": "alice", "exp": now_s() + 3600, "scp": scope,
                         "acr": acr, "auth_time": now_s() - age_s });
    signer.token(&claims, None)
}

fn www_authenticate(r: &support::Reply) -> String {
    r.header("www-authenticate").unwrap_or_default().to_string()
}

#[test]
fn a_policy_asks_for_a_stronger_and_fresher_authentication_and_names_the_metadata() {
    let sts = TestSts::start(0, support::mint);
    let signer = Signer::new("k1");
    let config = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                 "client_id": "edge", "client_secret": "s" },
        "trusted_issuers": issuer(&signer),
        "protected_resource": { "resource": "https://api.example.com", "scopes_supported": ["pay"] },
        "require": [{ "scopes": ["pay"], "acr": ["phr", "phrh"], "max_age_s": 300 }]
    });
    let envoy = support::start_filter(sts.port, config, 2, &[], &[]);
    for (token, acr) in [
        (user_token(&signer, "pay", "pwd", 10), true),
        (user_token(&signer, "pay", "phr", 900), true),
    ] {
        let r = envoy.get_with_token("/pay", &token);
        assert_eq!(r.status, 401, "{}", r.body);
        let c = www_authenticate(&r);
        assert!(
            c.contains("error=\"insufficient_user_authentication\""),
            "{c}"
        );
        assert!(
            c.contains("max_age=300") && c.contains("acr_values=\"phr phrh\"") == acr,
            "{c}"
        );
        assert!(c.contains(METADATA), "{c}");
        assert_eq!(r.json()["error"], "insufficient_user_authentication");
    }
    let r = envoy.get_with_token("/pay", &user_token(&signer, "read", "phr", 10));
    assert_eq!(r.status, 403, "{}", r.body);
    let c = www_authenticate(&r);
    assert!(c.contains("scope=\"pay\"") && c.contains(METADATA), "{c}");
    let good = user_token(&signer, "pay", "phrh", 10);
    assert_eq!(envoy.get_with_token("/pay", &good).status, 200);
    assert_eq!(sts.count(), 1);
    assert_eq!(envoy.counter("step_up_required"), 2);
}

const CLAIMS: &str = r#"{"access_token":{"capolids":{"essential":true,"values":["c1d2e3"]}}}"#;

/// Microsoft Entra's token endpoint for the on-behalf-of flow, as it answers: the first call
/// asks the user to satisfy a Conditional Access policy (with a claims challenge), the second
/// call too but without one, then tokens (no `issued_token_type`, `ext_expires_in`, a
/// refresh token).
fn entra(n: usize, call: &StsCall) -> StsReply {
    let obo = call.field("grant_type") == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        && call.field("requested_token_use") == Some("on_behalf_of")
        && call.field("client_id") == Some("11111111-2222-3333-4444-555555555555")
        && call.field("client_secret") == Some("entra-secret")
        && call.field("scope") == Some("api://orders/.default")
        && call.field("assertion").is_some();
    if !obo {
        return StsReply::json(
            400,
            json!({ "error": "invalid_request",
            "error_description": "AADSTS900144: The request body must contain the following parameter" }),
        );
    }
    let interaction = |claims: Option<&str>| {
        let mut body = json!({
            "error": "interaction_required",
            "error_description": "AADSTS50079: Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access 'orders'. Trace ID: 0a1b Correlation ID: 2c3d Timestamp: 2026-12-07 19:00:00Z",
            "error_codes": [50079], "timestamp": "2026-12-07 19:00:00Z", "trace_id": "0a1b",
            "correlation_id": "2c3d", "error_uri": "https://login.example.com/error?code=50079",
            "suberror": "basic_action"
        });
        if let Some(c) = claims {
            body["claims"] = Value::String(c.into());
        }
        StsReply::json(400, body)
    };
    match n {
        1 => interaction(Some(CLAIMS)),
        2 => interaction(None),
        _ => StsReply::json(
            200,
            json!({ "token_type": "Bearer", "scope": "api://orders/orders.read",
            "expires_in": 3599, "ext_expires_in": 3599, "access_token": format!("entra-obo-{n}"),
            "refresh_token": "0.AAAA-refresh" }),
        ),
    }
}

#[test]
fn entras_on_behalf_of_flow_and_its_claims_challenge() {
    let sts = TestSts::start(0, entra);
    let signer = Signer::new("k1");
    // The recipe's configuration (docs/recipes/step-up.md).
    let config = json!({
        "sts": { "cluster": "sts", "authority": "login.example.com", "token_path": "/tenant/oauth2/v2.0/token",
                 "client_id": "11111111-2222-3333-4444-555555555555", "client_secret": "entra-secret",
                 "client_auth": "client_secret_post" },
        "trusted_issuers": issuer(&signer),
        "exchange": { "grant": "jwt_bearer", "scope": "api://orders/.default",
                      "extra_params": { "requested_token_use": "on_behalf_of" } }
    });
    let envoy = support::start_filter(sts.port, config, 1, &[], &[]);
    let token = user_token(&signer, "access_as_user", "pwd", 10);

    let r = envoy.get_with_token("/orders", &token);
    assert_eq!(r.status, 401, "{}", r.body);
    let c = www_authenticate(&r);
    let expected = STANDARD.encode(serde_json::from_str::<Value>(CLAIMS).unwrap().to_string());
    assert!(c.contains("error=\"insufficient_claims\""), "{c}");
    assert!(c.contains(&format!("claims=\"{expected}\"")), "{c}");
    assert!(
        !r.body.contains("AADSTS") && !c.contains("AADSTS"),
        "Entra's description echoed: {}",
        r.body
    );
    // Not remembered: the next request asks again (the user may have acted meanwhile).
    let r = envoy.get_with_token("/orders", &token);
    assert_eq!(r.status, 401);
    assert!(www_authenticate(&r).contains("error=\"interaction_required\""));
    let r = envoy.get_with_token("/orders", &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("authorization").unwrap(),
        "Bearer entra-obo-3"
    );
    let calls = sts.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].field("assertion"), Some(token.as_str()));
    assert!(
        calls[2].field("subject_token").is_none() && calls[2].header("authorization").is_none()
    );
    // Served from the cache now.
    assert_eq!(envoy.get_with_token("/orders", &token).status, 200);
    assert_eq!(sts.count(), 3);
    assert_eq!(
        envoy.counter("sts_errors"),
        0,
        "the user's to fix, not an STS fault"
    );
}
