//! CIBA end to end: the release `.wasm` in a real Envoy asks a test STS for the user's consent
//! (backchannel request), polls it or is pinged, and resumes or refuses the waiting requests.
//! The test STS plays the user's device: each login hint names how the "user" answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{start_echo, Envoy, EnvoySetup, StsCall, StsReply, TestSts};

/// How the test STS's "user" answers, by login hint.
#[derive(Default)]
struct User {
    polls: Mutex<HashMap<String, Vec<Instant>>>,
    approve_waiter: AtomicBool,
}

impl User {
    fn answer(&self, call: &StsCall) -> StsReply {
        if call.path == "/bc-authorize" {
            let hint = call.field("login_hint_token").unwrap_or("none");
            let expires_in = if hint == "lapse" { 2 } else { 60 };
            let interval = if hint.starts_with("ping") { 30 } else { 1 };
            return StsReply::json(
                200,
                json!({ "auth_req_id": format!("req-{hint}"), "expires_in": expires_in, "interval": interval }),
            );
        }
        assert_eq!(
            call.field("grant_type"),
            Some("urn:openid:params:grant-type:ciba")
        );
        let hint = call
            .field("auth_req_id")
            .and_then(|id| id.strip_prefix("req-"))
            .unwrap_or("none")
            .to_string();
        let n = {
            let mut polls = self.polls.lock().unwrap();
            let list = polls.entry(hint.clone()).or_default();
            list.push(Instant::now());
            list.len()
        };
        let pending = StsReply::error(400, "authorization_pending");
        let approved = StsReply::token(&format!("consented-{hint}"), 600);
        match hint.as_str() {
            "approve" | "crowd" if n >= 2 => approved,
            "deny" => StsReply::error(400, "access_denied"),
            "slow" if n == 1 => StsReply::error(400, "slow_down"),
            "slow" => approved,
            "wait" if self.approve_waiter.load(Ordering::SeqCst) => approved,
            h if h.starts_with("ping") => approved,
            _ => pending,
        }
    }

    fn polls(&self, hint: &str) -> Vec<Instant> {
        self.polls
            .lock()
            .unwrap()
            .get(hint)
            .cloned()
            .unwrap_or_default()
    }
}

fn ciba_envoy(sts: &TestSts, ciba: serde_json::Value, concurrency: u32) -> Envoy {
    let mut ciba_config =
        json!({ "path": "/bc-authorize", "login_hint": "login_hint_token", "wait_s": 4 });
    for (k, v) in ciba.as_object().unwrap() {
        ciba_config[k] = v.clone();
    }
    let config = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/oauth2/token", "timeout_ms": 2000,
                 "client_id": "edge", "client_secret": "pw", "ciba": ciba_config },
        "exchange": { "grant": "ciba", "scope": "openid orders" },
        "cache": { "negative_ttl_s": 30 }
    });
    Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port: sts.port,
        echo_port: start_echo(0),
        env: &[],
        concurrency,
        clusters: &[],
        ..EnvoySetup::default()
    })
}

fn backchannel_requests(sts: &TestSts, hint: &str) -> Vec<StsCall> {
    sts.calls()
        .into_iter()
        .filter(|c| c.path == "/bc-authorize" && c.field("login_hint_token") == Some(hint))
        .collect()
}

fn upstream_token(r: &support::Reply) -> String {
    r.upstream_header("authorization")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn poll_mode_approval_denial_lapse_slow_down_wait_and_one_prompt_across_workers() {
    let user = Arc::new(User::default());
    let u = user.clone();
    let sts = TestSts::start(0, move |_, call| u.answer(call));
    let envoy = Arc::new(ciba_envoy(&sts, json!({}), 2));

    // Approved at the second poll: the request waits, then goes on with the minted token.
    let r = envoy.get_with_token("/orders", "approve");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream_token(&r), "Bearer consented-approve");
    assert_eq!(user.polls("approve").len(), 2);
    // Later requests: from the cache, the user is not asked again.
    assert_eq!(envoy.get_with_token("/orders", "approve").status, 200);
    assert_eq!(backchannel_requests(&sts, "approve").len(), 1);

    // Denied: 403, remembered (no second prompt within negative_ttl_s).
    let r = envoy.get_with_token("/orders", "deny");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(envoy.get_with_token("/orders", "deny").status, 403);
    assert_eq!(backchannel_requests(&sts, "deny").len(), 1);

    // Lapsed without an answer (expires_in 2 s): 403.
    let r = envoy.get_with_token("/orders", "lapse");
    assert_eq!(r.status, 403, "{}", r.body);

    // slow_down: the next poll comes at least 5 s later. The request gives up after wait_s
    // (503 with retry-after); the consent goes on and a retry is served from the cache.
    let r = envoy.get_with_token("/orders", "slow");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("4"));
    thread::sleep(Duration::from_secs(4));
    let polls = user.polls("slow");
    assert_eq!(polls.len(), 2, "{polls:?}");
    assert!(
        polls[1] - polls[0] >= Duration::from_millis(5_500),
        "{polls:?}"
    );
    let r = envoy.get_with_token("/orders", "slow");
    assert_eq!(upstream_token(&r), "Bearer consented-slow");
    assert_eq!(backchannel_requests(&sts, "slow").len(), 1);

    // wait_s passes while the user hesitates; the retry joins the same consent.
    assert_eq!(envoy.get_with_token("/orders", "wait").status, 503);
    user.approve_waiter.store(true, Ordering::SeqCst);
    let r = envoy.get_with_token("/orders", "wait");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(backchannel_requests(&sts, "wait").len(), 1);

    // Many concurrent requests of one user on two workers: exactly one prompt.
    let crowd: Vec<_> = (0..16)
        .map(|_| {
            let e = envoy.clone();
            thread::spawn(move || e.get_with_token("/orders", "crowd"))
        })
        .collect();
    for t in crowd {
        let r = t.join().unwrap();
        assert_eq!(upstream_token(&r), "Bearer consented-crowd", "{}", r.body);
    }
    assert_eq!(backchannel_requests(&sts, "crowd").len(), 1);

    assert_eq!(envoy.counter("ciba_requests"), 6);
    assert_eq!(envoy.counter("ciba_approved"), 4);
    assert_eq!(envoy.counter("ciba_denied"), 1);
    assert_eq!(envoy.counter("ciba_expired"), 1);
    let log = envoy.log_text();
    assert!(
        !log.contains("req-approve"),
        "an auth_req_id reached the log"
    );
}

