//! Sender-constrained tokens as an attacker probes them: DPoP proofs (replayed on this worker
//! and another, for another method or URI, too old or too new, for another token, by another
//! key, `none`, two headers), a bound token sent as `Bearer`, a route that takes DPoP only, a
//! certificate-bound token without or with another certificate, a full replay table, and an
//! issuer whose bindings are ignored.

use std::sync::OnceLock;

use super::issuers::{keys, ISS};
use super::*;
use crate::dpop::tests_support::{jkt, proof};
use crate::host::TEST_PEER_DIGEST;
use crate::jwks::tests::TestKeys;
use serde_json::{json, Value};

const HTU: &str = "https://api.example/orders/1";

/// The client's own key, the one its tokens are bound to.
fn client() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(TestKeys::new)
}

fn trusting(extra: Value) -> Engine {
    let mut config = json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks() }]
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    engine(config)
}

/// A subject token of the trusted issuer with `cnf`.
fn bound(cnf: Value) -> String {
    let claims = json!({ "iss": ISS, "sub": "alice", "exp": NOW / 1000 + 600, "cnf": cnf });
    keys().sign("RS256", Some("rsa"), &claims)
}

fn dpop_bound() -> String {
    bound(json!({ "jkt": jkt(client(), "ES256") }))
}

/// A fresh proof by the client's key for GET `HTU` and `token`.
fn fresh(token: &str) -> String {
    proof(
        client(),
        "ES256",
        ("GET", HTU),
        (NOW / 1000, token),
        |_, _| {},
    )
}

/// A GET of `HTU` with `authorization` and these other headers.
fn send(
    e: &mut Engine,
    h: &FakeHost,
    ctx: u32,
    authorization: &str,
    more: &[(&str, &str)],
) -> Verdict {
    let mut headers = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "api.example"),
        (":path", "/orders/1?page=2"),
        ("authorization", authorization),
    ];
    headers.extend_from_slice(more);
    e.on_request(h, ctx, &headers[..])
}

fn with_proof(e: &mut Engine, h: &FakeHost, ctx: u32, token: &str, proof: &str) -> Verdict {
    send(e, h, ctx, &format!("DPoP {token}"), &[("dpop", proof)])
}

/// Every `WWW-Authenticate` value of a local reply.
fn challenges(v: &Verdict) -> Vec<String> {
    match v {
        Verdict::Respond(r) => (r.headers.iter())
            .filter(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| v.clone())
            .collect(),
        _ => Vec::new(),
    }
}

fn refused_proof(v: &Verdict) -> bool {
    status(v) == 401
        && challenges(v)
            .iter()
            .any(|c| c.starts_with("DPoP ") && c.contains("error=\"invalid_dpop_proof\""))
}

#[test]
fn a_bound_token_is_exchanged_with_a_fresh_proof_every_time_a_hit_included() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({}));
    let t = dpop_bound();
    assert_eq!(with_proof(&mut e, &h, 1, &t, &fresh(&t)), Verdict::Pause);
    let (_, call) = h.calls_to("sts").pop().unwrap();
    assert_eq!(field(&call, "subject_token").as_deref(), Some(t.as_str()));
    let out = e.on_http_answer(&h, None, h.last_call(), &ok("minted", 600));
    let Verdict::Continue(ops) = &out[0].1 else {
        panic!("{out:?}")
    };
    assert!(
        ops.contains(&dpop_gone()),
        "the proof never reaches the upstream"
    );
    assert_eq!(
        set_value(&out[0].1, "authorization").as_deref(),
        Some("Bearer minted")
    );
    // A hit: no STS call, but a fresh proof all the same.
    let second = fresh(&t);
    let v = with_proof(&mut e, &h, 2, &t, &second);
    assert_eq!(
        set_value(&v, "authorization").as_deref(),
        Some("Bearer minted")
    );
    assert_eq!(h.calls_to("sts").len(), 1);
    assert!(
        refused_proof(&with_proof(&mut e, &h, 3, &t, &second)),
        "replayed"
    );
    assert!(
        refused_proof(&send(&mut e, &h, 4, &format!("DPoP {t}"), &[])),
        "no proof"
    );
    assert_eq!(h.metric_value(Metric::DpopVerified), 2);
    assert_eq!(h.metric_value(Metric::DpopRejected), 2);
    assert_eq!(h.calls_to("sts").len(), 1);
}

