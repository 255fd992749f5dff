//! Any string as a subject JWT against a trusted issuer with an inline key set: verification
//! answers, never panics, and never accepts a token that was not signed by the key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::config::{Config, KeySource};
use token_exchange_wasm::jwks::KeySet;
use token_exchange_wasm::token::{unverified_act_sub, unverified_exp, verify_jwt, JwtCheck};

const ED_KEY: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k"}"#;

fn config() -> &'static (Config, KeySet) {
    static CONFIG: OnceLock<(Config, KeySet)> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let json = format!(
            r#"{{"sts":{{"cluster":"s","authority":"a","token_path":"/t","client_auth":"none"}},
                "trusted_issuers":[{{"issuer":"https://idp","algorithms":["RS256","ES256","EdDSA"],"jwks":{{"keys":[{ED_KEY}]}}}}]}}"#
        );
        let c = match Config::parse(json.as_bytes(), &|_| None) {
            Ok(c) => c,
            Err(e) => panic!("fuzz config: {e}"),
        };
        let KeySource::Inline(doc) = &c.trusted_issuers[0].keys else { panic!("inline keys") };
        let set = KeySet::from_value(doc).expect("key set");
        (c, set)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = unverified_exp(token);
    let _ = unverified_act_sub(token);
    let (c, set) = config();
    let check = verify_jwt(token, &c.trusted_issuers, |_| Some(set), 1_800_000_000);
    // No private key exists for this public key in the fuzzer: nothing may verify.
    assert!(!matches!(check, JwtCheck::Valid { .. }), "forged token accepted");
});
