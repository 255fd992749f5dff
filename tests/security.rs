//! End-to-end probes of the security promises an attacker would try first, in a real Envoy with
//! the release `.wasm`: bytes that are not text, answers cut off mid-body, joined
//! `Authorization` headers, authorities that pick another virtual host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::thread;
use std::time::Duration;

use serde_json::json;
use support::{
    mint, raw_request, start_echo, Envoy, EnvoySetup, RawReply, RawServer, Signer, TestSts,
};

const ISS: &str = "https://idp.test";

fn config(extra: serde_json::Value) -> serde_json::Value {
    let config = json!({
        "sts": {
            "cluster": "sts", "authority": "sts.test", "token_path": "/oauth2/token",
            "timeout_ms": 500, "client_id": "edge", "client_secret_env": "STS_SECRET"
        },
        "exchange": { "audience": ["api"] }
    });
    support::merged(config, extra)
}

fn start(
    sts_port: u16,
    filter_config: serde_json::Value,
    clusters: &[(&str, u16)],
    fail_open: bool,
    virtual_hosts: &[(&str, &str)],
) -> Envoy {
    Envoy::start(EnvoySetup {
        filter_config,
        sts_port,
        echo_port: start_echo(0),
        env: &[("STS_SECRET", "secret")],
        concurrency: 1,
        clusters,
        fail_open,
        virtual_hosts,
    })
}

/// A GET of `/` with these header lines (raw bytes), answered with the whole response text.
fn get(envoy: &Envoy, headers: &[&[u8]]) -> String {
    let mut req = b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n".to_vec();
    for h in headers {
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    raw_request(envoy, &req)
}

#[test]
fn a_header_that_is_not_text_is_refused_and_the_filter_lives_on() {
    let sts = TestSts::start(0, mint);
    let cfg = config(json!({
        "exchange": { "audience": ["api"], "actor": { "source": "header", "header": "x-actor" } }
    }));
    // FAIL_OPEN: were the VM to die, later requests would skip the filter with their token.
    let envoy = start(sts.port, cfg, &[], true, &[]);
    for _ in 0..3 {
        let text = get(&envoy, &[b"authorization: Bearer \xff\xfe", b"x-actor: a1"]);
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(text.contains("invalid_token"), "{text}");
    }
    // The actor header read looks at every header: a Latin-1 cookie is ignored, a Latin-1 actor
    // token is refused.
    let text = get(
        &envoy,
        &[
            b"authorization: Bearer alice",
            b"x-actor: a1",
            b"cookie: s=caf\xe9-secret-cookie",
        ],
    );
    assert_eq!(sts.count(), 1, "the exchange went on: {text}");
    let text = get(&envoy, &[b"authorization: Bearer bob", b"x-actor: \xe9"]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    // The filter still serves, and the caller's token never went past it.
    for subject in ["carol", "dave"] {
        let text = get(
            &envoy,
            &[
                format!("authorization: Bearer {subject}").as_bytes(),
                b"x-actor: a1",
            ],
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("minted-"), "{text}");
        assert!(!text.contains(&format!("\"Bearer {subject}\"")), "{text}");
    }
    let log = envoy.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.contains("secret-cookie"),
        "a header value was logged:\n{log}"
    );
}

#[test]
fn answers_cut_off_mid_body_are_outages_and_keys_are_fetched_again() {
    let signer = Signer::new("k1");
    let jwks = json!({ "keys": [signer.jwk()] }).to_string();
    // The IdP: the first key set is cut off, then whole.
    let idp = RawServer::start(move |n, _| match n {
        1 => RawReply::CutOff,
        _ => RawReply::Json(200, jwks.clone()),
    });
    // The STS: reset mid-body, then stalled past the filter's timeout, then fine.
    let sts = RawServer::start(|n, _| match n {
        1 => RawReply::CutOff,
        2 => RawReply::Stall(Duration::from_millis(1500)),
        n => RawReply::Json(
            200,
            json!({ "access_token": format!("minted-{n}"), "token_type": "Bearer",
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "expires_in": 300 })
            .to_string(),
        ),
    });
    let cfg = config(json!({ "trusted_issuers": [{
        "issuer": ISS, "algorithms": ["ES256"],
        "jwks_uri": { "cluster": "idp", "authority": "idp.test", "path": "/jwks", "refresh_s": 300 }
    }] }));
    let envoy = start(sts.port, cfg, &[("idp", idp.port)], false, &[]);
    let claims = |sub: &str| json!({ "iss": ISS, "sub": sub, "exp": support::now_s() + 600 });
    let token = signer.token(&claims("alice"), None);
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let r = envoy.get_with_token("/", &token);
        statuses.push(r.status);
        if r.status == 200 {
            assert_eq!(
                r.upstream_header("authorization").unwrap(),
                "Bearer minted-3"
            );
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.header("retry-after").is_some(), "503 without retry-after");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "{statuses:?}\n{}",
        envoy.log_text()
    );
    assert!(
        idp.count("/jwks") >= 2,
        "the cut-off key set was not fetched again"
    );
    assert_eq!(sts.count("/oauth2/token"), 3, "{statuses:?}");
    // The next request, with another token, is served as usual.
    let r = envoy.get_with_token("/", &signer.token(&claims("bob"), None));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!envoy.log_text().contains("panicked"));
}

