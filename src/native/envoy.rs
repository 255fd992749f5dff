//! Safe calls into Envoy over [`super::ffi`]: every pointer Envoy lent is read within the hook
//! that lent it and copied out; every result is a value, never a panic.

use std::ffi::c_void;

use super::ffi::{self, EnvoyBuffer, EnvoyHeader, ModuleBuffer, ModuleHeader};
use crate::host::HttpCall;

/// Envoy's stream-side filter (`envoy_dynamic_module_type_http_filter_envoy_ptr`), valid
/// until the filter's destroy hook.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StreamPtr(pub *mut c_void);

/// Envoy's filter configuration (`envoy_dynamic_module_type_http_filter_config_envoy_ptr`),
/// valid until the configuration's destroy hook.
#[derive(Clone, Copy)]
pub struct ConfigPtr(pub *mut c_void);

// SAFETY: Envoy's configuration object lives until its destroy hook and its callbacks used here
// (counters, callouts and the scheduler, on the threads the ABI allows) are thread-safe.
unsafe impl Send for ConfigPtr {}
// SAFETY: as above.
unsafe impl Sync for ConfigPtr {}

/// A scheduler Envoy made for one filter or the configuration: committing posts an event to
/// that filter's worker (or the main thread). Owned by the module, deleted by it.
#[derive(Clone, Copy)]
pub struct SchedulerPtr(pub *mut c_void);

// SAFETY: the ABI allows committing from any thread; the module deletes it only under the lock
// every committer holds.
unsafe impl Send for SchedulerPtr {}

/// A metric's definition callback (counter or histogram).
type DefineMetric =
    unsafe extern "C" fn(*mut c_void, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> u32;

/// A metric's update callback (counter increment or histogram record), of a configuration or
/// a stream.
type CountMetric = unsafe extern "C" fn(*mut c_void, usize, *const ModuleBuffer, usize, u64) -> u32;

/// Copies bytes Envoy lent (a null pointer reads as nothing).
fn copy(ptr: *const u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: Envoy guarantees `len` readable bytes at `ptr` until the current hook returns.
    unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
}

/// Reads the bytes of an Envoy buffer.
pub fn buffer_bytes(buffer: &EnvoyBuffer) -> Vec<u8> {
    copy(buffer.ptr, buffer.length)
}

/// The (name, value) byte pairs of an array of Envoy headers.
pub fn header_pairs(headers: *const EnvoyHeader, count: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    if headers.is_null() || count == 0 {
        return Vec::new();
    }
    // SAFETY: Envoy lent `count` headers at `headers` for the current hook.
    let list = unsafe { std::slice::from_raw_parts(headers, count) };
    list.iter()
        .map(|h| {
            (
                copy(h.key_ptr, h.key_length),
                copy(h.value_ptr, h.value_length),
            )
        })
        .collect()
}

/// Writes a log line under Envoy's `dynamic_modules` logger.
pub fn log(level: u32, message: &str) {
    // SAFETY: the buffer outlives the call.
    unsafe { ffi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

/// Whether debug lines would be written.
pub fn debug_enabled() -> bool {
    // SAFETY: no pointers.
    unsafe { ffi::envoy_dynamic_module_callback_log_enabled(ffi::LOG_DEBUG) }
}

/// Whether Envoy runs with `--mode validate`.
pub fn validation_mode() -> bool {
    // SAFETY: no pointers; called on the main thread (configuration hooks).
    unsafe { ffi::envoy_dynamic_module_callback_is_validation_mode() }
}

impl ConfigPtr {
    /// Defines a counter (or, with `histogram`, a histogram); its id.
    pub fn define(self, name: &str, histogram: bool) -> Option<usize> {
        let define: DefineMetric = if histogram {
            ffi::envoy_dynamic_module_callback_http_filter_config_define_histogram
        } else {
            ffi::envoy_dynamic_module_callback_http_filter_config_define_counter
        };
        let mut id = 0usize;
        let name = ModuleBuffer::of(name.as_bytes());
        // SAFETY: `id` and `name` outlive the call; no labels.
        let status = unsafe { define(self.0, name, std::ptr::null(), 0, &mut id) };
        (status == ffi::SUCCESS).then_some(id)
    }

    /// Adds to a counter, or records in a histogram, with no stream at hand.
    pub fn count(self, id: usize, histogram: bool, value: u64) {
        let count: CountMetric = if histogram {
            ffi::envoy_dynamic_module_callback_http_filter_config_record_histogram_value
        } else {
            ffi::envoy_dynamic_module_callback_http_filter_config_increment_counter
        };
        // SAFETY: no labels.
        unsafe { count(self.0, id, std::ptr::null(), 0, value) };
    }

    /// Sends a call with no stream at hand (main thread); Envoy's id for it.
    pub fn callout(self, call: &HttpCall) -> Result<u64, u32> {
        callout_with(call, |id, cluster, headers, count, body, timeout| {
            // SAFETY: every buffer outlives the call.
            unsafe {
                ffi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                    self.0, id, cluster, headers, count, body, timeout,
                )
            }
        })
    }

    /// A scheduler posting events to the main thread.
    pub fn scheduler(self) -> SchedulerPtr {
        // SAFETY: called on the main thread in a configuration hook.
        SchedulerPtr(unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0)
        })
    }
}