#[test]
fn ping_mode_answers_the_sts_and_never_routes_the_notification() {
    let user = Arc::new(User::default());
    let u = user.clone();
    let sts = TestSts::start(0, move |_, call| u.answer(call));
    let envoy = Arc::new(ciba_envoy(
        &sts,
        json!({ "mode": "ping", "notify_path": "/ciba/notify", "wait_s": 10 }),
        1,
    ));
    let e = envoy.clone();
    let waiting = thread::spawn(move || e.get_with_token("/orders", "ping-1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let token = loop {
        if let Some(c) = backchannel_requests(&sts, "ping-1").first() {
            break c.field("client_notification_token").unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no backchannel request");
        thread::sleep(Duration::from_millis(50));
    };
    let notify = |bearer: &str| {
        ureq::post(&format!("http://127.0.0.1:{}/ciba/notify", envoy.port))
            .set("authorization", &format!("Bearer {bearer}"))
            .set("content-type", "application/json")
            .send_string(r#"{"auth_req_id":"req-ping-1"}"#)
            .map(|r| r.status())
            .unwrap_or_else(|e| match e {
                ureq::Error::Status(s, _) => s,
                other => panic!("{other}"),
            })
    };
    assert_eq!(notify("0.00000000000000000000000000000000"), 401);
    assert_eq!(notify(&format!("{token}0")), 401);
    assert!(
        user.polls("ping-1").is_empty(),
        "a wrong ping changes nothing"
    );
    let pinged = Instant::now();
    assert_eq!(notify(&token), 204);
    let r = waiting.join().unwrap();
    assert_eq!(upstream_token(&r), "Bearer consented-ping-1", "{}", r.body);
    assert!(
        pinged.elapsed() < Duration::from_secs(3),
        "polled at the ping, not after 30 s"
    );
    // The notification never reached the upstream.
    let r = envoy.get("/ciba/notify", &[]);
    assert_eq!(r.status, 401);
    assert!(r.body.is_empty(), "{}", r.body);
}

#[test]
fn a_ciba_route_beside_a_default_exchange_with_an_audience_loads_and_serves_both() {
    let sts = TestSts::start(0, |n, call| {
        if call.path == "/bc-authorize" {
            return StsReply::json(
                200,
                json!({ "auth_req_id": "r", "expires_in": 60, "interval": 1 }),
            );
        }
        match call.field("grant_type") {
            Some("urn:openid:params:grant-type:ciba") => StsReply::token("consented", 600),
            _ => support::mint(n, call),
        }
    });
    let config = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/oauth2/token", "timeout_ms": 2000,
                 "client_id": "edge", "client_secret": "pw",
                 "ciba": { "path": "/bc-authorize", "login_hint": "login_hint_token", "wait_s": 4 } },
        "exchange": { "audience": ["orders-api"], "scope": "openid orders" },
        "routes": [{ "match": { "path_prefix": "/consent" }, "exchange": { "grant": "ciba" } }]
    });
    let envoy = Envoy::start(EnvoySetup {
        filter_config: config,
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 1,
        ..EnvoySetup::default()
    });
    let r = envoy.get_with_token("/orders", "alice");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(upstream_token(&r).contains("aud-orders-api"), "{}", r.body);
    let r = envoy.get_with_token("/consent", "alice");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upstream_token(&r), "Bearer consented");
    let bc = backchannel_requests(&sts, "alice");
    assert_eq!(bc.len(), 1);
    assert_eq!(
        bc[0].field("audience"),
        None,
        "the ciba route inherits no audience"
    );
}
