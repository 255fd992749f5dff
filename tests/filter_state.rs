//! End to end, what the filter tells the rest of Envoy: with `output.filter_state`, each
//! request's decision is in Envoy's filter state, and an access log prints it as
//! `%FILTER_STATE(wasm.token_exchange.<field>:PLAIN)%` for a miss, a hit, a bypass, a request
//! without a token let through, a forwarded token and each refusal. The release `.wasm` in a
//! real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::{mint, now_s, start_echo, Envoy, EnvoySetup, Signer, StsReply, TestSts};

const ISS: &str = "https://idp.test";
const FIELDS: [&str; 8] = [
    "outcome", "error", "sub", "iss", "actor", "service", "sts_ms", "token_id",
];

/// A JSON access log with the path, the status and every field.
fn json_log(doc: &mut Value) {
    let mut format = json!({ "path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%" });
    for f in FIELDS {
        format[f] = json!(format!("%FILTER_STATE(wasm.token_exchange.{f}:PLAIN)%"));
    }
    let hcm = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    hcm["access_log"][0]["typed_config"]["log_format"] = json!({ "json_format": format });
}

fn start(sts: &TestSts, signer: &Signer, extra: Value) -> Envoy {
    let mut config = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                 "client_id": "edge", "client_secret": "s" },
        "exchange": { "audience": ["api"] },
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } },
                            { "issuer": "https://legacy.test", "algorithms": ["ES256"],
                              "jwks": { "keys": [signer.jwk()] }, "action": "forward" }],
        "routes": [
            { "match": { "path_prefix": "/healthz" }, "bypass": true },
            { "match": { "path_prefix": "/public" }, "require": [] },
            { "match": { "path_prefix": "/admin" }, "require": [{ "scopes": ["admin"] }] }
        ],
        "on_missing_token": "allow",
        "output": { "filter_state": FIELDS }
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    launch(sts, config, json_log)
}

/// A filter that verifies `signer`'s tokens, with `output`.
fn verifying(signer: &Signer, output: Value) -> Value {
    json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                 "client_id": "edge", "client_secret": "s" },
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } }],
        "output": output
    })
}

/// A token of `signer`'s issuer for `sub`, valid ten minutes.
fn token_of(signer: &Signer, sub: &str) -> String {
    signer.token(
        &json!({ "iss": ISS, "sub": sub, "exp": now_s() + 600 }),
        None,
    )
}

/// Envoy with the filter configured by `config`, one worker, its bootstrap changed by `edit`.
fn launch(sts: &TestSts, config: Value, edit: impl FnOnce(&mut Value)) -> Envoy {
    let setup = EnvoySetup {
        filter_config: config,
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 1,
        ..EnvoySetup::default()
    };
    Envoy::start_edited(setup, edit)
}

/// The access log's line for `path`, as JSON (the last one).
fn logged(envoy: &Envoy, path: &str) -> Value {
    let lines = envoy.access_log();
    let line = lines.iter().rev().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["path"] == path).then_some(v)
    });
    line.unwrap_or_else(|| panic!("no line for {path}:\n{}", lines.join("\n")))
}

