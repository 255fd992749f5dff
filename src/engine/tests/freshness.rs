//! Freshness: refresh-ahead across two workers sharing one host's shared data, and eviction on
//! the upstream's 401.

use super::issuers::{keys, token_with};
use super::*;
use crate::host::LogLevel;

fn fresh(cache: serde_json::Value) -> Engine {
    engine(json!({ "cache": cache }))
}

/// A request with `token`; its verdict.
fn request(e: &mut Engine, h: &FakeHost, ctx: u32, token: &str) -> Verdict {
    let auth = bearer(token);
    e.on_request(h, ctx, &[("authorization", auth.as_str())][..])
}

/// A request that must be served at once; the token it carries upstream.
fn served(e: &mut Engine, h: &FakeHost, ctx: u32, token: &str) -> String {
    let v = request(e, h, ctx, token);
    e.on_request_done(ctx);
    set_value(&v, "authorization").unwrap_or_else(|| panic!("ctx {ctx} waited: {v:?}"))
}

fn sts_calls(h: &FakeHost) -> usize {
    h.calls_to("sts").len()
}

/// A JWT-shaped token (unsigned; no trusted issuers) expiring at `exp` seconds.
fn jwt_until(exp: u64) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({ "sub": "alice", "exp": exp });
    format!("{}.{}.sig", b64(json!({"alg": "none"})), b64(claims))
}

#[test]
fn a_hot_token_is_refreshed_ahead_once_per_lifetime_across_workers_and_nobody_waits() {
    let h = FakeHost::at(NOW);
    // Tokens of 8 s refreshed in their last 5 s: lifetimes follow each other faster than a
    // claim would lapse by itself.
    let cache = json!({ "refresh_ahead_s": 5, "expiry_skew_s": 0 });
    let (mut a, mut b) = (fresh(cache.clone()), fresh(cache));
    let v = exchange(&mut a, &h, 1, "alice", &ok("m1", 8));
    assert_eq!(set_value(&v, "authorization").as_deref(), Some("Bearer m1"));
    a.on_request_done(1);
    let mut ctx = 10;
    for lifetime in 0..3u64 {
        let minted = format!("Bearer m{}", lifetime + 1);
        // Outside the window: hits on both workers, no call.
        h.advance_ms(2_000);
        for e in [&mut a, &mut b] {
            ctx += 1;
            assert_eq!(served(e, &h, ctx, "alice"), minted);
        }
        assert_eq!(sts_calls(&h), 1 + lifetime as usize);
        // Inside it: every request is served at once; one refresh is queued in all.
        h.advance_ms(1_500);
        for _ in 0..8 {
            for e in [&mut a, &mut b] {
                ctx += 1;
                assert_eq!(served(e, &h, ctx, "alice"), minted);
            }
        }
        a.on_tick(&h);
        b.on_tick(&h);
        assert_eq!(
            sts_calls(&h),
            2 + lifetime as usize,
            "one refresh per lifetime"
        );
        let (call, sent) = h.calls.borrow().last().cloned().unwrap();
        assert_eq!(field(&sent, "subject_token").as_deref(), Some("alice"));
        // It answers at the root of the worker that sent it, for nobody waiting.
        let next = format!("m{}", lifetime + 2);
        let out = [&mut a, &mut b]
            .into_iter()
            .flat_map(|e| e.on_http_answer(&h, None, call, &ok(&next, 8)))
            .count();
        assert_eq!(out, 0);
        assert_eq!(h.metric_value(Metric::RefreshedAhead), 1 + lifetime);
        // Both workers now serve the new token, before the old one would have expired.
        for e in [&mut a, &mut b] {
            ctx += 1;
            assert_eq!(served(e, &h, ctx, "alice"), format!("Bearer {next}"));
        }
    }
    assert_eq!(
        h.metric_value(Metric::CacheMisses),
        1,
        "only the first request missed"
    );
}

#[test]
fn without_refresh_ahead_the_first_request_after_expiry_waits_for_the_sts() {
    let h = FakeHost::at(NOW);
    let mut e = fresh(json!({ "expiry_skew_s": 0 }));
    exchange(&mut e, &h, 1, "alice", &ok("m1", 60));
    h.advance_ms(55_000);
    assert_eq!(served(&mut e, &h, 2, "alice"), "Bearer m1");
    e.on_tick(&h);
    assert_eq!(sts_calls(&h), 1, "nothing refreshed");
    h.advance_ms(5_000);
    assert_eq!(request(&mut e, &h, 3, "alice"), Verdict::Pause);
}

