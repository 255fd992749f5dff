//! Any request path through normalization and route selection: no panic, a bypass only ever
//! for a path that every reading a server might take (all percent-encodings decoded, backslashes
//! as slashes, `;` parameters dropped, slashes merged, dot segments removed) puts under the
//! bypassed prefix, and a path the most lenient server serves under the restricted prefix
//! always meets that rule (or is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_wasm::config::{Route, RouteAction, RouteMatch};
use token_exchange_wasm::host::{RequestHeaders, Unusable};
use token_exchange_wasm::path::normalize;
use token_exchange_wasm::route::Routes;

struct OnePath<'a>(&'a str);

impl RequestHeaders for OnePath<'_> {
    fn header(&self, name: &str) -> Option<String> {
        (name == ":path").then(|| self.0.to_string())
    }
    fn token_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        Ok(self.header(name))
    }
    fn single_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        Ok(self.header(name))
    }
    fn peer_certificate_digest(&self) -> Option<String> {
        None
    }
    fn headers_among(&self, _: &[&str]) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The most lenient server: decodes everything, then resolves.
fn lenient(raw: &str) -> String {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'\\', _, _) => {
                out.push(b'/');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).replace('\\', "/");
    let mut stack: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg.split(';').next().unwrap_or("") {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    format!("/{}", stack.join("/"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(routes) = Routes::compile(&[
        Route {
            matcher: RouteMatch {
                path_prefix: Some("/healthz".into()),
                ..RouteMatch::default()
            },
            action: RouteAction::Bypass,
        },
        Route {
            matcher: RouteMatch {
                path_prefix: Some("/orders".into()),
                ..RouteMatch::default()
            },
            action: RouteAction::Exchange(1),
        },
    ]) else {
        return;
    };
    let n = normalize(raw);
    assert!(n.path.starts_with('/'));
    if n.plain {
        let again = normalize(&n.path);
        assert!(again.plain && again.path == n.path, "not idempotent: {raw:?}");
    }
    let seen = lenient(raw);
    match routes.select(&OnePath(raw)) {
        Ok(RouteAction::Bypass) => {
            assert!(n.plain, "bypass of a path that is not plain: {raw:?}");
            assert!(
                seen == "/healthz" || seen.starts_with("/healthz/"),
                "bypass of {raw:?}, which a server may read as {seen:?}"
            );
        }
        Ok(action) => {
            let restricted = seen == "/orders" || seen.starts_with("/orders/");
            assert!(
                !restricted || action == RouteAction::Exchange(1),
                "{raw:?} escaped the /orders rule, though a server may read it as {seen:?}"
            );
        }
        Err(_) => assert!(!n.plain, "a plain path refused: {raw:?}"),
    }
});
