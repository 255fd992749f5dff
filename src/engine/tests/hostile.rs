//! Engine stories of the third security round: what an attacker sends (bytes that are not
//! text, joined credentials, cut-off answers, shared hints, colliding slots, junk floods), and
//! what the filter must still do.

use super::*;
use crate::host::RawHeaders;

#[test]
fn a_token_header_that_is_not_text_is_401_and_the_next_request_is_served() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"on_missing_token":"allow"}));
    let raw: [(&str, &[u8]); 2] = [(":path", b"/"), ("authorization", b"Bearer \xff\xfe")];
    let v = e.on_request(&h, 1, &RawHeaders(&raw));
    assert_eq!(status(&v), 401);
    assert!(challenge(&v).contains("invalid_token"));
    assert!(h.calls.borrow().is_empty());
    // A Latin-1 value in any other header changes nothing.
    let raw: [(&str, &[u8]); 2] = [("cookie", b"s=caf\xe9"), ("authorization", b"Bearer ok")];
    assert_eq!(e.on_request(&h, 2, &RawHeaders(&raw)), Verdict::Pause);
    let mut out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 600));
    let v = out.remove(0).1;
    assert_eq!(
        set_value(&v, "authorization").as_deref(),
        Some("Bearer minted")
    );
}

#[test]
fn a_custom_subject_or_actor_header_that_is_not_text_is_401() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"subject_token":{"header":"x-subject","prefix":""}}));
    let raw: [(&str, &[u8]); 2] = [("cookie", b"\xe9"), ("x-subject", b"\xe9t\xe9")];
    assert_eq!(status(&e.on_request(&h, 1, &RawHeaders(&raw))), 401);
    let raw: [(&str, &[u8]); 2] = [("cookie", b"\xe9"), ("x-subject", b"fine")];
    assert_eq!(e.on_request(&h, 2, &RawHeaders(&raw)), Verdict::Pause);
    let mut e = engine(json!({"exchange":{"actor":{"source":"header","header":"x-actor"}}}));
    let raw: [(&str, &[u8]); 2] = [("authorization", b"Bearer s"), ("x-actor", b"\xff")];
    assert_eq!(status(&e.on_request(&h, 3, &RawHeaders(&raw))), 401);
}

#[test]
fn joined_authorization_headers_with_a_bearer_part_are_401_whatever_on_missing_token_says() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({"on_missing_token":"allow"}));
    for joined in ["Basic eDp5,Bearer hidden", "Digest a=1, bearer hidden"] {
        let v = e.on_request(&h, 1, &[("authorization", joined)][..]);
        assert_eq!(status(&v), 401, "{joined}");
    }
    // Another scheme alone is passed on untouched.
    let v = e.on_request(&h, 2, &[("authorization", "Basic eDp5")][..]);
    assert_eq!(v, Verdict::Continue(vec![]));
    assert!(h.calls.borrow().is_empty());
}

#[test]
fn an_answer_cut_off_after_its_headers_is_503_and_the_next_request_is_exchanged() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({}));
    // The glue hands such an answer on without a status.
    let cut = no_answer();
    let v = exchange(&mut e, &h, 1, "alice", &cut);
    assert_eq!(status(&v), 503);
    let Verdict::Respond(r) = &v else {
        unreachable!()
    };
    assert!(r.header("retry-after").is_some());
    let v = exchange(&mut e, &h, 2, "alice", &ok("minted", 600));
    assert_eq!(set_value(&v, "authorization"), Some(bearer("minted")));
}

#[test]
fn an_authority_bypass_never_matches_a_host_envoy_routes_elsewhere() {
    let h = FakeHost::at(NOW);
    let mut e =
        engine(json!({"routes":[{"match":{"authority":"public.example.com"},"bypass":true}]}));
    let at = |authority: &'static str| {
        [
            (":path", "/"),
            (":authority", authority),
            ("authorization", "Bearer caller"),
        ]
    };
    let v = e.on_request(&h, 1, &at("Public.Example.COM")[..]);
    assert_eq!(v, Verdict::Continue(vec![]), "case alone still matches");
    for (ctx, other) in [
        (2, "public.example.com:8443"),
        (3, "public.example.com."),
        (4, "Public.Example.Com.:1"),
    ] {
        let v = e.on_request(&h, ctx, &at(other)[..]);
        assert_eq!(v, Verdict::Pause, "{other} is exchanged, never bypassed");
    }
    assert_eq!(h.metric_value(Metric::Bypassed), 1);
}

