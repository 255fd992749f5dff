//! Arbitrary bytes through the glue's conversions: as a serialized header map from the host,
//! and as a header value a client sent. Nothing panics; a value is text exactly when it is
//! UTF-8; a subject is only ever cut from text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::config::SubjectTokenConfig;
use token_exchange_wasm::caller;
use token_exchange_wasm::host::{parse_map, single_of, text, RequestHeaders, Unusable};

/// A request whose headers are the given (name, value bytes) pairs.
struct Bytes<'a>(Vec<(&'a [u8], &'a [u8])>);

impl RequestHeaders for Bytes<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.token_header(name).ok().flatten()
    }
    fn token_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        match self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())) {
            Some((_, v)) => text(v.to_vec()).map(Some),
            None => Ok(None),
        }
    }
    fn single_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        single_of(self.0.iter().copied(), name)
    }
    fn peer_certificate_digest(&self) -> Option<String> {
        None
    }
    fn headers_among(&self, names: &[&str]) -> Vec<(String, String)> {
        token_exchange_wasm::host::among(self.0.iter().copied(), names)
    }
}

fuzz_target!(|data: &[u8]| {
    let rules = |header: &str| SubjectTokenConfig {
        header: header.into(),
        prefix: "Bearer ".into(),
        token_type: "urn:x".into(),
        max_bytes: 512,
    };
    // The bytes as a host's serialized map.
    if let Some(pairs) = parse_map(data) {
        let _ = caller::subject(&Bytes(pairs.clone()), &rules("authorization"));
        let _ = caller::dpop_request(&Bytes(pairs.clone()));
        let _ = caller::TraceContext::of(&Bytes(pairs.clone()));
        let _ = caller::subject(&Bytes(pairs), &rules("x-token"));
    }
    // The bytes as one header value.
    let one = Bytes(vec![(&b"authorization"[..], data), (&b"cookie"[..], data)]);
    assert_eq!(text(data.to_vec()).is_ok(), std::str::from_utf8(data).is_ok());
    if let Ok(s) = caller::subject(&one, &rules("authorization")) {
        let value = std::str::from_utf8(data).expect("a subject comes only from text");
        assert!(value.contains(s.token()));
    }
});
