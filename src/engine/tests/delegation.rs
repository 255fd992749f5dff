//! Delegation: the filter's own actor tokens, header actors, `act` checks, hostile numbers.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

fn jwt(claims: serde_json::Value) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn plain(token: &str, expires_in: u64) -> HttpAnswer {
    HttpAnswer {
        status: Some(200),
        body: serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
            .to_string()
            .into_bytes(),
        too_large: false,
    }
}

#[test]
fn the_actor_token_is_fetched_once_for_many_requests_and_again_after_expiry() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"actor":{"source":"client_credentials","scope":"act"}}}));
    assert_eq!(
        e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]),
        Verdict::Pause
    );
    assert_eq!(
        e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]),
        Verdict::Pause
    );
    let calls = h.calls_to("sts");
    assert_eq!(calls.len(), 1, "one actor call for two waiting requests");
    assert_eq!(
        field(&calls[0].1, "grant_type").as_deref(),
        Some("client_credentials")
    );
    let actor = jwt(serde_json::json!({"sub": "edge-svc"}));
    let out = e.on_http_answer(&h, Some(1), calls[0].0, &plain(&actor, 120));
    assert_eq!(out, vec![(1, Verdict::Pause), (2, Verdict::Pause)]);
    let calls = h.calls_to("sts");
    assert_eq!(calls.len(), 3);
    for (_, c) in &calls[1..] {
        assert_eq!(field(c, "actor_token").as_deref(), Some(actor.as_str()));
        assert_eq!(
            field(c, "actor_token_type").as_deref(),
            Some(crate::config::ACCESS_TOKEN_TYPE)
        );
    }
    // a new subject later reuses the cached actor token
    e.on_request(&h, 3, &[("authorization", "Bearer u3")][..]);
    assert_eq!(h.calls_to("sts").len(), 4);
    assert_eq!(
        field(&h.calls_to("sts")[3].1, "grant_type").as_deref(),
        Some(crate::client::TOKEN_EXCHANGE_GRANT)
    );
    // after its lifetime (120 − 30 s skew) it is fetched again
    h.advance_ms(90_000);
    e.on_request(&h, 4, &[("authorization", "Bearer u4")][..]);
    assert_eq!(
        field(&h.calls_to("sts")[4].1, "grant_type").as_deref(),
        Some("client_credentials")
    );
}

#[test]
fn a_failed_actor_call_answers_every_parked_request() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"actor":{"source":"client_credentials"}}}));
    e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]);
    e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]);
    let out = e.on_http_answer(&h, Some(1), h.last_call(), &err(400, "invalid_scope"));
    assert_eq!(out.len(), 2);
    assert!(
        out.iter().all(|(_, v)| status(v) == 502),
        "the proxy's own request failed"
    );
}

#[test]
fn an_orphaned_actor_call_is_dispatched_again() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"actor":{"source":"client_credentials"}}}));
    e.on_request(&h, 1, &[("authorization", "Bearer u1")][..]);
    e.on_request(&h, 2, &[("authorization", "Bearer u2")][..]);
    e.on_request_done(1);
    e.on_tick(&h);
    assert_eq!(h.calls_to("sts").len(), 2);
    let out = e.on_http_answer(&h, None, h.last_call(), &plain("actor", 600));
    assert_eq!(out, vec![(2, Verdict::Pause)]);
}

#[test]
fn header_actor_is_required_forwarded_to_the_sts_and_stripped() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"actor":{"source":"header","header":"x-actor"}}}));
    let v = e.on_request(&h, 1, &[("authorization", "Bearer u")][..]);
    assert_eq!(status(&v), 401);
    assert!(h.calls.borrow().is_empty());
    let v = e.on_request(
        &h,
        2,
        &[("authorization", "Bearer u"), ("x-actor", "a1")][..],
    );
    assert_eq!(v, Verdict::Pause);
    assert_eq!(
        field(&h.calls_to("sts")[0].1, "actor_token").as_deref(),
        Some("a1")
    );
    let out = e.on_http_answer(&h, Some(2), h.last_call(), &ok("minted", 3600));
    let Verdict::Continue(ops) = &out[0].1 else {
        panic!()
    };
    assert!(ops.contains(&HeaderOp::Remove("x-actor".into())));
    // another actor never shares the minted token
    assert_eq!(
        e.on_request(
            &h,
            3,
            &[("authorization", "Bearer u"), ("x-actor", "a2")][..]
        ),
        Verdict::Pause
    );
    assert_eq!(h.calls_to("sts").len(), 2);
}

