//! Step-up and the STS's interaction challenges: a policy that asks for a strong or recent
//! authentication answers RFC 9470's 401 (judged again on the memo, a shared cache hit and a
//! forwarded issuer, as time passes), every 401 and 403 names the resource's metadata, and an
//! STS that asks the user to act becomes a 401 the client can act on, never remembered.

use super::issuers::{keys, ISS};
use super::*;
use serde_json::{json, Value};

const ORIGIN: [(&str, &str); 2] = [(":scheme", "https"), (":authority", "api.example.com")];
const METADATA: &str =
    "resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource\"";

fn stepping_up(forward: bool) -> Engine {
    let mut issuer = json!({ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() });
    if forward {
        issuer["action"] = "forward".into();
    }
    engine(json!({
        "trusted_issuers": [issuer],
        "protected_resource": { "resource": "https://api.example.com" },
        "require": [{ "scopes": ["pay"], "acr": ["phr", "phrh"], "max_age_s": 300 },
                    { "scopes": ["admin"] }]
    }))
}

/// A token of the trusted issuer with `scope`, `acr` and an `auth_time` `age_s` ago.
fn token(scope: &str, acr: &str, age_s: u64) -> String {
    let now = NOW / 1000;
    let claims = json!({ "iss": ISS, "sub": "alice", "exp": now + 3600, "scope": scope,
                         "acr": acr, "auth_time": now - age_s });
    keys().sign("RS256", Some("rsa"), &claims)
}

fn ask(e: &mut Engine, h: &FakeHost, ctx: u32, t: &str) -> Verdict {
    let auth = bearer(t);
    let req = [ORIGIN[0], ORIGIN[1], ("authorization", auth.as_str())];
    e.on_request(h, ctx, &req[..])
}

fn is_step_up(v: &Verdict, acr: bool) -> bool {
    let c = challenge(v);
    status(v) == 401
        && c.contains("error=\"insufficient_user_authentication\"")
        && c.contains("max_age=300")
        && c.contains("acr_values=\"phr phrh\"") == acr
        && c.ends_with(METADATA)
}

#[test]
fn a_weak_or_old_authentication_is_asked_to_step_up_and_anything_else_is_403() {
    let h = FakeHost::at(NOW);
    let mut e = stepping_up(false);
    let v = ask(&mut e, &h, 1, &token("pay", "pwd", 10));
    assert!(is_step_up(&v, true), "{}", challenge(&v));
    let v = ask(&mut e, &h, 2, &token("pay", "phr", 400));
    assert!(is_step_up(&v, true), "{}", challenge(&v));
    assert_eq!(h.metric_value(Metric::StepUpRequired), 2);
    // No alternative fails on the authentication alone: 403, naming the scope and the metadata.
    let v = ask(&mut e, &h, 3, &token("read", "phr", 10));
    assert_eq!(status(&v), 403);
    assert!(challenge(&v).contains("scope=\"pay\""), "{}", challenge(&v));
    assert!(challenge(&v).ends_with(METADATA), "{}", challenge(&v));
    assert_eq!(h.metric_value(Metric::StepUpRequired), 2);
    assert!(h.calls_to("sts").is_empty());
    // Strong and recent: exchanged.
    assert_eq!(
        ask(&mut e, &h, 4, &token("pay", "phrh", 10)),
        Verdict::Pause
    );
}

#[test]
fn an_authentication_that_grows_old_is_refused_from_the_memo_and_the_shared_cache() {
    let h = FakeHost::at(NOW);
    let mut e = stepping_up(false);
    let t = token("pay", "phr", 100);
    assert_eq!(ask(&mut e, &h, 1, &t), Verdict::Pause);
    e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
    // Hot in the memo, and in the shared cache another worker reads.
    assert_eq!(
        set_value(&ask(&mut e, &h, 2, &t), "authorization").as_deref(),
        Some("Bearer minted")
    );
    h.advance_ms(200_000);
    assert_eq!(
        set_value(&ask(&mut e, &h, 3, &t), "authorization").as_deref(),
        Some("Bearer minted")
    );
    h.advance_ms(1_000);
    assert!(is_step_up(&ask(&mut e, &h, 4, &t), true), "memo");
    let mut other = stepping_up(false);
    assert!(
        is_step_up(&ask(&mut other, &h, 1, &t), true),
        "shared cache"
    );
    assert_eq!(h.calls_to("sts").len(), 1);
}

