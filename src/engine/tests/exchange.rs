//! The exchange: cache hits and misses, the worker memo, single flight, orphaned calls, the
//! error table, negative caching, lifetimes, routes and bypasses, what logs carry.

use super::*;

#[test]
fn miss_then_hit_rewrites_authorization_without_pausing_the_second_time() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    let v = exchange(&mut e, &h, 1, "caller", &ok("minted", 3600));
    assert_eq!(
        set_value(&v, "authorization").as_deref(),
        Some("Bearer minted")
    );
    assert_eq!(h.calls.borrow().len(), 1);
    let v = e.on_request(&h, 2, &[("authorization", "Bearer caller")][..]);
    assert_eq!(
        set_value(&v, "authorization").as_deref(),
        Some("Bearer minted")
    );
    assert_eq!(h.calls.borrow().len(), 1, "served from cache");
    assert_eq!(h.metric_value(Metric::Requests), 2);
    assert_eq!(h.metric_value(Metric::CacheHits), 1);
    assert_eq!(h.metric_value(Metric::CacheMisses), 1);
    assert_eq!(h.metric_value(Metric::StsCalls), 1);
}

#[test]
fn hot_tokens_are_served_from_the_worker_memo_until_expiry() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"cache":{"max_entries":2,"expiry_skew_s":0}}));
    exchange(&mut e, &h, 1, "hot", &ok("m", 60));
    h.shared.borrow_mut().clear();
    let v = e.on_request(&h, 2, &[("authorization", "Bearer hot")][..]);
    assert_eq!(
        v,
        Verdict::Continue(vec![HeaderOp::Set(
            "authorization".into(),
            "Bearer m".into()
        )])
    );
    h.advance_ms(60_000);
    assert_eq!(
        e.on_request(&h, 3, &[("authorization", "Bearer hot")][..]),
        Verdict::Pause,
        "never served after expiry"
    );
    // bounded: a full table is emptied
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"cache":{"max_entries":2}}));
    for (ctx, t) in [(1, "a"), (2, "b"), (3, "c")] {
        exchange(&mut e, &h, ctx, t, &ok("m", 3600));
    }
    // The memo answers without reading shared data; "a" went when the table was emptied.
    let reads = h.reads.get();
    e.on_request(&h, 4, &[("authorization", "Bearer c")][..]);
    assert_eq!(h.reads.get(), reads, "c is served from the memo");
    e.on_request(&h, 5, &[("authorization", "Bearer a")][..]);
    assert!(h.reads.get() > reads, "a is looked up in the shared cache");
}

#[test]
fn the_callers_token_never_survives_a_success() {
    let h = FakeHost::at(NOW);
    let mut e = engine(
        json!({"output":{"header":"x-exchanged","prefix":"","original_token_header":"x-orig"}}),
    );
    let v = exchange(&mut e, &h, 1, "caller", &ok("minted", 3600));
    let Verdict::Continue(ops) = &v else { panic!() };
    assert_eq!(
        ops,
        &vec![
            HeaderOp::Remove("authorization".into()),
            HeaderOp::Remove("x-exchanged".into()),
            HeaderOp::Remove("x-orig".into()),
            HeaderOp::Set("x-exchanged".into(), "minted".into()),
            HeaderOp::Set("x-orig".into(), "caller".into()),
        ]
    );
}

#[test]
fn concurrent_misses_on_one_token_make_one_call() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    for ctx in 1..=20 {
        assert_eq!(
            e.on_request(&h, ctx, &[("authorization", "Bearer same")][..]),
            Verdict::Pause
        );
    }
    assert_eq!(h.calls.borrow().len(), 1);
    assert_eq!(h.metric_value(Metric::Coalesced), 19);
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
    let mut ctxs: Vec<u32> = out.iter().map(|(c, _)| *c).collect();
    ctxs.sort_unstable();
    assert_eq!(ctxs, (1..=20).collect::<Vec<_>>());
    assert!(out
        .iter()
        .all(|(_, v)| set_value(v, "authorization").as_deref() == Some("Bearer minted")));
    // a different token is a different flight
    assert_eq!(
        e.on_request(&h, 30, &[("authorization", "Bearer other")][..]),
        Verdict::Pause
    );
    assert_eq!(h.calls.borrow().len(), 2);
}

