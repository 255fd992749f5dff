//! Tests of the configuration contract.

use super::*;
use crate::client::{ActorSource as CompiledActor, Client};
use crate::endpoint::ClientAuth;
use serde_json::{json, Value};

mod dpop;
mod policy_and_output;
mod refusals;
mod wording;

fn no_env(_: &str) -> Option<String> {
    None
}

/// A configuration as the filter loads it: validated, then compiled (which may refuse it too).
#[derive(Debug)]
struct Loaded {
    config: Config,
    client: Client,
}

impl std::ops::Deref for Loaded {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// A configuration as a test writes it: structured JSON (`json!`), or text for what a JSON
/// value cannot hold (a key written twice, a syntax error).
trait Doc {
    /// The document's text.
    fn text(&self) -> String;
}

impl Doc for Value {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Doc for &Value {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Doc for &str {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Doc for String {
    fn text(&self) -> String {
        self.clone()
    }
}

impl Doc for &String {
    fn text(&self) -> String {
        (*self).clone()
    }
}

fn load(doc: impl Doc, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let config = Config::parse(doc.text().as_bytes(), env)?;
    crate::engine::Engine::new(config.clone())?;
    let client = Client::compile(&config)?;
    Ok(Loaded { config, client })
}

fn parse(doc: impl Doc) -> Result<Loaded, ConfigError> {
    load(doc, &no_env)
}

/// The least configuration there is.
pub(crate) fn minimal() -> Value {
    json!({
        "sts": {
            "cluster": "sts", "authority": "sts.example.com", "token_path": "/token",
            "client_id": "edge", "client_secret": "s3cret"
        }
    })
}

/// `a` with the top-level keys of `b` set over it.
pub(crate) fn merged(mut a: Value, b: &Value) -> Value {
    for (k, v) in b.as_object().into_iter().flatten() {
        a[k] = v.clone();
    }
    a
}

/// [`minimal`] with the top-level keys of `extra`.
pub(crate) fn with(extra: Value) -> Value {
    merged(minimal(), &extra)
}

/// The validated configuration of [`with`]`(extra)`, for the unit tests of the parts that
/// compile one (it must be valid).
pub(crate) fn config_with(extra: Value) -> Config {
    Config::parse(with(extra).to_string().as_bytes(), &no_env).expect("a valid configuration")
}

/// The refusal of [`with`]`(extra)`.
pub(super) fn refused(extra: Value) -> ConfigError {
    let text = with(extra).to_string();
    Config::parse(text.as_bytes(), &no_env).expect_err("must be refused")
}

/// `trusted_issuers` with one issuer and an inline key.
pub(super) fn one_trusted_issuer() -> Value {
    json!([{ "issuer": "https://idp", "algorithms": ["RS256"],
             "jwks": { "keys": [{ "kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "k" }] } }])
}

fn err_key(doc: impl Doc) -> String {
    parse(doc).expect_err("config must be refused").key
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(minimal()).unwrap();
    assert_eq!(
        c.client.profiles[0]
            .request(c.client.endpoint(0), "t", None, 0)
            .unwrap()
            .timeout_ms,
        2000
    );
    assert_eq!(c.client.endpoint(0).auth().name(), "client_secret_basic");
    assert_eq!(c.subject_token.header, "authorization");
    assert_eq!(c.subject_token.prefix, "Bearer ");
    assert_eq!(c.subject_token.token_type, ACCESS_TOKEN_TYPE);
    assert_eq!(c.subject_token.max_bytes, 8192);
    assert_eq!(c.output.header, "authorization");
    assert_eq!(c.output.prefix, "Bearer ");
    assert_eq!(c.output.original_token_header, None);
    assert_eq!(
        c.cache,
        CacheConfig {
            max_entries: 4096,
            expiry_skew_s: 30,
            default_ttl_s: 300,
            negative_ttl_s: 5,
            refresh_ahead_s: 0,
            evict_on_upstream_401: true,
        }
    );
    assert_eq!(c.on_missing_token, OnMissingToken::Reject);
    assert_eq!(c.on_sts_unavailable, OnStsUnavailable::Deny);
    assert_eq!(c.client.profiles.len(), 1);
    assert!(c.routes.is_empty());
    assert_eq!(c.realm, "token-exchange");
}

#[test]
fn full_documented_example_is_accepted() {
    let c = parse(json!({
        "sts": {
            "cluster": "sts", "authority": "sts.example.com", "token_path": "/oauth2/token",
            "timeout_ms": 1500, "client_id": "edge-proxy", "client_secret": "x",
            "client_auth": "client_secret_post"
        },
        "subject_token": {
            "header": "Authorization", "prefix": "Bearer ",
            "token_type": "urn:ietf:params:oauth:token-type:jwt", "max_bytes": 4096
        },
        "exchange": {
            "grant": "token_exchange", "audience": ["orders-api"],
            "resource": ["https://orders.internal/"], "scope": "orders:read",
            "requested_token_type": null, "actor": null, "extra_params": { "k": "v" }
        },
        "routes": [
            {
                "match": {
                    "authority": "orders.example.com", "path_prefix": "/orders", "methods": ["get"]
                },
                "exchange": { "audience": ["orders-api"], "scope": "orders:read" }
            },
            { "match": { "path_prefix": "/healthz" }, "bypass": true }
        ],
        "output": {
            "header": "authorization", "prefix": "Bearer ",
            "original_token_header": "x-original-token"
        },
        "cache": { "max_entries": 10, "expiry_skew_s": 0, "default_ttl_s": 60, "negative_ttl_s": 0 },
        "realm": "orders", "on_missing_token": "allow", "on_sts_unavailable": "allow"
    }))
    .unwrap();
    assert_eq!(c.subject_token.header, "authorization");
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].action, RouteAction::Exchange(1));
    assert_eq!(c.routes[0].matcher.methods, vec!["GET".to_string()]);
    assert_eq!(c.routes[1].action, RouteAction::Bypass);
    assert_eq!(
        c.output.original_token_header.as_deref(),
        Some("x-original-token")
    );
    assert_eq!(c.on_sts_unavailable, OnStsUnavailable::Allow);
    assert_eq!(c.client.endpoint(0).auth().name(), "client_secret_post");
}

#[test]
fn unknown_keys_are_refused_naming_the_key() {
    assert_eq!(err_key(with(json!({ "colour": "blue" }))), "colour");
    assert_eq!(
        err_key(with(json!({ "routes": [{ "match": { "path": "/" } }] }))),
        "routes[0].match.path"
    );
    assert_eq!(
        err_key(json!({
            "sts": {
                "cluster": "s", "authority": "a", "token_path": "/t", "client_auth": "none",
                "tmeout_ms": 5
            }
        })),
        "sts.tmeout_ms"
    );
    assert_eq!(
        err_key(with(json!({ "cache": { "max_entry": 5 } }))),
        "cache.max_entry"
    );
}

#[test]
fn keys_are_named_in_a_pretty_printed_document() {
    // Envoy passes the configuration as written, over many lines; braces, brackets and quotes
    // inside string values must not move the path.
    let json = json!({
        "sts": {
            "cluster": "s{[\"", "authority": "a", "token_path": "/t", "client_id": "c",
            "client_secret": "x"
        },
        "routes": [{ "match": { "path_prefix": "/a" } }, { "match": { "methods": ["GET", 7] } }]
    });
    assert_eq!(err_key(json), "routes[1].match.methods[1]");
    let json = "{\n\t\"sts\": {\"cluster\": \"s\", \"authority\": \"a\",\n \"token_path\": \"/t\",\n \"client_id\": \"c\", \"client_secret\": \"x\"},\n \"cache\": {\n  \"max_entries\": 10,\n  \"ttl\": 1 }\n}";
    assert_eq!(err_key(json), "cache.ttl");
    let json = "{\"sts\": {\"cluster\": \"s\",\n \"authority\": \"a\"\n }\n}";
    assert_eq!(err_key(json), "sts.token_path");
    assert_eq!(
        err_key(with(
            json!({ "routes": [{ "match": {} }, { "bypass": "yes" }] })
        )),
        "routes[1].bypass"
    );
    assert_eq!(
        err_key(with(
            json!({ "exchange": { "extra_params": { "a": "1", "b": 2 } } })
        )),
        "exchange.extra_params.b"
    );
}

#[test]
fn missing_required_keys_are_refused() {
    assert_eq!(err_key("{}"), "sts");
    assert_eq!(
        err_key(json!({ "sts": { "cluster": "s", "authority": "a" } })),
        "sts.token_path"
    );
    assert_eq!(
        err_key(json!({ "sts": { "cluster": "s", "authority": "a", "token_path": "/t" } })),
        "sts.client_id"
    );
    assert_eq!(
        err_key(json!({
            "sts": { "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c" }
        })),
        "sts.client_secret"
    );
    assert_eq!(
        err_key("not json"),
        "",
        "a document that is no JSON is the whole at fault"
    );
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let cases = [
        (
            json!({
                "sts": {
                    "cluster": "", "authority": "a", "token_path": "/t", "client_auth": "none"
                }
            }),
            "sts.cluster",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "https://a", "token_path": "/t",
                    "client_auth": "none"
                }
            }),
            "sts.authority",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "t", "client_auth": "none"
                }
            }),
            "sts.token_path",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_auth": "none",
                    "timeout_ms": 0
                }
            }),
            "sts.timeout_ms",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_auth": "none",
                    "timeout_ms": 60001
                }
            }),
            "sts.timeout_ms",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_auth": "mtls"
                }
            }),
            "sts.client_auth",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_auth": "none",
                    "client_secret": "x"
                }
            }),
            "sts.client_secret",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
                    "client_secret": "x", "client_secret_env": "E"
                }
            }),
            "sts.client_secret",
        ),
    ];
    for (json, key) in cases {
        assert_eq!(err_key(&json), key, "{json}");
    }
    let cases = [
        (
            json!({ "subject_token": { "header": "bad header" } }),
            "subject_token.header",
        ),
        (
            json!({ "subject_token": { "token_type": "access_token" } }),
            "subject_token.token_type",
        ),
        (
            json!({ "subject_token": { "max_bytes": 1 } }),
            "subject_token.max_bytes",
        ),
        (
            json!({ "subject_token": { "prefix": "Bearer\n" } }),
            "subject_token.prefix",
        ),
        (json!({ "output": { "header": ":path" } }), "output.header"),
        (
            json!({ "output": { "original_token_header": "authorization" } }),
            "output.original_token_header",
        ),
        (
            json!({ "cache": { "max_entries": 0 } }),
            "cache.max_entries",
        ),
        (
            json!({ "cache": { "default_ttl_s": 90000 } }),
            "cache.default_ttl_s",
        ),
        (
            json!({ "exchange": { "grant": "password" } }),
            "exchange.grant",
        ),
        (
            json!({ "exchange": { "audience": [""] } }),
            "exchange.audience",
        ),
        (
            json!({ "exchange": { "resource": ["orders"] } }),
            "exchange.resource",
        ),
        (
            json!({ "exchange": { "resource": ["https://o/#frag"] } }),
            "exchange.resource",
        ),
        (json!({ "exchange": { "scope": "a  b" } }), "exchange.scope"),
        (json!({ "exchange": { "scope": "a\"b" } }), "exchange.scope"),
        (
            json!({ "exchange": { "requested_token_type": "jwt" } }),
            "exchange.requested_token_type",
        ),
        (
            json!({ "exchange": { "extra_params": { "subject_token": "x" } } }),
            "exchange.extra_params.subject_token",
        ),
        (
            json!({ "routes": [{ "match": { "path_prefix": "x" } }] }),
            "routes[0].match.path_prefix",
        ),
        (
            json!({ "routes": [{ "match": { "methods": ["G ET"] } }] }),
            "routes[0].match.methods",
        ),
        (
            json!({ "routes": [{ "bypass": true, "exchange": { "scope": "a" } }] }),
            "routes[0]",
        ),
        (
            json!({ "routes": [{ "exchange": { "scope": "" } }] }),
            "routes[0].exchange.scope",
        ),
        (json!({ "on_missing_token": "maybe" }), "on_missing_token"),
        (
            json!({ "cache": { "max_entries": -1 } }),
            "cache.max_entries",
        ),
        (json!({ "realm": "a\"b" }), "realm"),
    ];
    for (extra, key) in cases {
        assert_eq!(err_key(with(extra.clone())), key, "{extra}");
    }
}

