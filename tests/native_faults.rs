//! The native module contains its faults: a test build (`fault-probe`) panics in a request's
//! hook while it holds the engine's lock; that request answers 500 and counts in `panics`, and
//! Envoy keeps serving, the next request exchanged as usual. A panic while reading the
//! configuration makes Envoy refuse the configuration. Run by `make e2e-native`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::{mint, start_echo, Envoy, EnvoySetup, TestSts};

#[test]
fn a_panic_answers_500_and_envoy_keeps_serving() {
    assert!(
        support::native() && std::env::var_os("NATIVE_DIR").is_some(),
        "run by `make e2e-native`, with the fault-probe build in NATIVE_DIR"
    );
    let sts = TestSts::start(0, mint);
    let setup = EnvoySetup {
        filter_config: json!({
            "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                     "client_id": "edge", "client_secret": "s" },
            "exchange": { "audience": ["api"] }
        }),
        sts_port: sts.port,
        echo_port: start_echo(0),
        concurrency: 2,
        ..EnvoySetup::default()
    };
    let envoy = Envoy::start(setup);
    let r = envoy.get(
        "/",
        &[
            ("authorization", "Bearer t1"),
            ("x-token-exchange-fault", "1"),
        ],
    );
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(!r.body.contains("t1"), "{}", r.body);
    assert_eq!(envoy.counter("panics"), 1);
    for token in ["t1", "t2", "t1"] {
        let r = envoy.get_with_token("/", token);
        assert_eq!(r.status, 200, "{}", r.body);
        let sent = r.upstream_header("authorization").unwrap();
        assert!(sent.as_str().unwrap().starts_with("Bearer "), "{sent}");
        assert_ne!(
            sent,
            json!(format!("Bearer {token}")),
            "the caller's token went upstream"
        );
    }
    assert_eq!(
        sts.count(),
        2,
        "t1 exchanged once, then served from the cache"
    );
    assert!(envoy
        .log_text()
        .contains("a fault in the filter answered 500"));
}

#[test]
fn a_panic_while_configuring_refuses_the_configuration() {
    assert!(support::native() && std::env::var_os("NATIVE_DIR").is_some());
    let sts = TestSts::start(0, mint);
    let setup = EnvoySetup {
        filter_config: json!({
            "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                     "client_id": "edge", "client_secret": "s" },
            "exchange": { "audience": ["api"] },
            "output": { "claims_to_headers": [{ "claim": "sub", "header": "x-token-exchange-fault" }] }
        }),
        sts_port: sts.port,
        echo_port: start_echo(0),
        ..EnvoySetup::default()
    };
    let log = Envoy::refused(setup);
    assert!(
        log.contains("refused its configuration: a fault while reading it"),
        "{log}"
    );
}
