//! Opaque tokens of trusted issuers (RFC 7662): introspected once and shared, inactive and
//! refused answers remembered, a token never shown to another issuer, a JWT never introspected,
//! one call for many requests, outages that never fail open, and the answer's claims driving
//! `require`, claim headers, `may_act` and CIBA's `login_hint`.

use super::issuers::{ask, keys, token_with, ISS};
use super::*;
use serde_json::json;

const PARTNER: &str = "https://partner.example";

fn partner(name: &str, cluster: &str) -> serde_json::Value {
    json!({ "issuer": name, "audiences": ["api://edge"],
            "introspection": { "cluster": cluster, "authority": "partner.example",
                               "path": "/introspect", "client_id": "edge", "client_secret": "pw2",
                               "cache_s": 60 } })
}

/// An engine trusting the inline JWT issuer and the introspecting partner, with `extra`.
fn introspecting(extra: serde_json::Value) -> Engine {
    let mut config = json!({
        "trusted_issuers": [
            { "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() },
            partner(PARTNER, "partner")
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    engine(config)
}

/// The partner's answer: active, its issuer and audience, an hour to live, and `extra`.
fn active(extra: serde_json::Value) -> HttpAnswer {
    let mut body = json!({ "active": true, "iss": PARTNER, "aud": "api://edge", "sub": "dora",
                           "exp": NOW / 1000 + 3600 });
    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(x.clone());
    }
    HttpAnswer {
        status: Some(200),
        body: body.to_string().into_bytes(),
        too_large: false,
    }
}

fn inactive() -> HttpAnswer {
    HttpAnswer {
        status: Some(200),
        body: br#"{"active":false}"#.to_vec(),
        too_large: false,
    }
}

/// Answers the last introspection with `answer`: what each waiter got.
fn introspect(e: &mut Engine, h: &FakeHost, answer: &HttpAnswer) -> Vec<(u32, Verdict)> {
    let call = h.calls_to("partner").last().expect("an introspection").0;
    e.on_http_answer(h, None, call, answer)
}

/// Answers the last STS call with a token `minted`.
fn mint(e: &mut Engine, h: &FakeHost, minted: &str) -> Vec<(u32, Verdict)> {
    let call = h.calls_to("sts").last().expect("an STS call").0;
    e.on_http_answer(h, None, call, &ok(minted, 3600))
}

#[test]
fn an_active_opaque_token_is_introspected_once_then_exchanged_and_shared() {
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({}));
    assert_eq!(ask(&mut e, &h, 1, "opaque-1"), Verdict::Pause);
    let calls = h.calls_to("partner");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        form_of(&calls[0].1),
        vec![
            ("token".to_string(), "opaque-1".to_string()),
            ("token_type_hint".to_string(), "access_token".to_string())
        ]
    );
    assert!(h.calls_to("sts").is_empty(), "trust first");
    assert_eq!(
        introspect(&mut e, &h, &active(json!({}))),
        vec![(1, Verdict::Pause)]
    );
    let sts = h.calls_to("sts");
    assert!(form_of(&sts[0].1).contains(&("subject_token".into(), "opaque-1".into())));
    let out = mint(&mut e, &h, "minted");
    assert_eq!(
        set_value(&out[0].1, "authorization"),
        Some(bearer("minted"))
    );
    assert_eq!(h.metric_value(Metric::Introspections), 1);
    // The memo: no call at all.
    let v = ask(&mut e, &h, 2, "opaque-1");
    assert_eq!(set_value(&v, "authorization"), Some(bearer("minted")));
    // Another worker: the answer and the token from shared data.
    let mut other = introspecting(json!({}));
    let v = ask(&mut other, &h, 3, "opaque-1");
    assert_eq!(set_value(&v, "authorization"), Some(bearer("minted")));
    assert_eq!(h.calls_to("partner").len(), 1);
    assert_eq!(h.calls_to("sts").len(), 1);
    assert!(!h.logs.borrow().iter().any(|(_, l)| l.contains("opaque-1")));
}

#[test]
fn an_inactive_token_is_401_and_remembered_for_negative_ttl() {
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({}));
    ask(&mut e, &h, 1, "revoked");
    let out = introspect(&mut e, &h, &inactive());
    assert_eq!(status(&out[0].1), 401);
    assert!(challenge(&out[0].1).contains("error=\"invalid_token\""));
    assert_eq!(h.metric_value(Metric::IntrospectionInactive), 1);
    assert_eq!(h.metric_value(Metric::Rejected), 1);
    let mut other = introspecting(json!({}));
    assert_eq!(
        status(&ask(&mut other, &h, 2, "revoked")),
        401,
        "remembered"
    );
    assert_eq!(h.calls_to("partner").len(), 1);
    h.advance_ms(10_000);
    assert_eq!(ask(&mut e, &h, 3, "revoked"), Verdict::Pause, "asked again");
    assert_eq!(h.calls_to("partner").len(), 2);
    assert!(h.calls_to("sts").is_empty());
}

