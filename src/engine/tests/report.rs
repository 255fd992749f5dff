//! `output.filter_state`: each request's decision in its final verdict, for every outcome (a
//! miss, a memo hit and a shared cache hit, a forward, a bypass, a request without a token let
//! through, each refusal, an outage failing open or closed, a delegation's actor), with `sub`
//! and `iss` of verified tokens only, and never a token.

use std::collections::BTreeMap;

use super::issuers::{keys, unsigned, ISS};
use super::*;
use serde_json::{json, Value};

const ALL: [&str; 8] = [
    "outcome", "error", "sub", "iss", "actor", "service", "sts_ms", "token_id",
];

fn reporting(extra: Value) -> Engine {
    let mut config = json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() }],
        "output": { "filter_state": ALL },
        "routes": [
            { "match": { "path_prefix": "/healthz" }, "bypass": true },
            { "match": { "path_prefix": "/admin" }, "require": [{ "scopes": ["admin"] }] },
            { "match": { "path_prefix": "/pay" }, "require": [{ "scopes": ["pay"], "acr": ["phr"] }] }
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    engine(config)
}

fn user() -> String {
    let claims = json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + 600, "scope": "read" });
    keys().sign("RS256", Some("rsa"), &claims)
}

fn at(e: &mut Engine, h: &FakeHost, ctx: u32, path: &str, token: &str) -> Verdict {
    let auth = bearer(token);
    e.on_request(
        h,
        ctx,
        &[(":path", path), ("authorization", auth.as_str())][..],
    )
}

/// The fields a verdict leaves in filter state.
fn state(v: &Verdict) -> BTreeMap<&'static str, String> {
    match v {
        Verdict::Continue(ops) => (ops.iter())
            .filter_map(|op| match op {
                HeaderOp::State(f, v) => Some((*f, v.clone())),
                _ => None,
            })
            .collect(),
        Verdict::Respond(r) => r.state.iter().cloned().collect(),
        Verdict::Pause => BTreeMap::new(),
    }
}

fn outcome(v: &Verdict) -> String {
    state(v).get("outcome").cloned().unwrap_or_default()
}

#[test]
fn a_miss_and_its_hits_tell_who_which_service_and_how_long_it_waited() {
    let h = FakeHost::at(NOW);
    let mut e = reporting(json!({}));
    let t = user();
    assert_eq!(at(&mut e, &h, 1, "/orders", &t), Verdict::Pause);
    h.advance_ms(250);
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 600));
    let s = state(&out[0].1);
    assert_eq!(s["outcome"], "exchanged");
    assert_eq!((s["sub"].as_str(), s["iss"].as_str()), ("alice", ISS));
    assert_eq!(
        (s["service"].as_str(), s["sts_ms"].as_str()),
        ("sts", "250")
    );
    assert_eq!(s["token_id"], token::fingerprint(&t));
    assert!(!s.contains_key("error") && !s.contains_key("actor"));
    assert!(
        !s.values().any(|v| v.contains(&t) || v.contains("minted")),
        "never a token"
    );
    // The memo, and another worker's shared cache.
    let hot = at(&mut e, &h, 2, "/orders", &t);
    assert_eq!(outcome(&hot), "cached");
    assert_eq!(state(&hot)["sub"], "alice");
    assert!(!state(&hot).contains_key("sts_ms"), "it waited on nothing");
    let mut other = reporting(json!({}));
    let shared = at(&mut other, &h, 1, "/orders", &t);
    assert_eq!(
        (outcome(&shared), state(&shared)["sub"].as_str()),
        ("cached".into(), "alice")
    );
}

#[test]
fn each_refusal_tells_its_outcome_and_error_and_a_verified_subject_only() {
    let h = FakeHost::at(NOW);
    let mut e = reporting(json!({}));
    let forged = unsigned(json!({ "iss": ISS, "sub": "mallory", "exp": NOW / 1000 + 600 }));
    let v = at(&mut e, &h, 1, "/orders", &forged);
    let s = state(&v);
    assert_eq!(
        (s["outcome"].as_str(), s["error"].as_str()),
        ("rejected", "invalid_token")
    );
    assert!(!s.contains_key("sub"), "not verified: {s:?}");
    assert_eq!(s["token_id"], token::fingerprint(&forged));
    let v = at(&mut e, &h, 2, "/admin", &user());
    let s = state(&v);
    assert_eq!(
        (s["outcome"].as_str(), s["error"].as_str()),
        ("denied", "insufficient_scope")
    );
    assert_eq!(
        s["sub"], "alice",
        "a verified token refused by policy names its subject"
    );
    let pay = keys().sign(
        "RS256",
        Some("rsa"),
        &json!({ "iss": ISS, "sub": "alice",
        "exp": NOW / 1000 + 600, "scope": "pay", "acr": "pwd" }),
    );
    let v = at(&mut e, &h, 3, "/pay", &pay);
    assert_eq!(outcome(&v), "step_up");
    assert_eq!(state(&v)["error"], "insufficient_user_authentication");
    let v = e.on_request(&h, 4, &[(":path", "/orders")][..]);
    assert_eq!(
        (outcome(&v), state(&v)["error"].as_str()),
        ("rejected".into(), "unauthorized")
    );
}

