//! token-exchange-wasm: a proxy-wasm HTTP filter for Envoy and Istio that exchanges the caller's
//! bearer token at a Security Token Service (RFC 8693), caches the result in shared data and
//! rewrites `Authorization` before routing.
//!
//! Everything but [`filter`] (the proxy-wasm glue, built for `wasm32` only) runs and is tested on
//! the host.

#![warn(missing_docs)]

pub mod actor;
pub mod assertion;
pub mod cache;
pub mod client;
pub mod config;
pub mod consent;
pub mod credentials;
pub mod endpoint;
pub mod engine;
pub mod flights;
pub mod host;
pub mod jwks;
pub mod keys;
pub mod memo;
pub mod metrics;
pub mod outcomes;
pub mod path;
pub mod refusal;
pub mod reply;
pub mod route;
pub mod sts;
pub mod token;
pub mod verdict;

#[cfg(target_arch = "wasm32")]
mod abi;
#[cfg(target_arch = "wasm32")]
mod filter;