#[test]
fn a_joined_authorization_never_carries_a_bearer_token_past_the_filter() {
    let sts = TestSts::start(0, mint);
    let envoy = start(
        sts.port,
        config(json!({ "on_missing_token": "allow" })),
        &[],
        false,
        &[],
    );
    for pair in [
        [
            &b"authorization: Basic eDp5"[..],
            &b"authorization: Bearer hidden-token"[..],
        ],
        [
            &b"Authorization: Digest a=1"[..],
            &b"AUTHORIZATION: bearer hidden-token"[..],
        ],
    ] {
        let text = get(&envoy, &pair);
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(!text.contains("hidden-token"), "{text}");
    }
    // Another scheme alone still passes on untouched (on_missing_token: allow).
    let text = get(&envoy, &[b"authorization: Basic eDp5"]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(sts.count(), 0);
}

/// A GET of `/` to `host` with the caller's bearer token; the whole response text.
fn get_at(envoy: &Envoy, host: &str, token: &str) -> String {
    let req = format!(
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    raw_request(envoy, req.as_bytes())
}

#[test]
fn an_authority_bypass_never_hands_another_virtual_host_the_callers_token() {
    let sts = TestSts::start(0, mint);
    let cfg = config(json!({
        "routes": [{ "match": { "authority": "public.example.com" }, "bypass": true }]
    }));
    let envoy = start(
        sts.port,
        cfg,
        &[],
        false,
        &[("public.example.com", "public")],
    );
    // The host the rule names: bypassed, on its own virtual host.
    let text = get_at(&envoy, "Public.Example.Com", "caller-token");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"x-vhost\":\"public\""), "{text}");
    assert!(text.contains("Bearer caller-token"), "{text}");
    // A port or a trailing dot: Envoy picks the catch-all host, and the filter exchanges.
    for host in [
        "public.example.com:8443",
        "public.example.com.",
        "Public.Example.Com.:1",
    ] {
        let text = get_at(&envoy, host, "caller-token");
        assert!(text.starts_with("HTTP/1.1 200"), "{host}: {text}");
        assert!(text.contains("\"x-vhost\":\"all\""), "{host}: {text}");
        assert!(
            !text.contains("Bearer caller-token"),
            "{host} got the token: {text}"
        );
        assert!(text.contains("minted-"), "{host}: {text}");
    }
    assert_eq!(envoy.counter("bypassed"), 1);
}