#[test]
fn a_proof_replayed_on_another_worker_is_refused() {
    let h = FakeHost::at(NOW);
    let (mut a, mut b) = (trusting(json!({})), trusting(json!({})));
    let t = dpop_bound();
    let p = fresh(&t);
    assert_eq!(with_proof(&mut a, &h, 1, &t, &p), Verdict::Pause);
    assert!(refused_proof(&with_proof(&mut b, &h, 1, &t, &p)));
}

#[test]
fn a_proof_for_anything_but_this_request_and_token_is_refused() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({}));
    let t = dpop_bound();
    let now = NOW / 1000;
    let other_key = TestKeys::new();
    let cases: Vec<(&str, String)> = vec![
        (
            "another method",
            proof(client(), "ES256", ("POST", HTU), (now, &t), |_, _| {}),
        ),
        (
            "another path",
            proof(
                client(),
                "ES256",
                ("GET", "https://api.example/orders/2"),
                (now, &t),
                |_, _| {},
            ),
        ),
        (
            "another host",
            proof(
                client(),
                "ES256",
                ("GET", "https://evil.example/orders/1"),
                (now, &t),
                |_, _| {},
            ),
        ),
        (
            "another port",
            proof(
                client(),
                "ES256",
                ("GET", "https://api.example:8443/orders/1"),
                (now, &t),
                |_, _| {},
            ),
        ),
        (
            "another scheme",
            proof(
                client(),
                "ES256",
                ("GET", "http://api.example/orders/1"),
                (now, &t),
                |_, _| {},
            ),
        ),
        (
            "too old",
            proof(client(), "ES256", ("GET", HTU), (now - 70, &t), |_, _| {}),
        ),
        (
            "in the future",
            proof(client(), "ES256", ("GET", HTU), (now + 60, &t), |_, _| {}),
        ),
        (
            "another token",
            proof(client(), "ES256", ("GET", HTU), (now, "another"), |_, _| {}),
        ),
        (
            "a key that is not the token's",
            proof(&other_key, "ES256", ("GET", HTU), (now, &t), |_, _| {}),
        ),
        (
            "typ JWT",
            proof(client(), "ES256", ("GET", HTU), (now, &t), |h, _| {
                h["typ"] = "JWT".into()
            }),
        ),
        (
            "a private jwk",
            proof(client(), "ES256", ("GET", HTU), (now, &t), |h, _| {
                h["jwk"]["d"] = "AAAA".into()
            }),
        ),
    ];
    for (name, p) in cases {
        let v = with_proof(&mut e, &h, 1, &t, &p);
        assert!(refused_proof(&v), "{name}: {v:?}");
        // The route takes both schemes: both challenges, the proof's naming the algorithms.
        let all = challenges(&v);
        assert!(
            all.iter()
                .any(|c| c.contains("algs=\"ES256 RS256 PS256 EdDSA\"")),
            "{name}"
        );
        assert!(all.iter().any(|c| c.starts_with("Bearer ")), "{name}");
    }
    // alg none and HS256, with and without a signature.
    let good = fresh(&t);
    let payload = good.split('.').nth(1).unwrap();
    for header in [
        r#"{"typ":"dpop+jwt","alg":"none"}"#,
        r#"{"typ":"dpop+jwt","alg":"HS256"}"#,
    ] {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let head = URL_SAFE_NO_PAD.encode(header);
        for sig in ["", "c2ln"] {
            assert!(refused_proof(&with_proof(
                &mut e,
                &h,
                1,
                &t,
                &format!("{head}.{payload}.{sig}")
            )));
        }
    }
    assert_eq!(h.calls_to("sts").len(), 0);
    assert_eq!(h.metric_value(Metric::DpopVerified), 0);
}

