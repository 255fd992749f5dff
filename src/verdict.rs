//! What the filter decides for a request: go on with header edits, wait, or answer locally.

use crate::reply::LocalReply;

/// One change to the request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Set the header to this value, replacing any copy.
    Set(String, String),
    /// Remove every copy of the header.
    Remove(String),
    /// Leave this field of the decision in the request's filter state, where Envoy's access
    /// log, RBAC and rate limits read it as `wasm.token_exchange.<field>`
    /// (`output.filter_state`).
    State(&'static str, String),
}

/// The same verdict for each of these requests.
pub fn to_each(requests: impl IntoIterator<Item = u32>, verdict: &Verdict) -> Vec<(u32, Verdict)> {
    requests
        .into_iter()
        .map(|ctx| (ctx, verdict.clone()))
        .collect()
}

/// What the proxy should do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply the header changes in order, then route the request.
    Continue(Vec<HeaderOp>),
    /// Hold the request until the engine hands out a verdict for it.
    Pause,
    /// Answer the client with this response.
    Respond(LocalReply),
}