#[test]
fn another_issuer_a_wrong_audience_or_an_expired_answer_is_refused_without_an_sts_call() {
    let cases = [
        json!({ "iss": "https://evil.example" }),
        json!({ "aud": "api://other" }),
        json!({ "aud": null }),
        json!({ "exp": NOW / 1000 - 60 }),
        json!({ "nbf": NOW / 1000 + 600 }),
    ];
    for (i, extra) in cases.into_iter().enumerate() {
        let h = FakeHost::at(NOW);
        let mut e = introspecting(json!({}));
        ask(&mut e, &h, 1, "tok");
        let mut answer = active(extra.clone());
        if extra.get("aud").is_some_and(|a| a.is_null()) {
            answer.body = format!(
                r#"{{"active":true,"iss":"{PARTNER}","exp":{}}}"#,
                NOW / 1000 + 600
            )
            .into_bytes();
        }
        let out = introspect(&mut e, &h, &answer);
        assert_eq!(status(&out[0].1), 401, "case {i}: {extra}");
        assert!(h.calls_to("sts").is_empty(), "case {i}");
        assert_eq!(
            status(&ask(&mut e, &h, 2, "tok")),
            401,
            "case {i} remembered"
        );
        assert_eq!(h.calls_to("partner").len(), 1, "case {i}");
    }
}

#[test]
fn a_jwt_is_never_introspected() {
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({}));
    let jwt = token_with(json!({}));
    assert_eq!(ask(&mut e, &h, 1, &jwt), Verdict::Pause);
    assert_eq!(
        h.calls_to("sts").len(),
        1,
        "verified by signature, then exchanged"
    );
    let forged = format!(
        "{}.{}.c2ln",
        "eyJhbGciOiJSUzI1NiJ9", "eyJpc3MiOiJodHRwczovL3BhcnRuZXIuZXhhbXBsZSJ9"
    );
    assert_eq!(status(&ask(&mut e, &h, 2, &forged)), 401);
    assert!(h.calls_to("partner").is_empty());
    // A JWT naming the introspecting issuer is not its own: it issues opaque tokens only.
    let claims = json!({ "iss": PARTNER, "sub": "x", "exp": NOW / 1000 + 600 });
    let signed = keys().sign("RS256", Some("rsa"), &claims);
    assert_eq!(status(&ask(&mut e, &h, 3, &signed)), 401);
    assert!(h.calls_to("partner").is_empty());
}

#[test]
fn concurrent_requests_make_one_introspection_and_one_exchange() {
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({}));
    for ctx in 1..=16 {
        assert_eq!(ask(&mut e, &h, ctx, "hot"), Verdict::Pause);
    }
    assert_eq!(h.calls_to("partner").len(), 1);
    let out = introspect(&mut e, &h, &active(json!({})));
    assert_eq!(out.len(), 16);
    assert!(out.iter().all(|(_, v)| *v == Verdict::Pause));
    assert_eq!(
        h.calls_to("sts").len(),
        1,
        "the first starts it, the rest join"
    );
    let out = mint(&mut e, &h, "minted");
    assert_eq!(out.len(), 16);
    assert!(out
        .iter()
        .all(|(_, v)| set_value(v, "authorization") == Some(bearer("minted"))));
    // A waiter that left is not answered; the rest are.
    ask(&mut e, &h, 20, "hot-2");
    ask(&mut e, &h, 21, "hot-2");
    e.on_request_done(20);
    e.on_tick(&h);
    assert_eq!(
        h.calls_to("partner").len(),
        3,
        "sent again for the one still waiting"
    );
    let out = introspect(&mut e, &h, &inactive());
    assert_eq!(out.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![21]);
}