/// CIBA stories: a consent belongs to one subject, outlives its carrier, finds a slot, keeps
/// its claim while its owner lives and loses it when the owner is gone.
mod consents {
    use super::super::ciba::tests_support::*;
    use crate::jwks::tests::TestKeys;
    use crate::metrics::Metric;

    const ISS: &str = "https://idp";

    fn by_email(keys: &TestKeys) -> Engine {
        let issuers = json!([{ "issuer": ISS, "algorithms": ["ES256"], "jwks": keys.jwks() }]);
        engine(
            json!({ "login_hint": "email", "wait_s": 60 }),
            json!({ "trusted_issuers": issuers }),
        )
    }

    fn user(keys: &TestKeys, sub: &str, email: &str) -> String {
        let claims =
            serde_json::json!({"iss": ISS, "sub": sub, "email": email, "exp": NOW / 1000 + 600});
        keys.sign("ES256", Some("ec"), &claims)
    }

    /// An unsigned JWT naming `sub` (login_hint_token mode: the STS judges it).
    fn hint_token(sub: &str, n: usize) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let claims = serde_json::json!({"iss": ISS, "sub": sub, "n": n}).to_string();
        format!(
            "eyJhbGciOiJub25lIn0.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    /// Asks, sends from the root, and has the user approve: the request's verdict.
    fn approve(e: &mut Engine, h: &FakeHost, ctx: u32, token: &str, minted_as: &str) -> Verdict {
        assert_eq!(ask(e, h, ctx, token), Verdict::Pause);
        tick(e, h, 0);
        e.on_http_answer(h, None, h.last_call(), &backchannel(120, 1));
        tick(e, h, 1_000);
        let mut out = e.on_http_answer(h, None, h.last_call(), &super::super::ok(minted_as, 600));
        assert_eq!(out.len(), 1);
        out.remove(0).1
    }

    #[test]
    fn an_approved_consent_never_serves_another_subject_with_the_same_hint() {
        let keys = TestKeys::new();
        let h = FakeHost::at(NOW);
        let mut e = by_email(&keys);
        let alice = user(&keys, "alice", "alice@example.com");
        let v = approve(&mut e, &h, 1, &alice, "for-alice");
        assert_eq!(minted(&v).as_deref(), Some("Bearer for-alice"));
        // Mallory's validly signed token names Alice's address: a consent of its own.
        let mallory = user(&keys, "mallory", "alice@example.com");
        let before = h.calls_to("sts").len();
        assert_eq!(
            ask(&mut e, &h, 2, &mallory),
            Verdict::Pause,
            "never Alice's token"
        );
        tick(&mut e, &h, 0);
        assert_eq!(h.calls_to("sts").len(), before + 1, "prompted on its own");
        // Alice's second token is still served from her consent.
        let again = user(&keys, "alice", "alice@example.com");
        assert_eq!(
            minted(&ask(&mut e, &h, 3, &again)).as_deref(),
            Some("Bearer for-alice")
        );
    }

    #[test]
    fn a_consent_outlives_the_request_that_started_it() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({"login_hint":"login_hint_token","wait_s":2}),
            json!({}),
        );
        assert_eq!(ask(&mut e, &h, 1, "t"), Verdict::Pause);
        assert!(
            h.calls_to("sts").is_empty(),
            "not sent from the request's context"
        );
        tick(&mut e, &h, 0);
        let bc = h.last_call();
        // The request gives up (its wait_s) and ends before the slow STS answers.
        let out = tick(&mut e, &h, 2_000);
        assert_eq!(status(&out[0].1), 503);
        e.on_request_done(1);
        assert!(e
            .on_http_answer(&h, None, bc, &backchannel(120, 1))
            .is_empty());
        // The retry reaches the live consent: no second prompt, and the approval serves it.
        assert_eq!(ask(&mut e, &h, 2, "t"), Verdict::Pause);
        tick(&mut e, &h, 1_000);
        let calls = h.calls_to("sts");
        assert_eq!(
            calls.len(),
            2,
            "backchannel + poll, no second backchannel request"
        );
        let out = e.on_http_answer(&h, None, calls[1].0, &token("approved"));
        assert_eq!(out[0].0, 2);
        assert_eq!(minted(&out[0].1).as_deref(), Some("Bearer approved"));
    }

    #[test]
    fn junk_hint_tokens_leave_nothing_behind() {
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({"login_hint":"login_hint_token","wait_s":1}),
            json!({}),
        );
        for ctx in 0..300u32 {
            ask(&mut e, &h, ctx, &format!("junk-{ctx}"));
            e.on_request_done(ctx);
            tick(&mut e, &h, 0);
            let out = e.on_http_answer(&h, None, h.last_call(), &error("invalid_request"));
            assert!(out.is_empty(), "its request is gone");
        }
        // Nothing is kept: the tick reads no consent from shared data any more.
        let reads = h.reads.get();
        tick(&mut e, &h, 1_000);
        assert_eq!(h.reads.get(), reads, "a tick with no consent reads nothing");
        // Every claim was released: a new user gets a slot at once.
        let live = h
            .shared
            .borrow()
            .iter()
            .filter(|(k, (v, _))| {
                k.starts_with("token_exchange.ciba.") && v.get(40..48) != Some(&[0u8; 8][..])
            })
            .count();
        assert_eq!(live, 0);
    }

    #[test]
    fn colliding_users_probe_further_slots_and_one_client_holds_only_its_share() {
        // Eight slots: every key probes all of them, so eight users are all asked.
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({"login_hint":"login_hint_token","wait_s":60}),
            json!({"cache":{"max_entries":8}}),
        );
        for n in 0..8u32 {
            let t = hint_token(&format!("user-{n}"), 0);
            assert_eq!(ask(&mut e, &h, n, &t), Verdict::Pause, "user {n}");
        }
        assert_eq!(
            status(&ask(&mut e, &h, 9, &hint_token("user-9", 0))),
            503,
            "table full"
        );
        tick(&mut e, &h, 0);
        assert_eq!(h.calls_to("sts").len(), 8);
        // 64 slots, a share of 4: one client's flood of tokens cannot hold the rest.
        let h = FakeHost::at(NOW);
        let mut e = engine(
            json!({"login_hint":"login_hint_token","wait_s":60}),
            json!({"cache":{"max_entries":64}}),
        );
        let answers: Vec<u32> = (0..40)
            .map(|n| status(&ask(&mut e, &h, n, &hint_token("flooder", n as usize))))
            .collect();
        assert_eq!(
            answers.iter().filter(|s| **s == 0).count(),
            4,
            "{answers:?}"
        );
        assert_eq!(
            ask(&mut e, &h, 100, &hint_token("alice", 0)),
            Verdict::Pause
        );
    }

    #[test]
    fn a_slow_sts_never_causes_a_second_prompt_and_a_gone_owner_is_taken_over() {
        let h = FakeHost::at(NOW);
        let slow = || {
            engine(
                json!({ "login_hint": "login_hint_token", "wait_s": 60 }),
                json!({ "sts": { "timeout_ms": 60_000 } }),
            )
        };
        let mut a = slow();
        let mut b = slow();
        ask(&mut a, &h, 1, "t");
        tick(&mut a, &h, 0);
        // 45 s later the backchannel request is still in the air (timeout 60 s).
        for _ in 0..45 {
            tick(&mut a, &h, 1_000);
        }
        assert_eq!(ask(&mut b, &h, 2, "t"), Verdict::Pause);
        tick(&mut b, &h, 0);
        assert_eq!(
            h.calls_to("sts").len(),
            1,
            "a second worker never prompts again"
        );
        a.on_http_answer(&h, None, h.last_call(), &backchannel(600, 5));
        // The owner goes away (VM restart): nobody renews its lease. Well before the consent's
        // expires_in, another worker takes the user's consent over.
        drop(a);
        let mut c = slow();
        for _ in 0..80 {
            tick(&mut b, &h, 1_000);
        }
        assert_eq!(ask(&mut c, &h, 3, "t"), Verdict::Pause);
        tick(&mut c, &h, 0);
        assert_eq!(h.calls_to("sts").len(), 2, "taken over after the lease");
        assert_eq!(
            field(&h.calls_to("sts")[1].1, "login_hint_token").as_deref(),
            Some("t")
        );
    }

    #[test]
    fn every_claim_is_a_compare_and_swap_even_on_a_slot_never_written() {
        let h = FakeHost::at(NOW);
        let eight = || {
            engine(
                json!({ "login_hint": "login_hint_token", "wait_s": 60 }),
                json!({ "cache": { "max_entries": 8 } }),
            )
        };
        let (mut a, b) = (eight(), eight());
        a.on_start(&h);
        b.on_start(&h);
        let written = |h: &FakeHost| {
            let shared = h.shared.borrow();
            shared
                .keys()
                .filter(|k| k.starts_with("token_exchange.ciba."))
                .count()
        };
        assert_eq!(written(&h), 8, "every slot exists before the first request");
        // A large cache does not mean a slow start: the claim table stops at 4,096 slots.
        let big = engine(
            json!({ "login_hint": "login_hint_token" }),
            json!({ "cache": { "max_entries": 1_000_000 } }),
        );
        let h_big = FakeHost::at(NOW);
        big.on_start(&h_big);
        assert_eq!(written(&h_big), 4_096);
        // A worker whose view of a slot is stale loses the race instead of overwriting.
        let before: Vec<_> = h.shared.borrow().values().map(|(_, v)| *v).collect();
        assert_eq!(ask(&mut a, &h, 1, "t"), Verdict::Pause);
        let after: Vec<_> = h.shared.borrow().values().map(|(_, v)| *v).collect();
        assert_ne!(before, after, "the claim bumped a slot's version");
        let h2 = FakeHost::at(NOW);
        let mut c = eight();
        assert_eq!(
            ask(&mut c, &h2, 1, "t"),
            Verdict::Pause,
            "an unprepared slot is claimed too"
        );
        tick(&mut c, &h2, 0);
        assert_eq!(h2.calls_to("sts").len(), 1);
    }

    #[test]
    fn polls_are_counted_as_sts_calls_and_a_failed_poll_dispatch_as_an_error() {
        let h = FakeHost::at(NOW);
        let mut e = poll_engine();
        ask(&mut e, &h, 1, "t");
        tick(&mut e, &h, 0);
        e.on_http_answer(&h, None, h.last_call(), &backchannel(120, 1));
        tick(&mut e, &h, 1_000);
        assert_eq!(h.metric_value(Metric::StsCalls), 2, "backchannel + poll");
        e.on_http_answer(&h, None, h.last_call(), &error("authorization_pending"));
        h.refuse_dispatch.set(true);
        tick(&mut e, &h, 1_000);
        assert_eq!(h.metric_value(Metric::StsErrors), 1);
        assert!(h
            .logs
            .borrow()
            .iter()
            .any(|(_, l)| l.contains("CIBA poll not dispatched")));
        // The consent goes on: the next interval polls again.
        h.refuse_dispatch.set(false);
        tick(&mut e, &h, 1_000);
        assert_eq!(h.metric_value(Metric::StsCalls), 3);
        assert_eq!(h.metric_value(Metric::CibaPolls), 2);
    }
}