#[test]
fn a_failed_refresh_leaves_the_entry_until_its_expiry_and_is_retried_a_second_later() {
    let h = FakeHost::at(NOW);
    let mut e = fresh(json!({ "refresh_ahead_s": 10, "expiry_skew_s": 0 }));
    exchange(&mut e, &h, 1, "alice", &ok("m1", 60));
    h.advance_ms(52_000);
    let mut ctx = 10;
    for (answer, outage) in [
        (err(503, "temporarily_unavailable"), 1),
        (err(400, "invalid_grant"), 0),
    ] {
        ctx += 1;
        assert_eq!(served(&mut e, &h, ctx, "alice"), "Bearer m1");
        e.on_tick(&h);
        let calls = sts_calls(&h);
        let errors = h.metric_value(Metric::StsErrors);
        assert!(e
            .on_http_answer(&h, None, h.last_call(), &answer)
            .is_empty());
        assert_eq!(h.metric_value(Metric::StsErrors), errors + outage);
        assert_eq!(h.metric_value(Metric::Rejected), 0, "nobody was refused");
        // The entry serves on, remembered rejection or not; no retry within the second.
        h.advance_ms(500);
        ctx += 1;
        assert_eq!(served(&mut e, &h, ctx, "alice"), "Bearer m1");
        e.on_tick(&h);
        assert_eq!(sts_calls(&h), calls, "no retry within a second");
        h.advance_ms(600);
    }
    assert_eq!(h.metric_value(Metric::RefreshedAhead), 0);
    assert!(h
        .logs
        .borrow()
        .iter()
        .any(|(l, m)| *l == LogLevel::Warn && m.starts_with("refresh ahead failed")));
    // The entry expires as it would have: the next request exchanges.
    h.advance_ms(8_000);
    assert_eq!(request(&mut e, &h, 99, "alice"), Verdict::Pause);
}

#[test]
fn a_refresh_never_serves_past_the_subjects_exp_nor_starts_when_it_cannot_extend() {
    let h = FakeHost::at(NOW);
    let mut e = fresh(json!({ "refresh_ahead_s": 10, "expiry_skew_s": 0 }));
    // The subject expires in 40 s: the entry is capped there, and is not refreshed.
    let short = jwt_until(NOW / 1000 + 40);
    exchange(&mut e, &h, 1, &short, &ok("m1", 60));
    h.advance_ms(35_000);
    assert_eq!(served(&mut e, &h, 2, &short), "Bearer m1");
    e.on_tick(&h);
    assert_eq!(sts_calls(&h), 1, "a refresh could not outlive the subject");
    // The subject expires in 100 s: refreshed at 55 s, the new entry ends at 100 s, not 115.
    let long = jwt_until(NOW / 1000 + 135);
    h.advance_ms(20_000);
    exchange(&mut e, &h, 3, &long, &ok("n1", 60));
    h.advance_ms(55_000);
    assert_eq!(served(&mut e, &h, 4, &long), "Bearer n1");
    e.on_tick(&h);
    assert_eq!(sts_calls(&h), 3);
    e.on_http_answer(&h, None, h.last_call(), &ok("n2", 60));
    assert_eq!(h.metric_value(Metric::RefreshedAhead), 1);
    h.advance_ms(24_900);
    assert_eq!(served(&mut e, &h, 5, &long), "Bearer n2");
    e.on_tick(&h);
    assert_eq!(
        sts_calls(&h),
        3,
        "capped by the subject: not refreshed again"
    );
    h.advance_ms(100);
    assert_eq!(
        request(&mut e, &h, 6, &long),
        Verdict::Pause,
        "the entry ended with the subject: the STS judges it"
    );
}

