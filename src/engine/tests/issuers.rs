//! Trusted issuers: verification once per token and key set, refusals by reason, key fetches,
//! rotation, unknown kids, floods, `may_act`.

use super::*;
use crate::jwks::tests::TestKeys;
use serde_json::json;
use std::sync::OnceLock;

pub(super) const ISS: &str = "https://idp.example";

pub(super) fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(TestKeys::new)
}

fn token(kid: &str, exp_in_s: u64) -> String {
    let alg = match kid {
        "ec" | "ec2" => "ES256",
        "ed" => "EdDSA",
        _ => "RS256",
    };
    keys().sign(
        alg,
        Some(kid),
        &json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + exp_in_s }),
    )
}

fn inline_engine() -> Engine {
    engine(json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256", "ES256", "EdDSA"], "jwks": keys().jwks() }]
    }))
}

fn remote_engine() -> Engine {
    engine(json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256", "ES256"],
            "jwks_uri": { "cluster": "idp", "authority": "idp.local", "path": "/jwks", "refresh_s": 60 } }]
    }))
}

fn jwks_answer(keys: serde_json::Value) -> HttpAnswer {
    HttpAnswer {
        status: Some(200),
        body: keys.to_string().into_bytes(),
        too_large: false,
    }
}

pub(super) fn ask(e: &mut Engine, h: &FakeHost, ctx: u32, t: &str) -> Verdict {
    let auth = bearer(t);
    e.on_request(h, ctx, &[("authorization", auth.as_str())][..])
}

/// Answers the last JWKS fetch.
fn answer_fetch(e: &mut Engine, h: &FakeHost, keys: serde_json::Value) -> Vec<(u32, Verdict)> {
    let call = h.calls_to("idp").last().expect("a key fetch").0;
    e.on_http_answer(h, None, call, &jwks_answer(keys))
}

/// A remote-keys engine that fetched `keys` at start.
fn started(h: &FakeHost, keys: serde_json::Value) -> Engine {
    let mut e = remote_engine();
    e.on_tick(h);
    answer_fetch(&mut e, h, keys);
    e
}

/// A subject token with these extra claims, signed by the inline RS256 key.
pub(super) fn token_with(extra: serde_json::Value) -> String {
    let mut claims = json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + 600 });
    if let (Some(c), Some(x)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(x.clone());
    }
    keys().sign("RS256", Some("rsa"), &claims)
}

pub(super) fn unsigned(claims: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The other valid spelling of an ES256 token: (r, n - s).
fn twin(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    let (r, s) = sig.split_scalars();
    let flipped = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(flipped.to_bytes()))
}

#[test]
fn both_spellings_of_an_es256_token_share_one_entry() {
    let h = FakeHost::at(NOW);
    let mut e = inline_engine();
    let t = token("ec", 600);
    let t2 = twin(&t);
    assert_ne!(t, t2);
    assert_eq!(ask(&mut e, &h, 1, &t), Verdict::Pause);
    e.on_http_answer(&h, Some(1), h.last_call(), &ok("minted", 3600));
    // The twin verifies too, and is served the same entry: no second exchange.
    assert_eq!(
        set_value(&ask(&mut e, &h, 2, &t2), "authorization").as_deref(),
        Some("Bearer minted")
    );
    assert_eq!(h.calls_to("sts").len(), 1);
    // Likewise a rejection: the twin of a refused token is refused from the cache.
    let r = token("ec", 700);
    ask(&mut e, &h, 3, &r);
    e.on_http_answer(&h, Some(3), h.last_call(), &err(400, "invalid_grant"));
    assert_eq!(status(&ask(&mut e, &h, 4, &twin(&r))), 401);
    assert_eq!(h.calls_to("sts").len(), 2);
    // A signature that is not the twin does not verify.
    let mut forged = t2.clone();
    forged.replace_range(forged.len() - 3.., "AAA");
    assert_eq!(status(&ask(&mut e, &h, 5, &forged)), 401);
}

