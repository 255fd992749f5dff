//! token-exchange-wasm: a proxy-wasm HTTP filter for Envoy and Istio that exchanges the caller's
//! bearer token at a Security Token Service (RFC 8693), caches the result in shared data and
//! rewrites `Authorization` before routing.
//!
//! Everything but `filter` and `abi` (the proxy-wasm glue and its host calls, built for `wasm32`
//! only) runs and is tested on the host.

#![warn(missing_docs)]
// `make lint` documents private items too, where links between parts resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod actor;
pub(crate) mod assertion;
pub(crate) mod cache;
pub mod caller;
pub mod challenge;
pub(crate) mod client;
pub mod config;
pub(crate) mod consent;
pub mod dpop;
pub(crate) mod endpoint;
pub mod engine;
pub(crate) mod flights;
pub(crate) mod freshness;
pub mod host;
pub mod introspection;
pub mod jwks;
pub(crate) mod jwt_error;
pub(crate) mod keys;
pub(crate) mod memo;
pub mod metrics;
pub(crate) mod outcomes;
pub mod path;
pub mod policy;
pub mod reply;
pub(crate) mod report;
pub mod resource;
pub mod route;
pub mod sts;
pub mod token;
pub mod verdict;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;
// The native glue's shared data has no Envoy symbol in it: its tests run with the others.
#[cfg(all(test, not(feature = "native")))]
#[path = "native/shared.rs"]
mod native_shared;
