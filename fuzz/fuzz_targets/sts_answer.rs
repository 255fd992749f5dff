//! Any status and body as an STS answer: a token is always header-safe, and reading never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::host::HttpAnswer;
use token_exchange_wasm::sts::{parse_answer, IssuedType};

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data.split_first() {
        Some((s, rest)) => (Some(100 + u16::from(*s) * 2), rest.to_vec()),
        None => (None, Vec::new()),
    };
    let answer = HttpAnswer { status, body, too_large: false };
    for issued in [IssuedType::Required(None), IssuedType::Required(Some("urn:x")), IssuedType::NotExpected] {
        if let Ok(minted) = parse_answer(&answer, issued) {
            assert!(minted.access_token.bytes().all(|b| (0x21..0x7f).contains(&b)));
        }
    }
});