#[test]
fn every_path_a_request_takes_is_in_the_access_log() {
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let envoy = start(&sts, &signer, json!({}));
    let alice = signer.token(
        &json!({ "iss": ISS, "sub": "alice", "exp": now_s() + 600, "scope": "read" }),
        None,
    );
    let auth = format!("Bearer {alice}");

    assert_eq!(
        envoy
            .get("/orders?miss", &[("authorization", &auth)])
            .status,
        200
    );
    assert_eq!(
        envoy.get("/orders?hit", &[("authorization", &auth)]).status,
        200
    );
    assert_eq!(envoy.get("/healthz", &[]).status, 200);
    assert_eq!(envoy.get("/public", &[]).status, 200);
    assert_eq!(envoy.get("/admin", &[("authorization", &auth)]).status, 403);
    assert_eq!(
        envoy
            .get("/orders?bad", &[("authorization", "Bearer not.a.jwt")])
            .status,
        401
    );
    let legacy = signer.token(
        &json!({ "iss": "https://legacy.test", "sub": "lee", "exp": now_s() + 600 }),
        None,
    );
    assert_eq!(envoy.get_with_token("/orders?fwd", &legacy).status, 200);

    let miss = logged(&envoy, "/orders?miss");
    assert_eq!(miss["outcome"], "exchanged");
    assert_eq!(
        (miss["sub"].as_str(), miss["iss"].as_str()),
        (Some("alice"), Some(ISS))
    );
    assert_eq!(miss["service"], "sts");
    assert!(
        miss["sts_ms"].as_str().unwrap().parse::<u64>().is_ok(),
        "{miss}"
    );
    assert_eq!(miss["token_id"].as_str().unwrap().len(), 8);
    let hit = logged(&envoy, "/orders?hit");
    assert_eq!(
        (hit["outcome"].as_str(), hit["sub"].as_str()),
        (Some("cached"), Some("alice"))
    );
    assert_eq!(hit["token_id"], miss["token_id"]);
    assert_eq!(logged(&envoy, "/healthz")["outcome"], "bypassed");
    assert_eq!(logged(&envoy, "/public")["outcome"], "passed_without_token");
    let denied = logged(&envoy, "/admin");
    assert_eq!(
        (denied["outcome"].as_str(), denied["error"].as_str()),
        (Some("denied"), Some("insufficient_scope"))
    );
    assert_eq!(denied["sub"], "alice");
    let bad = logged(&envoy, "/orders?bad");
    assert_eq!(
        (bad["outcome"].as_str(), bad["error"].as_str()),
        (Some("rejected"), Some("invalid_token"))
    );
    assert!(bad["sub"].is_null(), "not verified: {bad}");
    let fwd = logged(&envoy, "/orders?fwd");
    assert_eq!(
        (fwd["outcome"].as_str(), fwd["sub"].as_str()),
        (Some("forwarded"), Some("lee"))
    );
    // Never a token.
    for line in envoy.access_log() {
        assert!(
            !line.contains(&alice) && !line.contains("minted-"),
            "{line}"
        );
    }
}

#[test]
fn an_outage_and_a_delegations_actor_are_in_the_access_log() {
    let sts = TestSts::start(0, |n, _| match n {
        1 => StsReply::error(503, "temporarily_unavailable"),
        _ => StsReply::json(
            200,
            json!({ "access_token": format!("{}.{}.sig", "eyJhbGciOiJub25lIn0",
            "eyJzdWIiOiJhbGljZSIsImFjdCI6eyJzdWIiOiJlZGdlLWFnZW50In19"),
            "token_type": "Bearer", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "expires_in": 600 }),
        ),
    });
    let signer = Signer::new("k1");
    let envoy = start(&sts, &signer, json!({}));
    let bob = signer.token(
        &json!({ "iss": ISS, "sub": "bob", "exp": now_s() + 600 }),
        None,
    );
    assert_eq!(envoy.get_with_token("/orders?down", &bob).status, 503);
    let down = logged(&envoy, "/orders?down");
    assert_eq!(
        (down["outcome"].as_str(), down["error"].as_str()),
        (Some("unavailable"), Some("temporarily_unavailable"))
    );
    assert_eq!(envoy.get_with_token("/orders?acting", &bob).status, 200);
    assert_eq!(logged(&envoy, "/orders?acting")["actor"], "edge-agent");
}

#[test]
fn envoys_rbac_denies_by_the_verified_subject_the_filter_left() {
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let config = verifying(&signer, json!({ "filter_state": ["sub"] }));
    // The docs' RBAC filter (docs/access-logs.md), after this one.
    let envoy = launch(&sts, config, |doc| {
        let hcm = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let filters = hcm["http_filters"].as_array_mut().unwrap();
        filters.insert(1, json!({ "name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": { "action": "DENY", "policies": { "suspended-users": {
                "permissions": [{ "any": true }],
                "principals": [{ "filter_state": { "key": "wasm.token_exchange.sub",
                                                    "string_match": { "exact": "mallory" } } }] } } } } }));
    });
    let token = |sub: &str| token_of(&signer, sub);
    assert_eq!(envoy.get_with_token("/", &token("alice")).status, 200);
    let r = envoy.get_with_token("/", &token("mallory"));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("RBAC"), "{}", r.body);
}

