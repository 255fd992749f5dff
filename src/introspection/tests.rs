use super::*;
use crate::config::Config;
use crate::host::FakeHost;

const NOW: u64 = 1_800_000_000_000;
const ISS: &str = "https://partner.example";

fn config(cache_s: u64) -> Config {
    let json = format!(
        r#"{{"sts": {{"cluster": "sts", "authority": "sts.example", "token_path": "/token", "client_id": "proxy", "client_secret": "sts-secret"}},
            "trusted_issuers": [
              {{"issuer": "https://idp.example", "algorithms": ["RS256"], "jwks": {{"keys": []}}}},
              {{"issuer": "{ISS}", "audiences": ["api://edge"],
                "introspection": {{"cluster": "partner", "authority": "partner.example",
                  "path": "/introspect", "client_id": "edge proxy", "client_secret": "s3cr:t",
                  "cache_s": {cache_s}}}}}]}}"#
    );
    Config::parse(json.as_bytes(), &|_| None).unwrap()
}

fn introspector(cache_s: u64) -> Introspector {
    let c = config(cache_s);
    Introspector::compile(&c.trusted_issuers, &c.cache).unwrap()
}

fn ok(json: &str) -> HttpAnswer {
    HttpAnswer {
        status: Some(200),
        body: json.as_bytes().to_vec(),
        too_large: false,
    }
}

#[test]
fn the_call_carries_the_token_and_the_filters_credentials_in_basic() {
    let i = introspector(60);
    let call = i.request(1, "opaque+/=", NOW).unwrap().unwrap();
    assert_eq!(call.cluster, "partner");
    let header = |n: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header(":path").as_deref(), Some("/introspect"));
    assert_eq!(header(":authority").as_deref(), Some("partner.example"));
    // RFC 6749 §2.3.1: form-encoded before base64.
    let ClientAuth::Basic { header: basic } = ClientAuth::basic("edge proxy", "s3cr:t") else {
        unreachable!()
    };
    assert_eq!(header("authorization"), Some(basic));
    let form: Vec<(String, String)> = form_urlencoded::parse(call.body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        form,
        vec![
            ("token".into(), "opaque+/=".into()),
            ("token_type_hint".into(), "access_token".into())
        ]
    );
    assert!(
        !call.body.contains("s3cr"),
        "the secret is in the header only"
    );
    assert!(
        i.request(0, "opaque", NOW).is_err(),
        "that issuer does not introspect"
    );
}

