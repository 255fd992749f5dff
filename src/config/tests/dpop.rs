//! `dpop`, `bound_tokens` and the certificate client authentications: the defaults, and what
//! is refused (a MAC or `none` for proofs, a route that tunes the proofs, DPoP required with
//! nothing that could verify a token, a secret beside a certificate).

use serde_json::json;

use super::{config_with, minimal, one_trusted_issuer, refused};
use crate::config::*;

#[test]
fn dpop_is_accepted_with_the_documented_defaults_when_not_written() {
    let c = config_with(json!({}));
    assert_eq!(
        c.dpop,
        DpopConfig {
            required: false,
            algorithms: vec![JwsAlg::Es256, JwsAlg::Rs256, JwsAlg::Ps256, JwsAlg::EdDsa],
            max_age_s: 60,
            clock_skew_s: 5,
            origins: Vec::new(),
            replay_entries: 65_536,
        }
    );
    assert!(!c.exchanges[0].dpop_required);
}

#[test]
fn a_route_may_require_dpop_and_takes_the_default_otherwise() {
    let c = config_with(json!({
        "trusted_issuers": one_trusted_issuer(),
        "dpop": { "required": true, "origins": ["HTTPS://API.example:8443"] },
        "routes": [
            { "match": { "path_prefix": "/public" }, "dpop": { "required": false } },
            { "match": { "path_prefix": "/orders" }, "require": [{ "scopes": ["o"] }] }
        ]
    }));
    let required: Vec<bool> = c.exchanges.iter().map(|e| e.dpop_required).collect();
    assert_eq!(required, [true, false, true]);
    assert_eq!(c.dpop.origins, ["https://api.example:8443"]);
    assert!(
        c.trusted_issuers[0].enforce_binding,
        "enforce is the default"
    );
}

#[test]
fn proofs_are_never_none_or_a_mac_and_a_route_sets_only_required() {
    for alg in ["none", "HS256", "hs512"] {
        let e = refused(json!({ "dpop": { "algorithms": [alg] } }));
        assert_eq!(e.key, "dpop.algorithms");
        assert!(e.reason.contains("never accepted"), "{e}");
    }
    assert_eq!(
        refused(json!({ "dpop": { "algorithms": [] } })).key,
        "dpop.algorithms"
    );
    let e = refused(json!({ "trusted_issuers": one_trusted_issuer(),
        "routes": [{ "match": { "path_prefix": "/a" }, "dpop": { "required": true, "max_age_s": 5 } }] }));
    assert_eq!(e.key, "routes[0].dpop.max_age_s");
    let e = refused(
        json!({ "routes": [{ "match": { "path_prefix": "/a" }, "bypass": true, "dpop": { "required": true } }] }),
    );
    assert_eq!(e.key, "routes[0]");
    for (key, value) in [
        ("max_age_s", json!(0)),
        ("clock_skew_s", json!(301)),
        ("replay_entries", json!(100)),
    ] {
        let e = refused(json!({ "dpop": { key: value } }));
        assert_eq!(e.key, format!("dpop.{key}"));
    }
    for origin in [
        "api.example",
        "https://api.example/path",
        "https://user@api.example",
        "wss://api.example",
        "https://",
    ] {
        let e = refused(json!({ "dpop": { "origins": [origin] } }));
        assert_eq!(e.key, "dpop.origins[0]", "{origin}");
    }
}

#[test]
fn dpop_required_needs_a_trusted_issuer_and_bound_tokens_is_enforce_or_ignore() {
    assert_eq!(
        refused(json!({ "dpop": { "required": true } })).key,
        "dpop.required"
    );
    let e = refused(json!({
        "routes": [{ "match": { "path_prefix": "/a" }, "dpop": { "required": true } }] }));
    assert_eq!(e.key, "dpop.required");
    let mut issuers = one_trusted_issuer();
    issuers[0]["bound_tokens"] = "ignor".into();
    let e = refused(json!({ "trusted_issuers": issuers }));
    assert_eq!(e.key, "trusted_issuers[0].bound_tokens");
    issuers[0]["bound_tokens"] = "ignore".into();
    let c = config_with(json!({ "trusted_issuers": issuers }));
    assert!(!c.trusted_issuers[0].enforce_binding);
    assert!(
        c.summary().contains("bound_tokens=ignore"),
        "{}",
        c.summary()
    );
    assert!(c.summary().contains("https://idp"));
}

#[test]
fn certificate_authentication_sends_the_client_id_and_nothing_secret() {
    for method in ["tls_client_auth", "self_signed_tls_client_auth"] {
        let mut sts = minimal()["sts"].clone();
        sts["client_auth"] = method.into();
        let e = refused(json!({ "sts": sts.clone() }));
        assert_eq!(e.key, "sts.client_secret", "{method}: {e}");
        sts.as_object_mut().unwrap().remove("client_secret");
        let c = config_with(json!({ "sts": sts.clone() }));
        assert_eq!(c.sts.client_auth.name(), method);
        let client = crate::client::Client::compile(&c).unwrap();
        let call = client.profiles[0]
            .request(client.endpoint(0), "t", None, 0)
            .unwrap();
        let form: Vec<(String, String)> = form_urlencoded::parse(call.body.as_bytes())
            .into_owned()
            .collect();
        assert!(form.contains(&("client_id".into(), "edge".into())));
        assert!(!form
            .iter()
            .any(|(k, _)| k.starts_with("client_secret") || k.starts_with("client_assertion")));
        assert!(!call.headers.iter().any(|(k, _)| k == "authorization"));
        sts.as_object_mut().unwrap().remove("client_id");
        assert_eq!(refused(json!({ "sts": sts })).key, "sts.client_id");
    }
}