#[test]
fn ciba_is_validated() {
    let doc = |ciba: Value, rest: &Value| {
        let sts = json!({ "sts": { "cluster": "s", "authority": "a", "token_path": "/t",
                                   "client_auth": "none", "ciba": ciba } });
        merged(sts, rest)
    };
    let grant = json!({ "exchange": { "grant": "ciba", "scope": "openid orders" } });
    let issuers = json!({
        "trusted_issuers": [
            {
                "issuer": "https://idp", "algorithms": ["ES256"],
                "jwks_uri": { "cluster": "idp", "authority": "idp", "path": "/jwks" }
            }
        ]
    });
    let ok = parse(doc(
        json!({
            "path": "/bc", "mode": "ping", "notify_path": "/ciba/notify",
            "binding_message": "orders-gw", "wait_s": 10
        }),
        &merged(grant.clone(), &issuers),
    ))
    .unwrap();
    let c = ok.sts.ciba.as_ref().unwrap();
    assert_eq!(
        c.login_hint,
        LoginHint::Claim("sub".into()),
        "default: the verified sub"
    );
    assert_eq!(
        c.mode,
        CibaMode::Ping {
            notify_path: "/ciba/notify".into()
        }
    );
    assert_eq!(ok.exchanges[0].grant, Grant::Ciba);
    let token_hint = doc(
        json!({ "path": "/bc", "login_hint": "login_hint_token" }),
        &grant,
    );
    assert_eq!(
        parse(&token_hint)
            .unwrap()
            .sts
            .ciba
            .as_ref()
            .unwrap()
            .wait_s,
        30
    );
    for (json, key) in [
        (
            with(json!({ "exchange": { "grant": "ciba", "scope": "openid" } })),
            "exchange.grant",
        ),
        (doc(json!({ "path": "/bc" }), &grant), "sts.ciba.login_hint"),
        (
            doc(
                json!({ "path": "/bc", "login_hint": "login_hint_token" }),
                &json!({ "exchange": { "grant": "ciba", "scope": "orders" } }),
            ),
            "exchange.scope",
        ),
        (
            doc(
                json!({ "path": "/bc", "login_hint": "login_hint_token" }),
                &json!({ "exchange": { "grant": "ciba", "scope": "openid", "audience": "x" } }),
            ),
            "exchange.audience",
        ),
        (
            doc(
                json!({ "path": "/bc", "login_hint": "login_hint_token" }),
                &json!({
                    "exchange": {
                        "grant": "ciba", "scope": "openid",
                        "actor": { "source": "header", "header": "x-a" }
                    }
                }),
            ),
            "exchange.actor",
        ),
        (
            doc(
                json!({ "path": "bc", "login_hint": "login_hint_token" }),
                &grant,
            ),
            "sts.ciba.path",
        ),
        (
            doc(
                json!({ "path": "/bc", "mode": "ping", "login_hint": "login_hint_token" }),
                &grant,
            ),
            "sts.ciba.notify_path",
        ),
        (
            doc(
                json!({ "path": "/bc", "notify_path": "/n", "login_hint": "login_hint_token" }),
                &grant,
            ),
            "sts.ciba.notify_path",
        ),
        (
            doc(
                json!({ "path": "/bc", "mode": "push", "login_hint": "login_hint_token" }),
                &grant,
            ),
            "sts.ciba.mode",
        ),
        (
            doc(json!({ "path": "/bc", "login_hint": "a b" }), &grant),
            "sts.ciba.login_hint",
        ),
        (
            doc(
                json!({ "path": "/bc", "login_hint": "login_hint_token", "wait_s": 0 }),
                &grant,
            ),
            "sts.ciba.wait_s",
        ),
        (
            doc(
                json!({
                    "path": "/bc", "login_hint": "login_hint_token", "binding_message": "\u{7}"
                }),
                &grant,
            ),
            "sts.ciba.binding_message",
        ),
        (
            doc(
                json!({ "path": "/bc", "login_hint": "login_hint_token", "requested_expiry_s": 0 }),
                &grant,
            ),
            "sts.ciba.requested_expiry_s",
        ),
        (
            doc(
                json!({ "path": "/bc", "login_hint": "login_hint_token", "bogus": 1 }),
                &grant,
            ),
            "sts.ciba.bogus",
        ),
    ] {
        assert_eq!(err_key(&json), key, "{json}");
    }
}