#[test]
fn may_act_names_who_may_act_and_others_get_403_without_an_sts_call() {
    let issuers = json!([{ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() }]);
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "trusted_issuers": issuers,
        "exchange": { "actor": { "source": "header", "header": "x-actor" } },
        "routes": [{ "match": { "path_prefix": "/lax" }, "exchange": { "enforce_may_act": false } }]
    }));
    let ctx = std::cell::Cell::new(0);
    let ask = |e: &mut Engine, h: &FakeHost, path: &str, subject: &str, actor: &str| {
        ctx.set(ctx.get() + 1);
        let auth = bearer(subject);
        let req = [
            (":path", path),
            ("authorization", auth.as_str()),
            ("x-actor", actor),
        ];
        e.on_request(h, ctx.get(), &req[..])
    };
    let svc = unsigned(json!({"sub": "svc-a", "iss": "https://sts.example"}));
    let other = unsigned(json!({"sub": "svc-b", "iss": "https://sts.example"}));
    let named = token_with(json!({"may_act": {"sub": "svc-a"}}));
    let named_iss = token_with(json!({"may_act": {"sub": "svc-a", "iss": "https://other"}}));
    let empty = token_with(json!({"may_act": {}}));
    let not_object = token_with(json!({"may_act": "svc-a"}));
    let free = token_with(json!({}));

    assert_eq!(
        ask(&mut e, &h, "/", &named, &svc),
        Verdict::Pause,
        "named actor goes on"
    );
    assert_eq!(
        ask(&mut e, &h, "/", &free, &other),
        Verdict::Pause,
        "no may_act: no limit"
    );
    let before = h.calls.borrow().len();
    for (subject, actor) in [
        (&named, &other),
        (&named_iss, &svc),
        (&empty, &svc),
        (&not_object, &svc),
    ] {
        let v = ask(&mut e, &h, "/", subject, actor);
        assert_eq!(status(&v), 403, "{v:?}");
        // The verified record remembers the decision: a second request is refused too.
        assert_eq!(status(&ask(&mut e, &h, "/", subject, actor)), 403);
    }
    assert_eq!(
        h.calls.borrow().len(),
        before,
        "no STS call for a refused actor"
    );
    assert_eq!(
        ask(&mut e, &h, "/lax", &named, &other),
        Verdict::Pause,
        "check turned off"
    );

    // The filter's own client-credentials actor is named by its client id.
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "trusted_issuers": issuers,
        "exchange": { "actor": { "source": "client_credentials" } }
    }));
    let edge = token_with(json!({"may_act": {"sub": "edge"}}));
    let someone = token_with(json!({"may_act": {"sub": "someone-else"}}));
    assert_eq!(ask(&mut e, &h, "/", &edge, ""), Verdict::Pause);
    assert_eq!(status(&ask(&mut e, &h, "/", &someone, "")), 403);
}

fn verified_lines(h: &FakeHost) -> usize {
    h.logs
        .borrow()
        .iter()
        .filter(|(_, l)| l.ends_with(" verified"))
        .count()
}

#[test]
fn a_valid_token_is_verified_once_then_exchanged_and_cached() {
    let h = FakeHost::at(NOW);
    let mut e = inline_engine();
    let t = token("rsa", 600);
    assert_eq!(ask(&mut e, &h, 1, &t), Verdict::Pause);
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
    assert_eq!(
        set_value(&out[0].1, "authorization").as_deref(),
        Some("Bearer minted")
    );
    for ctx in 2..10 {
        assert_ne!(ask(&mut e, &h, ctx, &t), Verdict::Pause);
    }
    assert_eq!(verified_lines(&h), 1, "a hot token is verified once");
    // the verified exp (600 s) capped the lifetime: 600 − 30 skew
    h.advance_ms(570_000);
    assert_eq!(ask(&mut e, &h, 20, &t), Verdict::Pause);
}

