//! The callbacks of Envoy's dynamic-module ABI this module calls, declared by hand from the ABI
//! header of the Envoy release the Makefile pins (1.40, ABI `v0.2.0`; each symbol checked
//! against the binary's exports). C enums are passed as `u32`.

use std::ffi::c_void;

/// The ABI version this module was built for, NUL-terminated.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";
/// The Envoy release whose ABI header these declarations follow.
pub const ENVOY_VERSION: &str = "1.40";

/// A buffer Envoy owns, valid until the hook that handed it over returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    /// Start of the bytes (may be null when `length` is 0).
    pub ptr: *const u8,
    /// Number of bytes.
    pub length: usize,
}

/// A buffer the module owns, lent to Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    /// Start of the bytes.
    pub ptr: *const u8,
    /// Number of bytes.
    pub length: usize,
}

impl ModuleBuffer {
    /// Lends `bytes` for one call.
    pub fn of(bytes: &[u8]) -> Self {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// A header the module owns, lent to Envoy for one call.
#[repr(C)]
pub struct ModuleHeader {
    /// Name bytes.
    pub key_ptr: *const u8,
    /// Name length.
    pub key_length: usize,
    /// Value bytes.
    pub value_ptr: *const u8,
    /// Value length.
    pub value_length: usize,
}

impl ModuleHeader {
    /// Lends a name and value for one call.
    pub fn of(name: &str, value: &str) -> Self {
        ModuleHeader {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// A header Envoy owns, valid until the hook returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    /// Name bytes.
    pub key_ptr: *const u8,
    /// Name length.
    pub key_length: usize,
    /// Value bytes.
    pub value_ptr: *const u8,
    /// Value length.
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
pub const REQUEST_HEADERS: u32 = 0;
/// `envoy_dynamic_module_type_http_header_type_ResponseHeader`.
pub const RESPONSE_HEADERS: u32 = 2;
/// `…_on_http_filter_request_headers_status_Continue` (and the other hooks' `Continue`).
pub const CONTINUE: u32 = 0;
/// `…_on_http_filter_request_headers_status_StopIteration`.
pub const STOP_ITERATION: u32 = 1;
/// `envoy_dynamic_module_type_http_callout_init_result_Success` and `…_callout_result_Success`.
pub const SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_init_result_ClusterNotFound`.
pub const CLUSTER_NOT_FOUND: u32 = 2;
/// `envoy_dynamic_module_type_attribute_id_ConnectionSha256PeerCertificateDigest`.
pub const PEER_CERTIFICATE_DIGEST: u32 = 38;
/// Log levels: `envoy_dynamic_module_type_log_level_{Debug,Info,Warn}`.
pub const LOG_DEBUG: u32 = 1;
/// See [`LOG_DEBUG`].
pub const LOG_INFO: u32 = 2;
/// See [`LOG_DEBUG`].
pub const LOG_WARN: u32 = 3;

extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
    pub fn envoy_dynamic_module_callback_is_validation_mode() -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
        config: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter: *mut c_void,
    ) -> *mut c_void;
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: *mut c_void,
    );

    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    pub fn envoy_dynamic_module_callback_get_most_specific_route_config(
        filter: *mut c_void,
    ) -> *const c_void;
}