#[test]
fn actors_and_grants_are_validated() {
    let ok = with(json!({
        "exchange": {
            "actor": { "source": "client_credentials", "scope": "a b" }, "expect_act": true
        },
        "routes": [
            {
                "match": { "path_prefix": "/imp" },
                "exchange": { "actor": null, "expect_act": false }
            },
            {
                "match": { "path_prefix": "/hdr" },
                "exchange": { "actor": { "source": "header", "header": "X-Actor" } }
            },
            { "match": { "path_prefix": "/same" }, "exchange": { "audience": "x" } }
        ]
    }));
    let c = parse(&ok).unwrap();
    assert_eq!(
        c.client.actors.len(),
        1,
        "one client-credentials actor, shared"
    );
    assert!(c.client.profiles[0].actor.is_some());
    assert!(
        c.client.profiles[1].actor.is_none(),
        "a route turns delegation off with null"
    );
    assert_eq!(
        c.client.profiles[2].actor.as_ref().unwrap().source,
        CompiledActor::Header("x-actor".into())
    );
    assert_eq!(c.actor_headers, vec!["x-actor".to_string()]);
    assert!(
        c.client.profiles[3].actor.is_some(),
        "an override without actor keeps the default's"
    );

    let cases = [
        (
            json!({
                "exchange": { "grant": "jwt_bearer", "actor": { "source": "client_credentials" } }
            }),
            "exchange.actor",
        ),
        (
            json!({ "exchange": { "grant": "jwt_bearer", "requested_token_type": "urn:x:y" } }),
            "exchange.requested_token_type",
        ),
        (
            json!({ "exchange": { "grant": "jwt_bearer", "audience": "a" } }),
            "exchange.audience",
        ),
        (json!({ "exchange": { "grant": "saml" } }), "exchange.grant"),
        (
            json!({ "exchange": { "expect_act": true } }),
            "exchange.expect_act",
        ),
        (
            json!({ "exchange": { "actor": { "source": "magic" } } }),
            "exchange.actor.source",
        ),
        (
            json!({ "exchange": { "actor": { "source": "header" } } }),
            "exchange.actor.header",
        ),
        (
            json!({ "exchange": { "actor": { "source": "header", "header": "authorization" } } }),
            "exchange.actor.header",
        ),
        (
            json!({ "exchange": { "actor": { "source": "header", "header": "x", "scope": "s" } } }),
            "exchange.actor",
        ),
        (
            json!({ "exchange": { "actor": { "source": "client_credentials", "header": "x" } } }),
            "exchange.actor.header",
        ),
        (
            json!({
                "exchange": { "actor": { "source": "client_credentials", "token_type": "jwt" } }
            }),
            "exchange.actor.token_type",
        ),
        (
            json!({ "exchange": { "actor": { "source": "client_credentials", "colour": "red" } } }),
            "exchange.actor.colour",
        ),
    ];
    for (extra, key) in cases {
        assert_eq!(err_key(with(extra.clone())), key, "{extra}");
    }
}