#[test]
fn refused_tokens_never_reach_the_sts_and_are_counted_by_reason() {
    let h = FakeHost::at(NOW);
    let mut e = inline_engine();
    let expired = token("rsa", 0);
    h.advance_ms(31_000);
    let v = ask(&mut e, &h, 1, &expired);
    let Verdict::Respond(r) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error_description=\"token expired\""));
    let v = ask(&mut e, &h, 2, "opaque-token");
    assert_eq!(status(&v), 401);
    assert!(h.calls.borrow().is_empty());
    assert_eq!(h.metric_value(Metric::InvalidToken(JwtError::Expired)), 1);
    assert_eq!(h.metric_value(Metric::InvalidToken(JwtError::Malformed)), 1);
    assert_eq!(h.metric_value(Metric::Rejected), 2);
}

#[test]
fn remote_keys_answer_503_until_fetched_then_verify() {
    let h = FakeHost::at(NOW);
    let mut e = remote_engine();
    let t = token("rsa", 600);
    let v = ask(&mut e, &h, 1, &t);
    assert_eq!(status(&v), 503);
    assert!(e.on_tick(&h).is_empty());
    assert_eq!(h.calls_to("idp").len(), 1);
    let fetch = &h.calls_to("idp")[0].1;
    assert_eq!(
        fetch.headers[..3],
        [
            (":method".to_string(), "GET".to_string()),
            (":path".into(), "/jwks".into()),
            (":authority".into(), "idp.local".into())
        ]
    );
    assert!(answer_fetch(&mut e, &h, keys().jwks()).is_empty());
    assert_eq!(ask(&mut e, &h, 2, &t), Verdict::Pause);
    assert_eq!(h.calls_to("sts").len(), 1);
    assert_eq!(h.metric_value(Metric::JwksFetches), 1);
}

#[test]
fn requests_before_the_first_keys_do_not_cause_an_early_refresh() {
    let h = FakeHost::at(NOW);
    let mut e = remote_engine();
    e.on_tick(&h);
    assert_eq!(status(&ask(&mut e, &h, 1, &token("rsa", 600))), 503);
    answer_fetch(&mut e, &h, keys().jwks());
    h.advance_ms(10_000);
    e.on_tick(&h);
    assert_eq!(
        h.calls_to("idp").len(),
        1,
        "no refresh before refresh_s without an unknown kid"
    );
}

#[test]
fn a_failed_first_fetch_is_retried_every_second() {
    let h = FakeHost::at(NOW);
    let mut e = remote_engine();
    e.on_tick(&h);
    let call = h.calls_to("idp")[0].0;
    e.on_http_answer(&h, None, call, &no_answer());
    assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
    h.advance_ms(900);
    e.on_tick(&h);
    assert_eq!(h.calls_to("idp").len(), 1);
    h.advance_ms(100);
    e.on_tick(&h);
    assert_eq!(h.calls_to("idp").len(), 2);
}

#[test]
fn a_down_idp_is_fetched_with_backoff_by_one_worker_never_more_than_once_a_second() {
    let h = FakeHost::at(NOW);
    let (mut a, mut b) = (remote_engine(), remote_engine());
    let down = no_answer();
    let mut fetched_at = Vec::new();
    // Two minutes of ticks on two workers, every fetch failing.
    for _ in 0..1_200 {
        for e in [&mut a, &mut b] {
            let before = h.calls_to("idp").len();
            e.on_tick(&h);
            if h.calls_to("idp").len() > before {
                fetched_at.push(h.now.get());
                e.on_http_answer(&h, None, h.last_call(), &down);
            }
        }
        h.advance_ms(100);
    }
    let gaps: Vec<u64> = fetched_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 1_000), "{gaps:?}");
    assert!(
        gaps.windows(2).all(|w| w[1] + 100 >= w[0]),
        "never faster: {gaps:?}"
    );
    // 1 + 2 + 4 + 8 + 16 + 32 + 64 s, less jitter: a handful of fetches, not 120.
    assert!(
        fetched_at.len() <= 9,
        "{} fetches: {gaps:?}",
        fetched_at.len()
    );
    assert!(gaps.last().is_some_and(|g| *g >= 24_000), "{gaps:?}");
    // Each of them counted as a failed fetch.
    assert_eq!(
        h.metric_value(Metric::JwksFetchFailures) as usize,
        fetched_at.len()
    );
}

