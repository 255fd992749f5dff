//! Any bytes as the plugin configuration, validated then compiled: refused or accepted, never a
//! panic; a refusal speaks the contract's words (no Rust type, no serde position) and never
//! shows the secret of the environment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::config::Config;
use token_exchange_wasm::engine::Engine;

fuzz_target!(|data: &[u8]| {
    let env = |name: &str| (name == "SECRET").then(|| "s3cret".to_string());
    match Config::parse(data, &env) {
        Ok(config) => {
            let _ = config.summary();
            let _ = Engine::new(config);
        }
        Err(e) => {
            // What serde said, past the quoted text near a JSON mistake (that quotes the input).
            let said = match e.reason.strip_prefix("not valid JSON near `") {
                Some(rest) => rest.rsplit("`: ").next().unwrap_or("").to_string(),
                None => e.reason,
            };
            for jargon in ["u64", "u32", "usize", "variant", "struct ", "invalid type", " at line "] {
                assert!(!said.contains(jargon), "{said}");
            }
            // The secret from the environment is never shown (the input itself may hold the word).
            let written = data.windows(6).any(|w| w == b"s3cret");
            assert!(written || !said.contains("s3cret"), "{said}");
        }
    }
});
