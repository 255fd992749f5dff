//! The configuration's hooks (main thread): a filter configuration read into its engine, its
//! tick, the answers to the calls it sent, and the rules Envoy's route table carries.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;

use super::deliver::{post, read_answer};
use super::envoy::{self, ConfigPtr, StreamPtr};
use super::ffi::{self, EnvoyBuffer, EnvoyHeader};
use super::host::{Metrics, NativeHost};
use super::routes::{PerRoute, RouteEngines};
use super::{contained, ticker, Filters, Shared};
use crate::config::Config;
use crate::engine::Engine;
use crate::host::{Host, LogLevel};

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    contained(
        || {
            let name = String::from_utf8_lossy(&envoy::buffer_bytes(&name)).into_owned();
            let bytes = envoy::buffer_bytes(&config);
            #[cfg(feature = "fault-probe")]
            configure_fault_probe(&bytes);
            configure(ConfigPtr(config_envoy), &name, &bytes)
        },
        || {
            let why = "token-exchange-wasm refused its configuration: a fault while reading it";
            envoy::log(ffi::LOG_WARN, why);
            std::ptr::null()
        },
    )
}

/// Reads the configuration, builds the engine, defines the metrics and starts the ticker.
fn configure(envoy: ConfigPtr, name: &str, bytes: &[u8]) -> *const c_void {
    let loaded = Config::parse(bytes, &|name| std::env::var(name).ok())
        .and_then(|config| Ok((config.summary(), Engine::new(config)?)))
        .map_err(|e| e.to_string())
        .and_then(|ok| RouteEngines::check_rules(name, bytes).map(|()| ok));
    let (summary, engine) = match loaded {
        Ok(ok) => ok,
        Err(e) => {
            envoy::log(
                ffi::LOG_WARN,
                &format!("token-exchange-wasm refused its configuration: {e}"),
            );
            return std::ptr::null();
        }
    };
    let metrics = Metrics::define(envoy, &engine.counted_services());
    let mut filters = Box::new(Filters {
        envoy,
        shared: Mutex::new(Shared {
            engines: RouteEngines::new(engine, name, bytes, envoy.0 as usize),
            parked: HashMap::new(),
            calls: HashMap::new(),
        }),
        metrics,
        next_ctx: AtomicU32::new(1),
        next_token: AtomicU32::new(1),
        ticker: None,
    });
    {
        let mut shared = filters.lock();
        let (engines, calls, _) = shared.parts();
        let host = NativeHost::new(&filters, None, None, calls);
        engines.base.on_start(&host);
        host.log(
            LogLevel::Info,
            &format!(
                "token-exchange-wasm {} configured: {summary}",
                env!("CARGO_PKG_VERSION")
            ),
        );
    }
    if !envoy::validation_mode() {
        filters.ticker = Some(ticker::start(envoy));
    }
    Box::into_raw(filters) as *const c_void
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    contained(
        || {
            if config.is_null() {
                return;
            }
            // SAFETY: made by `configure` with Box::into_raw; Envoy destroys it once, after
            // every stream it made.
            let filters = unsafe { Box::from_raw(config as *mut Filters) };
            RouteEngines::forget(filters.envoy.0 as usize);
            filters.metrics.flush(filters.envoy);
            if let Some(ticker) = filters.ticker {
                ticker.stop();
            }
        },
        || (),
    );
}

/// Runs a configuration hook's `body` with its configuration, under `catch_unwind`.
fn on_config(config: *const c_void, body: impl FnOnce(&Filters)) {
    if let Some(filters) = filters_of(config) {
        contained(|| body(filters), || ());
    }
}

/// The configuration behind a module pointer Envoy hands back.
pub(super) fn filters_of<'a>(config: *const c_void) -> Option<&'a Filters> {
    // SAFETY: Envoy hands back the pointer `configure` returned, alive until its destroy hook.
    unsafe { (config as *const Filters).as_ref() }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: *mut c_void,
    config: *const c_void,
    _event: u64,
) {
    on_config(config, |filters| {
        let mut shared = filters.lock();
        let (engines, calls, parked) = shared.parts();
        for (key, engine) in engines.all() {
            let host = NativeHost::new(filters, None, key, calls);
            let verdicts = engine.on_tick(&host);
            post(parked, verdicts);
        }
        drop(shared);
        filters.metrics.flush(filters.envoy);
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: *mut c_void,
    config: *const c_void,
    callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    on_config(config, |filters| {
        let answer = read_answer(result, headers, headers_size, body, body_size);
        let mut shared = filters.lock();
        let (engines, calls, parked) = shared.parts();
        let Some((key, token)) = calls.remove(&(0, callout)) else {
            return;
        };
        let Some(engine) = engines.get(key) else {
            return;
        };
        let host = NativeHost::new(filters, None, key, calls);
        let verdicts = engine.on_http_answer(&host, None, token, &answer);
        post(parked, verdicts);
    });
}

/// The rule of the request's Envoy route, if that route has one for this filter.
pub(super) fn route_of<'a>(envoy: StreamPtr) -> Option<&'a PerRoute> {
    let ptr = envoy.route_config();
    // SAFETY: Envoy hands back a pointer `on_http_filter_per_route_config_new` returned, alive
    // while the route configuration that holds it serves this request.
    unsafe { (ptr as *const PerRoute).as_ref() }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    contained(
        || match PerRoute::parse(
            &String::from_utf8_lossy(&envoy::buffer_bytes(&name)),
            &envoy::buffer_bytes(&config),
        ) {
            Ok(rule) => Box::into_raw(Box::new(rule)) as *const c_void,
            Err(e) => {
                envoy::log(
                    ffi::LOG_WARN,
                    &format!("token-exchange-wasm refused a route's rule: {e}"),
                );
                std::ptr::null()
            }
        },
        std::ptr::null,
    )
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(config: *const c_void) {
    contained(
        || {
            if !config.is_null() {
                // SAFETY: made by `per_route_config_new` with Box::into_raw; destroyed once.
                let rule = unsafe { Box::from_raw(config as *mut PerRoute) };
                rule.forget();
            }
        },
        || (),
    );
}

/// A test build's fault (`fault-probe`): a configuration naming `x-token-exchange-fault`
/// panics while it is read.
#[cfg(feature = "fault-probe")]
#[allow(clippy::panic)]
fn configure_fault_probe(bytes: &[u8]) {
    if bytes.windows(22).any(|w| w == b"x-token-exchange-fault") {
        panic!("a fault injected by the test build");
    }
}