#[test]
fn private_key_jwt_is_validated() {
    let (pem, _) = crate::assertion::tests::es256_pem();
    let env = |k: &str| (k == "KEY").then(|| pem.clone());
    let parse_env = |json: &Value| load(json, &env);
    let ok = json!({
        "sts": {
            "cluster": "s", "authority": "sts.local", "token_path": "/t", "client_id": "c",
            "client_auth": "private_key_jwt", "private_key": { "pem_env": "KEY" }
        }
    });
    let c = parse_env(&ok).unwrap();
    let ClientAuth::PrivateKeyJwt(signer) = c.client.endpoint(0).auth() else {
        panic!()
    };
    assert_eq!(
        signer.audience, "https://sts.local/t",
        "default audience: the token endpoint URL"
    );
    let cases = [
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
                    "client_auth": "private_key_jwt"
                }
            }),
            "sts.private_key",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t",
                    "client_auth": "private_key_jwt", "private_key": { "pem_env": "KEY" }
                }
            }),
            "sts.client_id",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
                    "client_auth": "private_key_jwt", "private_key": { "pem_env": "NOPE" }
                }
            }),
            "sts.private_key.pem_env",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
                    "client_auth": "private_key_jwt", "private_key": { "pem": "junk" }
                }
            }),
            "sts.private_key",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
                    "client_auth": "private_key_jwt",
                    "private_key": { "pem_env": "KEY", "alg": "RS256" }
                }
            }),
            "sts.private_key",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
                    "client_auth": "private_key_jwt", "client_secret": "x",
                    "private_key": { "pem_env": "KEY" }
                }
            }),
            "sts.client_secret",
        ),
        (
            json!({
                "sts": {
                    "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
                    "client_secret": "x", "private_key": { "pem_env": "KEY" }
                }
            }),
            "sts.private_key",
        ),
    ];
    for (json, key) in cases {
        let e = parse_env(&json).expect_err(&json.to_string());
        assert_eq!(e.key, key, "{json}");
        assert!(
            !e.to_string().contains("PRIVATE KEY"),
            "never echoes the key"
        );
    }
}

#[test]
fn trusted_issuers_are_validated() {
    let good = json!({
        "trusted_issuers": [
            {
                "issuer": "https://idp", "algorithms": ["RS256", "EdDSA"], "audiences": ["api"],
                "jwks_uri": { "cluster": "idp", "authority": "idp.local", "path": "/jwks" }
            }
        ]
    });
    let c = parse(with(good)).unwrap();
    let t = &c.trusted_issuers[0];
    assert_eq!(t.algorithms, vec![JwsAlg::Rs256, JwsAlg::EdDsa]);
    assert_eq!(t.leeway_s, 30);
    let KeySource::Remote(u) = &t.keys else {
        panic!("remote keys expected")
    };
    assert_eq!((u.refresh_s, u.timeout_ms), (300, 2000));

    let ed = json!({
        "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "kid": "k"
    });
    let keys = json!({ "keys": [ed] });
    // The key set inline, as an object or as a JSON string.
    for jwks in [keys.clone(), Value::String(keys.to_string())] {
        let issuer = json!({ "issuer": "i", "algorithms": ["EdDSA"], "jwks": jwks });
        let c = parse(with(json!({ "trusted_issuers": [issuer] }))).unwrap();
        assert!(matches!(c.trusted_issuers[0].keys, KeySource::Inline(_)));
    }

    let cases = [
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["none"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[0].algorithms",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["HS256"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[0].algorithms",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["ES384"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[0].algorithms",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": [],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[0].algorithms",
        ),
        (
            json!({ "trusted_issuers": [{ "issuer": "i", "algorithms": ["RS256"] }] }),
            "trusted_issuers[0]",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["RS256"], "jwks": { "keys": [] },
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[0]",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["RS256"],
                        "jwks": { "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] }
                    }
                ]
            }),
            "trusted_issuers[0].jwks",
        ),
        (
            json!({
                "trusted_issuers": [{ "issuer": "i", "algorithms": ["RS256"], "jwks": "not json" }]
            }),
            "trusted_issuers[0].jwks",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["RS256"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "j" }
                    }
                ]
            }),
            "trusted_issuers[0].jwks_uri.path",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["RS256"],
                        "jwks_uri": {
                            "cluster": "c", "authority": "a", "path": "/j", "refresh_s": 1
                        }
                    }
                ]
            }),
            "trusted_issuers[0].jwks_uri.refresh_s",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["RS256"], "leeway_s": 301,
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[0].leeway_s",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "", "algorithms": ["RS256"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[0].issuer",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["RS256"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    },
                    {
                        "issuer": "i", "algorithms": ["RS256"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j" }
                    }
                ]
            }),
            "trusted_issuers[1].issuer",
        ),
        (
            json!({
                "trusted_issuers": [
                    {
                        "issuer": "i", "algorithms": ["RS256"],
                        "jwks_uri": { "cluster": "c", "authority": "a", "path": "/j", "url": "x" }
                    }
                ]
            }),
            "trusted_issuers[0].jwks_uri.url",
        ),
    ];
    for (extra, key) in cases {
        assert_eq!(err_key(with(extra.clone())), key, "{extra}");
    }
}

#[test]
fn secret_comes_from_the_vm_environment() {
    let json = json!({
        "sts": {
            "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
            "client_secret_env": "STS_SECRET"
        }
    });
    let env = |k: &str| (k == "STS_SECRET").then(|| "from-env".to_string());
    let c = load(&json, &env).unwrap();
    assert_eq!(
        c.client.endpoint(0).auth(),
        &ClientAuth::basic("c", "from-env")
    );
    let e = parse(json).unwrap_err();
    assert_eq!(e.key, "sts.client_secret_env");
    assert!(e.to_string().contains("STS_SECRET"));
}