#[test]
fn coalesced_failures_reach_every_waiter() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"cache":{"negative_ttl_s":0}}));
    for ctx in 1..=3 {
        e.on_request(&h, ctx, &[("authorization", "Bearer bad")][..]);
    }
    let out = e.on_http_answer(&h, None, h.last_call(), &err(400, "invalid_grant"));
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|(_, v)| status(v) == 401));
    assert_eq!(h.metric_value(Metric::Rejected), 3);
    assert_eq!(h.metric_value(Metric::StsErrors), 0);
}

#[test]
fn a_call_lost_with_its_context_is_dispatched_again_by_the_root() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
    e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
    let first = h.last_call();
    e.on_request_done(1);
    assert!(
        e.on_http_answer(&h, None, first, &ok("late", 60))
            .is_empty(),
        "lost call is forgotten"
    );
    assert!(e.on_tick(&h).is_empty());
    assert_eq!(h.calls.borrow().len(), 2);
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 2);
    // when the last waiter leaves too, nothing is left behind
    e.on_request(&h, 3, &[("authorization", "Bearer u")][..]);
    e.on_request_done(3);
    assert!(e.on_tick(&h).is_empty());
    assert_eq!(h.calls.borrow().len(), 3);
}

#[test]
fn a_waiter_that_leaves_gets_no_verdict() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
    e.on_request(&h, 2, &[("authorization", "Bearer t")][..]);
    e.on_request_done(2);
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
    assert_eq!(out.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn missing_token_is_rejected_or_passed_on_by_policy() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    let v = e.on_request(&h, 1, &[(":path", "/")][..]);
    let Verdict::Respond(r) = &v else { panic!() };
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"token-exchange\"")
    );
    let mut e = engine(json!({"on_missing_token":"allow"}));
    assert_eq!(
        e.on_request(&h, 1, &[(":path", "/")][..]),
        Verdict::Continue(vec![])
    );
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn malformed_and_oversized_tokens_never_reach_the_sts() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"subject_token":{"max_bytes":16}}));
    for v in [
        "Bearer ",
        "Bearer a b",
        &format!("Bearer {}", "x".repeat(17)),
    ] {
        let verdict = e.on_request(&h, 1, &[("authorization", v)][..]);
        assert_eq!(status(&verdict), 401, "{v}");
        assert!(challenge(&verdict).contains("invalid_token"), "{v}");
    }
    assert!(h.calls.borrow().is_empty());
    assert_eq!(h.metric_value(Metric::Rejected), 3);
}

#[test]
fn every_sts_failure_answers_per_the_error_table() {
    let cases: Vec<(HttpAnswer, u32)> = vec![
        (err(400, "invalid_request"), 401),
        (err(400, "invalid_grant"), 401),
        (err(400, "invalid_target"), 403),
        (err(400, "invalid_scope"), 403),
        (err(400, "unauthorized_client"), 403),
        (err(401, "invalid_client"), 502),
        (
            HttpAnswer {
                status: Some(200),
                body: b"garbage".to_vec(),
                too_large: false,
            },
            502,
        ),
        (
            HttpAnswer {
                status: Some(200),
                body: br#"{"access_token":"a","token_type":"N_A","issued_token_type":"x:y"}"#
                    .to_vec(),
                too_large: false,
            },
            502,
        ),
        (
            HttpAnswer {
                status: Some(500),
                body: vec![],
                too_large: false,
            },
            503,
        ),
        (no_answer(), 503),
    ];
    for (i, (answer, want)) in cases.into_iter().enumerate() {
        let h = FakeHost::at(NOW);
        let mut e = engine(json!({}));
        let v = exchange(&mut e, &h, 1, &format!("t{i}"), &answer);
        assert_eq!(status(&v), want, "{answer:?}");
        let Verdict::Respond(r) = &v else {
            unreachable!()
        };
        assert!(!r.body.contains(&format!("t{i}\"")), "no token in the body");
        if want == 503 {
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        let errors = h.metric_value(Metric::StsErrors);
        assert_eq!(errors, u64::from(want >= 502), "{answer:?}");
    }
}

#[test]
fn undispatchable_call_is_unavailable() {
    let h = FakeHost::at(NOW);
    h.refuse_dispatch.set(true);
    let mut e = engine(json!({}));
    let v = e.on_request(&h, 1, &[("authorization", "Bearer t")][..]);
    assert_eq!(status(&v), 503);
    assert_eq!(h.metric_value(Metric::StsErrors), 1);
}

#[test]
fn fail_open_strips_the_token_and_passes_on() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"on_sts_unavailable":"allow"}));
    let v = exchange(&mut e, &h, 1, "t", &no_answer());
    assert_eq!(
        v,
        Verdict::Continue(vec![HeaderOp::Remove("authorization".into()), dpop_gone()])
    );
    // fail-open is only for outages: a rejection still answers
    let v = exchange(&mut e, &h, 2, "u", &err(400, "invalid_grant"));
    assert_eq!(status(&v), 401);
}

