//! The hooks of one request (its worker's thread): its headers to the engine, the answers to
//! the calls it carried, the verdicts posted to it, the upstream's answer, and its end.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use super::config::{filters_of, route_of};
use super::deliver::{apply, apply_ops, fault, post, read_answer, respond};
use super::envoy::StreamPtr;
use super::ffi::{self, EnvoyBuffer, EnvoyHeader};
use super::host::{NativeHost, StreamHeaders};
use super::{contained, Filters, Parked, Stream};
use crate::host::{Host, LogLevel};
use crate::verdict::Verdict;

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    stream_envoy: *mut c_void,
) -> *const c_void {
    let Some(filters) = filters_of(config) else {
        return std::ptr::null();
    };
    contained(
        || {
            let stream = Box::new(Stream {
                filters,
                ctx: filters.next_ctx.fetch_add(1, Ordering::Relaxed),
                envoy: stream_envoy as usize,
                engine: std::cell::Cell::new(None),
                sent: std::cell::Cell::new(false),
            });
            Box::into_raw(stream) as *const c_void
        },
        std::ptr::null,
    )
}

impl Stream {
    /// Remembers that `host` sent a call on this request.
    fn note_sent(&self, host: &NativeHost<'_>) {
        if host.sent_on_stream() {
            self.sent.set(true);
        }
    }
}

/// Runs the hook of a request: its record, its configuration and Envoy's side of it handed to
/// `body` under `catch_unwind`; `absent` when the pointer is none of this module's requests,
/// `faulted` when the body panicked.
fn on_stream<T>(
    module: *const c_void,
    stream_envoy: *mut c_void,
    absent: T,
    body: impl FnOnce(&Stream, &Filters, StreamPtr) -> T,
    faulted: impl FnOnce(&Filters, StreamPtr) -> T,
) -> T {
    let Some((stream, filters)) = stream_of(module) else {
        return absent;
    };
    let envoy = StreamPtr(stream_envoy);
    contained(|| body(stream, filters, envoy), || faulted(filters, envoy))
}

