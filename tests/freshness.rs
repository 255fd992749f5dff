//! End to end, freshness: the release `.wasm` in a real Envoy with two workers. A hot token
//! refreshed ahead of its expiry (beside a run without refresh-ahead that waits), never served
//! past the subject's `exp`, a failed refresh that harms nobody, and an upstream 401 that evicts
//! the minted token on both workers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::json;
use support::{now_s, start_echo, Envoy, EnvoySetup, StsCall, StsReply, TestSts};

/// The STS delay: a request that waited for it takes at least this long.
const STS_DELAY: Duration = Duration::from_millis(600);
/// Slower than any request served from the cache, faster than one that waited.
const WAITED: Duration = Duration::from_millis(400);

fn start(sts: &TestSts, cache: serde_json::Value) -> Envoy {
    Envoy::start(EnvoySetup {
        filter_config: json!({
            "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                     "client_id": "edge", "client_secret": "pw" },
            "cache": cache
        }),
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 2,
        ..EnvoySetup::default()
    })
}

/// An unsigned JWT for `sub` expiring at `exp` (no trusted issuers: the test STS judges it).
fn subject(sub: &str, exp: u64) -> String {
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims = json!({ "sub": sub, "exp": exp });
    format!("{}.{}.c2ln", b64(json!({ "alg": "none" })), b64(claims))
}

/// The test STS: refuses a subject past its `exp`, else mints `m-<call>` for `lifetime_s`
/// after [`STS_DELAY`], counting in `minted`.
fn minting(
    lifetime_s: u64,
    minted: Arc<AtomicUsize>,
) -> impl Fn(usize, &StsCall) -> StsReply + Send + Sync + 'static {
    move |n, call| {
        let exp = call
            .field("subject_token")
            .and_then(|t| support::claims_of(t)?.get("exp")?.as_u64())
            .unwrap_or(u64::MAX);
        if exp <= now_s() {
            return StsReply::error(400, "invalid_grant");
        }
        minted.fetch_add(1, Ordering::SeqCst);
        StsReply::token(&format!("m-{n}"), lifetime_s).after(STS_DELAY)
    }
}

/// The instant the clock reaches `exp` (seconds since the epoch).
fn instant_of(exp: u64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(exp);
    let ahead = at.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + ahead
}

/// One request's outcome: when it started, how long it took, its status and the token the
/// upstream saw.
struct Sample {
    at: Instant,
    took: Duration,
    status: u16,
    minted: Option<String>,
}

/// Four clients sending `token` for `seconds`, each on its own connections.
fn load(envoy: &Arc<Envoy>, token: &str, seconds: u64) -> Vec<Sample> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (envoy, token, samples) = (envoy.clone(), token.to_string(), samples.clone());
            thread::spawn(move || {
                while Instant::now() < stop {
                    let at = Instant::now();
                    let r = envoy.get_with_token("/", &token);
                    let minted = r
                        .upstream_header("authorization")
                        .and_then(|v| v.as_str().map(str::to_string));
                    let (took, status) = (at.elapsed(), r.status);
                    samples.lock().unwrap().push(Sample {
                        at,
                        took,
                        status,
                        minted,
                    });
                    thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    Arc::try_unwrap(samples)
        .ok()
        .expect("clients done")
        .into_inner()
        .unwrap()
}

fn slowest(samples: &[Sample]) -> Duration {
    samples.iter().map(|s| s.took).max().unwrap_or_default()
}

#[test]
fn a_hot_token_is_refreshed_ahead_once_per_lifetime_and_never_served_past_the_subjects_exp() {
    // Tokens of 4 s refreshed in their last 2 s; the subject expires after about 3 lifetimes.
    let minted = Arc::new(AtomicUsize::new(0));
    let sts = TestSts::start(0, minting(4, minted.clone()));
    let envoy = Arc::new(start(
        &sts,
        json!({ "refresh_ahead_s": 2, "expiry_skew_s": 0 }),
    ));
    let exp = now_s() + 11;
    let exp_at = instant_of(exp);
    let token = subject("alice", exp);
    assert_eq!(envoy.get_with_token("/", &token).status, 200);
    let samples = load(&envoy, &token, 13);
    let before: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at + Duration::from_millis(500) < exp_at)
        .collect();
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > exp_at + Duration::from_millis(1100))
        .collect();
    assert!(before.len() > 100 && !after.is_empty());
    let start = samples[0].at;
    // Each token and status with when it was first and last seen, for the messages.
    let mut timeline: Vec<(String, u16, Duration, Duration)> = Vec::new();
    for s in &samples {
        let t = s.minted.clone().unwrap_or_default();
        match timeline
            .iter_mut()
            .find(|(m, st, _, _)| *m == t && *st == s.status)
        {
            Some(e) => e.3 = s.at - start,
            None => timeline.push((t, s.status, s.at - start, s.at - start)),
        }
    }
    let exp_in = exp_at - start;
    let slow: Vec<_> = before
        .iter()
        .filter(|s| s.took >= WAITED)
        .map(|s| (s.at - start, s.took))
        .collect();
    assert!(
        slow.is_empty(),
        "requests waited for the STS: {slow:?}, {timeline:?}"
    );
    assert!(before.iter().all(|s| s.status == 200), "{timeline:?}");
    assert!(
        after.iter().all(|s| s.status == 401),
        "a minted token served past the subject's exp (at {exp_in:?}): {timeline:?}"
    );
    let mut tokens: Vec<&str> = before.iter().filter_map(|s| s.minted.as_deref()).collect();
    tokens.dedup();
    assert!(tokens.len() >= 3, "several lifetimes: {tokens:?}");
    thread::sleep(Duration::from_millis(300));
    let refreshed = envoy.counter("refreshed_ahead");
    // The first exchange and one refresh per lifetime minted; the calls after exp refused.
    let minted = minted.load(Ordering::SeqCst) as u64;
    assert!(refreshed >= 2, "refreshed {refreshed}");
    assert_eq!(minted, 1 + refreshed, "one refresh per lifetime");
    assert!(refreshed <= 5, "at most one per lifetime: {refreshed}");
}