#[test]
fn an_upstream_401_evicts_the_token_on_every_worker_and_the_next_request_exchanges_anew() {
    let h = FakeHost::at(NOW);
    let (mut a, mut b) = (fresh(json!({})), fresh(json!({})));
    exchange(&mut a, &h, 1, "alice", &ok("m1", 600));
    a.on_request_done(1);
    assert_eq!(served(&mut b, &h, 2, "alice"), "Bearer m1");
    // Two requests with the minted token in the air; one of them hears 401 upstream.
    request(&mut a, &h, 3, "alice");
    request(&mut b, &h, 4, "alice");
    assert!(a.watches(3) && b.watches(4));
    a.on_response(&h, 3, Some(401), Vec::new);
    assert_eq!(h.metric_value(Metric::EvictedOn401), 1);
    // The other 401 to the same token is no second eviction.
    b.on_response(&h, 4, Some(401), Vec::new);
    assert_eq!(h.metric_value(Metric::EvictedOn401), 1);
    // Worker b drops its memo's copy on its tick; both exchange anew.
    b.on_tick(&h);
    assert_eq!(request(&mut b, &h, 5, "alice"), Verdict::Pause);
    let out = b.on_http_answer(&h, None, h.last_call(), &ok("m2", 600));
    assert_eq!(
        set_value(&out[0].1, "authorization").as_deref(),
        Some("Bearer m2")
    );
    b.on_request_done(5);
    assert_eq!(served(&mut a, &h, 6, "alice"), "Bearer m2");
    assert_eq!(sts_calls(&h), 2);
    // A late 401 to the old token does not evict the new one; a 200 evicts nothing.
    request(&mut a, &h, 7, "alice");
    a.on_response(&h, 7, Some(200), Vec::new);
    assert!(!a.watches(7));
    a.on_response(&h, 3, Some(401), Vec::new);
    assert_eq!(served(&mut b, &h, 8, "alice"), "Bearer m2");
    assert_eq!(h.metric_value(Metric::EvictedOn401), 1);
}

#[test]
fn bypassed_rejected_and_forwarded_requests_and_a_disabled_eviction_evict_nothing() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "routes": [{ "match": { "path_prefix": "/health" }, "bypass": true }]
    }));
    let v = e.on_request(
        &h,
        1,
        &[(":path", "/health"), ("authorization", "Bearer x")][..],
    );
    assert!(matches!(v, Verdict::Continue(_)));
    assert!(
        !e.watches(1),
        "a bypassed request carries the caller's own token"
    );
    exchange(&mut e, &h, 2, "bad", &err(400, "invalid_grant"));
    assert_eq!(status(&request(&mut e, &h, 3, "bad")), 401);
    assert!(!e.watches(2) && !e.watches(3), "a refusal carries no token");
    let sts_iss = "https://sts.example";
    let mut forwarding = engine(json!({ "trusted_issuers": [
        { "issuer": sts_iss, "algorithms": ["RS256"], "jwks": keys().jwks(), "action": "forward" }
    ] }));
    let ours = token_with(json!({ "iss": sts_iss }));
    let v = request(&mut forwarding, &h, 7, &ours);
    assert_eq!(set_value(&v, "authorization"), Some(bearer(&ours)));
    assert!(
        !forwarding.watches(7),
        "a forwarded token is the caller's own"
    );
    let mut off = fresh(json!({ "evict_on_upstream_401": false }));
    exchange(&mut off, &h, 4, "alice", &ok("m1", 600));
    request(&mut off, &h, 5, "alice");
    assert!(!off.watches(4) && !off.watches(5));
    off.on_response(&h, 5, Some(401), Vec::new);
    assert_eq!(served(&mut off, &h, 6, "alice"), "Bearer m1");
    assert_eq!(h.metric_value(Metric::EvictedOn401), 0);
}

#[test]
fn a_refresh_that_cannot_be_sent_is_tried_again_a_second_later() {
    let h = FakeHost::at(NOW);
    let mut e = fresh(json!({ "refresh_ahead_s": 10, "expiry_skew_s": 0 }));
    exchange(&mut e, &h, 1, "alice", &ok("m1", 60));
    h.advance_ms(52_000);
    assert_eq!(served(&mut e, &h, 2, "alice"), "Bearer m1");
    h.refuse_dispatch.set(true);
    e.on_tick(&h);
    h.refuse_dispatch.set(false);
    assert_eq!(served(&mut e, &h, 3, "alice"), "Bearer m1");
    e.on_tick(&h);
    assert_eq!(sts_calls(&h), 1, "not within the second");
    h.advance_ms(1_000);
    assert_eq!(served(&mut e, &h, 4, "alice"), "Bearer m1");
    e.on_tick(&h);
    assert_eq!(sts_calls(&h), 2, "a second later");
}

