//! Engine stories of the third security round: what an attacker sends (bytes that are not
//! text, joined credentials, cut-off answers, shared hints, colliding slots, junk floods), and
//! what the filter must still do.

use super::tests::{bearer, engine, exchange, ok, set_value, status, NOW};
use super::*;
use crate::host::{FakeHost, RawHeaders};

#[test]
fn a_token_header_that_is_not_text_is_401_and_the_next_request_is_served() {
    let h = FakeHost::at(NOW);
    let mut e = engine(r#","on_missing_token":"allow""#);
    let raw: [(&str, &[u8]); 2] = [(":path", b"/"), ("authorization", b"Bearer \xff\xfe")];
    let v = e.on_request(&h, 1, &RawHeaders(&raw));
    assert_eq!(status(&v), 401);
    let Verdict::Respond(r) = &v else {
        unreachable!()
    };
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
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
    let mut e = engine(r#","subject_token":{"header":"x-subject","prefix":""}"#);
    let raw: [(&str, &[u8]); 2] = [("cookie", b"\xe9"), ("x-subject", b"\xe9t\xe9")];
    assert_eq!(status(&e.on_request(&h, 1, &RawHeaders(&raw))), 401);
    let raw: [(&str, &[u8]); 2] = [("cookie", b"\xe9"), ("x-subject", b"fine")];
    assert_eq!(e.on_request(&h, 2, &RawHeaders(&raw)), Verdict::Pause);
    let mut e = engine(r#","exchange":{"actor":{"source":"header","header":"x-actor"}}"#);
    let raw: [(&str, &[u8]); 2] = [("authorization", b"Bearer s"), ("x-actor", b"\xff")];
    assert_eq!(status(&e.on_request(&h, 3, &RawHeaders(&raw))), 401);
}

#[test]
fn joined_authorization_headers_with_a_bearer_part_are_401_whatever_on_missing_token_says() {
    let h = FakeHost::at(NOW);
    let mut e = engine(r#","on_missing_token":"allow""#);
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
    let mut e = engine("");
    // The glue hands such an answer on without a status.
    let cut = HttpAnswer {
        status: None,
        body: Vec::new(),
        too_large: false,
    };
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
    let mut e = engine(r#","routes":[{"match":{"authority":"public.example.com"},"bypass":true}]"#);
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