#[test]
fn without_refresh_ahead_requests_wait_for_the_sts_at_each_expiry() {
    let sts = TestSts::start(0, minting(3, Arc::default()));
    let envoy = Arc::new(start(&sts, json!({ "expiry_skew_s": 0 })));
    let token = subject("bob", now_s() + 600);
    assert_eq!(envoy.get_with_token("/", &token).status, 200);
    let samples = load(&envoy, &token, 7);
    assert!(samples.iter().all(|s| s.status == 200));
    assert!(
        slowest(&samples) >= WAITED,
        "the first request after an expiry waits: slowest {:?}",
        slowest(&samples)
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(envoy.counter("refreshed_ahead"), 0);
}

#[test]
fn a_failed_refresh_harms_nobody_and_the_entry_serves_until_its_expiry() {
    // Every refresh fails: the entry serves to its end, then the next request exchanges.
    let sts = TestSts::start(0, |n, _call: &StsCall| match n {
        1 => StsReply::token("m-1", 3),
        _ if n < 100 => StsReply::error(503, "temporarily_unavailable"),
        _ => StsReply::token("never", 3),
    });
    let envoy = Arc::new(start(
        &sts,
        json!({ "refresh_ahead_s": 2, "expiry_skew_s": 0 }),
    ));
    let token = subject("carol", now_s() + 600);
    assert_eq!(envoy.get_with_token("/", &token).status, 200);
    let samples = load(&envoy, &token, 2);
    assert!(samples
        .iter()
        .all(|s| s.status == 200 && s.minted.as_deref() == Some("Bearer m-1")));
    let refreshes = sts.count() - 1;
    assert!(
        (1..=3).contains(&refreshes),
        "retried at most once a second: {refreshes}"
    );
    thread::sleep(Duration::from_millis(1_200));
    // Past the entry's end: the request exchanges, and hears the outage.
    assert_eq!(envoy.get_with_token("/", &token).status, 503);
    assert_eq!(envoy.counter("refreshed_ahead"), 0);
}

#[test]
fn an_upstream_401_evicts_the_minted_token_on_both_workers() {
    let sts = TestSts::start(0, |n, _call: &StsCall| {
        StsReply::token(&format!("m-{n}"), 600)
    });
    let envoy = Arc::new(start(&sts, json!({})));
    let minted = |r: &support::Reply| r.upstream_header("authorization").unwrap();
    // One exchange, then both workers take it from the shared cache into their memos.
    assert_eq!(minted(&envoy.get_with_token("/", "dave")), "Bearer m-1");
    let first = envoy.concurrent_gets(16, "/", "dave");
    assert!(first.iter().all(|r| minted(r) == "Bearer m-1"));
    // Both workers hold it in their memo; one request hears 401 from the upstream.
    let refused = envoy.get(
        "/",
        &[("authorization", "Bearer dave"), ("x-echo-status", "401")],
    );
    assert_eq!(refused.status, 401);
    assert_eq!(minted(&refused), "Bearer m-1");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(envoy.counter("evicted_on_401"), 1);
    assert_eq!(minted(&envoy.get_with_token("/", "dave")), "Bearer m-2");
    let next = envoy.concurrent_gets(16, "/", "dave");
    assert!(
        next.iter().all(|r| minted(r) == "Bearer m-2"),
        "every worker exchanged anew: {:?}",
        next.iter().map(minted).collect::<Vec<_>>()
    );
    assert_eq!(sts.count(), 2);
}

#[test]
fn an_upstream_that_refuses_every_token_evicts_once_a_minute_on_both_workers() {
    let sts = TestSts::start(0, |n, _call: &StsCall| {
        StsReply::token(&format!("m-{n}"), 600)
    });
    let envoy = Arc::new(start(&sts, json!({})));
    let refused = [
        ("authorization", "Bearer erin"),
        ("x-echo-status", "401"),
        ("x-echo-www-authenticate", "Bearer realm=\"api\""),
    ];
    // Ninety requests, fifteen at a time over both workers, every one refused upstream. Single
    // flight is per worker: each worker may exchange once at first and once after the eviction.
    let mut after_two = 0;
    for batch_no in 0..6 {
        let batch: Vec<_> = (0..15)
            .map(|_| {
                let envoy = envoy.clone();
                thread::spawn(move || envoy.get("/", &refused))
            })
            .collect();
        for r in batch {
            let r = r.join().unwrap();
            assert_eq!(r.status, 401, "the upstream's answer reaches the client");
            assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));
        }
        thread::sleep(Duration::from_millis(200));
        if batch_no == 1 {
            after_two = sts.count();
        }
    }
    assert!(sts.count() <= 4, "{} STS calls for one key", sts.count());
    assert_eq!(
        sts.count(),
        after_two,
        "no exchange after the first minute's eviction"
    );
    assert_eq!(envoy.counter("evicted_on_401"), 1);
    assert!(
        envoy.counter("eviction_held") >= 80,
        "{}",
        envoy.counter("eviction_held")
    );
}

