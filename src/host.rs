//! The seam between the filter's logic and the proxy: the [`Host`] trait (clock, shared data,
//! HTTP callouts, metrics, logs) and the request's headers, plus `FakeHost`, a stateful host
//! for tests that records what a real one would see.

use crate::metrics::Metric;
use crate::sts::StsRequest;

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
    /// The value stored under `key` in shared data, if any.
    fn shared_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key` in shared data.
    fn shared_set(&self, key: &str, value: &[u8]) -> Result<(), HostError>;
    /// Dispatches an HTTP call; the answer comes back later with the returned token.
    fn dispatch(&self, request: &StsRequest) -> Result<u32, HostError>;
    /// Adds `value` to a counter, or records it in a histogram.
    fn metric(&self, metric: Metric, value: u64);
    /// Whether debug lines would be written (so callers can skip building them).
    fn debug_enabled(&self) -> bool;
    /// Writes a log line.
    fn log(&self, level: LogLevel, message: &str);
}

/// Read access to the current request's headers.
pub trait RequestHeaders {
    /// The value of a header (lower-case name; pseudo-headers like `:path` included).
    fn header(&self, name: &str) -> Option<String>;
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
        /// Shared data.
        pub shared: RefCell<HashMap<String, Vec<u8>>>,
        /// Every dispatched call with its token.
        pub calls: RefCell<Vec<(u32, StsRequest)>>,
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
        fn shared_get(&self, key: &str) -> Option<Vec<u8>> {
            self.shared.borrow().get(key).cloned()
        }
        fn shared_set(&self, key: &str, value: &[u8]) -> Result<(), HostError> {
            self.shared
                .borrow_mut()
                .insert(key.to_string(), value.to_vec());
            Ok(())
        }
        fn dispatch(&self, request: &StsRequest) -> Result<u32, HostError> {
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
    }
}