#[test]
fn errors_never_echo_the_secret() {
    let typed = parse(json!({
        "sts": {
            "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
            "client_secret": 987654321
        }
    }))
    .unwrap_err()
    .to_string();
    assert!(!typed.contains("987654321"), "{typed}");
    assert!(typed.contains("must be a string"), "{typed}");
    let e = err_key(with(json!({ "bogus": 1 })));
    assert_eq!(e, "bogus");
    let msg = parse(with(json!({ "bogus": 1 }))).unwrap_err().to_string();
    assert!(!msg.contains("s3cret"), "{msg}");
    let summary = parse(minimal()).unwrap().summary();
    assert!(!summary.contains("s3cret"), "{summary}");
    assert!(summary.contains("sts.example.com/token"));
}

#[test]
fn values_that_would_misbehave_later_are_refused_at_load() {
    let sts = json!({
        "sts": {
            "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
            "client_secret": "x"
        }
    });
    let doc = |rest: Value| merged(sts.clone(), &rest);
    for h in [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "te",
        "upgrade",
        "host",
        ":path",
        "keep-alive",
    ] {
        for (json, key) in [
            (json!({ "output": { "header": h } }), "output.header"),
            (
                json!({ "output": { "original_token_header": h } }),
                "output.original_token_header",
            ),
            (
                json!({ "subject_token": { "header": h } }),
                "subject_token.header",
            ),
            (
                json!({ "exchange": { "actor": { "source": "header", "header": h } } }),
                "exchange.actor.header",
            ),
        ] {
            assert_eq!(err_key(doc(json)), key, "{h} in {key}");
        }
    }
    let issuer = |iss: &str, uri: &Value| {
        doc(
            json!({ "trusted_issuers": [{ "issuer": iss, "algorithms": ["ES256"], "jwks_uri": uri }] }),
        )
    };
    let good_uri = json!({ "cluster": "idp", "authority": "idp.local", "path": "/jwks" });
    assert!(parse(issuer("https://idp", &good_uri)).is_ok());
    for (iss, uri, key) in [
        (
            " https://idp",
            good_uri.clone(),
            "trusted_issuers[0].issuer",
        ),
        (
            "https://idp ",
            good_uri.clone(),
            "trusted_issuers[0].issuer",
        ),
        (
            "https://idp",
            json!({ "cluster": "idp", "authority": "idp.local", "path": "/jw ks" }),
            "trusted_issuers[0].jwks_uri.path",
        ),
        (
            "https://idp",
            json!({ "cluster": "idp", "authority": "idp.local", "path": "/jwks\r\nx: y" }),
            "trusted_issuers[0].jwks_uri.path",
        ),
        (
            "https://idp",
            json!({ "cluster": "idp", "authority": "idp .local", "path": "/jwks" }),
            "trusted_issuers[0].jwks_uri.authority",
        ),
        (
            "https://idp",
            json!({ "cluster": "idp", "authority": "idp.local\u{0}", "path": "/jwks" }),
            "trusted_issuers[0].jwks_uri.authority",
        ),
    ] {
        assert_eq!(err_key(issuer(iss, &uri)), key, "{uri}");
    }
    let bad_path = json!({
        "sts": {
            "cluster": "s", "authority": "a", "token_path": "/t\u{1}", "client_id": "c",
            "client_secret": "x"
        }
    });
    assert_eq!(err_key(bad_path), "sts.token_path");
}

#[test]
fn a_secret_in_the_wrong_key_is_never_printed() {
    let (pem, _) = crate::assertion::tests::es256_pem();
    let secret = "pa55-W0rd!with spaces and more";
    let sts = json!({ "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c" });
    let with_sts = |extra: Value| merged(sts.clone(), &extra);
    let server = json!({
        "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "c",
        "client_secret": "x"
    });
    for json in [
        json!({ "sts": with_sts(json!({ "client_auth": "private_key_jwt",
                                        "private_key": { "pem_env": pem } })) }),
        json!({ "sts": with_sts(json!({ "client_secret_env": secret })) }),
        json!({ "sts": with_sts(json!({ "client_secret": "x", "client_auth": secret })) }),
        json!({ "sts": with_sts(json!({ "client_auth": "private_key_jwt",
                                        "private_key": { "pem": "x", "alg": secret } })) }),
        json!({ "sts": server, "exchange": { "grant": secret } }),
        json!({ "sts": server, "exchange": { "actor": { "source": secret } } }),
        json!({ "sts": server, "trusted_issuers": [{ "issuer": "i", "algorithms": [secret],
                                                     "jwks": { "keys": [] } }] }),
    ] {
        let msg = parse(&json).unwrap_err().to_string();
        assert!(
            !msg.contains("BEGIN") && !msg.contains("MII") && !msg.contains("pa55"),
            "{msg}"
        );
        let first_line = pem.lines().nth(1).unwrap_or_default();
        assert!(!msg.contains(first_line), "{msg}");
    }
}