#[test]
fn an_endpoint_down_is_503_never_fail_open_and_backs_off() {
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({ "on_sts_unavailable": "allow" }));
    ask(&mut e, &h, 1, "t1");
    let out = introspect(&mut e, &h, &no_answer());
    assert_eq!(status(&out[0].1), 503);
    let Verdict::Respond(r) = &out[0].1 else {
        unreachable!()
    };
    assert!(r.header("retry-after").is_some());
    assert_eq!(h.metric_value(Metric::IntrospectionErrors), 1);
    // Within the pause: 503 at once, no call.
    assert_eq!(status(&ask(&mut e, &h, 2, "t2")), 503);
    assert_eq!(h.calls_to("partner").len(), 1);
    h.advance_ms(1_000);
    assert_eq!(ask(&mut e, &h, 3, "t2"), Verdict::Pause);
    let out = introspect(&mut e, &h, &err(500, "x"));
    assert_eq!(status(&out[0].1), 503);
    h.advance_ms(2_000);
    ask(&mut e, &h, 4, "t3");
    let out = introspect(&mut e, &h, &err(401, "invalid_client"));
    assert_eq!(status(&out[0].1), 502, "the proxy's credentials refused");
    h.advance_ms(4_000);
    ask(&mut e, &h, 5, "t4");
    let out = introspect(&mut e, &h, &err(200, "no active here"));
    assert_eq!(status(&out[0].1), 502, "nonsense");
    assert_eq!(h.metric_value(Metric::IntrospectionErrors), 4);
    assert!(h.calls_to("sts").is_empty());
    h.refuse_dispatch.set(true);
    h.advance_ms(8_000);
    assert_eq!(status(&ask(&mut e, &h, 6, "t5")), 503, "not dispatched");
}

#[test]
fn the_answer_is_trusted_for_cache_s_then_asked_again() {
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({}));
    ask(&mut e, &h, 1, "t");
    introspect(&mut e, &h, &active(json!({})));
    mint(&mut e, &h, "minted");
    h.advance_ms(59_000);
    assert_eq!(
        set_value(&ask(&mut e, &h, 2, "t"), "authorization"),
        Some(bearer("minted"))
    );
    h.advance_ms(1_000);
    // The minted token is still cached, but trust is not: revoked since, refused now.
    assert_eq!(ask(&mut e, &h, 3, "t"), Verdict::Pause);
    let out = introspect(&mut e, &h, &inactive());
    assert_eq!(status(&out[0].1), 401);
    assert_eq!(h.calls_to("sts").len(), 1);
}

/// A request on `path` with `token`.
fn on_path(e: &mut Engine, h: &FakeHost, ctx: u32, path: &str, token: &str) -> Verdict {
    let auth = bearer(token);
    e.on_request(
        h,
        ctx,
        &[(":path", path), ("authorization", auth.as_str())][..],
    )
}

/// The partner introspecting on `/a`, another issuer at cluster `b` on `/b`.
fn two_issuers() -> Engine {
    engine(json!({
        "trusted_issuers": [partner(PARTNER, "partner"), partner("https://b.example", "b")],
        "routes": [
            { "match": { "path_prefix": "/a" }, "introspect": PARTNER },
            { "match": { "path_prefix": "/b" }, "introspect": "https://b.example" }
        ]
    }))
}

#[test]
fn with_two_introspecting_issuers_a_token_goes_only_to_the_one_its_route_names() {
    let h = FakeHost::at(NOW);
    let mut e = two_issuers();
    let at = |e: &mut Engine, ctx: u32, path: &str| on_path(e, &h, ctx, path, "tok");
    assert_eq!(at(&mut e, 1, "/a/x"), Verdict::Pause);
    assert_eq!(at(&mut e, 2, "/b/x"), Verdict::Pause);
    assert_eq!(h.calls_to("partner").len(), 1);
    assert_eq!(h.calls_to("b").len(), 1);
    assert_eq!(status(&at(&mut e, 3, "/elsewhere")), 401, "shown to nobody");
    assert_eq!(h.calls.borrow().len(), 2);
    // b's answer names b: its own token; the partner's answer for the same string is another.
    let call = h.calls_to("b")[0].0;
    let mut b = active(json!({ "iss": "https://b.example" }));
    let out = e.on_http_answer(&h, None, call, &b);
    assert_eq!(out, vec![(2, Verdict::Pause)]);
    b = active(json!({ "iss": "https://b.example" }));
    let out = introspect(&mut e, &h, &b);
    assert_eq!(
        status(&out[0].1),
        401,
        "the partner cannot vouch for b's token"
    );
}

