//! Engine stories through `FakeHost`, by theme: `exchange` (the cache, single flight, the
//! error table, routes), `issuers` (trusted issuers and their keys), `policy` (the
//! authorizer's `require` and claim headers), `introspection` (opaque tokens), `delegation` (actor
//! tokens), `ciba` (consents), `services` (token services, chains, RFC 9728, Txn-Tokens),
//! `freshness` (refresh-ahead, eviction on the upstream's 401) and `hostile` (what an attacker
//! sends). The helpers here build an engine from a configuration and drive one exchange.

use super::*;
use crate::host::{FakeHost, HttpCall};
use crate::jwt_error::JwtError;
use crate::token;
use crate::verdict::HeaderOp;
use serde_json::json;

mod binding;
mod ciba;
mod delegation;
mod exchange;
mod freshness;
mod hostile;
mod introspection;
mod issuers;
mod policy;
mod report;
mod services;
mod step_up;
mod trace;

pub(super) const NOW: u64 = 1_700_000_000_000;
const ATT: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An engine for the test STS with `extra` added to the configuration's top level.
pub(super) fn engine(extra: serde_json::Value) -> Engine {
    let mut config = json!({
        "sts": { "cluster": "sts", "authority": "sts.local", "token_path": "/token",
                 "client_id": "edge", "client_secret": "pw" }
    });
    for (k, v) in extra.as_object().expect("an object") {
        config[k] = v.clone();
    }
    let bytes = config.to_string().into_bytes();
    Engine::new(Config::parse(&bytes, &|_| None).unwrap()).unwrap()
}

pub(super) fn ok(token: &str, expires_in: u64) -> HttpAnswer {
    HttpAnswer {
        status: Some(200),
        body: format!(r#"{{"access_token":"{token}","token_type":"Bearer","issued_token_type":"{ATT}","expires_in":{expires_in}}}"#)
            .into_bytes(),
        too_large: false,
    }
}

pub(super) fn err(status: u16, code: &str) -> HttpAnswer {
    HttpAnswer {
        status: Some(status),
        body: format!(r#"{{"error":"{code}"}}"#).into_bytes(),
        too_large: false,
    }
}

/// The removal of the `DPoP` header every request the filter lets through gets.
pub(super) fn dpop_gone() -> HeaderOp {
    HeaderOp::Remove("dpop".into())
}

pub(super) fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

pub(super) fn set_value(v: &Verdict, name: &str) -> Option<String> {
    let Verdict::Continue(ops) = v else {
        return None;
    };
    ops.iter().rev().find_map(|op| match op {
        HeaderOp::Set(n, val) if n == name => Some(val.clone()),
        _ => None,
    })
}

pub(super) fn status(v: &Verdict) -> u32 {
    match v {
        Verdict::Respond(r) => r.status,
        other => panic!("expected a local reply, got {other:?}"),
    }
}

/// Sends a request with `token` and answers its STS call with `answer`.
pub(super) fn exchange(
    e: &mut Engine,
    h: &FakeHost,
    ctx: u32,
    token: &str,
    answer: &HttpAnswer,
) -> Verdict {
    let auth = bearer(token);
    assert_eq!(
        e.on_request(h, ctx, &[("authorization", auth.as_str())][..]),
        Verdict::Pause
    );
    let mut out = e.on_http_answer(h, None, h.last_call(), answer);
    assert_eq!(out.len(), 1);
    out.remove(0).1
}

/// The `WWW-Authenticate` challenge of a local reply (empty for anything else).
pub(super) fn challenge(v: &Verdict) -> String {
    match v {
        Verdict::Respond(r) => r.header("www-authenticate").unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// What the host hands over for a call that got no answer (reset, timeout, no upstream).
pub(super) fn no_answer() -> HttpAnswer {
    HttpAnswer {
        status: None,
        body: Vec::new(),
        too_large: false,
    }
}

/// The form fields of a call, in order.
pub(super) fn form_of(call: &HttpCall) -> Vec<(String, String)> {
    form_urlencoded::parse(call.body.as_bytes())
        .into_owned()
        .collect()
}

/// One form field of a call.
pub(super) fn field(call: &HttpCall, name: &str) -> Option<String> {
    form_of(call)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}