#[test]
fn route_overrides_replace_only_the_keys_they_set() {
    let c = parse(with(json!({
        "exchange": { "audience": "a", "scope": "s1" },
        "routes": [{ "match": { "path_prefix": "/b" }, "exchange": { "audience": ["b", "c"] } }]
    })))
    .unwrap();
    let form = |i: usize| {
        let body = c.client.profiles[i]
            .request(c.client.endpoint(0), "t", None, 0)
            .unwrap()
            .body;
        form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect::<Vec<(String, String)>>()
    };
    let field = |f: &[(String, String)], k: &str| -> Vec<String> {
        f.iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(field(&form(0), "audience"), vec!["a"]);
    assert_eq!(field(&form(1), "audience"), vec!["b", "c"]);
    assert_eq!(field(&form(1), "scope"), vec!["s1"]);
}

#[test]
fn only_claims_that_name_a_user_may_be_a_login_hint() {
    let doc = |hint: &str| {
        json!({
            "sts": { "cluster": "s", "authority": "a", "token_path": "/t", "client_auth": "none",
                     "ciba": { "path": "/bc", "login_hint": hint } },
            "exchange": { "grant": "ciba", "scope": "openid" },
            "trusted_issuers": [{ "issuer": "https://idp", "algorithms": ["ES256"],
                "jwks_uri": { "cluster": "idp", "authority": "idp", "path": "/jwks" } }]
        })
    };
    for good in [
        "sub",
        "email",
        "phone_number",
        "preferred_username",
        "upn",
        "https://example.com/employee_id",
        "urn:example:user",
    ] {
        assert!(parse(doc(good)).is_ok(), "{good}");
    }
    for bad in [
        "iss",
        "aud",
        "azp",
        "scope",
        "client_id",
        "tenant",
        "jti",
        "https://",
        "urn:a b",
    ] {
        assert_eq!(err_key(doc(bad)), "sts.ciba.login_hint", "{bad}");
    }
}

#[test]
fn a_route_that_changes_grant_inherits_only_the_keys_its_grant_takes() {
    let doc = |routes: serde_json::Value| {
        serde_json::json!({
            "sts": { "cluster": "s", "authority": "a", "token_path": "/t", "client_id": "edge",
                     "client_secret": "x", "ciba": { "path": "/bc", "login_hint": "login_hint_token" } },
            "exchange": { "audience": ["orders"], "resource": "https://orders.internal/",
                          "requested_token_type": "urn:ietf:params:oauth:token-type:jwt",
                          "scope": "openid orders",
                          "actor": { "source": "client_credentials" }, "expect_act": true },
            "routes": routes
        })
        .to_string()
    };
    // A ciba or jwt_bearer route loads: the default's audience, resource, requested type and
    // actor are not its keys, so it does not inherit them (the scope it does).
    let c = parse(doc(serde_json::json!([
        { "match": { "path_prefix": "/consent" }, "exchange": { "grant": "ciba" } },
        { "match": { "path_prefix": "/assert" }, "exchange": { "grant": "jwt_bearer" } },
        { "match": { "path_prefix": "/plain" }, "exchange": { "scope": "read" } }
    ])))
    .unwrap();
    let ciba = &c.config.exchanges[1];
    assert_eq!(ciba.grant, Grant::Ciba);
    assert!(ciba.audience.is_empty() && ciba.resource.is_empty() && ciba.actor.is_none());
    assert_eq!(
        (ciba.requested_token_type.as_deref(), ciba.expect_act),
        (None, false)
    );
    assert_eq!(ciba.scope.as_deref(), Some("openid orders"));
    assert!(c.config.exchanges[2].audience.is_empty());
    // A token-exchange route still inherits everything.
    let plain = &c.config.exchanges[3];
    assert_eq!(plain.audience, vec!["orders".to_string()]);
    assert!(plain.actor.is_some() && plain.expect_act);
    // Written on the route itself, a key its grant does not take is refused by name.
    for (key, value) in [
        ("audience", serde_json::json!(["x"])),
        ("resource", serde_json::json!("https://x/")),
        ("requested_token_type", serde_json::json!("urn:x")),
        (
            "actor",
            serde_json::json!({ "source": "client_credentials" }),
        ),
    ] {
        let mut exchange = serde_json::json!({ "grant": "ciba" });
        exchange[key] = value;
        let json =
            doc(serde_json::json!([{ "match": { "path_prefix": "/c" }, "exchange": exchange }]));
        assert_eq!(err_key(&json), format!("routes[0].exchange.{key}"));
    }
}

#[test]
fn a_trusted_issuer_exchanges_or_forwards() {
    let doc = |action: &str| {
        with(
            json!({ "trusted_issuers": [{ "issuer": "https://i", "algorithms": ["ES256"],
            "jwks_uri": { "cluster": "idp", "authority": "idp", "path": "/jwks" }, "action": action }] }),
        )
    };
    assert!(!parse(doc("exchange")).unwrap().trusted_issuers[0].forward);
    assert!(parse(doc("forward")).unwrap().trusted_issuers[0].forward);
    assert_eq!(err_key(doc("pass")), "trusted_issuers[0].action");
}

#[test]
fn a_key_set_needs_its_path_and_discovery_has_a_default() {
    let issuer = |keys: Value| {
        let issuer = merged(
            json!({ "issuer": "https://i", "algorithms": ["ES256"] }),
            &keys,
        );
        with(json!({ "trusted_issuers": [issuer] }))
    };
    let no_path = issuer(json!({ "jwks_uri": { "cluster": "idp", "authority": "idp" } }));
    assert_eq!(err_key(&no_path), "trusted_issuers[0].jwks_uri.path");
    let c = parse(issuer(
        json!({ "discovery": { "cluster": "idp", "authority": "idp" } }),
    ))
    .unwrap();
    let KeySource::Discovery(d) = &c.trusted_issuers[0].keys else {
        panic!("{:?}", c.trusted_issuers[0].keys)
    };
    assert_eq!(d.path, "/.well-known/openid-configuration");
    let both = issuer(json!({
        "jwks": { "keys": [] }, "discovery": { "cluster": "idp", "authority": "idp" }
    }));
    assert_eq!(err_key(&both), "trusted_issuers[0]");
    let odd = issuer(json!({ "discovery": { "cluster": "idp", "authority": "idp", "path": "x" } }));
    assert_eq!(err_key(&odd), "trusted_issuers[0].discovery.path");
}

#[test]
fn the_authorizer_keys_are_validated() {
    let trust = json!({
        "trusted_issuers": [
            {
                "issuer": "https://idp", "algorithms": ["RS256"],
                "jwks_uri": { "cluster": "idp", "authority": "idp", "path": "/jwks" }
            }
        ]
    });
    let trusted = |extra: Value| with(merged(trust.clone(), &extra));
    let good = trusted(json!({
        "require": [
            {
                "scopes": ["orders:read"],
                "claims": { "tenant": ["acme", "globex"], "realm_access.roles": "admin" }
            }
        ],
        "output": { "claims_to_headers": [{ "claim": "sub", "header": "X-User" }] },
        "routes": [
            {
                "match": { "path_prefix": "/admin" },
                "require": [{ "claims": { "groups": ["admins"] } }]
            },
            { "match": { "path_prefix": "/public" }, "require": [] },
            { "match": { "path_prefix": "/orders" }, "exchange": { "audience": "orders" } }
        ]
    }));
    let c = parse(good).unwrap();
    assert_eq!(c.policies.len(), 3);
    assert_eq!(c.policies[0][0].scopes, ["orders:read"]);
    assert_eq!(c.policies[0][0].claims[0].name, "realm_access.roles");
    assert_eq!(c.policies[0][0].claims[0].values, ["admin"]);
    assert!(c.policies[2].is_empty(), "[] is no policy");
    assert_eq!(c.output.claims_to_headers[0].header, "x-user");
    // A route with only a policy gets a profile of its own with the default's keys.
    let policy_of = |i: usize| match c.routes[i].action {
        RouteAction::Exchange(p) => (c.exchanges[p].policy, c.exchanges[p].audience.clone()),
        RouteAction::Bypass => panic!("an exchange"),
    };
    assert_eq!(policy_of(0), (1, vec![]));
    assert_eq!(policy_of(1), (2, vec![]));
    assert_eq!(policy_of(2), (0, vec!["orders".to_string()]));

    // Without trusted issuers, nothing reads verified claims.
    for (extra, key) in [
        (json!({ "require": [{ "scopes": ["a"] }] }), "require"),
        (
            json!({ "output": { "claims_to_headers": [{ "claim": "sub", "header": "x-user" }] } }),
            "output.claims_to_headers",
        ),
        (
            json!({
                "routes": [{ "match": { "path_prefix": "/a" }, "require": [{ "scopes": ["a"] }] }]
            }),
            "routes[0].require",
        ),
    ] {
        assert_eq!(err_key(with(extra.clone())), key, "{extra}");
    }
    let headers = |list: Value| json!({ "output": { "claims_to_headers": list } });
    for (extra, key) in [
        (json!({ "require": [{}] }), "require[0]"),
        (
            json!({ "require": [{ "scopes": ["a b"] }] }),
            "require[0].scopes",
        ),
        (
            json!({ "require": [{ "scopes": [""] }] }),
            "require[0].scopes",
        ),
        (
            json!({ "require": [{ "claims": { "g": [] } }] }),
            "require[0].claims.g",
        ),
        (
            json!({ "require": [{ "claims": { "a b": ["x"] } }] }),
            "require[0].claims",
        ),
        (json!({ "require": [{ "role": ["x"] }] }), "require[0].role"),
        (
            json!({ "routes": [{ "bypass": true, "require": [] }] }),
            "routes[0]",
        ),
        (
            headers(json!([{ "claim": "sub", "header": "authorization" }])),
            "output.claims_to_headers[0].header",
        ),
        (
            headers(
                json!([{ "claim": "sub", "header": "x" }, { "claim": "email", "header": "X" }]),
            ),
            "output.claims_to_headers[1].header",
        ),
        (
            headers(json!([{ "claim": "sub", "header": "host" }])),
            "output.claims_to_headers[0].header",
        ),
        (
            headers(json!([{ "claim": "", "header": "x" }])),
            "output.claims_to_headers[0].claim",
        ),
    ] {
        assert_eq!(err_key(trusted(extra.clone())), key, "{extra}");
    }
    let many: Vec<Value> = (0..64)
        .map(|i| json!({ "match": { "path_prefix": format!("/p{i}") }, "require": [] }))
        .collect();
    assert_eq!(err_key(trusted(json!({ "routes": many }))), "routes");
}

#[test]
fn introspection_goes_only_to_the_issuer_a_route_names() {
    let intro = |iss: &str| {
        json!({ "issuer": iss, "audiences": ["api://edge"],
                "introspection": { "cluster": "p", "authority": "p.example", "path": "/introspect",
                                   "client_id": "edge", "client_secret_env": "P_SECRET" } })
    };
    let jwt = json!({
        "issuer": "https://idp", "algorithms": ["RS256"],
        "jwks_uri": { "cluster": "idp", "authority": "idp", "path": "/jwks" }
    });
    let env = |n: &str| (n == "P_SECRET").then(|| "from-env".to_string());
    // One introspecting issuer: every exchange's opaque tokens go to it; no algorithms needed.
    let one = with(json!({ "trusted_issuers": [jwt, intro("https://a")] }));
    let c = load(&one, &env).unwrap();
    assert!(c.exchanges.iter().all(|e| e.introspect == Some(1)));
    let i = c.trusted_issuers[1].introspection.as_ref().unwrap();
    assert_eq!((i.timeout_ms, i.cache_s), (2000, 60));
    assert!(
        i.client_auth
            == ClientAuthConfig::Basic {
                id: "edge".into(),
                secret: "from-env".into()
            }
    );
    assert_eq!(c.trusted_issuers[1].keys, KeySource::None);
    assert!(
        !format!("{i:?}").contains("from-env"),
        "Debug shows no secret"
    );
    // Two: refused unless named; a route's choice and a top-level default both work.
    let two = json!({ "trusted_issuers": [intro("https://a"), intro("https://b")] });
    let e = load(with(two.clone()), &env).expect_err("two, none named");
    assert_eq!(e.key, "introspect");
    let loaded = |extra: Value| load(with(merged(two.clone(), &extra)), &env);
    let c = loaded(json!({ "introspect": "https://b" })).unwrap();
    assert_eq!(c.exchanges[0].introspect, Some(1));
    let c = loaded(json!({
        "routes": [
            { "match": { "path_prefix": "/a" }, "introspect": "https://a" },
            { "match": { "path_prefix": "/b" }, "introspect": "https://b" }
        ]
    }))
    .unwrap();
    let intro_of = |i: usize| match c.routes[i].action {
        RouteAction::Exchange(p) => c.exchanges[p].introspect,
        RouteAction::Bypass => None,
    };
    assert_eq!((intro_of(0), intro_of(1)), (Some(0), Some(1)));
    assert_eq!(
        c.exchanges[0].introspect, None,
        "unmatched: shown to nobody"
    );
    let refused = [
        (json!({ "introspect": "https://c" }), "introspect"),
        (json!({ "introspect": "https://idp" }), "introspect"),
        (
            json!({ "routes": [{ "match": { "path_prefix": "/a" }, "introspect": "https://z" }] }),
            "routes[0].introspect",
        ),
        (
            json!({
                "routes": [
                    { "match": { "path_prefix": "/a" }, "bypass": true, "introspect": "https://a" }
                ]
            }),
            "routes[0]",
        ),
    ];
    for (extra, key) in refused {
        let e = loaded(extra.clone()).expect_err(&extra.to_string());
        assert_eq!(e.key, key, "{extra}");
    }
    let bad = |field: Value| {
        let endpoint = json!({
            "cluster": "p", "authority": "p.example", "path": "/i", "client_id": "edge",
            "client_secret": "s"
        });
        let issuer = json!({ "issuer": "https://a", "introspection": merged(endpoint, &field) });
        err_key(with(json!({ "trusted_issuers": [issuer] })))
    };
    let at = "trusted_issuers[0].introspection";
    assert_eq!(bad(json!({ "timeout_ms": 0 })), format!("{at}.timeout_ms"));
    assert_eq!(bad(json!({ "cache_s": 86401 })), format!("{at}.cache_s"));
    assert_eq!(
        bad(json!({ "client_auth": "private_key_jwt" })),
        format!("{at}.client_secret")
    );
    assert_eq!(
        bad(json!({ "client_auth": "magic" })),
        format!("{at}.client_auth")
    );
    assert_eq!(bad(json!({ "user": "x" })), format!("{at}.user"));
    let no_secret = json!({
        "trusted_issuers": [
            {
                "issuer": "https://a",
                "introspection": {
                    "cluster": "p", "authority": "p", "path": "/i", "client_id": "edge"
                }
            }
        ]
    });
    assert!(err_key(with(no_secret)).starts_with(at));
    let no_path = json!({
        "trusted_issuers": [
            {
                "issuer": "https://a",
                "introspection": {
                    "cluster": "p", "authority": "p", "path": "i", "client_id": "e",
                    "client_secret": "s"
                }
            }
        ]
    });
    assert_eq!(err_key(with(no_path)), format!("{at}.path"));
    // Neither keys nor introspection: nothing could ever verify its tokens.
    let nothing =
        json!({ "trusted_issuers": [{ "issuer": "https://a", "algorithms": ["RS256"] }] });
    assert_eq!(err_key(with(nothing)), "trusted_issuers[0]");
    let no_alg = json!({
        "trusted_issuers": [
            {
                "issuer": "https://a",
                "jwks_uri": { "cluster": "idp", "authority": "idp", "path": "/jwks" }
            }
        ]
    });
    assert_eq!(err_key(with(no_alg)), "trusted_issuers[0].algorithms");
}

/// A further token service, its secret from the environment.
fn partner() -> Value {
    json!({
        "token_services": {
            "partner": {
                "cluster": "partner", "authority": "as.partner.example", "token_path": "/token",
                "client_id": "edge", "client_secret_env": "PARTNER_SECRET"
            }
        }
    })
}

#[test]
fn token_services_chains_and_metadata_are_validated() {
    let env = |name: &str| (name == "PARTNER_SECRET").then(|| "pw".to_string());
    let ok = |extra: Value| load(with(merged(partner(), &extra)), &env);
    let refused = |extra: Value| ok(extra).expect_err("must be refused").key;
    let c = ok(json!({
        "routes": [{ "match": { "path_prefix": "/p" }, "exchange": { "sts": "partner" } }]
    }))
    .unwrap();
    assert_eq!(c.exchanges[1].service, 1);
    assert_eq!(
        (c.service_name(1), c.service(1).cluster.as_str()),
        ("partner", "partner")
    );
    assert_eq!(c.exchanges[0].service, 0);
    assert_eq!(
        refused(json!({ "exchange": { "sts": "nobody" } })),
        "exchange.sts",
        "an exchange names a service that exists"
    );
    assert_eq!(
        load(with(partner()), &no_env).unwrap_err().key,
        "token_services.partner.client_secret_env",
        "a service's keys are named under it"
    );
    for name in ["sts", "Partner", "a.b", ""] {
        let service =
            json!({ "cluster": "p", "authority": "p", "token_path": "/t", "client_auth": "none" });
        let json = with(json!({ "token_services": { name: service } }));
        assert_eq!(err_key(&json), "token_services", "{name}");
    }
    assert_eq!(
        refused(json!({ "exchange": { "then": { "grant": "jwt_bearer" } } })),
        "exchange.then.sts"
    );
    assert_eq!(
        refused(json!({ "exchange": { "then": { "sts": "partner" } } })),
        "exchange.then.grant"
    );
    assert_eq!(
        refused(json!({
            "exchange": { "then": { "sts": "partner", "grant": "ciba", "scope": "openid" } }
        })),
        "exchange.then.grant"
    );
    assert_eq!(
        refused(json!({
            "exchange": {
                "then": {
                    "sts": "partner", "grant": "jwt_bearer",
                    "then": { "sts": "sts", "grant": "jwt_bearer" }
                }
            }
        })),
        "exchange.then.then",
        "at most two hops"
    );
    assert_eq!(
        refused(json!({
            "exchange": { "then": { "sts": "partner", "grant": "jwt_bearer", "audience": "x" } }
        })),
        "exchange.then.audience",
        "a jwt_bearer hop takes the keys of its grant"
    );
    assert_eq!(
        refused(json!({
            "exchange": {
                "then": {
                    "sts": "partner", "grant": "token_exchange",
                    "actor": { "source": "client_credentials" }
                }
            }
        })),
        "exchange.then.actor"
    );
    let chain = ok(json!({
        "exchange": {
            "requested_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "then": { "sts": "partner", "grant": "jwt_bearer", "scope": "read" }
        }
    }))
    .unwrap();
    let then = chain.exchanges[0].then.as_deref().unwrap();
    assert_eq!(
        (then.service, then.grant, then.scope.as_deref()),
        (1, Grant::JwtBearer, Some("read"))
    );
    assert!(then.audience.is_empty(), "a second hop inherits nothing");
    // A route's own exchange keeps the default's chain unless it says otherwise.
    let routed = ok(json!({
        "exchange": { "then": { "sts": "partner", "grant": "jwt_bearer" } },
        "routes": [
            { "match": { "path_prefix": "/a" }, "exchange": { "scope": "x" } },
            { "match": { "path_prefix": "/b" }, "exchange": { "then": null } }
        ]
    }))
    .unwrap();
    assert!(routed.exchanges[1].then.is_some());
    assert!(routed.exchanges[2].then.is_none());
    let ciba = json!({
        "token_services": {
            "partner": {
                "cluster": "p", "authority": "p", "token_path": "/t", "client_auth": "none",
                "ciba": { "path": "/bc" }
            }
        }
    });
    assert_eq!(err_key(with(ciba)), "token_services.partner.ciba");

    let metadata = |pr: Value| parse(with(json!({ "protected_resource": pr })));
    let m = metadata(json!({ "resource": "https://mcp.example.com/tools" })).unwrap();
    let pr = m.protected_resource.as_ref().unwrap();
    assert_eq!(
        pr.path, "/.well-known/oauth-protected-resource/tools",
        "RFC 9728 §3.1"
    );
    assert_eq!(pr.origin, "https://mcp.example.com");
    for bad in [
        json!({ "resource": "http://mcp.example.com" }),
        json!({ "resource": "https://mcp.example.com#x" }),
        json!({ "resource": "https://" }),
    ] {
        assert_eq!(
            metadata(bad.clone()).unwrap_err().key,
            "protected_resource.resource",
            "{bad}"
        );
    }
    assert_eq!(
        metadata(json!({ "resource": "https://m", "path": "no-slash" }))
            .unwrap_err()
            .key,
        "protected_resource.path"
    );
    assert_eq!(
        metadata(json!({ "resource": "https://m", "authorization_servers": ["not a uri"] }))
            .unwrap_err()
            .key,
        "protected_resource.authorization_servers"
    );
}
