//! Every refusal speaks the contract's words: each key of two documents that together hold every
//! key of the contract is given a value of each wrong JSON type in turn, and the refusal must
//! name that key and say what it allows, with no Rust type name and no serde position.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::config::*;

/// Words a refusal must never hold: Rust types, serde's jargon, positions in the embedded JSON.
const JARGON: &[&str] = &[
    "u8",
    "u16",
    "u32",
    "u64",
    "usize",
    "i64",
    "f64",
    "enum",
    "variant",
    "struct",
    "Raw",
    "OneOrMany",
    "Whole",
    "Option",
    "sequence",
    "a map",
    "boolean",
    "invalid type",
    "invalid value",
    "line ",
    "column",
    "`",
];

fn env(name: &str) -> Option<String> {
    match name {
        "KEY" => Some(crate::assertion::tests::es256_pem().0),
        "SECRET" => Some("from-env".to_string()),
        _ => None,
    }
}

/// Holds every key but the ones `second` holds, which exclude these.
fn first() -> Value {
    json!({
        "sts": {"cluster": "sts", "authority": "sts.local", "token_path": "/token", "timeout_ms": 1500,
            "client_id": "edge", "client_secret": "pw", "client_auth": "client_secret_post",
            "ciba": {"path": "/bc", "mode": "ping", "notify_path": "/ciba/notify", "login_hint": "email",
                "binding_message": "orders-gw", "acr_values": "mfa", "requested_expiry_s": 120, "wait_s": 10}},
        "token_services": {"partner": {"cluster": "partner", "authority": "as.partner", "token_path": "/token",
            "client_id": "edge", "client_auth": "private_key_jwt",
            "private_key": {"pem_env": "KEY", "alg": "ES256", "kid": "k1", "audience": "https://as.partner/token"}}},
        "protected_resource": {"path": "/.well-known/oauth-protected-resource", "resource": "https://api.example",
            "authorization_servers": ["https://idp"], "scopes_supported": ["orders:read"],
            "resource_name": "Orders", "resource_documentation": "https://docs.example/orders"},
        "subject_token": {"header": "authorization", "prefix": "Bearer ",
            "token_type": "urn:ietf:params:oauth:token-type:jwt", "max_bytes": 4096},
        "trusted_issuers": [
            {"issuer": "https://idp", "audiences": ["api://edge"], "algorithms": ["ES256"], "leeway_s": 10,
                "jwks_uri": {"cluster": "idp", "authority": "idp", "path": "/jwks", "refresh_s": 60, "timeout_ms": 500},
                "action": "exchange", "bound_tokens": "enforce"},
            {"issuer": "https://other", "algorithms": ["RS256"], "discovery": {"cluster": "idp", "authority": "other"},
                "action": "forward"},
            {"issuer": "https://opaque", "introspection": {"cluster": "p", "authority": "p.example",
                "path": "/introspect", "timeout_ms": 500, "cache_s": 30, "client_id": "edge",
                "client_secret": "pw", "client_auth": "client_secret_basic"}}
        ],
        "exchange": {"grant": "token_exchange", "audience": ["orders"], "resource": "https://orders.internal/",
            "scope": "orders:read", "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "actor": {"source": "client_credentials", "scope": "actor", "audience": "sts"},
            "expect_act": true, "enforce_may_act": true, "extra_params": {"k": "v"},
            "then": {"grant": "token_exchange", "sts": "partner", "audience": "partner-api"}},
        "routes": [
            {"match": {"authority": "orders.example", "path_prefix": "/orders", "methods": ["GET"]},
                "exchange": {"scope": "orders:write"}, "introspect": "https://opaque",
                "require": [{"scopes": ["orders:write"], "claims": {"tenant": ["acme"]}},
                    {"scopes": ["orders:admin"], "acr": ["phr", "phrh"], "max_age_s": 300}]},
            {"match": {"path_prefix": "/healthz"}, "bypass": true},
            {"match": {"path_prefix": "/pay"}, "dpop": {"required": true}}
        ],
        "require": [{"scopes": ["orders:read"], "claims": {"tenant": "acme"}}],
        "introspect": "https://opaque",
        "output": {"header": "authorization", "prefix": "Bearer ", "original_token_header": "x-original-token",
            "claims_to_headers": [{"claim": "sub", "header": "x-user"}], "filter_state": ["outcome", "sub"]},
        "cache": {"max_entries": 100, "expiry_skew_s": 10, "default_ttl_s": 60, "negative_ttl_s": 2,
            "refresh_ahead_s": 5, "evict_on_upstream_401": false},
        "realm": "orders", "on_missing_token": "allow", "on_sts_unavailable": "allow",
        "dpop": {"required": false, "algorithms": ["ES256", "EdDSA"], "max_age_s": 60, "clock_skew_s": 5,
            "origins": ["https://api.example"], "replay_entries": 65536}
    })
}