#[test]
fn an_active_answer_is_shared_until_cache_s_or_exp_less_the_skew() {
    let h = FakeHost::at(NOW);
    let mut one = introspector(60);
    let other = introspector(60);
    let key = one.key(1, "opaque");
    assert_ne!(key, one.key(0, "opaque"), "the issuer is part of the key");
    let found = one
        .on_answer(
            &h,
            1,
            &key,
            &ok(r#"{"active":true,"sub":"dora","aud":"api://edge"}"#),
            NOW,
        )
        .unwrap();
    assert_eq!(found.until_ms, NOW + 60_000, "no exp: cache_s");
    let seen = other
        .remembered(&h, 1, &key, NOW + 59_999)
        .unwrap()
        .unwrap();
    assert_eq!(seen.claims["sub"], "dora");
    assert_eq!(seen.until_ms, NOW + 60_000);
    assert!(
        other.remembered(&h, 1, &key, NOW + 60_000).is_none(),
        "asked again"
    );
    // exp 20 s ahead, skew 30 s by default: trusted for this request, remembered for none.
    let exp = NOW / 1000 + 20;
    let soon = format!(r#"{{"active":true,"aud":"api://edge","exp":{exp}}}"#);
    let key2 = one.key(1, "soon");
    let found = one.on_answer(&h, 1, &key2, &ok(&soon), NOW).unwrap();
    assert!(found.until_ms <= NOW);
    assert!(other.remembered(&h, 1, &key2, NOW).is_none());
    let exp = NOW / 1000 + 45;
    let later = format!(r#"{{"active":true,"aud":"api://edge","exp":{exp}}}"#);
    let found = one.on_answer(&h, 1, &key2, &ok(&later), NOW).unwrap();
    assert_eq!(found.until_ms, NOW + 15_000, "exp − skew before cache_s");
    assert_eq!(found.exp, Some(exp));
}

#[test]
fn inactive_and_refused_answers_are_remembered_for_negative_ttl() {
    let h = FakeHost::at(NOW);
    let mut i = introspector(60);
    let key = i.key(1, "revoked");
    assert_eq!(
        i.on_answer(&h, 1, &key, &ok(r#"{"active":false}"#), NOW),
        Err(Failure::Inactive)
    );
    assert_eq!(h.metric_value(Metric::IntrospectionInactive), 1);
    assert_eq!(
        i.remembered(&h, 1, &key, NOW + 1),
        Some(Err(Failure::Inactive))
    );
    // negative_ttl_s is 10 by default.
    assert_eq!(i.remembered(&h, 1, &key, NOW + 10_000), None);
    let key = i.key(1, "elsewhere");
    let wrong = ok(r#"{"active":true,"aud":"api://other"}"#);
    let refused = Err(Failure::Refused(Refusal::Audience));
    assert_eq!(i.on_answer(&h, 1, &key, &wrong, NOW), refused);
    assert_eq!(i.remembered(&h, 1, &key, NOW + 1), Some(refused));
    assert_eq!(
        h.metric_value(Metric::IntrospectionErrors),
        0,
        "judgments, not errors"
    );
}

#[test]
fn a_failing_endpoint_is_left_alone_with_backoff_and_nothing_is_remembered() {
    let h = FakeHost::at(NOW);
    let mut i = introspector(60);
    let key = i.key(1, "t");
    let down = HttpAnswer {
        status: Some(503),
        body: Vec::new(),
        too_large: false,
    };
    let mut at = NOW;
    let mut pauses = Vec::new();
    for _ in 0..7 {
        assert!(matches!(
            i.on_answer(&h, 1, &key, &down, at),
            Err(Failure::Unavailable(_))
        ));
        assert!(
            i.request(1, "t", at).is_err(),
            "no call right after a failure"
        );
        let mut next = at;
        while i.request(1, "t", next).is_err() {
            next += 100;
        }
        pauses.push(next - at);
        at = next;
    }
    assert!(pauses.iter().all(|p| *p >= 1_000), "{pauses:?}");
    assert!(pauses.windows(2).all(|w| w[1] >= w[0] / 2), "{pauses:?}");
    assert!(*pauses.last().unwrap() >= 16_000, "grows: {pauses:?}");
    assert!(pauses.iter().all(|p| *p <= MAX_BACKOFF_MS), "{pauses:?}");
    assert_eq!(h.metric_value(Metric::IntrospectionErrors), 7);
    assert!(i.remembered(&h, 1, &key, at).is_none());
    // One good answer ends the backoff.
    i.on_answer(&h, 1, &key, &ok(r#"{"active":false}"#), at)
        .unwrap_err();
    let d = HttpAnswer {
        status: None,
        ..down
    };
    i.on_answer(&h, 1, &key, &d, at).unwrap_err();
    let mut next = at;
    while i.request(1, "t", next).is_err() {
        next += 100;
    }
    assert!(next - at <= 1_000, "back to the first pause");
    assert!(!h.logs.borrow().iter().any(|(_, l)| l.contains("s3cr")));
}

#[test]
fn post_and_private_key_jwt_credentials_go_in_the_form() {
    let (pem, _) = crate::assertion::tests::es256_pem();
    let env = |k: &str| (k == "KEY").then(|| pem.clone());
    let form_of = |auth: &str| {
        let json = format!(
            r#"{{"sts": {{"cluster": "sts", "authority": "sts.example", "token_path": "/token", "client_id": "p", "client_secret": "q"}},
                "trusted_issuers": [{{"issuer": "{ISS}", "introspection": {{"cluster": "partner",
                  "authority": "partner.example", "path": "/introspect", "client_id": "edge", {auth}}}}}]}}"#
        );
        let c = Config::parse(json.as_bytes(), &env).unwrap();
        let i = Introspector::compile(&c.trusted_issuers, &c.cache).unwrap();
        let call = i.request(0, "tok", NOW).unwrap().unwrap();
        assert!(
            !call.headers.iter().any(|(k, _)| k == "authorization"),
            "one place only"
        );
        form_urlencoded::parse(call.body.as_bytes())
            .into_owned()
            .collect::<Vec<(String, String)>>()
    };
    let post = form_of(r#""client_auth": "client_secret_post", "client_secret": "pw""#);
    assert!(post.contains(&("client_id".into(), "edge".into())));
    assert!(post.contains(&("client_secret".into(), "pw".into())));
    let pkj = form_of(r#""client_auth": "private_key_jwt", "private_key": {"pem_env": "KEY"}"#);
    let assertion = &pkj.last().unwrap().1;
    assert_eq!(pkj[pkj.len() - 2].1, crate::assertion::ASSERTION_TYPE);
    let aud = crate::token::tests_support::claim(assertion, "aud");
    assert_eq!(aud, "https://partner.example/introspect");
}
