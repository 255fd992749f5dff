//! Any header value and prefix through token extraction: a token is always a b64token of the
//! allowed size, and extraction never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::token::{extract, Extracted};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (prefix, value) = text.split_once('\n').unwrap_or(("Bearer ", text));
    if let Extracted::Token(t) = extract(Some(value), prefix, 64) {
        assert!(!t.is_empty() && t.len() <= 64);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));
    }
});
