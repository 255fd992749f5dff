//! Any bytes as the plugin configuration, validated then compiled: refused or accepted, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::config::Config;
use token_exchange_wasm::engine::Engine;

fuzz_target!(|data: &[u8]| {
    let env = |name: &str| (name == "SECRET").then(|| "s3cret".to_string());
    if let Ok(config) = Config::parse(data, &env) {
        let _ = config.summary();
        let _ = Engine::new(config);
    }
});