#[test]
fn a_forwarded_issuers_token_is_judged_as_time_passes_too() {
    let h = FakeHost::at(NOW);
    let mut e = stepping_up(true);
    let t = token("pay", "phr", 299);
    assert_eq!(
        set_value(&ask(&mut e, &h, 1, &t), "authorization"),
        Some(bearer(&t))
    );
    h.advance_ms(2_000);
    assert!(is_step_up(&ask(&mut e, &h, 2, &t), true));
    // An alternative that asks only for freshness names only max_age.
    let mut fresh_only = engine(json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() }],
        "protected_resource": { "resource": "https://api.example.com" },
        "require": [{ "scopes": ["pay"], "max_age_s": 300 }]
    }));
    assert!(is_step_up(
        &ask(&mut fresh_only, &h, 3, &token("pay", "pwd", 900)),
        false
    ));
}

/// Microsoft Entra's answer when the user must satisfy a Conditional Access policy first.
fn entra_interaction(claims: Option<&str>) -> HttpAnswer {
    let mut body = json!({
        "error": "interaction_required",
        "error_description": "AADSTS50079: Due to a configuration change made by your administrator, you must enroll in multi-factor authentication. Trace ID: 0000 Correlation ID: 1111 Timestamp: 2026-12-07 19:00:00Z",
        "error_codes": [50079], "timestamp": "2026-12-07 19:00:00Z",
        "trace_id": "0000", "correlation_id": "1111", "suberror": "basic_action"
    });
    if let Some(c) = claims {
        body["claims"] = Value::String(c.into());
    }
    HttpAnswer {
        status: Some(400),
        body: body.to_string().into_bytes(),
        too_large: false,
    }
}

#[test]
fn an_sts_that_asks_the_user_to_act_is_a_401_never_remembered_never_echoed() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({ "protected_resource": { "resource": "https://api.example.com" } }));
    let claims = r#"{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}"#;
    for (ctx, answer) in [
        (1, entra_interaction(Some(claims))),
        (2, entra_interaction(None)),
    ] {
        assert_eq!(ask(&mut e, &h, ctx, "user-token"), Verdict::Pause);
        let out = e.on_http_answer(&h, None, h.last_call(), &answer);
        let v = &out[0].1;
        assert_eq!(status(v), 401);
        let Verdict::Respond(r) = v else {
            unreachable!()
        };
        assert!(
            !r.body.contains("AADSTS") && !challenge(v).contains("AADSTS"),
            "echoed: {r:?}"
        );
        assert!(challenge(v).ends_with(METADATA));
        if ctx == 1 {
            use base64::engine::general_purpose::STANDARD;
            use base64::Engine as _;
            let expected =
                STANDARD.encode(serde_json::from_str::<Value>(claims).unwrap().to_string());
            assert!(
                challenge(v).contains("error=\"insufficient_claims\""),
                "{}",
                challenge(v)
            );
            assert!(
                challenge(v).contains(&format!("claims=\"{expected}\"")),
                "{}",
                challenge(v)
            );
        } else {
            assert!(
                challenge(v).contains("error=\"interaction_required\""),
                "{}",
                challenge(v)
            );
        }
    }
    // Never remembered: the user acted, the next request asks the STS again and is served.
    assert_eq!(ask(&mut e, &h, 3, "user-token"), Verdict::Pause);
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 600));
    assert_eq!(
        set_value(&out[0].1, "authorization").as_deref(),
        Some("Bearer minted")
    );
    assert_eq!(h.calls_to("sts").len(), 3);
    assert_eq!(
        h.metric_value(Metric::StsErrors),
        0,
        "the user's to fix, not an STS fault"
    );
}