#[test]
fn unknown_kid_waits_for_one_early_refresh_then_goes_on() {
    let h = FakeHost::at(NOW);
    let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
    h.advance_ms(10_000);
    let rotated = token("ec", 600);
    assert_eq!(ask(&mut e, &h, 7, &rotated), Verdict::Pause);
    assert!(e.on_tick(&h).is_empty());
    assert_eq!(h.calls_to("idp").len(), 2, "early refresh");
    let out = answer_fetch(
        &mut e,
        &h,
        json!({ "keys": [keys().rsa_jwk("rsa"), keys().ec_jwk("ec")] }),
    );
    assert_eq!(
        out,
        vec![(7, Verdict::Pause)],
        "verified, now waiting on the STS"
    );
    assert_eq!(h.calls_to("sts").len(), 1);
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
    assert_eq!(out.len(), 1);
    assert_eq!(
        set_value(&out[0].1, "authorization").as_deref(),
        Some("Bearer minted")
    );
}

#[test]
fn a_flood_of_unknown_kids_costs_one_fetch_per_ten_seconds() {
    let h = FakeHost::at(NOW);
    let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
    h.advance_ms(10_000);
    let stranger = token("ec", 600);
    for ctx in 0..200 {
        assert_eq!(ask(&mut e, &h, ctx, &stranger), Verdict::Pause);
    }
    e.on_tick(&h);
    let out = answer_fetch(&mut e, &h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
    assert_eq!(out.len(), 200);
    assert!(out.iter().all(|(_, v)| status(v) == 401));
    for ctx in 200..400 {
        assert_eq!(
            status(&ask(&mut e, &h, ctx, &stranger)),
            401,
            "no waiting inside the 10 s"
        );
        e.on_tick(&h);
    }
    assert_eq!(
        h.calls_to("idp").len(),
        2,
        "the start fetch and one early refresh"
    );
    assert_eq!(
        h.metric_value(Metric::InvalidToken(JwtError::UnknownKey)),
        400
    );
    h.advance_ms(10_000);
    assert_eq!(ask(&mut e, &h, 500, &stranger), Verdict::Pause);
    e.on_tick(&h);
    assert_eq!(h.calls_to("idp").len(), 3);
}

#[test]
fn an_idp_that_hangs_or_floods_keeps_the_last_good_keys() {
    for bad in [
        no_answer(),
        HttpAnswer {
            status: Some(200),
            body: vec![],
            too_large: true,
        },
        HttpAnswer {
            status: Some(200),
            body: b"{\"keys\":".to_vec(),
            too_large: false,
        },
    ] {
        let h = FakeHost::at(NOW);
        let mut e = started(&h, keys().jwks());
        h.advance_ms(60_000);
        e.on_tick(&h);
        let call = h.calls_to("idp")[1].0;
        e.on_http_answer(&h, None, call, &bad);
        assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
        assert_eq!(
            ask(&mut e, &h, 1, &token("ec", 600)),
            Verdict::Pause,
            "{bad:?}"
        );
    }
}

#[test]
fn a_failed_refresh_keeps_the_last_good_keys() {
    let h = FakeHost::at(NOW);
    let mut e = started(&h, keys().jwks());
    h.advance_ms(60_000);
    e.on_tick(&h);
    assert_eq!(h.calls_to("idp").len(), 2, "regular refresh");
    let call = h.calls_to("idp")[1].0;
    e.on_http_answer(
        &h,
        None,
        call,
        &HttpAnswer {
            status: Some(500),
            body: vec![],
            too_large: false,
        },
    );
    assert_eq!(
        ask(&mut e, &h, 1, &token("ec", 600)),
        Verdict::Pause,
        "old keys still verify"
    );
    h.advance_ms(9_000);
    e.on_tick(&h);
    assert_eq!(h.calls_to("idp").len(), 2);
    h.advance_ms(1_000);
    e.on_tick(&h);
    assert_eq!(
        h.calls_to("idp").len(),
        3,
        "retried after 10 s, before refresh_s"
    );
}

#[test]
fn rotation_rejects_tokens_of_a_removed_key() {
    let h = FakeHost::at(NOW);
    let mut e = started(&h, keys().jwks());
    let old = token("rsa", 600);
    let v = ask(&mut e, &h, 1, &old);
    assert_eq!(v, Verdict::Pause);
    e.on_http_answer(&h, None, h.last_call(), &ok("minted", 3600));
    h.advance_ms(60_000);
    e.on_tick(&h);
    answer_fetch(&mut e, &h, json!({ "keys": [keys().ec_jwk("ec")] }));
    assert_eq!(
        status(&ask(&mut e, &h, 2, &old)),
        401,
        "cached exchange is not served for a token whose key is gone"
    );
}

#[test]
fn workers_share_one_fetch_through_shared_data() {
    let h = FakeHost::at(NOW);
    let mut a = remote_engine();
    let mut b = remote_engine();
    a.on_tick(&h);
    b.on_tick(&h);
    assert_eq!(
        h.calls_to("idp").len(),
        1,
        "the CAS claim lets one worker fetch"
    );
    answer_fetch(&mut a, &h, keys().jwks());
    b.on_tick(&h);
    assert_eq!(
        ask(&mut b, &h, 1, &token("rsa", 600)),
        Verdict::Pause,
        "b took up a's keys"
    );
    assert_eq!(h.calls_to("idp").len(), 1);
}

#[test]
fn a_waiter_that_leaves_is_forgotten() {
    let h = FakeHost::at(NOW);
    let mut e = started(&h, json!({ "keys": [keys().rsa_jwk("rsa")] }));
    h.advance_ms(10_000);
    assert_eq!(ask(&mut e, &h, 3, &token("ec", 600)), Verdict::Pause);
    e.on_request_done(3);
    e.on_tick(&h);
    assert!(answer_fetch(&mut e, &h, keys().jwks()).is_empty());
}

#[test]
fn a_forward_issuers_verified_tokens_pass_on_unchanged_and_others_are_exchanged() {
    // Migration: the old IdP's tokens are exchanged, the STS's own tokens are forwarded.
    let sts_iss = "https://sts.example";
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "trusted_issuers": [
            { "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() },
            { "issuer": sts_iss, "algorithms": ["RS256"], "jwks": keys().jwks(), "action": "forward" }
        ],
        "output": { "original_token_header": "x-original" }
    }));
    let ours = token_with(json!({ "iss": sts_iss }));
    for ctx in 1..=3 {
        let v = ask(&mut e, &h, ctx, &ours);
        assert_eq!(
            set_value(&v, "authorization"),
            Some(bearer(&ours)),
            "unchanged"
        );
    }
    assert!(h.calls.borrow().is_empty(), "no exchange, no STS call");
    assert_eq!(h.metric_value(Metric::Forwarded), 3);
    assert_eq!(
        h.metric_value(Metric::CacheHits),
        0,
        "no cache entry either"
    );
    // The old IdP's token is exchanged as before.
    assert_eq!(ask(&mut e, &h, 4, &token_with(json!({}))), Verdict::Pause);
    assert_eq!(h.calls.borrow().len(), 1);
    // A token that only claims the forwarded issuer is refused, never passed on.
    let forged = unsigned(json!({ "iss": sts_iss, "sub": "mallory", "exp": NOW / 1000 + 600 }));
    assert_eq!(status(&ask(&mut e, &h, 5, &forged)), 401);
    assert_eq!(h.metric_value(Metric::Forwarded), 3);
}

