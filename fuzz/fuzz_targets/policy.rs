//! Any JWT payload judged against policies and claim headers: no panic, a header value never
//! holds a line break or other control character but tab nor white space at an end, a list
//! claim's value reads back as exactly its elements, the reason agrees with the verdict, and a
//! step-up (RFC 9470) is offered only for a token that fails a policy on its `acr` or
//! `auth_time` alone, never one the policy lets through or one without the alternative's scopes.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::config::Config;
use token_exchange_wasm::policy::Rules;
use token_exchange_wasm::token;

const CONFIG: &str = r#"{
  "sts": { "cluster": "sts", "authority": "sts", "token_path": "/t", "client_id": "c", "client_secret": "s" },
  "trusted_issuers": [{ "issuer": "i", "algorithms": ["ES256"], "jwks": { "keys": [] } }],
  "require": [
    { "scopes": ["a", "b:c"], "claims": { "tenant": ["acme", "1", "true"] } },
    { "claims": { "realm_access.roles": ["admin"], "a.b.c": ["x"] } }
  ],
  "routes": [
    { "match": { "path_prefix": "/p" }, "require": [{ "scopes": ["s"] }] },
    { "match": { "path_prefix": "/pay" }, "require": [
      { "scopes": ["pay"], "acr": ["phr", "phrh"], "max_age_s": 300 }, { "acr": "mfa" } ] }
  ],
  "output": { "claims_to_headers": [
    { "claim": "sub", "header": "x-sub" }, { "claim": "groups", "header": "x-groups" },
    { "claim": "a.b", "header": "x-ab" }, { "claim": "n", "header": "x-n" }
  ] }
}"#;

const NOW: u64 = 1_800_000_000;

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules::new(&Config::parse(CONFIG.as_bytes(), &|_| None).unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let jwt = format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(data));
    let Some(claims) = token::claims(&jwt) else {
        return;
    };
    let facts = rules().facts(&claims, &mut |_| {});
    for i in 0..4 {
        if let Some(v) = facts.header_value(i) {
            assert!(!v.chars().any(|c| c.is_control() && c != '\t'), "{v:?}");
            assert_eq!(v, v.trim_matches([' ', '\t']), "read as another value upstream");
        }
    }
    // A list is written so that splitting at commas gives back exactly its elements.
    if let (Some(serde_json::Value::Array(list)), Some(v)) = (claims.get("groups"), facts.header_value(1)) {
        // An empty list is an empty value (no element may be empty, so it reads as no other).
        let read: Vec<&str> = v.split(',').filter(|_| !v.is_empty()).collect();
        assert_eq!(read.len(), list.len(), "{v:?} from {list:?}");
    }
    for policy in 0..2 {
        let permits = rules().permits(policy, Some(&facts), NOW);
        let why = rules().reason(policy, &claims);
        assert_eq!(permits, why.contains("] holds"), "{why}");
    }
    // The step-up policy, at a moment chosen by the input.
    let now = NOW + u64::from(data.first().copied().unwrap_or(0)) * 10;
    let permits = rules().permits(2, Some(&facts), now);
    if let Some(step) = rules().step_up(2, &claims) {
        if !permits {
            let has_pay = matches!(claims.get("scope"), Some(serde_json::Value::String(s)) if s.split(' ').any(|t| t == "pay"))
                || matches!(claims.get("scope"), Some(serde_json::Value::Array(a)) if a.iter().any(|t| t == "pay"))
                || claims.get("scp").is_some();
            assert!(has_pay || step.acr_values.as_deref() == Some("mfa"), "a step-up without the scopes");
        }
    }
    if permits {
        let acr = claims.get("acr").and_then(|a| a.as_str());
        let fresh = claims.get("auth_time").and_then(|t| t.as_u64()).is_some_and(|t| t.saturating_add(300) >= now);
        assert!(acr == Some("mfa") || (matches!(acr, Some("phr" | "phrh")) && fresh), "let through: {acr:?}");
    }
});
