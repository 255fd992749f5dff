//! `require` alternatives that ask for the user's authentication (`acr`, `max_age_s`, RFC 9470), and
//! `output.filter_state`, what the rest of Envoy is told of each decision.

use serde_json::json;

use super::{config_with, one_trusted_issuer, refused};

#[test]
fn an_alternative_may_ask_for_the_users_authentication_alone() {
    let c = config_with(json!({ "trusted_issuers": one_trusted_issuer(),
        "require": [{ "scopes": ["pay"], "acr": ["phr", "phrh"], "max_age_s": 300 }, { "acr": "mfa" }] }));
    let p = &c.policies[0];
    assert_eq!(p[0].acr, ["phr", "phrh"]);
    assert_eq!(p[0].max_age_s, Some(300));
    assert_eq!(p[1].acr, ["mfa"], "one string is a list of one");
    assert!(p[1].steps_up() && p[1].max_age_s.is_none());
    for (bad, key) in [
        (json!({ "acr": ["a b"] }), "require[0].acr"),
        (json!({ "acr": [""] }), "require[0].acr"),
        (json!({ "max_age_s": -1 }), "require[0].max_age_s"),
        (
            json!({ "max_age_s": 31_536_001_u64 }),
            "require[0].max_age_s",
        ),
        (json!({ "acr": [] }), "require[0]"),
    ] {
        let e = refused(json!({ "trusted_issuers": one_trusted_issuer(), "require": [bad] }));
        assert_eq!(e.key, key, "{e}");
    }
}

#[test]
fn filter_state_names_known_fields_once() {
    let c = config_with(json!({ "output": { "filter_state": ["outcome", "sts_ms", "token_id"] } }));
    let names: Vec<&str> = c.output.filter_state.iter().map(|f| f.name()).collect();
    assert_eq!(names, ["outcome", "sts_ms", "token_id"]);
    assert!(
        config_with(json!({})).output.filter_state.is_empty(),
        "none by default"
    );
    for bad in [
        json!(["outcome", "outcome"]),
        json!(["token"]),
        json!(["Sub"]),
    ] {
        let e = refused(json!({ "output": { "filter_state": bad } }));
        assert_eq!(e.key, "output.filter_state", "{e}");
    }
}
