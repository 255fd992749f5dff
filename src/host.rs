//! The seam between the filter's logic and the proxy: the [`Host`] trait (clock, shared data,
//! HTTP callouts, metrics, logs) and the request's headers, plus `FakeHost`, a stateful host
//! for tests that records what a real one would see.

use crate::metrics::Metric;

/// An HTTP call to a cluster (the STS, a JWKS endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// Envoy cluster.
    pub cluster: String,
    /// Request headers, pseudo-headers first.
    pub headers: Vec<(String, String)>,
    /// Body; empty for none.
    pub body: String,
    /// Timeout in milliseconds.
    pub timeout_ms: u64,
}

/// Largest answer body the filter reads from a callout.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What the host handed back for an HTTP call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// `:status`, absent when the call failed (reset, no upstream).
    pub status: Option<u16>,
    /// The body, empty when it was larger than [`MAX_ANSWER_BYTES`].
    pub body: Vec<u8>,
    /// The body was larger than [`MAX_ANSWER_BYTES`] and was not read.
    pub too_large: bool,
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Per-request detail.
    Debug,
    /// Start-up and configuration.
    Info,
    /// Something the operator should look at.
    Warn,
}

/// A host call that failed; the text says which and why, without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

/// What the filter needs from the proxy, per worker.
pub trait Host {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// The value stored under `key` in shared data with its CAS version, if any.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` under `key` in shared data; with `cas`, only if the entry still has that
    /// version (compare-and-swap).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;
    /// Dispatches an HTTP call; the answer comes back later with the returned token.
    fn dispatch(&self, call: &HttpCall) -> Result<u32, HostError>;
    /// Adds `value` to a counter, or records it in a histogram.
    fn metric(&self, metric: Metric, value: u64);
    /// Whether debug lines would be written (so callers can skip building them).
    fn debug_enabled(&self) -> bool;
    /// Writes a log line.
    fn log(&self, level: LogLevel, message: &str);
}

/// Why a header that carries a credential cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// The header appears more than once.
    Repeated,
    /// Its value is not UTF-8 text (Envoy passes obs-text bytes ≥ 0x80 on).
    NotText,
}

/// Read access to the current request's headers.
pub trait RequestHeaders {
    /// The value of a header (lower-case name; pseudo-headers like `:path` included); `None`
    /// when absent or not UTF-8 text. With repeated copies, the host may show only the first.
    fn header(&self, name: &str) -> Option<String>;
    /// The value of a header that carries a credential: `Err(NotText)` when it is not UTF-8.
    /// With repeated copies, the host may show only the first (or join them, as Envoy does
    /// with `authorization`).
    fn token_header(&self, name: &str) -> Result<Option<String>, Unusable>;
    /// The value of a credential header that must appear at most once: `Err(Repeated)` when it
    /// is repeated, `Err(NotText)` when its value is not UTF-8.
    fn single_header(&self, name: &str) -> Result<Option<String>, Unusable>;
    /// The SHA-256 digest of the downstream connection's client certificate, hex (Envoy's
    /// `connection.sha256_peer_certificate_digest`); `None` without one.
    fn peer_certificate_digest(&self) -> Option<String>;
    /// The first value of each header among `names` the request has, as text, in one read.
    fn headers_among(&self, names: &[&str]) -> Vec<(String, String)>;
}

/// The headers among `names` in `pairs` (name, value bytes): the first copy of each, text only.
pub fn among<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    names: &[&str],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (n, v) in pairs {
        let Some(name) = names.iter().find(|w| n.eq_ignore_ascii_case(w.as_bytes())) else {
            continue;
        };
        if out.iter().any(|(o, _)| o == name) {
            continue;
        }
        if let Ok(value) = text(v.to_vec()) {
            out.push((name.to_string(), value));
        }
    }
    out
}

/// Where a test request's headers hold its connection's client certificate digest.
#[cfg(test)]
pub const TEST_PEER_DIGEST: &str = "connection.sha256_peer_certificate_digest";

/// A header value as text, or why not: the one conversion from the host's bytes.
pub fn text(value: Vec<u8>) -> Result<String, Unusable> {
    String::from_utf8(value).map_err(|_| Unusable::NotText)
}

