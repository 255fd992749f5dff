//! The native glue: the same [`Engine`](crate::engine::Engine) as an Envoy dynamic module
//! (`make native`). Envoy calls the `envoy_dynamic_module_on_*` hooks of `config.rs` and
//! `stream.rs`; they feed the engine through the [`Host`](crate::host::Host) seam as the wasm
//! glue does, and carry out its verdicts. ARCHITECTURE.md says why one engine per
//! filter configuration, shared by the workers behind one lock, driven by a ticker thread that
//! posts to the main thread. Every hook runs under `catch_unwind`: a fault answers its request
//! 500 and counts in `panics`; a fault while configuring refuses the configuration.

mod config;
mod deliver;
mod envoy;
mod ffi;
mod host;
mod routes;
mod shared;
mod stream;
mod ticker;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::verdict::Verdict;
use envoy::{ConfigPtr, SchedulerPtr};
use host::Metrics;
use routes::RouteEngines;
use ticker::Ticker;

/// What the workers share under one lock: the engines, the requests that stopped and the
/// verdicts waiting for them, and the calls in flight.
struct Shared {
    engines: RouteEngines,
    parked: HashMap<u32, Parked>,
    calls: Calls,
}

/// Envoy's callout id (with the stream that sent it, or 0 for the configuration) → the engine
/// that sent it (`None`: the filter's own) and its token.
type Calls = HashMap<(usize, u64), (Option<u64>, u32)>;

/// A request that stopped: its worker's scheduler and the verdicts posted to it.
struct Parked {
    scheduler: SchedulerPtr,
    pending: Vec<Verdict>,
}

/// One filter configuration (`envoy_dynamic_module_type_http_filter_config_module_ptr`).
struct Filters {
    envoy: ConfigPtr,
    shared: Mutex<Shared>,
    metrics: Metrics,
    next_ctx: AtomicU32,
    next_token: AtomicU32,
    ticker: Option<Ticker>,
}

/// One request (`envoy_dynamic_module_type_http_filter_module_ptr`).
struct Stream {
    filters: *const Filters,
    ctx: u32,
    /// Envoy's side of it, as the key of the calls it sent.
    envoy: usize,
    /// The engine of its Envoy route's rule, if it has one.
    engine: std::cell::Cell<Option<u64>>,
    /// A call went out on it, so its calls' records go when it ends.
    sent: std::cell::Cell<bool>,
}

impl Shared {
    /// Its parts, each borrowed on its own: the engines, the calls in flight, the parked
    /// requests.
    fn parts(&mut self) -> (&mut RouteEngines, &mut Calls, &mut HashMap<u32, Parked>) {
        (&mut self.engines, &mut self.calls, &mut self.parked)
    }
}

impl Filters {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token(&self) -> u32 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }
}

/// Runs a hook body; a panic becomes `fallback()` instead of unwinding into Envoy.
fn contained<T>(body: impl FnOnce() -> T, fallback: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| fallback())
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    contained(
        || {
            envoy::log(
                ffi::LOG_INFO,
                &format!(
                    "token-exchange native module {} built for Envoy {} (dynamic-module ABI {})",
                    env!("CARGO_PKG_VERSION"),
                    ffi::ENVOY_VERSION,
                    String::from_utf8_lossy(&ffi::ABI_VERSION[..ffi::ABI_VERSION.len() - 1]),
                ),
            );
            ffi::ABI_VERSION.as_ptr()
        },
        std::ptr::null,
    )
}

/// The hooks this module does not use, answering as a filter that lets everything pass.
mod unused;
