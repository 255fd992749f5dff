//! Trace context on the calls made for a request: the exchange (its second hop and a resend
//! too), the introspection and the CIBA backchannel request carry the caller's `traceparent`,
//! `tracestate`, `x-request-id` and B3 headers; calls the root makes for nobody (a refresh
//! ahead, a poll) carry none, and a header too long or not text is never passed on.

use super::ciba::tests_support as ciba;
use super::*;
use serde_json::json;

const TRACE: [(&str, &str); 5] = [
    (
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ),
    ("tracestate", "congo=t61rcWkgMzE"),
    ("x-request-id", "5c2f0a0e-1111-2222-3333-444455556666"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-sampled", "1"),
];

/// A request with `token` and the trace headers.
fn traced(auth: &str) -> Vec<(&str, &str)> {
    let mut req = vec![(":path", "/orders"), ("authorization", auth)];
    req.extend(TRACE);
    req
}

/// The trace headers a call carries, in the order of [`TRACE`].
fn trace_of(call: &HttpCall) -> Vec<(String, String)> {
    let names: Vec<&str> = TRACE.iter().map(|(n, _)| *n).collect();
    let mut found: Vec<(String, String)> = (call.headers.iter())
        .filter(|(k, _)| names.contains(&k.as_str()) || k.starts_with("x-b3") || k == "b3")
        .cloned()
        .collect();
    found.sort_by_key(|(k, _)| names.iter().position(|n| n == k));
    found
}

fn expected() -> Vec<(String, String)> {
    TRACE
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn an_exchange_carries_the_callers_trace_and_a_refresh_ahead_none() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({ "cache": { "refresh_ahead_s": 30, "expiry_skew_s": 0 } }));
    let auth = bearer("traced");
    assert_eq!(e.on_request(&h, 1, &traced(&auth)[..]), Verdict::Pause);
    let (call, sent) = h.calls_to("sts").pop().unwrap();
    assert_eq!(trace_of(&sent), expected());
    // A request without a trace context makes a call with none.
    assert_eq!(
        e.on_request(&h, 2, &[("authorization", "Bearer plain")][..]),
        Verdict::Pause
    );
    assert!(trace_of(&h.calls_to("sts").pop().unwrap().1).is_empty());
    e.on_http_answer(&h, None, call, &ok("minted", 40));
    // Inside the refresh window: the root's refresh is made for nobody.
    h.advance_ms(15_000);
    let v = e.on_request(&h, 3, &traced(&auth)[..]);
    assert_eq!(
        set_value(&v, "authorization").as_deref(),
        Some("Bearer minted")
    );
    e.on_tick(&h);
    let calls = h.calls_to("sts");
    assert_eq!(calls.len(), 3, "the refresh");
    assert!(trace_of(&calls[2].1).is_empty());
}

#[test]
fn a_chains_second_hop_and_a_resent_call_keep_the_trace() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "token_services": { "partner": { "cluster": "partner", "authority": "as.partner", "token_path": "/token",
                                         "client_id": "edge", "client_secret": "pw2" } },
        "exchange": { "audience": ["a"], "then": { "sts": "partner", "grant": "jwt_bearer" } }
    }));
    let auth = bearer("chained");
    assert_eq!(e.on_request(&h, 1, &traced(&auth)[..]), Verdict::Pause);
    // The carrier goes away: the root sends the call again, with the trace.
    assert_eq!(e.on_request(&h, 2, &traced(&auth)[..]), Verdict::Pause);
    e.on_request_done(1);
    e.on_tick(&h);
    let calls = h.calls_to("sts");
    assert_eq!(calls.len(), 2);
    assert_eq!(trace_of(&calls[1].1), expected(), "sent again");
    e.on_http_answer(&h, None, calls[1].0, &ok("first-hop", 60));
    let (_, hop) = h.calls_to("partner").pop().expect("the second hop");
    assert_eq!(trace_of(&hop), expected());
}

#[test]
fn an_introspection_carries_the_callers_trace() {
    let h = FakeHost::at(NOW);
    let mut e = engine(json!({
        "trusted_issuers": [{ "issuer": "https://partner.example",
            "introspection": { "cluster": "partner", "authority": "partner.example", "path": "/introspect",
                               "client_id": "edge", "client_secret": "pw2" } }]
    }));
    let auth = bearer("opaque");
    assert_eq!(e.on_request(&h, 1, &traced(&auth)[..]), Verdict::Pause);
    let (_, call) = h.calls_to("partner").pop().expect("an introspection");
    assert_eq!(trace_of(&call), expected());
}

#[test]
fn a_consents_backchannel_request_carries_the_trace_and_its_polls_none() {
    let h = FakeHost::at(ciba::NOW);
    let mut e = ciba::poll_engine();
    let auth = bearer("user-tok");
    assert_eq!(e.on_request(&h, 1, &traced(&auth)[..]), Verdict::Pause);
    ciba::tick(&mut e, &h, 0);
    let (call, bc) = h.calls_to("sts").pop().expect("the backchannel request");
    assert_eq!(trace_of(&bc), expected());
    e.on_http_answer(&h, Some(1), call, &ciba::backchannel(120, 1));
    ciba::tick(&mut e, &h, 1_000);
    let (_, poll) = h.calls_to("sts").pop().expect("a poll");
    assert!(trace_of(&poll).is_empty());
}

#[test]
fn a_trace_header_too_long_or_not_text_is_not_passed_on() {
    use crate::caller::TraceContext;
    use crate::host::RawHeaders;
    let long = "a".repeat(513);
    let raw: [(&str, &[u8]); 3] = [
        ("traceparent", b"00-\xff-01"),
        ("tracestate", long.as_bytes()),
        ("x-request-id", b"ok"),
    ];
    let call = HttpCall {
        cluster: "sts".into(),
        headers: Vec::new(),
        body: String::new(),
        timeout_ms: 1,
    };
    let on = TraceContext::of(&RawHeaders(&raw)).on(call);
    assert_eq!(
        on.headers,
        vec![("x-request-id".to_string(), "ok".to_string())]
    );
}
