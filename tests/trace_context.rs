//! End to end, trace context on the calls the filter makes for a request: the introspection and
//! the exchange carry the caller's `traceparent`, `tracestate` and B3 headers, and the
//! `x-request-id` Envoy gave the request (the one the upstream sees), so the token service's
//! spans join the caller's trace. The release `.wasm` in a real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::{mint, StsReply, TestSts};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn the_introspection_and_the_exchange_join_the_callers_trace() {
    let sts = TestSts::start(0, mint);
    let partner = TestSts::start(0, |_, _| {
        let exp = support::now_s() + 3600;
        StsReply::json(
            200,
            json!({ "active": true, "iss": "https://partner.test", "sub": "dora", "exp": exp }),
        )
    });
    let config = json!({
        "sts": { "cluster": "sts", "authority": "sts.test", "token_path": "/token",
                 "client_id": "edge", "client_secret": "s" },
        "trusted_issuers": [{ "issuer": "https://partner.test",
            "introspection": { "cluster": "partner", "authority": "partner.test", "path": "/introspect",
                               "client_id": "edge", "client_secret": "p" } }]
    });
    let envoy = support::start_filter(sts.port, config, 1, &[("partner", partner.port)], &[]);
    let headers = [
        ("authorization", "Bearer opaque-user-token"),
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ];
    let r = envoy.get("/orders", &headers);
    assert_eq!(r.status, 200, "{}", r.body);
    let request_id = r
        .upstream_header("x-request-id")
        .expect("Envoy's request id");
    for (name, call) in [
        ("introspection", partner.calls()[0].clone()),
        ("exchange", sts.calls()[0].clone()),
    ] {
        for (h, v) in &headers[1..] {
            assert_eq!(call.header(h), Some(*v), "{name}: {h}");
        }
        assert_eq!(
            call.header("x-request-id"),
            request_id.as_str(),
            "{name}: x-request-id"
        );
    }
    // A request without a trace of its own still names its request id, and nothing else.
    let r = envoy.get("/orders", &[("authorization", "Bearer another-token")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let call = sts.calls().pop().unwrap();
    assert!(call.header("traceparent").is_none() && call.header("x-b3-traceid").is_none());
    assert_eq!(
        call.header("x-request-id"),
        r.upstream_header("x-request-id").unwrap().as_str()
    );
}