/// An engine that finds the inline issuer's keys through its discovery document at `idp`.
fn discovering() -> Engine {
    engine(
        json!({ "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256"],
        "discovery": { "cluster": "idp", "authority": "idp.local" } }] }),
    )
}

#[test]
fn discovery_finds_the_key_set_and_refuses_a_foreign_issuer_or_authority() {
    let path_of = |h: &FakeHost, i: usize| {
        let call = &h.calls_to("idp")[i].1;
        call.headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let h = FakeHost::at(NOW);
    let mut e = discovering();
    e.on_tick(&h);
    assert_eq!(path_of(&h, 0), "/.well-known/openid-configuration");
    let doc = json!({ "issuer": ISS, "jwks_uri": "https://idp.local/oauth2/keys" });
    answer_fetch(&mut e, &h, doc);
    h.advance_ms(100);
    e.on_tick(&h);
    assert_eq!(path_of(&h, 1), "/oauth2/keys", "the key set, at once");
    answer_fetch(&mut e, &h, keys().jwks());
    assert_eq!(
        ask(&mut e, &h, 1, &token("rsa", 600)),
        Verdict::Pause,
        "verified, exchanged"
    );
    assert_eq!(h.calls_to("sts").len(), 1);
    // A document naming another issuer, or keys on another authority: refused, never fetched.
    for doc in [
        json!({ "issuer": "https://evil.example", "jwks_uri": "https://idp.local/keys" }),
        json!({ "issuer": ISS, "jwks_uri": "https://evil.example/keys" }),
    ] {
        let h = FakeHost::at(NOW);
        let mut e = discovering();
        e.on_tick(&h);
        answer_fetch(&mut e, &h, doc.clone());
        for _ in 0..30 {
            h.advance_ms(100);
            e.on_tick(&h);
        }
        let paths: Vec<String> = (0..h.calls_to("idp").len())
            .map(|i| path_of(&h, i))
            .collect();
        assert!(
            paths.iter().all(|p| p.starts_with("/.well-known/")),
            "{doc}: {paths:?}"
        );
        assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1, "{doc}");
        assert_eq!(
            paths.len(),
            2,
            "discovered again after the backoff: {paths:?}"
        );
        assert!(h
            .logs
            .borrow()
            .iter()
            .any(|(_, l)| l.contains("discovery document refused")));
        assert_eq!(
            status(&ask(&mut e, &h, 1, &token("rsa", 600))),
            503,
            "no keys: no trust"
        );
    }
    // A discovery endpoint that never answers: a failure like any fetch, tried again later.
    let h = FakeHost::at(NOW);
    let mut e = discovering();
    e.on_tick(&h);
    e.on_http_answer(&h, None, h.last_call(), &no_answer());
    assert_eq!(h.metric_value(Metric::JwksFetchFailures), 1);
    let logs = h.logs.borrow();
    assert!(logs
        .iter()
        .any(|(_, l)| l.contains("discovery document unreachable")));
    drop(logs);
    h.advance_ms(1_000);
    e.on_tick(&h);
    assert_eq!(path_of(&h, 1), "/.well-known/openid-configuration");
}