/// The keys `first` cannot hold beside the ones it has: secrets from the environment, an inline
/// key, inline trusted keys, an actor from a header.
fn second() -> Value {
    let (pem, _) = crate::assertion::tests::es256_pem();
    json!({
        "sts": {"cluster": "sts", "authority": "sts.local", "token_path": "/token", "client_id": "edge",
            "client_secret_env": "SECRET"},
        "token_services": {"partner": {"cluster": "partner", "authority": "as.partner", "token_path": "/token",
            "client_id": "edge", "client_auth": "private_key_jwt", "private_key": {"pem": pem}}},
        "trusted_issuers": [{"issuer": "https://idp", "algorithms": ["RS256"],
            "jwks": {"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "k"}]}}],
        "exchange": {"actor": {"source": "header", "header": "x-actor",
            "token_type": "urn:ietf:params:oauth:token-type:jwt"}}
    })
}

/// Every key path of `v` with its value, containers included; the inside of a key set (JWKs,
/// not the contract) is left out.
fn keys(v: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.push((p.clone(), child.clone()));
                if k != "jwks" {
                    keys(child, &p, out);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push((p.clone(), child.clone()));
                keys(child, &p, out);
            }
        }
        _ => {}
    }
}

/// `doc` with the value at `path` replaced.
fn replaced(doc: &Value, path: &str, by: &Value) -> Value {
    let mut doc = doc.clone();
    let pointer: String = path
        .replace('[', ".")
        .replace(']', "")
        .split('.')
        .map(|p| format!("/{p}"))
        .collect();
    if let Some(slot) = doc.pointer_mut(&pointer) {
        *slot = by.clone();
    }
    doc
}

/// One value of every JSON type but `v`'s own (numbers: also a fraction, a negative, a string
/// of digits and one past `u64`).
fn wrong_values(v: &Value) -> Vec<Value> {
    let all = [
        json!("2000"),
        json!(5),
        json!(true),
        json!([5]),
        json!({"x": 1}),
    ];
    let mut out: Vec<Value> = all
        .into_iter()
        .filter(|w| std::mem::discriminant(w) != std::mem::discriminant(v))
        .collect();
    if v.is_number() {
        out.extend([
            json!(1.5),
            json!(-1),
            json!(1e30),
            json!(99_999_999_999_u64),
        ]);
    }
    out
}

/// Whether `inner` is `outer` or a key or index inside it: a refusal names the key at fault or,
/// for a wrong list or object, the element inside it that is wrong.
fn within(inner: &str, outer: &str) -> bool {
    inner == outer
        || inner.starts_with(&format!("{outer}."))
        || inner.starts_with(&format!("{outer}["))
}

#[test]
fn every_wrong_type_of_every_key_is_refused_in_the_contract_words() {
    let mut names = BTreeSet::new();
    let mut refused = 0;
    for doc in [first(), second()] {
        Config::parse(doc.to_string().as_bytes(), &env).expect("the document is valid as written");
        let mut all = Vec::new();
        keys(&doc, "", &mut all);
        for (path, value) in all {
            names.insert(path.rsplit('.').next().unwrap_or("").to_string());
            for wrong in wrong_values(&value) {
                let json = replaced(&doc, &path, &wrong).to_string();
                let Err(e) = Config::parse(json.as_bytes(), &env) else {
                    continue; // a list of strings may also be one string, a claim value a list
                };
                refused += 1;
                let shown = e.to_string();
                assert!(
                    within(&e.key, &path),
                    "{path} = {wrong}: refused as {shown}"
                );
                for word in JARGON {
                    assert!(
                        !shown.contains(word),
                        "{path} = {wrong}: {shown} says {word:?}"
                    );
                }
                assert!(
                    e.reason.starts_with("must") || e.reason.starts_with("is "),
                    "{path} = {wrong}: {shown}"
                );
            }
        }
    }
    for key in [
        "sts",
        "token_services",
        "protected_resource",
        "subject_token",
        "trusted_issuers",
        "exchange",
        "routes",
        "require",
        "introspect",
        "output",
        "cache",
        "realm",
        "on_missing_token",
        "on_sts_unavailable",
        "cluster",
        "authority",
        "token_path",
        "timeout_ms",
        "client_id",
        "client_secret",
        "client_secret_env",
        "client_auth",
        "private_key",
        "ciba",
        "path",
        "mode",
        "notify_path",
        "login_hint",
        "binding_message",
        "acr_values",
        "requested_expiry_s",
        "wait_s",
        "pem",
        "pem_env",
        "alg",
        "kid",
        "audience",
        "source",
        "scope",
        "header",
        "token_type",
        "issuer",
        "audiences",
        "algorithms",
        "leeway_s",
        "jwks",
        "jwks_uri",
        "discovery",
        "action",
        "introspection",
        "cache_s",
        "refresh_s",
        "prefix",
        "max_bytes",
        "grant",
        "resource",
        "requested_token_type",
        "actor",
        "expect_act",
        "enforce_may_act",
        "extra_params",
        "then",
        "authorization_servers",
        "scopes_supported",
        "resource_name",
        "resource_documentation",
        "match",
        "bypass",
        "scopes",
        "claims",
        "claim",
        "path_prefix",
        "methods",
        "original_token_header",
        "claims_to_headers",
        "max_entries",
        "expiry_skew_s",
        "default_ttl_s",
        "negative_ttl_s",
        "refresh_ahead_s",
        "evict_on_upstream_401",
        "dpop",
        "required",
        "max_age_s",
        "clock_skew_s",
        "origins",
        "replay_entries",
        "bound_tokens",
        "acr",
        "filter_state",
    ] {
        assert!(names.contains(key), "no document holds {key}");
    }
    assert!(refused > 400, "only {refused} refusals");
}

/// The refusals the operator meets first, word for word.
#[test]
fn the_common_mistakes_read_as_the_contract_says() {
    let sts = r#""sts":{"cluster":"sts","authority":"a","token_path":"/t","client_auth":"none""#;
    let refusal = |json: &str| {
        Config::parse(json.as_bytes(), &env)
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (format!(r#"{{{sts},"timeout_ms":"2000"}}}}"#),
            "invalid configuration: sts.timeout_ms: must be a whole number from 1 to 60000"),
        (format!(r#"{{{sts}}},"exchange":{{"audience":5}}}}"#),
            "invalid configuration: exchange.audience: must be a string or a list of strings"),
        (format!(r#"{{{sts}}},"exchange":{{"audience":["a",5]}}}}"#),
            "invalid configuration: exchange.audience[1]: must be a string"),
        (format!(r#"{{{sts}}},"on_sts_unavailable":false}}"#),
            r#"invalid configuration: on_sts_unavailable: must be "deny" or "allow""#),
        (format!(r#"{{{sts}}},"on_missing_token":"Reject"}}"#),
            r#"invalid configuration: on_missing_token: must be "reject" or "allow""#),
        (format!(r#"{{{sts}}},"cache":{{"max_entries":99999999999}}}}"#),
            "invalid configuration: cache.max_entries: must be a whole number from 1 to 1000000"),
        (format!(r#"{{{sts}}},"cache":{{"evict_on_upstream_401":"no"}}}}"#),
            "invalid configuration: cache.evict_on_upstream_401: must be true or false"),
        (format!(r#"{{{sts}}},"routes":{{}}}}"#),
            "invalid configuration: routes: must be a list"),
        (format!(r#"{{{sts}}},"output":[]}}"#),
            "invalid configuration: output: must be an object"),
        (format!(r#"{{{sts},"timeout_ms":2000,}}}}"#),
            r#"invalid configuration: sts: not valid JSON near `"…","timeout_ms":2000,}}`: trailing comma"#),
        (format!(r#"{{{sts}}},"cache":{{"max_entry":1}}}}"#),
            "invalid configuration: cache.max_entry: is not a key here (the keys here: max_entries, expiry_skew_s, default_ttl_s, negative_ttl_s, refresh_ahead_s, evict_on_upstream_401)"),
        (format!(r#"{{{sts},"cluster":"again"}}}}"#),
            "invalid configuration: sts.cluster: is written twice (one value per key)"),
        (r#"{"sts":{"cluster":"s"}}"#.to_string(),
            "invalid configuration: sts.authority: is required"),
        (String::new(),
            r#"invalid configuration: the configuration is empty: give the plugin a JSON object with at least "sts" (docs/configuration.md lists every key)"#),
        ("[]".to_string(), "invalid configuration: the configuration must be an object"),
    ];
    for (json, want) in cases {
        assert_eq!(refusal(&json), want, "{json}");
    }
    let secret = refusal(&format!(r#"{{{sts},"client_secret":"hunter2",}}}}"#));
    assert!(!secret.contains("hunter2"), "{secret}");
}
