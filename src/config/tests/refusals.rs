//! Refusals probed as a careless operator or an attacker would meet them: an object of names
//! (a policy's claims, the token services, the form's extra parameters) with a key written
//! twice, a secret written where a word or a name belongs, a stray `:` after a string value,
//! and claim headers an upstream would read as the same header.

use serde_json::{json, Value};

use super::{minimal, with};
use crate::config::*;

/// The default token service of [`minimal`], as a value to write elsewhere.
fn sts() -> Value {
    minimal()["sts"].clone()
}

/// The refusal of `text` (a configuration as the operator wrote it), with the VM environment
/// holding only `STS_SECRET`.
fn refusal(text: &str) -> ConfigError {
    let env = |k: &str| (k == "STS_SECRET").then(|| "from-env".to_string());
    Config::parse(text.as_bytes(), &env).expect_err("must be refused")
}

/// [`with`]`(extra)`, as text.
fn doc(extra: Value) -> String {
    with(extra).to_string()
}

#[test]
fn an_object_of_names_refuses_a_name_written_twice() {
    // Round 5, D11: `groups: admins` then `groups: finance` would leave a route open to finance.
    let issuers =
        json!([{ "issuer": "https://idp", "algorithms": ["ES256"], "jwks": { "keys": [] } }]);
    let base = doc(json!({ "trusted_issuers": issuers }));
    let base = &base[..base.len() - 1];
    let cases = [
        (
            format!(
                r#"{base},"require":[{{"claims":{{"groups":["admins"],"groups":["finance"]}}}}]}}"#
            ),
            "require[0].claims.groups",
        ),
        (
            format!(
                r#"{base},"routes":[{{"match":{{"path_prefix":"/a"}},"require":[{{"claims":{{"t":"x","u":"y","t":"z"}}}}]}}]}}"#
            ),
            "routes[0].require[0].claims.t",
        ),
        (
            format!(
                r#"{base},"token_services":{{"p":{},"p":{}}}}}"#,
                sts(),
                sts()
            ),
            "token_services.p",
        ),
        (
            format!(r#"{base},"exchange":{{"extra_params":{{"a":"1","a":"2"}}}}}}"#),
            "exchange.extra_params.a",
        ),
        (
            format!(
                r#"{base},"routes":[{{"match":{{"path_prefix":"/a"}},"exchange":{{"extra_params":{{"k":"1","k":"1"}}}}}}]}}"#
            ),
            "routes[0].exchange.extra_params.k",
        ),
    ];
    for (text, key) in cases {
        let e = refusal(&text);
        assert_eq!(e.key, key, "{text}");
        assert_eq!(e.reason, "is written twice (one value per key)", "{text}");
    }
    // Still an object where the contract says so, and `null` where it allows it.
    let e = refusal(&doc(json!({ "exchange": { "extra_params": ["a"] } })));
    assert_eq!(
        (e.key.as_str(), e.reason.as_str()),
        ("exchange.extra_params", "must be an object")
    );
    let ok = doc(json!({ "exchange": { "extra_params": null }, "token_services": {} }));
    assert!(Config::parse(ok.as_bytes(), &|_| None).is_ok());
}

#[test]
fn a_short_secret_written_where_a_word_or_a_name_belongs_is_never_quoted() {
    // Round 5, D8: a refusal quotes a word only when it is one typo from an accepted one.
    let secret = "hunter2";
    let sts_with = |k: &str| {
        let mut s = sts();
        s[k] = json!(secret);
        s
    };
    let texts = [
        json!({ "sts": sts_with("client_auth") }).to_string(),
        json!({ "sts": { "cluster": "sts", "authority": "a", "token_path": "/t", "client_id": "c",
                          "client_secret_env": secret } })
        .to_string(),
        doc(json!({ "exchange": { "grant": secret } })),
        doc(json!({ "exchange": { "sts": secret } })),
        doc(json!({ "exchange": { "actor": { "source": secret } } })),
        doc(
            json!({ "trusted_issuers": [{ "issuer": "i", "algorithms": [secret], "jwks": { "keys": [] } }] }),
        ),
        doc(
            json!({ "trusted_issuers": [{ "issuer": "i", "algorithms": ["ES256"], "jwks": { "keys": [] },
                                           "action": secret }] }),
        ),
        format!(r#"{{"sts":{{"cluster":"sts","client_secret":"{secret}":1}}}}"#),
        format!(r#"{{"sts":{{"cluster":"sts","client_secret":"{secret}" "authority":"a"}}}}"#),
        format!(r#"{{"sts":{{"cluster":["{secret}": 1]}}}}"#),
    ];
    for text in texts {
        let e = refusal(&text).to_string();
        assert!(!e.contains(secret), "{text}\n  → {e}");
    }
    // A typo is still shown, and so is an environment variable's name.
    let e = refusal(&doc(json!({ "exchange": { "grant": "jwt_barer" } }))).to_string();
    assert!(e.contains("\"jwt_barer\""), "{e}");
    let named = json!({ "sts": { "cluster": "sts", "authority": "a", "token_path": "/t",
                                  "client_id": "c", "client_secret_env": "PARTNER_SECRET" } });
    assert!(refusal(&named.to_string())
        .to_string()
        .contains("\"PARTNER_SECRET\""));
    let e = refusal(r#"{"sts":{"cluster":"sts","client_secret":"s3cr3t","client_id":1}}"#);
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
}

#[test]
fn claim_headers_an_upstream_reads_as_one_are_refused() {
    // Round 5, D4: `x_user` and `x-user` reach a CGI-style upstream as one header.
    let issuers =
        json!([{ "issuer": "https://idp", "algorithms": ["ES256"], "jwks": { "keys": [] } }]);
    let claim_headers = |headers: Value| {
        doc(
            json!({ "trusted_issuers": issuers, "output": { "claims_to_headers": headers },
                    "exchange": { "actor": { "source": "header", "header": "x-actor-token" } } }),
        )
    };
    for (headers, key) in [
        (
            json!([{ "claim": "sub", "header": "x-user" }, { "claim": "email", "header": "X_User" }]),
            "output.claims_to_headers[1].header",
        ),
        (
            json!([{ "claim": "sub", "header": "x_actor_token" }]),
            "output.claims_to_headers[0].header",
        ),
        (
            json!([{ "claim": "sub", "header": "a-b-c-d-e-f" }]),
            "output.claims_to_headers[0].header",
        ),
    ] {
        let e = refusal(&claim_headers(headers.clone()));
        assert_eq!(e.key, key, "{headers}: {e}");
    }
    let ok = claim_headers(json!([{ "claim": "sub", "header": "x-user-id-of-a" }]));
    let c = Config::parse(ok.as_bytes(), &|_| None).expect("four separators are fine");
    let aliases = &c.output.claims_to_headers[0].aliases;
    assert_eq!(aliases.len(), 15);
    assert!(aliases.contains(&"x_user_id_of_a".to_string()));
    assert!(!aliases.contains(&"x-user-id-of-a".to_string()));
}
