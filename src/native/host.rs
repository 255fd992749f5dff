//! [`Host`] and [`RequestHeaders`] over Envoy's dynamic-module callbacks: a call goes out on the
//! stream whose hook is running (its answer comes back to that stream), or from the
//! configuration on the main thread when no stream is at hand (the tick, a call's answer that
//! came to the configuration).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

use super::envoy::{self, ConfigPtr, StreamPtr};
use super::{ffi, shared, Calls, Filters};
use crate::host::{self, Host, HostError, HttpCall, LogLevel, RequestHeaders, Unusable};
use crate::metrics::{Metric, MetricKind};

/// The metric ids Envoy gave, in [`Metric::index`] order, and the counts not yet handed to
/// Envoy: counters are summed here and flushed on the tick (as the wasm module does), so a
/// request makes no counter callback.
pub struct Metrics {
    ids: Vec<Option<usize>>,
    pending: Vec<AtomicU64>,
}

impl Metrics {
    /// Defines every metric, and the per-service counters of token services `services`.
    pub fn define(config: ConfigPtr, services: &[String]) -> Self {
        let mut ids: Vec<Option<usize>> = Metric::all()
            .iter()
            .map(|m| config.define(m.name(), m.kind() == MetricKind::Histogram))
            .collect();
        for (_, name) in Metric::per_service(services) {
            ids.push(config.define(&name, false));
        }
        let pending = ids.iter().map(|_| AtomicU64::new(0)).collect();
        Metrics { ids, pending }
    }

    /// Adds to a counter (summed until the flush), or records in a histogram on `stream` (or
    /// the configuration, with no stream at hand).
    pub fn count(&self, stream: Option<StreamPtr>, config: ConfigPtr, metric: Metric, value: u64) {
        let at = metric.index();
        match metric.kind() {
            MetricKind::Counter => {
                if let Some(n) = self.pending.get(at) {
                    n.fetch_add(value, Ordering::Relaxed);
                }
            }
            MetricKind::Histogram => {
                let Some(Some(id)) = self.ids.get(at).copied() else {
                    return;
                };
                match stream {
                    Some(s) => s.count(id, true, value),
                    None => config.count(id, true, value),
                }
            }
        }
    }

    /// Hands the summed counters to Envoy (main thread).
    pub fn flush(&self, config: ConfigPtr) {
        for (n, id) in self.pending.iter().zip(&self.ids) {
            let value = n.swap(0, Ordering::Relaxed);
            if let (true, Some(id)) = (value > 0, id) {
                config.count(*id, false, value);
            }
        }
    }
}

/// The host of one hook: the stream it runs for, if any.
pub struct NativeHost<'a> {
    filters: &'a Filters,
    stream: Option<StreamPtr>,
    engine: Option<u64>,
    calls: RefCell<&'a mut Calls>,
    /// A call went out on the stream (its record must be dropped when the stream ends).
    sent: Cell<bool>,
    debug: bool,
}

impl<'a> NativeHost<'a> {
    /// The host of a hook running for `stream` (or for the configuration) and for the engine
    /// `engine` (`None`: the filter's own), recording the calls it sends in `calls`.
    pub fn new(
        filters: &'a Filters,
        stream: Option<StreamPtr>,
        engine: Option<u64>,
        calls: &'a mut Calls,
    ) -> Self {
        NativeHost {
            filters,
            stream,
            engine,
            calls: RefCell::new(calls),
            sent: Cell::new(false),
            debug: envoy::debug_enabled(),
        }
    }
}

impl NativeHost<'_> {
    /// Whether a call went out on the stream this hook runs for.
    pub fn sent_on_stream(&self) -> bool {
        self.sent.get()
    }
}

impl Host for NativeHost<'_> {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        shared::get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        shared::set(key, value, cas)
    }

    fn dispatch(&self, call: &HttpCall) -> Result<u32, HostError> {
        let (owner, sent) = match self.stream {
            Some(stream) => (stream.0 as usize, stream.callout(call)),
            None => (0, self.filters.envoy.callout(call)),
        };
        let id = sent.map_err(|status| {
            let cluster = &call.cluster;
            HostError(if status == ffi::CLUSTER_NOT_FOUND {
                format!("Envoy has no cluster named {cluster} (add it to the bootstrap's clusters)")
            } else {
                format!("Envoy refused the call to cluster {cluster}: status {status}")
            })
        })?;
        let token = self.filters.token();
        self.calls
            .borrow_mut()
            .insert((owner, id), (self.engine, token));
        self.sent.set(self.sent.get() || self.stream.is_some());
        Ok(token)
    }

    fn metric(&self, metric: Metric, value: u64) {
        let filters = self.filters;
        filters
            .metrics
            .count(self.stream, filters.envoy, metric, value);
    }

    fn debug_enabled(&self) -> bool {
        self.debug
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => ffi::LOG_DEBUG,
            LogLevel::Info => ffi::LOG_INFO,
            LogLevel::Warn => ffi::LOG_WARN,
        };
        envoy::log(level, message);
    }
}

/// The request headers of the stream whose hook is running, read as bytes.
pub struct StreamHeaders(pub StreamPtr);

impl RequestHeaders for StreamHeaders {
    fn header(&self, name: &str) -> Option<String> {
        self.token_header(name).ok().flatten()
    }

    fn token_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        match self
            .0
            .header_values(ffi::REQUEST_HEADERS, name)
            .into_iter()
            .next()
        {
            Some(bytes) => host::text(bytes).map(Some),
            None => Ok(None),
        }
    }

    fn single_header(&self, name: &str) -> Result<Option<String>, Unusable> {
        let values = self.0.header_values(ffi::REQUEST_HEADERS, name);
        host::single_of(values.iter().map(|v| (name.as_bytes(), v.as_slice())), name)
    }

    fn peer_certificate_digest(&self) -> Option<String> {
        let bytes = self.0.peer_certificate_digest()?;
        host::text(bytes).ok().filter(|d| !d.is_empty())
    }

    fn headers_among(&self, names: &[&str]) -> Vec<(String, String)> {
        let pairs = self.0.all_headers(ffi::REQUEST_HEADERS);
        host::among(
            pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
            names,
        )
    }
}