/// The one copy of header `name` in `pairs` (name, value bytes), as text.
pub fn single_of<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    name: &str,
) -> Result<Option<String>, Unusable> {
    let mut copies = pairs
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()));
    match (copies.next(), copies.next()) {
        (_, Some(_)) => Err(Unusable::Repeated),
        (Some((_, v)), None) => text(v.to_vec()).map(Some),
        (None, None) => Ok(None),
    }
}

/// Serializes header pairs the way the proxy-wasm ABI reads them (see [`parse_map`]).
pub fn serialize_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 10 + n.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend(len(pairs.len()));
    for (n, v) in pairs {
        out.extend(len(n.len()));
        out.extend(len(v.len()));
    }
    for (n, v) in pairs {
        out.extend(n.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

/// Reads a header map as the proxy-wasm ABI serializes it (a count, then each name and value
/// length as little-endian `u32`, then each name and value followed by a NUL). `None` when the
/// bytes do not hold such a map; never panics, whatever the bytes.
pub fn parse_map(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let count = word(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut take = |len: usize| -> Option<&[u8]> {
        let end = data.checked_add(len)?;
        let part = bytes.get(data..end)?;
        if bytes.get(end) != Some(&0) {
            return None;
        }
        data = end + 1;
        Some(part)
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name_len = word(4 + i * 8)?;
        let value_len = word(8 + i * 8)?;
        let name = take(name_len)?;
        let value = take(value_len)?;
        out.push((name, value));
    }
    Some(out)
}

#[cfg(test)]
pub use fake::{FakeHost, RawHeaders};

#[cfg(test)]
mod fake {
    use std::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    /// A host that keeps shared data in memory, records dispatched calls, metrics and logs, and
    /// lets a test move its clock.
    #[derive(Default)]
    pub struct FakeHost {
        /// Current time, ms since the epoch.
        pub now: Cell<u64>,
        /// Shared data with CAS versions.
        pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        /// Every dispatched call with its token.
        pub calls: RefCell<Vec<(u32, HttpCall)>>,
        /// Make the next dispatches fail.
        pub refuse_dispatch: Cell<bool>,
        /// Counter totals and histogram sums.
        pub metrics: RefCell<BTreeMap<Metric, u64>>,
        /// Log lines written.
        pub logs: RefCell<Vec<(LogLevel, String)>>,
        /// How many shared-data reads were made.
        pub reads: Cell<u64>,
    }

    impl FakeHost {
        /// A host whose clock reads `now_ms`.
        pub fn at(now_ms: u64) -> Self {
            let h = FakeHost::default();
            h.now.set(now_ms);
            h
        }

        /// Moves the clock forward.
        pub fn advance_ms(&self, ms: u64) {
            self.now.set(self.now.get() + ms);
        }

        /// A metric's value (0 when never touched).
        pub fn metric_value(&self, m: Metric) -> u64 {
            self.metrics.borrow().get(&m).copied().unwrap_or(0)
        }

        /// The calls dispatched to `cluster`.
        pub fn calls_to(&self, cluster: &str) -> Vec<(u32, HttpCall)> {
            self.calls
                .borrow()
                .iter()
                .filter(|(_, c)| c.cluster == cluster)
                .cloned()
                .collect()
        }

        /// The token of the last dispatched call.
        pub fn last_call(&self) -> u32 {
            self.calls
                .borrow()
                .last()
                .map(|c| c.0)
                .expect("a call was dispatched")
        }
    }

    impl Host for FakeHost {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
        fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.reads.set(self.reads.get() + 1);
            self.shared.borrow().get(key).cloned()
        }
        fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
            let mut shared = self.shared.borrow_mut();
            let version = shared.get(key).map_or(0, |(_, v)| *v);
            if cas.is_some_and(|c| c != version) {
                return Err(HostError("CAS mismatch".into()));
            }
            shared.insert(key.to_string(), (value.to_vec(), version + 1));
            Ok(())
        }
        fn dispatch(&self, request: &HttpCall) -> Result<u32, HostError> {
            if self.refuse_dispatch.get() {
                return Err(HostError("cluster not found".into()));
            }
            let mut calls = self.calls.borrow_mut();
            let token = calls.len() as u32 + 100;
            calls.push((token, request.clone()));
            Ok(token)
        }
        fn metric(&self, metric: Metric, value: u64) {
            *self.metrics.borrow_mut().entry(metric).or_default() += value;
        }
        fn debug_enabled(&self) -> bool {
            true
        }
        fn log(&self, level: LogLevel, message: &str) {
            self.logs.borrow_mut().push((level, message.to_string()));
        }
    }

    impl RequestHeaders for [(&str, &str)] {
        fn header(&self, name: &str) -> Option<String> {
            self.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        }
        fn token_header(&self, name: &str) -> Result<Option<String>, Unusable> {
            Ok(self.header(name))
        }
        fn single_header(&self, name: &str) -> Result<Option<String>, Unusable> {
            single_of(self.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), name)
        }
        fn peer_certificate_digest(&self) -> Option<String> {
            self.header(super::TEST_PEER_DIGEST)
        }
        fn headers_among(&self, names: &[&str]) -> Vec<(String, String)> {
            among(
                self.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                names,
            )
        }
    }

    /// A request whose header values are raw bytes, as a client may send them.
    pub struct RawHeaders<'a>(pub &'a [(&'a str, &'a [u8])]);

    impl RequestHeaders for RawHeaders<'_> {
        fn header(&self, name: &str) -> Option<String> {
            self.token_header(name).ok().flatten()
        }
        fn token_header(&self, name: &str) -> Result<Option<String>, Unusable> {
            match self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, v)) => text(v.to_vec()).map(Some),
                None => Ok(None),
            }
        }
        fn single_header(&self, name: &str) -> Result<Option<String>, Unusable> {
            single_of(self.0.iter().map(|(n, v)| (n.as_bytes(), *v)), name)
        }
        fn peer_certificate_digest(&self) -> Option<String> {
            None
        }
        fn headers_among(&self, names: &[&str]) -> Vec<(String, String)> {
            among(self.0.iter().map(|(n, v)| (n.as_bytes(), *v)), names)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serialized_map_reads_back_with_any_bytes_in_its_values() {
        let pairs = [
            ("authorization", "Bearer t"),
            ("x-empty", ""),
            (":path", "/ü"),
        ];
        let bytes = serialize_map(&pairs);
        let back: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(parse_map(&bytes).unwrap(), back);
        // Values that are not text (as Envoy passes obs-text on) read back as they were.
        let mut latin = serialize_map(&[("cookie", "s=e")]);
        let at = latin.len() - 2;
        latin[at] = 0xe9;
        assert_eq!(
            parse_map(&latin).unwrap(),
            vec![(&b"cookie"[..], &b"s=\xe9"[..])]
        );
        assert_eq!(parse_map(&[]).unwrap(), Vec::<(&[u8], &[u8])>::new());
    }

    #[test]
    fn a_broken_map_is_none_never_a_panic() {
        let bytes = serialize_map(&[("a", "bc"), ("d", "")]);
        // Every truncation, and a count or length past the end.
        for cut in 1..bytes.len() {
            assert_eq!(parse_map(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_map(&huge), None);
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_map(&long), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_conversion() {
        // A cheap property test: a pseudo-random walk over byte strings.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8 // truncation intended
                })
                .collect();
            let _ = parse_map(&bytes);
            let as_text = text(bytes.clone());
            assert_eq!(as_text.is_ok(), std::str::from_utf8(&bytes).is_ok());
            let one = [(&b"authorization"[..], &bytes[..])];
            let got = single_of(one.iter().copied(), "Authorization");
            assert_eq!(got.is_ok(), as_text.is_ok());
        }
    }

    #[test]
    fn a_repeated_or_non_text_credential_header_is_unusable() {
        let two: [(&[u8], &[u8]); 2] = [(b"x-token", b"a"), (b"X-Token", b"b")];
        assert_eq!(single_of(two, "x-token"), Err(Unusable::Repeated));
        let latin: [(&[u8], &[u8]); 2] = [(b"cookie", b"\xe9"), (b"x-token", b"a")];
        assert_eq!(single_of(latin, "x-token"), Ok(Some("a".into())));
        let bad: [(&[u8], &[u8]); 1] = [(b"x-token", b"\xff")];
        assert_eq!(single_of(bad, "x-token"), Err(Unusable::NotText));
    }
}