/// A header actor JWT of a trusted issuer is verified before its claims are used.
mod actors {
    use super::*;
    use crate::jwks::tests::TestKeys;

    #[test]
    fn an_actor_jwt_of_a_trusted_issuer_that_fails_verification_is_401_without_an_sts_call() {
        let keys = TestKeys::new();
        let iss = "https://idp";
        let mut e = engine(serde_json::json!({
            "trusted_issuers": [{ "issuer": iss, "algorithms": ["ES256"], "jwks": keys.jwks() }],
            "exchange": { "actor": { "source": "header", "header": "x-actor" } }
        }));
        let h = FakeHost::at(NOW);
        let exp = NOW / 1000 + 600;
        let subject = keys.sign(
            "ES256",
            Some("ec"),
            &serde_json::json!({"iss": iss, "sub": "alice", "exp": exp, "may_act": {"sub": "svc-a"}}),
        );
        let ask = |e: &mut Engine, ctx: u32, actor: &str| {
            let auth = bearer(&subject);
            let req = [("authorization", auth.as_str()), ("x-actor", actor)];
            e.on_request(&h, ctx, &req[..])
        };
        // An unsigned JWT claiming the trusted issuer and naming the permitted actor.
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let claims = serde_json::json!({"iss": iss, "sub": "svc-a", "exp": exp}).to_string();
        let forged = format!(
            "eyJhbGciOiJFUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        );
        for ctx in 1..=3 {
            assert_eq!(status(&ask(&mut e, ctx, &forged)), 401);
        }
        assert!(
            h.calls.borrow().is_empty(),
            "no STS call, no negative-cache entry"
        );
        // The real actor token verifies and goes on.
        let real = keys.sign(
            "ES256",
            Some("ec"),
            &serde_json::json!({"iss": iss, "sub": "svc-a", "exp": exp}),
        );
        assert_eq!(ask(&mut e, 4, &real), Verdict::Pause);
        assert_eq!(h.calls.borrow().len(), 1);
        // A signed actor that is not the one may_act names: 403, still no call.
        let other = keys.sign(
            "ES256",
            Some("ec"),
            &serde_json::json!({"iss": iss, "sub": "svc-b", "exp": exp}),
        );
        assert_eq!(status(&ask(&mut e, 5, &other)), 403);
        assert_eq!(h.calls.borrow().len(), 1);
    }
}