#[test]
fn expect_act_checks_the_minted_act_claim() {
    let actor = jwt(serde_json::json!({"sub": "agent-7"}));
    for (minted_act, want) in [("agent-7", None), ("someone-else", Some(502))] {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({"exchange":{"actor":{"source":"header","header":"x-actor"},"expect_act":true}}),
        );
        e.on_request(
            &h,
            1,
            &[("authorization", "Bearer u"), ("x-actor", actor.as_str())][..],
        );
        let minted = jwt(serde_json::json!({"sub": "u", "act": {"sub": minted_act}}));
        let out = e.on_http_answer(&h, Some(1), h.last_call(), &ok(&minted, 3600));
        match want {
            None => assert!(matches!(out[0].1, Verdict::Continue(_))),
            Some(code) => assert_eq!(status(&out[0].1), code),
        }
    }
}

#[test]
fn a_header_actors_exp_caps_the_cached_delegation() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"actor":{"source":"header","header":"x-actor"}}}));
    let actor = jwt(serde_json::json!({"sub": "agent", "exp": NOW / 1000 + 60}));
    let req = [("authorization", "Bearer u"), ("x-actor", actor.as_str())];
    assert_eq!(e.on_request(&h, 1, &req[..]), Verdict::Pause);
    e.on_http_answer(&h, Some(1), h.last_call(), &ok("delegated", 3600));
    // Within the actor's life (minus the 30 s skew) the entry serves.
    h.advance_ms(20_000);
    assert!(matches!(
        e.on_request(&h, 2, &req[..]),
        Verdict::Continue(_)
    ));
    // Past it, the same (now expired) actor token never gets the cached token.
    h.advance_ms(100_000);
    assert_eq!(e.on_request(&h, 3, &req[..]), Verdict::Pause);
    assert_eq!(h.calls_to("sts").len(), 2);
}

#[test]
fn the_filters_own_actor_token_caps_the_cached_delegation() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"actor":{"source":"client_credentials"}}}));
    let req = [("authorization", "Bearer u")];
    assert_eq!(e.on_request(&h, 1, &req[..]), Verdict::Pause);
    // The actor token lives 100 s (70 s in the cache); the delegated one an hour.
    let out = e.on_http_answer(&h, Some(1), h.last_call(), &plain("act-1", 100));
    assert_eq!(out[0].1, Verdict::Pause);
    e.on_http_answer(&h, Some(1), h.last_call(), &ok("delegated", 3600));
    h.advance_ms(60_000);
    assert!(matches!(
        e.on_request(&h, 2, &req[..]),
        Verdict::Continue(_)
    ));
    h.advance_ms(15_000);
    assert_eq!(
        e.on_request(&h, 3, &req[..]),
        Verdict::Pause,
        "the delegation made with an expired actor token is not served"
    );
    assert_eq!(
        field(&h.calls_to("sts")[2].1, "grant_type").as_deref(),
        Some("client_credentials")
    );
}

#[test]
fn a_token_minted_without_the_act_check_never_serves_a_route_with_it() {
    let h = FakeHost::at(NOW);
    let mut e = engine(
        json!({"exchange":{"actor":{"source":"header","header":"x-actor"}},
        "routes":[{"match":{"path_prefix":"/strict"},"exchange":{"expect_act":true}}]}),
    );
    let actor = jwt(serde_json::json!({"sub": "agent"}));
    let lax = [
        (":path", "/lax"),
        ("authorization", "Bearer u"),
        ("x-actor", actor.as_str()),
    ];
    assert_eq!(e.on_request(&h, 1, &lax[..]), Verdict::Pause);
    let no_act = jwt(serde_json::json!({"sub": "u"}));
    e.on_http_answer(&h, Some(1), h.last_call(), &ok(&no_act, 3600));
    assert!(matches!(
        e.on_request(&h, 2, &lax[..]),
        Verdict::Continue(_)
    ));
    let strict = [
        (":path", "/strict"),
        ("authorization", "Bearer u"),
        ("x-actor", actor.as_str()),
    ];
    assert_eq!(e.on_request(&h, 3, &strict[..]), Verdict::Pause);
    let out = e.on_http_answer(&h, Some(3), h.last_call(), &ok(&no_act, 3600));
    assert_eq!(status(&out[0].1), 502, "act is checked on the strict route");
}

#[test]
fn a_redispatched_call_signs_a_fresh_assertion() {
    let (pem, _) = crate::assertion::tests::es256_pem();
    let json = json!({ "sts": { "cluster": "sts", "authority": "sts.local", "token_path": "/token",
        "client_id": "edge", "client_auth": "private_key_jwt", "private_key": { "pem_env": "KEY" } } });
    let bytes = json.to_string().into_bytes();
    let config = Config::parse(&bytes, &|k| (k == "KEY").then(|| pem.clone()));
    let mut e = Engine::new(config.unwrap()).unwrap();
    let h = FakeHost::at(NOW);
    e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
    e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
    e.on_request_done(1);
    h.advance_ms(100);
    e.on_tick(&h);
    let calls = h.calls_to("sts");
    assert_eq!(calls.len(), 2);
    let first = field(&calls[0].1, "client_assertion").unwrap();
    let again = field(&calls[1].1, "client_assertion").unwrap();
    let jti = |a: &str| crate::token::tests_support::claim(a, "jti");
    assert_ne!(jti(&first), jti(&again), "a replayed jti would be refused");
    assert_eq!(field(&calls[1].1, "subject_token").as_deref(), Some("t"));
}