/// Builds the call's headers and body as Envoy reads them and hands them to `send`.
fn callout_with(
    call: &HttpCall,
    send: impl FnOnce(*mut u64, ModuleBuffer, *mut ModuleHeader, usize, ModuleBuffer, u64) -> u32,
) -> Result<u64, u32> {
    let mut headers: Vec<ModuleHeader> = call
        .headers
        .iter()
        .map(|(n, v)| ModuleHeader::of(n, v))
        .collect();
    let mut id = 0u64;
    let status = send(
        &mut id,
        ModuleBuffer::of(call.cluster.as_bytes()),
        headers.as_mut_ptr(),
        headers.len(),
        ModuleBuffer::of(call.body.as_bytes()),
        call.timeout_ms,
    );
    if status == ffi::SUCCESS {
        Ok(id)
    } else {
        Err(status)
    }
}

impl SchedulerPtr {
    /// Posts event `event` to a filter's worker.
    pub fn commit_filter(self, event: u64) {
        // SAFETY: the scheduler is alive (deleted only under the lock the caller holds).
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event) }
    }

    /// Deletes a filter's scheduler.
    pub fn delete_filter(self) {
        // SAFETY: deleted once, under the lock every committer holds.
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }

    /// Posts event `event` to the main thread.
    pub fn commit_config(self, event: u64) {
        // SAFETY: deleted only after the thread that commits was joined.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event)
        }
    }

    /// Deletes the configuration's scheduler.
    pub fn delete_config(self) {
        // SAFETY: deleted once, after the committing thread was joined.
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

impl StreamPtr {
    /// Every value of request header `name` (request or response map per `map`).
    pub fn header_values(self, map: u32, name: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut count = 0usize;
        let mut index = 0usize;
        loop {
            let mut buf = EnvoyBuffer {
                ptr: std::ptr::null(),
                length: 0,
            };
            // SAFETY: `buf` and `count` outlive the call; the key is lent for it.
            let ok = unsafe {
                ffi::envoy_dynamic_module_callback_http_get_header(
                    self.0,
                    map,
                    ModuleBuffer::of(name.as_bytes()),
                    &mut buf,
                    index,
                    &mut count,
                )
            };
            if !ok || index >= count {
                return out;
            }
            out.push(buffer_bytes(&buf));
            index += 1;
            if index >= count {
                return out;
            }
        }
    }

    /// Every header of a map, as byte pairs.
    pub fn all_headers(self, map: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        // SAFETY: no pointers.
        let size = unsafe { ffi::envoy_dynamic_module_callback_http_get_headers_size(self.0, map) };
        let mut headers = vec![
            EnvoyHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            size
        ];
        // SAFETY: `headers` has room for `size` entries.
        let ok = unsafe {
            ffi::envoy_dynamic_module_callback_http_get_headers(self.0, map, headers.as_mut_ptr())
        };
        if !ok {
            return Vec::new();
        }
        header_pairs(headers.as_ptr(), size)
    }

    /// Sets (`Some`) or removes (`None`) a request header.
    pub fn set_request_header(self, name: &str, value: Option<&str>) {
        let value = match value {
            Some(v) => ModuleBuffer::of(v.as_bytes()),
            None => ModuleBuffer {
                ptr: std::ptr::null(),
                length: 0,
            },
        };
        // SAFETY: the buffers outlive the call.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                ffi::REQUEST_HEADERS,
                ModuleBuffer::of(name.as_bytes()),
                value,
            );
        }
    }

    /// Answers the request locally.
    pub fn send_response(self, status: u32, headers: &[(String, String)], body: &str) {
        let mut list: Vec<ModuleHeader> = headers
            .iter()
            .map(|(n, v)| ModuleHeader::of(n, v))
            .collect();
        let details = b"token_exchange";
        // SAFETY: every buffer outlives the call.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                list.as_mut_ptr(),
                list.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details),
            );
        }
    }

    /// Lets a stopped request go on.
    pub fn continue_decoding(self) {
        // SAFETY: called on the filter's worker while the filter lives.
        unsafe { ffi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// Writes one filter-state value (a plain string accessor).
    pub fn set_filter_state(self, key: &str, value: &str) {
        // SAFETY: the buffers outlive the call.
        unsafe {
            ffi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    /// The downstream client certificate's SHA-256 digest (hex), if any.
    pub fn peer_certificate_digest(self) -> Option<Vec<u8>> {
        let mut buf = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: `buf` outlives the call.
        let ok = unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                ffi::PEER_CERTIFICATE_DIGEST,
                &mut buf,
            )
        };
        ok.then(|| buffer_bytes(&buf))
    }

    /// Adds to a counter, or records in a histogram, on this stream.
    pub fn count(self, id: usize, histogram: bool, value: u64) {
        let count: CountMetric = if histogram {
            ffi::envoy_dynamic_module_callback_http_filter_record_histogram_value
        } else {
            ffi::envoy_dynamic_module_callback_http_filter_increment_counter
        };
        // SAFETY: no labels.
        unsafe { count(self.0, id, std::ptr::null(), 0, value) };
    }

    /// Sends a call on behalf of this stream; Envoy's id for it.
    pub fn callout(self, call: &HttpCall) -> Result<u64, u32> {
        callout_with(call, |id, cluster, headers, count, body, timeout| {
            // SAFETY: every buffer outlives the call.
            unsafe {
                ffi::envoy_dynamic_module_callback_http_filter_http_callout(
                    self.0, id, cluster, headers, count, body, timeout,
                )
            }
        })
    }

    /// The module's per-route configuration of the request's route, or null.
    pub fn route_config(self) -> *const c_void {
        // SAFETY: called in a hook of the live filter.
        unsafe { ffi::envoy_dynamic_module_callback_get_most_specific_route_config(self.0) }
    }

    /// A scheduler posting events to this filter's worker.
    pub fn scheduler(self) -> SchedulerPtr {
        // SAFETY: called on the filter's worker while the filter lives.
        SchedulerPtr(unsafe {
            ffi::envoy_dynamic_module_callback_http_filter_scheduler_new(self.0)
        })
    }
}