/// The request and its configuration behind a module pointer Envoy hands back.
fn stream_of<'a>(module: *const c_void) -> Option<(&'a Stream, &'a Filters)> {
    // SAFETY: Envoy hands back the pointer `on_http_filter_new` returned, alive until its
    // destroy hook; its configuration outlives it.
    let stream = unsafe { (module as *const Stream).as_ref() }?;
    // SAFETY: as above.
    let filters = unsafe { stream.filters.as_ref() }?;
    Some((stream, filters))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    stream_envoy: *mut c_void,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream(
        module,
        stream_envoy,
        ffi::CONTINUE,
        |stream, filters, envoy| {
            let verdict = {
                let route = route_of(envoy);
                let key = route.map(|r| r.id);
                stream.engine.set(key);
                let mut shared = filters.lock();
                let (engines, calls, parked) = shared.parts();
                let host = NativeHost::new(filters, Some(envoy), key, calls);
                #[cfg(feature = "fault-probe")]
                fault_probe(envoy);
                let engine = match engines.for_route(route) {
                    Ok((engine, made)) => {
                        if made {
                            engine.on_start(&host);
                        }
                        engine
                    }
                    Err(e) => {
                        host.log(LogLevel::Warn, &format!("token-exchange: {e}"));
                        drop(shared);
                        fault(filters, envoy);
                        return ffi::STOP_ITERATION;
                    }
                };
                let verdict = engine.on_request(&host, stream.ctx, &StreamHeaders(envoy));
                stream.note_sent(&host);
                if matches!(verdict, Verdict::Pause) {
                    parked.insert(
                        stream.ctx,
                        Parked {
                            scheduler: envoy.scheduler(),
                            pending: Vec::new(),
                        },
                    );
                }
                verdict
            };
            match verdict {
                Verdict::Continue(ops) => {
                    apply_ops(envoy, &ops);
                    ffi::CONTINUE
                }
                Verdict::Pause => ffi::STOP_ITERATION,
                Verdict::Respond(reply) => {
                    respond(envoy, &reply);
                    ffi::STOP_ITERATION
                }
            }
        },
        |filters, envoy| {
            fault(filters, envoy);
            ffi::STOP_ITERATION
        },
    )
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    stream_envoy: *mut c_void,
    module: *const c_void,
    callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    on_stream(
        module,
        stream_envoy,
        (),
        |stream, filters, envoy| {
            let answer = read_answer(result, headers, headers_size, body, body_size);
            let own = {
                let mut shared = filters.lock();
                let (engines, calls, parked) = shared.parts();
                let Some((key, token)) = calls.remove(&(stream.envoy, callout)) else {
                    return;
                };
                let Some(engine) = engines.get(key) else {
                    return;
                };
                let host = NativeHost::new(filters, Some(envoy), key, calls);
                let mut verdicts = engine.on_http_answer(&host, Some(stream.ctx), token, &answer);
                stream.note_sent(&host);
                let own = verdicts
                    .iter()
                    .position(|(c, _)| *c == stream.ctx)
                    .map(|i| verdicts.swap_remove(i).1);
                post(parked, verdicts);
                own
            };
            if let Some(verdict) = own {
                apply(envoy, &verdict, true);
            }
        },
        fault,
    )
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    stream_envoy: *mut c_void,
    module: *const c_void,
    _event: u64,
) {
    on_stream(
        module,
        stream_envoy,
        (),
        |stream, filters, envoy| {
            let pending = filters
                .lock()
                .parked
                .get_mut(&stream.ctx)
                .map(|p| std::mem::take(&mut p.pending))
                .unwrap_or_default();
            for verdict in &pending {
                apply(envoy, verdict, true);
            }
        },
        fault,
    )
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    stream_envoy: *mut c_void,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    on_stream(
        module,
        stream_envoy,
        ffi::CONTINUE,
        |stream, filters, envoy| {
            let mut shared = filters.lock();
            let (engines, calls, _) = shared.parts();
            let key = stream.engine.get();
            let Some(engine) = engines.get(key) else {
                return ffi::CONTINUE;
            };
            if engine.watches(stream.ctx) {
                let status = envoy
                    .header_values(ffi::RESPONSE_HEADERS, ":status")
                    .first()
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
                let host = NativeHost::new(filters, Some(envoy), key, calls);
                engine.on_response(&host, stream.ctx, status, || {
                    envoy
                        .header_values(ffi::RESPONSE_HEADERS, "www-authenticate")
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect()
                });
                stream.note_sent(&host);
            }
            ffi::CONTINUE
        },
        |_, _| ffi::CONTINUE,
    )
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    contained(
        || {
            let Some((stream, filters)) = stream_of(module) else {
                return;
            };
            {
                let mut shared = filters.lock();
                if let Some(engine) = shared.engines.get(stream.engine.get()) {
                    engine.on_request_done(stream.ctx);
                }
                // Envoy cancels the calls of a stream that ends: they never answer.
                if stream.sent.get() {
                    let owner = stream.envoy;
                    shared.calls.retain(|(sent_by, _), _| *sent_by != owner);
                }
                if let Some(p) = shared.parked.remove(&stream.ctx) {
                    p.scheduler.delete_filter();
                }
            }
            // SAFETY: made by `on_http_filter_new` with Box::into_raw; destroyed once.
            drop(unsafe { Box::from_raw(module as *mut Stream) });
        },
        || (),
    );
}

/// A test build's fault (`fault-probe`): a request with `x-token-exchange-fault` panics while
/// its hook holds the engine's lock, as a bug would.
#[cfg(feature = "fault-probe")]
#[allow(clippy::panic)]
fn fault_probe(envoy: StreamPtr) {
    use crate::host::RequestHeaders;
    if StreamHeaders(envoy)
        .header("x-token-exchange-fault")
        .is_some()
    {
        panic!("a fault injected by the test build");
    }
}