#[test]
fn the_answers_claims_drive_the_policy_claim_headers_and_may_act() {
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({
        "require": [{ "scopes": ["orders:read"], "claims": { "tenant": ["acme"] } }],
        "output": { "claims_to_headers": [{ "claim": "sub", "header": "x-user" },
                                          { "claim": "client_id", "header": "x-client" }] }
    }));
    ask(&mut e, &h, 1, "weak");
    let out = introspect(
        &mut e,
        &h,
        &active(json!({ "scope": "orders:write", "tenant": "acme" })),
    );
    assert_eq!(status(&out[0].1), 403);
    assert!(challenge(&out[0].1).contains("scope=\"orders:read\""));
    assert_eq!(
        status(&ask(&mut e, &h, 2, "weak")),
        403,
        "remembered verdict"
    );
    ask(&mut e, &h, 3, "strong");
    let claims = json!({ "scope": "orders:read profile", "tenant": "acme", "client_id": "app-7" });
    introspect(&mut e, &h, &active(claims));
    let out = mint(&mut e, &h, "minted");
    assert_eq!(set_value(&out[0].1, "x-user").as_deref(), Some("dora"));
    assert_eq!(set_value(&out[0].1, "x-client").as_deref(), Some("app-7"));
    let mut other = introspecting(json!({
        "require": [{ "scopes": ["orders:read"], "claims": { "tenant": ["acme"] } }],
        "output": { "claims_to_headers": [{ "claim": "sub", "header": "x-user" },
                                          { "claim": "client_id", "header": "x-client" }] }
    }));
    let v = other.on_request(
        &h,
        4,
        &[("authorization", "Bearer strong"), ("x-user", "root")][..],
    );
    assert_eq!(
        set_value(&v, "x-user").as_deref(),
        Some("dora"),
        "another worker"
    );
    assert_eq!(h.calls_to("partner").len(), 2);

    // may_act: the header actor must be the one the answer names.
    let h = FakeHost::at(NOW);
    let mut e = introspecting(json!({
        "exchange": { "actor": { "source": "header", "header": "x-actor" } }
    }));
    let actor = |sub: &str| {
        super::issuers::unsigned(
            json!({ "iss": "https://svc", "sub": sub, "exp": NOW / 1000 + 600 }),
        )
    };
    let with_actor = |e: &mut Engine, ctx: u32, sub: &str| {
        let a = actor(sub);
        e.on_request(
            &h,
            ctx,
            &[("authorization", "Bearer t"), ("x-actor", a.as_str())][..],
        )
    };
    assert_eq!(with_actor(&mut e, 1, "svc-b"), Verdict::Pause);
    let out = introspect(
        &mut e,
        &h,
        &active(json!({ "may_act": { "sub": "svc-a" } })),
    );
    assert_eq!(status(&out[0].1), 403);
    assert_eq!(with_actor(&mut e, 2, "svc-a"), Verdict::Pause);
    assert_eq!(
        h.calls_to("partner").len(),
        1,
        "the answer is shared, may_act judged per actor"
    );
    assert_eq!(h.calls_to("sts").len(), 1);
}

#[test]
fn cibas_login_hint_comes_from_the_answer() {
    use super::ciba::tests_support::{engine as ciba_engine, field, tick};
    let h = FakeHost::at(NOW);
    let mut e = ciba_engine(
        json!({ "login_hint": "email" }),
        json!({ "trusted_issuers": [partner(PARTNER, "partner")] }),
    );
    assert_eq!(ask(&mut e, &h, 1, "opaque"), Verdict::Pause);
    let out = introspect(&mut e, &h, &active(json!({ "email": "dora@example.com" })));
    assert_eq!(out, vec![(1, Verdict::Pause)], "waits for the consent");
    tick(&mut e, &h, 0);
    let calls = h.calls_to("sts");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        field(&calls[0].1, "login_hint").as_deref(),
        Some("dora@example.com")
    );
}