#[test]
fn rejections_are_remembered_for_negative_ttl() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"cache":{"negative_ttl_s":5}}));
    assert_eq!(
        status(&exchange(&mut e, &h, 1, "bad", &err(400, "invalid_grant"))),
        401
    );
    for ctx in 2..50 {
        assert_eq!(
            status(&e.on_request(&h, ctx, &[("authorization", "Bearer bad")][..])),
            401
        );
    }
    assert_eq!(h.calls.borrow().len(), 1);
    h.advance_ms(5_000);
    assert_eq!(
        e.on_request(&h, 99, &[("authorization", "Bearer bad")][..]),
        Verdict::Pause
    );
    assert_eq!(h.calls.borrow().len(), 2);
    // outages are not remembered
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    exchange(&mut e, &h, 1, "t", &err(503, "x"));
    assert_eq!(
        e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
        Verdict::Pause
    );
}

#[test]
fn entries_expire_and_are_exchanged_again() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"cache":{"expiry_skew_s":10}}));
    exchange(&mut e, &h, 1, "t", &ok("m1", 60));
    h.advance_ms(49_999);
    assert_eq!(
        set_value(
            &e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
            "authorization"
        )
        .as_deref(),
        Some("Bearer m1")
    );
    h.advance_ms(1);
    let v = exchange(&mut e, &h, 3, "t", &ok("m2", 60));
    assert_eq!(set_value(&v, "authorization").as_deref(), Some("Bearer m2"));
    assert_eq!(h.calls.borrow().len(), 2);
}

#[test]
fn a_short_lived_answer_is_used_but_not_cached() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    let v = exchange(&mut e, &h, 1, "t", &ok("m1", 30));
    assert_eq!(set_value(&v, "authorization").as_deref(), Some("Bearer m1"));
    assert!(h.shared.borrow().is_empty());
    assert_eq!(
        e.on_request(&h, 2, &[("authorization", "Bearer t")][..]),
        Verdict::Pause
    );
}

#[test]
fn routes_pick_audiences_and_bypass() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"exchange":{"audience":"default"},"routes":[
            {"match":{"path_prefix":"/healthz"},"bypass":true},
            {"match":{"authority":"orders.example.com","methods":["GET"]},"exchange":{"audience":["orders"]}}]}));
    let health = e.on_request(
        &h,
        1,
        &[(":path", "/healthz"), ("authorization", "Bearer t")][..],
    );
    assert_eq!(health, Verdict::Continue(vec![]));
    assert_eq!(h.metric_value(Metric::Bypassed), 1);
    let req = [
        (":path", "/o"),
        (":method", "GET"),
        (":authority", "Orders.Example.com"),
        ("authorization", "Bearer t"),
    ];
    e.on_request(&h, 2, &req[..]);
    let req = [
        (":path", "/o"),
        (":method", "POST"),
        (":authority", "orders.example.com"),
        ("authorization", "Bearer t"),
    ];
    e.on_request(&h, 3, &req[..]);
    let calls = h.calls.borrow();
    assert_eq!(
        calls.len(),
        2,
        "different audiences never share a flight or an entry"
    );
    assert!(calls[0].1.body.contains("audience=orders&"));
    assert!(calls[1].1.body.contains("audience=default&"));
}

