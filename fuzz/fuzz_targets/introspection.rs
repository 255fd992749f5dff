//! Any status and body as an introspection answer: only an answer that says `"active": true`,
//! names the issuer (or no one), names the audience and is neither expired nor early makes a
//! token trusted; reading never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use token_exchange_wasm::config::{KeySource, TrustedIssuer};
use token_exchange_wasm::host::HttpAnswer;
use token_exchange_wasm::introspection::judge;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first() {
        Some((s, rest)) => (Some(if *s < 128 { 200 } else { 100 + u16::from(*s) * 2 }), rest.to_vec()),
        None => (None, Vec::new()),
    };
    let answer = HttpAnswer { status, body, too_large: false };
    let issuer = TrustedIssuer {
        issuer: "https://partner.example".into(),
        audiences: vec!["api://edge".into()],
        algorithms: Vec::new(),
        leeway_s: 30,
        keys: KeySource::None,
        forward: false,
        introspection: None,
        enforce_binding: true,
    };
    if let Ok(active) = judge(&answer, &issuer, NOW) {
        assert_eq!(status, Some(200));
        assert_eq!(active.claims.get("active"), Some(&Value::Bool(true)));
        let iss = active.claims.get("iss");
        assert!(iss.is_none() || iss == Some(&Value::String(issuer.issuer.clone())));
        let aud = |v: &Value| v.as_str() == Some("api://edge");
        match active.claims.get("aud") {
            Some(Value::Array(list)) => assert!(list.iter().any(aud)),
            Some(v) => assert!(aud(v)),
            None => panic!("no audience"),
        }
        assert!(active.exp.is_none_or(|e| NOW < e + 30));
        assert_eq!(active.exp, active.claims.get("exp").and_then(Value::as_u64));
    }
});