#[test]
fn the_sts_failing_tells_unavailable_failed_or_failed_open() {
    let h = FakeHost::at(NOW);
    let mut e = reporting(json!({}));
    assert_eq!(at(&mut e, &h, 1, "/orders", &user()), Verdict::Pause);
    let out = e.on_http_answer(&h, None, h.last_call(), &no_answer());
    assert_eq!(outcome(&out[0].1), "unavailable");
    let other = keys().sign(
        "RS256",
        Some("rsa"),
        &json!({ "iss": ISS, "sub": "bob", "exp": NOW / 1000 + 600 }),
    );
    assert_eq!(at(&mut e, &h, 2, "/orders", &other), Verdict::Pause);
    let out = e.on_http_answer(&h, None, h.last_call(), &err(401, "invalid_client"));
    assert_eq!(
        (outcome(&out[0].1), state(&out[0].1)["error"].as_str()),
        ("failed".into(), "bad_gateway")
    );
    let mut open = reporting(json!({ "on_sts_unavailable": "allow" }));
    assert_eq!(at(&mut open, &h, 1, "/orders", &user()), Verdict::Pause);
    let out = open.on_http_answer(&h, None, h.last_call(), &no_answer());
    assert_eq!(outcome(&out[0].1), "failed_open");
}

#[test]
fn bypass_no_token_forward_and_a_delegations_actor_tell_their_path() {
    let h = FakeHost::at(NOW);
    let mut e = reporting(json!({ "on_missing_token": "allow" }));
    let v = at(&mut e, &h, 1, "/healthz", &user());
    assert_eq!(
        state(&v),
        BTreeMap::from([("outcome", "bypassed".to_string())])
    );
    let v = e.on_request(&h, 2, &[(":path", "/orders")][..]);
    assert_eq!(
        state(&v),
        BTreeMap::from([("outcome", "passed_without_token".to_string())])
    );
    let mut fwd = reporting(json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks(), "action": "forward" }]
    }));
    let v = at(&mut fwd, &h, 1, "/orders", &user());
    assert_eq!(
        (outcome(&v), state(&v)["sub"].as_str()),
        ("forwarded".into(), "alice")
    );
    // A minted token that names its actor.
    let mut e = reporting(json!({}));
    assert_eq!(at(&mut e, &h, 3, "/orders", &user()), Verdict::Pause);
    let minted = unsigned(
        json!({ "sub": "alice", "act": { "sub": "edge-agent" }, "exp": NOW / 1000 + 600 }),
    );
    let out = e.on_http_answer(&h, None, h.last_call(), &ok(&minted, 600));
    assert_eq!(state(&out[0].1)["actor"], "edge-agent");
}

#[test]
fn only_the_listed_fields_are_written_and_none_by_default() {
    let h = FakeHost::at(NOW);
    let mut some = reporting(json!({ "output": { "filter_state": ["outcome", "token_id"] } }));
    let v = at(&mut some, &h, 1, "/healthz", "t");
    assert_eq!(state(&v).len(), 1);
    let v = at(&mut some, &h, 2, "/orders", "not-a-jwt");
    assert_eq!(
        state(&v).keys().copied().collect::<Vec<_>>(),
        ["outcome", "token_id"]
    );
    let mut none = engine(json!({}));
    assert_eq!(at(&mut none, &h, 1, "/orders", "t"), Verdict::Pause);
    let out = none.on_http_answer(&h, None, h.last_call(), &ok("m", 60));
    assert!(state(&out[0].1).is_empty());
}

#[test]
fn a_request_that_goes_away_mid_wait_leaves_no_note_behind() {
    let h = FakeHost::at(NOW);
    let mut e = reporting(json!({}));
    assert_eq!(at(&mut e, &h, 1, "/orders", &user()), Verdict::Pause);
    e.on_request_done(1);
    // Another request on the same context id: its own decision only.
    let v = at(&mut e, &h, 1, "/healthz", "t");
    assert_eq!(
        state(&v),
        BTreeMap::from([("outcome", "bypassed".to_string())])
    );
    // The call's answer reaches nobody.
    assert!(e
        .on_http_answer(&h, None, h.last_call(), &ok("m", 60))
        .is_empty());
}
