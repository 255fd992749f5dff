//! The optional features, `trusted-issuers` and `private-key-jwt` (both in the default build): a
//! build either has a feature and loads configuration that uses it, or refuses that
//! configuration at load, naming the key and the feature. `make test` runs this file in the
//! default build and in the build without them (`make lean`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use token_exchange_wasm::config::{Config, ConfigError};
use token_exchange_wasm::engine::Engine;

const STS: &str = r#""sts": {"cluster": "sts", "authority": "sts.example.com", "token_path": "/token", "client_id": "edge", "client_secret": "x"}"#;

/// A P-256 public key (public material only).
const JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": "9tOX7gO9cuOjJa935O-GN1TrdHrThGvAU92WykyJzF0", "y": "qMy3vl1jeqc0Eq6rJsAjJwwlacEvfg_wQ_cXxfF1Pko"}]}"#;

/// As the filter loads a configuration: validated, then compiled.
fn load(json: &str) -> Result<Engine, ConfigError> {
    Config::parse(json.as_bytes(), &|_| None).and_then(Engine::new)
}

/// A PEM private key for `private_key_jwt` (a build without the feature never reads it).
fn signing_key_pem() -> String {
    #[cfg(feature = "private-key-jwt")]
    {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    }
    #[cfg(not(feature = "private-key-jwt"))]
    {
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n".to_string()
    }
}

/// `load` succeeds exactly when `feature` is built in; otherwise the error names `key` and the
/// feature.
fn expect_feature(json: &str, built_in: bool, feature: &str, key: &str) {
    match load(json) {
        Ok(_) => assert!(built_in, "loaded without the {feature} feature: {json}"),
        Err(e) => {
            assert!(!built_in, "refused with the {feature} feature: {e}");
            assert_eq!(e.key, key);
            assert!(e.reason.contains(&format!("{feature} feature")), "{e}");
        }
    }
}

#[test]
fn the_exchange_alone_loads_in_every_build() {
    let json = format!(
        r#"{{{STS}, "exchange": {{"audience": "api", "actor": {{"source": "client_credentials", "scope": "actor"}}}},
            "routes": [{{"match": {{"path_prefix": "/health"}}, "bypass": true}}]}}"#
    );
    load(&json).unwrap();
}

#[test]
fn trusted_issuers_load_only_with_their_feature() {
    let json = format!(
        r#"{{{STS}, "trusted_issuers": [{{"issuer": "https://idp.example.com", "algorithms": ["ES256"], "jwks": {JWKS}}}]}}"#
    );
    let built_in = cfg!(feature = "trusted-issuers");
    expect_feature(&json, built_in, "trusted-issuers", "trusted_issuers");
}

#[test]
fn private_key_jwt_loads_only_with_its_feature() {
    let pem = serde_json::to_string(&signing_key_pem()).unwrap();
    let json = format!(
        r#"{{"sts": {{"cluster": "sts", "authority": "sts.example.com", "token_path": "/token", "client_id": "edge",
            "client_auth": "private_key_jwt", "private_key": {{"pem": {pem}, "alg": "ES256"}}}}}}"#
    );
    let built_in = cfg!(feature = "private-key-jwt");
    expect_feature(&json, built_in, "private-key-jwt", "sts.private_key");
}

#[test]
fn ciba_without_trusted_issuers_takes_the_subject_token_as_its_hint() {
    // Every build: the subject token itself as `login_hint_token` or `id_token_hint`.
    for hint in ["login_hint_token", "id_token_hint"] {
        let json = format!(
            r#"{{"sts": {{"cluster": "sts", "authority": "sts.example.com", "token_path": "/token", "client_id": "edge",
                "client_secret": "x", "ciba": {{"path": "/bc", "login_hint": "{hint}"}}}},
                "exchange": {{"grant": "ciba", "scope": "openid orders"}}}}"#
        );
        load(&json).unwrap();
    }
    // The default hint, a verified claim (`sub`), needs trusted issuers, which a lean build lacks.
    let json = r#"{"sts": {"cluster": "sts", "authority": "sts.example.com", "token_path": "/token", "client_id": "edge",
        "client_secret": "x", "ciba": {"path": "/bc"}}, "exchange": {"grant": "ciba", "scope": "openid orders"}}"#;
    let Err(e) = load(json) else {
        panic!("a claim as login_hint loaded without trusted issuers")
    };
    assert_eq!(e.key, "sts.ciba.login_hint", "{e}");
}