#[test]
fn trust_one_issuer_gave_serves_only_routes_that_introspect_there() {
    // Round 5, D1: issuer A's token, introspected and exchanged on A's route, must not ride
    // the shared cache key onto B's route (B is asked, and says inactive) nor onto a route that
    // names no introspecting issuer (401, shown to nobody).
    let h = FakeHost::at(NOW);
    let mut e = two_issuers();
    let at = |e: &mut Engine, ctx: u32, path: &str| on_path(e, &h, ctx, path, "a-token");
    assert_eq!(at(&mut e, 1, "/a/x"), Verdict::Pause);
    assert_eq!(
        introspect(&mut e, &h, &active(json!({}))),
        vec![(1, Verdict::Pause)]
    );
    let out = mint(&mut e, &h, "minted-for-a");
    assert_eq!(
        set_value(&out[0].1, "authorization"),
        Some(bearer("minted-for-a"))
    );
    e.on_request_done(1);
    assert_eq!(at(&mut e, 2, "/b/x"), Verdict::Pause, "b is asked");
    let call = h.calls_to("b").last().expect("introspected at b").0;
    let out = e.on_http_answer(&h, None, call, &inactive());
    assert_eq!(status(&out[0].1), 401);
    assert_eq!(status(&at(&mut e, 3, "/elsewhere")), 401, "shown to nobody");
    assert_eq!(h.calls_to("sts").len(), 1);
    // A's route still serves from what A said.
    let v = at(&mut e, 4, "/a/y");
    assert_eq!(set_value(&v, "authorization"), Some(bearer("minted-for-a")));
}

#[test]
fn a_shared_answer_is_judged_by_the_configuration_that_reads_it() {
    // Round 5, D2: a listener without `audiences` shares an answer for another audience; a
    // listener (or the configuration after a reload) that requires its audience refuses it.
    let h = FakeHost::at(NOW);
    let mut lax = engine(json!({ "trusted_issuers": [
        { "issuer": PARTNER, "introspection": { "cluster": "partner", "authority": "partner.example",
          "path": "/introspect", "client_id": "edge", "client_secret": "pw2", "cache_s": 60 } }
    ] }));
    ask(&mut lax, &h, 1, "tok");
    let out = introspect(&mut lax, &h, &active(json!({ "aud": "api://other" })));
    assert_eq!(
        out,
        vec![(1, Verdict::Pause)],
        "trusted where no audience is required"
    );
    let mut strict = introspecting(json!({}));
    let v = ask(&mut strict, &h, 2, "tok");
    assert_eq!(status(&v), 401);
    assert!(
        challenge(&v).contains("not meant for this audience"),
        "{}",
        challenge(&v)
    );
    assert_eq!(
        h.calls_to("partner").len(),
        1,
        "judged from the shared answer"
    );
}

#[test]
fn an_unusable_answer_about_one_token_fails_that_token_and_no_other() {
    // Round 5, D7: one token whose answer the filter cannot use is that token's 502; the
    // endpoint is not backed off, so every other token is still introspected.
    let unusable = [
        HttpAnswer {
            status: Some(200),
            body: Vec::new(),
            too_large: true,
        },
        HttpAnswer {
            status: Some(200),
            body: br#"{"active":"true","iss":"https://partner.example"}"#.to_vec(),
            too_large: false,
        },
        err(400, "invalid_request"),
        err(404, "not_found"),
    ];
    for (i, answer) in unusable.iter().enumerate() {
        let h = FakeHost::at(NOW);
        let mut e = introspecting(json!({}));
        for round in 0..3u32 {
            ask(&mut e, &h, 10 * round + 1, "poison");
            let out = introspect(&mut e, &h, answer);
            assert_eq!(status(&out[0].1), 502, "case {i}, round {round}");
            let fine = format!("fine-{round}");
            assert_eq!(
                ask(&mut e, &h, 10 * round + 2, &fine),
                Verdict::Pause,
                "case {i}"
            );
            let out = introspect(&mut e, &h, &active(json!({})));
            assert_eq!(
                out[0].1,
                Verdict::Pause,
                "case {i}: the other token is trusted"
            );
            e.on_request_done(10 * round + 2);
        }
        assert_eq!(h.metric_value(Metric::IntrospectionErrors), 3, "case {i}");
    }
}