#[test]
fn a_failing_key_set_backs_off_though_its_discovery_document_answers() {
    // Round 5, D10: each failed key set is discovered again; the document's success must not
    // end the run of failures, or the backoff never grows past a second.
    let h = FakeHost::at(NOW);
    let (mut a, mut b) = (discovering(), discovering());
    let doc = json!({ "issuer": ISS, "jwks_uri": "https://idp.local/oauth2/keys" });
    let mut key_set_fetches = Vec::new();
    // Thirty seconds of ticks on two workers; the document answers, the key set never does.
    for _ in 0..300 {
        for e in [&mut a, &mut b] {
            let before = h.calls_to("idp").len();
            e.on_tick(&h);
            if h.calls_to("idp").len() > before {
                let call = h.calls_to("idp").last().cloned().unwrap();
                let to_keys = call
                    .1
                    .headers
                    .iter()
                    .any(|(n, v)| n == ":path" && v == "/oauth2/keys");
                let answer = if to_keys {
                    key_set_fetches.push(h.now.get());
                    no_answer()
                } else {
                    jwks_answer(doc.clone())
                };
                e.on_http_answer(&h, None, call.0, &answer);
            }
        }
        h.advance_ms(100);
    }
    let gaps: Vec<u64> = key_set_fetches.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 + 2 + 4 + 8 + 16 s, less jitter: about five key-set fetches in 30 s, not thirty.
    assert!(
        key_set_fetches.len() <= 7,
        "{} fetches: {gaps:?}",
        key_set_fetches.len()
    );
    assert!(gaps.last().is_some_and(|g| *g >= 6_000), "{gaps:?}");
}
