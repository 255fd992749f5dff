//! Any JWT payload judged against policies and claim headers: no panic, a header value never
//! holds a line break or other control character but tab nor white space at an end, a list
//! claim's value reads back as exactly its elements, and the reason agrees with the verdict.
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
  "routes": [{ "match": { "path_prefix": "/p" }, "require": [{ "scopes": ["s"] }] }],
  "output": { "claims_to_headers": [
    { "claim": "sub", "header": "x-sub" }, { "claim": "groups", "header": "x-groups" },
    { "claim": "a.b", "header": "x-ab" }, { "claim": "n", "header": "x-n" }
  ] }
}"#;

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
        let permits = rules().permits(policy, Some(&facts));
        let why = rules().reason(policy, &claims);
        assert_eq!(permits, why.contains("] holds"), "{why}");
    }
});