/// A request on `e` served a minted token (the STS mints `m2` if it is asked), then answered
/// by the upstream with `status` and these `WWW-Authenticate` values.
fn answered(e: &mut Engine, h: &FakeHost, ctx: u32, status: u16, challenges: &[&str]) -> Verdict {
    let mut v = request(e, h, ctx, "alice");
    if v == Verdict::Pause {
        let mut out = e.on_http_answer(h, None, h.last_call(), &ok("m2", 3_600));
        v = out.remove(0).1;
    }
    let owned: Vec<String> = challenges.iter().map(|c| c.to_string()).collect();
    e.on_response(h, ctx, Some(status), move || owned);
    e.on_request_done(ctx);
    v
}

#[test]
fn an_upstream_that_rejects_every_token_costs_the_sts_one_call_per_key_a_minute() {
    let h = FakeHost::at(NOW);
    let (mut a, mut b) = (fresh(json!({})), fresh(json!({})));
    exchange(&mut a, &h, 1, "alice", &ok("m1", 3_600));
    a.on_request_done(1);
    let mut ctx = 10;
    // Thirty requests over thirty seconds on two workers, every one refused upstream.
    for i in 0..30u32 {
        ctx += 1;
        let e = if i % 2 == 0 { &mut a } else { &mut b };
        let v = answered(e, &h, ctx, 401, &["Bearer realm=\"api\""]);
        assert!(set_value(&v, "authorization").is_some(), "{v:?}");
        a.on_tick(&h);
        b.on_tick(&h);
        h.advance_ms(1_000);
    }
    assert_eq!(
        sts_calls(&h),
        2,
        "one eviction in the minute, one more exchange"
    );
    assert_eq!(h.metric_value(Metric::EvictedOn401), 1);
    assert_eq!(h.metric_value(Metric::EvictionHeld), 29);
    // A minute after the eviction, the next 401 evicts again.
    h.advance_ms(31_000);
    answered(&mut b, &h, 100, 401, &["Bearer error=\"invalid_token\""]);
    assert_eq!(h.metric_value(Metric::EvictedOn401), 2);
    b.on_tick(&h);
    assert_eq!(request(&mut b, &h, 101, "alice"), Verdict::Pause);
    assert_eq!(sts_calls(&h), 3);
}

#[test]
fn a_401_that_asks_for_more_than_a_new_token_evicts_nothing() {
    let h = FakeHost::at(NOW);
    let mut e = fresh(json!({}));
    exchange(&mut e, &h, 1, "alice", &ok("m1", 3_600));
    e.on_request_done(1);
    let asks_more = [
        "Bearer error=\"insufficient_user_authentication\", acr_values=\"phr\"",
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"orders:write\"",
        "Bearer error=\"insufficient_claims\", claims=\"eyJhY2Nlc3NfdG9rZW4iOnt9fQ==\"",
        "Bearer error_description=\"error=invalid_token\", error=\"insufficient_scope\"",
    ];
    for (i, c) in asks_more.iter().enumerate() {
        let v = answered(&mut e, &h, 10 + i as u32, 401, &[c]);
        assert_eq!(
            set_value(&v, "authorization").as_deref(),
            Some("Bearer m1"),
            "{c}"
        );
    }
    // Two values, one asking for more: that one decides.
    answered(
        &mut e,
        &h,
        20,
        401,
        &["Bearer error=\"invalid_token\"", asks_more[1]],
    );
    assert_eq!(sts_calls(&h), 1);
    assert_eq!(h.metric_value(Metric::EvictedOn401), 0);
    assert_eq!(h.metric_value(Metric::EvictionHeld), 0);
    // The plain case still evicts, once.
    answered(
        &mut e,
        &h,
        30,
        401,
        &["Bearer error=\"invalid_token\", error_description=\"revoked\""],
    );
    assert_eq!(h.metric_value(Metric::EvictedOn401), 1);
    assert_eq!(request(&mut e, &h, 31, "alice"), Verdict::Pause);
}