#[test]
fn two_dpop_headers_or_one_joined_are_refused() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({}));
    let t = dpop_bound();
    let (p1, p2) = (fresh(&t), fresh(&t));
    let auth = format!("DPoP {t}");
    let v = send(&mut e, &h, 1, &auth, &[("dpop", &p1), ("dpop", &p2)]);
    assert!(refused_proof(&v), "{v:?}");
    let joined = format!("{p1},{p2}");
    assert!(refused_proof(&send(
        &mut e,
        &h,
        2,
        &auth,
        &[("dpop", &joined)]
    )));
    assert_eq!(h.calls_to("sts").len(), 0);
}

#[test]
fn a_bound_token_sent_as_bearer_is_refused_even_after_it_was_exchanged() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({}));
    let t = dpop_bound();
    let v = send(&mut e, &h, 1, &bearer(&t), &[]);
    assert_eq!(status(&v), 401);
    assert!(challenge(&v).starts_with("Bearer ") && challenge(&v).contains("invalid_token"));
    assert_eq!(h.metric_value(Metric::BoundTokenRejected), 1);
    assert_eq!(h.calls_to("sts").len(), 0);
    // Exchanged once with its proof: the minted token is cached, and still no downgrade.
    with_proof(&mut e, &h, 2, &t, &fresh(&t));
    e.on_http_answer(&h, None, h.last_call(), &ok("minted", 600));
    for ctx in 3..5 {
        assert_eq!(status(&send(&mut e, &h, ctx, &bearer(&t), &[])), 401);
    }
    // A token bound by a method the filter cannot check is no bearer token either.
    let other = bound(json!({ "jwk": { "kty": "EC" } }));
    assert_eq!(status(&send(&mut e, &h, 5, &bearer(&other), &[])), 401);
    assert_eq!(h.metric_value(Metric::BoundTokenRejected), 4);
}

#[test]
fn an_unbound_token_with_the_dpop_scheme_is_refused() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({}));
    let t = bound(Value::Null);
    let v = with_proof(&mut e, &h, 1, &t, &fresh(&t));
    assert_eq!(status(&v), 401);
    assert!(challenges(&v)[0].starts_with("DPoP ") && challenges(&v)[0].contains("invalid_token"));
    // Without trusted issuers no token is known to be bound.
    let mut plain = engine(json!({}));
    let v = with_proof(&mut plain, &h, 2, "opaque", &fresh("opaque"));
    assert_eq!(status(&v), 401);
    assert_eq!(h.calls_to("sts").len(), 0);
}

#[test]
fn a_route_that_takes_dpop_only_refuses_bearer_tokens_and_names_dpop() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({
        "on_missing_token": "allow",
        "routes": [{ "match": { "path_prefix": "/orders" }, "dpop": { "required": true } }]
    }));
    let plain = bound(Value::Null);
    let v = send(&mut e, &h, 1, &bearer(&plain), &[]);
    assert_eq!(status(&v), 401);
    assert_eq!(challenges(&v).len(), 1, "only DPoP is taken here");
    assert!(challenges(&v)[0].starts_with("DPoP ") && challenges(&v)[0].contains("invalid_token"));
    let none = e.on_request(&h, 2, &[(":path", "/orders/1")][..]);
    assert_eq!(
        status(&none),
        401,
        "no token, whatever on_missing_token says"
    );
    assert_eq!(
        challenge(&none),
        "DPoP realm=\"token-exchange\", algs=\"ES256 RS256 PS256 EdDSA\""
    );
    let t = dpop_bound();
    assert_eq!(with_proof(&mut e, &h, 3, &t, &fresh(&t)), Verdict::Pause);
    // Elsewhere bearer tokens still go on.
    let v = e.on_request(
        &h,
        4,
        &[(":path", "/other"), ("authorization", &bearer(&plain))][..],
    );
    assert_eq!(v, Verdict::Pause);
}