#[test]
fn an_orphan_nobody_waits_for_is_not_sent_again() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
    e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
    e.on_request_done(1);
    e.on_request_done(2);
    assert!(e.on_tick(&h).is_empty());
    assert_eq!(h.calls.borrow().len(), 1);
}

#[test]
fn remote_numbers_never_wrap_the_clock() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    let huge = HttpAnswer {
        status: Some(200),
        body: format!(r#"{{"access_token":"forever","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":18446744073709551615}}"#).into_bytes(),
        too_large: false,
    };
    e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
    let out = e.on_http_answer(&h, Some(1), h.last_call(), &huge);
    assert!(matches!(out[0].1, Verdict::Continue(_)));
    h.advance_ms(86_400_000);
    assert!(matches!(
        e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
        Verdict::Continue(_)
    ));
    // expires_in as a string of digits is read as seconds.
    let as_text = HttpAnswer {
        status: Some(200),
        body: format!(r#"{{"access_token":"x","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":"60"}}"#).into_bytes(),
        too_large: false,
    };
    e.on_request(&h, 3, &[("authorization", "Bearer v")][..]);
    let out = e.on_http_answer(&h, Some(3), h.last_call(), &as_text);
    assert!(matches!(out[0].1, Verdict::Continue(_)));
    h.advance_ms(31_000);
    assert_eq!(
        e.on_request(&h, 4, &[("authorization", "Bearer v")][..]),
        Verdict::Pause
    );
}

#[test]
fn a_bearer_credential_gone_wrong_is_refused_even_when_missing_ones_pass() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"on_missing_token":"allow"}));
    for v in ["Bearer\ttok", "Bearer,tok", "bearer\u{b}tok"] {
        assert_eq!(
            status(&e.on_request(&h, 1, &[("authorization", v)][..])),
            401,
            "{v:?}"
        );
    }
    assert!(matches!(
        e.on_request(&h, 2, &[("authorization", "Basic dTpw")][..]),
        Verdict::Continue(_)
    ));
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn repeated_token_headers_are_refused_not_picked_from() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"actor":{"source":"header","header":"x-actor"}}}));
    let two = [
        ("authorization", "Bearer u"),
        ("x-actor", "a"),
        ("x-actor", "b"),
    ];
    assert_eq!(status(&e.on_request(&h, 1, &two[..])), 401);
    let mut e = engine(json!({"subject_token":{"header":"x-subject","prefix":""}}));
    let two = [("x-subject", "s1"), ("x-subject", "s2")];
    assert_eq!(status(&e.on_request(&h, 2, &two[..])), 401);
    assert_eq!(
        e.on_request(&h, 3, &[("x-subject", "s1")][..]),
        Verdict::Pause
    );
    assert_eq!(h.calls.borrow().len(), 1);
}

#[test]
fn thousands_of_routes_load_and_match_in_order() {
    let routes: Vec<serde_json::Value> = (0..5000)
        .map(|i| json!({"match": {"path_prefix": format!("/r{i}")}, "exchange": {"audience": format!("a{i}")}}))
        .collect();
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({ "routes": routes }));
    let v = e.on_request(
        &h,
        1,
        &[(":path", "/r4999/x"), ("authorization", "Bearer t")][..],
    );
    assert_eq!(v, Verdict::Pause);
    assert!(h.calls.borrow()[0].1.body.contains("audience=a4999&"));
    e.on_request(
        &h,
        2,
        &[(":path", "/r49999"), ("authorization", "Bearer t")][..],
    );
    assert!(
        !h.calls.borrow()[1].1.body.contains("audience=a4999&"),
        "whole segments"
    );
}

#[test]
fn jwt_bearer_answers_need_no_issued_token_type() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"grant":"jwt_bearer"}}));
    e.on_request(&h, 1, &[("authorization", "Bearer a.b.c")][..]);
    assert_eq!(
        field(&h.calls_to("sts")[0].1, "assertion").as_deref(),
        Some("a.b.c")
    );
    let out = e.on_http_answer(&h, Some(1), h.last_call(), &plain("minted", 600));
    assert_eq!(
        set_value(&out[0].1, "authorization").as_deref(),
        Some("Bearer minted")
    );
}
