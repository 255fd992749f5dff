//! Any string as a DPoP proof for one request and token: checking answers, never panics, and
//! accepts only a proof that, read independently, is typed `dpop+jwt`, signed with an
//! allow-listed asymmetric algorithm, carries a public key whose thumbprint it reports, and
//! names this method, this URI, this moment and this token.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use token_exchange_wasm::config::{DpopConfig, JwsAlg};
use token_exchange_wasm::dpop::{token_hash, verify, Target};

const NOW: u64 = 1_800_000_000;
const TOKEN: &str = "eyJ.bound.token";

fn part(proof: &str, i: usize) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(proof.split('.').nth(i)?).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(proof) = std::str::from_utf8(data) else { return };
    let rules = DpopConfig {
        required: false,
        algorithms: vec![JwsAlg::Es256, JwsAlg::Rs256, JwsAlg::Ps256, JwsAlg::EdDsa],
        max_age_s: 60,
        clock_skew_s: 5,
        origins: vec!["https://api.example".into()],
        replay_entries: 1024,
    };
    let target = Target {
        method: "GET",
        scheme: "http",
        authority: "127.0.0.1:10000",
        path: "/orders/1?x=1",
        token: TOKEN,
    };
    let Ok(proven) = verify(proof, &target, &rules, NOW) else { return };
    let (Some(header), Some(claims)) = (part(proof, 0), part(proof, 1)) else {
        panic!("accepted a proof whose parts do not read as JSON");
    };
    let typ = header["typ"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(typ == "dpop+jwt" || typ == "application/dpop+jwt", "typ {typ}");
    let alg = header["alg"].as_str().unwrap_or("");
    assert!(["ES256", "RS256", "PS256", "EdDSA"].contains(&alg), "alg {alg}");
    assert!(header["jwk"].get("d").is_none(), "a private key accepted");
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["ath"].as_str(), Some(token_hash(TOKEN).as_str()));
    let iat = claims["iat"].as_u64().expect("iat");
    assert!(iat + 65 >= NOW && iat <= NOW + 5, "iat {iat}");
    assert_eq!(proven.iat, iat);
    assert_eq!(claims["jti"].as_str(), Some(proven.jti.as_str()));
    let htu = claims["htu"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(htu.starts_with("http://127.0.0.1:10000/") || htu.starts_with("https://api.example"), "htu {htu}");
});