#[test]
fn a_certificate_bound_token_goes_on_only_with_its_certificate() {
    let h = FakeHost::at(NOW);
    let mut e = trusting(json!({}));
    let digest = [0x5au8; 32];
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let x5t = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        URL_SAFE_NO_PAD.encode(digest)
    };
    let t = bound(json!({ "x5t#S256": x5t }));
    let v = send(&mut e, &h, 1, &bearer(&t), &[]);
    assert_eq!(status(&v), 401, "no certificate");
    let other = "a5".repeat(32);
    let v = send(&mut e, &h, 2, &bearer(&t), &[(TEST_PEER_DIGEST, &other)]);
    assert_eq!(status(&v), 401, "another certificate");
    assert_eq!(h.metric_value(Metric::BoundTokenRejected), 2);
    let v = send(&mut e, &h, 3, &bearer(&t), &[(TEST_PEER_DIGEST, &hex)]);
    assert_eq!(v, Verdict::Pause);
    e.on_http_answer(&h, None, h.last_call(), &ok("minted", 600));
    // Cached now; still checked on every request.
    let v = send(&mut e, &h, 4, &bearer(&t), &[(TEST_PEER_DIGEST, &hex)]);
    assert_eq!(
        set_value(&v, "authorization").as_deref(),
        Some("Bearer minted")
    );
    assert_eq!(status(&send(&mut e, &h, 5, &bearer(&t), &[])), 401);
    // The DPoP scheme is no way around it.
    assert_eq!(status(&with_proof(&mut e, &h, 6, &t, &fresh(&t))), 401);
}

#[test]
fn an_issuer_whose_bindings_are_ignored_issues_bearer_tokens() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "trusted_issuers": [{ "issuer": ISS, "algorithms": ["RS256"], "jwks": keys().jwks(),
                              "bound_tokens": "ignore" }]
    }));
    let t = dpop_bound();
    assert_eq!(send(&mut e, &h, 1, &bearer(&t), &[]), Verdict::Pause);
    let c = bound(json!({ "x5t#S256": "abc" }));
    assert_eq!(send(&mut e, &h, 2, &bearer(&c), &[]), Verdict::Pause);
    // With the DPoP scheme its tokens are unbound: refused.
    assert_eq!(status(&with_proof(&mut e, &h, 3, &t, &fresh(&t))), 401);
}

#[test]
fn a_full_replay_table_is_503_never_a_pass_even_failing_open() {
    let h = FakeHost::at(NOW);
    let mut e =
        trusting(json!({ "on_sts_unavailable": "allow", "dpop": { "replay_entries": 1024 } }));
    let mut live = vec![0xeeu8; 32];
    live.extend_from_slice(&(NOW + 600_000).to_be_bytes());
    for i in 0..1024 {
        h.shared
            .borrow_mut()
            .insert(format!("token_exchange.dpop.{i}"), (live.clone(), 1));
    }
    let t = dpop_bound();
    let v = with_proof(&mut e, &h, 1, &t, &fresh(&t));
    assert_eq!(status(&v), 503);
    let Verdict::Respond(r) = &v else {
        unreachable!()
    };
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(h.calls_to("sts").len(), 0);
}

#[test]
fn an_introspected_token_is_bound_by_the_cnf_of_its_answer() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "trusted_issuers": [{ "issuer": "https://partner.example",
            "introspection": { "cluster": "partner", "authority": "partner.example",
                               "path": "/introspect", "client_id": "edge", "client_secret": "pw2" } }]
    }));
    let t = "opaque-bound";
    assert_eq!(with_proof(&mut e, &h, 1, t, &fresh(t)), Verdict::Pause);
    let answer = json!({ "active": true, "iss": "https://partner.example", "sub": "dora",
        "exp": NOW / 1000 + 600, "cnf": { "jkt": jkt(client(), "ES256") } });
    let call = h.calls_to("partner").last().unwrap().0;
    let body = answer.to_string().into_bytes();
    let answer = HttpAnswer {
        status: Some(200),
        body,
        too_large: false,
    };
    let out = e.on_http_answer(&h, None, call, &answer);
    assert_eq!(out, vec![(1, Verdict::Pause)], "on to the STS");
    assert_eq!(h.calls_to("sts").len(), 1);
    assert_eq!(h.metric_value(Metric::DpopVerified), 1);
    // The answer is remembered: as a bearer token it is refused without asking again.
    assert_eq!(status(&send(&mut e, &h, 2, &bearer(t), &[])), 401);
    assert_eq!(h.calls_to("partner").len(), 1);
}