#[test]
fn bypass_matches_only_the_path_the_server_will_serve() {
    let h = FakeHost::at(NOW);
    let mut e = engine(
        json!({"routes":[{"match":{"path_prefix":"/healthz"},"bypass":true},
            {"match":{"path_prefix":"/orders"},"exchange":{"audience":"orders"}}]}),
    );
    let mut ctx = 0;
    let mut ask = |path: &str| {
        ctx += 1;
        let token = format!("Bearer t{ctx}");
        e.on_request(
            &h,
            ctx,
            &[(":path", path), ("authorization", token.as_str())][..],
        )
    };
    for path in [
        "/healthz",
        "/healthz/",
        "/healthz/live?x=/..",
        "/healthz/./a",
        "/%68ealthz",
    ] {
        assert_eq!(ask(path), Verdict::Continue(vec![]), "{path} is bypassed");
    }
    for path in [
        "/healthz/../admin",
        "/healthz/%2e%2e/admin",
        "/healthz/.%2E/admin",
        "/healthz/..%2fadmin",
        "/healthz%2F..%2Fadmin",
        "/healthz/..%5cadmin",
        "/healthz\\..\\admin",
        "/healthz/..;/admin",
        "/healthz//../admin",
        "/healthz/%252e%252e/admin",
        "/healthz-admin",
        "/healthzX",
        "/orders/../healthz/../admin",
    ] {
        assert_eq!(
            ask(path),
            Verdict::Pause,
            "{path} must be exchanged, not bypassed"
        );
    }
    // Exchange rules see the same normalized path, on whole segments.
    let calls = h.calls.borrow();
    let orders = calls
        .iter()
        .filter(|c| c.1.body.contains("audience=orders"))
        .count();
    assert_eq!(orders, 0, "no path above resolves under /orders");
    drop(calls);
    assert_eq!(ask("/x/../orders/1"), Verdict::Pause);
    assert!(h
        .calls
        .borrow()
        .last()
        .is_some_and(|c| c.1.body.contains("audience=orders")));
    assert_eq!(ask("/ordersX"), Verdict::Pause);
    assert!(!h
        .calls
        .borrow()
        .last()
        .is_some_and(|c| c.1.body.contains("audience=orders")));
}

#[test]
fn subject_exp_caps_the_cache_lifetime() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let exp = NOW / 1000 + 100;
    let jwt = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
    );
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"cache":{"expiry_skew_s":0}}));
    exchange(&mut e, &h, 1, &jwt, &ok("m", 3600));
    h.advance_ms(99_999);
    let auth = bearer(&jwt);
    assert_ne!(
        e.on_request(&h, 2, &[("authorization", auth.as_str())][..]),
        Verdict::Pause
    );
    h.advance_ms(1);
    assert_eq!(
        e.on_request(&h, 3, &[("authorization", auth.as_str())][..]),
        Verdict::Pause
    );
}

#[test]
fn logs_carry_hashes_never_tokens_or_secrets() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    exchange(
        &mut e,
        &h,
        7,
        "the-callers-token",
        &ok("the-minted-token", 3600),
    );
    e.on_request(&h, 8, &[("authorization", "Bearer the-callers-token")][..]);
    exchange(&mut e, &h, 9, "another", &err(401, "invalid_client"));
    let logs = h.logs.borrow();
    assert!(logs.len() >= 4);
    let fp = token::fingerprint("the-callers-token");
    assert!(logs
        .iter()
        .any(|(_, l)| l.contains("ctx=7") && l.contains(&fp)));
    for (_, l) in logs.iter() {
        for secret in ["the-callers-token", "the-minted-token", "another", "pw"] {
            assert!(!l.contains(secret), "{l}");
        }
    }
}
