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

/// Read access to the current request's headers.
pub trait RequestHeaders {
    /// The value of a header (lower-case name; pseudo-headers like `:path` included). With
    /// repeated copies, the host may show only the first.
    fn header(&self, name: &str) -> Option<String>;
    /// The value of a header that must appear at most once: `Err(())` when it is repeated.
    #[allow(clippy::result_unit_err)]
    fn single_header(&self, name: &str) -> Result<Option<String>, ()>;
}

#[cfg(test)]
pub use fake::FakeHost;

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
        fn single_header(&self, name: &str) -> Result<Option<String>, ()> {
            let mut copies = self.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
            match (copies.next(), copies.next()) {
                (_, Some(_)) => Err(()),
                (one, None) => Ok(one.map(|(_, v)| v.to_string())),
            }
        }
    }
}