#[test]
fn a_401_that_asks_for_more_than_a_new_token_evicts_nothing_and_invalid_token_evicts_once() {
    let sts = TestSts::start(0, |n, _call: &StsCall| {
        StsReply::token(&format!("m-{n}"), 600)
    });
    let envoy = start(&sts, json!({}));
    let minted = |r: &support::Reply| r.upstream_header("authorization").unwrap();
    assert_eq!(minted(&envoy.get_with_token("/", "fay")), "Bearer m-1");
    for challenge in [
        "Bearer error=\"insufficient_user_authentication\", acr_values=\"phr\"",
        "Bearer error=\"insufficient_scope\", scope=\"orders:write\"",
        "Bearer error=\"insufficient_claims\", claims=\"eyJhY2Nlc3NfdG9rZW4iOnt9fQ==\"",
    ] {
        let r = envoy.get(
            "/",
            &[
                ("authorization", "Bearer fay"),
                ("x-echo-status", "401"),
                ("x-echo-www-authenticate", challenge),
            ],
        );
        assert_eq!(
            (r.status, r.header("www-authenticate")),
            (401, Some(challenge))
        );
        assert_eq!(minted(&r), "Bearer m-1");
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(minted(&envoy.get_with_token("/", "fay")), "Bearer m-1");
    assert_eq!((sts.count(), envoy.counter("evicted_on_401")), (1, 0));
    let revoked = "Bearer error=\"invalid_token\", error_description=\"revoked\"";
    envoy.get(
        "/",
        &[
            ("authorization", "Bearer fay"),
            ("x-echo-status", "401"),
            ("x-echo-www-authenticate", revoked),
        ],
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(minted(&envoy.get_with_token("/", "fay")), "Bearer m-2");
    assert_eq!((sts.count(), envoy.counter("evicted_on_401")), (2, 1));
}