#[test]
fn a_step_up_a_bad_proof_and_a_token_service_fault_are_in_the_access_log() {
    let sts = TestSts::start(0, |_, _| StsReply::error(401, "invalid_client"));
    let signer = Signer::new("k1");
    let extra = json!({ "routes": [
        { "match": { "path_prefix": "/pay" }, "require": [{ "scopes": ["pay"], "acr": ["phr"] }] }
    ] });
    let envoy = start(&sts, &signer, extra);
    let claims = |scope: &str| json!({ "iss": ISS, "sub": "carol", "exp": now_s() + 600, "scope": scope, "acr": "pwd" });
    assert_eq!(
        envoy
            .get_with_token("/pay", &signer.token(&claims("pay"), None))
            .status,
        401
    );
    let pay = logged(&envoy, "/pay");
    assert_eq!(
        (pay["outcome"].as_str(), pay["sub"].as_str()),
        (Some("step_up"), Some("carol"))
    );
    assert_eq!(pay["error"], "insufficient_user_authentication");
    // A DPoP request without a proof.
    let dpop = [(
        "authorization",
        format!("DPoP {}", signer.token(&claims("read"), None)),
    )];
    let headers: Vec<(&str, &str)> = dpop.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(envoy.get("/orders?dpop", &headers).status, 401);
    let proof = logged(&envoy, "/orders?dpop");
    assert_eq!(
        (proof["outcome"].as_str(), proof["error"].as_str()),
        (Some("rejected"), Some("invalid_dpop_proof"))
    );
    // The token service refuses the filter's own credentials: 502.
    assert_eq!(
        envoy
            .get_with_token("/orders?fault", &signer.token(&claims("read"), None))
            .status,
        502
    );
    let fault = logged(&envoy, "/orders?fault");
    assert_eq!(
        (fault["outcome"].as_str(), fault["error"].as_str()),
        (Some("failed"), Some("bad_gateway"))
    );
}

#[test]
fn a_local_rate_limit_counts_each_verified_subject_apart() {
    let sts = TestSts::start(0, mint);
    let signer = Signer::new("k1");
    let config = verifying(
        &signer,
        json!({ "claims_to_headers": [{ "claim": "sub", "header": "x-subject" }] }),
    );
    // The docs' local rate limit (docs/access-logs.md), after this filter: two requests a minute
    // for each subject.
    let envoy = launch(&sts, config, |doc| {
        let hcm = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let filters = hcm["http_filters"].as_array_mut().unwrap();
        filters.insert(1, json!({ "name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "per_subject",
            "token_bucket": { "max_tokens": 1000, "tokens_per_fill": 1000, "fill_interval": "1s" },
            "filter_enabled": { "default_value": { "numerator": 100 }, "runtime_key": "rl_enabled" },
            "filter_enforced": { "default_value": { "numerator": 100 }, "runtime_key": "rl_enforced" },
            "rate_limits": [{ "actions": [{ "request_headers": {
                "header_name": "x-subject", "descriptor_key": "subject" } }] }],
            "descriptors": [{ "entries": [{ "key": "subject" }],
                              "token_bucket": { "max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "60s" } }],
            "max_dynamic_descriptors": 1000 } }));
    });
    let token = |sub: &str| token_of(&signer, sub);
    let (alice, bob) = (token("alice"), token("bob"));
    for _ in 0..2 {
        assert_eq!(envoy.get_with_token("/", &alice).status, 200);
    }
    assert_eq!(envoy.get_with_token("/", &alice).status, 429);
    // Another subject has its own bucket; a caller naming another subject in the header
    // itself does not move to that bucket (the filter sets the header from the verified claim).
    assert_eq!(envoy.get_with_token("/", &bob).status, 200);
    let bearer = format!("Bearer {alice}");
    let r = envoy.get("/", &[("authorization", &bearer), ("x-subject", "carol")]);
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(envoy.get_with_token("/", &bob).status, 200);
    assert_eq!(envoy.get_with_token("/", &bob).status, 429);
}
