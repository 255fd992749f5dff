//! The proxy-wasm ABI host calls the glue makes, declared here so that every status comes back
//! as a value: the SDK's wrappers `unwrap` UTF-8 and panic on a status they did not expect, and a
//! panic aborts the VM for good. Values are bytes; the caller decides what is text. Built for
//! `wasm32` only. (Callouts are still dispatched through the SDK, which must learn their tokens
//! to route the answers; its dispatch maps every status Envoy returns there to an error.)

#![allow(unsafe_code)]

use std::ptr::{null, null_mut};

/// A host call's status other than OK (the ABI's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl std::fmt::Display for Status {
    /// The ABI's name for the status, for a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            NOT_FOUND => "not found",
            2 => "bad argument",
            3 => "serialization failure",
            4 => "parse failure",
            7 => "empty",
            8 => "changed meanwhile (CAS mismatch)",
            10 => "internal failure",
            12 => "unimplemented",
            other => return write!(f, "status {other}"),
        };
        f.write_str(name)
    }
}

/// `Status::Ok` of the ABI.
const OK: u32 = 0;
/// `Status::NotFound` of the ABI.
const NOT_FOUND: u32 = 1;

/// The request headers of the effective context.
pub const REQUEST_HEADERS: u32 = 0;
/// The response headers of the effective context.
pub const RESPONSE_HEADERS: u32 = 2;
/// The headers of a callout's answer.
pub const CALL_RESPONSE_HEADERS: u32 = 6;
/// The body of a callout's answer.
pub const CALL_RESPONSE_BODY: u32 = 4;
/// The plugin's configuration.
pub const PLUGIN_CONFIGURATION: u32 = 7;
/// `StreamType::HttpRequest` of the ABI.
const HTTP_REQUEST: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_log_level(return_level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

fn done(status: u32) -> Result<(), Status> {
    match status {
        OK => Ok(()),
        other => Err(Status(other)),
    }
}

/// Takes ownership of memory the host filled through the module's allocator.
///
/// # Safety
/// `data` is null or was returned by the host with `size` bytes, allocated by this module.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: the SDK's allocator hands out boxed slices of exactly `size` bytes.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

/// Bytes the host returns through a (data, size) pair: `None` for NotFound.
fn read(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size): (*mut u8, usize) = (null_mut(), 0);
    match call(&mut data, &mut size) {
        // SAFETY: on OK the host wrote a buffer of `size` bytes from our allocator (or none).
        OK => Ok(Some(unsafe { owned(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(Status(other)),
    }
}

/// One header's value as bytes.
pub fn header(map: u32, name: &str) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointers to live locals and to `name`, for the call's duration.
    read(|d, s| unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), d, s) })
}

/// A property of the effective context (its path's segments joined by NUL bytes, as the ABI
/// reads them), as bytes; `None` when it has none.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let joined = path.join("\0");
    // SAFETY: pointers to live locals and into `joined`, for the call's duration.
    read(|d, s| unsafe { proxy_get_property(joined.as_ptr(), joined.len(), d, s) })
}

/// Sets a property of the effective context: a one-segment `name` unknown to Envoy becomes
/// the filter state object `wasm.<name>`.
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers into live buffers, for the call's duration.
    done(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// A whole header map, serialized as the ABI does (see `host::parse_map`).
pub fn header_pairs(map: u32) -> Result<Vec<u8>, Status> {
    // SAFETY: pointers to live locals, for the call's duration.
    read(|d, s| unsafe { proxy_get_header_map_pairs(map, d, s) }).map(Option::unwrap_or_default)
}

/// Sets (`Some`) or removes (`None`) a header.
pub fn set_header(map: u32, name: &str, value: Option<&str>) -> Result<(), Status> {
    // SAFETY: pointers into live strings, for the call's duration.
    done(unsafe {
        match value {
            Some(v) => {
                proxy_replace_header_map_value(map, name.as_ptr(), name.len(), v.as_ptr(), v.len())
            }
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        }
    })
}

/// Up to `max` bytes of a buffer from `start`.
pub fn buffer(kind: u32, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointers to live locals, for the call's duration.
    read(|d, s| unsafe { proxy_get_buffer_bytes(kind, start, max, d, s) })
}

/// Lets the effective context's paused request go on.
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    done(unsafe { proxy_continue_stream(HTTP_REQUEST) })
}

/// Answers the effective context's request locally.
pub fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Status> {
    let map = crate::host::serialize_map(headers);
    // SAFETY: pointers into live buffers, for the call's duration.
    done(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Makes `context` the one later calls act on.
pub fn set_effective_context(context: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    done(unsafe { proxy_set_effective_context(context) })
}

/// A shared-data value and its CAS version.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, Status> {
    let mut cas = 0u32;
    // SAFETY: pointers to live locals and to `key`, for the call's duration.
    let value =
        read(|d, s| unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), d, s, &mut cas) })?;
    Ok(value.map(|v| (v, cas)))
}

/// Stores a shared-data value; with `cas` (non-zero), only over that version.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: pointers into live buffers, for the call's duration.
    done(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Writes a log line at the ABI's `level` (1 debug, 2 info, 3 warn).
pub fn log(level: u32, message: &str) -> Result<(), Status> {
    // SAFETY: a pointer into a live string, for the call's duration.
    done(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

/// The host's log level (0 trace … 5 critical).
pub fn log_level() -> Result<u32, Status> {
    let mut level = 0u32;
    // SAFETY: a pointer to a live local.
    done(unsafe { proxy_get_log_level(&mut level) }).map(|()| level)
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn now_ns() -> Result<u64, Status> {
    let mut t = 0u64;
    // SAFETY: a pointer to a live local.
    done(unsafe { proxy_get_current_time_nanoseconds(&mut t) }).map(|()| t)
}

/// Asks for the root's tick every `ms` milliseconds.
pub fn set_tick_period_ms(ms: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    done(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Defines a metric (0 counter, 2 histogram) and returns its id.
pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: pointers to a live local and into `name`.
    done(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

/// Adds `by` to a counter.
pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    done(unsafe { proxy_increment_metric(id, by) })
}

/// Records a histogram value.
pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    done(unsafe { proxy_record_metric(id, value) })
}