/// A CIBA configuration on the test STS; `ciba` adds to `sts.ciba`, `extra` to the top level.
fn ciba_config(ciba: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({ "path": "/bc-authorize", "wait_s": 4 });
    for (k, v) in ciba.as_object().unwrap() {
        c[k] = v.clone();
    }
    let mut cfg = config(json!({ "exchange": { "grant": "ciba", "scope": "openid orders" } }));
    cfg["sts"]["ciba"] = c;
    cfg["sts"]["timeout_ms"] = json!(3000);
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    cfg
}

/// The test STS as a CIBA server: the backchannel request number n gets `req-n` (answered
/// after `delay`), and a poll for it is answered by `decide(n)`.
fn ciba_sts(delay: Duration, decide: fn(usize) -> support::StsReply) -> TestSts {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let asked = Arc::new(AtomicUsize::new(0));
    TestSts::start(0, move |_, call| {
        if call.path == "/bc-authorize" {
            let n = asked.fetch_add(1, Ordering::SeqCst) + 1;
            let body =
                json!({ "auth_req_id": format!("req-{n}"), "expires_in": 60, "interval": 1 });
            return support::StsReply::json(200, body).after(delay);
        }
        let n = call
            .field("auth_req_id")
            .and_then(|id| id.strip_prefix("req-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        decide(n)
    })
}

fn backchannel_hints(sts: &TestSts) -> Vec<String> {
    sts.calls()
        .into_iter()
        .filter(|c| c.path == "/bc-authorize")
        .map(|c| {
            c.field("login_hint")
                .or(c.field("login_hint_token"))
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn a_consent_serves_only_the_subject_it_was_given_for() {
    // Alice approves her own request (the first); the second is not hers, and she denies it.
    let sts = ciba_sts(Duration::ZERO, |n| match n {
        1 => support::StsReply::token("consented-by-alice", 600),
        _ => support::StsReply::error(400, "access_denied"),
    });
    let signer = Signer::new("k1");
    let issuers =
        json!([{ "issuer": ISS, "algorithms": ["ES256"], "jwks": { "keys": [signer.jwk()] } }]);
    let cfg = ciba_config(
        json!({ "login_hint": "email" }),
        json!({ "trusted_issuers": issuers }),
    );
    let envoy = start(sts.port, cfg, &[], false, &[]);
    let token = |sub: &str| {
        signer.token(
            &json!({ "iss": ISS, "sub": sub, "email": "alice@example.com", "exp": support::now_s() + 600 }),
            None,
        )
    };
    let r = envoy.get_with_token("/orders", &token("alice"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("authorization").unwrap(),
        "Bearer consented-by-alice"
    );
    // Mallory's token is validly signed and carries Alice's address.
    let r = envoy.get_with_token("/orders", &token("mallory"));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(!r.body.contains("consented-by-alice"));
    assert_eq!(
        backchannel_hints(&sts),
        ["alice@example.com", "alice@example.com"],
        "asked anew"
    );
    // Alice herself is still served from her consent, with no new prompt.
    let r = envoy.get_with_token("/orders", &token("alice"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backchannel_hints(&sts).len(), 2);
}

#[test]
fn a_consent_outlives_the_request_that_started_it_end_to_end() {
    // The STS answers the backchannel request after 1.5 s; the request waits only 1 s.
    let sts = ciba_sts(Duration::from_millis(1500), |_| {
        support::StsReply::token("consented", 600)
    });
    let cfg = ciba_config(
        json!({ "login_hint": "login_hint_token", "wait_s": 1 }),
        json!({}),
    );
    let envoy = start(sts.port, cfg, &[], false, &[]);
    let r = envoy.get_with_token("/orders", "user-token");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    // The retry reaches the live consent and, once approved, goes on.
    let mut last = 0;
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(500));
        let r = envoy.get_with_token("/orders", "user-token");
        last = r.status;
        if r.status == 200 {
            assert_eq!(
                r.upstream_header("authorization").unwrap(),
                "Bearer consented"
            );
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
    }
    assert_eq!(last, 200, "{}", envoy.log_text());
    assert_eq!(backchannel_hints(&sts), ["user-token"], "one prompt");
}
